"""Shared fixtures: the HOMUS zip, one full fetch per session, hand-made stroke files, a synthetic
HOMUS-format dataset; and, in CI, a skip that was not expected is a failure."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

#: The raw dataset lives beside the repository, never inside it: <repo>/../shared/datasets/.
SHARED_ZIP = Path(__file__).resolve().parents[2] / "shared/datasets/HOMUS-v2.zip"
pytest_plugins = ("pytester",)

#: Skips that CI accepts (the reason starts with one of these); any other skip fails a CI run, since
#: CI has the dataset and every test that can run there must run. Set by env ``CI`` (GitHub, .ci/run).
ALLOWED_SKIPS_IN_CI = ("needs a GPU", "needs CUDA", "needs root", "needs Linux")


def skip_allowed_in_ci(reason: str) -> bool:
    """Whether a skip with this reason is fine in CI."""
    return reason.removeprefix("Skipped: ").startswith(ALLOWED_SKIPS_IN_CI)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (env ``CI`` set and not "false"/"0"), an unexpected skip becomes a failure naming its reason."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get("CI", "").lower() in ("", "0", "false") or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not skip_allowed_in_ci(reason):
        report.outcome = "failed"
        report.longrepr = (f"skipped in CI, where every test must run: {reason} (allowed skip reasons start with: "
                           f"{', '.join(ALLOWED_SKIPS_IN_CI)})")


#: Content hash of HOMUS v2 as ``homus fetch`` computes it (sha256 over path + file sha256).
HOMUS_V2_SHA256 = "e2bfcc910a1aad629cb62f3dc0f67d649cf9de5160b8b703eece33fe4dc6d462"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zip_path() -> Path:
    """$HOMUS_SOURCE when set, else the shared copy beside the repository."""
    env = os.environ.get("HOMUS_SOURCE")
    return Path(env) if env else SHARED_ZIP


@pytest.fixture(scope="session")
def homus_zip() -> Path:
    path = zip_path()
    if not path.is_file():
        pytest.skip(f"HOMUS v2 zip not found at {path} (set HOMUS_SOURCE to a local HOMUS-v2.zip)")
    return path


@pytest.fixture(scope="session")
def full_fetch(homus_zip: Path, tmp_path_factory: pytest.TempPathFactory):
    """The whole dataset, fetched once per session: the FetchReport. Tests must not modify it."""
    from homus_render.fetch import fetch

    return fetch(tmp_path_factory.mktemp("full") / "raw", "v2", str(homus_zip))


@pytest.fixture(scope="session")
def raw_full(full_fetch) -> Path:
    """The raw folder of :func:`full_fetch`: ``<writer>/<writer>-<n>.txt`` and homus.json."""
    return full_fetch.raw_dir


def sample_text(label: str, strokes, newline: str = "\n") -> str:
    """A stroke file: the label, then one ``x,y;x,y;`` line per stroke."""
    lines = [label] + ["".join(f"{x},{y};" for x, y in stroke) for stroke in strokes]
    return newline.join(lines) + newline


#: Hand-made symbols (label, strokes) for folders and archives built in tests.
HANDMADE = [
    ("Barline", [[(10, 0), (10, 40), (11, 80)]]),
    ("Dot", [[(5, 5), (6, 5), (6, 6), (5, 6)]]),
    ("Flat", [[(0, 0), (0, 60), (10, 50), (12, 44), (8, 40), (0, 45)]]),
    ("Whole-Note", [[(0, 10), (10, 0), (20, 10), (10, 20), (0, 10)]]),
]


def write_handmade(root: Path, writers=("1", "2")) -> list[str]:
    """``root/<writer>/<writer>-<n>.txt`` for every hand-made symbol; returns the relative paths."""
    made = []
    for w in writers:
        (root / w).mkdir(parents=True, exist_ok=True)
        for n, (label, strokes) in enumerate(HANDMADE, 1):
            rel = f"{w}/{w}-{n}.txt"
            (root / rel).write_text(sample_text(label, strokes))
            made.append(rel)
    return made


# --- a synthetic HOMUS-format dataset: train/evaluate/study tests run without the zip ----------------

#: Writers and samples per class and writer of :func:`synthetic_raw` (32 x 6 x 3 = 576 samples).
SYNTHETIC_WRITERS = ("1", "2", "3", "4", "5", "6")
SYNTHETIC_PER_CLASS = 3


def _class_shape(k: int) -> list[np.ndarray]:
    """Class ``k``'s drawing: one to three pen strokes, each a smooth curve through a few points
    chosen once per class (so classes differ in shape, stroke count and order)."""
    rng = np.random.default_rng(1000 + k)
    strokes = []
    for _ in range(1 + k % 3):
        knots = rng.uniform(0, 100, size=(3 + k % 4, 2))
        t = np.linspace(0, 1, 24)
        u = np.linspace(0, 1, len(knots))
        strokes.append(np.stack([np.interp(t, u, knots[:, 0]), np.interp(t, u, knots[:, 1])], 1))
    return strokes


def synthetic_samples(writers=SYNTHETIC_WRITERS, per_class: int = SYNTHETIC_PER_CLASS):
    """``(writer, n, label, strokes)`` for every synthetic sample: each class's shape as each writer
    draws it (their own size, slant and rotation) with per-sample jitter, in tablet coordinates."""
    from homus_render.labels import LABELS

    shapes = [_class_shape(k) for k in range(len(LABELS))]
    out = []
    for w in writers:
        rng = np.random.default_rng(int(w))
        scale, slant, turn = rng.uniform(0.7, 1.4), rng.uniform(-0.25, 0.25), np.radians(rng.uniform(-6, 6))
        hand = scale * np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]]) @ [[1, slant], [0, 1]]
        n = 0
        for k, label in enumerate(LABELS):
            for _ in range(per_class):
                n += 1
                shift = rng.uniform(20, 120, size=2)
                strokes = [np.round(s @ hand.T + shift + rng.normal(0, 1.5, size=s.shape)).astype(int)
                           for s in shapes[k]]
                out.append((w, n, label, strokes))
    return out


def write_synthetic(root: Path, writers=SYNTHETIC_WRITERS, per_class: int = SYNTHETIC_PER_CLASS) -> Path:
    """``root/<writer>/<writer>-<n>.txt`` for every synthetic sample; returns ``root``."""
    for w, n, label, strokes in synthetic_samples(writers, per_class):
        (root / w).mkdir(parents=True, exist_ok=True)
        (root / w / f"{w}-{n}.txt").write_text(sample_text(label, [s.tolist() for s in strokes]), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HOMUS-format raw folder made from hand-drawn shapes: 32 classes x 6 writers x 3 samples.
    Tests must not modify it (copy it first)."""
    return write_synthetic(tmp_path_factory.mktemp("synthetic") / "raw")


@pytest.fixture(scope="session")
def tiny(synthetic_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic raw folder copied, and rendered at 32 px with thickness 1 and 3:
    ``raw/``, ``rendered/t1-s32-m2``, ``rendered/t3-s32-m2``."""
    import shutil

    from homus_render.render import RenderSettings
    from homus_render.variants import render_variants

    root = tmp_path_factory.mktemp("tiny")
    shutil.copytree(synthetic_raw, root / "raw")
    settings = [RenderSettings(thickness=t, width=32, height=32, margin=2) for t in (1, 3)]
    render_variants(root / "raw", root / "rendered", settings, jobs=1)
    return root


@pytest.fixture(scope="session")
def tiny_homus_run(raw_full: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model read by the web-service tests: 1 epoch at 32 px on HOMUS writers 1-3 (its
    accuracy does not matter there), trained once per session."""
    import torch
    from click.testing import CliRunner

    from homus.cli import main

    runs = tmp_path_factory.mktemp("serve-runs")
    threads = torch.get_num_threads()
    r = CliRunner().invoke(main, ["train", "--raw-dir", str(raw_full), "--writers", "1-3", "--size", "32",
                                  "--epochs", "1", "--batch-size", "32", "--schedule", "constant", "--workers", "0",
                                  "--threads", "1", "--device", "cpu", "--runs-dir", str(runs), "--name", "tiny"])
    torch.set_num_threads(threads)  # --threads 1 set it for this whole process; the next tests get it back
    assert r.exit_code == 0, r.output
    return runs / "tiny"


@pytest.fixture(scope="session")
def tiny_study(synthetic_raw, tmp_path_factory):
    """configs/tiny.yaml (3-fold writer cross-validation, two arms, an ensemble) on the synthetic data, run
    serially by `homus run`: the study folder and its config."""
    import yaml
    from click.testing import CliRunner

    from homus.cli import main

    root = tmp_path_factory.mktemp("tiny-study")
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/tiny.yaml").read_text())
    cfg["dataset"]["raw_dir"] = str(synthetic_raw)
    cfg["render"]["rendered_dir"] = str(root / "rendered")
    cfg["train"]["runs_dir"] = str(root / "runs")
    cfg["study"]["reports_dir"] = str(root / "reports")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert r.exit_code == 0, r.output
    return root, path
