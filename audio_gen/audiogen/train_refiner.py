"""The train_refiner command: a phase refiner (phase_refiner.py) for a trained vocoder, fitted to the music the
vocoder voices. Retrieving a phase (PGHI + RAAR) is most of the cost of a step, so the training
segments are retrieved once, from the vocoder's magnitude of their true mel, into a fixed pool; each step takes
random segments of it and one AdamW step of the waveform losses. The refiner is saved into the vocoder's own
checkpoint (under "refiner", with the fingerprint of the vocoder weights it was trained for) after each epoch and
on Ctrl-C; --resume retrieves the same pool again and continues at the exact step."""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import (data_record, load_vocoder_checkpoint, refiner_is_current, rng_state, set_rng_state,
                         vocoder_from_checkpoint, weights_fingerprint)
from .common import Board, atomic_torch_save, progress_bar, usage_error
from .inverse import InverseConfig, MelInverse
from .metrics import paired_speech_scores
from .phase_refiner import PhaseRefiner, refiner_losses
from .plots import plot_refiner_curves
from .train_vocoder import VocoderTrainer
from .trainer import Optimisation, Position, fit, milestone, steps_per_epoch
from .transform import LogMelTransform
from .waves import wave_splits


@dataclass(frozen=True)
class RefinerTrainConfig:
    """What the train_refiner command reads: the music (`data`), the vocoder checkpoint to refine (read and
    written back with the refiner), the optimisation (`optim`), the refiner's width (`channels`), the `iterations`
    of the phase `retrieval` after PGHI (inverse.RETRIEVALS) whose phase it corrects, and the pool:
    `pool_segments` random segments of `segment_frames` frames of the training music (at most as many as it
    holds), retrieved once."""
    data: object
    vocoder: Path
    optim: Optimisation
    eval_every: int
    results_dir: Path
    device: torch.device
    command_line: dict = field(default_factory=dict)
    channels: int = 16
    iterations: int = 64
    retrieval: str = "raar"
    pool_segments: int = 4096
    segment_frames: int = 48
    audio_eval_clips: int = 4


@dataclass
class Retrieved:
    """Segments with what the refiner sees of them: (n, samples) waveforms, (n, n_freq, frames) the vocoder's
    magnitude of their mel and the phase retrieved from it."""
    wave: torch.Tensor
    magnitude: torch.Tensor
    phase: torch.Tensor

    def __len__(self):
        return len(self.wave)

    def __getitem__(self, index):
        return Retrieved(self.wave[index], self.magnitude[index], self.phase[index])


class RetrievedPool:
    """A fixed pool of Retrieved segments with WaveCrops' interface for trainer.fit: an epoch draws len() of
    them at random (with replacement), `crops` takes them by index."""

    def __init__(self, segments, origin):
        self.segments, self.origin = segments, origin

    def __len__(self):
        return len(self.segments)

    def crop_starts(self, count, generator):
        return torch.randint(len(self.segments), (count,), generator=generator)

    def crops(self, index):
        return self.segments[index]


def retrieve(inverse, waves, batch=64):
    """Retrieved segments for (n, samples) waveforms: the inverse's ('vocoder-pghi') magnitude of their log-mel
    and the phase that PGHI and its iterations after it find for it."""
    parts = []
    for i in progress_bar(range(0, len(waves), batch), "retrieving phases", unit="batches"):
        wave = waves[i:i + batch]
        magnitude = inverse.magnitude(inverse.transform(wave.to(inverse.transform.device)))
        parts.append(Retrieved(wave, magnitude.cpu(), inverse.retrieved_phase(magnitude, wave.shape[-1]).cpu()))
    return Retrieved(*(torch.cat([getattr(p, name) for p in parts]) for name in ("wave", "magnitude", "phase")))


class RefinerTrainer(VocoderTrainer):
    """VocoderTrainer's loop (AdamW with Adam's usual betas here, the schedule, clipping, the step count) on
    the refiner's losses over Retrieved batches."""

    REPORTED = "stft"

    def __init__(self, refiner, transform, device, schedule):
        super().__init__(refiner, transform, device, schedule, betas=(0.9, 0.999))

    def losses(self, batch):
        parts = refiner_losses(self.model, batch.magnitude.to(self.device), batch.phase.to(self.device),
                               batch.wave.to(self.device), self.transform)
        return parts, sum(parts.values())


class RefinerCheck:
    """PESQ/STOI of fixed unseen 5-s clips voiced from their true mel with the refiner ('vocoder-refined'),
    beside the vocoder's magnitude with the unrefined phase ('vocoder-pghi', computed once)."""

    def __init__(self, clips, unrefined):
        """`unrefined`: the MelInverse ('vocoder-pghi') whose phase the refiner corrects."""
        self.clips, self.transform, self.vocoder = clips, unrefined.transform, unrefined.vocoder
        self.config = dataclasses.replace(unrefined.config, kind="vocoder-refined")
        self.log_mels = self.transform(clips).cpu()
        self.reference = unrefined(self.log_mels)
        self.voiced = None

    @torch.no_grad()
    def __call__(self, refiner):
        """{'clips', 'pesq', 'stoi', and the unrefined phase's 'reference_pesq', 'reference_stoi'}."""
        refiner.eval()
        self.voiced = MelInverse(self.config, self.transform, self.vocoder, refiner)(self.log_mels)
        scores = paired_speech_scores(self.clips, self.voiced, self.reference, self.transform.sample_rate)
        return {"clips": len(self.clips), "pesq": scores["pesq"], "stoi": scores["stoi"],
                "reference_pesq": scores["oracle_pesq"], "reference_stoi": scores["oracle_stoi"]}


def refiner_record(trainer, config, position, vocoder_fingerprint, pool_segments, segment_frames):
    """The checkpoint's "refiner" entry: what rebuilds the refiner, what resumes its training, and the vocoder
    weights it belongs to (their weights_fingerprint)."""
    return {"refiner_config": dict(trainer.model.config), **trainer.state_dict(), "epoch": position.epoch,
            "partial_epoch": position.progress, "rng": rng_state(), "history": position.history,
            "pool_segments": pool_segments, "segment_frames": segment_frames,
            "data": data_record(config.data), "args": dict(config.command_line),
            "vocoder_fingerprint": vocoder_fingerprint}


def resumed_record(config, vocoder_state):
    """The vocoder checkpoint's "refiner" entry when --resume continues it (else None), checked to belong to the
    vocoder's weights."""
    record = vocoder_state.get("refiner")
    if not config.optim.resume:
        if record:
            print(f"note: training a new phase refiner; the one in {config.vocoder} will be replaced (use --resume "
                  f"to continue it)")
        return None
    if record is None:
        usage_error(f"--resume: {config.vocoder} has no phase refiner to resume; leave out --resume to train one")
    if not refiner_is_current(vocoder_state):
        usage_error(f"--resume: {config.vocoder}'s phase refiner was trained for other vocoder weights; leave out "
                    f"--resume to train a new one")
    return record


def start(config, record, vocoder_config, transform, steps):
    """A RefinerTrainer of `steps` per epoch and its Position: new, or from the resumed `record`."""
    torch.manual_seed(config.optim.seed)
    refiner = (PhaseRefiner.from_config(record["refiner_config"]) if record else
               PhaseRefiner(vocoder_config["n_fft"], vocoder_config["hop_length"], config.channels,
                            iterations=config.iterations, retrieval=config.retrieval))
    trainer = RefinerTrainer(refiner, transform, config.device,
                             config.optim.schedule(steps))
    if not record:
        return trainer, Position()
    trainer.load_state_dict(record)
    trainer.schedule.extend(config.optim.epochs * steps, trainer.step)
    set_rng_state(record["rng"])
    return trainer, Position(record["epoch"], record["partial_epoch"], record["history"])


def train_refiner(config):
    """Train as `config` (a RefinerTrainConfig) says; the history of epoch records."""
    torch.set_flush_denormal(True)
    vocoder_state = load_vocoder_checkpoint(config.vocoder)
    transform = LogMelTransform.from_config(vocoder_state["transform_config"], config.device)
    vocoder = vocoder_from_checkpoint(vocoder_state, config.device).requires_grad_(False)
    record = resumed_record(config, vocoder_state)
    if record and config.optim.done(record["epoch"], f"{config.vocoder}'s refiner"):
        return record["history"]
    # A resumed run keeps its pool: it sets the epoch's length and its draws.
    segment_frames = record["segment_frames"] if record else config.segment_frames
    segment = (segment_frames - 1) * transform.hop_length
    splits = wave_splits(config.data, transform, segment)
    train_set = splits["train"]
    held_out = splits["valid"] if len(splits["valid"]) else train_set
    if not len(train_set):
        raise SystemExit(f"error: no training audio in {train_set.origin}")
    pool_segments = record["pool_segments"] if record else min(config.pool_segments, len(train_set))
    trainer, position = start(config, record, vocoder_state["vocoder_config"], transform,
                              max(1, pool_segments // config.optim.batch_size))
    learned_on = trainer.model.config
    inverse = MelInverse(InverseConfig("vocoder-pghi", learned_on["iterations"], learned_on["retrieval"]), transform,
                         vocoder)
    with torch.no_grad():
        pool = RetrievedPool(retrieve(inverse, train_set.crops(
            train_set.crop_starts(pool_segments, torch.Generator().manual_seed(config.optim.seed)))), train_set.origin)
        valid = retrieve(inverse, held_out.spread(64, segment))
        untrained = PhaseRefiner.from_config(learned_on)
        unrefined = {name: float(value) for name, value in refiner_losses(
            untrained, valid.magnitude, valid.phase, valid.wave, transform).items()}
    check = (RefinerCheck(held_out.spread(config.audio_eval_clips, transform.clip_samples), inverse)
             if config.audio_eval_clips else None)
    params = sum(p.numel() for p in trainer.model.parameters())
    print(f"Training a phase refiner ({params} parameters) for {config.vocoder} after PGHI + "
          f"{learned_on['retrieval'].upper()}-{learned_on['iterations']}, on "
          f"a pool of {len(pool)} segments of {segment_frames} frames of {train_set.origin}; unseen: "
          f"{held_out.origin} (unrefined: MR-STFT {unrefined['stft']:.4f}, mel L1 {unrefined['mel']:.4f}); "
          f"{steps_per_epoch(pool, config.optim.batch_size)} steps/epoch of {config.optim.batch_size}, device "
          f"{config.device}")
    if config.optim.resume:
        print(f"Resuming {config.vocoder}'s refiner at {position.where()}")
    board = Board(config.results_dir / "tensorboard" / "refiner")

    def evaluate(epoch):
        record = {"valid": trainer.validation_losses(valid), "valid_unrefined": unrefined}
        if check is not None and milestone(epoch, config.optim.epochs, config.eval_every):
            record["audio"] = check(trainer.model)
            board.audio("refiner/unseen_clip", check.voiced[0], epoch, transform.sample_rate)
        return record

    def announce(record):
        board.record(record, record["epoch"])
        line = (f"epoch {record['epoch']:3d}/{config.optim.epochs}  loss {record['train_loss']:.4f}  unseen: MR-STFT "
                f"{record['valid']['stft']:.4f} ({unrefined['stft']:.4f} unrefined)  {record['train_seconds']:.0f} s")
        if "audio" in record:
            a = record["audio"]
            fmt = lambda value, spec: "n/a" if value is None else format(value, spec)  # noqa: E731
            line += (f"\n    unseen clips: PESQ {fmt(a['pesq'], '.2f')} ({fmt(a['reference_pesq'], '.2f')} unrefined), "
                     f"STOI {fmt(a['stoi'], '.3f')} ({fmt(a['reference_stoi'], '.3f')})")
        print(line, flush=True)
        plot_refiner_curves(position.history, config.results_dir / "refiner_training.png", train_set.origin)

    fingerprint = weights_fingerprint(vocoder_state["model"])  # the vocoder is frozen: hashed once a run

    def save():
        atomic_torch_save({**vocoder_state, "refiner": refiner_record(
            trainer, config, position, fingerprint, pool_segments, segment_frames)}, config.vocoder)

    with contextlib.closing(board):
        fit(trainer, pool, position, config.optim, checkpoint=config.vocoder, evaluate=evaluate, announce=announce,
            save=save)
    print(f"Saved the phase refiner into {config.vocoder}; use it with --inverse vocoder-refined --vocoder "
          f"{config.vocoder}")
    return position.history
