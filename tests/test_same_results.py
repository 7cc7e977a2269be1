"""The same seed gives the same split, the same training images and the same metrics as before the
settings refactor: hashes recorded with the code before it, on the synthetic dataset, through the CLI."""

from __future__ import annotations

import hashlib
import json

from click.testing import CliRunner

import classifier.train as train_module
from homus.cli import main

#: Recorded before the refactor (commit "test: record a tiny run's split, first batch and accuracy").
SPLIT_SHA256 = "ecbf812522b401b203fa2b1545606b780349836b0cd3dbcb8d21438e855aba16"
FIRST_BATCH_SHA256 = "d3dac62fc7670fdf6a0a4e3120728d67e2adf771ce2d6cae19c53ee851974a37"
TEST_ACCURACY = 0.16666666666666666


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_tiny_run_gives_the_recorded_split_batch_and_accuracy(synthetic_raw, tmp_path, monkeypatch):
    first: list[bytes] = []
    real = train_module.train_one_epoch

    def spy(model, loader, *args, **kwargs):
        def batches():
            for x, y in loader:
                if not first:
                    first.append(x.contiguous().numpy().tobytes() + y.numpy().tobytes())
                yield x, y
        return real(model, batches(), *args, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", spy)
    r = CliRunner().invoke(main, ["train", "--raw-dir", str(synthetic_raw), "--size", "32", "--thickness", "2",
                                  "--channels", "ink,time", "--epochs", "1", "--batch-size", "64", "--threads", "1",
                                  "--workers", "0", "--device", "cpu", "--runs-dir", str(tmp_path), "--name", "same"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "same"
    split = sha256((run / "split.json").read_bytes())
    batch = sha256(first[0])
    acc = json.loads((run / "metrics.json").read_text())["test_accuracy"]
    assert (split, batch, acc) == (SPLIT_SHA256, FIRST_BATCH_SHA256, TEST_ACCURACY)
