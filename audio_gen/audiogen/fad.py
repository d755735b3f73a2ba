"""Frechet audio distance (FAD, Kilgour et al. 2019): the Frechet distance between Gaussians fitted to the
embeddings of two sets of clips, lower is closer. Three embeddings, each named in every figure:

    aisfx       (default) the 512-d sound embedding of Ma & Lerch (ISMIR 2022), pretrained weights that ship
                in the `aisfx` wheel (CC BY 4.0): works offline once `pip install --no-deps aisfx==0.1.2`
    vggish      the standard FAD embedding (VGGish, Hershey et al. 2017; 128-d, before its PCA): weights
                from a file (--fad_weights, torchvggish's layout) or downloaded through torch.hub
    mel-frames  no network: the 128-bin log-mel frames of the model's own transform (spectral shape only)

Every embedder maps (clips, samples) 16 kHz waveforms to (vectors, dim) float64: several vectors per clip
(one per embedding window), as FAD pools the frames of a set.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

EMBEDDINGS = ("aisfx", "vggish", "mel-frames")
VGGISH_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"


class _Identity(nn.Module):
    """The 'feature extractor' handed to torchmetrics' Frechet distance: the embeddings are computed already."""

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, features):
        return features


def frechet_distance(features, reference):
    """The Frechet distance ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) (Dowson & Landau 1982)
    between Gaussians fitted to (n, d) `features` and (m, d) `reference`, by torchmetrics' FID code; inf when
    `features` hold a NaN or infinity (audio that overflowed), where the matrix square root would crash."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if not torch.isfinite(features).all():
        return math.inf

    metric = FrechetInceptionDistance(feature=_Identity(features.shape[1]))
    metric.update(reference.double(), real=True)
    metric.update(features.double(), real=False)
    return float(metric.compute())


def resample(waves, rate, new_rate):
    """(clips, samples) at `rate` -> (clips, samples') at `new_rate` (torchaudio's windowed-sinc resampler)."""
    import torchaudio.functional as AF

    return waves if rate == new_rate else AF.resample(waves, rate, new_rate)


def frame_blocks(frames, size, hop):
    """(clips, T, bins) -> (clips * blocks, size, bins): every whole block of `size` frames, `hop` apart."""
    blocks = frames.unfold(1, size, hop)  # (clips, blocks, bins, size)
    return blocks.permute(0, 1, 3, 2).reshape(-1, size, frames.shape[2])


# --- aisfx (Ma & Lerch 2022) ------------------------------------------------------------------

class _ConvBlock(nn.Module):
    """Two (3x3 conv without bias, batch norm, ReLU) layers and a max-pool: the DCASE cross-task baseline's
    block (Kong et al. 2018), with the parameter names of the aisfx checkpoint."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(out_channels), nn.BatchNorm2d(out_channels)

    def forward(self, x, pool):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.max_pool2d(x, pool)


class AisfxNet(nn.Module):
    """aisfx's embedding network: 4 conv blocks (64, 128, 256, 512 channels; 2x2 pooling after the first
    three), the mean over mel bins, then the max over time: (batch, 100 frames, 96 bins) -> (batch, 512)."""

    def __init__(self, width=64):
        super().__init__()
        channels = [1, width, 2 * width, 4 * width, 8 * width]
        for i in range(4):
            setattr(self, f"conv_block{i + 1}", _ConvBlock(channels[i], channels[i + 1]))

    def forward(self, x):
        x = x[:, None]
        for i, pool in enumerate((2, 2, 2, 1)):
            x = getattr(self, f"conv_block{i + 1}")(x, pool)
        return x.mean(dim=3).amax(dim=2)


def aisfx_weights_path():
    """The pretrained checkpoint inside the installed aisfx package (found without importing it)."""
    spec = importlib.util.find_spec("aisfx")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: the aisfx embedding needs its weights: pip install --no-deps aisfx==0.1.2 "
                         "(make creates .venv with it), or choose --fad_embedding mel-frames")
    return Path(spec.submodule_search_locations[0]) / "models" / "checkpoint.pth"


def load_aisfx_weights(path):
    """The embedding net's state dict from aisfx's checkpoint, a (state dict, data set table) tuple saved
    with numpy scalars in it: loaded with weights_only=True, those numpy types allowed by name."""
    import numpy as np

    # saved under numpy 1's module name, which numpy 2 keeps as an alias
    allowed = [(np._core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype, type(np.dtype("int64"))]
    with torch.serialization.safe_globals(allowed):
        weights, _ = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "embedding_net."
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


class AisfxEmbedding:
    """aisfx embeddings of 16 kHz clips: resampled to 44.1 kHz and peak-normalised per clip, as the package
    does; power mel of 96 HTK bands (0-22,050 Hz, each band summing to 1; 2,048-sample windows, hop 1,024),
    log10(1 + 10^4 mel) / 9.4578 (its training range); one 512-d vector per 100-frame block (2.3 s), 50
    frames apart. `weights`: a state dict for AisfxNet (None: the pretrained one)."""

    name = "aisfx"
    sample_rate, n_fft, hop, n_mels, block, block_hop, log_range = 44_100, 2048, 1024, 96, 100, 50, 9.457798957824707

    def __init__(self, device="cpu", weights=None):
        import torchaudio.functional as AF

        self.device = torch.device(device)
        self.net = AisfxNet().eval().to(self.device)
        self.net.load_state_dict(weights if weights is not None else load_aisfx_weights(aisfx_weights_path()))
        bands = AF.melscale_fbanks(self.n_fft // 2 + 1, 0.0, self.sample_rate / 2, self.n_mels, self.sample_rate,
                                   norm=None, mel_scale="htk")
        self.bands = (bands / bands.sum(0).clamp(min=1e-12)).to(self.device)  # (freqs, 96)
        self.window = torch.hann_window(self.n_fft, device=self.device)

    def frames(self, waves, rate):
        """(clips, samples) at `rate` -> (clips, T, 96) normalised log-mel frames."""
        x = resample(waves.float(), rate, self.sample_rate).to(self.device)
        x = x / x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, center=True, pad_mode="constant",
                          return_complex=True).abs().pow(2)  # (clips, freqs, T)
        mel = torch.einsum("cft,fm->ctm", spec, self.bands)
        return torch.log10(1 + 1e4 * mel) / self.log_range

    @torch.no_grad()
    def __call__(self, waves, rate, batch_size=32):
        blocks = frame_blocks(self.frames(waves, rate), self.block, self.block_hop)
        return torch.cat([self.net(blocks[i:i + batch_size]) for i in range(0, len(blocks), batch_size)]).double().cpu()


# --- VGGish (Hershey et al. 2017) -------------------------------------------------------------

class VGGish(nn.Module):
    """VGGish: VGG-style convs (64, 128, 256x2, 512x2 channels, four 2x2 max-pools) on (batch, 96 frames,
    64 bins) log-mel examples, then 4096-4096-128 fully connected layers with ReLU; parameter names as in
    torchvggish, whose flattening follows the TensorFlow original's (height, width, channel) order."""

    def __init__(self):
        super().__init__()
        layers, channels = [], 1
        for width in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if width == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 6 * 4, 4096), nn.ReLU(True), nn.Linear(4096, 4096),
                                        nn.ReLU(True), nn.Linear(4096, 128), nn.ReLU(True))

    def forward(self, x):
        x = self.features(x[:, None])              # (batch, 512, 6, 4)
        return self.embeddings(x.permute(0, 2, 3, 1).flatten(1))


def hertz_to_mel(hertz):
    """The HTK mel scale VGGish uses: 1127 ln(1 + f / 700)."""
    return 1127.0 * torch.log1p(hertz / 700.0)


def vggish_mel_matrix(num_bins=64, spectrogram_bins=257, sample_rate=16_000, low=125.0, high=7500.0):
    """(spectrogram_bins, num_bins) triangular weights, linear in mel, as VGGish's mel_features computes them
    (band edges evenly spaced in mel between `low` and `high`, unnormalised, the DC bin zeroed)."""
    bin_mels = hertz_to_mel(torch.linspace(0, sample_rate / 2, spectrogram_bins, dtype=torch.float64))
    edges = torch.linspace(float(hertz_to_mel(torch.tensor(low))), float(hertz_to_mel(torch.tensor(high))),
                           num_bins + 2, dtype=torch.float64)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mels[:, None] - lower) / (center - lower)
    falling = (upper - bin_mels[:, None]) / (upper - center)
    weights = torch.minimum(rising, falling).clamp(min=0)
    weights[0] = 0
    return weights.float()


def load_vggish_weights(path):
    """VGGish's state dict from `path` (torchvggish's file), or from torch.hub's cache or download (None)."""
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        try:
            state = torch.hub.load_state_dict_from_url(VGGISH_URL, map_location="cpu", weights_only=True)
        except Exception as err:
            raise SystemExit(f"error: the VGGish weights could not be downloaded ({type(err).__name__}: {err}); "
                             f"give the file with --fad_weights, or choose --fad_embedding aisfx") from None
    return {k: v for k, v in state.items() if k.startswith(("features.", "embeddings."))}


class VggishEmbedding:
    """VGGish embeddings of 16 kHz clips, computed as the standard FAD does: 25-ms periodic-Hann frames
    every 10 ms (512-point FFT magnitude), 64 mel bands 125-7,500 Hz, log(mel + 0.01), non-overlapping
    0.96-s examples of 96 frames, one 128-d vector (before the PCA) each. `weights`: a VGGish state dict
    (None: from `weights_path` or torch.hub)."""

    name = "vggish"
    sample_rate, window_length, hop, n_fft, example = 16_000, 400, 160, 512, 96

    def __init__(self, device="cpu", weights=None, weights_path=None):
        self.device = torch.device(device)
        self.net = VGGish().eval().to(self.device)
        self.net.load_state_dict(weights if weights is not None else load_vggish_weights(weights_path))
        self.mel = vggish_mel_matrix().to(self.device)
        self.window = torch.hann_window(self.window_length, periodic=True, device=self.device)

    def frames(self, waves, rate):
        """(clips, samples) at `rate` -> (clips, T, 64) log-mel frames (no centring padding, as VGGish)."""
        x = resample(waves.float(), rate, self.sample_rate).to(self.device)
        # frames of 400 samples zero-padded to 512 at their end, as VGGish's mel_features frames them
        frames = x.unfold(1, self.window_length, self.hop) * self.window            # (clips, T, 400)
        spec = torch.fft.rfft(frames, n=self.n_fft).abs()                            # (clips, T, 257)
        return torch.log(spec @ self.mel + 0.01)

    @torch.no_grad()
    def __call__(self, waves, rate, batch_size=64):
        examples = frame_blocks(self.frames(waves, rate), self.example, self.example)
        return torch.cat([self.net(examples[i:i + batch_size])
                          for i in range(0, len(examples), batch_size)]).double().cpu()


# --- log-mel frames ---------------------------------------------------------------------------

class MelFrameEmbedding:
    """Each log-mel frame of the model's own LogMelTransform as a 128-d vector: no network, so it sees the
    spectral envelope and level of single frames but nothing of how they follow one another."""

    name = "mel-frames"

    def __init__(self, transform):
        self.transform = transform

    @torch.no_grad()
    def __call__(self, waves, rate):
        if rate != self.transform.sample_rate:
            waves = resample(waves.float(), rate, self.transform.sample_rate)
        return self.transform(waves).transpose(1, 2).reshape(-1, self.transform.n_mels).double().cpu()


def make_embedding(name, transform, device="cpu", vggish_weights=None):
    """The embedder called `name` (one of EMBEDDINGS)."""
    if name == "aisfx":
        return AisfxEmbedding(device)
    if name == "vggish":
        return VggishEmbedding(device, weights_path=vggish_weights)
    if name == "mel-frames":
        return MelFrameEmbedding(transform)
    raise ValueError(f"unknown embedding {name!r}; choose one of {EMBEDDINGS}")
