"""Does test-time augmentation help a finished run from strokes? Averages the model's class
probabilities over its plain test images and over extra drawings of the same test samples, in
the same process, and prints each accuracy beside the plain one.

    python benchmarks/tta_bench.py runs/bench/writer-strokes-t3-s64-e20-seed0
    python benchmarks/tta_bench.py RUN --draws 4 --strength 0.5 --widths 2 4

Two kinds of extra drawing: the run's own stroke distortions at ``--strength`` times their
training strength (``--draws`` of them, from a fixed seed, pen width left alone), and plain
renderings at other pen widths (``--widths``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from classifier import checkpoint
from classifier.data import ImageSet, loader
from classifier.engine import evaluate
from classifier.evaluate import predict_test_split
from classifier.runfolder import RunFolder
from classifier.strokeset import StrokeSet, render_samples
from homus_render.distort import StrokeAugment
from homus_render.render import RenderSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished run trained from strokes")
    ap.add_argument("--draws", type=int, default=4, help="distorted drawings of each test sample")
    ap.add_argument("--strength", type=float, default=0.5, help="fraction of the run's stroke distortions")
    ap.add_argument("--widths", type=float, nargs="*", default=[2, 4], help="other pen widths to render at")
    ap.add_argument("--seed", type=int, default=123)
    args = ap.parse_args()

    folder = RunFolder(args.run)
    cfg = folder.config()
    if not cfg.get("from_strokes"):
        ap.error(f"{args.run}: not a run from strokes")
    plain = predict_test_split(args.run, device="cpu")
    targets, ids = plain["targets"], plain["ids"]
    model, ckpt = folder.load_model()
    channels = checkpoint.channels(ckpt)
    settings = RenderSettings.from_dict(cfg["render"])
    by_id = {s.id: s for s in folder.samples() if s.id in set(ids)}
    samples = [by_id[i] for i in ids]  # in the order of the plain predictions

    def accuracy(probs: np.ndarray) -> float:
        return float((probs.argmax(1) == targets).mean())

    def predict(ds) -> np.ndarray:
        res = evaluate(model, loader(ds, 256, shuffle=False), nn.CrossEntropyLoss(), torch.device("cpu"))
        assert (res["targets"] == targets).all()
        return res["probs"]

    print(f"{args.run}: plain test images {accuracy(plain['probs']):.2%} ({len(ids):,} images)")
    strengths = {k[len("stroke_"):]: v * args.strength for k, v in cfg.items()
                 if k.startswith("stroke_") and k != "stroke_thickness"}
    ds = StrokeSet(samples, settings, StrokeAugment(**strengths), seed=args.seed, channels=channels)
    total = plain["probs"].copy()
    for draw in range(args.draws):
        ds.set_epoch(draw)
        probs = predict(ds)
        total += probs
        print(f"  distorted drawing {draw + 1} ({args.strength:g} x training strength): alone {accuracy(probs):.2%}, "
              f"averaged with the plain and earlier ones {accuracy(total):.2%}")
    widths = plain["probs"].copy()
    for w in args.widths:
        variant = render_samples(samples, replace(settings, thickness=w), cfg["raw_dir"], channels)
        probs = predict(ImageSet([variant], set(ids), tuple(ckpt["classes"])))
        widths += probs
        print(f"  pen width {w:g} (trained on {settings.thickness:g}): alone {accuracy(probs):.2%}, "
              f"averaged with the plain and earlier widths {accuracy(widths):.2%}")
    print(json.dumps({"run": str(args.run), "plain": accuracy(plain["probs"]),
                      "distorted_average": accuracy(total), "widths_average": accuracy(widths)}))


if __name__ == "__main__":
    main()
