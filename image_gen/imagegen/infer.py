"""--mode infer: draw the asked classes (or unconditional samples) from a checkpoint's EMA weights (a DDPM's
or a GAN generator's), save the grid and one PNG per sample first, then, when asked, FID/KID, class accuracy
and the coverage checks on freshly drawn images."""
from __future__ import annotations

import time

from .checkpoint import (MODEL_KINDS, checkpoint_dataset, checkpoint_guidance, checkpoint_position, load_checkpoint,
                         require_kind)
from .common import read_json, usage_error, write_json_atomic
from .data import class_names, class_slug, dataset_title, to_unit_range
from .coverage import coverage_report, describe_coverage
from .fid import make_evaluator
from .guidance import DEFAULT_GUIDANCE_SCALE
from .plots import save_class_grid, save_individual, save_titled_grid
from .sampling import ema_sampler_from_checkpoint


def load_for_sampling(checkpoint, device, precision="fp32", compile_model=False, dataset=None, classes=None,
                      guidance_scale=None, kind=None):
    """(checkpoint state, data set, EMA Sampler) for infer and the sweep; the asked `dataset`, `classes`,
    `guidance_scale` and model `kind` are checked against what the checkpoint is (usage errors, exit code 2)."""
    state = load_checkpoint(checkpoint)
    dataset = checkpoint_dataset(state, dataset, checkpoint)
    if kind is not None:
        require_kind(state, kind, checkpoint, f"--model {kind}")
    if state["kind"] == "gan":
        if guidance_scale is not None:
            usage_error(f"--guidance_scale needs a DDPM checkpoint; {checkpoint} is a GAN (no guidance)")
        if classes == [None] and state["model_config"]["num_classes"]:
            usage_error(f"--digits none needs a DDPM checkpoint or an unconditional GAN; {checkpoint} is a "
                        f"class-conditional GAN, which has no null class")
    if not state["model_config"]["num_classes"]:
        for flag, value in (("--digits", classes), ("--guidance_scale", guidance_scale)):
            if value is not None:
                usage_error(f"{flag} needs a class-conditional checkpoint; {checkpoint} is unconditional "
                            f"(train one with --conditioning class, the default)")
    return state, dataset, ema_sampler_from_checkpoint(state, device, precision, compile_model)


def sample_names(dataset, classes, per_class):
    """File names of the single PNGs: 'digit7_000', 'ankle-boot_003', 'unconditional_001'."""
    return [f"{'unconditional' if c is None else class_slug(dataset, c)}_{i:03d}"
            for c in classes for i in range(per_class)]


def infer(checkpoint, results_dir, data_dir, cache_dir, device, settings, fid, classes=None, num_samples=16,
          guidance_scale=None, dataset=None, precision="fp32", compile_model=False, kind=None):
    """Sample `num_samples` per asked class (a conditional model; all classes by default, [None] for the
    null class) or `num_samples` in all (an unconditional model) with `settings` (SamplerSettings; its
    guidance is replaced by `guidance_scale`, else the checkpoint's own, else the default); save
    final_samples.png and samples/*.png; then, if fid.num_samples, score N freshly drawn images (seed + 1):
    class-balanced and guided for asked classes, else unconditional. Writes metrics.json["infer"]."""
    state, dataset, sampler = load_for_sampling(checkpoint, device, precision, compile_model, dataset, classes,
                                                guidance_scale, kind)
    conditional = sampler.num_classes > 0
    classes = classes or (list(range(sampler.num_classes)) if conditional else [None])
    guided = conditional and classes != [None] and state["kind"] == "ddpm"
    w = guidance_scale if guidance_scale is not None else checkpoint_guidance(state, DEFAULT_GUIDANCE_SCALE)
    settings = settings.replace(guidance_scale=w)
    name = sampler.name(settings, guided)
    names = ["unconditional" if c is None else class_names(dataset)[c] for c in classes]
    source = ("--guidance_scale" if guidance_scale is not None else "the checkpoint's own evaluation"
              if state.get("guidance") else "the default")
    print(f"Sampling {num_samples} per row ({', '.join(names)}) with {name} from {checkpoint} "
          f"({MODEL_KINDS[state['kind']]}, {checkpoint_position(state)})"
          + (f"; w = {w:g} from {source}" if guided else ""), flush=True)

    start = time.perf_counter()
    if conditional:
        shown = to_unit_range(sampler.sample_classes(classes, num_samples, settings, progress=True))
        save_class_grid(shown, names, results_dir / "final_samples.png",
                        title=f"{dataset_title(dataset)}, {name}, seed {settings.seed}")
        files = sample_names(dataset, classes, num_samples)
    else:
        shown = to_unit_range(sampler.sample(num_samples, settings, progress=True))
        save_titled_grid(shown, results_dir / "final_samples.png",
                         title=f"{dataset_title(dataset)}, unconditional model, {name}, seed {settings.seed}")
        files = [f"sample_{i:03d}" for i in range(num_samples)]
    sample_seconds = time.perf_counter() - start
    save_individual(shown, results_dir / "samples", files)
    print(f"Saved {results_dir / 'final_samples.png'} and {len(shown)} PNGs in {results_dir / 'samples'} "
          f"({sample_seconds:.1f}s for {len(shown)} samples)", flush=True)

    record = {"checkpoint": str(checkpoint), "model": state["kind"], "dataset": dataset,
              "epochs_completed": state["epochs_completed"],
              "step": state["step"], "sampler": settings.sampler if state["kind"] == "ddpm" else "gan",
              "steps": sampler.evaluations_per_image(settings),
              "num_samples": num_samples,
              "classes": ["none" if c is None else c for c in classes] if conditional else None,
              "guidance_scale": w if guided else None, "guidance_source": source if guided else None,
              "sample_seconds": sample_seconds}
    write_infer_record(results_dir, record)  # the grid's record stands even if FID is interrupted
    if fid.num_samples:
        record.update(score_samples(sampler, settings, fid, dataset, data_dir, cache_dir, guided,
                                    conditional and classes != [None]))
        write_infer_record(results_dir, record)
    else:
        print("FID/KID not measured (ask with --fid_samples 1000, or 10000 for the headline figure; see --help)")
    return record


def score_samples(sampler, settings, fid, dataset, data_dir, cache_dir, guided, by_class):
    """FID/KID (and class accuracy for classes asked) of N images drawn anew with seed + 1: class-balanced
    (`by_class`; guided for a DDPM) for a conditional model asked for classes, the null class for a
    conditional DDPM asked for none, plain samples of an unconditional model. Then the coverage checks of
    the same images (coverage.coverage_report). Returns the metrics.json fields."""
    evaluator = make_evaluator(fid, dataset, data_dir, cache_dir, sampler.device, by_class)
    what = ("class-balanced, guided" if guided else "class-balanced" if by_class
            else "unconditional (null class)" if sampler.num_classes else "unconditional model")
    name = sampler.name(settings, guided)
    print(f"Drawing {evaluator.num_samples} samples ({what}, {name}) for FID/KID ...", flush=True)
    start = time.perf_counter()
    images, labels = sampler.draw_for_fid(evaluator.num_samples, settings.replace(seed=settings.seed + 1),
                                          unconditional=not by_class, progress=True)
    draw_seconds = time.perf_counter() - start
    scores = evaluator(images, labels)
    floor = evaluator.floor
    accuracy = f"  class accuracy {scores['accuracy']:.2%}" if "accuracy" in scores else ""
    print(f"FID {scores['fid']:.2f}  KID {scores['kid']:.4f} +- {scores['kid_std']:.4f}{accuracy}  "
          f"({evaluator.describe()}, {what}, {name}; real-vs-real floor FID {floor['fid']:.2f} "
          f"KID {floor['kid']:.4f}; lower is better)")
    fid_seconds = time.perf_counter() - start
    coverage = coverage_report(images, labels, dataset, data_dir, evaluator.classifier)
    print(describe_coverage(coverage))
    return {**scores, **evaluator.summary(), "fid_sampler": name, "fid_samples_drawn": what,
            "fid_seconds": fid_seconds, "draw_seconds": draw_seconds,
            "images_per_s": len(images) / draw_seconds, "coverage": coverage}


def write_infer_record(results_dir, record):
    metrics = read_json(results_dir / "metrics.json")
    metrics["infer"] = record
    write_json_atomic(metrics, results_dir / "metrics.json")
