"""Stroke-level augmentation measured on pixels: each distortion changes the image, keeps the whole
symbol on the canvas, and is reproducible from its seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_geometry import SHAPES, coverage, strokes

from homus_render.distort import StrokeAugment, augment_path, render_augmented
from homus_render.render import RenderSettings, draw, render

#: Each augmentation alone, at a strength well above the defaults, so its effect is certain.
SINGLE = {
    "thickness": StrokeAugment(thickness=1.5),
    "scale": StrokeAugment(scale=0.3),
    "aspect": StrokeAugment(aspect=0.4),
    "rotate": StrokeAugment(rotate=20),
    "shear": StrokeAugment(shear=20),
    "translate": StrokeAugment(translate=0.15),
    "elastic": StrokeAugment(elastic=0.08),
    "jitter": StrokeAugment(jitter=0.02),
    "ends": StrokeAugment(ends=1.0),
}
ALL = StrokeAugment(thickness=1.5, scale=0.3, aspect=0.4, rotate=20, shear=20, translate=0.3, elastic=0.08,
                    jitter=0.02, ends=1.0)
#: A flat with many points, plus a second stroke: enough for ends and bending to show.
FLAT = strokes([(0, y) for y in range(0, 61, 3)] + [(6, 52), (12, 46), (10, 41), (4, 40), (0, 45)],
               [(20, 5), (25, 10), (30, 5)])
S64 = RenderSettings(thickness=3, width=64, height=64, margin=4)


def rng(i: int = 0) -> np.random.Generator:
    return np.random.default_rng((7, i))


def whole_ink(path: list[np.ndarray], width: float, s: RenderSettings, pad: int = 64) -> float:
    """The ink of ``path`` drawn on a canvas ``pad`` pixels larger on every side: nothing is cut."""
    big = RenderSettings(thickness=s.thickness, width=s.width + 2 * pad, height=s.height + 2 * pad, margin=0)
    return coverage(draw([p + pad for p in path], big, width))


@pytest.mark.parametrize("shape", list(SHAPES) + ["flat"])
def test_no_augmentation_is_the_plain_rendering(shape):
    st = FLAT if shape == "flat" else SHAPES[shape]
    for s in (S64, RenderSettings(thickness=1, width=32, height=32), RenderSettings(fit="crop", width=96, height=96)):
        assert np.array_equal(render_augmented(st, s, StrokeAugment(), rng()), render(st, s))


@pytest.mark.parametrize("name", list(SINGLE) + ["all"])
def test_each_augmentation_changes_pixels_and_keeps_the_symbol_on_the_canvas(name):
    aug = ALL if name == "all" else SINGLE[name]
    plain = render(FLAT, S64)
    changed = 0
    for i in range(20):
        path, width, _ = augment_path(FLAT, S64, aug, rng(i))
        img = draw(path, S64, width)
        changed += not np.array_equal(img, plain)
        # nothing was cut off: the same path on a far larger canvas has the same ink
        assert coverage(img) == pytest.approx(whole_ink(path, width, S64), rel=1e-6, abs=1e-6), i
        assert (img < 255).any()
    assert changed >= 18, f"{name} left {20 - changed} of 20 images unchanged"


@pytest.mark.parametrize("shape", ["very-wide", "very-tall", "negative", "circle"])
def test_extreme_shapes_stay_on_the_canvas(shape):
    for i in range(10):
        path, width, _ = augment_path(SHAPES[shape], S64, ALL, rng(i))
        img = draw(path, S64, width)
        assert coverage(img) == pytest.approx(whole_ink(path, width, S64), rel=1e-6, abs=1e-6)


def test_same_seed_same_image_other_seed_other_image():
    a = render_augmented(FLAT, S64, ALL, np.random.default_rng((1, 2, 3)))
    b = render_augmented(FLAT, S64, ALL, np.random.default_rng((1, 2, 3)))
    c = render_augmented(FLAT, S64, ALL, np.random.default_rng((1, 2, 4)))
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)


def test_thickness_jitter_changes_the_measured_stroke_width():
    """A long horizontal line: ink per unit of length is the pen width, within the jitter range."""
    line = strokes([(0, 0), (100, 0)])
    s = RenderSettings(thickness=3, width=64, height=64, margin=4)
    widths = []
    for i in range(30):
        path, width, _ = augment_path(line, s, StrokeAugment(thickness=1.0), rng(i))
        img = draw(path, s, width)
        length = 64 - 2 * 4 - width  # the fitted path's length in pixels
        measured = (coverage(img) - math.pi * (width / 2) ** 2) / length  # minus the two round caps
        assert measured == pytest.approx(width + 0.25, abs=0.35)
        widths.append(width)
    assert min(widths) < 2.5 and max(widths) > 3.5
    assert all(2.0 <= w <= 4.0 for w in widths)


def test_shortened_ends_lose_ink_but_never_a_stroke():
    with_dot = [*FLAT, np.array([[40.0, 40.0]])]  # a one-point stroke (a dot) must survive
    for i in range(10):
        path, _, _ = augment_path(with_dot, S64, StrokeAugment(ends=1.0), rng(i))
        assert len(path) == len(with_dot)
        assert all(len(p) >= min(2, len(o)) for p, o in zip(path, with_dot, strict=True))
        assert sum(len(p) for p in path) < sum(len(o) for o in with_dot)


def test_scale_only_shrinks_and_translate_moves():
    plain = render(FLAT, S64)
    ink = coverage(plain)
    for i in range(10):
        assert coverage(render_augmented(FLAT, S64, StrokeAugment(scale=0.3), rng(i))) <= ink + 1e-6
    ys, xs = np.nonzero(plain < 128)
    moved = 0
    for i in range(10):
        img = render_augmented(FLAT, S64, StrokeAugment(translate=0.1), rng(i))
        y2, x2 = np.nonzero(img < 128)
        moved += abs(x2.mean() - xs.mean()) > 0.5 or abs(y2.mean() - ys.mean()) > 0.5
    assert moved >= 5


@pytest.mark.parametrize("bad", [{"rotate": -1}, {"scale": 1.0}, {"ends": 1.5}, {"jitter": "x"},
                                 {"elastic": float("nan")}])
def test_bad_strengths_are_refused(bad):
    with pytest.raises(ValueError, match="stroke"):
        StrokeAugment(**bad)


def test_redraw_adds_the_view_predict_gives_of_another_tools_image():
    """``redraw`` (a chance) adds a second image of the sample: the distorted path drawn as another
    tool would (the tablet's scale, a 1 to 5 unit pen), in the view ``--read auto`` gives of that
    image (fitted, or thickened). The first image is the sample's own drawing whatever ``redraw``
    is, since the foreign draws come last in the stream; it needs the CPU renderer."""
    from homus_render.distort import augment_path, foreign_image, render_pair
    from homus_render.errors import SettingsError
    from homus_render.normalize import model_view, thicken

    s = RenderSettings(thickness=3, width=48, height=48, margin=3)
    strokes = [np.array([[0.0, 0.0], [0.0, 60.0], [10.0, 50.0], [12.0, 44.0], [8.0, 40.0], [0.0, 45.0]])]
    plain, always = StrokeAugment(rotate=8, elastic=0.03), StrokeAugment(rotate=8, elastic=0.03, redraw=1.0)
    views = {"fitted": 0, "thickened": 0}
    for seed in range(16):
        a = render_augmented(strokes, s, plain, np.random.default_rng(seed))
        assert np.array_equal(render_augmented(strokes, s, always, np.random.default_rng(seed)), a)
        own, b = render_pair(strokes, s, always, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        path, _, _ = augment_path(strokes, s, always, rng)
        assert rng.random() < 1.0
        foreign = foreign_image(strokes, path, rng)
        assert np.array_equal(own, a) and np.array_equal(b, model_view(foreign, s)) and not np.array_equal(a, b)
        view = "thickened" if np.array_equal(b, thicken(foreign, s)) else "fitted"
        views[view] += 1
    assert views["fitted"] and views["thickened"], views  # thin and thick pens both occur
    never = StrokeAugment(rotate=8, elastic=0.03, redraw=0.0)
    own, none = render_pair(strokes, s, never, np.random.default_rng(seed))
    assert none is None and np.array_equal(own, a)
    with pytest.raises(SettingsError, match="redraw"):
        StrokeAugment(redraw=1.5)


def test_a_batch_holds_its_samples_then_the_foreign_images_some_of_them_drew():
    """With ``--stroke-redraw`` a training batch is the samples as drawn without it, followed by the
    foreign images of those that drew one, each with its sample's label: the model sees as many of
    homus' own images as a plain run does."""
    import torch

    from classifier.strokeset import StrokeSet, augment_sheet
    from homus_render.strokes import Sample

    shapes = [np.array([[0.0, 0.0], [0.0, 40.0]]), np.array([[0.0, 0.0], [30.0, 30.0], [60.0, 0.0]]),
              np.array([[0.0, 0.0], [20.0, 0.0], [20.0, 20.0], [0.0, 20.0], [0.0, 0.0]])]
    labels = ["Barline", "Flat", "Sharp"]
    samples = [Sample(f"1-{i}", "1", labels[i % 3], (shapes[i % 3] * (1 + i % 4),)) for i in range(12)]
    s = RenderSettings(width=32, height=32, margin=2)
    geometry = {"rotate": 8, "elastic": 0.03}
    mixed = StrokeSet(samples, s, StrokeAugment(**geometry, redraw=0.5), 3)
    own = StrokeSet(samples, s, StrokeAugment(**geometry), 3)
    x, y = mixed[(2, list(range(12)))]
    x0, y0 = own[(2, list(range(12)))]
    extra = [i for i in range(12) if mixed.draw_pair(i, 2)[1] is not None]
    assert 0 < len(extra) < 12 and x.shape == (12 + len(extra), 1, 32, 32)
    assert torch.equal(x[:12], x0) and torch.equal(y[:12], y0)  # homus' own images, as without redraw
    assert torch.equal(y[12:], y0[extra])
    from classifier.data import to_input

    foreign = to_input(np.stack([mixed.draw_pair(i, 2)[1] for i in extra]))
    assert torch.equal(x[12:], foreign)
    assert augment_sheet(mixed, epochs=2)[:8] == b"\x89PNG\r\n\x1a\n"


def test_another_tools_image_is_drawn_at_the_tablets_scale():
    """:func:`foreign_image` draws at one pixel per tablet unit, whatever the canvas the path was
    fitted to, with a pen of 1 to 5 units, in binary or antialiased ink: a small symbol's loops
    merge into ink as they do in other tools' images. Some pages cut both ends of the symbol's
    longer side, as a fixed canvas cuts a large symbol."""
    from homus_render.distort import FOREIGN_CUT, FOREIGN_KEPT, FOREIGN_PAD, FOREIGN_PENS, foreign_image
    from homus_render.normalize import ink_mask

    strokes = [np.array([[0.0, 0.0], [40.0, 0.0], [40.0, 20.0]])]  # 40 x 20 tablet units
    on_canvas = [st * 1.4 + 4 for st in strokes]  # fitted to a 64 px canvas
    seen = set()
    for seed in range(40):
        img = foreign_image(strokes, on_canvas, np.random.default_rng(seed))
        again = np.random.default_rng(seed)
        units, antialias, cut = again.uniform(*FOREIGN_PENS), again.random() < 0.5, again.random() < FOREIGN_CUT
        whole = 40 + units + 2 * FOREIGN_PAD
        assert img.dtype == np.uint8 and img.shape[0] == pytest.approx(20 + units + 2 * FOREIGN_PAD, abs=2)
        ink = ink_mask(img)
        if cut:
            assert img.shape[1] == pytest.approx(40 * again.uniform(*FOREIGN_KEPT), abs=1)
            assert ink[:, 0].any() and ink[:, -1].any()  # the bar runs off both sides
        else:
            assert img.shape[1] == pytest.approx(whole, abs=2) and not ink[:, 0].any() and not ink[:, -1].any()
        across = int(ink[:, img.shape[1] // 2].sum())  # ink pixels across the horizontal bar
        assert units - 1 <= across <= units + 1.5, (units, across)
        binary = set(np.unique(img).tolist()) <= {0, 255}
        assert binary == (not antialias)
        seen.add((binary, cut))
    assert len(seen) == 4, seen  # binary and antialiased ink, whole and cut pages

def test_the_device_rasterizer_refuses_redraw():
    import torch

    from classifier.strokeset import StrokeSet, make_train_source
    from homus_render.errors import SettingsError
    from homus_render.strokes import Sample

    sample = Sample("1-1", "1", "Barline", (np.array([[0.0, 0.0], [0.0, 40.0]]),))
    ds = StrokeSet([sample], RenderSettings(width=32, height=32, margin=2), StrokeAugment(redraw=0.5), 0)
    with pytest.raises(SettingsError, match="--raster cpu"):
        make_train_source(ds, 8, 0, 0, "device", torch.device("cpu"))
