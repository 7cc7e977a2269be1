"""A run folder and everything in it, read in one place.

``<runs_dir>/<name>/`` holds ``config.yaml`` (every setting), ``split.json`` (the sample ids of
train, val and test), ``data.json`` (the absolute identity of the data it was trained on),
``best.pt`` (the model), ``last.pt`` (the resume state, while the run is unfinished),
``history.csv``, ``metrics.json`` (written last: a run that has it is complete) and its pictures.
:class:`RunFolder` reads them, checks them, and rebuilds the run's test images exactly as the run
drew them; ``train``, ``evaluate``, ``predict``, the reports, the benchmarks and the web service
all go through it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from homus_render.dataset import content_hash, file_digest, list_stroke_files, load_samples, parse_writers
from homus_render.errors import HomusError, SettingsError, user_os_error
from homus_render.lock import busy
from homus_render.render import RenderSettings
from homus_render.strokes import Sample

from . import checkpoint
from .data import DataError, Variant, dataset_sha256, load_variant, variant_info
from .settings import check_run_config, read_yaml, setting_differences, upgrade_run_config
from .strokeset import render_samples

CONFIG, SPLIT, DATA, METRICS, HISTORY = "config.yaml", "split.json", "data.json", "metrics.json", "history.csv"
BEST, LAST = "best.pt", "last.pt"
#: A new best model waits here until ``last.pt`` of its epoch is saved, then takes ``best.pt``'s
#: place: a kill between the two never leaves a best model from an epoch the run will redo.
BEST_PENDING = ".best-pending.pt"
#: What a finished run's metrics.json holds for the reports, and its types.
METRIC_KEYS = {"test_accuracy": (int, float), "macro_f1": (int, float), "val_accuracy": (int, float),
               "n_test": int, "train_seconds": (int, float), "variants": list, "split": str}
#: Files a run writes and reads back: no other command's output may take their place.
RUN_FILES = frozenset({CONFIG, SPLIT, DATA, METRICS, HISTORY, BEST, LAST, BEST_PENDING, "summary.json"})
#: What ``last.pt`` holds beyond the model, for continuing a run; ``best.pt`` leaves it out.
RESUME_STATE = ("optimizer", "scheduler", "scaler", "ema")


class RunError(HomusError, RuntimeError):
    """A run that cannot start, continue or be read as asked."""


def check_not_a_run_file(out: str | Path, runs) -> None:
    """Refuse an output path that is one of the run files of ``runs`` (``evaluate --out
    runs/a/best.pt`` wrote JSON over the model)."""
    out = Path(out).resolve()
    for run in runs:
        if out.parent == Path(run).resolve() and out.name in RUN_FILES:
            raise RunError(f"{out}: that is run {run}'s own {out.name}, which this would overwrite; "
                           "give --out another file")


def _read_json(path: Path, missing: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path.parent}: {missing}") from None
    except OSError as e:
        raise user_os_error(e) or e from None
    except (UnicodeDecodeError, ValueError) as e:
        raise RunError(f"{path}: not valid JSON ({e}); the run folder is damaged, train it again") from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: expected a JSON object, got {type(data).__name__}; train the run again")
    return data


def raw_identity(raw_dir: str | Path, writers: str | int | list | None = None,
                 extra: list[str] | tuple = ()) -> dict:
    """The absolute identity of a raw folder's stroke files (of ``writers``): its path, the number of
    files and their content hash (the same hash ``homus fetch`` and ``homus render`` record)."""
    raw = Path(raw_dir).resolve()
    extra = [str(Path(e).resolve()) for e in extra]
    files = list_stroke_files(raw, parse_writers(writers), extra)
    digests = {}
    for rel in files:
        try:
            digests[rel] = file_digest((raw / rel).read_bytes())
        except OSError as e:
            raise user_os_error(e) or e from None
    return {"raw_dir": str(raw), "extra_raw": extra, "files": len(files), "sha256": content_hash(digests)}


def same_data(recorded: dict, now: dict) -> bool:
    """Whether two data identities (a run's ``data.json``; :func:`raw_identity` for a run from strokes,
    ``{"variants": [{"sha256"}]}`` for one on rendered folders) name the same data, wherever it lies."""
    return recorded.get("sha256") == now.get("sha256") and \
        [v.get("sha256") for v in recorded.get("variants", [])] == [v.get("sha256") for v in now.get("variants", [])]


@dataclass(frozen=True)
class RunFolder:
    """One run's folder. Reading never changes it; :meth:`check_data` says whether the data at
    hand is what the run recorded."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    # --- what the run recorded -------------------------------------------------------------
    def config(self) -> dict:
        """``config.yaml``: every setting the run was made with (checked to be a mapping), in
        today's nested layout whatever layout the run recorded (:func:`upgrade_run_config`)."""
        self._a_run()
        path = self.file(CONFIG)
        cfg = read_yaml(path, RunError)
        if not isinstance(cfg, dict) or not cfg:
            raise RunError(f"{path}: a run's config is a mapping of settings, got "
                           f"{'an empty file' if not cfg else type(cfg).__name__}; the run folder is damaged")
        cfg = upgrade_run_config(cfg)
        try:  # through the one settings check, so a hand-edited value is an error here, not a crash later
            check_run_config(cfg, path)
        except SettingsError as e:
            raise RunError(f"{e}; the run folder is damaged, or was made by a newer homus") from None
        return cfg

    def split(self) -> dict:
        """``split.json``: ``kind``, ``seed`` and the sample ids of ``train``, ``val`` and ``test``."""
        self._a_run()
        split = _read_json(self.file(SPLIT), f"not a homus run folder (no {SPLIT}); train it first")
        where = self.file(SPLIT)
        for key in ("kind", "train", "val", "test"):
            if key not in split:
                raise RunError(f"{where}: lacks '{key}'; the run folder is damaged")
        for key in ("train", "val", "test"):
            ids = split[key]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise RunError(f"{where}: '{key}' must be a list of sample names; the run folder is damaged")
            if len(set(ids)) != len(ids):
                raise RunError(f"{where}: '{key}' names a sample twice; the run folder is damaged")
        if not split["test"]:
            raise RunError(f"{where}: the test split is empty; the run folder is damaged")
        shared = set(split["test"]) & (set(split["train"]) | set(split["val"]))
        if shared:
            raise RunError(f"{where}: test sample {sorted(shared)[0]} is also a training or validation sample; "
                           "the run folder is damaged")
        return split

    def metrics(self) -> dict:
        """``metrics.json`` of a finished run."""
        self._a_run()  # not a run at all: resuming it is no way out
        training = busy(self.path)
        m = _read_json(self.file(METRICS), f"not a finished homus run (no {METRICS}); "
                       + (f"{training} is training it: wait for it to finish" if training else
                          f"finish it with `homus train --resume {self.path}`"))
        for key, kinds in METRIC_KEYS.items():  # what reports read: a hand-edited file is named, not a KeyError
            value = m.get(key) if isinstance(m, dict) else None
            if (not isinstance(value, kinds) or isinstance(value, bool)
                    or (isinstance(value, float) and not math.isfinite(value))):
                what = "missing" if not isinstance(m, dict) or key not in m else f"{value!r}"
                raise RunError(f"{self.file(METRICS)}: '{key}' is {what}; the file was edited or damaged: "
                               f"train the run again (homus train) or restore the file")
        return m

    @property
    def complete(self) -> bool:
        return self.file(METRICS).is_file()

    def fingerprint(self) -> str:
        """The sha256 of ``metrics.json``: which training of this run finished (a run trained again
        writes another), wherever its folder now lies. What a saved ensemble score records of its members."""
        try:
            return file_digest(self.file(METRICS).read_bytes())
        except FileNotFoundError:
            raise RunError(f"{self.path}: not a finished homus run (no {METRICS})") from None
        except OSError as e:
            raise user_os_error(e) or e from None

    def evaluations(self) -> dict[str, float]:
        """Test accuracy by variant from the run's ``eval-<variant>.json`` files that score its finished
        training (:meth:`fingerprint`): one saved before the run was trained on, or a damaged file,
        is left out rather than reported beside the training it did not score."""
        own = self.fingerprint()
        evals = {}
        for f in sorted(self.path.glob("eval-*.json")):
            try:
                e = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            acc = e.get("test_accuracy") if isinstance(e, dict) else None
            if (isinstance(e, dict) and e.get("fingerprint") == own and isinstance(e.get("variant"), str)
                    and isinstance(acc, (int, float)) and not isinstance(acc, bool) and math.isfinite(acc)):
                evals[e["variant"]] = acc
        return evals

    def data(self) -> dict:
        """``data.json``: where the run's data was and its content hash (``{}`` for runs made before
        homus recorded it)."""
        return _read_json(self.file(DATA), "") if self.file(DATA).is_file() else {}

    def _a_run(self) -> None:
        """Refuse a folder that is no run at all, before looking for its files one by one."""
        if not self.file(CONFIG).is_file():
            raise RunError(f"{self.path}: not a homus run folder (no {CONFIG}); give the folder of a run that "
                           "homus train made")

    def checkpoint(self, which: str = BEST) -> dict:
        """The checkpoint ``which``, checked to be this run's (:meth:`_check_own`)."""
        self._a_run()
        return self._check_own(checkpoint.load(self.file(which)), which)

    def load_model(self, which: str = BEST) -> tuple[nn.Module, dict]:
        """The run's model (eval mode, on the CPU) and its checkpoint dict, checked to be this run's."""
        self._a_run()
        model, ckpt = checkpoint.load_model(self.file(which))
        return model, self._check_own(ckpt, which)

    def _check_own(self, ckpt: dict, which: str) -> dict:
        """Refuse a checkpoint trained under other settings than ``config.yaml`` holds: another run's
        model copied in, or a config edited since. Its test split and images are rebuilt from
        ``config.yaml``, so either would score a model on data it was not meant for (a model of
        another seed on a split holding its own training writers)."""
        if not isinstance(ckpt.get("config"), dict):  # checkpoints before homus saved the settings
            return ckpt
        changed = [c for c in setting_differences(upgrade_run_config(dict(ckpt["config"])), self.config())
                   if c[0] != "weights"]  # where training started, a path that may be written two ways
        if changed:
            said = ", ".join(f"{k} {old!r} in the model, {new!r} in {CONFIG}" for k, old, new in changed[:3])
            raise RunError(f"{self.file(which)} was trained with other settings than {self.file(CONFIG)} holds "
                           f"({said}): another run's model, or an edited {CONFIG}. Restore the run's own files, "
                           "or train it again")
        return ckpt

    @property
    def from_strokes(self) -> bool:
        return bool(self.config().get("from_strokes"))

    def render_settings(self) -> RenderSettings:
        """The settings the run's own test images are drawn with."""
        cfg = self.config()
        if cfg.get("from_strokes"):
            return RenderSettings.from_dict(cfg["render"])
        return RenderSettings.from_dict(variant_info(cfg["variants"][0])["settings"])

    def trained_on(self) -> list[str]:
        """The names of what the model was trained on: its render settings, or its variant folders."""
        cfg = self.config()
        if cfg.get("from_strokes"):
            return [RenderSettings.from_dict(cfg["render"]).name]
        return [Path(p).name for p in cfg["variants"]]

    # --- the data at hand against the data recorded -----------------------------------------
    def raw_dir(self) -> Path:
        """The raw folder the run read: the absolute one it recorded, else its setting (relative to
        the current folder, as older runs were)."""
        return Path(self.data().get("raw_dir") or self.config().get("raw_dir", "raw"))

    def extra_raw(self) -> list[str]:
        """The folders of collected samples the run added: the absolute ones it recorded, else its
        setting (relative to the current folder, as older runs were)."""
        recorded = self.data().get("extra_raw")
        return list(recorded) if isinstance(recorded, list) else list(self.config().get("extra_raw") or ())

    def check_data(self, raw_dir: str | Path | None = None) -> None:
        """Refuse when the run's raw strokes are not the ones it was trained on (another folder's
        data, or files changed since). Runs that recorded no identity are not checked."""
        recorded = self.data()
        if not recorded.get("sha256"):
            return
        raw = Path(raw_dir) if raw_dir is not None else Path(recorded["raw_dir"])
        now = raw_identity(raw, self.config().get("writers"), self.extra_raw())
        if now["sha256"] != recorded["sha256"]:
            raise RunError(f"{raw}: these stroke files ({now['files']:,}) are not the ones run {self.path} was "
                           f"trained and tested on ({recorded['files']:,} files in {recorded['raw_dir']}); "
                           "its test split would score other data. Restore that data, or train a new run")

    # --- the test images, rebuilt ------------------------------------------------------------
    def test_variants(self, variant: str | Path | None = None, strokes: dict | None = None,
                      channels: tuple[str, ...] | None = None) -> list[Variant]:
        """The run's test images, drawn as it drew them (or as the variant folder ``variant`` was
        rendered). A model that reads the pen's order or the tablet's size (which no PNG holds) is
        drawn from the strokes at the variant's settings. ``strokes``: a cache of raw samples by
        folder, shared between the runs of an ensemble."""
        cfg = self.config()
        test_ids = set(self.split()["test"])
        channels = tuple(channels or self.checkpoint().get("channels", ["ink"]))
        if cfg.get("from_strokes") and (variant is None or channels != ("ink",)):
            settings = RenderSettings.from_dict(cfg["render"] if variant is None else variant_info(variant)["settings"])
            samples = [s for s in self.samples(strokes) if s.id in test_ids]
            return [render_samples(samples, settings, str(self.raw_dir()), channels)]
        if variant:
            return [load_variant(variant, only=test_ids)]
        recorded = self.data().get("variants") or [{"path": p, "sha256": None} for p in cfg["variants"]]
        loaded = [load_variant(r["path"], only=test_ids) for r in recorded]
        for r, v in zip(recorded, loaded, strict=True):
            now = dataset_sha256(v.info)
            if r.get("sha256") and now != r["sha256"]:
                raise RunError(f"{v.path}: this variant was rendered from other raw data than run {self.path} "
                               "was trained on; its test split would score other samples. Render it again "
                               "from the run's raw folder, or train a new run")
        return loaded

    def samples(self, cache: dict | None = None) -> list[Sample]:
        """The raw samples the run was trained on, checked against its recorded identity."""
        cfg = self.config()
        raw = self.raw_dir()
        key = (str(raw.resolve()), str(cfg.get("writers")))
        if cache is not None and key in cache:
            return cache[key]
        self.check_data(raw)
        try:
            loaded = load_samples(raw, parse_writers(cfg.get("writers")), self.extra_raw())
        except FileNotFoundError as e:
            raise DataError(f"run {self.path} draws its test images from the raw strokes: {e}") from None
        if cache is not None:
            cache[key] = loaded
        return loaded
