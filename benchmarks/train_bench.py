"""Training speed on the full HOMUS v2 set: whether the data path keeps the model busy. (Accuracy
is measured by studies: `homus run --config configs/<study>.yaml`, see docs/studies.md.)

    python benchmarks/train_bench.py loop  --variant rendered/t3-s64          # loop/step ratio
    python benchmarks/train_bench.py strokes --size 64                        # render vs train rate
    python benchmarks/train_bench.py strokes --size 64 --channels ink,time    # ... reading the pen's order
    python benchmarks/train_bench.py epochs --workers 1 2                     # loader workers kept or not
    python benchmarks/train_bench.py precision --size 32 64 --channels 1 2    # each --amp mode's step
    python benchmarks/train_bench.py stem --size 64 --amp bf16                # each --stem's step

``loop`` times the model's own training step on ready tensors and the real training loop
(loader + step) in the same process; the ratio must be at least 0.9. ``strokes`` times the
stroke data source (rendering with the pipeline's stroke augmentation, through the loader with
the default workers) against the training step, in the same process; rendering must be at least
10x faster. ``precision`` times the training step under each mixed-precision mode the device
runs (``train.amp``: off, bf16, fp16), interleaved, as a ratio to full precision; ``stem`` times it
with each stem (``train.stem``) the same way, as a ratio to torchvision's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from torch import nn

from classifier.data import ImageSet, epoch_loader, load_variant, loader
from classifier.engine import DeviceError, amp_dtype, autocast, cpu_has_bf16, make_scaler, precision_of, train_one_epoch
from classifier.models import build_model
from classifier.settings import AMP_MODES, STEMS
from classifier.strokeset import StrokeSet, worker_init
from classifier.train import TrainConfig, make_optimizer, make_scheduler, pick_device, split_for
from homus.config import load as load_config
from homus.config import train_config
from homus_render.dataset import load_samples
from homus_render.errors import HomusError


def loop_ratio(variant: str, batches: int, batch_size: int, device: str, amp: str) -> dict:
    """images/s of the model step alone vs the full loop (loader, augmentation, step) over the same
    number of batches."""
    dev = pick_device(device)
    v = load_variant(variant)
    split, _ = split_for([v], "writer", 0)
    ds = ImageSet([v], set(split["train"]))
    cfg = train_config(load_config(), {"from_strokes": False, "variants": [variant], "epochs": 1,
                                       "batch_size": batch_size, "amp": amp})
    augment = cfg.augmentation()
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model().to(dev, memory_format=torch.channels_last)  # as in training
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, batches * 5)  # warm-up, step, loop, step: 4 passes
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    dtype = amp_dtype(dev, amp)
    ready = [(x.to(dev, memory_format=torch.channels_last), y.to(dev))
             for x, y in list(loader(ds, batch_size, True, 1))[:batches]]

    def step_only() -> float:
        start = time.perf_counter()
        for x, y in ready:
            with autocast(dev, dtype):
                loss = crit(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return len(ready) * batch_size / (time.perf_counter() - start)

    class Limited:  # the real loader, cut to the same number of batches
        def __iter__(self):
            for i, b in enumerate(loader(ds, batch_size, True, 2)):
                if i == batches:
                    return
                yield b

    step_only()  # warm-up: allocator, kernels
    step_rate = step_only()
    loop_rate = train_one_epoch(model, Limited(), crit, opt, sched, dev, 1, dtype=dtype,
                                transform=lambda x: augment(x, gen))["images_per_s"]  # as in training
    step_rate2 = step_only()
    step = (step_rate + step_rate2) / 2
    return {"variant": Path(variant).name, "device": str(dev), "precision": precision_of(dtype),
            "batch_size": batch_size, "step_images_per_s": round(step, 1),
            "loop_images_per_s": round(loop_rate, 1), "ratio": round(loop_rate / step, 3)}


def step_rate(size: int, batch_size: int, batches: int, device: str, amp: str, channels: int = 1,
              stem: str = "imagenet") -> float:
    """images/s of ResNet-18's training step alone, on ready random tensors of the given size."""
    dev = pick_device(device)
    dtype = amp_dtype(dev, amp)
    scaler = make_scaler(dev, dtype)  # fp16 pays for loss scaling, as in training
    torch.manual_seed(0)
    model = build_model(in_channels=channels, stem=stem).to(dev, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    x = torch.rand(batch_size, channels, size, size).to(dev, memory_format=torch.channels_last)
    y = torch.randint(0, 32, (batch_size,)).to(dev)

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            with autocast(dev, dtype):
                loss = crit(model(x), y)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return n * batch_size / (time.perf_counter() - start)

    run(2)  # warm-up
    return run(batches)


def stroke_config(raw: str, **train) -> TrainConfig:
    """pipeline.yaml's training settings from the strokes in ``raw``, with ``train`` overriding them."""
    return train_config(load_config(), {**train, "from_strokes": True, "raw_dir": raw})


def render_vs_train(raw: str, batches: int, batch_size: int, device: str, amp: str, workers: list[int],
                    size: int | None = None, channels: str | list[str] | None = None) -> dict:
    """images/s the stroke data source delivers (the pipeline's render and stroke settings, through
    the loader) for each worker count, against the training step at the same size and channels."""
    cfg = stroke_config(raw, **({"size": size} if size else {}), **({"channels": channels} if channels else {}))
    settings, aug = cfg.render_settings(), cfg.stroke_augment()
    if not replace(aug, size=0.0).active:  # measure the worst case: every distortion on
        aug = type(aug)(thickness=0.5, scale=0.1, aspect=0.1, rotate=5, shear=5, translate=0.05, elastic=0.03,
                        jitter=0.003, ends=0.2)
    samples = load_samples(raw)
    ds = StrokeSet(samples, settings, aug, seed=0, channels=tuple(cfg.channels))
    rates = {}
    for w in workers:
        ds.set_epoch(w + 1)
        start, seen = time.perf_counter(), 0
        for i, (x, _) in enumerate(loader(ds, batch_size, True, seed=w, workers=w, worker_init_fn=worker_init())):
            seen += len(x)
            if i + 1 == batches:
                break
        rates[w] = seen / (time.perf_counter() - start)  # worker start-up included, as each epoch pays it
    step = step_rate(settings.width, batch_size, 5, device, amp, len(cfg.channels))
    return {"render": settings.name, "channels": cfg.channels, "augment": aug.to_dict(), "batch_size": batch_size,
            "render_images_per_s": {str(w): round(r, 1) for w, r in rates.items()},
            "train_images_per_s": round(step, 1),
            "ratio": {str(w): round(r / step, 1) for w, r in rates.items()}, "default_workers": cfg.workers}


def epochs_rate(raw: str, workers: list[int], epochs: int, batches: int, batch_size: int) -> dict:
    """images/s of the stroke data source over several whole epochs (a subset of ``batches`` batches):
    a fresh loader every epoch, whose workers start again each time, against one loader whose
    workers live through all of them (what training does), same images."""
    cfg = stroke_config(raw)
    samples = load_samples(raw)[: batches * batch_size]
    ds = StrokeSet(samples, cfg.render_settings(), cfg.stroke_augment(), seed=0, channels=tuple(cfg.channels))
    out = {}
    for w in workers:
        start = time.perf_counter()
        for e in range(1, epochs + 1):
            ds.set_epoch(e)
            for _ in loader(ds, batch_size, True, seed=e, workers=w, worker_init_fn=worker_init()):
                pass
        fresh = epochs * len(ds) / (time.perf_counter() - start)
        start = time.perf_counter()
        dl, order = epoch_loader(ds, batch_size, 0, w, worker_init())
        for e in range(1, epochs + 1):
            order.set_epoch(e)
            for _ in dl:
                pass
        kept = epochs * len(ds) / (time.perf_counter() - start)
        del dl
        out[str(w)] = {"fresh_images_per_s": round(fresh, 1), "kept_images_per_s": round(kept, 1),
                       "ratio": round(kept / fresh, 2)}
    return {"render": cfg.render_settings().name, "epochs": epochs, "images_per_epoch": len(ds), "workers": out}


def precision_rates(device: str, sizes: list[int], channels: list[int], batch_size: int, batches: int,
                    repeats: int = 2) -> list[dict]:
    """images/s of the training step in full precision and under every other AMP mode ``device`` runs
    (bf16 on a CPU; bf16 and fp16 on CUDA), at each size and channel count. The modes take turns
    ``repeats`` times, so the machine's drift falls on each alike."""
    dev = pick_device(device)
    modes = ["off"]
    for mode in ("bf16", "fp16"):
        try:
            amp_dtype(dev, mode)
            modes.append(mode)
        except DeviceError:
            pass
    rows = []
    for size in sizes:
        for ch in channels:
            mean = interleaved({m: partial(step_rate, size, batch_size, batches, device, m, ch) for m in modes},
                               repeats)
            rows.append({"device": str(dev), "size": size, "channels": ch, "batch_size": batch_size,
                         "images_per_s": {m: round(v, 1) for m, v in mean.items()},
                         "ratio_to_off": {m: round(v / mean["off"], 2) for m, v in mean.items()},
                         "cpu_bf16": cpu_has_bf16() if dev.type == "cpu" else None})
    return rows


def stem_rates(device: str, amp: str, sizes: list[int], channels: list[int], batch_size: int, batches: int,
               repeats: int = 2) -> list[dict]:
    """images/s of the training step with each stem (``train.stem``), interleaved as in
    :func:`precision_rates`, as a ratio to torchvision's (imagenet)."""
    rows = []
    for size in sizes:
        for ch in channels:
            mean = interleaved({s: partial(step_rate, size, batch_size, batches, device, amp, ch, s) for s in STEMS},
                               repeats)
            rows.append({"device": str(pick_device(device)), "amp": amp, "size": size, "channels": ch,
                         "batch_size": batch_size, "images_per_s": {s: round(v, 1) for s, v in mean.items()},
                         "ratio_to_imagenet": {s: round(v / mean["imagenet"], 3) for s, v in mean.items()}})
    return rows


def interleaved(timers: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Each timer's mean rate over ``repeats`` rounds in which they take turns, so that the machine's
    drift falls on each alike."""
    rates: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            rates[name].append(timer())
    return {name: sum(r) / len(r) for name, r in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["loop", "strokes", "epochs", "precision", "stem"])
    ap.add_argument("--raw-dir", default="raw")
    ap.add_argument("--size", type=int, nargs="+", help="strokes: image size (default: pipeline.yaml's "
                    "train.size); precision, stem: sizes (default 32 64)")
    ap.add_argument("--workers", type=int, nargs="+", help="strokes, epochs: loader workers to time (default: "
                    "0 and pipeline.yaml's)")
    ap.add_argument("--channels", nargs="+", help="strokes: input channels, e.g. ink,time (default: "
                    "pipeline.yaml's), several sets timed one after another; precision, stem: channel counts, "
                    "e.g. 1 2 (default 1 2)")
    ap.add_argument("--variant", help="loop: the rendered folder read (default rendered/t3-s64)")
    ap.add_argument("--epochs", type=int, help="epochs: how many whole epochs to time (default 3)")
    ap.add_argument("--batches", type=int, default=20, help="batches timed by 'loop'")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", choices=AMP_MODES, default="auto", help="mixed precision, as train.amp (default auto)")
    ap.add_argument("--no-amp", dest="amp", action="store_const", const="off", help="the same as --amp off")
    args = ap.parse_args()
    if args.what in ("precision", "stem") and not all(c.isdigit() and int(c) > 0 for c in args.channels or []):
        ap.error(f"{args.what} takes channel counts (--channels 1 2), got {' '.join(args.channels)}")
    try:
        run(args, ap)
    except HomusError as e:  # a device or setting this machine cannot run: one line
        ap.error(str(e))


def run(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    gpu = f" · {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    print(f"# {platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} cores{gpu} · "
          f"torch {torch.__version__} · {torch.get_num_threads()} threads · {time.strftime('%Y-%m-%d')}")
    if args.what == "loop":
        r = loop_ratio(args.variant or "rendered/t3-s64", args.batches, args.batch_size, args.device, args.amp)
        print(json.dumps(r))
        print(f"loop {r['loop_images_per_s']} img/s vs step {r['step_images_per_s']} img/s on {r['device']}: "
              f"ratio {r['ratio']:.3f} ({'PASS' if r['ratio'] >= 0.9 else 'MISS'}: target >= 0.9)")
        return
    if args.what == "strokes":
        if args.size and len(args.size) > 1:
            ap.error("strokes times one --size at a time")
        size = args.size[0] if args.size else None
        default_workers = load_config()["train"]["workers"]
        for channels in args.channels or [None]:
            r = render_vs_train(args.raw_dir, args.batches, args.batch_size, args.device, args.amp,
                                args.workers or sorted({0, default_workers}), size, channels)
            print(json.dumps(r))
            ratio = r["ratio"][str(r["default_workers"])] if str(r["default_workers"]) in r["ratio"] else None
            for w, rate in r["render_images_per_s"].items():
                print(f"{r['render']} {'+'.join(r['channels'])}: stroke data source with {w} worker(s) "
                      f"{rate:,.0f} img/s, training step "
                      f"{r['train_images_per_s']:,.0f} img/s: ratio {r['ratio'][w]:.1f}")
            if ratio is not None:
                print(f"default workers ({r['default_workers']}): ratio {ratio:.1f} "
                      f"({'PASS' if ratio >= 10 else 'MISS'}: target >= 10)")
        return
    if args.what == "epochs":
        r = epochs_rate(args.raw_dir, args.workers or [1, 2], args.epochs or 3, args.batches, args.batch_size)
        print(json.dumps(r))
        for w, m in r["workers"].items():
            print(f"{r['render']}, {r['epochs']} epochs of {r['images_per_epoch']:,} images, {w} worker(s): "
                  f"a fresh loader each epoch {m['fresh_images_per_s']:,.0f} img/s, workers kept "
                  f"{m['kept_images_per_s']:,.0f} img/s: {m['ratio']:.2f}x")
        return
    if args.what == "precision":
        rows = precision_rates(args.device, args.size or [32, 64], [int(c) for c in args.channels or ["1", "2"]],
                               args.batch_size, args.batches)
        for r in rows:
            print(json.dumps(r))
            rates = ", ".join(f"{m} {v:,.0f} img/s ({r['ratio_to_off'][m]:.2f}x)" for m, v in r["images_per_s"].items())
            print(f"{r['device']} {r['size']} px, {r['channels']} channel(s), batch {r['batch_size']}: {rates}")
        return
    if args.what == "stem":
        rows = stem_rates(args.device, args.amp, args.size or [32, 64], [int(c) for c in args.channels or ["1", "2"]],
                          args.batch_size, args.batches)
        for r in rows:
            print(json.dumps(r))
            rates = ", ".join(f"{s} {v:,.0f} img/s ({r['ratio_to_imagenet'][s]:.2f}x)"
                              for s, v in r["images_per_s"].items())
            print(f"{r['device']} {r['size']} px, {r['channels']} channel(s), --amp {r['amp']}: {rates}")
        return
    ap.error(f"unknown benchmark {args.what!r}")

if __name__ == "__main__":
    main()
