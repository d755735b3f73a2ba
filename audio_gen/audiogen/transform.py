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


def overlap_add(frames, hop_length):
    """(..., count, frame_length) frames -> (..., hop_length * (count - 1 + ceil(frame_length / hop_length)))
    samples, frame m added from sample m * hop_length. Each frame is cut into hop-long pieces and piece k of every
    frame is added k hops on: a few shifted slice additions, where F.fold is 5-8x slower on the CPU."""
    *batch, count, frame_length = frames.shape
    pieces_per_frame = -(-frame_length // hop_length)
    out = frames.new_zeros(*batch, count + pieces_per_frame - 1, hop_length)
    for k in range(pieces_per_frame):
        piece = frames[..., k * hop_length:(k + 1) * hop_length]  # the last one may be shorter
        out[..., k:k + count, :piece.shape[-1]] += piece
    return out.flatten(-2)


class InverseSTFT:
    """torch.istft(spectrum, n_fft, hop_length, window=window, length=length) for spectra of `frames` centred frames
    (the least-squares inverse of Griffin & Lim 1984, Eq. 6): (..., n_fft // 2 + 1, frames) complex -> (...,
    length) real, differentiable, on the window's device.

    Written out because torch.istft's overlap-add is F.fold, which is slow on a CPU, and phase retrieval runs one
    inverse STFT per iteration: with overlap_add, and the window envelope computed when the InverseSTFT is built
    (once for all the iterations of a retrieval), it takes about a third of torch.istft's time (docs/audio-model.md)
    and agrees with it to float rounding (tests/test_audio_inverse.py).
    """

    def __init__(self, n_fft, hop_length, window, frames, length):
        self.n_fft, self.hop_length, self.window, self.frames, self.length = n_fft, hop_length, window, frames, length
        self.start = n_fft // 2  # the centring pad of the forward STFT
        self.end = min(self.start + length, n_fft + hop_length * (frames - 1))
        self.envelope = overlap_add(window.square().expand(frames, n_fft), hop_length)[self.start:self.end]
        if float(self.envelope.abs().min()) < 1e-11:  # one check per build, where torch.istft checks every call
            raise ValueError(f"the window overlap-adds to zero at hop {hop_length} (the NOLA condition fails): no "
                             "inverse STFT")

    def __call__(self, spectrum):
        if spectrum.shape[-1] != self.frames:
            raise ValueError(f"a spectrum of {spectrum.shape[-1]} frames for an inverse STFT of {self.frames}")
        frames = torch.fft.irfft(spectrum.transpose(-1, -2), n=self.n_fft).mul_(self.window)  # (..., frames, n_fft)
        wave = overlap_add(frames, self.hop_length)[..., self.start:self.end] / self.envelope
        missing = self.length - wave.shape[-1]
        return F.pad(wave, (0, missing)) if missing else wave  # zeros past the last frame, as torch.istft pads


def istft(spectrum, n_fft, hop_length, window, length):
    """One inverse STFT (InverseSTFT) of a (..., n_fft // 2 + 1, frames) spectrum: (..., length)."""
    return InverseSTFT(n_fft, hop_length, window, spectrum.shape[-1], length)(spectrum)


def compute_normalization(log_mels):
    """Per-mel-bin mean and std of (n_mels, frames) training log-mels: two (n_mels,) tensors."""
    data = log_mels.double()
    return data.mean(dim=1).float(), data.std(dim=1).clamp(min=1e-3).float()
