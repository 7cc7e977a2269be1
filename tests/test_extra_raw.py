"""Collected samples extend the data: `--extra-raw DIR` adds the writers `homus serve` saved to
HOMUS's own, for render and train, each collected writer wholly on one side of a writer split."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import synthetic_samples

from homus.cli import main
from homus_render.collect import save_sample
from homus_render.dataset import list_stroke_files, load_samples

COLLECTED = ("alice", "bob", "carol")


@pytest.fixture(scope="module")
def data(synthetic_raw: Path, tmp_path_factory) -> Path:
    """The synthetic HOMUS folder, and three collected writers saved as homus serve saves them."""
    root = tmp_path_factory.mktemp("extra")
    shutil.copytree(synthetic_raw, root / "raw")
    for name, (_, _, label, strokes) in zip(COLLECTED * 40, synthetic_samples(("7",), 1) * 3, strict=False):
        save_sample(root / "collected", name, label, [s.tolist() for s in strokes])
    return root


def test_collected_writers_join_the_listing_and_parse_as_their_own_writers(data: Path):
    raw, extra = data / "raw", data / "collected"
    plain = list_stroke_files(raw)
    both = list_stroke_files(raw, extra=[extra])
    assert len(both) == len(plain) + 96 and set(plain) < set(both)
    samples = load_samples(raw, extra=[extra])
    writers = {s.writer for s in samples}
    assert set(COLLECTED) <= writers and {s.id for s in samples if s.writer == "alice"} >= {"alice-1", "alice-32"}
    assert all(s.id.startswith(s.writer + "-") for s in samples)


def test_render_takes_them_with_one_flag_and_records_it(data: Path, tmp_path: Path):
    out = tmp_path / "rendered"
    r = CliRunner().invoke(main, ["render", "--raw-dir", str(data / "raw"), "--extra-raw", str(data / "collected"),
                                  "--rendered-dir", str(out), "--size", "32", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    vdir = out / "t3-s32"
    with open(vdir / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["writer"] for r in rows} >= set(COLLECTED)
    assert all((vdir / r["path"]).is_file() for r in rows if r["writer"] == "bob")
    info = json.loads((vdir / "variant.json").read_text())
    assert info["extra_raw"] == [str(data / "collected")] and info["images"] == 576 + 96


def test_train_keeps_each_collected_writer_on_one_side(data: Path, tmp_path: Path):
    r = CliRunner().invoke(main, ["train", "--raw-dir", str(data / "raw"), "--extra-raw", str(data / "collected"),
                                  "--size", "32", "--epochs", "1", "--batch-size", "64", "--schedule", "constant",
                                  "--workers", "0", "--device", "cpu", "--runs-dir", str(tmp_path), "--name", "x"])
    assert r.exit_code == 0, r.output
    split = json.loads((tmp_path / "x" / "split.json").read_text())
    side = {}
    for part in ("train", "val", "test"):
        for sid in split[part]:
            side.setdefault(sid.rsplit("-", 1)[0], set()).add(part)
    assert all(len(parts) == 1 for parts in side.values())  # no writer on two sides, collected ones included
    assert set(COLLECTED) <= set(side)
    config = (tmp_path / "x" / "config.yaml").read_text()
    assert str(data / "collected") in config  # the run records what made it


def test_a_numeric_writer_among_the_extras_is_refused(data: Path, tmp_path: Path):
    bad = tmp_path / "bad"
    shutil.copytree(data / "collected" / "alice", bad / "5")
    r = CliRunner().invoke(main, ["render", "--raw-dir", str(data / "raw"), "--extra-raw", str(bad),
                                  "--rendered-dir", str(tmp_path / "r"), "--size", "32", "--jobs", "1"])
    assert r.exit_code == 2 and "are numbers" in r.output and "Traceback" not in r.output
