"""torchvision ResNets with a grayscale (or any-channel) stem and a 32-way head."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from homus_render.errors import HomusError

from .settings import ARCHS, STEMS  # noqa: F401  (the choices live with the settings)


class WeightsError(HomusError, RuntimeError):
    """Pretrained weights that cannot be had or do not fit."""


def build_model(arch: str = "resnet18", num_classes: int = 32, in_channels: int = 1,
                weights: str = "none", stem: str = "imagenet") -> nn.Module:
    """A ResNet for ``in_channels``-channel input. ``weights``: ``none`` (from scratch) or
    ``imagenet`` (torchvision's download; the first layer's RGB filters summed into one channel,
    or spread over ``in_channels``). Homus checkpoints are loaded by :mod:`classifier.checkpoint`.

    ``stem``: how much the layers before the first residual block shrink the image (:data:`STEMS`).
    ``imagenet``: torchvision's 7x7 convolution with stride 2 and a 3x3 max pool, a quarter of the
    side; ``small``: a 3x3 convolution with stride 1, then the max pool, half the side; ``cifar``: the
    3x3 convolution alone, the whole side, as ResNets for 32 px images do. A smaller stem keeps thin
    pen strokes apart for longer, at 4x (``small``) or 16x (``cifar``) the compute of the blocks."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}: choose one of {', '.join(STEMS)}")
    if weights == "imagenet" and stem != "imagenet":
        raise ValueError(f"the ImageNet weights' first layer is the imagenet stem's, not the {stem} stem's")
    builder = getattr(torchvision.models, arch)
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
        try:
            model = builder(weights=enum)
        except Exception as e:  # URLError, SSL, proxy...: no network or no cache
            raise WeightsError(
                f"could not get torchvision's ImageNet weights for {arch} ({type(e).__name__}: {e}). "
                f"Without network access, put {enum.url.rsplit('/', 1)[-1]} into "
                f"{torch.hub.get_dir()}/checkpoints/, or train with --weights none, "
                "or fine-tune a homus checkpoint with --weights runs/<name>/best.pt") from e
    elif weights == "none":
        model = builder(weights=None)
    else:
        raise ValueError(f"weights must be none, imagenet or a checkpoint path, got {weights!r}")
    old = model.conv1
    if stem == "imagenet":
        conv = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    else:
        conv = nn.Conv2d(in_channels, old.out_channels, 3, 1, 1, bias=False)
        if stem == "cifar":
            model.maxpool = nn.Identity()
    if weights == "imagenet":
        with torch.no_grad():  # a gray image is R = G = B: the summed filter gives the same response
            summed = old.weight.sum(dim=1, keepdim=True)
            conv.weight.copy_(summed.repeat(1, in_channels, 1, 1) / in_channels)
    model.conv1 = conv
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model
