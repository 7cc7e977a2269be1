"""Train/val/test splits made on sample ids (``<writer>-<n>``), never on image files, so every
rendered variant of one sample falls on the same side.

``writer``: whole musicians held out (70/15/15 of the writers), so validation and test measure
handwriting the model never saw. ``random``: 70/15/15 of the samples, stratified by class, as the
published HOMUS baselines did. Either can be a k-fold cross-validation instead (every writer, or
every sample, tested exactly once over the folds).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from homus_render.dataset import natural_key
from homus_render.errors import HomusError

KINDS = ("writer", "random")
FRACTIONS = (0.70, 0.15, 0.15)


class SplitError(HomusError, ValueError):
    """The data cannot be split as asked."""


def _cut(items: list[str], rng: np.random.Generator, fractions=FRACTIONS) -> tuple[list, list, list]:
    """Shuffle ``items`` and cut them 70/15/15 (val and test rounded, train gets the rest)."""
    order = [items[i] for i in rng.permutation(len(items))]
    n_val = int(round(len(items) * fractions[1]))
    n_test = int(round(len(items) * fractions[2]))
    return order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]


def make_split(samples: Iterable[tuple[str, str, str]], kind: str = "writer", seed: int = 0) -> dict:
    """Split ``(sample id, writer, label)`` triples; returns ``{"kind", "seed", "train", "val", "test"}``
    with sorted id lists. The same samples, kind and seed always give the same split."""
    rows = sorted(set(samples), key=lambda r: natural_key(r[0]))
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    if kind == "writer":
        writers = sorted({w for _, w, _ in rows}, key=natural_key)
        if len(writers) < 3:
            raise SplitError(f"a writer split needs at least 3 writers (one each for train, val and test); "
                             f"the data has {len(writers)}. Render more writers or use --split random")
        n_val = max(1, int(round(len(writers) * FRACTIONS[1])))
        n_test = max(1, int(round(len(writers) * FRACTIONS[2])))
        order = [writers[i] for i in rng.permutation(len(writers))]
        side = {w: 1 for w in order[:n_val]} | {w: 2 for w in order[n_val:n_val + n_test]}
        for sid, w, _ in rows:
            parts[side.get(w, 0)].append(sid)
    elif kind == "random":
        by_label: dict[str, list[str]] = {}
        for sid, _, label in rows:
            by_label.setdefault(label, []).append(sid)
        for label in sorted(by_label):
            for part, ids in zip(parts, _cut(by_label[label], rng), strict=True):
                part.extend(ids)
        if not all(parts):
            raise SplitError(f"too few samples ({len(rows)}) for a 70/15/15 split")
    else:
        raise SplitError(f"unknown split kind {kind!r}: choose {' or '.join(KINDS)}")
    train, val, test = (sorted(p, key=natural_key) for p in parts)
    return {"kind": kind, "seed": seed, "train": train, "val": val, "test": test}


def make_fold_split(samples: Iterable[tuple[str, str, str]], folds: int, fold: int, seed: int = 0,
                    kind: str = "writer") -> dict:
    """Fold ``fold`` of a ``folds``-fold cross-validation of ``(sample id, writer, label)`` triples, so
    that over all folds every writer (``kind="writer"``) or every sample (``"random"``) is tested
    exactly once. ``writer``: the writers, shuffled by ``seed``, are dealt into ``folds`` groups, and
    fold ``i`` tests on group ``i``; its validation writers (15 % of all, at least one) are drawn from
    the other groups with ``seed`` and ``fold``; the rest train. ``random``: the same within each
    class, sample by sample (stratified). Returns ``{"kind", "seed", "folds", "fold", "train", "val",
    "test"}``, the same for the same samples, folds, fold and seed."""
    rows = sorted(set(samples), key=lambda r: natural_key(r[0]))
    if kind == "writer":
        parts = _deal_writers(rows, folds, fold, seed)
    elif kind == "random":
        parts = _deal_samples(rows, folds, fold, seed)
    else:
        raise SplitError(f"unknown split kind {kind!r}: choose {' or '.join(KINDS)}")
    train, val, test = (sorted(p, key=natural_key) for p in parts)
    return {"kind": kind, "seed": seed, "folds": folds, "fold": fold, "train": train, "val": val, "test": test}


def _check_fold(folds: int, fold: int) -> None:
    if not 0 <= fold < folds:
        raise SplitError(f"fold {fold} of {folds}: folds are numbered 0 to {folds - 1}")


def _deal_writers(rows: list[tuple[str, str, str]], folds: int, fold: int, seed: int) -> tuple[list, list, list]:
    """The train, val and test ids of fold ``fold`` of a writer cross-validation."""
    writers = sorted({w for _, w, _ in rows}, key=natural_key)
    if not 2 <= folds <= len(writers) - 2:
        raise SplitError(f"{folds}-fold writer cross-validation needs 2 to {max(2, len(writers) - 2)} folds for "
                         f"{len(writers)} writers (each fold keeps writers for training and validation)")
    _check_fold(folds, fold)
    order = [writers[i] for i in np.random.default_rng(seed).permutation(len(writers))]
    test = set(order[fold::folds])
    rest = [w for w in order if w not in test]
    n_val = min(len(rest) - 1, max(1, int(round(len(writers) * FRACTIONS[1]))))
    val = {rest[i] for i in np.random.default_rng([seed, fold]).permutation(len(rest))[:n_val]}
    parts: tuple[list, list, list] = ([], [], [])
    for sid, w, _ in rows:
        parts[2 if w in test else 1 if w in val else 0].append(sid)
    return parts


def _deal_samples(rows: list[tuple[str, str, str]], folds: int, fold: int, seed: int) -> tuple[list, list, list]:
    """The train, val and test ids of fold ``fold`` of a random cross-validation, class by class:
    each class's samples, shuffled by ``seed``, are dealt into ``folds`` groups; the fold tests on its
    group of every class and validates on 15 % of each class drawn from the others with ``seed`` and
    ``fold``."""
    by_label: dict[str, list[str]] = {}
    for sid, _, label in rows:
        by_label.setdefault(label, []).append(sid)
    smallest = min((len(ids) for ids in by_label.values()), default=0)
    if not 2 <= folds <= smallest - 2:
        raise SplitError(f"{folds}-fold random cross-validation needs 2 to {max(2, smallest - 2)} folds when the "
                         f"rarest class has {smallest} samples (each fold keeps some to train and validate on)")
    _check_fold(folds, fold)
    rng, pick = np.random.default_rng(seed), np.random.default_rng([seed, fold])
    parts: tuple[list, list, list] = ([], [], [])
    for label in sorted(by_label):
        ids = by_label[label]
        order = [ids[i] for i in rng.permutation(len(ids))]
        test = order[fold::folds]
        held = set(test)
        rest = [s for s in order if s not in held]
        n_val = min(len(rest) - 1, max(1, int(round(len(ids) * FRACTIONS[1]))))
        val = [rest[i] for i in pick.permutation(len(rest))[:n_val]]
        parts[2].extend(test)
        parts[1].extend(val)
        parts[0].extend(set(rest) - set(val))
    return parts


def check_split(split: dict, writer_of: dict[str, str] | None = None) -> None:
    """Raise if a sample (or, for a writer split, a writer) sits on two sides."""
    sides = [set(split[k]) for k in ("train", "val", "test")]
    for i in range(3):
        for j in range(i + 1, 3):
            if sides[i] & sides[j]:
                raise SplitError(f"split leaks: {len(sides[i] & sides[j])} sample(s) on two sides")
            if split["kind"] == "writer" and writer_of:
                wi = {writer_of[s] for s in sides[i] if s in writer_of}
                wj = {writer_of[s] for s in sides[j] if s in writer_of}
                if wi & wj:
                    raise SplitError(f"writer split leaks writers {sorted(wi & wj)[:5]}")


def split_seed_of(seed: int, split_seed: int | None) -> int:
    """The seed a run's split is drawn with: its ``split_seed``, else its ``seed``."""
    return seed if split_seed is None else split_seed
