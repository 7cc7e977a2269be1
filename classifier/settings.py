"""A training run's settings: :class:`TrainConfig`, built from one mapping and checked in one place.

The mapping is the ``train`` section of the merged config (``pipeline.yaml`` < the user's file <
flags) as ``homus.config.train_config`` lays it out, or a run's ``config.yaml`` read back. Every
key must be there and known: there are no defaults here (they live in ``pipeline.yaml`` only), so
nothing can drift. Nested: ``render`` (how a run from strokes draws, :class:`RenderSettings`),
``strokes`` (the stroke augmentation, :class:`StrokeAugment`) and ``warp`` (the image warp of runs
on rendered folders, :class:`~classifier.augment.Affine`).

Torch-free at import, so the command line can take its choices from here without loading torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homus_render.channels import check_channels
from homus_render.distort import StrokeAugment
from homus_render.errors import SettingsError
from homus_render.render import RenderSettings

from .splits import KINDS, split_seed_of

if TYPE_CHECKING:
    from .augment import Affine, BatchMix

ARCHS = ("resnet18", "resnet34", "resnet50")
#: The layers before the first residual block: torchvision's (imagenet: 7x7 conv, stride 2, max pool),
#: a 3x3 conv with stride 1 and the max pool (small), or the 3x3 conv alone (cifar). See build_model.
STEMS = ("imagenet", "small", "cifar")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "linear", "constant")
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Who draws a run's training images from strokes: homus_render in loader processes (cpu), the torch
#: rasterizer on the training device (device), or device on CUDA and cpu elsewhere (auto).
RASTERS = ("cpu", "device", "auto")
#: Mixed precision (autocast): auto (CUDA: bf16 where supported, else fp16 with loss scaling; full
#: precision elsewhere), bf16 (CUDA or CPU), fp16 (CUDA, with loss scaling), off (full precision).
AMP_MODES = ("auto", "bf16", "fp16", "off")
#: What ``amp: true`` and ``amp: false`` (the settings before the modes) mean now.
AMP_OF_BOOL = {True: "auto", False: "off"}
#: The image warp's ranges (fields of :class:`~classifier.augment.Affine`).
WARP_KEYS = ("rotate", "shear", "scale", "translate")

#: Seed arithmetic of a run: the training order is drawn with ``seed * SEED_STRIDE`` and each epoch's
#: image warps with ``seed * SEED_STRIDE + epoch + WARP_SEED_OFFSET`` and its batch blends (mixup,
#: cutmix) with ``... + MIX_SEED_OFFSET``: the offsets keep one run's streams apart from each other.
SEED_STRIDE = 100_003
WARP_SEED_OFFSET = 1_000_000
MIX_SEED_OFFSET = 2_000_000

#: Settings that say where and how fast a run trains, not what it learns: runs that differ only in
#: these are the same run (a study resumed on another machine, on a GPU, on a cluster). The paths are
#: here because the data behind them is checked by its content hash (``data.json``), not its name.
WHERE_KEYS = ("device", "amp", "compile", "workers", "raster", "threads", "runs_dir", "raw_dir", "extra_raw",
              "name")

#: Whole-number settings and their bounds (inclusive).
INT_BOUNDS = {"folds": (0, 100), "seed": (0, 2**32 - 1), "epochs": (1, 100_000), "batch_size": (2, 65_536),
              "workers": (0, 256), "threads": (0, 4096)}


def flag_of(key: str) -> str:
    """The command-line flag that sets ``key`` (a dotted train key), for error messages."""
    section, _, name = key.rpartition(".")
    if section == "strokes":
        return f"--stroke-{name.replace('_', '-')}"
    if section:
        return ""
    return f"--{key.replace('_', '-')}"


def _named(key: str) -> str:
    flag = flag_of(key)
    return f"train.{key}" + (f" ({flag})" if flag else "")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run. No field has a default: ``pipeline.yaml`` (section ``train``) holds them."""

    variants: list[str]
    arch: str
    stem: str  # STEMS: how much the layers before the first block shrink the image
    weights: str
    split: str
    folds: int  # 0: one split; k >= 2: k-fold cross-validation of ``split``, this run tests on fold ``fold``
    fold: int
    seed: int
    split_seed: int | None  # None: seed
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    schedule: str
    label_smoothing: float
    mixup_alpha: float  # each training batch blended with itself rolled by one, weight ~ Beta(a, a); 0: off
    cutmix_alpha: float  # ... or a box pasted from it, its area ~ Beta(a, a); both > 0: one of the two per batch
    ema: float  # decay of the moving average of the weights that validation, best.pt and the test use; 0: off
    from_strokes: bool
    raw_dir: str
    writers: str | int | list | None  # from_strokes: only these writers, e.g. "1-5"
    extra_raw: list[str]  # from_strokes: folders of collected samples, added as more writers
    render: RenderSettings
    strokes: StrokeAugment
    warp: Affine
    channels: list[str]  # ink, time, stroke, size (from_strokes)
    device: str
    amp: str  # AMP_MODES
    compile: bool  # torch.compile the model for its training and validation steps
    workers: int
    raster: str  # from_strokes: cpu, device or auto (RASTERS)
    threads: int
    runs_dir: str
    name: str | None

    def __post_init__(self) -> None:
        check_train(self)

    # --- from and to a mapping ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, source: str | Path = "settings") -> TrainConfig:
        """Settings from the nested mapping :meth:`to_dict` gives (the layout of a run's
        ``config.yaml``). Every key must be known and present; errors name the key and ``source``."""
        from .augment import Affine

        if not isinstance(d, dict):
            raise SettingsError(f"{source}: train settings are a mapping, got {type(d).__name__}")
        _check_keys(cls, d, "train", source)
        out = dict(d)
        for key, kind in (("render", RenderSettings), ("strokes", StrokeAugment), ("warp", Affine)):
            out[key] = _nested(kind, key, d[key], source)
        for key in ("variants", "channels", "extra_raw"):
            if isinstance(out[key], str):
                out[key] = [v.strip() for v in out[key].split(",") if v.strip()]
            if not isinstance(out[key], list) or not all(isinstance(v, str) for v in out[key]):
                raise SettingsError(f"{source}: '{_named(key)}' must be a list of names, got {d[key]!r}")
        for f in fields(cls):  # 0 and 0.0 are one setting: a run records it one way, whichever was typed
            if f.type == "float" and _number(out[f.name]):
                out[f.name] = float(out[f.name])
        try:
            return cls(**out)
        except SettingsError as e:
            raise SettingsError(f"{source}: {e}") from None

    def to_dict(self) -> dict:
        """Every setting, nested as ``config.yaml`` records it (plain YAML types)."""
        return asdict(self)

    # --- what train() asks for ----------------------------------------------------------------
    def render_settings(self) -> RenderSettings:
        """How a run from strokes draws its images (plain, for validation and test)."""
        return self.render

    def stroke_augment(self) -> StrokeAugment:
        """The stroke-level augmentation of a run from strokes."""
        return self.strokes

    def mixing(self, classes: int) -> BatchMix:
        """The blending of training batches these settings ask for (inactive when both alphas are 0)."""
        from .augment import BatchMix

        return BatchMix(classes, self.mixup_alpha, self.cutmix_alpha)

    def augmentation(self) -> Affine:
        """The image warp these settings ask for (inactive when all ranges are 0, and for runs from
        strokes, which are distorted before drawing instead)."""
        from .augment import Affine

        return Affine() if self.from_strokes else self.warp

    def run_name(self) -> str:
        """The run's folder name: ``name``, else one made of what it trains on, arch, split, fold
        and seed (:func:`run_folder_name`)."""
        if self.name:
            return self.name
        if self.from_strokes:
            extra = "" if self.channels == ["ink"] else "-" + "+".join(self.channels)
            what = f"strokes-{self.render.name}{extra}"
        else:
            what = "+".join(Path(v).name for v in self.variants)
        tag = "" if self.split_seed in (None, self.seed) else str(self.split_seed)
        return run_folder_name([what, self.arch, f"{self.split}{tag}"], self.fold if self.folds else None, self.seed)

    @property
    def split_rng_seed(self) -> int:
        """The seed the split is drawn with."""
        return split_seed_of(self.seed, self.split_seed)


def learned_settings(d: dict) -> dict:
    """The settings of a run's mapping (``config.yaml``'s layout) that change what it learns, flat
    (``strokes.rotate``): not where it trains (:data:`WHERE_KEYS`), and nothing its kind of run
    ignores. A run from strokes ignores rendered folders and the image warp, and the size jitter
    without a size channel; a run on rendered folders (one, or their union) ignores how strokes are
    drawn and distorted, which its folders fix. Rendered folders compare by name, a checkpoint to
    start from by its absolute path (a Ray run records paths made absolute)."""
    strokes = bool(d.get("from_strokes"))
    skip = set(WHERE_KEYS) | ({"variants", "warp"} if strokes else {"render", "strokes", "writers"})
    flat = {}
    for key, value in d.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif key == "variants":
            flat[key] = [Path(v).name for v in value]
        elif key == "weights" and value not in ("none", "imagenet"):
            flat[key] = str(Path(value).expanduser().resolve())
        else:
            flat[key] = value
    if strokes and "size" not in (d.get("channels") or ["ink"]):  # the size jitter moves no pixel of these
        flat.pop("strokes.size", None)
    return flat


def setting_differences(recorded: dict, asked: dict) -> list[tuple[str, Any, Any]]:
    """``(key, recorded, asked)`` for each setting of :func:`learned_settings` that differs between
    two runs' mappings (``None`` where one of them lacks it)."""
    a, b = learned_settings(recorded), learned_settings(asked)
    return [(k, a.get(k), b.get(k)) for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def run_folder_name(parts: list[str], fold: int | None, seed: int) -> str:
    """The one grammar of run folder names, for ``homus train`` and studies alike: what the run
    trains on (``parts``, joined by ``-``), then ``-fold<i>`` for a fold of a cross-validation, then
    ``-seed<s>``."""
    fold_tag = [] if fold is None else [f"fold{fold}"]
    return "-".join([*parts, *fold_tag, f"seed{seed}"])


def _check_keys(kind: type, value: dict, prefix: str, source: str | Path, complete: bool = True) -> None:
    """Every key of ``value`` is a field of the dataclass ``kind`` (and, when ``complete``, every
    field is there); errors name the key, ``prefix.key``, and ``source``."""
    known = [f.name for f in fields(kind)]
    unknown = [k for k in value if k not in known]
    if unknown:
        raise SettingsError(f"{source}: unknown key '{prefix}.{unknown[0]}' (known: {', '.join(known)})")
    missing = [k for k in known if k not in value]
    if missing and complete:
        raise SettingsError(f"{source}: lacks '{prefix}.{missing[0]}'")


def _nested(kind: type, key: str, value: Any, source: str | Path):
    if isinstance(value, kind):
        return value
    if not isinstance(value, dict):
        raise SettingsError(f"{source}: 'train.{key}' must be a mapping, got {value!r}")
    # older runs recorded part of the render settings
    _check_keys(kind, value, f"train.{key}", source, complete=kind is not RenderSettings)
    for name, v in value.items():
        if kind is not RenderSettings and not (_number(v) and math.isfinite(v) and v >= 0):
            raise SettingsError(f"{source}: '{_named(f'{key}.{name}')}' must be a finite number >= 0, got {v!r}")
    try:
        return kind(**value)
    except (TypeError, ValueError) as e:
        raise SettingsError(f"{source}: 'train.{key}': {e}") from None


def check_train(c: TrainConfig) -> None:
    """Refuse settings a run cannot use: the first problem, naming its key and flag."""
    def bad(key: str, want: str) -> SettingsError:
        return SettingsError(f"{_named(key)} must be {want}, got {getattr(c, key)!r}")

    if isinstance(c.amp, bool):  # true / false, as configs wrote it before the modes
        object.__setattr__(c, "amp", AMP_OF_BOOL[c.amp])
    for key, choices in (("arch", ARCHS), ("stem", STEMS), ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                         ("split", KINDS), ("device", DEVICES), ("raster", RASTERS), ("amp", AMP_MODES)):
        if getattr(c, key) not in choices:
            raise bad(key, f"one of {', '.join(choices)}")
    for key, (lo, hi) in INT_BOUNDS.items():
        v = getattr(c, key)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise bad(key, f"a whole number from {lo} to {hi:,}")
    if c.folds == 1 or not 0 <= c.folds <= 100:
        raise bad("folds", "0 (one split) or a number of folds from 2 to 100")
    if not isinstance(c.fold, int) or isinstance(c.fold, bool) or not 0 <= c.fold < max(1, c.folds):
        raise bad("fold", f"a fold from 0 to {max(0, c.folds - 1)}")
    if c.split_seed is not None and (isinstance(c.split_seed, bool) or not isinstance(c.split_seed, int)
                                     or c.split_seed < 0):
        raise SettingsError(f"split_seed must be a whole number >= 0 or null, got {c.split_seed!r}")
    for key in ("lr", "momentum", "weight_decay", "label_smoothing", "mixup_alpha", "cutmix_alpha", "ema"):
        if not _number(getattr(c, key)) or not math.isfinite(getattr(c, key)):
            raise bad(key, "a finite number")
    if not c.lr > 0:
        raise bad("lr", "> 0")
    if not c.weight_decay >= 0:
        raise bad("weight_decay", ">= 0")
    if not 0 <= c.momentum < 1:
        raise bad("momentum", "from 0 to below 1")
    if not 0 <= c.label_smoothing < 1:
        raise bad("label_smoothing", "from 0 to below 1")
    for key in ("mixup_alpha", "cutmix_alpha"):
        if not (getattr(c, key) == 0 or 1e-3 <= getattr(c, key) <= 1e3):
            raise bad(key, "0 (off) or a Beta distribution's alpha from 0.001 to 1000, e.g. 0.2 or 1.0")
    if not 0 <= c.ema < 1:
        raise bad("ema", "0 (off) or a decay from 0 to below 1, e.g. 0.999")
    for key in ("from_strokes", "compile"):
        if not isinstance(getattr(c, key), bool):
            raise bad(key, "true or false")
    for key in ("weights", "raw_dir", "runs_dir"):
        if not isinstance(getattr(c, key), str) or not getattr(c, key):
            raise bad(key, "a non-empty text")
    if c.weights == "imagenet" and c.stem != "imagenet":
        raise SettingsError(f"--weights imagenet needs --stem imagenet: the ImageNet weights' first layer is "
                            f"torchvision's 7x7 convolution, not the {c.stem} stem's 3x3 one")
    if c.name is not None and (problem := folder_name_problem(c.name)):
        raise bad("name", f"{problem}, or null")
    if not c.variants and not c.from_strokes:
        raise SettingsError("at least one --variant is needed (or --from-strokes)")
    object.__setattr__(c, "channels", list(check_channels(c.channels)))
    if c.channels != ["ink"] and not c.from_strokes:
        raise SettingsError(f"channels {','.join(c.channels)}: the pen's order and the tablet's size exist only "
                            "in the strokes; train --from-strokes (rendered folders hold ink alone)")
    if c.strokes.redraw and (c.channels != ["ink"] or not c.from_strokes):
        raise SettingsError(f"--stroke-redraw {c.strokes.redraw} draws other tools' images of the ink from the "
                            "strokes: it needs --from-strokes and --channels ink (other channels have no such image)")


# --- run folders written before the nested layout ------------------------------------------------
#: Flat keys of older runs' config.yaml and where they live now.
FLAT_PREFIXES = {"stroke_": "strokes", "aug_": "warp"}


def nest_flat(d: dict) -> dict:
    """A run's settings in the nested layout: older runs recorded the stroke augmentation as
    ``stroke_<name>`` and the image warp as ``aug_<name>``; they move into ``strokes`` and ``warp``
    (a study's arms may still be written so). Settings already nested come back unchanged (a copy)."""
    known = {"strokes": {f.name for f in fields(StrokeAugment)}, "warp": set(WARP_KEYS)}
    out = {}
    for k, v in d.items():
        prefix = next((p for p in FLAT_PREFIXES if isinstance(k, str) and k.startswith(p)), None)
        if prefix is None or k[len(prefix):] not in known[FLAT_PREFIXES[prefix]]:
            out[k] = v  # not a flat key (or a mistyped one: left as written, so an error names it so)
        else:
            out.setdefault(FLAT_PREFIXES[prefix], {})[k[len(prefix):]] = v
    return out


def check_run_config(d: dict, source: str | Path) -> None:
    """What evaluate, predict, serve and the reports read from a run's recorded settings (after
    :func:`upgrade_run_config`): every key known, the nested sections valid mappings, the lists
    lists of names. Ranges that only matter for training (``train --resume`` checks those) are
    left alone, so a run made under older limits still reads. SettingsError naming the key and
    ``source``."""
    from .augment import Affine

    _check_keys(TrainConfig, d, "train", source, complete=False)
    for key, kind in (("render", RenderSettings), ("strokes", StrokeAugment), ("warp", Affine)):
        if key in d:
            _nested(kind, key, d[key], source)
    for key in ("variants", "channels", "extra_raw"):
        if key in d and not (isinstance(d[key], list) and all(isinstance(v, str) for v in d[key])):
            raise SettingsError(f"{source}: '{_named(key)}' must be a list of names, got {d[key]!r}")


def upgrade_run_config(d: dict) -> dict:
    """A run's ``config.yaml`` in today's layout (:func:`nest_flat`). Settings older runs did not
    record yet are filled with what their absence meant then: no split seed of its own, ink alone,
    every writer, no stroke distortion or image warp of that kind."""
    out = nest_flat(d)
    out.setdefault("split_seed", None)
    out.setdefault("folds", 0)
    out.setdefault("fold", 0)
    out.setdefault("channels", ["ink"])
    out.setdefault("writers", None)
    if out["writers"] == "":  # what an empty --writers recorded when it meant every writer
        out["writers"] = None
    out.setdefault("extra_raw", [])
    out.setdefault("raster", "cpu")  # runs before the torch rasterizer drew on the CPU
    out.setdefault("compile", False)  # and ran the model eagerly
    out.setdefault("ema", 0.0)  # and kept no moving average of the weights
    out.setdefault("mixup_alpha", 0.0)  # nor blended images
    out.setdefault("cutmix_alpha", 0.0)
    out.setdefault("stem", "imagenet")  # and had torchvision's stem
    if isinstance(out.get("amp"), bool):  # and said amp: true (CUDA only) or false
        out["amp"] = AMP_OF_BOOL[out["amp"]]
    for key, names in (("strokes", [f.name for f in fields(StrokeAugment)]), ("warp", WARP_KEYS)):
        if isinstance(out.get(key, {}), dict):
            out[key] = {**dict.fromkeys(names, 0.0), **out.get(key, {})}
    return out


# --- YAML files that fight back -----------------------------------------------------------------
#: The most values a YAML file may expand to through its aliases (a config holds a few hundred).
MAX_YAML_VALUES = 100_000


def folder_name_problem(name) -> str | None:
    """What keeps ``name`` from naming one folder inside another (a run's, a study's), or None:
    ``..`` or an absolute path would write outside it, ``.`` or an empty name into it."""
    if not isinstance(name, str) or not name.strip():
        return "a folder's name (not empty)"
    if name in (".", "..") or "/" in name or "\\" in name:
        return "one folder's name (no '/' or '\\', not '.' or '..')"
    if not name.isprintable():
        return "a folder's name of printable characters"
    return None


def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """A SafeLoader that refuses documents whose aliases expand past :data:`MAX_YAML_VALUES`
        values, or refer to themselves: the node graph is measured before anything is built."""

        def construct_document(self, node):
            _measure(node, {}, set())
            return super().construct_document(node)

        def construct_mapping(self, node, deep=False):
            """Refuse a key given twice in one mapping (PyYAML keeps the last without a word);
            keys merged in with ``<<`` may be overridden, as YAML means."""
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    try:
                        first = seen.get(key)
                    except TypeError:  # an unhashable key: the base class says what is wrong
                        continue
                    if first is not None:
                        where = f"line {line}" if first == line else f"lines {first} and {line}"
                        raise yaml.constructor.ConstructorError(
                            None, None, f"the key {key!r} is given twice ({where}); keep one", key_node.start_mark)
                    seen[key] = line
            return super().construct_mapping(node, deep)

    # YAML 1.2 reads 1e-3 as a number; PyYAML (YAML 1.1) wants 1.0e-3 and would hand "1e-3" on as text
    exponent = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent, list("-+0123456789"))
    return Loader


def _measure(node, memo: dict, open_: set) -> int:
    import yaml

    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_:
        raise _TooBig("an alias refers to the node that holds it")
    open_.add(key)
    if isinstance(node, yaml.SequenceNode):
        n = 1 + sum(_measure(c, memo, open_) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n = 1 + sum(_measure(k, memo, open_) + _measure(v, memo, open_) for k, v in node.value)
    else:
        n = 1
    open_.discard(key)
    if n > MAX_YAML_VALUES:
        raise _TooBig(f"its aliases expand to more than {MAX_YAML_VALUES:,} values")
    memo[key] = n
    return n


class _TooBig(Exception):
    pass


def read_yaml(path: str | Path, error: type[Exception] = SettingsError) -> Any:
    """A YAML file's content, or ``error`` with one line naming the file: unreadable, not UTF-8,
    not YAML, or aliases that expand without bound (a "billion laughs" file fails fast, in memory
    bounded by the file's size)."""
    import yaml

    from homus_render.errors import user_os_error

    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: a folder, not a settings file; give a YAML file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise user_os_error(e) or error(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506  (a SafeLoader)
    except _TooBig as e:
        raise error(f"{path}: refused: {e}; write the values out") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{path}: not valid YAML{at}: {problem}") from None
