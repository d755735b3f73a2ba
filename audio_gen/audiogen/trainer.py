"""Optimisation: the learning-rate schedule, the loss, one AdamW step, and an epoch of random crops that
an interruption can resume at the exact step."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import StopRequest, World, first_nonfinite, progress_bar


class CosineSchedule:
    """Learning rate: linear warm-up to `peak`, then a half cosine (Loshchilov & Hutter 2017, SGDR without
    restarts) from an anchor to `floor` at `total_steps`.

    The anchor starts at (warmup_steps, peak). `extend` sets a new total for a resumed run: the cosine
    restarts its descent from the current rate, so a longer run never climbs back up.
    """

    def __init__(self, peak, total_steps, warmup_steps=0, floor_ratio=0.01):
        self.peak, self.floor, self.total_steps = peak, peak * floor_ratio, total_steps
        self.warmup_steps = min(warmup_steps, max(0, total_steps - 1))
        self.anchor_step, self.anchor_lr = self.warmup_steps, peak

    def __call__(self, step):
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.anchor_step) / max(1, self.total_steps - self.anchor_step))
        return self.floor + (self.anchor_lr - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def extend(self, total_steps, step):
        """Stretch the schedule to `total_steps` from `step` on, descending from the rate at `step`."""
        if total_steps != self.total_steps:
            if step >= self.warmup_steps:
                self.anchor_step, self.anchor_lr = step, self(step)
            self.total_steps = total_steps

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        vars(self).update(state)


@dataclass(frozen=True)
class Optimisation:
    """How every training command optimises, one value from the command line: `epochs` in all (a resumed run
    stretches its schedule to them), the global `batch_size`, AdamW's peak `learning_rate` after `warmup_steps`
    of linear warm-up, the `seed` of the first weights and of every epoch's draws, and whether to `resume` the
    checkpoint."""
    epochs: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    seed: int = 0
    resume: bool = False

    def schedule(self, steps_per_epoch):
        """The CosineSchedule of a run of `steps_per_epoch` steps per epoch."""
        return CosineSchedule(self.learning_rate, self.epochs * steps_per_epoch, self.warmup_steps)

    def done(self, epochs_done, owner):
        """Whether `owner` (e.g. a checkpoint's path) already has the epochs asked for; says so when it has."""
        if epochs_done < self.epochs:
            return False
        print(f"Nothing to do: {owner} already has {epochs_done} epochs (--epochs {self.epochs}).")
        return True


def reconstruction_loss(reconstruction, target):
    """MSE + L1 between (batch, n_mels, frames) normalised log-mels."""
    return F.mse_loss(reconstruction, target) + F.l1_loss(reconstruction, target)


class KlWeight:
    """The VAE's KL weight at a step: `weight` after a linear warm-up from 0 over `warmup_steps` (KL
    annealing, Bowman et al. 2016), so the decoder learns to use the code before the KL term closes it.

    The KL term is KL(q(z|x) || N(0, I)) of a clip divided by the clip's input values (n_mels * frames),
    the units of the per-value reconstruction loss: with a Gaussian decoder of variance s^2 the negative
    ELBO per value is MSE / (2 s^2) + KL / values, so weight w stands for a beta-VAE's beta = w / (2 s^2)
    of the MSE part (Higgins et al. 2017)."""

    def __init__(self, weight=0.0, warmup_steps=0):
        self.weight, self.warmup_steps = weight, warmup_steps

    def __call__(self, step):
        if step >= self.warmup_steps:
            return self.weight
        return self.weight * (step + 1) / self.warmup_steps

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        vars(self).update(state)


class AudioTrainer:
    """Training state: the model, AdamW (Loshchilov & Hutter 2019), the learning-rate schedule, gradient
    clipping and the step count.

    In a `world` of several processes (torchrun) each trains on its equal share of every batch (`share`)
    through DistributedDataParallel, which averages the gradients: the mean of the shares' mean losses is
    the batch's mean loss, so each step is the one-process step and the weights stay identical everywhere."""

    def __init__(self, model, device, schedule, kl_weight=None, weight_decay=1e-4, grad_clip=1.0, world=None):
        self.model = model.to(device)
        self.kl_weight = kl_weight or KlWeight()
        self.device = device
        self.world = world or World()
        self.forward = self.model
        if self.world.active:  # the normalisation buffers never change: no need to broadcast them each step
            self.forward = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False)
        self.grad_clip = grad_clip
        self.schedule = schedule
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=schedule(0), weight_decay=weight_decay)
        self.step = 0

    def train_step(self, log_mels):
        """One AdamW step on a (batch, n_mels, frames) batch of un-normalised log-mels; on device, (2,):
        the loss and the KL term in nats per clip (0 for the plain autoencoder)."""
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule(self.step)
        target = self.model.normalize(log_mels.to(self.device))  # a no-op where the crops are kept on the device
        reconstruction, kl = self.forward(target)
        loss = reconstruction_loss(reconstruction, target)
        if self.model.variational:
            loss = loss + self.kl_weight(self.step) * kl / target[0].numel()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.step += 1
        return torch.stack([loss.detach(), kl.detach()])

    def share(self, rows):
        """This process's equal share of a batch's `rows` (all of them in one process)."""
        return rows[self.world.share(len(rows))] if self.world.active else rows

    def state_dict(self):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "kl_weight": self.kl_weight.state_dict(), "step": self.step}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.kl_weight.load_state_dict(state.get("kl_weight", {}))  # version 2 checkpoints: plain autoencoders
        self.step = state["step"]


def milestone(epoch, epochs, every):
    """Whether epoch `epoch` (from 1) of `epochs` gets the costly scores: the first, the last and every `every`-th."""
    return epoch in (1, epochs) or epoch % every == 0


def steps_per_epoch(train_set, batch_size):
    """An epoch draws as many crops as the training recordings hold scoring windows."""
    return max(1, len(train_set) // batch_size)


def epoch_crops(train_set, steps, batch_size, seed, epoch):
    """(steps, batch_size) crop starts for one epoch, from a generator of its own: a resumed epoch
    draws exactly the crops of the uninterrupted one, whatever else used the global RNG."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return train_set.crop_starts(steps * batch_size, generator).view(steps, batch_size)


def check_finite(losses, epoch, first_step):
    """Raise FloatingPointError naming the step of the first NaN or infinite loss in `losses`."""
    bad = first_nonfinite(losses)
    if bad is not None:
        raise FloatingPointError(f"loss became {losses[bad]} at epoch {epoch}, step {first_step + bad + 1}")


def run_epoch(trainer, train_set, plan, progress, epoch, epochs, stop, check_every=10):
    """Train on the epoch's crop plan (steps, batch) from `progress['steps_done']` on, updating `progress`
    in place (steps done, loss sum, seconds) so an interruption can be resumed at the exact step.
    False when `stop` asked to end early. Several processes each take their share of every step's crops;
    the losses recorded are the means over them (the whole batch's)."""
    pending = []
    start = time.perf_counter()
    first = progress["steps_done"]
    bar = progress_bar(range(first, len(plan)), f"epoch {epoch}/{epochs}", total=len(plan), initial=first, unit="steps")
    for step in bar:
        pending.append(trainer.train_step(train_set.crops(trainer.share(plan[step]))))
        stop.poll()
        if len(pending) == check_every or step == len(plan) - 1 or stop.requested:
            rows = trainer.world.mean(torch.stack(pending)).tolist()  # one host sync per `check_every` steps
            losses = [loss for loss, _ in rows]
            check_finite(losses, epoch, step + 1 - len(losses))
            progress["loss_sum"] += sum(losses)
            progress["kl_sum"] = progress.get("kl_sum", 0.0) + sum(kl for _, kl in rows)
            progress["steps_done"] = step + 1
            progress["seconds"] += time.perf_counter() - start
            start, pending = time.perf_counter(), []
            bar.set_postfix(loss=f"{progress['loss_sum'] / progress['steps_done']:.4f}")  # the epoch's mean so far
        if stop.requested:
            return False
    return True


@dataclass
class Position:
    """Where a single-process run stands: epochs finished, the next epoch's progress (None between epochs) and
    one record per finished epoch. What its checkpoint saves and `--resume` restores."""
    epoch: int = 0
    progress: dict | None = None
    history: list = field(default_factory=list)

    def where(self):
        """'epoch 3, step 578' inside an epoch, 'the end of epoch 2' between epochs."""
        if self.progress:
            return f"epoch {self.epoch + 1}, step {self.progress['steps_done']}"
        return f"the end of epoch {self.epoch}"


def fit(trainer, train_set, position, optimisation, *, checkpoint, evaluate, announce, save):
    """Epochs of random crops in one process, from `position` (updated in place) to `optimisation.epochs`: the
    loop that the learned prior's, the vocoder's and the phase refiner's training share.

    After each epoch `evaluate(epoch)` adds its scores to the epoch's record, the record joins the history,
    `announce(record)` reports it and `save()` writes the checkpoint. The first Ctrl-C saves after the current
    step and ends saying how to resume; a second one, or a NaN loss, ends at once with the last good checkpoint.
    """
    epochs, batch_size, seed = optimisation.epochs, optimisation.batch_size, optimisation.seed
    steps = steps_per_epoch(train_set, batch_size)
    with StopRequest() as stop:
        try:
            while position.epoch < epochs:
                number = position.epoch + 1
                position.progress = position.progress or {"epoch": number, "steps_done": 0, "loss_sum": 0.0,
                                                          "seconds": 0.0, "batch_size": batch_size}
                plan = epoch_crops(train_set, steps, batch_size, seed, number)
                if not run_epoch(trainer, train_set, plan, position.progress, number, epochs, stop):
                    save()
                    raise SystemExit(f"Stopped at epoch {number}, step {position.progress['steps_done']} of {steps}: "
                                     f"{checkpoint} saved; continue with --resume.")
                start = time.perf_counter()
                progress = position.progress
                record = {"epoch": number, "step": trainer.step, "train_seconds": progress["seconds"],
                          "train_loss": progress["loss_sum"] / progress["steps_done"], **evaluate(number)}
                record["eval_seconds"] = time.perf_counter() - start
                position.epoch, position.progress = number, None
                position.history.append(record)
                save()  # before anything that could fail or be interrupted: the finished epoch is kept
                announce(record)
                if stop.poll(boundary=True):
                    raise SystemExit(f"Stopped after epoch {number}: {checkpoint} saved; continue with --resume.")
        except KeyboardInterrupt:
            raise SystemExit(f"\nInterrupted at once: {checkpoint} holds the state after epoch {position.epoch}.")
        except FloatingPointError as err:
            raise SystemExit(f"error: {err}. The last good checkpoint is {checkpoint}.")
