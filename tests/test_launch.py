"""Where a study's runs train (homus.launch): several at once here (``--parallel``) and as tasks on a
Ray cluster (``--ray``) give the figures of the serial study; a killed parallel study leaves no worker
behind and continues; and the report shows where the final ensemble errs."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import free_port

from homus.cli import main
from homus_render.workers import descendants

ROOT = Path(__file__).resolve().parents[1]


def study_copy(tiny_study, root: Path, **study) -> Path:
    """The tiny study's config with its own runs and reports folders (the rendering is shared)."""
    _, path = tiny_study
    cfg = yaml.safe_load(path.read_text())
    cfg["train"]["runs_dir"] = str(root / "runs")
    cfg["study"]["reports_dir"] = str(root / "reports")
    cfg["study"].update(study)
    out = root / "tiny.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


def figures(root: Path) -> dict:
    """Every run's test accuracy and macro F1, and every ensemble score, of a tiny study under ``root``."""
    runs = root / "runs/tiny"
    out = {}
    for f in sorted(runs.glob("*/metrics.json")):
        m = json.loads(f.read_text())
        out[f.parent.name] = (m["test_accuracy"], m["macro_f1"], m["n_test"], m["best_epoch"])
    for f in sorted(runs.glob("ensemble-*.json")):
        m = json.loads(f.read_text())
        out[f.name] = (m["test_accuracy"], m["confusion"])
    return out


def test_parallel_runs_give_the_serial_figures(tiny_study, tmp_path):
    """Two runs at a time, each in a loky process with a loader worker of its own (loky's start method:
    the loaders once crashed there with a traceback), give the serial study's figures."""
    serial_root, _ = tiny_study
    path = study_copy(tiny_study, tmp_path)
    cfg = yaml.safe_load(path.read_text())
    assert cfg["train"]["workers"] == 0  # the serial study drew in the training process
    cfg["train"]["workers"] = 1
    path.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(main, ["run", "--config", str(path), "--parallel", "2"])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    assert "6 runs, 2 at a time" in r.output and r.output.count(": complete, test accuracy") == 6
    assert figures(tmp_path) == figures(serial_root) and len(figures(tmp_path)) == 6 + 3
    summary = json.loads((tmp_path / "reports/tiny/summary.json").read_text())
    serial = json.loads((serial_root / "reports/tiny/summary.json").read_text())
    assert [e["pooled"] for e in summary["ensembles"]] == [e["pooled"] for e in serial["ensembles"]]


def test_a_failed_parallel_run_is_named_and_the_others_finish(tiny_study, tmp_path):
    path = study_copy(tiny_study, tmp_path)
    blocked = tmp_path / "runs/tiny/t2-s32-m2-ink-fold1-seed0"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the run's folder goes")
    r = CliRunner().invoke(main, ["run", "--config", str(path), "--parallel", "2"])
    assert r.exit_code == 1
    [line] = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert "1 of 6 runs failed (t2-s32-m2-ink-fold1-seed0:" in line and "the same command again retries" in line
    assert "[Errno" not in line and str(blocked) in line  # the one line a user reads, naming the path
    assert len(list((tmp_path / "runs/tiny").glob("*/metrics.json"))) == 5
    assert not (tmp_path / "reports").exists()  # no report on a study with a hole in it


def test_killing_a_parallel_study_kills_its_runs_and_it_continues(tiny_study, tmp_path):
    from test_faults import homus_cmd, stop_and_check_workers, wait_for

    path = study_copy(tiny_study, tmp_path)
    log = tmp_path / "log"
    proc = subprocess.Popen(homus_cmd("run", "--config", path, "--parallel", "2"), cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: log.read_text().count(" train / ") >= 2, 180, "two runs to start", proc, log)
    workers = descendants(proc.pid)
    assert len(workers) >= 2
    stop_and_check_workers(proc, signal.SIGKILL, workers)
    r = CliRunner().invoke(main, ["run", "--config", str(path), "--parallel", "2"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "runs/tiny").glob("*/metrics.json"))) == 6


def test_the_report_shows_where_the_final_ensemble_errs(tiny_study):
    root, _ = tiny_study
    report = root / "reports/tiny"
    md = (report / "report.md").read_text()
    scores = [json.loads((root / f"runs/tiny/ensemble-both-t2-s32-m2-fold{f}.json").read_text()) for f in range(3)]
    pooled = np.sum([s["confusion"] for s in scores], axis=0)
    n, right = int(pooled.sum()), int(np.trace(pooled))
    assert n == 576 and right == round(sum(s["test_accuracy"] * s["n_test"] for s in scores))
    errors = [e for s in scores for e in s["errors"]]
    assert len(errors) == n - right and all(e["target"] != e["pred"] for e in errors)
    assert "## Where both errs" in md and f"{n - right} of {n} test images misread" in md
    for picture in ("confusion.png", "errors.png", "recall.png"):
        assert (report / picture).stat().st_size > 5000, picture
    rows = [line for line in md.splitlines() if line.startswith("| ") and line.count("|") == 4 and "±" in line]
    assert len(rows) == 32  # every class, recall mean ± std over the 3 folds
    recall = {c: np.mean([s["per_class"][c]["recall"] for s in scores]) for c in scores[0]["classes"]}
    worst = min(recall, key=recall.get)
    assert rows[0].startswith(f"| {worst} | {recall[worst]:.2%}")


#: The cluster's shared secret, given to the head and the driver alike (Ray's token authentication),
#: so no token file another Ray left in ~/.ray is read.
RAY_AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture(scope="module")
def ray_head():
    """A local Ray cluster of 2 CPUs (``ray start --head``), stopped afterwards."""
    pytest.importorskip("ray", reason="needs Ray (pip install 'homus[ray]')")
    ray_cli = Path(sys.executable).with_name("ray")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", **RAY_AUTH}
    temp = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's sockets live under it (107-byte limit)
    start = subprocess.run([str(ray_cli), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                            "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false",
                            "--object-store-memory", str(100 * 2**20), "--temp-dir", str(temp),
                            "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_study_on_a_ray_cluster_gives_the_serial_figures(tiny_study, ray_head, tmp_path):
    """`homus run --ray HOST:PORT` as a user runs it: its own process (with the cluster's token), in
    another folder than the study's (the tasks get absolute paths: they do not start there)."""
    serial_root, _ = tiny_study
    path = study_copy(tiny_study, tmp_path, run_cpus=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **RAY_AUTH}
    r = subprocess.run([sys.executable, "-m", "homus.cli", "run", "--config", str(path), "--ray", ray_head],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("(Ray task: 1 CPU, 0 GPU)") == 6 and r.stdout.count(": complete, test accuracy") == 6
    assert figures(tmp_path) == figures(serial_root)


def test_no_ray_cluster_is_one_line(tiny_study, tmp_path):
    pytest.importorskip("ray", reason="needs Ray (pip install 'homus[ray]')")
    port = free_port()  # nobody listens there
    path = study_copy(tiny_study, tmp_path)
    r = CliRunner().invoke(main, ["run", "--config", str(path), "--ray", f"127.0.0.1:{port}"])
    assert r.exit_code == 1, r.output
    [line] = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert f"no Ray cluster at '127.0.0.1:{port}'" in line and "ray start --head" in line


def test_each_run_of_a_pool_holds_its_own_gpu_slot(tmp_path):
    """With N runs at once and fewer GPUs, the slots share the GPUs in turn; a slot is held by one run
    at a time and free again when it ends."""
    from homus.launch import _free_slot

    slots = [(str(tmp_path / f"slot{i}"), i % 2) for i in range(3)]
    with _free_slot(slots) as a, _free_slot(slots) as b, _free_slot(slots) as c:
        assert (a, b, c) == (0, 1, 0)
    with _free_slot(slots) as again:
        assert again == 0


def test_parallel_and_ray_together_are_refused(tiny_study, tmp_path):
    path = study_copy(tiny_study, tmp_path)
    r = CliRunner().invoke(main, ["run", "--config", str(path), "--parallel", "2", "--ray", "auto"])
    assert r.exit_code == 2 and "choose one" in r.output
    for bad, words in ((["--parallel", "0"], "--parallel"), (["--ray", " "], "--ray")):
        r = CliRunner().invoke(main, ["run", "--config", str(path), *bad])
        assert r.exit_code == 2 and words in r.output, r.output
    assert not (tmp_path / "runs").exists()
