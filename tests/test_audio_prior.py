"""The learned prior over the VAE's latents: the diffusion math against closed forms, the denoiser's start,
training that learns, exact resume, seeded sampling through --mode generate, and the checks that tie a
prior to its VAE."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from audiogen.checkpoint import load_prior_checkpoint, prior_from_checkpoint, weights_fingerprint
from audiogen.generate import ORACLE_ROW
from audiogen.prior import LatentDiffusion, LatentPrior, SamplerConfig, sample_latents, timestep_embedding
from audiogen.train_prior import PriorTrainer
from conftest import ROOT
from test_audio import run_cli
from test_audio_vae import generate, vae_run  # noqa: F401  (the module's trained tiny VAE)


# --- the math ---------------------------------------------------------------------------------

def test_cosine_schedule_matches_its_formula():
    diffusion = LatentDiffusion(1000)
    abar = diffusion.alphas_cumprod
    t = torch.arange(1, 1001, dtype=torch.float64)
    f = lambda u: torch.cos((u / 1000 + 0.008) / 1.008 * torch.pi / 2) ** 2  # noqa: E731
    # Nichol & Dhariwal eq. 17: abar_t = f(t) / f(0), away from the last steps where beta is clipped at 0.999
    torch.testing.assert_close(abar[:990], (f(t) / f(torch.zeros(1, dtype=torch.float64)))[:990], rtol=1e-9, atol=1e-12)
    assert torch.all(abar[1:] < abar[:-1]) and abar[0] > 0.9999 and abar[-1] < 1e-6


def test_the_velocity_target_recovers_x0_and_eps():
    diffusion = LatentDiffusion(1000)
    z0, noise, t = torch.randn(6, 3, 4), torch.randn(6, 3, 4), torch.tensor([0, 1, 250, 500, 998, 999])
    z_t, v = diffusion.q_sample(z0, t, noise), diffusion.velocity(z0, t, noise)
    abar = diffusion.alphas_cumprod[t].float().view(-1, 1, 1)
    torch.testing.assert_close(abar.sqrt() * z_t - (1 - abar).sqrt() * v, z0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((1 - abar).sqrt() * z_t + abar.sqrt() * v, noise, rtol=1e-5, atol=1e-5)


def test_q_sample_has_the_forward_process_moments():
    diffusion = LatentDiffusion(100)
    z0 = torch.full((20_000, 1, 1), 2.0)
    t = torch.full((20_000,), 40)
    z_t = diffusion.q_sample(z0, t, torch.randn(z0.shape, generator=torch.Generator().manual_seed(0)))
    abar = float(diffusion.alphas_cumprod[40])
    assert abs(z_t.mean() - 2 * abar ** 0.5) < 0.02 and abs(z_t.var() - (1 - abar)) < 0.02


def optimal_v_for_gaussian_data(diffusion, std):
    """The exact v_theta for data N(0, std^2): E[v | z_t] = sqrt(abar) E[eps | z_t] - sqrt(1 - abar) E[z_0 | z_t]
    = sqrt(abar (1 - abar)) (1 - std^2) z_t / (abar std^2 + 1 - abar)."""
    def model(z_t, t):
        abar = diffusion.alphas_cumprod[t].float().view(-1, 1, 1)
        return (abar * (1 - abar)).sqrt() * (1 - std ** 2) * z_t / (abar * std ** 2 + 1 - abar)
    return model


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_the_exact_denoiser_samples_the_data_distribution(eta):
    """With eps_theta exact, DDIM (any eta) over all T steps turns N(0, I) into the data's distribution, here
    N(0, 0.3^2); fewer steps add a discretisation error that shrinks as the steps grow (measured: std 0.271 at
    50 steps, eta 1; 0.295 at 100 steps, eta 0)."""
    diffusion = LatentDiffusion(1000)
    noise = torch.randn(4000, 2, 3, generator=torch.Generator().manual_seed(1))
    model = optimal_v_for_gaussian_data(diffusion, 0.3)
    errors = [abs(float(diffusion.sample(model, noise, SamplerConfig(steps, eta), torch.Generator().manual_seed(2))
                        .std()) - 0.3) for steps in (50, 250, 1000)]
    assert errors[2] < 0.005 and errors[0] > errors[1] > errors[2], errors


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_2m_solves_the_probability_flow_ode_of_gaussian_data(steps):
    """For data N(0, s^2) the probability-flow ODE keeps z_t / sqrt(abar_t s^2 + 1 - abar_t) fixed, so z_T
    maps exactly to s z_T / sqrt(abar_T s^2 + 1 - abar_T): an answer computed without any solver. DPM-Solver++(2M)
    lands there several times closer than deterministic DDIM in as many evaluations (measured at s = 0.3: mean
    error 0.0069 against 0.054 at 10 steps, 0.0038 against 0.027 at 20)."""
    diffusion = LatentDiffusion(1000)
    s = 0.3
    noise = torch.randn(2000, 2, 3, generator=torch.Generator().manual_seed(1))
    abar_T = float(diffusion.alphas_cumprod[-1])
    exact = s * noise / (abar_T * s ** 2 + 1 - abar_T) ** 0.5
    model = optimal_v_for_gaussian_data(diffusion, s)
    errors = {name: float((diffusion.sample(model, noise, SamplerConfig(steps, sampler=name)) - exact).abs().mean())
              for name in ("ddim", "dpm++2m")}
    assert errors["dpm++2m"] < 0.2 * errors["ddim"], errors
    assert errors["dpm++2m"] < 1e-2, errors


def test_log_snr_timesteps_are_distinct_and_span_the_chain():
    diffusion = LatentDiffusion(1000)
    for steps in (1, 2, 10, 50, 1000):
        times = diffusion.log_snr_timesteps(steps)
        assert len(times) == steps and times[0] == 999 and torch.all(times[1:] < times[:-1])
        assert steps == 1 or times[-1] == 0
    lam = lambda t: 0.5 * (diffusion.alphas_cumprod[t].log() - (1 - diffusion.alphas_cumprod[t]).log())  # noqa: E731
    gaps = lam(diffusion.log_snr_timesteps(10)[1:]).diff()
    assert float(gaps.std() / gaps.mean().abs()) < 0.2  # after the first step: even in log-SNR, not in t


def test_ddim_with_the_exact_denoiser_of_one_point_returns_that_point():
    diffusion = LatentDiffusion(1000)
    point = torch.tensor([[[1.5, -0.5]]])

    def model(z_t, t):  # data = one point z*: eps = (z_t - sqrt(abar) z*) / sqrt(1 - abar), v from both
        abar = diffusion.alphas_cumprod[t].float().view(-1, 1, 1)
        return abar.sqrt() * (z_t - abar.sqrt() * point) / (1 - abar).sqrt() - (1 - abar).sqrt() * point
    for steps in (1, 10, 50):  # one step too: z_0 from v divides by nothing
        out = diffusion.sample(model, torch.randn(5, 1, 2), SamplerConfig(steps))
        torch.testing.assert_close(out, point.expand(5, 1, 2), rtol=1e-4, atol=1e-4)


def test_ddim_timesteps_run_from_the_last_step_to_zero():
    times = LatentDiffusion(1000).ddim_timesteps(50)
    assert len(times) == 50 and times[0] == 999 and times[-1] == 0 and torch.all(times[1:] < times[:-1])
    assert LatentDiffusion(10).ddim_timesteps(50).tolist() == list(range(9, -1, -1))  # never a step twice


def test_bad_sampler_settings_are_refused():
    for steps, eta in ((0, 0.0), (10, 1.5), (10, -0.1)):
        with pytest.raises(ValueError, match="bad sampler settings"):
            SamplerConfig(steps, eta)
    assert SamplerConfig(50).name == "ddim-50" and SamplerConfig(20, 0.5).name == "ddim-20 eta 0.5"
    assert SamplerConfig(10, sampler="dpm++2m").name == "dpm++2m-10"
    with pytest.raises(ValueError, match="bad sampler settings"):
        SamplerConfig(10, 0.5, "dpm++2m")  # deterministic: no eta
    with pytest.raises(ValueError, match="unknown sampler"):
        SamplerConfig(10, sampler="euler")


def test_the_denoiser_starts_predicting_zero_and_hears_the_whole_clip():
    """At the start v = 0, whose loss on unit-variance data is 1."""
    prior = LatentPrior(8, hidden=16, blocks=8)
    z, t = torch.randn(3, 8, 32), torch.tensor([0, 500, 999])
    assert prior(z, t).shape == (3, 8, 32) and torch.count_nonzero(prior(z, t)) == 0
    with torch.no_grad():  # give every layer weights, then poke frame 0: the last frame must feel it
        for p in prior.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    poked = z.clone()
    poked[:, :, 0] += 1.0
    assert torch.all((prior(poked, t) - prior(z, t))[:, :, -1].abs().sum(1) > 0)
    e = timestep_embedding(torch.tensor([0, 10]), 16)
    assert e.shape == (2, 16) and torch.equal(e[0], torch.cat([torch.ones(8), torch.zeros(8)]))


def test_the_clip_context_hears_the_clip_mean_at_unit_scale():
    """The blocks' FiLM gets mean_t(z_t) * sqrt(frames): N(0, 1) per channel in pure noise."""
    prior = LatentPrior(8, hidden=16, blocks=2)
    heard = []
    prior.denoiser.clip_mlp.register_forward_hook(lambda module, inputs, output: heard.append(inputs[0]))
    z = torch.randn(4096, 8, 32, generator=torch.Generator().manual_seed(0))
    prior(z, torch.full((4096,), 999))
    torch.testing.assert_close(heard[0], z.mean(dim=2) * 32 ** 0.5)
    assert abs(float(heard[0].std()) - 1) < 0.02
    plain = LatentPrior(8, hidden=16, blocks=2, clip_context=False)
    assert plain.denoiser.clip_mlp is None and plain.config["clip_context"] is False


def test_latent_statistics_standardise_and_invert():
    prior = LatentPrior(4, hidden=8, blocks=1)
    latents = torch.randn(50, 4, 16) * torch.tensor([1.0, 2.0, 0.5, 3.0])[:, None] + 5
    prior.set_statistics(latents)
    standard = prior.standardize(latents)
    torch.testing.assert_close(standard.mean(dim=(0, 2)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(standard.std(dim=(0, 2)), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(prior.unstandardize(standard), latents)


def test_sampling_is_seeded_and_clip_i_does_not_depend_on_the_count():
    torch.manual_seed(0)
    prior = LatentPrior(4, hidden=16, blocks=2, timesteps=100)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    for sampler in (SamplerConfig(5), SamplerConfig(5, eta=1.0)):
        three = sample_latents(prior, 3, 16, 7, sampler)
        assert torch.equal(sample_latents(prior, 1, 16, 7, sampler)[0], three[0])
        assert torch.equal(sample_latents(prior, 3, 16, 7, sampler), three)
        assert not torch.equal(sample_latents(prior, 1, 16, 8, sampler)[0], three[0])


class FrozenEncoder(torch.nn.Module):
    """A stand-in VAE whose posterior is exact: latents are the input's first channels, variance ~0."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mel_mean", torch.zeros(1))

    def normalize(self, x):
        return x

    def posterior(self, x):
        return x[:, :4], torch.full_like(x[:, :4], -30.0)


def test_the_prior_trainer_learns_structured_latents():
    """Latents that are one sine per clip with a random phase, the same in every channel: the loss must fall
    far below 1, which is what the best prediction scores when values are independent (for standardised
    Gaussian data the optimal v is 0), so only learning that structure gets there (measured: 0.19)."""
    torch.manual_seed(0)
    frames = torch.arange(16, dtype=torch.float32)

    def batch(n):
        phase = torch.rand(n, 1, 1) * 6.28
        return torch.sin(frames * 0.8 + phase).expand(n, 4, 16).contiguous()
    prior = LatentPrior(4, hidden=32, blocks=4, timesteps=100)
    prior.set_statistics(batch(256))
    from audiogen.trainer import CosineSchedule
    trainer = PriorTrainer(prior, FrozenEncoder(), torch.device("cpu"), CosineSchedule(3e-3, 300, 20), ema_decay=0.9)
    losses = [float(trainer.train_step(batch(64))[0]) for _ in range(300)]
    assert np.mean(losses[:10]) > 0.8 and np.mean(losses[-30:]) < 0.3, (np.mean(losses[:10]), np.mean(losses[-30:]))
    assert trainer.validation_loss(prior.standardize(batch(128)), seed=0) < 0.3


# --- the command line -------------------------------------------------------------------------

PRIOR_TINY = ["--prior_hidden", "16", "--prior_blocks", "2", "--batch_size", "2", "--warmup_steps", "2",
              "--device", "cpu"]


def train_prior(tmp, name, *extra):
    return run_cli(["--mode", "train_prior", "--checkpoint", str(tmp / "vae.pt"), "--prior", str(tmp / name),
                    "--results_dir", str(tmp / f"{name}_results"), "--cache_dir", str(tmp / "cache"), *PRIOR_TINY,
                    *extra])


@pytest.fixture(scope="module")
def prior_run(vae_run):  # noqa: F811
    tmp, _ = vae_run
    result = train_prior(tmp, "prior.pt", "--epochs", "2")
    assert result.returncode == 0, result.stderr
    return tmp, result.stdout


def test_train_prior_writes_a_checkpoint_tied_to_its_vae(prior_run):
    tmp, stdout = prior_run
    vae = torch.load(tmp / "vae.pt", weights_only=True)
    state = load_prior_checkpoint(tmp / "prior.pt", vae, tmp / "vae.pt")
    assert state["vae"]["fingerprint"] == weights_fingerprint(vae["model"]) and state["epoch"] == 2
    assert state["prior_config"] == {"latent_dim": 8, "hidden": 16, "blocks": 2, "clip_context": True,
                                     "timesteps": 1000}
    assert "denoiser.clip_mlp.0.weight" in state["ema"]
    assert [h["epoch"] for h in state["history"]] == [1, 2] and 0 < state["history"][-1]["valid_loss_ema"] < 2
    assert "over the (8, 32) latents of vae.pt" in stdout and "--mode generate --prior" in stdout
    assert (tmp / "prior.pt_results" / "prior_training.png").read_bytes()[:4] == b"\x89PNG"


def test_generate_with_the_learned_prior_is_seeded_and_named(prior_run):
    tmp, _ = prior_run
    prior = ["--prior", str(tmp / "prior.pt"), "--prior_steps", "4"]
    first = generate(tmp, "gp3", *prior, "--num_samples", "3", "--seed", "2")
    assert first.returncode == 0, first.stderr
    metrics = json.loads((tmp / "gp3" / "metrics.json").read_text())["generate"]
    assert metrics["prior"] == "learned prior prior.pt (epoch 2, ddim-4)" and len(metrics["samples"]) == 3
    one = generate(tmp, "gp1", *prior, "--num_samples", "1", "--seed", "2")
    gaussian = generate(tmp, "gn1", "--num_samples", "1", "--seed", "2")
    assert one.returncode == 0 and gaussian.returncode == 0, one.stderr + gaussian.stderr
    clip = (tmp / "gp3" / "generated_000.wav").read_bytes()
    assert (tmp / "gp1" / "generated_000.wav").read_bytes() == clip
    assert (tmp / "gn1" / "generated_000.wav").read_bytes() != clip  # the learned prior, not N(0, I)
    assert json.loads((tmp / "gn1" / "metrics.json").read_text())["generate"]["prior"] == "N(0, I)"
    solver = generate(tmp, "gd1", "--prior", str(tmp / "prior.pt"), "--prior_sampler", "dpm++2m", "--prior_steps",
                      "4", "--num_samples", "1", "--seed", "2")
    assert solver.returncode == 0, solver.stderr
    record = json.loads((tmp / "gd1" / "metrics.json").read_text())["generate"]
    assert record["prior"] == "learned prior prior.pt (epoch 2, dpm++2m-4)"
    assert (tmp / "gd1" / "generated_000.wav").read_bytes() != (tmp / "gp1" / "generated_000.wav").read_bytes()


def test_a_version_1_prior_without_clip_context_still_loads(prior_run, tmp_path):
    tmp, _ = prior_run
    state = torch.load(tmp / "prior.pt", weights_only=True)
    old = LatentPrior(8, hidden=16, blocks=2, clip_context=False)
    config = dict(old.config)
    del config["clip_context"]
    torch.save({**state, "version": 1, "prior_config": config, "ema": old.state_dict()}, tmp_path / "v1.pt")
    loaded = load_prior_checkpoint(tmp_path / "v1.pt")
    assert loaded["prior_config"]["clip_context"] is False
    z, t = torch.randn(1, 8, 32), torch.tensor([500])
    torch.testing.assert_close(prior_from_checkpoint(loaded, torch.device("cpu"))(z, t), old.eval()(z, t))


def test_a_prior_belongs_to_one_vae_and_needs_a_vae(prior_run, music_split, tmp_path):
    tmp, _ = prior_run
    other = run_cli(["--epochs", "1", "--audio_dir", str(music_split), "--model", "vae", "--latent_dim", "8",
                     "--hidden", "16", "--batch_size", "2", "--warmup_steps", "2", "--audio_eval_clips", "0",
                     "--device", "cpu", "--seed", "3", "--checkpoint", str(tmp_path / "other.pt"),
                     "--results_dir", str(tmp_path / "r"), "--cache_dir", str(tmp / "cache")])
    assert other.returncode == 0, other.stderr
    mismatch = run_cli(["--mode", "generate", "--checkpoint", str(tmp_path / "other.pt"), "--prior",
                        str(tmp / "prior.pt"), "--device", "cpu", "--results_dir", str(tmp_path / "g")])
    assert mismatch.returncode == 2 and "is the learned prior of another VAE" in mismatch.stderr
    assert len(mismatch.stderr.strip().splitlines()) == 1 and "Traceback" not in mismatch.stderr
    ae = run_cli(["--epochs", "1", "--audio_dir", str(music_split), "--latent_dim", "8", "--hidden", "16",
                  "--batch_size", "2", "--audio_eval_clips", "0", "--device", "cpu", "--checkpoint",
                  str(tmp_path / "ae.pt"), "--results_dir", str(tmp_path / "r"), "--cache_dir", str(tmp / "cache")])
    assert ae.returncode == 0, ae.stderr
    refused = run_cli(["--mode", "train_prior", "--checkpoint", str(tmp_path / "ae.pt"), "--prior",
                       str(tmp_path / "p.pt"), "--device", "cpu"])
    assert refused.returncode == 2 and "--mode train_prior needs a VAE" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_train_prior_resumes_at_the_exact_step_after_ctrl_c(ag, vae_run, tmp_path, monkeypatch):  # noqa: F811
    tmp, _ = vae_run
    common = ["--mode", "train_prior", "--checkpoint", str(tmp / "vae.pt"), "--cache_dir", str(tmp / "cache"),
              "--epochs", "2", *PRIOR_TINY]
    ag.main([*common, "--prior", str(tmp_path / "a.pt"), "--results_dir", str(tmp_path / "ra")])
    real_step = PriorTrainer.train_step

    def ctrl_c_at_step_6(trainer, batch):  # 4 steps per epoch: epoch 2, its second step
        loss = real_step(trainer, batch)
        if trainer.step == 6:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(PriorTrainer, "train_step", ctrl_c_at_step_6)
    b = ["--prior", str(tmp_path / "b.pt"), "--results_dir", str(tmp_path / "rb")]
    with pytest.raises(SystemExit, match="Stopped at epoch 2, step 2 of 4"):
        ag.main([*common, *b])
    monkeypatch.setattr(PriorTrainer, "train_step", real_step)
    interrupted = torch.load(tmp_path / "b.pt", weights_only=True)
    assert interrupted["epoch"] == 1 and interrupted["step"] == 6 and interrupted["partial_epoch"]["steps_done"] == 2
    ag.main([*common, "--resume", *b])
    a, b = torch.load(tmp_path / "a.pt", weights_only=True), torch.load(tmp_path / "b.pt", weights_only=True)
    assert b["epoch"] == 2 and b["step"] == 8 and b["partial_epoch"] is None
    for key in ("model", "ema"):
        for name in a[key]:
            torch.testing.assert_close(b[key][name], a[key][name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([h["train_loss"] for h in b["history"]], [h["train_loss"] for h in a["history"]],
                               rtol=1e-5)


@pytest.mark.parametrize("flags, expected", [
    (["--mode", "generate", "--prior", "/no/such/prior.pt"], "--prior /no/such/prior.pt: no such file"),
    (["--mode", "generate", "--prior_steps", "0"], "--prior_steps: must be in [1, 1000]"),
    (["--mode", "generate", "--prior_eta", "2"], "--prior_eta: must be in [0.0, 1.0]"),
    (["--mode", "generate", "--prior_sampler", "dpm++2m", "--prior_eta", "0.5"], "takes none"),
    (["--mode", "train_prior", "--prior_sampler", "dpm++2m"], "--prior_sampler applies to --mode generate"),
    (["--mode", "train_prior", "--prior_hidden", "20"], "must be a multiple of 8"),
    (["--mode", "train_prior", "--prior_clip_context", "2"], "--prior_clip_context: must be in [0, 1]"),
    (["--mode", "generate", "--prior_clip_context", "0"], "--prior_clip_context applies to --mode train_prior"),
    (["--mode", "train_prior", "--prior_steps", "5"], "--prior_steps applies to --mode generate"),
    (["--mode", "train_prior", "--audio_dir", "."], "--audio_dir applies to"),
    (["--mode", "train", "--prior_hidden", "64"], "--prior_hidden applies to --mode train_prior"),
    (["--mode", "infer", "--prior", "x.pt"], "--prior applies to --mode export or generate or train_prior"),
])
def test_bad_prior_arguments(flags, expected):
    result = run_cli(flags)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_train_prior_has_its_own_defaults(ag):
    args = ag.parse_args(["--mode", "train_prior"])
    assert args.checkpoint.name == "audio_vae.pt" and args.prior.name == "audio_prior.pt"
    assert (args.epochs, args.batch_size, args.learning_rate, args.warmup_steps) == (280, 64, 5e-4, 200)
    train = ag.parse_args(["--mode", "train", "--audio_dir", "."])
    assert (train.epochs, train.batch_size, train.learning_rate, train.warmup_steps) == (60, 16, 1e-3, 100)
    assert ag.parse_args(["--mode", "generate"]).prior is None


def test_the_wrappers_train_and_sample_a_prior(vae_run, tmp_path):  # noqa: F811
    tmp, _ = vae_run
    env = {**os.environ, "PYTHON": sys.executable, "CHECKPOINT": str(tmp / "vae.pt"), "PRIOR": str(tmp_path / "p.pt"),
           "EPOCHS": "1", "PRIOR_HIDDEN": "16", "PRIOR_BLOCKS": "1", "PRIOR_CLIP_CONTEXT": "0", "BATCH_SIZE": "2",
           "DEVICE": "cpu", "CACHE_DIR": str(tmp / "cache"), "RESULTS_DIR": str(tmp_path / "r")}
    trained = subprocess.run([str(ROOT / "audio_gen" / "train_prior.sh")], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    state = torch.load(tmp_path / "p.pt", weights_only=True)
    assert state["epoch"] == 1 and state["prior_config"]["hidden"] == 16
    assert (state["prior_config"]["blocks"], state["prior_config"]["clip_context"]) == (1, False)
    env.update(PRIOR_STEPS="3", PRIOR_ETA="0.5", NUM_SAMPLES="1", GRIFFIN_LIM_ITERS="2")
    sampled = subprocess.run([str(ROOT / "audio_gen" / "generate.sh")], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
    assert sampled.returncode == 0, sampled.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())["generate"]
    assert metrics["prior"] == "learned prior p.pt (epoch 1, ddim-3 eta 0.5)" and len(metrics["samples"]) == 1


def test_the_generation_table_adds_a_row_for_a_learned_prior(prior_run, music_other):
    tmp, _ = prior_run
    out = tmp / "table_prior.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "audio_generation_table.py"), "--audio_dir", str(music_other),
         "--checkpoints", str(tmp / "vae.pt"), "--priors", str(tmp / "prior.pt"), "--prior_steps", "3",
         "--num_samples", "2", "--griffin_lim_iters", "4", "--fad_embedding", "mel-frames", "--training_rows",
         "--cache_dir", str(tmp / "cache"), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    table = json.loads(out.read_text())
    assert list(table["frechet"]) == ["real music (floor)", ORACLE_ROW, "training music (real)",
                                      "vae decoding z ~ q(z|x) of them", "vae (vae, 128x, N(0, I) latents)",
                                      "vae + learned prior prior (ddim-3)", "shaped noise"]
    assert set(table["clips"].values()) == {2} and table["training_rows"] is True
    assert table["priors"] == [str(tmp / "prior.pt")] and table["prior_sampler"] == "ddim-3"
