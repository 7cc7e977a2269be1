"""Images drawn elsewhere, made into the model's view: the ink fitted to the canvas, thin or
enlarged ink given the model's pen along its centre line, or the centre line alone drawn again.

Other renderers and scanners differ from homus in the pen's width (1 px at the tablet's scale, or
5), in the scale (the tablet's own on a fixed canvas, where homus fits the symbol to the canvas),
and in antialiasing. Resizing such an image changes its stroke width with the scale, so a model
trained at 3 px sees strokes of 1 or 9, and a small symbol enlarged to the canvas shows its pixels
as blocky steps. The skeleton of the ink keeps what the pen drew and drops the pen; the renderer
draws it again at ``settings.thickness`` (the neighbouring skeleton pixels become short pen strokes,
so the drawing stays connected whatever the scale).

Two reads use it. :func:`redraw` draws the centre line alone, fitted to the canvas. :func:`thicken`
draws it over the fitted ink, in the same place, so that thin ink gains the model's pen while what
the ink already covers stays: a filled note head that a thin pen drew as a tight scribble is a blob
whose centre line is a single loop, and only the ink itself keeps it filled.

A pen thicker than the model's merges small loops, flags and dots into blobs whose centre line no
longer tells them apart, while the blobs themselves still do (a three-flag blob is larger than a
two-flag one). Models trained with ``--stroke-redraw`` have seen such ink, so ``read="auto"``
(:data:`READS`) keeps ink as wide as the model's pen as it is, and thickens the rest: thinner ink,
and ink that fitting enlarged. :func:`stroke_width` measures the width.
"""

from __future__ import annotations

import cv2
import numpy as np

from .render import RenderSettings, draw, render

#: How ``homus predict`` reads an image (the first is the default): ``auto`` (``fit`` when the ink is
#: as wide as the model's pen and fitting does not enlarge it, else ``thicken``), ``thicken``
#: (:func:`thicken`), ``redraw`` (:func:`redraw`), or ``fit`` (the ink's box resized to the canvas).
READS = ("auto", "thicken", "redraw", "fit")

#: The longest centre line read, in pixels. A symbol drawn on paper has a few thousand even in a large
#: scan; noise or a photo of a scene has millions, whose strokes would take gigabytes to draw.
MAX_CENTRE_LINE = 200_000

#: Ink differs from the paper by at least this many grey levels (of 255), between the means of the
#: two sides of Otsu's threshold: fainter marks are a blank page's dust, or need a better scan.
MIN_INK_CONTRAST = 48
#: ... and by at least this many times the paper's own spread (its standard deviation): a page whose
#: shading, grain or noise varies as much as the marks differ from it shows no ink to fit.
MIN_INK_OVER_PAPER = 4

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
    """Whether the ink of an image fitted to the canvas is at least as wide as the model's pen;
    thinner ink would be faint and broken at the model's scale. ``read="auto"`` keeps only such ink
    (and only when fitting did not enlarge it) as it is; training with ``--stroke-redraw`` uses the
    same rule, so the model sees what predict shows."""
    return stroke_width(ink_mask(fitted)) >= s.thickness


def skeleton_strokes(skel: np.ndarray) -> list[np.ndarray]:
    """The skeleton as pen strokes in pixel coordinates ``(x, y)``: a two-point stroke for each
    pair of neighbouring pixels, a dot for a pixel with no neighbour. Raises ValueError for a line
    longer than :data:`MAX_CENTRE_LINE`."""
    ys, xs = np.nonzero(skel)
    if len(ys) > MAX_CENTRE_LINE:
        raise ValueError(f"the ink's centre line is {len(ys):,} pixels long, more than a drawn symbol's "
                         f"({MAX_CENTRE_LINE:,} at most): is it a photo or noise? Crop it to the symbol on plain paper")
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


_Frame = tuple[tuple[int, int, int, int], tuple[int, int], tuple[int, int]]


def _fit_frame(mask: np.ndarray, s: RenderSettings) -> _Frame:
    """Where :func:`fit_ink` puts the ink of ``mask``: its box ``(x0, y0, w, h)`` in the image, its
    size on the canvas and its offset there (centred, within the margins)."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    w, h = int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1
    f = min((s.width - 2 * s.margin) / w, (s.height - 2 * s.margin) / h)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return (x0, y0, w, h), size, ((s.width - size[0]) // 2, (s.height - size[1]) // 2)


def no_ink(gray: np.ndarray) -> str | None:
    """Why the black-on-white ``uint8`` image ``gray`` holds no ink to read, or None when it does:
    Otsu's threshold splits any image that is not flat in two, so the split must also stand out,
    by :data:`MIN_INK_CONTRAST` grey levels and by :data:`MIN_INK_OVER_PAPER` times the paper's
    spread. A blank photo's vignette, a gradient, sensor noise or faint dust fails one of them."""
    return _why_no_ink(gray, ink_mask(gray))


def _why_no_ink(gray: np.ndarray, mask: np.ndarray) -> str | None:
    """:func:`no_ink`, given the image's ink mask (:func:`ink_mask`)."""
    if not mask.any() or mask.all():
        return "no ink found: the image is blank"
    ink, paper = gray[mask], gray[~mask]
    gap, spread = float(paper.mean()) - float(ink.mean()), float(paper.std())
    if gap >= MIN_INK_CONTRAST and gap >= MIN_INK_OVER_PAPER * spread:
        return None
    # Otsu split the paper's shading: are there marks that stand out from it all the same (the
    # darkest pixels against the median, by the paper's robust spread)? Then the symbol is a small
    # part of a large, unevenly lit page, which a crop makes readable
    median = float(np.median(gray))
    marks = median - float(np.percentile(gray, 0.1))
    sigma = 1.4826 * float(np.median(np.abs(gray.astype(np.float32) - median)))
    if marks >= MIN_INK_CONTRAST and marks >= MIN_INK_OVER_PAPER * sigma:
        return ("the ink is a small part of an unevenly lit page, whose shading cannot be told from it; crop "
                "the image to the symbol")
    if gap < MIN_INK_CONTRAST:
        return (f"no clear ink: the darkest marks differ from the paper by {gap:.0f} grey levels of 255 (at least "
                f"{MIN_INK_CONTRAST} are needed); the image is blank or its ink too faint: scan or photograph it "
                "with more contrast, cropped to the symbol")
    return (f"no clear ink: the paper itself varies by {spread:.0f} grey levels (standard deviation) where "
            f"the marks differ from it by {gap:.0f}; shading, noise or a blank photo? Crop it to the symbol "
            "on evenly lit plain paper")


def _ink_of(gray: np.ndarray) -> np.ndarray:
    """The ink mask of ``gray``; ValueError when the image holds no ink (:func:`no_ink`)."""
    mask = ink_mask(gray)
    why = _why_no_ink(gray, mask)
    if why:
        raise ValueError(why)
    return mask


def _enlarges(frame: _Frame) -> bool:
    """Whether fitting makes the ink's box larger than it is in the image (on either side)."""
    (_, _, w, h), size, _ = frame
    return size[0] > w or size[1] > h


def _fit(gray: np.ndarray, s: RenderSettings) -> tuple[np.ndarray, _Frame, np.ndarray]:
    """The ink mask of ``gray``, where fitting puts it (:func:`_fit_frame`), and the fitted image
    (:func:`fit_ink`): computed once for the reads that need more than one of them."""
    mask = _ink_of(gray)
    frame = (x0, y0, w, h), size, (x, y) = _fit_frame(mask, s)
    crop = cv2.resize(gray[y0:y0 + h, x0:x0 + w], size,
                      interpolation=cv2.INTER_LINEAR if _enlarges(frame) else cv2.INTER_AREA)
    out = np.full((s.height, s.width), 255, np.uint8)
    out[y:y + size[1], x:x + size[0]] = crop
    return mask, frame, out


def fit_ink(gray: np.ndarray, s: RenderSettings) -> np.ndarray:
    """The ink's box of a black-on-white ``uint8`` image resized to the canvas minus margins, centred,
    pen and all. Raises ValueError when the image holds no ink."""
    return _fit(gray, s)[2]


def _line_over(mask: np.ndarray, frame: _Frame, fitted: np.ndarray, s: RenderSettings) -> np.ndarray:
    """``fitted`` with the centre line of ``mask`` drawn over it at the model's pen, mapped as
    ``frame`` maps the image onto the canvas (pixel centres as cv2.resize maps them)."""
    (x0, y0, w, h), size, (x, y) = frame
    fx, fy = size[0] / w, size[1] / h
    line = [np.column_stack([(p[:, 0] - x0 + 0.5) * fx - 0.5 + x, (p[:, 1] - y0 + 0.5) * fy - 0.5 + y])
            for p in skeleton_strokes(skeleton(mask))]
    return np.minimum(fitted, draw(line, s))


def thicken(gray: np.ndarray, s: RenderSettings) -> np.ndarray:
    """The ink fitted to the canvas (:func:`fit_ink`) with its centre line drawn over it at the
    model's pen, in the same place: ink thinner than the pen, or enlarged into blocky steps, gains a
    smooth stroke of the pen's width, while what the ink already covers (a scribble merged into a
    filled head, a blob of a thick pen) stays. Raises ValueError when the image holds no ink."""
    return _line_over(*_fit(gray, s), s)


def model_view(gray: np.ndarray, s: RenderSettings, read: str = READS[0]) -> np.ndarray:
    """A black-on-white ``uint8`` image of a symbol as the model sees it (:data:`READS`): fitted
    (:func:`fit_ink`), thickened (:func:`thicken`), redrawn (:func:`redraw`), or by ``auto``, fitted
    when its ink is as wide as the model's pen (:func:`reads_as_drawn`) and fitting does not enlarge
    it, else thickened. Raises ValueError when the image holds no ink."""
    check_read(read)
    if read == "redraw":
        return redraw(gray, s)
    mask, frame, fitted = _fit(gray, s)
    if read == "fit" or (read == "auto" and not _enlarges(frame) and reads_as_drawn(fitted, s)):
        return fitted
    return _line_over(mask, frame, fitted, s)


def redraw(gray: np.ndarray, settings: RenderSettings) -> np.ndarray:
    """A black-on-white ``uint8`` image of a symbol, redrawn as homus draws one: its ink's centre
    line fitted to the canvas and drawn with a pen ``settings.thickness`` pixels wide. Raises
    ValueError when the image holds no ink."""
    return render(skeleton_strokes(skeleton(_ink_of(gray))), settings)
