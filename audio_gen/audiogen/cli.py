"""Mel-spectrogram autoencoder for music, with a deterministic phase retrieval back to audio.

    python audio_gen/audio_gen.py --mode train --audio_dir ~/Music          # any folder of music
    python audio_gen/audio_gen.py --mode infer --audio_dir ~/OtherMusic     # score music it never heard
    python audio_gen/audio_gen.py --mode train                              # MUSDB18 (7-s preview downloaded)
    python audio_gen/audio_gen.py --mode train --musdb_root /data/musdb18 --download none
    python audio_gen/audio_gen.py --mode benchmark --audio_dir ~/Music      # preparation / training / inverse speed
    python audio_gen/audio_gen.py --mode train --model vae --audio_dir ~/Music   # a VAE, which can generate
    python audio_gen/audio_gen.py --mode generate --checkpoint models/audio_vae.pt --audio_dir ~/OtherMusic
    python audio_gen/audio_gen.py --mode train_prior                        # a learned prior for that VAE
    python audio_gen/audio_gen.py --mode generate --prior models/audio_prior.pt
    python audio_gen/audio_gen.py --mode train_vocoder --audio_dir ~/Music  # a vocoder for that music
    python audio_gen/audio_gen.py --mode train_refiner --audio_dir ~/Music  # a phase refiner for that vocoder
    python audio_gen/audio_gen.py --mode infer --audio_dir ~/OtherMusic --inverse vocoder-refined

Every clip is 5 s of mono 16 kHz audio (80,000 samples), a 128-bin log-mel spectrogram of 256 frames.
The autoencoder squeezes it into a latent of `latent_dim` channels x 256/`time_downsample` frames
(128 x 128 at the defaults: 2x fewer numbers, chosen from measurements in docs/audio-results.md) and back;
NNLS, PGHI and RAAR turn the mel into audio again, or a vocoder trained with --mode train_vocoder
(and --mode train_refiner, a correction of its retrieved phase). `--model vae` makes it a VAE with a smaller
latent, whose N(0, I) prior `--mode generate` samples new music from; `--mode train_prior` fits a small
diffusion model to its latents, a learned prior that `--mode generate --prior FILE` samples instead.
Training draws random 5-s crops from whole recordings; scores use fixed, evenly spaced windows.
Relative default paths (data/, models/, results/) live next to audio_gen.py.

This module is the command line (audio_gen.py and the `audio-gen` command run its main): it reads and checks
the options and hands plain values to the rest of the package (audiogen/__init__.py lists its modules). train and infer also log to
RESULTS_DIR/train.log and RESULTS_DIR/infer.log.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from audiogen.audio_io import SOURCES
from audiogen.benchmark import BenchmarkConfig, benchmark
from audiogen.common import (ArgumentParser, HelpFormatter, World, given_flags, logged_to, number,
                             reject_flags_of_other_modes, resolve_device, resolve_path)
from audiogen.data import DataConfig
from audiogen.export import export, paired
from audiogen.fad import EMBEDDINGS
from audiogen.generate import GenerateConfig, generate
from audiogen.infer import InferConfig, infer
from audiogen.inverse import INVERSES, RAAR_BETA, RETRIEVALS, VOCODER_INVERSES_TEXT, InverseConfig
from audiogen.model import MODEL_KINDS, ModelConfig
from audiogen.prior import PRIOR_SAMPLERS, PriorConfig, SamplerConfig
from audiogen.train import TrainConfig, train
from audiogen.train_prior import PriorTrainConfig, train_prior
from audiogen.train_refiner import RefinerTrainConfig, train_refiner
from audiogen.train_vocoder import VocoderShape, VocoderTrainConfig, train_vocoder
from audiogen.trainer import KlWeight, Optimisation

# Relative default paths (data/, models/, results/) live next to audio_gen.py in a checkout, so that the script,
# train.sh and the `audio-gen` command share one set of outputs; an installed wheel has no such
# folder, and then they are relative to the current one.
SCRIPT_DIR = Path(__file__).resolve().parents[1]
if not (SCRIPT_DIR / "audio_gen.py").is_file():
    SCRIPT_DIR = Path.cwd()
SHAPE = ("n_mels", "latent_dim", "hidden", "time_downsample", "dropout")
# The latent's shape when not given: the VAE's is smaller, as generation wants (docs/audio-results.md).
LATENT_DEFAULTS = {"ae": {"latent_dim": 128, "time_downsample": 2}, "vae": {"latent_dim": 64, "time_downsample": 8}}
DEFAULT_CHECKPOINTS = {"ae": "models/audio_autoencoder.pt", "vae": "models/audio_vae.pt"}
DEFAULT_PRIOR = "models/audio_prior.pt"
DEFAULT_VOCODER = "models/audio_vocoder.pt"
REFINER_EPOCHS = 20  # epochs of 512 steps over the pool of 4,096 segments: its losses level off by 15
# Optimisation defaults of the autoencoders (train, benchmark) and of the learned prior (train_prior).
TRAINING_DEFAULTS = {"train": {"epochs": 60, "batch_size": 16, "learning_rate": 1e-3, "warmup_steps": 100},
                     "train_prior": {"epochs": 280, "batch_size": 64, "learning_rate": 5e-4, "warmup_steps": 200},
                     "train_vocoder": {"epochs": 36, "batch_size": 16, "learning_rate": 5e-4, "warmup_steps": 500},
                     "train_refiner": {"epochs": REFINER_EPOCHS, "batch_size": 8, "learning_rate": 1e-3,
                                       "warmup_steps": 0}}
# The modes that read each option; an option left out applies to every mode. benchmark prepares its
# data in a temporary cache and never downloads; infer and generate take the model from the checkpoint.
MODES_OF = {
    **{name: {"train", "benchmark"} for name in SHAPE},
    "model": {"train", "benchmark", "export"},
    **{name: {"train", "benchmark", "train_prior", "train_vocoder", "train_refiner"}
       for name in ("batch_size", "learning_rate")},
    **{name: {"train", "train_vocoder", "train_refiner"} for name in ("eval_every",)},
    **{name: {"train"} for name in ("kl_weight", "kl_warmup_steps")},
    **{name: {"train", "train_prior", "train_vocoder", "train_refiner"}
       for name in ("epochs", "warmup_steps", "resume")},
    **{name: {"train", "infer", "generate", "train_prior", "export"} for name in ("checkpoint",)},
    **{name: {"train", "infer", "generate", "train_prior", "train_vocoder", "train_refiner"}
       for name in ("results_dir", "cache_dir")},
    **{name: {"train_vocoder"} for name in ("vocoder_dim", "vocoder_blocks", "segment_frames", "vocoder_decoder")},
    **{name: {"train_refiner"} for name in ("refiner_channels", "refiner_iters")},
    "prior": {"generate", "train_prior", "export"},
    "export_dir": {"export"},
    "audio_dir": {"train", "infer", "generate", "benchmark", "train_vocoder", "train_refiner"},
    **{name: {"train", "infer", "generate", "benchmark"} for name in ("griffin_lim_iters", "inverse")},
    "phase_retrieval": {"train", "infer", "generate", "benchmark", "train_refiner"},
    **{name: {"train_prior"} for name in ("prior_hidden", "prior_blocks", "prior_clip_context")},
    **{name: {"generate"} for name in ("prior_sampler", "prior_steps", "prior_eta")},
    **{name: {"train", "infer", "benchmark", "train_vocoder", "train_refiner"}
       for name in ("musdb_root", "download", "sources", "audio_eval_clips")},
    "num_examples": {"infer"},
    **{name: {"generate"} for name in ("num_samples", "fad_embedding", "fad_weights")},
}


def training_defaults(name):
    """Option `name`'s defaults per mode for its help, from TRAINING_DEFAULTS: '16; train_prior 64; ...'."""
    first, *others = TRAINING_DEFAULTS.items()
    return "; ".join([f"{first[1][name]:g}"] + [f"{mode} {values[name]:g}" for mode, values in others])


def build_parser():
    p = ArgumentParser(
        description="Residual Conv1d autoencoder over log-mel spectrograms of music (any folder, or MUSDB18 stems).",
        formatter_class=HelpFormatter)
    p.add_argument("--mode", choices=["train", "infer", "generate", "train_prior", "train_vocoder", "train_refiner",
                                      "benchmark", "export"],
                   default="train",
                   help="train a model, reconstruct held-out clips from a checkpoint, generate new clips from a VAE "
                        "checkpoint, train a learned prior over a VAE's latents, train a vocoder on the music, "
                        "train a correction of its retrieved phase, measure speed, or export a checkpoint's "
                        "inference weights (--export_dir)")
    data = p.add_argument_group("data")
    data.add_argument("--audio_dir", default=None,
                      help="any folder of music (wav, flac, ogg, opus, mp3, m4a/aac; searched recursively), "
                           "split by file: DIR/{train,valid,test}/ when present, else ~80/10/10 by a hash of the path; "
                           "in infer, a folder with no split is scored whole; in generate, the real music the "
                           "samples are scored against (optional)")
    data.add_argument("--musdb_root", default=None,
                      help="MUSDB18 ({train,test}/*.stem.mp4) or MUSDB18-HQ ({train,test}/<track>/<source>.wav); "
                           "the default when --audio_dir is not given is data/musdb18")
    data.add_argument("--download", choices=["preview", "full", "none"], default="preview",
                      help="what to fetch when --musdb_root holds no dataset: the 7-s preview "
                           "(~147 MB), the full MUSDB18 (4.7 GB), or nothing")
    data.add_argument("--sources", nargs="+", choices=SOURCES, default=None,
                      help="MUSDB18 stems to train and evaluate on (default: all five)")
    data.add_argument("--cache_dir", default="data/cache",
                      help="train, infer and generate: where decoded log-mel spectrograms are cached")
    model = p.add_argument_group("model (train and benchmark; infer and generate read it from the checkpoint)")
    model.add_argument("--model", choices=MODEL_KINDS, default="ae",
                       help="'ae': the autoencoder, which reconstructs; 'vae': a variational autoencoder, whose "
                            "prior --mode generate samples (its default checkpoint is models/audio_vae.pt)")
    model.add_argument("--n_mels", type=number(int, 16, 512), default=128, help="mel bins")
    model.add_argument("--latent_dim", type=number(int, 1, 4096), default=None,
                       help="latent channels (default: 128 for the AE, 64 for the VAE)")
    model.add_argument("--time_downsample", type=int, choices=[1, 2, 4, 8, 16], default=None,
                       help="frames per latent frame (the encoder's 4 stages stride 2 this many times in total; "
                            "default: 2 for the AE, 8 for the VAE); "
                            "compression = n_mels * time_downsample / latent_dim")
    model.add_argument("--hidden", type=number(int, 8, 2048), default=128, help="channels inside encoder/decoder")
    model.add_argument("--dropout", type=number(float, 0.0, 0.9), default=0.0, help="dropout on the latent")
    train_group = p.add_argument_group("training (train, train_prior, train_vocoder, train_refiner; --batch_size and "
                                       "--learning_rate also set what benchmark times)")
    train_group.add_argument("--epochs", type=number(int, 1), default=None,
                             help="training epochs (total, also with --resume); an epoch draws as many random "
                                  "crops as the training files hold 5-s windows (train_vocoder: 0.92-s segments; "
                                  "train_refiner: 512 batches of its pool) (default: 60; train_prior 280; "
                                  "train_vocoder 36, about 2 h on a 2-core CPU; train_refiner 20, about 25 min)")
    train_group.add_argument("--batch_size", type=number(int, 1), default=None,
                             help="clips per training batch; under torchrun the global batch, shared equally by the "
                                  f"processes (default: {training_defaults('batch_size')})")
    train_group.add_argument("--learning_rate", type=number(float, 1e-8, 1.0), default=None,
                             help=f"peak AdamW learning rate (default: {training_defaults('learning_rate')})")
    train_group.add_argument("--warmup_steps", type=number(int, 0), default=None,
                             help=f"linear warm-up steps before the cosine decay (default: "
                                  f"{training_defaults('warmup_steps')})")
    train_group.add_argument("--seed", type=number(int, 0), default=0,
                             help="random seed (also of the random starting phase of --inverse griffinlim, in every mode)")
    train_group.add_argument("--kl_weight", type=number(float, 0.0, 100.0), default=0.1,
                             help="--model vae: weight of KL(q(z|x) || N(0, I)) per input value beside the "
                                  "reconstruction loss (0: an autoencoder with a noisy code)")
    train_group.add_argument("--kl_warmup_steps", type=number(int, 0), default=1000,
                             help="--model vae: steps over which the KL weight rises linearly from 0")
    train_group.add_argument("--resume", action="store_true",
                             help="continue training from --checkpoint (train_prior: from --prior; train_vocoder "
                                  "and train_refiner: from --vocoder)")
    train_group.add_argument("--eval_every", type=number(int, 1), default=5,
                             help="score PESQ/STOI and redraw training_curves.png every N epochs (and after the "
                                  "first and last); mel metrics are logged every epoch")
    out = p.add_argument_group("evaluation and outputs")
    out.add_argument("--checkpoint", default=DEFAULT_CHECKPOINTS["ae"],
                     help="checkpoint path (train, infer, generate, train_prior, export; models/audio_vae.pt by "
                          "default for --model vae, generate and train_prior, whose VAE it is); infer and generate "
                          "also take a folder written by --mode export")
    out.add_argument("--export_dir", default=None,
                     help="export: the folder to write the checkpoint's inference weights to (model.safetensors) "
                          "with config.json; an autoencoder's --prior and --vocoder go into its subfolders prior/ "
                          "and vocoder/, and whatever loads the folder uses them")
    out.add_argument("--results_dir", default="results",
                     help="where plots, WAVs, metrics.json and the logs go (train, infer, generate, train_prior)")
    out.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda (default: cuda if available)")
    out.add_argument("--num_examples", type=number(int, 1, 64), default=2,
                     help="infer: held-out clips written as WAV triples and drawn in inference_comparison.png")
    out.add_argument("--inverse", choices=INVERSES, default="pghi",
                     help="how log-mels become audio: 'pghi' (NNLS magnitude, Phase Gradient Heap Integration, "
                          "then --phase_retrieval; deterministic), 'griffinlim' (least squares and fast Griffin-Lim "
                          "from a random phase, the chain before PGHI), 'vocoder' (the network that --vocoder "
                          "names), 'vocoder-pghi' (its magnitude with PGHI's phase), 'vocoder-refined' (then the phase "
                          "corrected by the refiner --mode train_refiner put in the vocoder's file); the oracle rows "
                          "use the same inverse")
    out.add_argument("--griffin_lim_iters", type=number(int, 0, 10_000), default=64,
                     help="iterations of the phase retrieval after PGHI (--phase_retrieval), or of fast Griffin-Lim "
                          "from the random phase of --inverse griffinlim (vocoder-refined: the refiner's own, "
                          "--refiner_iters)")
    out.add_argument("--phase_retrieval", choices=RETRIEVALS, default="raar",
                     help="the iterations after PGHI: 'raar' (relaxed averaged alternating reflections, beta "
                          f"{RAAR_BETA}) or 'fgla' (fast Griffin-Lim, momentum 0.99, the algorithm before RAAR); "
                          "the same cost per iteration (train_refiner: the phases its refiner learns to correct; "
                          "vocoder-refined runs the refiner's own)")
    out.add_argument("--audio_eval_clips", type=number(int, 0, 1000), default=8,
                     help="clips per split scored with PESQ/STOI as audio, beside the oracle (0 skips); "
                          "train_vocoder and train_refiner: unseen clips they score (at most 16)")
    gen = p.add_argument_group("generate (a VAE checkpoint)")
    gen.add_argument("--num_samples", type=number(int, 1, 1024), default=16,
                     help="clips to generate (generated_000.wav, ...); with --audio_dir also how many real clips "
                          "each row of the scores holds, at most")
    gen.add_argument("--fad_embedding", nargs="+", choices=EMBEDDINGS, default=["aisfx", "mel-frames"],
                     help="embeddings for the Frechet audio distances: 'aisfx' (pretrained, offline, from the aisfx "
                          "wheel), 'vggish' (the standard FAD; weights from --fad_weights or torch.hub), "
                          "'mel-frames' (log-mel frames, no network)")
    gen.add_argument("--fad_weights", default=None,
                     help="VGGish weights file (torchvggish's vggish-10086976.pth) for --fad_embedding vggish")
    voc = p.add_argument_group("vocoder (train_vocoder writes it; --inverse vocoder voices mels with it)")
    voc.add_argument("--vocoder", default=None,
                     help=f"vocoder checkpoint (default {DEFAULT_VOCODER}, or the one an exported --checkpoint folder "
                          f"pairs with): train_vocoder writes it, train_refiner adds its phase refiner to it; infer, "
                          f"generate and benchmark read it with --inverse {VOCODER_INVERSES_TEXT}; "
                          f"export puts it beside the autoencoder")
    voc.add_argument("--vocoder_dim", type=number(int, 16, 2048), default=256,
                     help="train_vocoder: channels of the ConvNeXt blocks (their expansion is 3x)")
    voc.add_argument("--vocoder_blocks", type=number(int, 1, 64), default=8, help="train_vocoder: ConvNeXt blocks")
    voc.add_argument("--vocoder_decoder", default=None,
                     help="train_vocoder: an autoencoder or VAE checkpoint whose reconstructions make half of each "
                          "batch's input mels (the targets stay the real audio), so the vocoder fits what that "
                          "decoder gives it; a run resumes with the same one")
    voc.add_argument("--segment_frames", type=number(int, 8, 1024), default=48,
                     help="train_vocoder: mel frames per training segment ((frames - 1) * 313 samples: 0.92 s at 48)")
    voc.add_argument("--refiner_channels", type=number(int, 4, 256), default=16,
                     help="train_refiner: channels of the phase refiner's 2-D convolutions (its time per clip grows "
                          "with their square)")
    voc.add_argument("--refiner_iters", type=number(int, 0, 1000), default=64,
                     help="train_refiner: iterations of --phase_retrieval after PGHI whose phase the refiner learns "
                          "to correct; --inverse vocoder-refined runs as many")
    prior = p.add_argument_group("learned prior (train_prior writes it, generate samples it)")
    prior.add_argument("--prior", default=None,
                       help=f"learned-prior checkpoint: train_prior writes it (default {DEFAULT_PRIOR}); generate "
                            f"samples latents from it instead of N(0, I) (default: the one an exported --checkpoint "
                            f"folder pairs with, else none: N(0, I)); export puts it beside the VAE")
    prior.add_argument("--prior_hidden", type=number(int, 8, 2048), default=128,
                       help="train_prior: channels inside the denoiser (a multiple of 8)")
    prior.add_argument("--prior_blocks", type=number(int, 1, 64), default=8,
                       help="train_prior: the denoiser's residual blocks (dilations 1, 2, 4, 8 repeating)")
    prior.add_argument("--prior_clip_context", type=number(int, 0, 1), default=1,
                       help="train_prior: 1 tells every block the clip's mean latent (what carries loudness and "
                            "colour at high noise); 0 does not, as version-1 priors did")
    prior.add_argument("--prior_sampler", choices=list(PRIOR_SAMPLERS), default=SamplerConfig.sampler,
                       help="generate --prior: the reverse process, DDIM or DPM-Solver++(2M) (second order, "
                            "deterministic, steps even in log-SNR)")
    prior.add_argument("--prior_steps", type=number(int, 1, 1000), default=SamplerConfig.steps,
                       help="generate --prior: network evaluations of the reverse process")
    prior.add_argument("--prior_eta", type=number(float, 0.0, 1.0), default=0.0,
                       help="generate --prior: DDIM's stochasticity (0: deterministic; 1: DDPM's variance)")
    return p


def parse_args(argv=None, world=None):
    """The checked options: paths resolved, sources without repeats, a torch.device (this process's under
    torchrun, whose processes may only train, sharing each batch equally)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    reject_flags_of_other_modes(parser, argv, args.mode, MODES_OF)
    for name, value in TRAINING_DEFAULTS[args.mode if args.mode in TRAINING_DEFAULTS else "train"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    world = world or World()
    world.check_command_line(parser, args.mode, args.batch_size)
    if args.audio_dir is not None and args.musdb_root is not None:
        parser.error("give either --audio_dir or --musdb_root, not both")
    if args.audio_dir is not None and args.sources is not None:
        parser.error("--sources applies to MUSDB18 stems; files under --audio_dir are mixtures")
    if args.audio_dir is not None:
        args.audio_dir = Path(args.audio_dir)
        if not args.audio_dir.is_dir():
            parser.error(f"--audio_dir {args.audio_dir}: no such folder")
    elif args.mode not in ("generate", "train_prior"):
        args.musdb_root = resolve_path(args.musdb_root or "data/musdb18", "data/musdb18", SCRIPT_DIR)
    if args.fad_weights is not None and "vggish" not in args.fad_embedding:
        parser.error("--fad_weights is the VGGish file: add --fad_embedding vggish")
    if args.fad_weights is not None and not Path(args.fad_weights).is_file():
        parser.error(f"--fad_weights {args.fad_weights}: no such file")
    for name, value in LATENT_DEFAULTS[args.model].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.prior_hidden % 8:
        parser.error(f"--prior_hidden {args.prior_hidden}: must be a multiple of 8 (its GroupNorm has 8 groups)")
    if args.prior_sampler == "dpm++2m" and args.prior_eta:
        parser.error("--prior_eta is DDIM's stochasticity; --prior_sampler dpm++2m is deterministic and takes none")
    if args.vocoder_decoder is not None and not Path(args.vocoder_decoder).exists():
        parser.error(f"--vocoder_decoder {args.vocoder_decoder}: no such file or folder")
    kind = "vae" if args.mode in ("generate", "train_prior") else args.model
    if "checkpoint" not in given_flags(parser, argv):
        args.checkpoint = DEFAULT_CHECKPOINTS[kind]
    args.checkpoint = resolve_path(args.checkpoint, DEFAULT_CHECKPOINTS[kind], SCRIPT_DIR)
    resolve_prior_and_vocoder(parser, args)
    if args.mode == "export" and args.export_dir is None:
        parser.error("--mode export writes to --export_dir: name the folder")
    trained = {"train": args.checkpoint, "train_prior": args.prior, "train_vocoder": args.vocoder,
               "train_refiner": args.vocoder}.get(args.mode)
    if trained is not None and trained.is_dir():
        parser.error(f"training writes and --resume reads a checkpoint file (.pt): {trained} is a folder (an "
                     f"exported one holds the inference weights only)")
    for name in ("results_dir", "cache_dir"):
        setattr(args, name, resolve_path(getattr(args, name), parser.get_default(name), SCRIPT_DIR))
    args.sources = list(dict.fromkeys(args.sources or SOURCES))  # drop repeats, keep order
    args.device = world.process_device(resolve_device(args.device, parser))
    return args


def resolve_prior_and_vocoder(parser, args):
    """--prior and --vocoder as paths: the files a training mode writes (defaults under models/), the ones the
    other modes read (checked to exist), or, when not given, those an exported --checkpoint folder pairs with."""
    if args.mode == "train_prior":
        args.prior = resolve_path(args.prior or DEFAULT_PRIOR, DEFAULT_PRIOR, SCRIPT_DIR)
    elif args.prior is not None:
        args.prior = Path(args.prior)
        if not args.prior.exists():
            parser.error(f"--prior {args.prior}: no such file or folder (train one with --mode train_prior)")
    elif args.mode == "generate":
        args.prior = paired(args.checkpoint, "prior")
    if args.mode in ("train_vocoder", "train_refiner"):
        args.vocoder = resolve_path(args.vocoder or DEFAULT_VOCODER, DEFAULT_VOCODER, SCRIPT_DIR)
        if args.mode == "train_refiner" and not args.vocoder.exists():
            parser.error(f"--vocoder {args.vocoder}: no such file (train the vocoder first with --mode train_vocoder)")
    elif args.inverse.startswith("vocoder"):
        default = paired(args.checkpoint, "vocoder") or resolve_path(DEFAULT_VOCODER, DEFAULT_VOCODER, SCRIPT_DIR)
        args.vocoder = Path(args.vocoder) if args.vocoder else default
        if not args.vocoder.exists():
            parser.error(f"--vocoder {args.vocoder}: no such file or folder (train one with --mode train_vocoder)")
    elif args.mode == "export" and args.vocoder is not None:
        args.vocoder = Path(args.vocoder)
        if not args.vocoder.exists():
            parser.error(f"--vocoder {args.vocoder}: no such file or folder")
    elif args.vocoder is not None:
        parser.error("--vocoder is read with --inverse vocoder (or written by --mode train_vocoder, or exported "
                     "beside an autoencoder by --mode export)")


def as_recorded(args):
    """The options as a plain dict the checkpoint keeps under "args": paths and devices as strings."""
    return {k: v if v is None or isinstance(v, (bool, int, float, str, list)) else str(v) for k, v in vars(args).items()}


def inverse_config(args):
    """How the chosen mode turns log-mels into audio."""
    return InverseConfig(args.inverse, args.griffin_lim_iters, args.phase_retrieval,
                         vocoder=args.vocoder if args.inverse.startswith("vocoder") else None)


def optimisation(args):
    """The training commands' Optimisation."""
    return Optimisation(args.epochs, args.batch_size, args.learning_rate, args.warmup_steps, args.seed, args.resume)


def configs(args, world=None):
    """The config object of the chosen mode, built from the checked options."""
    data = DataConfig(args.audio_dir, args.musdb_root, args.download, tuple(args.sources), args.cache_dir)
    shape = ModelConfig(**{name: getattr(args, name) for name in SHAPE}, variational=args.model == "vae")
    if args.mode == "train":
        return TrainConfig(data, shape, optimisation(args), args.eval_every, args.checkpoint, args.results_dir,
                           args.device, inverse_config(args), args.audio_eval_clips, as_recorded(args),
                           world or World(), KlWeight(args.kl_weight, args.kl_warmup_steps))
    if args.mode == "generate":
        return GenerateConfig(args.checkpoint, args.results_dir, args.device, args.num_samples, args.seed,
                              inverse_config(args), args.cache_dir, data if args.audio_dir else None,
                              tuple(dict.fromkeys(args.fad_embedding)),
                              Path(args.fad_weights) if args.fad_weights else None, args.prior,
                              SamplerConfig(args.prior_steps, args.prior_eta, args.prior_sampler))
    if args.mode == "train_prior":
        return PriorTrainConfig(args.checkpoint, args.prior, PriorConfig(0, args.prior_hidden, args.prior_blocks,
                                                                           bool(args.prior_clip_context)),
                                optimisation(args), args.results_dir, args.cache_dir, args.device, as_recorded(args))
    if args.mode == "train_vocoder":
        return VocoderTrainConfig(data, args.vocoder, VocoderShape(args.vocoder_dim, 3 * args.vocoder_dim,
                                                                   args.vocoder_blocks),
                                  optimisation(args), args.eval_every, args.results_dir, args.device, as_recorded(args),
                                  args.segment_frames, min(args.audio_eval_clips, 16),
                                  Path(args.vocoder_decoder) if args.vocoder_decoder else None)
    if args.mode == "train_refiner":
        return RefinerTrainConfig(data, args.vocoder, optimisation(args), args.eval_every, args.results_dir,
                                  args.device, as_recorded(args), args.refiner_channels, args.refiner_iters,
                                  args.phase_retrieval, audio_eval_clips=min(args.audio_eval_clips, 16))
    if args.mode == "infer":
        return InferConfig(data, args.checkpoint, args.results_dir, args.device, args.num_examples, args.seed,
                           inverse_config(args), args.audio_eval_clips)
    return BenchmarkConfig(data, shape, args.device, args.batch_size, args.learning_rate, inverse_config(args),
                           args.audio_eval_clips, args.seed)


def main(argv=None):
    world = World.from_environment()
    with world.quiet():  # a usage error is said once, by rank 0
        args = parse_args(argv, world)
    if args.mode == "export":
        return export(args.checkpoint, Path(args.export_dir), args.prior, args.vocoder)
    config = configs(args, world)
    if args.mode == "benchmark":
        return benchmark(config)
    job = {"train": train, "infer": infer, "generate": generate, "train_prior": train_prior,
           "train_vocoder": train_vocoder, "train_refiner": train_refiner}[args.mode]
    log = logged_to(args.results_dir / f"{args.mode}.log") if world.is_main else contextlib.nullcontext()
    with world.session(args.device), world.quiet(), log:
        return job(config)


if __name__ == "__main__":
    main()
