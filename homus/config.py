"""Settings: ``pipeline.yaml`` holds the defaults, a user's config overrides them, flags override
both. Loaded and validated here, in one place; errors name the file and the key."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from homus_render.errors import SettingsError

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
}

#: Mappings whose keys are other sections' settings (train settings for the study's runs).
FREE_FORM = {("study", "train"), ("study", "overrides"), ("study", "arms")}


class ConfigError(SettingsError):
    """A config file with an unknown key, a wrong type or a bad value."""


def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections, got {type(data).__name__}")
    return data


def _type_ok(value: Any, default: Any, key: tuple[str, ...]) -> bool:
    if value is None:
        return default is None or key in NULLABLE
    if key in NULLABLE:
        return isinstance(value, NULLABLE[key])
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, list):  # a list, or one item of the list's kind
        return isinstance(value, (list, int, str, float))
    return isinstance(value, type(default))


def _merge(base: dict, over: dict, path: Path, prefix: tuple[str, ...] = ()) -> None:
    for k, v in over.items():
        key = (*prefix, str(k))
        dotted = ".".join(key)
        if k not in base:
            known = ", ".join(sorted(base))
            raise ConfigError(f"{path}: unknown key '{dotted}' (known here: {known})")
        if key in FREE_FORM:  # replaced whole, checked by _check_free_form
            if not isinstance(v, dict):
                raise ConfigError(f"{path}: '{dotted}' must be a mapping, got {v!r}")
            base[k] = v
        elif isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{path}: '{dotted}' must be a mapping, got {v!r}")
            _merge(base[k], v, path, key)
        elif not _type_ok(v, base[k], key):
            want = type(base[k]).__name__ if base[k] is not None else "/".join(
                t.__name__ for t in NULLABLE.get(key, ()))
            raise ConfigError(f"{path}: '{dotted}' must be {want}, got {v!r}")
        else:
            base[k] = v


#: Render settings a study variant may set (sizes as in the render section).
VARIANT_KEYS = ("thickness", "size", "fit", "margin", "antialias", "staff_lines", "staff_spacing", "staff_offset")


def _check_free_form(cfg: dict, defaults: dict, path: Path) -> None:
    """The study's free-form mappings hold train settings and render settings: check those too."""
    study = cfg["study"]
    for prefix, mapping in [("study.train", study["train"])] + [
            (f"study.{kind}.{name}", m) for kind in ("overrides", "arms") for name, m in (study[kind] or {}).items()]:
        if not isinstance(mapping, dict):
            raise ConfigError(f"{path}: '{prefix}' must be a mapping of train settings, got {mapping!r}")
        _merge(copy.deepcopy(defaults["train"]), mapping, path, tuple(prefix.split(".")))
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


def load(path: str | Path | None = None) -> dict:
    """The defaults, overridden by ``path`` when given (a missing ``./pipeline.yaml`` is fine)."""
    defaults = _read(DEFAULTS_FILE)
    cfg = copy.deepcopy(defaults)
    if path is not None:
        path = Path(path)
        if path.resolve() != DEFAULTS_FILE:
            _merge(cfg, _read(path), path)
    _check_free_form(cfg, defaults, path or DEFAULTS_FILE)
    return cfg


#: Render settings a run from strokes takes from the render section (thickness and size are its own).
RENDER_SHARED = ("fit", "margin", "antialias", "staff_lines", "staff_spacing", "staff_offset")


def train_settings(cfg: dict, train: dict) -> dict:
    """``train`` (the train section, flags applied) as a run takes it: the raw folder and writers
    from ``dataset``, and for ``from_strokes`` the full render settings (its ``thickness`` and
    ``size``, the rest from ``render``), so the run's config.yaml records all of them. A run from
    strokes reads no variant folder and uses no image warp; its settings say so."""
    out = dict(train)
    w, h = parse_size(out.pop("size"))
    out["render"] = {**{k: cfg["render"][k] for k in RENDER_SHARED}, "thickness": out.pop("thickness"),
                     "width": w, "height": h}
    out.setdefault("raw_dir", cfg["dataset"]["raw_dir"])
    out.setdefault("writers", cfg["dataset"]["writers"])
    if out.get("from_strokes"):  # no folders read, no image warp: config.yaml should say so
        out.update(variants=[], aug_rotate=0.0, aug_shear=0.0, aug_scale=0.0, aug_translate=0.0)
    return out


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
