"""The infer command: reconstruct held-out music with a trained checkpoint. The example WAVs and their
spectrogram plot come first, so a first run shows results early; the scores of whole splits follow."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .audio_io import write_wav
from .checkpoint import load_checkpoint, load_inverse, model_from_checkpoint
from .common import read_json, write_json_atomic
from .data import DataConfig, build_splits
from .inverse import InverseConfig
from .metrics import AudioEvaluator, evaluate, spread_positions
from .plots import plot_spectrograms
from .transform import LogMelTransform


@dataclass(frozen=True)
class InferConfig:
    """What the infer command reads; the model and its features come from the checkpoint."""
    data: DataConfig
    checkpoint: Path
    results_dir: Path
    device: torch.device
    num_examples: int
    seed: int
    inverse: InverseConfig
    audio_eval_clips: int


def infer_splits(data, state, transform):
    """What infer scores: a folder the model trained on gives its test split; any other unsplit folder is
    scored whole; MUSDB18 gives its test subset. Training clips are scored too when they are at hand."""
    trained_on = state["data"]["audio_dir"]
    same_folder = data.audio_dir is not None and trained_on == str(Path(data.audio_dir).resolve())
    return build_splits(data, transform, whole_folder=data.audio_dir is not None and not same_folder)


def write_examples(model, test_set, positions, inverse, seed, results, title):
    """For the scoring windows at `positions`: WAV triples (original, reconstructed, oracle: the true mel through
    the same inverse) and inference_comparison.png in `results`; their PESQ/STOI and names."""
    print(f"Reconstructing {len(positions)} example clips ({inverse.name}) ...", flush=True)
    evaluator = AudioEvaluator(test_set.waveforms(positions), inverse, seed)
    scores, audio, reconstructed = evaluator(model)
    results.mkdir(parents=True, exist_ok=True)
    for old in results.glob("audio_*_[0-9]*.wav"):
        old.unlink()  # a run with fewer examples must not leave stale files behind
    rate = inverse.transform.sample_rate
    for n in range(len(positions)):
        write_wav(results / f"audio_original_{n}.wav", evaluator.reference[n], rate)
        write_wav(results / f"audio_reconstructed_{n}.wav", audio[n], rate)
        write_wav(results / f"audio_oracle_{n}.wav", evaluator.oracle_audio[n], rate)
    names = [test_set.describe(i) for i in positions]
    plot_spectrograms(evaluator.log_mels, reconstructed, names, results / "inference_comparison.png", title)
    print(f"Wrote {len(positions)} WAV triples (original, reconstructed, oracle) and "
          f"inference_comparison.png to {results}", flush=True)
    return {**scores, "names": names}


def infer(config):
    """Infer as `config` (an InferConfig) says: example outputs, then scores in metrics.json; the scores."""
    state = load_checkpoint(config.checkpoint)
    transform = LogMelTransform.from_config(state["transform_config"], config.device)
    inverse = load_inverse(config.inverse, transform)
    model = model_from_checkpoint(state, config.device)
    splits = infer_splits(config.data, state, transform)
    test_set = splits["test"]
    if len(test_set) == 0:
        raise SystemExit(f"error: no usable test clips in {test_set.origin} (5 s or longer, not silent)")
    examples = write_examples(model, test_set, spread_positions(len(test_set), config.num_examples), inverse,
                              config.seed, config.results_dir,
                              f"Unseen clips ({test_set.origin}) reconstructed by {config.checkpoint.name}")
    result = {**evaluate(model, inverse, splits, config.audio_eval_clips, config.seed,
                         by_source=config.data.audio_dir is None), "examples": examples}
    metrics = read_json(config.results_dir / "metrics.json")
    metrics["infer"] = {"checkpoint": str(config.checkpoint), "epoch": state["epoch"], "inverse": inverse.name,
                        "compression": model.compression, **result}
    write_json_atomic(metrics, config.results_dir / "metrics.json")
    print(f"Scores written to {config.results_dir / 'metrics.json'}")
    return metrics["infer"]
