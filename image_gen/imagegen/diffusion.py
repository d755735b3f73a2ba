"""Gaussian diffusion: the math of DDPM (Ho et al. 2020) and DDIM (Song et al. 2021), with classifier-free
guidance (Ho & Salimans 2022). No network, optimizer, batching or progress report lives here: every call
takes the noise predictor `model` (a unet.Denoiser: model(x_t, t, labels) -> eps) as its first argument,
as in openai/improved-diffusion, and the noise source `randn(shape) -> tensor` where noise is drawn.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SAMPLERS = ("ddpm", "ddim", "dpm++2m")


def sampler_name(sampler, steps, eta, guidance_scale=None):
    """'ddpm-1000', 'ddim-50', 'ddim-50 eta 0.5', 'dpm++2m-20', with ', w=0.5' for guided class-conditional
    sampling."""
    if sampler == "ddpm":
        name = "ddpm-1000"
    elif sampler == "dpm++2m":
        name = f"dpm++2m-{steps}"
    else:
        name = f"ddim-{steps}" + (f" eta {eta:g}" if eta else "")
    return name + (f", w={guidance_scale:g}" if guidance_scale is not None else "")


def cpu_normal(shape, generator, device):
    """N(0, I) numbers of `shape` drawn by a CPU `generator` and moved to `device`: a seed gives the same numbers
    on a CPU and on a GPU, and a generator's state resumes on either (a CUDA generator's would do neither)."""
    return torch.randn(shape, generator=generator).to(device)


def restore_generator(generator, saved, seed, step):
    """Set the CPU training `generator` to the `saved` state of a checkpoint. Checkpoints written on a GPU before
    the training generators moved to the CPU hold a CUDA generator's state (16 bytes, against the CPU's 5,056),
    which no CPU generator takes: the generator is then reseeded from the run's `seed` and `step`,
    deterministically, and says so."""
    if saved.numel() == generator.get_state().numel():
        generator.set_state(saved)
        return
    generator.manual_seed(seed * 1_000_003 + step)
    print(f"note: the checkpoint's training generator was a CUDA one (an older checkpoint written on a GPU); "
          f"reseeded on the CPU at step {step}: the run goes on, no longer drawing what it would have drawn")


@dataclass(frozen=True)
class SamplerSettings:
    """How to run the reverse process, as one value: the sampler ('ddpm': ancestral sampling over all T
    steps; 'ddim': `steps` DDIM steps with stochasticity `eta`; 'dpm++2m': `steps` steps of the second-order
    multistep DPM-Solver++, deterministic, eta unused), the classifier-free guidance scale w
    (used for class-conditional draws only) and the noise seed (None: a fresh seed from the OS)."""
    sampler: str = "dpm++2m"  # the default everywhere: 5x fewer network evaluations than DDIM-50, FID equal to the
    steps: int = 10           # more faithful DDIM-200's (docs/image-results.md, fast sampling)
    eta: float = 0.0
    guidance_scale: float = 0.0
    seed: int | None = 0

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}: expected one of {', '.join(SAMPLERS)}")
        if self.sampler == "dpm++2m" and self.eta:
            raise ValueError("dpm++2m is deterministic: it takes no eta")
        if self.steps < 1 or not 0.0 <= self.eta <= 1.0 or self.guidance_scale < 0:
            raise ValueError(f"bad sampler settings: steps {self.steps} (>= 1), eta {self.eta} (in [0, 1]), "
                             f"guidance {self.guidance_scale} (>= 0)")

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def step_count(self, num_timesteps):
        """Network evaluations per image (twice as many when guided): all T for DDPM, `steps` for DDIM and
        DPM-Solver++."""
        return num_timesteps if self.sampler == "ddpm" else self.steps

    def name(self, guided):
        """sampler_name of these settings; `guided`: name the guidance scale too."""
        return sampler_name(self.sampler, self.steps, self.eta, self.guidance_scale if guided else None)


class GaussianDiffusion:
    """Gaussian diffusion over `num_timesteps` steps: noise schedule, forward process, training loss, one
    DDPM or DDIM step, the sampling loops and classifier-free guidance. Images are (n, C, H, W) in [-1, 1].

    A class-conditional model takes labels (n,) everywhere; label `model.null_class` is the null class.
    Guidance scale w > 0 samples with classifier-free guidance (Ho & Salimans 2022, eq. 6):
    eps~ = (1 + w) eps(x_t, t, c) - w eps(x_t, t, null).
    """

    def __init__(self, num_timesteps=1000, beta_start=1e-4, beta_end=0.02, device="cpu"):
        self.device = torch.device(device)
        self.config = {"num_timesteps": num_timesteps, "beta_start": beta_start, "beta_end": beta_end}
        self.num_timesteps = num_timesteps
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

    def _timestep(self, step, n):
        return torch.full((n,), step, device=self.device, dtype=torch.long)

    # --- forward process and loss (Algorithm 1) -----------------------------------------------
    def q_sample(self, x0, t, noise):
        """Closed-form forward diffusion: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps  (eq. 4)."""
        return self._gather(self.sqrt_alphas_cumprod, t) * x0 + self._gather(self.sqrt_one_minus_alphas_cumprod, t) * noise

    def loss(self, model, x0, labels=None, generator=None, cond_drop_prob=0.0, rows=None):
        """Simplified DDPM objective (eq. 14): || eps - eps_theta(x_t, t, c) ||^2, t ~ U{0..T-1}, eps ~ N(0, I).

        Each label becomes the null class with probability `cond_drop_prob` (Ho & Salimans 2022,
        Algorithm 1), so the same network learns the unconditional eps(x_t, t, null) too. t, eps and the
        dropout come from `generator` (the training generator, on the CPU: the same draws on any device), never
        from the global RNG.

        `rows` (a slice; one process of several): the loss of those rows of the batch only, with the very
        t, eps and dropout that the whole batch draws for them, and the generator advanced as by the whole."""
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
        noise = cpu_normal(x0.shape, generator, x0.device)
        if labels is not None and cond_drop_prob > 0:
            drop = (torch.rand(labels.shape, generator=generator) < cond_drop_prob).to(labels.device)
            labels = labels.masked_fill(drop, model.null_class)
        if rows is not None:
            x0, t, noise = x0[rows], t[rows], noise[rows]
            labels = None if labels is None else labels[rows]
        return F.mse_loss(model(self.q_sample(x0, t, noise), t, labels), noise)

    # --- reverse process ------------------------------------------------------------------------
    def predict_eps(self, model, x, t, labels=None, guidance_scale=0.0):
        """eps_theta(x_t, t, c); for w = guidance_scale > 0 the classifier-free guided prediction
        (Ho & Salimans 2022, eq. 6)

            eps~ = (1 + w) eps(x_t, t, c) - w eps(x_t, t, null),

        with the conditional and null halves stacked into one forward pass of 2n images."""
        if labels is None or guidance_scale == 0:
            return model(x, t, labels)
        null = torch.full_like(labels, model.null_class)
        eps_cond, eps_null = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
        return (1.0 + guidance_scale) * eps_cond - guidance_scale * eps_null

    def predict_x0(self, x_t, t, eps):
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (eq. 4 solved for x_0), clipped to [-1, 1]."""
        x0 = self._gather(self.sqrt_recip_alphas_cumprod, t) * x_t - self._gather(self.sqrt_recipm1_alphas_cumprod, t) * eps
        return x0.clamp(-1.0, 1.0)

    def ddpm_step(self, model, x, step, randn, labels=None, guidance_scale=0.0):
        """x_t -> x_{t-1} ~ q(x_{t-1} | x_t, x0_hat) = N(mu~_t, beta~_t I) (eq. 6-7, Algorithm 2); no noise at t = 0."""
        t = self._timestep(step, x.shape[0])
        x0 = self.predict_x0(x, t, self.predict_eps(model, x, t, labels, guidance_scale))
        mean = self._gather(self.posterior_mean_coef1, t) * x0 + self._gather(self.posterior_mean_coef2, t) * x
        if step == 0:
            return mean
        return mean + (0.5 * self._gather(self.posterior_log_variance_clipped, t)).exp() * randn(x.shape)

    def ddim_step(self, model, x, step, prev_step, randn, eta=0.0, labels=None, guidance_scale=0.0):
        """x_t -> x_{t_prev} by Song et al. 2021, eq. 12 (prev_step -1 means abar_prev = 1, the last step):

            x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
            sigma  = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)   (eq. 16).

        x0_hat is clipped to [-1, 1] and eps_hat recomputed from it, so the two stay consistent."""
        t = self._timestep(step, x.shape[0])
        x0 = self.predict_x0(x, t, self.predict_eps(model, x, t, labels, guidance_scale))
        eps = (self._gather(self.sqrt_recip_alphas_cumprod, t) * x - x0) / self._gather(self.sqrt_recipm1_alphas_cumprod, t)
        abar = self.alphas_cumprod[step]
        abar_prev = self.alphas_cumprod[prev_step] if prev_step >= 0 else torch.ones_like(abar)
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
        x_prev = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0 and prev_step >= 0:
            x_prev = x_prev + sigma * randn(x.shape)
        return x_prev

    def dpm_solver_2m_step(self, model, x, step, prev_step, previous, labels=None, guidance_scale=0.0):
        """x_t -> x_{t_prev} by DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2: multistep, data prediction, with the
        guided model inside the solver). With lambda = log(alpha / sigma), h = lambda_prev - lambda and D the
        model's x0 estimate (clipped to [-1, 1], as DDIM's):

            x_prev = (sigma_prev / sigma) x_t - alpha_prev (e^{-h} - 1) D,
            D = (1 + 1 / (2r)) x0_hat - 1 / (2r) x0_hat_before,   r = h_before / h,

        first order (DDIM's step) where there is no step before, and at the last step (to abar = 1), where it
        returns x0_hat. `previous`: the step before's (x0_hat, h), or None. Returns (x_prev, (x0_hat, h))."""
        t = self._timestep(step, x.shape[0])
        x0 = self.predict_x0(x, t, self.predict_eps(model, x, t, labels, guidance_scale))
        if prev_step < 0:
            return x0, None
        abar, abar_prev = self.alphas_cumprod[step].double(), self.alphas_cumprod[prev_step].double()
        log_snr = lambda a: 0.5 * (a.log() - (1 - a).log())  # noqa: E731  lambda_t, in float64
        h = log_snr(abar_prev) - log_snr(abar)
        estimate = x0
        if previous is not None:
            x0_before, h_before = previous
            r = h_before / h
            estimate = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_before
        sigma_ratio = ((1 - abar_prev) / (1 - abar)).sqrt()
        x_prev = sigma_ratio.float() * x - (abar_prev.sqrt() * torch.expm1(-h)).float() * estimate
        return x_prev, (x0, h)

    def ddim_timesteps(self, steps):
        """`steps` evenly spaced timesteps from T-1 down to 0."""
        return torch.linspace(self.num_timesteps - 1, 0, steps).round().long().unique_consecutive().tolist()

    def log_snr_timesteps(self, steps):
        """`steps` timesteps from T-1 down to 0 evenly spaced in lambda = log(alpha / sigma), each the integer t
        nearest its target: the spacing Lu et al. 2022 use for pixel-space models. Even in t (DDIM's), the last
        steps cross lambda from about 2 to 4.6 at once, and the multistep extrapolation (r = h_before / h
        near 0.2) then amplifies its error several-fold, worse with more steps: measured on Gaussian data."""
        abar = self.alphas_cumprod.double().cpu()
        log_snr = 0.5 * (abar.log() - (1 - abar).log())  # decreasing in t
        targets = torch.linspace(float(log_snr[-1]), float(log_snr[0]), steps, dtype=torch.float64)
        nearest = (log_snr[None, :] - targets[:, None]).abs().argmin(dim=1).tolist()
        # Near t = 0 one t step moves lambda by 0.4, so several targets can share a t: from the bottom up, each
        # takes at least the one below it plus 1, so there are `steps` of them, as many evaluations as asked.
        for i in range(len(nearest) - 2, -1, -1):
            nearest[i] = min(max(nearest[i], nearest[i + 1] + 1), self.num_timesteps - 1)
        return list(dict.fromkeys(nearest))

    def reverse_steps(self, settings):
        """(t, t_prev) pairs the sampler visits: every t for DDPM, the sub-sequence ending at -1 for DDIM (even in
        t) and DPM-Solver++ (even in log-SNR)."""
        if settings.sampler == "ddpm":
            return [(step, step - 1) for step in range(self.num_timesteps - 1, -1, -1)]
        timesteps = (self.log_snr_timesteps(settings.steps) if settings.sampler == "dpm++2m"
                     else self.ddim_timesteps(settings.steps))
        return list(zip(timesteps, timesteps[1:] + [-1]))

    @torch.no_grad()
    def sample_loop(self, model, x_T, settings, randn, labels=None, guidance_scale=0.0, wrap=iter):
        """x_T (n, C, H, W) -> x_0 in [-1, 1] by ancestral DDPM (Algorithm 2), DDIM (eq. 12; eta = 0 is a
        deterministic map from noise to image, eta = 1 over all steps is DDPM) or DPM-Solver++(2M). `wrap` may wrap the list of
        steps, e.g. in a progress report."""
        x, previous = x_T, None
        for step, prev in wrap(self.reverse_steps(settings)):
            if settings.sampler == "ddpm":
                x = self.ddpm_step(model, x, step, randn, labels, guidance_scale)
            elif settings.sampler == "dpm++2m":
                x, previous = self.dpm_solver_2m_step(model, x, step, prev, previous, labels, guidance_scale)
            else:
                x = self.ddim_step(model, x, step, prev, randn, settings.eta, labels, guidance_scale)
        return x
