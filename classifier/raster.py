"""A batched stroke rasterizer in torch: a whole batch of pen paths drawn at once, on the device
that trains, with the stroke distortions of :mod:`homus_render.distort` applied to the points there.

It draws what :mod:`homus_render` draws (same fit, margin, pen width, order shades and size page),
by a different method: ``homus_render`` fills the pen's path with OpenCV at 4x and area-averages it
down; here every pixel's ink is the analytic coverage of its square by the pen's path (a capsule
around every segment): ``clip(r + 1/2 - d, 0, 1)`` for a pixel whose centre lies ``d`` pixels from
the path and a pen of radius ``r``. Each segment is cut into pieces at most ``PIECE`` pixels long,
and each piece inks only a small window of pixels around it, so the work grows with the length of
the path, not with the canvas times the number of points.

Random draws come from a counter-based hash, not a generator's stream: sample ``index`` drawn in
``epoch`` of a run seeded ``seed`` has the key ``mix(mix(mix(seed) ^ epoch) ^ index)`` (``mix`` is
the 32-bit ``lowbias32`` integer hash), and its k-th uniform number is
``(mix(key ^ mix(k)) // 2**8 + 1/2) / 2**24``. A sample's picture therefore depends on (seed, epoch, index)
only: not on the batch it is in, the device, or how many samples are drawn at once. The draws
follow :class:`~homus_render.distort.StrokeAugment`'s distributions, step for step, but they are
not the numbers NumPy's generator gives, so one sample's distortions differ between the two paths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from homus_render.channels import LEVELS, ORDER, SHADES, SIZE_FULL, check_channels
from homus_render.distort import StrokeAugment
from homus_render.render import INK, MAX_SCALE, PAPER, RenderSettings, staff_rows

PIECE = 2.0  # longest piece of a segment, in output pixels: shorter pieces, smaller windows
# homus_render's strokes come out wider than its pen (its 4x fill adds about a sub-pixel): by this
# much for a 1 px pen, falling to PEN_EXTRA_THICK from 4 px on (calibrated on the parity figures)
PEN_EXTRA, PEN_EXTRA_THICK = 0.2, 0.15


def pen_radius(width: torch.Tensor) -> torch.Tensor:
    """The radius of the pen that draws as wide as ``homus_render``'s pen of ``width`` pixels."""
    extra = (PEN_EXTRA - (width - 1) * (PEN_EXTRA - PEN_EXTRA_THICK) / 3).clamp(PEN_EXTRA_THICK, PEN_EXTRA)
    return (width + extra) / 2
_M32 = 0xFFFFFFFF
# counters of a sample's draws (see the module's docstring)
_ROT, _SHEAR, _ASPECT, _WIDTH, _SCALE, _TX, _TY, _SIZE = range(8)
_ELASTIC = 16  # 12 frequencies, 12 signs, 6 phases, 6 normal weights (2 uniforms each)
_ENDS = 1 << 20  # + 4 per stroke
_JITTER = 1 << 24  # + 2 per point


# --- counter-based random numbers ------------------------------------------------------------

def mix(x: torch.Tensor) -> torch.Tensor:
    """The ``lowbias32`` integer hash of 32-bit values held in int64 (products wrap; only the low
    32 bits are kept)."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def sample_keys(seed: int, epoch: int, index: torch.Tensor) -> torch.Tensor:
    """Each sample's key: ``mix(mix(mix(seed) ^ epoch) ^ index)`` (int64, on ``index``'s device)."""
    base = mix(torch.tensor(seed & _M32, dtype=torch.int64, device=index.device))
    base = mix(base ^ (epoch & _M32))
    return mix(base ^ (index.to(torch.int64) & _M32))


def uniform(keys: torch.Tensor, counter: int | torch.Tensor) -> torch.Tensor:
    """The ``counter``-th uniform number in (0, 1) of each key: the hash's top 24 bits, so that
    float32 holds it exactly (float32; broadcasts)."""
    c = torch.as_tensor(counter, dtype=torch.int64, device=keys.device)
    return ((mix(keys ^ mix(c)) >> 8).to(torch.float32) + 0.5) / 2.0 ** 24


def _between(keys: torch.Tensor, counter: int, lo: float | torch.Tensor, hi: float | torch.Tensor) -> torch.Tensor:
    return lo + (hi - lo) * uniform(keys, counter)


def _normal(keys: torch.Tensor, counter: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two standard normal numbers per key from uniforms ``counter`` and ``counter + 1`` (Box-Muller)."""
    u1, u2 = uniform(keys, counter), uniform(keys, counter + 1)
    rad = torch.sqrt(-2.0 * torch.log(u1))
    return rad * torch.cos(2 * math.pi * u2), rad * torch.sin(2 * math.pi * u2)


# --- stroke batches --------------------------------------------------------------------------

@dataclass
class Flat:
    """A batch of symbols as one list of points: ``pts`` (N, 2) float32 sample by sample, stroke by
    stroke; ``stroke`` (N,) the batch-wide stroke of each point; ``owner`` (K,) the sample of each
    stroke; ``n`` samples."""

    pts: torch.Tensor
    stroke: torch.Tensor
    owner: torch.Tensor
    n: int

    @property
    def sample(self) -> torch.Tensor:
        return self.owner[self.stroke]


def pad_strokes(symbols: Sequence[Sequence[np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Symbols (lists of (n, 2) stroke arrays) as a padded ``(B, S, P, 2)`` float32 tensor and
    their ``(B, S)`` stroke lengths (0 for padding)."""
    b = len(symbols)
    s = max(len(sym) for sym in symbols)
    p = max(len(st) for sym in symbols for st in sym)
    points = np.zeros((b, s, p, 2), np.float32)
    lengths = np.zeros((b, s), np.int64)
    for i, sym in enumerate(symbols):
        for j, st in enumerate(sym):
            points[i, j, :len(st)] = st
            lengths[i, j] = len(st)
    return torch.from_numpy(points), torch.from_numpy(lengths)


def flatten(points: torch.Tensor, lengths: torch.Tensor) -> Flat:
    """A padded batch (:func:`pad_strokes`) as a :class:`Flat` one (strokes of length 0 dropped)."""
    b, s, p, _ = points.shape
    keep = lengths > 0
    owner = torch.arange(b, device=points.device).repeat_interleave(s)[keep.flatten()]
    lens = lengths[keep]
    valid = torch.arange(p, device=points.device) < lengths[..., None]
    return Flat(points[valid].float(), torch.repeat_interleave(torch.arange(len(lens), device=points.device), lens),
                owner, b)


class StrokeStore:
    """Every sample's strokes packed flat on one device, so that a batch is gathered there with a
    few index operations (no per-sample Python)."""

    def __init__(self, symbols: Sequence[Sequence[np.ndarray]], device: torch.device | str = "cpu"):
        lens = [len(st) for sym in symbols for st in sym]
        per_sample = [len(sym) for sym in symbols]
        pts = np.concatenate([st for sym in symbols for st in sym]).astype(np.float32)
        dev = torch.device(device)
        self.device = dev
        self.pts = torch.from_numpy(pts).to(dev)
        self.stroke_len = torch.tensor(lens, dtype=torch.int64, device=dev)
        self.stroke_start = torch.cumsum(self.stroke_len, 0) - self.stroke_len
        self.n_strokes = torch.tensor(per_sample, dtype=torch.int64, device=dev)
        self.first_stroke = torch.cumsum(self.n_strokes, 0) - self.n_strokes

    def __len__(self) -> int:
        return len(self.n_strokes)

    def batch(self, idx: torch.Tensor | Sequence[int]) -> Flat:
        """Samples ``idx`` as a :class:`Flat` batch (in that order)."""
        idx = torch.as_tensor(idx, dtype=torch.int64, device=self.device)
        ns = self.n_strokes[idx]
        owner = torch.repeat_interleave(torch.arange(len(idx), device=self.device), ns)
        strokes = self.first_stroke[idx].repeat_interleave(ns) + _ranks(ns)
        lens = self.stroke_len[strokes]
        point = self.stroke_start[strokes].repeat_interleave(lens) + _ranks(lens)
        return Flat(self.pts[point], torch.repeat_interleave(torch.arange(len(strokes), device=self.device), lens),
                    owner, len(idx))


def _ranks(counts: torch.Tensor) -> torch.Tensor:
    """0, 1, ..., c - 1 for each count c, concatenated."""
    total = torch.cumsum(counts, 0)
    n = int(total[-1]) if len(total) else 0
    return torch.arange(n, device=counts.device) - (total - counts).repeat_interleave(counts)


# --- per-sample reductions -------------------------------------------------------------------

def _reduce(values: torch.Tensor, group: torch.Tensor, n: int, how: str) -> torch.Tensor:
    out = torch.zeros((n, *values.shape[1:]), dtype=values.dtype, device=values.device)
    index = group.view(-1, *([1] * (values.ndim - 1))).expand_as(values)
    return out.scatter_reduce_(0, index, values, how, include_self=False)


def _bounds(pts: torch.Tensor, sample: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _reduce(pts, sample, n, "amin"), _reduce(pts, sample, n, "amax")


def _fit_scale(lo: torch.Tensor, hi: torch.Tensor, s: RenderSettings, width: torch.Tensor) -> torch.Tensor:
    """:func:`homus_render.render.fit_path`'s scale, per sample (pen ``width`` per sample)."""
    if s.fit != "scale":
        return torch.ones_like(width)
    ext = hi - lo
    room = torch.stack([s.width - 2 * s.margin - width, s.height - 2 * s.margin - width], 1)
    ratio = torch.where(ext > 0, room / ext.clamp_min(1e-12), torch.full_like(ext, math.inf))
    scale = ratio.min(1).values
    return torch.where(torch.isfinite(scale), scale.clamp_max(MAX_SCALE), torch.ones_like(scale))


# --- distortions -----------------------------------------------------------------------------

def _shorten_ends(flat: Flat, p: float, keys: torch.Tensor) -> Flat:
    """``_shorten_ends``: each end of a stroke loses up to a quarter of its points with chance ``p``."""
    k = len(flat.owner)
    lens = torch.bincount(flat.stroke, minlength=k)
    rank = torch.arange(k, device=lens.device) - (torch.cumsum(torch.bincount(flat.owner, minlength=flat.n), 0)
                                                  - torch.bincount(flat.owner, minlength=flat.n))[flat.owner]
    skey, c = keys[flat.owner], _ENDS + 4 * rank
    cut = (lens // 4).float()
    start = torch.where(uniform(skey, c) < p, torch.floor(uniform(skey, c + 1) * (cut + 1)), 0.0).long()
    end = torch.where(uniform(skey, c + 2) < p, torch.floor(uniform(skey, c + 3) * (cut + 1)), 0.0).long()
    whole = lens - start - end < 2
    start, end = torch.where(whole, 0, start), torch.where(whole, 0, end)
    pos = _ranks(lens)
    keep = (pos >= start[flat.stroke]) & (pos < (lens - end)[flat.stroke])
    return Flat(flat.pts[keep], flat.stroke[keep], flat.owner, flat.n)


def _elastic(pts: torch.Tensor, sample: torch.Tensor, centre: torch.Tensor, extent: torch.Tensor,
             amp: float, keys: torch.Tensor) -> torch.Tensor:
    """``_elastic``: three waves per axis, 0.5-1.5 cycles across the symbol, normal weights."""
    c = torch.arange(12, device=keys.device)
    freq = (0.5 + uniform(keys[:, None], _ELASTIC + c)) * torch.where(uniform(keys[:, None], _ELASTIC + 12 + c) < 0.5,
                                                                       -1.0, 1.0)
    freq = freq.view(-1, 2, 3, 2)  # (sample, axis, wave, dim)
    phase = (2 * math.pi * uniform(keys[:, None], _ELASTIC + 24 + torch.arange(6, device=keys.device))).view(-1, 2, 3)
    weight = (_normal(keys[:, None], _ELASTIC + 30 + 2 * torch.arange(6, device=keys.device))[0]
              / math.sqrt(3)).view(-1, 2, 3)
    u = (pts - centre[sample]) / extent[sample, None]
    waves = torch.sin(2 * math.pi * torch.einsum("nd,nakd->nak", u, freq[sample]) + phase[sample])
    return pts + amp * extent[sample, None] * (waves * weight[sample]).sum(2)


def _distort(flat: Flat, s: RenderSettings, aug: StrokeAugment, keys: torch.Tensor):
    """``augment_path`` for a whole batch: the points on the canvas, each sample's pen width and
    its size on the tablet (as the ``size`` channel reads it)."""
    if aug.ends:
        flat = _shorten_ends(flat, aug.ends, keys)
    n, sample, pts = flat.n, flat.sample, flat.pts
    lo, hi = _bounds(pts, sample, n)
    centre, extent = (lo + hi) / 2, (hi - lo).max(1).values.clamp_min(1.0)
    if aug.jitter:
        count = _ranks(torch.bincount(sample, minlength=n))
        g = _normal(keys[sample], _JITTER + 2 * count)
        pts = pts + aug.jitter * extent[sample, None] * torch.stack(g, 1)
    if aug.elastic:
        pts = _elastic(pts, sample, centre, extent, aug.elastic, keys)
    if aug.rotate or aug.shear or aug.aspect:
        rot = torch.deg2rad(_between(keys, _ROT, -aug.rotate, aug.rotate))
        tan = torch.tan(torch.deg2rad(_between(keys, _SHEAR, -aug.shear, aug.shear)))
        stretch = torch.exp(_between(keys, _ASPECT, -aug.aspect, aug.aspect) / 2)
        c, si = torch.cos(rot), torch.sin(rot)
        # rotation @ shear [[1, tan], [0, 1]] @ diag(stretch, 1 / stretch)
        m = torch.stack([torch.stack([c * stretch, (c * tan - si) / stretch], 1),
                         torch.stack([si * stretch, (si * tan + c) / stretch], 1)], 1)
        pts = torch.einsum("nij,nj->ni", m[sample], pts - centre[sample]) + centre[sample]
    width = torch.full((n,), float(s.thickness), device=pts.device)
    if aug.thickness:
        width = torch.maximum(width / 2, width + _between(keys, _WIDTH, -aug.thickness, aug.thickness))
    lo, hi = _bounds(pts, sample, n)
    size = torch.tensor([s.width, s.height], dtype=torch.float32, device=pts.device)
    scale = _fit_scale(lo, hi, s, width)
    if aug.scale:
        scale = scale * _between(keys, _SCALE, 1 - aug.scale, 1.0)
    offset = (size - 1) / 2 - (lo + hi) / 2 * scale[:, None]
    if aug.translate:
        half = (width / 2 + 0.25)[:, None]
        free_lo = ((lo * scale[:, None] + offset - half) + 0.5).clamp_min(0.0)
        free_hi = ((size - 0.5) - (hi * scale[:, None] + offset + half)).clamp_min(0.0)
        reach = aug.translate * size
        a, b = -torch.minimum(reach, free_lo), torch.minimum(reach, free_hi)
        u = torch.stack([uniform(keys, _TX), uniform(keys, _TY)], 1)
        offset = offset + a + (b - a) * u
    tablet = (hi - lo).max(1).values
    if aug.size:
        tablet = tablet * torch.exp(_between(keys, _SIZE, -aug.size, aug.size))
    pts = pts * scale[sample, None] + offset[sample]
    return Flat(pts, flat.stroke, flat.owner, n), width, tablet


def _plain(flat: Flat, s: RenderSettings):
    """The renderer's own fit, per sample: points on the canvas, pen widths, sizes on the tablet."""
    n, sample = flat.n, flat.sample
    lo, hi = _bounds(flat.pts, sample, n)
    width = torch.full((n,), float(s.thickness), device=flat.pts.device)
    scale = _fit_scale(lo, hi, s, width)
    size = torch.tensor([s.width, s.height], dtype=torch.float32, device=flat.pts.device)
    offset = (size - 1) / 2 - (lo + hi) / 2 * scale[:, None]
    pts = flat.pts * scale[sample, None] + offset[sample]
    return Flat(pts, flat.stroke, flat.owner, n), width, (hi - lo).max(1).values


# --- drawing ---------------------------------------------------------------------------------

@dataclass
class _Segments:
    a: torch.Tensor  # (M, 2) start
    b: torch.Tensor  # (M, 2) end (= start for a dot)
    sample: torch.Tensor  # (M,)
    dot: torch.Tensor  # (M,) bool
    first: torch.Tensor  # (M,) index of the start point in the flat batch
    last: torch.Tensor  # (M,) index of the end point


def _segments(flat: Flat) -> _Segments:
    """The lines the pen drew: consecutive points of a stroke that moved, and one dot for each
    stroke that never moved (spans under 1/64 px, as the renderer's fixed point sees it)."""
    pts, stroke, k = flat.pts, flat.stroke, len(flat.owner)
    lo = _reduce(pts, stroke, k, "amin")
    hi = _reduce(pts, stroke, k, "amax")
    still = ((hi - lo).max(1).values < 1 / 64)
    same = stroke[1:] == stroke[:-1]
    moving = same & ~still[stroke[:-1]]
    i = torch.nonzero(moving).squeeze(1)
    lens = torch.bincount(stroke, minlength=k)
    starts = torch.cumsum(lens, 0) - lens
    d = starts[still & (lens > 0)]
    first = torch.cat([i, d])
    last = torch.cat([i + 1, d])
    return _Segments(pts[first], pts[last], flat.owner[stroke[first]],
                     torch.cat([torch.zeros_like(i, dtype=torch.bool), torch.ones_like(d, dtype=torch.bool)]),
                     first, last)


def _coverage(seg: _Segments, radius: torch.Tensor, s: RenderSettings, n: int, antialias: bool,
              weights: Sequence[torch.Tensor | None] = (None,)) -> list[torch.Tensor]:
    """Each pixel's ink ``(n, h*w)`` under the pen of ``radius`` (per sample), once per entry of
    ``weights``: the most any segment leaves there, each segment's coverage (0..1) times its weight
    (None: 1). The geometry is worked out once for all of them.

    Each piece inks the pixels of a square window around its middle, on a canvas padded by the
    window's reach (so no pixel needs a bounds check), which is cropped at the end."""
    h, w = s.height, s.width
    dev = seg.a.device
    length = (seg.b - seg.a).norm(dim=1)
    pieces = torch.clamp(torch.ceil(length / PIECE), min=1).long()
    which = torch.repeat_interleave(torch.arange(len(pieces), device=dev), pieces)
    j = _ranks(pieces).float()[:, None]
    m = pieces[which].float()[:, None]
    ab = (seg.b - seg.a)[which]
    a = seg.a[which] + ab * (j / m)
    ab = ab / m
    sample = seg.sample[which]
    # a pixel this piece inks lies less than rho from the piece's middle, on each axis
    rho = (float(radius.max()) if len(radius) else 0.5) + 0.5 + PIECE / 2
    span = int(math.floor(2 * rho)) + 1
    pad = span + 1
    hp, wp = h + 2 * pad, w + 2 * pad
    lo = torch.ceil(a + ab / 2 - rho)  # the window's first column and row
    lo = torch.maximum(torch.minimum(lo, torch.tensor([w + 1.0, h + 1.0], device=dev)),
                       torch.tensor([-span - 1.0, -span - 1.0], device=dev))
    off = torch.arange(span, device=dev, dtype=torch.float32)
    dy, dx = torch.meshgrid(off, off, indexing="ij")
    dx, dy = dx.reshape(1, -1), dy.reshape(1, -1)
    rx = (lo[:, :1] - a[:, :1]) + dx  # pixel centre minus the piece's start
    ry = (lo[:, 1:] - a[:, 1:]) + dy
    bx, by = ab[:, :1], ab[:, 1:]
    t = ((rx * bx + ry * by) / (bx * bx + by * by).clamp_min(1e-12)).clamp_(0, 1)
    ex = rx - t * bx
    ey = ry - t * by
    d = (ex * ex + ey * ey).sqrt_()
    r = radius[sample][:, None]
    if antialias:
        cov = (r + 0.5 - d).clamp_(0, 1)
    else:  # solid pixels: those whose centre the pen covers; a thin dot keeps its nearest pixel
        cov = (d <= r).float()
        near = torch.round(a) - lo  # the dot's own pixel within its window
        mine = (dx == near[:, :1]) & (dy == near[:, 1:]) & seg.dot[which][:, None]
        cov = torch.where(mine, 1.0, cov)
    base = sample * (hp * wp) + (lo[:, 1] + pad).long() * wp + (lo[:, 0] + pad).long()
    idx = base[:, None] + (dy * wp + dx).long()
    idx = idx.flatten()
    planes = []
    for weight in weights:
        out = torch.zeros(n * hp * wp, device=dev)
        ink = cov if weight is None else cov * weight[which][:, None]
        out.scatter_reduce_(0, idx, ink.flatten(), "amax", include_self=True)
        planes.append(out.view(n, hp, wp)[:, pad:pad + h, pad:pad + w].reshape(n, h * w))
    return planes


def _order_levels(flat: Flat, seg: _Segments, kind: str) -> torch.Tensor:
    """``order_values`` as shade levels 1..LEVELS of each segment (a dot: of its point)."""
    pts, stroke, n = flat.pts, flat.stroke, flat.n
    sample = flat.sample
    per_sample = torch.bincount(flat.owner, minlength=n)
    rank_in = torch.arange(len(flat.owner), device=pts.device) - (torch.cumsum(per_sample, 0) - per_sample)[flat.owner]
    rank = ((rank_in + 1).float() / per_sample[flat.owner].float())[stroke]
    if kind == "stroke":
        value = rank
    else:
        step = torch.zeros(len(pts), device=pts.device)
        if len(pts) > 1:
            moved = (pts[1:] - pts[:-1]).norm(dim=1)
            step[1:] = torch.where(stroke[1:] == stroke[:-1], moved, 0.0)
        done = torch.cumsum(step.double(), 0)
        first = torch.cumsum(torch.bincount(sample, minlength=n), 0) - torch.bincount(sample, minlength=n)
        done = done - done[first][sample]
        total = _reduce(done, sample, n, "amax")[sample]
        value = torch.where(total > 0, (done / total.clamp_min(1e-30)).clamp_min(1e-9), rank.double()).float()
    v = torch.where(seg.dot, value[seg.first], (value[seg.first] + value[seg.last]) / 2)
    return torch.ceil(v * LEVELS).clamp(1, LEVELS).long()


def size_pages(tablet: torch.Tensor, s: RenderSettings) -> torch.Tensor:
    """``size_page`` per sample: ``(n, h*w)`` uint8, as dark as the symbol is large on the tablet."""
    amount = (torch.log2(tablet.clamp_min(1.0)) / math.log2(SIZE_FULL)).clamp(0, 1)
    shade = PAPER - torch.round(255 * amount.double()).to(torch.int64)  # round half to even, as Python's round
    return shade.to(torch.uint8)[:, None].expand(-1, s.height * s.width)


def draw_flat(flat: Flat, s: RenderSettings, channels: Sequence[str] = ("ink",), augment: StrokeAugment | None = None,
              keys: torch.Tensor | None = None) -> torch.Tensor:
    """A :class:`Flat` batch drawn as ``(n, len(channels), h, w)`` uint8 images, black on white: fitted
    as ``homus_render`` fits it, or distorted by ``augment`` with each sample's ``keys``
    (:func:`sample_keys`)."""
    channels = check_channels(channels)
    if augment is not None and augment.active:
        if keys is None:
            raise ValueError("distorted drawing needs each sample's key (sample_keys)")
        flat, width, tablet = _distort(flat, s, augment, keys)
    else:
        flat, width, tablet = _plain(flat, s)
    n, hw = flat.n, s.height * s.width
    radius = pen_radius(width)
    seg = _segments(flat)
    shades = torch.tensor(SHADES, dtype=torch.float32, device=flat.pts.device)
    drawn = [c for c in channels if c == "ink" or c in ORDER]
    weights = [None if c == "ink" else shades[_order_levels(flat, seg, c)] for c in drawn]
    out = {}
    for c, amount in zip(drawn, _coverage(seg, radius, s, n, s.antialias, weights) if drawn else [], strict=True):
        if c == "ink":
            img = PAPER - torch.round(255 * amount)
            if s.staff_lines:
                img = img.view(n, s.height, s.width)
                rows = [r for r in staff_rows(s) if 0 <= r < s.height]
                img[:, rows, :] = INK
            out[c] = img.reshape(n, hw).to(torch.uint8)
        else:
            out[c] = (PAPER - torch.round(amount)).clamp(0, 255).to(torch.uint8)
    if "size" in channels:
        out["size"] = size_pages(tablet, s)
    return torch.stack([out[c] for c in channels], 1).view(n, len(channels), s.height, s.width)


def rasterize(points: torch.Tensor, lengths: torch.Tensor, s: RenderSettings, channels: Sequence[str] = ("ink",),
              augment: StrokeAugment | None = None, seed: int = 0, epoch: int = 0,
              index: torch.Tensor | None = None) -> torch.Tensor:
    """Padded strokes ``(B, S, P, 2)`` with their ``(B, S)`` lengths (:func:`pad_strokes`), drawn on
    their own device as ``(B, len(channels), h, w)`` uint8 images. With ``augment``, sample ``i`` is
    distorted by the draws of key (seed, epoch, ``index[i]``) (default index: 0..B-1)."""
    flat = flatten(points, lengths)
    keys = None
    if augment is not None and augment.active:
        index = torch.arange(flat.n, device=points.device) if index is None else index.to(points.device)
        keys = sample_keys(seed, epoch, index)
    return draw_flat(flat, s, channels, augment, keys)


# --- parity with homus_render ----------------------------------------------------------------

def path_lengths(symbols: Sequence[Sequence[np.ndarray]], s: RenderSettings) -> np.ndarray:
    """Each symbol's pen path length in output pixels once fitted to ``s`` (pen-up jumps left out)."""
    from homus_render.render import fit_path, path_bounds

    out = []
    for strokes in symbols:
        scale = fit_path(*path_bounds(strokes), s)[0]
        out.append(scale * sum(float(np.hypot(*np.diff(st, axis=0).T).sum()) for st in strokes if len(st) > 1))
    return np.array(out)


def stroke_widths(images: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The stroke width each black-on-white image ``(n, h, w)`` shows: the ``w`` whose round-capped
    pen of path length ``L`` leaves as much ink as the image holds (``w * L + pi / 4 * w**2``)."""
    mass = (PAPER - images.astype(np.float64)).sum(axis=(1, 2)) / 255
    a = math.pi / 4
    return (-lengths + np.sqrt(lengths ** 2 + 4 * a * mass)) / (2 * a)


def ink_boxes(images: np.ndarray, threshold: int = 128) -> np.ndarray:
    """Each image's ink bounding box ``(x0, y0, x1, y1)``: pixels darker than ``threshold`` (-1s if none)."""
    ink = images < threshold
    out = np.full((len(images), 4), -1, np.int64)
    cols, rows = ink.any(axis=1), ink.any(axis=2)
    has = cols.any(axis=1)
    w, h = images.shape[2], images.shape[1]
    out[has, 0] = cols[has].argmax(1)
    out[has, 2] = w - 1 - cols[has][:, ::-1].argmax(1)
    out[has, 1] = rows[has].argmax(1)
    out[has, 3] = h - 1 - rows[has][:, ::-1].argmax(1)
    return out


def parity(reference: np.ndarray, drawn: np.ndarray, lengths: np.ndarray) -> dict:
    """How far ``drawn`` images ``(n, h, w)`` are from ``reference`` ones (``homus_render``'s) of
    pen paths ``lengths`` pixels long: mean absolute pixel difference (grey levels, over all
    images), the largest ink bounding box difference (px, any side, any image) and the largest
    measured stroke width difference (px)."""
    mad = np.abs(reference.astype(np.int16) - drawn.astype(np.int16)).mean(axis=(1, 2))
    box = np.abs(ink_boxes(reference) - ink_boxes(drawn)).max(axis=1)
    width = np.abs(stroke_widths(reference, lengths) - stroke_widths(drawn, lengths))
    return {"mean_abs_diff": float(mad.mean()), "worst_image_abs_diff": float(mad.max()),
            "bbox_px_max": int(box.max()), "width_px_max": float(width.max()), "width_px_mean": float(width.mean())}
