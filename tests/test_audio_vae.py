"""The audio VAE and generation: the KL term, reparameterisation, the probabilistic-PCA start, the KL warm-up,
seeded generation and its outputs, checkpoint kinds, the Frechet audio distance and its embeddings, and the
memorisation distance."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from audiogen.checkpoint import load_checkpoint
from audiogen.clips import MelClips
from audiogen.data import Recording
from audiogen.fad import (AisfxEmbedding, AisfxNet, MelFrameEmbedding, VGGish, VggishEmbedding, frechet_distance,
                          load_aisfx_weights, aisfx_weights_path, vggish_mel_matrix)
from audiogen.generate import ORACLE_ROW, nearest_window_distances, sample_prior
from audiogen.model import AudioAutoencoder, gaussian_kl, reparameterize
from audiogen.trainer import AudioTrainer, CosineSchedule, KlWeight
from audiogen.transform import LogMelTransform, compute_normalization
from conftest import ROOT
from test_audio import INFER_TINY, TINY, run_cli

CLIP = 80_000


def test_kl_matches_the_closed_form_of_torch_distributions():
    torch.manual_seed(0)
    mean, log_variance = torch.randn(3, 5), torch.randn(3, 5)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * log_variance).exp()),
                                                 torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(gaussian_kl(mean, log_variance), expected)
    assert gaussian_kl(torch.zeros(4), torch.zeros(4)).abs().max() == 0  # the prior itself costs nothing
    # by hand: mean 1, variance e -> (1 + e - 1 - 1) / 2
    assert gaussian_kl(torch.tensor([1.0]), torch.tensor([1.0])).item() == pytest.approx((math.e - 1) / 2)


def test_reparameterisation_passes_gradients_to_mean_and_log_variance():
    mean = torch.tensor([0.5, -1.0], requires_grad=True)
    log_variance = torch.tensor([0.0, math.log(4.0)], requires_grad=True)
    torch.manual_seed(3)
    z = reparameterize(mean, log_variance)
    torch.manual_seed(3)
    eps = torch.randn(2)
    torch.testing.assert_close(z.detach(), mean.detach() + torch.tensor([1.0, 2.0]) * eps)
    z.sum().backward()
    torch.testing.assert_close(mean.grad, torch.ones(2))
    torch.testing.assert_close(log_variance.grad, 0.5 * torch.tensor([1.0, 2.0]) * eps)  # dz/dlogvar = sigma eps / 2


def low_rank_log_mels(n_mels=16, frames=8000):
    torch.manual_seed(0)
    sources = torch.randn(4, frames)
    sources = sources + torch.roll(sources, 1, dims=1)
    return torch.randn(n_mels, 4) @ sources + 0.3 * torch.randn(n_mels, frames) + 2.0


def test_the_vae_starts_as_probabilistic_pca_with_unit_variance_latents():
    """Tipping & Bishop's ML solution: over the training patches each latent channel's posterior-mean variance
    plus its posterior variance is 1 (the prior's), and decoding the mean gives the PCA reconstruction
    shrunk by (eigenvalue - noise) / eigenvalue per direction."""
    log_mels = low_rank_log_mels()
    model = AudioAutoencoder(n_mels=16, latent_dim=6, hidden=16, time_downsample=2, variational=True)
    model.set_normalization(*compute_normalization(log_mels))
    model.init_pca(log_mels)
    clips = model.normalize(log_mels)[:, :256 * 30].reshape(16, 30, 256).permute(1, 0, 2)
    with torch.no_grad():
        mean, log_variance = model.posterior(clips)
    per_channel = mean.transpose(0, 1).flatten(1).var(dim=1) + log_variance.exp().mean(dim=(0, 2))
    torch.testing.assert_close(per_channel, torch.ones(6), atol=0.05, rtol=0)
    assert (log_variance.std(dim=(0, 2)) < 1e-6).all()  # the deep path starts at zero: a constant variance
    patches = model.normalize(log_mels).reshape(16, -1, 2).permute(1, 0, 2).reshape(-1, 32).double()
    eigenvalues, vectors = torch.linalg.eigh(torch.cov(patches.T))
    eigenvalues, vectors = eigenvalues.flip(0), vectors.flip(1)
    noise = eigenvalues[6:].mean()
    shrink = (eigenvalues[:6] - noise) / eigenvalues[:6]
    centred = patches - patches.mean(0)
    expected = (centred @ vectors[:, :6]) * shrink @ vectors[:, :6].T + patches.mean(0)
    model.eval()
    with torch.no_grad():
        out = model(clips)[0]
    got = out.reshape(30, 16, 128, 2).permute(0, 2, 1, 3).reshape(-1, 32).double()
    torch.testing.assert_close(got, expected[:len(got)], atol=2e-2, rtol=0)


def test_the_log_variance_is_capped_smoothly_at_the_priors():
    model = AudioAutoencoder(n_mels=16, latent_dim=4, hidden=16, variational=True, pca_path=False)
    with torch.no_grad():
        model.encoder[-1].bias[4:] = torch.tensor([-40.0, -3.0, 0.0, 60.0])
        model.encoder[-1].weight.zero_()
    _, log_variance = model.posterior(torch.randn(1, 16, 32))
    got = log_variance[0, :, 0]
    assert got[0].item() == pytest.approx(-40.0) and got[1].item() == pytest.approx(-3.0486, abs=1e-3)
    assert got[2].item() == pytest.approx(-math.log(2)) and -1e-6 < got[3].item() <= 0


def test_training_mode_samples_the_posterior_and_eval_decodes_its_mean():
    model = AudioAutoencoder(n_mels=16, latent_dim=4, hidden=16, variational=True)
    x = torch.randn(2, 16, 32)
    model.eval()
    first, kl = model(x)
    assert torch.equal(first, model(x)[0]) and kl.item() > 0
    model.train()
    torch.manual_seed(0)
    a = model(x)[0]
    torch.manual_seed(1)
    assert not torch.equal(a, model(x)[0])
    plain = AudioAutoencoder(n_mels=16, latent_dim=4, hidden=16)
    assert plain(x)[1].item() == 0 and plain.encoder[-1].out_channels == 4
    assert model.encoder[-1].out_channels == 8  # mean and log-variance


def test_kl_weight_warms_up_linearly_and_the_trainer_uses_it():
    weight = KlWeight(0.5, warmup_steps=4)
    assert [weight(s) for s in range(6)] == [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    assert KlWeight(0.5, 0)(0) == 0.5
    torch.manual_seed(0)
    batch = torch.randn(4, 16, 32) + 1.0
    losses = {}
    for w in (0.0, 50.0):
        torch.manual_seed(0)
        model = AudioAutoencoder(n_mels=16, latent_dim=4, hidden=16, variational=True, pca_path=False)
        trainer = AudioTrainer(model, torch.device("cpu"), CosineSchedule(3e-3, 60), kl_weight=KlWeight(w, 0))
        rows = [trainer.train_step(batch) for _ in range(60)]
        losses[w] = rows[-1]
        assert rows[0].shape == (2,)
    assert losses[50.0][1] < 0.5 * losses[0.0][1]  # a heavy KL weight squeezes the code toward the prior


def test_prior_samples_are_seeded_and_a_larger_count_only_adds_clips():
    model = AudioAutoencoder(n_mels=16, latent_dim=4, hidden=16, time_downsample=8, variational=True)
    a = sample_prior(model, 3, 256, seed=7)
    assert a.shape == (3, 4, 32)
    torch.testing.assert_close(sample_prior(model, 5, 256, seed=7)[:3], a, rtol=0, atol=0)
    assert not torch.equal(sample_prior(model, 3, 256, seed=8), a)


# --- Frechet audio distance ------------------------------------------------------------------

def test_frechet_distance_of_gaussians_matches_the_formula():
    torch.manual_seed(0)
    a = torch.randn(20_000, 3, dtype=torch.float64)
    b = torch.randn(20_000, 3, dtype=torch.float64) * 2 + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    # ||mu||^2 + 3 * (1 + 4 - 2 * 2) = 1 + 3
    assert frechet_distance(b, a) == pytest.approx(4.0, rel=0.05)
    assert abs(frechet_distance(a, a)) < 1e-6
    overflowed = b.clone()
    overflowed[3, 1] = math.nan  # a sample whose audio overflowed: inf, not a crash in the matrix square root
    assert frechet_distance(overflowed, a) == math.inf


def test_vggish_follows_the_standard_framing_with_any_weights():
    mel = vggish_mel_matrix()
    assert mel.shape == (257, 64) and mel[0].abs().sum() == 0 and (mel >= 0).all()
    assert (mel.sum(0) > 0).all()  # every band catches at least one FFT bin
    # bin centre of band 0 near 125 Hz's mel, band 63's near 7500 Hz's: the peaks rise monotonically
    assert (mel.argmax(0).diff() >= 0).all()
    torch.manual_seed(0)
    embedding = VggishEmbedding(weights=VGGish().state_dict())
    waves = 0.1 * torch.randn(2, CLIP)
    features = embedding(waves, 16_000)
    frames = 1 + (CLIP - 400) // 160  # 498 frames of 25 ms every 10 ms -> 5 examples of 96
    assert embedding.frames(waves, 16_000).shape == (2, frames, 64)
    assert features.shape == (2 * (frames // 96), 128) and (features >= 0).all()


@pytest.mark.skipif(importlib.util.find_spec("aisfx") is None,
                    reason="the aisfx wheel (pretrained weights) is not installed: make installs it")
def test_aisfx_embedding_loads_its_pretrained_weights_and_blocks_clips():
    weights = load_aisfx_weights(aisfx_weights_path())
    assert len(weights) == 4 * 12 and weights["conv_block4.conv2.weight"].shape == (512, 512, 3, 3)
    AisfxNet().load_state_dict(weights)  # strict: every name and shape matches
    embedding = AisfxEmbedding(weights=AisfxNet().state_dict())
    waves = 0.1 * torch.randn(2, CLIP)
    frames = embedding.frames(waves, 16_000)
    assert frames.shape == (2, 1 + 220_500 // 1024, 96) and frames.min() >= 0
    assert embedding(waves, 16_000).shape == (2 * 3, 512)  # 216 frames: blocks at 0, 50, 100
    # peak normalisation: a quieter copy embeds the same
    torch.testing.assert_close(embedding(0.5 * waves, 16_000), embedding(waves, 16_000), atol=1e-4, rtol=1e-4)


def test_mel_frame_embedding_is_the_models_own_transform():
    transform = LogMelTransform()
    waves = 0.1 * torch.randn(2, CLIP)
    features = MelFrameEmbedding(transform)(waves, 16_000)
    assert features.shape == (2 * 256, 128)
    torch.testing.assert_close(features[:256].float(), transform(waves)[0].T)


# --- memorisation ---------------------------------------------------------------------------

def test_nearest_window_distance_finds_a_copied_training_window():
    transform = LogMelTransform(n_mels=16)
    torch.manual_seed(0)
    recordings = [Recording(f"r{i}", "", "file", "mixture", torch.randn(16, 600).half(), [0]) for i in range(2)]
    corpus = MelClips(recordings, transform)
    model = AudioAutoencoder(n_mels=16, latent_dim=4, hidden=16)
    copy = recordings[1].log_mel[:, 160:416].float()[None]          # a crop at a multiple of the hop
    shifted = recordings[1].log_mel[:, 168:424].float()[None]       # between two hops
    fresh = torch.randn(1, 16, 256)
    d = nearest_window_distances(torch.cat([copy, shifted, fresh]), corpus, model, hop=16)
    assert d[0] < 1e-3 and d[1] > 0.5 and d[2] > 1.0


# --- the command line -------------------------------------------------------------------------

VAE_TINY = ["--model", "vae", "--latent_dim", "8", "--time_downsample", "8", "--kl_warmup_steps", "4", *TINY[:2],
            *TINY[6:]]  # TINY without its --latent_dim


@pytest.fixture(scope="module")
def vae_run(music_split, music_other, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vae_run")
    train = run_cli(["--epochs", "2", "--audio_dir", str(music_split), *VAE_TINY, "--hidden", "16",
                     "--checkpoint", str(tmp / "vae.pt"), "--results_dir", str(tmp / "train"),
                     "--cache_dir", str(tmp / "cache")])
    assert train.returncode == 0, train.stderr
    return tmp, train.stdout


def generate(tmp, out, *extra):
    return run_cli(["--mode", "generate", "--checkpoint", str(tmp / "vae.pt"), "--results_dir", str(tmp / out),
                    "--cache_dir", str(tmp / "cache"), "--griffin_lim_iters", "4", "--device", "cpu", *extra])


def test_vae_trains_and_its_checkpoint_says_so(vae_run):
    tmp, stdout = vae_run
    state = load_checkpoint(tmp / "vae.pt")
    assert state["kind"] == "vae" and state["model_config"]["variational"] is True
    assert state["model_config"]["latent_dim"] == 8 and state["kl_weight"] == {"weight": 0.1, "warmup_steps": 4}
    history = state["history"]
    assert "Training the VAE (KL weight 0.1, warm-up 4 steps)" in stdout
    assert history[-1]["train"]["kl_weight"] == 0.1 and history[0]["train"]["kl_per_clip"] > 0
    assert history[0]["train"]["kl_weight"] == 0.1  # 4 steps per epoch: the warm-up ends with epoch 1


def test_generate_writes_seeded_clips_a_grid_and_scores(vae_run, music_other):
    tmp, _ = vae_run
    result = generate(tmp, "gen", "--num_samples", "3", "--seed", "5", "--audio_dir", str(music_other),
                      "--fad_embedding", "mel-frames")
    assert result.returncode == 0, result.stderr
    out = tmp / "gen"
    clips = [sf.read(out / f"generated_{i:03d}.wav") for i in range(3)]
    assert all(rate == 16_000 and audio.shape == (CLIP,) and np.abs(audio).max() <= 1.0 for audio, rate in clips)
    assert (out / "generated_spectrograms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())["generate"]
    assert metrics["latent_shape"] == [8, 32] and metrics["seed"] == 5 and len(metrics["samples"]) == 3
    scores = metrics["scores"]
    # music_other: 2 files x 2 windows -> two disjoint halves of 2 real clips
    assert scores["reference_clips"] == 2 and set(scores["frechet"]) == {
        "real music (floor)", ORACLE_ROW, "generated", "shaped noise"}
    assert all(math.isfinite(row["mel-frames"]) for row in scores["frechet"].values())
    memo = metrics["memorisation"]
    assert memo["samples"]["n"] == 3 and memo["unseen_real"]["n"] == 2 and memo["samples"]["min"] > 0
    again = generate(tmp, "gen_again", "--num_samples", "2", "--seed", "5")
    assert again.returncode == 0, again.stderr
    for i in range(2):  # the same seed gives the same clips; a smaller count the first ones
        assert (tmp / "gen_again" / f"generated_{i:03d}.wav").read_bytes() == (out / f"generated_{i:03d}.wav").read_bytes()
    other = generate(tmp, "gen_other", "--num_samples", "1", "--seed", "6")
    assert other.returncode == 0, other.stderr
    assert (tmp / "gen_other" / "generated_000.wav").read_bytes() != (out / "generated_000.wav").read_bytes()


def test_generate_refuses_a_plain_autoencoder_and_kinds_do_not_mix(vae_run, music_split, tmp_path):
    tmp, _ = vae_run
    ae = run_cli(["--epochs", "1", "--audio_dir", str(music_split), *TINY, "--checkpoint", str(tmp_path / "ae.pt"),
                  "--results_dir", str(tmp_path / "r"), "--cache_dir", str(tmp / "cache"), "--audio_eval_clips", "0"])
    assert ae.returncode == 0, ae.stderr
    refused = run_cli(["--mode", "generate", "--checkpoint", str(tmp_path / "ae.pt"), "--device", "cpu",
                       "--results_dir", str(tmp_path / "g")])
    assert refused.returncode == 2 and "is a plain autoencoder (kind 'ae')" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    mixed = run_cli(["--resume", "--epochs", "3", "--audio_dir", str(music_split), *TINY, "--checkpoint",
                     str(tmp / "vae.pt"), "--results_dir", str(tmp_path / "r2"), "--cache_dir", str(tmp / "cache")])
    assert mixed.returncode == 2 and "--model ae cannot resume" in mixed.stderr
    assert len(mixed.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, expected", [
    (["--mode", "generate", "--num_samples", "0"], "--num_samples: must be in [1, 1024]"),
    (["--mode", "generate", "--fad_embedding", "clap"], "invalid choice: 'clap'"),
    (["--mode", "generate", "--fad_weights", "/no/such/file"], "--fad_weights is the VGGish file"),
    (["--mode", "generate", "--fad_embedding", "vggish", "--fad_weights", "/no/such/file"], "no such file"),
    (["--mode", "generate", "--epochs", "3"], "--epochs applies to --mode train"),
    (["--mode", "infer", "--num_samples", "3"], "--num_samples applies to --mode generate"),
    (["--model", "vae", "--kl_weight", "-1"], "--kl_weight: must be in [0.0, 100.0]"),
    (["--mode", "generate", "--model", "vae"], "--model applies to --mode benchmark or export or train"),
])
def test_bad_generate_arguments(flags, expected):
    result = run_cli(flags)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_vae_has_its_own_default_paths_and_latent(ag):
    vae = ag.parse_args(["--model", "vae", "--audio_dir", str(ROOT)])
    assert vae.checkpoint.name == "audio_vae.pt" and (vae.latent_dim, vae.time_downsample) == (64, 8)
    ae = ag.parse_args(["--audio_dir", str(ROOT)])
    assert ae.checkpoint.name == "audio_autoencoder.pt" and (ae.latent_dim, ae.time_downsample) == (128, 2)
    assert ag.parse_args(["--mode", "generate"]).checkpoint.name == "audio_vae.pt"
    assert ag.parse_args(["--model", "vae", "--latent_dim", "32", "--audio_dir", str(ROOT)]).latent_dim == 32


def test_the_generation_table_scores_several_checkpoints_against_one_reference(vae_run, music_other):
    tmp, _ = vae_run
    out = tmp / "table.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "audio_generation_table.py"), "--audio_dir", str(music_other),
         "--checkpoints", str(tmp / "vae.pt"), "--num_samples", "2", "--griffin_lim_iters", "4",
         "--fad_embedding", "mel-frames", "--cache_dir", str(tmp / "cache"), "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    table = json.loads(out.read_text())
    assert list(table["frechet"]) == ["real music (floor)", ORACLE_ROW,
                                      "vae (vae, 128x, N(0, I) latents)", "shaped noise"]
    assert table["reference_clips"] == 2 and all(n == 2 for n in table["clips"].values())
    assert "Frechet distances to 2 real clips" in result.stdout


def test_generate_wrapper_passes_its_variables(vae_run, tmp_path):
    tmp, _ = vae_run
    env = {**os.environ, "PYTHON": sys.executable, "CHECKPOINT": str(tmp / "vae.pt"), "NUM_SAMPLES": "2",
           "SEED": "4", "RESULTS_DIR": "r", "GRIFFIN_LIM_ITERS": "2", "DEVICE": "cpu", "CACHE_DIR": str(tmp / "cache")}
    result = subprocess.run([str(ROOT / "audio_gen" / "generate.sh")], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())["generate"]
    assert metrics["seed"] == 4 and metrics["griffin_lim_iters"] == 2
    assert sorted(p.name for p in (tmp_path / "r").glob("generated_*.wav")) == ["generated_000.wav", "generated_001.wav"]


def test_version_2_checkpoints_load_as_plain_autoencoders_and_infer(vae_run, music_split, tmp_path):
    """A checkpoint written before the VAE (version 2: no kind, no KL weight, no 'variational') still infers."""
    tmp, _ = vae_run
    ae = run_cli(["--epochs", "1", "--audio_dir", str(music_split), *TINY, "--checkpoint", str(tmp_path / "ae.pt"),
                  "--results_dir", str(tmp_path / "r"), "--cache_dir", str(tmp / "cache"), "--audio_eval_clips", "0"])
    assert ae.returncode == 0, ae.stderr
    state = torch.load(tmp_path / "ae.pt", weights_only=True)
    state["version"] = 2
    for key in ("kind", "kl_weight"):
        del state[key]
    del state["model_config"]["variational"]
    torch.save(state, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["kind"] == "ae"
    infer = run_cli(["--mode", "infer", "--checkpoint", str(tmp_path / "old.pt"), "--audio_dir", str(music_split),
                     "--results_dir", str(tmp_path / "i"), "--cache_dir", str(tmp / "cache"), *INFER_TINY])
    assert infer.returncode == 0, infer.stderr
    assert json.loads((tmp_path / "i" / "metrics.json").read_text())["infer"]["test"]["clips"] == 4
