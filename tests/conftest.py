"""Shared fixtures: tiny datasets written in their real on-disk formats, and the two command-line scripts."""
import struct
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ig():
    """imagegen.cli, the image model's command line (what image_gen/image_gen.py runs)."""
    from imagegen import cli
    return cli


def synthetic_digits(n, seed):
    """(n, 28, 28) uint8 images of bright strokes on black, and (n,) labels 0..9: MNIST-like statistics."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = np.zeros((n, 28, 28), np.uint8)
    yy, xx = np.mgrid[0:28, 0:28]
    for i, label in enumerate(labels):
        angle = np.pi * label / 10
        cy, cx = 14 + rng.normal(0, 1.5, 2)
        # a thick bar whose angle encodes the label, plus a ring for odd labels
        dist = np.abs((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle))
        along = np.abs((yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle))
        img = np.where((dist < 2.0) & (along < 9), 255, 0)
        if label % 2:
            ring = np.abs(np.hypot(yy - cy, xx - cx) - 7) < 1.5
            img = np.maximum(img, ring * 255)
        images[i] = img
    return images, labels


def write_idx(raw_dir, n_train=192, n_test=96):
    """Write the four uncompressed MNIST IDX files that torchvision's MNIST reads."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        (raw_dir / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw_dir / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    write_idx(root / "MNIST" / "raw")
    return root


# --------------------------------------------------------------------------------------------
# MUSDB18 fixtures
# --------------------------------------------------------------------------------------------

MUSDB_SOURCES = ("mixture", "drums", "bass", "other", "vocals")


@pytest.fixture(scope="session")
def ag():
    """audiogen.cli, the audio model's command line (what audio_gen/audio_gen.py runs)."""
    from audiogen import cli
    return cli


def stem_signals(seconds, seed, silent_vocals=False, rate=44100):
    """Five stereo float32 (2, n) signals: drums (noise bursts), bass, other, vocals (tones), and their sum."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    drums = (rng.normal(0, 0.2, t.size) * (np.sin(2 * np.pi * 2 * t) > 0.7)).astype(np.float32)
    bass = 0.3 * np.sin(2 * np.pi * (55 + 10 * seed) * t)
    other = 0.15 * np.sin(2 * np.pi * 440 * t + 3 * np.sin(2 * np.pi * 0.5 * t))
    vocals = np.zeros_like(t) if silent_vocals else 0.2 * np.sin(2 * np.pi * (300 + 100 * np.sin(2 * np.pi * 0.3 * t)) * t)
    parts = [drums, bass, other, vocals]
    signals = [sum(parts)] + parts
    return [np.stack([s, 0.9 * s]).astype(np.float32) for s in signals]


def write_stem_mp4(path, signals, rate=44100):
    """A MUSDB18 .stem.mp4: five AAC streams in the order mixture, drums, bass, other, vocals."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        streams = [container.add_stream("aac", rate=rate, layout="stereo") for _ in signals]
        for stream, audio in zip(streams, signals):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp", layout="stereo")
            frame.rate = rate
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                container.mux(packet)


def write_wav_folder(folder, signals, rate=44100):
    """A MUSDB18-HQ track folder: <source>.wav for the five sources."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    for name, audio in zip(MUSDB_SOURCES, signals):
        sf.write(str(folder / f"{name}.wav"), audio.T, rate, subtype="PCM_16")


# name, subset, seconds, silent vocals
MUSDB_TRACKS = [
    ("Alpha - First", "train", 6.0, False),
    ("Beta - Second", "train", 6.0, True),
    ("Actions - One Minute Smile", "train", 6.0, False),   # an official validation track
    ("Gamma - Short", "train", 3.0, False),                # shorter than one clip: padded
    ("Delta - Test One", "test", 6.0, False),
    ("Epsilon - Test Two", "test", 5.5, False),
]


@pytest.fixture(scope="session")
def musdb_stems(tmp_path_factory):
    root = tmp_path_factory.mktemp("musdb18")
    for seed, (name, subset, seconds, silent) in enumerate(MUSDB_TRACKS):
        write_stem_mp4(root / subset / f"{name}.stem.mp4", stem_signals(seconds, seed, silent))
    return root


@pytest.fixture(scope="session")
def musdb_wav(tmp_path_factory):
    root = tmp_path_factory.mktemp("musdb18hq")
    for seed, (name, subset, seconds, silent) in enumerate(MUSDB_TRACKS[:2] + MUSDB_TRACKS[4:5]):
        write_wav_folder(root / subset / name, stem_signals(seconds, seed, silent))
    return root


# --------------------------------------------------------------------------------------------
# Folders of music (audio_gen --audio_dir)
# --------------------------------------------------------------------------------------------

def synthetic_music(seconds, seed, rate=16_000):
    """(n,) float32 'music': a note every 0.25-0.5 s (a tone with three harmonics and a decay) over
    soft noise hits, so a model that only knows each bin's average level scores badly."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n, np.float32)
    start = 0
    while start < n:
        length = int(rate * rng.uniform(0.25, 0.5))
        t = np.arange(min(length, n - start)) / rate
        pitch = 110 * 2 ** (rng.integers(0, 36) / 12)
        note = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in (1, 2, 3)) * np.exp(-4 * t)
        out[start:start + len(t)] += 0.2 * note.astype(np.float32)
        if rng.random() < 0.5:
            hit = rng.normal(0, 0.1, min(800, n - start)) * np.exp(-np.arange(min(800, n - start)) / 200)
            out[start:start + len(hit)] += hit.astype(np.float32)
        start += length
    return out


def write_encoded(path, audio, rate, codec, container_format, layout="stereo"):
    """Encode float32 (channels, n) audio with PyAV: e.g. ('libopus', 'ogg') or ('aac', 'mp4')."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, audio.shape[1], frame_size):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, start:start + frame_size]),
                                               format="fltp", layout=layout)
            frame.rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_music_file(path, seconds, seed):
    """One synthetic music file in the format its suffix names: wav, flac (soundfile), opus, m4a (PyAV)."""
    import soundfile as sf

    mono = synthetic_music(seconds, seed, 48_000 if path.suffix == ".opus" else 44_100)
    stereo = np.stack([mono, 0.8 * mono])
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".wav", ".flac"):
        sf.write(str(path), stereo.T, 44_100)
    elif path.suffix == ".opus":
        write_encoded(path, stereo, 48_000, "libopus", "ogg")
    else:
        write_encoded(path, stereo, 44_100, "aac", "mp4")


# --------------------------------------------------------------------------------------------
# Tiny checkpoints of both models for the web demo's tests
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def demo_checkpoints(ig, ag, mnist_dir, tmp_path_factory):
    """Checkpoints trained here for one epoch each: a class-conditional and an unconditional DDPM and a
    class-conditional GAN on the IDX digits, and an autoencoder and a VAE on a folder of music whose test split holds two 12-s files (the demo's
    test clips). Returns {name: path}, with the results folders the demo reads metrics.json from."""
    root = tmp_path_factory.mktemp("demo_checkpoints")
    gan = ["--epochs", "1", "--fid_samples", "0", "--base_channels", "8", "--batch_size", "32", "--num_samples", "2",
           "--device", "cpu", "--data_dir", str(mnist_dir), "--cache_dir", str(root / "cache")]
    image = [*gan, "--sampling_steps", "4"]  # a GAN has no sampler steps
    ig.main([*image, "--checkpoint", str(root / "ddpm.pt"), "--results_dir", str(root / "image_results")])
    ig.main([*image, "--conditioning", "none", "--checkpoint", str(root / "ddpm_unconditional.pt"),
             "--results_dir", str(root / "image_results_unconditional")])
    ig.main([*gan, "--model", "gan", "--checkpoint", str(root / "gan.pt"), "--results_dir", str(root / "gan_results")])
    music = root / "music"
    for seed, name in enumerate(["train/a.wav", "train/b.flac", "valid/c.wav", "test/d.wav", "test/e.opus"]):
        write_music_file(music / name, 12.0 if name.startswith("test") else 6.0, seed)
    ag.main(["--epochs", "1", "--audio_dir", str(music), "--batch_size", "2", "--hidden", "16", "--latent_dim", "32",
             "--griffin_lim_iters", "4", "--audio_eval_clips", "1", "--warmup_steps", "2", "--device", "cpu",
             "--checkpoint", str(root / "ae.pt"), "--results_dir", str(root / "audio_results"),
             "--cache_dir", str(root / "cache")])
    ag.main(["--model", "vae", "--epochs", "1", "--audio_dir", str(music), "--batch_size", "2", "--hidden", "16",
             "--latent_dim", "8", "--time_downsample", "8", "--griffin_lim_iters", "4", "--audio_eval_clips", "0",
             "--warmup_steps", "2", "--kl_warmup_steps", "2", "--device", "cpu", "--checkpoint", str(root / "vae.pt"),
             "--results_dir", str(root / "audio_vae_results"), "--cache_dir", str(root / "cache")])
    return {"image": root / "ddpm.pt", "image_unconditional": root / "ddpm_unconditional.pt", "gan": root / "gan.pt",
            "audio": root / "ae.pt", "vae": root / "vae.pt",
            "image_results": root / "image_results", "audio_results": root / "audio_results", "music": music}


@pytest.fixture(scope="session")
def music_split(tmp_path_factory):
    """A folder of music with train/valid/test subfolders in five formats, plus files to skip."""
    root = tmp_path_factory.mktemp("music")
    for seed, name in enumerate(["train/a.wav", "train/b.flac", "train/album/c.opus", "train/d.m4a",
                                 "valid/e.wav", "test/f.wav", "test/g.flac"]):
        write_music_file(root / name, 6.0, seed)
    (root / "train" / "broken.mp3").write_bytes(np.random.default_rng(4096).bytes(4096))
    import soundfile as sf

    sf.write(str(root / "train" / "silent.wav"), np.zeros(44_100 * 6, np.float32), 44_100)
    write_music_file(root / "train" / "short.wav", 2.0, 99)
    (root / "train" / "notes.txt").write_text("not audio, not listed")
    return root


@pytest.fixture(scope="session")
def music_other(tmp_path_factory):
    """Music from 'elsewhere', with no split: infer scores all of it."""
    root = tmp_path_factory.mktemp("other_music")
    for seed, name in enumerate(["x.wav", "deep/y.opus"], start=50):
        write_music_file(root / name, 7.0, seed)
    return root
