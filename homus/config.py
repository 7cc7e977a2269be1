"""Settings: ``pipeline.yaml`` holds the defaults, a user's config overrides them, flags override
both. Loaded and validated here, in one place; errors name the file and the key."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

from classifier.settings import TrainConfig, flag_of, folder_name_problem, nest_flat, read_yaml
from homus_render.errors import SettingsError
from homus_render.render import RenderSettings

#: The shipped defaults: package data, read the same from a source checkout, an editable install or a wheel.
DEFAULTS_RESOURCE = ("homus", "pipeline.yaml")


def defaults_path() -> Path:
    """Where the shipped ``pipeline.yaml`` lies (a real file in every way homus is installed)."""
    from importlib.resources import files

    return Path(str(files(DEFAULTS_RESOURCE[0]).joinpath(DEFAULTS_RESOURCE[1])))


DEFAULTS_FILE = defaults_path()

#: Keys whose default is null, with the types they may take.
NULLABLE = {
    ("dataset", "source"): (str,),
    ("dataset", "writers"): (str, int, list),
    ("render", "staff_offset"): (int,),
    ("train", "name"): (str,),
    ("train", "split_seed"): (int,),
    ("study", "split_seed"): (int,),
    ("study", "ray"): (str,),
}

#: Mappings whose keys are other sections' settings (train settings for the study's runs).
FREE_FORM = {("study", "train"), ("study", "overrides"), ("study", "arms"), ("study", "ensembles")}


class ConfigError(SettingsError):
    """A config file with an unknown key, a wrong type or a bad value."""


def _read(path: Path) -> dict:
    data = read_yaml(path, ConfigError)
    if data is None:
        raise ConfigError(f"{path}: an empty config; give the sections to change, or leave the file out")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections, got {type(data).__name__}")
    return data


#: What the items of a list setting may be, by the kind of its default's items.
ITEM_TYPES = {int: (int, str), float: (int, float), str: (str,), bool: (bool,)}


#: Keys that take another type beside their default's (a size is 96 or "128x64"; amp was true/false).
ALSO = {("train", "size"): (str,), ("train", "amp"): (bool,)}  # amp: true/false, as before the modes


def _as_train_key(key: tuple[str, ...]) -> tuple[str, ...]:
    """A key inside the study's train settings (``study.train``, ``study.arms.<arm>``,
    ``study.overrides.<variant>``) as the train section's key, which the type tables name."""
    if key[:2] == ("study", "train"):
        return ("train", *key[2:])
    if key[:2] in (("study", "arms"), ("study", "overrides")) and len(key) > 3:
        return ("train", *key[3:])
    return key


def _type_ok(value: Any, default: Any, key: tuple[str, ...]) -> bool:
    key = _as_train_key(key)
    if isinstance(value, ALSO.get(key, ())):
        return True
    if value is None:
        return default is None or key in NULLABLE
    if isinstance(value, list):  # a list where the default is one, of the default's kind of item
        if not isinstance(default, list) and list not in NULLABLE.get(key, ()):
            return False
        kinds = ITEM_TYPES[type(default[0])] if isinstance(default, list) and default else (
            (str, int) if default is None else (str, int, float, bool, dict))
        return all(isinstance(v, kinds) and (not isinstance(v, bool) or bool in kinds) for v in value)
    if key in NULLABLE:
        return isinstance(value, NULLABLE[key]) and not isinstance(value, bool)
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, list):  # one item of the list's kind
        kinds = ITEM_TYPES[type(default[0])] if default else (int, str, float)
        return isinstance(value, kinds) and (not isinstance(value, bool) or bool in kinds)
    return isinstance(value, type(default))


#: How an error names what a key takes.
TYPE_WORDS = {"float": "a number", "int": "a whole number", "bool": "true or false", "str": "a text"}


def _want(default: Any, key: tuple[str, ...]) -> str:
    key = _as_train_key(key)
    if default is None:
        return " or ".join(t.__name__ for t in NULLABLE.get(key, ())) + " or null"
    if isinstance(default, list):
        item = TYPE_WORDS.get(type(default[0]).__name__, "a value") if default else "a value"
        return f"{item} or a list of them (no nulls, no nested lists)"
    return TYPE_WORDS.get(type(default).__name__, type(default).__name__)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _merge(base: dict, over: dict, path: Path | str, prefix: tuple[str, ...] = ()) -> None:
    """Set ``over``'s values into ``base``, checking every key and type against ``base``."""
    for k, v in over.items():
        key = (*prefix, str(k))
        dotted = ".".join(key)
        if key[0] == "train" and flag_of(dotted[len("train."):]) and k in base and not isinstance(base[k], dict):
            dotted += f" ({flag_of(dotted[len('train.'):])})"
        if k not in base:
            known = ", ".join(sorted(base))
            raise ConfigError(f"{path}: unknown key '{dotted}' (known here: {known})")
        if key in FREE_FORM:  # replaced whole, checked by _check_free_form
            if not isinstance(v, dict):
                raise ConfigError(f"{path}: '{dotted}' must be a mapping, got {_short(v)}")
            base[k] = v
        elif isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{path}: '{dotted}' must be a mapping, got {_short(v)}")
            _merge(base[k], v, path, key)
        elif not _type_ok(v, base[k], key):
            raise ConfigError(f"{path}: '{dotted}' must be {_want(base[k], key)}, got {_short(v)}")
        elif isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{path}: '{dotted}' must be a finite number, got {v!r}")
        else:
            base[k] = v


#: Render settings a study variant may set (sizes as in the render section).
VARIANT_KEYS = ("thickness", "size", "fit", "margin", "antialias", "staff_lines", "staff_spacing", "staff_offset")


#: Train settings a study sets for each run (so its train settings, arms and overrides may not), and
#: where a study says them instead.
STUDY_FIXES = {
    "seed": "study.seeds", "split_seed": "study.split_seed", "folds": "study.folds", "fold": "study.folds",
    "name": "study.name (runs are named by variant, arm, fold and seed)", "runs_dir": "train.runs_dir",
    "variants": "study.variants", "thickness": "study.variants", "size": "study.variants",
}


def _check_free_form(cfg: dict, defaults: dict, path: Path) -> None:
    """The study's free-form mappings hold train settings and render settings: check those too."""
    study = cfg["study"]
    if problem := folder_name_problem(study["name"]):  # its runs' and its report's folder
        raise ConfigError(f"{path}: 'study.name' must be {problem}, got {study['name']!r}")
    if not usable_text(study["reports_dir"]):
        raise ConfigError(f"{path}: 'study.reports_dir' must be a folder, got {study['reports_dir']!r}")
    seeds = as_list(study["seeds"])
    if not seeds:
        raise ConfigError(f"{path}: 'study.seeds' is empty: give at least one seed, e.g. [0]")
    for x in seeds:
        whole = not isinstance(x, bool) and (isinstance(x, int) or re.fullmatch(r"[0-9]+", str(x)))
        if not whole or not 0 <= int(x) < 2**32:
            raise ConfigError(f"{path}: 'study.seeds' must be whole numbers from 0 to 4,294,967,295, got {x!r}")
    twice = next((int(x) for i, x in enumerate(seeds) if int(x) in map(int, seeds[:i])), None)
    if twice is not None:  # one run, counted twice as two draws of its setting
        raise ConfigError(f"{path}: 'study.seeds': seed {twice} is given twice; give each seed once")
    if study["split_seed"] is not None and (isinstance(study["split_seed"], bool) or not isinstance(
            study["split_seed"], int) or not 0 <= study["split_seed"] < 2**32):
        raise ConfigError(f"{path}: 'study.split_seed' must be a whole number from 0 to 4,294,967,295, or null, "
                          f"got {study['split_seed']!r}")
    if not isinstance(study["variants"], list):
        raise ConfigError(f"{path}: 'study.variants' must be a list of mappings of render settings, e.g. "
                          f"[{{thickness: 2, size: 32}}], got {_short(study['variants'])}")
    if not study["variants"]:
        for key in ("thickness", "size", "fit", "staff_lines"):
            if not as_list(study[key]):
                raise ConfigError(f"{path}: 'study.{key}' is empty, so the study has no variant; give at least "
                                  "one value (or study.variants)")
    for kind in ("arms", "overrides", "ensembles"):
        for name in study[kind] or {}:
            if not isinstance(name, str):  # YAML reads 1, yes, null as numbers, booleans, nothing
                raise ConfigError(f"{path}: 'study.{kind}': the name {name!r} is read as "
                                  f"{type(name).__name__}, not text; quote it ('{name}')")
    for prefix, mapping in [("study.train", study["train"])] + [
            (f"study.{kind}.{name}", m) for kind in ("overrides", "arms") for name, m in (study[kind] or {}).items()]:
        if not isinstance(mapping, dict):
            raise ConfigError(f"{path}: '{prefix}' must be a mapping of train settings, got {mapping!r}")
        fixed = next((k for k in mapping if k in STUDY_FIXES), None)
        if fixed is not None:  # the study sets it for each run: a value here would be ignored
            raise ConfigError(f"{path}: '{prefix}.{fixed}' cannot be set here: the study sets each run's "
                              f"{fixed}; use {STUDY_FIXES[fixed]}")
        _merge(copy.deepcopy(defaults["train"]), nest_flat(mapping), path, tuple(prefix.split(".")))
    for name, spec in (study["ensembles"] or {}).items():
        where = f"study.ensembles.{name}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", str(name)):
            raise ConfigError(f"{path}: '{where}': an ensemble's name becomes part of a file name; "
                              "use letters, digits and . _ + -")
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: '{where}' must be a mapping like {{arms: [a, b], seeds: [0, 1]}}, "
                              f"got {_short(spec)}")
        for key, value in spec.items():
            if key not in ("arms", "seeds"):
                raise ConfigError(f"{path}: unknown key '{where}.{key}' (known here: arms, seeds)")
            if not isinstance(value, list) or not value or not all(
                    isinstance(v, str if key == "arms" else int) and not isinstance(v, bool) for v in value):
                what = "arm names" if key == "arms" else "seeds"
                raise ConfigError(f"{path}: '{where}.{key}' must be a list of {what}, got {_short(value)}")
        unknown = sorted(set(spec.get("arms", [])) - set(study["arms"] or {}))
        if unknown:
            raise ConfigError(f"{path}: '{where}.arms': no arm named {unknown[0]!r} in study.arms")
        seeds = [int(x) for x in as_list(study["seeds"])]
        missing = sorted(set(spec.get("seeds", [])) - set(seeds))
        if missing:
            raise ConfigError(f"{path}: '{where}.seeds': seed {missing[0]} is not in study.seeds")
        if len(spec.get("seeds", seeds)) > 1 and study["split_seed"] is None:
            raise ConfigError(f"{path}: '{where}' votes models of several seeds, which must share one split: "
                              "set study.split_seed")
    if not 1 <= study["parallel"] <= 256:
        raise ConfigError(f"{path}: 'study.parallel' must be 1 to 256 runs at once, got {study['parallel']}")
    if not 0 < study["run_cpus"] <= 1024:
        raise ConfigError(f"{path}: 'study.run_cpus' must be more than 0 (up to 1024), got {study['run_cpus']}")
    if not (study["run_gpus"] == -1 or 0 <= study["run_gpus"] <= 64):
        raise ConfigError(f"{path}: 'study.run_gpus' must be -1 (one where the cluster has GPUs) or 0 to 64, "
                          f"got {study['run_gpus']}")
    if study["ray"] is not None and not study["ray"].strip():
        raise ConfigError(f"{path}: 'study.ray' must be auto, local or a cluster address, got an empty text")
    if study["folds"] == 1 or not 0 <= study["folds"] <= 100:
        raise ConfigError(f"{path}: 'study.folds' must be 0 (one split) or 2 to 100, got {study['folds']}")
    for name in study["arms"] or {}:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", str(name)):
            raise ConfigError(f"{path}: 'study.arms.{name}': an arm's name becomes part of a folder name; "
                              "use letters, digits and . _ + -")
    for i, v in enumerate(study["variants"]):
        if not isinstance(v, dict):
            raise ConfigError(f"{path}: 'study.variants[{i}]' must be a mapping of render settings, got {v!r}")
        unknown = sorted(set(v) - set(VARIANT_KEYS))
        if unknown:
            raise ConfigError(f"{path}: unknown key 'study.variants[{i}].{unknown[0]}' "
                              f"(known here: {', '.join(VARIANT_KEYS)})")


def usable_text(value: str) -> bool:
    """A text setting that says something: not blank, no control characters."""
    return bool(value.strip()) and value.isprintable()


#: ``homus serve``'s log levels (uvicorn's names).
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
#: The serve section's whole numbers and their ranges (the flags take the same).
SERVE_RANGES = {"port": (0, 65535), "max_samples": (1, 10**9), "threads": (0, 1024), "max_batch": (1, 1024)}


def check_serve(serve: dict, path: Path | str) -> None:
    """The serve section's values (its types are checked by the merge), from a file or, merged with
    the flags given, at ``homus serve``'s start: named both ways, ``'serve.port (--port)'``."""
    def name(key: str) -> str:
        return f"'serve.{key} (--{key.replace('_', '-')})'"

    for key in ("host", "collect_dir"):
        if not serve[key].strip():
            raise ConfigError(f"{path}: {name(key)} must not be empty (an empty host would listen on every "
                              "address, an empty folder is the current one)")
        if not serve[key].isprintable():
            raise ConfigError(f"{path}: {name(key)} holds a control character: {serve[key]!r}")
    for key, (low, high) in SERVE_RANGES.items():
        if not low <= serve[key] <= high:
            raise ConfigError(f"{path}: {name(key)} must be {low} to {high if key == 'port' else f'{high:,}'}, "
                              f"got {serve[key]}")
    if serve["log_level"] not in LOG_LEVELS:
        raise ConfigError(f"{path}: {name('log_level')} must be one of {', '.join(LOG_LEVELS)}, "
                          f"got {serve['log_level']!r}")


def check_readers(cfg: dict, path: Path | str) -> None:
    """The sections of the commands that read finished runs (their types are checked by the merge)."""
    from classifier.settings import DEVICES
    from homus_render.normalize import READS

    choices = {("evaluate", "device"): DEVICES, ("predict", "read"): READS}
    for (section, key), allowed in choices.items():
        if cfg[section][key] not in allowed:
            raise ConfigError(f"{path}: '{section}.{key} (--{key})' must be one of {', '.join(allowed)}, "
                              f"got {cfg[section][key]!r}")
    for section, key, low, high in (("predict", "top_k", 1, 32), ("explain", "top_k", 1, 32),
                                    ("export", "check", 0, 10**9)):
        if not low <= cfg[section][key] <= high:
            raise ConfigError(f"{path}: '{section}.{key} (--{key.replace('_', '-')})' must be {low} to {high:,}, "
                              f"got {cfg[section][key]}")
    for section, key in (("explain", "out"), ("export", "out"), ("compare", "out"), ("compare", "title")):
        if not usable_text(cfg[section][key]):
            raise ConfigError(f"{path}: '{section}.{key} (--{key})' must be a printable, non-empty text, "
                              f"got {cfg[section][key]!r}")


def load(path: str | Path | None = None) -> dict:
    """The defaults, overridden by ``path`` when given (a missing ``./pipeline.yaml`` is fine)."""
    defaults = _read(DEFAULTS_FILE)
    cfg = copy.deepcopy(defaults)
    if path is not None:
        path = Path(path)
        if path.resolve() != DEFAULTS_FILE:
            _merge(cfg, _read(path), path)
    _check_free_form(cfg, defaults, path or DEFAULTS_FILE)
    check_serve(cfg["serve"], path or DEFAULTS_FILE)
    check_readers(cfg, path or DEFAULTS_FILE)
    try:
        train_config(cfg, source=path or DEFAULTS_FILE)  # the file's own train settings, blamed on the file
    except SettingsError as e:
        raise blame(e, path or DEFAULTS_FILE) from None
    return cfg


def blame(e: SettingsError, source: str | Path) -> ConfigError:
    """``e``, a setting ``source`` asks for that cannot be, as a :class:`ConfigError` naming the file."""
    text = str(e)
    return ConfigError(text if text.startswith(f"{source}:") else f"{source}: {text}")


#: Render settings a run takes from the render section (thickness and size are the train section's own).
RENDER_SHARED = ("fit", "margin", "antialias", "staff_lines", "staff_spacing", "staff_offset")
#: Settings a run takes from the dataset section unless given.
FROM_DATASET = ("raw_dir", "writers", "extra_raw")


def train_config(cfg: dict, overrides: dict | list[dict] | None = None, render: RenderSettings | None = None,
                 source: str | Path = "flags") -> TrainConfig:
    """The one path from settings to a run: the ``train`` section of ``cfg`` (pipeline.yaml < the
    user's config), then ``overrides`` (flags, or a study's layers of settings applied in order,
    each checked like a config's), then the layout a run records: ``raw_dir`` and ``writers`` from
    ``dataset``; ``render`` from the train section's ``thickness`` and ``size`` with the rest from
    the render section (or the variant ``render`` given); a run from strokes reads no variant
    folder and uses no image warp."""
    layers = [dict(o) for o in (overrides if isinstance(overrides, list) else [overrides or {}])]
    data = {k: cfg["dataset"][k] for k in FROM_DATASET}
    train = copy.deepcopy(cfg["train"])
    for over in layers:  # in order, each over the last, nested mappings key by key
        data.update({k: over.pop(k) for k in FROM_DATASET if k in over})
        _merge(train, nest_flat(over), source, ("train",))
    thickness, size = train.pop("thickness"), train.pop("size")
    if render is None:
        w, h = parse_size(size)
        try:
            render = RenderSettings(**{k: cfg["render"][k] for k in RENDER_SHARED}, thickness=thickness,
                                    width=w, height=h)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: render settings: {e}") from None
    out = {**train, **data, "raw_dir": str(data["raw_dir"]), "render": render.to_dict(),
           "extra_raw": [str(e) for e in as_list(data["extra_raw"])],
           "variants": [str(v) for v in as_list(train["variants"])], "channels": as_list(train["channels"])}
    if out["from_strokes"]:  # no folders read, no image warp: config.yaml should say so
        out.update(variants=[], warp=dict.fromkeys(train["warp"], 0.0))
    return TrainConfig.from_dict(out, source)


def as_list(value: Any) -> list:
    """``3``, ``"1,2,3"`` or ``[1, 2, 3]`` -> a list."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [value]


def parse_size(value: Any) -> tuple[int, int]:
    """``96`` or ``"96"`` -> (96, 96); ``"128x64"`` -> (128, 64)."""
    from homus_render.render import parse_size as parse

    try:
        return parse(value)
    except ValueError as e:
        raise ConfigError(str(e)) from None
