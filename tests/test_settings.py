"""One settings path: TrainConfig built from pipeline.yaml < the user's config < flags, range checks
that name the flag, config files that fight back, runs recorded in the old flat layout, and the
CI rule that a skip must be expected."""

from __future__ import annotations

import math
import re
import time
import tracemalloc
from dataclasses import fields
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from classifier.augment import Affine
from classifier.runfolder import RunError, RunFolder
from classifier.settings import (
    AMP_MODES,
    ARCHS,
    DEVICES,
    OPTIMIZERS,
    RASTERS,
    SCHEDULES,
    STEMS,
    WHERE_KEYS,
    TrainConfig,
    read_yaml,
    setting_differences,
    upgrade_run_config,
)
from classifier.splits import KINDS
from homus.cli import main, train_overrides
from homus.config import LOG_LEVELS, ConfigError, load, train_config
from homus_render.channels import CHANNELS
from homus_render.distort import StrokeAugment
from homus_render.errors import SettingsError
from homus_render.render import FITS, RenderSettings


def write(tmp_path: Path, text: str | bytes, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_flags_over_the_users_file_over_pipeline_yaml(tmp_path):
    cfg = load(write(tmp_path, "train:\n  lr: 0.2\n  epochs: 7\n  strokes: {rotate: 4.0}\n"))
    tc = train_config(cfg, {"epochs": 2, "strokes": {"shear": 1.0}, "size": "48x40", "thickness": 2})
    defaults = load(None)["train"]
    assert (tc.lr, tc.epochs) == (0.2, 2)  # the file's lr; the flag's epochs
    assert tc.strokes == StrokeAugment(**{**defaults["strokes"], "rotate": 4.0, "shear": 1.0})
    assert tc.render == RenderSettings(thickness=2, width=48, height=40, margin=4)
    assert tc.warp == Affine(0.0, 0.0, 0.0, 0.0)  # a run from strokes uses no image warp, and records so
    images = train_config(cfg, {"from_strokes": False})
    assert images.warp == Affine(**defaults["warp"]) and images.variants == defaults["variants"]


def test_the_run_records_every_setting_and_reads_back_the_same(tmp_path):
    tc = train_config(load(None), {"channels": "ink,time", "split_seed": 3})
    d = tc.to_dict()
    assert list(d) == [f.name for f in fields(TrainConfig)]
    assert set(d["render"]) == {f.name for f in fields(RenderSettings)}
    assert set(d["strokes"]) == {f.name for f in fields(StrokeAugment)} and set(d["warp"]) == {f.name for f in
                                                                                                 fields(Affine)}
    path = write(tmp_path, yaml.safe_dump(d, sort_keys=False), "config.yaml")
    assert TrainConfig.from_dict(RunFolder(tmp_path).config(), path) == tc


def test_differences_are_what_is_learned_not_where_it_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = train_config(load(None), {"weights": "start.pt"})
    moved = train_config(load(None), {"weights": str(tmp_path / "start.pt"), "device": "cuda", "workers": 7,
                                      "threads": 3, "raster": "device", "compile": True, "amp": False,
                                      "runs_dir": "/elsewhere", "raw_dir": "/data/raw", "name": "x"})
    assert setting_differences(base.to_dict(), moved.to_dict()) == []
    assert {"device", "workers", "threads", "raster", "compile", "amp", "runs_dir", "raw_dir"} <= set(WHERE_KEYS)
    other = train_config(load(None), {"weights": "other.pt", "epochs": 3, "stroke_rotate": 2.5, "channels": "ink,size"})
    diff = {k: (a, b) for k, a, b in setting_differences(base.to_dict(), other.to_dict())}
    assert diff["epochs"] == (base.epochs, 3) and diff["strokes.rotate"] == (base.strokes.rotate, 2.5)
    assert diff["channels"] == (["ink"], ["ink", "size"]) and diff["weights"][1] == str(tmp_path / "other.pt")
    assert set(diff) == {"epochs", "strokes.rotate", "channels", "weights", "strokes.size"}  # size: now read


def test_differences_leave_out_what_a_kind_of_run_ignores():
    strokes = train_config(load(None), {"from_strokes": True}).to_dict()
    old_layout = {**strokes, "variants": ["rendered/t3-s64"], "warp": {k: 5.0 for k in strokes["warp"]},
                  "strokes": {**strokes["strokes"], "size": 0.4}}  # what runs of an older homus recorded
    assert setting_differences(old_layout, strokes) == []  # a run from strokes without a size channel
    sized = {**strokes, "channels": ["ink", "size"]}
    assert setting_differences({**sized, "strokes": old_layout["strokes"]}, sized) == [
        ("strokes.size", 0.4, strokes["strokes"]["size"])]
    union = "rendered/t1-s32,rendered/t3-s32"
    rendered = train_config(load(None), {"from_strokes": False, "variants": union}).to_dict()
    other_draw = {**rendered, "render": {**rendered["render"], "width": 48}, "strokes": old_layout["strokes"],
                  "variants": ["/abs/rendered/t1-s32", "/abs/rendered/t3-s32"]}
    assert setting_differences(rendered, other_draw) == []  # a union reads its folders, not render
    assert setting_differences(rendered, {**rendered, "warp": {**rendered["warp"], "rotate": 9.0}}) == [
        ("warp.rotate", rendered["warp"]["rotate"], 9.0)]


def test_an_old_flat_run_config_reads_as_the_nested_one():
    nested = train_config(load(None), {"from_strokes": False}).to_dict()
    flat = {k: v for k, v in nested.items() if k not in ("strokes", "warp", "folds", "fold", "split_seed")}
    flat.update({f"stroke_{k}": v for k, v in nested["strokes"].items() if k != "size"})  # before the size jitter
    flat.update({f"aug_{k}": v for k, v in nested["warp"].items()})
    up = upgrade_run_config(flat)
    assert up["strokes"] == {**nested["strokes"], "size": 0.0} and up["warp"] == nested["warp"]
    assert (up["folds"], up["fold"], up["split_seed"]) == (0, 0, None)
    assert TrainConfig.from_dict(up).warp == TrainConfig.from_dict(nested).warp


@pytest.mark.parametrize("bad, words", [
    ({"extra": 1}, "unknown key 'train.extra'"),
    ({"strokes": {"rotate": 1, "wobble": 2}}, "unknown key 'train.strokes.wobble'"),
])
def test_unknown_keys_in_a_run_config_are_named_with_the_file(bad, words):
    d = {**train_config(load(None)).to_dict()}
    for k, v in bad.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) else v
    with pytest.raises(SettingsError, match=f"runs/x/config.yaml: {words}"):
        TrainConfig.from_dict(d, "runs/x/config.yaml")
    d = train_config(load(None)).to_dict()
    del d["lr"]
    with pytest.raises(SettingsError, match="lacks 'train.lr'"):
        TrainConfig.from_dict(d, "here")


@pytest.mark.parametrize("flags, words", [
    (["--lr", "nan"], "train.lr (--lr) must be a finite number, got nan"),
    (["--lr", "inf"], "train.lr (--lr) must be a finite number"),
    (["--lr", "0"], "train.lr (--lr) must be > 0"),
    (["--weight-decay", "-0.1"], "train.weight_decay (--weight-decay) must be >= 0"),
    (["--label-smoothing", "1"], "train.label_smoothing (--label-smoothing) must be from 0 to below 1"),
    (["--momentum", "1.0"], "train.momentum (--momentum) must be from 0 to below 1"),
    (["--epochs", "0"], "train.epochs (--epochs) must be a whole number from 1"),
    (["--batch-size", "0"], "train.batch_size (--batch-size) must be a whole number from 2"),
    (["--workers", "-1"], "train.workers (--workers) must be a whole number from 0"),
    (["--seed", "-3"], "train.seed (--seed) must be a whole number from 0"),
    (["--stroke-rotate", "nan"], "train.strokes.rotate (--stroke-rotate) must be a finite number"),
    (["--stroke-scale", "-1"], "train.strokes.scale (--stroke-scale) must be a finite number >= 0"),
    (["--folds", "1"], "train.folds (--folds) must be 0 (one split) or a number of folds"),
    (["--folds", "3", "--fold", "3"], "train.fold (--fold) must be a fold from 0 to 2"),
])
def test_numbers_out_of_range_are_refused_naming_the_flag(tmp_path, flags, words):
    r = CliRunner().invoke(main, ["train", "--raw-dir", str(tmp_path / "none"), "--runs-dir", str(tmp_path), *flags])
    key, _, rest = words.partition(" must ")
    assert r.exit_code == 2 and key in r.output and f"must {rest}" in r.output, r.output
    assert "Traceback" not in r.output and not any(tmp_path.iterdir())  # refused before anything is made


@pytest.mark.parametrize("flags", [["--channels", "ink,size"], ["--variant", "rendered/t3-s64"]])
def test_stroke_redraw_that_would_do_nothing_is_refused(tmp_path, flags):
    """Other tools' images are drawn of the ink, from the strokes: with other channels or rendered
    folders, --stroke-redraw would be recorded in the run and do nothing."""
    r = CliRunner().invoke(main, ["train", "--raw-dir", str(tmp_path / "none"), "--runs-dir", str(tmp_path),
                                  "--stroke-redraw", "0.5", *flags])
    assert r.exit_code == 2 and "--stroke-redraw 0.5" in r.output and "--channels ink" in r.output, r.output
    assert "Traceback" not in r.output and not any(tmp_path.iterdir())


def test_non_finite_numbers_in_a_config_file_are_named_with_the_file(tmp_path):
    path = write(tmp_path, "train:\n  weight_decay: .nan\n")
    words = rf"{path}: 'train.weight_decay \(--weight-decay\)' must be a finite number, got nan"
    with pytest.raises(ConfigError, match=words):
        load(path)
    path = write(tmp_path, "train:\n  warp: {rotate: .inf}\n")
    with pytest.raises(ConfigError, match="'train.warp.rotate' must be a finite number"):
        load(path)


def test_train_and_studies_name_runs_one_way(tmp_path):
    """A run trained by hand and the same run in a study differ only in what they name (a study's
    arm stands for settings the study shares); the fold and seed read alike."""
    from homus.study import plan

    tc = train_config(load(None), {"folds": 5, "fold": 2, "seed": 1, "split_seed": 0, "channels": "ink,size"})
    assert tc.run_name() == "strokes-t3-s64-ink+size-resnet18-writer0-fold2-seed1"
    assert train_config(load(None), {}).run_name() == "strokes-t3-s64-resnet18-writer-seed0"
    study = write(tmp_path, "study:\n  name: s\n  thickness: [3]\n  size: [64]\n  seeds: [1]\n  folds: 5\n"
                            "  union: false\n  train: {from_strokes: true}\n"
                            "  arms: {ink+size: {channels: [ink, size]}}\n")
    names = [r.name for r in plan(load(study), study).runs]
    assert names[2] == "t3-s64-ink+size-fold2-seed1" and len(names) == 5


def test_the_command_line_takes_its_choices_from_the_code():
    cmd = main.commands["train"]
    choices = {p.name: tuple(p.type.choices) for p in cmd.params if isinstance(p.type, click.Choice)}
    assert choices == {"arch": ARCHS, "split": KINDS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
                       "device": DEVICES, "raster": RASTERS, "amp": AMP_MODES, "stem": STEMS}
    assert tuple(next(p for p in main.commands["render"].params if p.name == "fit").type.choices) == FITS
    assert tuple(next(p for p in main.commands["serve"].params if p.name == "log_level").type.choices) == LOG_LEVELS
    strokes = {p.name[len("stroke_"):] for p in cmd.params if p.name.startswith("stroke_")}
    assert strokes == {f.name for f in fields(StrokeAugment)}  # one flag per stroke distortion
    assert all(c in next(p for p in cmd.params if p.name == "channels").help for c in CHANNELS)
    over = train_overrides({"no_augment": True, "stroke_rotate": 2.0, "lr": None, "variants": ()})
    assert over["strokes"]["rotate"] == 2.0 and over["strokes"]["scale"] == 0.0 and set(over["warp"].values()) == {0}
    assert (over["mixup_alpha"], over["cutmix_alpha"]) == (0.0, 0.0)  # blending batches is augmentation too
    over = train_overrides({"no_augment": True, "cutmix_alpha": 1.0})
    assert (over["mixup_alpha"], over["cutmix_alpha"]) == (0.0, 1.0)  # but for what a flag of its own sets


# --- config files that fight back ---------------------------------------------------------------
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))


@pytest.mark.parametrize("content, words", [
    (b"train:\n  name: caf\xe9\n", "not UTF-8 text (byte 18); save it as UTF-8"),
    (LAUGHS.encode(), "refused: its aliases expand to more than 100,000 values"),
    (b"a: &a [1, *a]\n", "refused: an alias refers to the node that holds it"),
    (b"train: [1, 2\n", "not valid YAML at line 2"),
    (b"- train\n- render\n", "a config is a mapping of sections, got list"),
    (b"", "empty"),
    (b"render:\n  thickness: [3, null]\n", "'render.thickness' must be a whole number or a list of them (no nulls"),
    (b"study:\n  seeds: [[0, 1], 2]\n", "'study.seeds' must be a whole number or a list of them (no nulls, no nested"),
    (b"train:\n  channels: [ink, [time]]\n", "'train.channels (--channels)' must be a text or a list"),
    (b"train:\n  lr: [0.1]\n", "'train.lr (--lr)' must be a number, got [0.1]"),
    (b"train:\n  strokes: 3\n", "'train.strokes' must be a mapping, got 3"),
    (b"serve:\n  port: 70000\n", "'serve.port (--port)' must be 0 to 65535, got 70000"),
    (b"serve:\n  port: '80'\n", "'serve.port' must be a whole number, got '80'"),
    (b"serve:\n  max_samples: 0\n", "'serve.max_samples (--max-samples)' must be 1 to 1,000,000,000, got 0"),
    (b"serve:\n  log_level: loud\n", "'serve.log_level (--log-level)' must be one of critical, error, warning, info"),
    (b"serve:\n  colour: red\n", "unknown key 'serve.colour'"),
])
def test_bad_config_files_give_one_line_naming_the_file(tmp_path, content, words):
    path = write(tmp_path, content)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load(path)
    took, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert words in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    assert took < 5 and peak < 50 * 2**20  # fails fast, in bounded memory
    r = CliRunner().invoke(main, ["train", "--config", str(path)])
    assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output
    assert r.output.startswith(f"error: {path}: ") and r.output.count("\n") == 1  # one line, no usage block


def test_anchors_that_expand_a_little_are_fine(tmp_path):
    path = write(tmp_path, "study:\n  train: &t {epochs: 2}\n  arms: {a: *t, b: {<<: *t, lr: 0.1}}\n")
    assert load(path)["study"]["arms"] == {"a": {"epochs": 2}, "b": {"epochs": 2, "lr": 0.1}}


@pytest.mark.parametrize("content, words", [
    (b"", "an empty file"),
    (b"- 1\n- 2\n", "got list"),
    (b"lr: [\n", "not valid YAML"),
    (b"\xff\xfe", "not UTF-8"),
    (LAUGHS.encode(), "aliases expand"),
])
def test_a_damaged_run_config_is_one_line(tmp_path, content, words):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_bytes(content)
    with pytest.raises(RunError, match=words):
        RunFolder(run).config()
    r = CliRunner().invoke(main, ["train", "--resume", str(run)])
    assert r.exit_code == 1 and words in r.output and "Traceback" not in r.output


def test_read_yaml_names_a_missing_file(tmp_path):
    with pytest.raises(SettingsError, match="nope.yaml: no such file"):
        read_yaml(tmp_path / "nope.yaml")


def test_floats_are_checked_finite_everywhere():
    d = train_config(load(None)).to_dict()
    for key, value in [("momentum", math.nan), ("label_smoothing", math.inf), ("lr", True), ("epochs", 2.5)]:
        with pytest.raises(SettingsError, match=f"train.{key}"):
            TrainConfig.from_dict({**d, key: value})


# --- CI: an unexpected skip fails ---------------------------------------------------------------
def test_in_ci_an_unexpected_skip_fails_and_an_allowed_one_does_not(pytester, monkeypatch):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_skips="""
        import pytest

        def test_zip():
            pytest.skip("HOMUS v2 zip not found at /x")

        def test_gpu():
            pytest.skip("needs a GPU")

        def test_runs():
            pass
    """)
    monkeypatch.setenv("CI", "1")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1, failed=1)
    result.stdout.fnmatch_lines(["*skipped in CI, where every test must run*HOMUS v2 zip not found*"])
    monkeypatch.delenv("CI")
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=2)


def test_a_study_variant_without_a_size_takes_the_train_sections():
    from homus.study import study_variants

    cfg = load(None)
    cfg["study"]["variants"] = [{"thickness": 2}]
    cfg["train"]["size"] = "40x48"
    assert study_variants(cfg)[0].size == (40, 48)  # no size of the study's own to drift from pipeline.yaml


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 6, 11])
def test_every_schedule_runs_on_tiny_data(steps):
    import torch

    from classifier.train import make_scheduler

    for schedule in SCHEDULES:
        tc = train_config(load(None), {"schedule": schedule, "epochs": 1})
        model = torch.nn.Linear(2, 2)
        opt = torch.optim.SGD(model.parameters(), lr=tc.lr)
        sched = make_scheduler(opt, tc, steps)
        seen = []
        for _ in range(steps):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert all(math.isfinite(v) and 0 <= v <= tc.lr + 1e-12 for v in seen), (schedule, seen)


@pytest.mark.parametrize("key, value, words", [
    ("render", 5, "'train.render' must be a mapping"),
    ("strokes", [0.1], "'train.strokes' must be a mapping"),
    ("channels", [1], "must be a list of names"),
    ("colour", "red", "unknown key 'train.colour'"),
])
def test_a_hand_edited_run_config_is_refused_naming_the_key(tmp_path, key, value, words):
    """A run's config.yaml goes through the one settings check when it is read, so evaluate,
    predict and serve name a bad value instead of crashing on it later."""
    run = tmp_path / "run"
    run.mkdir()
    good = train_config(load(), {}).to_dict()
    RunFolder(run).file("config.yaml").write_text(yaml.safe_dump({**good, key: value}))
    with pytest.raises(RunError, match=words):
        RunFolder(run).config()
    r = CliRunner().invoke(main, ["train", "--resume", str(run)])
    assert r.exit_code == 1 and words in r.output and "Traceback" not in r.output
    (run / "config.yaml").write_text(yaml.safe_dump(good))
    assert RunFolder(run).config()["epochs"] == good["epochs"]
    # values legal under older limits, and an empty --writers recorded as '' (every writer), still read
    (run / "config.yaml").write_text(yaml.safe_dump({**good, "threads": -1, "workers": 300, "writers": ""}))
    assert RunFolder(run).config()["writers"] is None


def test_numbers_with_an_exponent_read_as_numbers(tmp_path):
    """``1e-3`` is a number in YAML 1.2 and to a person; PyYAML alone reads it as text, which the
    settings would refuse as 'must be a number'."""
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-4\n  mixup_alpha: 2e-1\n"
                    "study:\n  arms: {a: {lr: 1.5e-2}}\n")
    cfg = load(path)
    assert (cfg["train"]["lr"], cfg["train"]["weight_decay"], cfg["train"]["mixup_alpha"]) == (0.001, 0.0005, 0.2)
    assert cfg["study"]["arms"]["a"]["lr"] == 0.015
    path.write_text("train:\n  lr: 1e\n")  # not a number in any YAML: still refused, by name
    with pytest.raises(ConfigError, match="'train.lr \\(--lr\\)' must be a number, got '1e'"):
        load(path)


def test_a_number_setting_is_recorded_one_way_however_it_was_typed():
    """``mixup_alpha: 0`` and ``0.0`` are one setting: a run records 0.0, so reports and compares
    show one value, not two."""
    c = train_config(load(), {"mixup_alpha": 0, "lr": 1, "momentum": 0})
    assert [type(v) for v in (c.mixup_alpha, c.lr, c.momentum)] == [float, float, float]
    assert (c.mixup_alpha, c.lr) == (0.0, 1.0) and type(c.epochs) is int


def test_a_folder_given_as_the_config_is_a_settings_error(tmp_path):
    with pytest.raises(ConfigError, match="a folder, not a settings file"):
        load(tmp_path)
    r = CliRunner().invoke(main, ["train", "--config", str(tmp_path)])
    assert r.exit_code == 2 and r.output == f"error: {tmp_path}: a folder, not a settings file; give a YAML file\n"


def test_every_default_lives_in_pipeline_yaml():
    """No command option carries a default of its own (a flag is off unless given): what a flag
    leaves out comes from the settings, so a user's config file changes every default."""
    own = []
    for name, cmd in main.commands.items():
        ctx = click.Context(cmd)
        for p in cmd.params:
            if isinstance(p, click.Option) and p.name != "config_path" and not (p.is_flag and not p.secondary_opts):
                if p.get_default(ctx, call=False) not in (None, getattr(click.core, "UNSET", None)):  # click 8.3: UNSET
                    own.append(f"{name} --{p.name}")
    assert own == []
    assert {"serve", "evaluate", "predict", "explain", "export", "compare"} <= set(load(None))  # their sections


@pytest.mark.parametrize("text, words", [
    ("predict: {top_k: 0}", "'predict.top_k (--top-k)' must be 1 to 32, got 0"),
    ("predict: {read: squint}", "'predict.read (--read)' must be one of auto, thicken, redraw, fit"),
    ("evaluate: {device: tpu}", "'evaluate.device (--device)' must be one of auto, cpu, cuda, mps"),
    ("export: {check: -1}", "'export.check (--check)' must be 0 to 1,000,000,000, got -1"),
    ("compare: {out: ''}", "'compare.out (--out)' must be a printable, non-empty text"),
    ("compare: {title: \"a\\0b\"}", "'compare.title (--title)' must be a printable, non-empty text"),
])
def test_the_reading_commands_settings_are_checked(tmp_path, text, words):
    path = tmp_path / "c.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=re.escape(words)):
        load(path)
