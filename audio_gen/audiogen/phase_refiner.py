"""A learned correction of the phase that PGHI and the iterations after it retrieve (inverse.MelInverse,
'vocoder-refined').

Phase retrieval is where the inverse loses most: with the clip's own phase, the mel's NNLS magnitude scores
4.3 PESQ; with the retrieved one, 2.5 (docs/audio-results.md). Griffin-Lim stops in a local optimum whose
errors have structure (phase jumps at onsets, partials that drift apart between frames), so a small network
over the time-frequency plane can learn to undo part of them, as Deep Griffin-Lim Iteration learns a residual
after each projection (Masuyama et al., ICASSP 2019). Here the network runs once, after the iterations, and
keeps the magnitude: it sees the log-magnitude and the retrieved phase as cos/sin (which removes the 2 pi
ambiguity) with its wrapped time and frequency differences (instantaneous frequency and group delay, the
quantities PGHI integrates), and adds a zero-initialised correction, so an untrained refiner changes nothing.
It is trained on the waveform (refiner_losses) against segments of the music the vocoder was trained on.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .transform import istft
from .vocoder import LOG_FLOOR, multi_resolution_stft_loss


def wrapped(angle):
    """`angle` onto (-pi, pi]."""
    return torch.atan2(torch.sin(angle), torch.cos(angle))


class PhaseRefiner(nn.Module):
    """(b, n_freq, frames) magnitude and retrieved phase -> (b, n_freq, frames) corrected phase.

    A 2-D conv net over (frequency, frame): a 3x3 input conv, residual 3x3 convs whose dilations widen what an output
    sees to +-18 bins and frames, and a zero-initialised 3x3 output. `config` (kept in the checkpoint) holds the
    transform's n_fft and hop_length, the width and dilations, and `iterations` of `retrieval` (inverse.RETRIEVALS):
    the phase retrieval after PGHI that made the phases it learned on, which the inverse must run too.
    """

    FEATURES = 5  # log-magnitude, cos, sin, instantaneous frequency, group delay

    def __init__(self, n_fft=1024, hop_length=313, channels=16, dilations=(1, 2, 4, 8, 1), iterations=64,
                 retrieval="raar"):
        super().__init__()
        self.config = dict(n_fft=n_fft, hop_length=hop_length, channels=channels, dilations=list(dilations),
                           iterations=iterations, retrieval=retrieval)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.embed = nn.Conv2d(self.FEATURES, channels, 3, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=d, dilation=d) for d in dilations)
        self.correction = nn.Conv2d(channels, 1, 3, padding=1)
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)
        # Channels-last weights and inputs, because these convolutions run faster so on the CPU (docs/audio-model.md;
        # not measured on a GPU); load_state_dict keeps the layout.
        self.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, config):
        """The untrained refiner a checkpoint's config describes. Refiners saved before RAAR name no retrieval:
        they learned on fast Griffin-Lim's phases."""
        return cls(**{"retrieval": "fgla", **config})

    @staticmethod
    def features(magnitude, phase):
        """(b, 5, n_freq, frames): the log-magnitude in nepers below each example's peak (divided by 5, to
        about unit scale), cos and sin of the phase, and its wrapped differences along time and frequency."""
        log_magnitude = magnitude.clamp(min=LOG_FLOOR).log()
        level = (log_magnitude - log_magnitude.amax(dim=(1, 2), keepdim=True)) / 5
        per_frame = F.pad(wrapped(phase.diff(dim=2)), (1, 0))
        per_bin = F.pad(wrapped(phase.diff(dim=1)), (0, 0, 1, 0))
        return torch.stack([level, torch.cos(phase), torch.sin(phase), per_frame, per_bin], dim=1)

    def forward(self, magnitude, phase):
        features = self.features(magnitude.float(), phase.float()).contiguous(memory_format=torch.channels_last)
        h = F.gelu(self.embed(features))
        for conv in self.body:
            h = h + F.gelu(conv(h))
        return phase + self.correction(h)[:, 0]

    def synthesize(self, magnitude, phase, length):
        """(b, length) waveforms: the inverse STFT of the magnitude with the corrected phase."""
        spectrum = torch.polar(magnitude.float(), self(magnitude, phase))
        return istft(spectrum, self.config["n_fft"], self.config["hop_length"], self.window, length)


def refiner_losses(refiner, magnitude, phase, wave, mel_transform):
    """{'stft': multi-resolution STFT loss, 'mel': log-mel L1} between the refined waveform and `wave` (b,
    samples), from (b, n_freq, frames) magnitudes and retrieved phases; each a scalar. The magnitude is given,
    so every gradient goes to the phase."""
    estimate = refiner.synthesize(magnitude, phase, wave.shape[-1])
    return {"stft": multi_resolution_stft_loss(estimate, wave).mean(),
            "mel": (mel_transform(estimate) - mel_transform(wave)).abs().mean()}

