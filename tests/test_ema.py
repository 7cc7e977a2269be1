"""A moving average of the weights (``train.ema``): what it averages, and that validation, best.pt
and the test read the average, not the last step's weights."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from classifier import checkpoint, engine
from classifier import train as train_mod
from classifier.evaluate import evaluate_run
from homus.cli import main
from homus.config import load as load_config
from homus.config import train_config
from homus_render.errors import SettingsError


def test_the_average_follows_every_step_with_its_decay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    assert engine.make_ema(model, 0.0) is None  # off
    decay = 0.7
    ema = engine.make_ema(model, decay)
    data = [(torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))) for _ in range(4)]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    after_each_step = []

    class Record:
        """A scheduler that keeps the weights each optimizer step left (the engine steps it next)."""

        def step(self):
            after_each_step.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    sched = Record()
    engine.train_one_epoch(model, data, nn.CrossEntropyLoss(), opt, sched, torch.device("cpu"), 1, ema=ema)
    assert len(after_each_step) == 4
    expected = after_each_step[0]  # the first step's weights start the average
    for state in after_each_step[1:]:
        expected = {k: (decay * e + (1 - decay) * state[k]) if e.is_floating_point() else state[k]
                    for k, e in expected.items()}
    got, now = ema.module.state_dict(), model.state_dict()
    for name, _ in model.named_parameters():  # the weights are averaged
        torch.testing.assert_close(got[name], expected[name], msg=name)
    for name, _ in model.named_buffers():  # batch-norm statistics follow the model, until measured
        torch.testing.assert_close(got[name], now[name], msg=name)
    assert not torch.allclose(got["0.weight"], now["0.weight"])  # an average, not a copy
    assert int(ema.n_averaged) == 4


def test_batch_norm_is_measured_for_the_averaged_weights():
    """The statistics of averaged weights are measured on images, not averaged: here a lone batch
    norm, whose statistics must be the images' own mean and (unbiased) variance per channel."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(2))
    model[0].running_mean.fill_(5.0)  # what averaging or a past step left
    images = torch.rand(40, 2, 4, 4) * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1) + 0.5
    batches = [(images[i:i + 8], torch.zeros(8)) for i in range(0, 40, 8)]
    engine.measure_batch_norm(model, batches, torch.device("cpu"))
    per_channel = images.transpose(0, 1).reshape(2, -1)
    # update_bn averages each batch's statistics: equal batches, so their mean is the images' mean
    torch.testing.assert_close(model[0].running_mean, per_channel.mean(1))
    batch_vars = torch.stack([b.transpose(0, 1).reshape(2, -1).var(1) for b, _ in batches])
    torch.testing.assert_close(model[0].running_var, batch_vars.mean(0))


def test_a_run_with_an_average_validates_saves_and_tests_the_average(synthetic_raw, tmp_path, monkeypatch):
    saved = {}
    real_save = checkpoint.save

    def save(path, ckpt):
        saved.setdefault(path.name, []).append(dict(ckpt))
        real_save(path, ckpt)

    measured = []  # the averaged model's statistics right after each measurement, one per epoch

    def measure(model, loader, device):
        engine.measure_batch_norm(model, loader, device)
        measured.append({k: v.clone() for k, v in model.state_dict().items() if k.endswith("running_mean")})

    monkeypatch.setattr(checkpoint, "save", save)
    monkeypatch.setattr(train_mod, "measure_batch_norm", measure)
    runs = tmp_path / "runs"
    result = CliRunner().invoke(main, ["train", "--raw-dir", str(synthetic_raw), "--size", "32", "--epochs", "2",
                                       "--batch-size", "64", "--workers", "0", "--device", "cpu", "--ema", "0.9",
                                       "--runs-dir", str(runs), "--name", "ema"])
    assert result.exit_code == 0, result.output
    run = runs / "ema"
    assert yaml.safe_load((run / "config.yaml").read_text())["ema"] == 0.9  # what made the run, recorded
    last, best = saved["last.pt"][-1], checkpoint.load(run / "best.pt")
    assert "ema" in last and "ema" not in best  # the average's state is resume state; best.pt holds the model
    chosen = next(c for c in saved["last.pt"] if c["epoch"] == best["epoch"])
    averaged = {k[len("module."):]: v for k, v in chosen["ema"].items() if k.startswith("module.")}
    assert set(averaged) == set(best["model"])
    raw = chosen["model"]
    weights = [k for k in best["model"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    for k in weights:  # every weight is the average's
        assert torch.equal(best["model"][k], averaged[k]), k
    for k in ("conv1.weight", "fc.weight"):  # not the last step's
        assert not torch.equal(best["model"][k], raw[k]), k
    assert len(measured) == 2  # before each epoch's validation
    stats = measured[best["epoch"] - 1]
    for k, v in stats.items():  # best.pt's statistics are those measured for the average, not the last step's
        assert torch.equal(best["model"][k], v) and not torch.equal(v, raw[k]), k
    # the test figure is the saved average's: scoring best.pt again gives it
    metrics = json.loads((run / "metrics.json").read_text())
    assert evaluate_run(run)["test_accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_a_decay_out_of_range_is_refused_naming_the_flag(synthetic_raw, tmp_path):
    for bad in ("1", "-0.1", "nan"):
        r = CliRunner().invoke(main, ["train", "--raw-dir", str(synthetic_raw), "--ema", bad,
                                      "--runs-dir", str(tmp_path)])
        assert r.exit_code != 0 and "train.ema (--ema)" in r.output, (bad, r.output)
        assert "Traceback" not in r.output
    with pytest.raises(SettingsError, match="train.ema"):
        train_config(load_config(), {"ema": True})
