"""The generate command: new music from a VAE checkpoint. Latents drawn from the N(0, I) prior (or from a learned
prior, prior.py) are decoded to log-mels and turned into audio by a MelInverse (inverse.py); given a folder of real
music, the samples are scored against it beside the references that give the scores a meaning (real music, the
oracle: real mels through the same inverse, shaped noise),
and each sample's distance to its nearest training window tells whether it copies."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .audio_io import write_wav
from .checkpoint import (load_checkpoint, load_inverse, load_prior_checkpoint, model_from_checkpoint,
                         prior_from_checkpoint, require_vae)
from .common import checkpoint_name, progress_bar, read_json, write_json_atomic
from .data import DataConfig, build_splits, training_splits
from .fad import frechet_distance, make_embedding
from .inverse import InverseConfig, MelInverse
from .metrics import spread_positions
from .model import decode_latents
from .plots import plot_spectrogram_grid
from .prior import SamplerConfig, sample_latents
from .transform import LogMelTransform


@dataclass(frozen=True)
class GenerateConfig:
    """What the generate command reads. `reference`: a folder of real music to score the samples against
    (None: no scores); `cache_dir`: where log-mels of that folder and of the training data are cached;
    `embeddings`: the FAD embeddings to score in (fad.EMBEDDINGS); `vggish_weights`: the VGGish file (None:
    torch.hub); `prior`: a learned prior's checkpoint (None: N(0, I)), sampled as `sampler` says."""
    checkpoint: Path
    results_dir: Path
    device: torch.device
    num_samples: int
    seed: int
    inverse: InverseConfig
    cache_dir: Path
    reference: DataConfig | None = None
    embeddings: tuple = ("aisfx", "mel-frames")
    vggish_weights: Path | None = None
    prior: Path | None = None
    sampler: SamplerConfig = SamplerConfig()


def sample_prior(model, count, frames, seed):
    """(count, latent_dim, latent frames) latents from N(0, I), clip i drawn i-th from one generator seeded
    with `seed`: the same seed gives the same clips, and a larger count only adds clips."""
    generator = torch.Generator().manual_seed(seed)
    shape = model.latent_shape(frames)
    return torch.stack([torch.randn(shape, generator=generator) for _ in range(count)])




def shaped_noise_log_mels(model, count, frames):
    """The naive baseline: stationary noise with the training music's mean log-mel spectrum (the model's
    per-bin mean, held over time), (count, n_mels, frames); Griffin-Lim's random phase makes it noise."""
    return model.mel_mean.cpu()[None, :, None].expand(count, -1, frames).clone()


def to_audio(inverse, log_mels, seed, desc):
    """(n, n_mels, frames) log-mels -> (n, clip_samples) audio by the MelInverse `inverse`, one clip at a time (so
    that clip i never depends on n; a random-phase inverse starts clip i from the phase seed + i draws), with progress."""
    parts = [inverse(log_mels[i:i + 1], seed + i) for i in progress_bar(range(len(log_mels)), desc, unit="clips")]
    return torch.cat(parts) if parts else torch.zeros(0, inverse.transform.clip_samples)


def draw_clips(model, inverse, count, seed, desc="to audio", prior=None, sampler=SamplerConfig()):
    """`count` clips from the N(0, I) prior, or from the learned `prior` run as `sampler` says: ((count, n_mels,
    frames) log-mels, (count, clip_samples) audio) on the CPU. Sampled, decoded and inverted one clip at a
    time, because a batched convolution may round differently with the batch's size and clip i must not
    depend on `count`: the command, the demo and the API agree. `inverse`: the MelInverse that voices them."""
    transform = inverse.transform
    frames = model.latent_shape(transform.frames)[1]
    latents = (sample_prior(model, count, transform.frames, seed) if prior is None
               else sample_latents(prior, count, frames, seed, sampler,
                                   lambda clips: progress_bar(clips, f"learned prior, {sampler.name}", unit="clips")))
    return decoded_clips(model, inverse, latents, seed, desc)


def decoded_clips(model, inverse, latents, seed, desc="to audio"):
    """(n, latent_dim, latent frames) latents -> ((n, n_mels, frames) log-mels, (n, clip_samples) audio) on the
    CPU, decoded and inverted one clip at a time (see draw_clips)."""
    log_mels = decode_latents(model, latents, batch_size=1).cpu()
    return log_mels, to_audio(inverse, log_mels, seed, desc)


def level_dbfs(audio):
    """(n, samples) -> (n,) RMS level in dB relative to full scale."""
    return 20 * torch.log10(audio.pow(2).mean(dim=1).sqrt().clamp(min=1e-10))


# --- scores against real music ------------------------------------------------------------------

def real_halves(reference, transform, count, trained_on=None):
    """Two disjoint sets of `count` real clips (each (count, clip_samples)) spread over the scoring windows
    of the folder's music the model never heard, and where they come from: the first is what every row is
    scored against, the second the real-against-real floor. Fewer clips when there are fewer than 2 * count
    windows. Unheard music: an unsplit folder whole, but the test split of a folder with train/valid/test
    subfolders or of the folder the model trained on (`trained_on`, its resolved path as the checkpoint
    records it)."""
    same_folder = trained_on is not None and str(Path(reference.audio_dir).resolve()) == trained_on
    clips = build_splits(reference, transform, whole_folder=not same_folder)["test"]
    if len(clips) < 4:
        raise SystemExit(f"error: {clips.origin} holds {len(clips)} usable 5-s windows; scoring needs at least 4")
    positions = spread_positions(len(clips), min(2 * count, len(clips) - len(clips) % 2))
    waves = clips.waveforms(positions)
    return waves[0::2], waves[1::2], clips.origin


ORACLE_ROW = "real through the mel (oracle)"


def scored_rows(inverse, model, floor, samples, seed):
    """{row: (n, clip_samples) waveforms} of one table: the `floor` clips (real music), the same through their
    mel and the MelInverse `inverse` (the oracle), the {name: waveforms} of `samples`, and stationary noise with
    `model`'s mean training spectrum (the naive ceiling). The noise always takes Griffin-Lim's random phase: from
    a constant spectrum a deterministic phase would make a steady chord, not noise."""
    transform = inverse.transform
    random_phase = MelInverse(InverseConfig("griffinlim", inverse.config.iterations), transform)
    return {"real music (floor)": floor,
            ORACLE_ROW: to_audio(inverse, transform(floor).cpu(), seed, "oracle"),
            **samples,
            "shaped noise": to_audio(random_phase, shaped_noise_log_mels(model, len(floor), transform.frames), seed,
                                     "shaped noise")}


def frechet_table(rows, reference_waves, embedders, sample_rate):
    """{row: {embedding: Frechet distance to the reference clips}} for {row: (n, samples) waveforms}."""
    table = {name: {} for name in rows}
    for embedder in embedders:
        reference = embedder(reference_waves, sample_rate)
        for name, waves in rows.items():
            table[name][embedder.name] = frechet_distance(embedder(waves, sample_rate), reference)
    return table


def format_table(table, counts):
    """The Frechet table as aligned text lines, one row per set."""
    embeddings = list(next(iter(table.values())))
    lines = [f"{'':32s}" + "".join(f"{e:>14s}" for e in embeddings)]
    for name, row in table.items():
        lines.append(f"{name + f' (N={counts[name]})':32s}" + "".join(f"{row[e]:14.3f}" for e in embeddings))
    return lines


# --- memorisation -----------------------------------------------------------------------------

@torch.no_grad()
def nearest_window_distances(log_mels, corpus, model, hop=16, chunk=512):
    """For each (n, n_mels, frames) log-mel, the RMS distance (normalised log-mel units) to the nearest
    window of the same length among every crop of the MelClips `corpus` starting `hop` frames apart: (n,)."""
    queries = model.normalize(log_mels.float().to(model.mel_mean.device)).flatten(1)
    best = torch.full((len(queries),), math.inf, device=queries.device)
    frames = log_mels.shape[-1]
    for r in range(len(corpus.recordings)):
        start, end = int(corpus.offsets[r]), int(corpus.offsets[r + 1])
        if end - start < frames:
            continue
        recording = model.normalize(corpus.log_mels[:, start:end].float().to(queries.device))
        windows = recording.unfold(1, frames, hop).permute(1, 0, 2).flatten(1)  # (crops, n_mels * frames)
        for i in range(0, len(windows), chunk):
            best = torch.minimum(best, torch.cdist(queries, windows[i:i + chunk]).amin(dim=1))
    return (best / math.sqrt(queries.shape[1])).cpu()


def distance_summary(distances):
    """Quantiles of (n,) distances."""
    q = torch.quantile(distances.double(), torch.tensor([0.0, 0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    return {"n": len(distances), "min": q[0], "p10": q[1], "median": q[2], "p90": q[3]}


def memorisation(samples, unseen, state, model, transform, cache_dir):
    """Each sample's distance to its nearest training window beside the same for unseen real clips; None
    when the training data is not on this machine any more."""
    splits = training_splits(state["data"], transform, cache_dir)
    if splits is None or not len(splits["train"]):
        print("Memorisation check skipped: the training data the checkpoint names is not here.")
        return None
    if unseen is None:
        held_out = splits["test"] if len(splits["test"]) else splits["valid"]
        unseen = held_out.clips(spread_positions(len(held_out), len(samples))) if len(held_out) else None
    print(f"Distances to the nearest of every training window (hop 16 frames) in {splits['train'].origin} ...",
          flush=True)
    result = {"training": splits["train"].origin, "units": "RMS distance, normalised log-mel (per-bin z-scores)",
              "samples": distance_summary(nearest_window_distances(samples, splits["train"], model))}
    if unseen is not None and len(unseen):
        result["unseen_real"] = distance_summary(nearest_window_distances(unseen, splits["train"], model))
    return result


# --- the command --------------------------------------------------------------------------------

def write_samples(audio, log_mels, results, title, rate):
    """generated_000.wav ... and generated_spectrograms.png (up to 16 clips) in `results`."""
    results.mkdir(parents=True, exist_ok=True)
    for old in results.glob("generated_[0-9]*.wav"):
        old.unlink()  # a run with fewer samples must not leave stale files behind
    names = [f"generated_{i:03d}.wav" for i in range(len(audio))]
    for name, clip in zip(names, audio):
        write_wav(results / name, clip, rate)
    shown = min(16, len(log_mels))
    plot_spectrogram_grid(log_mels[:shown], names[:shown], results / "generated_spectrograms.png", title)
    return names


def score_samples(config, state, model, inverse, audio, count):
    """Frechet distances of the samples and of the reference rows against real clips of `config.reference`;
    also returns the real clips' log-mels (the unseen clips of the memorisation check)."""
    transform = inverse.transform
    reference, floor, origin = real_halves(config.reference, transform, count, state["data"]["audio_dir"])
    n = len(reference)
    print(f"Scoring {min(n, len(audio))} samples against {n} real clips of {origin} "
          f"({', '.join(config.embeddings)}) ...", flush=True)
    rows = scored_rows(inverse, model, floor, {"generated": audio[:n]}, config.seed)
    embedders = [make_embedding(name, transform, config.device, config.vggish_weights) for name in config.embeddings]
    table = frechet_table(rows, reference, embedders, transform.sample_rate)
    counts = {name: len(waves) for name, waves in rows.items()}
    for line in format_table(table, counts):
        print("  " + line)
    return {"against": origin, "reference_clips": n, "clips": counts, "frechet": table,
            "embeddings": list(config.embeddings)}, transform(reference).cpu()


def load_learned_prior(path, vae_state, vae_path, sampler, device):
    """(the learned prior in `path`, checked to belong to the VAE of `vae_state` (from `vae_path`), or None when
    `path` is None; the prior's name, with the `sampler` it runs). The command, the demo and the API load it so."""
    if path is None:
        return None, "N(0, I)"
    prior_state = load_prior_checkpoint(path, vae_state, vae_path)
    name = f"learned prior {checkpoint_name(path)} (epoch {prior_state['epoch']}, {sampler.name})"
    return prior_from_checkpoint(prior_state, device), name


def generate(config):
    """Generate as `config` (a GenerateConfig) says: WAVs and their spectrograms, then scores in metrics.json."""
    state = load_checkpoint(config.checkpoint)
    require_vae(state, config.checkpoint, "generate")
    transform = LogMelTransform.from_config(state["transform_config"], config.device)
    inverse = load_inverse(config.inverse, transform)
    model = model_from_checkpoint(state, config.device)
    prior, prior_name = load_learned_prior(config.prior, state, config.checkpoint, config.sampler, config.device)
    latent = model.latent_shape(transform.frames)
    print(f"Generating {config.num_samples} clips from the {prior_name} ({latent[0]} x {latent[1]} latents, "
          f"seed {config.seed}), {inverse.name} ...", flush=True)
    log_mels, audio = draw_clips(model, inverse, config.num_samples, config.seed, prior=prior, sampler=config.sampler)
    title = "Prior samples" if prior is None else "Learned-prior samples"
    names = write_samples(audio, log_mels, config.results_dir,
                          f"{title} of {config.checkpoint.name} (seed {config.seed})", transform.sample_rate)
    print(f"Wrote {len(names)} WAVs and generated_spectrograms.png to {config.results_dir}", flush=True)
    result = {"checkpoint": str(config.checkpoint), "epoch": state["epoch"], "seed": config.seed,
              "num_samples": config.num_samples, "latent_shape": list(latent), "prior": prior_name,
              "inverse": inverse.name, "griffin_lim_iters": config.inverse.iterations,
              "samples": [{"file": n, "level_dbfs": round(float(d), 2)} for n, d in zip(names, level_dbfs(audio))]}
    unseen = None
    if config.reference is not None:
        result["scores"], unseen = score_samples(config, state, model, inverse, audio, config.num_samples)
    result["memorisation"] = memorisation(log_mels, unseen, state, model, transform, config.cache_dir)
    if result["memorisation"]:
        m = result["memorisation"]
        line = f"Nearest training window: samples median {m['samples']['median']:.3f} (min {m['samples']['min']:.3f})"
        if "unseen_real" in m:
            line += f", unseen real clips median {m['unseen_real']['median']:.3f} (min {m['unseen_real']['min']:.3f})"
        print(line)
    metrics = read_json(config.results_dir / "metrics.json")
    metrics["generate"] = result
    write_json_atomic(metrics, config.results_dir / "metrics.json")
    print(f"Scores written to {config.results_dir / 'metrics.json'}")
    return result
