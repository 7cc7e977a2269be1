"""Mixed precision that is right on every device: bf16 needs no loss scaling, fp16 gets a GradScaler
that is created, stepped and saved; ``train.amp`` picks auto, bf16, fp16 or off, and a mode the
device cannot run is one line. Checked on the CPU, where autocast can be asked for fp16 and bf16."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from classifier import engine
from classifier.runfolder import RunFolder
from classifier.settings import AMP_MODES, TrainConfig, upgrade_run_config
from homus.cli import main
from homus.config import load, train_config
from homus_render.errors import SettingsError

TINY = ["--from-strokes", "--size", "32", "--epochs", "1", "--batch-size", "64", "--workers", "0",
        "--threads", "1", "--device", "cpu", "--schedule", "constant", "--seed", "5"]


class CountingScaler(torch.amp.GradScaler):
    """A GradScaler that counts its steps and updates."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.steps = self.updates = 0

    def step(self, optimizer, *a, **kw):
        self.steps += 1
        return super().step(optimizer, *a, **kw)

    def update(self, *a, **kw):
        self.updates += 1
        return super().update(*a, **kw)


def test_a_scaler_only_for_fp16():
    cpu = torch.device("cpu")
    assert isinstance(engine.make_scaler(cpu, torch.float16), torch.amp.GradScaler)
    assert engine.make_scaler(cpu, torch.bfloat16) is None
    assert engine.make_scaler(cpu, None) is None


def test_each_mode_on_each_device(monkeypatch):
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert [engine.amp_dtype(cpu, m) for m in ("auto", "off", "bf16")] == [None, None, torch.bfloat16]
    with pytest.raises(engine.DeviceError, match="--amp fp16 runs on CUDA only, not on cpu"):
        engine.amp_dtype(cpu, "fp16")
    assert engine.amp_dtype(mps, "auto") is None
    with pytest.raises(engine.DeviceError, match="--amp bf16 runs on CUDA or the CPU, not on mps"):
        engine.amp_dtype(mps, "bf16")
    for bf16_ok, auto in ((True, torch.bfloat16), (False, torch.float16)):  # GPUs with and without bf16
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda ok=bf16_ok: ok)
        assert engine.amp_dtype(cuda, "auto") == auto
        assert engine.amp_dtype(cuda, "fp16") == torch.float16
        assert engine.amp_dtype(cuda, "off") is None
    with pytest.raises(engine.DeviceError, match="this GPU has no bf16; use --amp fp16"):
        engine.amp_dtype(cuda, "bf16")
    assert [engine.precision_of(d) for d in (torch.bfloat16, torch.float16, None)] == ["bf16", "fp16", "fp32"]
    assert engine.amp_dtype(cpu, False) is None and engine.amp_dtype(cpu, True) is None  # off, auto
    with pytest.raises(ValueError, match="amp must be one of auto, bf16, fp16, off, got 'fp32'"):
        engine.amp_dtype(cpu, "fp32")  # never taken for a mode it is not


def test_the_setting_takes_modes_and_reads_true_and_false(tmp_path):
    assert train_config(load(None), {}).amp == "auto"  # pipeline.yaml's default: CPU runs in full precision
    for written, mode in (("true", "auto"), ("false", "off"), ("bf16", "bf16")):
        path = tmp_path / f"{written}.yaml"
        path.write_text(f"train:\n  amp: {written}\n")
        assert train_config(load(path), {}).amp == mode
    path.write_text("train:\n  amp: bf17\n")
    with pytest.raises(SettingsError, match=r"train.amp \(--amp\) must be one of " + ", ".join(AMP_MODES)):
        train_config(load(path), {})
    old = train_config(load(None), {}).to_dict()  # a run folder from before the modes said true or false
    for was, now in ((True, "auto"), (False, "off")):
        assert TrainConfig.from_dict(upgrade_run_config({**old, "amp": was})).amp == now


def test_bf16_trains_on_the_cpu_and_the_run_says_so(synthetic_raw, tmp_path, monkeypatch):
    """--amp bf16 runs every training and evaluation step under bf16 autocast on the CPU; the default
    (auto) runs none there, and --no-amp still means off."""
    seen = []
    real = engine.autocast

    def spy(device, dtype):
        seen.append(dtype)
        return real(device, dtype)

    monkeypatch.setattr(engine, "autocast", spy)
    common = ["train", "--raw-dir", synthetic_raw, "--runs-dir", tmp_path, *TINY]
    for name, flags in (("bf16", ["--amp", "bf16"]), ("auto", []), ("off", ["--no-amp"])):
        seen.clear()
        r = CliRunner().invoke(main, [str(a) for a in [*common, "--name", name, *flags]])
        assert r.exit_code == 0, r.output
        run = RunFolder(tmp_path / name)
        assert run.config()["amp"] == (name if name != "off" else "off")
        assert set(seen) == ({torch.bfloat16} if name == "bf16" else {None})  # train, validation and test
        assert run.metrics()["precision"] == ("bf16" if name == "bf16" else "fp32")
        assert ("bf16 autocast" in r.output.splitlines()[0]) == (name == "bf16")
    full, half = RunFolder(tmp_path / "auto").checkpoint()["model"], RunFolder(tmp_path / "bf16").checkpoint()["model"]
    assert torch.equal(full["fc.weight"], RunFolder(tmp_path / "off").checkpoint()["model"]["fc.weight"])
    assert not torch.equal(full["fc.weight"], half["fc.weight"])  # bf16 rounding: another run, not a relabelled one


def test_bf16_on_the_cpu_learns_what_full_precision_learns():
    """The same small problem, trained the same way in full precision and under bf16 autocast: both
    learn it, so bf16's rounding costs no accuracy here (the 20-epoch comparison is in docs/speed.md)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (256,), generator=g)
    x = torch.rand(256, 1, 12, 12, generator=g) * 0.5
    for k in range(4):  # class k: a bright quarter of the image
        x[y == k, :, (k // 2) * 6:(k // 2) * 6 + 6, (k % 2) * 6:(k % 2) * 6 + 6] += 0.5
    accs = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                              nn.Linear(32, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
        for epoch in range(1, 6):
            engine.train_one_epoch(model, batches, nn.CrossEntropyLoss(), opt, sched, torch.device("cpu"), epoch,
                                   dtype=dtype)
        accs[dtype] = engine.evaluate(model, batches, nn.CrossEntropyLoss(), torch.device("cpu"), dtype)["acc"]
    assert accs[None] > 0.9 and accs[torch.bfloat16] > 0.9, accs


def test_fp16_on_the_cpu_is_one_line(synthetic_raw, tmp_path):
    r = CliRunner().invoke(main, [str(a) for a in ["train", "--raw-dir", synthetic_raw, "--runs-dir", tmp_path,
                                                    *TINY, "--name", "h", "--amp", "fp16"]])
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    (line,) = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert "--amp fp16 runs on CUDA only" in line and "--amp bf16" in line
    assert not (tmp_path / "h" / "metrics.json").exists()


def test_fp16_training_steps_through_the_scaler():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    data = [(torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))) for _ in range(3)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = CountingScaler("cpu", init_scale=2.0**8)
    before = [p.detach().clone() for p in model.parameters()]
    stats = engine.train_one_epoch(model, data, nn.CrossEntropyLoss(), opt, sched, torch.device("cpu"), 1,
                                   scaler=scaler, dtype=torch.float16)
    assert scaler.steps == scaler.updates == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert stats["train_loss"] == stats["train_loss"]  # finite: the scaled loss was unscaled before stepping


def test_train_creates_the_scaler_when_fp16_is_chosen(monkeypatch, synthetic_raw, tmp_path):
    """A whole run where the device's AMP dtype is fp16 (as on GPUs without bf16) makes a scaler,
    passes it to every epoch and saves its state in the checkpoint."""
    from classifier import checkpoint
    from classifier import train as train_mod
    from homus.config import load as load_config
    from homus.config import train_config

    made = []

    def fp16(device, amp):
        return torch.float16

    def scaler_for(device, dtype):
        s = CountingScaler("cpu") if dtype == torch.float16 else None
        made.append(s)
        return s

    saved = {}
    real_save = checkpoint.save

    def save(path, ckpt):
        saved[Path(path).name] = set(ckpt)
        real_save(path, ckpt)

    # fp16 autocast on a CPU without fp16 kernels takes minutes for this tiny run; the scaled fp16
    # step itself is tested above. Here the dtype each step and validation is asked for is recorded,
    # and the arithmetic runs at full precision.
    asked = []

    def autocast(device, dtype):
        asked.append(dtype)
        return contextlib.nullcontext()

    monkeypatch.setattr(train_mod, "amp_dtype", fp16)
    monkeypatch.setattr(train_mod, "make_scaler", scaler_for)
    monkeypatch.setattr(engine, "autocast", autocast)
    monkeypatch.setattr(checkpoint, "save", save)
    cfg = train_config(load_config(), {"raw_dir": str(synthetic_raw), "size": 32, "epochs": 1, "batch_size": 64,
                                       "schedule": "constant", "workers": 0, "device": "cpu",
                                       "runs_dir": str(tmp_path), "name": "fp16"})
    run = train_mod.train(cfg, log=lambda m: None)
    (scaler,) = made
    assert scaler is not None and scaler.steps > 0 and scaler.updates == scaler.steps
    assert asked and set(asked) == {torch.float16}  # every step and validation under fp16
    assert "scaler" in saved["last.pt"] and "scaler" not in saved[".best-pending.pt"]  # resume state, not the model's
    assert not (run / "last.pt").exists()  # the run is complete

