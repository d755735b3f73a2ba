"""Mel-spectrogram autoencoder on MUSDB18 stems, with Griffin-Lim back to audio.

    python audio_gen/audio_gen.py --mode train                 # downloads the 7-s preview if needed
    python audio_gen/audio_gen.py --mode infer                 # reconstruct test clips, write WAVs
    python audio_gen/audio_gen.py --mode train --musdb_root /data/musdb18 --download none
    python audio_gen/audio_gen.py --mode benchmark             # data preparation / training / Griffin-Lim speed

Every clip is 5 s of mono 16 kHz audio (80,000 samples) turned into a 128-bin log-mel spectrogram of
256 frames. The autoencoder compresses it 16x in time (128 x 256 -> latent_dim x 16) and back.
Relative default paths (data/, models/, results/) live next to this file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

SCRIPT_DIR = Path(__file__).resolve().parent
CHECKPOINT_FORMAT = "imageaudiogen.audio_autoencoder"
CHECKPOINT_VERSION = 1
CACHE_VERSION = 1
SOURCES = ("mixture", "drums", "bass", "other", "vocals")  # the stream order inside .stem.mp4
# MUSDB18's official validation split: 14 of the 100 training tracks (as named by the musdb package).
VALIDATION_TRACKS = frozenset({
    "Actions - One Minute Smile", "Alexander Ross - Goodbye Bolero", "ANiMAL - Rockshow",
    "Clara Berry And Wooldog - Waltz For My Victims", "Fergessen - Nos Palpitants", "James May - On The Line",
    "Johnny Lokke - Promises & Lies", "Leaf - Summerghost", "Meaxic - Take A Step",
    "Patrick Talbot - A Reason To Leave", "Skelpolu - Human Mistakes", "Traffic Experiment - Sirens",
    "Triviul - Angelsaint", "Young Griffo - Pennies"})
DATASETS = {
    # MUSDB18-7: 7-second excerpts of all 150 tracks, what `musdb.DB(download=True)` fetches.
    "preview": {"url": "https://github.com/sigsep/sigsep-mus-db/releases/download/v0.4.0/MUSDB18-7-STEMS.zip",
                "size": 147_209_385, "md5": None},
    # The full MUSDB18 (stems, AAC), Zenodo record 1117372. Zenodo may ask you to log in: then fetch it by hand.
    "full": {"url": "https://zenodo.org/record/1117372/files/musdb18.zip",
             "size": None, "md5": "af06762477334799bfc5abf237648207"},
}


# ============================================================================================
# Config / CLI
# ============================================================================================

def _number(kind, low=None, high=None):
    """argparse type: a number of `kind` inside [low, high]."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    return parse


def build_parser():
    p = argparse.ArgumentParser(
        description="Residual Conv1d autoencoder over log-mel spectrograms of MUSDB18 stems.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mode", choices=["train", "infer", "benchmark"], default="train",
                   help="train a model, reconstruct test clips from a checkpoint, or measure throughput")
    p.add_argument("--epochs", type=_number(int, 1), default=30, help="training epochs (total, also with --resume)")
    p.add_argument("--batch_size", type=_number(int, 1), default=32, help="clips per training batch")
    p.add_argument("--learning_rate", type=_number(float, 1e-8), default=1e-3, help="peak AdamW learning rate")
    p.add_argument("--musdb_root", default="data/musdb18",
                   help="MUSDB18 ({train,test}/*.stem.mp4) or MUSDB18-HQ ({train,test}/<track>/<source>.wav)")
    p.add_argument("--checkpoint", default="models/audio_autoencoder.pt", help="checkpoint path")
    p.add_argument("--n_mels", type=_number(int, 16, 512), default=128, help="mel bins")
    p.add_argument("--latent_dim", type=_number(int, 1, 4096), default=128,
                   help="latent channels (the latent is latent_dim x frames/16)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda (default: cuda if available)")
    p.add_argument("--seed", type=_number(int, 0), default=0, help="random seed")
    p.add_argument("--results_dir", default="results", help="where plots, WAVs and metrics.json go")
    p.add_argument("--cache_dir", default="data/cache", help="where decoded mel spectrograms are cached")
    p.add_argument("--resume", action="store_true", help="continue training from --checkpoint")
    p.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES),
                   help="which stems to train and evaluate on")
    p.add_argument("--num_examples", type=_number(int, 1, 64), default=2,
                   help="test clips written as WAV pairs and drawn in inference_comparison.png")
    p.add_argument("--griffin_lim_iters", type=_number(int, 1, 10_000), default=64,
                   help="Griffin-Lim iterations (momentum 0.99)")
    p.add_argument("--download", choices=["preview", "full", "none"], default="preview",
                   help="what to fetch when --musdb_root holds no dataset: the 7-s preview (~147 MB), "
                        "the full MUSDB18 (4.7 GB), or nothing")
    p.add_argument("--audio_eval_clips", type=_number(int, 0, 1000), default=8,
                   help="clips scored with PESQ/STOI after Griffin-Lim at evaluation epochs and in infer (0 skips)")
    p.add_argument("--eval_every", type=_number(int, 1), default=5,
                   help="score PESQ/STOI and redraw training_curves.png every N epochs (and after the first "
                        "and last); mel metrics are logged every epoch")
    return p


def resolve_path(path, default):
    """Default relative paths live next to this script; paths the user typed are taken as given."""
    path = Path(path)
    if str(path) == default and not path.is_absolute():
        return SCRIPT_DIR / path
    return path


def resolve_device(name, parser):
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device: unknown device {name!r} (try cpu or cuda)")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {name}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: CUDA is not available on this machine")
    return device


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("musdb_root", "checkpoint", "results_dir", "cache_dir"):
        setattr(args, name, resolve_path(getattr(args, name), parser.get_default(name)))
    args.sources = list(dict.fromkeys(args.sources))  # drop repeats, keep order
    args.device = resolve_device(args.device, parser)
    return args


# ============================================================================================
# Audio transforms
# ============================================================================================

class AudioPreprocessor:
    """Audio <-> normalised log-mel spectrograms.

    Forward: audio file -> mono 16 kHz float waveforms -> 5 s clips (80,000 samples) ->
    log-mel (n_mels, 256) -> per-bin standardisation with training-set statistics.
    Inverse: undo the standardisation -> mel magnitude -> linear magnitude (least squares,
    InverseMelScale) -> phase by Griffin-Lim -> exactly 80,000 samples.
    """

    def __init__(self, n_mels=128, sample_rate=16_000, clip_seconds=5, n_fft=1024, hop_length=313,
                 griffin_lim_iters=64, mean=None, std=None, device="cpu"):
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
        self._resamplers = {}
        self.mean = None if mean is None else mean.to(self.device)
        self.std = None if std is None else std.to(self.device)

    @property
    def config(self):
        """What defines the features; the cache key and the checkpoint both use it."""
        return {"n_mels": self.n_mels, "sample_rate": self.sample_rate, "n_fft": self.n_fft,
                "hop_length": self.hop_length, "clip_samples": self.clip_samples}

    # --- loading -----------------------------------------------------------------------------
    def to_mono_16k(self, audio, rate):
        """(channels, samples) float array at `rate` -> (samples,) float32 tensor at 16 kHz."""
        mono = torch.as_tensor(np.asarray(audio, dtype=np.float32)).mean(dim=0)
        if rate == self.sample_rate:
            return mono
        if rate not in self._resamplers:  # the resampling kernel is built once per input rate
            import torchaudio.transforms as T
            self._resamplers[rate] = T.Resample(rate, self.sample_rate)
        return self._resamplers[rate](mono)

    def load_stem_file(self, path):
        """All five streams of a `.stem.mp4`, decoded in one pass with PyAV: {source: (samples,) tensor}."""
        import av

        with av.open(str(path)) as container:
            streams = list(container.streams.audio)
            if len(streams) != len(SOURCES):
                raise ValueError(f"expected {len(SOURCES)} audio streams, found {len(streams)}")
            chunks = {s.index: [] for s in streams}
            for packet in container.demux(streams):
                for frame in packet.decode():
                    chunks[packet.stream.index].append(frame.to_ndarray().reshape(frame.layout.nb_channels, -1)
                                                       if frame.format.is_planar else
                                                       frame.to_ndarray().reshape(-1, frame.layout.nb_channels).T)
            rate = streams[0].rate
            return {name: self.to_mono_16k(np.concatenate(chunks[s.index], axis=1), rate)
                    for name, s in zip(SOURCES, streams)}

    def load_wav_folder(self, folder):
        """MUSDB18-HQ: {source: (samples,) tensor} from <track>/<source>.wav."""
        import soundfile as sf

        waves = {}
        for name in SOURCES:
            audio, rate = sf.read(folder / f"{name}.wav", dtype="float32", always_2d=True)
            waves[name] = self.to_mono_16k(audio.T, rate)
        return waves

    def clip_starts(self, num_samples):
        """Evenly spaced 5-s windows covering the whole track; one (zero-padded) window if shorter."""
        count = max(1, math.ceil(num_samples / self.clip_samples))
        last = max(0, num_samples - self.clip_samples)
        return [round(i * last / (count - 1)) if count > 1 else 0 for i in range(count)]

    def cut(self, wave, start):
        clip = wave[start:start + self.clip_samples]
        return F.pad(clip, (0, self.clip_samples - len(clip)))

    # --- spectrograms ---------------------------------------------------------------------------
    def log_mel(self, waves):
        """(batch, 80000) waveforms -> (batch, n_mels, frames) natural-log mel magnitudes."""
        return torch.log(self.mel(waves.to(self.device)).clamp(min=1e-5))

    def normalize(self, log_mel):
        return (log_mel - self.mean[:, None]) / self.std[:, None]

    def denormalize(self, normalized):
        return normalized * self.std[:, None] + self.mean[:, None]

    def to_audio(self, normalized):
        """(batch, n_mels, frames) normalised log-mel -> (batch, 80000) waveforms via Griffin-Lim."""
        mel_magnitude = self.denormalize(normalized.to(self.device).float()).exp()
        linear = self.inverse_mel(mel_magnitude).clamp(min=0)
        return self.griffin_lim(linear)


def compute_normalization(log_mels):
    """Per-mel-bin mean and std over all training clips and frames: two (n_mels,) tensors."""
    mean = log_mels.double().mean(dim=(0, 2))
    std = log_mels.double().std(dim=(0, 2)).clamp(min=1e-3)
    return mean.float(), std.float()


# ============================================================================================
# Data
# ============================================================================================

def detect_layout(root):
    """'stems' for MUSDB18 (.stem.mp4), 'wav' for MUSDB18-HQ folders, None when neither is there."""
    root = Path(root)
    if any(root.glob("train/*.stem.mp4")) or any(root.glob("test/*.stem.mp4")):
        return "stems"
    if any(root.glob("train/*/mixture.wav")) or any(root.glob("test/*/mixture.wav")):
        return "wav"
    return None


def list_tracks(root, subset, layout):
    """Sorted (name, path) pairs of one subset."""
    folder = Path(root) / subset
    if layout == "stems":
        return sorted((p.name[:-len(".stem.mp4")], p) for p in folder.glob("*.stem.mp4"))
    return sorted((p.name, p) for p in folder.iterdir() if (p / "mixture.wav").is_file()) if folder.is_dir() else []


def download_dataset(kind, root):
    """Fetch MUSDB18 (`kind` in DATASETS) into `root`: progress bar, size/md5/zip checks, atomic move.

    Nothing is left behind on failure: the archive and the extraction live in temporary paths
    next to `root` until the final rename.
    """
    spec = DATASETS[kind]
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    archive = root.parent / f".{root.name}.{kind}.zip.part"
    staging = root.parent / f".{root.name}.{kind}.extract"
    print(f"Downloading MUSDB18 ({kind}) from {spec['url']} into {root} ...", flush=True)
    try:
        md5 = hashlib.md5()
        with urllib.request.urlopen(spec["url"], timeout=60) as response, open(archive, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or spec["size"]
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"MUSDB18 {kind}") as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
        size = archive.stat().st_size
        if spec["size"] is not None and size != spec["size"]:
            raise ValueError(f"size {size:,} bytes, expected {spec['size']:,}")
        if spec["md5"] is not None and md5.hexdigest() != spec["md5"]:
            raise ValueError(f"md5 {md5.hexdigest()}, expected {spec['md5']}")
        if not zipfile.is_zipfile(archive):
            raise ValueError("not a zip archive")
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(archive) as zf:
            if zf.testzip() is not None:
                raise ValueError("corrupt zip member")
            zf.extractall(staging)
        # The archive holds train/ and test/ either at its top or inside one folder.
        top = staging if (staging / "train").is_dir() else next((p for p in staging.iterdir() if (p / "train").is_dir()), None)
        if top is None or detect_layout(top) is None:
            raise ValueError("the archive holds no train/ and test/ folders of MUSDB18")
        if root.exists() and not any(root.iterdir()):
            root.rmdir()  # an empty placeholder folder is replaced
        os.replace(top, root)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise SystemExit(f"error: no MUSDB18 in {root} and the {kind} download failed: {err}.\n"
                         f"Put MUSDB18 ({root}/train/*.stem.mp4, {root}/test/*.stem.mp4) or MUSDB18-HQ "
                         f"({root}/{{train,test}}/<track>/mixture.wav, drums.wav, ...) there, "
                         f"or pass --musdb_root PATH.")
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    print(f"MUSDB18 ({kind}) is ready in {root}")


def ensure_dataset(root, download):
    """The dataset layout in `root`, downloading first when it is empty and `download` allows."""
    layout = detect_layout(root)
    if layout is None and download != "none":
        download_dataset(download, root)
        layout = detect_layout(root)
    if layout is None:
        raise SystemExit(f"error: no MUSDB18 in {root}. Put MUSDB18 ({{train,test}}/*.stem.mp4) or MUSDB18-HQ "
                         f"({{train,test}}/<track>/<source>.wav) there, pass --musdb_root PATH, "
                         f"or allow --download preview.")
    return layout


@dataclass
class ClipIndex:
    """Where each clip came from: parallel lists, one entry per clip."""
    tracks: list = field(default_factory=list)   # track names, indexed by track_ids
    paths: list = field(default_factory=list)    # track paths, same order
    track_ids: list = field(default_factory=list)
    source_ids: list = field(default_factory=list)
    starts: list = field(default_factory=list)   # first sample of the clip at 16 kHz


def decode_tracks(tracks, layout, preprocessor, desc):
    """Decode `tracks` and cut them into clips: (log-mels (n, n_mels, frames) float16, ClipIndex, stats)."""
    index, mels = ClipIndex(), []
    silent, unreadable = 0, []
    for name, path in tqdm(tracks, desc=desc, unit="track", leave=False):
        try:
            waves = preprocessor.load_stem_file(path) if layout == "stems" else preprocessor.load_wav_folder(path)
        except Exception as err:  # a damaged file must not end a long preparation
            warnings.warn(f"skipping unreadable track {path}: {err}")
            unreadable.append(str(path))
            continue
        track_id = len(index.tracks)
        index.tracks.append(name)
        index.paths.append(str(path))
        for source_id, source in enumerate(SOURCES):
            wave = waves[source]
            starts = preprocessor.clip_starts(len(wave))
            clips = torch.stack([preprocessor.cut(wave, s) for s in starts])
            loud = clips.pow(2).mean(dim=1).sqrt() >= 1e-3  # RMS below -60 dBFS: a silent stem window
            silent += int((~loud).sum())
            if loud.any():
                mels.append(preprocessor.log_mel(clips[loud]).cpu().half())
                for s in torch.tensor(starts)[loud].tolist():
                    index.track_ids.append(track_id)
                    index.source_ids.append(source_id)
                    index.starts.append(s)
    log_mels = torch.cat(mels) if mels else torch.empty(0, preprocessor.n_mels, preprocessor.frames, dtype=torch.half)
    return log_mels, index, {"silent_clips_skipped": silent, "unreadable": unreadable}


def cache_key(root, layout, subset, tracks, preprocessor):
    listing = [(name, os.path.getsize(p) if Path(p).is_file() else sum(f.stat().st_size for f in Path(p).iterdir()))
               for name, p in tracks]
    text = json.dumps([CACHE_VERSION, str(Path(root).resolve()), layout, subset, listing, preprocessor.config])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def load_subset(root, layout, subset, preprocessor, cache_dir):
    """All clips of one subset, from the cache when the files and settings are unchanged."""
    tracks = list_tracks(root, subset, layout)
    path = Path(cache_dir) / f"mels-{subset}-{cache_key(root, layout, subset, tracks, preprocessor)}.pt"
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            return cached["log_mels"], ClipIndex(**cached["index"]), cached["stats"]
        except Exception:
            print(f"note: rebuilding unreadable cache {path}")
    start = time.perf_counter()
    log_mels, index, stats = decode_tracks(tracks, layout, preprocessor, desc=f"decoding {subset}")
    stats["prepare_seconds"] = time.perf_counter() - start
    atomic_torch_save({"log_mels": log_mels, "index": vars(index), "stats": stats}, path)
    print(f"Prepared {subset}: {len(index.tracks)} tracks -> {len(log_mels)} clips in {stats['prepare_seconds']:.1f}s "
          f"({stats['silent_clips_skipped']} silent windows skipped, {len(stats['unreadable'])} unreadable files)")
    return log_mels, index, stats


class MUSDBDataset(torch.utils.data.Dataset):
    """Fixed-size (n_mels, 256) log-mel clips of MUSDB18 stems, normalised once stats are set.

    `split` is 'train' or 'valid' (MUSDB18's official split of its training subset) or 'test'.
    Only clips of `sources` are kept. `log_mels` holds un-normalised clips, (n, n_mels, frames).
    """

    def __init__(self, root, split, preprocessor, sources=SOURCES, cache_dir=None, layout=None):
        self.root, self.split, self.preprocessor = Path(root), split, preprocessor
        self.layout = layout or detect_layout(root)
        subset = "test" if split == "test" else "train"
        log_mels, index, self.stats = load_subset(root, self.layout, subset, preprocessor, cache_dir)
        keep = torch.tensor([SOURCES[s] in sources for s in index.source_ids], dtype=torch.bool)
        if split != "test":
            keep &= self._split_mask(index, split)
        rows = keep.nonzero().flatten().tolist()
        self.log_mels = log_mels[rows].float()
        self.index = index
        self.rows = rows  # positions in `index`

    @staticmethod
    def _split_mask(index, split):
        """Official validation tracks; when none are present (a subset of MUSDB18), every 10th track."""
        official = [name in VALIDATION_TRACKS for name in index.tracks]
        if not any(official):
            official = [i % 10 == 9 for i in range(len(index.tracks))] if len(index.tracks) >= 2 else [False] * len(index.tracks)
        in_valid = torch.tensor([official[t] for t in index.track_ids], dtype=torch.bool)
        return in_valid if split == "valid" else ~in_valid

    def __len__(self):
        return len(self.log_mels)

    def __getitem__(self, i):
        return self.preprocessor.normalize(self.log_mels[i].to(self.preprocessor.device))

    def normalized(self):
        """All clips normalised: (n, n_mels, frames) on the preprocessor's device."""
        return self.preprocessor.normalize(self.log_mels.to(self.preprocessor.device))

    def describe(self, i):
        row = self.rows[i]
        return f"{self.index.tracks[self.index.track_ids[row]]} [{SOURCES[self.index.source_ids[row]]}] @ " \
               f"{self.index.starts[row] / self.preprocessor.sample_rate:.1f}s"

    def waveforms(self, positions):
        """The original 16 kHz clips behind `positions`: (len(positions), 80000), decoding each track once."""
        decoded, out = {}, []
        for i in positions:
            row = self.rows[i]
            track_id = self.index.track_ids[row]
            if track_id not in decoded:
                path = Path(self.index.paths[track_id])
                decoded[track_id] = (self.preprocessor.load_stem_file(path) if self.layout == "stems"
                                     else self.preprocessor.load_wav_folder(path))
            wave = decoded[track_id][SOURCES[self.index.source_ids[row]]]
            out.append(self.preprocessor.cut(wave, self.index.starts[row]))
        return torch.stack(out) if out else torch.empty(0, self.preprocessor.clip_samples)


# ============================================================================================
# Model
# ============================================================================================

class ResBlock1d(nn.Module):
    """Pre-activation residual block: (GroupNorm, GELU, Conv1d) x 2 plus the identity."""

    def __init__(self, channels, dilation=1):
        super().__init__()
        self.net = nn.Sequential(
            nn.GroupNorm(8, channels), nn.GELU(), nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation),
            nn.GroupNorm(8, channels), nn.GELU(), nn.Conv1d(channels, channels, 3, padding=1))

    def forward(self, x):
        return x + self.net(x)


class AudioAutoencoder(nn.Module):
    """Conv1d autoencoder over time with the mel bins as channels.

    (batch, n_mels, frames) -> encoder: 4 stride-2 convs, each + a residual block ->
    latent (batch, latent_dim, frames / 16) -> dropout -> decoder: 4 stride-2 ConvTranspose1d,
    each + a residual block -> (batch, n_mels, frames). `frames` must be a multiple of 16.
    """

    def __init__(self, n_mels=128, latent_dim=128, hidden=256, dropout=0.1):
        super().__init__()
        self.config = {"n_mels": n_mels, "latent_dim": latent_dim, "hidden": hidden, "dropout": dropout}
        down = [nn.Sequential(nn.Conv1d(hidden, hidden, 4, stride=2, padding=1), ResBlock1d(hidden, dilation=2))
                for _ in range(4)]
        up = [nn.Sequential(nn.ConvTranspose1d(hidden, hidden, 4, stride=2, padding=1), ResBlock1d(hidden, dilation=2))
              for _ in range(4)]
        self.encoder = nn.Sequential(nn.Conv1d(n_mels, hidden, 3, padding=1), *down,
                                     nn.GroupNorm(8, hidden), nn.GELU(), nn.Conv1d(hidden, latent_dim, 1))
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Sequential(nn.Conv1d(latent_dim, hidden, 1), *up,
                                     nn.GroupNorm(8, hidden), nn.GELU(), nn.Conv1d(hidden, n_mels, 3, padding=1))

    def encode(self, x):
        if x.shape[-1] % 16:
            raise ValueError(f"frames must be a multiple of 16, got {x.shape[-1]}")
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def forward(self, x):
        return self.decode(self.dropout(self.encode(x)))


# ============================================================================================
# Training
# ============================================================================================

class AudioTrainer:
    """Loss MSE + L1 on the normalised mel, AdamW with weight decay, cosine annealing, gradient clipping."""

    def __init__(self, model, device, learning_rate=1e-3, weight_decay=1e-4, total_steps=1, grad_clip=1.0):
        self.model = model.to(device)
        self.device = device
        self.grad_clip = grad_clip
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, total_steps),
                                                                    eta_min=learning_rate * 0.01)
        self.step = 0

    @staticmethod
    def loss(reconstruction, target):
        return F.mse_loss(reconstruction, target) + F.l1_loss(reconstruction, target)

    def train_step(self, batch):
        self.model.train()
        loss = self.loss(self.model(batch), batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss.detach()

    @torch.no_grad()
    def reconstruct(self, mels, batch_size=64):
        """Eval-mode reconstruction of (n, n_mels, frames) in batches."""
        self.model.eval()
        return torch.cat([self.model(mels[i:i + batch_size]) for i in range(0, len(mels), batch_size)]) \
            if len(mels) else mels.clone()

    def state_dict(self):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]


def train_one_epoch(trainer, mels, batch_size, epoch, epochs, check_every=10):
    """One pass over `mels` ((n, n_mels, frames) on the device) in random order: (mean loss, clips/s, seconds)."""
    n = len(mels)
    steps = max(1, n // batch_size)
    order = torch.randperm(n, device=mels.device)
    pending, total, count = [], 0.0, 0
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=f"epoch {epoch}/{epochs}", unit="step", leave=False, dynamic_ncols=True)
    for step in bar:
        batch = mels[order[step * batch_size:(step + 1) * batch_size]]
        pending.append(trainer.train_step(batch))
        if len(pending) == check_every or step == steps - 1:
            values = torch.stack(pending).tolist()  # one host sync per `check_every` steps
            bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
            if bad is not None:
                raise FloatingPointError(f"loss became {values[bad]} at epoch {epoch}, "
                                         f"step {step - len(values) + bad + 2} of {steps}")
            total, count, pending = total + sum(values), count + len(values), []
            bar.set_postfix(loss=f"{total / count:.4f}", clips_s=f"{count * batch.shape[0] / (time.perf_counter() - start):.0f}")
    if mels.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return total / count, steps * min(batch_size, n) / seconds, seconds


# ============================================================================================
# Evaluation
# ============================================================================================

@torch.no_grad()
def mel_metrics(reconstruction, target, preprocessor):
    """Spectrogram metrics on (n, n_mels, frames) normalised log-mels.

    mse, mae, cosine: on the normalised log-mel (cosine per clip over all bins and frames, averaged);
    pesq_proxy: 1 - spectral convergence on mel magnitudes, ||M - M_hat||_F / ||M||_F, clipped to [0, 1];
    time_average_mse: MSE of predicting each bin's mean over its clip, the floor any model should beat.
    """
    if len(target) == 0:
        return {}
    diff = reconstruction - target
    magnitude = preprocessor.denormalize(target).exp()
    magnitude_hat = preprocessor.denormalize(reconstruction).exp()
    convergence = (magnitude_hat - magnitude).flatten(1).norm(dim=1) / magnitude.flatten(1).norm(dim=1)
    return {
        "mse": diff.pow(2).mean().item(),
        "mae": diff.abs().mean().item(),
        "cosine": F.cosine_similarity(reconstruction.flatten(1), target.flatten(1), dim=1).mean().item(),
        "pesq_proxy": (1 - convergence).clamp(0, 1).mean().item(),
        "time_average_mse": (target - target.mean(dim=-1, keepdim=True)).pow(2).mean().item(),
    }


def speech_scores(reference, estimate, sample_rate):
    """Wide-band PESQ and STOI (torchmetrics: the pesq and pystoi packages) averaged over the clips
    where they are defined; silent or speech-free clips that PESQ refuses are skipped and counted."""
    from torchmetrics.functional.audio import perceptual_evaluation_speech_quality as pesq_fn
    from torchmetrics.functional.audio import short_time_objective_intelligibility as stoi_fn

    pesq, stoi = [], []
    for ref, est in zip(reference.cpu().double(), estimate.cpu().double()):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # pesq and pystoi warn on (near-)silent clips
            try:
                pesq.append(float(pesq_fn(est, ref, sample_rate, "wb")))
            except Exception:
                pass  # PESQ has no value for a clip without an utterance
            value = float(stoi_fn(est, ref, sample_rate))
        if math.isfinite(value):
            stoi.append(value)
    return {"pesq": float(np.mean(pesq)) if pesq else None, "stoi": float(np.mean(stoi)) if stoi else None,
            "pesq_clips": len(pesq), "stoi_clips": len(stoi)}


class AudioEvaluator:
    """PESQ/STOI after Griffin-Lim for a fixed set of clips, with the Griffin-Lim-only oracle
    (the true mel through the same inversion) computed once for comparison."""

    def __init__(self, dataset, positions, preprocessor, seed=0):
        self.positions, self.preprocessor, self.seed = positions, preprocessor, seed
        self.reference = dataset.waveforms(positions)
        self.mels = dataset.normalized()[positions]
        self.oracle_audio = self.invert(self.mels)
        self.oracle = speech_scores(self.reference, self.oracle_audio, preprocessor.sample_rate)

    def invert(self, mels):
        # Griffin-Lim starts from random phase: the same start each time keeps scores comparable, and
        # forking leaves the training RNG untouched, so a resumed run matches an uninterrupted one.
        device = self.preprocessor.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            return self.preprocessor.to_audio(mels).cpu()

    def __call__(self, trainer):
        audio = self.invert(trainer.reconstruct(self.mels))
        return {**speech_scores(self.reference, audio, self.preprocessor.sample_rate),
                **{f"oracle_{k}": v for k, v in self.oracle.items()}}, audio


def spread_positions(n, k):
    """k positions spread evenly over range(n)."""
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(min(n, k))}) if n else []


# ============================================================================================
# Checkpoints
# ============================================================================================

def atomic_torch_save(obj, path):
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path):
    """Load with weights_only=True; any problem ends the program with one clear line."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: checkpoint {path} does not exist (train first, or pass --checkpoint)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SystemExit(f"error: cannot read checkpoint {path}: it is truncated or not a PyTorch file "
                         f"({type(err).__name__})")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"error: {path} is not an ImageAudioGen checkpoint of type {CHECKPOINT_FORMAT!r}")
    if state.get("version") != CHECKPOINT_VERSION:
        raise SystemExit(f"error: {path} has checkpoint version {state.get('version')}, expected {CHECKPOINT_VERSION}")
    return state


def make_checkpoint(trainer, preprocessor, epoch, history, args, interrupted=False):
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model_config": dict(trainer.model.config), "preprocessor_config": preprocessor.config,
        "normalization": {"mean": preprocessor.mean.cpu(), "std": preprocessor.std.cpu()},
        **trainer.state_dict(), "epoch": epoch, "interrupted": interrupted, "rng": rng, "history": history,
        "args": {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in vars(args).items()},
    }


def preprocessor_from_checkpoint(state, args):
    config = state["preprocessor_config"]
    return AudioPreprocessor(n_mels=config["n_mels"], sample_rate=config["sample_rate"],
                             clip_seconds=config["clip_samples"] // config["sample_rate"], n_fft=config["n_fft"],
                             hop_length=config["hop_length"], griffin_lim_iters=args.griffin_lim_iters,
                             mean=state["normalization"]["mean"], std=state["normalization"]["std"], device=args.device)


# ============================================================================================
# Plotting and audio output
# ============================================================================================

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_training_curves(history, path, audio_clips="validation"):
    """Loss, mel MSE/MAE, cosine and PESQ proxy, PESQ/STOI with the Griffin-Lim oracle, against epoch.
    `audio_clips` names the clips that PESQ/STOI were scored on."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=110)
    epochs = [h["epoch"] for h in history]

    def line(ax, split, key, label, **kw):
        values = [h.get(split, {}).get(key) for h in history]
        points = [(e, v) for e, v in zip(epochs, values) if v is not None]
        if points:
            dots = {"marker": "o", "markersize": 3} if len(points) <= 60 else {}  # dots would hide long curves
            ax.plot(*zip(*points), label=label, **dots, **kw)

    ax = axes[0, 0]
    line(ax, "train", "loss", "train loss (MSE + L1)")
    line(ax, "valid", "loss", "validation loss")
    ax.set(title="Loss", yscale="log")
    ax = axes[0, 1]
    for split, style in (("train", "-"), ("valid", "--")):
        line(ax, split, "mse", f"{split} MSE", linestyle=style, color="tab:blue")
        line(ax, split, "mae", f"{split} MAE", linestyle=style, color="tab:orange")
        line(ax, split, "time_average_mse", f"{split} time-average baseline MSE", linestyle=style, color="grey")
    ax.set(title="Log-mel error (normalised units)", yscale="log")
    ax = axes[1, 0]
    for split, style in (("train", "-"), ("valid", "--")):
        line(ax, split, "cosine", f"{split} cosine similarity", linestyle=style, color="tab:green")
        line(ax, split, "pesq_proxy", f"{split} PESQ proxy", linestyle=style, color="tab:purple")
    ax.set(title="Similarity (higher is better)", ylim=(0, 1.02))
    ax = axes[1, 1]
    line(ax, "audio", "pesq", "PESQ (autoencoder + Griffin-Lim)", color="tab:red")
    line(ax, "audio", "oracle_pesq", "PESQ (Griffin-Lim oracle)", color="tab:red", linestyle=":")
    ax2 = ax.twinx()
    line(ax2, "audio", "stoi", "STOI (autoencoder + Griffin-Lim)", color="tab:blue")
    line(ax2, "audio", "oracle_stoi", "STOI (Griffin-Lim oracle)", color="tab:blue", linestyle=":")
    ax.set(title=f"Audio after Griffin-Lim ({audio_clips} clips)", ylabel="PESQ (wide-band, 1-4.6)")
    ax2.set_ylabel("STOI (0-1)")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    if handles:
        ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="lower right")
    for ax in axes.flat:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax is not axes[1, 1] and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("Audio autoencoder training on MUSDB18")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_spectrograms(originals, reconstructions, titles, preprocessor, path, suptitle):
    """One row per clip: original, reconstruction, and their difference, as log-mel images on shared scales."""
    plt = _pyplot()
    rows = len(originals)
    fig, axes = plt.subplots(rows, 3, figsize=(14, 3.2 * rows), dpi=100, squeeze=False)
    seconds = preprocessor.clip_samples / preprocessor.sample_rate
    extent = (0, seconds, 0, preprocessor.n_mels)
    for r, (orig, recon, title) in enumerate(zip(originals, reconstructions, titles)):
        a, b = (preprocessor.denormalize(m).cpu().numpy() for m in (orig, recon))
        low, high = float(a.min()), float(a.max())
        for c, (image, name, kwargs) in enumerate((
                (a, "original", {"vmin": low, "vmax": high, "cmap": "magma"}),
                (b, "reconstruction", {"vmin": low, "vmax": high, "cmap": "magma"}),
                (b - a, "reconstruction - original", {"vmin": -3, "vmax": 3, "cmap": "coolwarm"}))):
            ax = axes[r, c]
            shown = ax.imshow(image, origin="lower", aspect="auto", extent=extent, **kwargs)
            ax.set(title=f"{title}\n{name}" if c == 0 else name, xlabel="time (s)", ylabel="mel bin")
            fig.colorbar(shown, ax=ax, label="log magnitude" if c < 2 else "difference")
    fig.suptitle(suptitle)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_wav(path, audio, sample_rate):
    import soundfile as sf

    peak = float(audio.abs().max())
    # Griffin-Lim can overshoot; scale down only when it would clip, so levels stay comparable.
    sf.write(str(path), (audio / max(1.0, peak / 0.99)).cpu().numpy(), sample_rate, subtype="PCM_16")


def write_json_atomic(data, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


# ============================================================================================
# Train / infer / benchmark
# ============================================================================================

def build_data(args, preprocessor):
    layout = ensure_dataset(args.musdb_root, args.download)
    train_set = MUSDBDataset(args.musdb_root, "train", preprocessor, args.sources, args.cache_dir, layout)
    valid_set = MUSDBDataset(args.musdb_root, "valid", preprocessor, args.sources, args.cache_dir, layout)
    if len(train_set) == 0:
        raise SystemExit(f"error: no usable training clips in {args.musdb_root}/train for sources {args.sources}")
    return train_set, valid_set


def split_metrics(trainer, normalized, preprocessor, limit=2048):
    """Mel metrics and loss on up to `limit` of the (n, n_mels, frames) normalised clips, in eval mode."""
    if len(normalized) == 0:
        return {}
    target = normalized[:limit]
    reconstruction = trainer.reconstruct(target)
    return {"loss": AudioTrainer.loss(reconstruction, target).item(), **mel_metrics(reconstruction, target, preprocessor)}


def train(args):
    torch.manual_seed(args.seed)
    state = load_checkpoint(args.checkpoint) if args.resume else None
    if state:
        preprocessor = preprocessor_from_checkpoint(state, args)
    else:
        preprocessor = AudioPreprocessor(n_mels=args.n_mels, griffin_lim_iters=args.griffin_lim_iters, device=args.device)
    train_set, valid_set = build_data(args, preprocessor)
    if not state:
        preprocessor.mean, preprocessor.std = (t.to(args.device) for t in compute_normalization(train_set.log_mels))
    mels, valid_mels = train_set.normalized(), valid_set.normalized()  # once: every epoch scores them
    steps = max(1, len(mels) // args.batch_size)
    model_config = state["model_config"] if state else {"n_mels": args.n_mels, "latent_dim": args.latent_dim}
    trainer = AudioTrainer(AudioAutoencoder(**model_config), args.device, args.learning_rate,
                           total_steps=args.epochs * steps)
    history, start_epoch = [], 1
    if state:
        trainer.load_state_dict(state)
        torch.set_rng_state(state["rng"]["torch"])
        history, start_epoch = state["history"], state["epoch"] + 1
        print(f"Resuming from {args.checkpoint} after epoch {state['epoch']}")
    elif args.checkpoint.exists():
        print(f"note: starting a new run; {args.checkpoint} will be overwritten (use --resume to continue it)")
    if start_epoch > args.epochs:
        print(f"Nothing to do: the checkpoint already has {start_epoch - 1} epochs (--epochs {args.epochs}).")
        return history

    args.results_dir.mkdir(parents=True, exist_ok=True)
    eval_set, eval_mels, eval_name = (valid_set, valid_mels, "validation") if len(valid_set) else \
        (train_set, mels, "training")
    evaluator = (AudioEvaluator(eval_set, spread_positions(len(eval_set), args.audio_eval_clips), preprocessor, args.seed)
                 if args.audio_eval_clips else None)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    print(f"Training on {len(train_set)} clips ({len(valid_set)} validation) of {', '.join(args.sources)}; "
          f"{n_params / 1e6:.2f}M parameters, device {args.device}, {steps} steps/epoch")
    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            loss, rate, seconds = train_one_epoch(trainer, mels, args.batch_size, epoch, args.epochs)
            start = time.perf_counter()
            record = {"epoch": epoch, "clips_per_s": rate, "train_seconds": seconds,
                      "train": {**split_metrics(trainer, mels, preprocessor), "loss_during_epoch": loss},
                      "valid": split_metrics(trainer, valid_mels, preprocessor)}
            # Griffin-Lim + PESQ and the plot cost seconds, which would dominate epochs of a few steps.
            milestone = epoch in (1, args.epochs) or epoch % args.eval_every == 0
            if evaluator and milestone:
                record["audio"] = evaluator(trainer)[0]
            record["eval_seconds"] = time.perf_counter() - start
            history.append(record)
            print(epoch_line(record, args.epochs), flush=True)
            atomic_torch_save(make_checkpoint(trainer, preprocessor, epoch, history, args), args.checkpoint)
            if milestone:
                plot_training_curves(history, args.results_dir / "training_curves.png", eval_name)
    except KeyboardInterrupt:
        atomic_torch_save(make_checkpoint(trainer, preprocessor, epoch - 1, history, args, interrupted=True),
                          args.checkpoint)
        if history:
            plot_training_curves(history, args.results_dir / "training_curves.png", eval_name)
        raise SystemExit(f"\nInterrupted during epoch {epoch}: checkpoint saved to {args.checkpoint}; "
                         f"continue with --resume.")
    except FloatingPointError as err:
        raise SystemExit(f"error: {err}. The last good checkpoint is {args.checkpoint}.")

    shown = spread_positions(len(eval_set), 3)
    shown_mels = eval_mels[shown]
    plot_spectrograms(shown_mels, trainer.reconstruct(shown_mels),
                      [eval_set.describe(i) for i in shown], preprocessor, args.results_dir / "spectrogram_comparison.png",
                      f"{eval_name.capitalize()} clips after epoch {epoch}")
    metrics = read_json(args.results_dir / "metrics.json")
    metrics["train"] = {"sources": args.sources, "train_clips": len(train_set), "valid_clips": len(valid_set),
                        "data": {"train": train_set.stats, "layout": train_set.layout}, "epochs": history}
    metrics["final_test"] = evaluate_test(trainer, preprocessor, args)[0]
    write_json_atomic(metrics, args.results_dir / "metrics.json")
    return history


def epoch_line(record, epochs):
    t, v, a = record["train"], record.get("valid", {}), record.get("audio", {})
    line = (f"epoch {record['epoch']:3d}/{epochs}  loss {t['loss_during_epoch']:.4f}  "
            f"train mse {t['mse']:.4f} cos {t['cosine']:.3f}")
    if v:
        line += f"  valid mse {v['mse']:.4f} cos {v['cosine']:.3f} proxy {v['pesq_proxy']:.3f}"
    if a.get("pesq") is not None:
        line += f"  PESQ {a['pesq']:.2f} (oracle {a['oracle_pesq']:.2f})"
    if a.get("stoi") is not None:
        line += f"  STOI {a['stoi']:.2f} (oracle {a['oracle_stoi']:.2f})"
    return line + f"  {record['clips_per_s']:.0f} clips/s"


def evaluate_test(trainer, preprocessor, args):
    """Mel metrics on the whole test subset, and PESQ/STOI on `--audio_eval_clips` of it."""
    test_set = MUSDBDataset(args.musdb_root, "test", preprocessor, args.sources, args.cache_dir)
    if len(test_set) == 0:
        print(f"note: no test clips in {args.musdb_root}/test; skipping the test evaluation")
        return {}, test_set
    result = {"clips": len(test_set), **split_metrics(trainer, test_set.normalized(), preprocessor, limit=len(test_set))}
    if args.audio_eval_clips:
        evaluator = AudioEvaluator(test_set, spread_positions(len(test_set), args.audio_eval_clips), preprocessor, args.seed)
        result["audio"] = evaluator(trainer)[0]
    return result, test_set


def infer(args):
    state = load_checkpoint(args.checkpoint)
    preprocessor = preprocessor_from_checkpoint(state, args)
    trainer = AudioTrainer(AudioAutoencoder(**state["model_config"]), args.device)
    trainer.model.load_state_dict(state["model"])
    ensure_dataset(args.musdb_root, args.download)
    result, test_set = evaluate_test(trainer, preprocessor, args)
    if len(test_set) == 0:
        raise SystemExit(f"error: no test clips in {args.musdb_root}/test for sources {args.sources}")

    examples = spread_positions(len(test_set), args.num_examples)
    evaluator = AudioEvaluator(test_set, examples, preprocessor, args.seed)
    scores, audio = evaluator(trainer)
    reconstructed = trainer.reconstruct(evaluator.mels)
    results = args.results_dir
    results.mkdir(parents=True, exist_ok=True)
    for old in results.glob("audio_*_[0-9]*.wav"):
        old.unlink()  # a run with fewer examples must not leave stale files behind
    rate = preprocessor.sample_rate
    for n, i in enumerate(examples):
        write_wav(results / f"audio_original_{n}.wav", evaluator.reference[n], rate)
        write_wav(results / f"audio_reconstructed_{n}.wav", audio[n], rate)
        write_wav(results / f"audio_griffinlim_oracle_{n}.wav", evaluator.oracle_audio[n], rate)
    plot_spectrograms(evaluator.mels, reconstructed, [test_set.describe(i) for i in examples], preprocessor,
                      results / "inference_comparison.png", f"Test clips reconstructed by {args.checkpoint.name}")
    result["examples"] = {"clips": [test_set.describe(i) for i in examples], **scores}
    metrics = read_json(results / "metrics.json")
    metrics["infer"] = {"checkpoint": str(args.checkpoint), "epoch": state["epoch"], **result}
    write_json_atomic(metrics, results / "metrics.json")
    print(f"Test subset ({result['clips']} clips): mse {result['mse']:.4f}  mae {result['mae']:.4f}  "
          f"cosine {result['cosine']:.3f}  PESQ proxy {result['pesq_proxy']:.3f}")
    audio_scores = result.get("audio", {})
    if audio_scores.get("pesq") is not None:
        print(f"After Griffin-Lim: PESQ {audio_scores['pesq']:.2f} (oracle {audio_scores['oracle_pesq']:.2f}), "
              f"STOI {audio_scores['stoi']:.3f} (oracle {audio_scores['oracle_stoi']:.3f})")
    print(f"Wrote {len(examples)} WAV pairs and inference_comparison.png to {results}")
    return metrics["infer"]


def benchmark(args):
    """Data preparation (no cache), training clips/s and Griffin-Lim clips/s on each available device."""
    import tempfile

    layout = detect_layout(args.musdb_root)
    if layout:
        preprocessor = AudioPreprocessor(n_mels=args.n_mels)
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            for subset in ("train", "test"):
                load_subset(args.musdb_root, layout, subset, preprocessor, cache)
            print(f"[cpu] data preparation ({args.musdb_root}): {time.perf_counter() - start:.1f}s")
            start = time.perf_counter()
            for subset in ("train", "test"):
                load_subset(args.musdb_root, layout, subset, preprocessor, cache)
            print(f"[cpu] cached reload: {time.perf_counter() - start:.2f}s")
    else:
        print(f"(no dataset in {args.musdb_root}: data preparation not measured)")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        cuda = device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        torch.manual_seed(0)
        trainer = AudioTrainer(AudioAutoencoder(args.n_mels, args.latent_dim), device, total_steps=100)
        batch = torch.randn(args.batch_size, args.n_mels, 256, device=device)
        trainer.train_step(batch)
        sync()
        repeats = 20 if cuda else 3
        start = time.perf_counter()
        for _ in range(repeats):
            trainer.train_step(batch)
        sync()
        print(f"[{device}] training batch {args.batch_size}: {repeats * args.batch_size / (time.perf_counter() - start):.0f} clips/s")
        preprocessor = AudioPreprocessor(n_mels=args.n_mels, griffin_lim_iters=args.griffin_lim_iters, device=device)
        preprocessor.mean, preprocessor.std = torch.zeros(args.n_mels, device=device), torch.ones(args.n_mels, device=device)
        n = 8 if not cuda else 64
        preprocessor.to_audio(torch.randn(n, args.n_mels, 256, device=device))
        sync()
        start = time.perf_counter()
        preprocessor.to_audio(torch.randn(n, args.n_mels, 256, device=device))
        sync()
        print(f"[{device}] Griffin-Lim ({args.griffin_lim_iters} iters, batch {n}): {n / (time.perf_counter() - start):.1f} clips/s")


# ============================================================================================
# main
# ============================================================================================

def main(argv=None):
    args = parse_args(argv)
    if args.mode == "train":
        return train(args)
    if args.mode == "infer":
        return infer(args)
    return benchmark(args)


if __name__ == "__main__":
    main()
