"""Training images drawn afresh from the raw pen strokes: every epoch each sample is rendered
again, distorted by the stroke-level augmentation (:mod:`homus_render.distort`).

The images depend only on (seed, epoch, sample), never on worker count or batch order, so a run
is reproducible however it is loaded. Validation and test images are plain renderings, the very
pixels ``homus render`` writes, so runs from strokes and from rendered folders compare directly.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from homus_render.channels import ORDER, ink_index, render_many, render_plain
from homus_render.distort import StrokeAugment, render_augmented, render_pair
from homus_render.labels import LABELS
from homus_render.render import RenderSettings
from homus_render.strokes import Sample
from homus_render.workers import exit_with, pool, process_start

from .data import Variant, batch_key, to_input
from .settings import RASTERS

PARALLEL_FROM = 2000  # fewer samples render faster in this process than a pool of processes starts


def render_samples(samples: list[Sample], settings: RenderSettings, source: str | Path = "strokes",
                   channels: tuple[str, ...] = ("ink",), jobs: int = -1) -> Variant:
    """Plain renderings of ``samples``, held in memory as if read from a variant folder. Large sets
    drawn with the pen's order (six times the work of ink alone) are shared among ``jobs`` processes
    (-1: all cores); the pixels are the same however many. Ink alone is drawn faster here than a pool
    starts (measured: 15,200 at 64 px, 3 s in one process)."""
    from joblib import delayed, effective_n_jobs

    strokes = [s.strokes for s in samples]
    heavy = any(c in ORDER for c in channels) and len(strokes) >= PARALLEL_FROM
    jobs = effective_n_jobs(jobs) if heavy else 1
    if jobs > 1:  # a few chunks per process: the pool's start-up is paid once, the load stays even
        size = -(-len(strokes) // (jobs * 4))
        parts = pool(jobs)(delayed(render_many)(strokes[i:i + size], settings, channels)
                           for i in range(0, len(strokes), size))
        images = np.concatenate(parts)
    else:
        images = render_many(strokes, settings, channels)
    info = {"name": settings.name, "settings": settings.to_dict(), "source": str(source),
            "channels": list(channels)}
    return Variant(Path(source), info, images, [s.id for s in samples], [s.writer for s in samples],
                   [s.label for s in samples])


class StrokeSet(Dataset):
    """Samples rendered on demand with ``augment``, as drawn in one epoch: the batch's own (from
    :class:`~classifier.data.EpochBatches`), else the one :meth:`set_epoch` set. With
    ``augment.redraw`` (ink alone), a batch also holds, after its samples, the foreign images some of
    them drew (:func:`~homus_render.distort.render_pair`), with their labels."""

    def __init__(self, samples: list[Sample], settings: RenderSettings, augment: StrokeAugment, seed: int,
                 classes: tuple[str, ...] = LABELS, channels: tuple[str, ...] = ("ink",)):
        index = {c: i for i, c in enumerate(classes)}
        self.strokes = [s.strokes for s in samples]
        self.samples = [s.id for s in samples]
        self.targets = torch.tensor([index[s.label] for s in samples], dtype=torch.long)
        self.settings, self.augment, self.seed, self.epoch = settings, augment, seed, 0
        self.channels = tuple(channels)
        self.foreign = bool(augment.redraw) and self.channels == ("ink",)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.targets)

    def draw(self, i: int, epoch: int) -> np.ndarray:
        """Sample ``i`` as drawn in ``epoch`` (its own random stream: seed, epoch, index)."""
        if not self.augment.active:
            return render_plain(self.strokes[i], self.settings, self.channels)
        return render_augmented(self.strokes[i], self.settings, self.augment, self._rng(epoch, i), self.channels)

    def draw_pair(self, i: int, epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Sample ``i`` as drawn in ``epoch`` (the image :meth:`draw` gives), and the foreign image
        drawn beside it, or None (:func:`~homus_render.distort.render_pair`)."""
        return render_pair(self.strokes[i], self.settings, self.augment, self._rng(epoch, i))

    def _rng(self, epoch: int, i: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, epoch, i))

    def __getitem__(self, key: list[int] | tuple[int, list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch at once, like :class:`~classifier.data.ImageSet`: indices, drawn as in the
        current epoch, or ``(epoch, indices)`` (from :class:`~classifier.data.EpochBatches`)."""
        epoch, idx = batch_key(key, self.epoch)
        targets = self.targets[torch.as_tensor(idx)]
        if not self.foreign:
            return to_input(np.stack([self.draw(i, epoch) for i in idx])), targets
        pairs = [self.draw_pair(i, epoch) for i in idx]
        extra = [k for k, (_, foreign) in enumerate(pairs) if foreign is not None]
        images = [own for own, _ in pairs] + [pairs[k][1] for k in extra]
        return to_input(np.stack(images)), torch.cat([targets, targets[torch.as_tensor(extra, dtype=torch.long)]])


def _quit(signum, frame) -> None:
    os._exit(0)


def _init_worker(owner: int, owner_start: int | None, _: int) -> None:
    # SIGTERM to the whole process group reaches the workers too. A forked worker inherits the
    # command's handler, which would report the stop half-way through its threads, and one killed by
    # the signal makes the loader raise in its owner, even after the owner reported the stop: it
    # ends quietly instead, and its owner reports the stop once
    signal.signal(signal.SIGTERM, _quit)
    exit_with(owner, owner_start)
    cv2.setNumThreads(1)


def worker_init() -> Callable[[int], None]:
    """A loader's ``worker_init_fn``, bound to this process (the one that makes the loader): each
    loader process ends soon after this one does, whatever it is doing, and at once if this one
    was killed before the worker started up; torch's own check waits for the current batch and
    watches only the worker's parent (a forkserver, or the reaper once the parent is gone). Then
    one OpenCV thread per loader process: the processes are the parallelism."""
    me = os.getpid()
    return functools.partial(_init_worker, me, process_start(me))


def augment_sheet(ds: StrokeSet, classes: tuple[str, ...] = LABELS, per_class: int = 1, epochs: int = 8) -> bytes:
    """A contact sheet (PNG) of what the model is shown: one row per class (its first training
    sample), the plain rendering (each channel, when there are several), then that sample as
    drawn in epochs 1..``epochs`` (its ink channel; the ``size`` page's jitter is not shown; with
    ``--stroke-redraw``, the foreign image in the epochs that drew one)."""
    from homus_render.preview import grid

    rows, seen = [], {}
    for i, t in enumerate(ds.targets.tolist()):
        if seen.get(t, 0) < per_class:
            seen[t] = seen.get(t, 0) + 1
            plain = render_plain(ds.strokes[i], ds.settings, ds.channels)
            if ds.foreign:  # the foreign image where one was drawn beside the sample's own
                drawn = [f if f is not None else own for own, f in (ds.draw_pair(i, e) for e in range(1, epochs + 1))]
            else:
                drawn = [ds.draw(i, e) for e in range(1, epochs + 1)]
            if plain.ndim == 3:  # each channel plain, then the drawings in ink (or the first channel)
                plain, drawn = list(plain), [d[ink_index(ds.channels)] for d in drawn]
            else:
                plain = [plain]
            rows.append((classes[t], [*plain, *drawn]))
    rows.sort(key=lambda r: classes.index(r[0]))
    ok, png = cv2.imencode(".png", grid(rows, cell=max(48, min(96, ds.settings.height + 2))))
    if not ok:
        raise RuntimeError("OpenCV could not encode the training-sample sheet as PNG")
    return png.tobytes()



class RasterSet(Dataset):
    """A :class:`StrokeSet`'s samples drawn by the torch rasterizer (:mod:`classifier.raster`) on
    ``device``, a whole batch at once, already as the model's input (``(B, C, h, w)`` float, ink 1,
    channels-last). Sample ``i`` of epoch ``e`` is distorted by the rasterizer's draws of key
    (``ds.seed``, ``e``, ``i``). Indexed by batches like :class:`StrokeSet`, so on the CPU it serves
    a loader's worker processes as well."""

    def __init__(self, ds: StrokeSet, device: torch.device | str = "cpu"):
        from .raster import StrokeStore

        self.device = torch.device(device)
        self.store = StrokeStore(ds.strokes, self.device)
        self.targets = ds.targets.to(self.device)
        self.settings, self.augment, self.seed, self.channels = ds.settings, ds.augment, ds.seed, ds.channels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.targets)

    def draw(self, idx: list[int] | torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``idx`` as drawn in ``epoch``: the model's input and their class indices."""
        from .raster import draw_flat, sample_keys

        idx = torch.as_tensor(idx, dtype=torch.int64).to(self.device)
        keys = sample_keys(self.seed, epoch, idx) if self.augment.active else None
        images = draw_flat(self.store.batch(idx), self.settings, self.channels, self.augment, keys)
        x = (255 - images.float()).div_(255).contiguous(memory_format=torch.channels_last)
        return x, self.targets[idx]

    def __getitem__(self, key: list[int] | tuple[int, list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, idx = batch_key(key, self.epoch)
        return self.draw(idx, epoch)


class RasterSource:
    """Training batches drawn on the training device by a :class:`RasterSet` held there, in the
    training process: no loader, no copies. The batches and their order are those of
    :class:`~classifier.data.EpochBatches` with the same seed. Iterate it like a loader, after
    :meth:`set_epoch`."""

    def __init__(self, ds: StrokeSet, batch_size: int, seed: int, device: torch.device | str):
        from .data import EpochBatches

        self.set = RasterSet(ds, device)
        self.order = EpochBatches(len(ds), batch_size, seed)

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        for epoch, idx in self.order:
            yield self.set.draw(idx, epoch)


def raster_device(raster: str, device: torch.device) -> bool:
    """Whether ``raster`` (cpu, device or auto) draws the training batches with the torch rasterizer:
    ``auto`` does on CUDA, where the loader's processes cannot keep up with the model."""
    if raster not in RASTERS:
        from homus_render.errors import SettingsError

        raise SettingsError(f"raster must be one of {', '.join(RASTERS)}, got {raster!r}")
    return raster == "device" or (raster == "auto" and torch.device(device).type == "cuda")


def make_train_source(ds: StrokeSet, batch_size: int, seed: int, workers: int, raster: str,
                      device: torch.device | str):
    """The training batches of a run from strokes, and the object whose ``set_epoch`` is called
    before each pass. ``raster: cpu``: ``homus_render`` draws them in ``workers`` loader processes.
    ``device`` (``auto`` on CUDA): the torch rasterizer draws them on ``device``; in the training
    process on an accelerator, in the ``workers`` loader processes on the CPU (the CPU draws either
    way, and there it overlaps with the training step). Validation and test images are not
    affected: they stay ``homus_render``'s plain renderings."""
    from .data import epoch_loader

    device = torch.device(device)
    on_device = raster_device(raster, device)
    if on_device and ds.augment.redraw:
        from homus_render.errors import SettingsError

        raise SettingsError("--stroke-redraw needs --raster cpu: the torch rasterizer does not redraw from the "
                            "centre line")
    if not on_device:
        return epoch_loader(ds, batch_size, seed, workers, worker_init())
    if device.type == "cpu" and workers > 0:
        # torch draws in these workers: started fresh (forkserver), not forked from a process whose
        # OpenMP threads have run, where a forked worker can hang
        return epoch_loader(RasterSet(ds, "cpu"), batch_size, seed, workers, worker_init(), "forkserver")
    source = RasterSource(ds, batch_size, seed, device)
    return source, source
