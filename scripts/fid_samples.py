"""Draw the FID samples on one machine and score them on another (a GPU draws, the CPU holds the weights).

    python scripts/fid_samples.py draw --checkpoint image_gen/models/diffusion_model.pt --out sweep.npz \
        --n 10000 --guidance_scales 0,0.5,1,2,3,5 --null
    python scripts/fid_samples.py score sweep.npz --data_dir image_gen/data --results_dir image_gen/results

`draw` saves, as uint8 arrays in one compressed .npz, exactly the images that image_gen.py's
`--mode guidance_sweep` and `--mode infer --fid_samples N` would score (same sampler, seeds and class
balance): for a class-conditional checkpoint N class-balanced images per guidance scale and, with
--null, N from the null class; for an unconditional checkpoint N images. 10,000 digits take about
2.5 MB compressed. `score` gives each array's Inception FID and KID against the first N test images of
the checkpoint's data set (and class accuracy where the classes were asked); with two or more guidance
scales it also draws results_dir/guidance_sweep.png; --results_dir/metrics.json records the scores.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

IMAGE_GEN = Path(__file__).resolve().parents[1] / "image_gen"
from imagegen.cli import guidance_scales
from imagegen.checkpoint import load_checkpoint, require_kind
from imagegen.common import number, read_json, write_json_atomic
from imagegen.diffusion import SAMPLERS, SamplerSettings
from imagegen.fid import FidSettings, make_evaluator
from imagegen.guidance import GUIDANCE_SWEEP, report_guidance_sweep
from imagegen.sampling import ema_sampler_from_checkpoint
from imagegen.unet import PRECISIONS, resolve_precision


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    draw = sub.add_parser("draw", help="draw FID samples from a checkpoint into an .npz")
    draw.add_argument("--checkpoint", required=True, help="image_gen checkpoint (its EMA weights are used)")
    draw.add_argument("--out", required=True, help="the .npz to write")
    draw.add_argument("--n", type=number(int, 10), default=10_000, help="images per set")
    draw.add_argument("--guidance_scales", type=guidance_scales, default=list(GUIDANCE_SWEEP),
                      help="conditional checkpoints: one class-balanced set per w, comma-separated")
    draw.add_argument("--null", action="store_true", help="conditional checkpoints: also a null-class set")
    draw.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="sampler")
    draw.add_argument("--sampling_steps", type=number(int, 1, 1000), default=50, help="DDIM steps")
    draw.add_argument("--eta", type=number(float, 0.0, 1.0), default=0.0, help="DDIM stochasticity")
    draw.add_argument("--seed", type=number(int, 0), default=1,
                      help="noise seed (1: what image_gen.py scores with its default --seed 0)")
    draw.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    draw.add_argument("--compile", action="store_true", help="torch.compile the U-Net for sampling")
    draw.add_argument("--precision", choices=PRECISIONS, default="auto",
                      help="the U-Net's arithmetic, as image_gen.py's --precision (auto: bf16 on a CPU with bf16 "
                           "instructions, else fp32), so the draws are the ones the sweep scores")
    score = sub.add_parser("score", help="Inception FID/KID (and class accuracy) of the sets in .npz files")
    score.add_argument("samples", nargs="+", help=".npz files written by draw")
    score.add_argument("--data_dir", default=str(IMAGE_GEN / "data"), help="image_gen's --data_dir")
    score.add_argument("--cache_dir", default=str(IMAGE_GEN / "data" / "cache"), help="image_gen's --cache_dir")
    score.add_argument("--results_dir", default=None,
                       help="where metrics.json (and, for a guidance sweep, guidance_sweep.png) go")
    score.add_argument("--fid_weights", default=None, help="image_gen's --fid_weights")
    score.add_argument("--device", default=None, help="torch device for the features (default: cuda if available)")
    return p.parse_args(argv)


def default_device(name):
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


# --- draw --------------------------------------------------------------------------------------------

def draw(args):
    device = default_device(args.device)
    state = load_checkpoint(args.checkpoint)
    require_kind(state, "ddpm", args.checkpoint, "draw (its sets are guidance scales)")
    precision = resolve_precision(args.precision, device, state["kind"])
    sampler = ema_sampler_from_checkpoint(state, device, precision, compile_model=args.compile)
    settings = SamplerSettings(args.sampler, args.sampling_steps, args.eta, 0.0, args.seed)
    if sampler.num_classes:
        sets = [(f"w{w:g}", w, False) for w in args.guidance_scales] + ([("null", 0.0, True)] if args.null else [])
    else:
        sets = [("unconditional", 0.0, True)]
    arrays, seconds = {}, {}
    for name, w, unconditional in sets:
        start = time.perf_counter()
        images, labels = sampler.draw_for_fid(args.n, settings.replace(guidance_scale=w), unconditional, progress=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds[name] = time.perf_counter() - start
        arrays[f"images_{name}"] = images[:, 0].cpu().numpy()
        if labels is not None:
            arrays[f"labels_{name}"] = labels.numpy().astype(np.uint8)
        print(f"{name:14s} {args.n} images in {seconds[name]:6.1f}s ({args.n / seconds[name]:7.1f} img/s)", flush=True)
    meta = {"checkpoint": str(args.checkpoint), "dataset": state.get("dataset", "mnist"), "step": state["step"],
            "epochs_completed": state["epochs_completed"], "conditional": bool(sampler.num_classes),
            "sets": {name: {"guidance_scale": w if not unconditional else None,
                            "drawn": "unconditional" if unconditional else "class-balanced"}
                     for name, w, unconditional in sets},
            "sampler": settings.name(guided=False), "seed": args.seed, "n": args.n,
            "seconds": seconds, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "compiled": args.compile, "precision": precision}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
    tmp.replace(out)
    print(f"Saved {out} ({out.stat().st_size / 1e6:.1f} MB)")


# --- score -------------------------------------------------------------------------------------------

def load_samples(path):
    """(meta dict, {set name: (uint8 (n, 1, 28, 28) tensor, labels (n,) tensor or None)})."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        sets = {}
        for name in meta["sets"]:
            labels = data[f"labels_{name}"] if f"labels_{name}" in data else None
            sets[name] = (torch.from_numpy(data[f"images_{name}"]).unsqueeze(1),
                          None if labels is None else torch.from_numpy(labels.astype(np.int64)))
    return meta, sets


def score(args):
    device = default_device(args.device)
    for path in args.samples:
        meta, sets = load_samples(path)
        n = meta["n"]
        evaluator = make_evaluator(FidSettings(n, "inception", args.fid_weights), meta["dataset"], args.data_dir,
                                   Path(args.cache_dir), device, conditional=meta["conditional"])
        if evaluator.num_samples != n:
            raise SystemExit(f"error: {path} holds {n} images per set, more than the {evaluator.num_samples} test images")
        print(f"{path}: {meta['checkpoint']} (step {meta['step']}), {meta['sampler']}, seed {meta['seed']}, "
              f"drawn on {meta['device']}; {evaluator.describe()}; floor FID {evaluator.floor['fid']:.2f} "
              f"KID {evaluator.floor['kid']:.4f}")
        rows = []
        for name, (images, labels) in sets.items():
            scores = evaluator(images, labels)
            rows.append({"set": name, **meta["sets"][name], **scores})
            accuracy = f"  class accuracy {scores['accuracy']:7.2%}" if "accuracy" in scores else ""
            print(f"  {name:14s} FID {scores['fid']:7.2f}  KID {scores['kid']:.4f} +- {scores['kid_std']:.4f}{accuracy}",
                  flush=True)
        if args.results_dir:
            write_scores(rows, meta, evaluator, Path(args.results_dir), path)


def write_scores(rows, meta, evaluator, results_dir, path):
    """metrics.json["fid_samples"][file name], and with two or more guidance scales the sweep as
    image_gen.py's --mode guidance_sweep reports it (guidance_sweep.png, metrics.json["guidance_sweep"])."""
    results_dir.mkdir(parents=True, exist_ok=True)
    record = {"checkpoint": meta["checkpoint"], "dataset": meta["dataset"], "drawn_on": meta["device"],
              "samples_file": str(path)}
    metrics = read_json(results_dir / "metrics.json")
    metrics.setdefault("fid_samples", {})[Path(path).name] = {**record, "sampler": meta["sampler"],
                                                              **evaluator.summary(), "rows": rows}
    write_json_atomic(metrics, results_dir / "metrics.json")
    sweep = [r for r in rows if r["drawn"] == "class-balanced"]
    if len(sweep) >= 2:
        report_guidance_sweep(sweep, evaluator, meta["sampler"], results_dir, record)


def main(argv=None):
    args = parse_args(argv)
    draw(args) if args.command == "draw" else score(args)


if __name__ == "__main__":
    main()
