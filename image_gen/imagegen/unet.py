"""The noise predictor eps_theta(x_t, t, c): a small U-Net over (batch, 1, 28, 28) images, and the
Denoiser that calls it the way the diffusion needs (chosen precision, float32 out)."""
from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


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


def cpu_has_bf16(cpuinfo=Path("/proc/cpuinfo")):
    """Whether the CPU computes bfloat16 in hardware (Linux flags avx512_bf16 or amx_bf16). Only there does
    `--precision bf16` pay on a CPU; elsewhere bf16 is emulated and much slower than fp32 (docs/image-results.md)."""
    try:
        flags = cpuinfo.read_text()
    except OSError:  # not Linux: no way to tell, so fp32
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


PRECISIONS = ("auto", "fp32", "bf16")  # the choices of every --precision flag; resolve_precision reads them


def resolve_precision(choice, device, kind="ddpm"):
    """fp32 or bf16 for `--precision auto|fp32|bf16`. auto is bf16 for a DDPM's U-Net on a CPU with bfloat16
    instructions, where it trains about 1.4x and samples about 1.6x faster than in fp32 with quality measured
    equal (docs/image-results.md#cpu-training-throughput); fp32 everywhere else: other CPUs emulate bf16 many
    times slower, a GPU keeps the arithmetic its figures were measured with, and a GAN (`kind` 'gan') was
    measured in fp32 only."""
    if choice != "auto":
        return choice
    return "bf16" if kind == "ddpm" and torch.device(device).type == "cpu" and cpu_has_bf16() else "fp32"


class Denoiser:
    """eps_theta as the diffusion math calls it: `model` (a DiffusionModel) run through `forward` (the model
    itself, or a torch.compile of it) under the chosen precision, the prediction returned in float32.

    `num_classes` and `null_class` come from the model; an unconditional model is called without labels."""

    def __init__(self, model, precision="fp32", forward=None):
        self.model = model
        self.forward = model if forward is None else forward
        self.num_classes = model.num_classes
        self.null_class = model.num_classes  # the label index that means "no class"
        device = next(model.parameters()).device
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                         else contextlib.nullcontext())

    def __call__(self, x, t, labels=None):
        """x (batch, C, 28, 28), t (batch,), labels (batch,) or None -> float32 noise prediction like x."""
        with self.autocast:
            return (self.forward(x, t) if labels is None else self.forward(x, t, labels)).float()
