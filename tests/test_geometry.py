"""Render geometry measured on the pixels: centring, fitting, stroke width, staff lines, determinism."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from homus_render.render import RenderSettings, draw, fit_path, path_bounds, render, staff_rows

SIZES = (32, 64, 96, 128, 224)
THICKNESSES = (1, 2, 3, 4, 5)


def fit_transform(strokes, s: RenderSettings) -> tuple[float, np.ndarray]:
    """Scale and offset the renderer maps stroke coordinates with: ``p' = p * scale + offset``."""
    scale, ox, oy = fit_path(*path_bounds(strokes), s)
    return scale, np.array([ox, oy])


def strokes(*polylines) -> list[np.ndarray]:
    return [np.array(p, dtype=np.float64).reshape(-1, 2) for p in polylines]


def circle(cx=50.0, cy=50.0, r=30.0, n=73) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, n)]


SHAPES = {
    "horizontal": strokes([(0, 0), (100, 0)]),
    "vertical": strokes([(5, 3), (5, 80)]),
    "diagonal": strokes([(0, 0), (50, 50)]),
    "antidiagonal": strokes([(0, 50), (50, 0)]),
    "steep": strokes([(0, 0), (10, 60)]),
    "L": strokes([(0, 0), (0, 40), (30, 40)]),
    "circle": strokes(circle()),
    "negative": strokes([(-300, -200), (-250, -120)], [(-280, -150), (-260, -190)]),
    "very-wide": strokes([(0, 0), (1000, 0), (1000, 10)]),
    "very-tall": strokes([(0, 0), (3, 0), (3, 2000)]),
}


def ink_box(img: np.ndarray, level: int = 128) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1) of the pixels darker than ``level``, inclusive."""
    ys, xs = np.nonzero(img < level)
    assert xs.size, "no ink at all"
    return int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())


def coverage(values: np.ndarray) -> float:
    """Ink in pixel units: 1 for a black pixel, 0 for white."""
    return float(((255 - values.astype(np.float64)) / 255).sum())


def expected_ink(shape: list[np.ndarray], s: RenderSettings) -> np.ndarray:
    """Ink extent (w, h): the path's extent at the fitted scale plus one stroke width."""
    scale, _ = fit_transform(shape, s)
    pts = np.concatenate(shape)
    return (pts.max(axis=0) - pts.min(axis=0)) * scale + s.thickness


# --- output format ---------------------------------------------------------------------------


def test_output_is_uint8_black_ink_on_white():
    s = RenderSettings(thickness=3, width=80, height=60)
    img = render(SHAPES["L"], s)
    assert img.dtype == np.uint8
    assert img.shape == (60, 80)
    assert img.ndim == 2
    assert img.min() == 0 and img.max() == 255
    # paper dominates, and every corner is paper
    assert (img == 255).mean() > 0.8
    assert img[0, 0] == img[0, -1] == img[-1, 0] == img[-1, -1] == 255


def test_render_without_strokes_is_an_error():
    with pytest.raises(ValueError, match="stroke"):
        render([], RenderSettings(width=96, height=96))


# --- centring and fitting --------------------------------------------------------------------


@pytest.mark.parametrize("size", (32, 96, 224))
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_ink_is_centred_and_fills_the_canvas(name, size):
    shape = SHAPES[name]
    for t in (1, 3, 5):
        s = RenderSettings(thickness=t, width=size, height=size)
        img = render(shape, s)
        x0, x1, y0, y1 = ink_box(img)
        centre = (size - 1) / 2
        assert abs((x0 + x1) / 2 - centre) <= 1, (t, x0, x1)
        assert abs((y0 + y1) / 2 - centre) <= 1, (t, y0, y1)
        w, h = x1 - x0 + 1, y1 - y0 + 1
        # fit=scale: the longer side of the ink spans the canvas minus both margins
        assert abs(max(w, h) - (size - 2 * s.margin)) <= 1, (t, w, h)
        # aspect ratio: both sides match the path extent at the fitted scale plus the stroke
        ew, eh = expected_ink(shape, s)
        assert abs(w - ew) <= 1 and abs(h - eh) <= 1, (t, (w, h), (ew, eh))
        # nothing touches the border (margin 4)
        assert x0 >= s.margin - 1 and y0 >= s.margin - 1
        assert x1 <= size - s.margin and y1 <= size - s.margin


def test_aspect_ratio_of_a_rectangle():
    # a 60 x 20 rectangle at t=3 on 96: room 85 / 60 -> ink 88 x (20 * 85/60 + 3)
    rect = strokes([(0, 0), (60, 0), (60, 20), (0, 20), (0, 0)])
    s = RenderSettings(width=96, height=96)
    x0, x1, y0, y1 = ink_box(render(rect, s))
    w, h = x1 - x0 + 1, y1 - y0 + 1
    assert abs(w - 88) <= 1
    assert abs(h - (20 * 85 / 60 + 3)) <= 1
    assert abs(w / h - 88 / (20 * 85 / 60 + 3)) < 0.1


def test_fit_transform_maps_the_path_centre_to_the_canvas_centre():
    shape = SHAPES["negative"]
    for s in (RenderSettings(width=96, height=96), RenderSettings(width=128, height=64, thickness=2, margin=6),
              RenderSettings(fit="crop")):
        scale, offset = fit_transform(shape, s)
        pts = np.concatenate(shape)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        mapped = (lo + hi) / 2 * scale + offset
        np.testing.assert_allclose(mapped, [(s.width - 1) / 2, (s.height - 1) / 2])
        if s.fit == "crop":
            assert scale == 1.0
        else:
            ext = hi - lo
            room = np.array([s.width, s.height]) - 2 * s.margin - s.thickness
            assert scale == pytest.approx(min(room / ext))


def test_fit_transform_of_a_point_keeps_scale_one():
    scale, offset = fit_transform(strokes([(7, 9)]), RenderSettings(width=96, height=96))
    assert scale == 1.0
    np.testing.assert_allclose(offset + [7, 9], [47.5, 47.5])


def test_render_depends_only_on_the_shape():
    """Translating the pen path, or scaling it up, gives the same image under fit=scale."""
    rng = np.random.default_rng(0)
    s = RenderSettings(width=96, height=96)
    for _ in range(5):
        shape = [np.cumsum(rng.integers(-5, 6, (30, 2)), axis=0).astype(np.float64) for _ in range(3)]
        img = render(shape, s)
        assert np.array_equal(img, render([p + [1234, -567] for p in shape], s))
        assert np.array_equal(img, render([p * 3 for p in shape], s))


# --- stroke width ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("t", THICKNESSES)
def test_line_width_equals_thickness(t, size):
    s = RenderSettings(thickness=t, width=size, height=size)
    c = size // 2
    # measured across the line: a column of a horizontal line, a row of a vertical one
    for img, across in ((render(SHAPES["horizontal"], s), lambda im: im[:, c]),
                        (render(strokes([(0, 0), (0, 100)]), s), lambda im: im[c, :])):
        profile = across(img)
        assert abs(coverage(profile) - t) <= 1, coverage(profile)
        assert abs(int((profile < 128).sum()) - t) <= 1
        # the dark pixels are one run, not scattered
        dark = np.flatnonzero(profile < 128)
        assert dark.size and dark[-1] - dark[0] + 1 == dark.size


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("t", THICKNESSES)
def test_slanted_line_width_equals_thickness(t, size):
    """Across a slanted line, the width seen along a column (row) is t / cos (t / sin) of the slope."""
    s = RenderSettings(thickness=t, width=size, height=size)
    c = size // 2
    cases = [
        (strokes([(0, 0), (100, 100)]), 0, math.cos(math.pi / 4)),  # 45 degrees, down a column
        (strokes([(0, 100), (100, 0)]), 0, math.cos(math.pi / 4)),  # -45 degrees
        (strokes([(0, 0), (30, 100)]), 1, math.sin(math.atan2(100, 30))),  # steep, along a row
    ]
    for shape, axis, factor in cases:
        img = render(shape, s)
        profile = img[:, c] if axis == 0 else img[c, :]
        assert abs(coverage(profile) * factor - t) <= 1
        assert abs((profile < 128).sum() * factor - t) <= 1


def test_thicker_pen_more_ink():
    shape = SHAPES["circle"]
    ink = [coverage(render(shape, RenderSettings(thickness=t, width=96, height=96))) for t in THICKNESSES]
    assert all(a < b for a, b in zip(ink, ink[1:], strict=False))
    # a circle of diameter 88 - t drawn t wide holds pi * (88 - t) * t of ink: the mean width is t
    # (OpenCV's solid lines add a quarter pixel, documented in render.draw_mapped)
    for t, got in zip(THICKNESSES, ink, strict=True):
        assert abs(got / (math.pi * (88 - t)) - t) <= 0.5


@pytest.mark.parametrize("t", THICKNESSES)
@pytest.mark.parametrize("size", (32, 33, 96))
def test_single_point_is_a_dot_about_thickness_wide(t, size):
    s = RenderSettings(thickness=t, width=size, height=size)
    for shape in (strokes([(7, 7)]), strokes([(7, 7), (7, 7), (7, 7)])):
        img = render(shape, s)
        # the ink of a disc of diameter t, within a pixel's worth
        area = math.pi * t * t / 4
        assert abs(coverage(img) - area) <= 0.15 * area + 0.5
        # every trace of ink lies within t + 1 pixels, around the centre
        x0, x1, y0, y1 = ink_box(img, level=250)
        assert x1 - x0 + 1 <= t + 1 and y1 - y0 + 1 <= t + 1
        assert abs((x0 + x1) / 2 - (size - 1) / 2) <= 1 and abs((y0 + y1) / 2 - (size - 1) / 2) <= 1
        if t >= 2:
            x0, x1, y0, y1 = ink_box(img)
            assert abs(x1 - x0 + 1 - t) <= 1 and abs(y1 - y0 + 1 - t) <= 1


def test_point_stroke_among_lines_is_drawn():
    """A pen tap next to a line (a dotted note) leaves a visible dot, not nothing."""
    s = RenderSettings(thickness=3, width=96, height=96)
    img = render(strokes([(0, 0), (0, 60)], [(20, 30)]), s)
    scale, offset = fit_transform(strokes([(0, 0), (0, 60)], [(20, 30)]), s)
    x, y = np.rint(np.array([20, 30]) * scale + offset).astype(int)
    assert img[y, x] < 128
    # the dot is separate from the line
    n, _ = cv2.connectedComponents((img < 128).astype(np.uint8))
    assert n - 1 == 2


# --- crop, draw and non-square canvases ------------------------------------------------------


@pytest.mark.parametrize("t", THICKNESSES)
def test_crop_keeps_the_tablet_scale(t):
    s = RenderSettings(thickness=t, fit="crop", width=96, height=96)
    img = render(strokes([(300, 200), (320, 200)]), s)
    x0, x1, y0, y1 = ink_box(img)
    assert abs((x1 - x0 + 1) - (20 + t)) <= 1
    assert abs((y1 - y0 + 1) - t) <= 1
    assert abs((x0 + x1) / 2 - 47.5) <= 1 and abs((y0 + y1) / 2 - 47.5) <= 1


def test_crop_does_not_shrink_a_large_symbol():
    s = RenderSettings(fit="crop", width=64, height=64)
    img = render(strokes([(0, 0), (500, 0)]), s)
    x0, x1, _, _ = ink_box(img)
    assert (x0, x1) == (0, 63)  # clipped at both sides rather than scaled down


def test_draw_uses_canvas_coordinates():
    s = RenderSettings(thickness=3, width=64, height=64)
    img = draw(strokes([(10, 20), (50, 20)]), s)
    x0, x1, y0, y1 = ink_box(img)
    assert abs((y0 + y1) / 2 - 20) <= 0.5
    assert abs(x0 - (10 - 1.5)) <= 1 and abs(x1 - (50 + 1.5)) <= 1
    assert abs(y1 - y0 + 1 - 3) <= 1
    # drawing does not fit: the same line elsewhere lands elsewhere
    x0b, _, y0b, _ = ink_box(draw(strokes([(20, 40), (60, 40)]), s))
    assert (x0b - x0, y0b - y0) == (10, 20)


@pytest.mark.parametrize("w,h", [(128, 64), (64, 128), (100, 40)])
def test_non_square_canvas(w, h):
    s = RenderSettings(thickness=3, width=w, height=h)
    for name in ("horizontal", "vertical", "circle", "L"):
        img = render(SHAPES[name], s)
        assert img.shape == (h, w)
        x0, x1, y0, y1 = ink_box(img)
        assert abs((x0 + x1) / 2 - (w - 1) / 2) <= 1 and abs((y0 + y1) / 2 - (h - 1) / 2) <= 1
        iw, ih = x1 - x0 + 1, y1 - y0 + 1
        ew, eh = expected_ink(SHAPES[name], s)
        assert abs(iw - ew) <= 1 and abs(ih - eh) <= 1
        # the ink reaches the margin on the limiting side and stays inside it on the other
        assert iw <= w - 2 * s.margin + 1 and ih <= h - 2 * s.margin + 1
        assert abs(iw - (w - 2 * s.margin)) <= 1 or abs(ih - (h - 2 * s.margin)) <= 1
    # a circle is limited by the shorter side and stays round
    x0, x1, y0, y1 = ink_box(render(SHAPES["circle"], s))
    assert abs((x1 - x0) - (y1 - y0)) <= 1
    assert abs((x1 - x0 + 1) - (min(w, h) - 2 * s.margin)) <= 1


# --- staff lines -----------------------------------------------------------------------------


def full_rows(img: np.ndarray) -> list[int]:
    return np.flatnonzero((img == 0).all(axis=1)).tolist()


@pytest.mark.parametrize("w,h,spacing", [(96, 96, 14), (64, 64, 10), (128, 64, 8), (224, 224, 14)])
def test_staff_lines_centred(w, h, spacing):
    s = RenderSettings(width=w, height=h, staff_lines=True, staff_spacing=spacing)
    rows = staff_rows(s)
    assert len(rows) == 5
    assert [b - a for a, b in zip(rows, rows[1:], strict=False)] == [spacing] * 4
    assert abs((rows[0] + rows[-1]) / 2 - (h - 1) / 2) <= 0.5
    img = render(SHAPES["circle"], s)
    assert full_rows(img) == rows
    # only the staff rows differ from the same symbol without a staff
    plain = render(SHAPES["circle"], RenderSettings(width=w, height=h))
    changed = np.flatnonzero((img != plain).any(axis=1)).tolist()
    assert set(changed) <= set(rows)


def test_staff_lines_explicit_offset():
    s = RenderSettings(staff_lines=True, staff_spacing=8, staff_offset=10)
    assert staff_rows(s) == [10, 18, 26, 34, 42]
    img = render(SHAPES["vertical"], s)
    assert full_rows(img) == [10, 18, 26, 34, 42]


def test_staff_lines_off_the_canvas_are_left_out():
    s = RenderSettings(staff_lines=True, staff_spacing=14, staff_offset=80, width=96, height=96)
    assert staff_rows(s) == [80, 94, 108, 122, 136]
    img = render(SHAPES["vertical"], s)
    assert full_rows(img) == [80, 94]


def test_no_staff_lines_by_default():
    img = render(SHAPES["circle"], RenderSettings(width=96, height=96))
    assert full_rows(img) == []


# --- antialiasing and determinism ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_no_antialias_is_pure_black_and_white(name):
    for t in (1, 2, 3, 5):
        for size in (32, 96):
            s = RenderSettings(thickness=t, width=size, height=size, antialias=False)
            img = render(SHAPES[name], s)
            assert set(np.unique(img).tolist()) == {0, 255}
            # the strokes stay connected (the two "negative" strokes cross)
            n, _ = cv2.connectedComponents((img == 0).astype(np.uint8), connectivity=8)
            assert n - 1 == 1, (t, size, n - 1)
    # with antialiasing there are grey levels
    assert len(np.unique(render(SHAPES[name], RenderSettings(width=96, height=96)))) > 2


@pytest.mark.parametrize("size", (32, 33, 96))
def test_no_antialias_thin_dot_does_not_vanish(size):
    """A 1-px dot centred on a pixel corner is under half ink in each pixel; it must still show."""
    for t in (1, 2, 3):
        s = RenderSettings(thickness=t, width=size, height=size, antialias=False)
        img = render(strokes([(7, 7)]), s)
        assert (img == 0).sum() >= 1, t
        x0, x1, y0, y1 = ink_box(img)
        assert abs((x0 + x1) / 2 - (size - 1) / 2) <= 1 and x1 - x0 + 1 <= t + 1


def test_same_input_same_bytes():
    rng = np.random.default_rng(1)
    shape = [np.cumsum(rng.normal(0, 4, (40, 2)), axis=0) for _ in range(4)]
    for s in (RenderSettings(width=96, height=96), RenderSettings(thickness=1, width=128, height=64, antialias=False),
              RenderSettings(fit="crop", staff_lines=True)):
        a, b = render(shape, s), render([p.copy() for p in shape], s)
        assert a.tobytes() == b.tobytes()
        assert cv2.imencode(".png", a)[1].tobytes() == cv2.imencode(".png", b)[1].tobytes()


# --- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,name", [
    ({}, "t3-s96"),
    ({"thickness": 1, "width": 32, "height": 32}, "t1-s32"),
    ({"width": 128, "height": 64}, "t3-s128x64"),
    ({"fit": "crop"}, "t3-s96-crop"),
    ({"margin": 2}, "t3-s96-m2"),
    ({"antialias": False}, "t3-s96-noaa"),
    ({"staff_lines": True}, "t3-s96-staff14"),
    ({"staff_lines": True, "staff_spacing": 8, "staff_offset": 10}, "t3-s96-staff8o10"),
    ({"thickness": 2, "fit": "crop", "margin": 0, "antialias": False, "staff_lines": True},
     "t2-s96-crop-m0-noaa-staff14"),
])
def test_variant_name(kwargs, name):
    s = RenderSettings(**{"width": 96, "height": 96, **kwargs})
    assert s.name == name
    assert RenderSettings.from_dict({**s.to_dict(), "unknown": 1}) == s


def test_variant_names_are_distinct_for_different_pixels():
    settings = [RenderSettings(thickness=t, width=w, height=h, fit=f, margin=m, antialias=a)
                for t in (1, 3) for w, h in ((96, 96), (96, 64), (64, 96)) for f in ("scale", "crop")
                for m in (0, 4) for a in (True, False)]
    assert len({s.name for s in settings}) == len(settings)


@pytest.mark.parametrize("kwargs,words", [
    ({"thickness": 0}, "thickness"),
    ({"thickness": -2}, "thickness"),
    ({"thickness": 1.5}, "thickness"),
    ({"width": 7}, "width"),
    ({"height": 5000}, "height"),
    ({"fit": "stretch"}, "fit"),
    ({"margin": -1}, "margin"),
    ({"margin": 47}, "no room"),  # 2 * 47 + 3 >= 96
    ({"width": 16, "height": 16, "margin": 4, "thickness": 8}, "no room"),
    ({"staff_spacing": 0}, "staff_spacing"),
])
def test_invalid_settings_raise(kwargs, words):
    with pytest.raises(ValueError, match=words):
        RenderSettings(**kwargs)


def test_largest_margin_that_fits_renders_inside():
    s = RenderSettings(margin=46, width=96, height=96)  # 2 * 46 + 3 = 95 < 96
    img = render(SHAPES["circle"], s)
    x0, x1, y0, y1 = ink_box(img, level=255)
    assert x0 >= 45 and x1 <= 50 and y0 >= 45 and y1 <= 50
