"""The run's error gallery: the tiles sit where the mosaic says, framed, on white, in order."""

from __future__ import annotations

import numpy as np
from PIL import Image

from classifier.plots import mosaic, plot_errors


def test_mosaic_places_each_image_in_its_cell():
    images = np.stack([np.full((6, 5), 10 * (k + 1), np.uint8) for k in range(5)])
    out = mosaic(images, cols=3, pad=2, caption=4)
    cell_h, cell_w = 4 + 6 + 2, 5 + 2 * 2
    assert out.shape == (2 * cell_h, 3 * cell_w)
    for k in range(5):
        y, x = (k // 3) * cell_h + 4, (k % 3) * cell_w + 2
        assert (out[y:y + 6, x:x + 5] == 10 * (k + 1)).all()
        assert out[y - 1, x] == out[y + 6, x + 4] == out[y, x - 1] == out[y + 5, x + 5] == 200  # the frame
        assert (out[y - 4:y - 1, x:x + 5] == 255).all()  # the caption's band stays blank
    assert (out[cell_h:, 2 * cell_w:] == 255).all()  # the sixth cell of two rows of three is empty


def test_plot_errors_shows_only_the_misread(tmp_path):
    images = np.full((10, 32, 32), 255, np.uint8)
    images[:, 8:24, 15:17] = 0
    targets, preds = np.arange(10) % 4, np.arange(10) % 4
    preds[[2, 7]] = 0
    plot_errors(images, targets, preds, ["a", "b", "c", "d"], tmp_path / "e.png")
    png = np.asarray(Image.open(tmp_path / "e.png").convert("L"))
    assert png.shape[1] == 8 * 170  # eight tiles of 1.7 inches at 100 dpi, one row
    ink_columns = np.nonzero((png[60:] < 60).any(axis=0))[0]  # below the title: the two drawn strokes
    assert len(ink_columns) and ink_columns.max() < 2 * 170  # two tiles, in the first two cells
    assert ink_columns.min() < 170 <= ink_columns.max()
