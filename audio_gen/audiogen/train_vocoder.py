"""The train_vocoder command: a vocoder (vocoder.py) fitted to the music it will voice. Each step crops random
segments of the training recordings, takes their log-mel and one AdamW step of the regression losses between
the vocoder's output and the segment. A checkpoint after each epoch and on Ctrl-C; --resume continues at the
exact step. Every `eval_every` epochs, unseen 5-s clips are voiced from their true mel and scored (PESQ/STOI)
beside the deterministic inverse (NNLS + PGHI + RAAR)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import (VOCODER_FORMAT, VOCODER_VERSION, data_record, load_checkpoint, load_vocoder_checkpoint,
                         model_from_checkpoint, rng_state, set_rng_state, weights_fingerprint)
from .common import Board, World, atomic_torch_save, usage_error
from .inverse import InverseConfig, MelInverse
from .metrics import paired_speech_scores
from .model import reconstruct
from .plots import plot_vocoder_curves
from .trainer import Optimisation, Position, fit, milestone, steps_per_epoch
from .transform import LogMelTransform, compute_normalization
from .vocoder import Vocoder, vocoder_losses
from .waves import wave_splits

# How much each loss counts (vocoder.vocoder_losses): the magnitude's three, then the phase's (waveform losses
# and APNet's phase losses), whose gradients reach only the phase.
LOSS_WEIGHTS = {"magnitude": 1.0, "convergence": 1.0, "mel_consistency": 1.0, "phase": 0.3, "mel": 1.0, "stft": 1.0}


@dataclass(frozen=True)
class VocoderShape:
    """The network's width and depth (vocoder.Vocoder)."""
    dim: int = 256
    intermediate: int = 768
    blocks: int = 8


@dataclass(frozen=True)
class VocoderTrainConfig:
    """What the train_vocoder command reads: the music (`data`), the vocoder's file and shape, the optimisation
    (`optim`), the segment length in frames (`segment_frames`: (frames - 1) * hop samples per training crop), and
    `decoder`: an autoencoder or VAE checkpoint whose reconstructions make half of each batch's input mels (None:
    the true mels only)."""
    data: object
    checkpoint: Path
    shape: VocoderShape
    optim: Optimisation
    eval_every: int
    results_dir: Path
    device: torch.device
    command_line: dict = field(default_factory=dict)
    segment_frames: int = 48
    audio_eval_clips: int = 4
    decoder: Path | None = None


class VocoderTrainer:
    """Training state: the vocoder, AdamW (betas 0.8 / 0.9, as Vocos), the schedule, gradient clipping and the
    step count. `train_step` has AudioTrainer's signature, so trainer.run_epoch drives it; it reports the total
    loss and the part named `REPORTED` (train_refiner.RefinerTrainer changes `losses` and that)."""

    REPORTED = "phase"

    def __init__(self, vocoder, transform, device, schedule, grad_clip=1.0, decoder=None, betas=(0.8, 0.9)):
        self.model = vocoder.to(device)
        self.decoder = decoder  # an autoencoder whose reconstructions make half of each batch's input, or None
        self.transform, self.device, self.schedule, self.grad_clip = transform, device, schedule, grad_clip
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=schedule(0), betas=betas, weight_decay=0.01)
        self.world = World()
        self.step = 0

    def losses(self, waves):
        """{name: scalar loss} and the weighted total for (b, samples) waveforms."""
        waves = waves.to(self.device)
        target = self.transform(waves)
        inputs = target
        if self.decoder is not None:  # the first half as the decoder gives it; the targets stay the real audio
            half = len(waves) // 2
            inputs = torch.cat([reconstruct(self.decoder, target[:half]), target[half:]])
        parts = vocoder_losses(self.model, inputs, waves, self.transform, target)
        return parts, sum(LOSS_WEIGHTS[name] * value for name, value in parts.items())

    def train_step(self, waves):
        """One AdamW step on a batch ((batch, samples) waveforms); on device, (2,): the total loss and the
        REPORTED one."""
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule(self.step)
        parts, loss = self.losses(waves)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.step += 1
        return torch.stack([loss.detach(), parts[self.REPORTED].detach()])

    def share(self, rows):
        return rows  # one process: the whole batch

    @torch.no_grad()
    def validation_losses(self, waves, batch_size=16):
        """{name: mean loss} over fixed unseen segments ((n, samples) waveforms, or what `losses` takes)."""
        self.model.eval()
        sums = {}
        for i in range(0, len(waves), batch_size):
            parts, total = self.losses(waves[i:i + batch_size])
            for name, value in {**parts, "total": total}.items():
                sums[name] = sums.get(name, 0.0) + float(value) * len(waves[i:i + batch_size])
        return {name: value / len(waves) for name, value in sums.items()}

    def state_dict(self):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "step": self.step}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step = state["step"]


class AudioCheck:
    """PESQ/STOI of fixed unseen 5-s clips voiced from their true mel, by the vocoder and by its magnitude with
    PGHI's phase, beside the deterministic inverse (computed once)."""

    def __init__(self, clips, transform):
        self.clips, self.transform = clips, transform
        self.log_mels = transform(clips).cpu()
        self.reference = MelInverse(InverseConfig("pghi"), transform)(self.log_mels)
        self.voiced = None  # the vocoder's clips at the last check

    @torch.no_grad()
    def __call__(self, vocoder):
        """{'clips', and for the vocoder ('') and its magnitude with PGHI's phase ('magnitude_pghi_'): 'pesq',
        'stoi' and the deterministic inverse's 'reference_pesq', 'reference_stoi' on the same clips}."""
        vocoder.eval()
        record = {"clips": len(self.clips)}
        for kind, prefix in (("vocoder", ""), ("vocoder-pghi", "magnitude_pghi_")):
            audio = MelInverse(InverseConfig(kind), self.transform, vocoder)(self.log_mels)
            if kind == "vocoder":
                self.voiced = audio  # the last check's clips, for TensorBoard
            scores = paired_speech_scores(self.clips, audio, self.reference, self.transform.sample_rate)
            record.update({f"{prefix}pesq": scores["pesq"], f"{prefix}stoi": scores["stoi"],
                           f"{prefix}reference_pesq": scores["oracle_pesq"],
                           f"{prefix}reference_stoi": scores["oracle_stoi"]})
        return record


def score_line(audio):
    """The AudioCheck record as one line; 'n/a' where PESQ or STOI is undefined on every clip."""
    fmt = lambda value, spec: "n/a" if value is None else format(value, spec)  # noqa: E731
    return (f"PESQ {fmt(audio['pesq'], '.2f')} (NNLS + PGHI {fmt(audio['reference_pesq'], '.2f')}), with PGHI's "
            f"phase {fmt(audio['magnitude_pghi_pesq'], '.2f')} ({fmt(audio['magnitude_pghi_reference_pesq'], '.2f')}); "
            f"STOI {fmt(audio['stoi'], '.3f')} ({fmt(audio['reference_stoi'], '.3f')}), with PGHI's phase "
            f"{fmt(audio['magnitude_pghi_stoi'], '.3f')} ({fmt(audio['magnitude_pghi_reference_stoi'], '.3f')})")


def load_decoder(path, transform, segment_frames, device):
    """(the autoencoder at `path`, in eval mode; its record for the vocoder's checkpoint). It must read the
    vocoder's features and take its segments whole (their frames a multiple of its time downsampling)."""
    state = load_checkpoint(path)
    if state["transform_config"] != transform.config:
        usage_error(f"--vocoder_decoder {path} reads other features ({state['transform_config']}) than the "
                    f"vocoder ({transform.config})")
    model = model_from_checkpoint(state, device).requires_grad_(False)
    if segment_frames % model.config["time_downsample"]:
        usage_error(f"--segment_frames {segment_frames} must be a multiple of {path}'s time downsampling "
                    f"({model.config['time_downsample']})")
    return model, {"checkpoint": str(path), "epoch": state["epoch"], "fingerprint": weights_fingerprint(state["model"])}


def check_same_decoder(state, record, path):
    """A resumed run goes on with the decoder it started with, or with none if it had none."""
    before = state.get("decoder")
    if (before is None) != (record is None) or (before and before["fingerprint"] != record["fingerprint"]):
        said = f"the decoder {before['checkpoint']} (epoch {before['epoch']})" if before else "no decoder"
        usage_error(f"{path} was trained with {said}: resume it with the same --vocoder_decoder")


def vocoder_checkpoint(trainer, transform, config, segment_frames, epoch, progress, history, decoder=None):
    """Everything to voice mels (config, weights with the mel statistics, the transform it is made for) and to
    resume exactly (the segment length with the rest)."""
    return {"format": VOCODER_FORMAT, "version": VOCODER_VERSION, "vocoder_config": dict(trainer.model.config),
            "transform_config": transform.config, "segment_frames": segment_frames, **trainer.state_dict(),
            "epoch": epoch, "partial_epoch": progress,
            "rng": rng_state(), "history": history, "data": data_record(config.data),
            "args": dict(config.command_line), "decoder": decoder}


def start(config, transform, splits, state, decoder=None):
    """A VocoderTrainer: new, or from the resumed checkpoint's `state`; `decoder`: see VocoderTrainer."""
    torch.manual_seed(config.optim.seed)
    if state:
        vocoder = Vocoder(**state["vocoder_config"])
    else:
        vocoder = Vocoder(n_mels=transform.n_mels, n_fft=transform.n_fft, hop_length=transform.hop_length,
                          sample_rate=transform.sample_rate, **vars(config.shape))
        if config.checkpoint.exists():
            print(f"note: starting a new vocoder; {config.checkpoint} will be overwritten (use --resume to continue it)")
        sample = splits["train"].spread(256, transform.clip_samples)
        vocoder.set_statistics(*compute_normalization(transform(sample).cpu().transpose(0, 1).flatten(1)))
    steps = steps_per_epoch(splits["train"], config.optim.batch_size)
    trainer = VocoderTrainer(vocoder, transform, config.device,
                             config.optim.schedule(steps),
                             decoder=decoder)
    if state:
        trainer.load_state_dict(state)
        trainer.schedule.extend(config.optim.epochs * steps, trainer.step)
        set_rng_state(state["rng"])
    return trainer


def train_vocoder(config):
    """Train as `config` (a VocoderTrainConfig) says; the history of epoch records."""
    torch.set_flush_denormal(True)
    state = load_vocoder_checkpoint(config.checkpoint) if config.optim.resume else None
    transform = (LogMelTransform.from_config(state["transform_config"], config.device) if state
                 else LogMelTransform(device=config.device))
    # A resumed run keeps its segments: they set the epoch's length and its crops.
    segment_frames = state["segment_frames"] if state else config.segment_frames
    if segment_frames != config.segment_frames:
        print(f"note: --segment_frames {config.segment_frames} ignored: {config.checkpoint} trains on segments of "
              f"{segment_frames} frames")
    segment = (segment_frames - 1) * transform.hop_length
    splits = wave_splits(config.data, transform, segment)
    train_set = splits["train"]
    held_out = splits["valid"] if len(splits["valid"]) else train_set
    if not len(train_set):
        raise SystemExit(f"error: no training audio in {train_set.origin}")
    decoder, decoder_record = (load_decoder(config.decoder, transform, segment_frames, config.device)
                               if config.decoder else (None, None))
    if state:
        check_same_decoder(state, decoder_record, config.checkpoint)
    trainer = start(config, transform, splits, state, decoder)
    position = Position(state["epoch"], state["partial_epoch"], state["history"]) if state else Position()
    if config.optim.done(position.epoch, config.checkpoint):
        return position.history
    if state and state.get("refiner"):
        print(f"note: {config.checkpoint}'s phase refiner was trained for the weights this run changes: it is "
              f"dropped; train it again with --mode train_refiner")
    valid_waves = held_out.spread(64, segment)
    check = AudioCheck(held_out.spread(config.audio_eval_clips, transform.clip_samples), transform) \
        if config.audio_eval_clips else None
    steps = steps_per_epoch(train_set, config.optim.batch_size)
    params = sum(p.numel() for p in trainer.model.parameters()) / 1e6
    print(f"Training a vocoder ({params:.2f}M parameters) on {len(train_set)} segments of {segment_frames} "
          f"frames ({segment / transform.sample_rate:.2f} s) of {train_set.origin}; unseen: {held_out.origin}; "
          f"{steps} steps/epoch of {config.optim.batch_size}, device {config.device}")
    if state:
        print(f"Resuming {config.checkpoint} at {position.where()}")
    curves = config.results_dir / "vocoder_training.png"
    board = Board(config.results_dir / "tensorboard" / "vocoder")

    def evaluate(epoch):
        record = {"valid": trainer.validation_losses(valid_waves)}
        if check is not None and milestone(epoch, config.optim.epochs, config.eval_every):
            record["audio"] = check(trainer.model)
            board.audio("vocoder/unseen_clip", check.voiced[0], epoch, transform.sample_rate)
        return record

    def announce(record):
        board.record(record, record["epoch"])
        line = (f"epoch {record['epoch']:3d}/{config.optim.epochs}  loss {record['train_loss']:.4f}  unseen: mel L1 "
                f"{record['valid']['mel']:.4f}, phase {record['valid']['phase']:.3f}  {record['train_seconds']:.0f} s")
        if "audio" in record:
            line += f"\n    unseen clips: {score_line(record['audio'])}"
        print(line, flush=True)
        plot_vocoder_curves(position.history, curves, train_set.origin)

    def save():
        atomic_torch_save(vocoder_checkpoint(trainer, transform, config, segment_frames, position.epoch,
                                             position.progress, position.history, decoder_record), config.checkpoint)

    with contextlib.closing(board):
        fit(trainer, train_set, position, config.optim, checkpoint=config.checkpoint, evaluate=evaluate,
            announce=announce, save=save)
    print(f"Saved the vocoder to {config.checkpoint}; use it with --inverse vocoder --vocoder {config.checkpoint}")
    return position.history
