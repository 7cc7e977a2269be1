"""Images drawn elsewhere, made into the model's view: thin ink reduced to its centre line and
drawn again at the model's pen width, ink as wide as the model's pen or wider read as it is.

Other renderers and scanners differ from homus in the pen's width (1 px at the tablet's scale, or
5), in the scale (the tablet's own on a fixed canvas, where homus fits the symbol to the canvas),
and in antialiasing. Resizing such an image changes its stroke width with the scale, so a model
trained at 3 px sees strokes of 1 or 9. The skeleton of the ink keeps what the pen drew and drops
the pen; :func:`redraw` fits it to the canvas and draws it with the renderer itself, at
``settings.thickness``. The neighbouring skeleton pixels become short pen strokes, so the drawing
stays connected whatever the scale.

A pen thicker than the model's merges small loops, flags and dots into blobs whose centre line no
longer tells them apart, while the blobs themselves still do (a three-flag blob is larger than a
two-flag one). Models trained with ``--stroke-redraw`` have seen such ink, so ``read="auto"``
(:data:`READS`) keeps it, and redraws only ink thinner than the model's pen, which resizing would
leave faint and broken. :func:`stroke_width` measures it.
"""

from __future__ import annotations

import cv2
import numpy as np

from .render import RenderSettings, render

#: How ``homus predict`` reads an image (the first is the default): ``auto`` (:func:`redraw` when the
#: ink is thinner than the model's pen, else ``fit``), ``redraw``, or ``fit`` (the ink's box resized to
#: the canvas).
READS = ("auto", "redraw", "fit")

#: Offsets to the neighbours each skeleton pixel is joined to (each pair once: right, down, both diagonals).
_NEXT = ((0, 1), (1, 0), (1, 1), (1, -1))


def ink_mask(gray: np.ndarray) -> np.ndarray:
    """The ink of a black-on-white ``uint8`` image, by Otsu's threshold (``True`` where inked)."""
    _, ink = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    return ink > 0


def skeleton(mask: np.ndarray) -> np.ndarray:
    """The one-pixel-wide centre line of ``mask`` (scikit-image's skeletonize)."""
    from skimage.morphology import skeletonize

    return skeletonize(mask)


def stroke_width(mask: np.ndarray) -> float:
    """The mean width of the ink in ``mask``, in pixels: its area over its centre line's length (0
    without ink)."""
    line = int(skeleton(mask).sum())
    return float(mask.sum()) / line if line else 0.0


def reads_as_drawn(fitted: np.ndarray, s: RenderSettings) -> bool:
    """Whether ``read="auto"`` keeps an image fitted to the canvas as it is: its ink is at least as
    wide as the model's pen. Thinner ink would be faint and broken at the model's scale, so it is
    redrawn. Training with ``--stroke-redraw`` uses the same rule, so the model sees what predict shows."""
    return stroke_width(ink_mask(fitted)) >= s.thickness


def skeleton_strokes(skel: np.ndarray) -> list[np.ndarray]:
    """The skeleton as pen strokes in pixel coordinates ``(x, y)``: a two-point stroke for each
    pair of neighbouring pixels, a dot for a pixel with no neighbour."""
    ys, xs = np.nonzero(skel)
    h, w = skel.shape
    strokes = []
    joined = np.zeros(len(ys), bool)
    for dy, dx in _NEXT:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        hit = np.zeros(len(ys), bool)
        hit[inside] = skel[ny[inside], nx[inside]]
        for y0, x0 in zip(ys[hit].tolist(), xs[hit].tolist(), strict=True):
            strokes.append(np.array([[x0, y0], [x0 + dx, y0 + dy]], np.float64))
        joined |= hit
    if len(strokes) < len(ys):  # pixels with no later neighbour may still have an earlier one
        linked = set()
        for st in strokes:
            linked.update(map(tuple, st.astype(int).tolist()))
        for y0, x0 in zip(ys.tolist(), xs.tolist(), strict=True):
            if (x0, y0) not in linked:
                strokes.append(np.array([[x0, y0]], np.float64))
    return strokes


def check_read(read: str) -> None:
    """ValueError unless ``read`` is one of :data:`READS`."""
    if read not in READS:
        raise ValueError(f"read must be one of {', '.join(READS)}, got {read!r}")


def fit_ink(gray: np.ndarray, s: RenderSettings) -> np.ndarray:
    """The ink's box of a black-on-white ``uint8`` image resized to the canvas minus margins, centred,
    pen and all. Raises ValueError when the image holds no ink."""
    mask = ink_mask(gray)
    if not mask.any() or mask.all():
        raise ValueError("no ink found: the image is blank")
    ys, xs = np.nonzero(mask)
    crop = gray[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    f = min((s.width - 2 * s.margin) / w, (s.height - 2 * s.margin) / h)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    out = np.full((s.height, s.width), 255, np.uint8)
    y, x = (s.height - size[1]) // 2, (s.width - size[0]) // 2
    out[y:y + size[1], x:x + size[0]] = crop
    return out


def model_view(gray: np.ndarray, s: RenderSettings, read: str = READS[0]) -> np.ndarray:
    """A black-on-white ``uint8`` image of a symbol as the model sees it (:data:`READS`): fitted
    (:func:`fit_ink`), redrawn (:func:`redraw`), or by ``auto``, fitted when
    :func:`reads_as_drawn` and redrawn otherwise. Raises ValueError when the image holds no ink."""
    check_read(read)
    if read != "redraw":
        fitted = fit_ink(gray, s)
        if read == "fit" or reads_as_drawn(fitted, s):
            return fitted
    return redraw(gray, s)


def redraw(gray: np.ndarray, settings: RenderSettings) -> np.ndarray:
    """A black-on-white ``uint8`` image of a symbol, redrawn as homus draws one: its ink's centre
    line fitted to the canvas and drawn with a pen ``settings.thickness`` pixels wide. Raises
    ValueError when the image holds no ink."""
    mask = ink_mask(gray)
    if not mask.any() or mask.all():
        raise ValueError("no ink found: the image is blank")
    strokes = skeleton_strokes(skeleton(mask))
    return render(strokes, settings)
