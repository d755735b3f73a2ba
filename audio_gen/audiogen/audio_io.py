"""Audio files in and out: every format FFmpeg reads, decoded to mono at one sample rate, and 16-bit WAVs out.

Decoding goes through PyAV (FFmpeg's decoders and libswresample), which reads wav, flac, ogg/opus, mp3,
m4a/aac and MUSDB18's five-stream .stem.mp4 alike and resamples as it decodes.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

SOURCES = ("mixture", "drums", "bass", "other", "vocals")  # the stream order inside a MUSDB18 .stem.mp4
SILENCE_RMS = 1e-3  # -60 dBFS: quieter recordings and windows carry nothing to reconstruct


class UnusableAudio(ValueError):
    """A file that holds no music to work with; the message says why, in words for the person who gave it."""


def decode_streams(path, sample_rate, expected_streams=None):
    """Every audio stream of a file as mono float32 at `sample_rate`: a list of (samples,) arrays.

    The downmix is the channel mean, as in MUSDB18 tools (FFmpeg's own stereo-to-mono mix is 3 dB louder).
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
            resampler = resamplers[packet.stream.index]
            for frame in packet.decode():
                chunks[packet.stream.index] += [f.to_ndarray().mean(axis=0) for f in resampler.resample(frame)]
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


def write_wav(path, audio, sample_rate):
    """A (samples,) tensor as a 16-bit WAV file at `sample_rate` (`path`: a path or a binary file object)."""
    import soundfile as sf

    peak = float(audio.abs().max())
    # Griffin-Lim can overshoot; scale down only when it would clip, so levels stay comparable.
    target = path if hasattr(path, "write") else str(path)
    sf.write(target, (audio / max(1.0, peak / 0.99)).cpu().numpy(), sample_rate, subtype="PCM_16", format="WAV")


def wav_bytes(audio, sample_rate):
    """The bytes of the WAV file write_wav would write for a (samples,) tensor."""
    buffer = io.BytesIO()
    write_wav(buffer, audio, sample_rate)
    return buffer.getvalue()


def decode_music_file(path, sample_rate, kind="file"):
    """A recording a person chose (an upload, a test file): the mono float32 (samples,) mixture at
    `sample_rate` of a music file, a MUSDB18 .stem.mp4 ('stems') or track folder ('wav'), or UnusableAudio
    when it cannot be decoded, holds no samples, holds non-finite ones or is silent."""
    try:
        wave = decode_recordings(path, kind, sample_rate)["mixture"]
    except Exception as err:  # FFmpeg's errors for data it cannot parse have many types
        detail = str(err).splitlines()[0] if str(err) else ""
        raise UnusableAudio(f"this file cannot be read as audio ({type(err).__name__}: {detail})") from None
    if len(wave) == 0:
        raise UnusableAudio("this file holds no audio samples")
    if not np.isfinite(wave).all():
        raise UnusableAudio("this file holds samples that are not finite numbers (NaN or infinity)")
    if float((wave.astype("float64") ** 2).mean() ** 0.5) < SILENCE_RMS:
        raise UnusableAudio("this file is silent (below -60 dBFS): there is nothing to reconstruct")
    return wave


def decode_music_bytes(data, name, sample_rate):
    """decode_music_file of an uploaded file's bytes; `name`'s suffix helps FFmpeg guess the format."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{Path(name).suffix[:12]}"
        path.write_bytes(data)
        return decode_music_file(path, sample_rate)
