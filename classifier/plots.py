"""Pictures of a run: confusion matrix, learning curves, misclassified test images."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from homus_render.atomic import write_bytes  # noqa: E402

from .metrics import confusion  # noqa: E402


def figure_png(fig) -> bytes:
    """The figure as PNG bytes without a timestamp or version stamp; closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def tidy(fig) -> None:
    """``fig.tight_layout()``, quietly: where long labels leave it no room it does what it can, and
    matplotlib's warning would be noise among homus' own lines."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()


def save_figure(fig, path: Path) -> None:
    """The figure as PNG (:func:`figure_png`), written atomically."""
    write_bytes(path, figure_png(fig))


def plot_confusion(targets, preds, classes: list[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix (each row sums to 1: recall on the diagonal)."""
    plot_confusion_matrix(confusion(targets, preds, len(classes)), classes, path, title)


def plot_confusion_matrix(counts, classes: list[str], path: Path, title: str = "") -> None:
    """:func:`plot_confusion` of a matrix of counts (true class by row), e.g. pooled over folds."""
    m = np.asarray(counts, dtype=float)
    m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(13, 11.5))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, j in zip(*np.nonzero(m >= 0.005), strict=True):
        ax.text(j, i, f"{m[i, j]:.2f}".lstrip("0") if m[i, j] < 1 else "1", ha="center", va="center",
                fontsize=6, color="white" if m[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion (row-normalised)")
    fig.colorbar(im, fraction=0.04)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.95)
    save_figure(fig, path)


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train and validation."""
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    a.set_title("loss")
    b.plot(ep, [h["train_acc"] for h in history], "o-", label="train")
    b.plot(ep, [h["val_acc"] for h in history], "o-", label="val")
    b.set_title("accuracy")
    for ax in (a, b):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    tidy(fig)
    save_figure(fig, path)


def tile_grid(n: int, cols: int, tile: tuple[float, float]):
    """A figure of blank tiles for ``n`` small pictures (at least one row), ``tile`` inches each:
    ``(fig, axes)`` with ``axes`` a 2-D array."""
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * tile[0], rows * tile[1]), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def mosaic(images: np.ndarray, cols: int, pad: int, caption: int, frame: int = 200) -> np.ndarray:
    """The grey ``images`` (N, H, W) tiled ``cols`` to a row on white: each in a cell with ``pad`` blank
    pixels at the sides and bottom, ``caption`` blank rows above it, and a thin grey ``frame``."""
    n, h, w = images.shape
    rows = max(1, -(-n // cols))
    ch, cw = caption + h + pad, w + 2 * pad
    out = np.full((rows * ch, cols * cw), 255, np.uint8)
    for k in range(n):
        y, x = (k // cols) * ch + caption, (k % cols) * cw + pad
        out[y - 1:y + h + 1, x - 1:x + w + 1] = frame
        out[y:y + h, x:x + w] = images[k]
    return out


def plot_errors(images: np.ndarray, targets, preds, classes: list[str], path: Path, limit: int = 48) -> None:
    """A grid of misclassified images captioned ``true -> predicted`` (at most ``limit``).

    One picture of the tiles and one caption each, not a subplot each: every run draws this, and
    dozens of subplots are slow to lay out."""
    wrong = np.nonzero(np.asarray(targets) != np.asarray(preds))[0][:limit]
    cols, (h, w) = 8, images.shape[1:3]
    pad, caption = max(2, w // 8), max(8, (h * 3) // 8)
    cell_h, cell_w = caption + h + pad, w + 2 * pad  # a tile's cell in the mosaic (see mosaic)
    grid = mosaic(np.asarray(images)[wrong].astype(np.uint8), cols, pad, caption)
    inch = 1.7 / cell_w  # of one mosaic pixel: a tile 1.7 inches wide, square pixels
    body = grid.shape[0] * inch
    fig = plt.figure(figsize=(cols * 1.7, body + 0.4))
    ax = fig.add_axes((0.0, 0.0, 1.0, body / (body + 0.4)))
    ax.imshow(np.repeat(grid[..., None], 3, axis=2), interpolation="nearest", aspect="auto")  # RGB: no colour map
    ax.axis("off")
    for k, i in enumerate(wrong):
        x = (k % cols + 0.5) * cell_w - 0.5
        y = (k // cols) * cell_h + caption - 2
        ax.text(x, y, f"{classes[targets[i]]}\n-> {classes[preds[i]]}", ha="center", va="bottom", fontsize=7,
                color="darkred")
    if not len(wrong):
        ax.text(0.5 * w, caption / 2, "no test image was misclassified", ha="left", va="center", fontsize=9)
    fig.suptitle(f"misclassified test images ({len(wrong)} shown)", fontsize=10, y=1 - 0.15 / fig.get_figheight())
    save_figure(fig, path)
