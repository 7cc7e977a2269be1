"""A training run from start to finish: data, split, model, epochs, checkpoints, one test evaluation.

Training images come from rendered variant folders, or (``from_strokes``) are drawn afresh from
the raw strokes every epoch with stroke-level augmentation. Run folder ``<runs_dir>/<name>/``:
``config.yaml``, ``split.json``, ``best.pt`` (the model that did best on validation), ``last.pt``
(the resume state after the latest epoch: model, optimizer, schedule; removed once the run is
complete), ``history.csv``, ``metrics.json``, ``confusion.png``, ``curves.png``, ``errors.png``.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from homus_render.atomic import write_bytes, write_json, write_text
from homus_render.channels import ink_index
from homus_render.dataset import load_samples, parse_writers
from homus_render.errors import check_writable_dir, user_os_error
from homus_render.labels import LABELS
from homus_render.lock import writing

from . import checkpoint, plots
from .data import DataError, ImageSet, Variant, batch_count, dataset_sha256, epoch_loader, load_variant, loader
from .engine import (
    amp_dtype,
    cpu_has_bf16,
    evaluate,
    make_ema,
    make_scaler,
    measure_batch_norm,
    pick_device,
    precision_of,
    train_one_epoch,
)
from .metrics import summarize
from .models import build_model
from .runfolder import (
    BEST,
    BEST_PENDING,
    CONFIG,
    DATA,
    HISTORY,
    LAST,
    RESUME_STATE,
    SPLIT,
    RunError,
    RunFolder,
    raw_identity,
    same_data,
)
from .settings import (  # noqa: F401
    MIX_SEED_OFFSET,
    OPTIMIZERS,
    SCHEDULES,
    SEED_STRIDE,
    WARP_SEED_OFFSET,
    TrainConfig,
    setting_differences,
    upgrade_run_config,
)
from .splits import check_split, make_fold_split, make_split
from .strokeset import StrokeSet, augment_sheet, make_train_source, raster_device, render_samples, worker_init


def make_optimizer(model: nn.Module, cfg: TrainConfig):
    decay, no_decay = [], []
    for p in model.parameters():  # no weight decay on norms and biases
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Stepped every batch. ``onecycle``: warm up for 20 %, then anneal; ``cosine`` and ``linear``:
    decay from ``lr`` to 0; ``constant``: keep ``lr``."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        # the warm-up needs a step of its own and the anneal at least one more: tiny data gets a longer warm-up
        pct = 0.2 if 0.2 * total > 1 else min(0.5, 2 / max(total, 1))
        if total < 3:
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=pct)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.schedule == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def load_variants(paths: list[str]) -> list[Variant]:
    variants = [load_variant(p) for p in paths]
    hashes = {dataset_sha256(v.info) for v in variants}
    if len(hashes) > 1:
        raise DataError("the variants were rendered from different raw datasets; a shared split would mix "
                        "samples that are not the same")
    return variants


def split_for(variants: list[Variant], kind: str, seed: int, folds: int = 0, fold: int = 0
              ) -> tuple[dict, dict[str, str]]:
    """The split of the variants' samples: ``make_split``'s, or fold ``fold`` of a ``folds``-fold
    cross-validation of writers or samples (``folds`` >= 2)."""
    triples = {(s, w, lab) for v in variants for s, w, lab in zip(v.samples, v.writers, v.labels, strict=True)}
    split = make_fold_split(triples, folds, fold, seed, kind) if folds else make_split(triples, kind, seed)
    writer_of = {s: w for s, w, _ in triples}
    check_split(split, writer_of)
    return split, writer_of


def data_identity(cfg: TrainConfig, variants: list[Variant]) -> dict:
    """What the run was trained and tested on, absolutely: the raw folder and its content hash (runs
    from strokes), or each variant folder with the hash of the dataset it was rendered from."""
    if cfg.from_strokes:
        return raw_identity(cfg.raw_dir, cfg.writers, cfg.extra_raw)
    return {"variants": [{"path": str(Path(v.path).resolve()), "sha256": dataset_sha256(v.info)}
                         for v in variants]}


#: How many training images measure the batch-norm statistics of averaged weights (train.ema).
BATCH_NORM_SAMPLE = 2048


def batch_norm_sample(variants: list[Variant], train_ids: list[str], seed: int, classes: tuple[str, ...]) -> ImageSet:
    """A fixed sample of the training split (chosen by ``seed``), from ``variants``: plain
    renderings, as validation and test are drawn."""
    ids = sorted(train_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    return ImageSet(variants, {ids[i] for i in order[:BATCH_NORM_SAMPLE]}, classes)


def _history_csv(history: list[dict]) -> bytes:
    cols = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for h in history:
        w.writerow({k: (f"{h[k]:.6g}" if isinstance(h[k], float) else h[k]) for k in cols})
    return buf.getvalue().encode()


def train(cfg: TrainConfig, resume: bool = False, log=print) -> Path:
    """Train (or continue) the run ``cfg`` describes; returns its folder.

    One process at a time writes a run (a second gets :class:`~homus_render.lock.BusyError`). A
    new run that fails or is stopped before its first checkpoint leaves no folder; one killed
    outright leaves a folder without ``last.pt``, which the next ``train`` of that name replaces."""
    run = Path(cfg.runs_dir) / cfg.run_name()
    check_writable_dir(run.parent)
    with writing(run, "give the run another name (--name; a study's runs: study.name)"):
        if (run / "metrics.json").exists():
            raise RunError(f"{run} is already complete: nothing to resume, its figures are in metrics.json"
                           if resume else f"{run} is already complete; choose another --name (or delete it)")
        if not resume and run.exists() and any(run.iterdir()):
            if not _unstarted(run):
                raise RunError(f"{run} already exists; continue it with `homus train --resume {run}` or pick --name")
            log(f"{run}: replacing a run that stopped before its first epoch ended")
            shutil.rmtree(run)
        if resume and not (run / LAST).exists():
            log(f"{run}: no {LAST} to continue from (it stopped before its first epoch ended); starting at epoch 1")
        try:
            run.mkdir(parents=True, exist_ok=True)
            return _train(run, cfg, resume, log)
        except BaseException as e:
            if not resume and not (run / LAST).exists():  # nothing worth keeping: no half-made run
                shutil.rmtree(run, ignore_errors=True)
            if isinstance(e, OSError):
                raise user_os_error(e) or e from None
            raise


#: What a run folder holds before its first checkpoint: such a folder is replaced, not continued.
_BEFORE_FIRST_EPOCH = {CONFIG, SPLIT, DATA, HISTORY, BEST_PENDING, "train-samples.png"}


def _unstarted(run: Path) -> bool:
    """A run folder with no checkpoint yet and nothing but the files a run writes before one."""
    return all(p.name in _BEFORE_FIRST_EPOCH or (p.name.startswith(".") and ".tmp-" in p.name)
               for p in run.iterdir())


def _train(run: Path, cfg: TrainConfig, resume: bool, log) -> Path:
    init = init_checkpoint(cfg) if start_fresh(resume, run) else None  # a resumed run has its own weights
    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    dtype = amp_dtype(device, cfg.amp)  # None: full precision
    if device.type == "cuda":  # the fastest convolutions for this input size (GPU runs are not bit-exact anyway)
        torch.backends.cudnn.benchmark = True

    if cfg.from_strokes:  # plain renderings in memory stand in for a variant folder
        settings = cfg.render_settings()
        strokes = load_samples(cfg.raw_dir, parse_writers(cfg.writers), cfg.extra_raw)
        variants = [render_samples(strokes, settings, cfg.raw_dir, tuple(cfg.channels))]
    else:
        variants = load_variants(cfg.variants)
    split, _ = split_for(variants, cfg.split, cfg.split_rng_seed, cfg.folds, cfg.fold)
    identity = data_identity(cfg, variants)
    if resume:  # whether from last.pt or from epoch 1: on the data the run recorded, or not at all
        _check_same_data(run, identity)
    if resume and (run / SPLIT).exists():
        if RunFolder(run).split() != split:  # read through its checks: a damaged file is named
            raise RunError(f"{run / SPLIT} differs from the split that the run's data and settings give: it was "
                           "edited, or the data changed since the run started. Restore it, or train a new run")
    write_text(run / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    write_json(run / "split.json", split)
    write_json(run / DATA, identity)
    classes = list(LABELS)
    sets = {k: ImageSet(variants, set(split[k]), classes) for k in ("train", "val", "test")}
    if cfg.from_strokes:
        train_ids = set(split["train"])
        sets["train"] = StrokeSet([s for s in strokes if s.id in train_ids], settings, cfg.stroke_augment(),
                                  cfg.seed, tuple(classes), tuple(cfg.channels))
        if not (run / "train-samples.png").exists():  # what the augmentation draws: worth a look
            write_bytes(run / "train-samples.png", augment_sheet(sets["train"], tuple(classes)))
    for k, ds in sets.items():
        if len(ds) < (2 if k == "train" else 1):  # batch normalisation trains on two images at least
            raise RunError(f"the {k} split holds {len(ds)} image(s): too little data for a {cfg.split} split")
    source = (f"drawn from {cfg.raw_dir} strokes at {variants[0].name} every epoch" if cfg.from_strokes
              else f"from {len(variants)} variant(s)")
    if cfg.channels != ["ink"]:
        source += f", channels {'+'.join(cfg.channels)}"
    log(f"run {run}: {len(sets['train']):,} train / {len(sets['val']):,} val / {len(sets['test']):,} test "
        f"images {source}, {cfg.split} split, {cfg.arch}{'' if cfg.stem == 'imagenet' else f' ({cfg.stem} stem)'}, "
        f"on {device}{', compiled' if cfg.compile else ''}"
        f"{f', weights averaged (decay {cfg.ema})' if cfg.ema else ''}"
        f"{f', mixup alpha {cfg.mixup_alpha}' if cfg.mixup_alpha else ''}"
        f"{f', cutmix alpha {cfg.cutmix_alpha}' if cfg.cutmix_alpha else ''}"
        f"{f', {precision_of(dtype)} autocast' if dtype else ''}")
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_bf16():
        log("note: this CPU has no bf16 instructions, so --amp bf16 is emulated and slower than --amp off")

    from_file = cfg.weights not in ("none", "imagenet")
    model = build_model(cfg.arch, len(classes), len(cfg.channels), "none" if from_file else cfg.weights, cfg.stem)
    if init is not None:
        _init_from_checkpoint(model, init, cfg.weights, classes)
    model.to(device, memory_format=torch.channels_last)  # channels-last convolutions are faster on CPU and GPU
    step_model = torch.compile(model) if cfg.compile else model  # shares model's weights: checkpoints stay plain
    optimizer = make_optimizer(model, cfg)
    steps = batch_count(len(sets["train"]), cfg.batch_size)
    scheduler = make_scheduler(optimizer, cfg, steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    scaler = make_scaler(device, dtype)  # fp16 only: bf16 and full precision need no loss scaling
    ema = make_ema(model, cfg.ema)  # validation, best.pt and the test read the average when there is one
    render = variants[0].settings
    history, start_epoch, best_acc = [], 1, -1.0
    if not start_fresh(resume, run):
        ckpt = _resume_checkpoint(run / LAST, cfg, classes)
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            history, start_epoch = ckpt["history"], ckpt["epoch"] + 1
            if scaler is not None and "scaler" in ckpt:
                scaler.load_state_dict(ckpt["scaler"])
            if ema is not None:
                ema.load_state_dict(ckpt["ema"])
        except (KeyError, ValueError, RuntimeError) as e:
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            raise RunError(f"{run / LAST}: cannot continue from it ({why}); remove {run} and train again") from None
        best_acc = max((h["val_acc"] for h in history), default=-1.0)
        settle_best(run, ckpt["epoch"])
        log(f"resuming {run} after epoch {ckpt['epoch']}")
    else:
        settle_best(run, None)

    # the training loader's workers start once and serve every epoch; each batch carries its epoch, so
    # a worker draws that epoch's distortions, and the order is fixed by seed and epoch. Validation
    # images are in memory: gathered here, no worker to start.
    val_loader = loader(sets["val"], cfg.batch_size * 2, shuffle=False)
    if cfg.from_strokes:  # drawn by homus_render in the workers, or by the torch rasterizer (cfg.raster)
        train_loader, batches = make_train_source(sets["train"], cfg.batch_size, cfg.seed * SEED_STRIDE,
                                                  cfg.workers, cfg.raster, device)
    else:
        train_loader, batches = epoch_loader(sets["train"], cfg.batch_size, cfg.seed * SEED_STRIDE, cfg.workers,
                                             worker_init())
    if ema is not None:  # plain training images, drawn as validation draws: where the average's batch norm is measured
        bn_loader = loader(batch_norm_sample(variants, split["train"], cfg.seed, tuple(classes)), cfg.batch_size * 2,
                           shuffle=False)
    augment = cfg.augmentation()
    mixing = cfg.mixing(len(classes))
    for epoch in range(start_epoch, cfg.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        batches.set_epoch(epoch)
        gen = torch.Generator().manual_seed(cfg.seed * SEED_STRIDE + epoch + WARP_SEED_OFFSET)  # same epoch, same warps
        mix_gen = torch.Generator().manual_seed(cfg.seed * SEED_STRIDE + epoch + MIX_SEED_OFFSET)  # ... same blends
        with _compile_errors(cfg.compile):
            stats = train_one_epoch(step_model, train_loader, criterion, optimizer, scheduler, device, epoch,
                                    scaler=scaler, dtype=dtype, ema=ema,
                                    transform=(lambda x, g=gen: augment(x, g)) if augment.active else None,
                                    mix=(lambda x, y, g=mix_gen: mixing(x, y, g)) if mixing.active else None)
            if ema is not None:
                measure_batch_norm(ema.module, bn_loader, device)
            val = evaluate(step_model if ema is None else ema.module, val_loader, criterion, device, dtype,
                           desc=f"epoch {epoch} val")
        history.append({"epoch": epoch, **stats, "val_loss": val["loss"], "val_acc": val["acc"], "lr": lr})
        log(f"epoch {epoch}/{cfg.epochs}: train loss {stats['train_loss']:.4f} acc {stats['train_acc']:.4f} | "
            f"val loss {val['loss']:.4f} acc {val['acc']:.4f} | {stats['images_per_s']:.0f} img/s")
        ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history, "arch": cfg.arch,
                "stem": cfg.stem, "classes": classes, "in_channels": len(cfg.channels), "channels": cfg.channels,
                "render": render, "config": asdict(cfg)}
        if scaler is not None:
            ckpt["scaler"] = scaler.state_dict()
        if ema is not None:
            ckpt["ema"] = ema.state_dict()
        if val["acc"] > best_acc:  # the model alone: the optimizer's state only serves resuming
            best_acc = val["acc"]
            best = {k: v for k, v in ckpt.items() if k not in RESUME_STATE}
            if ema is not None:  # the model that was validated: the average
                best["model"] = ema.module.state_dict()
            checkpoint.save(run / BEST_PENDING, best)  # best.pt only once last.pt has this epoch too
        checkpoint.save(run / LAST, ckpt)
        if (run / BEST_PENDING).exists():
            os.replace(run / BEST_PENDING, run / BEST)
        write_bytes(run / "history.csv", _history_csv(history))

    del train_loader  # its workers end here
    plots.plot_curves(history, run / "curves.png")
    return finish(run, cfg, sets, criterion, device, dtype, history)


@contextmanager
def _compile_errors(enabled: bool) -> Iterator[None]:
    """torch.compile compiles on the first call; when it cannot (no C++ compiler on a CPU, an
    unsupported GPU), say so in one line and how to train without it."""
    if not enabled:
        yield
        return
    from torch._dynamo.exc import BackendCompilerFailed

    try:
        yield
    except BackendCompilerFailed as e:
        cause = getattr(e, "inner_exception", None) or e  # what the compiler said, under Dynamo's wrapping
        first = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
        why = f"{type(cause).__name__}: {first}" if first else type(cause).__name__
        raise RunError(f"torch.compile could not compile the model ({why[:200]}); train without it: "
                       "--no-compile (train.compile: false)") from None


def finish(run: Path, cfg: TrainConfig, sets: dict, criterion, device, dtype, history: list[dict]) -> Path:
    """The one and only look at the test split: the best model on validation, then the report."""
    model, best = checkpoint.load_model(run / BEST)
    model.to(device)
    test = sets["test"]
    res = evaluate(model, loader(test, cfg.batch_size * 2, False), criterion, device, dtype,
                   desc="test")
    classes = best["classes"]
    summary = summarize(res["targets"], res["preds"], classes)
    by_variant = {}
    names = np.array(test.variant_of)
    for name in sorted(set(test.variant_of)):
        mask = names == name
        by_variant[name] = float((res["preds"][mask] == res["targets"][mask]).mean())
    train_seconds = sum(h["seconds"] for h in history)
    metrics = {
        "val_accuracy": max(h["val_acc"] for h in history), "best_epoch": best["epoch"],
        "test_accuracy": summary["accuracy"], "macro_f1": summary["macro_f1"], "n_test": summary["n"],
        "test_accuracy_by_variant": by_variant, "split": cfg.split, "seed": cfg.seed, "split_seed": cfg.split_rng_seed,
        "variants": sorted(set(test.variant_of)) if cfg.from_strokes else [Path(v).name for v in cfg.variants],
        "source": "strokes" if cfg.from_strokes else "images", "arch": cfg.arch, "stem": cfg.stem, "epochs": cfg.epochs,
        "train_seconds": round(train_seconds, 1),
        "train_images_per_s": round(float(np.mean([h["images_per_s"] for h in history])), 1),
        "device": str(device), "precision": precision_of(dtype), "per_class": summary["per_class"],
        # who drew the training images, once `raster: auto` is resolved (validation and test: homus_render)
        "raster": ("device" if raster_device(cfg.raster, device) else "cpu") if cfg.from_strokes else None,
    }
    plots.plot_confusion(res["targets"], res["preds"], classes, run / "confusion.png",
                         f"{run.name}: test accuracy {summary['accuracy']:.4f}")
    ink = test.images.numpy()
    if ink.ndim == 4:  # the channel people read: ink when there is one
        ink = ink[:, ink_index(cfg.channels)]
    plots.plot_errors(ink, res["targets"], res["preds"], classes, run / "errors.png")
    write_json(run / "metrics.json", metrics)  # last: a run with metrics.json is complete
    (run / LAST).unlink(missing_ok=True)  # a complete run is never continued: its resume state is dead weight
    return run


def _check_same_data(run: Path, now: dict) -> None:
    """Refuse to continue a run on data other than the data it started on."""
    recorded = RunFolder(run).data()
    if recorded and not same_data(recorded, now):
        where = now.get("raw_dir") or ", ".join(v["path"] for v in now.get("variants", []))
        was = recorded.get("raw_dir") or ", ".join(v["path"] for v in recorded.get("variants", []))
        raise RunError(f"{run} started on the data in {was}; the data at hand ({where}) differs, so it cannot "
                       "continue. Restore that data, or train a new run")


def _resume_checkpoint(path: Path, cfg: TrainConfig, classes: list[str]) -> dict:
    """``last.pt``, checked to be a checkpoint of this very model (arch, input channels, classes)."""
    try:
        ckpt = checkpoint.load(path)
    except checkpoint.CheckpointError as e:  # the run's own resume state: starting over is the way out
        why = e.problem.removeprefix(f"{path}: ")
        raise RunError(f"{path}: {why}; delete it, and `homus train --resume {path.parent}` starts the run "
                       "over from epoch 1") from None
    theirs, stem = checkpoint.channels(ckpt), checkpoint.stem(ckpt)
    if (ckpt["arch"] != cfg.arch or stem != cfg.stem or theirs != tuple(cfg.channels)
            or list(ckpt["classes"]) != classes):
        raise RunError(f"{path}: a {ckpt['arch']} ({stem} stem) reading {','.join(theirs)} with "
                       f"{len(ckpt['classes'])} classes, but the run's config.yaml asks for a {cfg.arch} ({cfg.stem} "
                       f"stem) reading {','.join(cfg.channels)} with {len(classes)}; the run folder is "
                       f"inconsistent: remove {path.parent} and train again")
    if "config" in ckpt:  # what the saved epochs learned under, against what config.yaml says now
        changed = setting_differences(upgrade_run_config(dict(ckpt["config"])), asdict(cfg))
        if changed:
            said = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changed[:4])
            raise RunError(f"{path} was trained with other settings than the run's config.yaml now holds "
                           f"({said}); restore config.yaml, or remove {path.parent} and train again")
    return ckpt


def settle_best(run: Path, last_epoch: int | None) -> None:
    """Finish or undo a best-model save a kill interrupted: the pending ``best.pt`` takes its place
    when ``last.pt`` holds its epoch (the kill came between the two saves), and is dropped when the
    run continues from an earlier epoch, which it will train again."""
    pending = run / BEST_PENDING
    if not pending.exists():
        return
    try:
        epoch = checkpoint.load(pending)["epoch"]
    except (checkpoint.CheckpointError, KeyError):  # torn by the kill: the epoch is trained again
        epoch = None
    if epoch is not None and epoch == last_epoch:
        os.replace(pending, run / BEST)
    else:
        pending.unlink()


def start_fresh(resume: bool, run: Path) -> bool:
    return not (resume and (run / LAST).exists())


def init_checkpoint(cfg: TrainConfig) -> dict | None:
    """The homus checkpoint ``cfg.weights`` names, read and checked to fit the run's model (arch,
    stem, input channels); None when the run starts from scratch or ImageNet. Called before any
    data is read, so a missing or unfit file costs nothing (and ``homus run --dry-run`` finds it)."""
    if cfg.weights in ("none", "imagenet"):
        return None
    path, ckpt = cfg.weights, checkpoint.load(cfg.weights)
    theirs, their_stem = checkpoint.channels(ckpt), checkpoint.stem(ckpt)
    if ckpt["arch"] != cfg.arch or their_stem != cfg.stem or theirs != tuple(cfg.channels):
        raise checkpoint.CheckpointError(
            f"{path}: a {ckpt['arch']} ({their_stem} stem) reading {','.join(theirs)} cannot start a {cfg.arch} "
            f"({cfg.stem} stem) run reading {','.join(cfg.channels)}",
            f"pass --arch {ckpt['arch']} --stem {their_stem} --channels {','.join(theirs)}")
    return ckpt


def _init_from_checkpoint(model: nn.Module, ckpt: dict, path: str, classes: list[str]) -> None:
    """Fine-tune from a checked homus checkpoint (:func:`init_checkpoint`); its head is kept when
    the classes match."""
    state = ckpt["model"]
    if ckpt["classes"] != classes:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise checkpoint.CheckpointError(f"{path}: its weights do not fit this model "
                                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
