"""The inverse table: how well each way back from a log-mel to audio does on real music, the oracle row of every
audio score (the true mel of a clip through the inverse, against the clip itself).

    python scripts/audio_inverse_table.py --audio_dir ~/OtherMusic --clips 48 \
        --vocoder audio_gen/models/audio_vocoder.pt --out inverse_table.json
    python scripts/audio_inverse_table.py --audio_dir ~/OtherMusic --checkpoint audio_gen/models/audio_model.pt \
        --vocoder plain.pt tuned.pt --iterations 64 --out decoded_table.json   # voicing a model's reconstructions

Per row, on the same clips (evenly spread windows of the folder, scored whole): wide-band PESQ, STOI and the
multi-resolution STFT distance (spectral convergence + log-magnitude L1 at 512/1024/2048, lower is better) per
clip, with a paired bootstrap 95 % interval of each row's difference from the first row (the random-phase chain)
and from the second (the deterministic inverse with the first of --retrievals: by default NNLS + PGHI + fast
Griffin-Lim, the default inverse before RAAR); the aisfx Frechet distance of
the row's clips to as many other real clips of the folder, beside the real-against-real floor; and the CPU
seconds (all threads) and wall seconds per clip, one clip at a time.
With --checkpoint every row voices that autoencoder's (or VAE's) reconstruction of each clip's mel instead of
the true mel, still scored against the clip: what the inverse makes of the mels a model gives it.
With --bounds two kinds of row that no inverse can reach split the loss between magnitude and phase: the clip's
true STFT magnitude with PGHI + fast Griffin-Lim (a perfect magnitude, its phase retrieved) and the NNLS magnitude
of the mel with the clip's true phase (the mel's magnitude, a perfect phase).
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch

from audiogen.checkpoint import load_checkpoint, load_inverse, load_vocoder_checkpoint, model_from_checkpoint
from audiogen.common import number, write_json_atomic
from audiogen.data import DataConfig
from audiogen.fad import frechet_distance, make_embedding
from audiogen.generate import real_halves
from audiogen.inverse import RETRIEVALS, InverseConfig, MelInverse
from audiogen.metrics import require_speech_metrics
from audiogen.model import reconstruct
from audiogen.plots import plot_spectrogram_grid
from audiogen.transform import LogMelTransform, istft
from audiogen.vocoder import multi_resolution_stft_loss


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--audio_dir", required=True, help="real music to score on (scored whole: use music no model heard)")
    p.add_argument("--clips", type=number(int, 4, 4096), default=48, help="clips scored per row (and as many for FAD)")
    p.add_argument("--iterations", type=number(int, 0, 10_000), nargs="+", default=[64, 128],
                   help="iterations of the phase retrieval in the PGHI rows")
    p.add_argument("--retrievals", choices=RETRIEVALS, nargs="+", default=["fgla", "raar"],
                   help="the phase retrievals after PGHI, a row each per --iterations; the first is the baseline of "
                        "the paired differences to the 'second row'")
    p.add_argument("--vocoder", nargs="+", default=[],
                   help="vocoder checkpoints: each adds its row, rows of its magnitude with PGHI's phase, and the "
                        "row of its phase refiner where it has one")
    p.add_argument("--checkpoint", default=None,
                   help="an autoencoder or VAE checkpoint: voice its reconstructions of the clips' mels, not the true mels")
    p.add_argument("--bounds", action="store_true",
                   help="also the rows of a perfect magnitude (the clip's own, PGHI's phase) and of a perfect phase "
                        "(the clip's own, the NNLS magnitude)")
    p.add_argument("--seed", type=number(int, 0), default=0, help="the random-phase row's seed")
    p.add_argument("--bootstrap", type=number(int, 100), default=2000, help="bootstrap resamples of each interval")
    p.add_argument("--cache_dir", default="audio_gen/data/cache", help="log-mel cache of --audio_dir")
    p.add_argument("--out", default="inverse_table.json", help="the JSON file to write")
    p.add_argument("--grid", default=None,
                   help="also a PNG of the log-mel spectrograms of 4 clips: the original and each row's audio")
    return p.parse_args(argv)


def clip_scores(reference, audio, sample_rate):
    """{'pesq', 'stoi', 'mr_stft'}: (n,) arrays, NaN where PESQ is undefined."""
    from pesq import PesqError, pesq
    from pystoi import stoi

    pesq_values, stoi_values = [], []
    for ref, est in zip(reference.double().numpy(), audio.double().numpy()):
        try:
            pesq_values.append(pesq(sample_rate, ref, est, "wb"))
        except PesqError:
            pesq_values.append(np.nan)
        stoi_values.append(stoi(ref, est, sample_rate))
    distance = multi_resolution_stft_loss(audio.float(), reference.float()).numpy()
    return {"pesq": np.array(pesq_values), "stoi": np.array(stoi_values), "mr_stft": distance}


def paired_interval(difference, resamples, seed=0):
    """(mean, 2.5 %, 97.5 %) of the mean of paired differences, by bootstrap over clips (NaNs left out)."""
    difference = difference[np.isfinite(difference)]
    rng = np.random.default_rng(seed)
    means = rng.choice(difference, (resamples, len(difference))).mean(axis=1)
    return float(difference.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def bound_rows(clips, log_mels, transform, retrievals):
    """(name, voice) pairs of the rows that split what an inverse loses between magnitude and phase; voice(i) is
    clip i's (1, samples) waveform. A perfect magnitude: the clip's STFT magnitude, its phase retrieved by PGHI and
    the iterations after it (`retrievals`: (algorithm, iterations) pairs) as the 'pghi' inverse does. A perfect
    phase: the NNLS magnitude of the mel being voiced, with the clip's own STFT phase."""
    t = transform
    window = torch.hann_window(t.n_fft)

    def spectrum(i):
        return torch.stft(clips[i:i + 1], t.n_fft, t.hop_length, window=window, return_complex=True)

    def retrieved(algorithm, n):
        inverse = MelInverse(InverseConfig("pghi", n, algorithm), t)
        return inverse.name.replace("NNLS", "true magnitude"), lambda i: inverse.retrieve_phase(spectrum(i).abs())

    nnls = MelInverse(InverseConfig("pghi"), t)

    def true_phase(i):
        magnitude = nnls.magnitude(log_mels[i:i + 1]).cpu()
        return istft(torch.polar(magnitude, spectrum(i).angle()), t.n_fft, t.hop_length, window, t.clip_samples)

    return [retrieved(*pair) for pair in retrievals] + [("NNLS magnitude + true phase", true_phase)]


def main(argv=None):
    args = parse_args(argv)
    require_speech_metrics()
    transform = LogMelTransform()
    data = DataConfig(Path(args.audio_dir), None, "none", ("mixture",), Path(args.cache_dir))
    fad_reference, clips, origin = real_halves(data, transform, args.clips)
    log_mels = transform(clips).cpu()
    if args.checkpoint:
        state = load_checkpoint(args.checkpoint)
        if state["transform_config"] != transform.config:
            raise SystemExit(f"{args.checkpoint} reads other features ({state['transform_config']}) than {transform.config}")
        log_mels = reconstruct(model_from_checkpoint(state, torch.device("cpu")), log_mels).cpu()
    retrievals = [(algorithm, n) for algorithm in args.retrievals for n in args.iterations]
    rows = [InverseConfig("griffinlim", 64)] + [InverseConfig("pghi", n, algorithm) for algorithm, n in retrievals]
    for vocoder in map(Path, args.vocoder):
        rows += [InverseConfig("vocoder", vocoder=vocoder),
                 *(InverseConfig("vocoder-pghi", n, algorithm, vocoder=vocoder) for algorithm, n in retrievals)]
        if load_vocoder_checkpoint(vocoder).get("refiner"):
            rows.append(InverseConfig("vocoder-refined", vocoder=vocoder))
    aisfx = make_embedding("aisfx", transform)
    reference_features = aisfx(fad_reference, transform.sample_rate)
    table = {"against": origin, "clips": len(clips), "voicing": args.checkpoint or "the true mels", "machine": f"{torch.get_num_threads()} CPU threads",
             "floor_aisfx_fad": frechet_distance(aisfx(clips, transform.sample_rate), reference_features), "rows": {}}
    print(f"{len(clips)} clips of {origin}, voicing {table['voicing']}; aisfx FAD against {len(fad_reference)} others "
          f"(real against real: {table['floor_aisfx_fad']:.1f})")
    voices = []
    for row in rows:
        inverse = load_inverse(row, transform)
        voices.append((inverse.name, lambda i, inverse=inverse: inverse(log_mels[i:i + 1], args.seed + i)))
    if args.bounds:
        voices += bound_rows(clips, log_mels, transform, retrievals)
    baselines, shown = {}, {"original": log_mels}  # the first two rows' scores: the others' differences are paired
    for name, voice in voices:
        voice(0)  # warm-up, not timed
        start, wall = time.process_time(), time.perf_counter()
        audio = torch.cat([voice(i) for i in range(len(log_mels))])
        cpu_seconds = (time.process_time() - start) / len(clips)
        wall_seconds = (time.perf_counter() - wall) / len(clips)
        scores = clip_scores(clips, audio, transform.sample_rate)
        entry = {"cpu_seconds_per_clip": cpu_seconds, "wall_seconds_per_clip": wall_seconds,
                 **{k: float(np.nanmean(v)) for k, v in scores.items()},
                 "aisfx_fad": frechet_distance(aisfx(audio, transform.sample_rate), reference_features),
                 # kept so that rows of separate runs on the same clips can be paired later (null: unscorable)
                 "per_clip": {k: [None if np.isnan(x) else float(x) for x in v] for k, v in scores.items()}}
        for key, baseline in baselines.items():
            entry[key] = {k: paired_interval(scores[k] - baseline[k], args.bootstrap) for k in scores}
        if len(baselines) < 2:
            baselines[("difference_to_first_row", "difference_to_second_row")[len(baselines)]] = scores
        table["rows"][name] = entry
        shown[name] = transform(audio).cpu()
        line = (f"{name:40s} PESQ {entry['pesq']:.3f}  STOI {entry['stoi']:.3f}  MR-STFT {entry['mr_stft']:.3f}"
                f"  aisfx FAD {entry['aisfx_fad']:.1f}  {cpu_seconds * 1000:.0f} ms CPU ({wall_seconds * 1000:.0f} ms wall)/clip")
        for against, differences in (("first", entry.get("difference_to_first_row", {})),
                                     ("second", entry.get("difference_to_second_row", {}))):
            line += "".join(f"\n    {key} {mean:+.3f} [{low:+.3f}, {high:+.3f}] against the {against} row"
                            for key, (mean, low, high) in differences.items())
        print(line, flush=True)
    write_json_atomic(table, Path(args.out))
    if args.grid:
        four = np.linspace(0, len(clips) - 1, 4).round().astype(int)
        names = list(shown)
        grid = torch.stack([shown[name][i] for i in four for name in names])
        titles = [f"clip {i}: {name}" for i in four for name in names]
        plot_spectrogram_grid(grid, titles, args.grid, f"The same 4 clips of {origin}: log-mel of the audio each "
                              f"inverse makes from the true mel", columns=len(names))
        print(f"Spectrogram grid: {args.grid}")
    print(f"Written to {args.out}")
    return table


if __name__ == "__main__":
    main()
