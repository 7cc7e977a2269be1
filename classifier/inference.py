"""Serve one run, or several as an ensemble, to many callers: models loaded once, every model fed
the input it was trained on (its checkpoint's render settings and channels), probabilities
averaged as :func:`classifier.evaluate.vote` averages them.

Inference runs under ``torch.inference_mode``. Concurrent callers are safe: drawing the inputs
runs in the caller's thread, and the models run one batch at a time, the requests that arrived
while a batch ran gathered into the next one (fewer, larger forward passes keep a small CPU busy
with useful work instead of switching between threads).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from homus_render.channels import render_plain
from homus_render.errors import HomusError
from homus_render.render import RenderSettings

from . import checkpoint
from .data import to_input
from .runfolder import RunFolder


class EnsembleError(HomusError, ValueError):
    """Runs that cannot be served together."""


def class_probabilities(model: nn.Module, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Softmax over classes of ``model`` for uint8 black-on-white ``images`` (``(n, h, w)`` or
    ``(n, c, h, w)``): float32 ``(n, classes)``, ``batch`` images per forward pass, so thousands of
    inputs take no more memory than a batch. The forward pass ``homus predict`` and the web service share."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = to_input(images[i:i + batch]).contiguous(memory_format=torch.channels_last)
            out.append(model(x).float().softmax(1).numpy())
    return np.concatenate(out)


@dataclass(frozen=True)
class Member:
    """One model of the ensemble and the input it reads."""

    run: Path
    model: nn.Module
    arch: str
    classes: tuple[str, ...]
    channels: tuple[str, ...]
    settings: RenderSettings

    @property
    def name(self) -> str:
        return self.run.name

    def describe(self) -> dict:
        return {"run": self.name, "path": str(self.run), "arch": self.arch, "channels": list(self.channels),
                "render": self.settings.to_dict(), "render_name": self.settings.name,
                "size": [self.settings.width, self.settings.height]}


@dataclass
class Prediction:
    """The ensemble's answer for one symbol: ``probs`` over ``classes`` (summing to 1), each
    member's own probabilities, and the uint8 images each member read."""

    classes: tuple[str, ...]
    probs: np.ndarray
    member_probs: list[np.ndarray]
    images: list[np.ndarray]

    def top(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` most probable classes, most probable first (ties in class order)."""
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(self.classes[i], float(self.probs[i])) for i in order]


def load_members(runs: Sequence[str | Path]) -> list[Member]:
    """Each run's best model, once; the runs must predict the same classes in the same order."""
    if not runs:
        raise EnsembleError("give at least one run folder")
    members: list[Member] = []
    for run in runs:
        folder = RunFolder(run)
        folder.config()  # a folder that is no run says so, before any checkpoint is looked for
        model, ckpt = folder.load_model()
        model = model.to(memory_format=torch.channels_last)
        m = Member(Path(run), model, ckpt["arch"], tuple(ckpt["classes"]), checkpoint.channels(ckpt),
                   RenderSettings.from_dict(ckpt["render"]))
        if members and m.classes != members[0].classes:
            raise EnsembleError(f"{run} predicts other classes than {members[0].run} "
                                f"({len(m.classes)} against {len(members[0].classes)}, or in another order); "
                                "an ensemble averages the probabilities of one set of classes")
        members.append(m)
    return members


class _Gather:
    """Runs ``fn`` on lists of items, one call at a time; items that arrive while a call runs are
    gathered into the next call (at most ``max_batch``). Each caller gets its own result, or the
    exception ``fn`` raised."""

    def __init__(self, fn: Callable[[list], list], max_batch: int = 32) -> None:
        self.fn, self.max_batch = fn, max_batch
        self._cv = threading.Condition()
        self._queue: list[dict] = []
        self._busy = False

    def __call__(self, item):
        slot = {"item": item, "done": False}
        with self._cv:
            self._queue.append(slot)
            while True:
                if slot["done"]:
                    break
                if not self._busy:
                    batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                    self._busy = True
                    self._cv.release()
                    try:
                        self._run(batch)
                    finally:
                        self._cv.acquire()
                        self._busy = False
                        self._cv.notify_all()
                    continue
                self._cv.wait()
        if "error" in slot:
            raise slot["error"]
        return slot["result"]

    def _run(self, batch: list[dict]) -> None:
        try:
            results = self.fn([s["item"] for s in batch])
            for s, r in zip(batch, results, strict=True):
                s["result"] = r
        except BaseException as e:  # every waiting caller hears of it, not only the one that ran it
            for s in batch:
                s["error"] = e
        finally:
            for s in batch:
                s["done"] = True


class Predictor:
    """One run, or several voting together, loaded once and safe to call from many threads."""

    def __init__(self, runs: Sequence[str | Path], max_batch: int = 32) -> None:
        self.members = load_members(runs)
        self.classes = self.members[0].classes
        self._forward = _Gather(self._forward_batch, max_batch)
        self._saliency_lock = threading.Lock()
        self._saliency_models: list[nn.Module] | None = None  # copies: Captum's hooks stay off the shared models

    def images(self, strokes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The uint8 image (``(h, w)``, or ``(c, h, w)`` for several channels) each member reads,
        drawn once per distinct (settings, channels)."""
        drawn: dict = {}
        out = []
        for m in self.members:
            key = (m.settings, m.channels)
            if key not in drawn:
                drawn[key] = render_plain(strokes, m.settings, m.channels)
            out.append(drawn[key])
        return out

    def _forward_batch(self, batch: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        per_member = [class_probabilities(m.model, np.stack([imgs[i] for imgs in batch]))
                      for i, m in enumerate(self.members)]
        return [[p[j] for p in per_member] for j in range(len(batch))]

    def predict(self, strokes: Sequence[np.ndarray]) -> Prediction:
        """The ensemble's class probabilities for one symbol's strokes (tablet units, in pen order)."""
        images = self.images(strokes)
        member_probs = self._forward(images)
        probs = np.mean(member_probs, axis=0)
        return Prediction(self.classes, probs, member_probs, images)

    def saliency(self, images: list[np.ndarray], class_index: int) -> list[np.ndarray]:
        """Each member's Grad-CAM map (``(h, w)`` in [0, 1], :func:`classifier.explain.gradcam`) of
        ``class_index`` on the image it read. One map at a time, on copies of the members' models: Captum
        hooks the model it explains, and on a shared one the hooks caught other requests' forward passes."""
        from .data import to_input
        from .explain import gradcam

        with self._saliency_lock:
            if self._saliency_models is None:
                self._saliency_models = [copy.deepcopy(m.model) for m in self.members]
            return [gradcam(model, to_input(img[None]), [class_index])[0]
                    for model, img in zip(self._saliency_models, images, strict=True)]

    def describe(self) -> list[dict]:
        return [m.describe() for m in self.members]
