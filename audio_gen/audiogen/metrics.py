"""Scores: mel-spectrogram metrics against a time-average baseline, and wide-band PESQ (ITU-T P.862.2) and
STOI (Taal et al. 2011) of the audio beside the oracle (the true mel through the same inverse, inverse.py),
which separates the autoencoder's loss from the mel inversion's."""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .model import reconstruct


@torch.no_grad()
def mel_metrics(reconstruction, target, model):
    """Spectrogram scores of (n, n_mels, frames) log-mel reconstructions against their targets.

    mse, mae, cosine: on the normalised log-mel (the units of the loss; cosine per clip, averaged);
    mel_sc_score: 1 - spectral convergence of the mel magnitudes, 1 - ||M_hat - M||_F / ||M||_F,
    clipped to [0, 1] (what the design calls the "PESQ proxy": a spectrogram score, not PESQ);
    time_average_mse: the MSE of predicting each bin's mean over its clip, a floor any model must beat;
    baseline_ratio: time_average_mse / mse (how many times better than that floor).
    """
    if len(target) == 0:
        return {}
    target = target.float().to(reconstruction.device)
    x_hat, x = model.normalize(reconstruction.float()), model.normalize(target)
    diff = x_hat - x
    magnitude, magnitude_hat = target.exp(), reconstruction.float().exp()
    convergence = (magnitude_hat - magnitude).flatten(1).norm(dim=1) / magnitude.flatten(1).norm(dim=1)
    mse = diff.pow(2).mean().item()
    baseline = (x - x.mean(dim=-1, keepdim=True)).pow(2).mean().item()
    return {"clips": len(target), "mse": mse, "mae": diff.abs().mean().item(),
            "cosine": F.cosine_similarity(x_hat.flatten(1), x.flatten(1), dim=1).mean().item(),
            "mel_sc_score": (1 - convergence).clamp(0, 1).mean().item(),
            "time_average_mse": baseline, "baseline_ratio": baseline / max(mse, 1e-12)}


def require_speech_metrics():
    """PESQ and STOI come from the pesq and pystoi packages; without them scoring is an error, not a gap."""
    try:
        import pesq  # noqa: F401
        import pystoi  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"error: PESQ/STOI need the pesq and pystoi packages ({err}); "
                         f"pip install -r requirements.txt, or pass --audio_eval_clips 0")


def paired_speech_scores(reference, estimate, oracle, sample_rate):
    """Wide-band PESQ and STOI of the autoencoder's audio and of the oracle on the same clips.

    reference, estimate, oracle: (n, samples). A clip where either PESQ is undefined (PESQ refuses
    clips without an utterance-like signal) is left out of both means and counted in `pesq_undefined`.
    """
    from pesq import pesq as pesq_fn
    from pesq import PesqError
    from pystoi import stoi as stoi_fn

    rows = []
    for ref, est, ora in zip(reference.cpu().double().numpy(), estimate.cpu().double().numpy(),
                             oracle.cpu().double().numpy()):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # pystoi warns on (near-)silent clips
            try:
                pesq_pair = (pesq_fn(sample_rate, ref, est, "wb"), pesq_fn(sample_rate, ref, ora, "wb"))
            except PesqError:
                pesq_pair = None
            stoi_pair = (stoi_fn(ref, est, sample_rate), stoi_fn(ref, ora, sample_rate))
        rows.append((pesq_pair, stoi_pair if all(map(math.isfinite, stoi_pair)) else None))
    pesq_rows = [p for p, _ in rows if p is not None]
    stoi_rows = [s for _, s in rows if s is not None]
    mean = lambda values: float(np.mean(values)) if values else None  # noqa: E731
    return {"clips": len(rows), "pesq_undefined": len(rows) - len(pesq_rows),
            "pesq": mean([p[0] for p in pesq_rows]), "oracle_pesq": mean([p[1] for p in pesq_rows]),
            "stoi": mean([s[0] for s in stoi_rows]), "oracle_stoi": mean([s[1] for s in stoi_rows])}


def spread_positions(n, k):
    """min(n, k) distinct positions spread evenly over range(n), first and last included."""
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})


class AudioEvaluator:
    """PESQ/STOI of the audio for fixed reference clips, beside the oracle, which is computed once.
    `reference`: (n, clip_samples) waveforms at the transform's sample rate; `inverse`: the MelInverse that
    turns both mels into audio (`seed`: its starting phase, where it draws one)."""

    def __init__(self, reference, inverse, seed=0):
        self.inverse, self.transform, self.seed = inverse, inverse.transform, seed
        self.reference = reference
        # The clip's own mel, not the slice of the whole recording's mel: identical but for the edge frames.
        self.log_mels = self.transform(reference).cpu()
        self.oracle_audio = self.invert(self.log_mels)

    def invert(self, log_mels):
        """(n, n_mels, frames) log-mels -> (n, clip_samples) audio on the CPU, the same way each time."""
        return self.inverse(log_mels, self.seed)

    def __call__(self, model):
        """(paired scores, (n, samples) autoencoder audio, (n, n_mels, frames) reconstructed log-mels)."""
        reconstruction = reconstruct(model, self.log_mels)
        audio = self.invert(reconstruction)
        scores = paired_speech_scores(self.reference, audio, self.oracle_audio, self.transform.sample_rate)
        return scores, audio, reconstruction.cpu()


def score_clip(model, inverse, clip, seed=0):
    """One (clip_samples,) waveform through the autoencoder and the MelInverse `inverse`, scored beside the
    oracle: {'audio', 'oracle': (clip_samples,) waveforms on the CPU; 'log_mel', 'reconstruction':
    (n_mels, frames); 'scores': paired_speech_scores; 'mel': mel_metrics}."""
    evaluator = AudioEvaluator(clip[None], inverse, seed)
    scores, audio, reconstruction = evaluator(model)
    return {"audio": audio[0], "oracle": evaluator.oracle_audio[0], "log_mel": evaluator.log_mels[0],
            "reconstruction": reconstruction[0], "scores": scores,
            "mel": mel_metrics(reconstruction, evaluator.log_mels, model)}


def score_split(model, dataset, limit=None):
    """Mel metrics on (up to `limit`, spread over all recordings) scoring windows of a MelClips split."""
    positions = spread_positions(len(dataset), limit or len(dataset))
    target = dataset.clips(positions)
    return mel_metrics(reconstruct(model, target), target, model)


def score_by_source(model, dataset, inverse, audio_clips, seed):
    """{source: mel metrics (+ PESQ/STOI on `audio_clips` clips)} for each MUSDB18 stem in `dataset`."""
    table = {}
    for source in dict.fromkeys(dataset.source(i) for i in range(len(dataset))):
        positions = [i for i in range(len(dataset)) if dataset.source(i) == source]
        target = dataset.clips(positions)
        table[source] = mel_metrics(reconstruct(model, target), target, model)
        if audio_clips:
            chosen = [positions[i] for i in spread_positions(len(positions), audio_clips)]
            table[source]["audio"] = AudioEvaluator(dataset.waveforms(chosen), inverse, seed)(model)[0]
    return table


def versus_baseline(mel):
    """How the MSE in mel metrics compares with the time-average baseline: '4.2x lower' or '1.3x higher'."""
    ratio = mel["baseline_ratio"]
    return f"{ratio:.1f}x lower" if ratio >= 1 else f"{1 / ratio:.1f}x higher"


def format_scores(name, mel, audio=None):
    """One line: where the clips come from, mel scores against the baseline, PESQ/STOI against the oracle."""
    if not mel:
        return f"{name}: no clips"
    line = (f"{name} ({mel['clips']} clips): mse {mel['mse']:.4f} (time-average baseline {mel['time_average_mse']:.3f}: "
            f"{versus_baseline(mel)})  cosine {mel['cosine']:.3f}  1-SC {mel['mel_sc_score']:.3f}")
    if audio and audio.get("pesq") is not None:
        line += (f"\n    as audio ({audio['clips'] - audio['pesq_undefined']} of {audio['clips']} clips): "
                 f"PESQ {audio['pesq']:.2f} (oracle {audio['oracle_pesq']:.2f})  "
                 f"STOI {audio['stoi']:.3f} (oracle {audio['oracle_stoi']:.3f})")
    return line


def evaluate(model, inverse, splits, audio_clips, seed, by_source):
    """Scores on the test split (unseen) and on training clips, so the generalisation gap shows, each
    printed: mel metrics on every scoring window, PESQ/STOI on `audio_clips` of them, and with
    `by_source` (MUSDB18) a table per stem."""
    result = {}
    for split, label in (("test", "unseen test files"), ("train", "training files")):
        dataset = splits[split]
        if not len(dataset):
            continue
        print(f"Scoring the {split} split: mel metrics on {len(dataset)} clips ...", flush=True)
        entry = {"scored_on": f"{label}: {dataset.origin}", **score_split(model, dataset)}
        if audio_clips:
            require_speech_metrics()
            positions = spread_positions(len(dataset), audio_clips)
            print(f"  PESQ/STOI on {len(positions)} clips through {inverse.name} ...", flush=True)
            entry["audio"] = AudioEvaluator(dataset.waveforms(positions), inverse, seed)(model)[0]
        if by_source:
            print("  the same per MUSDB18 stem ...", flush=True)
            entry["by_source"] = score_by_source(model, dataset, inverse, audio_clips, seed)
        result[split] = entry
        print(format_scores(f"{label}", entry, entry.get("audio")))
        for source, row in entry.get("by_source", {}).items():
            print("  " + format_scores(source, row, row.get("audio")).replace("\n", "\n  "))
    return result
