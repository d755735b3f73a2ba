"""Mel-spectrogram autoencoder for music, with Griffin-Lim back to audio.

    python audio_gen/audio_gen.py --mode train --audio_dir ~/Music          # any folder of music
    python audio_gen/audio_gen.py --mode infer --audio_dir ~/OtherMusic     # score music it never heard
    python audio_gen/audio_gen.py --mode train                              # MUSDB18 (7-s preview downloaded)
    python audio_gen/audio_gen.py --mode train --musdb_root /data/musdb18 --download none
    python audio_gen/audio_gen.py --mode benchmark --audio_dir ~/Music      # preparation / training / Griffin-Lim speed

Every clip is 5 s of mono 16 kHz audio (80,000 samples), a 128-bin log-mel spectrogram of 256 frames.
The autoencoder squeezes it into a latent of `latent_dim` channels x 256/`time_downsample` frames
(128 x 128 at the defaults: 2x fewer numbers, chosen from measurements in the README) and back;
Griffin-Lim turns the mel into audio again.
Training draws random 5-s crops from whole recordings; scores use fixed, evenly spaced windows.
Relative default paths (data/, models/, results/) live next to this file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

SCRIPT_DIR = Path(__file__).resolve().parent
CHECKPOINT_FORMAT = "imageaudiogen.audio_autoencoder"
CHECKPOINT_VERSION = 2
CACHE_VERSION = 3
SOURCES = ("mixture", "drums", "bass", "other", "vocals")  # the stream order inside .stem.mp4
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac")
SPLITS = ("train", "valid", "test")
SILENCE_RMS = 1e-3  # -60 dBFS: quieter recordings and windows carry nothing to reconstruct
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line and exits with code 2, without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser():
    p = ArgumentParser(
        description="Residual Conv1d autoencoder over log-mel spectrograms of music (any folder, or MUSDB18 stems).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mode", choices=["train", "infer", "benchmark"], default="train",
                   help="train a model, reconstruct held-out clips from a checkpoint, or measure speed")
    data = p.add_argument_group("data")
    data.add_argument("--audio_dir", default=None,
                      help="any folder of music (wav, flac, ogg, opus, mp3, m4a/aac; searched recursively), "
                           "split by file: DIR/{train,valid,test}/ when present, else ~80/10/10 by a hash of the path; "
                           "in infer, a folder with no split is scored whole")
    data.add_argument("--musdb_root", default=None,
                      help="MUSDB18 ({train,test}/*.stem.mp4) or MUSDB18-HQ ({train,test}/<track>/<source>.wav); "
                           "the default when --audio_dir is not given is data/musdb18")
    data.add_argument("--download", choices=["preview", "full", "none"], default="preview",
                      help="what to fetch when --musdb_root holds no dataset: the 7-s preview (~147 MB), "
                           "the full MUSDB18 (4.7 GB), or nothing")
    data.add_argument("--sources", nargs="+", choices=SOURCES, default=None,
                      help="MUSDB18 stems to train and evaluate on (default: all five)")
    data.add_argument("--cache_dir", default="data/cache", help="where decoded log-mel spectrograms are cached")
    model = p.add_argument_group("model (train only: infer reads them from the checkpoint)")
    model.add_argument("--n_mels", type=_number(int, 16, 512), default=128, help="mel bins")
    model.add_argument("--latent_dim", type=_number(int, 1, 4096), default=128, help="latent channels")
    model.add_argument("--time_downsample", type=int, choices=[1, 2, 4, 8, 16], default=2,
                       help="frames per latent frame (the encoder's 4 stages stride 2 this many times in total); "
                            "compression = n_mels * time_downsample / latent_dim")
    model.add_argument("--hidden", type=_number(int, 8, 2048), default=128, help="channels inside encoder/decoder")
    model.add_argument("--dropout", type=_number(float, 0.0, 0.9), default=0.0, help="dropout on the latent")
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=_number(int, 1), default=60,
                       help="training epochs (total, also with --resume); an epoch draws as many random crops "
                            "as the training files hold 5-s windows")
    train.add_argument("--batch_size", type=_number(int, 1), default=16, help="clips per training batch")
    train.add_argument("--learning_rate", type=_number(float, 1e-8, 1.0), default=1e-3, help="peak AdamW learning rate")
    train.add_argument("--warmup_steps", type=_number(int, 0), default=100, help="linear warm-up steps before the cosine decay")
    train.add_argument("--seed", type=_number(int, 0), default=0, help="random seed")
    train.add_argument("--resume", action="store_true", help="continue training from --checkpoint")
    train.add_argument("--eval_every", type=_number(int, 1), default=5,
                       help="score PESQ/STOI and redraw training_curves.png every N epochs (and after the first "
                            "and last); mel metrics are logged every epoch")
    out = p.add_argument_group("evaluation and outputs")
    out.add_argument("--checkpoint", default="models/audio_autoencoder.pt", help="checkpoint path")
    out.add_argument("--results_dir", default="results", help="where plots, WAVs and metrics.json go")
    out.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda (default: cuda if available)")
    out.add_argument("--num_examples", type=_number(int, 1, 64), default=2,
                     help="held-out clips written as WAV triples and drawn in inference_comparison.png")
    out.add_argument("--griffin_lim_iters", type=_number(int, 1, 10_000), default=64,
                     help="Griffin-Lim iterations (momentum 0.99)")
    out.add_argument("--audio_eval_clips", type=_number(int, 0, 1000), default=8,
                     help="clips per split scored with PESQ/STOI after Griffin-Lim (0 skips)")
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
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {name}: only cpu and cuda are supported")
    return device


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.audio_dir is not None and args.musdb_root is not None:
        parser.error("give either --audio_dir or --musdb_root, not both")
    if args.audio_dir is not None and args.sources is not None:
        parser.error("--sources applies to MUSDB18 stems; files under --audio_dir are mixtures")
    if args.audio_dir is not None:
        args.audio_dir = Path(args.audio_dir)
        if not args.audio_dir.is_dir():
            parser.error(f"--audio_dir {args.audio_dir}: no such folder")
    else:
        args.musdb_root = resolve_path(args.musdb_root or "data/musdb18", "data/musdb18")
    for name in ("checkpoint", "results_dir", "cache_dir"):
        setattr(args, name, resolve_path(getattr(args, name), parser.get_default(name)))
    args.sources = list(dict.fromkeys(args.sources or SOURCES))  # drop repeats, keep order
    args.device = resolve_device(args.device, parser)
    return args


# ============================================================================================
# Data
# ============================================================================================
# Files are decoded to mono 16 kHz, turned into one log-mel sequence per recording (a music file,
# or one stem of a MUSDB18 track) and cached per file. Training crops random 256-frame windows from
# those sequences; scoring uses fixed, evenly spaced, non-silent windows.

def decode_streams(path, sample_rate, expected_streams=None):
    """Every audio stream of a file as mono float32 at `sample_rate`: a list of (samples,) arrays.

    PyAV (FFmpeg's decoders and libswresample) reads wav, flac, ogg/opus, mp3, m4a/aac and MUSDB18's
    five-stream .stem.mp4 alike and resamples as it decodes. The downmix is the channel mean, as in
    MUSDB18 tools (FFmpeg's own stereo-to-mono mix is 3 dB louder).
    """
    import av

    with av.open(str(path)) as container:
        streams = list(container.streams.audio)
        if not streams:
            raise ValueError("no audio stream")
        if expected_streams is not None and len(streams) != expected_streams:
            raise ValueError(f"expected {expected_streams} audio streams, found {len(streams)}")
        resamplers = {s.index: av.AudioResampler(format="fltp", rate=sample_rate) for s in streams}
        chunks = {s.index: [] for s in streams}
        for packet in container.demux(streams):
            for frame in packet.decode():
                chunks[packet.stream.index] += [f.to_ndarray().mean(axis=0) for f in resamplers[packet.stream.index].resample(frame)]
        for index, resampler in resamplers.items():
            chunks[index] += [f.to_ndarray().mean(axis=0) for f in resampler.resample(None)]  # flush
    return [np.concatenate(parts) if parts else np.zeros(0, np.float32) for parts in chunks.values()]


def decode_recordings(path, kind, sample_rate):
    """{source: (samples,) float32 array} for one file: a music file ('file', source 'mixture'),
    a MUSDB18 .stem.mp4 ('stems') or a MUSDB18-HQ track folder ('wav')."""
    path = Path(path)
    if kind == "file":
        return {"mixture": decode_streams(path, sample_rate)[0]}
    if kind == "stems":
        return dict(zip(SOURCES, decode_streams(path, sample_rate, expected_streams=len(SOURCES))))
    return {name: decode_streams(path / f"{name}.wav", sample_rate)[0] for name in SOURCES}


def detect_layout(root):
    """'stems' for MUSDB18 (.stem.mp4), 'wav' for MUSDB18-HQ folders, None when neither is there."""
    root = Path(root)
    if any(root.glob("train/*.stem.mp4")) or any(root.glob("test/*.stem.mp4")):
        return "stems"
    if any(root.glob("train/*/mixture.wav")) or any(root.glob("test/*/mixture.wav")):
        return "wav"
    return None


def list_musdb_tracks(root, subset, layout):
    """Sorted (name, path) pairs of one MUSDB18 subset."""
    folder = Path(root) / subset
    if not folder.is_dir():
        return []
    if layout == "stems":
        return sorted((p.name[:-len(".stem.mp4")], p) for p in folder.glob("*.stem.mp4"))
    return sorted((p.name, p) for p in folder.iterdir() if (p / "mixture.wav").is_file())


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
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"MUSDB18 {kind}", disable=None) as bar:
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
    """The MUSDB18 layout in `root`, downloading first when it is empty and `download` allows."""
    layout = detect_layout(root)
    if layout is None and download != "none":
        download_dataset(download, root)
        layout = detect_layout(root)
    if layout is None:
        raise SystemExit(f"error: no MUSDB18 in {root}. Put MUSDB18 ({{train,test}}/*.stem.mp4) or MUSDB18-HQ "
                         f"({{train,test}}/<track>/<source>.wav) there, pass --musdb_root PATH or --audio_dir DIR, "
                         f"or allow --download preview.")
    return layout


def list_audio_files(root):
    """Every audio file under `root`, recursively, as sorted paths (hidden files and folders skipped)."""
    found = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [Path(folder) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in AUDIO_SUFFIXES]
    return sorted(found)


def hash_split(relative_path):
    """'train', 'valid' or 'test' (8:1:1) from a hash of the path: adding files never moves old ones."""
    bucket = int(hashlib.sha1(Path(relative_path).as_posix().encode()).hexdigest(), 16) % 10
    return "valid" if bucket == 8 else "test" if bucket == 9 else "train"


def folder_splits(root, whole=False):
    """{split: [paths]} for a folder of music: its train/, valid/, test/ subfolders when it has any,
    else a hash split of every file; `whole` puts every file of an unsplit folder into 'test'."""
    root = Path(root)
    if any((root / s).is_dir() for s in SPLITS):
        return {s: list_audio_files(root / s) if (root / s).is_dir() else [] for s in SPLITS}
    files = list_audio_files(root)
    if whole:
        return {"train": [], "valid": [], "test": files}
    return {s: [f for f in files if hash_split(f.relative_to(root)) == s] for s in SPLITS}


def musdb_splits(root, layout):
    """{split: [(track name, path)]}: MUSDB18's official validation tracks come out of train/."""
    train = list_musdb_tracks(root, "train", layout)
    valid = [t for t in train if t[0] in VALIDATION_TRACKS]
    if not valid and len(train) >= 10:  # a subset without the official tracks: hold out every 10th
        valid = train[9::10]
    return {"train": [t for t in train if t not in valid], "valid": valid,
            "test": list_musdb_tracks(root, "test", layout)}


@dataclass
class Recording:
    """One mono recording's log-mel: a music file, or one stem of a MUSDB18 track."""
    name: str          # shown in plots and tables
    path: str          # the file (or HQ folder) to decode again for reference audio
    kind: str          # 'file', 'stems' or 'wav' (see decode_recordings)
    source: str        # 'mixture' for folder files, else the MUSDB18 stem
    log_mel: torch.Tensor  # (n_mels, frames) float16, natural-log mel magnitude
    windows: list      # first frames of the loud, evenly spaced scoring windows


def window_starts(num_samples, clip_samples, hop_length):
    """First frames of evenly spaced clip windows covering a recording; frame f starts at sample f * hop."""
    last = (num_samples - clip_samples) // hop_length
    count = max(1, math.ceil(num_samples / clip_samples))
    return sorted({round(i * last / (count - 1)) if count > 1 else 0 for i in range(count)})


def analyse_file(path, kind, transform):
    """Decode one file: ({source: (log-mel (n_mels, frames) float16, loud window starts)}, skip counts)."""
    out, skipped = {}, {"silent": 0, "too_short": 0}
    for source, wave in decode_recordings(path, kind, transform.sample_rate).items():
        if len(wave) < transform.clip_samples:
            skipped["too_short"] += 1
            continue
        wave = torch.from_numpy(wave)
        if wave.pow(2).mean().sqrt() < SILENCE_RMS:
            skipped["silent"] += 1
            continue
        starts = window_starts(len(wave), transform.clip_samples, transform.hop_length)
        clips = torch.stack([transform.cut(wave, f * transform.hop_length) for f in starts])
        loud = [f for f, rms in zip(starts, clips.pow(2).mean(dim=1).sqrt().tolist()) if rms >= SILENCE_RMS]
        out[source] = (transform(wave).cpu().half(), loud)
    return out, skipped


def file_cache_path(cache_dir, path, kind, transform):
    """Where one file's log-mels are cached: keyed by its path, size, mtime and the transform."""
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(path.iterdir())
    stamp = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = hashlib.sha1(json.dumps([CACHE_VERSION, kind, stamp, transform.config]).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{path.name[:40]}-{key}.pt"


def load_recordings(items, transform, cache_dir, desc):
    """[Recording] for (name, path, kind) items, decoding only files missing from the cache.

    Unreadable, silent and too-short recordings are skipped and counted in the returned stats, never fatal.
    """
    recordings, stats = [], {"files": len(items), "unreadable": [], "silent": 0, "too_short": 0, "decoded": 0}
    for name, path, kind in tqdm(items, desc=desc, unit="file", leave=False, disable=None):
        cache = file_cache_path(cache_dir, path, kind, transform)
        try:
            entry = torch.load(cache, map_location="cpu", weights_only=True)
        except Exception:  # missing or damaged: decode again
            try:
                analysed, skipped = analyse_file(path, kind, transform)
                entry = {"recordings": {s: {"log_mel": m, "windows": w} for s, (m, w) in analysed.items()},
                         "skipped": skipped, "error": None}
            except Exception as err:  # a damaged file must not end a long preparation
                entry = {"recordings": {}, "skipped": {"silent": 0, "too_short": 0},
                         "error": f"{type(err).__name__}: {err}"}
            atomic_torch_save(entry, cache)  # unreadable files too: the same bytes will not decode next time
            stats["decoded"] += 1
        if entry["error"]:
            warnings.warn(f"skipping unreadable file {path}: {entry['error']}")
            stats["unreadable"].append(str(path))
            continue
        for key in ("silent", "too_short"):
            stats[key] += entry["skipped"][key]
        for source, rec in entry["recordings"].items():
            shown = name if kind == "file" else f"{name} [{source}]"
            recordings.append(Recording(shown, str(path), kind, source, rec["log_mel"], rec["windows"]))
    return recordings, stats


class MelClips(torch.utils.data.Dataset):
    """The log-mels of a split's recordings, for training crops and fixed scoring windows.

    `log_mels` (n_mels, total_frames) float16 holds every recording end to end; `offsets[r]` is the
    first frame of recording r. Item i is scoring window i: a (n_mels, frames) float32 un-normalised
    log-mel, `frames` = 256 for 5-s clips.
    """

    def __init__(self, recordings, transform, stats=None, origin=""):
        self.recordings, self.transform, self.stats, self.origin = recordings, transform, stats or {}, origin
        self.frames = transform.frames
        n_mels = transform.n_mels
        self.log_mels = torch.cat([r.log_mel for r in recordings], dim=1) if recordings else torch.zeros(n_mels, 0).half()
        lengths = torch.tensor([r.log_mel.shape[1] for r in recordings], dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        # (recording, first frame) of every scoring window, in recording order
        self.windows = [(r, f) for r, rec in enumerate(recordings) for f in rec.windows]
        crops_per_recording = (lengths - self.frames + 1).clamp(min=0)
        self._crop_cumsum = crops_per_recording.cumsum(0)

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, i):
        r, f = self.windows[i]
        start = int(self.offsets[r]) + f
        return self.log_mels[:, start:start + self.frames].float()

    def clips(self, positions):
        """Scoring windows at `positions`: (len(positions), n_mels, frames) float32."""
        if not len(positions):
            return torch.zeros(0, self.transform.n_mels, self.frames)
        return torch.stack([self[i] for i in positions])

    def crop_starts(self, count, generator):
        """`count` random crop positions (first frames in `log_mels`), uniform over every possible crop."""
        total = int(self._crop_cumsum[-1])
        flat = torch.randint(total, (count,), generator=generator)
        r = torch.searchsorted(self._crop_cumsum, flat, right=True)
        before = torch.cat([torch.zeros(1, dtype=torch.long), self._crop_cumsum])[r]
        return self.offsets[r] + flat - before

    def crops(self, starts):
        """(len(starts), n_mels, frames) float32 crops of `log_mels` beginning at `starts`."""
        index = starts[:, None] + torch.arange(self.frames)
        return self.log_mels[:, index].permute(1, 0, 2).float()

    def describe(self, i):
        r, f = self.windows[i]
        return f"{self.recordings[r].name} @ {f * self.transform.hop_length / self.transform.sample_rate:.1f}s"

    def source(self, i):
        return self.recordings[self.windows[i][0]].source

    def waveforms(self, positions):
        """The original 16 kHz clips behind `positions`: (len(positions), clip_samples), each file decoded once."""
        decoded, out = {}, []
        for i in positions:
            r, f = self.windows[i]
            rec = self.recordings[r]
            if rec.path not in decoded:
                decoded[rec.path] = decode_recordings(rec.path, rec.kind, self.transform.sample_rate)
            wave = torch.from_numpy(decoded[rec.path][rec.source])
            out.append(self.transform.cut(wave, f * self.transform.hop_length))
        return torch.stack(out) if out else torch.zeros(0, self.transform.clip_samples)


def build_splits(args, transform, whole_folder=False):
    """{split: MelClips} for --audio_dir or --musdb_root; `whole_folder` scores an unsplit folder whole."""
    if args.audio_dir is not None:
        root = Path(args.audio_dir)
        files = folder_splits(root, whole=whole_folder)
        if not any(files.values()):
            raise SystemExit(f"error: no audio files ({', '.join(AUDIO_SUFFIXES)}) under {root}")
        items = {s: [(str(p.relative_to(root)), p, "file") for p in files[s]] for s in SPLITS}
        origin = f"{root}"
    else:
        layout = ensure_dataset(args.musdb_root, args.download)
        items = {s: [(name, path, layout) for name, path in tracks]
                 for s, tracks in musdb_splits(args.musdb_root, layout).items()}
        origin = f"MUSDB18 {args.musdb_root}"
    splits = {}
    for split in SPLITS:
        start = time.perf_counter()
        recordings, stats = load_recordings(items[split], transform, args.cache_dir, f"preparing {split}")
        recordings = [r for r in recordings if r.source in args.sources]
        stats["seconds"] = round(time.perf_counter() - start, 2)
        splits[split] = MelClips(recordings, transform, stats, origin=f"{origin} ({split})")
        if items[split]:
            print(f"{split}: {stats['files']} files -> {len(recordings)} recordings, {len(splits[split])} scoring clips "
                  f"({stats['decoded']} decoded in {stats['seconds']:.1f}s; skipped: {len(stats['unreadable'])} unreadable, "
                  f"{stats['silent']} silent, {stats['too_short']} shorter than 5 s)")
    return splits


# ============================================================================================
# Audio transforms
# ============================================================================================

class LogMelTransform:
    """Waveform -> natural-log mel magnitude, and back (least-squares mel inversion + Griffin-Lim).

    At the defaults a 5-s clip (80,000 samples at 16 kHz) gives (128, 256): n_fft 1024, hop 313,
    centred frames, magnitudes floored at 1e-5 (log -11.5) so digital silence has a finite value.
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


# ============================================================================================
# Model
# ============================================================================================

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
    reaches the output and training spends its first thousands of steps learning each bin's average.
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
    The per-bin mean and std of the training log-mels are buffers (as in open-unmix), so they travel
    with the weights: `normalize` and `denormalize` map between log-mel and network units.

    With `pca_path` a linear encoder and decoder run beside the deep ones and their outputs add: a conv
    over non-overlapping patches of `time_downsample` frames and its transpose. `init_pca` sets them to
    the principal components of the training patches and the deep paths start at zero, so training
    starts from the best linear code of that size (PCA) and learns what PCA cannot.
    """

    def __init__(self, n_mels=128, latent_dim=128, hidden=128, time_downsample=2, dropout=0.0, pca_path=True):
        super().__init__()
        self.config = {"n_mels": n_mels, "latent_dim": latent_dim, "hidden": hidden,
                       "time_downsample": time_downsample, "dropout": dropout, "pca_path": pca_path}
        self.register_buffer("mel_mean", torch.zeros(n_mels))
        self.register_buffer("mel_std", torch.ones(n_mels))
        strides = stage_strides(time_downsample)
        down = [nn.Sequential(nn.Conv1d(hidden, hidden, 4, stride=2, padding=1) if s == 2 else
                              nn.Conv1d(hidden, hidden, 3, padding=1), ResBlock1d(hidden, dilation=2)) for s in strides]
        up = [nn.Sequential(nn.ConvTranspose1d(hidden, hidden, 4, stride=2, padding=1) if s == 2 else
                            nn.Conv1d(hidden, hidden, 3, padding=1), ResBlock1d(hidden, dilation=2))
              for s in reversed(strides)]
        # No normalisation layer on the main path: it would strip each clip's level, which the output needs.
        self.encoder = nn.Sequential(nn.Conv1d(n_mels, hidden, 3, padding=1), *down, nn.Conv1d(hidden, latent_dim, 1))
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
        latent_dim principal directions become the encoder rows and decoder columns."""
        k, latent = self.config["time_downsample"], self.config["latent_dim"]
        x = self.normalize(log_mels.float())
        count = x.shape[1] // k
        patches = x[:, :count * k].reshape(x.shape[0], count, k).permute(1, 0, 2).reshape(count, -1).double()
        if count > max_patches:  # an evenly spaced subset is plenty for a 2048-d covariance at most
            patches = patches[torch.linspace(0, count - 1, max_patches).long()]
        mean = patches.mean(0)
        _, vectors = torch.linalg.eigh(torch.cov((patches - mean).T))  # ascending eigenvalues
        components = vectors.flip(1)[:, :latent].T  # (<= latent, n_mels * k), strongest first
        weight = torch.zeros(latent, patches.shape[1], dtype=torch.float64)
        weight[:len(components)] = components
        weight = weight.view(latent, x.shape[0], k)
        self.linear_encoder.weight.copy_(weight)
        self.linear_encoder.bias.copy_(-(weight.flatten(1) @ mean))
        self.linear_decoder.weight.copy_(weight)
        self.linear_decoder.bias.copy_(mean.view(x.shape[0], k).mean(1))

    @property
    def compression(self):
        """How many input numbers per latent number: n_mels * time_downsample / latent_dim."""
        c = self.config
        return c["n_mels"] * c["time_downsample"] / c["latent_dim"]

    def set_normalization(self, mean, std):
        self.mel_mean.copy_(mean)
        self.mel_std.copy_(std)

    def normalize(self, log_mel):
        return (log_mel - self.mel_mean[:, None]) / self.mel_std[:, None]

    def denormalize(self, x):
        return x * self.mel_std[:, None] + self.mel_mean[:, None]

    def encode(self, x):
        step = self.config["time_downsample"]
        if x.shape[-1] % step:
            raise ValueError(f"frames must be a multiple of {step}, got {x.shape[-1]}")
        z = self.encoder(x)
        return z if self.linear_encoder is None else z + self.linear_encoder(x)

    def decode(self, z):
        y = self.decoder(z)
        return y if self.linear_decoder is None else y + self.linear_decoder(z)

    def forward(self, x):
        return self.decode(self.dropout(self.encode(x)))


# ============================================================================================
# Training
# ============================================================================================

class CosineSchedule:
    """Learning rate: linear warm-up to `peak`, then a half cosine from an anchor to `floor` at `total_steps`.

    The anchor starts at (warmup_steps, peak). `extend` sets a new total for a resumed run: the cosine
    restarts its descent from the current rate, so a longer run never climbs back up.
    """

    def __init__(self, peak, total_steps, warmup_steps=0, floor_ratio=0.01):
        self.peak, self.floor, self.total_steps = peak, peak * floor_ratio, total_steps
        self.warmup_steps = min(warmup_steps, max(0, total_steps - 1))
        self.anchor_step, self.anchor_lr = self.warmup_steps, peak

    def __call__(self, step):
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.anchor_step) / max(1, self.total_steps - self.anchor_step))
        return self.floor + (self.anchor_lr - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def extend(self, total_steps, step):
        if total_steps != self.total_steps:
            if step >= self.warmup_steps:
                self.anchor_step, self.anchor_lr = step, self(step)
            self.total_steps = total_steps

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        vars(self).update(state)


def reconstruction_loss(reconstruction, target):
    """MSE + L1 between normalised log-mels."""
    return F.mse_loss(reconstruction, target) + F.l1_loss(reconstruction, target)


class AudioTrainer:
    """Training state: the model, AdamW, the learning-rate schedule, gradient clipping and the step count."""

    def __init__(self, model, device, schedule, weight_decay=1e-4, grad_clip=1.0):
        self.model = model.to(device)
        self.device = device
        self.grad_clip = grad_clip
        self.schedule = schedule
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=schedule(0), weight_decay=weight_decay)
        self.step = 0

    def train_step(self, log_mels):
        """One AdamW step on a (batch, n_mels, frames) batch of un-normalised log-mels; the loss, on device."""
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule(self.step)
        target = self.model.normalize(log_mels.to(self.device, non_blocking=True))
        loss = reconstruction_loss(self.model(target), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.step += 1
        return loss.detach()

    def state_dict(self):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "step": self.step}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step = state["step"]


@torch.no_grad()
def reconstruct(model, log_mels, batch_size=64):
    """Eval-mode reconstruction of (n, n_mels, frames) log-mels, in log-mel units, on the model's device."""
    model.eval()
    device = model.mel_mean.device
    parts = [model.denormalize(model(model.normalize(log_mels[i:i + batch_size].to(device))))
             for i in range(0, len(log_mels), batch_size)]
    return torch.cat(parts) if parts else log_mels.to(device).clone()


def steps_per_epoch(train_set, batch_size):
    """An epoch draws as many crops as the training recordings hold scoring windows."""
    return max(1, len(train_set) // batch_size)


def epoch_crops(train_set, steps, batch_size, seed, epoch):
    """(steps, batch_size) crop starts for one epoch, from a generator of its own: a resumed epoch
    draws exactly the crops of the uninterrupted one, whatever else used the global RNG."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return train_set.crop_starts(steps * batch_size, generator).view(steps, batch_size)


class StopRequest:
    """While active, the first Ctrl-C (SIGINT) only asks training to stop after the current step and
    save; a second one raises KeyboardInterrupt at once. Inactive outside the main thread."""

    def __init__(self):
        self.requested = False
        self._installed = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again quits without saving)",
              flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)


def check_finite(values, epoch, first_step):
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        raise FloatingPointError(f"loss became {values[bad]} at epoch {epoch}, step {first_step + bad + 1}")


def run_epoch(trainer, train_set, plan, progress, epoch, epochs, stop, check_every=10):
    """Train on the epoch's crop plan from `progress['steps_done']` on, updating `progress` in place
    (steps done, loss sum, seconds) so an interruption can be resumed at the exact step."""
    pending = []
    start = time.perf_counter()
    first = progress["steps_done"]
    bar = tqdm(range(first, len(plan)), desc=f"epoch {epoch}/{epochs}", unit="step", leave=False,
               dynamic_ncols=True, disable=None)
    for step in bar:
        pending.append(trainer.train_step(train_set.crops(plan[step])))
        if len(pending) == check_every or step == len(plan) - 1 or stop.requested:
            values = torch.stack(pending).tolist()  # one host sync per `check_every` steps
            check_finite(values, epoch, step + 1 - len(values))
            progress["loss_sum"] += sum(values)
            progress["steps_done"] = step + 1
            progress["seconds"] += time.perf_counter() - start
            start, pending = time.perf_counter(), []
            bar.set_postfix(loss=f"{progress['loss_sum'] / (progress['steps_done'] - first or 1):.4f}")
        if stop.requested:
            return False
    return True


# ============================================================================================
# Evaluation
# ============================================================================================

@torch.no_grad()
def mel_metrics(reconstruction, target, model):
    """Spectrogram scores of (n, n_mels, frames) log-mel reconstructions against their targets.

    mse, mae, cosine: on the normalised log-mel (the units of the loss; cosine per clip, averaged);
    mel_sc_score: 1 - spectral convergence of the mel magnitudes, 1 - ||M_hat - M||_F / ||M||_F,
    clipped to [0, 1] (what the design calls the "PESQ proxy": a spectrogram score, not PESQ);
    time_average_mse: the MSE of predicting each bin's mean over its clip, a floor any model must beat;
    baseline_ratio: time_average_mse / mse (how many times better than that floor).
    """
    if len(target) == 0:
        return {}
    target = target.float().to(reconstruction.device)
    x_hat, x = model.normalize(reconstruction.float()), model.normalize(target)
    diff = x_hat - x
    magnitude, magnitude_hat = target.exp(), reconstruction.float().exp()
    convergence = (magnitude_hat - magnitude).flatten(1).norm(dim=1) / magnitude.flatten(1).norm(dim=1)
    mse = diff.pow(2).mean().item()
    baseline = (x - x.mean(dim=-1, keepdim=True)).pow(2).mean().item()
    return {"clips": len(target), "mse": mse, "mae": diff.abs().mean().item(),
            "cosine": F.cosine_similarity(x_hat.flatten(1), x.flatten(1), dim=1).mean().item(),
            "mel_sc_score": (1 - convergence).clamp(0, 1).mean().item(),
            "time_average_mse": baseline, "baseline_ratio": baseline / max(mse, 1e-12)}


def require_speech_metrics():
    """PESQ and STOI come from the pesq and pystoi packages; without them scoring is an error, not a gap."""
    try:
        import pesq  # noqa: F401
        import pystoi  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"error: PESQ/STOI need the pesq and pystoi packages ({err}); "
                         f"pip install -r requirements.txt, or pass --audio_eval_clips 0")


def paired_speech_scores(reference, estimate, oracle, sample_rate):
    """Wide-band PESQ and STOI of the autoencoder's audio and of the Griffin-Lim oracle on the same clips.

    reference, estimate, oracle: (n, samples). A clip where either PESQ is undefined (PESQ refuses
    clips without an utterance-like signal) is left out of both means and counted in `pesq_undefined`.
    """
    from pesq import pesq as pesq_fn
    from pesq import PesqError
    from pystoi import stoi as stoi_fn

    rows = []
    for ref, est, ora in zip(reference.cpu().double().numpy(), estimate.cpu().double().numpy(),
                             oracle.cpu().double().numpy()):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # pystoi warns on (near-)silent clips
            try:
                pesq_pair = (pesq_fn(sample_rate, ref, est, "wb"), pesq_fn(sample_rate, ref, ora, "wb"))
            except PesqError:
                pesq_pair = None
            stoi_pair = (stoi_fn(ref, est, sample_rate), stoi_fn(ref, ora, sample_rate))
        rows.append((pesq_pair, stoi_pair if all(map(math.isfinite, stoi_pair)) else None))
    pesq_rows = [p for p, _ in rows if p is not None]
    stoi_rows = [s for _, s in rows if s is not None]
    mean = lambda values: float(np.mean(values)) if values else None  # noqa: E731
    return {"clips": len(rows), "pesq_undefined": len(rows) - len(pesq_rows),
            "pesq": mean([p[0] for p in pesq_rows]), "oracle_pesq": mean([p[1] for p in pesq_rows]),
            "stoi": mean([s[0] for s in stoi_rows]), "oracle_stoi": mean([s[1] for s in stoi_rows])}


def spread_positions(n, k):
    """min(n, k) distinct positions spread evenly over range(n), first and last included."""
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})


class AudioEvaluator:
    """PESQ/STOI after Griffin-Lim for fixed clips of one split, beside the Griffin-Lim oracle (the
    true mel through the same inversion), which is computed once."""

    def __init__(self, dataset, positions, transform, seed=0):
        self.transform, self.seed = transform, seed
        self.reference = dataset.waveforms(positions)
        # The clip's own mel, not the slice of the whole recording's mel: identical but for the edge frames.
        self.log_mels = transform(self.reference).cpu()
        self.oracle_audio = self.invert(self.log_mels)

    def invert(self, log_mels):
        # Griffin-Lim starts from random phase: the same start each time keeps scores comparable, and
        # forking leaves the training RNG untouched, so a resumed run matches an uninterrupted one.
        device = self.transform.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            return self.transform.invert(log_mels).cpu()

    def __call__(self, model):
        """(paired scores, (n, samples) autoencoder audio, (n, n_mels, frames) reconstructed log-mels)."""
        reconstruction = reconstruct(model, self.log_mels)
        audio = self.invert(reconstruction)
        scores = paired_speech_scores(self.reference, audio, self.oracle_audio, self.transform.sample_rate)
        return scores, audio, reconstruction.cpu()


def score_split(model, dataset, limit=None):
    """Mel metrics on (up to `limit`, spread over all recordings) scoring windows of a split."""
    positions = spread_positions(len(dataset), limit or len(dataset))
    target = dataset.clips(positions)
    return mel_metrics(reconstruct(model, target), target, model)


def score_by_source(model, dataset, transform, audio_clips, seed):
    """{source: mel metrics (+ PESQ/STOI on `audio_clips` clips)} for each MUSDB18 stem in `dataset`."""
    table = {}
    for source in dict.fromkeys(dataset.source(i) for i in range(len(dataset))):
        positions = [i for i in range(len(dataset)) if dataset.source(i) == source]
        target = dataset.clips(positions)
        table[source] = mel_metrics(reconstruct(model, target), target, model)
        if audio_clips:
            chosen = [positions[i] for i in spread_positions(len(positions), audio_clips)]
            table[source]["audio"] = AudioEvaluator(dataset, chosen, transform, seed)(model)[0]
    return table


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
        with warnings.catch_warnings():  # garbage that starts like a pickle warns first; one error line is enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SystemExit(f"error: cannot read checkpoint {path}: it is truncated or not a PyTorch file "
                         f"({type(err).__name__})")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"error: {path} is not an ImageAudioGen checkpoint of type {CHECKPOINT_FORMAT!r}")
    if state.get("version") != CHECKPOINT_VERSION:
        raise SystemExit(f"error: {path} has checkpoint version {state.get('version')}, expected "
                         f"{CHECKPOINT_VERSION}: it was made by an older audio_gen.py; train a new one")
    return state


def rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_checkpoint(run, args):
    """Everything to rebuild the model (config, weights with normalisation) and to resume exactly:
    `epoch` is the last finished epoch; `partial_epoch` the next one's steps done, or None between epochs."""
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model_config": dict(run.trainer.model.config), "transform_config": run.transform.config,
        **run.trainer.state_dict(), "epoch": run.epoch, "partial_epoch": run.progress,
        "interrupted": run.progress is not None, "rng": rng_state(), "history": run.history,
        "data": {"audio_dir": str(args.audio_dir.resolve()) if args.audio_dir else None,
                 "musdb_root": str(args.musdb_root) if args.musdb_root else None, "sources": args.sources},
        "args": {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in vars(args).items()},
    }


def model_from_checkpoint(state, device):
    model = AudioAutoencoder(**{"pca_path": False, **state["model_config"]})  # older checkpoints had none
    model.load_state_dict(state["model"])
    return model.to(device).eval()


# ============================================================================================
# Plotting and audio output
# ============================================================================================

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_training_curves(history, path, valid_name):
    """Loss, log-mel MSE against the time-average baseline, similarity scores and PESQ/STOI (with the
    Griffin-Lim oracle), for training clips and unseen clips, against minutes of training."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=110)
    minutes = np.cumsum([h["train_seconds"] for h in history]) / 60

    def line(ax, split, key, label, **kw):
        points = [(m, h[split][key]) for m, h in zip(minutes, history)
                  if h.get(split, {}).get(key) is not None]
        if points:
            dots = {"marker": "o", "markersize": 3} if len(points) <= 60 else {}  # dots would hide long curves
            ax.plot(*zip(*points), label=label, **{**dots, **kw})

    seen, unseen = "training clips", f"unseen ({valid_name})"
    ax = axes[0, 0]
    line(ax, "train", "loss_during_epoch", "loss during epoch (MSE + L1, random crops)", color="black")
    line(ax, "valid", "loss", f"{unseen} loss", color="tab:red")
    ax.set(title="Loss", yscale="log")
    ax = axes[0, 1]
    for split, style, name in (("train", "-", seen), ("valid", "--", unseen)):
        line(ax, split, "mse", f"{name} MSE", linestyle=style, color="tab:blue")
        line(ax, split, "time_average_mse", f"{name} time-average baseline", linestyle=style, color="grey")
    ax.set(title="Log-mel MSE (normalised units)", yscale="log")
    ax = axes[1, 0]
    for split, style, name in (("train", "-", seen), ("valid", "--", unseen)):
        line(ax, split, "cosine", f"{name} cosine", linestyle=style, color="tab:green")
        line(ax, split, "mel_sc_score", f"{name} 1 - mel spectral convergence", linestyle=style, color="tab:purple")
    ax.set(title="Similarity (higher is better)", ylim=(0, 1.02))
    ax = axes[1, 1]
    for split, style, name in (("audio_train", "-", seen), ("audio_valid", "--", unseen)):
        line(ax, split, "pesq", f"PESQ {name}", linestyle=style, color="tab:red")
        line(ax, split, "oracle_pesq", f"PESQ Griffin-Lim oracle, {name}", linestyle=style, color="tab:red", alpha=0.4)
    ax2 = ax.twinx()
    for split, style, name in (("audio_train", "-", seen), ("audio_valid", "--", unseen)):
        line(ax2, split, "stoi", f"STOI {name}", linestyle=style, color="tab:blue")
        line(ax2, split, "oracle_stoi", f"STOI Griffin-Lim oracle, {name}", linestyle=style, color="tab:blue", alpha=0.4)
    ax.set(title="Audio after Griffin-Lim (faint: oracle)", ylabel="PESQ (wide-band, 1-4.6)")
    ax2.set_ylabel("STOI (0-1)")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    if handles:
        ax.legend(handles, [h.get_label() for h in handles], fontsize=6, loc="lower right")
    for ax in axes.flat:
        ax.set_xlabel("training time (min)")
        ax.grid(True, alpha=0.3)
        if ax is not axes[1, 1] and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("Audio autoencoder training")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_spectrograms(originals, reconstructions, titles, path, suptitle, oracles=None,
                      names=("original", "reconstruction")):
    """One row per clip: original, reconstruction and their difference, as log-mel images on shared
    scales; with `oracles` (log-mels of the Griffin-Lim oracle) the third column is the oracle instead.
    `names` label the first two columns."""
    plt = _pyplot()
    rows = len(originals)
    fig, axes = plt.subplots(rows, 3, figsize=(14, 3.2 * rows), dpi=100, squeeze=False)
    for r, (a, b, title) in enumerate(zip(originals, reconstructions, titles)):
        a, b = a.cpu().numpy(), b.cpu().numpy()
        low, high = float(a.min()), float(a.max())
        shared = {"vmin": low, "vmax": high, "cmap": "magma"}
        third = ((b - a, f"{names[1]} - {names[0]}", {"vmin": -3, "vmax": 3, "cmap": "coolwarm"}) if oracles is None
                 else (oracles[r].cpu().numpy(), "Griffin-Lim oracle (true mel inverted)", shared))
        for c, (image, name, kwargs) in enumerate(((a, names[0], shared), (b, names[1], shared), third)):
            ax = axes[r, c]
            shown = ax.imshow(image, origin="lower", aspect="auto", extent=(0, 5, 0, image.shape[0]), **kwargs)
            ax.set(title=f"{title}\n{name}" if c == 0 else name, xlabel="time (s)", ylabel="mel bin")
            fig.colorbar(shown, ax=ax, label="difference" if c == 2 and oracles is None else "log magnitude")
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def versus_baseline(mel):
    ratio = mel["baseline_ratio"]
    return f"{ratio:.1f}x lower" if ratio >= 1 else f"{1 / ratio:.1f}x higher"


def format_scores(name, mel, audio=None):
    """One line: where the clips come from, mel scores against the baseline, PESQ/STOI against the oracle."""
    if not mel:
        return f"{name}: no clips"
    line = (f"{name} ({mel['clips']} clips): mse {mel['mse']:.4f} (time-average baseline {mel['time_average_mse']:.3f}: "
            f"{versus_baseline(mel)})  cosine {mel['cosine']:.3f}  1-SC {mel['mel_sc_score']:.3f}")
    if audio and audio.get("pesq") is not None:
        line += (f"\n    after Griffin-Lim ({audio['clips'] - audio['pesq_undefined']} of {audio['clips']} clips): "
                 f"PESQ {audio['pesq']:.2f} (oracle {audio['oracle_pesq']:.2f})  "
                 f"STOI {audio['stoi']:.3f} (oracle {audio['oracle_stoi']:.3f})")
    return line


# ============================================================================================
# Train / infer / benchmark
# ============================================================================================

def new_model(args, train_set):
    """A fresh autoencoder whose normalisation holds the training log-mels' per-bin statistics and whose
    linear path starts as their PCA."""
    model = AudioAutoencoder(n_mels=args.n_mels, latent_dim=args.latent_dim, hidden=args.hidden,
                             time_downsample=args.time_downsample, dropout=args.dropout)
    model.set_normalization(*compute_normalization(train_set.log_mels))
    model.init_pca(train_set.log_mels)
    return model


def epoch_record(epoch, progress, trainer, splits, evaluators, milestone, eval_limit=512):
    """Metrics after one epoch: training-clip and unseen-clip mel scores; PESQ/STOI at milestones."""
    start = time.perf_counter()
    steps = progress["steps_done"]
    record = {"epoch": epoch, "step": trainer.step, "train_seconds": progress["seconds"],
              "clips_per_s": steps * progress["batch_size"] / max(progress["seconds"], 1e-9),
              "train": {"loss_during_epoch": progress["loss_sum"] / steps,
                        **score_split(trainer.model, splits["train"], eval_limit)},
              "valid": score_split(trainer.model, splits["valid"], eval_limit)}
    if record["valid"]:  # the loss is MSE + L1 in the same normalised units
        record["valid"]["loss"] = record["valid"]["mse"] + record["valid"]["mae"]
    if milestone:
        for split, evaluator in evaluators.items():
            record[f"audio_{split}"] = evaluator(trainer.model)[0]
    record["eval_seconds"] = time.perf_counter() - start
    return record


def epoch_line(record, epochs):
    t, v = record["train"], record.get("valid", {})
    line = f"epoch {record['epoch']:3d}/{epochs}  loss {t['loss_during_epoch']:.4f}  train mse {t['mse']:.4f}"
    if v:
        line += f"  unseen mse {v['mse']:.4f} ({versus_baseline(v)} than baseline) cos {v['cosine']:.3f}"
    for split, name in (("audio_valid", "unseen"), ("audio_train", "train")):
        a = record.get(split, {})
        if a.get("pesq") is not None:
            line += f"  {name} PESQ {a['pesq']:.2f}/{a['oracle_pesq']:.2f} STOI {a['stoi']:.2f}/{a['oracle_stoi']:.2f}"
    return line + f"  {record['clips_per_s']:.0f} clips/s"


@dataclass
class Run:
    """A training run's state between steps: what `--resume` restores and a checkpoint holds."""
    transform: LogMelTransform
    splits: dict
    trainer: AudioTrainer
    steps: int                  # steps per epoch
    history: list               # one record per finished epoch
    epoch: int = 0              # epochs finished
    progress: dict = None       # steps done in the next epoch, while it is unfinished


def start_run(args):
    """A new run, or the one in --checkpoint with --resume (its schedule stretched to --epochs)."""
    state = load_checkpoint(args.checkpoint) if args.resume else None
    transform = (LogMelTransform.from_config(state["transform_config"], args.griffin_lim_iters, args.device) if state
                 else LogMelTransform(n_mels=args.n_mels, griffin_lim_iters=args.griffin_lim_iters, device=args.device))
    splits = build_splits(args, transform)
    if len(splits["train"]) == 0:
        raise SystemExit(f"error: no usable training recordings (5 s or longer, not silent) in {splits['train'].origin}")
    torch.manual_seed(args.seed)
    model = model_from_checkpoint(state, args.device) if state else new_model(args, splits["train"])
    steps = steps_per_epoch(splits["train"], args.batch_size)
    trainer = AudioTrainer(model, args.device, CosineSchedule(args.learning_rate, args.epochs * steps, args.warmup_steps))
    run = Run(transform, splits, trainer, steps, history=[])
    if state:
        trainer.load_state_dict(state)
        trainer.schedule.extend(args.epochs * steps, trainer.step)  # a longer run keeps decaying from here
        set_rng_state(state["rng"])
        run.history, run.epoch, run.progress = state["history"], state["epoch"], state["partial_epoch"]
        where = f"epoch {run.epoch + 1}, step {run.progress['steps_done']}" if run.progress else f"the end of epoch {run.epoch}"
        print(f"Resuming {args.checkpoint} at {where}")
    elif args.checkpoint.exists():
        print(f"note: starting a new run; {args.checkpoint} will be overwritten (use --resume to continue it)")
    return run


def make_evaluators(run, args):
    """PESQ/STOI evaluators for unseen validation clips and for training clips (the gap shows)."""
    if not args.audio_eval_clips:
        return {}
    require_speech_metrics()
    return {split: AudioEvaluator(run.splits[split], spread_positions(len(run.splits[split]), args.audio_eval_clips),
                                  run.transform, args.seed)
            for split in ("valid", "train") if len(run.splits[split])}


def train_epochs(run, args, evaluators, stop, valid_name):
    """Epochs until --epochs or a stop request: train, score, log, checkpoint, plot at milestones."""
    train_set = run.splits["train"]
    while run.epoch < args.epochs:
        number = run.epoch + 1
        run.progress = run.progress or {"epoch": number, "steps_done": 0, "loss_sum": 0.0, "seconds": 0.0,
                                        "batch_size": args.batch_size}
        plan = epoch_crops(train_set, run.steps, args.batch_size, args.seed, number)
        if run.progress["steps_done"] < run.steps and not run_epoch(run.trainer, train_set, plan, run.progress,
                                                                     number, args.epochs, stop):
            return
        milestone = number in (1, args.epochs) or number % args.eval_every == 0
        record = epoch_record(number, run.progress, run.trainer, run.splits, evaluators, milestone)
        run.epoch, run.progress = number, None
        run.history.append(record)
        print(epoch_line(record, args.epochs), flush=True)
        atomic_torch_save(make_checkpoint(run, args), args.checkpoint)
        if milestone:
            plot_training_curves(run.history, args.results_dir / "training_curves.png", valid_name)
        if stop.requested:
            return


def train(args):
    torch.set_flush_denormal(True)  # denormal floats appear mid-training and make CPU steps up to 8x slower
    run = start_run(args)
    if run.epoch >= args.epochs:
        print(f"Nothing to do: the checkpoint already has {run.epoch} epochs (--epochs {args.epochs}).")
        return run.history
    args.results_dir.mkdir(parents=True, exist_ok=True)
    splits, model = run.splits, run.trainer.model
    valid_name = "validation files" if len(splits["valid"]) else "none: no validation files"
    evaluators = make_evaluators(run, args)
    print(f"Training on {len(splits['train'].recordings)} recordings ({len(splits['train'])} clip windows), "
          f"{len(splits['valid'])} unseen validation clips; {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
          f"parameters, {model.compression:g}x compression, device {args.device}, {run.steps} steps/epoch")
    with StopRequest() as stop:
        try:
            train_epochs(run, args, evaluators, stop, valid_name)
        except KeyboardInterrupt:
            raise SystemExit(f"\nInterrupted at once: {args.checkpoint} holds the state after epoch {run.epoch}.")
        except FloatingPointError as err:
            raise SystemExit(f"error: {err}. The last good checkpoint is {args.checkpoint}.")
    if stop.requested:
        atomic_torch_save(make_checkpoint(run, args), args.checkpoint)
        if run.history:
            plot_training_curves(run.history, args.results_dir / "training_curves.png", valid_name)
        p = run.progress
        where = f"epoch {p['epoch']}, step {p['steps_done']} of {run.steps}" if p else f"epoch {run.epoch}"
        raise SystemExit(f"Stopped after {where}: checkpoint saved to {args.checkpoint}; continue with --resume.")
    write_final_outputs(run, args)
    return run.history


def write_final_outputs(run, args):
    """The spectrogram plot of unseen validation clips, and the final scores in metrics.json."""
    splits, model = run.splits, run.trainer.model
    held_out = splits["valid"] if len(splits["valid"]) else splits["train"]
    shown = spread_positions(len(held_out), 3)
    plot_spectrograms(held_out.clips(shown), reconstruct(model, held_out.clips(shown)).cpu(),
                      [held_out.describe(i) for i in shown], args.results_dir / "spectrogram_comparison.png",
                      f"{'Unseen validation' if len(splits['valid']) else 'Training (no validation files)'} "
                      f"clips after epoch {run.epoch}")
    metrics = read_json(args.results_dir / "metrics.json")
    metrics["train"] = {"data": {s: {"origin": d.origin, "recordings": len(d.recordings), "clips": len(d), **d.stats}
                                 for s, d in splits.items()},
                        "compression": model.compression, "epochs": run.history}
    metrics["final_test"] = evaluate(model, run.transform, splits, args)
    write_json_atomic(metrics, args.results_dir / "metrics.json")


def evaluate(model, transform, splits, args):
    """Scores on the test split (unseen) and on training clips, so the generalisation gap shows;
    a table per source for MUSDB18."""
    result = {}
    for split, label in (("test", "unseen test files"), ("train", "training files")):
        dataset = splits[split]
        if not len(dataset):
            continue
        entry = {"scored_on": f"{label}: {dataset.origin}", **score_split(model, dataset)}
        if args.audio_eval_clips:
            require_speech_metrics()
            positions = spread_positions(len(dataset), args.audio_eval_clips)
            entry["audio"] = AudioEvaluator(dataset, positions, transform, args.seed)(model)[0]
        if args.audio_dir is None:
            entry["by_source"] = score_by_source(model, dataset, transform, args.audio_eval_clips, args.seed)
        result[split] = entry
        print(format_scores(f"{label}", entry, entry.get("audio")))
        for source, row in entry.get("by_source", {}).items():
            print("  " + format_scores(source, row, row.get("audio")).replace("\n", "\n  "))
    return result


def infer_splits(args, state, transform):
    """What infer scores: a folder the model trained on gives its test split; any other unsplit folder is
    scored whole; MUSDB18 gives its test subset. Training clips are scored too when they are at hand."""
    trained_on = state["data"]["audio_dir"]
    same_folder = args.audio_dir is not None and trained_on == str(Path(args.audio_dir).resolve())
    return build_splits(args, transform, whole_folder=args.audio_dir is not None and not same_folder)


def infer(args):
    state = load_checkpoint(args.checkpoint)
    transform = LogMelTransform.from_config(state["transform_config"], args.griffin_lim_iters, args.device)
    model = model_from_checkpoint(state, args.device)
    splits = infer_splits(args, state, transform)
    test_set = splits["test"]
    if len(test_set) == 0:
        raise SystemExit(f"error: no usable test clips in {test_set.origin} (5 s or longer, not silent)")
    result = evaluate(model, transform, splits, args)

    examples = spread_positions(len(test_set), args.num_examples)
    evaluator = AudioEvaluator(test_set, examples, transform, args.seed)
    scores, audio, reconstructed = evaluator(model)
    results = args.results_dir
    results.mkdir(parents=True, exist_ok=True)
    for old in results.glob("audio_*_[0-9]*.wav"):
        old.unlink()  # a run with fewer examples must not leave stale files behind
    rate = transform.sample_rate
    for n in range(len(examples)):
        write_wav(results / f"audio_original_{n}.wav", evaluator.reference[n], rate)
        write_wav(results / f"audio_reconstructed_{n}.wav", audio[n], rate)
        write_wav(results / f"audio_griffinlim_oracle_{n}.wav", evaluator.oracle_audio[n], rate)
    plot_spectrograms(evaluator.log_mels, reconstructed, [test_set.describe(i) for i in examples],
                      results / "inference_comparison.png",
                      f"Unseen clips ({test_set.origin}) reconstructed by {args.checkpoint.name}")
    result["examples"] = {**scores, "names": [test_set.describe(i) for i in examples]}
    metrics = read_json(results / "metrics.json")
    metrics["infer"] = {"checkpoint": str(args.checkpoint), "epoch": state["epoch"],
                        "compression": model.compression, **result}
    write_json_atomic(metrics, results / "metrics.json")
    print(f"Wrote {len(examples)} WAV triples (original, reconstructed, Griffin-Lim oracle) and "
          f"inference_comparison.png to {results}")
    return metrics["infer"]


def benchmark(args):
    """Data preparation (empty cache, then cached), training clips/s, Griffin-Lim clips/s and the
    oracle's PESQ/STOI against Griffin-Lim iterations."""
    import tempfile

    torch.set_flush_denormal(True)
    transform = LogMelTransform(n_mels=args.n_mels)
    splits = None
    if args.audio_dir is not None or detect_layout(args.musdb_root):
        with tempfile.TemporaryDirectory() as cache:
            timing_args = argparse.Namespace(**{**vars(args), "cache_dir": Path(cache)})
            start = time.perf_counter()
            build_splits(timing_args, transform)
            print(f"[cpu] data preparation, empty cache: {time.perf_counter() - start:.1f}s")
            start = time.perf_counter()
            splits = build_splits(timing_args, transform)
            print(f"[cpu] data preparation, cached: {time.perf_counter() - start:.2f}s")
    else:
        print(f"(no data in {args.musdb_root}: preparation and the Griffin-Lim table are not measured)")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        cuda = device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        torch.manual_seed(0)
        model = AudioAutoencoder(args.n_mels, args.latent_dim, args.hidden, args.time_downsample, args.dropout)
        trainer = AudioTrainer(model, device, CosineSchedule(args.learning_rate, 100))
        batch = torch.randn(args.batch_size, args.n_mels, transform.frames, device=device)
        trainer.train_step(batch)
        sync()
        repeats = 20 if cuda else 5
        start = time.perf_counter()
        for _ in range(repeats):
            trainer.train_step(batch)
        sync()
        print(f"[{device}] training, batch {args.batch_size}, {model.compression:g}x compression: "
              f"{repeats * args.batch_size / (time.perf_counter() - start):.0f} clips/s")
        inverse = LogMelTransform(n_mels=args.n_mels, griffin_lim_iters=args.griffin_lim_iters, device=device)
        n = 64 if cuda else 8
        inverse.invert(torch.randn(n, args.n_mels, transform.frames, device=device))
        sync()
        start = time.perf_counter()
        inverse.invert(torch.randn(n, args.n_mels, transform.frames, device=device))
        sync()
        print(f"[{device}] Griffin-Lim ({args.griffin_lim_iters} iterations, batch {n}): "
              f"{n / (time.perf_counter() - start):.1f} clips/s")
    if splits is not None and args.audio_eval_clips:
        griffin_lim_table(splits, args)


def griffin_lim_table(splits, args, iterations=(32, 64, 128, 256)):
    """Oracle PESQ/STOI (true mel through Griffin-Lim) and time per clip against the iteration count."""
    require_speech_metrics()
    held_out = splits["test"] if len(splits["test"]) else splits["valid"] if len(splits["valid"]) else splits["train"]
    positions = spread_positions(len(held_out), args.audio_eval_clips)
    reference = held_out.waveforms(positions)
    print(f"Griffin-Lim oracle on {len(positions)} clips of {held_out.origin}:")
    for n_iter in iterations:
        transform = LogMelTransform(n_mels=args.n_mels, griffin_lim_iters=n_iter)
        log_mels = transform(reference)
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        audio = transform.invert(log_mels)
        seconds = (time.perf_counter() - start) / len(positions)
        scores = paired_speech_scores(reference, audio, audio, transform.sample_rate)
        pesq = "n/a" if scores["pesq"] is None else f"{scores['pesq']:.2f}"
        print(f"  {n_iter:4d} iterations: PESQ {pesq}  STOI {scores['stoi']:.3f}  {seconds * 1000:.0f} ms/clip (cpu)")


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
