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
