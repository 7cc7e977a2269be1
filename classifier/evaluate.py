"""A finished run's model on the test split of any variant (trained on t3, tested on t1, ...)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from torch import nn

from homus_render.atomic import write_json

from .data import ImageSet, dataset_sha256, loader, variant_info
from .engine import evaluate, pick_device
from .metrics import confusion, summarize
from .plots import plot_confusion
from .runfolder import RunError, RunFolder


def predict_test_split(run: str | Path, variant: str | Path | None = None, device: str = "auto",
                       batch_size: int = 256, strokes: dict | None = None) -> dict:
    """``run``'s best model over its test split, drawn as it was trained (or from ``variant``):
    the sample ids, targets, class probabilities and predictions, plus what they were drawn from.
    ``strokes``: a dict that keeps the raw samples read, for the next run of the same raw folder."""
    folder = RunFolder(run)
    split = folder.split()
    model, ckpt = folder.load_model()
    dev = pick_device(device)
    model.to(dev)
    test_ids = set(split["test"])
    variants = folder.test_variants(variant, strokes, tuple(ckpt.get("channels", ["ink"])))
    ds = ImageSet(variants, test_ids, tuple(ckpt["classes"]))
    missing = sorted(test_ids - set(ds.samples))
    drawn = variant if variant else "the run's own data"
    if not ds.samples:
        raise RunError(f"{run}: none of its {len(test_ids):,} test samples is in {drawn}; nothing to score")
    if missing and variant is None:  # the run's own data lacks what it was tested on: not the run's figure
        raise RunError(f"{run}: {len(missing):,} of its {len(test_ids):,} test samples (e.g. {missing[0]}) are not in "
                       "the data it was trained on; its split.json or its data changed. Restore them, or train again")
    res = evaluate(model, loader(ds, batch_size, shuffle=False), nn.CrossEntropyLoss(), dev, desc="test")
    return {**res, "ids": list(ds.samples), "test_ids": test_ids, "split": split["kind"],
            "classes": list(ckpt["classes"]), "variant": "+".join(v.name for v in variants),
            "trained_on": folder.trained_on(), "trained_size": [ckpt["render"]["width"], ckpt["render"]["height"]],
            "tested_size": [int(ds.images.shape[-1]), int(ds.images.shape[-2])]}


def _fingerprint(run: str | Path) -> str | None:
    """Which finished training of ``run`` is scored (:meth:`RunFolder.fingerprint`); none for a run
    that stopped early, whose best model may still be scored."""
    folder = RunFolder(run)
    return folder.fingerprint() if folder.complete else None


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
               "per_class": s["per_class"],
               # what was scored: this training, on this rendering of the variant (a study reuses the
               # file only while both are the same)
               "fingerprint": _fingerprint(run),
               "variant_sha256": dataset_sha256(variant_info(variant)) if variant else None}
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
    copies: dict[str, str | Path] = {}
    for run in runs:
        fp = _fingerprint(run)
        if fp is not None and (twin := copies.setdefault(fp, run)) != run:
            raise RunError(f"{run} and {twin} are copies of one training (the same metrics.json): one model, "
                           "which would vote twice; give each model once")
        split = RunFolder(run).split()
        if test is None:
            kind, test = split["kind"], set(split["test"])
        elif split["kind"] != kind or set(split["test"]) != test:
            ours = set(split["test"])
            how = (f"{split['kind']} split, {len(ours)} test samples against {kind}, {len(test)}"
                   if split["kind"] != kind or len(ours) != len(test) else
                   f"{len(ours - test)} of its {len(ours)} test samples differ: another split seed or fold")
            raise RunError(f"{run} was tested on another split than {runs[0]} ({how}); an ensemble needs one "
                           "shared test split (same split kind, seed and fold)")
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
        members.append({**p, "run": str(run), "test_accuracy": p["acc"], "fingerprint": _fingerprint(run)})
    return members


def vote(members: list[dict], out: str | Path | None = None) -> dict:
    """Test-split metrics of ``members`` (from :func:`ensemble_members`) voting together: their class
    probabilities averaged. Saved as ``out`` with a confusion matrix beside it, when given."""
    first = members[0]
    probs = np.mean([m["probs"] for m in members], axis=0)
    targets, preds = np.asarray(first["targets"]), probs.argmax(1)
    s = summarize(targets, preds, first["classes"])
    wrong = np.nonzero(preds != targets)[0]
    metrics = {"runs": [m["run"] for m in members], "split": first["split"],
               "test_accuracy": s["accuracy"], "macro_f1": s["macro_f1"], "n_test": s["n"],
               "members": [{"run": m["run"], "variant": m["variant"], "test_accuracy": m["test_accuracy"],
                            "fingerprint": m.get("fingerprint")} for m in members],
               "per_class": s["per_class"], "classes": list(first["classes"]),
               "confusion": confusion(targets, preds, len(first["classes"])).tolist(),
               # every misread sample, most confident first: what a report shows as pictures
               "errors": sorted(({"id": first["ids"][i], "target": first["classes"][targets[i]],
                                  "pred": first["classes"][preds[i]], "confidence": round(float(probs[i, preds[i]]), 6),
                                  "p_target": round(float(probs[i, targets[i]]), 6)} for i in wrong),
                                key=lambda e: -e["confidence"])}
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
