"""How well a run reads symbols that another tool rendered: omrdatasettools' HomusImageGenerator
(the public HOMUS renderer: the tablet's own scale, centred on a fixed canvas, big symbols cut
at the border) against homus' own renderings of the same test samples, in one run.

    python benchmarks/foreign_bench.py runs/NAME [--widths 1 3 5] [--canvases 96x96 192x96] [--split val]
                                      [--sheet views.png]

Each foreign image is read every way ``homus predict --read`` can: ``fit`` (the ink's box fitted to
the run's canvas, the image resized), ``thicken`` (fitted, with the ink's centre line drawn over it
at the run's pen width), ``redraw`` (the centre line alone, drawn again) and ``auto`` (fit ink as wide
as the run's pen that fitting does not enlarge, thicken the rest; :mod:`homus_render.normalize`).
homus' own renderings are read as the model was tested (``strokes``) and every image way, so the gap
each way leaves is measured against a peer. homus also draws the same samples with each foreign
pen width (at the tablet's scale, fitted to the run's canvas) and reads them as predict does: what
is left between those rows and the omrdatasettools rows is the other renderer's doing, and what
they share is the pen's. ``--sheet`` writes a picture: for one sample of each class, homus' own
image, then each omrdatasettools image (first canvas) beside the view predict makes of it.
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
from classifier.predict import image_read, normalize_image
from classifier.runfolder import RunFolder
from homus_render.channels import render_plain
from homus_render.distort import StrokeAugment, augment_path, draw, tablet_pen
from homus_render.normalize import READS
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
    ap.add_argument("--split", choices=["test", "val"], default="test",
                    help="the run's samples to render (val: a check on writers the figures were not chosen on)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N samples (0: all)")
    ap.add_argument("--sheet", type=Path, help="write a PNG of the images and the views predict makes of them")
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
    default = image_read(READS[0], ckpt)  # what `homus predict` reads images by, for this model
    chosen = set(folder.split()[args.split])
    samples = [s for s in folder.samples() if s.id in chosen]
    if args.limit:
        samples = samples[:args.limit]
    by_id = {s.id: s for s in samples}
    print(f"{args.run}: {len(samples):,} {args.split} samples of {len({s.writer for s in samples})} writers, "
          f"model trained at {settings.name}; predict reads images by {default}")

    rows = []
    own = [render_plain(s.strokes, settings) for s in samples]
    targets = np.array([index[s.label] for s in samples])
    t0 = time.perf_counter()
    rows.append(("homus", settings.name, "strokes", len(samples), accuracy(model, own, targets)))
    for read in READS:
        rows.append(("homus", settings.name, read, len(samples),
                     accuracy(model, [normalize_image(im, settings, read) for im in own], targets)))

    for width in args.widths:  # the peer of each foreign pen: homus draws with that pen, read as predict reads
        pen_views = []
        for s in samples:
            path, _, _ = augment_path(s.strokes, settings, StrokeAugment(), np.random.default_rng(0))
            pen_views.append(normalize_image(draw(path, settings, tablet_pen(s.strokes, path, settings, width)),
                                             settings, default))
        rows.append(("homus, tablet pen", f"t{width}", default, len(samples), accuracy(model, pen_views, targets)))

    firsts = {}  # one sample of each class, for the sheet
    for s, im in zip(samples, own, strict=True):
        firsts.setdefault(s.label, (s.id, [im]))
    with tempfile.TemporaryDirectory(prefix="homus-foreign-") as tmp:
        raw = Path(tmp) / "raw"
        for s in samples:  # only these samples, in the HOMUS layout
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
                    first = firsts.get(by_id[m["sample"]].label)
                    if canvas == args.canvases[0] and first and first[0] == m["sample"]:
                        first[1].extend([images[-1], normalize_image(images[-1], settings, default)])
                labels = np.array(labels)
                for read in READS:
                    rows.append(("omrdatasettools", f"t{width}-{w}x{h}", read, len(images),
                                 accuracy(model, [normalize_image(im, settings, read) for im in images], labels)))
    seconds = time.perf_counter() - t0
    if args.sheet:
        from homus_render.preview import grid

        sheet = grid([(label, firsts[label][1]) for label in classes if label in firsts], cell=96)
        ok, png = cv2.imencode(".png", sheet)
        if not ok:
            sys.exit("OpenCV could not encode the sheet as PNG")
        args.sheet.write_bytes(png.tobytes())
        print(f"wrote {args.sheet}: per class, homus' own image, then omrdatasettools' pens "
              f"{', '.join(map(str, args.widths))} ({args.canvases[0]}), each beside predict's {default} view")

    base = {path: acc for src, _, path, _, acc in rows if src == "homus"}
    pen = {name: acc for src, name, _, _, acc in rows if src == "homus, tablet pen"}
    print("\n| renderer | images | read by | n | accuracy | vs homus' own, same path | vs homus, same pen "
          "| vs the run's test |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for src, name, path, n, acc in rows:
        same = base.get(path, base["strokes"])
        peer = pen.get(name.split("-")[0]) if src == "omrdatasettools" and path == default else None
        vs_pen = "" if peer is None else f"{100 * (acc - peer):+.2f} pts"
        print(f"| {src} | {name} | {path} | {n:,} | {acc:.2%} | {100 * (acc - same):+.2f} pts | {vs_pen} | "
              f"{100 * (acc - base['strokes']):+.2f} pts |")
    foreign = [acc for src, _, path, _, acc in rows if src == "omrdatasettools" and path == default]
    if foreign:
        gap = 100 * (min(foreign) - base["strokes"])
        print(f"\nforeign renderings read by {default} (predict's default for this model): worst {min(foreign):.2%}, "
              f"mean {np.mean(foreign):.2%}; homus' own (strokes) {base['strokes']:.2%}: worst gap {gap:+.2f} pts "
              f"(target: within -2.00) [{seconds:.0f} s]")


if __name__ == "__main__":
    main()
