"""The clips the model learns from and is scored on.

Files are decoded to mono 16 kHz, turned into one log-mel sequence per recording (a music file, or one
stem of a MUSDB18 track) and cached per file. Training crops random windows of a clip's length from those
sequences; scoring uses fixed, evenly spaced, non-silent windows.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio_io import SILENCE_RMS, decode_recordings
from .clips import MelClips
from .common import atomic_torch_save, progress_bar
from .musdb import ensure_dataset, musdb_splits

CACHE_VERSION = 4  # 4: files with non-finite samples are unreadable (3 cached their NaN log-mels)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class DataConfig:
    """Where the music comes from: a folder (`audio_dir`) or MUSDB18 (`musdb_root`, fetched as `download`
    says when empty), which MUSDB18 stems to keep, and where decoded log-mels are cached."""
    audio_dir: Path | None
    musdb_root: Path | None
    download: str    # 'preview', 'full' or 'none'
    sources: tuple   # MUSDB18 stems to keep; a folder's files are all 'mixture'
    cache_dir: Path


# --- folders of music ------------------------------------------------------------------------

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


# --- recordings and their cache --------------------------------------------------------------

@dataclass
class Recording:
    """One mono recording's log-mel: a music file, or one stem of a MUSDB18 track."""
    name: str          # shown in plots and tables
    path: str          # the file (or HQ folder) to decode again for reference audio
    kind: str          # 'file', 'stems' or 'wav' (see audio_io.decode_recordings)
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
        if not np.isfinite(wave).all():  # one NaN would turn the first batch's loss into NaN
            raise ValueError(f"the {source} holds samples that are not finite numbers (NaN or infinity)")
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


def cached_analysis(path, kind, transform, cache_dir):
    """(cache entry of one file, whether it was decoded now): its recordings, skip counts and any error."""
    cache = file_cache_path(cache_dir, path, kind, transform)
    try:
        return torch.load(cache, map_location="cpu", weights_only=True), False
    except Exception:  # missing or damaged: decode again
        pass
    try:
        analysed, skipped = analyse_file(path, kind, transform)
        entry = {"recordings": {s: {"log_mel": m, "windows": w} for s, (m, w) in analysed.items()},
                 "skipped": skipped, "error": None}
    except Exception as err:  # a damaged file must not end a long preparation
        entry = {"recordings": {}, "skipped": {"silent": 0, "too_short": 0}, "error": f"{type(err).__name__}: {err}"}
    atomic_torch_save(entry, cache)  # unreadable files too: the same bytes will not decode next time
    return entry, True


def load_recordings(items, transform, cache_dir, desc):
    """[Recording] for (name, path, kind) items, decoding only files missing from the cache.

    Unreadable, silent and too-short recordings are skipped and counted in the returned stats, never fatal.
    """
    recordings, stats = [], {"files": len(items), "unreadable": [], "silent": 0, "too_short": 0, "decoded": 0}
    for name, path, kind in progress_bar(items, desc, unit="files"):
        entry, decoded = cached_analysis(path, kind, transform, cache_dir)
        stats["decoded"] += decoded
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


# --- splits ----------------------------------------------------------------------------------

def split_items(data, whole_folder):
    """({split: [(name, path, kind)]}, where they come from) for a DataConfig."""
    if data.audio_dir is not None:
        root = Path(data.audio_dir)
        files = folder_splits(root, whole=whole_folder)
        if not any(files.values()):
            raise SystemExit(f"error: no audio files ({', '.join(AUDIO_SUFFIXES)}) under {root}")
        return {s: [(str(p.relative_to(root)), p, "file") for p in files[s]] for s in SPLITS}, f"{root}"
    layout = ensure_dataset(data.musdb_root, data.download)
    items = {s: [(name, path, layout) for name, path in tracks] for s, tracks in musdb_splits(data.musdb_root, layout).items()}
    return items, f"MUSDB18 {data.musdb_root}"


def build_splits(data, transform, whole_folder=False):
    """{split: MelClips} for a DataConfig; `whole_folder` scores an unsplit folder whole."""
    items, origin = split_items(data, whole_folder)
    print(f"Preparing data from {origin} (decoding files missing from the cache {data.cache_dir}) ...", flush=True)
    splits = {}
    for split in SPLITS:
        start = time.perf_counter()
        recordings, stats = load_recordings(items[split], transform, data.cache_dir, f"preparing {split}")
        recordings = [r for r in recordings if r.source in data.sources]
        stats["seconds"] = round(time.perf_counter() - start, 2)
        splits[split] = MelClips(recordings, transform, stats, origin=f"{origin} ({split})")
        if items[split]:
            print(f"{split}: {stats['files']} files -> {len(recordings)} recordings, {len(splits[split])} scoring clips "
                  f"({stats['decoded']} decoded in {stats['seconds']:.1f}s; skipped: {len(stats['unreadable'])} unreadable, "
                  f"{stats['silent']} silent, {stats['too_short']} shorter than 5 s)")
    return splits


def training_splits(record, transform, cache_dir):
    """The splits of the data a checkpoint's run trained on, from its "data" `record` (read through the log-mel
    cache), or None when that data is not on this machine any more."""
    if record.get("audio_dir") and Path(record["audio_dir"]).is_dir():
        data = DataConfig(Path(record["audio_dir"]), None, "none", ("mixture",), cache_dir)
    elif record.get("musdb_root") and Path(record["musdb_root"]).is_dir():
        data = DataConfig(None, Path(record["musdb_root"]), "none", tuple(record["sources"]), cache_dir)
    else:
        return None
    return build_splits(data, transform)
