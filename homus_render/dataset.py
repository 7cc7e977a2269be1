"""The raw dataset on disk: which stroke files there are, in what order, and their identity."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import HomusError, MissingDataError, SettingsError

#: Written by ``homus fetch`` into the raw folder: version, content hash and counts.
DATASET_INFO = "homus.json"
_NUM = re.compile(r"(\d+)")
_LEADING_ZERO = re.compile(r"(?<!\d)0\d")  # "01": a number that natural order reads as 1


class DuplicateSampleError(HomusError, ValueError):
    """Two raw files claim the same sample id: splits, images and scores would mix them up."""


@functools.lru_cache(maxsize=1 << 17)
def natural_key(text: str) -> tuple:
    """Sort ``2-10`` after ``2-9`` and writer ``10`` after ``9``. Cached: a render sorts the same
    names several times (files, rows, content hash)."""
    return tuple(int(t) if t.isdigit() else t for t in _NUM.split(text))


#: The marker ``homus fetch`` keeps in a raw folder while it moves writers in.
FETCH_IN_PROGRESS = ".fetch-in-progress"

#: A sample's file name, ``<writer>-<n>.txt``: a stray copy (``1-5 copy.txt``) or a note beside the
#: samples is not one, as ``homus fetch`` takes none of them either.
SAMPLE_NAME = re.compile(r"^[^\s/.][^\s/]*-\d+\.txt$")  # \d: any digits, so 1-١ and 1-1 clash as one id


def _scan(root: Path, writers: set[str] | None = None) -> list[str]:
    """``<writer>/<writer>-<n>.txt`` under ``root`` (of ``writers`` when given), unsorted."""
    found = []
    for entry in os.scandir(root):
        if entry.is_dir() and not entry.name.startswith(".") and (writers is None or entry.name in writers):
            found.extend(f"{entry.name}/{f.name}" for f in os.scandir(entry.path)
                         if SAMPLE_NAME.match(f.name) and f.is_file())
    return found


def list_stroke_files(raw_dir: str | Path, writers: set[str] | None = None,
                      extra: Sequence[str | Path] = ()) -> list[str]:
    """Stroke files under ``raw_dir`` as paths relative to it, ``<writer>/<writer>-<n>.txt``,
    in natural order (writer, then number); only those of ``writers`` when given. ``extra``: more
    folders of the same layout (samples people collected with ``homus serve``), taken whole and
    listed relative to ``raw_dir`` too (``../collected/alice/alice-1.txt``). Their writers must be
    names, never numbers, so they stay apart from HOMUS's writers 1-100 in every split."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise MissingDataError(f"{raw_dir}: no such folder (run `homus fetch` first)")
    if (raw_dir / FETCH_IN_PROGRESS).exists():  # a fetch is moving writers in, or was killed doing so
        raise MissingDataError(f"{raw_dir}: a fetch into it has not finished; wait for it, or run `homus fetch` "
                               "again if it was stopped")
    found = _scan(raw_dir, writers)
    for root in map(Path, extra):
        if not root.is_dir():
            raise MissingDataError(f"{root}: no such folder of extra stroke files (--extra-raw)")
        numeric = sorted({rel.split("/")[0] for rel in _scan(root) if rel.split("/")[0].isdigit()}, key=natural_key)
        if numeric:
            raise SettingsError(f"{root}: writer folder(s) {', '.join(numeric[:5])} are numbers, as HOMUS's writers "
                                "are; extra writers need names (letters first, as homus serve saves them) so "
                                "that two people never count as one writer")
        # relative to where raw_dir really is: the OS follows a linked raw_dir before "..", so must this
        real_root, real_raw = root.resolve(), raw_dir.resolve()
        found.extend(os.path.relpath(real_root / rel, real_raw).replace(os.sep, "/") for rel in _scan(root))
    found.sort(key=natural_key)
    check_unique_ids(raw_dir, found)
    return found


def check_unique_ids(raw_dir: str | Path, files: list[str]) -> None:
    """Refuse two files with one sample id (``2/1-1.txt`` beside ``1/1-1.txt``; ``1/1-01.txt``
    beside ``1/1-1.txt``): the second would silently stand in for the first."""
    stems = [rel.rpartition("/")[2][:-4] for rel in files]  # the sample ids: every listed name ends in .txt
    names = "\n".join(stems)
    if len(set(stems)) == len(stems) and names.isascii() and not _LEADING_ZERO.search(names):
        return  # distinct ASCII names without zero-padded numbers: distinct ids (the usual case, checked fast)
    seen: dict[tuple, str] = {}
    for rel, stem in zip(files, stems, strict=True):
        key = natural_key(stem)
        if key in seen:
            first, second = (os.path.join(raw_dir, r) for r in (seen[key], rel))
            raise DuplicateSampleError(f"{first} and {second} hold the same sample id "
                                       f"{stem!r}; remove or rename one of them")
        seen[key] = rel


#: The most writers one ``--writers`` range may name (a typo like 1-99999999999 would build a set for minutes).
MAX_WRITERS = 100_000


def parse_writers(spec: str | int | list | None) -> set[str] | None:
    """``None`` (all), ``"1-5,9"``, ``7`` or ``[1, 2, "3-4"]`` -> a set of writer ids."""
    if spec is None or spec == []:
        return None
    items = spec if isinstance(spec, list) else str(spec).split(",")
    out: set[str] = set()
    for item in items:
        text = str(item).strip()
        m = re.fullmatch(r"([0-9]+)\s*-\s*([0-9]+)", text)  # ASCII digits: "²".isdigit() is true
        if m and int(m.group(1)) > int(m.group(2)):
            raise SettingsError(f"writers {spec!r}: the range {text} runs backwards; write it as "
                                f"{int(m.group(2))}-{int(m.group(1))}")
        if m and int(m.group(2)) - int(m.group(1)) >= MAX_WRITERS:
            raise SettingsError(f"writers {spec!r}: the range {text} names more than {MAX_WRITERS:,} writers; "
                                "HOMUS has 100, numbered 1-100")
        if m:
            out |= {str(w) for w in range(int(m.group(1)), int(m.group(2)) + 1)}
        elif re.fullmatch(r"[0-9]+", text):
            out.add(str(int(text)))
        else:
            raise SettingsError(f"writers {spec!r}: expected numbers and ranges like 1-5,9")
    return out


Stat = tuple[int, int, int, int]  # size in bytes, modification time (ns), inode, change time (ns)


def file_stats(raw_dir: str | Path, files: Sequence[str]) -> list[Stat]:
    """:data:`Stat` of each of ``files`` (relative to ``raw_dir``)."""
    out = []
    for rel in files:
        st = os.stat(os.path.join(raw_dir, rel))
        out.append((st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
    return out


def fingerprint(raw_dir: str | Path, files: list[str], stats: Sequence[Stat] | None = None) -> str:
    """A cheap change detector (names, sizes, modification times): equal means nothing changed.
    ``stats``: the files' :func:`file_stats` when already taken."""
    if stats is None:
        stats = file_stats(raw_dir, files)
    h = hashlib.sha256()
    for rel, (size, mtime_ns, *_) in zip(files, stats, strict=True):
        h.update(f"{rel}\0{size}\0{mtime_ns}\n".encode())
    return h.hexdigest()


def content_hash(file_digests: dict[str, str]) -> str:
    """The dataset's identity: sha256 over (relative path, sha256 of bytes) in natural order."""
    h = hashlib.sha256()
    for rel in sorted(file_digests, key=natural_key):
        h.update(f"{rel}\0{file_digests[rel]}\n".encode())
    return h.hexdigest()


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_folder(raw_dir: str | Path, files: list[str]) -> str:
    """:func:`content_hash` of the files on disk (``fetch`` checks a folder it finds in place)."""
    return content_hash({rel: file_digest(Path(raw_dir, rel).read_bytes()) for rel in files})


def read_info(raw_dir: str | Path) -> dict:
    """What ``homus fetch`` recorded about this folder; ``{}`` for a folder it did not make."""
    path = Path(raw_dir) / DATASET_INFO
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def load_samples(raw_dir: str | Path, writers: set[str] | None = None, extra: Sequence[str | Path] = ()):
    """Parse every stroke file under ``raw_dir`` (of ``writers`` when given) and the ``extra``
    folders, in natural order. A bad file raises :class:`~homus_render.strokes.StrokeFileError`
    naming it and the line."""
    from .strokes import parse_file

    files = list_stroke_files(raw_dir, writers, extra)
    if not files:
        raise MissingDataError(no_files(raw_dir, writers))
    return [parse_file(Path(raw_dir, rel)) for rel in files]


def no_files(raw_dir: str | Path, writers: set[str] | None) -> str:
    """Why ``raw_dir`` gave no stroke files, and what to do: fetch, or ask for writers it holds."""
    if writers:
        held = {rel.split("/")[0] for rel in list_stroke_files(raw_dir)}
        if held:
            some = ", ".join(sorted(held, key=natural_key)[:3])
            return (f"{raw_dir}: no stroke files of writers {','.join(sorted(writers, key=natural_key))}; it holds "
                    f"{len(held)} other writer(s) ({some}{', ...' if len(held) > 3 else ''}): choose those (--writers)")
    return f"{raw_dir}: no stroke files <writer>/<writer>-<n>.txt (run `homus fetch` first)"
