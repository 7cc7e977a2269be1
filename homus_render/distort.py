"""Stroke-level augmentation: redraw a symbol as another hand might have written it.

Everything happens to the pen path before it becomes pixels, so the stroke stays as sharp and as
wide as the renderer makes it (an image warp would blur and stretch the ink). Pure numpy; every
random draw comes from the ``rng`` passed in, so a seed gives the same picture every time.

Order of the steps: shorten stroke ends, per-point jitter, smooth (elastic) bending, rotation,
shear and aspect, then the renderer's fit, a random shrink and a shift that never leaves the
canvas, and finally a jittered pen width. The size the ``size`` channel reads is jittered last, so
whatever its strength, every other draw, and every other channel's pixels, stay as they were.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from .channels import draw_channels
from .errors import SettingsError
from .normalize import model_view
from .render import MIN_SIZE, RenderSettings, draw, fit_path


@dataclass(frozen=True)
class StrokeAugment:
    """Strengths; each 0 turns its step off (all 0: the plain rendering).

    ``thickness``: pen width +- this many pixels. ``scale``: shrink by up to this fraction.
    ``aspect``: stretch width against height by up to ``exp(+-aspect)``. ``rotate``, ``shear``:
    +- degrees. ``translate``: shift by up to this fraction of the canvas, as far as the canvas
    allows. ``elastic``: smooth bending of the path, amplitude as a fraction of the symbol's size.
    ``jitter``: per-point noise (std) as a fraction of the symbol's size. ``ends``: chance that
    each end of a stroke is shortened (by up to 25 % of its points). ``size``: the ``size`` channel
    reads the symbol as up to ``exp(+-size)`` times its size on the tablet (writers' hands differ so).
    ``redraw``: chance that a sample's ink image comes with a second one, the same distorted path
    as another tool draws it (:func:`foreign_image`: the tablet's scale, another pen, binary or
    antialiased ink), made into the view predict's ``--read auto`` gives of it
    (:func:`~homus_render.normalize.model_view`); see :func:`render_pair`.
    """

    thickness: float = 0.0
    scale: float = 0.0
    aspect: float = 0.0
    rotate: float = 0.0
    shear: float = 0.0
    translate: float = 0.0
    elastic: float = 0.0
    jitter: float = 0.0
    ends: float = 0.0
    size: float = 0.0
    redraw: float = 0.0

    def __post_init__(self) -> None:
        bad = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
               if not isinstance(getattr(self, f.name), (int, float)) or not getattr(self, f.name) >= 0]
        if bad:
            raise SettingsError(f"stroke augmentation strengths must be numbers >= 0: {', '.join(bad)}")
        if self.scale >= 1 or self.ends > 1 or self.redraw > 1:
            raise SettingsError(f"stroke scale must be < 1, and ends and redraw probabilities <= 1, got "
                                f"{self.scale}, {self.ends}, {self.redraw}")

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def to_dict(self) -> dict:
        return asdict(self)


def _shorten_ends(strokes: list[np.ndarray], p: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Drop up to a quarter of a stroke's points from each end, each end with chance ``p``."""
    out = []
    for st in strokes:
        n = len(st)
        cut = n // 4
        start = int(rng.integers(0, cut + 1)) if rng.random() < p else 0
        end = int(rng.integers(0, cut + 1)) if rng.random() < p else 0
        if n - start - end < 2:  # keep at least a segment (dots and short strokes stay whole)
            start = end = 0
        out.append(st[start:n - end])
    return out


def _elastic(pts: np.ndarray, centre: np.ndarray, extent: float, amp: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random displacement: a sum of three low-frequency waves per axis (0.5-1.5 cycles
    across the symbol), so nearby points move together and strokes bend rather than break."""
    u = (pts - centre) / extent
    freq = rng.uniform(0.5, 1.5, (2, 3, 2)) * rng.choice([-1.0, 1.0], (2, 3, 2))
    phase = rng.uniform(0, 2 * math.pi, (2, 3))
    weight = rng.normal(0, 1 / math.sqrt(3), (2, 3))
    waves = np.sin(2 * math.pi * np.einsum("nd,akd->nak", u, freq) + phase)  # (n, axis, wave)
    return pts + amp * extent * (waves * weight).sum(axis=2)


def augment_path(strokes: Sequence[np.ndarray], s: RenderSettings, aug: StrokeAugment,
                 rng: np.random.Generator) -> tuple[list[np.ndarray], float, float]:
    """The strokes mapped onto ``s``'s canvas, distorted by ``aug``; returns them (canvas pixel
    coordinates), the pen width and the distorted symbol's size on the tablet (the longer side of
    its path, as the ``size`` channel reads it). With ``fit: scale`` the ink stays inside the canvas."""
    strokes = [np.asarray(st, dtype=np.float64) for st in strokes]
    if aug.ends:
        strokes = _shorten_ends(strokes, aug.ends, rng)
    lengths = [len(st) for st in strokes]
    pts = np.concatenate(strokes)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre, extent = (lo + hi) / 2, max(float((hi - lo).max()), 1.0)
    if aug.jitter:
        pts = pts + rng.normal(0, aug.jitter * extent, pts.shape)
    if aug.elastic:
        pts = _elastic(pts, centre, extent, aug.elastic, rng)
    if aug.rotate or aug.shear or aug.aspect:
        rot = math.radians(rng.uniform(-aug.rotate, aug.rotate))
        tan = math.tan(math.radians(rng.uniform(-aug.shear, aug.shear)))
        stretch = math.exp(rng.uniform(-aug.aspect, aug.aspect) / 2)
        c, si = math.cos(rot), math.sin(rot)
        m = np.array([[c, -si], [si, c]]) @ np.array([[1.0, tan], [0.0, 1.0]]) @ np.diag([stretch, 1 / stretch])
        pts = (pts - centre) @ m.T + centre
    width = float(s.thickness)
    if aug.thickness:
        width = max(s.thickness / 2, width + rng.uniform(-aug.thickness, aug.thickness))

    lo, hi = pts.min(axis=0), pts.max(axis=0)
    size = np.array([s.width, s.height], dtype=np.float64)
    scale = fit_path(lo, hi, s, width)[0]  # the renderer's own fit, for the jittered pen
    if aug.scale:
        scale *= rng.uniform(1 - aug.scale, 1.0)
    mid = (size - 1) / 2
    offset = mid - (lo + hi) / 2 * scale
    if aug.translate:
        # the ink spans the path +- half the pen (drawn up to 1/4 px wider); pixels span [-0.5, size - 0.5]
        half = width / 2 + 0.25
        free_lo = np.maximum(0.0, (lo * scale + offset - half) + 0.5)
        free_hi = np.maximum(0.0, (size - 0.5) - (hi * scale + offset + half))
        reach = aug.translate * size
        offset = offset + rng.uniform(-np.minimum(reach, free_lo), np.minimum(reach, free_hi))
    extent = float((hi - lo).max())
    if aug.size:
        extent *= math.exp(rng.uniform(-aug.size, aug.size))
    pts = pts * scale + offset
    return np.split(pts, np.cumsum(lengths)[:-1]), width, extent


#: The pens, in tablet units, that other tools draw HOMUS strokes with (omrdatasettools: 1 to 5 and
#: up): a training image to be seen as another tool's is drawn with one of them at the tablet's scale.
FOREIGN_PENS = (1.0, 5.0)
#: Blank pixels around the ink of another tool's image, on each side, and its longest side at most.
FOREIGN_PAD, FOREIGN_MAX = 2, 1024
#: The chance that another tool's page cuts the symbol (a fixed canvas smaller than a large symbol),
#: and the share of the symbol's longer side that such a page keeps.
FOREIGN_CUT, FOREIGN_KEPT = 0.25, (0.7, 1.0)


def tablet_pen(strokes: Sequence[np.ndarray], path: Sequence[np.ndarray], s: RenderSettings,
               units: float) -> float:
    """A pen ``units`` wide at the tablet's scale, in the canvas pixels of ``path`` (``strokes``
    fitted to the canvas), at most a quarter of the canvas."""
    return min(units * _extent(path) / _extent(strokes), min(s.width, s.height) / 4)


def _extent(strokes: Sequence[np.ndarray]) -> float:
    """The longer side of the strokes' box (at least 1, so that it can divide)."""
    return max(float(np.ptp(np.concatenate(strokes), axis=0).max()), 1.0)


def foreign_image(strokes: Sequence[np.ndarray], path: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """``path`` (``strokes`` distorted, on a canvas) as another tool draws it: at the tablet's scale
    (one pixel per tablet unit), with a pen of :data:`FOREIGN_PENS` tablet units, in binary or
    antialiased ink (even odds), on a page just large enough or, with chance :data:`FOREIGN_CUT`, on
    one that cuts both ends of the symbol's longer side. This is the image predict meets, before it
    makes it into the model's view."""
    tablet = _extent(strokes)
    page_units = min(1.0, FOREIGN_MAX / tablet)  # page pixels per tablet unit: a huge symbol is drawn smaller
    k = page_units * tablet / _extent(path)  # page pixels per canvas pixel
    pts = np.concatenate(path)
    units = rng.uniform(*FOREIGN_PENS)
    pad = units / 2 + FOREIGN_PAD
    path_span = np.ptp(pts, axis=0) * k
    span = path_span + 2 * pad
    page_size = np.ceil(span) + 1
    antialias, cut = rng.random() < 0.5, rng.random() < FOREIGN_CUT
    if cut:  # a fixed page smaller than the symbol: its longer side loses both ends
        long = int(np.argmax(span))
        page_size[long] = np.ceil(path_span[long] * rng.uniform(*FOREIGN_KEPT))
    page_size = np.maximum(page_size, MIN_SIZE)  # a flat stroke still makes a valid page
    lo = pts.min(axis=0) * k - pad - (page_size - span) / 2  # centred
    w, h = page_size.astype(int).tolist()
    page = RenderSettings(width=w, height=h, margin=0, antialias=bool(antialias))
    return draw([p * k - lo for p in path], page, units)


def render_augmented(strokes: Sequence[np.ndarray], s: RenderSettings, aug: StrokeAugment,
                     rng: np.random.Generator, channels: Sequence[str] = ("ink",)) -> np.ndarray:
    """The symbol as :func:`render` draws it, distorted by ``aug`` with draws from ``rng``; with
    ``channels`` other than ink alone, a ``(channels, h, w)`` stack (:mod:`~homus_render.channels`).
    ``aug.redraw`` adds a second image, which :func:`render_pair` draws."""
    path, width, extent = augment_path(strokes, s, aug, rng)
    if tuple(channels) == ("ink",):
        return draw(path, s, width)
    return draw_channels(path, s, channels, width, extent)


def render_pair(strokes: Sequence[np.ndarray], s: RenderSettings, aug: StrokeAugment,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """The ink image :func:`render_augmented` draws with the same ``rng``, and, with chance
    ``aug.redraw``, the same distorted path as another tool draws it (:func:`foreign_image`) in the
    view ``homus predict`` gives of such an image (:func:`~homus_render.normalize.model_view`);
    else None. Training shows both: the model learns other tools' images without seeing fewer of
    homus' own. The foreign draws come last in the stream, so the first image never depends on them."""
    path, width, _ = augment_path(strokes, s, aug, rng)
    own = draw(path, s, width)
    if aug.redraw and rng.random() < aug.redraw:
        return own, model_view(foreign_image(strokes, path, rng), s)
    return own, None
