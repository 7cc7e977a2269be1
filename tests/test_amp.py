"""Mixed precision that is right on every GPU: bf16 needs no loss scaling, fp16 gets a GradScaler
that is created, stepped and saved. Checked on the CPU, where autocast can be asked for fp16."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from classifier import engine


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
    assert engine.amp_dtype(cpu, True) is None  # AMP applies to CUDA only


def test_fp16_training_steps_through_the_scaler():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    data = [(torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))) for _ in range(3)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = CountingScaler("cpu", init_scale=2.0**8)
    before = [p.detach().clone() for p in model.parameters()]
    stats = engine.train_one_epoch(model, data, nn.CrossEntropyLoss(), opt, sched, torch.device("cpu"), 1,
                                   amp=True, scaler=scaler, dtype=torch.float16)
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

    monkeypatch.setattr(train_mod, "amp_dtype", fp16)
    monkeypatch.setattr(train_mod, "make_scaler", scaler_for)
    monkeypatch.setattr(checkpoint, "save", save)
    cfg = train_config(load_config(), {"raw_dir": str(synthetic_raw), "size": 32, "epochs": 1, "batch_size": 64,
                                       "schedule": "constant", "workers": 0, "device": "cpu",
                                       "runs_dir": str(tmp_path), "name": "fp16"})
    run = train_mod.train(cfg, log=lambda m: None)
    (scaler,) = made
    assert scaler is not None and scaler.steps > 0 and scaler.updates == scaler.steps
    assert "scaler" in saved["last.pt"] and "scaler" not in saved["best.pt"]  # resume state, not the model's
    assert not (run / "last.pt").exists()  # the run is complete

