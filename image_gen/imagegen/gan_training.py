"""The GAN's training state: generator and discriminator, the generator's EMA, one Adam per network at
their own rates (two time-scale update rule, Heusel et al. 2017), and the training generator."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .augment import Augment, AugmentConfig
from .common import World
from .diffusion import cpu_normal, restore_generator
from .gan import (GAN_LOSSES, Discriminator, Generator, discriminator_loss, generator_loss, mode_seeking_loss,
                  r1_penalty)
from .sampling import GanSampler


@dataclass(frozen=True)
class GanConfig:
    """How the GAN is optimised: the loss ('hinge' or 'nonsaturating'), the R1 weight gamma (0: none),
    the generator's and the discriminator's Adam rates, Adam's betas (beta1 = 0 as in SAGAN and BigGAN),
    the decay of the generator's weight EMA used for sampling, the discriminator's augmentation, and the
    weight of the generator's mode-seeking term (0: none; gan.mode_seeking_loss)."""
    loss: str = "hinge"
    r1_gamma: float = 0.0
    g_learning_rate: float = 1e-4
    d_learning_rate: float = 4e-4
    betas: tuple = (0.0, 0.9)
    ema_decay: float = 0.999
    augment: AugmentConfig = AugmentConfig()
    mode_seeking: float = 0.0

    def __post_init__(self):
        if self.loss not in GAN_LOSSES:
            raise ValueError(f"unknown GAN loss {self.loss!r}: expected one of {', '.join(GAN_LOSSES)}")

    def as_dict(self):
        return {**asdict(self), "betas": list(self.betas), "augment": self.augment.as_dict()}

    @classmethod
    def from_dict(cls, record):
        """The config a checkpoint's "gan_config" holds; checkpoints from before augmentation had none."""
        augment = AugmentConfig.from_dict(record["augment"]) if "augment" in record else AugmentConfig()
        return cls(**{**record, "betas": tuple(record["betas"]), "augment": augment})


class GanTrainState:
    """What GAN optimisation owns. `model` is the generator (as TrainState.model is the U-Net, so the
    training loop and the checkpoint treat both alike), `discriminator` its adversary, `ema_model` the
    generator's weight EMA, which `sampler` draws from. `generator` is the training RNG (data order and
    latents). One step: a discriminator update on a real batch and as many fakes of the same classes,
    then a generator update on fresh latents, then the EMA."""

    kind = "gan"

    def __init__(self, generator, discriminator, device, config=None, seed=0, world=None):
        self.world = world or World()
        if self.world.active:
            raise ValueError("the GAN trains in one process; run it without torchrun")
        self.device, self.config = device, config or GanConfig()
        self.model = generator.to(device)
        self.discriminator = discriminator.to(device)
        self.ema_model = Generator(**generator.config).to(device).requires_grad_(False).eval()
        self.ema_model.load_state_dict(generator.state_dict())
        self.g_optimizer = torch.optim.Adam(generator.parameters(), lr=self.config.g_learning_rate,
                                            betas=tuple(self.config.betas))
        self.d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=self.config.d_learning_rate,
                                            betas=tuple(self.config.betas))
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)  # on the CPU: resumes on any device (cpu_normal)
        self.augment = Augment(self.config.augment, self.generator)
        self.sampler = GanSampler(self.ema_model)
        self.step = 0

    def learning_rate(self):
        """The generator's rate (constant; the discriminator's is config.d_learning_rate)."""
        return self.config.g_learning_rate

    def _latents(self, n):
        return cpu_normal((n, self.model.latent_dim), self.generator, self.device)

    def train_step(self, x, labels=None):
        """One discriminator and one generator update on real images x (batch, C, 28, 28) in [-1, 1] with
        their labels (batch,) (None: unconditional). Returns tensor([D loss, G loss]) (no sync)."""
        config, G, D = self.config, self.model, self.discriminator
        D.requires_grad_(True)
        with torch.no_grad():
            fake = G(self._latents(len(x)), labels)
        real = x.detach().requires_grad_(config.r1_gamma > 0)
        real_scores = D(self.augment(real), labels)  # R1 then penalises D's gradient through the augmentation
        d_loss = discriminator_loss(real_scores, D(self.augment(fake), labels), config.loss)
        total = d_loss + (0.5 * config.r1_gamma * r1_penalty(real_scores, real) if config.r1_gamma else 0.0)
        self.d_optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.d_optimizer.step()
        self.augment.observe(real_scores, len(x))

        D.requires_grad_(False)  # the generator's step needs gradients through D, not for D
        g_loss, objective = self._generator_objective(len(x), labels)
        self.g_optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.g_optimizer.step()
        self.step += 1
        self._update_ema()
        return torch.stack([d_loss.detach(), g_loss.detach()])

    def _generator_objective(self, n, labels):
        """(the adversarial loss, what the generator minimises) on n fresh latents of `labels`; with the
        mode-seeking term, a second n latents of the same labels too, the adversarial loss averaged over both."""
        config, G, D = self.config, self.model, self.discriminator
        if not config.mode_seeking:
            g_loss = generator_loss(D(self.augment(G(self._latents(n), labels)), labels), config.loss)
            return g_loss, g_loss
        z_1, z_2 = self._latents(n), self._latents(n)
        pairs = None if labels is None else torch.cat([labels, labels])
        images = G(torch.cat([z_1, z_2]), pairs)
        g_loss = generator_loss(D(self.augment(images), pairs), config.loss)
        return g_loss, g_loss + config.mode_seeking * mode_seeking_loss(images[:n], images[n:], z_1, z_2)

    @torch.no_grad()
    def _update_ema(self):
        # The same warm-up as the DDPM's EMA: early averages are not dominated by the random init.
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(list(self.ema_model.parameters()), [p.detach() for p in self.model.parameters()],
                             1.0 - decay)

    def describe(self):
        """The checkpoint fields that say what this model is."""
        return {"kind": self.kind, "model_config": dict(self.model.config),
                "discriminator_config": dict(self.discriminator.config), "gan_config": self.config.as_dict()}

    def state_dict(self):
        return {"model": self.model.state_dict(), "ema": self.ema_model.state_dict(),
                "discriminator": self.discriminator.state_dict(), "optimizer": self.g_optimizer.state_dict(),
                "d_optimizer": self.d_optimizer.state_dict(), "step": self.step,
                "generator": self.generator.get_state(), "augment": self.augment.state_dict()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.ema_model.load_state_dict(state["ema"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.g_optimizer.load_state_dict(state["optimizer"])
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.step = state["step"]
        restore_generator(self.generator, state["generator"], self.seed, self.step)
        if "augment" in state:  # GAN checkpoints from before augmentation had none
            self.augment.load_state_dict(state["augment"])

    @classmethod
    def from_checkpoint(cls, state, device, seed=0):
        """The training state a GAN checkpoint holds, ready to continue."""
        train_state = cls(Generator(**state["model_config"]), Discriminator(**state["discriminator_config"]), device,
                          GanConfig.from_dict(state["gan_config"]), seed)
        train_state.load_state_dict(state)
        return train_state
