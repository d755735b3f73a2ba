"""The generation table: Frechet audio distances of several audio checkpoints' N(0, I) samples (and of learned
priors' samples) against real music, beside the rows that give them a meaning, all against the same real
clips in one run.

    python scripts/audio_generation_table.py --audio_dir ~/OtherMusic \
        --checkpoints audio_gen/models/audio_vae.pt audio_gen/models/audio_autoencoder.pt --num_samples 128 \
        --priors audio_gen/models/audio_prior.pt

Rows: real music against real music (the floor: a disjoint half of the folder's clips), the same real
clips through the mel and Griffin-Lim (the oracle), each checkpoint's samples, each learned prior's samples
(after the row of the VAE it belongs to), and stationary noise with the first checkpoint's mean training
spectrum. A plain autoencoder's checkpoint is decoded from N(0, I) latents as well: the naive baseline a
VAE must beat (`audio_gen.py --mode generate` refuses it).

With --training_rows, two rows bound what a learned prior can reach: real clips of the music the first
checkpoint trained on, and the first VAE decoding z ~ q(z|x) of those clips. That is the distribution a
learned prior is fitted to, so a perfect prior would score what it scores. Against other music, the first
row's distance is the price of the training music's own style.

Prints the table and writes it as JSON (--out).
"""
import argparse
from pathlib import Path

import torch

from audiogen.checkpoint import (load_checkpoint, load_inverse, load_prior_checkpoint,
                                 model_from_checkpoint, prior_from_checkpoint, weights_fingerprint)
from audiogen.common import number, write_json_atomic
from audiogen.data import DataConfig, training_splits
from audiogen.fad import EMBEDDINGS, make_embedding
from audiogen.generate import (decoded_clips, draw_clips, format_table, frechet_table, real_halves,
                               scored_rows)
from audiogen.inverse import INVERSES, RETRIEVALS, VOCODER_INVERSES, VOCODER_INVERSES_TEXT, InverseConfig
from audiogen.metrics import spread_positions
from audiogen.prior import SamplerConfig
from audiogen.train_prior import latents_of
from audiogen.transform import LogMelTransform


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--audio_dir", required=True, help="real music the rows are scored against (scored whole)")
    p.add_argument("--checkpoints", nargs="+", required=True, help="audio_gen checkpoints (VAE or plain AE)")
    p.add_argument("--priors", nargs="+", default=[],
                   help="learned-prior checkpoints (audio_gen.py --mode train_prior), each of a VAE in --checkpoints")
    p.add_argument("--prior_sampler", choices=["ddim", "dpm++2m"], default="ddim",
                   help="the learned priors' reverse process: DDIM or DPM-Solver++(2M)")
    p.add_argument("--prior_steps", type=number(int, 1, 1000), default=50,
                   help="network evaluations of the learned priors' reverse process")
    p.add_argument("--prior_eta", type=number(float, 0.0, 1.0), default=0.0,
                   help="DDIM eta of the learned priors (0: deterministic, 1: DDPM-like noise)")
    p.add_argument("--training_rows", action="store_true",
                   help="add real training clips and the first VAE's decoded posterior draws of them")
    p.add_argument("--num_samples", type=number(int, 2, 4096), default=128,
                   help="clips per row (and as many real clips again for the floor, when the folder has them)")
    p.add_argument("--seed", type=number(int, 0), default=0,
                   help="the latents' seed (and the starting phase of --inverse griffinlim)")
    p.add_argument("--inverse", choices=INVERSES, default="pghi", help="how every row's log-mels become audio")
    p.add_argument("--griffin_lim_iters", type=number(int, 0, 10_000), default=64,
                   help="iterations of the phase retrieval after PGHI, or of fast Griffin-Lim from the random phase")
    p.add_argument("--phase_retrieval", choices=RETRIEVALS, default="raar", help="the phase retrieval after PGHI")
    p.add_argument("--vocoder", default=None, help="vocoder checkpoint for --inverse vocoder")
    p.add_argument("--fad_embedding", nargs="+", choices=EMBEDDINGS, default=["aisfx", "mel-frames"],
                   help="embeddings to score in")
    p.add_argument("--fad_weights", default=None, help="VGGish weights file for --fad_embedding vggish")
    p.add_argument("--cache_dir", default="audio_gen/data/cache", help="log-mel cache of --audio_dir")
    p.add_argument("--out", default="generation_table.json", help="the JSON file to write")
    return p.parse_args(argv)


def training_rows(states, models, inverse, count, seed, cache_dir):
    """{row: (count, clip_samples) waveforms}: `count` real clips spread over the first checkpoint's training
    windows and, for the first VAE among the checkpoints, its decoding of one draw z ~ q(z|x) of each."""
    splits = training_splits(states[0][1]["data"], inverse.transform, cache_dir)
    if splits is None or not len(splits["train"]):
        raise SystemExit(f"error: --training_rows: the training data of {states[0][0]} is not on this machine")
    clips = splits["train"]
    rows = {"training music (real)": clips.waveforms(spread_positions(len(clips), min(count, len(clips))))}
    for (path, state), model in zip(states, models):
        if state["kind"] == "vae":  # latents_of draws from the same evenly spread windows
            latents = latents_of(model, clips, seed, count)
            rows[f"{path.stem} decoding z ~ q(z|x) of them"] = decoded_clips(model, inverse, latents, seed,
                                                                            "posterior draws")[1]
            break
    return rows


def main(argv=None):
    args = parse_args(argv)
    states = [(Path(path), load_checkpoint(path)) for path in args.checkpoints]
    transform = LogMelTransform.from_config(states[0][1]["transform_config"], "cpu")
    if (args.inverse in VOCODER_INVERSES) != (args.vocoder is not None):
        raise SystemExit(f"error: --vocoder goes with --inverse {VOCODER_INVERSES_TEXT}, and they with it")
    inverse = load_inverse(InverseConfig(args.inverse, args.griffin_lim_iters, args.phase_retrieval,
                                         vocoder=Path(args.vocoder) if args.vocoder else None), transform)
    data = DataConfig(Path(args.audio_dir), None, "none", ("mixture",), Path(args.cache_dir))
    reference, floor, origin = real_halves(data, transform, args.num_samples, states[0][1]["data"]["audio_dir"])
    n = len(reference)
    priors = [(Path(path), load_prior_checkpoint(path)) for path in args.priors]
    fingerprints = [weights_fingerprint(state["model"]) for _, state in states]
    for path, prior_state in priors:
        if prior_state["vae"]["fingerprint"] not in fingerprints:
            raise SystemExit(f"error: {path} is the prior of {prior_state['vae']['checkpoint']}, not of a checkpoint "
                             f"in --checkpoints")
    sampler = SamplerConfig(args.prior_steps, args.prior_eta, args.prior_sampler)
    models, samples = [], {}
    for (path, state), fingerprint in zip(states, fingerprints):
        model = model_from_checkpoint(state, torch.device("cpu"))
        models.append(model)
        name = f"{path.stem} ({state['kind']}, {model.compression:g}x, N(0, I) latents)"
        samples[name] = draw_clips(model, inverse, n, args.seed, name)[1]
        for prior_path, prior_state in priors:
            if prior_state["vae"]["fingerprint"] == fingerprint:
                name = f"{path.stem} + learned prior {prior_path.stem} ({sampler.name})"
                prior = prior_from_checkpoint(prior_state, torch.device("cpu"))
                samples[name] = draw_clips(model, inverse, n, args.seed, name, prior, sampler)[1]
    if args.training_rows:
        samples = {**training_rows(states, models, inverse, n, args.seed, Path(args.cache_dir)), **samples}
    rows = scored_rows(inverse, models[0], floor, samples, args.seed)
    embedders = [make_embedding(name, transform, "cpu", args.fad_weights) for name in dict.fromkeys(args.fad_embedding)]
    table = frechet_table(rows, reference, embedders, transform.sample_rate)
    counts = {name: len(waves) for name, waves in rows.items()}
    print(f"Frechet distances to {n} real clips of {origin} (seed {args.seed}, {inverse.name}):")
    for line in format_table(table, counts):
        print("  " + line)
    write_json_atomic({"against": origin, "reference_clips": n, "clips": counts, "frechet": table,
                       "seed": args.seed, "inverse": inverse.name, "checkpoints": [str(p) for p, _ in states],
                       "priors": [str(p) for p, _ in priors], "prior_sampler": sampler.name,
                       "training_rows": args.training_rows}, Path(args.out))
    print(f"Written to {args.out}")
    return table


if __name__ == "__main__":
    main()
