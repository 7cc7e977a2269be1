"""New samples drawn by people, written as HOMUS stroke files: ``<dir>/<writer>/<writer>-<n>.txt``.

Collected writers are named (``alice``, ``pen_2``), never numbered, so they cannot collide with
HOMUS's writers 1-100, and a name is a plain identifier, so no path ever leaves the collect folder.
Each file appears whole or not at all, and two savers never take the same number.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .dataset import natural_key
from .errors import HomusError, user_os_error
from .labels import LABEL_SET
from .strokes import MAX_COORD, MAX_POINTS, MAX_STROKES, parse_text

#: A collected writer: a letter, then letters, digits or ``_`` (32 characters at most).
WRITER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
#: Names Windows keeps for devices: a folder so named cannot be made there, whatever its case.
RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


class SampleError(HomusError, ValueError):
    """Strokes, a label or a writer name that cannot be a sample; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class CollectFullError(SampleError):
    """The collect folder already holds its limit of samples: a good sample, refused for room."""


def check_strokes(strokes: Sequence[Sequence[Sequence[float]]]) -> tuple[np.ndarray, ...]:
    """Strokes as given by a client (lists of ``[x, y]`` in tablet units), checked: 1 to
    ``MAX_STROKES`` strokes, none empty, at most ``MAX_POINTS`` points in all, every coordinate
    finite and within ``MAX_COORD``. Returns float ``(k, 2)`` arrays, as the parser does."""
    if len(strokes) == 0:
        raise SampleError("strokes", "no strokes: draw at least one")
    if len(strokes) > MAX_STROKES:
        raise SampleError("strokes", f"{len(strokes)} strokes: at most {MAX_STROKES} are accepted")
    total = sum(len(s) for s in strokes)
    if total > MAX_POINTS:
        raise SampleError("strokes", f"{total:,} points: at most {MAX_POINTS:,} are accepted")
    out = []
    for i, stroke in enumerate(strokes):
        if len(stroke) == 0:
            raise SampleError("strokes", f"stroke {i} is empty: every stroke needs at least one point")
        for j, point in enumerate(stroke):
            if len(point) != 2:
                raise SampleError("strokes", f"stroke {i}, point {j}: {len(point)} values, expected [x, y]")
            for v in point:
                if not math.isfinite(v):
                    raise SampleError("strokes", f"stroke {i}, point {j}: {v} is not a finite number")
                if abs(v) > MAX_COORD:
                    raise SampleError("strokes", f"stroke {i}, point {j}: {v:g} is beyond any tablet "
                                                 f"(|v| > {MAX_COORD:,.0f})")
        out.append(np.asarray(stroke, dtype=np.float64).reshape(-1, 2))
    return tuple(out)


def check_writer(writer: str) -> str:
    if not WRITER.fullmatch(writer or ""):
        raise SampleError("writer", f"writer {writer!r}: a name of 1-32 letters, digits or _, starting with a "
                                    "letter (e.g. alice or pen_2); HOMUS's own writers are the numbers 1-100")
    if writer.lower() in RESERVED:
        raise SampleError("writer", f"writer {writer!r}: a device name on Windows, where no folder can take it; "
                                    "choose another name")
    return writer


def writer_folder(collect_dir: Path, writer: str) -> Path:
    """``collect_dir/writer``, refusing a name that differs only by case from a writer already
    there: on a case-insensitive disk (macOS, Windows) the two would share one folder, and on
    any disk they would read as two people."""
    folder = collect_dir / writer
    if collect_dir.is_dir() and not folder.is_dir():
        same = sorted(e.name for e in os.scandir(collect_dir)
                      if e.is_dir() and e.name.lower() == writer.lower() and e.name != writer)
        if same:
            raise SampleError("writer", f"writer {writer!r}: the collect folder already has {same[0]!r}, which "
                                        f"differs only by case; send {same[0]!r} (names are matched exactly)")
    return folder


def writer_folders(collect_dir: str | Path) -> list[os.DirEntry]:
    """The writers' folders of a collect folder, in natural order (others are left out)."""
    root = Path(collect_dir)
    if not root.is_dir():
        return []
    return sorted((e for e in os.scandir(root) if e.is_dir() and WRITER.fullmatch(e.name)),
                  key=lambda e: natural_key(e.name))


def writer_files(folder: os.DirEntry) -> Iterator[os.DirEntry]:
    """The ``<writer>-*.txt`` files of one writer's folder."""
    for f in os.scandir(folder.path):
        if f.name.endswith(".txt") and f.name.startswith(f"{folder.name}-") and f.is_file():
            yield f


def sample_files(collect_dir: str | Path) -> Iterator[tuple[str, os.DirEntry]]:
    """``(writer, file)`` for each ``<writer>/<writer>-*.txt`` file of a collect folder, writers in
    natural order (folders and files that are not collected samples are left out)."""
    for folder in writer_folders(collect_dir):
        for f in writer_files(folder):
            yield folder.name, f


def count_samples(collect_dir: str | Path) -> int:
    """How many sample files a collect folder holds (by name, unread)."""
    return sum(1 for _ in sample_files(collect_dir))


def check_label(label: str) -> str:
    if label not in LABEL_SET:
        raise SampleError("label", f"unknown label {label!r}: GET /api/labels lists the 32 HOMUS classes")
    return label


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def stroke_text(label: str, strokes: Sequence[np.ndarray]) -> str:
    """A HOMUS stroke file: the label, then one ``x,y;x,y;`` line per stroke (integers as
    integers, other values exactly)."""
    lines = [label] + ["".join(f"{_number(x)},{_number(y)};" for x, y in s) for s in strokes]
    return "\n".join(lines) + "\n"


def save_sample(collect_dir: str | Path, writer: str, label: str, strokes: Sequence[Sequence[Sequence[float]]],
                max_samples: int | None = None) -> Path:
    """Write one sample as ``<collect_dir>/<writer>/<writer>-<n>.txt`` with the next free ``n``.
    The text is written and synced under a hidden name, then hard-linked to its final name, which
    fails if another saver took that number first (then the next is tried): a reader never sees a
    torn file and no file is ever overwritten. The text is parsed back with the project's parser
    before it is written. With ``max_samples``, a folder that already holds that many refuses the
    sample (:class:`CollectFullError`); savers running at that moment may each add one more."""
    writer, label = check_writer(writer), check_label(label)
    text = stroke_text(label, check_strokes(strokes))
    collect_dir = Path(collect_dir)
    parse_text(text, collect_dir / writer / f"{writer}-1.txt")  # what training will read, checked now
    try:
        folder = writer_folder(collect_dir, writer)
        if max_samples is not None and (held := count_samples(collect_dir)) >= max_samples:
            raise CollectFullError("collect", f"the collect folder {collect_dir} holds {held:,} samples, its limit "
                                              f"(--max-samples {max_samples:,}); move them away or raise the limit")
        folder.mkdir(parents=True, exist_ok=True)
        n = next_number(folder, writer)
        tmp = folder / f".{writer}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            while True:
                path = folder / f"{writer}-{n}.txt"
                try:
                    os.link(tmp, path)
                    return path
                except FileExistsError:
                    n += 1
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise user_os_error(e) or e from None


def next_number(folder: Path, writer: str) -> int:
    """One more than the highest ``<writer>-<n>.txt`` in ``folder`` (1 when there is none)."""
    pattern = re.compile(rf"^{re.escape(writer)}-(\d+)\.txt$")
    taken = [int(m.group(1)) for f in os.listdir(folder) if (m := pattern.match(f))]
    return max(taken, default=0) + 1


def writer_counts(folder: os.DirEntry) -> Counter:
    """Samples per label of one writer's folder, read from line one of each stroke file."""
    counts: Counter = Counter()
    for f in writer_files(folder):
        try:
            with open(f.path, encoding="utf-8") as fh:
                label = fh.readline().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if label in LABEL_SET:
            counts[label] += 1
    return counts


def _summary(writers: dict[str, Counter]) -> dict:
    labels: Counter = sum(writers.values(), Counter())
    return {"total": sum(labels.values()), "labels": dict(sorted(labels.items())),
            "writers": {w: dict(sorted(c.items())) for w, c in writers.items() if c}}


def collected_counts(collect_dir: str | Path) -> dict:
    """What a collect folder holds: ``{"total", "labels": {label: n}, "writers": {writer: {label: n}}}``,
    read from line one of each stroke file (files that are not collected samples are left out)."""
    return _summary({folder.name: writer_counts(folder) for folder in writer_folders(collect_dir)})


class CountsCache:
    """:func:`collected_counts`, reading again only the writers whose folder changed since (a sample
    saved, renamed or removed changes its folder's modification time): after a save, one writer is
    read, not the whole folder. A folder changed in the last two seconds is always read, so a change
    within the file system's clock tick is never missed."""

    RECENT_NS = 2_000_000_000

    def __init__(self, collect_dir: str | Path) -> None:
        self.collect_dir = collect_dir
        self._seen: dict[str, tuple[int, Counter]] = {}
        self._lock = threading.Lock()

    def __call__(self) -> dict:
        with self._lock:
            now, seen, writers = time.time_ns(), {}, {}
            for folder in writer_folders(self.collect_dir):
                try:
                    mtime = folder.stat().st_mtime_ns
                except OSError:
                    continue
                cached = self._seen.get(folder.name)
                counts = cached[1] if cached and cached[0] == mtime and now - mtime > self.RECENT_NS \
                    else writer_counts(folder)
                seen[folder.name] = (mtime, counts)
                writers[folder.name] = counts
            self._seen = seen
            return _summary(writers)
