"""Why a model named a symbol: Grad-CAM saliency, first-layer filters and stage activations.

Grad-CAM (Selvaraju et al. 2017) weighs a convolutional stage's feature maps by the gradient of
one class score and keeps the positive sum: where on the canvas the evidence *for that class*
lies. Captum computes it (``LayerGradCam``, ``LayerActivation``); this module picks the stage,
scales the maps and draws the pictures ``homus explain`` writes and the web page shows.

A ResNet halves the canvas five times, so its last stage (``layer4``) sees a 64-pixel symbol as
2 x 2 cells and a 32-pixel one as a single cell: a map of one cell says nothing about where.
``layer="auto"`` (the default) takes the deepest stage whose map still has at least
:data:`MIN_CELLS` cells a side (``layer4`` from 128 px, ``layer3`` at 64 px, ``layer2`` at 32 px);
where that stage holds no positive evidence for a class at all (every cell's weighted sum is
negative, and the map is blank), the next shallower stage that has some is shown instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from homus_render.errors import HomusError

from .plots import figure_png, plt

STAGES = ("layer1", "layer2", "layer3", "layer4")
#: the fewest cells a side a stage's map needs for Grad-CAM to say where
MIN_CELLS = 4


class MissingExtraError(HomusError, ImportError):
    """An optional dependency that is not installed; says which extra brings it."""


def _captum():
    """Captum's attribution module, or a one-line error naming the extra that installs it."""
    try:
        import captum.attr
    except ImportError:
        raise MissingExtraError("homus explain needs Captum: pip install 'homus[explain]' (or captum)") from None
    return captum.attr


def _grad_ready(x: torch.Tensor) -> torch.Tensor:
    """A plain float copy of ``x`` that autograd may use; call it inside ``inference_mode(False)``
    (the caller may sit in inference mode, whose tensors autograd refuses)."""
    return x.detach().float().clone()


def stage_sizes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    """The spatial size of each ResNet stage's output for input ``x`` (one cheap forward pass)."""
    return {name: tuple(a.shape[-2:]) for name, a in activations(model, x).items()}


def pick_layer(model: nn.Module, x: torch.Tensor, min_cells: int = MIN_CELLS) -> str:
    """The deepest stage whose output has at least ``min_cells`` cells on its shorter side
    (``layer1`` when none has)."""
    sizes = stage_sizes(model, x)
    fit = [name for name in STAGES if min(sizes[name]) >= min_cells]
    return fit[-1] if fit else STAGES[0]


def activations(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each ResNet stage's output for input ``x`` (``(1, C, H, W)``), by Captum's LayerActivation
    (its hooks are removed when it returns)."""
    with torch.inference_mode(False), torch.no_grad():
        outs = _captum().LayerActivation(model, [getattr(model, name) for name in STAGES]).attribute(_grad_ready(x))
    return {name: a.detach() for name, a in zip(STAGES, outs, strict=True)}


def gradcam(model: nn.Module, x: torch.Tensor, targets: Sequence[int], layer: str = "auto") -> np.ndarray:
    """Grad-CAM maps of one input for each class index in ``targets``: ``(len(targets), H, W)``
    float32, each ReLU'd, upsampled (bilinear) to the input's size and scaled so its peak is 1
    (a map with no positive evidence stays 0). ``x``: one model input ``(1, C, H, W)``, as
    :func:`classifier.data.to_input` makes it. ``layer``: a stage name or ``auto`` (see the
    module's notes). The model is expected in eval mode and is left unchanged."""
    attr = _captum()
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"gradcam takes one input of shape (1, C, H, W), got {tuple(x.shape)}")
    targets = [int(t) for t in targets]
    if not targets:
        return np.zeros((0, *x.shape[-2:]), np.float32)
    if layer != "auto":
        if layer not in STAGES:
            raise ValueError(f"layer must be auto or one of {', '.join(STAGES)}, got {layer!r}")
        return _gradcam_at(attr, model, x, targets, layer)
    # auto: the picked stage, or, for a target whose map there holds no positive evidence at all
    # (it happens: every cell's weighted sum negative), the next shallower stage that has some
    first = pick_layer(model, x)
    maps = _gradcam_at(attr, model, x, targets, first)
    for name in reversed(STAGES[:STAGES.index(first)]):
        empty = [i for i in range(len(targets)) if not maps[i].any()]
        if not empty:
            break
        maps[empty] = _gradcam_at(attr, model, x, [targets[i] for i in empty], name)
    return maps


def _gradcam_at(attr, model: nn.Module, x: torch.Tensor, targets: list[int], name: str) -> np.ndarray:
    """:func:`gradcam` at the stage ``name``."""
    with torch.inference_mode(False), torch.enable_grad():
        batch = _grad_ready(x).expand(len(targets), -1, -1, -1).contiguous()
        cam = attr.LayerGradCam(model, getattr(model, name)).attribute(batch, target=targets, relu_attributions=True)
        up = attr.LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    maps = up[:, 0].clamp_min(0)
    peak = maps.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
    return (maps / peak).numpy().astype(np.float32)


def overlay(image: np.ndarray, heat: np.ndarray, strength: float = 0.65) -> np.ndarray:
    """The ink (``image``: uint8 black on white, ``(H, W)``, or the model's ``(C, H, W)`` stack of
    which the first channel is the ink) with ``heat`` (``(H, W)`` in [0, 1]) laid over it in
    OpenCV's JET colours, each pixel tinted as strongly as its heat: a BGR uint8 ``(H, W, 3)``."""
    ink = image[0] if image.ndim == 3 else image
    if heat.shape != ink.shape:
        raise ValueError(f"heat map {heat.shape} does not match the image {ink.shape}")
    base = cv2.cvtColor(ink.astype(np.uint8), cv2.COLOR_GRAY2BGR).astype(np.float32)
    h = np.clip(heat.astype(np.float32), 0, 1)
    colour = cv2.applyColorMap(np.round(h * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    a = (strength * h)[..., None]
    return np.round(base * (1 - a) + colour * a).astype(np.uint8)


def predict_one(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Class probabilities ``(n_classes,)`` for one input ``(1, C, H, W)``."""
    with torch.no_grad():
        return model(x).softmax(1)[0].numpy()


def top_classes(probs: np.ndarray, k: int) -> list[int]:
    """The indices of the ``k`` most probable classes (at least one), most probable first."""
    return [int(i) for i in np.argsort(-probs, kind="stable")[:max(1, min(k, len(probs)))]]


def _channel_views(image: np.ndarray, channels: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    stack = image[None] if image.ndim == 2 else image
    return list(zip(channels, stack, strict=True))


def explain_figure(model: nn.Module, image: np.ndarray, classes: Sequence[str], channels: Sequence[str] = ("ink",),
                   top_k: int = 3, title: str = "", layer: str = "auto") -> bytes:
    """A PNG of one input: each channel as the model read it, then a Grad-CAM overlay for each of
    the ``top_k`` classes, captioned with its probability. ``image``: uint8 as
    :func:`classifier.predict.prepare` gives it."""
    from .data import to_input

    x = to_input(image[None])
    probs = predict_one(model, x)
    top = top_classes(probs, top_k)
    name = pick_layer(model, x) if layer == "auto" else layer
    heats = gradcam(model, x, top, layer=name)
    views = _channel_views(image, channels)
    n = len(views) + len(top)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.75), squeeze=False)
    for ax, (ch, view) in zip(axes[0], views, strict=False):
        ax.imshow(view, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"input: {ch}", fontsize=9)
    for ax, i, heat in zip(axes[0][len(views):], top, heats, strict=True):
        ax.imshow(cv2.cvtColor(overlay(image, heat), cv2.COLOR_BGR2RGB), interpolation="nearest")
        ax.set_title(f"{classes[i]}\np = {probs[i]:.3f}", fontsize=9)
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}  (Grad-CAM on {name})".strip(), fontsize=9)
    fig.tight_layout()
    return figure_png(fig)


def _mosaic(tiles: np.ndarray, cols: int, gap: float = np.nan) -> np.ndarray:
    """``(n, h, w)`` tiles in a grid of ``cols`` columns, one ``gap`` cell between them."""
    n, h, w = tiles.shape
    rows = -(-n // cols)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), gap, np.float32)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = t
    return out


def filters_figure(model: nn.Module, channels: Sequence[str] = ("ink",), title: str = "") -> bytes:
    """A PNG of the first convolution's filters, one grid per input channel, red positive and
    blue negative on one symmetric scale per channel (a filter's response to ink in that channel)."""
    w = model.conv1.weight.detach().float().numpy()  # (out, in, kh, kw)
    cols = int(np.ceil(np.sqrt(w.shape[0])))
    fig, axes = plt.subplots(1, w.shape[1], figsize=(4.2 * w.shape[1], 4.6), squeeze=False)
    for c, ax in enumerate(axes[0]):
        lim = float(np.abs(w[:, c]).max()) or 1.0
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad="white")
        im = ax.imshow(_mosaic(w[:, c], cols), cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(f"conv1, input channel '{channels[c] if c < len(channels) else c}'", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{title}  ({w.shape[0]} filters of {w.shape[2]}x{w.shape[3]})".strip(), fontsize=9)
    fig.tight_layout()
    return figure_png(fig)


def activations_figure(model: nn.Module, image: np.ndarray, channels: Sequence[str] = ("ink",), top: int = 6,
                       title: str = "") -> bytes:
    """A PNG with one row per ResNet stage (layer1..layer4) for one input: the input's ink, the
    stage's mean activation map and its ``top`` most active feature maps (by mean activation)."""
    from .data import to_input

    acts = activations(model, to_input(image[None]))
    ink = _channel_views(image, channels)[0][1]
    cols = 2 + top
    fig, axes = plt.subplots(len(STAGES), cols, figsize=(1.6 * cols, 1.75 * len(STAGES)), squeeze=False)
    for row, name in zip(axes, STAGES, strict=True):
        a = acts[name][0].numpy()  # (C, h, w)
        order = np.argsort(-a.mean(axis=(1, 2)), kind="stable")[:top]
        row[0].imshow(ink, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        row[0].set_ylabel(f"{name}\n{a.shape[0]} x {a.shape[1]}x{a.shape[2]}", fontsize=8)
        scale = {"cmap": "magma", "vmin": 0, "vmax": float(a[order].max()) or 1.0, "interpolation": "nearest"}
        row[1].imshow(a.mean(axis=0), **scale)  # one scale a row: a 1x1 map shows its level, not black
        row[1].set_title("mean", fontsize=8)
        for ax, k in zip(row[2:], order, strict=False):
            ax.imshow(a[k], **scale)
            ax.set_title(f"#{k}", fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{title}  (stage activations)".strip(), fontsize=9)
    fig.tight_layout()
    return figure_png(fig)


def output_names(inputs: Sequence[str | Path]) -> list[str]:
    """One file stem per input, named after it (``a/5-1.txt`` -> ``5-1``); a stem that repeats
    gets ``-2``, ``-3``... so no picture overwrites another."""
    stems = [Path(p).stem or "input" for p in inputs]
    taken, names = set(stems), []  # every input's own stem is reserved: ok.png twice and ok-2.png
    used: set[str] = set()
    for stem in stems:
        name, n = stem, 1
        while name in used or (n > 1 and name in taken):
            n += 1
            name = f"{stem}-{n}"
        used.add(name)
        names.append(name)
    return names


def explain_inputs(run: str | Path, inputs: Sequence[str | Path], out: Path, filters: bool = False, top_k: int = 3,
                   log: Callable[[str], None] = print, warn: Callable[[str], None] = print) -> bool:
    """``homus explain``: for each input a ``<name>-explain.png`` in ``out`` (with ``filters``, also
    ``filters.png`` and a ``<name>-activations.png`` each). Inputs are prepared as ``homus predict``
    prepares them; a bad one is reported by ``warn`` in one line and the others are still explained.
    Returns whether every input was."""
    from homus_render.atomic import write_bytes
    from homus_render.errors import check_writable_dir, user_os_error
    from homus_render.normalize import READS
    from homus_render.render import RenderSettings
    from homus_render.strokes import StrokeFileError

    from . import checkpoint
    from .data import to_input
    from .predict import InputError, image_read, prepare
    from .runfolder import RunFolder

    model, ckpt = RunFolder(run).load_model()
    settings, channels, classes = RenderSettings.from_dict(ckpt["render"]), checkpoint.channels(ckpt), ckpt["classes"]
    made = not Path(out).exists()
    check_writable_dir(out)

    def write(path: Path, data: bytes) -> None:
        try:
            write_bytes(path, data)
        except OSError as e:
            raise user_os_error(e) or e from None

    if filters:
        write(out / "filters.png", filters_figure(model, channels, title=f"run {Path(run).name}"))
        log(f"first-layer filters -> {out / 'filters.png'}")
    read = image_read(READS[0], ckpt)  # predict's default read, for this model

    def explain_one(p, name: str) -> bool:
        try:
            image = prepare(p, settings, channels, read)
        except (InputError, StrokeFileError, OSError) as e:
            msg = str(e) if str(e).startswith(str(p)) else f"{p}: {e}"
            warn(f"error: {msg}")
            return False
        probs = predict_one(model, to_input(image[None]))
        title = f"{Path(p).name}, run {Path(run).name}"
        write(out / f"{name}-explain.png", explain_figure(model, image, classes, channels, top_k, title))
        guesses = ", ".join(f"{classes[i]} {probs[i]:.3f}" for i in top_classes(probs, top_k))
        log(f"{p}: {guesses} -> {out / f'{name}-explain.png'}")
        if filters:
            write(out / f"{name}-activations.png", activations_figure(model, image, channels, title=title))
        return True

    ok = True
    try:
        for p, name in zip(inputs, output_names(inputs), strict=True):
            ok &= explain_one(p, name)
    finally:
        if made and not any(Path(out).iterdir()):  # nothing explained: no empty folder left behind
            Path(out).rmdir()
    return ok
