"""Parse one HOMUS stroke file into a :class:`Sample`, or say exactly what is wrong with it.

Format: line 1 is the class label; every further non-blank line is one pen stroke, points
``x,y`` joined by ``;`` (a trailing ``;`` is normal). CRLF, spaces and blank lines are accepted.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import HomusError
from .labels import LABEL_SET

#: No tablet reports coordinates this large; beyond it a file is corrupt, not a symbol.
MAX_COORD = 100_000.0
#: Far more strokes and points than any HOMUS symbol has: what the web service and ``homus predict``
#: take as one drawn symbol at most.
MAX_STROKES = 64
MAX_POINTS = 20_000

_NAME = re.compile(r"^(\d+)-(\d+)$")
#: A coordinate as a tablet writes one: ASCII digits, a sign, a point, an exponent.
_PLAIN_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$", re.ASCII)
_COORDS_ONLY = re.compile(r"^[-+\d\s,;.]+$")
#: Line 1 of an unlabelled file that is made of what points are made of (numbers, exponents, commas
#: and semicolons): it is the first stroke, parsed like the others (a typo in it is an error, never
#: a "label" silently dropped).
_POINTS_LINE = re.compile(r"^(?=.*\d)(?=.*,)[-+\d\s,;.eE]+$")
_NUMBER_CHARS = str.maketrans("", "", "0123456789+-")  # what is left of well-formed strokes: ",;," per line


class StrokeFileError(HomusError, ValueError):
    """A stroke file that cannot be read; the message names the file, the line and the reason."""

    def __init__(self, path: str | Path, line: int | None, reason: str) -> None:
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Sample:
    """One handwritten symbol: ``id`` is ``<writer>-<n>``, ``strokes`` are float (k, 2) arrays."""

    id: str
    writer: str
    label: str
    strokes: tuple[np.ndarray, ...]


@dataclass(frozen=True, eq=False)
class Packed:
    """Many samples' strokes as three flat arrays: all points ``(P, 2)`` float64, the number of
    points of each stroke and the number of strokes of each sample (int64). A chunk travels to a
    worker process in three cheap copies (thousands of small arrays pickle slowly), and drawing
    code can work on all samples at once."""

    points: np.ndarray
    stroke_lengths: np.ndarray
    n_strokes: np.ndarray

    def __post_init__(self) -> None:
        if (self.points.dtype != np.float64 or self.stroke_lengths.dtype != np.int64
                or self.n_strokes.dtype != np.int64):
            raise ValueError("packed strokes: points must be float64 and counts int64")
        if (self.points.ndim != 2 or self.points.shape[1:] != (2,) or self.stroke_lengths.ndim != 1
                or self.n_strokes.ndim != 1 or self.stroke_lengths.sum() != len(self.points)
                or self.n_strokes.sum() != len(self.stroke_lengths) or (self.stroke_lengths < 1).any()
                or (self.n_strokes < 1).any()):
            raise ValueError("packed strokes: every sample needs strokes, every stroke points, "
                             "and the counts must add up")
        if not np.isfinite(self.points).all():  # drawn, they would make a blank page
            raise ValueError("packed strokes: a coordinate is not a finite number (nan or inf)")

    @classmethod
    def of(cls, symbols: Sequence[Sequence[np.ndarray]]) -> Packed:
        """Pack the strokes of ``symbols`` (each a sequence of ``(k, 2)`` arrays)."""
        strokes = [st for sym in symbols for st in sym]
        points = np.concatenate(strokes).astype(np.float64, copy=False) if strokes else np.zeros((0, 2))
        return cls(points.reshape(-1, 2), np.array([len(st) for st in strokes], np.int64),
                   np.array([len(sym) for sym in symbols], np.int64))

    def __len__(self) -> int:
        return len(self.n_strokes)

    def first_points(self) -> np.ndarray:
        """Each stroke's first index in ``points``."""
        return np.cumsum(self.stroke_lengths) - self.stroke_lengths

    def first_strokes(self) -> np.ndarray:
        """Each sample's first stroke."""
        return np.cumsum(self.n_strokes) - self.n_strokes

    def slice(self, start: int, stop: int) -> Packed:
        """Samples ``start`` to ``stop - 1``, as views."""
        ends = np.cumsum(self.n_strokes)
        s0, s1 = (int(ends[i - 1]) if i > 0 else 0 for i in (start, stop))
        pends = np.cumsum(self.stroke_lengths)
        p0, p1 = (int(pends[i - 1]) if i > 0 else 0 for i in (s0, s1))
        return Packed(self.points[p0:p1], self.stroke_lengths[s0:s1], self.n_strokes[start:stop])

    def unpack(self) -> list[tuple[np.ndarray, ...]]:
        """Each sample's strokes, as views into ``points``."""
        strokes = np.split(self.points, self.first_points()[1:]) if len(self.points) else []
        ends = np.cumsum(self.n_strokes).tolist()
        return [tuple(strokes[a:b]) for a, b in zip([0] + ends[:-1], ends, strict=True)]


def sample_identity(path: str | Path) -> tuple[str, str]:
    """``(sample id, writer)`` from a file name ``<writer>-<n>.txt``; other names fall back to
    the stem and the parent folder."""
    head, name = os.path.split(os.fspath(path))
    stem = name[:-4] if name.endswith(".txt") else os.path.splitext(name)[0]
    m = _NAME.match(stem)
    return stem, (m.group(1) if m else os.path.basename(head))


def _parse_stroke(text: str, path: str | Path, lineno: int) -> np.ndarray:
    points = text.rstrip(";").split(";")
    flat = text.rstrip(";").replace(";", ",").split(",")
    for i, p in enumerate(points, 1):  # every point, not the total: "1,2,3;4" has 4 values too
        n = len(p.split(","))
        if n != 2:
            what = "an empty point" if not p.strip() else f"{n} values in point {p.strip()!r}"
            raise StrokeFileError(path, lineno, f"odd coordinates: {what} (point {i}), expected x,y")
    if not text.isascii() or "_" in text:  # float() also takes "1_0" and other scripts' digits: not a tablet's
        bad = next(t for t in flat if not _PLAIN_NUMBER.match(t))
        raise StrokeFileError(path, lineno, f"non-numeric coordinate {bad!r} (plain ASCII digits only)")
    try:
        values = np.array(flat, dtype=np.float64)
    except ValueError:
        bad = next(t for t in flat if not _is_number(t))
        raise StrokeFileError(path, lineno, f"non-numeric coordinate {bad.strip()!r}") from None
    if not np.isfinite(values).all():
        bad = flat[int(np.argmin(np.isfinite(values)))]
        raise StrokeFileError(path, lineno, f"non-numeric coordinate {bad.strip()!r}")
    big = np.abs(values) > MAX_COORD
    if big.any():
        raise StrokeFileError(
            path, lineno, f"coordinate {flat[int(np.argmax(big))].strip()} is beyond any tablet "
            f"(|v| > {MAX_COORD:,.0f})")
    return values.reshape(-1, 2)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _bare(line: str) -> str:
    """A line without surrounding space or a byte-order mark."""
    return line.strip().lstrip("\ufeff").strip()


def parse_text(text: str, path: str | Path = "<text>", labelled: bool = True) -> Sample:
    """Parse the decoded content of a stroke file; ``path`` names it in errors and gives the id.
    ``labelled=False`` (a symbol to classify, whose class is not needed): line 1 may hold any label,
    or be the first stroke; the sample's label is then what line 1 said, or empty."""
    lines = re.split(r"\r\n|\r|\n", text)  # not splitlines: \x1c, \x85 or \u2028 inside a line break nothing
    # training data names its class on line 1; a symbol to classify may have blank lines above it
    top = next((i for i, line in enumerate(lines) if _bare(line)), None)
    if top is None:  # blank, or a byte-order mark alone
        raise StrokeFileError(path, None, "empty file")
    if labelled:
        top = 0
    label = _bare(lines[top])
    first = top + 2
    if not labelled and _POINTS_LINE.match(label):  # no label line: the first line is the first stroke
        label, first = "", top + 1
    elif not labelled:  # any label, or none, names nothing predict needs
        pass
    elif not label or _COORDS_ONLY.match(label):
        raise StrokeFileError(path, top + 1, f"missing label: line {top + 1} must name the symbol class")
    elif label not in LABEL_SET:
        raise StrokeFileError(path, top + 1, f"unknown label {label!r}")
    body = [(n, line.strip().lstrip("\ufeff").rstrip(";")) for n, line in enumerate(lines[first - 1:], first)
            if line.strip()]
    if not body:
        raise StrokeFileError(path, None, f"label {label!r} has no strokes")
    sample_id, writer = sample_identity(path)
    return Sample(sample_id, writer, label, _parse_strokes(body, path))


def _parse_strokes(body: list[tuple[int, str]], path: str | Path) -> tuple[np.ndarray, ...]:
    """All strokes at once (the fast path for well-formed integer files); on any doubt, line by
    line, which finds the exact line and reason."""
    joined = "\n".join(t for _, t in body)
    values = _fast_values(joined)
    if values is None:  # odd, non-numeric, fractional or huge: the careful parser decides
        return tuple(_parse_stroke(t, path, n) for n, t in body)
    counts = [t.count(";") + 1 for _, t in body]
    points, strokes, start = values.reshape(-1, 2), [], 0
    for n in counts:
        strokes.append(points[start:start + n])
        start += n
    return tuple(strokes)


def _fast_values(joined: str) -> np.ndarray | None:
    """The coordinates of well-formed strokes (lines of integer points ``x,y`` joined by ``;``),
    parsed in C; None on any doubt. Without its digits and signs such a text is ``,;,;,`` per line."""
    seps = joined.translate(_NUMBER_CHARS)
    if any(line != ",;" * line.count(";") + "," for line in seps.split("\n")):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns (and stops) where a number does not parse
        try:
            values = np.fromstring(joined.replace("\n", ",").replace(";", ","), dtype=np.float64, sep=",")
        except (DeprecationWarning, ValueError):
            return None
    if len(values) != 2 * seps.count(",") or np.abs(values).max() > MAX_COORD:
        return None
    return values


def parse_file(path: str | Path, labelled: bool = True) -> Sample:
    """Read and parse one stroke file (``labelled``: see :func:`parse_text`)."""
    return parse_bytes(Path(path).read_bytes(), path, labelled)


def parse_bytes(data: bytes, path: str | Path = "<bytes>", labelled: bool = True) -> Sample:
    """Decode (UTF-8) and parse the raw content of a stroke file; ``path`` names it in errors."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise StrokeFileError(path, lineno, f"undecodable bytes at offset {e.start} (not a text file?)")\
            from None
    return parse_text(text, path, labelled)
