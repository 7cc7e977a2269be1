"""Splits are made on sample ids, never leak, and are fixed by the seed."""

import pytest

from classifier.splits import SplitError, check_split, make_split
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
