"""A Vocos-style vocoder (Siuzdak 2024): log-mel frames -> ConvNeXt blocks -> a spectrum at the transform's own
n_fft and hop -> inverse STFT. The hop of 313 samples rules out HiFi-GAN's stacks of integer upsamplings;
predicting STFT frames needs none.

The magnitude is a zero-initialised correction of the NNLS magnitude (inverse.nnls_magnitude, 3 steps as the
default inverse) in the log domain, so an untrained vocoder already has the deterministic inverse's magnitude
and training only learns what the mel threw away. The phase comes from the network (Vocos' single-angle head) or, where that loses,
from PGHI + RAAR over the learned magnitude (inverse.MelInverse).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .inverse import nnls_magnitude, nnls_operators
from .transform import LogMelTransform, istft

LOG_FLOOR = LogMelTransform.LOG_FLOOR  # log-mels never go below log(1e-5); magnitudes are floored alike
# Only a guard against overflow: a full-scale sine reaches 512 in a frame (the Hann window sums to n_fft / 2), so
# Vocos' cap of 100 would clip loud partials of real music and stop their gradient.
MAX_LOG_MAGNITUDE = math.log(1e4)


def mel_filterbank(n_mels, n_fft, sample_rate):
    """(n_fft // 2 + 1, n_mels): the HTK filterbank of torchaudio's MelSpectrogram at its defaults (mel = fb^T S)."""
    import torchaudio.functional as AF
    return AF.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate, norm=None, mel_scale="htk")


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block over time (Liu et al. 2022, as Vocos uses it): depthwise conv 7, LayerNorm, pointwise
    expansion with GELU, pointwise projection, a learned per-channel scale, and the residual."""

    def __init__(self, dim, intermediate, layer_scale):
        super().__init__()
        self.depthwise = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.expand = nn.Linear(dim, intermediate)
        self.project = nn.Linear(intermediate, dim)
        self.scale = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, h):
        """(b, dim, frames) -> (b, dim, frames)."""
        x = self.depthwise(h).transpose(1, 2)
        x = self.project(F.gelu(self.expand(self.norm(x))))
        return h + (self.scale * x).transpose(1, 2)


class Vocoder(nn.Module):
    """(b, n_mels, frames) log-mels -> (b, samples) waveforms at the transform's sample rate.

    `config` (kept in the checkpoint) holds the transform's n_mels, n_fft, hop_length and sample_rate, the
    network's width (`dim`, `intermediate`) and depth (`blocks`), and the NNLS iterations of its base magnitude.
    """

    def __init__(self, n_mels=128, n_fft=1024, hop_length=313, sample_rate=16_000, dim=256, intermediate=768,
                 blocks=8, nnls_iterations=3):
        super().__init__()
        self.config = dict(n_mels=n_mels, n_fft=n_fft, hop_length=hop_length, sample_rate=sample_rate, dim=dim,
                           intermediate=intermediate, blocks=blocks, nnls_iterations=nnls_iterations)
        self.n_freq = n_fft // 2 + 1
        self.register_buffer("filterbank", mel_filterbank(n_mels, n_fft, sample_rate), persistent=False)
        # NNLS's basis, pseudo-inverse and step, computed once (not at every step) and moved with the module.
        for name, value in zip(("nnls_basis", "nnls_pseudo_inverse", "nnls_step"), nnls_operators(self.filterbank)):
            self.register_buffer(name, value, persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        # Per-bin statistics of the training log-mels: the network sees z-scores (set_statistics).
        self.register_buffer("mel_mean", torch.zeros(n_mels))
        self.register_buffer("mel_std", torch.ones(n_mels))
        self.embed = nn.Conv1d(n_mels, dim, 7, padding=3)
        self.norm_in = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, intermediate, 1.0 / blocks) for _ in range(blocks))
        self.norm_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2 * self.n_freq)  # [log-magnitude correction | phase angle]
        with torch.no_grad():  # no correction at the start: the NNLS magnitude as it is
            self.head.weight[:self.n_freq].zero_()
            self.head.bias[:self.n_freq].zero_()

    def set_statistics(self, mean, std):
        """Per-mel-bin mean and std (n_mels,) of training log-mels."""
        self.mel_mean.copy_(mean)
        self.mel_std.copy_(std.clamp(min=1e-3))

    def base_log_magnitude(self, log_mel):
        """(b, n_mels, frames) -> (b, n_freq, frames): log of the NNLS magnitude, floored like the transform."""
        with torch.no_grad():
            magnitude = nnls_magnitude(log_mel.float().exp(), self.filterbank, self.config["nnls_iterations"],
                                       (self.nnls_basis, self.nnls_pseudo_inverse, self.nnls_step))
        return magnitude.clamp(min=LOG_FLOOR).log()

    def spectrum(self, log_mel):
        """(b, n_mels, frames) log-mels -> ((b, n_freq, frames) log-magnitude, (b, n_freq, frames) phase)."""
        x = (log_mel.float() - self.mel_mean[:, None]) / self.mel_std[:, None]
        h = self.norm_in(self.embed(x).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            h = block(h)
        correction, phase = self.head(self.norm_out(h.transpose(1, 2))).transpose(1, 2).split(self.n_freq, dim=1)
        log_magnitude = (self.base_log_magnitude(log_mel) + correction).clamp(max=MAX_LOG_MAGNITUDE)
        return log_magnitude, phase

    def synthesize(self, log_magnitude, phase, length):
        """Inverse STFT of exp(log_magnitude) e^{i phase}: (b, length) waveforms."""
        spectrum = torch.polar(log_magnitude.exp(), phase)
        c = self.config
        return istft(spectrum, c["n_fft"], c["hop_length"], self.window, length)

    def forward(self, log_mel, length=None):
        """(b, n_mels, frames) -> (b, length) waveforms; `length` defaults to (frames - 1) * hop, the samples
        whose centred STFT has `frames` frames."""
        length = length or (log_mel.shape[-1] - 1) * self.config["hop_length"]
        return self.synthesize(*self.spectrum(log_mel), length)


# --- losses ------------------------------------------------------------------------------------

def anti_wrapped(x):
    """|x| taken modulo 2 pi onto [0, pi]: the distance between two angles (APNet, Ai & Ling 2023, Eq. 5)."""
    return torch.abs(x - 2 * math.pi * torch.round(x / (2 * math.pi)))


def phase_loss(phase, target, weight):
    """APNet's instantaneous-phase, group-delay and instantaneous-frequency losses (Ai & Ling 2023, Eq. 6-8):
    angle distances of the phase, of its difference along frequency and along time, each (b, n_freq, frames).
    Averaged with `weight` (the target magnitude), because the phase of a silent bin is arbitrary noise."""
    def weighted(err, w):
        return (err * w).sum() / w.sum().clamp(min=1e-8)
    instantaneous = weighted(anti_wrapped(phase - target), weight)
    group_delay = weighted(anti_wrapped(phase.diff(dim=1) - target.diff(dim=1)), torch.minimum(weight[:, 1:], weight[:, :-1]))
    frequency = weighted(anti_wrapped(phase.diff(dim=2) - target.diff(dim=2)),
                         torch.minimum(weight[..., 1:], weight[..., :-1]))
    return instantaneous + group_delay + frequency


def stft_magnitude(wave, n_fft, hop_length):
    window = torch.hann_window(n_fft, device=wave.device)
    return torch.stft(wave, n_fft, hop_length, window=window, return_complex=True).abs()


def multi_resolution_stft_loss(estimate, target, resolutions=((512, 128), (1024, 256), (2048, 512))):
    """Spectral convergence + log-magnitude L1, averaged over STFT resolutions (Yamamoto et al. 2020, Eq. 1-4).
    estimate, target: (b, samples). Also the "multi-resolution STFT distance" of the inverse's measurements."""
    total = 0.0
    for n_fft, hop in resolutions:
        m_hat, m = stft_magnitude(estimate, n_fft, hop), stft_magnitude(target, n_fft, hop)
        convergence = (m_hat - m).flatten(1).norm(dim=1) / m.flatten(1).norm(dim=1).clamp(min=1e-8)
        log_l1 = (m_hat.clamp(min=LOG_FLOOR).log() - m.clamp(min=LOG_FLOOR).log()).abs().mean(dim=(1, 2))
        total = total + convergence + log_l1
    return total / len(resolutions)  # (b,)


def vocoder_losses(vocoder, log_mel, wave, mel_transform, target_log_mel=None):
    """The training losses of `vocoder` on (b, n_mels, frames) input log-mels for (b, samples) waveforms, each a
    scalar. The input is the waveforms' own log-mel, or a decoder's reconstruction of it; `target_log_mel` is
    the waveforms' own (by default the input).

    The magnitude learns from magnitude losses alone, at the vocoder's own frames: 'magnitude' (L1 of the log),
    'convergence' (spectral convergence) and 'mel_consistency' (L1 between the log-mel of the predicted magnitude
    and the input). The phase learns from 'phase' (APNet's three, weighted by the true magnitude) and from the
    waveform's 'mel' (L1 of the output's log-mel) and 'stft' (multi-resolution) losses, through which the
    magnitude gets no gradient: while the phase is poor those would teach the magnitude to make up for it, and
    the magnitude is also used on its own, with PGHI's phase ('vocoder-pghi')."""
    c = vocoder.config
    target_log_mel = log_mel if target_log_mel is None else target_log_mel
    log_magnitude, phase = vocoder.spectrum(log_mel)
    target = torch.stft(wave, c["n_fft"], c["hop_length"], window=vocoder.window, return_complex=True)
    target_magnitude = target.abs()
    magnitude = log_magnitude.exp()
    convergence = (magnitude - target_magnitude).flatten(1).norm(dim=1) / target_magnitude.flatten(1).norm(dim=1).clamp(min=1e-8)
    predicted_mel = (vocoder.filterbank.T @ magnitude).clamp(min=LOG_FLOOR).log()
    estimate = vocoder.synthesize(log_magnitude.detach(), phase, wave.shape[-1])
    return {"magnitude": (log_magnitude - target_magnitude.clamp(min=LOG_FLOOR).log()).abs().mean(),
            "convergence": convergence.mean(),
            "mel_consistency": (predicted_mel - target_log_mel).abs().mean(),
            "phase": phase_loss(phase, target.angle(), target_magnitude),
            "mel": (mel_transform(estimate) - target_log_mel).abs().mean(),
            "stft": multi_resolution_stft_loss(estimate, wave).mean()}
