"""The learned prior: a small diffusion model over the VAE's latents, as latent diffusion does for images
(Rombach et al. 2022) and Stable Audio for sound (Evans et al. 2024). The VAE's own prior, N(0, I), treats
every latent value as independent of every other; this one learns how a clip's latent frames follow each
other and how its channels move together, from the latents of the VAE's training music.

    LatentDenoiser     v_theta(z_t, t): dilated residual Conv1d blocks over the latent frames, told the
                       clip's mean latent as well as the timestep
    LatentPrior        the denoiser and the per-channel statistics that standardise the latents
    LatentDiffusion    the math: cosine schedule, forward process, loss, the DDIM reverse process
    SamplerConfig      the reverse process's settings, as one value
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


PRIOR_SAMPLERS = ("ddim", "dpm++2m")


@dataclass(frozen=True)
class PriorConfig:
    """The denoiser's shape: `latent_dim` channels (the VAE's), `hidden` channels inside, `blocks` residual
    blocks, whether the blocks are told the clip's mean latent (`clip_context`), and the diffusion's
    `timesteps`."""
    latent_dim: int
    hidden: int = 128
    blocks: int = 8
    clip_context: bool = True
    timesteps: int = 1000


@dataclass(frozen=True)
class SamplerConfig:
    """The reverse process: `steps` network evaluations of DDIM (Song et al. 2021) with stochasticity `eta`
    (0: deterministic, 1: the DDPM posterior's variance), or of DPM-Solver++(2M) (`sampler` 'dpm++2m', Lu et
    al. 2022; deterministic)."""
    steps: int = 50
    eta: float = 0.0
    sampler: str = "ddim"

    def __post_init__(self):
        if self.sampler not in PRIOR_SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}: expected one of {', '.join(PRIOR_SAMPLERS)}")
        if self.steps < 1 or not 0.0 <= self.eta <= 1.0 or (self.sampler == "dpm++2m" and self.eta):
            raise ValueError(f"bad sampler settings: steps {self.steps} (>= 1), eta {self.eta} (in [0, 1]; "
                             f"none for dpm++2m)")

    @property
    def name(self):
        """'ddim-50', 'ddim-50 eta 0.5' or 'dpm++2m-10'."""
        return f"{self.sampler}-{self.steps}" + (f" eta {self.eta:g}" if self.eta else "")


def timestep_embedding(t, dim, max_period=10_000):
    """(batch,) integer timesteps -> (batch, dim) sinusoidal features (Vaswani et al. 2017, as DDPM uses them)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class DenoiserBlock(nn.Module):
    """Pre-activation residual block over time whose normalised input the timestep scales and shifts
    (improved-diffusion's use_scale_shift_norm, Nichol & Dhariwal 2021): (GroupNorm, FiLM(t), SiLU, dilated
    Conv1d, GroupNorm, SiLU, Conv1d) plus the identity; the last conv starts at zero, so the block starts as
    the identity."""

    def __init__(self, channels, embedding_dim, dilation):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels)
        self.film = nn.Linear(embedding_dim, 2 * channels)
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.norm2 = nn.GroupNorm(8, channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, embedding):
        scale, shift = self.film(embedding)[:, :, None].chunk(2, dim=1)
        h = self.conv1(F.silu(self.norm1(x) * (1 + scale) + shift))
        return x + self.conv2(F.silu(self.norm2(h)))


class LatentDenoiser(nn.Module):
    """v_theta(z_t, t): (batch, latent_dim, frames) noisy standardised latents and (batch,) timesteps ->
    the predicted velocity v (LatentDiffusion), same shape. Dilations cycle 1, 2, 4, 8, so 8 blocks see 76
    latent frames (a clip has 32 at the defaults).

    With `clip_context`, the FiLM of every block also hears the mean of z_t over the clip's frames, times
    sqrt(frames) so that it has unit variance in pure noise. A clip's loudness and colour are shared by all
    of its frames; at high noise they show only in that mean, 1/sqrt(frames) as strong as the per-frame
    noise. Without it the prior's samples kept half of the training latents' clip-level variance
    (docs/audio-results.md)."""

    def __init__(self, latent_dim, hidden=128, blocks=8, clip_context=True):
        super().__init__()
        self.hidden = hidden
        embedding_dim = 4 * hidden
        self.time_mlp = nn.Sequential(nn.Linear(hidden, embedding_dim), nn.SiLU(), nn.Linear(embedding_dim, embedding_dim))
        self.clip_mlp = (nn.Sequential(nn.Linear(latent_dim, embedding_dim), nn.SiLU(),
                                       nn.Linear(embedding_dim, embedding_dim)) if clip_context else None)
        self.inp = nn.Conv1d(latent_dim, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(DenoiserBlock(hidden, embedding_dim, 2 ** (i % 4)) for i in range(blocks))
        self.out = nn.Sequential(nn.GroupNorm(8, hidden), nn.SiLU(), nn.Conv1d(hidden, latent_dim, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # v = 0 at the start: the loss starts at 1, the data's variance
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, z_t, t):
        embedding = self.time_mlp(timestep_embedding(t, self.hidden))
        if self.clip_mlp is not None:
            embedding = embedding + self.clip_mlp(z_t.mean(dim=2) * math.sqrt(z_t.shape[2]))
        h = self.inp(z_t)
        for block in self.blocks:
            h = block(h, embedding)
        return self.out(h)


class LatentPrior(nn.Module):
    """The learned prior of one VAE: the denoiser, and the per-channel mean and std of the VAE's training
    latents (buffers, so they travel with the weights). The diffusion runs on standardised latents
    (z - latent_mean) / latent_std, whose scale its schedule assumes (latent diffusion's scale factor,
    per channel here)."""

    def __init__(self, latent_dim, hidden=128, blocks=8, clip_context=True, timesteps=1000):
        super().__init__()
        self.config = {"latent_dim": latent_dim, "hidden": hidden, "blocks": blocks, "clip_context": clip_context,
                       "timesteps": timesteps}
        self.denoiser = LatentDenoiser(latent_dim, hidden, blocks, clip_context)
        self.register_buffer("latent_mean", torch.zeros(latent_dim))
        self.register_buffer("latent_std", torch.ones(latent_dim))

    def set_statistics(self, latents):
        """Per-channel mean and std over (n, latent_dim, frames) latents."""
        self.latent_mean.copy_(latents.mean(dim=(0, 2)))
        self.latent_std.copy_(latents.std(dim=(0, 2)).clamp(min=1e-4))

    def standardize(self, z):
        """(batch, latent_dim, frames) VAE latents -> the diffusion's units."""
        return (z - self.latent_mean[:, None]) / self.latent_std[:, None]

    def unstandardize(self, x):
        """The inverse of `standardize`."""
        return x * self.latent_std[:, None] + self.latent_mean[:, None]

    def forward(self, z_t, t):
        return self.denoiser(z_t, t)


class LatentDiffusion:
    """Gaussian diffusion over (batch, channels, frames) with the cosine schedule (Nichol & Dhariwal 2021,
    eq. 17), whose signal fades gently at both ends: it suits latents of unit variance better than DDPM's
    linear betas. No parameters: every call takes the network `model(z_t, t) -> v` first.

    The network predicts the velocity v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0 (Salimans & Ho 2022,
    section 4; Stable Audio's objective), not the noise eps. From eps, z_0 = (z_t - sqrt(1 - abar_t) eps) /
    sqrt(abar_t) divides by sqrt(abar_T) = 5e-5 at the cosine schedule's last step, so the first sampling
    step multiplies the network's error by 2e4: an eps-prior of 24 epochs gave samples with a std of
    12,806 where 1 was due. From v, z_0 = sqrt(abar_t) z_t - sqrt(1 - abar_t) v divides by nothing."""

    def __init__(self, timesteps=1000, s=0.008):
        self.timesteps = timesteps
        steps = torch.arange(timesteps + 1, dtype=torch.float64)
        f = torch.cos((steps / timesteps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)  # eq. 17's clipping, which keeps the last step finite
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)  # (timesteps,) float64
        self._on_device = self.alphas_cumprod  # its copy on the device last sampled on

    def _abar(self, t, like):
        """alphas_cumprod[t] for (batch,) t, shaped (batch, 1, 1) like `like`. The schedule is copied to a GPU
        once, not at every step of every clip."""
        if self._on_device.device != like.device:
            self._on_device = self.alphas_cumprod.to(like.device)
        return self._on_device[t].to(like.dtype).view(-1, 1, 1)

    def q_sample(self, z0, t, noise):
        """z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4)."""
        abar = self._abar(t, z0)
        return abar.sqrt() * z0 + (1 - abar).sqrt() * noise

    def velocity(self, z0, t, noise):
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0, the network's target (Salimans & Ho 2022, eq. 4's v)."""
        abar = self._abar(t, z0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * z0

    def loss(self, model, z0, generator=None):
        """||v - v_theta(z_t, t)||^2 with t uniform and eps ~ N(0, I) (Ho et al. 2020's simple objective, eq. 14,
        with the v target), from `generator` or else the global RNG (which a checkpoint saves). For data of
        unit variance, predicting v = 0 scores 1."""
        t = torch.randint(0, self.timesteps, (z0.shape[0],), generator=generator).to(z0.device)
        noise = torch.randn(z0.shape, generator=generator).to(z0.device) if generator else torch.randn_like(z0)
        return F.mse_loss(model(self.q_sample(z0, t, noise), t), self.velocity(z0, t, noise))

    def ddim_timesteps(self, steps):
        """`steps` timesteps from T - 1 down to 0, evenly spaced (Song et al. 2021, section 4.2)."""
        return torch.linspace(self.timesteps - 1, 0, steps).round().long().unique_consecutive()

    def log_snr_timesteps(self, steps):
        """`steps` distinct timesteps from T - 1 down to 0 for DPM-Solver++: T - 1 (where z_T is drawn), then
        the others evenly spaced in lambda = log(alpha / sigma) from t = 0.9946 (T - 1) down to 0, each the
        integer t nearest its target (where several share a t, each takes at least the one below it plus 1).
        The cosine schedule's last few steps are clipped (eq. 17), and lambda falls from -5 to -10 within them:
        spread evenly over the whole range, 20 steps spent four on that pure noise and solved the Gaussian case
        worse than 10. Lu et al. (2022) end the cosine schedule at the same 0.9946 T."""
        if steps == 1:
            return torch.tensor([self.timesteps - 1])
        abar = self.alphas_cumprod
        log_snr = 0.5 * (abar.log() - (1 - abar).log())  # decreasing in t
        top = round(0.9946 * (self.timesteps - 1))
        targets = (torch.linspace(float(log_snr[top]), float(log_snr[0]), steps - 1, dtype=torch.float64)
                   if steps > 2 else log_snr[:1])
        nearest = (log_snr[None, :] - targets[:, None]).abs().argmin(dim=1).tolist()
        for i in range(len(nearest) - 1, -1, -1):
            below = nearest[i + 1] + 1 if i + 1 < len(nearest) else 0
            nearest[i] = min(max(nearest[i], below), self.timesteps - 2 - i)
        return torch.tensor([self.timesteps - 1, *nearest])

    def _z0_and_eps(self, model, z, step):
        """(z_0, eps, abar) from the network's v at timestep `step` (Salimans & Ho 2022, section 4): both from
        v, so that neither divides by sqrt(abar_T)."""
        t = torch.full((z.shape[0],), step, device=z.device, dtype=torch.long)
        abar = self._abar(t, z)
        v = model(z, t)
        return abar.sqrt() * z - (1 - abar).sqrt() * v, (1 - abar).sqrt() * z + abar.sqrt() * v, abar

    @torch.no_grad()
    def sample(self, model, noise, sampler, generator=None):
        """z_0 from z_T = `noise` (batch, channels, frames) in sampler.steps network evaluations: DDIM (Song et
        al. 2021, eq. 12; eta > 0 adds fresh noise from `generator` at each step, drawn on the CPU so that a seed
        gives the same clips on any device) or DPM-Solver++(2M) (dpm_solver_2m)."""
        if sampler.sampler == "dpm++2m":
            return self.dpm_solver_2m(model, noise, sampler.steps)
        z = noise
        times = self.ddim_timesteps(sampler.steps).tolist()
        for i, step in enumerate(times):
            z0, eps, abar = self._z0_and_eps(model, z, step)
            abar_prev = (self._abar(torch.full((z.shape[0],), times[i + 1], device=z.device), z)
                         if i + 1 < len(times) else torch.ones_like(abar))
            sigma = sampler.eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
            z = abar_prev.sqrt() * z0 + (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt() * eps
            if sampler.eta > 0 and i + 1 < len(times):
                z = z + sigma * torch.randn(z.shape, generator=generator).to(z.device)
        return z

    def dpm_solver_2m(self, model, z, steps):
        """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2: multistep, data prediction) over `steps` timesteps
        even in log-SNR. With lambda = log(alpha / sigma), h = lambda_prev - lambda and z_0 from v:

            z_prev = (sigma_prev / sigma) z_t - alpha_prev (e^{-h} - 1) D,
            D = (1 + 1 / (2r)) z0_hat - 1 / (2r) z0_hat_before,   r = h_before / h,

        first order where there is no step before; the last evaluation (t = 0, to abar = 1) returns z0_hat."""
        abar_all = self.alphas_cumprod  # float64: lambda spans about 20 nats over the cosine schedule
        log_snr = 0.5 * (abar_all.log() - (1 - abar_all).log())
        times = self.log_snr_timesteps(steps).tolist()
        previous = None
        for step, prev in zip(times, times[1:]):
            z0, _, _ = self._z0_and_eps(model, z, step)
            h = float(log_snr[prev] - log_snr[step])
            estimate = z0
            if previous is not None:
                z0_before, h_before = previous
                r = h_before / h
                estimate = (1 + 1 / (2 * r)) * z0 - (1 / (2 * r)) * z0_before
            sigma_ratio = float(((1 - abar_all[prev]) / (1 - abar_all[step])).sqrt())
            z = sigma_ratio * z - float(abar_all[prev].sqrt() * math.expm1(-h)) * estimate
            previous = (z0, h)
        return self._z0_and_eps(model, z, times[-1])[0]  # the last evaluation, at t = 0


def sample_latents(prior, count, frames, seed, sampler, progress=lambda clips: clips):
    """(count, latent_dim, frames) VAE latents from the learned prior, on the prior's device: clip i starts
    from the i-th draw of one generator seeded with `seed` (as the N(0, I) prior's clip i does) and runs
    alone, with its own generator for eta's noise, so clip i never depends on `count`. `progress` wraps the
    loop over clips (a progress bar)."""
    prior.eval()
    device = prior.latent_mean.device
    diffusion = LatentDiffusion(prior.config["timesteps"])
    generator = torch.Generator().manual_seed(seed)
    shape = (1, prior.config["latent_dim"], frames)
    starts = [torch.randn(shape, generator=generator) for _ in range(count)]
    latents = []
    for i, start in progress(list(enumerate(starts))):
        step_noise = torch.Generator().manual_seed(seed * 1_000_003 + i)
        z = diffusion.sample(prior, start.to(device), sampler, step_noise)
        latents.append(prior.unstandardize(z))
    return torch.cat(latents) if latents else torch.zeros(0, *shape[1:], device=device)
