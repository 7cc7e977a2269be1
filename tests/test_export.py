"""`homus export`: a tiny run's model as ONNX whose onnxruntime probabilities match torch's, its
metadata, a model of several channels, and a failed check that leaves nothing behind."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import torch
from click.testing import CliRunner
from test_explain import ink_run, size_run  # noqa: F401  (fixtures: one tiny run each, trained once a session)

from classifier.data import ImageSet
from classifier.export import export_run
from classifier.runfolder import RunFolder
from homus.cli import main
from homus_render.labels import LABELS


def test_cli_exports_a_model_onnxruntime_answers_like_torch(ink_run, tmp_path):  # noqa: F811
    out = tmp_path / "model.onnx"
    r = CliRunner().invoke(main, ["export", str(ink_run), "--out", str(out)])
    assert r.exit_code == 0, r.output
    folder = RunFolder(ink_run)
    n_test = len(folder.split()["test"])
    assert f"onnxruntime vs torch on {min(200, n_test)} test images" in r.output
    assert "top-1 agrees on 100.0%" in r.output
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left beside it
    proto = onnx.load(out)
    onnx.checker.check_model(proto)
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    ckpt = folder.checkpoint()
    assert meta["classes"] == list(LABELS) == ckpt["classes"]
    assert meta["channels"] == ["ink"] and meta["run"] == "ink" and meta["arch"] == "resnet18"
    assert meta["render"] == ckpt["render"] and meta["render"]["width"] == 32
    assert meta["homus_version"] and meta["input"]["name"] == "input" and meta["output"]["name"] == "probabilities"
    # any batch size; the answers are probabilities, as torch's softmax gives them
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ds = ImageSet(folder.test_variants(), set(folder.split()["test"]), tuple(LABELS))
    model, _ = folder.load_model()
    for n in (1, 7):
        x, _ = ds[list(range(n))]
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).softmax(1).numpy()
        assert got.shape == (n, 32) and np.abs(got - want).max() <= 1e-4
        assert np.allclose(got.sum(1), 1, atol=1e-5)


def test_a_model_of_several_channels_exports(size_run, tmp_path):  # noqa: F811
    out = tmp_path / "sub" / "size.onnx"
    out.parent.mkdir()
    r = export_run(size_run, out, check=40)
    assert r["n"] == 40 and r["max_abs_diff"] <= 1e-4 and r["top1_agreement"] == 1.0
    proto = onnx.load(out)
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["channels"] == ["ink", "size"] and meta["input"]["channels"] == ["ink", "size"]
    dims = [d.dim_value or d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [2, 32, 32] and isinstance(dims[0], str)  # the batch axis is free


def test_a_failed_check_is_an_error_and_writes_nothing(ink_run, tmp_path, monkeypatch):  # noqa: F811
    real_run = ort.InferenceSession.run

    def off_by_a_little(self, *args, **kwargs):
        return [out + 1e-3 for out in real_run(self, *args, **kwargs)]

    monkeypatch.setattr(ort.InferenceSession, "run", off_by_a_little)
    out = tmp_path / "model.onnx"
    r = CliRunner().invoke(main, ["export", str(ink_run), "--out", str(out), "--check", "20"])
    assert r.exit_code == 1, r.output
    assert re.match(r"error: onnxruntime's probabilities differ from torch's by 0\.001 \(> 0\.0001\) on 20 test "
                    r"images of .*; .*model\.onnx was not written", r.output)
    assert list(tmp_path.iterdir()) == []  # neither the model nor a temporary
    # --check 0 trusts the exporter and says so
    r = CliRunner().invoke(main, ["export", str(ink_run), "--out", str(out), "--check", "0"])
    assert r.exit_code == 0 and "not checked" in r.output and out.is_file()


def test_export_of_a_folder_that_is_no_run(tmp_path):
    r = CliRunner().invoke(main, ["export", str(tmp_path), "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 1 and "error:" in r.output and "not a homus run folder (no config.yaml)" in r.output
