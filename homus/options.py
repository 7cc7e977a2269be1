"""What every command shares: ``--config`` (the loaded settings passed as ``cfg``) and the one-hop
rule that a flag given overrides the config's value."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import click
from click.core import ParameterSource

from . import config as cfgmod

#: The project's settings file, read when it exists in the current folder.
DEFAULT_CONFIG = "pipeline.yaml"


class SettingsFileError(click.ClickException):
    """A settings file that cannot be used: one line, ``error: <file>: <what>``, and exit code 2
    (the code of a usage error, without click's usage block: the command line itself was fine)."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.secho(f"error: {self.message}", fg="red", err=True)


def with_config(f):
    """Add ``--config`` and pass the loaded settings as ``cfg``; bad settings exit with code 2."""

    @click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True,
                  help="Settings file; flags override it.")
    @functools.wraps(f)
    def wrapper(config_path, **kwargs):
        path = Path(config_path)
        given = click.get_current_context().get_parameter_source("config_path") != ParameterSource.DEFAULT
        if not given and not path.exists():
            path = None  # outside a project folder: the shipped defaults (a --config typed must be there)
        try:
            cfg = cfgmod.load(path)
        except cfgmod.ConfigError as e:
            raise SettingsFileError(str(e)) from None
        if "cfg_path" in inspect.signature(f).parameters:  # commands that name the file in what they write
            kwargs["cfg_path"] = path or cfgmod.DEFAULTS_FILE
        return f(cfg=cfg, **kwargs)

    return wrapper


def note_unfinished(runs) -> None:
    """Say, on stderr, which of ``runs`` have not finished training: their best model so far is what
    is used, and a figure from it is not the run's (a run still training may replace it meanwhile)."""
    from classifier.runfolder import CONFIG, RunFolder  # torch comes with it: only when a command reads runs

    for r in runs:
        if RunFolder(r).file(CONFIG).is_file() and not RunFolder(r).complete:
            click.secho(f"note: {r} has not finished training (no metrics.json): its best model so far is used",
                        fg="yellow", err=True)


def once(runs) -> None:
    """Refuse a run given twice (by any path to it) where runs are counted, voted or served."""
    seen: dict[Path, str] = {}
    for r in runs:
        if (key := Path(r).resolve()) in seen:
            raise click.BadParameter(f"{r} is {seen[key]} again; give each run once", param_hint="RUNS")
        seen[key] = r


def pick(flag, default):
    """The flag when given, else the config's value."""
    return default if flag is None else flag


def _text_flag(want: str):
    """A click callback: a text flag, when given, passes the check its settings-file key gets
    (:func:`homus.config.usable_text`); ``--out ""`` would write into the current folder."""
    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None and not cfgmod.usable_text(value):
            raise click.BadParameter(f"must be {want}, got {value!r}")
        return value

    return check


a_text = _text_flag("a printable, non-empty text")
a_path = _text_flag("a path")
