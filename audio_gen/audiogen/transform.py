"""Waveforms to log-mel spectrograms and back, and the per-bin statistics the model normalises with."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class LogMelTransform:
    """Waveform -> natural-log mel magnitude (the way back is inverse.MelInverse).

    At the defaults a 5-s clip (80,000 samples at 16 kHz) gives (128, 256): n_fft 1024, hop 313,
    centred frames, magnitudes floored at 1e-5 (log -11.5) so digital silence has a finite value.
    """

    LOG_FLOOR = 1e-5

    def __init__(self, n_mels=128, sample_rate=16_000, clip_seconds=5, n_fft=1024, hop_length=313,
                 device="cpu"):
        import torchaudio.transforms as T

        self.n_mels, self.sample_rate, self.n_fft, self.hop_length = n_mels, sample_rate, n_fft, hop_length
        self.clip_samples = sample_rate * clip_seconds
        self.frames = 1 + self.clip_samples // hop_length  # centred STFT: 256 at the defaults
        self.device = torch.device(device)
        self.mel = T.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                                    power=1.0).to(self.device)

    @property
    def config(self):
        """What defines the features; the cache key and the checkpoint both use it."""
        return {"n_mels": self.n_mels, "sample_rate": self.sample_rate, "n_fft": self.n_fft,
                "hop_length": self.hop_length, "clip_samples": self.clip_samples}

    @classmethod
    def from_config(cls, config, device):
        """The transform a checkpoint's `transform_config` describes."""
        return cls(n_mels=config["n_mels"], sample_rate=config["sample_rate"],
                   clip_seconds=config["clip_samples"] // config["sample_rate"], n_fft=config["n_fft"],
                   hop_length=config["hop_length"], device=device)

    def cut(self, wave, start):
        """(clip_samples,) from sample `start` of a (samples,) waveform, zero-padded past its end."""
        clip = wave[start:start + self.clip_samples]
        return F.pad(clip, (0, self.clip_samples - len(clip)))

    def __call__(self, waves):
        """(..., samples) waveforms -> (..., n_mels, 1 + samples // hop) log-mel magnitudes."""
        return torch.log(self.mel(waves.to(self.device)).clamp(min=self.LOG_FLOOR))


def compute_normalization(log_mels):
    """Per-mel-bin mean and std of (n_mels, frames) training log-mels: two (n_mels,) tensors."""
    data = log_mels.double()
    return data.mean(dim=1).float(), data.std(dim=1).clamp(min=1e-3).float()
