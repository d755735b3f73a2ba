"""Denoising diffusion (DDPM) on MNIST: train a small U-Net, then generate digits from noise.

    python image_gen/image_gen.py --mode train               # 20 epochs, FID at epochs 1, 5, 10, 15, 20
    python image_gen/image_gen.py --mode infer               # 16 digits with DDPM Algorithm 2 + FID
    python image_gen/image_gen.py --mode infer --sampler ddim --sampling_steps 50
    python image_gen/image_gen.py --mode benchmark           # training / sampling throughput

Relative default paths (data/, models/, results/) live next to this file, so the commands above and
`cd image_gen && ./train.sh` share one set of outputs. The math follows Ho et al. 2020, "Denoising
Diffusion Probabilistic Models" (Algorithms 1 and 2), and Song et al. 2021, "Denoising Diffusion
Implicit Models" (eq. 12).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

SCRIPT_DIR = Path(__file__).resolve().parent
CHECKPOINT_FORMAT = "imageaudiogen.ddpm"
CHECKPOINT_VERSION = 1
CLASSIFIER_FORMAT = "imageaudiogen.mnist_classifier"


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


def build_parser():
    p = argparse.ArgumentParser(
        description="DDPM on MNIST: train a U-Net noise predictor, sample digits, measure FID.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mode", choices=["train", "infer", "benchmark"], default="train",
                   help="train a model, generate samples from a checkpoint, or measure throughput")
    p.add_argument("--epochs", type=_number(int, 1), default=20, help="training epochs (total, also with --resume)")
    p.add_argument("--batch_size", type=_number(int, 1), default=64, help="training batch size")
    p.add_argument("--learning_rate", type=_number(float, 0, low_open=True), default=1e-3,
                   help="peak AdamW learning rate (linear warm-up, then cosine decay)")
    p.add_argument("--checkpoint", default="models/diffusion_model.pt",
                   help="checkpoint path; the default is relative to this script's folder")
    p.add_argument("--num_samples", type=_number(int, 1, 4096), default=16,
                   help="images in each sample grid (per-epoch grids and infer's final_samples.png)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--seed", type=_number(int, 0), default=0, help="random seed for weights, data order and noise")
    p.add_argument("--data_dir", default="data", help="MNIST root (torchvision layout: DATA_DIR/MNIST/raw)")
    p.add_argument("--results_dir", default="results", help="where plots, sample grids and metrics.json go")
    p.add_argument("--resume", action="store_true", help="continue training from --checkpoint")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm",
                   help="infer's sampler: ancestral DDPM over all timesteps, or DDIM over --sampling_steps")
    p.add_argument("--sampling_steps", type=_number(int, 1, 1000), default=50,
                   help="DDIM steps, used for evaluation (FID, epoch grids) and by --sampler ddim")
    p.add_argument("--eta", type=_number(float, 0.0, 1.0), default=0.0,
                   help="DDIM stochasticity: 0 is deterministic, 1 matches DDPM's posterior variance")
    p.add_argument("--ema_decay", type=_number(float, 0.0, 0.99999), default=0.999,
                   help="decay of the weight EMA used for sampling (0 disables averaging)")
    p.add_argument("--fid_samples", type=_number(int, 0), default=1000,
                   help="generated and real images per FID measurement (0 skips FID)")
    p.add_argument("--fid_weights", default=None,
                   help="local copy of torch-fidelity's Inception weights (weights-inception-2015-12-05-6726825d.pth)")
    p.add_argument("--base_channels", type=_number(int, 8, 512), default=32,
                   help="U-Net width at 28x28 (a multiple of 8; 14x14 and 7x7 use twice as many)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16 autocast for the U-Net (fast on recent GPUs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net for training")
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
    for name in ("checkpoint", "data_dir", "results_dir"):
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


# ============================================================================================
# Data
# ============================================================================================

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_mnist(data_dir, train):
    """(images, labels): uint8 (n, 28, 28) and int64 (n,), read by torchvision, downloaded on first use."""
    from torchvision.datasets import MNIST

    try:
        dataset = MNIST(str(data_dir), train=train, download=False)
        return dataset.data, dataset.targets
    except RuntimeError:
        pass  # not there yet: download below
    print(f"Downloading MNIST into {data_dir} ...", flush=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints every mirror it tries
            dataset = MNIST(str(data_dir), train=train, download=True)
        return dataset.data, dataset.targets
    except (RuntimeError, OSError) as err:
        raw = Path(data_dir) / "MNIST" / "raw"
        raise SystemExit(
            f"error: MNIST is not in {raw} and could not be downloaded ({str(err).splitlines()[0]}).\n"
            f"Put the four files {', '.join(MNIST_FILES)} (or their .gz) in {raw}, "
            f"or point --data_dir at a folder that has MNIST/raw inside.")


def to_model_range(images_uint8):
    """uint8 (n, 28, 28) in [0, 255] -> float (n, 1, 28, 28) in [-1, 1], the range the diffusion works in."""
    return images_uint8.unsqueeze(1).float().div(127.5).sub(1.0)


def to_unit_range(x):
    """Model range [-1, 1] -> [0, 1] for saving and metrics."""
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
    """U-Net noise predictor eps_theta(x_t, t) for (batch, 1, 28, 28) images.

    Encoder: two residual conv blocks, each followed by 2x max-pooling (28 -> 14 -> 7).
    Middle:  residual block, self-attention at 7x7, residual block.
    Decoder: two 2x transposed-conv up-sampling blocks (7 -> 14 -> 28), each concatenating the
             encoder features of its resolution (skip connection) before a residual block.
    The timestep embedding enters every residual block.
    """

    def __init__(self, base_channels=32, image_channels=1):
        super().__init__()
        c1, c2 = base_channels, 2 * base_channels
        emb_dim = 4 * base_channels
        self.config = {"base_channels": base_channels, "image_channels": image_channels}
        self.time_embedding = nn.Sequential(
            PositionalEncoding(base_channels), nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
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

    def forward(self, x, t):
        emb = self.time_embedding(t)
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


class DiffusionTrainer:
    """Gaussian diffusion over `num_timesteps` steps around a noise-predicting `model`.

    Holds the noise schedule, the training state (raw weights, their EMA, optimizer, LR schedule)
    and the samplers. Sampling always uses the EMA weights.
    """

    def __init__(self, model, device, num_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                 learning_rate=1e-3, ema_decay=0.999, total_steps=1, precision="fp32", compile_model=False):
        self.device = device
        self.diffusion_config = {"num_timesteps": num_timesteps, "beta_start": beta_start, "beta_end": beta_end}
        self.num_timesteps = num_timesteps
        self.model = model.to(device)
        self.ema_model = DiffusionModel(**model.config).to(device).requires_grad_(False).eval()
        self.ema_model.load_state_dict(model.state_dict())
        self.ema_decay = ema_decay
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
        warmup = max(1, min(500, total_steps // 10))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup)
            * (0.1 + 0.45 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))))
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                         else contextlib.nullcontext())
        self.train_forward = torch.compile(model) if compile_model else model
        self.step = 0
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

    def loss(self, x0):
        """Simplified DDPM objective: || eps - eps_theta(x_t, t) ||^2 with t ~ U{0..T-1}, eps ~ N(0, I)."""
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        with self.autocast:
            predicted = self.train_forward(self.q_sample(x0, t, noise), t)
        return F.mse_loss(predicted.float(), noise)

    def train_step(self, x0):
        """One optimisation step (Algorithm 1), then the EMA update. Returns the loss tensor (no sync)."""
        loss = self.loss(x0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self._update_ema()
        return loss.detach()

    @torch.no_grad()
    def _update_ema(self):
        # Warm-up (1 + n) / (10 + n) keeps early EMA weights from being dominated by the random init.
        decay = min(self.ema_decay, (1 + self.step) / (10 + self.step))
        ema_params = list(self.ema_model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in self.model.parameters()], 1.0 - decay)

    # --- reverse process ------------------------------------------------------------------------
    def _predict_eps(self, x, t):
        with self.autocast:
            return self.ema_model(x, t).float()

    def _predict_x0(self, x_t, t, eps):
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), clipped to the data range [-1, 1]."""
        x0 = self._gather(self.sqrt_recip_alphas_cumprod, t) * x_t - self._gather(self.sqrt_recipm1_alphas_cumprod, t) * eps
        return x0.clamp(-1.0, 1.0)

    def _initial_noise(self, n, generator):
        return torch.randn((n, self.ema_model.config["image_channels"], 28, 28), generator=generator, device=self.device)

    @torch.no_grad()
    def sample_ddpm(self, n, generator=None, progress=False):
        """Ancestral sampling, DDPM Algorithm 2, with the predicted x_0 clipped to [-1, 1].

        Each step draws x_{t-1} ~ q(x_{t-1} | x_t, x_0_hat) = N(mu~_t, beta~_t I) (eq. 6-7); no noise at t = 0.
        Returns (n, 1, 28, 28) in [-1, 1].
        """
        x = self._initial_noise(n, generator)
        for step in tqdm(range(self.num_timesteps - 1, -1, -1), desc="DDPM", leave=False, disable=not progress):
            t = torch.full((n,), step, device=self.device, dtype=torch.long)
            x0 = self._predict_x0(x, t, self._predict_eps(x, t))
            mean = self._gather(self.posterior_mean_coef1, t) * x0 + self._gather(self.posterior_mean_coef2, t) * x
            if step > 0:
                noise = torch.randn(x.shape, generator=generator, device=self.device)
                x = mean + (0.5 * self._gather(self.posterior_log_variance_clipped, t)).exp() * noise
            else:
                x = mean
        return x

    def ddim_timesteps(self, steps):
        """`steps` evenly spaced timesteps from T-1 down to 0."""
        return torch.linspace(self.num_timesteps - 1, 0, steps).round().long().unique_consecutive().tolist()

    @torch.no_grad()
    def sample_ddim(self, n, steps=50, eta=0.0, generator=None, progress=False):
        """DDIM sampling (Song et al. 2021, eq. 12) over a `steps`-long sub-sequence of timesteps.

        eta = 0 gives a deterministic map from noise to image; eta = 1 matches DDPM's variance.
        Returns (n, 1, 28, 28) in [-1, 1].
        """
        x = self._initial_noise(n, generator)
        timesteps = self.ddim_timesteps(steps)
        for i, step in enumerate(tqdm(timesteps, desc="DDIM", leave=False, disable=not progress)):
            t = torch.full((n,), step, device=self.device, dtype=torch.long)
            x0 = self._predict_x0(x, t, self._predict_eps(x, t))
            # eps consistent with the clipped x_0, so the update stays on the data manifold.
            eps = (self._gather(self.sqrt_recip_alphas_cumprod, t) * x - x0) / self._gather(self.sqrt_recipm1_alphas_cumprod, t)
            abar = self.alphas_cumprod[step]
            abar_prev = self.alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.ones_like(abar)
            sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
            x = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt() * eps
            if eta > 0 and i + 1 < len(timesteps):
                x = x + sigma * torch.randn(x.shape, generator=generator, device=self.device)
        return x

    def sample(self, n, sampler="ddim", steps=50, eta=0.0, seed=None, batch_size=None, progress=False):
        """`n` images in [-1, 1] from the EMA model, in batches; a `seed` makes the result repeatable.

        The default batch is `sampling_batch_size(device)`.
        """
        batch_size = batch_size or sampling_batch_size(self.device)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else torch.seed())
        batches = []
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            if sampler == "ddpm":
                batches.append(self.sample_ddpm(size, generator, progress))
            else:
                batches.append(self.sample_ddim(size, steps, eta, generator, progress))
        return torch.cat(batches)

    # --- state ------------------------------------------------------------------------------------
    def state_dict(self):
        return {
            "model": self.model.state_dict(),
            "ema": self.ema_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
        }

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.ema_model.load_state_dict(state["ema"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self.step = state.get("step", 0)


# ============================================================================================
# Checkpoints
# ============================================================================================

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
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle error, not a torch file at all
        raise SystemExit(f"error: cannot read checkpoint {path}: it is truncated or not a PyTorch file "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    if not isinstance(state, dict) or state.get("format") != expected_format:
        raise SystemExit(f"error: {path} is not an ImageAudioGen checkpoint of type {expected_format!r}")
    if state.get("version") != CHECKPOINT_VERSION:
        raise SystemExit(f"error: {path} has checkpoint version {state.get('version')}, "
                         f"this script reads version {CHECKPOINT_VERSION}")
    return state


def rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_checkpoint(trainer, epoch, history, args, interrupted=False):
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": dict(trainer.model.config),
        "diffusion_config": dict(trainer.diffusion_config),
        **trainer.state_dict(),
        "epoch": epoch,
        "interrupted": interrupted,
        "rng": rng_state(),
        "history": history,
        "args": {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in vars(args).items()},
    }


def trainer_from_checkpoint(state, device, **training_kwargs):
    """Rebuild model and diffusion from what the checkpoint says about itself."""
    model = DiffusionModel(**state["model_config"])
    trainer = DiffusionTrainer(model, device, **state["diffusion_config"], **training_kwargs)
    trainer.load_state_dict(state)
    return trainer


# ============================================================================================
# Training
# ============================================================================================

def evaluation_epochs(epochs):
    """Epoch 1, every 5th, and the last."""
    return sorted({1, epochs} | set(range(5, epochs + 1, 5)))


def first_nonfinite(losses):
    """Index of the first NaN/inf in a list of scalar tensors (one host sync), or None."""
    values = torch.stack(losses).tolist()
    return next((i for i, v in enumerate(values) if not math.isfinite(v)), None), values


def train_one_epoch(trainer, images, batch_size, epoch, epochs, check_every=25):
    """One pass over `images` ((n, 1, 28, 28) on the device) in random order; returns (mean loss, img/s)."""
    trainer.model.train()
    n = len(images)
    steps = max(1, n // batch_size)  # drop the ragged tail; the order is new each epoch
    order = torch.randperm(n, device=images.device)
    pending, total, count = [], 0.0, 0
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=f"epoch {epoch}/{epochs}", unit="step", leave=False, dynamic_ncols=True)
    for step in bar:
        x0 = images[order[step * batch_size:(step + 1) * batch_size]]
        pending.append(trainer.train_step(x0))
        if len(pending) == check_every or step == steps - 1:
            bad, values = first_nonfinite(pending)
            if bad is not None:
                raise FloatingPointError(f"loss became {values[bad]} at epoch {epoch}, step {step - len(values) + bad + 2}"
                                         f" of {steps}; lower --learning_rate or try --precision fp32")
            total, count, pending = total + sum(values), count + len(values), []
            rate = count * x0.shape[0] / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{total / count:.4f}", img_s=f"{rate:.0f}")
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return total / count, steps * min(batch_size, n) / seconds, seconds


def train(args):
    torch.manual_seed(args.seed)
    images = to_model_range(load_mnist(args.data_dir, train=True)[0]).to(args.device)
    steps_per_epoch = max(1, len(images) // args.batch_size)
    training_kwargs = dict(learning_rate=args.learning_rate, ema_decay=args.ema_decay,
                           total_steps=args.epochs * steps_per_epoch, precision=args.precision,
                           compile_model=args.compile)
    history, start_epoch = [], 1
    if args.resume:
        state = load_checkpoint(args.checkpoint, CHECKPOINT_FORMAT)
        trainer = trainer_from_checkpoint(state, args.device, **training_kwargs)
        set_rng_state(state["rng"])
        history, start_epoch = state["history"], state["epoch"] + 1
        print(f"Resuming from {args.checkpoint} after epoch {state['epoch']} (step {trainer.step})")
    else:
        if args.checkpoint.exists():
            print(f"note: starting a new run; {args.checkpoint} will be overwritten (use --resume to continue it)")
        trainer = DiffusionTrainer(DiffusionModel(args.base_channels), args.device, **training_kwargs)
    if start_epoch > args.epochs:
        print(f"Nothing to do: the checkpoint already has {start_epoch - 1} epochs (--epochs {args.epochs}).")
        return history

    results = args.results_dir
    (results / "epoch_comparisons").mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    print(f"Training DDPM on {len(images)} MNIST images, {n_params / 1e6:.2f}M parameters, device {args.device}, "
          f"{steps_per_epoch} steps/epoch")
    evaluator = make_evaluator(args) if args.fid_samples else None
    eval_epochs = evaluation_epochs(args.epochs)

    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            loss, rate, train_seconds = train_one_epoch(trainer, images, args.batch_size, epoch, args.epochs)
            record = {"epoch": epoch, "loss": loss, "images_per_s": rate, "train_seconds": train_seconds,
                      "fid": None, "eval_seconds": 0.0, "lr": trainer.scheduler.get_last_lr()[0]}
            line = f"epoch {epoch:3d}/{args.epochs}  loss {loss:.4f}  {rate:7.0f} img/s  {train_seconds:6.1f}s"
            if epoch in eval_epochs:
                record.update(evaluate_epoch(trainer, evaluator, args, epoch))
                if record["fid"] is not None:
                    line += f"  FID {record['fid']:.2f} ({evaluator.backbone}, {args.fid_samples})"
                line += f"  eval {record['eval_seconds']:.1f}s"
            history.append(record)
            print(line, flush=True)
            atomic_torch_save(make_checkpoint(trainer, epoch, history, args), args.checkpoint)
            write_training_outputs(history, evaluator, args)
    except KeyboardInterrupt:
        atomic_torch_save(make_checkpoint(trainer, epoch - 1, history, args, interrupted=True), args.checkpoint)
        raise SystemExit(f"\nInterrupted during epoch {epoch}: checkpoint of the last finished epoch's progress "
                         f"saved to {args.checkpoint}; continue with --resume.")
    except FloatingPointError as err:
        raise SystemExit(f"error: {err}. The last good checkpoint is {args.checkpoint}.")
    summarize_timing(history)
    return history


def make_evaluator(args):
    return FidEvaluator(args.data_dir, args.device, args.fid_samples,
                        classifier_cache=args.checkpoint.parent / "mnist_classifier.pt",
                        inception_weights=args.fid_weights)


def evaluate_epoch(trainer, evaluator, args, epoch):
    """Sample grid from fixed noise, and FID when enabled. Returns the record fields it measured."""
    start = time.perf_counter()
    trainer.ema_model.eval()
    grid = trainer.sample(args.num_samples, "ddim", args.sampling_steps, args.eta, seed=args.seed + 1)
    save_grid(to_unit_range(grid), args.results_dir / "epoch_comparisons" / f"samples_epoch_{epoch:03d}.png")
    fid = None
    if evaluator is not None:
        generated = trainer.sample(args.fid_samples, "ddim", args.sampling_steps, args.eta, seed=args.seed + 2)
        fid = evaluator(to_unit_range(generated))
    return {"fid": fid, "eval_seconds": time.perf_counter() - start}


def write_training_outputs(history, evaluator, args):
    backbone = evaluator.backbone if evaluator else None
    plot_training_loss(history, args.results_dir / "training_loss.png")
    plot_metrics_comparison(history, backbone or "no", args.fid_samples,
                            args.results_dir / "epoch_comparisons" / "metrics_comparison.png")
    metrics = read_json(args.results_dir / "metrics.json")
    metrics["train"] = {
        "fid_backbone": backbone, "fid_samples": args.fid_samples, "fid_sampler": f"ddim-{args.sampling_steps}",
        "device": str(args.device), "batch_size": args.batch_size, "epochs": history,
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
# Evaluation: FID
# ============================================================================================

class MnistClassifier(nn.Module):
    """Small CNN for MNIST digits. Its 128-d penultimate layer is the fallback FID feature space."""

    num_features = 128  # read by torchmetrics' FID for custom feature extractors

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.classify = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, 10))

    def forward(self, images):
        """(batch, 1 or 3, 28, 28) in [0, 1] -> (batch, 128) features. Three channels are the
        grey image repeated for Inception; the classifier reads one."""
        return self.features(images[:, :1] * 2.0 - 1.0)


def train_mnist_classifier(data_dir, device, max_steps=3000, max_epochs=30, batch_size=128, seed=0):
    """Fit MnistClassifier on the MNIST training set; returns (model, test accuracy).

    Runs for `max_steps` steps (about 6 epochs of full MNIST, ~99% test accuracy) or `max_epochs`
    epochs, whichever is shorter, so small training sets still get enough passes."""
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = load_mnist(data_dir, train=True)
    x_test, y_test = load_mnist(data_dir, train=False)
    model = MnistClassifier().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    epochs = min(max_epochs, math.ceil(max_steps * batch_size / len(x_train)))
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in tqdm(range(0, len(order), batch_size), desc="MNIST classifier (FID fallback)", leave=False):
            idx = order[start:start + batch_size]
            images = x_train[idx].unsqueeze(1).float().div(255).to(device)
            loss = F.cross_entropy(model.classify(model(images)), y_train[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model.classify(model(x_test[i:i + 1000].unsqueeze(1).float().div(255).to(device)))
                            for i in range(0, len(x_test), 1000)])
    accuracy = (logits.argmax(1).cpu() == y_test).float().mean().item()
    return model, accuracy


def load_or_train_classifier(cache_path, data_dir, device):
    """The fallback feature extractor, trained once and cached (keyed by the training-set size)."""
    train_size = len(load_mnist(data_dir, train=True)[0])
    if Path(cache_path).is_file():
        try:
            state = torch.load(cache_path, map_location="cpu", weights_only=True)
            if state.get("format") == CLASSIFIER_FORMAT and state.get("train_size") == train_size:
                model = MnistClassifier()
                model.load_state_dict(state["state_dict"])
                return model.to(device).eval(), state["test_accuracy"]
        except Exception:
            pass  # a stale or broken cache is simply rebuilt
    print(f"Training the MNIST classifier used as FID fallback backbone (once, cached in {cache_path}) ...")
    model, accuracy = train_mnist_classifier(data_dir, device)
    atomic_torch_save({"format": CLASSIFIER_FORMAT, "state_dict": model.state_dict(),
                       "test_accuracy": accuracy, "train_size": train_size}, cache_path)
    return model, accuracy


class FidEvaluator:
    """FID of generated digits against the first `num_samples` MNIST test images.

    Uses torchmetrics' FrechetInceptionDistance with Inception-v3 (2048-d pool features) when its
    weights can be had; otherwise the 128-d features of MnistClassifier. `backbone` names which.
    The real-image statistics are computed once and kept across evaluations.
    """

    def __init__(self, data_dir, device, num_samples, classifier_cache, inception_weights=None):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.device = device
        self.num_samples = num_samples
        try:
            weights = None
            if inception_weights:
                torch.load(inception_weights, map_location="cpu", weights_only=True)  # refuse pickled code
                weights = str(inception_weights)
            with contextlib.redirect_stderr(io.StringIO()):  # torch.hub's download banner; failure is reported below
                self.metric = FrechetInceptionDistance(feature=2048, normalize=True, reset_real_features=False,
                                                       feature_extractor_weights_path=weights)
            self.backbone = "inception-v3"
        except Exception as err:  # offline, torch-fidelity missing, or an unusable weights file
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            classifier, accuracy = load_or_train_classifier(classifier_cache, data_dir, device)
            print(f"note: Inception-v3 weights unavailable ({reason}); FID uses the features of a small MNIST "
                  f"classifier instead (test accuracy {accuracy:.2%}). Such values are not comparable to "
                  f"Inception FID.")
            self.metric = FrechetInceptionDistance(feature=classifier, normalize=True, reset_real_features=False)
            self.backbone = "mnist-classifier"
        self.metric = self.metric.to(device)
        real = load_mnist(data_dir, train=False)[0][:num_samples]
        if len(real) < num_samples:
            print(f"note: only {len(real)} MNIST test images; FID uses {len(real)} real images")
        self._update(to_unit_range(to_model_range(real)), real=True)

    @torch.no_grad()
    def _update(self, images, real, batch_size=250):
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(self.device)
            self.metric.update(batch.expand(-1, 3, -1, -1), real=real)

    def __call__(self, generated):
        """FID of `generated` (n, 1, 28, 28) images in [0, 1]."""
        self.metric.reset()  # keeps the real statistics
        self._update(generated, real=False)
        return float(self.metric.compute())


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


def save_individual(images, folder):
    from torchvision.utils import save_image

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("sample_*.png"):
        old.unlink()  # a smaller run must not leave stale samples behind
    for i, image in enumerate(images.cpu()):
        save_image(image, folder / f"sample_{i:03d}.png")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _epoch_axis(ax):
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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


def plot_metrics_comparison(history, backbone, fid_samples, path):
    plt = _pyplot()
    fig, (ax_fid, ax_loss) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    evaluated = [h for h in history if h.get("fid") is not None]
    if evaluated:
        ax_fid.plot([h["epoch"] for h in evaluated], [h["fid"] for h in evaluated], marker="o", color="tab:red")
        if min(h["fid"] for h in evaluated) > 0:
            ax_fid.set_yscale("log")  # FID falls by orders of magnitude; a linear axis hides the late epochs
    else:
        ax_fid.text(0.5, 0.5, "FID not measured (--fid_samples 0)", ha="center", va="center", transform=ax_fid.transAxes)
    ax_fid.set(ylabel="FID (lower is better)",
               title=f"FID, {backbone} features, {fid_samples} samples")
    ax_loss.plot([h["epoch"] for h in history], [h["loss"] for h in history], color="tab:blue",
                 marker="o" if len(history) <= 60 else None)
    ax_loss.set(ylabel="training loss (MSE)", yscale="log", title="Training loss")
    for ax in (ax_fid, ax_loss):
        ax.grid(True, alpha=0.3)
        _epoch_axis(ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_json_atomic(data, path):
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

def infer(args):
    state = load_checkpoint(args.checkpoint, CHECKPOINT_FORMAT)
    trainer = trainer_from_checkpoint(state, args.device, precision=args.precision)
    torch.manual_seed(args.seed)
    steps = trainer.num_timesteps if args.sampler == "ddpm" else args.sampling_steps
    print(f"Sampling {args.num_samples} digits with {args.sampler.upper()} ({steps} steps) from "
          f"{args.checkpoint} (epoch {state['epoch']})")
    start = time.perf_counter()
    samples = to_unit_range(trainer.sample(args.num_samples, args.sampler, args.sampling_steps, args.eta,
                                           seed=args.seed, progress=True))
    sample_seconds = time.perf_counter() - start
    save_grid(samples, args.results_dir / "final_samples.png")
    save_individual(samples, args.results_dir / "samples")
    print(f"Saved {args.results_dir / 'final_samples.png'} and {len(samples)} PNGs in {args.results_dir / 'samples'} "
          f"({sample_seconds:.1f}s)")

    record = {"checkpoint": str(args.checkpoint), "epoch": state["epoch"], "sampler": args.sampler,
              "steps": steps, "num_samples": args.num_samples, "sample_seconds": sample_seconds}
    if args.fid_samples:
        evaluator = make_evaluator(args)
        start = time.perf_counter()
        generated = trainer.sample(args.fid_samples, "ddim", args.sampling_steps, args.eta, seed=args.seed + 2,
                                   progress=False)
        record.update(fid=evaluator(to_unit_range(generated)), fid_backbone=evaluator.backbone,
                      fid_samples=args.fid_samples, fid_sampler=f"ddim-{args.sampling_steps}",
                      fid_seconds=time.perf_counter() - start)
        print(f"FID {record['fid']:.2f} ({evaluator.backbone} features, {args.fid_samples} DDIM-{args.sampling_steps} "
              f"samples vs {args.fid_samples} MNIST test images; lower is better)")
    metrics = read_json(args.results_dir / "metrics.json")
    metrics["infer"] = record
    write_json_atomic(metrics, args.results_dir / "metrics.json")
    return record


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
    """(images/s, GFLOP/s) of full training steps (forward, backward, AdamW, EMA) on random data."""
    from torch.utils.flop_counter import FlopCounterMode

    trainer = DiffusionTrainer(model, device, precision=precision, compile_model=compile_model,
                               total_steps=10_000)
    x0 = torch.randn(batch_size, 1, 28, 28, device=device)
    with FlopCounterMode(display=False) as counter:
        trainer.loss(x0).backward()
    seconds = _timed(lambda: trainer.train_step(x0), device, repeats)
    return batch_size / seconds, counter.get_total_flops() / seconds / 1e9


def benchmark(args):
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        cpu = device.type == "cpu"
        torch.manual_seed(args.seed)
        model = DiffusionModel(args.base_channels)
        rate, gflops = benchmark_training(model, device, args.batch_size, 5 if cpu else 50, args.precision, args.compile)
        print(f"[{device}] training  batch {args.batch_size}: {rate:8.0f} img/s  {gflops:7.1f} GFLOP/s "
              f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {args.precision})")
        trainer = DiffusionTrainer(model, device, precision=args.precision)
        for label, sampler, steps in (("DDPM-1000", "ddpm", 1000), ("DDIM-50", "ddim", 50), ("DDIM-100", "ddim", 100)):
            n = 16 if cpu and sampler == "ddpm" else sampling_batch_size(device)  # CPU DDPM-1000: under a minute
            seconds = _timed(lambda: trainer.sample(n, sampler, steps, seed=0), device, 1)
            print(f"[{device}] sampling {label:9s} batch {n}: {n / seconds:8.1f} img/s")


# ============================================================================================
# main
# ============================================================================================

def main(argv=None):
    args = parse_args(argv)
    if args.mode == "train":
        train(args)
    elif args.mode == "infer":
        infer(args)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
