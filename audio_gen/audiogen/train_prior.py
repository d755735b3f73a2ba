"""The train_prior command: a learned prior (prior.py) for a trained VAE, fitted to the latents of the VAE's own
training music. Each step crops random clips, encodes them with the frozen VAE, draws z ~ q(z|x) (the
latents its decoder learned from) and takes one AdamW step of the diffusion loss. A checkpoint after each
epoch and on Ctrl-C; --resume continues at the exact step."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .checkpoint import (PRIOR_FORMAT, PRIOR_VERSION, load_checkpoint, load_prior_checkpoint, model_from_checkpoint,
                         require_vae, rng_state, set_rng_state, weights_fingerprint)
from .common import Board, World, atomic_torch_save
from .data import training_splits
from .metrics import spread_positions
from .model import reparameterize
from .plots import plot_prior_curves
from .prior import LatentDiffusion, LatentPrior, PriorConfig
from .trainer import Optimisation, Position, fit, steps_per_epoch
from .transform import LogMelTransform


@dataclass(frozen=True)
class PriorTrainConfig:
    """What the train_prior command reads: the VAE (`vae_checkpoint`), the prior's file (`checkpoint`) and
    shape (`prior`: its latent_dim is taken from the VAE), and the optimisation (`optim`). `ema_decay`: of the
    averaged weights that sampling uses."""
    vae_checkpoint: Path
    checkpoint: Path
    prior: PriorConfig
    optim: Optimisation
    results_dir: Path
    cache_dir: Path
    device: torch.device
    command_line: dict
    ema_decay: float = 0.999


@torch.no_grad()
def posterior_samples(vae, log_mels, generator=None, batch_size=64):
    """(n, n_mels, frames) un-normalised log-mels -> (n, latent_dim, latent frames) draws z ~ q(z|x), on the
    VAE's device; with `generator` (on the CPU) the draws are fixed."""
    device = vae.mel_mean.device
    parts = []
    for i in range(0, len(log_mels), batch_size):
        mean, log_variance = vae.posterior(vae.normalize(log_mels[i:i + batch_size].to(device)))
        if generator is None:
            parts.append(reparameterize(mean, log_variance))
        else:
            noise = torch.randn(mean.shape, generator=generator).to(device)
            parts.append(mean + (0.5 * log_variance).exp() * noise)
    return torch.cat(parts)


class PriorTrainer:
    """Training state of a learned prior: the prior, its EMA copy, AdamW, the schedule, the step count.
    `train_step` has AudioTrainer's signature, so trainer.run_epoch drives it too."""

    def __init__(self, prior, vae, device, schedule, ema_decay=0.999, grad_clip=1.0):
        self.model = prior.to(device)
        self.vae = vae.requires_grad_(False).eval()
        self.diffusion = LatentDiffusion(prior.config["timesteps"])
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        self.device, self.schedule, self.grad_clip = device, schedule, grad_clip
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=schedule(0), weight_decay=0.0)
        self.world = World()
        self.step = 0

    def train_step(self, log_mels):
        """One AdamW step on a (batch, n_mels, frames) batch of un-normalised log-mels; on device, (2,): the
        diffusion (v-prediction) loss and 0 (the slot where the VAE's trainer reports its KL term)."""
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule(self.step)
        z0 = self.model.standardize(posterior_samples(self.vae, log_mels))
        loss = self.diffusion.loss(self.model, z0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.ema.update_parameters(self.model)
        self.step += 1
        return torch.stack([loss.detach(), loss.new_zeros(())])

    def share(self, rows):
        return rows  # one process: the whole batch

    @torch.no_grad()
    def validation_loss(self, z0, seed):
        """The EMA prior's loss on fixed standardised latents `z0` with a fixed t and eps per clip (from
        `seed`), so epochs compare."""
        generator = torch.Generator().manual_seed(seed)
        prior = self.ema.module.eval()
        return float(self.diffusion.loss(prior, z0, generator))

    def state_dict(self):
        return {"model": self.model.state_dict(), "ema": self.ema.module.state_dict(),
                "ema_updates": int(self.ema.n_averaged), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "step": self.step}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.ema.module.load_state_dict(state["ema"])
        self.ema.n_averaged.fill_(state["ema_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step = state["step"]


def latents_of(vae, clips, seed, limit):
    """Fixed draws z ~ q(z|x) of at most `limit` evenly spread scoring windows of MelClips `clips`."""
    positions = spread_positions(len(clips), min(len(clips), limit))
    return posterior_samples(vae, clips.clips(positions), torch.Generator().manual_seed(seed))


def start(config):
    """(the VAE's checkpoint, the splits it trained on, a PriorTrainer, the resumed prior's state or None)."""
    vae_state = load_checkpoint(config.vae_checkpoint)
    require_vae(vae_state, config.vae_checkpoint, "train_prior")
    transform = LogMelTransform.from_config(vae_state["transform_config"], config.device)
    vae = model_from_checkpoint(vae_state, config.device)
    splits = training_splits(vae_state["data"], transform, config.cache_dir)
    if splits is None or not len(splits["train"]):
        raise SystemExit(f"error: the music {config.vae_checkpoint} trained on ({vae_state['data']}) is not on this "
                         f"machine: the prior learns from the latents of that music")
    state = load_prior_checkpoint(config.checkpoint, vae_state, config.vae_checkpoint) if config.optim.resume else None
    torch.manual_seed(config.optim.seed)
    latent_dim = vae.config["latent_dim"]
    prior = LatentPrior(**(state["prior_config"] if state else {**vars(config.prior), "latent_dim": latent_dim}))
    if state is None:
        if config.checkpoint.exists():
            print(f"note: starting a new prior; {config.checkpoint} will be overwritten (use --resume to continue it)")
        prior.set_statistics(latents_of(vae, splits["train"], config.optim.seed, 2048).cpu())
    steps = steps_per_epoch(splits["train"], config.optim.batch_size)
    schedule = config.optim.schedule(steps)
    trainer = PriorTrainer(prior, vae, config.device, schedule, config.ema_decay)
    if state:
        trainer.load_state_dict(state)
        trainer.schedule.extend(config.optim.epochs * steps, trainer.step)
        set_rng_state(state["rng"])
    return vae_state, splits, trainer, state


def vae_record(vae_state, path):
    """The prior checkpoint's "vae" entry: the VAE's path, epoch and weight fingerprint (hashed once a run)."""
    return {"checkpoint": str(path), "epoch": vae_state["epoch"], "fingerprint": weights_fingerprint(vae_state["model"])}


def prior_checkpoint(trainer, vae, config, epoch, progress, history):
    """Everything to sample (config, EMA weights with the latent statistics) and to resume exactly, and `vae`:
    the vae_record of the VAE whose latents it models."""
    return {"format": PRIOR_FORMAT, "version": PRIOR_VERSION, "prior_config": dict(trainer.model.config),
            **trainer.state_dict(), "epoch": epoch, "partial_epoch": progress, "rng": rng_state(),
            "history": history, "args": dict(config.command_line),
            "vae": vae}


def train_prior(config):
    """Train as `config` (a PriorTrainConfig) says; the history of epoch records."""
    torch.set_flush_denormal(True)
    vae_state, splits, trainer, state = start(config)
    position = Position(state["epoch"], state["partial_epoch"], state["history"]) if state else Position()
    if config.optim.done(position.epoch, config.checkpoint):
        return position.history
    train_set, held_out = splits["train"], splits["valid"] if len(splits["valid"]) else splits["train"]
    valid_z0 = trainer.model.standardize(latents_of(trainer.vae, held_out, config.optim.seed + 1, 512))
    steps = steps_per_epoch(train_set, config.optim.batch_size)
    params = sum(p.numel() for p in trainer.model.parameters()) / 1e6
    print(f"Training a learned prior ({params:.2f}M parameters, {trainer.model.config['timesteps']} diffusion steps) "
          f"over the {tuple(valid_z0.shape[1:])} latents of {config.vae_checkpoint.name} on {len(train_set)} "
          f"training windows of {train_set.origin}; validation loss on {len(valid_z0)} windows of {held_out.origin}; "
          f"{steps} steps/epoch, device {config.device}")
    if state:
        print(f"Resuming {config.checkpoint} at {position.where()}")
    vae = vae_record(vae_state, config.vae_checkpoint)
    curves = config.results_dir / "prior_training.png"

    board = Board(config.results_dir / "tensorboard" / "prior")

    def announce(record):
        board.record(record, record["epoch"])
        print(f"epoch {record['epoch']:3d}/{config.optim.epochs}  loss {record['train_loss']:.4f}  unseen loss (EMA) "
              f"{record['valid_loss_ema']:.4f}  {record['train_seconds']:.1f} s", flush=True)
        if record["epoch"] % 5 == 0:  # a curve to watch; the last one is drawn below
            plot_prior_curves(position.history, curves, train_set.origin)

    def save():
        atomic_torch_save(prior_checkpoint(trainer, vae, config, position.epoch, position.progress, position.history),
                          config.checkpoint)

    try:
        fit(trainer, train_set, position, config.optim, checkpoint=config.checkpoint,
            evaluate=lambda epoch: {"valid_loss_ema": trainer.validation_loss(valid_z0, config.optim.seed)},
            announce=announce, save=save)
    finally:
        board.close()
        if position.history:
            plot_prior_curves(position.history, curves, train_set.origin)
    print(f"Saved the learned prior to {config.checkpoint}; sample it with --mode generate --prior {config.checkpoint}")
    return position.history
