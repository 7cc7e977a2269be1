"""Checkpoints round-trip, are written atomically, and refuse corrupted or foreign files."""

import pickle

import pytest
import torch

from classifier import checkpoint
from classifier.models import build_model


def tiny_ckpt():
    model = build_model("resnet18", 32, 1)
    return model, {"model": model.state_dict(), "arch": "resnet18", "classes": ["a"] * 32, "in_channels": 1,
                   "render": {"thickness": 3, "width": 32, "height": 32}, "epoch": 2,
                   "history": [{"epoch": 1, "val_acc": 0.5}]}


def test_round_trip(tmp_path):
    model, ckpt = tiny_ckpt()
    checkpoint.save(tmp_path / "c.pt", ckpt)
    back = checkpoint.load(tmp_path / "c.pt")
    assert back["epoch"] == 2 and back["render"]["width"] == 32 and back["history"][0]["val_acc"] == 0.5
    fresh = build_model("resnet18", 32, 1)
    fresh.load_state_dict(back["model"])
    x = torch.rand(2, 1, 32, 32)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind


def test_truncated_checkpoint(tmp_path):
    _, ckpt = tiny_ckpt()
    checkpoint.save(tmp_path / "c.pt", ckpt)
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="cut.pt: not a readable homus checkpoint"):
        checkpoint.load(tmp_path / "cut.pt")


def test_random_bytes_and_missing_file(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(checkpoint.CheckpointError, match="junk.pt"):
        checkpoint.load(tmp_path / "junk.pt")
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "absent.pt")


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_arbitrary_pickles_are_refused(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        torch.save({"format": checkpoint.FORMAT, "payload": Evil()}, f)
    with pytest.raises(checkpoint.CheckpointError, match="evil.pt"):
        checkpoint.load(tmp_path / "evil.pt")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(tmp_path / "plain.pkl")


def test_foreign_torch_file(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not a homus checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    torch.save({"format": checkpoint.FORMAT, "model": {}}, tmp_path / "partial.pt")
    with pytest.raises(checkpoint.CheckpointError, match="lacks"):
        checkpoint.load(tmp_path / "partial.pt")


def test_imagenet_stem_sums_rgb_filters(monkeypatch):
    """From ImageNet weights, the first layer's RGB filters are summed: a gray image gets the
    response the RGB model gives the same image in three equal channels."""
    import torchvision

    torch.manual_seed(0)
    rgb = torchvision.models.resnet18(weights=None)
    monkeypatch.setattr(torchvision.models, "resnet18", lambda weights=None: rgb)  # no download here
    rgb_conv1 = rgb.conv1
    gray = build_model("resnet18", 32, 1, weights="imagenet")
    x = torch.rand(1, 1, 40, 40)
    assert gray.conv1.in_channels == 1 and gray.fc.out_features == 32
    assert torch.allclose(gray.conv1(x), rgb_conv1(x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_imagenet_without_network_says_what_to_do(monkeypatch):
    import urllib.error

    import torchvision

    from classifier.models import WeightsError

    def offline(weights=None):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torchvision.models, "resnet18", offline)
    with pytest.raises(WeightsError, match="--weights none"):
        build_model("resnet18", 32, 1, weights="imagenet")


def test_an_empty_checkpoint_says_so(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match="best.pt: not a readable homus checkpoint .the file is empty"):
        checkpoint.load(tmp_path / "best.pt")


@pytest.mark.parametrize("key, value", [
    ("arch", "resnet999"), ("arch", None), ("stem", "tiny"), ("classes", "abc"), ("classes", [1, 2]),
    ("in_channels", "1"),
    ("channels", ["bogus"]), ("channels", "ink"), ("model", None), ("render", "t3"), ("render", {"thickness": "x"}),
    ("config", [1, 2]), ("config", {"strokes": [0.5]}),
])
def test_damaged_fields_are_named_when_the_checkpoint_is_read(tmp_path, key, value):
    """What predict, evaluate and serve read later is checked on load: a hand-edited or damaged
    checkpoint is one CheckpointError naming the field, never a crash in the code that uses it."""
    _, ckpt = tiny_ckpt()
    checkpoint.save(tmp_path / "c.pt", {**ckpt, key: value})
    with pytest.raises(checkpoint.CheckpointError, match=f"c.pt: checkpoint '{key}'"):
        checkpoint.load(tmp_path / "c.pt")


def test_a_checkpoint_error_keeps_its_problem_apart_from_its_advice(tmp_path):
    """Callers with better advice (a resume) replace it without cutting the problem's own words."""
    path = tmp_path / "best.pt"
    path.write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(path)
    assert e.value.problem == f"{path}: not a readable homus checkpoint (the file is empty)"
    assert e.value.advice == checkpoint.RETRAIN and str(e.value) == f"{e.value.problem}; {checkpoint.RETRAIN}"
