"""Strokes to pixels: pure functions from a sample's strokes to a ``uint8`` image.

The stroke width is ``thickness`` output pixels whatever the scaling, because the pen path is
transformed first and drawn afterwards. Coordinates follow OpenCV: pixel ``i`` covers
``[i - 0.5, i + 0.5]``, so the canvas centre is ``((w - 1) / 2, (h - 1) / 2)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from .errors import SettingsError
from .strokes import Packed

FITS = ("scale", "crop")
FIXED_SHIFT = 4  # OpenCV fixed-point bits: coordinates are drawn with 1/16 px precision
FIXED_ONE = 1 << FIXED_SHIFT
SUPERSAMPLE = 4  # strokes are drawn at 4x and area-averaged down (a power of two)
INK, PAPER = 0, 255  # black ink on white paper, as the published HOMUS images
#: Supersampled pixels per shared canvas in :func:`render_packed` (one byte each): large enough that
#: OpenCV's calls outweigh Python's, small enough that the canvas stays in the processor's cache.
BATCH_PIXELS = 1 << 21
#: Pixels per tablet unit at most: a path whose extent is a tiny fraction of a tablet unit (such
#: numbers parse) is drawn as the dot it looks like, not magnified until the numbers overflow.
MAX_SCALE = 1e6


#: The smallest and largest canvas side, in pixels.
MIN_SIZE, MAX_SIZE = 8, 4096


@dataclass(frozen=True)
class RenderSettings:
    """Everything that decides a rendered image. ``name`` is the variant folder's name."""

    thickness: int = 3
    width: int = 64
    height: int = 64
    fit: str = "scale"
    margin: int = 4
    antialias: bool = True
    staff_lines: bool = False
    staff_spacing: int = 14
    staff_offset: int | None = None  # row of the top staff line; None centres the staff

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.thickness, int) or self.thickness < 1:
            problems.append(f"thickness must be an integer >= 1, got {self.thickness!r}")
        for key in ("width", "height"):
            v = getattr(self, key)
            if not isinstance(v, int) or v < MIN_SIZE or v > MAX_SIZE:
                problems.append(f"{key} must be an integer from {MIN_SIZE} to {MAX_SIZE}, got {v!r}")
        if self.fit not in FITS:
            problems.append(f"fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if not isinstance(self.margin, int) or self.margin < 0:
            problems.append(f"margin must be an integer >= 0, got {self.margin!r}")
        if not isinstance(self.staff_spacing, int) or self.staff_spacing < 1:
            problems.append(f"staff_spacing must be an integer >= 1, got {self.staff_spacing!r}")
        if not problems and 2 * self.margin + self.thickness >= min(self.width, self.height):
            problems.append(f"margin {self.margin} on both sides plus thickness {self.thickness} "
                            f"leaves no room on a {self.width}x{self.height} canvas")
        if problems:
            raise SettingsError("; ".join(problems))

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def name(self) -> str:
        """A readable folder name: ``t3-s96``, plus every setting that differs from the defaults."""
        d = RenderSettings.__dataclass_fields__
        size = f"{self.width}" if self.width == self.height else f"{self.width}x{self.height}"
        parts = [f"t{self.thickness}", f"s{size}"]
        if self.fit != d["fit"].default:
            parts.append(self.fit)
        if self.margin != d["margin"].default:
            parts.append(f"m{self.margin}")
        if not self.antialias:
            parts.append("noaa")
        if self.staff_lines:
            off = "" if self.staff_offset is None else f"o{self.staff_offset}"
            parts.append(f"staff{self.staff_spacing}{off}")
        return "-".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RenderSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def parse_size(value: int | str) -> tuple[int, int]:
    """``64`` or ``"64"`` -> (64, 64); ``"128x64"`` -> (128, 64)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(value)) if not isinstance(value, bool) else None
    if not m:
        raise SettingsError(f"size {value!r}: expected a number like 96 or WxH like 128x64")
    return int(m.group(1)), int(m.group(2) or m.group(1))


def path_bounds(strokes: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper corner of the pen path (all points of all strokes)."""
    pts = np.concatenate(strokes)
    return pts.min(axis=0), pts.max(axis=0)


def fit_path(lo: np.ndarray, hi: np.ndarray, s: RenderSettings,
             width: float | None = None) -> tuple[float, float, float]:
    """Scale and offset (x, y) for a path spanning ``lo``..``hi``, drawn with a pen ``width``
    pixels wide (default ``s.thickness``): how :func:`render` fits a symbol, shared with the
    channels, the distortions and the torch rasterizer so that all fit alike."""
    (x0, y0), (x1, y1) = lo.tolist(), hi.tolist()
    pen = s.thickness if width is None else width
    scale = 1.0
    if s.fit == "scale":
        ratios = [room / ext for room, ext in ((s.width - 2 * s.margin - pen, x1 - x0),
                                               (s.height - 2 * s.margin - pen, y1 - y0))
                  if ext > 0]
        if ratios:  # a single point has no extent to fit and keeps scale 1
            scale = min(*ratios, MAX_SCALE)
    return scale, (s.width - 1) / 2 - (x0 + x1) / 2 * scale, (s.height - 1) / 2 - (y0 + y1) / 2 * scale


def staff_rows(s: RenderSettings) -> list[int]:
    """Rows of the five staff lines: ``staff_offset`` + k * ``staff_spacing``, centred by default."""
    top = s.staff_offset
    if top is None:
        top = int(round((s.height - 1) / 2 - 2 * s.staff_spacing))
    return [top + k * s.staff_spacing for k in range(5)]


def draw(strokes: Sequence[np.ndarray], s: RenderSettings, width: float | None = None) -> np.ndarray:
    """Draw strokes already in canvas coordinates (no fitting) onto a fresh page; ``width`` (in
    pixels, to 1/4 px) replaces ``s.thickness`` when given."""
    return draw_mapped(np.concatenate(strokes), [len(st) for st in strokes], 1.0, 0.0, 0.0, s, width)


def pen_subpixels(s: RenderSettings, width: float | None = None) -> int:
    """The pen's width on the supersampled canvas (``width`` pixels, default ``s.thickness``)."""
    return s.thickness * SUPERSAMPLE if width is None else max(1, int(round(width * SUPERSAMPLE)))


def to_subpixels(pts: np.ndarray, scale: float, ox: float, oy: float) -> np.ndarray:
    """Map ``pts`` by ``scale`` and offset onto the supersampled canvas, as OpenCV fixed point."""
    k = SUPERSAMPLE
    # pixel i at 1x spans sub-pixels k*i .. k*i+k-1, so its centre lies at k*i + (k-1)/2
    a, half = scale * k * FIXED_ONE, (k - 1) / 2
    return np.rint(pts * a + [(ox * k + half) * FIXED_ONE, (oy * k + half) * FIXED_ONE]).astype(np.int32)


def shrink(big: np.ndarray, height: int) -> np.ndarray:
    """The supersampled canvas area-averaged down to ``height`` rows."""
    img = big
    while img.shape[0] > height:  # two exact 2x2 means: INTER_AREA's 4x4 mean, more cheaply
        img = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return img


def still_strokes(fixed: np.ndarray, lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Each stroke's first index in ``fixed``, and whether its pen never moved (drawn as a dot)."""
    starts = np.cumsum([0] + lengths[:-1])
    return starts, (np.minimum.reduceat(fixed, starts) == np.maximum.reduceat(fixed, starts)).all(axis=1)


def draw_mapped(pts: np.ndarray, lengths: list[int], scale: float, ox: float, oy: float,
                s: RenderSettings, width: float | None = None) -> np.ndarray:
    """Map ``pts`` by ``scale`` and offset, then draw them as strokes of the given lengths: the
    drawing step of :func:`render`, which the channels share.

    OpenCV's own thick lines come out one or two pixels too wide, and its antialiased ones wider
    still, so the path is drawn solid at ``SUPERSAMPLE`` times the resolution and area-averaged
    down: the stroke is then ``thickness`` pixels wide (+1/4 px) with smooth edges. Without
    antialiasing the result is thresholded back to pure black and white.
    """
    k, half = SUPERSAMPLE, (SUPERSAMPLE - 1) / 2
    pen = pen_subpixels(s, width)
    fixed = to_subpixels(pts, scale, ox, oy)
    big = np.full((s.height * k, s.width * k), PAPER, np.uint8)
    starts, still = still_strokes(fixed, lengths)
    polys, dots = [], []
    for start, n, dot in zip(starts.tolist(), lengths, still.tolist(), strict=True):
        if dot:
            dots.append(fixed[start])
        else:
            polys.append(fixed[start:start + n].reshape(-1, 1, 2))
    if polys:
        cv2.polylines(big, polys, False, INK, pen, cv2.LINE_8, FIXED_SHIFT)
    for d in dots:  # a pen that never moved leaves a dot as wide as the stroke
        cv2.circle(big, (int(d[0]), int(d[1])), pen * FIXED_ONE // 2, INK, -1, cv2.LINE_8, FIXED_SHIFT)
    img = shrink(big, s.height)
    if not s.antialias:
        img = np.where(img < 128, INK, PAPER).astype(np.uint8)
        for d in dots:  # a thin dot astride pixel edges is under half ink everywhere: keep its centre
            x, y = np.rint((d / FIXED_ONE - half) / k).astype(int).tolist()
            if 0 <= x < s.width and 0 <= y < s.height:
                img[y, x] = INK
    if s.staff_lines:
        for row in staff_rows(s):
            if 0 <= row < s.height:
                img[row, :] = INK
    return img


def render(strokes: Sequence[np.ndarray], s: RenderSettings) -> np.ndarray:
    """Render a symbol's strokes to a ``(height, width)`` ``uint8`` image, black on white."""
    if not strokes:
        raise ValueError("a symbol needs at least one stroke")
    lengths = [len(st) for st in strokes]
    pts = np.concatenate(strokes) if len(strokes) > 1 else np.asarray(strokes[0])
    check_points(pts, lengths)
    scale, ox, oy = fit_path(pts.min(axis=0), pts.max(axis=0), s)
    return draw_mapped(pts, lengths, scale, ox, oy, s)


def check_points(pts: np.ndarray, lengths) -> None:
    """Refuse what would draw a blank page that passes for a drawing: points that are not ``(x, y)``
    pairs, an empty stroke, a coordinate that is nan or infinite."""
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"strokes must be (k, 2) arrays of x, y points, got points of shape {pts.shape}")
    if len(lengths) and min(lengths) == 0:
        raise ValueError(f"stroke {list(lengths).index(0) + 1} has no points")
    if not np.isfinite(pts).all():
        raise ValueError("a coordinate is not a finite number (nan or inf)")


def render_packed(packed: Packed, s: RenderSettings) -> np.ndarray:
    """Render every sample of ``packed`` -> ``(n, height, width)`` ``uint8``; image ``i`` is
    exactly :func:`render` of sample ``i``, byte for byte.

    Per sample, :func:`render` spends much of its time in Python, in small NumPy calls and on
    blank paper. Here the fit and the mapping to sub-pixels are computed for all samples at once.
    Each sample then takes only the columns its ink can reach (its path's columns, widened by the
    pen, half a pixel and a whole column on each side), side by side with the others on one shared
    canvas of the full height: one OpenCV call draws them all and one area-average shrinks them. Drawing is
    invariant under a shift by whole pixels and the top and bottom edges clip as on a canvas of
    its own, so each image is the one drawn alone. A sample whose ink would cross its own left or
    right edge (where a canvas of its own would clip it) is drawn alone.
    """
    n, k, h, w = len(packed), SUPERSAMPLE, s.height, s.width
    if n == 0:
        return np.zeros((0, h, w), np.uint8)
    pts, lengths = packed.points, packed.stroke_lengths  # Packed has checked them (finite, none empty)
    stroke_start, first_stroke = packed.first_points(), packed.first_strokes()
    sample_start = stroke_start[first_stroke]
    owner = np.repeat(np.arange(n), np.diff(np.append(sample_start, len(pts))))  # sample of each point
    stroke_owner = np.repeat(np.arange(n), packed.n_strokes)
    scale, ox, oy = _fit_many(np.minimum.reduceat(pts, sample_start), np.maximum.reduceat(pts, sample_start), s)
    a, half = scale * k * FIXED_ONE, (k - 1) / 2  # as to_subpixels, operation for operation
    offset = np.stack([(ox * k + half) * FIXED_ONE, (oy * k + half) * FIXED_ONE], axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        exact = np.rint(pts * a[owner, None] + offset[owner])
    # a fit that overflowed (extents of 1e-300 parse) leaves values no shared canvas can hold
    odd = ~np.logical_and.reduceat((np.abs(exact) < 2.0 ** 30).all(axis=1), sample_start)
    fixed = np.where(odd[owner, None], 0, exact).astype(np.int64)
    still = still_strokes(fixed, lengths.tolist())[1]
    pen = pen_subpixels(s)
    reach = pen * FIXED_ONE // 2 + 2 * FIXED_ONE  # the pen's half width, and 2 sub-pixels (half a pixel)
    left = np.minimum.reduceat(fixed[:, 0], sample_start) - reach
    right = np.maximum.reduceat(fixed[:, 0], sample_start) + reach
    alone = odd | (left < 0) | (right > (w * k - 1) * FIXED_ONE)
    px = k * FIXED_ONE  # one output pixel in fixed point
    first_col = np.clip(left // px - 1, 0, w)  # each sample's columns [first_col, last_col)
    last_col = np.clip(right // px + 2, 0, w)
    span = np.where(alone, 0, last_col - first_col)

    out = np.full((n, h, w), PAPER, np.uint8)
    if alone.any():
        symbols = packed.unpack()
        for i in np.flatnonzero(alone).tolist():
            out[i] = render(symbols[i], s)
    budget = max(w, BATCH_PIXELS // (h * k * k))  # columns per canvas
    total = np.concatenate([[0], np.cumsum(span)])  # columns of all samples before each one
    b0 = 0
    while b0 < n:  # samples b0 .. b1-1 share a canvas: as many as fit the budget, at least one
        b1 = min(n, max(b0 + 1, int(np.searchsorted(total, total[b0] + budget, side="right")) - 1))
        col = total[b0:b1 + 1] - total[b0]  # each sample's first canvas column
        if col[-1] == 0:
            b0 = b1
            continue
        s0, s1 = first_stroke[b0], first_stroke[b1] if b1 < n else len(lengths)
        p0, p1 = sample_start[b0], sample_start[b1] if b1 < n else len(pts)
        j = owner[p0:p1] - b0
        shifted = fixed[p0:p1].copy()
        shifted[:, 0] += (col[:-1][j] - first_col[b0:b1][j]) * px
        shifted = shifted.astype(np.int32).reshape(-1, 1, 2)
        starts = (stroke_start[s0:s1] - p0).tolist()
        ends = starts[1:] + [int(p1 - p0)]
        keep = ~alone[stroke_owner[s0:s1]]
        big = np.full((h * k, int(col[-1]) * k), PAPER, np.uint8)
        polys = [shifted[a:b] for a, b, line in zip(starts, ends, (~still[s0:s1] & keep).tolist(), strict=True)
                 if line]
        if polys:
            cv2.polylines(big, polys, False, INK, pen, cv2.LINE_8, FIXED_SHIFT)
        for a, dot in zip(starts, (still[s0:s1] & keep).tolist(), strict=True):
            if dot:  # a pen that never moved leaves a dot as wide as the stroke
                cv2.circle(big, (int(shifted[a, 0, 0]), int(shifted[a, 0, 1])), pen * FIXED_ONE // 2, INK, -1,
                           cv2.LINE_8, FIXED_SHIFT)
        small = shrink(big, h)
        if not s.antialias:
            small = np.where(small < 128, INK, PAPER).astype(np.uint8)
        for i in range(b0, b1):
            if span[i]:
                out[i, :, first_col[i]:last_col[i]] = small[:, col[i - b0]:col[i - b0 + 1]]
        b0 = b1
    batched = ~alone
    if not s.antialias:
        dot_strokes = np.flatnonzero(still & batched[stroke_owner])
        if len(dot_strokes):  # as draw_mapped: a thin dot astride pixel edges keeps its centre
            xy = np.rint((fixed[stroke_start[dot_strokes]] / FIXED_ONE - half) / k).astype(int)
            inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
            out[stroke_owner[dot_strokes][inside], xy[inside, 1], xy[inside, 0]] = INK
    if s.staff_lines:
        rows = [r for r in staff_rows(s) if 0 <= r < h]
        out[np.ix_(np.flatnonzero(batched), rows)] = INK
    return out


def _fit_many(lo: np.ndarray, hi: np.ndarray, s: RenderSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`fit_path` for many paths at once (``lo``, ``hi``: ``(n, 2)``), with the same float
    operations in the same order, so the results are equal bit for bit."""
    ext = hi - lo
    scale = np.ones(len(lo))
    if s.fit == "scale":
        room = np.array([s.width - 2 * s.margin - s.thickness, s.height - 2 * s.margin - s.thickness], np.float64)
        with np.errstate(over="ignore"):  # as Python's division: an extent of 1e-320 gives inf
            ratios = np.where(ext > 0, room / np.where(ext > 0, ext, 1.0), np.inf)
        fits = (ext > 0).any(axis=1)  # a single point has no extent to fit and keeps scale 1
        scale[fits] = np.minimum(ratios[fits].min(axis=1), MAX_SCALE)
    ox = (s.width - 1) / 2 - (lo[:, 0] + hi[:, 0]) / 2 * scale
    oy = (s.height - 1) / 2 - (lo[:, 1] + hi[:, 1]) / 2 * scale
    return scale, ox, oy
