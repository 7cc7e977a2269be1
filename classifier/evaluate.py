"""A finished run's model on the test split of any variant (trained on t3, tested on t1, ...)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from torch import nn

from homus_render.atomic import write_json
from homus_render.dataset import load_samples, parse_writers
from homus_render.render import RenderSettings

from . import checkpoint
from .data import DataError, ImageSet, load_variant, loader
from .engine import evaluate
from .metrics import summarize
from .strokeset import render_samples
from .train import RunError, pick_device


def load_model(run: str | Path, which: str = "best.pt") -> tuple[nn.Module, dict]:
    """The run's model (eval mode, on the CPU) and its checkpoint dict."""
    return checkpoint.load_model(Path(run) / which)


def variant_settings(variant: str | Path) -> dict:
    """The render settings a variant folder records (its variant.json)."""
    path = Path(variant) / "variant.json"
    try:
        return json.loads(path.read_text())["settings"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{variant}: not a rendered variant (no readable variant.json: {e})") from None


def evaluate_run(run: str | Path, variant: str | Path | None = None, device: str = "auto",
                 batch_size: int = 256) -> dict:
    """Test-split metrics of ``run``'s best model on ``variant`` (default: the run's own variants),
    saved as ``<run>/eval-<variant>.json``."""
    run = Path(run)
    if not (run / "split.json").is_file():
        raise RunError(f"{run}: not a homus run folder (no split.json)")
    split = json.loads((run / "split.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    model, ckpt = load_model(run)
    dev = pick_device(device)
    model.to(dev)
    test_ids = set(split["test"])
    channels = checkpoint.channels(ckpt)
    if cfg.get("from_strokes") and (variant is None or channels != ("ink",)):
        # its own test split drawn from the strokes: at the run's settings, or (a model that reads the
        # pen's order, which no PNG holds) at the settings the variant folder was rendered with
        settings = RenderSettings.from_dict(cfg["render"] if variant is None else variant_settings(variant))
        samples = [s for s in load_samples(cfg["raw_dir"], parse_writers(cfg.get("writers"))) if s.id in test_ids]
        variants = [render_samples(samples, settings, cfg["raw_dir"], channels)]
    else:
        variants = [load_variant(p, only=test_ids) for p in ([variant] if variant else cfg["variants"])]
    ds = ImageSet(variants, test_ids, tuple(ckpt["classes"]))
    res = evaluate(model, loader(ds, batch_size, shuffle=False), nn.CrossEntropyLoss(), dev, desc="test")
    s = summarize(res["targets"], res["preds"], ckpt["classes"])
    name = "+".join(v.name for v in variants)
    trained_on = [RenderSettings.from_dict(cfg["render"]).name] if cfg.get("from_strokes") else \
        [Path(p).name for p in cfg["variants"]]
    metrics = {"run": run.name, "variant": name, "trained_on": trained_on,
               "test_accuracy": s["accuracy"], "macro_f1": s["macro_f1"], "n_test": s["n"],
               "missing_test_samples": len(test_ids - set(ds.samples)), "split": split["kind"],
               "trained_size": [ckpt["render"]["width"], ckpt["render"]["height"]],
               "tested_size": [int(ds.images.shape[-1]), int(ds.images.shape[-2])],
               "per_class": s["per_class"]}
    write_json(run / f"eval-{name}.json", metrics)
    return metrics
