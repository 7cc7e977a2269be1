"""Image-level augmentation for training on fixed rendered images: a random affine warp per image
(rotation, shear, scale, translation), as a slightly different hand would have drawn it.

Applied to whole batches on the tensors the model sees (ink 1, paper 0, so what the warp brings
in from outside is paper). Reproducible: the same generator state gives the same warps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Affine:
    """Ranges, each drawn uniformly in ``[-v, +v]``: degrees, degrees, fraction, fraction of the canvas."""

    rotate: float = 0.0
    shear: float = 0.0
    scale: float = 0.0
    translate: float = 0.0

    @property
    def active(self) -> bool:
        return any((self.rotate, self.shear, self.scale, self.translate))

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Warp every image of ``x`` ``(n, c, h, w)`` by its own random affine map."""
        if not self.active:
            return x
        n = x.shape[0]

        def uniform(v: float) -> torch.Tensor:
            return (torch.rand(n, generator=gen) * 2 - 1) * v

        rot, shear = uniform(math.radians(self.rotate)), uniform(math.radians(self.shear))
        scale = 1 + uniform(self.scale)
        tx, ty = uniform(2 * self.translate), uniform(2 * self.translate)  # grid coordinates span 2
        cos, sin, tan = torch.cos(rot), torch.sin(rot), torch.tan(shear)
        # forward map A = scale * R(rot) @ [[1, tan], [0, 1]]; the grid needs its inverse
        a, b = cos * scale, (cos * tan - sin) * scale
        c, d = sin * scale, (sin * tan + cos) * scale
        det = a * d - b * c
        inv = torch.stack([torch.stack([d, -b], 1), torch.stack([-c, a], 1)], 1) / det[:, None, None]
        shift = -(inv @ torch.stack([tx, ty], 1)[:, :, None])
        theta = torch.cat([inv, shift], 2)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class BatchMix:
    """Mixup and CutMix on training batches, by torchvision's ``transforms.v2.MixUp`` and ``CutMix``
    (as in torchvision's classification reference): each batch is blended with itself rolled by one
    (mixup), or has a box pasted from it (cutmix), and its labels become the matching mixture of
    one-hot vectors, which the cross-entropy reads as soft targets. With both alphas above 0, each
    batch gets one of the two, chosen at random; with both 0 it is inactive.

    Reproducible: each call draws its randomness from ``gen`` alone (torchvision's transforms use
    torch's global generator, which is forked and seeded from ``gen`` around them), so the same
    epoch's generator gives the same blends, also after ``--resume``."""

    def __init__(self, classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> None:
        from torchvision.transforms import v2

        # floats: torchvision builds its Beta distribution from the alpha as given, and an int one fails
        mixup_alpha, cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.classes, self.mixup_alpha, self.cutmix_alpha = classes, mixup_alpha, cutmix_alpha
        choices = ([v2.MixUp(alpha=mixup_alpha, num_classes=classes)] if mixup_alpha > 0 else []) + \
                  ([v2.CutMix(alpha=cutmix_alpha, num_classes=classes)] if cutmix_alpha > 0 else [])
        self._mix = None if not choices else choices[0] if len(choices) == 1 else v2.RandomChoice(choices)

    @property
    def active(self) -> bool:
        return self._mix is not None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The blended batch ``x`` ``(n, c, h, w)`` and its soft labels ``(n, classes)``, from hard
        labels ``y`` ``(n,)``; unchanged (labels one-hot) when inactive."""
        if self._mix is None:
            return x, F.one_hot(y, self.classes).to(x.dtype)
        seed = int(torch.randint(2**62, (1,), generator=gen))
        with torch.random.fork_rng(devices=[]):  # torchvision draws on the CPU generator alone
            torch.default_generator.manual_seed(seed)
            return self._mix(x, y)
