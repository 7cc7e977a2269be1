"""Splits are made on sample ids, never leak, and are fixed by the seed; k-fold writer
cross-validation tests every writer exactly once."""

import random

import pytest

from classifier.splits import SplitError, check_split, make_fold_split, make_split
from homus_render.labels import LABELS


def triples(writers=20, per_writer=32):
    return [(f"{w}-{n}", str(w), LABELS[(n - 1) % len(LABELS)])
            for w in range(1, writers + 1) for n in range(1, per_writer + 1)]


def test_writer_split_holds_out_whole_writers():
    data = triples()
    split = make_split(data, "writer", seed=3)
    writer_of = {s: w for s, w, _ in data}
    sides = [{writer_of[s] for s in split[k]} for k in ("train", "val", "test")]
    assert sides[0].isdisjoint(sides[1]) and sides[0].isdisjoint(sides[2]) and sides[1].isdisjoint(sides[2])
    assert [len(s) for s in sides] == [14, 3, 3]  # 70/15/15 of 20 writers
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(s for s, _, _ in data)
    check_split(split, writer_of)


def test_random_split_is_stratified_and_disjoint():
    data = triples(writers=10, per_writer=64)  # 20 samples per class
    split = make_split(data, "random", seed=0)
    label_of = {s: lab for s, _, lab in data}
    for label in LABELS:
        counts = [sum(label_of[s] == label for s in split[k]) for k in ("train", "val", "test")]
        assert counts == [14, 3, 3]
    assert not set(split["train"]) & set(split["test"])
    check_split(split)


def test_split_is_fixed_by_seed_and_independent_of_order():
    data = triples()
    a = make_split(data, "writer", seed=7)
    b = make_split(list(reversed(data)) + data[:5], "writer", seed=7)  # duplicates are one sample
    c = make_split(data, "writer", seed=8)
    assert a == b
    assert a["test"] != c["test"]
    assert a["kind"] == "writer" and a["seed"] == 7


def test_too_few_writers_is_a_clear_error():
    with pytest.raises(SplitError, match="at least 3 writers"):
        make_split(triples(writers=2), "writer", seed=0)


def test_unknown_kind():
    with pytest.raises(SplitError, match="unknown split kind"):
        make_split(triples(), "by-colour")


def test_check_split_catches_leaks():
    split = {"kind": "writer", "seed": 0, "train": ["1-1", "2-1"], "val": ["3-1"], "test": ["1-2"]}
    with pytest.raises(SplitError, match="writer"):
        check_split(split, {"1-1": "1", "2-1": "2", "3-1": "3", "1-2": "1"})
    split["test"] = ["1-1"]
    with pytest.raises(SplitError, match="two sides"):
        check_split(split)


@pytest.mark.parametrize("writers, folds", [(100, 5), (20, 5), (7, 3), (6, 2)])
def test_every_writer_is_tested_exactly_once_over_the_folds(writers, folds):
    data = triples(writers, per_writer=4)
    writer_of = {s: w for s, w, _ in data}
    tested: list[str] = []
    for fold in range(folds):
        split = make_fold_split(data, folds, fold, seed=7)
        check_split(split, writer_of)  # no sample and no writer on two sides
        sides = [{writer_of[s] for s in split[k]} for k in ("train", "val", "test")]
        assert all(sides) and sorted(split["train"] + split["val"] + split["test"]) == sorted(writer_of)
        assert len(sides[1]) == max(1, round(writers * 0.15)) or len(sides[1]) == writers - len(sides[2]) - 1
        assert (split["kind"], split["folds"], split["fold"], split["seed"]) == ("writer", folds, fold, 7)
        tested += sorted(sides[2])
    assert sorted(tested) == sorted({w for _, w, _ in data})  # each writer once, none twice
    sizes = [len([w for w in tested if w in group]) for group in
             [{writer_of[s] for s in make_fold_split(data, folds, f, 7)["test"]} for f in range(folds)]]
    assert max(sizes) - min(sizes) <= 1  # folds as even as the writers allow


def test_folds_are_fixed_by_the_seed_and_independent_of_order():
    data = triples(20, 4)
    shuffled = data[:]
    random.Random(1).shuffle(shuffled)
    assert make_fold_split(data, 5, 2, seed=3) == make_fold_split(shuffled, 5, 2, seed=3)
    assert make_fold_split(data, 5, 2, seed=3)["test"] != make_fold_split(data, 5, 2, seed=4)["test"]
    assert make_fold_split(data, 5, 1, seed=3)["val"] != make_fold_split(data, 5, 2, seed=3)["val"]


@pytest.mark.parametrize("folds, fold, words", [(1, 0, "needs 2 to"), (9, 0, "needs 2 to 8 folds for 10 writers"),
                                               (5, 5, "fold 5 of 5: folds are numbered 0 to 4")])
def test_impossible_folds_are_clear_errors(folds, fold, words):
    with pytest.raises(SplitError, match=words):
        make_fold_split(triples(10, 2), folds, fold)


def test_every_sample_is_tested_exactly_once_over_random_folds():
    """A random cross-validation: each class dealt into the folds, so every sample is tested once
    and each fold's test split holds every class in its share."""
    from collections import Counter

    data = triples(10, 64)  # 20 samples of each of the 32 classes
    label_of = {s: lab for s, _, lab in data}
    tested: list[str] = []
    for fold in range(5):
        split = make_fold_split(data, 5, fold, seed=7, kind="random")
        check_split(split)
        assert sorted(split["train"] + split["val"] + split["test"]) == sorted(label_of)
        assert (split["kind"], split["folds"], split["fold"]) == ("random", 5, fold)
        assert set(Counter(label_of[s] for s in split["test"]).values()) == {4}  # 20 / 5 of every class
        assert set(Counter(label_of[s] for s in split["val"]).values()) == {3}  # 15 % of 20
        tested += split["test"]
    assert sorted(tested) == sorted(label_of)
    shuffled = data[:]
    random.Random(1).shuffle(shuffled)
    assert make_fold_split(shuffled, 5, 2, seed=7, kind="random") == make_fold_split(data, 5, 2, seed=7, kind="random")
    with pytest.raises(SplitError, match="rarest class has 2 samples"):
        make_fold_split(triples(2, 32), 2, 0, kind="random")


def test_homus_train_on_a_fold_of_samples(synthetic_raw, tmp_path):
    """`homus train --split random --folds 3 --fold 1`: the run tests on a third of every class and
    records the fold."""
    import json
    from collections import Counter

    from click.testing import CliRunner

    from homus.cli import main

    r = CliRunner().invoke(main, ["train", "--raw-dir", str(synthetic_raw), "--runs-dir", str(tmp_path), "--name", "f",
                                  "--from-strokes", "--size", "32", "--epochs", "1", "--batch-size", "64", "--workers",
                                  "0", "--device", "cpu", "--split", "random", "--folds", "3", "--fold", "1"])
    assert r.exit_code == 0, r.output
    split = json.loads((tmp_path / "f/split.json").read_text())
    assert (split["kind"], split["folds"], split["fold"]) == ("random", 3, 1)
    label_of = {f.stem: f.read_text().splitlines()[0] for f in synthetic_raw.glob("*/*.txt")}
    assert set(Counter(label_of[s] for s in split["test"]).values()) == {18 // 3}  # 18 samples a class
    assert json.loads((tmp_path / "f/metrics.json").read_text())["n_test"] == 192
