"""One checkpoint dict per file (model, optimizer, scheduler, epoch, classes, render settings, ...),
written atomically and read without unpickling arbitrary objects."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from homus_render.atomic import write_bytes
from homus_render.errors import HomusError

FORMAT = "homus-checkpoint-1"
REQUIRED = ("format", "model", "arch", "classes", "in_channels", "render")


class CheckpointError(HomusError, ValueError):
    """A file that is not a usable homus checkpoint."""


def save(path: str | Path, ckpt: dict) -> None:
    """``torch.save`` to a temporary beside ``path``, fsync, rename: never a torn checkpoint, and
    no temporary left on any failure (a full disk is a one-line error naming ``path``)."""
    buf = io.BytesIO()  # serialised first: torch reports a failed file write as a RuntimeError, not an OSError
    torch.save({"format": FORMAT, **ckpt}, buf)
    write_bytes(path, buf.getbuffer(), fsync=True)


def load(path: str | Path) -> dict:
    """Read a homus checkpoint with ``weights_only=True``; anything else is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle refused by weights_only, random bytes...
        raise CheckpointError(f"{path}: not a readable homus checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a homus checkpoint (no '{FORMAT}' marker)")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    if len(channels(ckpt)) != ckpt["in_channels"]:
        raise CheckpointError(f"{path}: channels {channels(ckpt)} do not match in_channels {ckpt['in_channels']}")
    return ckpt


def channels(ckpt: dict) -> tuple[str, ...]:
    """The input channels the model reads (checkpoints before channels existed: ink alone)."""
    return tuple(ckpt.get("channels", ["ink"]))


def load_model(path: str | Path):
    """The model a checkpoint holds (eval mode, on the CPU) and the checkpoint dict."""
    from .models import build_model

    ckpt = load(path)
    model = build_model(ckpt["arch"], len(ckpt["classes"]), ckpt["in_channels"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit a {ckpt['arch']} ({e})") from None
    return model.eval(), ckpt
