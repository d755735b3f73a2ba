"""The benchmark command, on one device: data preparation (empty cache, then cached), training clips/s,
Griffin-Lim clips/s, and the Griffin-Lim oracle's PESQ/STOI and time against its iteration count."""
from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import DataConfig, build_splits
from .metrics import paired_speech_scores, require_speech_metrics, spread_positions
from .model import AudioAutoencoder, ModelConfig
from .musdb import detect_layout
from .trainer import AudioTrainer, CosineSchedule
from .transform import LogMelTransform


@dataclass(frozen=True)
class BenchmarkConfig:
    """What the benchmark command reads: the data to prepare (its cache is a fresh temporary folder),
    the model and batch to time, Griffin-Lim's iterations, and how many clips the oracle table scores."""
    data: DataConfig
    model: ModelConfig
    device: torch.device
    batch_size: int
    learning_rate: float
    griffin_lim_iters: int
    audio_eval_clips: int
    seed: int


def synchronize(device):
    """Wait for queued GPU work, so that a timer reads the work's end and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_preparation(data, transform, tag):
    """Prepare the splits twice in a fresh cache, printing both times; the splits."""
    with tempfile.TemporaryDirectory() as cache:
        fresh = dataclasses.replace(data, cache_dir=Path(cache))
        start = time.perf_counter()
        build_splits(fresh, transform)
        print(f"{tag} data preparation, empty cache: {time.perf_counter() - start:.1f}s")
        start = time.perf_counter()
        splits = build_splits(fresh, transform)
        print(f"{tag} data preparation, cached: {time.perf_counter() - start:.2f}s")
    return splits


def time_training(config, frames, tag):
    """Training clips/s of the configured model and batch on random log-mels."""
    device = config.device
    torch.manual_seed(0)
    model = AudioAutoencoder(**dataclasses.asdict(config.model))
    trainer = AudioTrainer(model, device, CosineSchedule(config.learning_rate, 100))
    batch = torch.randn(config.batch_size, config.model.n_mels, frames, device=device)
    trainer.train_step(batch)  # the first step allocates and, on a GPU, picks kernels: not timed
    synchronize(device)
    repeats = 20 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(repeats):
        trainer.train_step(batch)
    synchronize(device)
    print(f"{tag} training, batch {config.batch_size}, {model.compression:g}x compression: "
          f"{repeats * config.batch_size / (time.perf_counter() - start):.0f} clips/s")


def time_griffin_lim(config, frames, tag):
    """Griffin-Lim clips/s at the configured iteration count, on random log-mels."""
    device = config.device
    inverse = LogMelTransform(n_mels=config.model.n_mels, griffin_lim_iters=config.griffin_lim_iters, device=device)
    n = 64 if device.type == "cuda" else 8
    inverse.invert(torch.randn(n, config.model.n_mels, frames, device=device))  # warm-up, not timed
    synchronize(device)
    start = time.perf_counter()
    inverse.invert(torch.randn(n, config.model.n_mels, frames, device=device))
    synchronize(device)
    print(f"{tag} Griffin-Lim ({config.griffin_lim_iters} iterations, batch {n}): "
          f"{n / (time.perf_counter() - start):.1f} clips/s")


def griffin_lim_table(splits, config, tag, iterations=(32, 64, 128, 256)):
    """Oracle PESQ/STOI (true mel through Griffin-Lim) and time per clip against the iteration count."""
    require_speech_metrics()
    held_out = splits["test"] if len(splits["test"]) else splits["valid"] if len(splits["valid"]) else splits["train"]
    positions = spread_positions(len(held_out), config.audio_eval_clips)
    reference = held_out.waveforms(positions)
    print(f"{tag} Griffin-Lim oracle on {len(positions)} clips of {held_out.origin}:")
    for n_iter in iterations:
        transform = LogMelTransform(n_mels=config.model.n_mels, griffin_lim_iters=n_iter, device=config.device)
        log_mels = transform(reference)
        torch.manual_seed(config.seed)
        start = time.perf_counter()
        audio = transform.invert(log_mels)
        synchronize(config.device)
        seconds = (time.perf_counter() - start) / len(positions)
        scores = paired_speech_scores(reference, audio, audio, transform.sample_rate)
        pesq = "n/a" if scores["pesq"] is None else f"{scores['pesq']:.2f}"
        print(f"{tag}   {n_iter:4d} iterations: PESQ {pesq}  STOI {scores['stoi']:.3f}  {seconds * 1000:.0f} ms/clip")


def benchmark(config):
    """Run every measurement on `config.device`, each printed on a line that names the device."""
    torch.set_flush_denormal(True)  # as in training: denormals would make CPU steps much slower
    tag = f"[{config.device}]"
    transform = LogMelTransform(n_mels=config.model.n_mels, device=config.device)
    splits = None
    if config.data.audio_dir is not None or detect_layout(config.data.musdb_root):
        splits = time_preparation(config.data, transform, tag)
    else:
        print(f"{tag} (no data in {config.data.musdb_root}: preparation and the Griffin-Lim table are not measured)")
    time_training(config, transform.frames, tag)
    time_griffin_lim(config, transform.frames, tag)
    if splits is not None and config.audio_eval_clips:
        griffin_lim_table(splits, config, tag)
