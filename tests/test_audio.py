"""audio_gen.py and its package audiogen/: decoding (folders of music, MUSDB18 in both layouts), the transform, the model and its
schedule, paired metrics, a real-learning check, download, exact resume and end-to-end runs."""
import dataclasses
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch

import audiogen.data
from audiogen.audio_io import decode_recordings
from audiogen.checkpoint import CHECKPOINT_FORMAT, model_from_checkpoint
from audiogen.clips import MelClips
from audiogen.data import SPLITS, DataConfig, Recording, build_splits, folder_splits, hash_split, window_starts
from audiogen.metrics import (AudioEvaluator, mel_metrics, paired_speech_scores, require_speech_metrics, score_split,
                              spread_positions)
from audiogen.inverse import InverseConfig, MelInverse
from audiogen.model import AudioAutoencoder
from audiogen.musdb import DATASETS, detect_layout, ensure_dataset
from audiogen.trainer import AudioTrainer, CosineSchedule
from audiogen.transform import LogMelTransform, compute_normalization
from conftest import MUSDB_SOURCES, ROOT, synthetic_music, write_music_file

CLIP = 80_000


@pytest.fixture(scope="module")
def tf():
    return LogMelTransform()


@pytest.fixture(scope="module")
def random_phase(tf):
    """The random-phase chain (least squares + 8 iterations of fast Griffin-Lim): the cheapest inverse."""
    return MelInverse(InverseConfig("griffinlim", 8), tf)


# --- decoding and data -------------------------------------------------------------------------

def test_layout_detection(musdb_stems, musdb_wav, tmp_path):
    assert detect_layout(musdb_stems) == "stems"
    assert detect_layout(musdb_wav) == "wav"
    assert detect_layout(tmp_path) is None


def test_stem_file_decodes_five_sources_at_16k(musdb_stems):
    waves = decode_recordings(musdb_stems / "train" / "Alpha - First.stem.mp4", "stems", 16_000)
    assert list(waves) == list(MUSDB_SOURCES)
    for wave in waves.values():
        # 6 s at 16 kHz, give or take the AAC encoder's priming samples
        assert wave.ndim == 1 and wave.dtype == np.float32 and abs(len(wave) - 96_000) < 1_500
    assert np.abs(waves["vocals"]).max() > 0.05 and np.abs(waves["bass"]).max() > 0.1


def test_wav_folder_matches_stem_decoding(musdb_wav, musdb_stems):
    wav = decode_recordings(musdb_wav / "train" / "Alpha - First", "wav", 16_000)
    assert abs(len(wav["mixture"]) - 96_000) <= 1
    stem = decode_recordings(musdb_stems / "train" / "Alpha - First.stem.mp4", "stems", 16_000)
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    # the same signal through AAC: same level (the codec delay shifts it a little in time)
    assert rms(stem["bass"]) == pytest.approx(rms(wav["bass"]), rel=0.1)


@pytest.mark.parametrize("name", ["a.wav", "b.flac", "c.opus", "d.m4a"])
def test_every_format_decodes_to_mono_16k(tmp_path, name):
    write_music_file(tmp_path / name, 6.0, 3)
    wave = decode_recordings(tmp_path / name, "file", 16_000)["mixture"]
    assert abs(len(wave) - 96_000) < 1_500  # codec priming/padding
    # the level survives decoding, downmix and resampling (the right channel is 0.8 x the left)
    reference = synthetic_music(6.0, 3, 16_000) * 0.9
    assert np.sqrt(np.mean(wave ** 2)) == pytest.approx(np.sqrt(np.mean(reference ** 2)), rel=0.15)


def test_window_starts_cover_recording_on_frame_boundaries():
    assert window_starts(96_000, CLIP, 313) == [0, 51]       # (96000 - 80000) // 313 = 51
    assert window_starts(CLIP, CLIP, 313) == [0]
    starts = window_starts(16_000 * 60, CLIP, 313)
    assert len(starts) == 12 and starts[0] == 0 and starts[-1] * 313 + CLIP <= 16_000 * 60
    assert starts[-1] == (16_000 * 60 - CLIP) // 313


def test_hash_split_is_deterministic_and_stable(tmp_path):
    names = [f"album{i % 7}/track{i}.flac" for i in range(400)]
    splits = [hash_split(n) for n in names]
    share = {s: splits.count(s) / len(names) for s in SPLITS}
    assert 0.7 < share["train"] < 0.9 and 0.05 < share["valid"] < 0.15 and 0.05 < share["test"] < 0.15
    for n in names[:20]:
        write_music_file(tmp_path / n.replace(".flac", ".wav"), 0.1, 0)
    before = folder_splits(tmp_path)
    for n in names[20:40]:  # adding files never moves the old ones
        write_music_file(tmp_path / n.replace(".flac", ".wav"), 0.1, 0)
    after = folder_splits(tmp_path)
    for split in SPLITS:
        assert set(before[split]) <= set(after[split])
    assert sum(map(len, after.values())) == 40
    whole = folder_splits(tmp_path, whole=True)
    assert whole["train"] == whole["valid"] == [] and len(whole["test"]) == 40


def test_folder_splits_use_subfolders(music_split):
    files = folder_splits(music_split)
    assert [p.name for p in files["valid"]] == ["e.wav"] and [p.name for p in files["test"]] == ["f.wav", "g.flac"]
    # recursive, every listed format, nothing that is not audio
    assert sorted(p.name for p in files["train"]) == ["a.wav", "b.flac", "broken.mp3", "c.opus", "d.m4a",
                                                      "short.wav", "silent.wav"]


def build(root, cache, whole=False):
    data = DataConfig(audio_dir=root, musdb_root=None, download="none", sources=MUSDB_SOURCES, cache_dir=cache)
    return build_splits(data, LogMelTransform(), whole_folder=whole)


def test_folder_dataset_skips_and_counts_bad_files(ag, music_split, tmp_path, monkeypatch):
    with pytest.warns(UserWarning, match="broken.mp3"):
        splits = build(music_split, tmp_path)
    train = splits["train"]
    assert train.stats["unreadable"] == [str(music_split / "train" / "broken.mp3")]
    assert train.stats["silent"] == 1 and train.stats["too_short"] == 1 and train.stats["files"] == 7
    assert sorted(r.name for r in train.recordings) == ["train/a.wav", "train/album/c.opus", "train/b.flac", "train/d.m4a"]
    assert len(train) == 8 and len(splits["valid"]) == 2 and len(splits["test"]) == 4  # two windows per 6-s file
    assert train.log_mels.dtype == torch.float16 and train[0].shape == (128, 256)
    # a second build decodes nothing: every readable file comes from the cache
    monkeypatch.setattr(audiogen.data, "analyse_file", lambda *a: pytest.fail("decoded again"))
    with pytest.warns(UserWarning, match="broken.mp3"):  # still reported, from the cache
        again = build(music_split, tmp_path)["train"]
    assert torch.equal(again.log_mels, train.log_mels)


def test_a_file_with_nan_samples_costs_only_itself(ag, tmp_path):
    """A float WAV holding a few NaN samples is skipped and counted like an unreadable file; training on the
    rest of the folder runs (it used to stop at epoch 1, step 1 with 'loss became nan')."""
    music = tmp_path / "music"
    for seed, name in enumerate(["train/a.wav", "train/b.wav", "valid/c.wav", "test/d.wav"]):
        write_music_file(music / name, 6.0, seed)
    wave = np.sin(np.arange(44_100 * 6) / 7).astype(np.float32)
    wave[5000:5003] = np.nan
    sf.write(str(music / "train" / "nan.wav"), wave, 44_100, subtype="FLOAT")
    with pytest.warns(UserWarning, match="nan.wav: ValueError: the mixture holds samples that are not finite"):
        train = build(music, tmp_path / "cache")["train"]
    assert train.stats["unreadable"] == [str(music / "train" / "nan.wav")] and len(train.recordings) == 2
    assert torch.isfinite(train.log_mels.float()).all()
    with pytest.warns(UserWarning, match="nan.wav"):
        history = ag.main(["--epochs", "1", "--audio_dir", str(music), *TINY, *outputs(tmp_path)])
    assert len(history) == 1 and math.isfinite(history[0]["train"]["loss_during_epoch"])


def test_scoring_windows_match_the_clips_own_mel(ag, music_split, tmp_path):
    test = build(music_split, tmp_path)["test"]
    waves = test.waveforms([0, 1, 3])
    assert waves.shape == (3, CLIP)
    own = LogMelTransform()(waves)
    # identical but for the two edge frames, where the clip is padded and the recording is not
    torch.testing.assert_close(own[..., 2:-2], test.clips([0, 1, 3])[..., 2:-2], atol=2e-2, rtol=0)


def test_random_crops_stay_inside_recordings(ag, music_split, tmp_path):
    train = build(music_split, tmp_path)["train"]
    starts = train.crop_starts(4000, torch.Generator().manual_seed(0))
    ends = train.offsets[1:]
    for s in starts.tolist():
        r = int(torch.searchsorted(train.offsets, torch.tensor(s), right=True)) - 1
        assert s + train.frames <= ends[r]
    assert len(set(starts.tolist())) > 150  # 4 recordings x 52 possible crops, nearly all drawn
    crops = train.crops(starts[:3])
    torch.testing.assert_close(crops[1], train.log_mels[:, starts[1]:starts[1] + 256].float())


def test_musdb_splits_cache_and_skips(ag, musdb_stems, tmp_path, monkeypatch):
    data = DataConfig(audio_dir=None, musdb_root=musdb_stems, download="none", sources=MUSDB_SOURCES,
                      cache_dir=tmp_path)
    splits = build_splits(data, LogMelTransform())
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    assert {r.name.split(" [")[0] for r in train.recordings} == {"Alpha - First", "Beta - Second"}
    assert {r.name.split(" [")[0] for r in valid.recordings} == {"Actions - One Minute Smile"}
    assert train.stats["silent"] == 1 and train.stats["too_short"] == 5   # Beta's vocals; Gamma's 3-s stems
    assert len(train.recordings) == 9 and len(test.recordings) == 10
    assert {test.source(i) for i in range(len(test))} == set(MUSDB_SOURCES)
    monkeypatch.setattr(audiogen.data, "analyse_file", lambda *a: pytest.fail("decoded again"))
    only_vocals = build_splits(dataclasses.replace(data, sources=("vocals",)), LogMelTransform())["train"]
    assert [r.name for r in only_vocals.recordings] == ["Alpha - First [vocals]"]


def test_unreadable_stem_file_is_skipped(musdb_stems, tmp_path):
    root = tmp_path / "musdb"
    (root / "train").mkdir(parents=True)
    os.symlink(musdb_stems / "train" / "Alpha - First.stem.mp4", root / "train" / "Alpha - First.stem.mp4")
    (root / "train" / "Broken - Track.stem.mp4").write_bytes(np.random.default_rng(4096).bytes(4096))
    data = DataConfig(audio_dir=None, musdb_root=root, download="none", sources=MUSDB_SOURCES, cache_dir=tmp_path / "c")
    with pytest.warns(UserWarning, match="Broken - Track.stem.mp4"):
        train = build_splits(data, LogMelTransform())["train"]
    assert len(train.recordings) == 5 and len(train.stats["unreadable"]) == 1


# --- transform ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["griffinlim", "pghi"])
def test_mel_shape_and_inverse_length(tf, kind):
    log_mel = tf(torch.randn(3, CLIP) * 0.1)
    assert log_mel.shape == (3, 128, 256)
    assert tf(torch.zeros(1, CLIP)).min() == pytest.approx(np.log(1e-5))  # the floor for digital silence
    assert MelInverse(InverseConfig(kind, 2), tf)(log_mel).shape == (3, CLIP)


@pytest.mark.parametrize("kind", ["griffinlim", "pghi"])
def test_inverse_recovers_a_tone(tf, kind):
    """Each whole inverse chain (mel -> linear -> phase -> fast Griffin-Lim) puts a 440 Hz tone back at 440 Hz."""
    tone = 0.5 * torch.sin(2 * torch.pi * 440 * torch.arange(CLIP) / 16_000)
    spectrum = torch.fft.rfft(MelInverse(InverseConfig(kind, 32), tf)(tf(tone[None]))[0]).abs()
    assert spectrum.argmax().item() * 16_000 / CLIP == pytest.approx(440, abs=5)


def test_normalization_lives_in_the_model():
    torch.manual_seed(0)
    log_mels = torch.randn(128, 5000) * 2 - 5 + torch.linspace(0, 3, 128)[:, None]
    model = AudioAutoencoder()
    model.set_normalization(*compute_normalization(log_mels))
    normalized = model.normalize(log_mels)
    torch.testing.assert_close(normalized.mean(dim=1), torch.zeros(128), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalized.std(dim=1), torch.ones(128), atol=1e-3, rtol=0)
    torch.testing.assert_close(model.denormalize(normalized), log_mels, atol=1e-4, rtol=1e-5)
    restored = AudioAutoencoder()
    restored.load_state_dict(model.state_dict())  # the statistics travel with the weights
    torch.testing.assert_close(restored.mel_std, model.mel_std)


# --- metrics -----------------------------------------------------------------------------------

def test_mel_metrics_on_identical_opposite_and_flat_inputs():
    model = AudioAutoencoder()
    x = torch.randn(4, 128, 256)
    same = mel_metrics(x, x, model)
    assert same["mse"] == 0 and same["mae"] == 0 and same["clips"] == 4
    assert same["cosine"] == pytest.approx(1.0) and same["mel_sc_score"] == pytest.approx(1.0)
    assert mel_metrics(-x, x, model)["cosine"] == pytest.approx(-1.0)
    flat = mel_metrics(x.mean(dim=-1, keepdim=True).expand_as(x), x, model)
    assert flat["mse"] == pytest.approx(flat["time_average_mse"], rel=1e-5)  # the baseline scores the baseline
    assert flat["baseline_ratio"] == pytest.approx(1.0, rel=1e-5)


def voiced(seconds=5.0, pitch=200):
    t = torch.arange(int(16_000 * seconds)) / 16_000
    return 0.3 * torch.sin(2 * torch.pi * pitch * t) * (torch.sin(2 * torch.pi * 2 * t) > 0)


def test_paired_speech_scores_drop_undefined_clips_from_both():
    good, silent = voiced(), torch.zeros(CLIP)
    noisy = good + 0.05 * torch.randn(CLIP, generator=torch.Generator().manual_seed(0))
    reference, estimate, oracle = torch.stack([good, silent]), torch.stack([noisy, silent]), torch.stack([good, silent])
    scores = paired_speech_scores(reference, estimate, oracle, 16_000)
    assert scores["clips"] == 2 and scores["pesq_undefined"] == 1
    assert scores["oracle_pesq"] > 4.0 and scores["pesq"] < scores["oracle_pesq"]  # means over the same clip
    single = paired_speech_scores(reference[:1], estimate[:1], oracle[:1], 16_000)
    assert single["pesq"] == pytest.approx(scores["pesq"]) and single["pesq_undefined"] == 0


def test_missing_pesq_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pesq", None)  # import pesq now raises ImportError
    with pytest.raises(SystemExit, match="pesq and pystoi"):
        require_speech_metrics()


def test_audio_evaluator_takes_reference_waveforms(random_phase):
    """AudioEvaluator scores any (n, samples) clips, with no data set behind them; the random-phase inverse starts
    from the same phase on every call and leaves the global RNG as it was."""
    reference = torch.stack([voiced(), voiced(pitch=300)])
    model = AudioAutoencoder(hidden=16, latent_dim=32)
    evaluator = AudioEvaluator(reference, random_phase, seed=3)
    assert evaluator.reference is reference and evaluator.log_mels.shape == (2, 128, 256)
    assert evaluator.oracle_audio.shape == (2, CLIP)
    rng = torch.get_rng_state()
    scores, audio, reconstruction = evaluator(model)
    assert torch.equal(torch.get_rng_state(), rng)
    assert scores["clips"] == 2 and audio.shape == (2, CLIP) and reconstruction.shape == (2, 128, 256)
    assert torch.equal(evaluator(model)[1], audio)


def test_spread_positions_cover_everything():
    assert spread_positions(20, 64) == list(range(20))
    assert spread_positions(100, 5) == [0, 25, 50, 74, 99]
    assert spread_positions(0, 5) == [] and spread_positions(7, 1) == [0]


# --- model and training state ------------------------------------------------------------------

@pytest.mark.parametrize("time_downsample, latent_frames, compression", [(16, 16, 16), (8, 32, 8), (4, 64, 4)])
def test_autoencoder_shapes_and_compression(time_downsample, latent_frames, compression):
    model = AudioAutoencoder(n_mels=128, latent_dim=128, hidden=32, time_downsample=time_downsample)
    x = torch.randn(2, 128, 256)
    assert model.encode(x).shape == (2, 128, latent_frames) and model.compression == compression
    assert model(x)[0].shape == x.shape
    with pytest.raises(ValueError, match=f"multiple of {time_downsample}"):
        model.encode(torch.randn(1, 128, 250))


def test_pca_path_starts_as_the_pca_of_the_training_patches():
    """After init_pca the model is exactly the PCA code: the deep paths add zero, and the linear path
    projects each 2-frame patch onto the top latent_dim principal directions (computed here by SVD)."""
    torch.manual_seed(0)
    n_mels, latent, k = 16, 8, 2
    sources = torch.randn(4, 6000)
    sources = sources + torch.roll(sources, 1, dims=1)  # correlated neighbour frames
    log_mels = torch.randn(n_mels, 4) @ sources + 0.1 * torch.randn(n_mels, 6000) + 2.0  # nearly rank 4 per frame
    model = AudioAutoencoder(n_mels=n_mels, latent_dim=latent, hidden=16, time_downsample=k)
    model.set_normalization(*compute_normalization(log_mels))
    model.init_pca(log_mels)
    x = model.normalize(log_mels)
    patches = x.reshape(n_mels, -1, k).permute(1, 0, 2).reshape(-1, n_mels * k).double()
    mean = patches.mean(0)
    basis = torch.linalg.svd(patches - mean, full_matrices=False).Vh[:latent]  # (latent, n_mels * k)
    expected = (patches - mean) @ basis.T @ basis + mean
    clips = x[:, :256 * 20].reshape(n_mels, 20, 256).permute(1, 0, 2)  # 20 clips of 256 frames
    with torch.no_grad():
        out = model(clips)[0]
        assert torch.equal(model.encoder(clips), torch.zeros_like(model.encoder(clips)))
    got = out.reshape(20, n_mels, 128, k).permute(0, 2, 1, 3).reshape(-1, n_mels * k).double()
    # the decoder's bias is per mel bin, so both frames of a patch get their average mean: ~1e-3 here
    torch.testing.assert_close(got, expected[:len(got)], atol=5e-3, rtol=0)
    random_basis = torch.linalg.qr(torch.randn(n_mels * k, latent, dtype=torch.float64)).Q.T
    centred = patches[:len(got)] - mean
    random_code = centred @ random_basis.T @ random_basis + mean
    assert ((got - patches[:len(got)]) ** 2).mean() < 0.1 * ((random_code - patches[:len(got)]) ** 2).mean()


def test_checkpoints_without_the_pca_path_still_load():
    """Models saved before the PCA path existed (no 'pca_path' in their config) rebuild without it."""
    old = AudioAutoencoder(n_mels=16, latent_dim=8, hidden=16, pca_path=False)
    config = {key: value for key, value in old.config.items() if key != "pca_path"}
    model = model_from_checkpoint({"model_config": config, "model": old.state_dict()}, torch.device("cpu"))
    assert model.linear_encoder is None
    x = torch.randn(1, 16, 64)
    torch.testing.assert_close(model(x)[0], old.eval()(x)[0])


def test_cosine_schedule_warms_up_decays_and_extends_without_a_jump():
    schedule = CosineSchedule(1e-3, total_steps=100, warmup_steps=10)
    assert schedule(0) == pytest.approx(1e-4) and schedule(9) == pytest.approx(1e-3)
    assert schedule(55) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)  # half-way through the cosine
    assert schedule(100) == pytest.approx(1e-5) and schedule(500) == pytest.approx(1e-5)
    at_60 = schedule(60)
    schedule.extend(200, step=60)  # a resumed run asked for twice the steps
    rates = [schedule(s) for s in range(60, 201)]
    assert rates[0] == pytest.approx(at_60) and rates[-1] == pytest.approx(1e-5)
    assert all(b <= a for a, b in zip(rates, rates[1:]))  # no climb back up


def test_trainer_overfits_one_batch():
    torch.manual_seed(0)
    model = AudioAutoencoder(n_mels=32, latent_dim=32, hidden=64)
    trainer = AudioTrainer(model, torch.device("cpu"), CosineSchedule(3e-3, 80, warmup_steps=5))
    batch = torch.randn(4, 32, 64)
    first = trainer.train_step(batch)[0].item()
    for _ in range(80):
        last = trainer.train_step(batch)[0].item()
    assert last < 0.3 * first and trainer.step == 81


def test_a_tiny_model_learns_music_it_never_heard():
    """Trained on synthetic note sequences, a 4x-compressing model reconstructs other sequences far
    better than each bin's time average: it learns structure, not the clips."""
    torch.manual_seed(0)
    transform = LogMelTransform(n_mels=32)

    def clips(seeds):
        recordings = []
        for seed in seeds:
            log_mel = transform(torch.from_numpy(synthetic_music(12.0, seed)))
            recordings.append(Recording(str(seed), "", "file", "mixture", log_mel.half(), [0, 150, 300]))
        return MelClips(recordings, transform)

    train, unseen = clips(range(8)), clips(range(100, 103))
    model = AudioAutoencoder(n_mels=32, latent_dim=32, hidden=48, time_downsample=4)
    model.set_normalization(*compute_normalization(train.log_mels))
    model.init_pca(train.log_mels)
    trainer = AudioTrainer(model, torch.device("cpu"), CosineSchedule(2e-3, 250, warmup_steps=20))
    generator = torch.Generator().manual_seed(0)
    for _ in range(250):
        trainer.train_step(train.crops(train.crop_starts(8, generator)))
    scores = score_split(model, unseen)
    assert scores["clips"] == 9 and scores["baseline_ratio"] > 3, scores


# --- download ----------------------------------------------------------------------------------

def make_archive(musdb_stems, path, top_folder):
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(musdb_stems.rglob("*.stem.mp4")):
            zf.write(file, f"{top_folder}{file.relative_to(musdb_stems)}")
    return path


def test_download_from_local_archive(musdb_stems, tmp_path, monkeypatch):
    archive = make_archive(musdb_stems, tmp_path / "MUSDB18-7-STEMS.zip", "")
    monkeypatch.setitem(DATASETS, "preview", {"url": archive.as_uri(), "size": archive.stat().st_size, "md5": None})
    root = tmp_path / "data" / "musdb18"
    assert ensure_dataset(root, "preview") == "stems"
    assert len(list((root / "train").glob("*.stem.mp4"))) == 4 and len(list((root / "test").glob("*.stem.mp4"))) == 2
    assert sorted(p.name for p in root.parent.iterdir()) == ["musdb18"]  # no partial files left


def test_download_full_checks_md5_and_nested_folder(musdb_stems, tmp_path, monkeypatch):
    archive = make_archive(musdb_stems, tmp_path / "musdb18.zip", "musdb18/")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(DATASETS, "full", {"url": archive.as_uri(), "size": None, "md5": md5})
    root = tmp_path / "full" / "musdb18"
    assert ensure_dataset(root, "full") == "stems"


@pytest.mark.parametrize("kind, spec_change, reason", [
    ("preview", {"size": 147_209_385}, "size"),
    ("full", {"md5": "af06762477334799bfc5abf237648207"}, "md5"),
])
def test_download_with_wrong_checksum_is_rejected(musdb_stems, tmp_path, monkeypatch, kind, spec_change, reason):
    archive = make_archive(musdb_stems, tmp_path / "a.zip", "")
    monkeypatch.setitem(DATASETS, kind, {"url": archive.as_uri(), "size": None, "md5": None, **spec_change})
    root = tmp_path / "data" / "musdb18"
    with pytest.raises(SystemExit, match=f"download failed: {reason}"):
        ensure_dataset(root, kind)
    assert not root.exists() and list((tmp_path / "data").iterdir()) == []


def test_download_of_a_non_zip_is_rejected(tmp_path, monkeypatch):
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"not a zip" * 100)
    monkeypatch.setitem(DATASETS, "preview", {"url": fake.as_uri(), "size": fake.stat().st_size, "md5": None})
    with pytest.raises(SystemExit, match="not a zip archive"):
        ensure_dataset(tmp_path / "d" / "musdb18", "preview")
    assert list((tmp_path / "d").iterdir()) == []


def test_offline_without_data(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS, "preview", {"url": "http://127.0.0.1:9/MUSDB18-7-STEMS.zip", "size": 1, "md5": None})
    with pytest.raises(SystemExit) as exc:
        ensure_dataset(tmp_path / "musdb18", "preview")
    assert "download failed" in str(exc.value) and "train/*.stem.mp4" in str(exc.value)
    with pytest.raises(SystemExit, match="no MUSDB18 in"):
        ensure_dataset(tmp_path / "musdb18", "none")


# --- end to end --------------------------------------------------------------------------------

INFER_TINY = ["--griffin_lim_iters", "4", "--audio_eval_clips", "2", "--device", "cpu"]  # infer rejects training flags
TINY = ["--batch_size", "2", "--hidden", "16", "--latent_dim", "32", "--warmup_steps", "2", *INFER_TINY]


def outputs(tmp):
    return ["--results_dir", str(tmp / "results"), "--checkpoint", str(tmp / "models" / "ae.pt"),
            "--cache_dir", str(tmp / "cache")]


@pytest.fixture(scope="module")
def trained(ag, music_split, music_other, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audio_run")
    with pytest.warns(UserWarning, match="broken.mp3"):
        ag.main(["--epochs", "3", "--eval_every", "5", "--audio_dir", str(music_split), *TINY, *outputs(tmp)])
    ag.main(["--mode", "infer", "--audio_dir", str(music_other), *INFER_TINY, *outputs(tmp)])
    return tmp


def test_train_and_infer_outputs(trained):
    results = trained / "results"
    for name in ("training_curves.png", "spectrogram_comparison.png", "inference_comparison.png"):
        assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    for n in (0, 1):
        for kind in ("original", "reconstructed", "oracle"):
            audio, rate = sf.read(results / f"audio_{kind}_{n}.wav")
            assert rate == 16_000 and audio.shape == (CLIP,) and np.abs(audio).max() <= 1.0
    assert not (results / "audio_reconstructed_2.wav").exists()
    metrics = json.loads((results / "metrics.json").read_text())
    epochs = metrics["train"]["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and epochs[-1]["step"] == 12  # 8 windows / batch 2
    # PESQ/STOI at the first and last epochs (--eval_every 5 skips epoch 2), on unseen and on training clips
    assert ["audio_valid" in e for e in epochs] == [True, False, True]
    assert epochs[0]["audio_valid"]["clips"] == 2 and epochs[0]["audio_train"]["clips"] == 2
    for split in ("train", "valid"):
        assert {"mse", "mae", "cosine", "mel_sc_score", "time_average_mse", "baseline_ratio"} <= set(epochs[-1][split])
    data = metrics["train"]["data"]
    assert data["train"]["silent"] == 1 and data["train"]["too_short"] == 1 and len(data["train"]["unreadable"]) == 1
    final = metrics["final_test"]
    assert final["test"]["scored_on"].startswith("unseen test files") and final["test"]["clips"] == 4
    assert final["train"]["scored_on"].startswith("training files") and final["train"]["clips"] == 8
    # infer on another folder with no split scores all of it: 2 files x 2 windows
    infer = metrics["infer"]
    assert infer["test"]["clips"] == 4 and "other_music" in infer["test"]["scored_on"]
    assert "train" not in infer and len(infer["examples"]["names"]) == 2
    assert infer["compression"] == 8  # 128 mels x 2 frames per 32 latent channels
    audio = infer["test"]["audio"]
    assert audio["clips"] == 2 and audio["oracle_stoi"] is not None


def test_checkpoint_describes_itself(trained, music_split):
    state = torch.load(trained / "models" / "ae.pt", map_location="cpu", weights_only=True)
    assert state["format"] == CHECKPOINT_FORMAT and state["epoch"] == 3 and not state["interrupted"]
    assert state["partial_epoch"] is None
    assert state["model_config"] == {"n_mels": 128, "latent_dim": 32, "hidden": 16, "time_downsample": 2, "dropout": 0.0,
                                     "pca_path": True, "variational": False}
    assert state["kind"] == "ae" and state["version"] == 3
    assert state["transform_config"]["hop_length"] == 313 and state["model"]["mel_mean"].shape == (128,)
    assert state["data"]["audio_dir"] == str(music_split.resolve())
    assert {"model", "optimizer", "schedule", "step", "rng", "history", "args"} <= set(state)


def test_infer_on_the_training_folder_scores_its_test_split(ag, trained, music_split):
    result = ag.main(["--mode", "infer", "--audio_dir", str(music_split), *INFER_TINY, *outputs(trained),
                      "--audio_eval_clips", "0", "--results_dir", str(trained / "again")])
    assert result["test"]["clips"] == 4 and result["test"]["scored_on"].endswith("(test)")
    assert result["train"]["clips"] == 8  # the gap to the training clips shows


def test_musdb_run_reports_a_table_per_source(ag, musdb_stems, tmp_path):
    ag.main(["--epochs", "1", "--musdb_root", str(musdb_stems), "--download", "none", *TINY, *outputs(tmp_path),
             "--audio_eval_clips", "1"])
    final = json.loads((tmp_path / "results" / "metrics.json").read_text())["final_test"]
    assert set(final["test"]["by_source"]) == set(MUSDB_SOURCES)
    assert final["test"]["by_source"]["vocals"]["clips"] == 4 and "audio" in final["test"]["by_source"]["bass"]


def weights_and_losses(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    losses = [(h["train"]["loss_during_epoch"], h["train"]["mse"], h["valid"]["mse"]) for h in state["history"]]
    return state, losses


def test_resume_after_ctrl_c_mid_epoch_matches_an_uninterrupted_run(ag, music_split, tmp_path, monkeypatch):
    common = ["--epochs", "2", "--audio_dir", str(music_split), *TINY, "--audio_eval_clips", "0", "--dropout", "0.2"]
    with pytest.warns(UserWarning):
        ag.main([*common, *outputs(tmp_path / "a")])
    real_step = AudioTrainer.train_step

    def ctrl_c_at_step_6(trainer, batch):  # epoch 2 of 4 steps: its second step
        loss = real_step(trainer, batch)
        if trainer.step == 6:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(AudioTrainer, "train_step", ctrl_c_at_step_6)
    with pytest.warns(UserWarning), pytest.raises(SystemExit, match="Stopped after epoch 2, step 2 of 4"):
        ag.main([*common, *outputs(tmp_path / "b")])
    monkeypatch.setattr(AudioTrainer, "train_step", real_step)
    interrupted = torch.load(tmp_path / "b" / "models" / "ae.pt", weights_only=True)
    assert interrupted["interrupted"] and interrupted["epoch"] == 1 and interrupted["step"] == 6
    assert interrupted["partial_epoch"]["steps_done"] == 2
    with pytest.warns(UserWarning):
        ag.main([*common, "--resume", *outputs(tmp_path / "b")])
    (a, losses_a), (b, losses_b) = weights_and_losses(tmp_path / "a" / "models" / "ae.pt"), \
        weights_and_losses(tmp_path / "b" / "models" / "ae.pt")
    assert b["epoch"] == 2 and b["step"] == 8 and not b["interrupted"]
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses_b, losses_a, rtol=1e-5)


def test_resume_with_more_epochs_continues_the_decay(ag, music_split, tmp_path):
    common = ["--audio_dir", str(music_split), *TINY, "--audio_eval_clips", "0", *outputs(tmp_path)]
    with pytest.warns(UserWarning):
        ag.main(["--epochs", "2", *common])
    before = torch.load(tmp_path / "models" / "ae.pt", weights_only=True)
    last_rate = before["optimizer"]["param_groups"][0]["lr"]
    with pytest.warns(UserWarning):
        ag.main(["--epochs", "4", "--resume", *common])
    after = torch.load(tmp_path / "models" / "ae.pt", weights_only=True)
    schedule = CosineSchedule(1e-3, 1)
    schedule.load_state_dict(after["schedule"])
    rates = [schedule(s) for s in range(before["step"], after["step"] + 1)]
    assert rates[0] <= last_rate * 1.0001 and all(b <= a for a, b in zip(rates, rates[1:]))
    assert after["epoch"] == 4 and [h["epoch"] for h in after["history"]] == [1, 2, 3, 4]


def run_cli(args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "audio_gen" / "audio_gen.py"), *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=cwd)


@pytest.mark.parametrize("flags, expected", [
    (["--epochs", "0"], "--epochs: must be >= 1"),
    (["--batch_size", "-3"], "--batch_size: must be >= 1"),
    (["--sources", "piano"], "invalid choice: 'piano'"),
    (["--n_mels", "8"], "--n_mels: must be in [16, 512]"),
    (["--download", "maybe"], "invalid choice: 'maybe'"),
    (["--eval_every", "0"], "--eval_every: must be >= 1"),
    (["--time_downsample", "3"], "invalid choice: 3"),
    (["--audio_dir", "/nonexistent/music"], "--audio_dir /nonexistent/music: no such folder"),
    (["--audio_dir", ".", "--musdb_root", "."], "either --audio_dir or --musdb_root, not both"),
    (["--audio_dir", ".", "--sources", "vocals"], "--sources applies to MUSDB18 stems"),
])
def test_bad_arguments(flags, expected):
    result = run_cli(flags)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_clear_errors(tmp_path, music_split):
    logs = ["--results_dir", str(tmp_path / "results")]  # failed runs log there too, not in the repository
    missing = run_cli(["--musdb_root", str(tmp_path / "nothing"), "--download", "none", "--device", "cpu", *logs])
    assert missing.returncode == 1 and "no MUSDB18 in" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = run_cli(["--audio_dir", str(tmp_path / "empty"), "--device", "cpu", *logs])
    assert empty.returncode == 1 and "no audio files" in empty.stderr and "Traceback" not in empty.stderr
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "song.mp3").write_bytes(np.random.default_rng(2000).bytes(2000))
    junk = run_cli(["--audio_dir", str(tmp_path / "junk"), "--device", "cpu", "--cache_dir", str(tmp_path / "c"), *logs])
    assert junk.returncode == 1 and "no usable training recordings" in junk.stderr
    assert "skipping unreadable file" in junk.stderr and "Traceback" not in junk.stderr
    # starts like a pickle of an unknown protocol: torch warns before it fails, and must still give one line
    (tmp_path / "bad.pt").write_bytes(b"\x80\x09" + np.random.default_rng(0).bytes(1000))
    corrupt = run_cli(["--mode", "infer", "--checkpoint", str(tmp_path / "bad.pt"), "--audio_dir", str(music_split),
                       "--device", "cpu", *logs])
    assert corrupt.returncode == 1 and "truncated or not a PyTorch file" in corrupt.stderr
    assert len(corrupt.stderr.strip().splitlines()) == 1


def test_wrappers_with_environment_overrides(music_split, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "EPOCHS": "1", "BATCH_SIZE": "4", "DEVICE": "cpu",
           "AUDIO_DIR": str(music_split), "CHECKPOINT": "m/ae.pt", "RESULTS_DIR": "r", "CACHE_DIR": "c",
           "GRIFFIN_LIM_ITERS": "2", "AUDIO_EVAL_CLIPS": "0", "HIDDEN": "16", "TIME_DOWNSAMPLE": "8"}
    train = subprocess.run([str(ROOT / "audio_gen" / "train.sh"), "--latent_dim", "16"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    state = torch.load(tmp_path / "m" / "ae.pt", weights_only=True)
    assert state["args"]["batch_size"] == 4 and state["model_config"]["time_downsample"] == 8
    assert state["model_config"]["latent_dim"] == 16 and state["model_config"]["hidden"] == 16
    infer = subprocess.run([str(ROOT / "audio_gen" / "infer.sh")], cwd=tmp_path,
                           env={**env, "NUM_EXAMPLES": "3"}, capture_output=True, text=True, timeout=300)
    assert infer.returncode == 0, infer.stderr
    assert sorted(p.name for p in (tmp_path / "r").glob("audio_reconstructed_*.wav")) == [
        f"audio_reconstructed_{i}.wav" for i in range(3)]


def test_logs_and_early_examples(trained):
    """train and infer also write what they print to RESULTS_DIR/{train,infer}.log; infer writes its
    example WAVs and plot before it scores whole splits."""
    results = trained / "results"
    train_log = (results / "train.log").read_text()
    assert "Preparing data from" in train_log and "epoch   3/3" in train_log
    infer_log = (results / "infer.log").read_text()
    assert infer_log.index("Wrote 2 WAV triples") < infer_log.index("Scoring the test split")
    assert "PESQ/STOI on 2 clips" in infer_log


def test_flags_of_other_modes_are_rejected(ag, capsys):
    for argv, message in ((["--mode", "infer", "--epochs", "3"], "--epochs applies to --mode train or train_prior or train_refiner or train_vocoder, not infer"),
                          (["--mode", "infer", "--hidden", "16"], "--hidden applies to --mode benchmark or train"),
                          (["--mode", "benchmark", "--resume"], "--resume applies to --mode train or train_prior or train_refiner or train_vocoder, not benchmark"),
                          (["--mode", "train", "--num_examples", "3"], "--num_examples applies to --mode infer")):
        with pytest.raises(SystemExit) as exc:
            ag.parse_args(argv)
        stderr = capsys.readouterr().err
        assert exc.value.code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert ag.parse_args(["--mode", "benchmark", "--hidden", "16", "--batch_size", "4"]).hidden == 16


def test_failure_ends_up_in_the_log(tmp_path, music_split):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = run_cli(["--mode", "infer", "--checkpoint", str(bad), "--audio_dir", str(music_split), "--device", "cpu",
                      "--results_dir", str(tmp_path / "r")])
    assert result.returncode == 1 and "truncated or not a PyTorch file" in (tmp_path / "r" / "infer.log").read_text()


def test_benchmark_measures_the_chosen_device_only(ag, music_split, tmp_path, capsys):
    with pytest.warns(UserWarning, match="broken.mp3"):
        ag.main(["--mode", "benchmark", "--device", "cpu", "--audio_dir", str(music_split), "--batch_size", "2",
                 "--hidden", "16", "--latent_dim", "32", "--griffin_lim_iters", "2", "--audio_eval_clips", "0"])
    out = capsys.readouterr().out
    measured = [line for line in out.splitlines() if "clips/s" in line or "data preparation" in line]
    assert len(measured) == 4 and all(line.startswith("[cpu] ") for line in measured), out
    assert "cuda" not in out
