"""Waveforms to log-mel spectrograms and back, and the per-bin statistics the model normalises with."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class LogMelTransform:
    """Waveform -> natural-log mel magnitude, and back (least-squares mel inversion + Griffin-Lim).

    At the defaults a 5-s clip (80,000 samples at 16 kHz) gives (128, 256): n_fft 1024, hop 313,
    centred frames, magnitudes floored at 1e-5 (log -11.5) so digital silence has a finite value.
    Griffin-Lim (Griffin & Lim 1984) runs with momentum 0.99, the fast variant of Perraudin et al. 2013.
    """

    LOG_FLOOR = 1e-5

    def __init__(self, n_mels=128, sample_rate=16_000, clip_seconds=5, n_fft=1024, hop_length=313,
                 griffin_lim_iters=64, device="cpu"):
        import torchaudio.transforms as T

        self.n_mels, self.sample_rate, self.n_fft, self.hop_length = n_mels, sample_rate, n_fft, hop_length
        self.clip_samples = sample_rate * clip_seconds
        self.frames = 1 + self.clip_samples // hop_length  # centred STFT: 256 at the defaults
        self.device = torch.device(device)
        self.mel = T.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                                    power=1.0).to(self.device)
        self.inverse_mel = T.InverseMelScale(n_stft=n_fft // 2 + 1, n_mels=n_mels, sample_rate=sample_rate
                                             ).to(self.device)
        self.griffin_lim = T.GriffinLim(n_fft=n_fft, hop_length=hop_length, power=1.0, n_iter=griffin_lim_iters,
                                        momentum=0.99, length=self.clip_samples).to(self.device)

    @property
    def config(self):
        """What defines the features; the cache key and the checkpoint both use it."""
        return {"n_mels": self.n_mels, "sample_rate": self.sample_rate, "n_fft": self.n_fft,
                "hop_length": self.hop_length, "clip_samples": self.clip_samples}

    @classmethod
    def from_config(cls, config, griffin_lim_iters, device):
        """The transform a checkpoint's `transform_config` describes."""
        return cls(n_mels=config["n_mels"], sample_rate=config["sample_rate"],
                   clip_seconds=config["clip_samples"] // config["sample_rate"], n_fft=config["n_fft"],
                   hop_length=config["hop_length"], griffin_lim_iters=griffin_lim_iters, device=device)

    def cut(self, wave, start):
        """(clip_samples,) from sample `start` of a (samples,) waveform, zero-padded past its end."""
        clip = wave[start:start + self.clip_samples]
        return F.pad(clip, (0, self.clip_samples - len(clip)))

    def __call__(self, waves):
        """(..., samples) waveforms -> (..., n_mels, 1 + samples // hop) log-mel magnitudes."""
        return torch.log(self.mel(waves.to(self.device)).clamp(min=self.LOG_FLOOR))

    def invert(self, log_mel):
        """(batch, n_mels, frames) log-mel -> (batch, clip_samples) waveforms, phase by Griffin-Lim."""
        linear = self.inverse_mel(log_mel.to(self.device).float().exp()).clamp(min=0)
        return self.griffin_lim(linear)


def compute_normalization(log_mels):
    """Per-mel-bin mean and std of (n_mels, frames) training log-mels: two (n_mels,) tensors."""
    data = log_mels.double()
    return data.mean(dim=1).float(), data.std(dim=1).clamp(min=1e-3).float()
