"""The classifier end to end on tiny synthetic data: run folders, splits, resume, evaluate, predict, errors."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SYNTHETIC_PER_CLASS

from classifier import checkpoint
from classifier.data import load_variant
from classifier.train import TrainConfig, split_for, train
from homus.cli import main
from homus.config import load as load_config
from homus.config import train_config
from homus_render.render import RenderSettings

PER_WRITER = 32 * SYNTHETIC_PER_CLASS  # the synthetic dataset: each writer draws every class 3 times
RUN_FILES = ("config.yaml", "split.json", "best.pt", "history.csv", "metrics.json",
             "confusion.png", "curves.png", "errors.png")


def assert_complete(run: Path) -> None:
    """Every file of a finished run is there and not empty; the resume state has gone, and best.pt
    holds the model without the optimizer's state."""
    for f in RUN_FILES:
        assert (run / f).is_file() and (run / f).stat().st_size > 0, f
    assert not (run / "last.pt").exists()
    assert not {"optimizer", "scheduler", "scaler"} & set(checkpoint.load(run / "best.pt"))


def cfg_for(tiny: Path, **kw) -> TrainConfig:
    """A tiny run on the t3 variant, through the one settings path (as `homus train` builds it)."""
    base = {"from_strokes": False, "variants": [str(tiny / "rendered/t3-s32-m2")], "epochs": 1, "batch_size": 64,
            "lr": 0.02, "runs_dir": str(tiny / "runs"), "device": "cpu"}
    return train_config(load_config(), {**base, **kw})


@pytest.fixture(scope="module")
def cli_run(tiny) -> tuple[Path, str]:
    """One run trained by `homus train` (the CLI's output returned beside its folder)."""
    runs = tiny / "runs-cli"
    result = CliRunner().invoke(main, ["train", "--variant", str(tiny / "rendered/t3-s32-m2"), "--epochs", "1",
                                       "--batch-size", "64", "--runs-dir", str(runs), "--name", "cli",
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return runs / "cli", result.output


def test_cli_train_leaves_a_complete_run(tiny, cli_run):
    run, output = cli_run
    runs = run.parent
    assert_complete(run)
    metrics = json.loads((run / "metrics.json").read_text())
    split = json.loads((run / "split.json").read_text())
    assert split["kind"] == "writer" and metrics["split"] == "writer"
    assert metrics["n_test"] == len(split["test"]) == PER_WRITER  # one writer's samples
    assert sum(c["support"] for c in metrics["per_class"].values()) == metrics["n_test"]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1"]
    assert float(rows[0]["val_acc"]) == pytest.approx(metrics["val_accuracy"], abs=1e-5)
    assert set(rows[0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"}
    best = checkpoint.load(run / "best.pt")
    assert best["render"]["width"] == 32 and len(best["classes"]) == 32 and best["epoch"] == 1
    assert f"test accuracy {metrics['test_accuracy']:.4f}" in output

    # a finished run is never trained again by accident
    again = CliRunner().invoke(main, ["train", "--variant", str(tiny / "rendered/t3-s32-m2"), "--epochs", "1",
                                      "--runs-dir", str(runs), "--name", "cli"])
    assert again.exit_code != 0 and "already complete" in again.output

    # evaluate on another thickness; predict on an image and a stroke file
    ev = CliRunner().invoke(main, ["evaluate", str(run), "--variant", str(tiny / "rendered/t1-s32-m2"),
                                   "--device", "cpu"])
    assert ev.exit_code == 0, ev.output
    saved = json.loads((run / "eval-t1-s32-m2.json").read_text())
    assert saved["n_test"] == PER_WRITER and saved["trained_on"] == ["t3-s32-m2"]
    assert saved["trained_size"] == saved["tested_size"] == [32, 32] and "note:" not in ev.output
    ev = CliRunner().invoke(main, ["evaluate", str(run), "--out", str(tiny / "one.json"), "--device", "cpu"])
    assert ev.exit_code == 2 and "eval-<variant>.json" in ev.output and not (tiny / "one.json").exists()

    png = next((tiny / "rendered/t3-s32-m2/G-Clef").glob("*.png"))
    big = cv2.resize(cv2.imread(str(png), cv2.IMREAD_GRAYSCALE), (300, 200))  # any size, white on black
    cv2.imwrite(str(tiny / "query.png"), 255 - big)
    (tiny / "junk.png").write_bytes(b"not an image at all")
    stroke = tiny / "raw/5/5-1.txt"
    pr = CliRunner().invoke(main, ["predict", str(run), str(tiny / "query.png"), str(stroke),
                                   str(tiny / "junk.png"), "--json", "--top-k", "2"])
    assert pr.exit_code == 1  # one bad input: reported, the others still answered
    answers = json.loads(pr.stdout)
    assert [len(a.get("top", [])) for a in answers] == [2, 2, 0]
    assert "neither an image" in answers[2]["error"]
    for a in answers[:2]:
        probs = [t["probability"] for t in a["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def test_splits_identical_across_variants(tiny):
    v1 = load_variant(tiny / "rendered/t1-s32-m2")
    v3 = load_variant(tiny / "rendered/t3-s32-m2")
    s1, writer_of = split_for([v1], "writer", 0)
    s3, _ = split_for([v3], "writer", 0)
    both, _ = split_for([v1, v3], "writer", 0)
    assert s1 == s3 == both
    sides = [{writer_of[s] for s in s1[k]} for k in ("train", "val", "test")]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    r1, _ = split_for([v1], "random", 4)
    r3, _ = split_for([v3], "random", 4)
    assert r1 == r3 and not set(r1["train"]) & set(r1["test"])


def test_union_of_variants_trains_on_both(tiny):
    run = train(cfg_for(tiny, variants=[str(tiny / "rendered/t1-s32-m2"), str(tiny / "rendered/t3-s32-m2")],
                        name="union"), log=lambda m: None)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_test"] == 2 * PER_WRITER
    assert set(metrics["test_accuracy_by_variant"]) == {"t1-s32-m2", "t3-s32-m2"}


@pytest.mark.parametrize("extra", [{}, {"ema": 0.9}, {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}],
                         ids=["plain", "ema", "mix"])
def test_resume_after_a_kill_ends_like_an_uninterrupted_run(tiny, monkeypatch, extra):
    """Killed after its first epoch and continued, a run ends as if never stopped: with a moving
    average of its weights too, which last.pt carries, and with mixup and cutmix, whose blends
    each epoch draws afresh from its own seed."""
    ema = extra.get("ema", 0.0)
    tag = "-".join(f"{k}{v}" for k, v in extra.items()) or "plain"
    whole = train(cfg_for(tiny, epochs=2, **extra, name=f"whole-{tag}"), log=lambda m: None)

    real_save = checkpoint.save

    def save_then_die(path, ckpt):
        real_save(path, ckpt)
        if Path(path).name == "last.pt" and ckpt["epoch"] == 1:
            raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(tiny, epochs=2, **extra, name=f"killed-{tag}"), log=lambda m: None)
    monkeypatch.setattr(checkpoint, "save", real_save)
    killed = tiny / f"runs/killed-{tag}"
    last = checkpoint.load(killed / "last.pt")
    assert not (killed / "metrics.json").exists() and last["epoch"] == 1 and ("ema" in last) == bool(ema)

    result = CliRunner().invoke(main, ["train", "--resume", str(killed)])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    for key in ("val_accuracy", "test_accuracy", "macro_f1", "n_test", "best_epoch"):
        assert a[key] == b[key], key
    assert (whole / "split.json").read_text() == (killed / "split.json").read_text()
    ha = list(csv.DictReader(io.StringIO(Path(whole / "history.csv").read_text())))
    hb = list(csv.DictReader(io.StringIO(Path(killed / "history.csv").read_text())))
    assert [(r["train_loss"], r["val_acc"]) for r in ha] == [(r["train_loss"], r["val_acc"]) for r in hb]


@pytest.mark.parametrize("after", ["best", "last"])
def test_a_kill_between_the_two_checkpoints_leaves_a_best_model_the_run_believes(tiny, monkeypatch, after):
    """Killed after epoch 2's new best model was saved but before its last.pt (``best``), best.pt
    still holds epoch 1, which last.pt continues from; killed after last.pt (``last``), the resume
    puts epoch 2's best model in place. Either way metrics.json names the epoch best.pt holds."""
    import classifier.train as training
    from classifier.runfolder import BEST_PENDING

    real_evaluate, real_save = training.evaluate, checkpoint.save

    def rising(*args, desc="eval", **kw):  # each epoch validates better than the one before
        res = real_evaluate(*args, desc=desc, **kw)
        return {**res, "acc": int(desc.split()[1]) / 10} if desc.endswith(" val") else res

    def die(path, ckpt):
        real_save(path, ckpt)
        if ckpt["epoch"] == 2 and (Path(path).name == "last.pt") == (after == "last"):
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "evaluate", rising)
    monkeypatch.setattr(checkpoint, "save", die)
    name = f"torn-{after}"
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(tiny, epochs=2, name=name), log=lambda m: None)
    run = tiny / "runs" / name
    last, best = checkpoint.load(run / "last.pt"), checkpoint.load(run / "best.pt")
    assert best["epoch"] <= last["epoch"] == (2 if after == "last" else 1)
    monkeypatch.setattr(checkpoint, "save", real_save)
    train(cfg_for(tiny, epochs=2, name=name), resume=True, log=lambda m: None)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] == checkpoint.load(run / "best.pt")["epoch"] == 2
    assert not (run / BEST_PENDING).exists()


def test_fine_tune_from_a_checkpoint(tiny, cli_run):
    base = cli_run[0] / "best.pt"
    run = train(cfg_for(tiny, variants=[str(tiny / "rendered/t1-s32-m2")], weights=str(base), name="ft"),
                log=lambda m: None)
    assert (run / "metrics.json").exists()
    lines = []
    with pytest.raises(checkpoint.CheckpointError, match="--arch resnet18"):
        train(cfg_for(tiny, arch="resnet34", weights=str(base), name="ft34"), log=lines.append)
    assert lines == []  # refused before any data was read or any file written
    assert not (Path(cfg_for(tiny).runs_dir) / "ft34").exists()


def test_train_errors_are_clear(tiny, tmp_path):
    r = CliRunner().invoke(main, ["train", "--variant", str(tmp_path / "nope"), "--runs-dir", str(tmp_path)])
    assert r.exit_code == 1 and "not a rendered variant" in r.output
    # a variant of only two writers cannot give a writer split
    two = tmp_path / "two"
    v = tiny / "rendered/t3-s32-m2"
    shutil.copytree(v, two)
    rows = list(csv.DictReader(io.StringIO(Path(v / "manifest.csv").read_text())))
    with open(two / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label", "writer", "sample"])
        w.writeheader()
        w.writerows(r for r in rows if r["writer"] in ("1", "2"))
    r = CliRunner().invoke(main, ["train", "--variant", str(two), "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 1 and "at least 3 writers" in r.output
    r = CliRunner().invoke(main, ["train", "--resume", str(tmp_path)])
    assert r.exit_code == 1 and "not a homus run folder" in r.output
    r = CliRunner().invoke(main, ["train", "--variant", str(v), "--split-seed", "-1", "--runs-dir", str(tmp_path)])
    assert r.exit_code == 2 and "split_seed must be a whole number >= 0" in r.output
    config = tmp_path / "bool.yaml"
    config.write_text("train:\n  split_seed: true\n")
    r = CliRunner().invoke(main, ["train", "--config", str(config), "--variant", str(v), "--runs-dir", str(tmp_path)])
    assert r.exit_code == 2 and f"{config}: 'train.split_seed (--split-seed)' must be int or null, got True" in r.output


def test_corrupted_checkpoint_is_a_clear_error(tiny, cli_run, tmp_path):
    src = cli_run[0]
    run = tmp_path / "copy"
    shutil.copytree(src, run)
    data = (run / "best.pt").read_bytes()
    (run / "best.pt").write_bytes(data[: len(data) // 3])
    r = CliRunner().invoke(main, ["evaluate", str(run), "--device", "cpu"])
    assert r.exit_code == 1 and "best.pt: not a readable homus checkpoint" in r.output
    r = CliRunner().invoke(main, ["predict", str(run), str(tiny / "raw/5/5-1.txt")])
    assert r.exit_code == 1 and "best.pt" in r.output


def test_predict_frames_images_like_the_renderer():
    from classifier.predict import InputError, normalize_image

    s = RenderSettings(thickness=3, width=48, height=48, margin=4)
    canvas = np.zeros((120, 300, 3), np.uint8)  # light ink on dark paper, off-centre, colour
    cv2.line(canvas, (200, 10), (210, 100), (255, 255, 255), 5)
    out = normalize_image(canvas, s)
    assert out.shape == (48, 48) and out.dtype == np.uint8
    ys, xs = np.nonzero(out < 128)
    assert ys.min() >= 3 and ys.max() <= 44  # fitted to the canvas minus the margin
    assert abs((ys.min() + ys.max()) / 2 - 23.5) <= 1 and abs((xs.min() + xs.max()) / 2 - 23.5) <= 1
    assert out[0, 0] == 255  # black on white, as rendered
    with pytest.raises(InputError, match="blank"):
        normalize_image(np.full((50, 50), 255, np.uint8), s)


def test_a_last_batch_of_one_image_joins_the_one_before():
    """Batch normalisation cannot train on one image: 10 images in batches of 3 are 3, 3 and 4,
    every image once an epoch, and the count the schedule is built on is the count the loader gives."""
    from classifier.data import EpochBatches, batch_count

    assert [batch_count(n, 3) for n in (1, 2, 3, 4, 5, 6, 7, 10)] == [1, 1, 1, 1, 2, 2, 2, 3]
    sampler = EpochBatches(10, 3, seed=4)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = [idx for _, idx in sampler]
        assert [len(b) for b in batches] == [3, 3, 4] and len(sampler) == 3
        assert sorted(i for b in batches for i in b) == list(range(10))
    sampler = EpochBatches(9, 3, seed=4)  # no lone image: batches as before
    assert [len(idx) for _, idx in sampler] == [3, 3, 3]


def test_a_run_whose_last_batch_would_hold_one_image_trains(synthetic_raw, tmp_path):
    n_train = 4 * 32 * SYNTHETIC_PER_CLASS  # the writer split of the 6 synthetic writers trains on 4
    r = CliRunner().invoke(main, ["train", "--raw-dir", str(synthetic_raw), "--runs-dir", str(tmp_path), "--name", "b",
                                  "--from-strokes", "--size", "32", "--epochs", "1", "--batch-size", str(n_train - 1),
                                  "--workers", "0", "--threads", "1", "--device", "cpu"])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert len(json.loads((tmp_path / "b/split.json").read_text())["train"]) == n_train
    assert f"{n_train:,} train" in r.output


def one_line(r, code: int = 1) -> str:
    """The single error line of a failed command (no traceback)."""
    assert r.exit_code == code and "Traceback" not in r.output, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith(("error:", "Error:"))]
    assert len(errors) == 1, r.output
    return errors[0]


def test_reading_commands_never_overwrite_a_run_or_count_it_twice(tiny, cli_run, tmp_path):
    """From a hostile probe: `evaluate --out RUN/best.pt` wrote JSON over the model, `export` could
    too; `compare RUN RUN` counted one run twice; an empty --out wrote into the current folder."""
    run = cli_run[0]
    other = tmp_path / "other"
    shutil.copytree(run, other)
    model = (run / "best.pt").read_bytes()
    line = one_line(CliRunner().invoke(main, ["evaluate", str(run), str(other), "--out", str(run / "best.pt")]))
    assert "own best.pt, which this would overwrite" in line and (run / "best.pt").read_bytes() == model
    line = one_line(CliRunner().invoke(main, ["export", str(other), "--out", str(other / "split.json")]))
    assert "own split.json" in line
    line = one_line(CliRunner().invoke(main, ["compare", str(run), str(other / ".." / "other"), str(run)]), 2)
    assert "again; give each run once" in line
    line = one_line(CliRunner().invoke(main, ["evaluate", str(run), str(run) + "/"]), 2)
    assert "again; give each run once" in line
    line = one_line(CliRunner().invoke(main, ["compare", str(run), str(tmp_path)]))
    assert "not a homus run folder (no config.yaml)" in line and "--resume" not in line
    for args in (["explain", str(run), str(tiny / "raw/1/1-1.txt")], ["export", str(run)], ["compare", str(run)]):
        line = one_line(CliRunner().invoke(main, [*args, "--out", ""]), 2)
        assert "must be a path, got ''" in line
    r = CliRunner().invoke(main, ["predict", str(run), "/dev/null"])
    assert r.exit_code == 1 and "/dev/null: not a regular file" in r.output


@pytest.mark.parametrize("edit, words", [
    (lambda s: {**s, "test": []}, "the test split is empty"),
    (lambda s: {**s, "test": [1, 2]}, "'test' must be a list of sample names"),
    (lambda s: {**s, "test": s["test"][:1] * 2}, "'test' names a sample twice"),
    (lambda s: {**s, "test": s["test"] + s["train"][:1]}, "is also a training or validation sample"),
    (lambda s: {**s, "test": s["test"] + ["9-999"]}, "1 of its"),
])
def test_evaluate_refuses_a_damaged_split_rather_than_score_part_of_it(cli_run, tmp_path, edit, words):
    run = tmp_path / "run"
    shutil.copytree(cli_run[0], run)
    split = json.loads((run / "split.json").read_text())
    (run / "split.json").write_text(json.dumps(edit(split)))
    line = one_line(CliRunner().invoke(main, ["evaluate", str(run)]))
    assert words in line


def test_evaluate_on_a_variant_with_part_of_the_test_split_says_so(tiny, cli_run, tmp_path):
    """A variant rendered from writers 1 and 2 holds half of a test split of writers 2 and 3: the
    figure is printed with a note saying what it covers."""
    run = tmp_path / "run"
    shutil.copytree(cli_run[0], run)
    split = json.loads((run / "split.json").read_text())
    ids = split["train"] + split["val"] + split["test"]
    test = [i for i in ids if i.split("-")[0] in ("2", "3")]
    rest = [i for i in ids if i not in test]
    (run / "split.json").write_text(json.dumps({**split, "train": rest[1:], "val": rest[:1], "test": test}))
    part = tmp_path / "part"
    r = CliRunner().invoke(main, ["render", "--raw-dir", str(tiny / "raw"), "--rendered-dir", str(part), "--writers",
                                  "1-2", "--thickness", "3", "--size", "32", "--margin", "2", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    variant = next(part.iterdir())
    r = CliRunner().invoke(main, ["evaluate", str(run), "--variant", str(variant)])
    half = len(test) // 2
    assert r.exit_code == 0 and f"{half:,} of the run's {len(test):,} test samples are not in {variant}" in r.output
    assert json.loads((run / f"eval-{variant.name}.json").read_text())["n_test"] == half
