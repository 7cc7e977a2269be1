"""A run's best model as one ONNX file, checked against torch with onnxruntime.

The graph takes ``input``: float32 ``(batch, channels, height, width)`` with ink 1 and paper 0
(``(255 - pixel) / 255`` of the black-on-white images, as :func:`classifier.data.to_input` makes
them), the batch size free; it gives ``probabilities``: ``(batch, classes)``, softmax included.
What a runtime needs to feed it and name its answers rides in the model's ``metadata_props``, each
value a JSON string (:func:`metadata`). The file is written only after onnxruntime's probabilities
on the run's own test images match torch's, and atomically.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from homus_render.atomic import write_bytes
from homus_render.errors import HomusError, user_os_error

from . import checkpoint
from .data import ImageSet
from .runfolder import RunFolder

INPUT, OUTPUT = "input", "probabilities"
TOLERANCE = 1e-4
OPSET = 18


class ExportError(HomusError, RuntimeError):
    """A model that could not be exported, or whose ONNX graph does not answer as torch does."""


class Probabilities(nn.Module):
    """The classifier with its softmax: the graph answers probabilities, as ``homus predict`` does."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(dim=1)


def _require() -> None:
    """onnx, onnxruntime and onnxscript (the dynamo exporter's), or a one-line error naming the extra."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"homus export needs {', '.join(missing)}: pip install 'homus[export]'")


def homus_version() -> str:
    try:
        return importlib_metadata.version("homus")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def metadata(ckpt: dict, run: RunFolder) -> dict[str, str]:
    """The model's ``metadata_props``: every value a JSON string."""
    ckpt_channels = list(checkpoint.channels(ckpt))
    fields = {
        "homus_version": homus_version(),
        "run": run.name,
        "arch": ckpt["arch"],
        "stem": checkpoint.stem(ckpt),
        "classes": list(ckpt["classes"]),
        "channels": ckpt_channels,
        "render": ckpt["render"],
        "input": {"name": INPUT, "layout": "NCHW", "dtype": "float32", "channels": ckpt_channels,
                  "height": ckpt["render"]["height"], "width": ckpt["render"]["width"],
                  "scale": "ink 1, paper 0: (255 - pixel) / 255 of black-on-white images"},
        "output": {"name": OUTPUT, "meaning": "class probabilities (softmax included), in the order of classes"},
    }
    return {k: json.dumps(v, sort_keys=True) for k, v in fields.items()}


def to_onnx(model: nn.Module, example: torch.Tensor, log: Callable[[str], None] = lambda _: None):
    """``model`` as an ``onnx.ModelProto`` with a free batch axis: torch's dynamo exporter first,
    the TorchScript exporter when that fails on this torch. Returns ``(proto, exporter name)``."""
    import onnx

    model = model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                                        opset_version=OPSET, optimize=True, verbose=False)
        return program.model_proto, "dynamo"
    except Exception as e:  # exporter gaps differ between torch versions; the older exporter may cope
        log(f"dynamo exporter failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "using the TorchScript exporter")
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), buf, dynamo=False, input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=17)
    except Exception as e:
        raise ExportError(f"neither of torch's ONNX exporters could export this model "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    return onnx.load_from_string(buf.getvalue()), "torchscript"


def check_images(run: RunFolder, classes: list[str], limit: int) -> torch.Tensor:
    """The first ``limit`` of the run's own test images, as model inputs."""
    try:
        variants = run.test_variants()
    except HomusError as e:
        raise ExportError(f"{e} (to export without checking, give --check 0)") from None
    ds = ImageSet(variants, set(run.split()["test"]), tuple(classes))
    n = min(limit, len(ds))
    if n == 0:
        raise ExportError(f"{run.path}: the run has no test images to check the export with")
    return ds[list(range(n))][0]


def compare(onnx_bytes: bytes, model: nn.Module, x: torch.Tensor) -> dict:
    """onnxruntime's probabilities against torch's on ``x``: the largest absolute difference and
    the share of inputs whose top class agrees."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = np.asarray(session.run([OUTPUT], {INPUT: x.numpy()})[0])
    with torch.no_grad():
        want = model(x).numpy()
    if got.shape != want.shape:
        raise ExportError(f"onnxruntime answered shape {got.shape}, torch {want.shape}")
    diff = float(np.abs(got - want).max()) if np.isfinite(got).all() else float("inf")
    return {"n": len(x), "max_abs_diff": diff, "top1_agreement": float((got.argmax(1) == want.argmax(1)).mean())}


def export_run(run: str | Path, out: str | Path, check: int = 200, tolerance: float = TOLERANCE,
               log: Callable[[str], None] = lambda _: None) -> dict:
    """Export run ``run``'s best model to ``out`` (ONNX, probabilities out, metadata in), checked
    on up to ``check`` of its test images (0: not checked). Nothing is written unless the check
    passes. Returns what was done: path, exporter, opset, bytes and the check's figures."""
    _require()
    import onnx

    folder = RunFolder(run)
    model, ckpt = folder.load_model()
    wrapped = Probabilities(model).eval()
    render = ckpt["render"]
    example = torch.zeros(2, ckpt["in_channels"], render["height"], render["width"])
    proto, exporter = to_onnx(wrapped, example, log)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata(ckpt, folder))
    proto.producer_name, proto.producer_version = "homus", homus_version()
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported graph is not valid ONNX ({str(e).splitlines()[0][:200]})") from None
    data = proto.SerializeToString()
    result = {"path": str(out), "exporter": exporter, "opset": max(o.version for o in proto.opset_import
                                                                   if o.domain in ("", "ai.onnx")),
              "bytes": len(data), "n": 0, "max_abs_diff": None, "top1_agreement": None}
    if check > 0:
        result.update(compare(data, wrapped, check_images(folder, list(ckpt["classes"]), check)))
        if not result["max_abs_diff"] <= tolerance:
            raise ExportError(f"onnxruntime's probabilities differ from torch's by {result['max_abs_diff']:.3g} "
                              f"(> {tolerance:g}) on {result['n']} test images of {folder.path}; {out} was not "
                              "written. Try another torch/onnxruntime version")
    try:
        write_bytes(out, data, fsync=True)
    except OSError as e:
        raise user_os_error(e) or e from None
    return result
