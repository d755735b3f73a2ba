"""A trained image model, loaded once and ready to draw: what the REST API, the web demo and hubconf.py hold
(checkpoint file or exported folder alike), so that they sample exactly as `image_gen.py --mode infer` does."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint
from .data import class_names, class_slug, dataset_title, to_unit_range
from .diffusion import SamplerSettings
from .guidance import DEFAULT_GUIDANCE_SCALE
from .sampling import class_seed, ema_sampler_from_checkpoint
from .unet import resolve_precision

RANDOM_PROMPTS = ("random", "unconditional", "none")


class PromptError(ValueError):
    """A class prompt the model cannot draw; the message says what it can."""


@dataclass
class ImageGenerator:
    """A DDPM's or a GAN's EMA network with what its checkpoint says about it. `state`: the checkpoint without
    its weights (configs, data set, guidance fit, history); `sampler`: imagegen.sampling.Sampler or GanSampler."""
    path: Path
    state: dict
    sampler: object
    precision: str = "fp32"

    @classmethod
    def load(cls, path, device="cpu", precision="fp32", compile_model=False, kind=None, asked_by=None):
        """The checkpoint (or exported folder) at `path` on `device`; fp32 without compiling gives infer's exact
        pixels, and 'auto' is resolved for the checkpoint's kind (unet.resolve_precision). `kind` ('ddpm' or
        'gan'), when given, must be what the checkpoint is: otherwise a one-line usage error that names
        `asked_by`, what wanted that kind."""
        state = checkpoint.load_checkpoint(path)
        if kind is not None:
            checkpoint.require_kind(state, kind, path, asked_by or f"--model {kind}")
        precision = resolve_precision(precision, device, state.get("kind", "ddpm"))
        sampler = ema_sampler_from_checkpoint(state, torch.device(device), precision, compile_model)
        return cls(Path(path), {k: v for k, v in state.items() if k not in checkpoint.RESUME_ONLY and k != "ema"},
                   sampler, precision)

    @property
    def kind(self):
        """'ddpm' or 'gan'."""
        return self.state["kind"]

    @property
    def dataset(self):
        return self.state["dataset"]

    @property
    def conditional(self):
        return self.sampler.num_classes > 0

    @property
    def class_names(self):
        return list(class_names(self.dataset)) if self.conditional else []

    @property
    def default_guidance(self):
        """The w the checkpoint's own evaluation supports (train's guidance fit), else the default."""
        return checkpoint.checkpoint_guidance(self.state, DEFAULT_GUIDANCE_SCALE)

    @property
    def position(self):
        return checkpoint.checkpoint_position(self.state)

    def label_of(self, prompt):
        """The class index a prompt names (7, '7', 'ankle boot', 'ankle-boot'), or None for 'random' (the null
        class, or an unconditional model's samples); PromptError otherwise."""
        text = str(prompt).strip().lower()
        if text in RANDOM_PROMPTS:
            if self.conditional and self.kind == "gan":
                raise PromptError(f"{self.kind}-{self.dataset} is a class-conditional GAN: it has no unconditional "
                                  f"samples; give a class of {dataset_title(self.dataset)}")
            return None
        if not self.conditional:
            raise PromptError(f"{self.kind}-{self.dataset} is unconditional: the only prompt it takes is 'random'")
        names = class_names(self.dataset)
        for label, name in enumerate(names):
            if text in (name.lower(), class_slug(self.dataset, label)):
                return label
        if text.lstrip("-").isdigit():
            raise PromptError(f"class {text} is out of range: {self.kind}-{self.dataset} has classes 0 to "
                              f"{len(names) - 1}")
        raise PromptError(f"unknown prompt {prompt!r}: give a class of {dataset_title(self.dataset)} "
                          f"({', '.join(names)}), its index 0-{len(names) - 1}, or 'random'")

    def noise_seed(self, label, seed):
        """The seed of the noise `image_gen.py --mode infer --seed seed` draws for this class (or for an
        unconditional model's samples), so that a caller reproduces infer's images."""
        if not self.conditional:
            return seed
        return class_seed(seed, self.sampler.null_class if label is None else label)

    def settings(self, sampler="ddim", steps=50, guidance_scale=None, seed=0, eta=0.0):
        """SamplerSettings with the checkpoint's own w unless `guidance_scale` is given."""
        w = self.default_guidance if guidance_scale is None else guidance_scale
        return SamplerSettings(sampler, steps, eta, w, seed)

    @torch.inference_mode()
    def draw(self, groups, settings):
        """groups [(label or None, n, noise seed)] drawn as one batch -> one (n, C, H, W) tensor in [0, 1] per
        group (what batches several API requests into one)."""
        return [to_unit_range(images) for images in self.sampler.sample_groups(groups, settings)]

    @torch.inference_mode()
    def sample(self, classes=None, per_class=16, settings=None):
        """`per_class` images of each class in `classes` (default: all; None in the list is the null class), or
        `per_class` images in all of an unconditional model: (n, C, H, W) in [0, 1], infer's pixels for the same
        settings (default: DDIM-50 at the checkpoint's w, seed 0)."""
        settings = settings or self.settings()
        if not self.conditional:
            return to_unit_range(self.sampler.sample(per_class, settings))
        classes = list(range(self.sampler.num_classes)) if classes is None else list(classes)
        return to_unit_range(self.sampler.sample_classes(classes, per_class, settings))
