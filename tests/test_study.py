"""`homus run` end to end on a tiny study, `homus compare`, and config errors that name the key."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import statistics
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from classifier.runfolder import RunError
from classifier.settings import setting_differences
from homus.cli import main
from homus.config import ConfigError, load


@pytest.fixture(scope="module")
def study(synthetic_raw, tmp_path_factory):
    """A two-variant study (t1, t3 at 32 px) plus their union, 5 synthetic writers, 1 epoch, run once."""
    root = tmp_path_factory.mktemp("study")
    cfg = {
        "dataset": {"raw_dir": str(synthetic_raw), "writers": "1-5"},
        "render": {"rendered_dir": str(root / "rendered"), "margin": 2, "jobs": 1},
        "train": {"batch_size": 64, "runs_dir": str(root / "runs"), "device": "cpu"},
        "study": {"name": "tiny", "thickness": [1, 3], "size": [32], "seeds": [0], "union": True,
                  "train": {"epochs": 1, "lr": 0.02, "from_strokes": False}, "reports_dir": str(root / "reports")},
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    first = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert first.exit_code == 0, first.output
    return root, path, first


def test_study_report_agrees_with_runs(study):
    root, _, first = study
    report = root / "reports/tiny"
    for f in ("report.md", "results.csv", "comparison.png", "matrix.png"):
        assert (report / f).is_file() and (report / f).stat().st_size > 0, f
    runs = sorted(p.name for p in (root / "runs/tiny").iterdir())
    assert runs == ["t1-s32-m2-seed0", "t3-s32-m2-seed0", "union-seed0"]
    with open(report / "results.csv") as f:
        rows = list(csv.DictReader(f))
    for run in runs:
        metrics = json.loads((root / "runs/tiny" / run / "metrics.json").read_text())
        own = [r for r in rows if r["run"] == run and r["test_variant"] == "own"]
        assert len(own) == 1 and float(own[0]["test_accuracy"]) == pytest.approx(metrics["test_accuracy"], abs=1e-6)
        cross = {r["test_variant"]: float(r["test_accuracy"]) for r in rows if r["run"] == run and
                 r["test_variant"] != "own"}
        assert set(cross) == {"t1-s32-m2", "t3-s32-m2"}  # every model read every variant's test split
        for v, acc in cross.items():
            saved = json.loads((root / "runs/tiny" / run / f"eval-{v}.json").read_text())
            assert saved["test_accuracy"] == pytest.approx(acc, abs=1e-6)
    md = (report / "report.md").read_text()
    own_t3 = json.loads((root / "runs/tiny/t3-s32-m2-seed0/metrics.json").read_text())["test_accuracy"]
    assert f"{own_t3:.2%}" in md and "Train variant x test variant" in md
    splits = {(root / "runs/tiny" / r / "split.json").read_text() for r in runs}
    assert len(splits) == 1  # one split per seed for the whole study
    assert "training" in first.output


def test_second_run_trains_nothing(study):
    root, path, _ = study
    again = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert again.exit_code == 0, again.output
    assert "training" not in again.output
    assert again.output.count("finished, not trained again") == 3
    assert "up to date" in again.output


def test_compare_sorts_and_names_differing_settings(study, tmp_path):
    root, _, _ = study
    runs = sorted(str(p) for p in (root / "runs/tiny").iterdir())
    r = CliRunner().invoke(main, ["compare", *runs, "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("test accuracy | variants")
    accs = [float(line.split(" | ")[0]) for line in lines[1:4]]
    assert accs == sorted(accs, reverse=True)
    assert (tmp_path / "cmp/comparison.png").is_file() and (tmp_path / "cmp/report.md").is_file()
    bad = CliRunner().invoke(main, ["compare", str(tmp_path)])
    assert bad.exit_code == 1 and "not a homus run folder (no config.yaml)" in bad.output


def test_compare_groups_seeds_trained_on_one_split(study, tmp_path):
    """A seed trained on another seed's split (--split-seed) is one more draw of the same setting."""
    root, _, _ = study
    first = sorted((root / "runs/tiny").iterdir())[0]
    other = tmp_path / f"{first.name}-again"
    shutil.copytree(first, other, ignore=shutil.ignore_patterns("*.pt"))
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["split_seed"], cfg["seed"] = cfg["seed"], cfg["seed"] + 7
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(main, ["compare", str(first), str(other), "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    report = (tmp_path / "cmp/report.md").read_text()
    assert "split_seed" not in report and "Warning" not in report
    rows = list(csv.DictReader(io.StringIO(Path(tmp_path / "cmp/results.csv").read_text())))
    assert {row["run"] for row in rows} == {first.name, other.name} and "split_seed" not in rows[0]


def test_a_report_replaces_the_last_one_whole_or_not_at_all(study, tmp_path, monkeypatch):
    """A report is composed aside and moved in, report.md last: a picture of the earlier report that
    this one does not draw (matrix.png) goes, and a report that fails half-way leaves the earlier one
    as it was, with no staging folder behind."""
    from homus import report

    root, _, _ = study
    runs = sorted(str(p) for p in (root / "runs/tiny").iterdir())
    out = tmp_path / "cmp"
    assert CliRunner().invoke(main, ["compare", *runs, "--out", str(out)]).exit_code == 0
    assert (out / "matrix.png").is_file()  # every run read every variant
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def half_way(rows, path, title):
        Path(path).write_bytes(b"half")
        raise KeyboardInterrupt  # Ctrl-C after the table, before the chart
    monkeypatch.setattr(report, "_bar_chart", half_way)
    with pytest.raises(KeyboardInterrupt):
        report.write_report([Path(runs[0])], out, "one run")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing moved in, nothing left
    monkeypatch.undo()

    (out / "notes.txt").write_text("mine")
    alone = tmp_path / Path(runs[1]).name  # a run read on its own variant only: no matrix to draw
    shutil.copytree(runs[1], alone, ignore=shutil.ignore_patterns("*.pt", "eval-*.json"))
    r = CliRunner().invoke(main, ["compare", str(alone), "--out", str(out), "--title", "one run"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["comparison.png", "notes.txt", "report.md", "results.csv",
                                                     "summary.json"]
    assert "one run" in (out / "report.md").read_text() and (out / "notes.txt").read_text() == "mine"


def test_a_report_that_fails_before_any_file_leaves_no_folder(tmp_path):
    from homus import report

    with pytest.raises(RunError, match="no runs"):
        report.write_report([], tmp_path / "new" / "cmp", "nothing")
    assert not (tmp_path / "new" / "cmp").exists()


@pytest.mark.parametrize("text, key", [
    ("render:\n  thicknes: 3\n", "render.thicknes"),
    ("train:\n  epochs: many\n", "train.epochs (--epochs)"),
    ("study:\n  train: {epochz: 1}\n", "study.train.epochz"),
    ("study:\n  overrides: {t1-s32: {lr: fast}}\n", "study.overrides.t1-s32.lr"),
    ("study:\n  variants: [{thickness: 2, colour: red}]\n", "study.variants[0].colour"),
    ("bogus: 1\n", "bogus"),
    # found by probing studies as a careless user writes them
    ("study:\n  name: '..'\n", "study.name"),  # runs and report written into the working folder
    ("study:\n  name: /tmp/x\n", "study.name"),
    ("study:\n  reports_dir: ''\n", "study.reports_dir"),
    ("study:\n  seeds: [0, 0]\n", "study.seeds"),  # one model reported as two seeds, +- 0.00%
    ("study:\n  seeds: []\n", "study.seeds"),  # rendered everything, then a traceback
    ("study:\n  seeds: [a]\n", "study.seeds"),  # a traceback
    ("study:\n  split_seed: -3\n", "study.split_seed"),
    ("study:\n  thickness: []\n", "study.thickness"),  # no variant at all
    ("study:\n  variants: t2-s32\n", "study.variants"),  # read letter by letter
    ("study:\n  arms: {1: {}, 2: {}}\n", "study.arms"),  # a traceback
    ("study:\n  arms: {null: {}, a: {}}\n", "study.arms"),  # silently an arm-less run
])
def test_config_errors_name_the_key_and_file(tmp_path, text, key, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert f"'{key}'" in str(e.value) and str(path) in str(e.value)
    r = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert r.exit_code == 2 and key in r.output


@pytest.mark.parametrize("text, key, where", [
    ("study:\n  arms: {a: {channels: [ink], seed: 5}}\n", "study.arms.a.seed", "study.seeds"),
    ("study:\n  arms: {a: {size: 48}}\n", "study.arms.a.size", "study.variants"),
    ("study:\n  train: {split_seed: 3}\n", "study.train.split_seed", "study.split_seed"),
    ("study:\n  train: {fold: 2}\n", "study.train.fold", "study.folds"),
    ("study:\n  overrides: {t1-s32: {runs_dir: elsewhere}}\n", "study.overrides.t1-s32.runs_dir", "train.runs_dir"),
    ("study:\n  arms: {a: {name: mine}}\n", "study.arms.a.name", "study.name"),
])
def test_settings_a_study_sets_for_each_run_are_refused_in_its_arms(tmp_path, text, key, where):
    """An arm that set the seed, size or fold would be silently overridden by the study (and listed by
    --dry-run as if applied): it is an error that says where the study takes that setting."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"'{re.escape(key)}' cannot be set here: .* use {re.escape(where)}"):
        load(path)
    r = CliRunner().invoke(main, ["run", "--config", str(path), "--dry-run"])
    assert r.exit_code == 2 and key in r.output and "Traceback" not in r.output


def test_the_train_section_of_a_config_file_is_blamed_on_the_file(tmp_path, monkeypatch):
    """A value out of range in a file is reported against the file, though no flag was given; the same
    value as a flag is reported against the flags."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  mixup_alpha: 5000\n")
    r = CliRunner().invoke(main, ["train", "--config", str(path)])
    line = next(ln for ln in r.output.splitlines() if "mixup_alpha" in ln)
    assert r.exit_code != 0 and line.startswith(f"error: {path}: train.mixup_alpha (--mixup-alpha)"), r.output
    r = CliRunner().invoke(main, ["train", "--mixup-alpha", "5000"])
    assert r.exit_code != 0 and "error: flags: train.mixup_alpha" in r.output, r.output
    path.write_text("study:\n  train: {amp: true}\n  arms: {a: {amp: false}, b: {channels: [ink, size]}}\n")
    assert load(path)["study"]["arms"]["a"] == {"amp": False}  # amp's old true/false is read in arms too


def test_bad_values_in_a_study_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no raw/ here: the settings must fail before any fetch
    monkeypatch.delenv("HOMUS_SOURCE", raising=False)
    path = tmp_path / "bad.yaml"
    path.write_text("study:\n  thickness: [0]\n")
    r = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert r.exit_code == 2 and "thickness must be an integer >= 1" in r.output


def test_shipped_configs_load_and_plan(tmp_path, monkeypatch):
    """Every study in configs/ (and the shipped defaults) loads and plans: each run's settings are built
    and checked without any data, so the full-budget studies are known to be runnable."""
    from homus.study import plan

    monkeypatch.chdir(tmp_path)
    repo = Path(__file__).resolve().parents[1]
    paths = [repo / "pipeline.yaml", *sorted((repo / "configs").glob("*.yaml"))]
    assert {p.name for p in paths} >= {"writer-5fold.yaml", "random-2x2.yaml", "tiny.yaml"}
    for path in paths:
        p = plan(load(path), path)
        assert p.runs and set(p.configs) == {r.name for r in p.runs}, path
    five = plan(load(repo / "configs/writer-5fold.yaml"))
    assert len(five.runs) == 20 and {c.fold for c in five.configs.values()} == set(range(5))
    configs = five.configs.values()
    assert {c.split_rng_seed for c in configs} == {0} and {c.epochs for c in configs} == {20}
    assert {tuple(c.channels) for c in five.configs.values()} == {("ink", "size"), ("ink", "time", "stroke", "size")}
    two_by_two = [e for e in five.ensembles if e.name == "2x2"]
    assert len(two_by_two) == 5 and all(len(e.runs) == 4 for e in two_by_two)
    r = CliRunner().invoke(main, ["run", "--config", str(repo / "configs/writer-5fold.yaml"), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "20 runs, 15 ensemble scores" in r.output and not (tmp_path / "runs").exists()
    assert {c.split for c in configs} == {"writer"}
    one_arm = plan(load(repo / "configs/writer-5fold-ink+size.yaml")).configs  # its runs are the big study's own
    assert len(one_arm) == 5 and all(n in five.configs and c == five.configs[n] for n, c in one_arm.items())
    pen = plan(load(repo / "configs/writer-5fold-ink+time+stroke+size.yaml")).configs  # the other arm, under bf16
    assert len(pen) == 5 and {c.amp for c in pen.values()} == {"bf16"}
    assert all(n in five.configs and c.runs_dir == five.configs[n].runs_dir
               and not setting_differences(c.to_dict(), five.configs[n].to_dict()) for n, c in pen.items())
    small5 = plan(load(repo / "configs/writer-5fold-small.yaml"))  # writer-5fold with the small stem
    assert len(small5.runs) == 20 and len(small5.ensembles) == len(five.ensembles)
    assert all(setting_differences(five.configs[n].to_dict(), c.to_dict()) == [("stem", "imagenet", "small")]
               and c.runs_dir != five.configs[n].runs_dir for n, c in small5.configs.items())
    random5 = plan(load(repo / "configs/random-5fold.yaml")).configs.values()
    assert {(c.split, c.folds) for c in random5} == {("random", 5)} and {c.fold for c in random5} == set(range(5))
    # the ideas study: its baseline is writer-2x2's ink + size seed 0, and each other arm changes one setting
    ideas = plan(load(repo / "configs/writer-ideas.yaml")).configs
    base = ideas["t3-s64-ink+size-seed0"]
    peer = plan(load(repo / "configs/writer-2x2.yaml")).configs["t3-s64-ink+size-seed0"]
    assert not setting_differences(base.to_dict(), peer.to_dict())
    for name, c in ideas.items():
        if c is not base:
            assert len(setting_differences(base.to_dict(), c.to_dict())) == 1, name
    (half,) = plan(load(repo / "configs/writer-bf16.yaml")).configs.values()  # the same model, under bf16
    assert half.amp == "bf16" and not setting_differences(base.to_dict(), half.to_dict())
    assert half.runs_dir != base.runs_dir  # a run of its own, not taken for the full-precision one
    stems = plan(load(repo / "configs/writer-stem.yaml")).configs  # writer-bf16's run, and the small stem
    assert stems["t3-s64-ink+size-seed0"] == half
    assert len(stems) == 4 and setting_differences(half.to_dict(), stems["t3-s64-ink+size-small-seed0"].to_dict()) == [
        ("stem", "imagenet", "small")]
    assert {c.split_rng_seed for c in stems.values()} == {0}  # both seeds on writer-bf16's split
    mix = plan(load(repo / "configs/writer-mix.yaml")).configs  # writer-ideas' baseline, and it on blended batches
    assert mix["t3-s64-ink+size-seed0"] == base
    assert setting_differences(base.to_dict(), mix["t3-s64-ink+size-mix-seed0"].to_dict()) == [
        ("mixup_alpha", 0.0, 0.2), ("cutmix_alpha", 0.0, 1.0)]
    assert setting_differences(base.to_dict(), mix["t3-s64-ink+size-mixup-seed0"].to_dict()) == [
        ("mixup_alpha", 0.0, 0.2)]
    r = CliRunner().invoke(main, ["run", "--config", str(repo / "configs/writer-ideas.yaml"), "--dry-run"])
    assert "t3-s64-ink+size-ema-seed0: " in r.output and "arm ink+size-ema: channels ink,size; ema 0.998" in r.output
    r = CliRunner().invoke(main, ["run", "--config", str(repo / "configs/writer-5fold-small.yaml"), "--dry-run"])
    assert r.output.startswith("study writer-5fold-small (runs in runs/writer-5fold-small); study.train: ")
    assert "stem small" in r.output.splitlines()[0] and "resnet18 (small stem, amp auto)" in r.output  # which study


def test_a_size_jitter_is_a_difference_only_for_runs_that_read_the_size(tmp_path):
    from homus.report import differing, load_run

    def run(name: str, **cfg) -> dict:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({"variants": ["strokes-t3-s32"], "test_accuracy": 0.5,
                                                         "macro_f1": 0.5, "val_accuracy": 0.5, "n_test": 10,
                                                         "train_seconds": 1.0, "split": "writer"}))
        (folder / "config.yaml").write_text(yaml.safe_dump({"from_strokes": True, "seed": 0, "render": {}, **cfg}))
        return load_run(folder)

    old = run("old", channels=["ink"])  # written before stroke_size existed
    new = run("new", channels=["ink"], stroke_size=0.2)  # the flat layout of older runs
    assert differing([old, new]) == []  # the jitter moves no pixel of an ink model
    a, b = run("a", channels=["ink", "size"], stroke_size=0.2), run("b", channels=["ink", "size"], stroke_size=0.0)
    assert differing([a, b]) == ["strokes.size"]
    c = run("c", channels=["ink", "size"], strokes={"size": 0.2})  # the nested layout of today's runs
    assert differing([a, c]) == []


def test_a_cross_validation_study_tests_every_writer_once_and_reports_folds(tiny_study):
    from classifier.settings import TrainConfig

    root, _ = tiny_study
    runs = root / "runs/tiny"
    names = sorted(p.name for p in runs.iterdir() if p.is_dir())
    assert names == sorted(f"t2-s32-m2-{arm}-fold{f}-seed0" for arm in ("ink", "ink+time") for f in range(3))
    tested: list[str] = []
    for f in range(3):
        ink, both = (json.loads((runs / f"t2-s32-m2-{a}-fold{f}-seed0/split.json").read_text())
                     for a in ("ink", "ink+time"))
        assert ink == both and (ink["folds"], ink["fold"]) == (3, f)  # the arms of one fold share its split
        tested += sorted({s.split("-")[0] for s in ink["test"]})
    assert sorted(tested) == ["1", "2", "3", "4", "5", "6"]  # every writer tested exactly once
    config = yaml.safe_load((runs / "t2-s32-m2-ink+time-fold1-seed0/config.yaml").read_text())
    assert list(config) == [f.name for f in fields(TrainConfig)]  # the run records every setting
    assert (config["folds"], config["fold"], config["channels"], config["split_seed"]) == (3, 1, ["ink", "time"], 0)

    summary = json.loads((root / "reports/tiny/summary.json").read_text())
    for row in summary["rows"]:
        m = [json.loads((runs / n / "metrics.json").read_text()) for n in row["runs"]]
        assert len(m) == 3
        assert row["fold_mean"] == pytest.approx(statistics.fmean(x["test_accuracy"] for x in m))
        assert row["fold_std"] == pytest.approx(statistics.stdev(x["test_accuracy"] for x in m))
        assert row["pooled"] == pytest.approx(sum(x["test_accuracy"] * x["n_test"] for x in m) /
                                              sum(x["n_test"] for x in m))
    [ens] = summary["ensembles"]
    scored = [json.loads((runs / f"ensemble-both-t2-s32-m2-fold{f}.json").read_text()) for f in range(3)]
    assert ens["name"] == "both" and ens["members"] == 2
    assert ens["pooled"] == pytest.approx(sum(e["test_accuracy"] * e["n_test"] for e in scored) / 6 / 96)
    md = (root / "reports/tiny/report.md").read_text()
    assert "3-fold writer cross-validation" in md and "## Ensembles" in md
    assert f"{ens['pooled']:.2%}" in md and f"{summary['rows'][0]['pooled']:.2%}" in md
    assert "different splits" not in md  # each fold has its own split, as it should


def test_a_report_warns_when_runs_of_one_split_seed_and_fold_split_differently(tiny_study, tmp_path):
    from homus.report import write_report

    root, _ = tiny_study
    names = ["t2-s32-m2-ink-fold0-seed0", "t2-s32-m2-ink+time-fold0-seed0"]
    for n in names:
        shutil.copytree(root / "runs/tiny" / n, tmp_path / n, ignore=shutil.ignore_patterns("*.pt"))
    split = json.loads((tmp_path / names[1] / "split.json").read_text())
    split["val"], split["train"] = split["val"][1:], split["train"] + split["val"][:1]
    (tmp_path / names[1] / "split.json").write_text(json.dumps(split))
    write_report([tmp_path / n for n in names], tmp_path / "report", title="t")
    assert "different splits" in (tmp_path / "report/report.md").read_text()


def test_a_finished_study_reruns_without_training(tiny_study):
    root, path = tiny_study
    r = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert r.exit_code == 0, r.output
    assert "training" not in r.output and r.output.count("finished, not trained again") == 6


def test_runs_made_with_other_settings_are_not_reported_as_the_study(tiny_study, tmp_path):
    """A study whose settings changed after its runs were trained would report the old runs under
    the new settings: refused, naming a run and the setting. Where it trains may change."""
    root, path = tiny_study
    cfg = yaml.safe_load(path.read_text())
    cfg["study"]["reports_dir"] = str(tmp_path / "reports")
    before = {p: p.read_bytes() for p in sorted((root / "runs/tiny").glob("*/metrics.json"))}
    moved = dict(cfg, train={**cfg["train"], "workers": 1, "threads": 2})
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump(moved))
    r = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "moved.yaml")])
    assert r.exit_code == 0, r.output
    assert r.output.count("finished, not trained again") == 6
    changed = dict(cfg, study={**cfg["study"], "reports_dir": str(tmp_path / "not-made"),
                               "train": {**cfg["study"]["train"], "epochs": 2, "strokes": {"rotate": 3.0}}})
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    r = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "changed.yaml")])
    assert r.exit_code != 0
    [line] = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert "changed.yaml" in line and str(root / "runs/tiny") in line and "Traceback" not in r.output
    assert "epochs 1 where the study asks for 2" in line and "strokes.rotate" in line
    assert "and 5 more of its runs differ" in line and "another name" in line
    assert not (tmp_path / "not-made").exists()
    assert {p: p.read_bytes() for p in before} == before


def copy_runs(root: Path, path: Path, dest: Path) -> Path:
    """A study's finished runs copied to ``dest/runs``, and its config pointed at them (and at its own
    reports folder) as ``dest/s.yaml``: a study to change without touching the shared fixture."""
    shutil.copytree(root / "runs", dest / "runs")
    cfg = yaml.safe_load(path.read_text())
    cfg["train"]["runs_dir"] = str(dest / "runs")
    cfg["study"]["reports_dir"] = str(dest / "reports")
    (dest / "s.yaml").write_text(yaml.safe_dump(cfg))
    return dest / "s.yaml"


def test_an_ensemble_is_scored_again_when_a_member_was_trained_again(tiny_study, tmp_path):
    """A saved ensemble score names its members' finished trainings: moving a run away (as the error
    above advises) and training it again must not leave the old ensemble figure in the report."""
    from classifier.runfolder import RunFolder

    root, path = tiny_study
    copy_runs(root, path, tmp_path)
    runs = tmp_path / "runs/tiny"
    shutil.move(runs / "t2-s32-m2-ink-fold0-seed0", tmp_path / "old-run")
    (runs / "ensemble-both-t2-s32-m2-fold1.json").write_text('{"errors": [], "members": [{')  # cut short
    r = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "s.yaml")])
    assert r.exit_code == 0, r.output
    assert r.output.count("finished, not trained again") == 5
    scored = [x for x in r.output.splitlines() if x.startswith("ensemble ")]
    assert len(scored) == 2 and "fold 0" in scored[0] and "fold 1" in scored[1]  # fold 2's score stands
    saved = json.loads((runs / "ensemble-both-t2-s32-m2-fold0.json").read_text())
    assert [m["fingerprint"] for m in saved["members"]] == [
        RunFolder(runs / n).fingerprint() for n in ("t2-s32-m2-ink-fold0-seed0", "t2-s32-m2-ink+time-fold0-seed0")]
    assert saved["members"][0]["fingerprint"] != RunFolder(tmp_path / "old-run").fingerprint()


def test_runs_that_stopped_early_still_vote_and_are_marked_unfinished(tiny_study, tmp_path):
    root, _ = tiny_study
    runs = []
    for name in ("t2-s32-m2-ink-fold0-seed0", "t2-s32-m2-ink+time-fold0-seed0"):
        shutil.copytree(root / "runs/tiny" / name, tmp_path / name)
        (tmp_path / name / "metrics.json").unlink()  # as a run stopped after its best epoch leaves it
        runs.append(str(tmp_path / name))
    r = CliRunner().invoke(main, ["evaluate", *runs, "--out", str(tmp_path / "e.json"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "e.json").read_text())
    assert [m["fingerprint"] for m in saved["members"]] == [None, None]
    finished = json.loads((root / "runs/tiny/ensemble-both-t2-s32-m2-fold0.json").read_text())
    assert saved["test_accuracy"] == finished["test_accuracy"]


def test_a_cross_evaluation_is_made_again_for_another_training(study, tmp_path):
    """``eval-<variant>.json`` names the training and the rendering it scored; one that names
    another (or none, as files saved before did) is made again, the others are reused."""
    root, path, _ = study
    copy_runs(root, path, tmp_path)
    stale = tmp_path / "runs/tiny/t3-s32-m2-seed0/eval-t1-s32-m2.json"
    kept = json.loads(stale.read_text())
    stale.write_text(json.dumps({**kept, "fingerprint": "a training since replaced", "test_accuracy": 0.5}))
    r = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "s.yaml")])
    assert r.exit_code == 0, r.output
    assert [x for x in r.output.splitlines() if " on t" in x and "test accuracy" in x] == [
        f"t3-s32-m2-seed0 on t1-s32-m2: test accuracy {kept['test_accuracy']:.4f}"]
    assert json.loads(stale.read_text())["test_accuracy"] == kept["test_accuracy"]


def test_finished_runs_of_other_data_are_not_reported_as_the_study(tiny_study, synthetic_raw, tmp_path):
    """The same strokes in another folder are the same data; a changed stroke file is not."""
    root, path = tiny_study
    shutil.copytree(synthetic_raw, tmp_path / "raw")
    cfg = yaml.safe_load(path.read_text())
    cfg["dataset"]["raw_dir"] = str(tmp_path / "raw")
    cfg["render"]["rendered_dir"] = str(tmp_path / "rendered")
    cfg["study"]["reports_dir"] = str(tmp_path / "reports")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "s.yaml")])
    assert r.exit_code == 0, r.output
    assert r.output.count("finished, not trained again") == 6
    sample = tmp_path / "raw/2/2-5.txt"
    sample.write_text(sample.read_text() + "1,1;2,2;\n")  # one more stroke
    r = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "s.yaml")])
    assert r.exit_code != 0
    [line] = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert "576 stroke files in " + str(synthetic_raw) in line and "the study reads 576 in " + str(tmp_path) in line
    assert "and 5 more of its runs differ" in line and "Traceback" not in r.output


@pytest.mark.parametrize("study, words", [
    ({"ensembles": {"e": {"arms": ["nope"]}}, "arms": {"a": {}}}, "'study.ensembles.e.arms': no arm named 'nope'"),
    ({"ensembles": {"e": {"seeds": [0, 1]}}, "seeds": [0, 1]}, "must share one split: set study.split_seed"),
    ({"ensembles": {"e": {"seeds": [5]}}}, "'study.ensembles.e.seeds': seed 5 is not in study.seeds"),
    ({"ensembles": {"e": {"arm": ["a"]}}}, "unknown key 'study.ensembles.e.arm'"),
    ({"ensembles": {"e": {"seeds": [0]}}, "seeds": [0]}, "'study.ensembles.e' has 1 run(s)"),
    ({"folds": 1}, "'study.folds' must be 0 (one split) or 2 to 100"),
])
def test_bad_study_schemas_are_named(tmp_path, monkeypatch, study, words):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"study": {"thickness": [3], "union": False, **study}}))
    r = CliRunner().invoke(main, ["run", "--config", str(path), "--dry-run"])
    assert r.exit_code in (1, 2) and words in r.output and str(path) in r.output, r.output


def test_a_missing_or_unfit_checkpoint_to_fine_tune_from_stops_a_study_before_any_work(tmp_path, synthetic_raw):
    """train.weights names a file: --dry-run finds it missing, and a study whose checkpoint is another
    model's stops at once, before rendering or training anything."""
    from classifier import checkpoint
    from classifier.models import build_model
    from homus_render.labels import LABELS
    from homus_render.render import RenderSettings

    path, rendered, runs = tmp_path / "ft.yaml", tmp_path / "rendered", tmp_path / "runs"
    missing = tmp_path / "nope.pt"
    text = (f"dataset: {{raw_dir: {synthetic_raw}}}\nrender: {{rendered_dir: {rendered}}}\n"
            f"train: {{weights: {missing}, runs_dir: {runs}, arch: resnet34}}\n"
            "study: {seeds: [0], thickness: [1], union: false}\n")
    path.write_text(text)
    r = CliRunner().invoke(main, ["run", "--config", str(path), "--dry-run"])
    assert r.exit_code == 1 and f"error: {missing}: no such checkpoint" in r.output, r.output
    base = tmp_path / "base.pt"  # a resnet18 reading ink: it cannot start a resnet34
    checkpoint.save(base, {"model": build_model("resnet18", 32, 1).state_dict(), "arch": "resnet18",
                           "classes": list(LABELS), "in_channels": 1, "render": RenderSettings().to_dict()})
    path.write_text(text.replace(str(missing), str(base)))
    r = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert r.exit_code == 1 and "cannot start a resnet34" in r.output and "--arch resnet18" in r.output, r.output
    assert not rendered.exists() and not runs.exists()


@pytest.mark.parametrize("text, words", [
    ("study:\n  name: a\n  name: b\n", "the key 'name' is given twice (lines 2 and 3)"),
    ("study:\n  arms: {a: {lr: 0.1}, a: {lr: 0.2}}\n", "the key 'a' is given twice (line 2)"),
    ("study:\n  overrides: {t9-s32: {epochs: 7}}\n", "'study.overrides.t9-s32': the study has no variant"),
    ("study:\n  union: false\n  split_seed: 0\n  arms: {a: {split: random}, b: {split: writer}}\n"
     "  ensembles: {e: {}}\n", "votes runs tested on different splits"),
    ("study:\n  variants: [{thickness: 0}]\n", "study variant 1"),
    ("train:\n  batch_size: 1\n", "train.batch_size (--batch-size) must be a whole number from 2"),
])
def test_a_study_that_cannot_be_as_written_is_refused_before_any_work(tmp_path, text, words, monkeypatch):
    """A key written twice kept the last, a mistyped override was ignored, arms on different splits
    voted only after every run had trained, and a batch of one image failed in its first step. Each
    is one line naming the file, with exit code 2, before anything is fetched or trained."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(text)
    r = CliRunner().invoke(main, ["run", "--config", str(path), "--dry-run"])
    assert r.exit_code == 2 and r.output.startswith(f"error: {path}: ") and words in r.output, r.output
    assert r.output.count("\n") == 1 and not (tmp_path / "raw").exists() and not (tmp_path / "runs").exists()


def test_a_config_file_typed_on_the_command_line_must_exist(tmp_path, monkeypatch):
    """`--config pipeline.yaml` in a folder without one planned the shipped default study (and a real
    run would have fetched and trained it); only the unspoken default may be absent."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["run", "--config", "pipeline.yaml", "--dry-run"])
    assert r.exit_code == 2 and r.output == "error: pipeline.yaml: no such file\n", r.output
    assert CliRunner().invoke(main, ["run", "--dry-run"]).exit_code == 0


@pytest.mark.parametrize("name", [".", "..", "", "a/b", "/tmp/x"])
def test_a_run_name_is_one_folder_inside_the_runs_folder(tmp_path, name):
    r = CliRunner().invoke(main, ["train", "--name", name, "--runs-dir", str(tmp_path / "runs"), "--from-strokes",
                                  "--raw-dir", str(tmp_path / "raw"), "--epochs", "1"])
    assert r.exit_code in (1, 2) and "train.name (--name) must be" in r.output, r.output
    assert not (tmp_path / "runs").exists()


def test_a_hand_edited_metrics_file_is_named_not_a_traceback(study, tmp_path):
    root, _, _ = study
    run = tmp_path / "run"
    shutil.copytree(sorted((root / "runs/tiny").iterdir())[0], run, ignore=shutil.ignore_patterns("*.pt"))
    (run / "metrics.json").write_text(json.dumps({"test_accuracy": 0.99}))
    r = CliRunner().invoke(main, ["compare", str(run), "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 1 and f"{run / 'metrics.json'}: 'macro_f1' is missing" in r.output, r.output
    assert "Traceback" not in r.output
