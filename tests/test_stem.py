"""The model's stem (``train.stem``): how much each shrinks the image before the first residual
block, that a run records it and every reader of its checkpoint rebuilds it, and that runs and
checkpoints made before stems existed read as torchvision's."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from classifier import checkpoint
from classifier.evaluate import evaluate_run
from classifier.models import build_model
from classifier.settings import STEMS, upgrade_run_config
from homus.cli import main
from homus.config import load as load_config
from homus.config import train_config
from homus_render.errors import SettingsError


def block_input_side(model: nn.Module, side: int, channels: int = 1) -> int:
    """The side of the image the first residual block sees, measured with a hook."""
    seen = []
    handle = model.layer1.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].shape))
    with torch.no_grad():
        logits = model.eval()(torch.rand(2, channels, side, side))
    handle.remove()
    assert logits.shape == (2, 32)
    (shape,) = seen
    assert shape[2] == shape[3]
    return shape[2]


def test_each_stem_shrinks_the_image_as_documented():
    assert STEMS == ("imagenet", "small", "cifar")
    sides = {stem: block_input_side(build_model("resnet18", 32, 2, stem=stem), 64, 2) for stem in STEMS}
    assert sides == {"imagenet": 16, "small": 32, "cifar": 64}  # a quarter, half, the whole side
    kernels = {stem: build_model(stem=stem).conv1.kernel_size for stem in STEMS}
    assert kernels == {"imagenet": (7, 7), "small": (3, 3), "cifar": (3, 3)}
    assert block_input_side(build_model(stem="small"), 96) == 48  # any size
    with pytest.raises(ValueError, match="unknown stem 'tiny'"):
        build_model(stem="tiny")


def test_the_imagenet_weights_need_the_imagenet_stem():
    """Their first layer is a 7x7 convolution: refused as a setting, before any download is tried."""
    with pytest.raises(SettingsError, match="--weights imagenet needs --stem imagenet"):
        train_config(load_config(), {"weights": "imagenet", "stem": "small"})
    with pytest.raises(ValueError, match="the imagenet stem's, not the cifar stem's"):
        build_model(weights="imagenet", stem="cifar")


def test_an_unknown_stem_is_refused_naming_the_key_and_flag(synthetic_raw, tmp_path):
    with pytest.raises(SettingsError, match=r"train.stem \(--stem\) must be one of imagenet, small, cifar"):
        train_config(load_config(), {"stem": "wide"})
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  stem: [small]\n")
    r = CliRunner().invoke(main, ["train", "--config", str(path), "--raw-dir", str(synthetic_raw),
                                  "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code != 0 and "train.stem (--stem)" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["train", "--stem", "wide"])
    assert r.exit_code == 2 and "'wide' is not one of 'imagenet', 'small', 'cifar'" in r.output


def test_a_run_records_its_stem_and_its_readers_rebuild_it(synthetic_raw, tmp_path):
    runs = tmp_path / "runs"
    common = ["--raw-dir", str(synthetic_raw), "--size", "16", "--batch-size", "64", "--workers", "0",
              "--device", "cpu", "--runs-dir", str(runs)]
    r = CliRunner().invoke(main, ["train", *common, "--epochs", "1", "--stem", "cifar", "--name", "cifar"])
    assert r.exit_code == 0, r.output
    assert "resnet18 (cifar stem), on cpu" in r.output  # the log says what trains
    run = runs / "cifar"
    assert yaml.safe_load((run / "config.yaml").read_text())["stem"] == "cifar"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stem"] == "cifar"
    model, ckpt = checkpoint.load_model(run / "best.pt")
    assert ckpt["stem"] == "cifar" and isinstance(model.maxpool, nn.Identity)
    assert block_input_side(model, 32) == 32
    # evaluate rebuilds the same model from best.pt: the test figure is the run's own
    assert evaluate_run(run)["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    # fine-tuning it needs the same stem, and the error says which
    r = CliRunner().invoke(main, ["train", *common, "--epochs", "1", "--weights", str(run / "best.pt"),
                                  "--name", "again"])
    assert r.exit_code != 0 and "(cifar stem)" in r.output and "--stem cifar" in r.output, r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(main, ["train", *common, "--epochs", "1", "--weights", str(run / "best.pt"),
                                  "--stem", "cifar", "--name", "again"])
    assert r.exit_code == 0, r.output
    assert checkpoint.load(runs / "again" / "best.pt")["stem"] == "cifar"


def test_runs_and_checkpoints_from_before_stems_read_as_imagenet(tmp_path):
    assert upgrade_run_config({"arch": "resnet18"})["stem"] == "imagenet"
    model = build_model("resnet18", 32, 1)
    checkpoint.save(tmp_path / "old.pt", {"model": model.state_dict(), "arch": "resnet18", "classes": ["a"] * 32,
                                          "in_channels": 1, "render": {"thickness": 3, "width": 32, "height": 32}})
    back, ckpt = checkpoint.load_model(tmp_path / "old.pt")
    assert "stem" not in ckpt and checkpoint.stem(ckpt) == "imagenet"
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(model.eval()(x), back(x))
    # weights of one stem do not load into another's model: one line naming both
    small = build_model("resnet18", 32, 1, stem="small")
    checkpoint.save(tmp_path / "lies.pt", {"model": small.state_dict(), "arch": "resnet18", "classes": ["a"] * 32,
                                           "in_channels": 1, "render": {"thickness": 3, "width": 32, "height": 32}})
    with pytest.raises(checkpoint.CheckpointError, match="do not fit a resnet18 with the imagenet stem"):
        checkpoint.load_model(tmp_path / "lies.pt")
