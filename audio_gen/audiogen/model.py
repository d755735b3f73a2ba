"""The autoencoder: residual Conv1d encoder and decoder over time with the mel bins as channels, a linear
path initialised as PCA beside them, and the normalisation that travels with the weights. The same network
is a VAE when its encoder also gives a log-variance: then the linear path starts as probabilistic PCA."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


MODEL_KINDS = ("ae", "vae")


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a new autoencoder (what --n_mels, --latent_dim, --hidden, --time_downsample, --dropout
    say) and whether it is variational (--model vae)."""
    n_mels: int
    latent_dim: int
    hidden: int
    time_downsample: int
    dropout: float
    variational: bool = False


class ResBlock1d(nn.Module):
    """Pre-activation residual block: (GroupNorm, GELU, Conv1d) x 2 plus the identity. The last conv
    starts at zero, so every block starts as the identity (Goyal et al. 2017; Zhang et al. 2019, Fixup)."""

    def __init__(self, channels, dilation=1):
        super().__init__()
        self.net = nn.Sequential(
            nn.GroupNorm(8, channels), nn.GELU(), nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation),
            nn.GroupNorm(8, channels), nn.GELU(), nn.Conv1d(channels, channels, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)

    def forward(self, x):
        return x + self.net(x)


def init_linear_path(module):
    """Variance-preserving init (std 1/sqrt(fan-in)) for the convs outside residual branches.

    The encoder and decoder are each a chain of six convs with nothing but residual blocks between
    them; PyTorch's default init shrinks the signal by ~0.58 per conv, so at the start almost nothing
    reaches the output and training spends a long first stretch learning only each bin's average.
    """
    if isinstance(module, nn.ConvTranspose1d):  # each output sees in_channels * kernel / stride inputs
        fan_in = module.in_channels * module.kernel_size[0] / module.stride[0]
    else:
        fan_in = module.in_channels * module.kernel_size[0]
    nn.init.normal_(module.weight, std=fan_in ** -0.5)
    nn.init.zeros_(module.bias)


def stage_strides(time_downsample, stages=4):
    """Strides of the encoder's stages, 2 first: time_downsample 4 -> (2, 2, 1, 1)."""
    halvings = int(math.log2(time_downsample))
    return (2,) * halvings + (1,) * (stages - halvings)


class AudioAutoencoder(nn.Module):
    """Conv1d autoencoder over time with the mel bins as channels, normalisation included.

    forward: (batch, n_mels, frames) normalised log-mel -> encoder: input conv, 4 stages of
    (conv with stride 2 or 1, residual block) -> latent (batch, latent_dim, frames / time_downsample)
    -> dropout -> decoder: the mirror (transposed convs where the encoder strided) -> (batch, n_mels, frames).
    The per-bin mean and std of the training log-mels are buffers (as in open-unmix, Stöter et al. 2019), so they travel
    with the weights: `normalize` and `denormalize` map between log-mel and network units.

    With `pca_path` a linear encoder and decoder run beside the deep ones and their outputs add: a conv
    over non-overlapping patches of `time_downsample` frames and its transpose. `init_pca` sets them to
    the principal components of the training patches and the deep paths start at zero, so training
    starts from the best linear code of that size (PCA) and learns what PCA cannot.

    `variational` makes it a VAE (Kingma & Welling 2014): the encoder's last conv gives twice `latent_dim`
    channels, the posterior mean and log-variance of q(z|x) = N(mean, exp(log_variance)); the linear path
    adds to the mean only. Training decodes a reparameterised sample, evaluation the mean, and `decode`
    of N(0, I) latents generates.
    """

    def __init__(self, n_mels=128, latent_dim=128, hidden=128, time_downsample=2, dropout=0.0, pca_path=True,
                 variational=False):
        super().__init__()
        self.config = {"n_mels": n_mels, "latent_dim": latent_dim, "hidden": hidden,
                       "time_downsample": time_downsample, "dropout": dropout, "pca_path": pca_path,
                       "variational": variational}
        self.register_buffer("mel_mean", torch.zeros(n_mels))
        self.register_buffer("mel_std", torch.ones(n_mels))
        strides = stage_strides(time_downsample)
        down = [nn.Sequential(nn.Conv1d(hidden, hidden, 4, stride=2, padding=1) if s == 2 else
                              nn.Conv1d(hidden, hidden, 3, padding=1), ResBlock1d(hidden, dilation=2)) for s in strides]
        up = [nn.Sequential(nn.ConvTranspose1d(hidden, hidden, 4, stride=2, padding=1) if s == 2 else
                            nn.Conv1d(hidden, hidden, 3, padding=1), ResBlock1d(hidden, dilation=2))
              for s in reversed(strides)]
        # No normalisation layer on the main path: it would strip each clip's level, which the output needs.
        posterior_channels = 2 * latent_dim if variational else latent_dim  # (mean, log-variance) for a VAE
        self.encoder = nn.Sequential(nn.Conv1d(n_mels, hidden, 3, padding=1), *down,
                                     nn.Conv1d(hidden, posterior_channels, 1))
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Sequential(nn.Conv1d(latent_dim, hidden, 1), *up, nn.Conv1d(hidden, n_mels, 3, padding=1))
        for conv in [self.encoder[0], *(stage[0] for stage in self.encoder[1:-1]), self.encoder[-1],
                     self.decoder[0], *(stage[0] for stage in self.decoder[1:-1]), self.decoder[-1]]:
            init_linear_path(conv)
        self.linear_encoder = self.linear_decoder = None
        if pca_path:
            self.linear_encoder = nn.Conv1d(n_mels, latent_dim, time_downsample, stride=time_downsample)
            self.linear_decoder = nn.ConvTranspose1d(latent_dim, n_mels, time_downsample, stride=time_downsample)
            for conv in (self.encoder[-1], self.decoder[-1]):  # the deep paths start as zero residuals
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)

    @torch.no_grad()
    def init_pca(self, log_mels, max_patches=200_000):
        """Set the linear path to PCA of the training data: `log_mels` (n_mels, frames) un-normalised,
        cut into patches of time_downsample frames (n_mels * time_downsample numbers each), whose top
        latent_dim principal directions become the encoder rows and decoder columns.

        A VAE starts instead at the maximum-likelihood probabilistic PCA (Tipping & Bishop 1999, eqs. 7
        and 12), the optimum of a linear VAE (Lucas et al. 2019): with eigenvalues `eigenvalues_i` of the
        kept directions u_i and noise `noise_variance` (the mean discarded eigenvalue), the decoder column
        is u_i sqrt(eigenvalues_i - noise_variance), the posterior mean u_i^T x sqrt(eigenvalues_i -
        noise_variance) / eigenvalues_i and the posterior variance noise_variance / eigenvalues_i. So its
        latents start with unit variance over the data, as the N(0, I) prior asks."""
        k, latent = self.config["time_downsample"], self.config["latent_dim"]
        x = self.normalize(log_mels.float())
        count = x.shape[1] // k
        patches = x[:, :count * k].reshape(x.shape[0], count, k).permute(1, 0, 2).reshape(count, -1).double()
        if count > max_patches:  # an evenly spaced subset is plenty for a 2048-d covariance at most
            patches = patches[torch.linspace(0, count - 1, max_patches).long()]
        mean = patches.mean(0)
        eigenvalues, vectors = torch.linalg.eigh(torch.cov((patches - mean).T))  # ascending
        eigenvalues, vectors = eigenvalues.flip(0).clamp(min=0), vectors.flip(1)
        components = vectors[:, :latent].T  # (<= latent, n_mels * k), strongest first
        kept = len(components)
        encoder_rows = torch.zeros(latent, patches.shape[1], dtype=torch.float64)
        decoder_columns = torch.zeros_like(encoder_rows)
        encoder_rows[:kept] = decoder_columns[:kept] = components
        if self.config["variational"]:
            kept_eigenvalues = eigenvalues[:kept].clamp(min=1e-8)
            noise_variance = eigenvalues[kept:].mean() if len(eigenvalues) > kept else eigenvalues.new_tensor(1e-8)
            noise_variance = noise_variance.clamp(min=1e-8, max=float(kept_eigenvalues[-1]))
            scale = (kept_eigenvalues - noise_variance).sqrt()
            encoder_rows[:kept] *= (scale / kept_eigenvalues)[:, None]
            decoder_columns[:kept] *= scale[:, None]
            log_variance = torch.full((latent,), -1e-4, dtype=torch.float64)  # past `kept`: about the prior
            log_variance[:kept] = (noise_variance / kept_eigenvalues).log().clamp(max=-1e-4)
            # the bias b with -softplus(-b) = log_variance (see posterior)
            self.encoder[-1].bias[latent:] = (-torch.log(torch.expm1(-log_variance))).float()
        self.linear_encoder.weight.copy_(encoder_rows.view(latent, x.shape[0], k))
        self.linear_encoder.bias.copy_(-(encoder_rows @ mean))
        self.linear_decoder.weight.copy_(decoder_columns.view(latent, x.shape[0], k))
        self.linear_decoder.bias.copy_(mean.view(x.shape[0], k).mean(1))

    @property
    def compression(self):
        """How many input numbers per latent number: n_mels * time_downsample / latent_dim."""
        c = self.config
        return c["n_mels"] * c["time_downsample"] / c["latent_dim"]

    def set_normalization(self, mean, std):
        """Store the training log-mels' per-bin (n_mels,) mean and std."""
        self.mel_mean.copy_(mean)
        self.mel_std.copy_(std)

    def normalize(self, log_mel):
        """(..., n_mels, frames) log-mel -> network units: zero mean and unit std per bin over the training data."""
        return (log_mel - self.mel_mean[:, None]) / self.mel_std[:, None]

    def denormalize(self, x):
        """The inverse of `normalize`."""
        return x * self.mel_std[:, None] + self.mel_mean[:, None]

    @property
    def variational(self):
        return self.config["variational"]

    def latent_shape(self, frames):
        """(latent_dim, latent frames) of the code of a clip of `frames` frames."""
        return self.config["latent_dim"], frames // self.config["time_downsample"]

    def posterior(self, x):
        """(batch, n_mels, frames) normalised log-mel -> (mean, log_variance) of q(z|x), each (batch,
        latent_dim, frames / time_downsample); log_variance is None for the plain autoencoder."""
        step = self.config["time_downsample"]
        if x.shape[-1] % step:
            raise ValueError(f"frames must be a multiple of {step}, got {x.shape[-1]}")
        h = self.encoder(x)
        mean, log_variance = h.chunk(2, dim=1) if self.variational else (h, None)
        if log_variance is not None:
            # A posterior wider than the N(0, I) prior carries nothing, and an unbounded log-variance let one
            # step on a loud clip reach 52 (exp: 4e22) and the loss NaN: capped smoothly at 0 instead.
            log_variance = -F.softplus(-log_variance)
        if self.linear_encoder is not None:
            mean = mean + self.linear_encoder(x)
        return mean, log_variance

    def encode(self, x):
        """(batch, n_mels, frames) normalised log-mel -> latent z (batch, latent_dim, frames / time_downsample):
        the code, or for a VAE the posterior mean."""
        return self.posterior(x)[0]

    def decode(self, z):
        """Latent z (batch, latent_dim, latent frames) -> (batch, n_mels, frames) normalised log-mel."""
        y = self.decoder(z)
        return y if self.linear_decoder is None else y + self.linear_decoder(z)

    def forward(self, x):
        """(batch, n_mels, frames) normalised log-mel -> (reconstruction of the same shape, kl): a VAE in
        training mode decodes a reparameterised posterior sample, in eval mode the posterior mean; kl is
        KL(q(z|x) || N(0, I)) summed over a clip's latent and averaged over the batch (0 for the plain AE)."""
        mean, log_variance = self.posterior(x)
        if log_variance is None:
            return self.decode(self.dropout(mean)), mean.new_zeros(())
        z = reparameterize(mean, log_variance) if self.training else mean
        return self.decode(self.dropout(z)), gaussian_kl(mean, log_variance).flatten(1).sum(1).mean()


def reparameterize(mean, log_variance):
    """z = mean + exp(log_variance / 2) * eps, eps ~ N(0, I): a sample of N(mean, exp(log_variance)) through
    which gradients reach both (Kingma & Welling 2014, eq. 10)."""
    return mean + (0.5 * log_variance).exp() * torch.randn_like(mean)


def gaussian_kl(mean, log_variance):
    """Elementwise KL(N(mean, exp(log_variance)) || N(0, 1)) = (mean^2 + exp(log_variance) - 1 - log_variance) / 2
    (Kingma & Welling 2014, appendix B), in nats."""
    return 0.5 * (mean.pow(2) + log_variance.exp() - 1 - log_variance)


@torch.no_grad()
def reconstruct(model, log_mels, batch_size=64):
    """Eval-mode reconstruction of (n, n_mels, frames) log-mels, in log-mel units, on the model's device."""
    model.eval()
    device = model.mel_mean.device
    parts = [model.denormalize(model(model.normalize(log_mels[i:i + batch_size].to(device)))[0])
             for i in range(0, len(log_mels), batch_size)]
    return torch.cat(parts) if parts else log_mels.to(device).clone()


@torch.no_grad()
def decode_latents(model, latents, batch_size=64):
    """(n, latent_dim, latent frames) latents -> (n, n_mels, frames) log-mels, on the model's device."""
    model.eval()
    device = model.mel_mean.device
    parts = [model.denormalize(model.decode(latents[i:i + batch_size].to(device)))
             for i in range(0, len(latents), batch_size)]
    return torch.cat(parts)
