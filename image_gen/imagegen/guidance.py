"""Classifier-free guidance scale w: the default, the fit that training records in its checkpoint, and the
sweep of FID and class accuracy against w (--mode guidance_sweep)."""
from __future__ import annotations

import time

from .common import read_json, usage_error, write_json_atomic
from .fid import make_evaluator
from .plots import plot_guidance_sweep

DEFAULT_GUIDANCE_SCALE = 0.5  # best Inception FID at >= 99% class accuracy after the default 20 epochs
GUIDANCE_SWEEP = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)
MIN_ACCURACY = 0.99


def choose_guidance(rows, min_accuracy=MIN_ACCURACY):
    """The sweep row with the lowest FID among those at >= `min_accuracy` class accuracy, or None."""
    good = [r for r in rows if r["accuracy"] >= min_accuracy]
    return min(good, key=lambda r: r["fid"]) if good else None


def fit_guidance(score, first_row, ladder=GUIDANCE_SWEEP, min_accuracy=MIN_ACCURACY):
    """The guidance a model's own evaluation supports: the smallest w, from `first_row["guidance_scale"]`
    up the `ladder`, whose samples the data set's classifier recognises as the asked class at least
    `min_accuracy` of the time; if none does, the largest w tried.

    `first_row` ({'guidance_scale', 'fid', 'kid', 'accuracy', ...}) is the evaluation already made at the
    run's w; `score(w)` evaluates another w (FID, KID, accuracy). Guidance trades diversity for
    recognisability, so the smallest w that is recognised enough is the least distorting one; a full
    sweep (choose_guidance) picks the best FID among the w that reach the accuracy instead, which after
    the default training is the same w (docs/image-results.md). When no w is recognised enough, the
    strongest guidance tried is the most recognisable (accuracy rose with w in every sweep measured here),
    and `score` may stop a w's draw as soon as it cannot reach `min_accuracy` (training's rungs do:
    EpochChecks.accuracy), which leaves too few draws to rank the failing w's by their accuracy.
    Returns {'scale', 'rows', 'rule'}."""
    rows = [first_row]
    for w in [w for w in ladder if w > first_row["guidance_scale"]]:
        if rows[-1]["accuracy"] >= min_accuracy:
            break
        rows.append({"guidance_scale": w, **score(w)})
    good = [r for r in rows if r["accuracy"] >= min_accuracy]
    chosen = good[0] if good else rows[-1]
    rule = (f"smallest w with >= {min_accuracy:.0%} class accuracy" if good
            else f"no w reached {min_accuracy:.0%}: the largest w tried")
    return {"scale": chosen["guidance_scale"], "rows": rows, "rule": rule}


def report_guidance_sweep(rows, evaluator, sampler, results_dir, record):
    """Name the w with the best FID at >= 99% accuracy (choose_guidance), print the verdict, draw
    results_dir/guidance_sweep.png and store the sweep, with `record` (what was swept), in
    results_dir/metrics.json["guidance_sweep"]. Shared by --mode guidance_sweep and scripts/fid_samples.py."""
    best = choose_guidance(rows)
    description = f"{evaluator.describe()} class-balanced, {sampler}"
    if best is None:
        verdict = (f"no w reached 99% class accuracy (best {max(r['accuracy'] for r in rows):.2%}); "
                   f"the lowest FID is at w = {min(rows, key=lambda r: r['fid'])['guidance_scale']:g}")
    else:
        verdict = f"best FID at >= 99% class accuracy: w = {best['guidance_scale']:g} (FID {best['fid']:.2f})"
    print(f"{verdict}  [{description}; floor FID {evaluator.floor['fid']:.2f}]")
    plot_guidance_sweep(rows, evaluator.floor, description, results_dir / "guidance_sweep.png",
                        best["guidance_scale"] if best else None)
    metrics = read_json(results_dir / "metrics.json")
    metrics["guidance_sweep"] = {**record, "sampler": sampler, **evaluator.summary(), "rows": rows, "verdict": verdict,
                                 "best_guidance_scale": best["guidance_scale"] if best else None}
    write_json_atomic(metrics, results_dir / "metrics.json")


def guidance_sweep(sampler, dataset, scales, settings, fid, checkpoint, results_dir, data_dir, cache_dir):
    """FID/KID on N class-balanced samples and class accuracy for each guidance scale in `scales`, drawn
    by `sampler` (a checkpoint's EMA Sampler) with `settings` (seed + 1 for the draws, as infer's FID):
    results_dir/guidance_sweep.png and metrics.json["guidance_sweep"]."""
    if not sampler.num_classes:
        usage_error(f"--mode guidance_sweep needs a class-conditional checkpoint; {checkpoint} is unconditional")
    evaluator = make_evaluator(fid, dataset, data_dir, cache_dir, sampler.device, conditional=True)
    rows = []
    for w in scales:
        start = time.perf_counter()
        scores = evaluator(*sampler.draw_for_fid(evaluator.num_samples, settings.replace(guidance_scale=w,
                                                                                           seed=settings.seed + 1),
                                                 progress=True))
        rows.append({"guidance_scale": w, **scores, "seconds": time.perf_counter() - start})
        print(f"w = {w:<4g} FID {scores['fid']:8.2f}  KID {scores['kid']:.4f}  class accuracy {scores['accuracy']:7.2%}"
              f"  ({rows[-1]['seconds']:.0f}s)", flush=True)
    report_guidance_sweep(rows, evaluator, settings.name(guided=False), results_dir,
                          {"checkpoint": str(checkpoint), "dataset": dataset})
    return rows
