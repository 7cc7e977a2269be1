"""Training-time affine augmentation: reproducible, really changes pixels, keeps the symbol."""

import numpy as np
import torch

from classifier.augment import Affine
from classifier.data import to_input
from homus_render.render import RenderSettings, render


def symbols() -> torch.Tensor:
    s = RenderSettings(thickness=3, width=48, height=48)
    shapes = [[np.array([[0, 0], [0, 60.0]])], [np.array([[0, 0], [40, 40], [0, 40], [0, 0.0]])]]
    return to_input(np.stack([render(sh, s) for sh in shapes]))


def test_same_generator_state_gives_the_same_warps():
    x, aug = symbols(), Affine(rotate=8, shear=8, scale=0.1, translate=0.05)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_warps_change_pixels_but_keep_the_ink():
    x = symbols()
    out = Affine(rotate=8, shear=8, scale=0.1, translate=0.05)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    for before, after in zip(x, out, strict=True):
        assert (before - after).abs().sum() > 5  # visibly moved
        assert abs(after.sum() / before.sum() - 1) < 0.3  # the same amount of ink, give or take scale
        ys, xs = torch.nonzero(after[0] > 0.5, as_tuple=True)
        assert ys.min() >= 0 and ys.max() <= 47 and xs.numel() > 20  # still a symbol on the canvas


def test_each_transform_alone_and_identity():
    x = symbols()
    assert torch.equal(Affine()(x, torch.Generator()), x)
    for kw in ({"rotate": 10}, {"shear": 10}, {"scale": 0.2}, {"translate": 0.1}):
        out = Affine(**kw)(x, torch.Generator().manual_seed(1))
        assert not torch.allclose(out, x), kw
