"""The torch rasterizer (classifier/raster.py) against homus_render, and the stroke data sources
against the training step, each ratio taken within one run.

    python benchmarks/raster_bench.py parity  --samples 1000                  # parity figures, images/s
    python benchmarks/raster_bench.py sources --sizes 32 64 --repeats 2       # data source vs step
    python benchmarks/raster_bench.py epochs  --epochs 20 --size 64 --raster device   # a whole run

``parity`` draws the same HOMUS samples (every n-th file, spread over all writers) with
``homus_render.render`` and with the rasterizer, at thickness 1-5 and sizes 32-128, and prints the
mean absolute pixel difference, the largest ink bounding box difference and the largest measured
stroke width difference (targets: <= 2 grey levels, <= 1 px, <= 0.25 px), plus both images/s on one
CPU thread.

``sources`` times, for each size and channel set, the stroke data sources through the training
loader (``cpu``: homus_render in loader workers; ``raster-cpu``: the torch rasterizer in loader
workers; ``raster-<device>``: the torch rasterizer on the accelerator, in this process, when there
is one) with the pipeline's stroke distortions, against ResNet-18's training step at the same size
and channels. Source and step are timed one after the other, ``--repeats`` times, and every run's
ratio is printed (targets: >= 10x on the CPU at 32 px, >= 3x on a GPU).

``epochs`` trains ResNet-18 from strokes on the writer split for ``--epochs`` with the chosen
source and prints the training seconds (epochs only: no validation, no test) and the test accuracy
on homus_render's plain test images (target on a GPU: 20 epochs at 64 px in <= 15 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train_bench import step_rate  # noqa: E402  (the step alone, as train_bench times it)

from classifier.data import ImageSet, epoch_loader, loader  # noqa: E402
from classifier.engine import amp_dtype, evaluate, make_scaler, pick_device, precision_of, train_one_epoch  # noqa: E402
from classifier.models import build_model  # noqa: E402
from classifier.raster import pad_strokes, parity, path_lengths, rasterize  # noqa: E402
from classifier.settings import AMP_MODES  # noqa: E402
from classifier.splits import make_split  # noqa: E402
from classifier.strokeset import RasterSet, StrokeSet, make_train_source, render_samples, worker_init  # noqa: E402
from homus_render.dataset import list_stroke_files, load_samples  # noqa: E402
from homus_render.distort import StrokeAugment  # noqa: E402
from homus_render.errors import HomusError  # noqa: E402
from homus_render.labels import LABELS  # noqa: E402
from homus_render.render import RenderSettings, render  # noqa: E402
from homus_render.strokes import parse_file  # noqa: E402

CHANNEL_SETS = {"ink": ("ink",), "ink,time,stroke": ("ink", "time", "stroke")}


def pipeline_augment() -> StrokeAugment:
    """pipeline.yaml's stroke distortions (train.stroke_*)."""
    from homus.config import load

    train = load()["train"]
    return StrokeAugment(**{k[len("stroke_"):]: float(v) for k, v in train.items() if k.startswith("stroke_")})


def spread(raw: str, n: int) -> list:
    """``n`` samples spread over every writer: every k-th stroke file."""
    files = list_stroke_files(raw)
    step = max(1, len(files) // n)
    return [parse_file(Path(raw, rel)) for rel in files[::step][:n]]


# --- parity ----------------------------------------------------------------------------------

def parity_grid(raw: str, n: int, thicknesses: list[int], sizes: list[int]) -> list[dict]:
    samples = spread(raw, n)
    symbols = [s.strokes for s in samples]
    points, lengths = pad_strokes(symbols)
    cv2.setNumThreads(1)
    rows = []
    for t in thicknesses:
        for size in sizes:
            s = RenderSettings(thickness=t, width=size, height=size)
            start = time.perf_counter()
            ref = np.stack([render(x, s) for x in symbols])
            cpu_s = time.perf_counter() - start
            start = time.perf_counter()
            drawn = rasterize(points, lengths, s)[:, 0].numpy()
            torch_s = time.perf_counter() - start
            p = parity(ref, drawn, path_lengths(symbols, s))
            rows.append({"thickness": t, "size": size, "samples": len(symbols), **p,
                         "homus_render_images_per_s": round(len(symbols) / cpu_s),
                         "raster_images_per_s": round(len(symbols) / torch_s)})
    return rows


# --- sources against the step ----------------------------------------------------------------

def source_rate(batches_of, batches: int, dev: torch.device) -> float:
    """images/s of the first ``batches`` batches out of the iterable ``batches_of`` (start-up included),
    each moved to ``dev`` as training moves it."""
    start, seen = time.perf_counter(), 0
    for i, (x, _) in enumerate(batches_of):
        x = x.to(dev, memory_format=torch.channels_last, non_blocking=True)
        seen += len(x)
        if i + 1 == batches:
            break
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def sources(raw: str, sizes: list[int], channel_sets: list[str], batch_size: int, batches: int, workers: int,
            repeats: int, dev: torch.device, amp: str) -> list[dict]:
    samples = load_samples(raw)
    aug = pipeline_augment()
    rows = []
    for size in sizes:
        s = RenderSettings(thickness=3, width=size, height=size)
        for name in channel_sets:
            channels = CHANNEL_SETS.get(name) or tuple(name.split(","))
            ds = StrokeSet(samples, s, aug, seed=0, channels=channels)
            kinds = {"cpu": lambda e, ds=ds: epoch_source(ds, batch_size, workers, e),
                     "raster-cpu": lambda e, ds=ds: epoch_source(RasterSet(ds, "cpu"), batch_size, workers, e)}
            if dev.type != "cpu":
                kinds[f"raster-{dev.type}"] = lambda e, ds=ds: device_source(ds, batch_size, dev, e)
            for rep in range(1, repeats + 1):
                got = {kind: source_rate(make(rep), batches, dev) for kind, make in kinds.items()}
                step = step_rate(size, batch_size, max(3, batches // 4), dev, amp, len(channels))
                rows.append({"size": size, "channels": "+".join(channels), "run": rep, "device": str(dev),
                             "workers": workers, "batch_size": batch_size, "step_images_per_s": round(step, 1),
                             **{f"{k}_images_per_s": round(v, 1) for k, v in got.items()},
                             **{f"{k}_ratio": round(v / step, 2) for k, v in got.items()}})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def epoch_source(ds, batch_size: int, workers: int, epoch: int):
    dl, order = epoch_loader(ds, batch_size, 0, workers, worker_init())
    order.set_epoch(epoch)
    return dl


def device_source(ds: StrokeSet, batch_size: int, dev: torch.device, epoch: int):
    source, order = make_train_source(ds, batch_size, 0, 0, "device", dev)
    order.set_epoch(epoch)
    return source


# --- a whole run -----------------------------------------------------------------------------

def epochs_run(raw: str, epochs: int, size: int, channels: tuple[str, ...], raster: str, batch_size: int,
               workers: int, dev: torch.device, amp: str, seed: int, lr: float, writers: str | None = None,
               compile_model: bool = False) -> dict:
    """ResNet-18 trained from strokes on the writer split: training seconds and test accuracy on
    homus_render's plain test images. ``compile_model``: the training step runs torch.compile'd (its
    first epoch pays the compilation, which the training seconds include)."""
    from homus.config import load
    from homus_render.dataset import parse_writers

    samples = load_samples(raw, parse_writers(writers))
    s = RenderSettings(thickness=3, width=size, height=size)
    split = make_split({(x.id, x.writer, x.label) for x in samples}, "writer", seed)
    train_ids = set(split["train"])
    ds = StrokeSet([x for x in samples if x.id in train_ids], s, pipeline_augment(), seed, LABELS, channels)
    test = ImageSet([render_samples([x for x in samples if x.id in set(split["test"])], s, raw, channels)],
                    set(split["test"]))
    torch.manual_seed(seed)
    model = build_model(in_channels=len(channels)).to(dev, memory_format=torch.channels_last)
    cfg = load()["train"]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=float(cfg["weight_decay"]))
    steps = -(-len(ds) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.2)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    dtype = amp_dtype(dev, amp)
    scaler = make_scaler(dev, dtype)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    source, order = make_train_source(ds, batch_size, seed, workers, raster, dev)
    step = torch.compile(model) if compile_model else model
    seconds = []
    for epoch in range(1, epochs + 1):
        order.set_epoch(epoch)
        stats = train_one_epoch(step, source, crit, opt, sched, dev, epoch, scaler=scaler, dtype=dtype)
        seconds.append(stats["seconds"])
    res = evaluate(model, loader(test, 512, False), crit, dev, dtype)
    return {"raster": raster, "device": str(dev), "size": size, "channels": "+".join(channels), "epochs": epochs,
            "train_images": len(ds), "batch_size": batch_size, "compiled": compile_model,
            "precision": precision_of(dtype),
            "train_seconds": round(sum(seconds), 2), "first_epoch_seconds": round(seconds[0], 2),
            "later_epochs_seconds": round(sum(seconds[1:]), 2), "test_accuracy": round(res["acc"], 4),
            "n_test": len(test)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["parity", "sources", "epochs"])
    ap.add_argument("--raw-dir", default="raw")
    ap.add_argument("--samples", type=int, default=1000, help="parity: samples spread over the writers")
    ap.add_argument("--thickness", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96, 128])
    ap.add_argument("--channels", nargs="+", default=["ink", "ink,time,stroke"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--workers", type=int, default=1, help="loader workers of the CPU sources (pipeline: 1)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads of this process (0: torch's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", choices=AMP_MODES, default="auto", help="mixed precision, as train.amp (default auto)")
    ap.add_argument("--no-amp", dest="amp", action="store_const", const="off", help="the same as --amp off")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--raster", default="device", choices=["cpu", "device", "auto"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--writers", help="epochs: only these writers, e.g. 1-10 (a quick check)")
    ap.add_argument("--compile", action="store_true", help="epochs: torch.compile the training step")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:  # a device or AMP mode this machine cannot run: one line
        dev = pick_device(args.device)
        amp_dtype(dev, args.amp)
    except HomusError as e:
        ap.error(str(e))
    gpu = f" · {torch.cuda.get_device_name()}" if dev.type == "cuda" else ""
    print(f"# {platform.node()} · {os.cpu_count()} cores{gpu} · torch {torch.__version__} · "
          f"{torch.get_num_threads()} threads · load {os.getloadavg()[0]:.1f} · {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# {shlex.join(sys.orig_argv)}")
    if args.what == "parity":
        torch.set_num_threads(1)  # both on one thread
        rows = parity_grid(args.raw_dir, args.samples, args.thickness, args.sizes)
        print("| thickness | size | mean abs diff | worst image | bbox px | width px max | width px mean | "
              "homus_render img/s | raster img/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['thickness']} | {r['size']} | {r['mean_abs_diff']:.2f} | {r['worst_image_abs_diff']:.2f} | "
                  f"{r['bbox_px_max']} | {r['width_px_max']:.3f} | {r['width_px_mean']:.3f} | "
                  f"{r['homus_render_images_per_s']:,} | {r['raster_images_per_s']:,} |")
        ok = all(r["mean_abs_diff"] <= 2 and r["bbox_px_max"] <= 1 and r["width_px_max"] <= 0.25 for r in rows)
        print(f"parity over {rows[0]['samples']} samples x {len(rows)} settings: {'PASS' if ok else 'MISS'} "
              "(<= 2 grey levels, <= 1 px box, <= 0.25 px width)")
    elif args.what == "sources":
        rows = sources(args.raw_dir, args.sizes, args.channels, args.batch_size, args.batches, args.workers,
                       args.repeats, dev, args.amp)
        kinds = sorted({k[:-len("_ratio")] for r in rows for k in r if k.endswith("_ratio")})
        print("| size | channels | run | step img/s | " + " | ".join(f"{k} img/s (ratio)" for k in kinds) + " |")
        print("|---|---|---|---|" + "---|" * len(kinds))
        for r in rows:
            cells = " | ".join(f"{r[k + '_images_per_s']:,.0f} ({r[k + '_ratio']:.1f}x)" for k in kinds)
            print(f"| {r['size']} | {r['channels']} | {r['run']} | {r['step_images_per_s']:,.0f} | {cells} |")
    else:
        channels = tuple(args.channels[0].split(","))
        r = epochs_run(args.raw_dir, args.epochs, args.size, channels, args.raster, args.batch_size, args.workers,
                       dev, args.amp, args.seed, args.lr, args.writers, args.compile)
        print(json.dumps(r))
        print(f"{r['epochs']} epochs at {r['size']} px ({r['channels']}, raster {r['raster']}, {r['device']}"
              f"{', compiled' if r['compiled'] else ''}): {r['train_seconds']:.1f} s of training "
              f"({r['first_epoch_seconds']:.1f} s in the first epoch), test accuracy {r['test_accuracy']:.2%}")


if __name__ == "__main__":
    main()
