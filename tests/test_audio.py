"""audio_gen.py: MUSDB18 in both layouts, the transforms, metrics, download, and end-to-end runs."""
import hashlib
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import MUSDB_SOURCES, ROOT

CLIP = 80_000


@pytest.fixture(scope="module")
def pre(ag):
    return ag.AudioPreprocessor(griffin_lim_iters=8)


# --- data --------------------------------------------------------------------------------------

def test_layout_detection(ag, musdb_stems, musdb_wav, tmp_path):
    assert ag.detect_layout(musdb_stems) == "stems"
    assert ag.detect_layout(musdb_wav) == "wav"
    assert ag.detect_layout(tmp_path) is None


def test_stem_file_decodes_five_sources_at_16k(pre, musdb_stems):
    waves = pre.load_stem_file(musdb_stems / "train" / "Alpha - First.stem.mp4")
    assert list(waves) == list(MUSDB_SOURCES)
    for wave in waves.values():
        # 6 s at 16 kHz, give or take the AAC encoder's priming samples
        assert wave.ndim == 1 and abs(len(wave) - 96_000) < 1_500
    assert waves["vocals"].abs().max() > 0.05 and waves["bass"].abs().max() > 0.1


def test_wav_folder_matches_stem_decoding(pre, musdb_wav, musdb_stems):
    wav = pre.load_wav_folder(musdb_wav / "train" / "Alpha - First")
    assert len(wav["mixture"]) == 96_000
    # the same signal through AAC: same level (the codec delay shifts it a little in time)
    stem = pre.load_stem_file(musdb_stems / "train" / "Alpha - First.stem.mp4")
    rms = lambda x: x.pow(2).mean().sqrt().item()  # noqa: E731
    assert rms(stem["bass"]) == pytest.approx(rms(wav["bass"]), rel=0.1)


def test_clip_windows_cover_track(pre):
    assert pre.clip_starts(96_000) == [0, 16_000]
    assert pre.clip_starts(48_000) == [0]
    assert pre.clip_starts(CLIP) == [0]
    starts = pre.clip_starts(16_000 * 60)
    assert starts[0] == 0 and starts[-1] == 16_000 * 60 - CLIP and len(starts) == 12
    assert pre.cut(torch.ones(48_000), 0).shape == (CLIP,)  # short tracks are zero-padded
    assert pre.cut(torch.ones(48_000), 0)[48_000:].abs().sum() == 0


def test_mel_shape_and_griffin_lim_length(pre):
    waves = torch.randn(3, CLIP) * 0.1
    log_mel = pre.log_mel(waves)
    assert log_mel.shape == (3, 128, 256)
    pre.mean, pre.std = torch.zeros(128), torch.ones(128)
    audio = pre.to_audio(log_mel)
    assert audio.shape == (3, CLIP)


def test_griffin_lim_recovers_a_tone(ag):
    """The whole inverse chain (InverseMelScale + Griffin-Lim) puts a 440 Hz tone back at 440 Hz."""
    pre = ag.AudioPreprocessor(griffin_lim_iters=32, mean=torch.zeros(128), std=torch.ones(128))
    tone = 0.5 * torch.sin(2 * torch.pi * 440 * torch.arange(CLIP) / 16_000)
    audio = pre.to_audio(pre.log_mel(tone[None]))[0]
    spectrum = torch.fft.rfft(audio).abs()
    assert spectrum.argmax().item() * 16_000 / CLIP == pytest.approx(440, abs=5)


def test_normalization_round_trip(ag, pre):
    torch.manual_seed(0)
    log_mels = torch.randn(16, 128, 256) * 2 - 5 + torch.linspace(0, 3, 128)[:, None]
    mean, std = ag.compute_normalization(log_mels)
    assert mean.shape == std.shape == (128,)
    p = ag.AudioPreprocessor(mean=mean, std=std)
    normalized = p.normalize(log_mels)
    torch.testing.assert_close(normalized.mean(dim=(0, 2)), torch.zeros(128), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalized.std(dim=(0, 2)), torch.ones(128), atol=1e-3, rtol=0)
    torch.testing.assert_close(p.denormalize(normalized), log_mels, atol=1e-4, rtol=1e-5)


def test_metrics_on_identical_and_opposite_inputs(ag):
    p = ag.AudioPreprocessor(mean=torch.zeros(128), std=torch.ones(128))
    x = torch.randn(4, 128, 256)
    same = ag.mel_metrics(x, x, p)
    assert same["mse"] == 0 and same["mae"] == 0
    assert same["cosine"] == pytest.approx(1.0) and same["pesq_proxy"] == pytest.approx(1.0)
    assert ag.mel_metrics(-x, x, p)["cosine"] == pytest.approx(-1.0)
    # predicting each bin's time average scores exactly the time-average baseline
    flat = x.mean(dim=-1, keepdim=True).expand_as(x)
    scores = ag.mel_metrics(flat, x, p)
    assert scores["mse"] == pytest.approx(scores["time_average_mse"], rel=1e-5)


def test_speech_scores_identical_and_silent(ag):
    t = torch.arange(CLIP) / 16_000
    voice = 0.3 * torch.sin(2 * torch.pi * 200 * t) * (torch.sin(2 * torch.pi * 2 * t) > 0)
    scores = ag.speech_scores(voice[None], voice[None], 16_000)
    assert scores["pesq"] > 4.0 and scores["stoi"] > 0.99
    silent = ag.speech_scores(torch.zeros(1, CLIP), torch.zeros(1, CLIP), 16_000)  # must not raise
    assert silent["pesq"] is None and silent["pesq_clips"] == 0


def test_dataset_splits_cache_and_skips(ag, musdb_stems, tmp_path, monkeypatch):
    pre = ag.AudioPreprocessor()
    cache = tmp_path / "cache"
    train = ag.MUSDBDataset(musdb_stems, "train", pre, cache_dir=cache)
    valid = ag.MUSDBDataset(musdb_stems, "valid", pre, cache_dir=cache)
    test = ag.MUSDBDataset(musdb_stems, "test", pre, cache_dir=cache)
    assert train.log_mels.shape[1:] == (128, 256)
    # 4 training tracks: the official validation track goes to `valid`, the rest to `train`
    assert {train.describe(i).split(" [")[0] for i in range(len(train))} == {"Alpha - First", "Beta - Second", "Gamma - Short"}
    assert {valid.describe(i).split(" [")[0] for i in range(len(valid))} == {"Actions - One Minute Smile"}
    # 2 windows x 5 sources for 6-s tracks, 1 window for the 3-s track, Beta's 2 silent vocal windows skipped
    assert len(train) + len(valid) == 3 * 10 + 5 - 2
    assert train.stats["silent_clips_skipped"] == 2
    assert len(test) == 20
    # the second load comes from the cache: no decoding at all
    monkeypatch.setattr(ag, "decode_tracks", lambda *a, **k: pytest.fail("decoded again"))
    assert torch.equal(ag.MUSDBDataset(musdb_stems, "train", pre, cache_dir=cache).log_mels, train.log_mels)
    only_vocals = ag.MUSDBDataset(musdb_stems, "train", pre, sources=["vocals"], cache_dir=cache)
    assert len(only_vocals) == 3 and all("[vocals]" in only_vocals.describe(i) for i in range(3))
    # waveforms behind clips are the cut originals
    waves = train.waveforms([0])
    assert waves.shape == (1, CLIP)
    torch.testing.assert_close(pre.log_mel(waves).half().float(), train.log_mels[:1], atol=2e-2, rtol=0)


def test_wav_layout_dataset(ag, musdb_wav, tmp_path):
    pre = ag.AudioPreprocessor()
    train = ag.MUSDBDataset(musdb_wav, "train", pre, cache_dir=tmp_path)
    valid = ag.MUSDBDataset(musdb_wav, "valid", pre, cache_dir=tmp_path)
    # no official validation track here: every 10th track would be held out; with 2 tracks, none is
    assert len(train) == 2 * 10 - 2 and len(valid) == 0


def test_unreadable_file_is_skipped_with_warning(ag, musdb_stems, tmp_path):
    root = tmp_path / "musdb"
    (root / "train").mkdir(parents=True)
    os.symlink(musdb_stems / "train" / "Alpha - First.stem.mp4", root / "train" / "Alpha - First.stem.mp4")
    (root / "train" / "Broken - Track.stem.mp4").write_bytes(os.urandom(4096))
    with pytest.warns(UserWarning, match="Broken - Track.stem.mp4"):
        ds = ag.MUSDBDataset(root, "train", ag.AudioPreprocessor(), cache_dir=tmp_path / "c")
    assert len(ds) == 10 and len(ds.stats["unreadable"]) == 1


# --- model -----------------------------------------------------------------------------------

def test_autoencoder_shapes_and_compression(ag):
    model = ag.AudioAutoencoder(n_mels=128, latent_dim=128)
    x = torch.randn(2, 128, 256)
    z = model.encode(x)
    assert z.shape == (2, 128, 16)          # 16x fewer numbers than the 128 x 256 input
    assert model(x).shape == x.shape
    with pytest.raises(ValueError, match="multiple of 16"):
        model.encode(torch.randn(1, 128, 250))
    assert len([m for m in model.modules() if isinstance(m, torch.nn.ConvTranspose1d)]) == 4
    assert len([m for m in model.modules() if isinstance(m, ag.ResBlock1d)]) == 8


def test_trainer_overfits_one_batch(ag):
    torch.manual_seed(0)
    trainer = ag.AudioTrainer(ag.AudioAutoencoder(n_mels=32, latent_dim=32, hidden=64), torch.device("cpu"),
                              learning_rate=3e-3, total_steps=80)
    batch = torch.randn(4, 32, 64)
    first = trainer.train_step(batch).item()
    for _ in range(80):
        last = trainer.train_step(batch).item()
    assert last < 0.5 * first
    assert trainer.scheduler.get_last_lr()[0] < 3e-3 * 0.05  # cosine annealing reached its floor


# --- download --------------------------------------------------------------------------------

def make_archive(musdb_stems, path, top_folder):
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(musdb_stems.rglob("*.stem.mp4")):
            zf.write(file, f"{top_folder}{file.relative_to(musdb_stems)}")
    return path


def test_download_from_local_archive(ag, musdb_stems, tmp_path, monkeypatch):
    archive = make_archive(musdb_stems, tmp_path / "MUSDB18-7-STEMS.zip", "")
    monkeypatch.setitem(ag.DATASETS, "preview", {"url": archive.as_uri(), "size": archive.stat().st_size, "md5": None})
    root = tmp_path / "data" / "musdb18"
    assert ag.ensure_dataset(root, "preview") == "stems"
    assert len(list((root / "train").glob("*.stem.mp4"))) == 4 and len(list((root / "test").glob("*.stem.mp4"))) == 2
    assert sorted(p.name for p in root.parent.iterdir()) == ["musdb18"]  # no partial files left


def test_download_full_checks_md5_and_nested_folder(ag, musdb_stems, tmp_path, monkeypatch):
    archive = make_archive(musdb_stems, tmp_path / "musdb18.zip", "musdb18/")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(ag.DATASETS, "full", {"url": archive.as_uri(), "size": None, "md5": md5})
    root = tmp_path / "full" / "musdb18"
    assert ag.ensure_dataset(root, "full") == "stems"


@pytest.mark.parametrize("kind, spec_change, reason", [
    ("preview", {"size": 147_209_385}, "size"),
    ("full", {"md5": "af06762477334799bfc5abf237648207"}, "md5"),
])
def test_download_with_wrong_checksum_is_rejected(ag, musdb_stems, tmp_path, monkeypatch, kind, spec_change, reason):
    archive = make_archive(musdb_stems, tmp_path / "a.zip", "")
    monkeypatch.setitem(ag.DATASETS, kind, {"url": archive.as_uri(), "size": None, "md5": None, **spec_change})
    root = tmp_path / "data" / "musdb18"
    with pytest.raises(SystemExit, match=f"download failed: {reason}"):
        ag.ensure_dataset(root, kind)
    assert not root.exists() and list((tmp_path / "data").iterdir()) == []


def test_download_of_a_non_zip_is_rejected(ag, tmp_path, monkeypatch):
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"not a zip" * 100)
    monkeypatch.setitem(ag.DATASETS, "preview", {"url": fake.as_uri(), "size": fake.stat().st_size, "md5": None})
    with pytest.raises(SystemExit, match="not a zip archive"):
        ag.ensure_dataset(tmp_path / "d" / "musdb18", "preview")
    assert list((tmp_path / "d").iterdir()) == []


def test_offline_without_data(ag, tmp_path, monkeypatch):
    monkeypatch.setitem(ag.DATASETS, "preview", {"url": "http://127.0.0.1:9/MUSDB18-7-STEMS.zip", "size": 1, "md5": None})
    with pytest.raises(SystemExit) as exc:
        ag.ensure_dataset(tmp_path / "musdb18", "preview")
    assert "download failed" in str(exc.value) and "train/*.stem.mp4" in str(exc.value)
    with pytest.raises(SystemExit, match="no MUSDB18 in"):
        ag.ensure_dataset(tmp_path / "musdb18", "none")


# --- end to end --------------------------------------------------------------------------------

TINY = ["--batch_size", "8", "--griffin_lim_iters", "4", "--audio_eval_clips", "2", "--device", "cpu",
        "--download", "none"]


def run_args(tmp, root):
    return ["--musdb_root", str(root), "--results_dir", str(tmp / "results"), "--checkpoint",
            str(tmp / "models" / "ae.pt"), "--cache_dir", str(tmp / "cache")]


@pytest.fixture(scope="module")
def trained(ag, musdb_stems, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audio_run")
    ag.main(["--epochs", "3", "--eval_every", "5", *TINY, *run_args(tmp, musdb_stems)])
    ag.main(["--mode", "infer", *TINY, *run_args(tmp, musdb_stems)])
    return tmp


def test_train_and_infer_outputs(trained):
    results = trained / "results"
    for name in ("training_curves.png", "spectrogram_comparison.png", "inference_comparison.png"):
        assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    for n in (0, 1):
        for kind in ("original", "reconstructed"):
            audio, rate = sf.read(results / f"audio_{kind}_{n}.wav")
            assert rate == 16_000 and audio.shape == (CLIP,) and np.abs(audio).max() <= 1.0
    assert not (results / "audio_reconstructed_2.wav").exists()
    metrics = json.loads((results / "metrics.json").read_text())
    epochs = metrics["train"]["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert ["audio" in e for e in epochs] == [True, False, True]  # first and last; --eval_every 5 skips epoch 2
    for split in ("train", "valid"):
        assert {"mse", "mae", "cosine", "pesq_proxy", "loss"} <= set(epochs[-1][split])
    assert epochs[-1]["audio"]["oracle_stoi"] is not None and epochs[-1]["audio"]["stoi"] is not None
    assert metrics["final_test"]["clips"] == 20
    infer = metrics["infer"]
    assert infer["clips"] == 20 and len(infer["examples"]["clips"]) == 2
    assert 0 <= infer["pesq_proxy"] <= 1 and -1 <= infer["cosine"] <= 1


def test_checkpoint_describes_itself(ag, trained):
    state = torch.load(trained / "models" / "ae.pt", map_location="cpu", weights_only=True)
    assert state["format"] == ag.CHECKPOINT_FORMAT and state["epoch"] == 3
    assert state["model_config"]["latent_dim"] == 128 and state["preprocessor_config"]["hop_length"] == 313
    assert state["normalization"]["mean"].shape == (128,)
    assert {"model", "optimizer", "scheduler", "rng", "history", "args"} <= set(state)


def test_resume_matches_uninterrupted_run(ag, musdb_stems, tmp_path, monkeypatch):
    common = ["--epochs", "2", *TINY, "--audio_eval_clips", "0"]
    ag.main([*common, *run_args(tmp_path / "a", musdb_stems)])
    real = ag.train_one_epoch

    def interrupt(trainer, mels, batch_size, epoch, epochs, **kw):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(trainer, mels, batch_size, epoch, epochs, **kw)

    monkeypatch.setattr(ag, "train_one_epoch", interrupt)
    with pytest.raises(SystemExit, match="Interrupted during epoch 2"):
        ag.main([*common, *run_args(tmp_path / "b", musdb_stems)])
    monkeypatch.setattr(ag, "train_one_epoch", real)
    ag.main([*common, "--resume", *run_args(tmp_path / "b", musdb_stems)])
    a = torch.load(tmp_path / "a" / "models" / "ae.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "models" / "ae.pt", weights_only=True)
    assert b["epoch"] == 2 and len(b["history"]) == 2
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key])


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
])
def test_bad_arguments(flags, expected):
    result = run_cli(flags)
    assert result.returncode == 2 and expected in result.stderr, result.stderr


def test_clear_errors(tmp_path, musdb_stems):
    missing = run_cli(["--musdb_root", str(tmp_path / "nothing"), "--download", "none", "--device", "cpu"])
    assert missing.returncode == 1 and "no MUSDB18 in" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "bad.pt").write_bytes(os.urandom(1000))
    corrupt = run_cli(["--mode", "infer", "--checkpoint", str(tmp_path / "bad.pt"), "--musdb_root", str(musdb_stems),
                       "--device", "cpu"])
    assert corrupt.returncode == 1 and "truncated or not a PyTorch file" in corrupt.stderr
    assert len(corrupt.stderr.strip().splitlines()) == 1


def test_wrappers_with_environment_overrides(musdb_stems, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "EPOCHS": "1", "BATCH_SIZE": "16", "DEVICE": "cpu",
           "MUSDB_ROOT": str(musdb_stems), "CHECKPOINT": "m/ae.pt", "RESULTS_DIR": "r", "CACHE_DIR": "c",
           "GRIFFIN_LIM_ITERS": "2", "AUDIO_EVAL_CLIPS": "0", "DOWNLOAD": "none"}
    train = subprocess.run([str(ROOT / "audio_gen" / "train.sh"), "--sources", "bass", "drums"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    state = torch.load(tmp_path / "m" / "ae.pt", weights_only=True)
    assert state["args"]["batch_size"] == 16 and state["args"]["sources"] == ["bass", "drums"]
    infer = subprocess.run([str(ROOT / "audio_gen" / "infer.sh"), "--sources", "bass"], cwd=tmp_path,
                           env={**env, "NUM_EXAMPLES": "3"}, capture_output=True, text=True, timeout=300)
    assert infer.returncode == 0, infer.stderr
    assert sorted(p.name for p in (tmp_path / "r").glob("audio_reconstructed_*.wav")) == [
        f"audio_reconstructed_{i}.wav" for i in range(3)]
