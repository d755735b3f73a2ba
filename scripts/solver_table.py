"""FID, KID and class accuracy against sampler and steps, with paired bootstrap intervals (issue: fast sampling).

    python scripts/solver_table.py --checkpoint image_gen/models/diffusion_model.pt --n 1000 \
        --settings ddim:50 ddim:25 dpm++2m:8 dpm++2m:10 dpm++2m:15 dpm++2m:20 dpm++2m:25 --out solver.json

Every setting draws the same N class-balanced images (same seed, so the same x_T per image) at the checkpoint's
own guidance w (or --guidance_scale), as `image_gen.py --mode infer --fid_samples N` does, and scores them with
the same Inception features against the first N test images. The first setting is the reference: each row
also gives the 95 % bootstrap intervals of FID(row) - FID(reference) and of the accuracy difference over B
resamples of the N images, the same resample for both (the rows are paired by their noise), with the real
features fixed. "Equal" then means an
interval that holds 0. Writes the rows as JSON and, with --plot, FID against network evaluations per image.
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch

from imagegen.checkpoint import checkpoint_guidance
from imagegen.common import number, write_json_atomic
from imagegen.diffusion import SAMPLERS, SamplerSettings
from imagegen.fid import FidSettings, make_evaluator
from imagegen.guidance import DEFAULT_GUIDANCE_SCALE
from imagegen.pretrained import ImageGenerator

IMAGE_GEN = Path(__file__).resolve().parents[1] / "image_gen"


def setting(text):
    sampler, _, steps = text.partition(":")
    if sampler not in SAMPLERS or (sampler != "ddpm" and not steps.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: SAMPLER:STEPS with SAMPLER one of {', '.join(SAMPLERS)}")
    return sampler, int(steps) if steps else 1000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a class-conditional DDPM checkpoint or exported folder")
    p.add_argument("--settings", nargs="+", type=setting, required=True,
                   help="SAMPLER:STEPS per row (ddim:50, dpm++2m:10, ddpm); the first is the reference")
    p.add_argument("--n", type=number(int, 10), default=1000, help="images per row (and real test images)")
    p.add_argument("--guidance_scale", type=number(float, 0.0), default=None,
                   help="w (default: the checkpoint's recorded guidance)")
    p.add_argument("--seed", type=number(int, 0), default=1, help="noise seed (infer's FID draws use seed + 1)")
    p.add_argument("--bootstrap", type=number(int, 10), default=200, help="bootstrap resamples")
    p.add_argument("--data_dir", default=str(IMAGE_GEN / "data"), help="image_gen's --data_dir")
    p.add_argument("--cache_dir", default=str(IMAGE_GEN / "data" / "cache"), help="image_gen's --cache_dir")
    p.add_argument("--device", default="cpu", help="torch device for sampling and features")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="the U-Net's arithmetic in sampling")
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--plot", default=None, help="a PNG of FID against network evaluations per image")
    return p.parse_args(argv)


def fid_from_features(features, mu_real, cov_real, trace_real, projected=None):
    """Frechet distance (Heusel et al. 2017, eq. 6) of (n, d) features against real moments, by the n x n dual:
    with X the centred features and S_g = X^T X / (n - 1), the nonzero eigenvalues of S_r^1/2 S_g S_r^1/2 are
    those of X S_r X^T / (n - 1), so tr(sqrt(S_g S_r)) needs one n x n symmetric eigendecomposition (n = 1,000:
    about 0.1 s, against 2-4 s for d = 2,048 here). `projected`: features @ cov_real when already computed."""
    n = len(features)
    mu = features.mean(0)
    centred = features - mu
    projected = (features @ cov_real if projected is None else projected) - mu @ cov_real
    inner = projected @ centred.T / (n - 1)
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2).clip(min=0)
    trace_generated = (centred ** 2).sum() / (n - 1)
    return float(((mu - mu_real) ** 2).sum() + trace_generated + trace_real - 2 * np.sqrt(eigenvalues).sum())


def bootstrap_fids(features, real, resamples, seed=0):
    """(B,) FIDs of `features` (n, d) resampled with the same B index sets for every caller (seeded)."""
    features, real = features.astype(np.float64), real.astype(np.float64)
    mu_real, cov_real = real.mean(0), np.cov(real, rowvar=False)
    trace_real, projected = np.trace(cov_real), features @ cov_real
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(resamples):
        index = rng.integers(0, len(features), len(features))
        out.append(fid_from_features(features[index], mu_real, cov_real, trace_real, projected[index]))
    return np.array(out)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    model = ImageGenerator.load(args.checkpoint, device, args.precision)
    w = args.guidance_scale if args.guidance_scale is not None else checkpoint_guidance(model.state,
                                                                                        DEFAULT_GUIDANCE_SCALE)
    evaluator = make_evaluator(FidSettings(args.n), model.dataset, Path(args.data_dir), Path(args.cache_dir),
                               device, conditional=True)
    real = evaluator.real_features.numpy()
    rows, features, corrects = [], [], []
    for sampler, steps in args.settings:
        settings = SamplerSettings(sampler, steps, 0.0, w, args.seed)
        start = time.perf_counter()
        with torch.inference_mode():
            images, labels = model.sampler.draw_for_fid(evaluator.num_samples, settings)
        seconds = time.perf_counter() - start
        feats = evaluator.features(images)
        scores = evaluator.scores(feats)
        correct = (evaluator.classifier.predict(images) == labels).numpy()
        accuracy = float(correct.mean())
        evaluations = settings.step_count(model.sampler.num_timesteps)
        rows.append({"setting": settings.name(guided=True), "network_evaluations": evaluations,
                     "guided_batch_evaluations": 2 * evaluations if w > 0 else evaluations, **scores,
                     "accuracy": accuracy, "sample_seconds": seconds,
                     "images_per_s": evaluator.num_samples / seconds})
        features.append(feats.numpy())
        corrects.append(correct)
        print(f"{rows[-1]['setting']:>24}: FID {scores['fid']:.2f}  KID {scores['kid']:.4f}  acc {accuracy:.1%}  "
              f"{seconds:.0f} s ({rows[-1]['images_per_s']:.1f} img/s)", flush=True)
    reference = bootstrap_fids(features[0], real, args.bootstrap)
    accuracy_index = np.random.default_rng(1).integers(0, len(corrects[0]), (args.bootstrap, len(corrects[0])))
    for row, feats, correct in zip(rows, features, corrects):
        difference = bootstrap_fids(feats, real, args.bootstrap) - reference
        row["fid_minus_reference_95"] = [float(np.percentile(difference, 2.5)), float(np.percentile(difference, 97.5))]
        # paired per image (same noise and class): the same resampled images for both rows
        accuracy_difference = (correct[accuracy_index].astype(float) - corrects[0][accuracy_index]).mean(axis=1)
        row["accuracy_minus_reference_95"] = [float(np.percentile(accuracy_difference, 2.5)),
                                              float(np.percentile(accuracy_difference, 97.5))]
        low, high = row["fid_minus_reference_95"]
        acc_low, acc_high = row["accuracy_minus_reference_95"]
        print(f"{row['setting']:>24}: FID - {rows[0]['setting']} in [{low:+.2f}, {high:+.2f}]"
              + ("  (equal)" if low <= 0 <= high else "")
              + f"; accuracy in [{100 * acc_low:+.1f}, {100 * acc_high:+.1f}] points"
              + ("  (equal)" if acc_low <= 0 <= acc_high else ""))
    np.savez_compressed(Path(args.out).with_suffix(".features.npz"), real=real, correct=np.stack(corrects),
                        **{f"row{i}": f for i, f in enumerate(features)})  # to recompute any interval later
    record = {"checkpoint": str(args.checkpoint), "n": evaluator.num_samples, "guidance_scale": w, "precision": args.precision,
              "seed": args.seed, "bootstrap": args.bootstrap, "device": str(device), **evaluator.summary(),
              "reference": rows[0]["setting"], "rows": rows}
    write_json_atomic(record, args.out)
    if args.plot:
        plot(rows, args.plot, f"{Path(args.checkpoint).name}, w = {w:g}, N = {evaluator.num_samples}")


def plot(rows, path, title):
    """FID against network evaluations per image, one line per sampler family; the bars are the 95 % interval
    of each row's paired FID difference to the reference, drawn around the reference's FID plus the median
    difference, so a bar that crosses the dashed line is "equal"."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    from imagegen.common import pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    reference = rows[0]
    for family, marker in (("ddim", "o"), ("dpm++2m", "s"), ("ddpm", "^")):
        chosen = [r for r in rows if r["setting"].startswith(family)]
        if not chosen:
            continue
        x = [r["network_evaluations"] for r in chosen]
        y = [r["fid"] for r in chosen]
        low = [r["fid"] - (reference["fid"] + r["fid_minus_reference_95"][0]) for r in chosen]
        high = [reference["fid"] + r["fid_minus_reference_95"][1] - r["fid"] for r in chosen]
        ax.errorbar(x, y, yerr=[[max(v, 0) for v in low], [max(v, 0) for v in high]], marker=marker, capsize=3,
                    label={"ddim": "DDIM", "dpm++2m": "DPM-Solver++(2M)", "ddpm": "DDPM"}[family])
    ax.axhline(reference["fid"], color="grey", lw=0.8, ls="--", label=f"{reference['setting']}")
    ax.set_xscale("log")
    ticks = sorted({r["network_evaluations"] for r in rows})
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("network evaluations per image (x2 in the batch with guidance)")
    ax.set_ylabel("Inception FID (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
