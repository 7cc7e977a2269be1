"""The stroke index: every parsed stroke file of a raw folder in one file, so that a render reads
one file instead of parsing every stroke file.

``<raw>/.homus-strokes.npz`` holds, per stroke file, its path relative to the raw folder, the sha256
of its bytes, its label, its strokes (:class:`~homus_render.strokes.Packed`), and four stats taken
when it was parsed: size, modification time, inode and change time. An entry is used only while
those four stats are unchanged, and only by the parser that wrote it (the index records a hash of
the parser's source); anything else is parsed again. The index is a cache: a missing, unreadable,
inconsistent or foreign index is ignored, never trusted, and never an error.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from . import labels as _labels_module
from . import strokes as _strokes_module
from .atomic import write_bytes
from .dataset import Stat
from .labels import LABEL_SET
from .strokes import MAX_COORD, Packed

INDEX = ".homus-strokes.npz"
#: Bump when this file layout changes: indexes of another format are ignored.
INDEX_FORMAT = 1
_DIGEST = re.compile(r"[0-9a-f]{64}")  # used with fullmatch


@cache
def parser_identity() -> str:
    """A hash of the parser's source (``strokes.py``, ``labels.py``): an index written by another
    parser is ignored, so a fix to parsing can never be hidden by an old index."""
    h = hashlib.sha256()
    for module in (_strokes_module, _labels_module):
        try:
            h.update(Path(module.__file__).read_bytes())
        except (OSError, TypeError):  # no source at hand: never trust an index
            return "unknown"
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class StrokeIndex:
    """Parsed stroke files: entry ``i`` is ``files[i]`` with ``labels[i]``, ``digests[i]`` and the
    ``i``-th sample of ``packed``, parsed when the file had ``stats[i]``."""

    files: list[str]
    stats: np.ndarray  # (n, 4) int64: one Stat per file
    digests: list[str]
    labels: list[str]
    packed: Packed

    def __post_init__(self) -> None:
        n = len(self.files)
        if self.stats.shape != (n, 4) or not len(self.digests) == len(self.labels) == len(self.packed) == n:
            raise ValueError("stroke index: the per-file lists differ in length")

    @classmethod
    def of(cls, files: Sequence[str], stats: Sequence[Stat], digests: Sequence[str], labels: Sequence[str],
           packed: Packed) -> StrokeIndex:
        return cls(list(files), np.array(stats, np.int64).reshape(-1, 4), list(digests), list(labels), packed)

    @classmethod
    def empty(cls) -> StrokeIndex:
        return cls.of([], [], [], [], Packed.of([]))

    def lookup(self, files: Sequence[str], stats: Sequence[Stat]) -> list[int | None]:
        """For each of ``files`` with its current ``stats``, the position of its still valid
        entry, or None (not indexed, or changed since)."""
        if not self.files:
            return [None] * len(files)
        if list(files) == self.files:  # the usual case: the same listing as when indexed
            pos = np.arange(len(files))
        else:
            where = {rel: i for i, rel in enumerate(self.files)}
            pos = np.array([where.get(rel, -1) for rel in files], np.int64)
        now = np.asarray(stats, np.int64).reshape(-1, 4)
        ok = (pos >= 0) & (self.stats[np.maximum(pos, 0)] == now).all(axis=1)
        return [p if good else None for p, good in zip(pos.tolist(), ok.tolist(), strict=True)]

    def take(self, positions: Sequence[int]) -> StrokeIndex:
        """The entries at ``positions``, in that order."""
        pos = np.asarray(positions, np.int64)
        if np.array_equal(pos, np.arange(len(self.files))):
            return self
        packed = self.packed
        strokes = _ranges(packed.first_strokes()[pos], packed.n_strokes[pos])
        points = _ranges(packed.first_points()[strokes], packed.stroke_lengths[strokes])
        which = pos.tolist()
        return StrokeIndex([self.files[p] for p in which], self.stats[pos],
                           [self.digests[p] for p in which], [self.labels[p] for p in which],
                           Packed(packed.points[points], packed.stroke_lengths[strokes], packed.n_strokes[pos]))

    @staticmethod
    def concat(parts: Sequence[StrokeIndex]) -> StrokeIndex:
        """The entries of ``parts``, one part after the other."""
        if not parts:
            return StrokeIndex.empty()
        return StrokeIndex([f for p in parts for f in p.files], np.concatenate([p.stats for p in parts]),
                           [d for p in parts for d in p.digests], [lab for p in parts for lab in p.labels],
                           Packed(np.concatenate([p.packed.points for p in parts]).reshape(-1, 2),
                                  np.concatenate([p.packed.stroke_lengths for p in parts]).astype(np.int64),
                                  np.concatenate([p.packed.n_strokes for p in parts]).astype(np.int64)))

    def to_bytes(self) -> bytes:
        """The index as an uncompressed ``.npz`` (no pickled objects)."""
        buf = io.BytesIO()
        np.savez(buf, format=np.array([INDEX_FORMAT]), parser=np.array(parser_identity()),
                 files=np.array(self.files, dtype=str), stats=self.stats, digests=np.array(self.digests, dtype=str),
                 labels=np.array(self.labels, dtype=str), points=self.packed.points,
                 stroke_lengths=self.packed.stroke_lengths, n_strokes=self.packed.n_strokes)
        return buf.getvalue()


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices ``starts[0] .. starts[0]+lengths[0]-1``, then those of the next range, and so on."""
    before = np.cumsum(lengths) - lengths
    return np.repeat(starts - before, lengths) + np.arange(int(lengths.sum()))


def _strings(a: np.ndarray, n: int | None = None) -> list[str]:
    if a.dtype.kind != "U" or a.ndim != 1 or (n is not None and len(a) != n):
        raise ValueError("not a list of strings")
    return a.tolist()


def _integers(a: np.ndarray, shape: tuple) -> np.ndarray:
    if a.dtype.kind not in "iu" or a.ndim != len(shape) or any(s is not None and s != d
                                                               for s, d in zip(shape, a.shape, strict=True)):
        raise ValueError("not an integer array of the expected shape")
    return a.astype(np.int64, copy=False)


def read_index(raw_dir: str | Path) -> StrokeIndex | None:
    """The raw folder's stroke index, or None where there is none that can be trusted: missing,
    unreadable, truncated, of another format or parser, or inconsistent in any way checked here
    (names, labels, digests, counts, coordinates)."""
    if parser_identity() == "unknown":
        return None
    try:
        with np.load(Path(raw_dir) / INDEX, allow_pickle=False) as z:
            if z["format"].tolist() != [INDEX_FORMAT] or z["parser"].tolist() != parser_identity():
                return None
            files = _strings(z["files"])
            n = len(files)
            digests, labels = _strings(z["digests"], n), _strings(z["labels"], n)
            points = z["points"]
            if points.dtype != np.float64 or points.ndim != 2 or points.shape[1:] != (2,):
                return None
            index = StrokeIndex(files, _integers(z["stats"], (n, 4)), digests, labels,
                                Packed(points, _integers(z["stroke_lengths"], (None,)),
                                       _integers(z["n_strokes"], (n,))))
        if (len(set(files)) != n or not set(labels) <= LABEL_SET or not all(map(_DIGEST.fullmatch, digests))
                or not (np.abs(points) <= MAX_COORD).all()):  # also false for NaN
            return None
        return index
    except Exception:  # a cache: whatever is wrong with it, the files are parsed instead
        return None


def write_index(raw_dir: str | Path, index: StrokeIndex) -> None:
    """Write ``index`` atomically into ``raw_dir`` (a reader sees the old index or the new one);
    nothing where the parser's source cannot be read, since such an index is never trusted."""
    if parser_identity() != "unknown":
        write_bytes(Path(raw_dir) / INDEX, index.to_bytes())
