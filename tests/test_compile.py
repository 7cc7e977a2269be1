"""``train.compile``: torch.compile runs the training and validation steps, checkpoints stay those of
the plain model, the run records what it used, and a model that cannot be compiled is one line.

Inductor's C++ code generation takes minutes on two cores, so these runs compile with a backend
that captures the graphs (Dynamo's tracing, the part homus depends on) and runs them as they are.
"""

from __future__ import annotations

import functools

import pytest
import torch
from click.testing import CliRunner

from classifier.runfolder import RunFolder
from classifier.settings import TrainConfig, upgrade_run_config
from homus.cli import main
from homus.config import load, train_config

TINY = ["--from-strokes", "--size", "32", "--epochs", "1", "--batch-size", "64", "--workers", "0",
        "--threads", "1", "--device", "cpu", "--schedule", "constant", "--seed", "3"]


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def counting_compile(monkeypatch) -> list[torch.fx.GraphModule]:
    """torch.compile with a backend that keeps every graph Dynamo captures and runs it unchanged."""
    graphs: list[torch.fx.GraphModule] = []

    def keep(gm: torch.fx.GraphModule, example_inputs) -> object:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=keep))
    yield graphs
    torch._dynamo.reset()


def test_a_compiled_run_learns_what_the_plain_run_learns(synthetic_raw, tmp_path, counting_compile):
    common = ["--raw-dir", synthetic_raw, "--runs-dir", tmp_path, *TINY]
    r = invoke("train", *common, "--name", "plain")
    assert r.exit_code == 0, r.output
    assert not counting_compile  # nothing compiled unless asked
    r = invoke("train", *common, "--name", "compiled", "--compile")
    assert r.exit_code == 0, r.output
    assert "compiled" in r.output.splitlines()[0]
    assert counting_compile  # the steps ran through Dynamo's graphs

    plain, compiled = RunFolder(tmp_path / "plain"), RunFolder(tmp_path / "compiled")
    assert (plain.config()["compile"], compiled.config()["compile"]) == (False, True)
    _, ckpt = compiled.load_model()
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])  # the plain model's weights
    a, b = plain.checkpoint()["model"], ckpt["model"]
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4) for k in a)
    assert plain.metrics()["test_accuracy"] == compiled.metrics()["test_accuracy"]


def test_a_model_that_cannot_be_compiled_is_one_line(synthetic_raw, tmp_path, monkeypatch):
    def broken(gm, example_inputs):
        raise RuntimeError("Compiler: cc is not found\nmore detail that the user need not read")

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=broken))
    try:
        r = invoke("train", "--raw-dir", synthetic_raw, "--runs-dir", tmp_path, *TINY, "--name", "c", "--compile")
    finally:
        torch._dynamo.reset()
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    (line,) = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert "torch.compile could not compile the model" in line and "--no-compile" in line
    assert "cc is not found" in line and "more detail" not in line
    assert not (tmp_path / "c" / "metrics.json").exists()


def test_the_setting_is_checked_and_older_runs_ran_eagerly(tmp_path):
    assert train_config(load(None), {}).compile is False  # pipeline.yaml's default
    assert train_config(load(None), {"compile": True}).compile is True
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  compile: 'yes'\n")
    with pytest.raises(Exception, match=r"'train.compile \(--compile\)' must be true or false"):
        load(path)
    old = train_config(load(None), {}).to_dict()
    del old["compile"]
    assert TrainConfig.from_dict(upgrade_run_config(old)).compile is False
