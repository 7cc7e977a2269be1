"""A finished run's model on the test split of any variant (trained on t3, tested on t1, ...)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import yaml
from torch import nn

from homus_render.atomic import write_json
from homus_render.dataset import load_samples, parse_writers
from homus_render.render import RenderSettings

from . import checkpoint
from .data import ImageSet, load_variant, loader, variant_info
from .engine import evaluate
from .metrics import summarize
from .plots import plot_confusion
from .strokeset import render_samples
from .train import RunError, pick_device


def load_model(run: str | Path, which: str = "best.pt") -> tuple[nn.Module, dict]:
    """The run's model (eval mode, on the CPU) and its checkpoint dict."""
    return checkpoint.load_model(Path(run) / which)


def read_split(run: str | Path) -> dict:
    """The run's split.json: ``kind``, ``seed`` and the sample ids of ``train``, ``val``, ``test``."""
    path = Path(run) / "split.json"
    if not path.is_file():
        raise RunError(f"{run}: not a homus run folder (no split.json)")
    return json.loads(path.read_text())


def predict_test_split(run: str | Path, variant: str | Path | None = None, device: str = "auto",
                       batch_size: int = 256, strokes: dict | None = None) -> dict:
    """``run``'s best model over its test split, drawn as it was trained (or from ``variant``):
    the sample ids, targets, class probabilities and predictions, plus what they were drawn from.
    ``strokes``: a dict that keeps the raw samples read, for the next run of the same raw folder."""
    run = Path(run)
    split = read_split(run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    model, ckpt = load_model(run)
    dev = pick_device(device)
    model.to(dev)
    test_ids = set(split["test"])
    channels = checkpoint.channels(ckpt)
    if cfg.get("from_strokes") and (variant is None or channels != ("ink",)):
        # its own test split drawn from the strokes: at the run's settings, or (a model that reads the
        # pen's order or the tablet's size, which no PNG holds) at the settings the variant folder was rendered with
        settings = RenderSettings.from_dict(cfg["render"] if variant is None else variant_info(variant)["settings"])
        key = (cfg["raw_dir"], str(cfg.get("writers")))
        loaded = strokes.get(key) if strokes is not None else None
        if loaded is None:
            loaded = load_samples(cfg["raw_dir"], parse_writers(cfg.get("writers")))
            if strokes is not None:
                strokes[key] = loaded
        samples = [s for s in loaded if s.id in test_ids]
        variants = [render_samples(samples, settings, cfg["raw_dir"], channels)]
    else:
        variants = [load_variant(p, only=test_ids) for p in ([variant] if variant else cfg["variants"])]
    ds = ImageSet(variants, test_ids, tuple(ckpt["classes"]))
    res = evaluate(model, loader(ds, batch_size, shuffle=False), nn.CrossEntropyLoss(), dev, desc="test")
    trained_on = [RenderSettings.from_dict(cfg["render"]).name] if cfg.get("from_strokes") else \
        [Path(p).name for p in cfg["variants"]]
    return {**res, "ids": list(ds.samples), "test_ids": test_ids, "split": split["kind"],
            "classes": list(ckpt["classes"]), "variant": "+".join(v.name for v in variants),
            "trained_on": trained_on, "trained_size": [ckpt["render"]["width"], ckpt["render"]["height"]],
            "tested_size": [int(ds.images.shape[-1]), int(ds.images.shape[-2])]}


def evaluate_run(run: str | Path, variant: str | Path | None = None, device: str = "auto",
                 batch_size: int = 256) -> dict:
    """Test-split metrics of ``run``'s best model on ``variant`` (default: the run's own variants),
    saved as ``<run>/eval-<variant>.json``."""
    run = Path(run)
    p = predict_test_split(run, variant, device, batch_size)
    s = summarize(p["targets"], p["preds"], p["classes"])
    metrics = {"run": run.name, "variant": p["variant"], "trained_on": p["trained_on"],
               "test_accuracy": s["accuracy"], "macro_f1": s["macro_f1"], "n_test": s["n"],
               "missing_test_samples": len(p["test_ids"] - set(p["ids"])), "split": p["split"],
               "trained_size": p["trained_size"], "tested_size": p["tested_size"],
               "per_class": s["per_class"]}
    write_json(run / f"eval-{p['variant']}.json", metrics)
    return metrics


def ensemble_name(runs: list[str | Path]) -> str:
    """``ensemble-<run>+<run>...``, or, where that would pass the file-name limit (255 bytes, with
    ``-confusion.png`` added), ``ensemble-<first run>-and-<n> more-<hash of all names>``."""
    names = [Path(r).name for r in runs]
    joined = "ensemble-" + "+".join(names)
    if len(joined.encode()) <= 200:
        return joined
    digest = hashlib.sha256("+".join(names).encode()).hexdigest()[:8]
    return f"ensemble-{names[0][:120]}-and-{len(names) - 1}-more-{digest}"


def ensemble_members(runs: list[str | Path], variant: str | Path | None = None, device: str = "auto",
                     batch_size: int = 256) -> list[dict]:
    """Each run's predictions over its test split (as :func:`predict_test_split`), checked to be one
    shared test split: an ensemble scored on images one of its members trained on would be a
    dishonest figure. Every split is checked before any model runs."""
    if len(runs) < 2:
        raise RunError("an ensemble needs at least two runs")
    kind, test = None, None
    for run in runs:
        split = read_split(run)
        if test is None:
            kind, test = split["kind"], set(split["test"])
        elif split["kind"] != kind or set(split["test"]) != test:
            raise RunError(f"{run} was tested on another split than {runs[0]} ({split['kind']} split, "
                           f"{len(set(split['test']))} test samples against {kind}, {len(test)}); "
                           "an ensemble needs one shared test split (same split kind and seed)")
    members, strokes = [], {}
    for run in runs:
        p = predict_test_split(run, variant, device, batch_size, strokes)
        if len(set(p["ids"])) != len(p["ids"]):
            raise RunError(f"{run} tests on several variants ({p['variant']}), so each sample appears more "
                           "than once; pass --variant to score the ensemble on one")
        if members:
            first = members[0]
            if p["classes"] != first["classes"]:
                raise RunError(f"{run} predicts other classes than {first['run']}")
            if p["ids"] != first["ids"]:
                raise RunError(f"{run} found other test images than {first['run']} "
                               f"({len(p['ids'])} against {len(first['ids'])})")
        members.append({**p, "run": str(run), "test_accuracy": p["acc"]})
    return members


def vote(members: list[dict], out: str | Path | None = None) -> dict:
    """Test-split metrics of ``members`` (from :func:`ensemble_members`) voting together: their class
    probabilities averaged. Saved as ``out`` with a confusion matrix beside it, when given."""
    first = members[0]
    preds = np.mean([m["probs"] for m in members], axis=0).argmax(1)
    s = summarize(first["targets"], preds, first["classes"])
    metrics = {"runs": [m["run"] for m in members], "split": first["split"],
               "test_accuracy": s["accuracy"], "macro_f1": s["macro_f1"], "n_test": s["n"],
               "members": [{"run": m["run"], "variant": m["variant"], "test_accuracy": m["test_accuracy"]}
                           for m in members],
               "per_class": s["per_class"]}
    if out is not None:
        out = Path(out)
        write_json(out, metrics)
        plot_confusion(first["targets"], preds, first["classes"], out.with_name(out.stem + "-confusion.png"),
                       title=f"ensemble of {len(members)}: test accuracy {s['accuracy']:.4f} "
                             f"({first['split']} split, row-normalised)")
    return metrics


def evaluate_ensemble(runs: list[str | Path], out: str | Path, variant: str | Path | None = None,
                      device: str = "auto", batch_size: int = 256) -> dict:
    """Test-split metrics of several runs' models voting together (their class probabilities averaged,
    each model fed the input it was trained on), saved as ``out``. The runs must share one test split."""
    return vote(ensemble_members(runs, variant, device, batch_size), out)
