"""MelClips: one split's log-mels as a data set of fixed scoring windows and of random training crops."""
from __future__ import annotations

import torch

from .audio_io import decode_recordings


def uniform_crop_starts(offsets, crop_cumsum, count, generator):
    """`count` random crop starts, uniform over every crop that fits inside one recording: recording r begins at
    `offsets[r]` of the concatenation and holds crop_cumsum[r] - crop_cumsum[r - 1] crops."""
    flat = torch.randint(int(crop_cumsum[-1]), (count,), generator=generator)
    r = torch.searchsorted(crop_cumsum, flat, right=True)
    before = torch.cat([torch.zeros(1, dtype=torch.long), crop_cumsum])[r]
    return offsets[r] + flat - before


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
        self._crop_source = self.log_mels  # where training crops are gathered (keep_on)
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
        return uniform_crop_starts(self.offsets, self._crop_cumsum, count, generator)

    def keep_on(self, device):
        """Gather the training crops on `device` from now on: the split's float16 log-mels go there once (3.7 h
        of music: about 0.2 GB), so that no step assembles its batch on the CPU and copies it over."""
        self._crop_source = self.log_mels.to(device)
        return self

    def crops(self, starts):
        """(len(starts), n_mels, frames) float32 crops of `log_mels` beginning at `starts` (on the keep_on device)."""
        source = self._crop_source
        index = starts.to(source.device)[:, None] + torch.arange(self.frames, device=source.device)
        return source[:, index].permute(1, 0, 2).float()

    def describe(self, i):
        """Scoring window i as 'recording name @ start time'."""
        r, f = self.windows[i]
        return f"{self.recordings[r].name} @ {f * self.transform.hop_length / self.transform.sample_rate:.1f}s"

    def source(self, i):
        """The MUSDB18 stem of scoring window i ('mixture' for folder files)."""
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
