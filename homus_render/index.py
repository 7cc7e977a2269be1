"""The stroke index: every parsed stroke file of a raw folder in one file, so that a render reads
one file instead of parsing 15,200.

``<raw>/.homus-strokes.npz`` holds, per stroke file, its path relative to the raw folder, its
size and modification time when it was parsed, the sha256 of its bytes, its label, and its
strokes (:class:`~homus_render.strokes.Packed`). An entry is used only while the file's size and
modification time are unchanged (the same test that decides whether a rendered variant is up to
date); anything else is parsed again. The index is a cache: a missing, unreadable, foreign or
older-format index is ignored, never trusted, and never an error.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import write_bytes
from .dataset import Stat
from .strokes import Packed

INDEX = ".homus-strokes.npz"
#: Bump when the parser or this layout changes what an entry means: older indexes are then ignored.
INDEX_FORMAT = 1


@dataclass(frozen=True)
class StrokeIndex:
    """Parsed stroke files: entry ``i`` is ``files[i]`` with ``labels[i]``, ``digests[i]`` and the
    ``i``-th sample of ``packed``, parsed when the file had ``stats[i]``."""

    files: list[str]
    stats: np.ndarray  # (n, 2) int64: size, mtime_ns
    digests: list[str]
    labels: list[str]
    packed: Packed

    def __post_init__(self) -> None:
        n = len(self.files)
        if self.stats.shape != (n, 2) or not len(self.digests) == len(self.labels) == len(self.packed) == n:
            raise ValueError("stroke index: the per-file lists differ in length")

    def lookup(self, files: Sequence[str], stats: Sequence[Stat]) -> list[int | None]:
        """For each of ``files`` with its current ``stats``, the position of its still valid
        entry, or None (not indexed, or changed since)."""
        if list(files) == self.files:  # the usual case: the same listing as when indexed
            pos = np.arange(len(files))
        else:
            where = {rel: i for i, rel in enumerate(self.files)}
            pos = np.array([where.get(rel, -1) for rel in files], np.int64)
        ok = (pos >= 0) & (self.stats[pos] == np.asarray(stats, np.int64).reshape(-1, 2)).all(axis=1)
        return [p if good else None for p, good in zip(pos.tolist(), ok.tolist(), strict=True)]

    def take(self, positions: Sequence[int]) -> StrokeIndex:
        """The entries at ``positions``, in that order."""
        pos = np.asarray(positions, np.int64)
        if np.array_equal(pos, np.arange(len(self.files))):
            return self
        packed = self.packed
        strokes = _ranges((np.cumsum(packed.n_strokes) - packed.n_strokes)[pos], packed.n_strokes[pos])
        points = _ranges((np.cumsum(packed.stroke_lengths) - packed.stroke_lengths)[strokes],
                         packed.stroke_lengths[strokes])
        which = pos.tolist()
        return StrokeIndex([self.files[p] for p in which], self.stats[pos],
                           [self.digests[p] for p in which], [self.labels[p] for p in which],
                           Packed(packed.points[points], packed.stroke_lengths[strokes], packed.n_strokes[pos]))

    @staticmethod
    def concat(parts: Sequence[StrokeIndex]) -> StrokeIndex:
        """The entries of ``parts``, one part after the other."""
        if not parts:
            none = np.zeros(0, np.int64)
            return StrokeIndex([], none.reshape(0, 2), [], [], Packed(np.zeros((0, 2)), none, none))
        return StrokeIndex([f for p in parts for f in p.files], np.concatenate([p.stats for p in parts]),
                           [d for p in parts for d in p.digests], [lab for p in parts for lab in p.labels],
                           Packed(np.concatenate([p.packed.points for p in parts]).reshape(-1, 2),
                                  np.concatenate([p.packed.stroke_lengths for p in parts]).astype(np.int64),
                                  np.concatenate([p.packed.n_strokes for p in parts]).astype(np.int64)))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, format=np.array([INDEX_FORMAT]), files=np.array(self.files, dtype=str),
                 stats=self.stats, digests=np.array(self.digests, dtype=str),
                 labels=np.array(self.labels, dtype=str), points=self.packed.points,
                 stroke_lengths=self.packed.stroke_lengths, n_strokes=self.packed.n_strokes)
        return buf.getvalue()


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices ``starts[0] .. starts[0]+lengths[0]-1``, then those of the next range, and so on."""
    before = np.cumsum(lengths) - lengths
    return np.repeat(starts - before, lengths) + np.arange(int(lengths.sum()))


def read_index(raw_dir: str | Path) -> StrokeIndex | None:
    """The raw folder's stroke index, or None where there is none that this version can trust the
    layout of (missing, unreadable, truncated, another format)."""
    path = Path(raw_dir) / INDEX
    try:
        with np.load(path, allow_pickle=False) as z:
            if z["format"].tolist() != [INDEX_FORMAT]:
                return None
            return StrokeIndex(z["files"].tolist(), z["stats"].astype(np.int64, copy=False), z["digests"].tolist(),
                               z["labels"].tolist(), Packed(z["points"].astype(np.float64, copy=False),
                                                            z["stroke_lengths"].astype(np.int64, copy=False),
                                                            z["n_strokes"].astype(np.int64, copy=False)))
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile):
        return None


def write_index(raw_dir: str | Path, index: StrokeIndex) -> None:
    """Write ``index`` atomically into ``raw_dir`` (a reader sees the old index or the new one)."""
    write_bytes(Path(raw_dir) / INDEX, index.to_bytes())
