"""The training state and loop: live weights, their EMA, AdamW, the learning-rate plan, the training
generator, and one (resumable) pass over the data."""
from __future__ import annotations

import math
import time

import torch
import torch.nn as nn

from .common import World, first_nonfinite, progress_bar
from .diffusion import GaussianDiffusion, restore_generator
from .sampling import Sampler
from .unet import Denoiser, DiffusionModel

LR_FLOOR = 0.1  # the cosine decays the peak learning rate to 10% of itself


def lr_schedule(step, total_steps, warmup_steps, anchor_step=0, anchor_factor=1.0, floor=LR_FLOOR):
    """Multiplier of the peak learning rate for optimizer step `step` (0-based).

        warm-up(step) * decay(step),  warm-up = min(1, (step + 1) / warmup_steps),
        decay = floor + (anchor_factor - floor) * (1 + cos(pi * p)) / 2,
        p = (min(step, total_steps) - anchor_step) / (total_steps - anchor_step).

    A new run has anchor (0, 1.0): one half-cosine from the peak to `floor` x peak at its last step.
    Resuming with another total (a larger --epochs) re-anchors at the resume step with the decay reached
    there (see `replan_lr`): the rate continues from where it was, with no jump, and decays smoothly to
    the floor at the new last step. Extending a finished run therefore continues at the floor rate.
    """
    warmup = min(1.0, (step + 1) / warmup_steps)
    span = max(1, total_steps - anchor_step)
    progress = min(1.0, max(0.0, (min(step, total_steps) - anchor_step) / span))
    return warmup * (floor + (anchor_factor - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def new_lr_plan(total_steps, peak_lr):
    """The schedule of a new run: warm-up over 10% of it (at most 500 steps), then one cosine."""
    return {"peak_lr": peak_lr, "total_steps": total_steps, "warmup_steps": max(1, min(500, total_steps // 10)),
            "anchor_step": 0, "anchor_factor": 1.0}


def replan_lr(plan, step, total_steps):
    """The plan for a new total from `step` on, continuous at `step` (the decay factor reached is kept)."""
    if total_steps == plan["total_steps"]:
        return plan
    reached = lr_schedule(step, plan["total_steps"], 1, plan["anchor_step"], plan["anchor_factor"])  # decay only
    return {**plan, "total_steps": total_steps, "anchor_step": step, "anchor_factor": reached}


class TrainState:
    """What optimisation owns: the live weights, their EMA, AdamW, the LR plan, the step counter and the
    training generator (data order, timesteps, noise). `denoiser` (live net) gives the loss through
    `diffusion`; `sampler` (EMA net) draws images.

    In a `world` of several processes (torchrun), each takes its share of every batch (World.share) and
    runs the net through DistributedDataParallel, which averages the gradients: the mean of the equal
    shares' mean losses is the batch's mean loss, so the step is the one-process step. The generator
    draws t, eps and dropout for the whole batch in every process (each keeps its rows), and the EMA is
    computed from the same averaged weights in every process, so all stay identical."""

    kind = "ddpm"

    def __init__(self, model, device, diffusion_config=None, lr_plan=None, ema_decay=0.999, seed=0,
                 precision="fp32", compile_model=False, cond_drop_prob=0.0, world=None):
        self.device = device
        self.world = world or World()
        self.cond_drop_prob = cond_drop_prob
        self.model = model.to(device)
        self.ema_model = DiffusionModel(**model.config).to(device).requires_grad_(False).eval()
        self.ema_model.load_state_dict(model.state_dict())
        self.ema_decay = ema_decay
        self.lr_plan = lr_plan or new_lr_plan(1, 1e-3)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr_plan["peak_lr"], weight_decay=0.0)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)  # on the CPU: resumes on any device (cpu_normal)
        self.diffusion = GaussianDiffusion(**(diffusion_config or {}), device=device)
        forward = model
        if self.world.active:
            forward = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                                          broadcast_buffers=False)  # its only buffer is constant
        self.denoiser = Denoiser(model, precision, torch.compile(forward) if compile_model else
                                 (forward if self.world.active else None))
        self.sampler = Sampler(self.ema_model, self.diffusion, precision)
        self.step = 0

    def learning_rate(self):
        """The rate of the next optimizer step."""
        plan = self.lr_plan
        return plan["peak_lr"] * lr_schedule(self.step, plan["total_steps"], plan["warmup_steps"],
                                             plan["anchor_step"], plan["anchor_factor"])

    def loss(self, x0, labels=None):
        """The training loss of one batch, drawing t, eps and label dropout from the training generator."""
        if self.world.active:
            return self.diffusion.loss(self.denoiser, x0, labels, self.generator, self.cond_drop_prob,
                                       rows=self.world.share(len(x0)))
        return self.diffusion.loss(self.denoiser, x0, labels, self.generator, self.cond_drop_prob)

    def train_step(self, x0, labels=None):
        """One optimisation step (Algorithm 1), then the EMA update. Returns the loss tensor (no sync)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        loss = self.loss(x0, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.step += 1
        self._update_ema()
        return loss.detach()

    @torch.no_grad()
    def _update_ema(self):
        # Warm-up (1 + n) / (10 + n) keeps early EMA weights from being dominated by the random init.
        decay = min(self.ema_decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(list(self.ema_model.parameters()), [p.detach() for p in self.model.parameters()],
                             1.0 - decay)

    def describe(self):
        """The checkpoint fields that say what this model is."""
        return {"kind": self.kind, "cond_drop_prob": self.cond_drop_prob, "model_config": dict(self.model.config),
                "diffusion_config": dict(self.diffusion.config)}

    def state_dict(self):
        return {"model": self.model.state_dict(), "ema": self.ema_model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "lr_plan": dict(self.lr_plan), "step": self.step,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.ema_model.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_plan = dict(state["lr_plan"])
        self.step = state["step"]
        restore_generator(self.generator, state["generator"], self.seed, self.step)


def mean_losses(losses):
    """The mean of each loss over the steps: [mse] for a DDPM (one float per step), [D loss, G loss] for a
    GAN (a pair per step)."""
    columns = zip(*losses) if losses and isinstance(losses[0], list) else [losses]
    return [math.fsum(column) / len(losses) for column in columns]


class EpochProgress:
    """Where training stands inside one epoch: its data order, the losses of the steps done (a float per
    step; a [D, G] pair for a GAN), their time."""

    def __init__(self, order, losses=None, seconds=0.0):
        self.order, self.losses, self.seconds = order, list(losses or []), seconds

    @property
    def step(self):
        return len(self.losses)

    def state_dict(self):
        return {"order": self.order.cpu(), "losses": list(self.losses), "seconds": self.seconds}


def evaluation_epochs(epochs):
    """Epoch 1, every 5th, and the last."""
    return sorted({1, epochs} | set(range(5, epochs + 1, 5)))


def train_one_epoch(state, images, labels, batch_size, epoch, epochs, progress, stop, check_every=25):
    """Continue one pass over `images` ((n, 1, 28, 28) on the device) and their `labels` ((n,), None for
    an unconditional model) in `progress.order` from step `progress.step`, with `state` a TrainState or a
    GanTrainState. Returns True when the epoch is
    complete, False when `stop` was requested first. Losses reach the host every `check_every` steps
    (with several processes: the mean over them, the whole batch's loss)."""
    state.model.train()
    steps = max(1, len(images) // batch_size)  # drop the ragged tail; the order is new each epoch
    pending = []
    start = time.perf_counter()
    bar = progress_bar(range(progress.step, steps), f"epoch {epoch}/{epochs}", total=steps, initial=progress.step,
                       unit="steps")
    for step in bar:
        batch = progress.order[step * batch_size:(step + 1) * batch_size]
        pending.append(state.train_step(images[batch], None if labels is None else labels[batch]))
        stop.poll()
        if len(pending) == check_every or step == steps - 1 or stop.requested:
            values = state.world.mean(torch.stack(pending)).tolist()
            bad = first_nonfinite([sum(v) if isinstance(v, list) else v for v in values])
            if bad is not None:
                hint = "lower --learning_rate" + (" or try --precision fp32" if state.kind == "ddpm" else "")
                raise FloatingPointError(f"loss became {values[bad]} at epoch {epoch}, step {progress.step + bad + 1}"
                                         f" of {steps}; {hint}")
            progress.losses.extend(values)
            pending = []
            bar.set_postfix(loss=" ".join(f"{v:.4f}" for v in mean_losses(progress.losses)))
            if stop.requested and step < steps - 1:
                break
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    progress.seconds += time.perf_counter() - start
    return progress.step == steps
