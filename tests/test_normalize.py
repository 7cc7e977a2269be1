"""Foreign images redrawn as homus draws: the pen's width and the fit are the model's, whatever the
width and scale of the image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import HANDMADE

from homus_render.normalize import redraw, skeleton, skeleton_strokes
from homus_render.render import RenderSettings, render

S = RenderSettings(thickness=3, width=64, height=64, margin=4)


def strokes_of(label: str) -> list[np.ndarray]:
    return [np.array(st, np.float64) for lab, sts in HANDMADE if lab == label for st in sts]


def ink_box(img: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(img < 128)
    return xs.min(), ys.min(), xs.max(), ys.max()


def stroke_width(img: np.ndarray) -> float:
    """Ink per unit of centre line: the mean width of the strokes, in pixels."""
    ink = (255 - img.astype(np.float64)).sum() / 255
    return ink / skeleton(img < 128).sum()


@pytest.mark.parametrize("label", ["Flat", "Whole-Note", "Barline"])
@pytest.mark.parametrize("width,canvas", [(1, 96), (9, 200), (3, 64), (5, 96)])
def test_any_pen_and_scale_comes_back_at_the_models_width_and_box(label, width, canvas):
    strokes = strokes_of(label)
    mine = render(strokes, S)
    foreign = render(strokes, RenderSettings(thickness=width, width=canvas, height=canvas, margin=2))
    again = redraw(foreign, S)
    assert again.shape == mine.shape and again.dtype == np.uint8
    assert np.abs(np.subtract(ink_box(again), ink_box(mine))).max() <= 2
    assert stroke_width(again) == pytest.approx(stroke_width(mine), abs=0.6)
    # the same strokes: nearly all ink of each lies within a pixel of the other's
    near = lambda a, b: (cv2.dilate((b < 128).astype(np.uint8), np.ones((3, 3), np.uint8))[a < 128]).mean()  # noqa: E731
    assert near(again, mine) > 0.95 and near(mine, again) > 0.95


def test_skeleton_pixels_become_connected_two_point_strokes():
    skel = np.zeros((5, 5), bool)
    skel[2, 1:4] = True  # a short horizontal line
    skel[0, 0] = True  # a lone pixel
    strokes = skeleton_strokes(skel)
    pairs = sorted(tuple(map(tuple, s.astype(int).tolist())) for s in strokes if len(s) == 2)
    assert pairs == [((1, 2), (2, 2)), ((2, 2), (3, 2))]
    assert [s.tolist() for s in strokes if len(s) == 1] == [[[0.0, 0.0]]]


def test_a_blank_image_is_an_error():
    with pytest.raises(ValueError, match="no ink"):
        redraw(np.full((40, 40), 255, np.uint8), S)


def test_a_tap_of_the_pen_is_drawn_as_homus_draws_a_dot():
    img = np.full((96, 96), 255, np.uint8)
    img[40, 30] = 0  # one pixel of ink: its centre line is itself
    assert np.array_equal(redraw(img, S), render([np.array([[30.0, 40.0]])], S))


def test_predict_reads_images_by_redrawing_them_or_fitting_them():
    from classifier.predict import InputError, normalize_image

    foreign = render(strokes_of("Flat"), RenderSettings(thickness=16, width=150, height=150, margin=2))
    drawn, fitted = normalize_image(foreign, S, "redraw"), normalize_image(foreign, S, "fit")
    assert np.array_equal(drawn, redraw(foreign, S))
    assert stroke_width(drawn) == pytest.approx(stroke_width(render(strokes_of("Flat"), S)), abs=0.6)
    assert stroke_width(fitted) > stroke_width(drawn) + 0.5  # the resize keeps the foreign pen's width
    assert np.array_equal(normalize_image(255 - foreign, S, "redraw"), drawn)  # light ink on dark paper, the same
    with pytest.raises(InputError, match="no ink"):
        normalize_image(np.full((50, 50), 255, np.uint8), S)
    with pytest.raises(InputError, match="read must be"):
        normalize_image(foreign, S, "squint")


def test_the_width_of_ink_is_its_area_over_its_centre_line():
    from homus_render.normalize import stroke_width as width

    for pen in (1, 3, 5, 9):
        bar = np.zeros((220, 60), bool)
        bar[10:210, 30 - pen // 2:30 - pen // 2 + pen] = True  # a 200 px stroke, pen px wide
        assert width(bar) == pytest.approx(pen, rel=0.06)  # the centre line stops short of the ends
    assert width(np.zeros((20, 20), bool)) == 0.0


@pytest.mark.parametrize("label", ["Flat", "Whole-Note", "Barline"])
def test_auto_fits_wide_ink_and_thickens_thin_or_enlarged_ink(label):
    """Thick ink, merged loops and all, is what a model trained on other tools' pens has learned:
    auto keeps it, fitted to the canvas. A thin pen resized to the canvas would be faint and broken,
    and a small image enlarged shows its pixels as blocky steps: auto thickens both."""
    from classifier.predict import normalize_image

    for pen, canvas, way in ((1, 96, "thicken"), (2, 96, "thicken"), (7, 96, "fit"), (12, 96, "fit"),
                             (4, 28, "thicken")):  # 96 px -> 64 px: x2/3; 28 px -> 64: enlarged
        foreign = render(strokes_of(label), RenderSettings(thickness=pen, width=canvas, height=canvas, margin=2))
        assert np.array_equal(normalize_image(foreign, S, "auto"), normalize_image(foreign, S, way)), (pen, way)
    assert np.array_equal(normalize_image(render(strokes_of(label), S), S, "auto"),
                          normalize_image(render(strokes_of(label), S), S, "fit"))  # homus' own: exact


def test_thicken_gives_thin_ink_the_models_pen_and_keeps_what_the_ink_covers():
    """A note whose head a thin pen scribbled into a solid blob: the centre line alone (redraw) makes
    the head a hollow loop or a line, a half note's; thickening draws the stem at the model's pen
    and keeps the head filled, where it was."""
    from homus_render.normalize import fit_ink, thicken

    img = np.full((96, 96), 255, np.uint8)
    cv2.ellipse(img, (40, 70), (9, 6), -20, 0, 360, 0, -1)  # the head, filled
    cv2.line(img, (48, 67), (48, 20), 0, 1)  # a one-pixel stem
    fitted, thick, drawn = fit_ink(img, S), thicken(img, S), redraw(img, S)
    assert (thick <= fitted).all()  # every pixel the ink covers stays ink
    assert np.abs(np.subtract(ink_box(thick), ink_box(fitted))).max() <= 1  # in the same place (the pen's cap)

    def head(view: np.ndarray) -> float:  # the ink share of the head's middle, where fit_ink puts it
        ys, xs = np.nonzero(fitted < 128)
        x, y = xs.min() + 4, ys.max() - 7
        return float((view[y - 2:y + 3, x - 2:x + 5] < 128).mean())

    assert head(thick) == 1.0 and head(drawn) < 0.7
    stem = [int((row < 128).sum()) for row in thick[ink_box(thick)[1] + 3:ink_box(thick)[1] + 20]]
    assert min(stem) >= 3 and max(stem) <= 4  # the stem: the model's pen, 3 px (+1 for antialiasing)
    assert max(int((row < 128).sum()) for row in fitted[ink_box(fitted)[1] + 3:ink_box(fitted)[1] + 20]) <= 2


def test_auto_redraws_for_a_model_that_never_saw_other_pens():
    """Only a run trained with --stroke-redraw has seen thick foreign ink; for any other, auto is redraw."""
    from classifier.predict import InputError, image_read

    trained = {"config": {"strokes": {"redraw": 0.6}}}
    assert image_read("auto", trained) == "auto" and image_read("fit", trained) == "fit"
    for plain in ({"config": {"strokes": {"redraw": 0.0}}}, {"config": {"from_strokes": False}}, {}):
        assert image_read("auto", plain) == "redraw" and image_read("fit", plain) == "fit"
    with pytest.raises(InputError, match="read must be"):
        image_read("squint", trained)
