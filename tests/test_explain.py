"""`homus explain`: Grad-CAM that is Grad-CAM (checked against a hand computation), that depends
on the class and on the weights, leaves the model alone, and the CLI's pictures on stroke files
and images with bad inputs among good ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from classifier.data import ImageSet, to_input
from classifier.explain import (
    STAGES,
    activations,
    explain_figure,
    filters_figure,
    gradcam,
    output_names,
    overlay,
    pick_layer,
)
from classifier.models import build_model
from classifier.predict import prepare
from classifier.runfolder import RunFolder
from homus.cli import main
from homus_render.render import RenderSettings

PNG = b"\x89PNG\r\n\x1a\n"


def train_tiny(raw: Path, runs: Path, name: str, *extra: str) -> Path:
    """One tiny run from the strokes (1 epoch, 32 px, writers 1-5), trained once per session: a
    second test module finds it finished in the session's temp folder and reuses it."""
    run = runs / name
    if not (run / "metrics.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        args = ["train", "--from-strokes", "--raw-dir", str(raw), "--writers", "1-5", "--size", "32",
                "--epochs", "1", "--batch-size", "64", "--workers", "0", "--device", "cpu",
                "--runs-dir", str(runs), "--name", name, *extra]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
    return run


@pytest.fixture(scope="module")
def ink_run(raw_full, tmp_path_factory) -> Path:
    return train_tiny(raw_full, tmp_path_factory.getbasetemp() / "tiny-runs", "ink")


@pytest.fixture(scope="module")
def size_run(raw_full, tmp_path_factory) -> Path:
    return train_tiny(raw_full, tmp_path_factory.getbasetemp() / "tiny-runs", "ink-size", "--channels", "ink,size")


@pytest.fixture(scope="module")
def model_and_inputs(ink_run):
    """The tiny run's model and its first test images as model inputs."""
    folder = RunFolder(ink_run)
    model, ckpt = folder.load_model()
    ds = ImageSet(folder.test_variants(), set(folder.split()["test"]), tuple(ckpt["classes"]))
    x, _ = ds[list(range(8))]
    return model, x


def reference_gradcam(model: torch.nn.Module, x: torch.Tensor, target: int, layer: str) -> np.ndarray:
    """Grad-CAM by hand (Selvaraju et al.): the stage's maps weighed by the spatial mean of the
    class score's gradient, summed, ReLU'd; bilinear to the input; peak 1."""
    saved = {}
    hook = getattr(model, layer).register_forward_hook(lambda _m, _i, out: saved.__setitem__("a", out))
    try:
        score = model(x)[0, target]
    finally:
        hook.remove()
    grad = torch.autograd.grad(score, saved["a"])[0]
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * saved["a"]).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return (cam / cam.max().clamp_min(1e-12)).detach().numpy()


def test_gradcam_is_grad_cam_with_shapes_and_ranges(model_and_inputs):
    model, x = model_and_inputs
    one = x[:1]
    assert pick_layer(model, one) == "layer2"  # 32 px: layer2 is 4 x 4, layer3 2 x 2, layer4 1 x 1
    with torch.no_grad():
        order = model(one)[0].argsort(descending=True).tolist()
    targets = [order[0], order[1], order[-1]]
    maps = gradcam(model, one, targets)
    assert maps.shape == (3, 32, 32) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    for m, t in zip(maps, targets, strict=True):
        ref = reference_gradcam(model, one, t, "layer2")
        assert np.abs(m - ref).max() < 1e-4
        assert m.max() == pytest.approx(1.0) or not ref.any()  # each map peaks at 1 unless it is empty
    # the map follows the class: the top class and the least likely one look at different places
    assert np.abs(maps[0] - maps[2]).mean() > 0.05
    # on the last stage a 32 px input is one cell: the map is flat, which is why `auto` goes deeper only as far as
    # the map still has cells to show
    flat = gradcam(model, one, targets[:1], layer="layer4")[0]
    assert flat.max() - flat.min() < 1e-5
    with pytest.raises(ValueError, match="one input"):
        gradcam(model, x[:2], [0])
    with pytest.raises(ValueError, match="layer must be"):
        gradcam(model, one, [0], layer="fc")


def test_gradcam_depends_on_the_weights_and_leaves_the_model_alone(model_and_inputs):
    model, x = model_and_inputs
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one = x[2:3]
    with torch.inference_mode():  # as a web service may call it
        maps = gradcam(model, one, [0, 5])
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    # the sanity check of Adebayo et al.: with the class weights drawn afresh, the explanation changes
    other = build_model("resnet18", 32, 1)
    other.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    other.fc.reset_parameters()
    other.eval()
    shuffled = gradcam(other, one, [0, 5])
    assert np.abs(maps - shuffled).mean() > 0.05


def test_overlay_tints_by_heat(model_and_inputs):
    ink = np.full((32, 32), 255, np.uint8)
    ink[10:20, 14:17] = 0
    heat = np.zeros((32, 32), np.float32)
    heat[:16] = 1.0
    pic = overlay(ink, heat)
    assert pic.shape == (32, 32, 3) and pic.dtype == np.uint8
    assert (pic[20:, :] == cv2.cvtColor(ink, cv2.COLOR_GRAY2BGR)[20:, :]).all()  # no heat: the ink as it is
    jet_top = cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_JET)[0, 0]  # dark red
    assert np.abs(pic[2, 2].astype(int) - (255 * 0.35 + jet_top * 0.65)).max() <= 1
    assert (overlay(np.stack([ink, ink]), heat) == pic).all()  # a channel stack: drawn from its ink
    with pytest.raises(ValueError, match="does not match"):
        overlay(ink, heat[:10])


def test_figures_are_pngs(model_and_inputs, ink_run):
    model, _ = model_and_inputs
    folder = RunFolder(ink_run)
    ckpt = folder.checkpoint()
    image = prepare(folder.raw_dir() / "5/5-1.txt", RenderSettings.from_dict(ckpt["render"]))
    fig = explain_figure(model, image, ckpt["classes"], top_k=3, title="t")
    shown = cv2.imdecode(np.frombuffer(fig, np.uint8), cv2.IMREAD_COLOR)
    assert fig.startswith(PNG) and shown.shape[1] > 3 * shown.shape[0]  # input + 3 overlays in a row
    assert filters_figure(model).startswith(PNG)
    acts = activations(model, to_input(image[None]))
    assert list(acts) == list(STAGES) and [a.shape[-1] for a in acts.values()] == [8, 4, 2, 1]
    assert not any(m._forward_hooks for m in model.modules())  # Captum's hooks are gone


def test_output_names_never_collide():
    assert output_names(["a/5-1.txt", "b/5-1.txt", "c/x.png", "5-1.png"]) == ["5-1", "5-1-2", "x", "5-1-3"]
    # an input whose own stem is another's numbered name keeps it, and the repeat numbers past it
    assert output_names(["in/ok.png", "in/ok.png", "in/ok-2.png"]) == ["ok", "ok-3", "ok-2"]


def test_cli_explains_stroke_files_and_images_and_reports_bad_ones(ink_run, tmp_path):
    folder = RunFolder(ink_run)
    stroke = folder.raw_dir() / "5/5-1.txt"
    png = tmp_path / "query.png"  # a stroke file drawn large, as an image a user might bring
    big = prepare(stroke, RenderSettings(thickness=6, width=120, height=90, margin=10))
    cv2.imwrite(str(png), big)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["explain", str(ink_run), str(stroke), str(junk), str(png), "--out", str(out),
                                  "--filters"])
    assert r.exit_code == 1, r.output
    assert f"error: {junk}: neither an image" in r.output
    assert r.output.count("error:") == 1
    made = sorted(p.name for p in out.iterdir())
    assert made == ["5-1-activations.png", "5-1-explain.png", "filters.png", "query-activations.png",
                    "query-explain.png"]
    assert all((out / m).read_bytes().startswith(PNG) for m in made)
    assert f"{stroke}: " in r.output and "-> " in r.output
    # all good: exit 0; no --filters: one picture per input
    r = CliRunner().invoke(main, ["explain", str(ink_run), str(stroke), "--out", str(tmp_path / "two")])
    assert r.exit_code == 0, r.output
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["5-1-explain.png"]
    # nothing to explain: an error, and no empty folder left where the pictures would have gone
    r = CliRunner().invoke(main, ["explain", str(ink_run), str(junk), "--out", str(tmp_path / "none")])
    assert r.exit_code == 1 and not (tmp_path / "none").exists(), r.output


def test_cli_explains_a_model_of_several_channels(size_run, tmp_path):
    stroke = RunFolder(size_run).raw_dir() / "5/5-2.txt"
    png = tmp_path / "q.png"
    cv2.imwrite(str(png), np.full((20, 20), 255, np.uint8))
    r = CliRunner().invoke(main, ["explain", str(size_run), str(stroke), str(png), "--out", str(tmp_path)])
    assert r.exit_code == 1
    assert "reads ink,size" in r.output  # an image holds no tablet size
    fig = cv2.imdecode(np.fromfile(str(tmp_path / "5-2-explain.png"), np.uint8), cv2.IMREAD_COLOR)
    assert fig.shape[1] / fig.shape[0] > 3.5  # two input channels and three overlays (ink alone: 3.2)


def test_auto_takes_the_deepest_stage_that_still_shows_where():
    model = build_model("resnet18", 32, 1).eval()
    picked = {side: pick_layer(model, torch.zeros(1, 1, side, side)) for side in (16, 32, 64, 96, 128)}
    assert picked == {16: "layer1", 32: "layer2", 64: "layer3", 96: "layer3", 128: "layer4"}


def test_auto_shows_a_shallower_stage_where_the_picked_one_is_blank(monkeypatch):
    """A class whose evidence at the picked stage is negative everywhere gets a blank map there;
    ``auto`` then shows the next shallower stage that has some, per class."""
    import classifier.explain as ex

    model = build_model(in_channels=1).eval()
    x = to_input(np.full((1, 64, 64), 255, np.uint8))
    seen = []

    def fake(attr, m, x_, targets, name):
        seen.append((name, list(targets)))
        out = np.zeros((len(targets), 64, 64), np.float32)
        if name == "layer2":  # only the shallower stage has evidence, and only for class 5
            out[[i for i, t in enumerate(targets) if t == 5], 10, 10] = 1.0
        return out

    monkeypatch.setattr(ex, "_gradcam_at", fake)
    maps = ex.gradcam(model, x, [5, 7])
    assert seen[0] == ("layer3", [5, 7]) and seen[1] == ("layer2", [5, 7])  # 64 px: layer3 first
    assert maps[0].max() == 1.0 and not maps[1].any()  # class 7 stays blank: no stage showed it
    assert ex.gradcam(model, x, [5], layer="layer3").max() == 0.0  # an explicit stage is kept
