"""Benchmark: HOMUS strokes to PNG folders, homus vs omrdatasettools, plus the in-memory rate.

What it measures, all in one process run, each PNG run starting from an empty output folder:

* omrdatasettools ``HomusImageGenerator.create_images`` (the peer; single process, PIL);
* homus ``render_variants`` with all cores, and with one process for reference, reading the
  stroke index that ``fetch`` wrote; and with all cores and no index (each run parses every file);
* homus drawing in memory (no disk): ``render_packed`` (what ``render_variants`` draws with) in one
  process and on all cores with joblib, and ``render`` sample by sample in one process;
* a floor: PNG-encoding already rendered arrays and writing the 15,200 files, one process.

The raw set is fetched once into ``<workdir>/raw`` (not timed); deleting outputs between runs is
not timed either. With ``--repeats N`` every figure is the best (shortest) of N runs. Targets
(from the issues): PNG output with 2 workers >= 6x faster than omrdatasettools on a RAM disk, at most 20 %
of a one-process render outside drawing, PNG encoding and creating files, >= 10,000 images/s in memory.
``--disks /dev/shm ..`` repeats everything once per disk (a RAM disk and the project's disk).

Run (needs the ``bench`` extra, i.e. omrdatasettools)::

    cd /work/main && .venv/bin/python benchmarks/render_bench.py [--repeats 2] [--jobs -1] [--disks /dev/shm ..]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import os
import pickle
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np
from joblib import Parallel, delayed, effective_n_jobs

from homus_render.dataset import list_stroke_files
from homus_render.fetch import fetch
from homus_render.index import INDEX
from homus_render.labels import LABELS
from homus_render.render import RenderSettings, render, render_packed
from homus_render.strokes import Packed, parse_file
from homus_render.variants import _IMAGE_PIXELS, _PNG, _spans, render_variants

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared/datasets/HOMUS-v2.zip"
TARGET_SPEEDUP = 6.0  # homus PNG output with 2 workers vs omrdatasettools, on a RAM disk
TARGET_OVERHEAD = 0.20  # of a one-process render: time outside drawing, PNG encoding and creating files
TARGET_IN_MEMORY = 10_000  # images/s

Strokes = Sequence[np.ndarray]


@dataclass
class Timing:
    """One benchmarked task: its wall times over the repeats and how many images each run made."""

    name: str
    seconds: list[float]
    images: int
    png_bytes: int | None = None  # total size of the PNGs written, when it wrote PNGs

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def rate(self) -> float:
        return self.images / self.best


# --- runs that write PNG folders -------------------------------------------------------------

def count_pngs(folder: Path) -> tuple[int, int]:
    """Number and total bytes of the PNGs in ``folder``'s class subfolders (not e.g. preview.png)."""
    sizes = [p.stat().st_size for p in folder.glob("*/*.png")]
    return len(sizes), sum(sizes)


def time_png_runs(name: str, workdir: Path, repeats: int, run: Callable[[Path], Path],
                  before: Callable[[], None] = lambda: None) -> Timing:
    """Time ``run(empty_folder) -> folder_with_class_subfolders`` ``repeats`` times, each from scratch
    and after ``before()`` (untimed)."""
    seconds, count, size = [], 0, 0
    for i in range(repeats):
        out = workdir / f"out-{name.split()[0]}-{i}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        before()
        start = time.perf_counter()
        images_dir = run(out)
        seconds.append(time.perf_counter() - start)
        count, size = count_pngs(images_dir)
        shutil.rmtree(out)
    return Timing(name, seconds, count, size)


def run_omr(raw: Path, settings: RenderSettings) -> Callable[[Path], Path]:
    from omrdatasettools.HomusImageGenerator import HomusImageGenerator

    def run(out: Path) -> Path:
        # create_images prints two lines and a tqdm bar: silence both, inside the timed block
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null), contextlib.redirect_stdout(null):
            HomusImageGenerator.create_images(raw_data_directory=str(raw), destination_directory=str(out),
                                              stroke_thicknesses=[settings.thickness],
                                              canvas_width=settings.width, canvas_height=settings.height)
        return out
    return run


def run_homus(raw: Path, settings: RenderSettings, jobs: int) -> Callable[[Path], Path]:
    def run(out: Path) -> Path:
        [result] = render_variants(raw, out, [settings], jobs=jobs)  # a fresh folder: nothing is up to date
        return result.path
    return run


def time_png_floor(images: list[tuple[str, np.ndarray]], workdir: Path, repeats: int) -> tuple[Timing, Timing]:
    """PNG-encode already rendered arrays (as homus does) and create their files, one process.

    Returns (encode only, encode + create files); the second is the floor for writing PNG folders.
    """
    cv2.setNumThreads(1)
    encode_s, total_s, size = [], [], 0
    for i in range(repeats):
        out = workdir / f"out-floor-{i}"
        for label in LABELS:
            (out / label).mkdir(parents=True)
        start = time.perf_counter()
        encoded = [(rel, cv2.imencode(".png", img, _PNG)[1]) for rel, img in images]
        encode_s.append(time.perf_counter() - start)
        for rel, png in encoded:
            fd = os.open(out / rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, png)
            finally:
                os.close(fd)
        total_s.append(time.perf_counter() - start)
        size = count_pngs(out)[1]
        shutil.rmtree(out)
    return (Timing("PNG encode only", encode_s, len(images)),
            Timing("PNG encode + create files", total_s, len(images), size))


# --- in-memory rendering ---------------------------------------------------------------------

def time_in_memory(strokes: list[Strokes], settings: RenderSettings, jobs: int,
                   repeats: int) -> tuple[Timing, Timing, list[np.ndarray]]:
    """Drawing in this process: ``render_packed`` over the chunks ``render_variants`` gives its
    ``jobs`` workers, in the groups a worker draws at once, and ``render`` sample by sample.
    Returns both timings and the images."""
    cv2.setNumThreads(1)  # as in homus' workers: one OpenCV thread per process
    step = max(1, _IMAGE_PIXELS // (settings.width * settings.height))
    groups = [Packed.of(strokes[i:min(i + step, b)]) for a, b in _spans(len(strokes), jobs) for i in range(a, b, step)]
    many_s, one_s, images = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        images = [img for g in groups for img in render_packed(g, settings)]
        many_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        for s in strokes:
            render(s, settings)
        one_s.append(time.perf_counter() - start)
    return (Timing("homus render_packed, in memory, 1 process", many_s, len(strokes)),
            Timing("homus render per sample, in memory, 1 process", one_s, len(strokes)), images)


def _render_count(packed: Packed, settings: RenderSettings) -> int:
    """Worker: draw a chunk, return only the count."""
    cv2.setNumThreads(1)
    return len(render_packed(packed, settings))


def time_in_memory_parallel(strokes: list[Strokes], settings: RenderSettings, jobs: int, repeats: int) -> Timing:
    """``render_packed``, one chunk per worker; the time includes packing and sending the strokes."""
    size = -(-len(strokes) // jobs)
    seconds, count = [], 0
    with Parallel(n_jobs=jobs, max_nbytes=None) as parallel:
        parallel(delayed(_render_count)(Packed.of(strokes[:jobs]), settings) for _ in range(jobs))  # start workers
        for _ in range(repeats):
            start = time.perf_counter()
            chunks = [Packed.of(strokes[i:i + size]) for i in range(0, len(strokes), size)]
            count = sum(parallel(delayed(_render_count)(c, settings) for c in chunks))
            seconds.append(time.perf_counter() - start)
    return Timing(f"homus render_packed, in memory, {jobs} processes", seconds, count)


def pickle_seconds(strokes: list[Strokes]) -> tuple[float, int]:
    """Seconds and bytes to pickle all strokes once: the parent's share of the parallel dispatch."""
    start = time.perf_counter()
    size = len(pickle.dumps(strokes, protocol=pickle.HIGHEST_PROTOCOL))
    return time.perf_counter() - start, size


def omr_in_memory_note() -> str:
    """omrdatasettools' drawing can only be timed in memory if it can draw without a file path."""
    from omrdatasettools.HomusImageGenerator import HomusSymbol

    needs_path = [name for name in ("draw_into_bitmap", "draw_onto_canvas")
                  if "export_path" in inspect.signature(getattr(HomusSymbol, name)).parameters]
    if needs_path:
        return (f"omrdatasettools in memory: skipped; HomusSymbol.{' and .'.join(needs_path)} take an "
                "export_path and always save a PNG file, so there is no in-memory draw to time")
    return "omrdatasettools in memory: HomusSymbol can draw without a file path; not timed by this script"


# --- report ----------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def machine() -> str:
    return (f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, "
            f"OpenCV {cv2.__version__}, NumPy {np.__version__}, omrdatasettools {version('omrdatasettools')}, "
            f"Pillow {version('Pillow')}, joblib {version('joblib')}; {datetime.date.today().isoformat()}")


def markdown(rows: list[Timing], omr: Timing, settings: RenderSettings, repeats: int) -> str:
    lines = [f"HOMUS v2, {omr.images:,} images of {settings.width}x{settings.height} px, "
             f"stroke {settings.thickness} px; best of {repeats} run(s).", "",
             "| task | seconds | images/s | vs omrdatasettools | PNG MB |",
             "|---|---:|---:|---:|---:|"]
    for t in rows:
        mb = "" if t.png_bytes is None else f"{t.png_bytes / 1e6:.1f}"
        lines.append(f"| {t.name} | {t.best:.2f} | {t.rate:,.0f} | {omr.best / t.best:.1f}x | {mb} |")
    lines += ["", f"Machine: {machine()}"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=os.environ.get("HOMUS_SOURCE") or str(DEFAULT_SOURCE),
                   help="HOMUS zip, folder or URL (default: $HOMUS_SOURCE or %(default)s)")
    p.add_argument("--thickness", type=int, default=3)
    p.add_argument("--size", type=int, default=96, help="square canvas side in pixels")
    p.add_argument("--jobs", type=int, default=-1, help="worker processes for homus (-1: all cores)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each task; the best one is reported")
    p.add_argument("--workdir", type=Path, default=None,
                   help="folder for the raw set and outputs (default: a fresh temporary folder beside the "
                        "repository, removed at the end; a given folder is kept, only its outputs are removed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    p.add_argument("--disks", type=Path, nargs="+", default=None,
                   help="run everything once per folder, each on its own disk: e.g. /dev/shm (a RAM disk) and "
                        "the project's disk (default: --workdir, else beside the repository)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def make_workdir(given: Path | None) -> tuple[Path, bool]:
    """The work folder and whether this script created it (and so may remove it)."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        return given, False
    parent = REPO.parent if os.access(REPO.parent, os.W_OK) else Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix="homus-bench-", dir=parent)), True


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.disks:
        return run_on_disk(args)
    for disk in args.disks:
        disk.mkdir(parents=True, exist_ok=True)
        print(f"=== {disk} ({'RAM disk' if _is_ram_disk(disk) else 'disk'}) ===")
        run_on_disk(argparse.Namespace(**{**vars(args), "workdir": None}), Path(tempfile.mkdtemp(prefix="homus-bench-",
                                                                                                dir=disk)))
        print()


def _is_ram_disk(folder: Path) -> bool:
    """Whether ``folder`` lies on a tmpfs (from /proc/mounts; False where that cannot be read)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return False
    best = max((m for m in mounts if str(folder.resolve()).startswith(m[1])), key=lambda m: len(m[1]), default=None)
    return bool(best) and best[2] == "tmpfs"


def run_on_disk(args: argparse.Namespace, workdir: Path | None = None) -> None:
    """Every figure once, with outputs in ``workdir`` (created, and removed at the end) or as
    ``args`` says."""
    settings = RenderSettings(thickness=args.thickness, width=args.size, height=args.size)
    jobs = effective_n_jobs(args.jobs)
    workdir, created = (workdir, True) if workdir is not None else make_workdir(args.workdir)
    try:
        raw = workdir / "raw"
        report = fetch(raw, source=args.source)
        print(f"raw set: {report.summary().splitlines()[0]}")
        files = list_stroke_files(raw)
        print(f"settings: {settings.name} ({settings}); homus jobs={jobs}; repeats={args.repeats}; work in {workdir}")
        print()

        omr = time_png_runs("omrdatasettools create_images (PNG, 1 process)", workdir, args.repeats,
                            run_omr(raw, settings))
        homus = time_png_runs(f"homus render_variants (PNG, jobs={jobs})", workdir, args.repeats,
                              run_homus(raw, settings, jobs))
        homus1 = time_png_runs("homus render_variants (PNG, jobs=1)", workdir, args.repeats,
                               run_homus(raw, settings, 1))
        # without the stroke index: each run reads and parses every file (and writes the index anew)
        cold = time_png_runs(f"homus render_variants, no index (PNG, jobs={jobs})", workdir, args.repeats,
                             run_homus(raw, settings, jobs), before=lambda: (raw / INDEX).unlink(missing_ok=True))

        samples = [parse_file(raw / rel) for rel in files]  # not timed
        strokes = [s.strokes for s in samples]
        mem1, single, images = time_in_memory(strokes, settings, jobs, args.repeats)
        memn = time_in_memory_parallel(strokes, settings, jobs, args.repeats)
        rendered = [(f"{s.label}/{s.id}.png", img) for s, img in zip(samples, images, strict=True)]
        encode, floor = time_png_floor(rendered, workdir, args.repeats)

        rows = [omr, homus, homus1, cold, mem1, single, memn, encode, floor]
        for t in rows:
            runs = ", ".join(f"{s:.2f}" for s in t.seconds)
            mb = "" if t.png_bytes is None else f", {t.png_bytes / 1e6:.1f} MB of PNG"
            print(f"{t.name:<45} {t.best:7.2f} s  {t.rate:9,.0f} images/s  ({t.images:,} images{mb}; runs: {runs})")
        pickle_s, pickle_bytes = pickle_seconds(strokes)
        print(f"dispatch: pickling the strokes of all samples alone takes {pickle_s:.2f} s "
              f"({pickle_bytes / 1e6:.0f} MB), included in the {jobs}-process in-memory time")
        print(omr_in_memory_note())
        print(f"PNGs written: omrdatasettools {omr.images:,}, homus jobs={jobs} {homus.images:,}, "
              f"homus jobs=1 {homus1.images:,} (expected {len(files):,})")
        print(f"floor: of homus' {homus1.best:.2f} s in one process, {encode.best:.2f} s is PNG encoding and "
              f"{floor.best - encode.best:.2f} s creating the files ({floor.best / homus1.best:.0%} together)")
        overhead = homus1.best - mem1.best - floor.best
        print(f"stages of homus' one-process render: drawing {mem1.best:.2f} s, PNG encoding {encode.best:.2f} s, "
              f"creating files {floor.best - encode.best:.2f} s, the rest (reading, hashing, parsing, staging, "
              f"dispatch) {overhead:.2f} s = {overhead / homus1.best:.0%} "
              f"-> {verdict(overhead / homus1.best <= TARGET_OVERHEAD)} (target <= {TARGET_OVERHEAD:.0%})")
        print()

        speedup, speedup1 = omr.best / homus.best, omr.best / homus1.best
        print(f"homus PNG output is {speedup:.1f}x faster than omrdatasettools "
              f"({jobs} processes; {speedup1:.1f}x in one process; {omr.best / cold.best:.1f}x with {jobs} processes "
              "when every file is parsed, as on the first render after raw files change)")
        print(f"target PNG output >= {TARGET_SPEEDUP:.0f}x omrdatasettools: {speedup:.1f}x with {jobs} processes "
              f"in {workdir} -> {verdict(speedup >= TARGET_SPEEDUP)}")
        print(f"target in memory >= {TARGET_IN_MEMORY:,} images/s: {memn.rate:,.0f} with {jobs} processes "
              f"-> {verdict(memn.rate >= TARGET_IN_MEMORY)}; {mem1.rate:,.0f} in one process "
              f"-> {verdict(mem1.rate >= TARGET_IN_MEMORY)}")
        print()
        print(markdown(rows, omr, settings, args.repeats))
        print()
        print(f"Command: cd {shlex.quote(str(Path.cwd()))} && {shlex.join(sys.orig_argv)}")
    finally:
        if created and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep:
            print(f"kept {workdir}")


if __name__ == "__main__":
    main()
