"""How well a run reads symbols that another tool rendered: omrdatasettools' HomusImageGenerator
(the public HOMUS renderer: the tablet's own scale, centred on a fixed canvas, big symbols cut
at the border) against homus' own renderings of the same test samples, in one run.

    python benchmarks/foreign_bench.py runs/NAME [--widths 1 3 5] [--canvases 96x96 192x96]

Each foreign image is read both ways ``homus predict --read`` can: ``fit`` (the ink's box fitted
to the run's canvas, the image resized) and ``redraw`` (the default: the ink's centre line drawn
again at the run's pen width, :mod:`homus_render.normalize`). homus' own renderings are read as the model was tested
(``strokes``) and through both image paths, so the gap each path leaves is measured against a peer.
Needs the bench extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from classifier.data import to_input
from classifier.predict import normalize_image
from classifier.runfolder import RunFolder
from homus_render.channels import render_plain
from homus_render.render import parse_size

_NAME = re.compile(r"^(?P<sample>\d+-\d+)_(?P<width>\d+)\.png$")


def classify(model: torch.nn.Module, images: list[np.ndarray], batch: int = 256) -> np.ndarray:
    """Class indices for uint8 black-on-white images of the run's size."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            out.append(model(to_input(np.stack(images[i:i + batch]))).argmax(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, int)


def accuracy(model, images: list[np.ndarray], targets: np.ndarray) -> float:
    return float((classify(model, images) == targets).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished run that reads ink alone")
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 3, 5], help="omrdatasettools' pen widths")
    ap.add_argument("--canvases", nargs="+", default=["96x96", "192x96"], help="its fixed canvases, WxH")
    ap.add_argument("--limit", type=int, default=0, help="only the first N test samples (0: all)")
    args = ap.parse_args()
    try:
        from omrdatasettools import HomusImageGenerator
    except ImportError:
        sys.exit("needs omrdatasettools: pip install -e '.[bench]'")

    folder = RunFolder(args.run)
    model, ckpt = folder.load_model()
    if tuple(ckpt.get("channels", ["ink"])) != ("ink",):
        sys.exit(f"{args.run} reads {ckpt['channels']}; images hold ink alone, so compare a run trained on ink")
    settings = folder.render_settings()
    classes = list(ckpt["classes"])
    index = {c: i for i, c in enumerate(classes)}
    test = set(folder.split()["test"])
    samples = [s for s in folder.samples() if s.id in test]
    if args.limit:
        samples = samples[:args.limit]
    by_id = {s.id: s for s in samples}
    print(f"{args.run}: {len(samples):,} test samples of {len({s.writer for s in samples})} writers, "
          f"model trained at {settings.name}")

    rows = []
    own = [render_plain(s.strokes, settings) for s in samples]
    targets = np.array([index[s.label] for s in samples])
    t0 = time.perf_counter()
    rows.append(("homus", settings.name, "strokes", len(samples), accuracy(model, own, targets)))
    rows.append(("homus", settings.name, "fit", len(samples),
                 accuracy(model, [normalize_image(im, settings, "fit") for im in own], targets)))
    rows.append(("homus", settings.name, "redraw", len(samples),
                 accuracy(model, [normalize_image(im, settings, "redraw") for im in own], targets)))

    with tempfile.TemporaryDirectory(prefix="homus-foreign-") as tmp:
        raw = Path(tmp) / "raw"
        for s in samples:  # only the test samples, in the HOMUS layout
            src = folder.raw_dir() / s.writer / f"{s.id}.txt"
            (raw / s.writer).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, raw / s.writer / src.name)
        for canvas in args.canvases:
            w, h = parse_size(canvas)
            out = Path(tmp) / f"omr-{w}x{h}"
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                HomusImageGenerator.create_images(str(raw), str(out), args.widths, w, h)
            for width in args.widths:
                images, labels = [], []
                for png in sorted(out.glob(f"*/*_{width}.png")):
                    m = _NAME.match(png.name)
                    if not m or m["sample"] not in by_id:
                        continue
                    images.append(cv2.imread(str(png), cv2.IMREAD_GRAYSCALE))
                    labels.append(index[by_id[m["sample"]].label])
                labels = np.array(labels)
                name = f"t{width}-{w}x{h}"
                fit, drawn = [], []
                for im in images:
                    fit.append(normalize_image(im, settings, "fit"))
                    drawn.append(normalize_image(im, settings, "redraw"))
                rows.append(("omrdatasettools", name, "fit", len(images), accuracy(model, fit, labels)))
                rows.append(("omrdatasettools", name, "redraw", len(images), accuracy(model, drawn, labels)))
    seconds = time.perf_counter() - t0

    base = {path: acc for src, _, path, _, acc in rows if src == "homus"}
    print("\n| renderer | images | read by | n | accuracy | vs homus' own, same path | vs the run's test |")
    print("|---|---|---|---:|---:|---:|---:|")
    for src, name, path, n, acc in rows:
        same = base.get(path, base["strokes"])
        print(f"| {src} | {name} | {path} | {n:,} | {acc:.2%} | {100 * (acc - same):+.2f} pts | "
              f"{100 * (acc - base['strokes']):+.2f} pts |")
    foreign = [acc for src, _, path, _, acc in rows if src != "homus" and path == "redraw"]
    if foreign:
        gap = 100 * (min(foreign) - base["strokes"])
        print(f"\nforeign renderings, redraw path: worst {min(foreign):.2%}, mean {np.mean(foreign):.2%}; "
              f"homus' own (strokes) {base['strokes']:.2%}: worst gap {gap:+.2f} pts (target: within -2.00) "
              f"[{seconds:.0f} s]")


if __name__ == "__main__":
    main()
