"""The pen's order as extra image channels: what a plain image of the ink throws away.

HOMUS records every stroke as the pen drew it. Besides ``ink`` (the plain rendering), a symbol
can be drawn in channels whose ink is as dark as the pen was late:

- ``time``: the pen's progress along its whole path, from faint at the first point to full at
  the last (in arc length, pen-up jumps left out), so the direction of every stroke and the
  order of the strokes both show.
- ``stroke``: each stroke in one shade, from faint for the first stroke to full for the last, so
  the number of strokes and their order show.

The trick of the best Quick, Draw! models. Every channel is black ink on white paper, like the
published images, and holds the same strokes as ``ink``: only their darkness differs. Staff lines are
not pen strokes and appear in ``ink`` only.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .render import (
    _ONE,
    _SHIFT,
    INK,
    PAPER,
    SUPERSAMPLE,
    RenderSettings,
    _fit,
    draw,
    path_bounds,
    pen_subpixels,
    render,
    shrink,
    to_subpixels,
)

CHANNELS = ("ink", "time", "stroke")
LEVELS = 16  # shades of the order channels; the faintest is 1/16 of full ink
SHADES = [round(255 * lvl / LEVELS) for lvl in range(LEVELS + 1)]  # ink amount of each level


def check_channels(channels: Sequence[str] | str) -> tuple[str, ...]:
    """``channels`` as a tuple of known, distinct names (``"ink,time"`` is read as a list)."""
    names = [c.strip() for c in channels.split(",")] if isinstance(channels, str) else list(channels)
    if not names:
        raise ValueError("channels: give at least one of " + ", ".join(CHANNELS))
    unknown = [c for c in names if c not in CHANNELS]
    if unknown:
        raise ValueError(f"unknown channel(s) {', '.join(map(repr, unknown))}: choose from {', '.join(CHANNELS)}")
    if len(set(names)) < len(names):
        raise ValueError(f"channels {names}: each channel once")
    return tuple(names)


def order_values(strokes: Sequence[np.ndarray], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Values in (0, 1] for the pen path's points and for its segments (point i to i + 1, NaN
    where a stroke ends): ``time`` is the pen's progress (arc length within strokes, pen-up
    jumps left out), ``stroke`` the stroke's rank. A path of dots only is ranked by stroke."""
    lengths = np.array([len(st) for st in strokes])
    rank = np.repeat(np.arange(1, len(strokes) + 1) / len(strokes), lengths)
    if kind == "stroke":
        per_point = rank
    else:
        pts = np.concatenate(strokes).astype(np.float64)
        step = np.hypot(*np.diff(pts, axis=0).T)
        step[np.cumsum(lengths)[:-1] - 1] = 0.0  # the jump from one stroke's end to the next's start
        done = np.concatenate([[0.0], np.cumsum(step)])
        per_point = np.maximum(done / done[-1], 1e-9) if done[-1] > 0 else rank
    per_segment = (per_point[:-1] + per_point[1:]) / 2
    per_segment[np.cumsum(lengths)[:-1] - 1] = np.nan
    return per_point, per_segment


def _draw_order(strokes: Sequence[np.ndarray], s: RenderSettings, kind: str, width: float | None = None,
                scale: float = 1.0, ox: float = 0.0, oy: float = 0.0) -> np.ndarray:
    """One order channel (black on white) of strokes mapped by ``scale`` and offset, as the
    renderer maps them: the path drawn in ``LEVELS`` shades, later ink over earlier."""
    k = SUPERSAMPLE
    pen, radius = pen_subpixels(s, width), pen_subpixels(s, width) * _ONE // 2
    lengths = [len(st) for st in strokes]
    fixed = to_subpixels(np.concatenate(strokes).astype(np.float64), scale, ox, oy)
    per_point, per_segment = order_values(strokes, kind)
    starts = np.cumsum([0] + lengths[:-1])
    still = (np.minimum.reduceat(fixed, starts) == np.maximum.reduceat(fixed, starts)).all(axis=1)
    moving = ~np.repeat(still, lengths)[:-1] & ~np.isnan(per_segment)  # segments drawn as lines
    segs = np.stack([fixed[:-1], fixed[1:]], axis=1)[moving]
    seg_level = _levels(per_segment[moving])
    dots, dot_level = fixed[starts[still]], _levels(per_point[starts[still]])
    order = np.argsort(seg_level, kind="stable")
    segs = segs[order]
    bounds = np.searchsorted(seg_level[order], np.arange(1, LEVELS + 2)).tolist()
    dots_at: dict[int, list] = {}
    for d, lvl in zip(dots.tolist(), dot_level.tolist(), strict=True):
        dots_at.setdefault(lvl, []).append(d)
    big = np.zeros((s.height * k, s.width * k), np.uint8)  # ink amount: paper 0
    for lvl in range(1, LEVELS + 1):  # fainter first: later ink lies on top
        lo, hi = bounds[lvl - 1], bounds[lvl]
        if hi > lo:
            cv2.polylines(big, segs[lo:hi], False, SHADES[lvl], pen, cv2.LINE_8, _SHIFT)
        for x, y in dots_at.get(lvl, ()):
            cv2.circle(big, (x, y), radius, SHADES[lvl], -1, cv2.LINE_8, _SHIFT)
    amount = shrink(big, s.height)
    if not s.antialias:  # the plain rendering's pixels (as _draw thresholds them), each in its ink's mean shade
        solid = np.full_like(big, PAPER)
        if len(segs):
            cv2.polylines(solid, segs, False, INK, pen, cv2.LINE_8, _SHIFT)
        for x, y in dots.tolist():
            cv2.circle(solid, (x, y), radius, INK, -1, cv2.LINE_8, _SHIFT)
        plain = shrink(solid, s.height)
        inked = plain < 128
        for x, y in dots.tolist():  # as _draw: a thin dot astride pixel edges keeps its centre
            cx, cy = np.rint((np.array([x, y]) / _ONE - (k - 1) / 2) / k).astype(int).tolist()
            if 0 <= cx < s.width and 0 <= cy < s.height:
                inked[cy, cx] = True
        cover = (PAPER - plain.astype(np.float64)).clip(1, None)
        shade = np.maximum(np.rint(255.0 * amount / cover), SHADES[1]).clip(None, 255)
        amount = np.where(inked, shade, 0).astype(np.uint8)
    return PAPER - amount


def _levels(values: np.ndarray) -> np.ndarray:
    return np.clip(np.ceil(values * LEVELS), 1, LEVELS).astype(np.int64)


def draw_channels(strokes: Sequence[np.ndarray], s: RenderSettings, channels: Sequence[str],
                  width: float | None = None) -> np.ndarray:
    """Strokes already in canvas coordinates as a ``(len(channels), height, width)`` uint8 stack."""
    return np.stack([draw(strokes, s, width) if c == "ink" else _draw_order(strokes, s, c, width)
                     for c in channels])


def render_channels(strokes: Sequence[np.ndarray], s: RenderSettings, channels: Sequence[str]) -> np.ndarray:
    """A symbol fitted as :func:`~homus_render.render.render` fits it, in the given channels;
    its ``ink`` channel is exactly ``render``'s image."""
    if not strokes:
        raise ValueError("a symbol needs at least one stroke")
    scale, ox, oy = _fit(*path_bounds(strokes), s)
    return np.stack([render(strokes, s) if c == "ink" else _draw_order(strokes, s, c, None, scale, ox, oy)
                     for c in channels])
