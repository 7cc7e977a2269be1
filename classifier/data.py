"""Rendered variants as tensors: read what ``homus render`` wrote (manifest, PNGs, variant.json)."""

from __future__ import annotations

import csv
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from homus_render.errors import HomusError
from homus_render.labels import LABELS
from homus_render.variants import read_variant_info


class DataError(HomusError, ValueError):
    """A variant folder that cannot be used for training."""


@dataclass
class Variant:
    """One rendered variant folder, loaded: images ``(n, h, w)`` uint8 (``(n, c, h, w)`` when drawn
    in several channels) and their manifest rows."""

    path: Path
    info: dict  # variant.json
    images: np.ndarray
    samples: list[str]
    writers: list[str]
    labels: list[str]

    @property
    def name(self) -> str:
        return self.info.get("name", self.path.name)

    @property
    def settings(self) -> dict:
        return self.info["settings"]


def variant_info(path: str | Path) -> dict:
    """A variant folder's variant.json (its settings under ``settings``); DataError if it has none."""
    try:
        return read_variant_info(path)
    except ValueError as e:
        raise DataError(str(e)) from None


def dataset_sha256(info: dict) -> str | None:
    """The content hash of the raw strokes a variant was rendered from (its ``variant.json``), or
    none for folders rendered before homus recorded it."""
    return info.get("dataset", {}).get("sha256")


def load_variant(path: str | Path, only: set[str] | None = None) -> Variant:
    """Read a variant folder (all samples, or only the ids in ``only``)."""
    path = Path(path)
    info = variant_info(path)
    manifest = path / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{path}: not a rendered variant (no manifest.csv); run `homus render` first")
    with open(manifest, newline="") as f:
        rows = [r for r in csv.DictReader(f) if only is None or r["sample"] in only]
    if not rows:
        raise DataError(f"{path}: no samples to load")
    images = np.stack([_read_gray(path / r["path"]) for r in rows])
    return Variant(path, info, images, [r["sample"] for r in rows], [r["writer"] for r in rows],
                   [r["label"] for r in rows])


def _read_gray(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DataError(f"{path}: missing or unreadable image")
    return img


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``(n, h, w)`` (or ``(n, c, h, w)``) black-on-white -> float ``(n, c, h, w)`` with ink 1
    and paper 0."""
    x = torch.as_tensor(images)
    x = (255 - x.float()).div_(255)
    return x.unsqueeze(1) if x.ndim == 3 else x


class ImageSet(Dataset):
    """Images of chosen samples from one or more variants, with class indices from LABELS order."""

    def __init__(self, variants: list[Variant], ids: set[str], classes: tuple[str, ...] = LABELS):
        index = {c: i for i, c in enumerate(classes)}
        sizes = {v.images.shape[1:] for v in variants}
        if len(sizes) > 1:
            raise DataError(f"variants of different sizes {sorted(sizes)} cannot be mixed in one batch; "
                            "train on variants of one size")
        keep = [(v, i) for v in variants for i, s in enumerate(v.samples) if s in ids]
        self.images = torch.from_numpy(np.stack([v.images[i] for v, i in keep])) if keep else \
            torch.empty((0, *next(iter(sizes))), dtype=torch.uint8)
        self.targets = torch.tensor([index[v.labels[i]] for v, i in keep], dtype=torch.long)
        self.samples = [v.samples[i] for v, i in keep]
        self.variant_of = [v.name for v, _ in keep]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key: list[int] | tuple[int, list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch at once (indices, or ``(epoch, indices)`` from :class:`EpochBatches`; the
        images do not change with the epoch): one gather, no per-image collate."""
        idx = torch.as_tensor(batch_key(key)[1])
        return to_input(self.images[idx]), self.targets[idx]


def loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int = 0, workers: int = 0,
           worker_init_fn=None) -> DataLoader:
    """Batches of ``ds`` (whose ``__getitem__`` takes a list of indices); when shuffling, the order
    is fixed by ``seed`` (pass seed + epoch)."""
    batches = (_shuffled_batches(len(ds), batch_size, seed) if shuffle
               else BatchSampler(SequentialSampler(ds), batch_size, drop_last=False))
    return DataLoader(ds, sampler=batches, batch_size=None, num_workers=workers, persistent_workers=False,
                      worker_init_fn=worker_init_fn, multiprocessing_context=start_context(workers))


def start_context(workers: int, method: str | None = None):
    """How a loader's ``workers`` start: ``method``, else the platform's default, named explicitly.
    Left unnamed, a loader in a ``homus run --parallel`` run (a joblib loky worker, whose default
    context is loky's) would start its workers through loky, which cannot start them."""
    if workers <= 0:
        return None
    return multiprocessing.get_context(method or multiprocessing.get_all_start_methods()[0])


def batch_key(key: list[int] | tuple[int, list[int]], epoch: int = 0) -> tuple[int, list[int]]:
    """A batch's ``(epoch, indices)``: as :class:`EpochBatches` gives them, or plain indices, in ``epoch``."""
    return key if isinstance(key, tuple) else (epoch, key)


def batch_count(n: int, batch_size: int) -> int:
    """How many training batches ``n`` images make: a last batch of one image joins the one before,
    since batch normalisation cannot train on a single image."""
    full, rest = divmod(n, batch_size)
    return full + (rest > 1 or (rest == 1 and full == 0))


def _shuffled_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """Batches of ``range(n)`` in the order ``seed`` fixes (:func:`batch_count` of them): the one
    shuffle of :func:`loader` and :class:`EpochBatches`."""
    order = RandomSampler(range(n), generator=torch.Generator().manual_seed(seed))
    batches = list(BatchSampler(order, batch_size, drop_last=False))
    if len(batches) > 1 and len(batches[-1]) == 1:
        lone = batches.pop()
        batches[-1] = batches[-1] + lone
    return batches


class EpochBatches(Sampler):
    """Shuffled batches of ``n`` indices, each as ``(epoch, indices)``: the order is fixed by
    ``seed + epoch`` (the same batches as :func:`loader` with that seed), and the epoch travels
    with the batch, so loader workers that live across epochs still draw each epoch's images.
    Call :meth:`set_epoch` before each pass."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return batch_count(self.n, self.batch_size)

    def __iter__(self):
        for idx in _shuffled_batches(self.n, self.batch_size, self.seed + self.epoch):
            yield self.epoch, idx


def epoch_loader(ds: Dataset, batch_size: int, seed: int, workers: int = 0,
                 worker_init_fn=None, context: str | None = None) -> tuple[DataLoader, EpochBatches]:
    """A training loader built once for the whole run: its workers start once, not every epoch
    (restarting many workers each epoch starves a fast GPU; see docs/gpu.md). Set the
    epoch on the returned sampler before each pass. ``context``: how workers start (default: the
    platform's; ``forkserver`` for datasets that run torch ops in the workers, which a forked child
    of a process whose thread pools have run can deadlock in)."""
    batches = EpochBatches(len(ds), batch_size, seed)
    return DataLoader(ds, sampler=batches, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                      worker_init_fn=worker_init_fn, multiprocessing_context=start_context(workers, context)), batches
