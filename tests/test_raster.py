"""The torch rasterizer draws what homus_render draws, its distortions follow StrokeAugment's
distributions, and its training source yields the batches the training loop expects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from classifier.data import epoch_loader
from classifier.raster import (
    StrokeStore,
    draw_flat,
    ink_boxes,
    pad_strokes,
    parity,
    path_lengths,
    rasterize,
    sample_keys,
    uniform,
)
from classifier.strokeset import RasterSet, RasterSource, StrokeSet, make_train_source, raster_device, worker_init
from homus_render.channels import render_channels
from homus_render.dataset import list_stroke_files
from homus_render.distort import StrokeAugment, render_augmented
from homus_render.errors import SettingsError
from homus_render.render import RenderSettings, render
from homus_render.strokes import parse_file

AUG = StrokeAugment(scale=0.1, aspect=0.1, rotate=8, shear=8, translate=0.05, elastic=0.03, jitter=0.003,
                    ends=0.2, thickness=0.5, size=0.2)


@pytest.fixture(scope="module")
def samples(raw_full):
    """200 HOMUS samples spread over every writer (every 76th file)."""
    files = list_stroke_files(raw_full)
    return [parse_file(raw_full / rel) for rel in files[::76]]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the CPU is shared, and two threads fight over it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("thickness,size", [(1, 32), (2, 96), (3, 64), (4, 32), (5, 128)])
def test_ink_matches_homus_render(samples, thickness, size):
    s = RenderSettings(thickness=thickness, width=size, height=size)
    symbols = [x.strokes for x in samples]
    ref = np.stack([render(x, s) for x in symbols])
    drawn = rasterize(*pad_strokes(symbols), s)[:, 0].numpy()
    p = parity(ref, drawn, path_lengths(symbols, s))
    assert p["mean_abs_diff"] <= 2.0
    assert p["bbox_px_max"] <= 1
    assert p["width_px_max"] <= 0.25
    assert len(samples) == 200


@pytest.mark.parametrize("antialias", [True, False])
def test_every_channel_matches(samples, antialias):
    size = 64 if antialias else 48  # crop: at tablet scale, a quarter of a 32 px canvas is ink
    s = RenderSettings(thickness=3, width=size, height=size, antialias=antialias,
                       fit="crop" if antialias else "scale", margin=2)
    channels = ("ink", "time", "stroke", "size")
    symbols = [x.strokes for x in samples[:60]]
    ref = np.stack([render_channels(x, s, channels) for x in symbols])
    drawn = rasterize(*pad_strokes(symbols), s, channels).numpy()
    assert drawn.shape == ref.shape and drawn.dtype == np.uint8
    for c in range(3):
        assert np.abs(ref[:, c].astype(int) - drawn[:, c]).mean() <= 2.0, channels[c]
    assert np.array_equal(ref[:, 3], drawn[:, 3])  # the size page: one exact shade
    if not antialias:
        assert set(np.unique(drawn[:, 0])) <= {0, 255}


def test_staff_lines_and_a_dot():
    s = RenderSettings(thickness=2, width=32, height=32, staff_lines=True, staff_spacing=6)
    dot = [np.array([[5.0, 5.0], [5.0, 5.0]])]
    drawn = rasterize(*pad_strokes([dot]), s)[0, 0].numpy()
    ref = render(dot, s)
    assert np.abs(drawn.astype(int) - ref).mean() <= 2
    rows = [r for r in range(32) if (drawn[r] == 0).all()]
    assert rows == [r for r in range(32) if (ref[r] == 0).all()] and len(rows) == 5
    assert drawn[15:17, 15:17].max() < 128  # the dot, fitted to the centre


def test_a_sample_draws_the_same_in_any_batch(samples):
    s = RenderSettings(thickness=3, width=32, height=32)
    store = StrokeStore([x.strokes for x in samples])
    idx = torch.tensor([7, 3, 150, 42])
    together = draw_flat(store.batch(idx), s, ("ink", "time"), AUG, sample_keys(5, 2, idx))
    for i, k in enumerate(idx.tolist()):
        one = torch.tensor([k])
        alone = draw_flat(store.batch(one), s, ("ink", "time"), AUG, sample_keys(5, 2, one))
        assert torch.equal(alone[0], together[i])
    again = draw_flat(store.batch(idx), s, ("ink", "time"), AUG, sample_keys(5, 2, idx))
    assert torch.equal(again, together)
    other = draw_flat(store.batch(idx), s, ("ink", "time"), AUG, sample_keys(5, 3, idx))
    assert not torch.equal(other, together)  # another epoch, other distortions
    padded = rasterize(*pad_strokes([samples[k].strokes for k in idx.tolist()]), s, ("ink", "time"), AUG, seed=5,
                       epoch=2, index=idx)
    assert torch.equal(padded, together)


def test_uniform_numbers_are_uniform():
    u = uniform(sample_keys(0, 0, torch.arange(20_000)), 3)
    assert 0 < float(u.min()) and float(u.max()) < 1
    hist = torch.histc(u, 10, 0, 1)
    assert (hist - 2000).abs().max() < 200
    assert not torch.equal(u, uniform(sample_keys(0, 0, torch.arange(20_000)), 4))


def test_distortions_follow_stroke_augment(samples):
    """Over many draws, the ink's bounding box and amount have the same distribution as homus_render's."""
    s = RenderSettings(thickness=3, width=48, height=48)
    symbols = [x.strokes for x in samples]
    rng = np.random.default_rng(0)
    ref = np.stack([render_augmented(x, s, AUG, rng) for _ in range(3) for x in symbols])
    store = StrokeStore(symbols)
    idx = torch.arange(len(symbols))
    drawn = torch.cat([draw_flat(store.batch(idx), s, ("ink",), AUG, sample_keys(0, e, idx))[:, 0]
                       for e in range(3)]).numpy()
    plain = rasterize(*pad_strokes(symbols), s)[:, 0].numpy()
    for images in (ref, drawn):
        assert images.shape == (600, 48, 48)
    box_ref, box_drawn = ink_boxes(ref), ink_boxes(drawn)
    for k in range(4):
        assert abs(box_ref[:, k].mean() - box_drawn[:, k].mean()) < 0.6
        assert abs(box_ref[:, k].std() - box_drawn[:, k].std()) < 0.6
    mass = lambda a: (255 - a.astype(float)).sum((1, 2)).mean()  # noqa: E731
    assert abs(mass(drawn) / mass(ref) - 1) < 0.05
    assert (np.abs(drawn[:200].astype(int) - plain) > 64).any(axis=(1, 2)).mean() > 0.9  # they do distort


def test_raster_source_yields_the_loader_batches(samples):
    s = RenderSettings(thickness=3, width=32, height=32)
    ds = StrokeSet(samples[:70], s, AUG, seed=1, channels=("ink", "size"))
    source, order = make_train_source(ds, 32, 9, 0, "device", "cpu")
    assert isinstance(source, RasterSource) and order is source and len(source) == 3
    dl, batches = epoch_loader(ds, 32, 9, 0, worker_init())
    for epoch in (1, 2):
        order.set_epoch(epoch)
        batches.set_epoch(epoch)
        got, want = list(source), list(dl)
        assert [y.tolist() for _, y in got] == [y.tolist() for _, y in want]
        for (x, _), (xc, _) in zip(got, want, strict=True):
            assert x.shape == xc.shape and x.dtype == torch.float32
            assert x.is_contiguous(memory_format=torch.channels_last)
            assert 0 <= float(x.min()) and float(x.max()) <= 1
            assert abs(float(x[:, 0].mean()) - float(xc[:, 0].mean())) < 0.03  # as much ink, other draws
    cpu, _ = make_train_source(ds, 32, 9, 0, "cpu", "cpu")
    assert not isinstance(cpu, RasterSource) and isinstance(cpu.dataset, StrokeSet)
    workers, order = make_train_source(ds, 32, 9, 1, "device", "cpu")  # on the CPU: drawn in the loader's worker
    assert isinstance(workers.dataset, RasterSet)
    order.set_epoch(2)
    source.set_epoch(2)
    for (x, y), (xw, yw) in zip(workers, source, strict=True):
        assert torch.equal(x, xw) and torch.equal(y, yw)


def test_raster_choice():
    assert raster_device("device", torch.device("cpu"))
    assert not raster_device("auto", torch.device("cpu"))
    assert raster_device("auto", torch.device("cuda"))
    assert not raster_device("cpu", torch.device("cuda"))
    with pytest.raises(SettingsError, match="raster must be one of"):
        raster_device("gpu", torch.device("cpu"))


def test_train_with_the_device_rasterizer_on_the_cpu_keeps_the_test_images(synthetic_raw, tmp_path):
    """`homus train --raster device` trains on a CPU too; its validation and test images are the CPU
    renderer's, byte for byte, so its figures compare with a `--raster cpu` run's."""
    import json

    import numpy as np
    from click.testing import CliRunner

    from classifier.runfolder import RunFolder
    from homus.cli import main

    runs = {}
    for raster in ("cpu", "device"):
        r = CliRunner().invoke(main, ["train", "--raw-dir", str(synthetic_raw), "--size", "32", "--epochs", "1",
                                      "--batch-size", "64", "--schedule", "constant", "--workers", "0",
                                      "--device", "cpu", "--raster", raster, "--runs-dir", str(tmp_path),
                                      "--name", raster])
        assert r.exit_code == 0, r.output
        runs[raster] = RunFolder(tmp_path / raster)
        assert runs[raster].config()["raster"] == raster
    assert runs["cpu"].split() == runs["device"].split()
    a, b = (runs[k].test_variants()[0] for k in ("cpu", "device"))
    assert a.samples == b.samples and np.array_equal(a.images, b.images)
    m = {k: json.loads(runs[k].file("metrics.json").read_text()) for k in runs}
    assert m["cpu"]["n_test"] == m["device"]["n_test"] > 0
    assert (m["cpu"]["raster"], m["device"]["raster"]) == ("cpu", "device")  # who drew, once resolved
