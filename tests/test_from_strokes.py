"""Training from the raw strokes: reproducible per seed and epoch whatever the workers, plain
renderings for evaluation, a tiny run end to end, and an ablation study with arms."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from test_classifier import assert_complete

from classifier.data import epoch_loader, load_variant, loader
from classifier.evaluate import evaluate_run
from classifier.strokeset import StrokeSet, worker_init
from homus.cli import main
from homus_render.dataset import load_samples
from homus_render.distort import StrokeAugment
from homus_render.render import RenderSettings

S32 = RenderSettings(thickness=3, width=32, height=32, margin=2)
AUG = StrokeAugment(thickness=1, scale=0.15, aspect=0.2, rotate=10, shear=10, translate=0.05, elastic=0.04,
                    jitter=0.005, ends=0.3)


@pytest.fixture(scope="module")
def samples(tiny):
    return load_samples(tiny / "raw")[:200]


def epoch_batches(ds: StrokeSet, epoch: int, workers: int) -> list[torch.Tensor]:
    ds.set_epoch(epoch)
    return [x for x, _ in loader(ds, 32, shuffle=True, seed=epoch, workers=workers, worker_init_fn=worker_init())]


def test_same_seed_and_epoch_same_images_whatever_the_workers(samples):
    ds = StrokeSet(samples, S32, AUG, seed=5)
    a = epoch_batches(ds, 1, workers=0)
    b = epoch_batches(ds, 1, workers=2)
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(torch.cat(a), torch.cat(epoch_batches(ds, 2, workers=0)))  # a new epoch, new hands
    other = StrokeSet(samples, S32, AUG, seed=6)
    assert not torch.equal(torch.cat(a), torch.cat(epoch_batches(other, 1, workers=0)))


def test_workers_that_live_across_epochs_draw_each_epochs_images(samples):
    """The training loader starts its workers once; the epoch rides with each batch, so a worker
    forked in epoch 1 still draws epoch 2's distortions, in epoch 2's order."""
    ds = StrokeSet(samples, S32, AUG, seed=5)
    dl, batches = epoch_loader(ds, 32, seed=0, workers=2, worker_init_fn=worker_init())
    for epoch in (1, 2):
        batches.set_epoch(epoch)
        got = [(x, y) for x, y in dl]
        ds.set_epoch(epoch)  # the plain loader, in this process, as every epoch was drawn before
        want = list(loader(ds, 32, shuffle=True, seed=epoch))
        assert len(got) == len(want) == len(batches)
        for (x, y), (wx, wy) in zip(got, want, strict=True):
            assert torch.equal(x, wx) and torch.equal(y, wy)


def test_each_sample_keeps_its_label_and_stays_ink_on_paper(samples):
    ds = StrokeSet(samples, S32, AUG, seed=0)
    ds.set_epoch(3)
    x, y = ds[list(range(len(ds)))]
    assert x.shape == (len(samples), 1, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert (x.flatten(1).sum(1) > 0).all()  # no sample lost all its ink
    assert y.tolist() == [ds.targets[i].item() for i in range(len(ds))]


def test_without_augmentation_the_images_are_the_rendered_variant(tiny, samples):
    """Evaluation renders without augmentation: the very pixels `homus render` wrote."""
    ds = StrokeSet(samples, S32, StrokeAugment(), seed=0)
    x, _ = ds[list(range(len(ds)))]
    v = load_variant(tiny / "rendered/t3-s32-m2", only={s.id for s in samples})
    order = [v.samples.index(s.id) for s in samples]
    expected = (255 - torch.from_numpy(v.images[order]).float()) / 255
    assert torch.equal(x[:, 0], expected)


def test_a_tiny_run_from_strokes(tiny, tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"raw_dir": str(tiny / "raw")}, "render": {"margin": 2}}))
    args = ["train", "--config", str(config), "--from-strokes", "--thickness", "3", "--size", "32",
            "--stroke-rotate", "10", "--stroke-elastic", "0.04", "--stroke-ends", "0.3", "--epochs", "1",
            "--batch-size", "64", "--workers", "1", "--runs-dir", str(tmp_path / "runs"), "--device", "cpu"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs/strokes-t3-s32-m2-resnet18-writer-seed0"
    assert_complete(run)
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert metrics["source"] == "strokes" and metrics["variants"] == ["t3-s32-m2"]
    assert cfg["from_strokes"] and cfg["render"]["margin"] == 2 and cfg["strokes"]["rotate"] == 10.0
    assert cfg["variants"] == []
    # the same split as a run on the rendered folder, so the two compare directly
    image_run = CliRunner().invoke(main, ["train", "--variant", str(tiny / "rendered/t3-s32-m2"), "--epochs", "1",
                                          "--batch-size", "64", "--runs-dir", str(tmp_path / "runs"), "--device",
                                          "cpu", "--config", str(config)])
    assert image_run.exit_code == 0, image_run.output
    image_split = tmp_path / "runs/t3-s32-m2-resnet18-writer-seed0/split.json"
    assert (run / "split.json").read_text() == image_split.read_text()
    # its test images were plain renderings: scoring it on the PNGs gives the same accuracy
    again = evaluate_run(run, tiny / "rendered/t3-s32-m2", device="cpu")
    assert again["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    own = evaluate_run(run, device="cpu")  # no --variant: rendered again from its strokes
    assert own["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert own["trained_on"] == ["t3-s32-m2"]


def test_bad_stroke_settings_exit_with_a_clear_message(tiny, tmp_path):
    base = ["train", "--from-strokes", "--raw-dir", str(tiny / "raw"), "--runs-dir", str(tmp_path), "--epochs", "1"]
    r = CliRunner().invoke(main, [*base, "--stroke-scale", "1.5"])
    assert r.exit_code == 2 and "stroke scale must be < 1" in r.output
    r = CliRunner().invoke(main, [*base, "--size", "4"])
    assert r.exit_code == 2 and "width must be an integer from 8" in r.output
    r = CliRunner().invoke(main, ["train", "--from-strokes", "--raw-dir", str(tmp_path / "none"),
                                  "--runs-dir", str(tmp_path), "--epochs", "1"])
    assert r.exit_code == 1 and "no such folder" in r.output
    # strokes are the default source; --variant alone means the rendered folder
    r = CliRunner().invoke(main, ["train", "--raw-dir", str(tmp_path / "none"), "--runs-dir", str(tmp_path)])
    assert r.exit_code == 1 and "no such folder" in r.output
    r = CliRunner().invoke(main, ["train", "--variant", str(tmp_path / "none"), "--runs-dir", str(tmp_path)])
    assert r.exit_code == 1 and "not a rendered variant" in r.output


def test_a_bad_stroke_file_is_named(tiny, tmp_path):
    import shutil

    raw = tmp_path / "raw"
    for w in ("1", "2", "3"):
        shutil.copytree(tiny / "raw" / w, raw / w)
    (raw / "2/2-7.txt").write_text("Flat\n1,2;3,x;\n")
    r = CliRunner().invoke(main, ["train", "--from-strokes", "--raw-dir", str(raw), "--runs-dir", str(tmp_path),
                                  "--epochs", "1"])
    assert r.exit_code == 1 and "2-7.txt:2" in r.output and "non-numeric" in r.output


def test_an_ablation_study_with_arms(tiny, tmp_path):
    cfg = {
        "dataset": {"raw_dir": str(tiny / "raw")},
        "render": {"rendered_dir": str(tmp_path / "rendered"), "margin": 2, "jobs": 1},
        "train": {"batch_size": 64, "runs_dir": str(tmp_path / "runs"), "device": "cpu"},
        "study": {"name": "abl", "thickness": [3], "size": [32], "seeds": [0], "union": False,
                  "train": {"epochs": 1, "lr": 0.02}, "reports_dir": str(tmp_path / "reports"),
                  "arms": {"images": {"from_strokes": False}, "strokes": {"from_strokes": True},
                           "strokes-rotate": {"from_strokes": True, "stroke_rotate": 10.0}}},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert r.exit_code == 0, r.output
    runs = tmp_path / "runs/abl"
    assert sorted(p.name for p in runs.iterdir()) == [
        "t3-s32-m2-images-seed0", "t3-s32-m2-strokes-rotate-seed0", "t3-s32-m2-strokes-seed0"]
    stroke_cfg = yaml.safe_load((runs / "t3-s32-m2-strokes-rotate-seed0/config.yaml").read_text())
    assert stroke_cfg["from_strokes"] and stroke_cfg["render"]["margin"] == 2 and stroke_cfg["strokes"]["rotate"] == 10
    with open(tmp_path / "reports/abl/results.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["test_variant"] == "own"]
    assert {row["arm"] for row in rows} == {"images", "strokes", "strokes-rotate"}
    for row in rows:
        m = json.loads((runs / row["run"] / "metrics.json").read_text())
        assert float(row["test_accuracy"]) == pytest.approx(m["test_accuracy"], abs=1e-6)
    md = (tmp_path / "reports/abl/report.md").read_text()
    assert "| strokes-rotate |" in md
    again = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert again.exit_code == 0 and again.output.count("finished, not trained again") == 3


def test_arm_names_are_checked(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("study:\n  arms: {'a/b': {}}\n")
    r = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert r.exit_code == 2 and "study.arms.a/b" in r.output
    path.write_text("study:\n  arms: {x: {stroke_wobble: 1}}\n")
    r = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert r.exit_code == 2 and "study.arms.x.stroke_wobble" in r.output


def test_stroke_images_are_not_all_alike(samples):
    """A sanity check on the augmentation's spread: one sample over ten epochs gives ten images."""
    ds = StrokeSet(samples[:1], S32, AUG, seed=0)
    seen = set()
    for epoch in range(10):
        ds.set_epoch(epoch)
        seen.add(np.asarray(ds.draw(0, ds.epoch)).tobytes())
    assert len(seen) == 10
