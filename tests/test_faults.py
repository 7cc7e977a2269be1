"""Faults a hostile but ordinary user meets: full and read-only disks, files where folders belong,
killed commands, two writers at once, duplicate samples, odd images, data that moved.

Each ends in one ``error:`` line naming the path and exit code 1 (no traceback), or in a correct
result; nothing half-made is left behind and nothing blocks the next run. The disk tests mount a
small tmpfs and run only as root; the process tests start real ``homus`` subprocesses.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import HANDMADE, sample_text, write_handmade

from classifier import checkpoint
from classifier.predict import decode_image, normalize_image, prepare
from homus.cli import main
from homus_render import atomic
from homus_render.dataset import DuplicateSampleError, list_stroke_files, load_samples
from homus_render.lock import BusyError, lock_path, writing
from homus_render.render import RenderSettings
from homus_render.workers import descendants, process_table

ROOT = Path(__file__).resolve().parents[1]
WRITERS = ("1", "2", "3", "4", "5")
TINY_TRAIN = ["--from-strokes", "--size", "32", "--epochs", "1", "--batch-size", "64", "--workers", "0",
              "--threads", "1", "--device", "cpu"]


# --- helpers ---------------------------------------------------------------------------------
def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_error(r, *names) -> str:
    """Exit 1, no traceback, exactly one ``error:`` line, which names each of ``names``."""
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), \
        f"a traceback: {r.exception!r}\n{r.output}"
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.output
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Everything under ``folder`` (relative names), hidden files included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "256k", ro: bool = False):
    """A small tmpfs at ``path`` (read-only when ``ro``); skipped where mounting is impossible."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def homus_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "homus.cli", *map(str, args)]


def start(*args, log: Path) -> subprocess.Popen:
    """``homus ARGS`` as a real process (its output into ``log``)."""
    return subprocess.Popen(homus_cmd(*args), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def run_homus(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(homus_cmd(*args), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=timeout)


def stop_and_check_workers(proc: subprocess.Popen, sig: int, workers: set[int], group: bool = False) -> None:
    """Send ``sig`` to ``proc`` (``group``: to its whole process group, workers too, as ``timeout``,
    ``docker stop`` and systemd do), wait for it, and check that ``workers`` are gone within 10 s."""
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    proc.wait(timeout=30)
    end = time.monotonic() + 10
    while alive(workers) and time.monotonic() < end:
        time.sleep(0.1)
    assert not alive(workers), f"workers outlived their parent: {alive(workers)}"


def alive(pids: set[int]) -> set[int]:
    table = process_table()
    return {p for p in pids if p in table}


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the command ended before {what}: {log.read_text() if log else ''}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


# --- data --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(raw_full, tmp_path_factory) -> Path:
    """Five writers of the real dataset (760 samples) in ``<root>/raw``."""
    root = tmp_path_factory.mktemp("faults")
    for w in WRITERS:
        shutil.copytree(raw_full / w, root / "raw" / w)
    return root


@pytest.fixture(scope="module")
def tiny_run(tiny) -> Path:
    """A one-epoch run from strokes, trained in ``tiny`` with the relative ``--raw-dir raw``."""
    old = Path.cwd()
    os.chdir(tiny)
    try:
        r = invoke("train", "--raw-dir", "raw", "--runs-dir", "runs", "--name", "base", *TINY_TRAIN)
    finally:
        os.chdir(old)
    assert r.exit_code == 0, r.output
    return tiny / "runs/base"


# --- 1. OS errors a user causes: one line naming the path ----------------------------------------
def test_a_full_disk_while_rendering(tiny, tmp_path):
    with tmpfs(tmp_path / "small") as small:
        r = invoke("render", "--raw-dir", tiny / "raw", "--rendered-dir", small / "rendered", "--size", "32",
                   "--jobs", "2")
        line = assert_one_error(r, small / "rendered")
        assert "disk is full" in line
        assert leftovers(small) == ["rendered"]  # no staging folder, no lock, no temporary


def test_a_full_disk_while_training(tiny, tmp_path):
    with tmpfs(tmp_path / "small") as small:
        r = invoke("train", "--raw-dir", tiny / "raw", "--runs-dir", small / "runs", "--name", "full", *TINY_TRAIN)
        line = assert_one_error(r, small / "runs/full")
        assert "disk is full" in line
        assert leftovers(small) == ["runs"]  # the run that never finished an epoch is gone


def test_a_full_disk_while_fetching(homus_zip, tmp_path):
    with tmpfs(tmp_path / "small") as small:
        r = invoke("fetch", "--source", homus_zip, "--raw-dir", small / "raw")
        line = assert_one_error(r, small / "raw")
        assert "disk is full" in line
        assert leftovers(small) == []


def test_read_only_folders(tiny, tiny_run, tmp_path):
    with tmpfs(tmp_path / "ro", ro=True) as ro:
        r = invoke("render", "--raw-dir", tiny / "raw", "--rendered-dir", ro / "rendered", "--size", "32")
        assert "read-only" in assert_one_error(r, ro / "rendered")
        r = invoke("train", "--raw-dir", tiny / "raw", "--runs-dir", ro / "runs", *TINY_TRAIN)
        assert "read-only" in assert_one_error(r, ro / "runs")
        r = invoke("fetch", "--source", tmp_path, "--raw-dir", ro / "raw")
        assert "read-only" in assert_one_error(r, ro / "raw")
    # evaluate writes beside the run: a run on a disk mounted read-only
    with tmpfs(tmp_path / "runs", size="200m") as runs:
        shutil.copytree(tiny_run, runs / "base")
        subprocess.run(["mount", "-o", "remount,ro", str(runs)], check=True)
        r = invoke("evaluate", runs / "base", "--device", "cpu")
        assert "read-only" in assert_one_error(r, runs / "base")


def test_a_file_where_a_folder_belongs(tiny, tiny_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = invoke("render", "--raw-dir", tiny / "raw", "--rendered-dir", blocker / "rendered", "--size", "32")
    assert_one_error(r, blocker)
    r = invoke("render", "--raw-dir", blocker, "--rendered-dir", tmp_path / "rendered", "--size", "32")
    assert r.exit_code == 2 and f"Directory '{blocker}' is a file" in r.output  # click checks this flag itself
    r = invoke("train", "--raw-dir", tiny / "raw", "--runs-dir", blocker / "runs", *TINY_TRAIN)
    assert_one_error(r, blocker)
    r = invoke("fetch", "--source", tmp_path, "--raw-dir", blocker / "raw")
    assert_one_error(r, blocker)
    r = invoke("compare", tiny_run, "--out", blocker / "report")
    assert_one_error(r, blocker)
    assert blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# --- 2. nothing half-made survives, nothing blocks a rerun ------------------------------------------
def test_atomic_writes_leave_no_temporary_and_clear_those_of_dead_processes(tmp_path):
    target = tmp_path / "x.json"

    def fail(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.write_with(target, fail)
    assert leftovers(tmp_path) == []
    dead = _dead_pid()
    (tmp_path / f".x.json.tmp-{dead}").write_text("left by a killed process")
    (tmp_path / f".x.json.tmp-{os.getppid()}").write_text("a living writer's")
    atomic.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert leftovers(tmp_path) == [f".x.json.tmp-{os.getppid()}", "x.json"]


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_leftovers_of_a_killed_render_are_cleared_by_the_next(tiny, tmp_path):
    out = tmp_path / "rendered"
    dead = _dead_pid()
    stale = out / f".t3-s32.partial-{dead}"
    (stale / "Barline").mkdir(parents=True)
    (out / ".t3-s32.lock").write_text(f"{dead}\n")  # a lock file: the OS released its lock with the process
    r = invoke("render", "--raw-dir", tiny / "raw", "--rendered-dir", out, "--size", "32", "--jobs", "1",
               "--writers", "1")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["t3-s32"]


def test_a_train_that_fails_before_its_first_epoch_leaves_no_run(tiny, tmp_path, monkeypatch):
    import classifier.train as train_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "train_one_epoch", interrupted)
    r = invoke("train", "--raw-dir", tiny / "raw", "--runs-dir", tmp_path / "runs", "--name", "x", *TINY_TRAIN)
    assert r.exit_code != 0
    assert leftovers(tmp_path / "runs") == []


def test_a_run_killed_before_its_first_checkpoint_is_replaced(tiny, tiny_run, tmp_path):
    """What a SIGKILL leaves (settings, split, data identity, no checkpoint): the same command again
    starts afresh; ``--resume`` starts it at epoch 1 and says so."""
    for how in (["--raw-dir", tiny / "raw", *TINY_TRAIN], ["--resume"]):
        runs = tmp_path / how[0].strip("-")
        run = runs / "x"
        run.mkdir(parents=True)
        for name in ("split.json", "data.json"):
            shutil.copy(tiny_run / name, run / name)
        cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())  # trained with --raw-dir raw in tiny
        (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "raw_dir": str(tiny / "raw")}))
        (run / f".last.pt.tmp-{_dead_pid()}").write_bytes(b"torn")
        if how == ["--resume"]:
            r = invoke("train", "--resume", run)
            assert "no last.pt to continue from" in r.output
        else:
            r = invoke("train", "--runs-dir", runs, "--name", "x", *how)
            assert "replacing a run that stopped before its first epoch" in r.output
        assert r.exit_code == 0, r.output
        assert (run / "metrics.json").is_file() and not list(run.glob(".*"))


@pytest.fixture(scope="module")
def half_run(tiny):
    """A two-epoch run killed right after its first checkpoint: resumable."""
    real = checkpoint.save

    def save_then_die(path, ckpt):
        real(path, ckpt)
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "save", save_then_die)
        r = invoke("train", "--raw-dir", tiny / "raw", "--runs-dir", tiny / "runs", "--name", "half",
                   *TINY_TRAIN, "--epochs", "2")
    assert r.exit_code != 0 and (tiny / "runs/half/last.pt").is_file()
    return tiny / "runs/half"


def test_resume_refuses_changed_data_and_a_foreign_checkpoint(half_run, tmp_path):
    run = tmp_path / "half"
    shutil.copytree(half_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    # the raw data changed since: the run cannot continue on it
    raw = tmp_path / "raw"
    shutil.copytree(cfg["raw_dir"], raw)
    with open(raw / "3/3-7.txt", "a") as f:
        f.write("1,1;2,2;\n")
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "raw_dir": str(raw)}))
    assert "differs, so it cannot continue" in assert_one_error(invoke("train", "--resume", run), run)
    # the settings ask for another model than last.pt holds
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "arch": "resnet34"}))
    line = assert_one_error(invoke("train", "--resume", run), run / "last.pt")
    assert "resnet18" in line and "resnet34" in line
    # a hand edit of what the saved epochs learned under: refused by name, never tested on other images
    edited = {**cfg, "render": {**cfg["render"], "thickness": 9}, "lr": 0.5}
    (run / "config.yaml").write_text(yaml.safe_dump(edited))
    line = assert_one_error(invoke("train", "--resume", run), run / "last.pt")
    assert "lr 0.05 -> 0.5" in line and "render.thickness 3 -> 9" in line and "restore config.yaml" in line
    assert not (run / "metrics.json").exists()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    # a damaged last.pt: the way out is said (delete it and resume from epoch 1), not "train again",
    # which a run folder of that name refuses
    state = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(state[:1000])
    line = assert_one_error(invoke("train", "--resume", run), run / "last.pt")
    assert f"delete it, and `homus train --resume {run}` starts the run over from epoch 1" in line
    assert "not a readable homus checkpoint" in line and "train the run again" not in line
    (run / "last.pt").write_bytes(state)
    r = invoke("train", "--resume", run)
    assert r.exit_code == 0, r.output
    assert (run / "metrics.json").is_file()
    line = assert_one_error(invoke("train", "--resume", run), run)
    assert "already complete: nothing to resume" in line and "--name" not in line


def test_resume_takes_where_flags_and_refuses_learned_ones(half_run, tmp_path):
    """``--resume`` continues a run with the settings it started with: a flag that would change what
    it learns is refused by name (never silently ignored), one that says where it trains is taken
    and recorded."""
    run = tmp_path / "half"
    shutil.copytree(half_run, run)
    before = (run / "config.yaml").read_text()
    r = invoke("train", "--resume", run, "--epochs", "5", "--stroke-rotate", "9", "--threads", "2")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "--epochs, --stroke-rotate would change what it learns" in r.output
    assert "--threads" not in r.output.split("would change")[0]
    assert (run / "config.yaml").read_text() == before and (run / "last.pt").is_file()  # untouched
    r = invoke("train", "--resume", run, "--from-images")
    assert r.exit_code == 2 and "--from-images would change what it learns" in r.output, r.output
    r = invoke("train", "--resume", run, "--name", "other")
    assert r.exit_code == 2 and "drop --runs-dir and --name" in r.output, r.output
    r = invoke("train", "--resume", run, "--threads", "2", "--workers", "1")
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (cfg["threads"], cfg["workers"], cfg["epochs"]) == (2, 1, 2)


# --- 3. killing a command kills its workers ------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_killing_a_render_kills_its_workers(raw_full, tmp_path, sig):
    out = tmp_path / "rendered"
    args = ("render", "--raw-dir", raw_full, "--rendered-dir", out, "--size", "32", "--jobs", "2")
    proc = start(*args, log=tmp_path / "log")
    # mid-way: the workers have written images into the staging folder
    wait_for(lambda: any(out.glob(".t3-s32.partial-*/*/*.png")), 120, "the first images", proc, tmp_path / "log")
    workers = wait_for(lambda: descendants(proc.pid) if len(descendants(proc.pid)) >= 2 else None, 30,
                       "the workers")
    stop_and_check_workers(proc, sig, workers)
    if sig == signal.SIGTERM:  # it cleaned up itself
        assert proc.returncode == 143 and leftovers(out) == []
    done = run_homus(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["t3-s32"]
    assert (out / "t3-s32/variant.json").is_file()


@pytest.mark.parametrize("sig,group", [(signal.SIGKILL, False), (signal.SIGTERM, False), (signal.SIGTERM, True)],
                         ids=["kill", "term", "term-group"])
def test_killing_a_train_kills_its_loader_workers(tiny, tmp_path, sig, group):
    """``term-group``: SIGTERM to the whole process group also kills the loader workers, and the
    DataLoader reported that as a RuntimeError traceback with exit code 1."""
    runs = tmp_path / "runs"
    args = ["train", "--raw-dir", tiny / "raw", "--runs-dir", runs, "--name", "k", *TINY_TRAIN]
    proc = start(*args, "--workers", "2", log=tmp_path / "log")
    workers = wait_for(lambda: descendants(proc.pid) if len(descendants(proc.pid)) >= 2 else None, 120,
                       "the loader workers", proc, tmp_path / "log")
    stop_and_check_workers(proc, sig, workers, group)
    if sig == signal.SIGTERM:
        log = (tmp_path / "log").read_text()
        assert proc.returncode == 143 and leftovers(runs) == [] and "Traceback" not in log, log
        assert "`homus train --resume RUN` continues" in log  # not a bare "run it again"
    resumable = (runs / "k/last.pt").is_file()
    done = run_homus(*(["train", "--resume", runs / "k"] if resumable else args))
    assert done.returncode == 0, done.stdout + done.stderr
    assert leftovers(runs)[0] == "k" and not [n for n in leftovers(runs) if "/." in n or n.startswith(".")]
    assert (runs / "k/metrics.json").is_file()


# --- 4. two writers at once ----------------------------------------------------------------------
def hold_lock(target: Path) -> subprocess.Popen:
    """Another process holding ``target``'s lock until its stdin closes."""
    code = ("import sys; from homus_render.lock import writing\n"
            f"with writing({str(target)!r}):\n    print('held', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_while_the_first_writes(tiny, homus_zip, tmp_path):
    cases = [
        (tmp_path / "rendered/t3-s32", ["render", "--raw-dir", tiny / "raw", "--rendered-dir", tmp_path / "rendered",
                                        "--size", "32", "--jobs", "1", "--writers", "1"]),
        (tmp_path / "runs/x", ["train", "--raw-dir", tiny / "raw", "--runs-dir", tmp_path / "runs", "--name", "x",
                               *TINY_TRAIN]),
        (tmp_path / "raw", ["fetch", "--source", homus_zip, "--raw-dir", tmp_path / "raw"]),
    ]
    for target, args in cases:
        target.parent.mkdir(parents=True, exist_ok=True)
        holder = hold_lock(target)
        try:
            done = run_homus(*args)
            assert done.returncode == 1, done.stdout + done.stderr
            errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
            assert errors == [f"error: {target} is being written by process {holder.pid}; wait for it or "
                              + errors[0].split("wait for it or ", 1)[1]], done.stderr
            assert "Traceback" not in done.stderr and not target.exists()
        finally:
            holder.stdin.close()
            holder.wait()
        done = run_homus(*args)  # the holder is gone: the same command now succeeds
        assert done.returncode == 0, done.stdout + done.stderr
        assert not lock_path(target).exists()


def test_two_renders_of_one_variant_at_once(raw_full, tmp_path):
    out = tmp_path / "rendered"
    args = ("render", "--raw-dir", raw_full, "--rendered-dir", out, "--size", "32", "--jobs", "1")
    first = start(*args, log=tmp_path / "first")
    wait_for(lambda: lock_path(out / "t3-s32").exists(), 60, "the first render's lock", first, tmp_path / "first")
    os.kill(first.pid, signal.SIGSTOP)  # held mid-render, however fast this machine renders
    try:
        second = run_homus(*args)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=300) == 0, (tmp_path / "first").read_text()
    assert second.returncode == 1 and f"is being written by process {first.pid}" in second.stderr, second.stderr
    assert sorted(p.name for p in out.iterdir()) == ["t3-s32"]
    assert json.loads((out / "t3-s32/variant.json").read_text())["images"] == 15_200


def test_the_lock_is_released_on_every_exit(tmp_path):
    target = tmp_path / "t"
    with pytest.raises(RuntimeError), writing(target):
        with pytest.raises(BusyError, match=f"is being written by process {os.getpid()}"), writing(target):
            pass
        raise RuntimeError
    with writing(target):
        assert lock_path(target).is_file()
    assert leftovers(tmp_path) == []


# --- 5. no silent wrong result -------------------------------------------------------------------
def test_two_files_with_one_sample_id_are_an_error_naming_both(tmp_path):
    raw = tmp_path / "raw"
    write_handmade(raw)
    (raw / "2/1-1.txt").write_text(sample_text(*HANDMADE[1]))  # writer 2's folder, writer 1's sample id
    for call in (lambda: list_stroke_files(raw), lambda: load_samples(raw)):
        with pytest.raises(DuplicateSampleError, match="same sample id '1-1'") as e:
            call()
        assert str(raw / "1/1-1.txt") in str(e.value) and str(raw / "2/1-1.txt") in str(e.value)
    r = invoke("render", "--raw-dir", raw, "--rendered-dir", tmp_path / "rendered", "--size", "32")
    assert_one_error(r, raw / "1/1-1.txt", raw / "2/1-1.txt")
    (raw / "2/1-1.txt").unlink()
    (raw / "1/1-01.txt").write_text(sample_text(*HANDMADE[1]))  # 1-01 is sample 1-1 written another way
    r = invoke("render", "--raw-dir", raw, "--rendered-dir", tmp_path / "rendered", "--size", "32")
    assert_one_error(r, raw / "1/1-1.txt", raw / "1/1-01.txt")
    assert not (tmp_path / "rendered").exists()


def _symbol() -> np.ndarray:
    """An asymmetric black-on-white symbol: a bar with a blob at its top right."""
    img = np.full((60, 40), 255, np.uint8)
    img[5:55, 8:12] = 0
    cv2.circle(img, (28, 12), 7, 0, -1)
    return img


S = RenderSettings(thickness=3, width=32, height=32, margin=2)


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    upright = _symbol()
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # a camera held sideways: pixels stored turned
    for orientation, fmt in ((6, "JPEG"), (6, "PNG")):
        im = Image.fromarray(stored)
        exif = im.getexif()
        exif[0x0112] = orientation  # "rotate 90 degrees clockwise to display"
        path = tmp_path / f"photo.{fmt.lower()}"
        im.save(path, fmt, exif=exif.tobytes(), **({"quality": 100} if fmt == "JPEG" else {}))
        decoded = decode_image(path.read_bytes(), path)
        assert decoded.shape == upright.shape
        assert np.abs(decoded.astype(int) - upright).mean() < 3
    plain = tmp_path / "plain.png"
    cv2.imwrite(str(plain), stored)  # no EXIF: taken as stored
    assert decode_image(plain.read_bytes()).shape == stored.shape


def test_ink_carried_only_by_the_alpha_channel_is_read(tmp_path):
    reference = normalize_image(_symbol(), S)
    ink = 255 - _symbol()  # opacity: the ink is opaque, the sheet transparent
    for colour in (0, 255):  # black ink, white ink: the colour channels alone show nothing
        rgba = np.dstack([np.full_like(ink, colour)] * 3 + [ink])
        path = tmp_path / f"alpha{colour}.png"
        cv2.imwrite(str(path), rgba)
        got = prepare(path, S)
        assert np.abs(got.astype(int) - reference).mean() < 2, colour
    opaque = np.dstack([_symbol()] * 3 + [np.full_like(ink, 255)])  # plain opacity changes nothing
    assert np.array_equal(normalize_image(opaque, S), reference)


def test_a_bad_image_fails_alone(tiny_run, tmp_path):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), _symbol())
    empty, junk, text = tmp_path / "empty.png", tmp_path / "junk.jpg", tmp_path / "notes.png"
    empty.write_bytes(b"")
    junk.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    text.write_text("a shopping list")
    r = invoke("predict", tiny_run, good, empty, junk, text, tmp_path / "missing.png")
    assert r.exit_code == 1 and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    assert "Traceback" not in r.output and "WARN" not in r.output
    assert [ln.split(":")[0] for ln in r.output.splitlines()] == [str(good), str(empty), str(junk), str(text),
                                                                  str(tmp_path / "missing.png")]
    assert "0 bytes" in r.output and "a damaged or truncated JPEG file" in r.output
    assert "neither an image" in r.output and "no such file" in r.output


def test_fetch_checks_the_folder_it_calls_already_there(tmp_path):
    src = tmp_path / "homus.zip"
    with zipfile.ZipFile(src, "w") as z:
        for w in ("1", "2", "3"):
            for n, (label, strokes) in enumerate(HANDMADE, 1):
                z.writestr(f"HOMUS/{w}/{w}-{n}.txt", sample_text(label, strokes))
    raw = tmp_path / "raw"
    assert invoke("fetch", "--source", src, "--raw-dir", raw).exit_code == 0
    r = invoke("fetch", "--source", src, "--raw-dir", raw)
    assert r.exit_code == 0 and "already there" in r.output
    shutil.rmtree(raw / "2")  # a writer removed
    line = assert_one_error(invoke("fetch", "--source", src, "--raw-dir", raw), raw)
    assert "12 files of 3 writers" in line and "now holds 8 files of 2 writers" in line
    assert "run `homus fetch` again" in line
    shutil.rmtree(raw)
    assert invoke("fetch", "--source", src, "--raw-dir", raw).exit_code == 0
    (raw / "3/3-2.txt").write_text(sample_text(*HANDMADE[0]))  # a file changed
    assert "content differs" in assert_one_error(invoke("fetch", "--source", src, "--raw-dir", raw), raw)


def test_evaluate_from_another_folder_scores_the_recorded_data(tiny, tiny_run, tmp_path, monkeypatch):
    """The run was trained with ``--raw-dir raw`` in another folder; here ``./raw`` holds other
    data. evaluate reads the run's recorded absolute raw folder, never ./raw."""
    write_handmade(tmp_path / "raw", writers=("1", "2", "3", "4", "5"))
    monkeypatch.chdir(tmp_path)
    r = invoke("evaluate", tiny_run, "--device", "cpu")
    assert r.exit_code == 0, r.output
    own = json.loads((tiny_run / "metrics.json").read_text())
    scored = json.loads((tiny_run / f"eval-{own['variants'][0]}.json").read_text())
    assert scored["test_accuracy"] == pytest.approx(own["test_accuracy"], abs=1e-9)
    assert scored["n_test"] == own["n_test"] == 152
    # the recorded data changed: refused, whatever the current folder
    moved = tiny / "raw-moved"
    shutil.copytree(tiny / "raw", moved)
    try:
        f = tiny / "raw/5/5-1.txt"
        f.write_text(f.read_text() + "1,1;2,2;\n")
        line = assert_one_error(invoke("evaluate", tiny_run, "--device", "cpu"), tiny / "raw")
        assert "not the ones run" in line
    finally:
        shutil.rmtree(tiny / "raw")
        moved.rename(tiny / "raw")


def test_a_png_with_16_bit_depth_and_grey_alpha_is_read(tmp_path):
    """Other depths and layouts of the same symbol frame the same."""
    reference = normalize_image(_symbol(), S)
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), _symbol().astype(np.uint16) * 257)
    assert np.array_equal(prepare(deep, S), reference)
    from PIL import Image

    la = tmp_path / "la.png"
    Image.fromarray(np.dstack([np.zeros_like(_symbol()), 255 - _symbol()]), "LA").save(la)
    assert np.abs(prepare(la, S).astype(int) - reference).mean() < 2
    buf = io.BytesIO()
    Image.fromarray(_symbol()).save(buf, "PNG")
    assert np.array_equal(normalize_image(decode_image(buf.getvalue()), S), reference)


def test_a_non_finite_loss_stops_training_naming_epoch_and_batch():
    import torch

    from classifier.engine import DivergedError, train_one_epoch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    batches = [(torch.ones(2, 1, 4, 4), torch.tensor([0, 1]))] * 3
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    train_one_epoch(model, batches, torch.nn.CrossEntropyLoss(), opt, sched, torch.device("cpu"), 1)  # finite
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(DivergedError, match="epoch 3, batch 1: the loss is nan"):
        train_one_epoch(model, batches, torch.nn.CrossEntropyLoss(), opt, sched, torch.device("cpu"), 3)


# --- found by probing the commands as a hostile user would ------------------------------------------
@pytest.mark.parametrize("flags, words", [
    (["--jobs", "0"], "jobs 0"),
    (["--thickness", ""], "homus render: thickness: give at least one value"),
    (["--thickness", ","], "homus render: thickness: give at least one value"),
    (["--thickness", "1_0"], "homus render: thickness '1_0'"),
    (["--size", ""], "homus render: size: give at least one value"),
    (["--size", "64x"], "size '64x'"),
    (["--writers", ""], "writers ''"),
    (["--writers", "5-1"], "runs backwards"),
])
def test_render_flags_that_ask_for_nothing_or_nonsense_are_refused(tmp_path, flags, words):
    """An empty list of sizes rendered nothing and said nothing; an empty writer list rendered them
    all; --jobs 0 was a joblib traceback. Each is now one line, and nothing is written."""
    write_handmade(tmp_path / "raw")
    args = ["render", "--raw-dir", tmp_path / "raw", "--rendered-dir", tmp_path / "out", "--size", "32", *flags]
    r = invoke(*args)
    assert r.exit_code in (1, 2) and words in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "out").exists()


def test_a_file_where_the_variant_folder_goes_is_named_not_replaced(tmp_path):
    write_handmade(tmp_path / "raw")
    out = tmp_path / "out"
    out.mkdir()
    (out / "t3-s32").write_text("mine")
    assert_one_error(invoke("render", "--raw-dir", tmp_path / "raw", "--rendered-dir", out, "--size", "32"),
                     out / "t3-s32")
    assert (out / "t3-s32").read_text() == "mine" and leftovers(out) == ["t3-s32"]


def test_a_variant_that_lost_images_is_rendered_again(tmp_path):
    """`up to date` must mean the images are there: one listing per class folder checks it."""
    write_handmade(tmp_path / "raw")
    args = ("render", "--raw-dir", tmp_path / "raw", "--rendered-dir", tmp_path / "out", "--size", "32")
    assert invoke(*args).exit_code == 0
    vdir = tmp_path / "out/t3-s32"
    before = {p.relative_to(vdir): p.read_bytes() for p in vdir.rglob("*.png") if p.parent != vdir}
    assert "(up to date)" in invoke(*args).output
    lost = next(d for d in sorted(vdir.iterdir()) if d.is_dir() and any(d.glob("*.png")))
    for png in lost.glob("*.png"):
        png.unlink()
    r = invoke(*args)
    assert r.exit_code == 0 and "(rendered)" in r.output, r.output
    assert {p.relative_to(vdir): p.read_bytes() for p in vdir.rglob("*.png") if p.parent != vdir} == before


def test_predict_top_k_and_folders_given_as_inputs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for k in ("0", "-1", "99"):
        r = invoke("predict", run, "--top-k", k, tmp_path)
        assert r.exit_code == 2 and "--top-k" in r.output and "Traceback" not in r.output, r.output
    with pytest.raises(Exception, match="a folder, not an image"):
        prepare(tmp_path, S)


def test_a_transparent_sheet_is_blank_and_nan_pixels_are_named(tmp_path):
    hidden = np.dstack([_symbol()] * 3 + [np.zeros_like(_symbol())])  # ink in RGB, but nothing is opaque
    with pytest.raises(Exception, match="blank"):
        normalize_image(hidden, S)
    flt = _symbol().astype(np.float32) / 255
    flt[0, 0] = np.nan
    with pytest.raises(Exception, match="not numbers"):
        normalize_image(flt, S)


def test_a_scans_dark_frame_does_not_flip_the_ink():
    """The paper is what most of the sheet is: a dark frame round a scan leaves black ink black."""
    framed = np.pad(_symbol(), 20, constant_values=255)
    framed[:4], framed[-4:], framed[:, :4], framed[:, -4:] = 0, 0, 0, 0
    assert np.median(normalize_image(framed, S, "fit")) > 200  # white paper, not inverted to black
    assert np.array_equal(normalize_image(255 - _symbol(), S), normalize_image(_symbol(), S))
    dot = np.full((40, 40), 255, np.uint8)  # a filled dot cropped tight: mostly ink, on white paper
    cv2.circle(dot, (20, 20), 19, 0, -1)
    seen = normalize_image(dot, S, "fit")
    assert seen[S.height // 2, S.width // 2] < 64 and seen[0, 0] > 192  # a black dot, not a white hole


def test_serve_on_a_taken_port_is_one_line(tmp_path):
    import socket

    pytest.importorskip("uvicorn")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        assert_one_error(invoke("serve", tmp_path, "--port", port), f"127.0.0.1:{port}")
    assert_one_error(invoke("serve", tmp_path, "--host", "no-such-host.invalid"), "no-such-host.invalid")


def test_an_image_that_claims_a_huge_canvas_is_refused_before_decoding(tmp_path):
    """A few hundred bytes can claim 900 million pixels (gigabytes once decoded): refused from the
    header alone, naming the file, while the other inputs are still read."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    def png(w: int, h: int) -> bytes:
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))

    with pytest.raises(Exception, match="12,000 x 9,000 pixels, more than homus reads"):
        decode_image(png(12_000, 9_000), "photo.png")
    with pytest.raises(Exception, match="bomb.png: the image claims 30,000 x 30,000 pixels"):
        decode_image(png(30_000, 30_000), "bomb.png")
    # a broken checksum on a chunk after the header: Pillow gives up, libpng decodes; the header still rules
    text = chunk(b"tEXt", b"Comment\0hi")
    broken = text[:-1] + bytes([text[-1] ^ 1])
    whole = png(12_000, 9_000)
    with pytest.raises(Exception, match="12,000 x 9,000 pixels"):
        decode_image(whole[:33] + broken + whole[33:], "sly.png")
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), _symbol())
    assert np.array_equal(prepare(good, S), normalize_image(_symbol(), S))


def test_predict_reads_a_stroke_file_whatever_its_label_line_says(tmp_path):
    """The class is what predict seeks: a file with no label line, or a label HOMUS lacks, is read
    as the same strokes; training data must still name a HOMUS class."""
    strokes = "10,10;20,40;30,10\n15,25;25,25\n"
    files = {"labelled.txt": "Sharp\n" + strokes, "unknown.txt": "my own symbol\n" + strokes, "bare.txt": strokes,
             "class-id.txt": "-1\n" + strokes, "numeric.txt": "3-4\n" + strokes, "blank.txt": "\ufeff\n" + strokes}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    seen = [prepare(tmp_path / name, S) for name in files]
    assert all(np.array_equal(seen[0], other) for other in seen[1:]) and seen[0].min() < 64
    from homus_render.strokes import StrokeFileError, parse_file

    for name, words in (("unknown.txt", "unknown label"), ("bare.txt", "missing label")):
        with pytest.raises(StrokeFileError, match=words):
            parse_file(tmp_path / name)


def test_a_truncated_png_is_one_line_without_opencvs_warnings(capfd):
    ok, buf = cv2.imencode(".png", _symbol())
    capfd.readouterr()
    with pytest.raises(Exception, match="cut.png: a damaged or truncated PNG file"):
        decode_image(buf.tobytes()[:200], "cut.png")
    assert "WARN" not in capfd.readouterr().err  # OpenCV writes to the terminal itself, not through Python
    with pytest.raises(Exception, match="neither an image"):
        decode_image(b"RIFF....WAVEfmt " + bytes(40), "sound.webp")


def test_a_worker_that_starts_after_its_owner_died_ends_at_once(tmp_path):
    """The race behind a loader worker that outlived a SIGKILLed train: the worker ran its init after
    the owner was gone, when its parent was already the reaper. exit_with watches the owner by pid
    and start time, so it ends then too, and a reused pid does not fool it."""
    from homus_render.workers import process_start, running

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start = process_start(owner.pid)
    assert start is not None and running(owner.pid, start) and not running(owner.pid, start + 1)
    code = ("import sys, time; from homus_render.workers import exit_with\n"
            "exit_with(int(sys.argv[1]), int(sys.argv[2])); print('watching', flush=True); time.sleep(60)")

    def worker() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", code, str(owner.pid), str(start)], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)

    w = worker()
    assert w.stdout.readline().strip() == "watching"  # the owner runs: the worker works
    owner.kill()
    assert w.wait(timeout=10) == 1  # the owner was killed while the worker ran: it ends
    owner.wait()
    assert not running(owner.pid, start)
    late = worker()  # the owner is already gone when this one starts
    assert late.wait(timeout=10) == 1 and late.stdout.read() == ""


@pytest.mark.parametrize("args, where, words", [
    (["train", "--bogus"], "homus train", "No such option '--bogus'"),
    (["train", "--epochs", "abc"], "homus train", "'abc' is not a valid integer"),
    (["render", "--size"], "homus render", "'--size' requires an argument"),
    (["evaluate"], "homus evaluate", "Missing argument 'RUNS...'"),
    (["nosuch"], "homus", "No such command 'nosuch'"),
    (["--bogus"], "homus", "No such option '--bogus'"),
])
def test_a_bad_flag_is_one_line_naming_the_command_and_its_help(args, where, words):
    """click printed a usage block, a hint and the error on three lines; a mistyped flag is one
    ``error:`` line like every other fault, with click's exit code 2."""
    r = invoke(*args)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.output.count("\n") == 1 and r.output.startswith(f"error: {where}: "), r.output
    assert words in r.output and f"see '{where} --help'" in r.output, r.output


# --- found by a third probe: fetch, render and predict as a careless user meets them ----------------
def test_an_unlabelled_stroke_file_never_drops_a_first_stroke_it_cannot_read():
    """predict's parser took a first line with a typo (three numbers in a point, an exponent) for a
    label and dropped it: the symbol lost its first stroke and was classified all the same."""
    from homus_render.strokes import StrokeFileError, parse_text

    with pytest.raises(StrokeFileError, match=r"x\.txt:1: odd coordinates"):
        parse_text("10,0;10,40,5;11,80;\n50,50;60,60;\n", "x.txt", labelled=False)
    for text in ("1e1,0;10,40;11,80;\n50,50;60,60;\n", "10,0;10,40;11,80;;\n50,50;60,60;\n"):
        sample = parse_text(text, "x.txt", labelled=False)
        assert sample.label == "" and len(sample.strokes) == 2 and sample.strokes[0][0].tolist() == [10, 0]
    assert parse_text("3-4\n1,2;3,4\n", "x.txt", labelled=False).label == "3-4"  # a label, not a stroke


def _zip(path: Path, members: dict[str, str], encrypted: bool = False) -> Path:
    """A zip of ``members``; ``encrypted``: each marked as encrypted (bit 0 of the flags, in the local
    and the central header), as `zip -P` marks them; Python's zipfile cannot write such a member."""
    with zipfile.ZipFile(path, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
    if encrypted:
        data = bytearray(path.read_bytes())
        for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            at = data.find(signature)
            while at >= 0:
                data[at + flags_at] |= 0x1
                at = data.find(signature, at + 4)
        path.write_bytes(bytes(data))
        assert all(m.flag_bits & 0x1 for m in zipfile.ZipFile(path).infolist())
    return path


def test_fetch_refuses_archives_and_folders_it_cannot_take_as_one_copy_of_homus(tmp_path):
    sample, other = sample_text("Barline", [[[10, 0], [10, 40]]]), sample_text("Dot", [[[5, 5], [6, 5]]])
    cases = [
        (_zip(tmp_path / "enc.zip", {"HOMUS/1/1-1.txt": sample}, encrypted=True), "is encrypted"),
        (_zip(tmp_path / "two.zip", {"HOMUS/1/1-1.txt": sample, "OTHER/1/1-1.txt": other}),
         "are both sample 1/1-1.txt"),
    ]
    folder = tmp_path / "src"
    for top in ("HOMUS-v1", "HOMUS-v2"):  # two releases side by side
        (folder / top / "1").mkdir(parents=True)
        (folder / top / "1" / "1-1.txt").write_text(sample)
    cases.append((folder, "are both sample 1/1-1.txt"))
    pipe = tmp_path / "pipe"
    (pipe / "1").mkdir(parents=True)
    (pipe / "1" / "1-1.txt").write_text(sample)
    os.mkfifo(pipe / "1" / "1-2.txt")
    cases.append((pipe, "not a regular file"))
    for i, (source, words) in enumerate(cases):
        raw = tmp_path / f"raw{i}"
        r = invoke("fetch", "--source", source, "--raw-dir", raw)
        assert r.exit_code == 1 and words in r.output and "Traceback" not in r.output, r.output
        assert not raw.exists()


def test_fetch_into_the_current_folder_and_never_one_release_as_the_other(tmp_path, monkeypatch):
    """`--raw-dir .` was a traceback (a lock beside a path with no name); a source holding one
    release was installed under the other's name (v2's content recorded as v1)."""
    from homus_render import fetch

    write_handmade(tmp_path / "src")
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    r = invoke("fetch", "--source", tmp_path / "src", "--raw-dir", ".")
    assert r.exit_code == 0 and (here / "homus.json").is_file(), r.output
    sha = json.loads((here / "homus.json").read_text())["sha256"]
    monkeypatch.setitem(fetch.RELEASES, "v1", sha)  # as if the hand-made set were HOMUS v1
    r = invoke("fetch", "--source", tmp_path / "src", "--raw-dir", tmp_path / "raw")
    assert r.exit_code == 1 and "holds HOMUS v1" in r.output and "pass --version v1" in r.output, r.output
    assert not (tmp_path / "raw").exists()
    r = invoke("fetch", "--source", tmp_path / "src", "--raw-dir", tmp_path / "raw", "--version", "v1")
    assert r.exit_code == 0, r.output


def test_render_takes_samples_only_and_finds_extra_writers_through_a_linked_raw_folder(tmp_path, monkeypatch):
    """A stray copy (`1-5 copy.txt`) or a note in a writer's folder was rendered as one more sample
    (and could land on both sides of a random split); collected samples were not found when the raw
    folder was a symbolic link (`raw/../collected` is not where the link's parent is)."""
    real = tmp_path / "data" / "raw"
    files = write_handmade(real)
    first = real / files[0]
    shutil.copyfile(first, first.with_name(first.stem + " copy.txt"))
    (first.parent / "notes.txt").write_text("Barline\n1,1;2,2\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "raw").symlink_to(real)
    (work / "collected" / "alice").mkdir(parents=True)
    (work / "collected" / "alice" / "alice-1.txt").write_text(sample_text("Barline", [[[1, 1], [2, 50]]]))
    monkeypatch.chdir(work)
    listed = list_stroke_files("raw", extra=["collected"])
    assert sorted(listed) == sorted([*files, os.path.relpath(work / "collected/alice/alice-1.txt", real)])
    assert all(Path("raw", rel).is_file() for rel in listed)


@pytest.mark.parametrize("writers, words", [
    ("²", "expected numbers and ranges"),
    ("١", "expected numbers and ranges"),
    ("1-99999999999", "names more than 100,000 writers"),
    ("7", "no stroke files of writers 7; it holds 2 other writer(s) (1, 2)"),
])
def test_writers_that_are_not_plain_numbers_or_not_there_are_named(tmp_path, writers, words):
    """A superscript two was a traceback (`"²".isdigit()` is true), an Arabic-Indic one read as writer 1,
    a huge range built its set for minutes, and writers the folder lacks said to run `homus fetch`."""
    write_handmade(tmp_path / "raw")
    for command in ("render", "train"):
        r = invoke(command, "--raw-dir", tmp_path / "raw", "--writers", writers, "--size", "32",
                   *(["--rendered-dir", tmp_path / "out"] if command == "render" else
                     ["--epochs", "1", "--from-strokes", "--runs-dir", tmp_path / "runs"]))
        assert r.exit_code in (1, 2) and words in r.output and "Traceback" not in r.output, (command, r.output)


def test_the_renderer_refuses_points_that_would_draw_a_blank_page():
    from homus_render.render import render, render_packed
    from homus_render.strokes import Packed

    s = RenderSettings(width=32, height=32)
    for strokes, words in (([np.array([[0, 0], [np.nan, 5]])], "not a finite number"),
                           ([np.array([[0, 0], [np.inf, 5]])], "not a finite number"),
                           ([np.zeros((0, 2)), np.array([[1.0, 2], [3, 4]])], "stroke 1 has no points")):
        with pytest.raises(ValueError, match=words):
            render(strokes, s)
        with pytest.raises(ValueError):
            render_packed(Packed.of([strokes]), s)


def test_an_image_of_noise_is_refused_in_bounded_memory_and_a_12_bit_scan_is_read(tmp_path):
    """Noise or a photo gave a centre line of millions of pixels, drawn as as many strokes (20 GB for
    an 81-megapixel image) and then classified; a 12-bit scan in a 16-bit file read as blank."""
    from classifier.predict import InputError

    noise = (np.random.default_rng(0).random((1000, 1000)) < 0.5).astype(np.uint8) * 255
    for read in ("redraw", "thicken"):
        with pytest.raises(InputError, match="centre line is .* pixels long.*Crop it to the symbol"):
            normalize_image(noise, RenderSettings(width=32, height=32), read)
    scan = np.where(_symbol() < 128, 0, 4095).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "scan.png"), scan)
    img = normalize_image(decode_image((tmp_path / "scan.png").read_bytes()), RenderSettings(width=32, height=32))
    assert img.min() < 64 and img.max() == 255


def test_a_report_on_a_full_disk_names_the_report_file_once(tmp_path, monkeypatch, tiny_run):
    import errno

    from homus import report

    def full(rows, path, title):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(report, "_bar_chart", full)
    r = invoke("compare", tiny_run, "--out", tmp_path / "cmp")
    line = assert_one_error(r, tmp_path / "cmp" / "comparison.png")
    assert ".report.partial" not in line and line.count("the disk is full") == 1, line


def test_smaller_untruths_of_fetch_predict_and_export_are_put_right(tmp_path):
    """Each said something untrue: a device as --source was "no such file"; blank lines above a
    label made the label a point ("odd coordinates ... 'Barline'"); a folder that is no run was
    "best.pt: no such checkpoint" in predict and export but "no split.json" in evaluate."""
    from homus_render.strokes import parse_text

    r = invoke("fetch", "--source", "/dev/null", "--raw-dir", tmp_path / "raw")
    assert r.exit_code == 1 and "not a regular file or folder" in r.output, r.output
    sample = parse_text("\n\nBarline\n1,2;3,4\n", "x.txt", labelled=False)  # a symbol to classify
    assert sample.label == "Barline" and len(sample.strokes) == 1
    with pytest.raises(ValueError, match="x.txt:1: missing label"):  # training data names its class on line 1
        parse_text("\n\nBarline\n1,2;3,4\n", "x.txt")
    (tmp_path / "notrun").mkdir()
    (tmp_path / "x.txt").write_text("Barline\n1,2;3,4\n")
    for args in (["predict", tmp_path / "notrun", tmp_path / "x.txt"], ["evaluate", tmp_path / "notrun"],
                 ["export", tmp_path / "notrun", "--out", tmp_path / "m.onnx"]):
        assert "not a homus run folder (no config.yaml)" in assert_one_error(invoke(*args), tmp_path / "notrun")


def test_sigterm_that_a_library_turns_into_a_plain_interrupt_still_ends_as_sigterm():
    """Ray's wait catches the interrupt homus' SIGTERM handler raises and raises a plain
    KeyboardInterrupt: `homus run --ray` printed click's "Aborted!" with exit code 1."""
    import click

    from homus.cli import HomusGroup

    @click.group(cls=HomusGroup)
    def group() -> None:
        pass

    @group.command()
    def waits() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            raise KeyboardInterrupt() from None  # what Ray's wait does with it

    @group.command()
    def loads() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:  # what a DataLoader whose workers the same signal killed raises
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.") from None

    for name in ("waits", "loads"):
        r = CliRunner().invoke(group, [name])
        assert r.exit_code == 143 and "stopped by SIGTERM" in r.output and "Aborted" not in r.output, r.output


def test_half_fetched_unreadable_or_oddly_broken_data_is_never_taken_for_a_dataset(tmp_path):
    """render read a raw folder a killed fetch had left half-moved (its marker still there); fetch
    installed a source of which no file parses, with warnings and exit code 0; a stroke line holding
    a character str.splitlines breaks at (\\x1c, \\x85) became two strokes."""
    from homus_render.strokes import parse_text

    files = write_handmade(tmp_path / "raw")
    (tmp_path / "raw" / ".fetch-in-progress").touch()
    r = invoke("render", "--raw-dir", tmp_path / "raw", "--rendered-dir", tmp_path / "out", "--size", "32")
    assert r.exit_code == 1 and "a fetch into it has not finished" in r.output and not (tmp_path / "out").exists()
    bad = tmp_path / "bad" / "1"
    bad.mkdir(parents=True)
    (bad / "1-1.txt").write_text("Not-A-Class\n1,2;3,4\n")
    r = invoke("fetch", "--source", tmp_path / "bad", "--raw-dir", tmp_path / "raw2")
    assert r.exit_code == 1 and "none of its 1 stroke files can be read" in r.output
    assert not (tmp_path / "raw2").exists()
    for odd in ("\x1c", "\x85", "\u2028"):
        with pytest.raises(ValueError):  # one stroke line with a stray character: an error, never two strokes
            parse_text(f"Barline\n1,2;3,4{odd}5,6\n", "x.txt")
    assert len(parse_text("Barline\r1,2;3,4\r5,6\r", "x.txt").strokes) == 2 and files


@pytest.mark.parametrize("address", ["nonsense", "host:", "host:99999", ":6379"])
def test_a_ray_address_of_the_wrong_form_is_refused_before_any_work(tmp_path, monkeypatch, address):
    monkeypatch.chdir(tmp_path)  # no raw/ here: a study that got as far as fetching would try the network
    monkeypatch.delenv("HOMUS_SOURCE", raising=False)
    r = invoke("run", "--ray", address, "--dry-run")
    assert r.exit_code == 1 and f"--ray {address!r}: give auto, local, HOST:PORT" in r.output, r.output
    assert not any(tmp_path.iterdir())


def test_a_variant_replaced_by_one_of_other_writers_says_so(tmp_path):
    """`render --writers 1` for a quick look replaced the whole variant without a word; a model
    trained on the folder afterwards would have read a tenth of the data."""
    write_handmade(tmp_path / "raw")
    args = ("render", "--raw-dir", tmp_path / "raw", "--rendered-dir", tmp_path / "out", "--size", "32")
    everyone = invoke(*args)
    assert everyone.exit_code == 0 and "(rendered)" in everyone.output, everyone.output
    n = int(everyone.output.split("images")[0].split()[-1])
    one = invoke(*args, "--writers", "1")
    assert one.exit_code == 0 and f"(rendered; it held {n:,} images before)" in one.output, one.output


def test_images_without_clear_ink_are_refused_and_odd_encodings_read_as_the_symbol(tmp_path):
    """A fourth probe: a blank photo's vignette, a gradient, sensor noise and a float image of
    near-equal values were each named as a symbol (Otsu splits any image in two); a transparent
    margin round opaque white paper became a black frame; one hot pixel in a float image erased
    the symbol; TGA and PCX were "damaged"; an animation was read by its first frame alone."""
    from PIL import Image

    from classifier.predict import InputError

    yy, xx = np.mgrid[0:120, 0:160]
    blank = {"vignette": np.clip(230 - 60 * (((yy - 60) / 60) ** 2 + ((xx - 80) / 80) ** 2), 0, 255),
             "gradient": np.tile(np.linspace(0, 255, 160), (120, 1)),
             "noise": np.clip(128 + np.random.default_rng(0).normal(0, 6, (120, 160)), 0, 255)}
    for name, img in blank.items():
        with pytest.raises(InputError, match="no clear ink"):
            normalize_image(img.astype(np.uint8), S)
            pytest.fail(f"{name} was read as a symbol")
    with pytest.raises(InputError, match="no clear ink"):  # floats of near-equal value: no stretch makes ink
        normalize_image(1 - np.random.default_rng(1).random((60, 40)).astype(np.float32) * 0.002, S)
    with pytest.raises(InputError, match="too faint"):
        normalize_image((255 - (255 - _symbol()) // 18).astype(np.uint8), S)

    reference = normalize_image(_symbol(), S)
    sheet = np.zeros((100, 80, 4), np.uint8)  # opaque white paper with the symbol, transparent around it
    sheet[20:80, 20:60, :3] = _symbol()[..., None]
    sheet[20:80, 20:60, 3] = 255
    assert np.abs(normalize_image(sheet, S).astype(int) - reference).mean() < 2
    hot = _symbol().astype(np.float32)
    hot[0, 0] = 1e38
    assert np.abs(normalize_image(hot, S).astype(int) - reference).mean() < 2

    for fmt in ("TGA", "PCX", "SGI"):
        path = tmp_path / f"sym.{fmt.lower()}"
        Image.fromarray(_symbol()).save(path, fmt)
        assert np.abs(prepare(path, S).astype(int) - reference).mean() < 2, fmt
    mpo = tmp_path / "phone.jpg"  # a phone's JPEG with a preview picture after the photo: the photo is read
    Image.fromarray(_symbol()).convert("RGB").save(mpo, "MPO", save_all=True,
                                                   append_images=[Image.fromarray(_symbol()).convert("RGB")])
    assert np.abs(prepare(mpo, S).astype(int) - reference).mean() < 4
    yy, xx = np.mgrid[0:600, 0:800]  # a small pencil mark on a large, unevenly lit page: crop it
    page = 205 + 25 * (1 - 2 * (((yy - 300) / 300) ** 2 + ((xx - 400) / 400) ** 2) / 2)
    page[200:400, 397:403] = 120
    with pytest.raises(InputError, match="small part of an unevenly lit page.*crop the image to the symbol"):
        normalize_image(page.astype(np.uint8), S)
    frames = [Image.fromarray(np.full((60, 40), 255, np.uint8)), Image.fromarray(_symbol())]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match="2 frames or pages in one GIF file"):
        prepare(tmp_path / "anim.gif", S)


def test_predict_reads_a_file_by_its_content_and_bounds_a_stroke_file(tmp_path):
    """A stroke file named .png was "neither an image nor a stroke file", a PNG named .txt was
    "undecodable bytes"; a 56 MB stroke file was drawn for 35 s in 4 GB; "1_0" and other scripts'
    digits were read as 10."""
    from classifier.predict import InputError

    label, strokes = HANDMADE[0]
    named_png = tmp_path / "strokes.png"
    named_png.write_text(sample_text(label, strokes))
    as_txt = tmp_path / "strokes.txt"
    as_txt.write_text(sample_text(label, strokes))
    assert np.array_equal(prepare(named_png, S), prepare(as_txt, S))
    png_as_txt = tmp_path / "image.txt"
    cv2.imwrite(str(tmp_path / "image.png"), _symbol())
    png_as_txt.write_bytes((tmp_path / "image.png").read_bytes())
    assert np.array_equal(prepare(png_as_txt, S), prepare(tmp_path / "image.png", S))

    many = tmp_path / "many.txt"
    many.write_text("\n".join(f"{i},{i};{i + 1},{i}" for i in range(65)))
    with pytest.raises(InputError, match="65 strokes of 130 points, more than one drawn symbol has"):
        prepare(many, S)
    huge = tmp_path / "huge.txt"
    huge.write_text("1,1;" * 300_000)
    with pytest.raises(InputError, match="1,200,000 bytes, more than one drawn symbol takes"):
        prepare(huge, S)
    for digits in ("1_0", "\u0661\u0660", "\uff11\uff10"):
        odd = tmp_path / "odd.txt"
        odd.write_text(f"10,10;20,20;\n10,10;{digits},20;\n")
        with pytest.raises(Exception, match="plain ASCII digits only"):
            prepare(odd, S)


def test_class_probabilities_in_batches_equal_one_pass():
    """predict ran every input through the model at once: memory grew with the number of inputs."""
    import torch

    from classifier.inference import class_probabilities

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 4)).eval()
    images = np.random.default_rng(0).integers(0, 256, (7, 32, 32), dtype=np.uint8)
    np.testing.assert_allclose(class_probabilities(model, images, batch=2), class_probabilities(model, images),
                               rtol=1e-6, atol=1e-7)


def test_run_folders_as_a_careless_user_leaves_them(tiny, tiny_run, tmp_path):
    """A probe of run folders: another run's best.pt copied in, or config.yaml edited, was scored
    without a word; compare reported eval files of an earlier training and counted one recipe
    trained twice as two seeds; a copy of a run voted twice; a link locked apart from its run; a
    zeroed checkpoint got torch's advice cut mid-word; NaN in metrics.json ranked first."""
    from homus_render.lock import lock_path

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    # one recipe twice: as two seeds in compare, as two voters in an ensemble or a server
    assert "same settings and seed 0" in assert_one_error(invoke("compare", tiny_run, copy, "--out", tmp_path / "c"))
    line = assert_one_error(invoke("evaluate", tiny_run, copy, "--device", "cpu"))
    assert "copies of one training" in line
    link = tmp_path / "link"
    link.symlink_to(tiny_run)
    r = invoke("serve", tiny_run, link, "--port", "0")
    assert r.exit_code == 2 and "again; give each run once" in r.output, r.output
    assert lock_path(link) == lock_path(tiny_run)

    # config.yaml edited since the model was trained: its test images would be drawn otherwise
    cfg = copy / "config.yaml"
    cfg.write_text(cfg.read_text().replace("thickness: 3", "thickness: 1"))
    line = assert_one_error(invoke("evaluate", copy, "--device", "cpu"), copy / "best.pt")
    assert "render.thickness 3 in the model, 1 in config.yaml" in line
    shutil.rmtree(copy)
    shutil.copytree(tiny_run, copy)

    # an eval file of another training, and a damaged one, are not reported
    (copy / "eval-t1-s32.json").write_text(json.dumps({"variant": "t1-s32", "test_accuracy": 0.0123,
                                                       "fingerprint": None}))
    (copy / "eval-broken.json").write_text("{")
    r = invoke("compare", copy, "--out", tmp_path / "report")
    assert r.exit_code == 0, r.output
    assert "1.23" not in (tmp_path / "report/report.md").read_text()

    m = json.loads((copy / "metrics.json").read_text())
    (copy / "metrics.json").write_text(json.dumps({**m, "test_accuracy": float("nan")}))
    assert "'test_accuracy' is nan" in assert_one_error(invoke("compare", copy, "--out", tmp_path / "r2"))
    (copy / "metrics.json").unlink()  # a run that has not finished: used, and said
    r = invoke("predict", copy, tiny / "raw/1/1-1.txt")
    assert r.exit_code == 0 and "has not finished training" in r.output, r.output
    assert "finish it with `homus train --resume" in assert_one_error(invoke("compare", copy, "--out", tmp_path / "r3"))
    holder = hold_lock(copy)  # still training in another process: --resume would be refused as busy
    try:
        line = assert_one_error(invoke("compare", copy, "--out", tmp_path / "r3"))
        assert f"process {holder.pid} is training it: wait for it to finish" in line
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    (copy / "best.pt").write_bytes(b"\0" * 4096)
    line = assert_one_error(invoke("predict", copy, tiny / "raw/1/1-1.txt"))
    assert "does not begin as a torch checkpoint does" in line


def test_a_damaged_split_on_resume_and_extra_strokes_from_another_folder(tiny, tmp_path, monkeypatch):
    """--resume with a garbage split.json was a JSONDecodeError traceback; a run with a relative
    --extra-raw could be evaluated only from the folder it was trained in."""
    extra = tmp_path / "work/collected/alice"
    extra.mkdir(parents=True)
    for n, (label, strokes) in enumerate(HANDMADE, 1):
        (extra / f"alice-{n}.txt").write_text(sample_text(label, strokes))
    monkeypatch.chdir(tmp_path / "work")
    args = ["train", "--raw-dir", tiny / "raw", "--runs-dir", tmp_path / "runs", "--name", "ex",
            "--extra-raw", "collected", *TINY_TRAIN]
    assert invoke(*args).exit_code == 0
    run = tmp_path / "runs/ex"
    assert json.loads((run / "data.json").read_text())["extra_raw"] == [str(tmp_path / "work/collected")]
    monkeypatch.chdir(tmp_path)
    r = invoke("evaluate", run, "--device", "cpu")
    assert r.exit_code == 0, r.output

    killed = tmp_path / "runs/ex2"
    shutil.copytree(run, killed)
    (killed / "metrics.json").unlink()
    shutil.copy(run / "best.pt", killed / "last.pt")  # a run stopped after its first epoch, as far as resume reads
    (killed / "split.json").write_text("garbage")
    monkeypatch.chdir(tmp_path / "work")  # where its relative --extra-raw lies, as resume reads its config
    r = invoke("train", "--resume", killed)
    assert r.exit_code == 1 and "Traceback" not in r.output and "split.json" in r.output, r.output
