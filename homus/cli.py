"""``homus``: fetch, render, train, evaluate, predict. Each command reads ``--config`` (default
``./pipeline.yaml``) and its flags override the file."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from . import config as cfgmod

DEFAULT_CONFIG = "pipeline.yaml"


def with_config(f):
    """Add ``--config`` and pass the loaded settings as ``cfg``; bad settings exit with code 2."""

    @click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True,
                  help="Settings file; flags override it.")
    @functools.wraps(f)
    def wrapper(config_path, **kwargs):
        path = Path(config_path)
        if config_path == DEFAULT_CONFIG and not path.exists():
            path = None  # outside a project folder: the shipped defaults
        try:
            cfg = cfgmod.load(path)
        except cfgmod.ConfigError as e:
            raise click.UsageError(str(e)) from None
        return f(cfg=cfg, **kwargs)

    return wrapper


def fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


def pick(flag, default):
    return default if flag is None else flag


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="homus")
def main() -> None:
    """homus: HOMUS handwritten music symbols, from raw pen strokes to trained classifiers."""


@main.command()
@click.option("--version", "version", type=click.Choice(["v2", "v1"]), help="Dataset release.")
@click.option("--source", help="Local zip, folder or URL (else $HOMUS_SOURCE, else the official address).")
@click.option("--raw-dir", type=click.Path(file_okay=False), help="Where the stroke files go.")
@with_config
def fetch(cfg, version, source, raw_dir) -> None:
    """Download or copy the HOMUS dataset into RAW_DIR/<writer>/<writer>-<n>.txt."""
    from tqdm import tqdm

    from homus_render.fetch import FetchError
    from homus_render.fetch import fetch as do_fetch

    d = cfg["dataset"]
    bar = None

    def progress(done, total):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, desc="download")
        bar.update(done - bar.n)

    try:
        report = do_fetch(pick(raw_dir, d["raw_dir"]), pick(version, d["version"]),
                          pick(source, d["source"]), progress=progress)
    except FetchError as e:
        fail(str(e))
    finally:
        if bar is not None:
            bar.close()
    click.echo(report.summary())


def render_settings(cfg: dict, thickness, size, fit, margin, antialias, staff_lines) -> list:
    """Every combination of thicknesses and sizes, with the other settings, as RenderSettings."""
    from homus_render.render import RenderSettings

    r = cfg["render"]
    out = []
    for t in cfgmod.as_list(pick(thickness, r["thickness"])):
        for size_value in cfgmod.as_list(pick(size, r["size"])):
            w, h = cfgmod.parse_size(size_value)
            try:
                out.append(RenderSettings(
                    thickness=int(t), width=w, height=h, fit=pick(fit, r["fit"]),
                    margin=pick(margin, r["margin"]), antialias=pick(antialias, r["antialias"]),
                    staff_lines=pick(staff_lines, r["staff_lines"]), staff_spacing=r["staff_spacing"],
                    staff_offset=r["staff_offset"]))
            except ValueError as e:
                raise click.UsageError(f"render settings: {e}") from None
    return out


@main.command()
@click.option("--thickness", help="Stroke width(s) in output pixels, e.g. 3 or 1,2,3.")
@click.option("--size", help="Canvas size(s), e.g. 96, 64,96 or 128x64.")
@click.option("--fit", type=click.Choice(["scale", "crop"]), help="Fill the canvas, or keep tablet scale.")
@click.option("--margin", type=int, help="Blank pixels on every side.")
@click.option("--antialias/--no-antialias", default=None, help="Smooth stroke edges (default on).")
@click.option("--staff-lines/--no-staff-lines", default=None, help="Draw five staff lines behind.")
@click.option("--raw-dir", type=click.Path(file_okay=False))
@click.option("--rendered-dir", type=click.Path(file_okay=False))
@click.option("--jobs", type=int, help="Worker processes (-1: all cores).")
@click.option("--force", is_flag=True, help="Render again even when up to date.")
@click.option("--skip-invalid", is_flag=True, help="Render the good samples, list the bad ones.")
@with_config
def render(cfg, thickness, size, fit, margin, antialias, staff_lines, raw_dir, rendered_dir, jobs,
           force, skip_invalid) -> None:
    """Render every raw sample into one variant folder per thickness x size."""
    from tqdm import tqdm

    from homus_render.variants import RenderError, render_variants

    variants = render_settings(cfg, thickness, size, fit, margin, antialias, staff_lines)
    raw = Path(pick(raw_dir, cfg["dataset"]["raw_dir"]))
    out = Path(pick(rendered_dir, cfg["render"]["rendered_dir"]))
    with tqdm(unit="sample", desc="render", disable=None) as bar:
        try:
            results = render_variants(raw, out, variants, jobs=pick(jobs, cfg["render"]["jobs"]),
                                      force=force, skip_invalid=skip_invalid, progress=bar.update,
                                      log=bar.write)
        except (RenderError, FileNotFoundError) as e:
            bar.close()
            fail(str(e))
    for res in results:
        if res.skipped:
            click.secho(f"{res.path}: skipped {len(res.skipped)} bad sample(s), listed in "
                        f"{res.path / 'skipped.csv'}:", fg="yellow", err=True)
            for _, reason in res.skipped:
                click.echo(f"  {reason}", err=True)
        click.echo(f"{res.path}  {res.n_images:,} images  ({res.status})")


if __name__ == "__main__":
    main()
