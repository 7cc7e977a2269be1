"""Render whole variant folders from a raw dataset folder, in parallel, atomically, reproducibly.

Layout of one variant ``<rendered>/<name>/``: ``<Label>/<writer>-<n>.png`` (torchvision
ImageFolder), ``manifest.csv`` (``path,label,writer,sample``), ``variant.json`` (settings, dataset
identity, versions), ``preview.png`` and, when samples were skipped, ``skipped.csv``.
A variant is rendered into a hidden staging folder and renamed into place only when complete,
and ``variant.json`` is written last: a folder that has one is whole.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from . import __version__
from .atomic import is_stale, write_bytes, write_json
from .dataset import (
    Stat,
    content_hash,
    file_digest,
    file_stats,
    fingerprint,
    list_stroke_files,
    natural_key,
    no_files,
    read_info,
)
from .errors import HomusError, SettingsError, check_writable_dir, not_a_folder, user_os_error
from .index import StrokeIndex, read_index, write_index
from .labels import LABELS
from .lock import writing
from .preview import grid
from .render import RenderSettings, render_packed
from .strokes import Packed, StrokeFileError, parse_bytes, sample_identity
from .workers import pool

#: Bump when the renderer's pixels change, so that existing variants are rendered again.
RENDERER_VERSION = 2
VARIANT_INFO = "variant.json"
MANIFEST = "manifest.csv"
SKIPPED = "skipped.csv"
PREVIEW = "preview.png"
PREVIEW_PER_CLASS = 8
# No row filter and run-length zlib: the fastest and smallest PNGs for line art, measured here.
_PNG = [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


class RenderError(HomusError, RuntimeError):
    """The raw data cannot be rendered as asked; the message lists every bad file."""


@dataclass
class VariantResult:
    path: Path
    settings: RenderSettings
    status: str  # "rendered" or "up to date"
    n_images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Chunk:
    rows: list[tuple[str, str, str, str]]  # (relative png path, label, writer, sample) per sample
    errors: list[tuple[str, str]]  # (raw file, reason)
    digests: dict[str, str]
    parsed: tuple[list[str], list[str], Packed] | None = None  # (files, labels, strokes) newly parsed


#: Images a worker holds in memory at once (drawn, then encoded and written): bounded by pixels.
_IMAGE_PIXELS = 1 << 22


def _render_chunk(raw_dir: str, files: Sequence[str], targets: Sequence[tuple[RenderSettings, str]],
                  known: tuple[list[str], Packed] | None = None, keep: bool = False) -> _Chunk:
    """Worker: render ``files`` into every target staging folder, drawing many samples at once
    (in a :func:`~homus_render.workers.pool` process, which ends with its parent). ``known`` holds the files' labels and
    strokes from the stroke index; without it each file is read, hashed and parsed, and ``keep``
    returns what was parsed, for the index."""
    cv2.setNumThreads(1)  # the parallelism is ours: one OpenCV thread per worker process
    out = _Chunk([], [], {})
    if known is None:
        names, labels, symbols = [], [], []
        for rel in files:
            path = os.path.join(raw_dir, rel)
            try:
                data = _read(path)
                out.digests[rel] = file_digest(data)
                sample = parse_bytes(data, path)
            except (StrokeFileError, OSError) as e:
                out.errors.append((rel, str(e)))
                continue
            names.append(rel)
            labels.append(sample.label)
            symbols.append(sample.strokes)
        packed = Packed.of(symbols)
        if keep:
            out.parsed = (names, labels, packed)
    else:
        (labels, packed), names = known, list(files)
    ids = [sample_identity(rel) for rel in names]
    pngs = [f"{label}/{sid}.png" for label, (sid, _) in zip(labels, ids, strict=True)]
    out.rows = [(png, label, writer, sid) for png, label, (sid, writer) in zip(pngs, labels, ids, strict=True)]
    for settings, staging in targets:
        step = max(1, _IMAGE_PIXELS // (settings.width * settings.height))
        for a in range(0, len(names), step):
            images = render_packed(packed.slice(a, min(a + step, len(names))), settings)
            for png_rel, image in zip(pngs[a:a + step], images, strict=True):
                ok, png = cv2.imencode(".png", image, _PNG)
                if not ok:
                    raise RenderError(f"{png_rel}: OpenCV could not encode the image as PNG")
                _write_new(os.path.join(staging, png_rel), png)
    return out


def _read(path: str) -> bytes:
    """A whole (small) file with plain system calls: no buffered file object per file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        parts = [os.read(fd, 1 << 16)]
        while len(parts[-1]) == 1 << 16:
            parts.append(os.read(fd, 1 << 16))
        return b"".join(parts)
    finally:
        os.close(fd)


def _write_new(path: str, data) -> None:
    """Plain write into the private staging folder: the folder as a whole appears atomically. A
    full disk is reported naming the file (a failed ``write`` names none)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data).cast("B")
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    except OSError as e:
        raise user_os_error(e, path) or e from None


def read_variant_info(folder: str | Path) -> dict:
    """A variant folder's ``variant.json``: its render settings, dataset and renderer. Written last,
    so a folder without a readable one is not a finished variant (ValueError naming the folder)."""
    path = Path(folder) / VARIANT_INFO
    try:
        info = json.loads(path.read_text())
        if not isinstance(info, dict) or not isinstance(info.get("settings"), dict):
            raise ValueError("it records no settings")
    except (OSError, ValueError) as e:
        raise ValueError(f"{folder}: not a rendered variant (no readable {VARIANT_INFO}: {e}); "
                         "run `homus render` first") from None
    return info


def _is_up_to_date(vdir: Path, settings: RenderSettings, fp: str, skip_invalid: bool) -> bool:
    """Same settings, raw files and renderer; a variant that skipped bad files counts only when
    skipping is asked for again (else the run must stop and list them)."""
    try:
        info = read_variant_info(vdir)
    except ValueError:
        return False
    return (info.get("settings") == settings.to_dict() and info.get("raw_fingerprint") == fp
            and info.get("renderer_version") == RENDERER_VERSION and (skip_invalid or not info.get("skipped"))
            and _count_pngs(vdir) == info.get("images"))


def _count_pngs(vdir: Path) -> int:
    """The images in a variant's class folders: a variant that lost some is rendered again rather
    than called up to date (one directory listing per class; contents are not read)."""
    try:
        return sum(1 for d in os.scandir(vdir) if d.is_dir() and not d.name.startswith(".")
                   for f in os.scandir(d.path) if f.name.endswith(".png") and not f.name.startswith("."))
    except OSError:
        return -1


def _spans(n: int, jobs: int) -> list[tuple[int, int]]:
    """``[a, b)`` ranges that cut ``n`` items into about ``jobs * 8`` chunks: enough to even out
    the workers, few enough that dispatch stays cheap."""
    size = -(-n // max(1, min(n, jobs * 8))) if n else 1
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _csv(header: Sequence[str], rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def _preview(staging: Path, rows: list[tuple[str, str, str, str]]) -> bytes:
    by_label: dict[str, list[str]] = {}
    for rel, label, _, _ in rows:
        if len(by_label.setdefault(label, [])) < PREVIEW_PER_CLASS:
            by_label[label].append(rel)
    sheet = grid([(label, [cv2.imread(str(staging / r), cv2.IMREAD_GRAYSCALE) for r in by_label[label]])
                  for label in LABELS if label in by_label])
    ok, png = cv2.imencode(".png", sheet)
    if not ok:
        raise RuntimeError("OpenCV could not encode the preview sheet as PNG")
    return png.tobytes()


def _swap_into_place(staging: Path, final: Path) -> None:
    """Rename the finished staging folder over ``final``, keeping the old one until the end."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def _clear_leftovers(rendered_dir: Path, name: str) -> None:
    """Staging folders of a run that was killed are never trusted: remove them (but not those of
    a render still running in another process)."""
    for p in rendered_dir.glob(f".{name}.*"):
        if p.is_dir() and is_stale(p.name):
            shutil.rmtree(p, ignore_errors=True)


def render_variants(raw_dir: str | Path, rendered_dir: str | Path, variants: Sequence[RenderSettings], *,
                    jobs: int = -1, force: bool = False, skip_invalid: bool = False, writers: set[str] | None = None,
                    extra: Sequence[str | Path] = (), progress: Callable[[int], None] | None = None,
                    log: Callable[[str], None] = lambda msg: None) -> list[VariantResult]:
    """Render every stroke file of ``raw_dir`` with each of ``variants`` into ``rendered_dir``.

    Up-to-date variants are skipped unless ``force``. A bad sample stops the run before any
    variant is put in place (:class:`RenderError` lists every bad file), unless ``skip_invalid``,
    which renders the rest and records the bad ones in ``skipped.csv``. ``writers`` limits the
    run to those writers' samples; ``extra`` adds folders of collected samples as more writers.
    ``progress(n)`` is called with the number of samples just finished.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs == 0:
        raise SettingsError(f"jobs {jobs!r}: give a number of worker processes, or -1 for all cores")
    raw_dir, rendered_dir = Path(raw_dir), Path(rendered_dir)
    files = list_stroke_files(raw_dir, writers, extra)
    if not files:
        raise RenderError(no_files(raw_dir, writers))
    try:
        stats = file_stats(raw_dir, files)
    except OSError as e:
        raise user_os_error(e) or e from None
    fp = fingerprint(raw_dir, files, stats)
    results, todo = [], []
    for s in dict.fromkeys(variants):  # the same settings twice are rendered once
        vdir = rendered_dir / s.name
        if not force and _is_up_to_date(vdir, s, fp, skip_invalid):
            results.append(VariantResult(vdir, s, "up to date", _count_images(vdir), _read_skipped(vdir)))
            log(f"{vdir}: up to date, skipped")
        else:
            todo.append(s)
    if not todo:
        return results

    for s in todo:  # a file where a variant's folder goes is the user's: never replaced
        if (rendered_dir / s.name).exists() and not (rendered_dir / s.name).is_dir():
            raise not_a_folder(rendered_dir / s.name)
    check_writable_dir(rendered_dir)
    with contextlib.ExitStack() as locks:
        for s in todo:  # one writer per variant: a second render of it fails at once, naming the first
            locks.enter_context(writing(rendered_dir / s.name, "render into another --rendered-dir"))
        for s in list(todo):  # the holder before us may have just rendered it
            vdir = rendered_dir / s.name
            if not force and _is_up_to_date(vdir, s, fp, skip_invalid):
                todo.remove(s)
                results.append(VariantResult(vdir, s, "up to date", _count_images(vdir), _read_skipped(vdir)))
                log(f"{vdir}: up to date, skipped")
        if todo:
            _render_todo(raw_dir, rendered_dir, files, stats, fp, todo, jobs, skip_invalid, progress, log, results,
                         whole=writers is None and not extra, extra=extra, use_index=not force)
    return results


def _render_todo(raw_dir: Path, rendered_dir: Path, files: list[str], stats: list[Stat], fp: str,
                 todo: list[RenderSettings], jobs: int, skip_invalid: bool, progress, log, results: list[VariantResult],
                 whole: bool, extra: Sequence[str | Path] = (), use_index: bool = True) -> None:
    """Render ``todo`` (whose locks are held) into staging folders and swap each into place; the
    staging folders are removed on every exit path. Files the stroke index holds unchanged are not
    parsed again; when ``files`` are the whole raw folder (``whole``) and some had to be parsed,
    the index is written anew."""
    from joblib import delayed, effective_n_jobs

    staging, outputs = {}, None
    jobs = effective_n_jobs(jobs)
    index = read_index(raw_dir) if use_index else None  # --force reads every file again
    where = index.lookup(files, stats) if index else [None] * len(files)
    hits = index.take([p for p in where if p is not None]) if index else StrokeIndex.empty()
    misses = [rel for rel, p in zip(files, where, strict=True) if p is None]
    log(f"rendering {len(files):,} samples into {len(todo)} variant(s) with {jobs} worker(s)"
        + (f" ({len(hits.files):,} from the stroke index)" if hits.files else ""))
    rows, errors, digests, parsed = [], [], dict(zip(hits.files, hits.digests, strict=True)), []
    try:
        for s in todo:
            _clear_leftovers(rendered_dir, s.name)
            staging[s] = rendered_dir / f".{s.name}.partial-{os.getpid()}"
            for label in LABELS:
                (staging[s] / label).mkdir(parents=True)
        targets = [(s, str(staging[s])) for s in todo]
        tasks = [delayed(_render_chunk)(str(raw_dir), c, targets, keep=whole)
                 for c in (misses[a:b] for a, b in _spans(len(misses), jobs))]
        if hits.files:
            tasks += [delayed(_render_chunk)(str(raw_dir), hits.files[a:b], targets,
                                             known=(hits.labels[a:b], hits.packed.slice(a, b)))
                      for a, b in _spans(len(hits.files), jobs)]
        if jobs > 1:
            # strokes go to the workers pickled: no temporary memory-mapped files to create and delete
            outputs = pool(jobs, return_as="generator_unordered", max_nbytes=None)(tasks)
        else:
            outputs = (f(*args, **kwargs) for f, args, kwargs in tasks)
        for chunk in outputs:
            rows += chunk.rows
            errors += chunk.errors
            digests.update(chunk.digests)
            if chunk.parsed and chunk.parsed[0]:
                parsed.append(chunk.parsed)
            if progress:
                progress(len(chunk.rows) + len(chunk.errors))
        errors.sort(key=lambda e: natural_key(e[0]))
        if parsed:  # the files that parsed are worth keeping even when others stop the render
            _update_index(raw_dir, files, stats, digests, hits, parsed, log)
        if errors and not skip_invalid:
            listing = "\n".join(f"  {reason}" for _, reason in errors)
            raise RenderError(f"{len(errors)} bad stroke file(s); nothing was written "
                              f"(fix them, or pass --skip-invalid to render the rest):\n{listing}")
        if not rows:
            raise RenderError(f"{raw_dir}: every stroke file is bad; nothing to render")
        rows.sort(key=lambda r: natural_key(r[3]))
        info = read_info(raw_dir)
        dataset = {"version": info.get("version", "unknown"), "source": info.get("source"),
                   "sha256": content_hash(digests), "samples": len(rows),
                   "writers": len({r[2] for r in rows}), "labels": len({r[1] for r in rows})}
        for s in todo:
            st = staging[s]
            write_bytes(st / MANIFEST, _csv(("path", "label", "writer", "sample"), rows))
            if errors:
                write_bytes(st / SKIPPED, _csv(("file", "reason"), errors))
            write_bytes(st / PREVIEW, _preview(st, rows))
            write_json(st / VARIANT_INFO, {
                "name": s.name, "settings": s.to_dict(), "dataset": dataset,
                "raw_dir": str(raw_dir), "extra_raw": [str(e) for e in extra], "raw_fingerprint": fp,
                "homus_version": __version__,
                "renderer_version": RENDERER_VERSION, "images": len(rows), "skipped": len(errors)})
            try:  # a variant of other writers or data is replaced: said, so no one trains on it unawares
                before = _count_images(rendered_dir / s.name)
            except (OSError, ValueError):
                before = None
            _swap_into_place(st, rendered_dir / s.name)
            status = "rendered" if before in (None, len(rows)) else f"rendered; it held {before:,} images before"
            results.append(VariantResult(rendered_dir / s.name, s, status, len(rows), errors))
    except OSError as e:
        raise user_os_error(e) or e from None
    finally:
        if hasattr(outputs, "close"):  # stop joblib's workers before their staging folders go
            outputs.close()
        for st in staging.values():
            shutil.rmtree(st, ignore_errors=True)


def _update_index(raw_dir: Path, files: list[str], stats: list[Stat], digests: dict[str, str], hits: StrokeIndex,
                  parsed: list[tuple[list[str], list[str], Packed]], log) -> None:
    """Write the stroke index of ``files``: the entries still valid and those just parsed (files
    that failed to parse stay out). The index is a cache: should writing it fail, the render
    goes on and the files are parsed again next time."""
    stat_of = dict(zip(files, stats, strict=True))
    parts = [hits] + [StrokeIndex.of(names, [stat_of[r] for r in names], [digests[r] for r in names], labels, packed)
                      for names, labels, packed in parsed]
    merged = StrokeIndex.concat(parts)
    order = {rel: i for i, rel in enumerate(files)}
    try:
        merged = merged.take(sorted(range(len(merged.files)), key=lambda i: order[merged.files[i]]))
        write_index(raw_dir, merged)
    except Exception as e:  # a cache never fails the render it speeds up
        log(f"stroke index not written (files are parsed again next time): {e}")


def _count_images(vdir: Path) -> int:
    with open(vdir / MANIFEST) as f:
        return sum(1 for _ in f) - 1


def _read_skipped(vdir: Path) -> list[tuple[str, str]]:
    path = vdir / SKIPPED
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [(r["file"], r["reason"]) for r in csv.DictReader(f)]

