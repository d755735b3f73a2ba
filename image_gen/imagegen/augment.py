"""Differentiable augmentation of what the GAN's discriminator sees: DiffAugment (Zhao et al., NeurIPS 2020), with
ADA's adaptive probability (Karras et al., NeurIPS 2020). Real and generated images go through the same random
transforms, in the discriminator's step and in the generator's, and gradients flow through them to the
generator. So a discriminator trained on a few thousand images cannot simply learn them by heart, and the
transforms do not leak into the samples, since the generator is never asked to make augmented digits.

Which transforms make sense: a small translation (digits and clothes appear off-centre in any hand's or
camera's framing) and cutout (D must judge from part of the image). Not flips (a mirrored 2, 3, 7 or shoe is
another glyph or class) and not rotations beyond a few degrees (a 6 becomes a 9). Colour changes do nothing
for grey digits.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("translation", "cutout")
BACKGROUND = -1.0  # the images' background in [-1, 1]: what translation moves in and cutout leaves


@dataclass(frozen=True)
class AugmentConfig:
    """`policy`: the transforms of AUGMENTATIONS to apply, in that order (empty: none). Each applies to each image
    with probability p: `probability` throughout, or, with `ada_target` > 0, a p that starts there and that ADA
    moves every `ada_interval` steps so that r_t = E[sign(D(real))] stays near the target (0.6 in ADA); p can go
    from 0 to 1 in `ada_images` images. `translation`: the largest shift, as a fraction of the side;
    `cutout`: the side of the square cut out, as a fraction of the side."""
    policy: tuple = ()
    probability: float = 1.0
    ada_target: float = 0.0
    ada_interval: int = 4
    ada_images: int = 100_000
    translation: float = 0.125
    cutout: float = 0.5

    def __post_init__(self):
        unknown = [name for name in self.policy if name not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation {unknown[0]!r}: one of {', '.join(AUGMENTATIONS)}")
        if not 0.0 <= self.probability <= 1.0 or not 0.0 <= self.ada_target < 1.0:
            raise ValueError(f"augmentation probability {self.probability} must be in [0, 1] and the ADA target "
                             f"{self.ada_target} in [0, 1)")

    @property
    def adaptive(self):
        return bool(self.policy) and self.ada_target > 0

    def as_dict(self):
        return {**asdict(self), "policy": list(self.policy)}

    @classmethod
    def from_dict(cls, record):
        return cls(**{**record, "policy": tuple(record["policy"])})


def translate(images, chosen, ratio, generator):
    """Shift the `chosen` images ((n,) bool) by up to `ratio` of their side in x and y, whole pixels, the
    background coming in: DiffAugment's rand_translation, differentiable in the pixels."""
    n, _, height, width = images.shape
    reach = max(1, int(round(height * ratio)))
    shifts = torch.randint(-reach, reach + 1, (2, n, 1, 1), generator=generator) * chosen.view(1, n, 1, 1)
    shifts = shifts.to(images.device)
    rows = (torch.arange(height, device=images.device).view(1, height, 1) + shifts[0]).clamp(-1, height)
    cols = (torch.arange(width, device=images.device).view(1, 1, width) + shifts[1]).clamp(-1, width)
    padded = F.pad(images, (1, 1, 1, 1), value=BACKGROUND)  # index -1 and `side` land on the padding
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows + 1, cols + 1].permute(0, 3, 1, 2)


def cut_out(images, chosen, ratio, generator):
    """Set a square of `ratio` of the side, at a random place (it may overhang the edge), to the background in the
    `chosen` images: DiffAugment's rand_cutout."""
    n, _, height, width = images.shape
    size_y, size_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    centre_y = torch.randint(0, height + (1 - size_y % 2), (n, 1, 1), generator=generator)
    centre_x = torch.randint(0, width + (1 - size_x % 2), (n, 1, 1), generator=generator)
    top, left = centre_y - size_y // 2, centre_x - size_x // 2
    ys, xs = torch.arange(height).view(1, height, 1), torch.arange(width).view(1, 1, width)
    inside = (ys >= top) & (ys < top + size_y) & (xs >= left) & (xs < left + size_x)
    hole = (inside & chosen.view(n, 1, 1)).unsqueeze(1).to(images.device)
    return images.masked_fill(hole, BACKGROUND)


class Augment:
    """The discriminator's augmentation: `config`'s policy at the current probability `p`, which ADA adjusts
    from the discriminator's signs on real images. Its random draws come from the training generator (on the
    CPU), so a resumed run draws what the uninterrupted one would have."""

    def __init__(self, config, generator):
        self.config, self.generator = config, generator
        self.p = config.probability if config.policy else 0.0
        self._signs, self._count = 0.0, 0  # a tensor between adjustments: no host sync at every step

    def __call__(self, images):
        """(n, C, H, W) in [-1, 1] -> the same, each transform applied to each image with probability p."""
        for name in self.config.policy:
            chosen = torch.rand(len(images), generator=self.generator) < self.p
            if name == "translation":
                images = translate(images, chosen, self.config.translation, self.generator)
            else:
                images = cut_out(images, chosen, self.config.cutout, self.generator)
        return images

    def observe(self, real_scores, batch_size):
        """ADA's overfitting heuristic (Karras et al. 2020, Sec. 3): r_t = E[sign(D(real))] over `ada_interval`
        steps; p moves up by batch * interval / ada_images when r_t is above the target, down as much below."""
        if not self.config.adaptive:
            return
        self._signs = self._signs + real_scores.detach().sign().mean()
        self._count += 1
        if self._count == self.config.ada_interval:
            r_t = float(self._signs) / self._count
            step = batch_size * self._count / self.config.ada_images
            self.p = min(1.0, max(0.0, self.p + math.copysign(step, r_t - self.config.ada_target)))
            self._signs, self._count = 0.0, 0

    def state_dict(self):
        return {"p": self.p, "signs": float(self._signs), "count": self._count}

    def load_state_dict(self, state):
        self.p, self._signs, self._count = state["p"], state["signs"], state["count"]
