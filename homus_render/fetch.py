"""Get the raw HOMUS dataset: download or copy it, unpack it safely, check it, put it in place.

Result: ``<raw_dir>/<writer>/<writer>-<n>.txt`` plus ``homus.json`` (version, source, content
hash, counts), written last: a raw folder with ``homus.json`` is complete.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .atomic import write_json
from .dataset import (
    DATASET_INFO,
    FETCH_IN_PROGRESS,
    content_hash,
    file_digest,
    file_stats,
    hash_folder,
    list_stroke_files,
    read_info,
)
from .errors import HomusError, PathError, check_writable_dir, user_os_error
from .index import StrokeIndex, write_index
from .labels import LABELS
from .lock import writing
from .strokes import Packed, StrokeFileError, parse_bytes

OFFICIAL = {
    "v2": "https://github.com/apacha/OMR-Datasets/releases/download/datasets/HOMUS-2.0.zip",
    "v1": "http://grfia.dlsi.ua.es/homus/HOMUS.zip",
}
EXPECTED = {"samples": 15_200, "writers": 100, "labels": len(LABELS)}
#: The content hash (:func:`~homus_render.index.content_hash`) of each official release: a source that
#: holds one release is never installed as the other.
RELEASES = {
    "v2": "e2bfcc910a1aad629cb62f3dc0f67d649cf9de5160b8b703eece33fe4dc6d462",
    "v1": "bbe2e714ec04c29b898bc23e2d73c834095631ebed40341a669d63cbb2525ccd",
}
ENV_SOURCE = "HOMUS_SOURCE"
# Limits that no genuine HOMUS archive comes near (it holds 15,200 files of about 1 KB).
MAX_MEMBERS = 100_000
MAX_MEMBER_BYTES = 10 * 2**20
MAX_TOTAL_BYTES = 1 * 2**30
MAX_RATIO = 200
_SAMPLE_PATH = re.compile(r"^(\d+)/\1-\d+\.txt$")


class FetchError(HomusError, RuntimeError):
    """The dataset could not be fetched; nothing was put in place."""


@dataclass
class FetchReport:
    raw_dir: Path
    version: str
    source: str
    samples: int
    writers: int
    labels: int
    invalid: list[str]
    sha256: str
    already_there: bool = False

    def summary(self) -> str:
        what = (f"HOMUS {self.version}: {self.samples:,} samples, {self.writers} writers, "
                f"{self.labels} labels in {self.raw_dir}")
        if self.already_there:
            return f"{what}: already there, nothing to do"
        lines = [f"{what} (from {self.source})", f"content sha256 {self.sha256}"]
        for key, want in EXPECTED.items():
            got = getattr(self, key)
            if got != want:
                lines.append(f"warning: expected {want:,} {key} for the full dataset, found {got:,}")
        if self.invalid:
            lines.append(f"warning: {len(self.invalid)} file(s) will not parse, e.g. {self.invalid[0]}")
        return "\n".join(lines)


def resolve_source(source: str | None, version: str) -> str:
    """``--source`` first, then ``$HOMUS_SOURCE``, then the official address of ``version``."""
    if version not in OFFICIAL:
        raise FetchError(f"unknown dataset version {version!r}: choose {' or '.join(OFFICIAL)}")
    return source or os.environ.get(ENV_SOURCE) or OFFICIAL[version]


def fetch(raw_dir: str | Path, version: str = "v2", source: str | None = None,
          progress: Callable[[int, int | None], None] | None = None) -> FetchReport:
    """Put HOMUS ``version`` into ``raw_dir`` from ``source`` (zip, folder or URL); see module doc.

    ``progress(done_bytes, total_bytes)`` follows a download.
    """
    raw_dir = Path(raw_dir)
    if raw_dir.resolve().name == "":
        raise FetchError(f"--raw-dir {raw_dir}: the file system's root; choose a folder of its own, e.g. raw")
    src = resolve_source(source, version)
    done = _already_there(raw_dir, version)
    if done is not None:
        return done
    check_writable_dir(raw_dir.parent)
    with writing(raw_dir, "fetch into another --raw-dir"):  # one fetch per folder at a time
        done = _already_there(raw_dir, version)  # the fetch before us may have just finished
        if done is not None:
            return done
        _refuse_foreign_content(raw_dir)
        created = not raw_dir.exists()
        try:
            report = _fetch_into(raw_dir, version, src, progress)
        except BaseException as e:
            if created:  # nothing half-made: a folder this fetch made goes with it
                shutil.rmtree(raw_dir, ignore_errors=True)
            if isinstance(e, OSError):
                raise user_os_error(e, raw_dir) or e from None
            raise
    report.raw_dir = raw_dir
    return report


def _fetch_into(raw_dir: Path, version: str, src: str, progress) -> FetchReport:
    raw_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=raw_dir) as tmp:
        tmp = Path(tmp)
        staging = tmp / "data"
        staging.mkdir()
        if re.match(r"^https?://", src):
            archive = tmp / "download.zip"
            _download(src, archive, progress)
            _extract_zip(archive, staging)
        elif Path(src).is_dir():
            _copy_folder(Path(src), staging)
        elif Path(src).is_file():
            _extract_zip(Path(src), staging)
        elif Path(src).exists():
            raise FetchError(f"source {src}: not a regular file or folder (a device or a pipe?); give the HOMUS "
                             "zip, a folder of it, or an http(s) URL")
        else:
            raise FetchError(f"source {src}: no such file, folder or http(s) URL")
        report, index = _check(staging, version, src)
        other = next((v for v, sha in RELEASES.items() if sha == report.sha256 and v != version), None)
        if other is not None:
            raise FetchError(f"{src} holds HOMUS {other} (content sha256 {report.sha256[:12]}...), not {version}: "
                             f"pass --version {other}, or a source of {version}")
        _move_into_place(staging, raw_dir, report)
        try:  # a cache for renders: a fetch is complete without it
            write_index(raw_dir, index)
        except Exception:  # never undo a finished fetch over its cache
            pass
    return report


def _already_there(raw_dir: Path, version: str) -> FetchReport | None:
    """The report of a complete earlier fetch into ``raw_dir``, checked file by file against the
    content hash it recorded; None when there is none. A folder changed since is an error."""
    info = read_info(raw_dir)
    if not info or (raw_dir / FETCH_IN_PROGRESS).exists():
        return None
    if info.get("version") != version:
        raise FetchError(f"{raw_dir} already holds HOMUS {info.get('version')}; remove it or "
                         f"choose another --raw-dir for {version}")
    files = list_stroke_files(raw_dir)
    try:
        now = hash_folder(raw_dir, files)
    except OSError as e:
        raise user_os_error(e) or e from None
    if now != info.get("sha256"):
        writers = len({rel.split("/")[0] for rel in files})
        raise FetchError(f"{raw_dir} was fetched as HOMUS {version} ({info.get('samples', '?'):,} files of "
                         f"{info.get('writers', '?')} writers) but now holds {len(files):,} files of {writers} "
                         f"writers whose content differs: files were removed, added or changed since. Remove "
                         f"{raw_dir} and run `homus fetch` again")
    return FetchReport(raw_dir, version, info.get("source", "?"), info.get("samples", len(files)),
                       info.get("writers", 0), info.get("labels", 0), [], now, already_there=True)


def _refuse_foreign_content(raw_dir: Path) -> None:
    """Never mix a fetch with data that homus did not put there (a killed fetch is cleaned: the
    caller holds the folder's lock, so any staging folder in it is a leftover)."""
    if not raw_dir.is_dir():
        return
    for p in raw_dir.glob(".fetch-*"):
        shutil.rmtree(p, ignore_errors=True)
    if (raw_dir / FETCH_IN_PROGRESS).exists():
        for p in raw_dir.iterdir():
            if p.is_dir() and (p.name.isdigit() or p.name.startswith(".fetch-")):
                shutil.rmtree(p)
        (raw_dir / DATASET_INFO).unlink(missing_ok=True)
        (raw_dir / FETCH_IN_PROGRESS).unlink()
        return
    foreign = [p.name for p in raw_dir.iterdir() if p.name != "README.md" and not p.name.startswith(".")]
    if foreign:
        raise FetchError(f"{raw_dir} is not empty ({', '.join(sorted(foreign)[:3])}, ...) and was not "
                         "made by `homus fetch`; remove it or choose another --raw-dir")


def _download(url: str, dest: Path, progress) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            if total and total > MAX_TOTAL_BYTES:
                raise FetchError(f"{url}: {total:,} bytes is far larger than HOMUS; refusing")
            done = 0
            while block := r.read(1 << 16):
                done += len(block)
                if done > MAX_TOTAL_BYTES:
                    raise FetchError(f"{url}: more than {MAX_TOTAL_BYTES:,} bytes; refusing")
                try:
                    f.write(block)
                except OSError as e:  # the disk, not the network
                    raise user_os_error(e, dest) or e from None
                if progress:
                    progress(done, total)
    except OSError as e:  # URLError, timeouts, refused connections
        if isinstance(e, PathError):
            raise
        raise FetchError(f"could not download {url}: {e}. Without network access, download the zip "
                         f"elsewhere and pass it with --source FILE or ${ENV_SOURCE}") from e


def _member_target(name: str) -> str | None:
    """``<writer>/<writer>-<n>.txt`` for a sample member (any top folder), else None."""
    parts = PurePosixPath(name).parts
    rel = "/".join(parts[-2:])
    return rel if _SAMPLE_PATH.match(rel) else None


def _extract_zip(archive: Path, dest: Path) -> None:
    """Extract the sample files only, refusing anything that could escape or explode."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = z.infolist()
            if len(members) > MAX_MEMBERS:
                raise FetchError(f"{archive}: {len(members):,} members; not a HOMUS archive")
            total = 0
            for m in members:
                name = m.filename
                if name.startswith(("/", "\\")) or ".." in PurePosixPath(name.replace("\\", "/")).parts \
                        or re.match(r"^[A-Za-z]:", name):
                    raise FetchError(f"{archive}: member {name!r} would escape the destination; refusing")
                if stat.S_ISLNK(m.external_attr >> 16):
                    raise FetchError(f"{archive}: member {name!r} is a symbolic link; refusing")
                if m.flag_bits & 0x1:
                    raise FetchError(f"{archive}: member {name!r} is encrypted; HOMUS archives are not: "
                                     "use the official zip or a folder")
                total += m.file_size
                if m.file_size > MAX_MEMBER_BYTES or total > MAX_TOTAL_BYTES or (
                        m.compress_size and m.file_size / m.compress_size > MAX_RATIO and m.file_size > 2**20):
                    raise FetchError(f"{archive}: member {name!r} is absurdly large ({m.file_size:,} "
                                     "bytes uncompressed); refusing")
            seen: dict[str, str] = {}
            for m in members:
                rel = None if m.is_dir() else _member_target(m.filename)
                if rel is None:
                    continue
                if rel in seen:  # two copies of one sample (two releases in one zip?): which is meant?
                    raise FetchError(f"{archive}: members {seen[rel]!r} and {m.filename!r} are both sample {rel}; "
                                     "an archive must hold one copy of HOMUS")
                seen[rel] = m.filename
                target = dest / rel
                target.parent.mkdir(exist_ok=True)
                with z.open(m) as src, open(target, "wb") as out:
                    data = src.read(MAX_MEMBER_BYTES + 1)
                    if len(data) > MAX_MEMBER_BYTES:
                        raise FetchError(f"{archive}: member {m.filename!r} inflates beyond its size")
                    out.write(data)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as e:
        raise FetchError(f"{archive}: not a readable zip archive ({e}); truncated download?") from e
    except (zipfile.error, ValueError, NotImplementedError) as e:  # CRC errors, bad compression
        raise FetchError(f"{archive}: damaged archive ({e})") from e


def _copy_folder(src: Path, dest: Path) -> None:
    """Copy sample files from a folder laid out as ``[HOMUS/]<writer>/<writer>-<n>.txt``."""
    seen: dict[str, Path] = {}
    for path in sorted(src.rglob("*.txt")):
        rel = _member_target(path.relative_to(src).as_posix())
        if rel is None or path.is_symlink():
            continue
        if not path.is_file():
            raise FetchError(f"{path}: not a regular file (a pipe, a device, a folder?); HOMUS samples are text files")
        if rel in seen:
            raise FetchError(f"{seen[rel]} and {path} are both sample {rel}; a source folder must hold one "
                             "copy of HOMUS")
        seen[rel] = path
        (dest / rel).parent.mkdir(exist_ok=True)
        shutil.copyfile(path, dest / rel)
    if not seen:
        raise FetchError(f"{src}: no HOMUS files <writer>/<writer>-<n>.txt in this folder")


def _check(staging: Path, version: str, source: str) -> tuple[FetchReport, StrokeIndex]:
    """Read every stroke file once: hash it and parse it. Returns the report and the stroke index
    of the files that parse."""
    files = list_stroke_files(staging)
    if not files:
        raise FetchError(f"{source}: holds no HOMUS files <writer>/<writer>-<n>.txt")
    stats = file_stats(staging, files)  # before reading: a later change shows as a changed file
    labels, writers, invalid, digests = set(), set(), [], {}
    good, good_labels, symbols = [], [], []
    for i, rel in enumerate(files):
        writers.add(rel.split("/")[0])
        data = (staging / rel).read_bytes()
        digests[rel] = file_digest(data)
        try:
            sample = parse_bytes(data, staging / rel)
        except StrokeFileError as e:
            invalid.append(str(e).replace(str(staging) + os.sep, ""))
            continue
        labels.add(sample.label)
        good.append(i)
        good_labels.append(sample.label)
        symbols.append(sample.strokes)
    if not good:
        raise FetchError(f"{source}: none of its {len(files):,} stroke files can be read, e.g. {invalid[0]}; "
                         "not a HOMUS dataset")
    index = StrokeIndex.of([files[i] for i in good], [stats[i] for i in good], [digests[files[i]] for i in good],
                           good_labels, Packed.of(symbols))
    return FetchReport(staging, version, source, len(files), len(writers), len(labels), invalid,
                       content_hash(digests)), index


def _move_into_place(staging: Path, raw_dir: Path, report: FetchReport) -> None:
    """Move the checked writers into ``raw_dir``; ``homus.json`` last. Should that fail (a full
    disk), the writers moved so far are taken out again."""
    marker = raw_dir / FETCH_IN_PROGRESS
    marker.touch()
    try:
        for writer in sorted(p for p in staging.iterdir()):
            os.replace(writer, raw_dir / writer.name)
        write_json(raw_dir / DATASET_INFO, {
            "version": report.version, "source": report.source, "sha256": report.sha256,
            "samples": report.samples, "writers": report.writers, "labels": report.labels,
            "invalid": report.invalid})
    except BaseException:
        for p in raw_dir.iterdir():  # the folder held no writers before (checked at the start)
            if p.is_dir() and p.name.isdigit():
                shutil.rmtree(p, ignore_errors=True)
        (raw_dir / DATASET_INFO).unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        raise
    marker.unlink()
