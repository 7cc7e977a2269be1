"""What a plain image of the ink throws away, as extra image channels: the pen's order and the
symbol's size.

HOMUS records every stroke as the pen drew it. Besides ``ink`` (the plain rendering), a symbol
can be drawn in channels whose ink is as dark as the pen was late:

- ``time``: the pen's progress along its whole path, from faint at the first point to full at
  the last (in arc length, pen-up jumps left out), so the direction of every stroke and the
  order of the strokes both show.
- ``stroke``: each stroke in one shade, from faint for the first stroke to full for the last, so
  the number of strokes and their order show.

The trick of the best Quick, Draw! models. Both are black ink on white paper, like the
published images, and hold the same strokes as ``ink``: only their darkness differs. Staff lines are
not pen strokes and appear in ``ink`` only.

- ``size``: a flat page whose darkness is the symbol's size on the tablet (the longer side of its
  pen path, on a log scale: a tablet unit or less is paper, ``SIZE_FULL`` units or more full ink).
  ``fit: scale`` draws a dot as large as a rest; this channel keeps what told them apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import cv2
import numpy as np

from .errors import SettingsError
from .render import (
    FIXED_ONE,
    FIXED_SHIFT,
    PAPER,
    SUPERSAMPLE,
    RenderSettings,
    draw_mapped,
    fit_path,
    path_bounds,
    pen_subpixels,
    render,
    shrink,
    still_strokes,
    to_subpixels,
)

CHANNELS = ("ink", "time", "stroke", "size")
ORDER = ("time", "stroke")  # the channels drawn with the pen's order: the costly ones
LEVELS = 16  # shades of the order channels; the faintest is 1/16 of full ink
SHADES = [round(255 * lvl / LEVELS) for lvl in range(LEVELS + 1)]  # ink amount of each level
SIZE_FULL = 256.0  # tablet units of a full-ink size page (HOMUS medians: dots 6, G clefs 135; 95 % under 105)


def check_channels(channels: Sequence[str] | str) -> tuple[str, ...]:
    """``channels`` as a tuple of known, distinct names (``"ink,time"`` is read as a list)."""
    names = [c.strip() for c in channels.split(",")] if isinstance(channels, str) else list(channels)
    if not names:
        raise SettingsError("channels: give at least one of " + ", ".join(CHANNELS))
    unknown = [c for c in names if c not in CHANNELS]
    if unknown:
        raise SettingsError(f"unknown channel(s) {', '.join(map(repr, unknown))}: choose from {', '.join(CHANNELS)}")
    if len(set(names)) < len(names):
        raise SettingsError(f"channels {names}: each channel once")
    return tuple(names)


def order_values(pts: np.ndarray, lengths: list[int], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Values in (0, 1] for the pen path's points and for its segments (point i to i + 1, NaN
    where a stroke ends): ``time`` is the pen's progress (arc length within strokes, pen-up
    jumps left out), ``stroke`` the stroke's rank. A path of dots only is ranked by stroke."""
    ends = np.cumsum(lengths)[:-1] - 1  # each stroke's last point but the final one's
    rank = np.repeat(np.arange(1, len(lengths) + 1) / len(lengths), lengths)
    if kind == "stroke":
        per_point = rank
    else:
        step = np.hypot(*np.diff(pts, axis=0).T)
        step[ends] = 0.0  # the jump from one stroke's end to the next's start
        done = np.concatenate([[0.0], np.cumsum(step)])
        per_point = np.maximum(done / done[-1], 1e-9) if done[-1] > 0 else rank
    per_segment = (per_point[:-1] + per_point[1:]) / 2
    per_segment[ends] = np.nan
    return per_point, per_segment


def _draw_order(pts: np.ndarray, lengths: list[int], s: RenderSettings, kinds: Sequence[str],
                width: float | None, scale: float, ox: float, oy: float) -> list[np.ndarray]:
    """The order channels ``kinds`` (black on white) of the path ``pts`` mapped by ``scale`` and
    offset, as the renderer maps it: drawn in ``LEVELS`` shades, later ink over earlier. The
    geometry is worked out once and shared by all of them."""
    k = SUPERSAMPLE
    pen = pen_subpixels(s, width)
    radius = pen * FIXED_ONE // 2
    fixed = to_subpixels(pts, scale, ox, oy)
    starts, still = still_strokes(fixed, lengths)
    moving = ~np.repeat(still, lengths)[:-1]  # segments drawn as lines: within a stroke that moved
    moving[np.cumsum(lengths)[:-1] - 1] = False
    segs = np.stack([fixed[:-1], fixed[1:]], axis=1)[moving]
    dots = fixed[starts[still]]
    if not s.antialias:  # the plain rendering's pixels and ink amounts, without staff lines (not pen strokes)
        plain = replace(s, staff_lines=False)
        inked = draw_mapped(pts, lengths, scale, ox, oy, plain, width) < 128
        smooth = draw_mapped(pts, lengths, scale, ox, oy, replace(plain, antialias=True), width)
        cover = (PAPER - smooth.astype(np.float64)).clip(1, None)
    out = []
    for kind in kinds:
        per_point, per_segment = order_values(pts, lengths, kind)
        seg_level = _levels(per_segment[moving])
        order = np.argsort(seg_level, kind="stable")
        bounds = np.searchsorted(seg_level[order], np.arange(1, LEVELS + 2)).tolist()
        dots_at: dict[int, list] = {}
        for d, lvl in zip(dots.tolist(), _levels(per_point[starts[still]]).tolist(), strict=True):
            dots_at.setdefault(lvl, []).append(d)
        big = np.zeros((s.height * k, s.width * k), np.uint8)  # ink amount: paper 0
        for lvl in range(1, LEVELS + 1):  # fainter first: later ink lies on top
            lo, hi = bounds[lvl - 1], bounds[lvl]
            if hi > lo:
                cv2.polylines(big, segs[order[lo:hi]], False, SHADES[lvl], pen, cv2.LINE_8, FIXED_SHIFT)
            for x, y in dots_at.get(lvl, ()):
                cv2.circle(big, (x, y), radius, SHADES[lvl], -1, cv2.LINE_8, FIXED_SHIFT)
        amount = shrink(big, s.height)
        if not s.antialias:  # the plain rendering's pixels, each in its ink's mean shade
            shade = np.maximum(np.rint(255.0 * amount / cover), SHADES[1]).clip(None, 255)
            amount = np.where(inked, shade, 0).astype(np.uint8)
        out.append(PAPER - amount)
    return out


def size_page(extent: float, s: RenderSettings) -> np.ndarray:
    """The ``size`` channel of a symbol whose pen path spans ``extent`` tablet units on its longer
    side: one shade, ``log2(extent) / log2(SIZE_FULL)`` of full ink (clipped to 0..1)."""
    if not np.isfinite(extent):
        raise ValueError(f"a symbol's size must be a finite number, got {extent!r}")
    amount = np.clip(np.log2(max(extent, 1.0)) / np.log2(SIZE_FULL), 0.0, 1.0)
    return np.full((s.height, s.width), PAPER - int(round(255 * amount)), np.uint8)


def path_extent(strokes: Sequence[np.ndarray]) -> float:
    """The longer side of the pen path's bounding box, in its own units."""
    lo, hi = path_bounds(strokes)
    return float((hi - lo).max())


def _levels(values: np.ndarray) -> np.ndarray:
    return np.clip(np.ceil(values * LEVELS), 1, LEVELS).astype(np.int64)


def _stack(strokes: Sequence[np.ndarray], s: RenderSettings, channels: Sequence[str], width: float | None,
           scale: float, ox: float, oy: float, extent: float | None) -> np.ndarray:
    """The channels of strokes mapped by ``scale`` and offset; ``ink`` is the renderer's own drawing,
    ``size`` the page of a symbol ``extent`` tablet units large."""
    pts = np.concatenate(strokes).astype(np.float64)
    lengths = [len(st) for st in strokes]
    kinds = [c for c in channels if c in ORDER]
    drawn = dict(zip(kinds, _draw_order(pts, lengths, s, kinds, width, scale, ox, oy), strict=True)) if kinds else {}
    if "ink" in channels:
        drawn["ink"] = draw_mapped(pts, lengths, scale, ox, oy, s, width)
    if "size" in channels:
        if extent is None:
            raise ValueError("the size channel needs the symbol's size on the tablet (extent)")
        drawn["size"] = size_page(extent, s)
    return np.stack([drawn[c] for c in channels])


def draw_channels(strokes: Sequence[np.ndarray], s: RenderSettings, channels: Sequence[str],
                  width: float | None = None, extent: float | None = None) -> np.ndarray:
    """Strokes already in canvas coordinates as a ``(len(channels), height, width)`` uint8 stack;
    ``extent`` is the symbol's size on the tablet, which canvas coordinates no longer hold (for ``size``)."""
    return _stack(strokes, s, channels, width, 1.0, 0.0, 0.0, extent)


def render_channels(strokes: Sequence[np.ndarray], s: RenderSettings, channels: Sequence[str]) -> np.ndarray:
    """A symbol fitted as :func:`~homus_render.render.render` fits it, in the given channels;
    its ``ink`` channel is exactly ``render``'s image."""
    if not strokes:
        raise ValueError("a symbol needs at least one stroke")
    return _stack(strokes, s, channels, None, *fit_path(*path_bounds(strokes), s), path_extent(strokes))


def render_plain(strokes: Sequence[np.ndarray], s: RenderSettings, channels: Sequence[str] = ("ink",)) -> np.ndarray:
    """One symbol without distortion: ``(h, w)`` for ink alone, else ``(len(channels), h, w)``."""
    return render(strokes, s) if tuple(channels) == ("ink",) else render_channels(strokes, s, channels)


def render_many(symbols: Sequence[Sequence[np.ndarray]], s: RenderSettings,
                channels: Sequence[str] = ("ink",)) -> np.ndarray:
    """Several symbols, stacked: what a worker process draws of a set (this module needs no torch,
    so such a worker starts fast). One by one, on purpose: this also runs in the training process
    before it forks its loader workers, and :func:`render_packed`'s large canvases start OpenCV's
    thread pool, which a forked child inherits locked."""
    return np.stack([render_plain(strokes, s, channels) for strokes in symbols])


def ink_index(channels: Sequence[str]) -> int:
    """The channel people read in pictures: ``ink`` when it is there, else the first with strokes
    (``size`` is a flat page)."""
    names = list(channels)
    return names.index("ink") if "ink" in names else next((i for i, c in enumerate(names) if c != "size"), 0)
