"""The benchmark command, on one device: data preparation (empty cache, then cached), training clips/s, the
inverse's clips/s, and the oracle's PESQ/STOI and time for each inverse (inverse.py)."""
from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_inverse
from .data import DataConfig, build_splits
from .inverse import InverseConfig
from .metrics import paired_speech_scores, require_speech_metrics, spread_positions
from .model import AudioAutoencoder, ModelConfig
from .musdb import detect_layout
from .trainer import AudioTrainer, CosineSchedule
from .transform import LogMelTransform


@dataclass(frozen=True)
class BenchmarkConfig:
    """What the benchmark command reads: the data to prepare (its cache is a fresh temporary folder),
    the model and batch to time, the inverse to time, and how many clips the oracle table scores."""
    data: DataConfig
    model: ModelConfig
    device: torch.device
    batch_size: int
    learning_rate: float
    inverse: InverseConfig
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


def time_inverse(config, transform, tag):
    """Clips/s of the configured inverse (log-mel -> audio) on random log-mels, one clip at a time as it runs."""
    inverse = load_inverse(config.inverse, transform)
    n = 8
    log_mels = torch.randn(n, transform.n_mels, transform.frames, generator=torch.Generator().manual_seed(0)) - 4
    inverse(log_mels[:1])  # warm-up, not timed
    synchronize(config.device)
    start = time.perf_counter()
    inverse(log_mels)
    synchronize(config.device)
    print(f"{tag} {inverse.name}: {n / (time.perf_counter() - start):.1f} clips/s")


def inverse_table(splits, config, transform, tag):
    """Oracle PESQ/STOI (the true mel through each inverse) and time per clip: the random-phase chain, the
    deterministic one with fast Griffin-Lim and with RAAR at several iteration counts, and the vocoder when
    --inverse vocoder names one."""
    require_speech_metrics()
    held_out = splits["test"] if len(splits["test"]) else splits["valid"] if len(splits["valid"]) else splits["train"]
    positions = spread_positions(len(held_out), config.audio_eval_clips)
    reference = held_out.waveforms(positions)
    log_mels = transform(reference).cpu()
    print(f"{tag} oracle (true mel -> audio) on {len(positions)} clips of {held_out.origin}:")
    rows = [InverseConfig("griffinlim", 64), InverseConfig("pghi", 64, "fgla")] + [InverseConfig("pghi", n)
                                                                                   for n in (32, 64, 128)]
    if config.inverse not in rows:  # the configured one, when the fixed rows do not hold it
        rows.append(config.inverse)
    for row in rows:
        inverse = load_inverse(row, transform)
        start = time.perf_counter()
        audio = inverse(log_mels, config.seed)
        synchronize(config.device)
        seconds = (time.perf_counter() - start) / len(positions)
        scores = paired_speech_scores(reference, audio, audio, transform.sample_rate)
        pesq = "n/a" if scores["pesq"] is None else f"{scores['pesq']:.2f}"
        print(f"{tag}   {inverse.name:42s} PESQ {pesq}  STOI {scores['stoi']:.3f}  {seconds * 1000:.0f} ms/clip")


def benchmark(config):
    """Run every measurement on `config.device`, each printed on a line that names the device."""
    torch.set_flush_denormal(True)  # as in training: denormals would make CPU steps much slower
    tag = f"[{config.device}]"
    transform = LogMelTransform(n_mels=config.model.n_mels, device=config.device)
    splits = None
    if config.data.audio_dir is not None or detect_layout(config.data.musdb_root):
        splits = time_preparation(config.data, transform, tag)
    else:
        print(f"{tag} (no data in {config.data.musdb_root}: preparation and the inverse table are not measured)")
    time_training(config, transform.frames, tag)
    time_inverse(config, transform, tag)
    if splits is not None and config.audio_eval_clips:
        inverse_table(splits, config, transform, tag)
