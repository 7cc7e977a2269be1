"""One checkpoint dict per file (model, optimizer, scheduler, epoch, classes, render settings, ...),
written atomically and read without unpickling arbitrary objects."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from homus_render.atomic import write_bytes
from homus_render.channels import CHANNELS
from homus_render.errors import HomusError, SettingsError
from homus_render.render import RenderSettings

from .settings import ARCHS, STEMS, check_run_config, upgrade_run_config

FORMAT = "homus-checkpoint-1"
REQUIRED = ("format", "model", "arch", "classes", "in_channels", "render")


#: What a user does about a checkpoint that is damaged beyond use.
RETRAIN = "train the run again"


class CheckpointError(HomusError, ValueError):
    """A file that is not a usable homus checkpoint: ``problem`` says what is wrong, ``advice`` what
    to do about it, so a caller with better advice (a resume) can replace it."""

    def __init__(self, problem: str, advice: str = "") -> None:
        self.problem, self.advice = problem, advice
        super().__init__(f"{problem}; {advice}" if advice else problem)


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
    except Exception as e:  # empty or truncated file, pickle refused by weights_only, random bytes...
        first = (str(e).strip().splitlines() or ["-"])[0]
        first = first if len(first) <= 200 else first[:197] + "..."
        with open(path, "rb") as f:
            head = f.read(4)
        why = ("the file is empty" if not head else
               "it does not begin as a torch checkpoint does: zeroed, overwritten or another kind of file"
               if head != b"PK\x03\x04" else f"{type(e).__name__}: {first}")
        raise CheckpointError(f"{path}: not a readable homus checkpoint ({why})", RETRAIN) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a homus checkpoint (no '{FORMAT}' marker)")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}", RETRAIN)
    _check_fields(path, ckpt)
    return ckpt


def _check_fields(path: Path, ckpt: dict) -> None:
    """What predict, evaluate and serve read from a checkpoint has the type and values they need,
    so a damaged or hand-made file is a CheckpointError here rather than a crash later."""
    def bad(key: str, want: str) -> CheckpointError:
        return CheckpointError(f"{path}: checkpoint '{key}' must be {want}, got {ckpt.get(key)!r:.80}",
                               f"the file is damaged, {RETRAIN}")

    if ckpt["arch"] not in ARCHS:
        raise bad("arch", f"one of {', '.join(ARCHS)}")
    if stem(ckpt) not in STEMS:
        raise bad("stem", f"one of {', '.join(STEMS)}")
    classes = ckpt["classes"]
    if not isinstance(classes, (list, tuple)) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise bad("classes", "a list of at least two class names")
    if not isinstance(ckpt["in_channels"], int) or isinstance(ckpt["in_channels"], bool):
        raise bad("in_channels", "a whole number")
    names = ckpt.get("channels", ["ink"])
    if not isinstance(names, (list, tuple)) or any(c not in CHANNELS for c in names):
        raise bad("channels", f"a list of {', '.join(CHANNELS)}")
    if len(names) != ckpt["in_channels"]:
        raise CheckpointError(f"{path}: channels {list(names)} do not match in_channels {ckpt['in_channels']}",
                              f"the file is damaged, {RETRAIN}")
    if not isinstance(ckpt["model"], dict):
        raise bad("model", "the model's weights (a state dict)")
    if not isinstance(ckpt["render"], dict):
        raise bad("render", "a mapping of render settings")
    try:  # every field, defaults filled in for checkpoints that recorded part of them
        ckpt["render"] = RenderSettings.from_dict(ckpt["render"]).to_dict()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: checkpoint 'render' settings do not work ({e})", RETRAIN) from None
    config = ckpt.get("config")
    if config is not None and not isinstance(config, dict):
        raise bad("config", "the run's settings (a mapping)")
    if config is not None:  # the run's config.yaml as saved with the model: the check RunFolder gives that file
        try:
            check_run_config(upgrade_run_config(config), f"{path}: checkpoint 'config'")
        except SettingsError as e:
            raise CheckpointError(str(e), f"the file is damaged, {RETRAIN}") from None


def channels(ckpt: dict) -> tuple[str, ...]:
    """The input channels the model reads (checkpoints before channels existed: ink alone)."""
    return tuple(ckpt.get("channels", ["ink"]))


def stem(ckpt: dict) -> str:
    """The layers before the model's first block (checkpoints before stems existed: imagenet)."""
    return ckpt.get("stem", "imagenet")


def load_model(path: str | Path):
    """The model a checkpoint holds (eval mode, on the CPU) and the checkpoint dict."""
    from .models import build_model

    ckpt = load(path)
    model = build_model(ckpt["arch"], len(ckpt["classes"]), ckpt["in_channels"], stem=stem(ckpt))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit a {ckpt['arch']} with the {stem(ckpt)} stem "
                              f"({str(e).splitlines()[0][:200]})", f"the file is damaged, {RETRAIN}") from None
    return model.eval(), ckpt
