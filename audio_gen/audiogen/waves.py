"""Waveforms for the vocoder: each split's recordings decoded once to 16-bit mono at the transform's rate,
cached per file beside the log-mels, and served as random training segments or fixed scoring windows."""
from __future__ import annotations

import time
import warnings

import torch

from .audio_io import decode_recordings
from .clips import uniform_crop_starts
from .common import atomic_torch_save, progress_bar
from .data import SPLITS, file_cache_path, split_items

PCM_SCALE = 32767.0


def cached_waves(path, kind, transform, cache_dir):
    """{source: (samples,) int16 tensor} of one file, decoded once and cached; {} when it cannot be decoded."""
    cache = file_cache_path(cache_dir, path, f"{kind}:pcm16", transform).with_suffix(".pcm16.pt")
    try:
        return torch.load(cache, map_location="cpu", weights_only=True)
    except Exception:  # missing or damaged: decode again
        pass
    try:
        decoded = {source: torch.from_numpy(wave) for source, wave in
                   decode_recordings(path, kind, transform.sample_rate).items()}
        waves = {source: wave.clamp(-1, 1).mul(PCM_SCALE).round().short()
                 for source, wave in decoded.items() if wave.isfinite().all()}
    except Exception as err:  # a damaged file must not end a long preparation
        warnings.warn(f"skipping unreadable file {path}: {type(err).__name__}: {err}")
        return {}
    atomic_torch_save(waves, cache)
    return waves


class WaveCrops:
    """One split's recordings end to end as int16, for random training segments of `segment` samples.
    len() is how many segments the split holds, what one epoch draws."""

    def __init__(self, waves, segment, origin=""):
        self.segment, self.origin = segment, origin
        kept = [w for w in waves if len(w) >= segment]
        self.samples = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.int16)
        lengths = torch.tensor([len(w) for w in kept], dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        self._crop_cumsum = (lengths - segment + 1).cumsum(0)

    def __len__(self):
        return len(self.samples) // self.segment

    def crop_starts(self, count, generator):
        """`count` random segment starts in `samples`, uniform over every segment inside one recording."""
        return uniform_crop_starts(self.offsets, self._crop_cumsum, count, generator)

    def crops(self, starts, length=None):
        """(len(starts), length or segment) float32 waveforms in [-1, 1] beginning at `starts`."""
        index = starts[:, None] + torch.arange(length or self.segment)
        return self.samples[index].float() / PCM_SCALE

    def spread(self, count, length):
        """(count, length) fixed windows spread evenly over the split's recordings (fewer if they are short)."""
        starts = []
        for r in range(len(self.offsets) - 1):
            first, last = int(self.offsets[r]), int(self.offsets[r + 1]) - length
            starts += list(range(first, last + 1, length)) if last >= first else []
        if not starts:
            return torch.zeros(0, length)
        chosen = torch.linspace(0, len(starts) - 1, min(count, len(starts))).round().long()
        return self.crops(torch.tensor(starts)[chosen], length)


def wave_splits(data, transform, segment):
    """{split: WaveCrops} for a DataConfig: the same files per split as the log-mel splits (data.build_splits)."""
    items, origin = split_items(data, whole_folder=False)
    print(f"Preparing waveforms from {origin} (decoding files missing from the cache {data.cache_dir}) ...", flush=True)
    splits = {}
    for split in SPLITS:
        start, waves = time.perf_counter(), []
        for _, path, kind in progress_bar(items[split], f"waveforms {split}", unit="files"):
            waves += [w for source, w in cached_waves(path, kind, transform, data.cache_dir).items()
                      if source in data.sources]
        splits[split] = WaveCrops(waves, segment, origin=f"{origin} ({split})")
        if items[split]:
            hours = len(splits[split].samples) / transform.sample_rate / 3600
            print(f"{split}: {len(items[split])} files, {hours:.2f} h ({time.perf_counter() - start:.1f} s)", flush=True)
    return splits
