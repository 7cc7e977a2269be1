"""One epoch of training, one pass of evaluation: plain functions, read top to bottom."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
from tqdm import tqdm

from homus_render.errors import HomusError

from .settings import AMP_MODES, AMP_OF_BOOL


class DeviceError(HomusError, RuntimeError):
    """A device asked for that this machine does not have."""


#: Progress bars: None shows them on a terminal; False never (a run beside others in one terminal).
PROGRESS: bool | None = None


def _no_bars() -> bool | None:
    """tqdm's ``disable``: None hides the bar where the output is not a terminal."""
    return None if PROGRESS is None else not PROGRESS


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda asked for, but no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("--device mps asked for, but MPS is not available")
    return torch.device(name)


class DivergedError(HomusError, FloatingPointError):
    """Training produced a non-finite loss: its figures would mean nothing."""


def amp_dtype(device: torch.device, amp: str | bool) -> torch.dtype | None:
    """The autocast dtype of AMP mode ``amp`` (:data:`~classifier.settings.AMP_MODES`; true/false read
    as auto/off) on ``device``, or None (full precision). auto: on CUDA bf16 where supported, else
    fp16 (which needs loss scaling); full precision elsewhere, so CPU runs stay what they always
    were. bf16: on CUDA or the CPU (fast where the CPU has bf16 instructions). fp16: CUDA only. A
    mode the device cannot run is a :class:`DeviceError`."""
    if isinstance(amp, bool):
        amp = AMP_OF_BOOL[amp]
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16" and device.type != "cuda":
        other = "--amp bf16 or --amp off" if device.type == "cpu" else "--amp off"
        raise DeviceError(f"--amp fp16 runs on CUDA only, not on {device.type}; use {other} (train.amp; a "
                          "resumed run reads it from its config.yaml)")
    if amp == "bf16" and device.type not in ("cuda", "cpu"):
        raise DeviceError(f"--amp bf16 runs on CUDA or the CPU, not on {device.type}; use --amp off (train.amp; a "
                          "resumed run reads it from its config.yaml)")
    bf16_ok = device.type == "cpu" or torch.cuda.is_bf16_supported()
    if amp == "bf16" and not bf16_ok:
        raise DeviceError("--amp bf16: this GPU has no bf16; use --amp fp16 (with loss scaling) or --amp auto "
                          "(train.amp; a resumed run reads it from its config.yaml)")
    if amp == "fp16" or not bf16_ok:
        return torch.float16
    return torch.bfloat16


def precision_of(dtype: torch.dtype | None) -> str:
    """The name a run records for its autocast dtype: bf16, fp16, or fp32 (full precision)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX). Without them, bf16 autocast on
    the CPU is emulated and slower than full precision."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` (see :func:`amp_dtype`) on ``device``; nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (whose small gradients underflow without one); None otherwise."""
    if dtype != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def make_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights (torch's ``AveragedModel``), to be
    updated after every optimizer step; None when ``decay`` is 0 (off). Its batch-norm buffers only
    follow the model's: before it is used, :func:`measure_batch_norm` measures them for its weights."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def measure_batch_norm(model: nn.Module, loader, device: torch.device) -> None:
    """Measure ``model``'s batch-norm statistics afresh over ``loader``'s images (torch's
    ``update_bn``). Averaged weights never ran a training step, so neither the statistics of a step
    nor their average fit them: with those, an average of good models can read like a poor one."""
    update_bn(((x.to(device, memory_format=torch.channels_last), y) for x, y in loader), model)


def train_one_epoch(model: nn.Module, loader, criterion, optimizer, scheduler, device: torch.device,
                    epoch: int, scaler=None, transform=None, dtype: torch.dtype | None = None,
                    ema: AveragedModel | None = None, mix=None) -> dict:
    """Train over ``loader`` once, stepping the scheduler every batch; ``transform`` (augmentation)
    is applied to each input batch, then ``mix(x, y)`` (mixup or cutmix: the batch and soft labels
    that the loss reads; accuracy is counted against the batch's own labels); ``dtype`` is the
    autocast dtype (:func:`amp_dtype`, None: full precision); ``scaler`` scales fp16 losses (see
    :func:`make_scaler`); ``ema`` (see :func:`make_ema`) follows every step. A non-finite loss
    stops with :class:`DivergedError`. Returns loss, accuracy and images/s (data path included)."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    # a with block: the bar is closed on every exit path, a diverged loss and an interruption too
    with tqdm(loader, desc=f"epoch {epoch} train", leave=False, unit="batch", disable=_no_bars()) as bar:
        for step, (x, y) in enumerate(bar, 1):
            if transform is not None:
                x = transform(x)
            if mix is not None:
                x, target = mix(x, y)
            x = x.to(device, memory_format=torch.channels_last, non_blocking=True)
            y = y.to(device, non_blocking=True)
            target = y if mix is None else target.to(device, non_blocking=True)
            with autocast(device, dtype):
                out = model(x)
                loss = criterion(out, target)
            if not torch.isfinite(loss):
                raise DivergedError(f"epoch {epoch}, batch {step}: the loss is {loss.item()}; training diverged. "
                                    "Lower --lr, or check --weight-decay and --label-smoothing")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            n = len(y)
            total_loss += loss.item() * n
            correct += (out.argmax(1) == y).sum().item()
            seen += n
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", img_s=f"{rate:.0f}")
    seconds = time.perf_counter() - start
    return {"train_loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1),
            "seconds": seconds, "images_per_s": seen / seconds if seconds else 0.0}


@torch.no_grad()
def evaluate(model: nn.Module, loader, criterion, device: torch.device, dtype: torch.dtype | None = None,
             desc: str = "eval") -> dict:
    """Loss, accuracy, and every prediction and class probability (as numpy arrays) over ``loader``,
    autocast to ``dtype`` (None: full precision)."""
    model.eval()
    total_loss, preds, probs, targets = 0.0, [], [], []
    for x, y in tqdm(loader, desc=desc, leave=False, unit="batch", disable=_no_bars()):
        x = x.to(device, memory_format=torch.channels_last, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast(device, dtype):
            out = model(x)
        total_loss += criterion(out.float(), y).item() * len(y)
        preds.append(out.argmax(1).cpu())
        probs.append(out.float().softmax(1).cpu())
        targets.append(y.cpu())
    targets_np = torch.cat(targets).numpy() if targets else np.zeros(0, int)
    probs_np = torch.cat(probs).numpy() if probs else np.zeros((0, 0), np.float32)
    preds_np = torch.cat(preds).numpy() if preds else np.zeros(0, int)
    n = len(targets_np)
    return {"loss": total_loss / max(n, 1), "acc": float((preds_np == targets_np).mean()) if n else 0.0,
            "preds": preds_np, "targets": targets_np, "probs": probs_np}
