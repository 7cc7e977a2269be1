"""The pen's order as input channels: measured on the rendered pixels, and a tiny run end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from test_classifier import assert_complete

from classifier import checkpoint, strokeset
from classifier.evaluate import ensemble_name, evaluate_ensemble, evaluate_run, predict_test_split
from classifier.strokeset import StrokeSet
from homus.cli import main
from homus_render.channels import (
    LEVELS,
    SIZE_FULL,
    check_channels,
    draw_channels,
    ink_index,
    path_extent,
    render_channels,
    size_page,
)
from homus_render.dataset import load_samples
from homus_render.distort import StrokeAugment, augment_path, render_augmented
from homus_render.render import RenderSettings, render

S = RenderSettings(thickness=3, width=64, height=64)
ALL = ("ink", "time", "stroke")
LINE = [np.array([[0.0, 0.0], [50.0, 0.0], [100.0, 0.0]])]  # one stroke, drawn left to right


def darkness(img: np.ndarray, cols: slice) -> float:
    """Mean ink (0..1) of the inked pixels in these columns."""
    part = img[:, cols].astype(float)
    return float((255 - part)[part < 255].mean() / 255)


def test_channel_names_are_checked():
    assert check_channels("ink, time") == ("ink", "time")
    assert check_channels(["stroke"]) == ("stroke",)
    with pytest.raises(ValueError, match="unknown channel.*'speed'"):
        check_channels(["ink", "speed"])
    with pytest.raises(ValueError, match="each channel once"):
        check_channels("ink,ink")
    with pytest.raises(ValueError, match="at least one"):
        check_channels([])


def test_ink_is_the_plain_rendering_and_every_channel_has_the_same_strokes(tiny):
    for sample in load_samples(tiny / "raw")[::37]:
        stack = render_channels(sample.strokes, S, ALL)
        assert stack.shape == (3, 64, 64) and stack.dtype == np.uint8
        assert np.array_equal(stack[0], render(sample.strokes, S))
        for order in stack[1:]:  # the same pixels carry ink, only their darkness differs
            assert np.array_equal(order < 255, stack[0] < 255), sample.id
            assert (order.astype(int) >= stack[0].astype(int) - 1).all()  # never darker than the ink (+-rounding)


def test_plain_renderings_shared_among_processes_are_the_same_pixels(tiny, monkeypatch):
    samples = load_samples(tiny / "raw")[:60]
    alone = strokeset.render_samples(samples, S, channels=ALL, jobs=1)
    monkeypatch.setattr(strokeset, "PARALLEL_FROM", 10)  # a pool for a set this small
    shared = strokeset.render_samples(samples, S, channels=ALL, jobs=2)
    assert shared.images.shape == (60, 3, 64, 64)
    assert np.array_equal(shared.images, alone.images) and shared.samples == alone.samples


def test_time_darkens_along_the_pen_so_direction_shows():
    forward = render_channels(LINE, S, ("time",))[0]
    backward = render_channels([LINE[0][::-1]], S, ("time",))[0]
    left, right = slice(0, 24), slice(40, 64)
    assert darkness(forward, left) < 0.5 < darkness(forward, right)
    assert darkness(backward, left) > 0.5 > darkness(backward, right)
    mirror = np.abs(forward[:, ::-1].astype(int) - backward.astype(int))
    assert mirror.mean() < 1 and (mirror > 0).sum() < 40  # a mirror image but for where the rasterizer rounds
    assert np.array_equal(render_channels(LINE, S, ("ink",))[0], render_channels([LINE[0][::-1]], S, ("ink",))[0])


def test_later_strokes_are_darker_and_the_last_is_full_ink():
    first, second = np.array([[0.0, 0.0], [0.0, 100.0]]), np.array([[60.0, 0.0], [60.0, 100.0]])
    ink, time, stroke = render_channels([first, second], S, ALL)
    left, right = slice(0, 30), slice(34, 64)
    assert darkness(stroke, left) / darkness(ink, left) == pytest.approx(0.5, abs=0.02)  # rank 1 of 2
    assert darkness(stroke, right) == pytest.approx(darkness(ink, right), abs=0.01)
    assert darkness(time, left) < darkness(time, right)
    # swapping the order swaps the shades; the ink does not change
    ink2, _, stroke2 = render_channels([second, first], S, ALL)
    assert np.array_equal(ink, ink2)
    assert darkness(stroke2, left) > darkness(stroke2, right)


def test_dots_and_a_still_pen_get_their_shade():
    dots = [np.array([[0.0, 0.0]]), np.array([[40.0, 0.0], [40.0, 0.0]]), np.array([[80.0, 0.0]])]
    ink, time, stroke = render_channels(dots, S, ALL)
    assert np.array_equal(time < 255, ink < 255) and np.array_equal(stroke < 255, ink < 255)
    shades = [darkness(stroke, cols) for cols in (slice(0, 20), slice(22, 42), slice(44, 64))]
    assert shades[0] < shades[1] < shades[2]


def test_without_antialiasing_the_order_channels_ink_the_same_pixels_in_their_shades(tiny):
    s = RenderSettings(thickness=2, width=32, height=32, margin=2, antialias=False)
    ink, time = render_channels(LINE, s, ("ink", "time"))
    assert set(np.unique(ink)) == {0, 255}
    assert np.array_equal(time < 255, ink < 255)
    assert darkness(time, slice(0, 12)) < 0.5 < darkness(time, slice(20, 32))  # the pen's direction shows
    assert time[time < 255].max() <= 255 - round(255 / LEVELS)  # even the first ink shows
    for sample in load_samples(tiny / "raw")[::37]:
        ink, time, stroke = render_channels(sample.strokes, s, ALL)
        assert np.array_equal(time < 255, ink < 255) and np.array_equal(stroke < 255, ink < 255), sample.id
    thin = RenderSettings(thickness=1, width=32, height=32, margin=2, antialias=False)
    dot = render_channels([np.array([[5.0, 5.0]])], thin, ALL)  # a thin dot keeps its centre pixel
    assert [int((c < 255).sum()) for c in dot] == [1, 1, 1]


def test_distorted_channels_share_the_draws_of_the_ink(tiny):
    sample = load_samples(tiny / "raw")[3]
    aug = StrokeAugment(rotate=10, shear=10, elastic=0.04, jitter=0.005, ends=0.3, thickness=1)
    stack = render_augmented(sample.strokes, S, aug, np.random.default_rng(7), ALL)
    ink = render_augmented(sample.strokes, S, aug, np.random.default_rng(7))
    assert stack.shape == (3, 64, 64) and np.array_equal(stack[0], ink)
    assert np.array_equal(stack[1] < 255, ink < 255)
    ds = StrokeSet([sample], S, aug, seed=1, channels=("ink", "time"))
    x, _ = ds[[0]]
    assert x.shape == (1, 2, 64, 64) and torch.equal(x, ds[[0]][0])


def test_the_size_page_is_as_dark_as_the_symbol_is_large_on_the_tablet():
    ring = [np.array([[np.cos(a), np.sin(a)] for a in np.linspace(0, 2 * np.pi, 40)])]
    pages = {}
    for extent in (6.0, 30.0, 130.0):  # a dot, a rest, a clef
        big = [st * extent / 2 for st in ring]
        ink, size = render_channels(big, S, ("ink", "size"))
        pages[extent] = size
        assert size.min() == size.max()  # flat: no pen stroke, one shade
        assert abs(ink.astype(int) - render(ring, S).astype(int)).max() <= 1  # the fit keeps the ink alike
        assert path_extent(big) == pytest.approx(extent, rel=0.002)
        assert int(size[0, 0]) == 255 - round(255 * np.log2(path_extent(big)) / np.log2(SIZE_FULL))
    assert pages[6.0][0, 0] > pages[30.0][0, 0] > pages[130.0][0, 0]  # larger, darker
    assert size_page(0.0, S)[0, 0] == 255 and size_page(1e6, S)[0, 0] == 0  # a dot: paper; beyond full: full
    with pytest.raises(ValueError, match="finite"):
        size_page(float("nan"), S)
    with pytest.raises(ValueError, match="needs the symbol's size"):
        draw_channels(LINE, S, ("ink", "size"))
    assert ink_index(("size", "time")) == 1 and ink_index(("time", "ink", "size")) == 1  # pictures show strokes


def test_the_size_jitter_moves_the_size_page_only_and_within_its_range():
    circle = [np.array([[20 * np.cos(a), 20 * np.sin(a)] for a in np.linspace(0, 2 * np.pi, 40)])]
    geometry = {"rotate": 10.0, "elastic": 0.04, "translate": 0.05}
    read = []
    for i in range(30):
        still = render_augmented(circle, S, StrokeAugment(**geometry), np.random.default_rng(i), ("ink", "size"))
        moved = render_augmented(circle, S, StrokeAugment(**geometry, size=0.3), np.random.default_rng(i),
                                 ("ink", "size"))
        assert np.array_equal(moved[0], still[0])  # drawn last: every other draw, and the ink, as before
        _, _, extent = augment_path(circle, S, StrokeAugment(**geometry), np.random.default_rng(i))
        amount = (255 - int(moved[1, 0, 0])) / 255 * np.log2(SIZE_FULL)  # log2 of the size it reads
        read.append(amount - np.log2(extent))
    step = np.log2(SIZE_FULL) / 255  # one shade
    assert all(-0.3 / np.log(2) - step <= r <= 0.3 / np.log(2) + step for r in read)
    assert np.std(read) > 0.1  # it does move


def test_a_tiny_run_that_reads_the_pens_order(tiny, tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"raw_dir": str(tiny / "raw")}, "render": {"margin": 2}}))
    base = ["train", "--config", str(config), "--from-strokes", "--thickness", "3", "--size", "32", "--epochs", "1",
            "--batch-size", "64", "--runs-dir", str(tmp_path / "runs"), "--device", "cpu"]
    r = CliRunner().invoke(main, [*base, "--channels", "ink,time,stroke,size"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs/strokes-t3-s32-m2-ink+time+stroke+size-resnet18-writer-seed0"
    assert_complete(run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["channels"] == ["ink", "time", "stroke", "size"] and cfg["strokes"]["size"] == 0.2
    model, ckpt = checkpoint.load_model(run / "best.pt")
    assert ckpt["in_channels"] == 4 and checkpoint.channels(ckpt) == ("ink", "time", "stroke", "size")
    assert model.conv1.in_channels == 4
    metrics = json.loads((run / "metrics.json").read_text())
    own = evaluate_run(run, device="cpu")  # its test split drawn again, in its four channels
    assert own["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    # a folder of PNGs has no pen order nor size: the test split is drawn from the strokes at its settings
    folder = evaluate_run(run, tiny / "rendered/t3-s32-m2", device="cpu")
    assert folder["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    thin = evaluate_run(run, tiny / "rendered/t1-s32-m2", device="cpu")
    assert thin["variant"] == "t1-s32-m2" and thin["n_test"] == own["n_test"]
    # predict: stroke files answer (with their size), an image cannot
    png = next((tiny / "rendered/t3-s32-m2/G-Clef").glob("*.png"))
    pr = CliRunner().invoke(main, ["predict", str(run), str(tiny / "raw/5/5-1.txt"), str(png), "--json"])
    assert pr.exit_code == 1
    answers = json.loads(pr.stdout)
    assert len(answers[0]["top"]) == 3 and "give it HOMUS .txt stroke files" in answers[1]["error"]


def test_an_ensemble_of_an_ink_and_an_order_model(tiny, tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"raw_dir": str(tiny / "raw")}, "render": {"margin": 2}}))
    base = ["train", "--config", str(config), "--from-strokes", "--thickness", "3", "--size", "32", "--epochs", "1",
            "--batch-size", "64", "--runs-dir", str(tmp_path / "runs"), "--device", "cpu"]
    for channels in ("ink", "ink,time"):
        r = CliRunner().invoke(main, [*base, "--channels", channels])
        assert r.exit_code == 0, r.output
    ink = tmp_path / "runs/strokes-t3-s32-m2-resnet18-writer-seed0"
    order = tmp_path / "runs/strokes-t3-s32-m2-ink+time-resnet18-writer-seed0"
    out = tmp_path / "ens.json"
    r = CliRunner().invoke(main, ["evaluate", str(ink), str(order), "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())
    assert (tmp_path / "ens-confusion.png").stat().st_size > 0
    for member, run in zip(m["members"], (ink, order), strict=True):  # each model read its own input
        assert member["test_accuracy"] == pytest.approx(json.loads((run / "metrics.json").read_text())["test_accuracy"])
    a, b = predict_test_split(ink, device="cpu"), predict_test_split(order, device="cpu")
    assert a["ids"] == b["ids"] and m["n_test"] == len(a["ids"])
    vote = (a["probs"] + b["probs"]).argmax(1)
    assert m["test_accuracy"] == pytest.approx(float((vote == a["targets"]).mean()))
    # one model twice votes exactly as it does alone; the command refuses it (it is no ensemble)
    twice = evaluate_ensemble([ink, ink], tmp_path / "twice.json", device="cpu")
    assert twice["test_accuracy"] == pytest.approx(m["members"][0]["test_accuracy"])
    r = CliRunner().invoke(main, ["evaluate", str(ink), str(ink), "--out", str(tmp_path / "twice.json")])
    assert r.exit_code == 2 and "again; give each run once" in r.output
    # a member tested on another split would be scored partly on what another member trained on
    other = tmp_path / "other"
    shutil.copytree(order, other)
    split = json.loads((other / "split.json").read_text())
    n = len(split["test"])
    split["test"], split["train"] = split["train"][:n], split["test"] + split["train"][n:]
    (other / "split.json").write_text(json.dumps(split))
    r = CliRunner().invoke(main, ["evaluate", str(ink), str(other), "--out", str(tmp_path / "bad.json")])
    assert r.exit_code == 1 and "another split" in r.output and not (tmp_path / "bad.json").exists()
    # another seed on the same split (--split-seed): a model of its own, the same test writers
    r = CliRunner().invoke(main, [*base, "--seed", "1", "--split-seed", "0"])
    assert r.exit_code == 0, r.output
    seed1 = tmp_path / "runs/strokes-t3-s32-m2-resnet18-writer0-seed1"
    assert json.loads((seed1 / "split.json").read_text()) == json.loads((ink / "split.json").read_text())
    assert json.loads((seed1 / "metrics.json").read_text())["split_seed"] == 0
    w0, w1 = (checkpoint.load(run / "best.pt")["model"]["conv1.weight"] for run in (ink, seed1))
    assert not torch.equal(w0, w1)
    r = CliRunner().invoke(main, ["evaluate", str(ink), str(seed1), "--out", str(tmp_path / "seeds.json")])
    assert r.exit_code == 0, r.output


def test_an_ensemble_of_many_runs_gets_a_file_name_the_disk_takes():
    runs = [f"runs/writer-strokes-t3-s64-ink+time+stroke-e20-split0-seed{k}" for k in range(12)]
    name = ensemble_name(runs)
    assert len(f"{name}-confusion.png".encode()) < 255 and name.startswith("ensemble-writer-strokes")
    assert "-and-11-more-" in name and name != ensemble_name(runs[:11] + ["runs/other"])  # the hash tells them apart
    assert ensemble_name(runs[:2]) == f"ensemble-{runs[0][5:]}+{runs[1][5:]}"  # a few runs: their names


def test_channel_settings_that_cannot_work_are_refused(tiny, tmp_path):
    base = ["train", "--raw-dir", str(tiny / "raw"), "--runs-dir", str(tmp_path), "--epochs", "1"]
    r = CliRunner().invoke(main, [*base, "--channels", "ink,pressure"])
    assert r.exit_code == 2 and "unknown channel(s) 'pressure'" in r.output
    r = CliRunner().invoke(main, [*base, "--variant", str(tiny / "rendered/t3-s32-m2"), "--channels", "ink,time"])
    assert r.exit_code == 2 and "exist only in the strokes" in r.output


def test_a_checkpoint_whose_channels_disagree_is_refused(tmp_path):
    from classifier.models import build_model

    model = build_model("resnet18", 32, 2)
    checkpoint.save(tmp_path / "x.pt", {"model": model.state_dict(), "arch": "resnet18", "classes": ["a"] * 32,
                                        "in_channels": 2, "channels": ["ink"], "render": S.to_dict()})
    with pytest.raises(checkpoint.CheckpointError, match="do not match in_channels 2"):
        checkpoint.load(tmp_path / "x.pt")


def test_a_union_study_cannot_read_the_pens_order(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"study": {"thickness": [1, 3], "size": [32], "union": True,
                                              "train": {"channels": ["ink", "time"]}}}))
    r = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert r.exit_code != 0 and "study.union" in r.output and "ink alone" in r.output
