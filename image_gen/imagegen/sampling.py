"""Drawing images from a trained model: batches, noise streams per class, eval mode and progress reports
around the diffusion's sampling loop (diffusion.GaussianDiffusion.sample_loop), or around one pass of a
GAN's generator (GanSampler); sampler_from_checkpoint picks the one a checkpoint needs."""
from __future__ import annotations

import contextlib

import torch

from .common import progress_bar
from .data import to_uint8
from .diffusion import GaussianDiffusion, cpu_normal
from .unet import Denoiser, DiffusionModel


def sampling_batch_size(device):
    """Images per sampling batch: 64 on a CPU, where larger batches fall out of cache and run slower per
    image (docs/image-results.md has the measurement); 1000 on a GPU, which wants wide batches."""
    return 1000 if device.type == "cuda" else 64


def class_seed(seed, label):
    """The noise seed of one class's samples: distinct per class, fixed for a given --seed."""
    return seed * 1_000_003 + 7919 * (label + 1)


def balanced_counts(n, num_classes):
    """n split over the classes as evenly as possible (the first n % num_classes get one more)."""
    return [n // num_classes + (c < n % num_classes) for c in range(num_classes)]


def seeded_generator(seed):
    """A private CPU torch.Generator: `seed`, or a fresh seed from the OS when None. The global RNG is untouched.
    Always on the CPU, whatever device samples: a CUDA generator (Philox) gives other numbers for the same seed,
    so a seed would draw other digits on a GPU. Its numbers are moved to the device (cpu_normal)."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


class NoiseStreams:
    """Noise for a batch made of consecutive groups of images, group i (`counts[i]` images, or `counts`
    for every group when an int) drawn from `generators[i]`: each group gets the numbers its generator would
    give it alone."""

    def __init__(self, generators, counts, device):
        self.generators, self.device = generators, device
        self.counts = [counts] * len(generators) if isinstance(counts, int) else list(counts)

    def __call__(self, shape):
        return torch.cat([cpu_normal((count, *shape[1:]), g, self.device)
                          for g, count in zip(self.generators, self.counts)])


def compiled_for_sampling(model):
    """torch.compile(model) with dynamic shapes, so that one compilation serves every sampling batch size
    (static shapes would compile again, for tens of seconds, at each new count of images). Compiled kernels
    add in another order, so images differ from eager ones in the last bits. Some shapes still compile once
    more: a batch of one image, and in fp32 on a CPU the first batch of 16 or more after smaller ones
    (torch's convolution guards split there)."""
    return torch.compile(model, dynamic=True)


class Sampler:
    """Draws images from a DiffusionModel (for sampling, its EMA weights) with the diffusion's reverse process.

    `sample` draws n images of one class (or of the null class / an unconditional model); `sample_classes`
    draws several classes, each from a noise stream of its own, so the images of digit 7 are the same
    whichever other classes are asked for; `draw_for_fid` draws what FID/KID score."""

    def __init__(self, model, diffusion=None, precision="fp32", compile_model=False):
        self.model = model
        self.device = next(model.parameters()).device
        self.diffusion = GaussianDiffusion(device=self.device) if diffusion is None else diffusion
        self.denoiser = Denoiser(model, precision, compiled_for_sampling(model) if compile_model else None)
        self.num_classes = model.num_classes
        self.null_class = model.num_classes
        self.image_shape = (model.config["image_channels"], 28, 28)

    @property
    def num_timesteps(self):
        return self.diffusion.num_timesteps

    def name(self, settings, guided):
        """What draws the images, for titles and records: 'ddim-50, w=0.5'."""
        return settings.name(guided)

    def evaluations_per_image(self, settings):
        """Network evaluations per image (twice as many when guided)."""
        return settings.step_count(self.diffusion.num_timesteps)

    def batch_size(self, guided):
        """Images per sampling batch: half as many when guided, so each forward pass sees the same number."""
        return max(1, sampling_batch_size(self.device) // (2 if guided else 1))

    def _guided(self, label, settings):
        return self.num_classes > 0 and label is not None and settings.guidance_scale > 0

    def _draw(self, labels, n, settings, randn, guided, progress):
        """One batch of n images from noise source `randn`, the network in eval mode meanwhile."""
        was_training = self.model.training
        self.model.eval()
        x_T = randn((n, *self.image_shape))
        wrap = lambda steps: progress_bar(steps, settings.name(False).upper(), unit="steps", enabled=progress)  # noqa: E731
        out = self.diffusion.sample_loop(self.denoiser, x_T, settings, randn, labels,
                                         settings.guidance_scale if guided else 0.0, wrap)
        self.model.train(was_training)
        return out

    def sample(self, n, settings, label=None, batch_size=None, progress=False):
        """`n` images (n, C, 28, 28) in [-1, 1], in batches of `batch_size(guided)`.

        `label`: the class of all n images for a conditional model (None: the null class, unconditional;
        then no guidance). Noise comes from a private generator seeded with settings.seed."""
        if self.num_classes == 0 and label is not None:
            raise ValueError("this model is unconditional: it draws no classes")
        guided = self._guided(label, settings)
        batch_size = batch_size or self.batch_size(guided)
        generator = seeded_generator(settings.seed)
        randn = lambda shape: cpu_normal(shape, generator, self.device)  # noqa: E731
        batches = []
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            labels = None
            if self.num_classes:
                labels = torch.full((size,), self.null_class if label is None else label, device=self.device)
            batches.append(self._draw(labels, size, settings, randn, guided, progress))
        return torch.cat(batches)

    def _class_by_class(self, jobs, settings, progress, world):
        """The images of `jobs` [(count, label, class index)], each class from its own seed, in order. With a
        `world` of several processes each draws a contiguous run of classes holding about 1/N of the images,
        and rank 0 gathers them all (the others get None): the same images as one process draws."""
        def draw(part):
            images = [self.sample(k, settings.replace(seed=class_seed(settings.seed, index)), label=label,
                                  progress=progress) for k, label, index in part if k]
            return torch.cat(images) if images else torch.zeros((0, *self.image_shape), device=self.device)

        if world is None or not world.active:
            return draw(jobs)
        total, done, mine = sum(k for k, _, _ in jobs), 0, []
        for job in jobs:  # a class goes to the rank whose share of the images its middle falls in
            if (done + job[0] / 2) * world.size // max(1, total) == world.rank:
                mine.append(job)
            done += job[0]
        images = world.gather_rows(draw(mine))
        return images if world.is_main else None

    def sample_classes(self, classes, per_class, settings, progress=False, world=None):
        """`per_class` images of each class in `classes` (a list; [None] = unconditional), class by class:
        (len(classes) * per_class, C, 28, 28). Class c draws from seed class_seed(settings.seed, c).

        When all of them fit in one sampling batch they run as one batch (faster on a CPU than class by
        class), each class drawing from its own generator; a class then draws exactly what `sample` would
        draw for it alone, so both ways give the same images.

        `world` (several processes): class by class, the classes are shared out (see _class_by_class);
        one batch is drawn by rank 0 alone. Rank 0 gets the images, the others None."""
        labels = [self.null_class if label is None else label for label in classes]
        guided = self.num_classes > 0 and classes != [None] and settings.guidance_scale > 0
        if len(classes) * per_class > self.batch_size(guided) or len(classes) == 1:
            return self._class_by_class([(per_class, label, index) for label, index in zip(classes, labels)],
                                        settings, progress, world)
        if world is not None and world.active and not world.is_main:
            return None
        streams = NoiseStreams([seeded_generator(class_seed(settings.seed, index)) for index in labels],
                               per_class, self.device)
        batch_labels = torch.tensor(labels, device=self.device).repeat_interleave(per_class)
        return self._draw(batch_labels, len(batch_labels), settings, streams, guided, progress)

    def sample_groups(self, groups, settings):
        """Several independent draws run as one batch: `groups` is a list of (label, n, seed), label None
        for the null class (or an unconditional model). Returns one (n, C, 28, 28) tensor per group, in
        [-1, 1]. Group i draws from its own generator seeded with its seed, so it gets what
        `sample(n, settings.replace(seed=seed), label)` draws alone in one batch, up to the rounding of
        the batched convolutions. Guidance applies to every labelled group; a batch that mixes labelled and
        null-class groups is guided throughout, which leaves the null-class ones equal up to rounding too."""
        if self.num_classes == 0 and any(label is not None for label, _, _ in groups):
            raise ValueError("this model is unconditional: it draws no classes")
        guided = any(self._guided(label, settings) for label, _, _ in groups)
        streams = NoiseStreams([seeded_generator(seed) for _, _, seed in groups],
                               [n for _, n, _ in groups], self.device)
        labels = None
        if self.num_classes:
            labels = torch.cat([torch.full((n,), self.null_class if label is None else label, device=self.device)
                                for label, n, _ in groups])
        images = self._draw(labels, sum(streams.counts), settings, streams, guided, progress=False)
        return list(images.split(streams.counts))

    def draw_for_fid(self, n, settings, unconditional=False, progress=False, world=None):
        """The n images that FID/KID score: (uint8 (n, 1, 28, 28), asked labels (n,) or None).

        A conditional model draws them class-balanced with guidance, each class from its own noise stream
        (class_seed), or from the null class when `unconditional`; an unconditional model draws n at once.
        Any machine draws the same images for the same arguments, up to the last bits of its arithmetic.

        `world` (several processes): a conditional model's classes are shared out between them (see
        sample_classes); the null class and an unconditional model, one noise stream, are drawn by rank 0
        alone. Rank 0 gets the images, the others (None, labels)."""
        if not self.num_classes or unconditional:
            if world is not None and world.active and not world.is_main:
                return None, None
            return to_uint8(self.sample(n, settings, progress=progress)), None
        counts = balanced_counts(n, self.num_classes)
        labels = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
        if len(set(counts)) == 1:  # the same images, in one batch where they fit (a small N)
            images = self.sample_classes(list(range(self.num_classes)), counts[0], settings, progress, world)
        else:
            images = self._class_by_class([(k, c, c) for c, k in enumerate(counts)], settings, progress, world)
        return (None if images is None else to_uint8(images)), labels

    def draw_classes_in_turn(self, n, settings):
        """draw_for_fid's n class-balanced draws of a conditional model, one class at a time: yields (uint8
        (k, 1, 28, 28), labels (k,)) for class 0, 1, ... in one process, so that a caller can stop as soon as
        it has seen enough. Class c draws from its own stream (sample_classes) as there: the same images, up to
        the rounding of the batched convolutions when all n fit in one batch."""
        for label, count in enumerate(balanced_counts(n, self.num_classes)):
            if count:
                yield to_uint8(self.sample_classes([label], count, settings)), torch.full((count,), label)


class GanSampler(Sampler):
    """Draws images from a GAN's generator in one pass: the latents z ~ N(0, I) come from the same seeded
    noise streams as a DDPM's x_T (so a seed and a class give the same digit in any batch and under any
    grouping), and every method of Sampler works alike. SamplerSettings contribute their seed only:
    a GAN has no sampler steps and no guidance. A class-conditional generator has no null class."""

    def __init__(self, model, precision="fp32", compile_model=False):
        self.model = model
        self.device = next(model.parameters()).device
        self.num_classes = model.num_classes
        self.null_class = model.num_classes  # an index the generator refuses: it has no null class
        self.image_shape = (model.config["image_channels"], 28, 28)
        self.forward = compiled_for_sampling(model) if compile_model else model
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if precision == "bf16"
                         else contextlib.nullcontext())

    num_timesteps = None  # no reverse process

    def name(self, settings, guided):
        return "GAN generator (EMA), one pass"

    def evaluations_per_image(self, settings):
        return 1

    def _guided(self, label, settings):
        return False

    def batch_size(self, guided):
        return 1000 if self.device.type == "cuda" else 256

    @torch.no_grad()
    def _draw(self, labels, n, settings, randn, guided, progress):
        if labels is not None and bool((labels == self.null_class).any()):
            raise ValueError("a class-conditional GAN has no null class: ask for classes")
        was_training = self.model.training
        self.model.eval()
        z = randn((n, self.model.latent_dim))
        with self.autocast:
            out = self.forward(z, labels).float()
        self.model.train(was_training)
        return out


def ema_sampler_from_checkpoint(state, device, precision="fp32", compile_model=False):
    """A Sampler over the checkpoint's EMA network (a GanSampler for a GAN), rebuilt from what the
    checkpoint says (no optimizer); with `compile_model`, the network is compiled for sampling (see
    compiled_for_sampling)."""
    if state.get("kind") == "gan":
        from .gan import Generator
        generator = Generator(**state["model_config"]).to(device).requires_grad_(False).eval()
        generator.load_state_dict(state["ema"])
        return GanSampler(generator, precision, compile_model)
    model = DiffusionModel(**state["model_config"]).to(device).requires_grad_(False).eval()
    model.load_state_dict(state["ema"])
    return Sampler(model, GaussianDiffusion(**state["diffusion_config"], device=device), precision, compile_model)
