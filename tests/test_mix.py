"""Mixup and cutmix on training batches (``train.mixup_alpha``, ``train.cutmix_alpha``): the pixels
and labels they make, their seeding, their settings, and a run that trains with them."""

from __future__ import annotations

import csv
import io
import math

import pytest
import torch
import yaml
from click.testing import CliRunner

from classifier.augment import BatchMix
from classifier.settings import SettingsError, TrainConfig, upgrade_run_config
from homus.cli import main
from homus.config import load, train_config

CLASSES = 32


def batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 2-channel images and distinct labels, so each row's label weights read back which
    image went into it."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, 24, 24, generator=g), torch.randperm(CLASSES, generator=g)[:n]


def weights(target: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's weight on its own label and on the label of the image before it (rolled by one)."""
    rows = torch.arange(len(y))
    return target[rows, y], target[rows, y.roll(1, 0)]


def test_mixup_blends_each_image_with_its_neighbour_by_the_label_weight():
    x, y = batch()
    out, target = BatchMix(CLASSES, mixup_alpha=0.4)(x, y, torch.Generator().manual_seed(3))
    own, other = weights(target, y)
    assert torch.allclose(target.sum(1), torch.ones(len(y)))
    assert torch.allclose(own + other, torch.ones(len(y)))  # two labels per row, nothing else
    lam = own[0].item()
    assert 0 < lam < 1 and torch.allclose(own, torch.full_like(own, lam))  # one weight for the batch
    assert torch.allclose(out, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)  # the pixels, measured


def test_cutmix_pastes_one_box_whose_area_is_the_label_weight():
    x, y = batch()
    out, target = BatchMix(CLASSES, cutmix_alpha=1.0)(x, y, torch.Generator().manual_seed(5))
    own, other = weights(target, y)
    from_own = (out == x).all(1)  # (n, h, w): where each image kept its own pixels (both channels)
    from_other = (out == x.roll(1, 0)).all(1)
    assert (from_own | from_other).all()  # every pixel is one image's or its neighbour's
    pasted = (~from_own).float().mean((1, 2))
    assert pasted.max() > 0  # a box was pasted
    assert torch.allclose(pasted, other, atol=1e-6)  # and the label weight is its share of the image
    rows, cols = (~from_own[0]).any(1).nonzero(), (~from_own[0]).any(0).nonzero()
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert box.item() == (~from_own[0]).sum().item()  # one rectangle


def test_the_blends_come_from_the_generator_alone():
    x, y = batch()
    mix = BatchMix(CLASSES, mixup_alpha=0.2, cutmix_alpha=1.0)
    state = torch.get_rng_state()
    a = mix(x, y, torch.Generator().manual_seed(7))
    torch.manual_seed(12345)  # whatever the global generator holds: the same blends
    b = mix(x, y, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.set_rng_state(state)
    mix(x, y, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)  # and it leaves the global generator as it was
    g = torch.Generator().manual_seed(7)
    kinds = set()
    for _ in range(20):  # both kinds show up when both are asked for
        out, target = mix(x, y, g)
        kinds.add("mixup" if not ((out == x) | (out == x.roll(1, 0))).all() else "cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_inactive_by_default_and_when_both_are_zero():
    cfg = train_config(load(None), {})
    assert (cfg.mixup_alpha, cfg.cutmix_alpha) == (0.0, 0.0)  # pipeline.yaml's defaults
    assert not cfg.mixing(CLASSES).active
    x, y = batch()
    out, target = BatchMix(CLASSES)(x, y, torch.Generator())
    assert torch.equal(out, x) and torch.equal(target.argmax(1), y)
    assert train_config(load(None), {"cutmix_alpha": 1.0}).mixing(CLASSES).active


@pytest.mark.parametrize("key", ["mixup_alpha", "cutmix_alpha"])
@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, "0.2", True, 1e-300, 1e39])
def test_bad_alphas_are_refused_by_name(key, value):
    flag = "--" + key.replace("_", "-")
    with pytest.raises(SettingsError, match=rf"train\.{key} \({flag}\)'? must be"):
        train_config(load(None), {key: value})


def test_a_whole_number_alpha_from_yaml_trains(tmp_path):
    """``cutmix_alpha: 1`` in a config is an int; torchvision's Beta distribution needs a float."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  cutmix_alpha: 1\n  mixup_alpha: 2\n")
    x, y = batch()
    out, target = train_config(load(path), {}).mixing(CLASSES)(x, y, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.allclose(target.sum(1), torch.ones(len(y)))


def test_older_runs_mixed_nothing():
    old = train_config(load(None), {}).to_dict()
    del old["mixup_alpha"], old["cutmix_alpha"]
    cfg = TrainConfig.from_dict(upgrade_run_config(old))
    assert (cfg.mixup_alpha, cfg.cutmix_alpha) == (0.0, 0.0)


def test_a_bad_flag_is_one_line(tmp_path):
    r = CliRunner().invoke(main, ["train", "--mixup-alpha", "-1", "--runs-dir", str(tmp_path)])
    assert r.exit_code != 0 and "Traceback" not in r.output
    (line,) = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert "train.mixup_alpha (--mixup-alpha) must be" in line


def test_a_run_trains_on_blended_batches_and_records_it(tiny):
    """The flags reach the run: its config.yaml records them, and its training losses differ from
    the same run's without them (soft targets cost more than hard ones to fit)."""
    args = ["train", "--variant", str(tiny / "rendered/t3-s32-m2"), "--epochs", "2", "--batch-size", "64",
            "--runs-dir", str(tiny / "runs-mix"), "--device", "cpu", "--workers", "0"]
    plain = CliRunner().invoke(main, [*args, "--name", "plain"])
    mixed = CliRunner().invoke(main, [*args, "--name", "mixed", "--mixup-alpha", "0.4", "--cutmix-alpha", "1.0"])
    assert plain.exit_code == 0 and mixed.exit_code == 0, plain.output + mixed.output
    assert "mixup alpha 0.4, cutmix alpha 1.0" in mixed.output and "mixup" not in plain.output
    cfg = yaml.safe_load((tiny / "runs-mix/mixed/config.yaml").read_text())
    assert (cfg["mixup_alpha"], cfg["cutmix_alpha"]) == (0.4, 1.0)

    def losses(name: str) -> list[float]:
        rows = csv.DictReader(io.StringIO((tiny / "runs-mix" / name / "history.csv").read_text()))
        return [float(r["train_loss"]) for r in rows]

    mixed_losses, plain_losses = losses("mixed"), losses("plain")
    assert len(mixed_losses) == len(plain_losses) == 2
    assert all(m > p for m, p in zip(mixed_losses, plain_losses, strict=True)), (mixed_losses, plain_losses)
