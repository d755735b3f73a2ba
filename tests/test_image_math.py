"""The diffusion math of image_gen.py against the DDPM / DDIM formulas, computed independently."""
import math

import pytest
import torch


@pytest.fixture(scope="module")
def trainer(ig):
    torch.manual_seed(0)
    return ig.DiffusionTrainer(ig.DiffusionModel(base_channels=8), torch.device("cpu"))


@pytest.fixture(scope="module")
def short_trainer(ig):
    """50 timesteps: sampling tests over the whole chain stay fast."""
    torch.manual_seed(0)
    return ig.DiffusionTrainer(ig.DiffusionModel(base_channels=8), torch.device("cpu"),
                               num_timesteps=50, beta_start=1e-3, beta_end=0.2)


def reference_schedule(T=1000, beta_start=1e-4, beta_end=0.02):
    """Plain-Python float64 DDPM quantities (Ho et al. 2020, eq. 4 and 6-7)."""
    betas = [beta_start + (beta_end - beta_start) * i / (T - 1) for i in range(T)]
    abar, prod = [], 1.0
    for b in betas:
        prod *= 1 - b
        abar.append(prod)
    abar_prev = [1.0] + abar[:-1]
    var = [betas[t] * (1 - abar_prev[t]) / (1 - abar[t]) for t in range(T)]
    coef1 = [betas[t] * math.sqrt(abar_prev[t]) / (1 - abar[t]) for t in range(T)]
    coef2 = [(1 - abar_prev[t]) * math.sqrt(1 - betas[t]) / (1 - abar[t]) for t in range(T)]
    return betas, abar, var, coef1, coef2


def test_schedule_matches_ddpm_formulas(trainer):
    betas, abar, var, coef1, coef2 = reference_schedule()
    assert trainer.betas.shape == (1000,)
    assert trainer.betas[0].item() == pytest.approx(1e-4)
    assert trainer.betas[-1].item() == pytest.approx(0.02)
    for name, ref in (("betas", betas), ("alphas_cumprod", abar), ("posterior_variance", var),
                      ("posterior_mean_coef1", coef1), ("posterior_mean_coef2", coef2)):
        ours = getattr(trainer, name).double()
        torch.testing.assert_close(ours, torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-7, msg=name)
    # alpha-bar_T is nearly 0: x_T is (almost) pure noise, which sampling assumes.
    assert trainer.alphas_cumprod[-1].item() < 1e-4
    # beta-tilde_0 = 0, and its log is clipped to beta-tilde_1 rather than -inf.
    assert trainer.posterior_variance[0].item() == 0.0
    assert torch.isfinite(trainer.posterior_log_variance_clipped).all()


def test_posterior_mean_is_exact_at_x0(trainer):
    """mu~(x_t, x_0) with x_t = q_sample(x_0, eps=0) equals sqrt(abar_{t-1}) x_0, as eq. 7 implies."""
    x0 = torch.rand(4, 1, 28, 28) * 2 - 1
    t = torch.tensor([1, 10, 500, 999])
    xt = trainer.q_sample(x0, t, torch.zeros_like(x0))
    mean = trainer._gather(trainer.posterior_mean_coef1, t) * x0 + trainer._gather(trainer.posterior_mean_coef2, t) * xt
    expected = trainer._gather(trainer.alphas_cumprod_prev, t).sqrt() * x0
    torch.testing.assert_close(mean, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("t", [0, 100, 999])
def test_q_sample_statistics(trainer, t):
    torch.manual_seed(1)
    x0 = torch.full((4096, 1, 28, 28), 0.5)
    xt = trainer.q_sample(x0, torch.full((4096,), t), torch.randn_like(x0))
    abar = trainer.alphas_cumprod[t].item()
    assert xt.mean().item() == pytest.approx(math.sqrt(abar) * 0.5, abs=3e-3)
    assert xt.std().item() == pytest.approx(math.sqrt(1 - abar), rel=3e-3, abs=1e-4)


def test_x0_prediction_inverts_q_sample(trainer):
    x0 = torch.rand(3, 1, 28, 28) * 1.8 - 0.9
    eps = torch.randn_like(x0)
    t = torch.tensor([5, 300, 900])
    torch.testing.assert_close(trainer._predict_x0(trainer.q_sample(x0, t, eps), t, eps), x0, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_model_shapes(ig, batch):
    model = ig.DiffusionModel(base_channels=8)
    x = torch.randn(batch, 1, 28, 28)
    assert model(x, torch.randint(0, 1000, (batch,))).shape == (batch, 1, 28, 28)


def test_positional_encoding(ig):
    enc = ig.PositionalEncoding(16)
    emb = enc(torch.tensor([0, 1, 999]))
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(8), torch.ones(8)]))  # sin 0, cos 0
    assert emb.abs().max() <= 1.0
    assert not torch.allclose(emb[1], emb[2])


def test_timestep_embedding_reaches_every_block(ig):
    model = ig.DiffusionModel(base_channels=8)
    blocks = [m for m in model.modules() if isinstance(m, ig.ResBlock)]
    assert len(blocks) == 6 and all(isinstance(b.emb, torch.nn.Linear) for b in blocks)


def test_seeded_sampling_is_reproducible(short_trainer):
    a = short_trainer.sample(3, "ddpm", seed=7)
    b = short_trainer.sample(3, "ddpm", seed=7)
    c = short_trainer.sample(3, "ddpm", seed=8)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert a.shape == (3, 1, 28, 28) and a.min() >= -1 and a.max() <= 1


def test_ddim_eta0_is_deterministic(short_trainer):
    a = short_trainer.sample(3, "ddim", steps=10, eta=0.0, seed=3)
    torch.manual_seed(123)  # global RNG state must not matter
    b = short_trainer.sample(3, "ddim", steps=10, eta=0.0, seed=3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # with eta=0, the map from x_T to x_0 uses no other noise: same initial noise -> same image
    x_T = short_trainer._initial_noise(3, torch.Generator().manual_seed(3))
    assert torch.equal(x_T, short_trainer._initial_noise(3, torch.Generator().manual_seed(3)))
    noisy = short_trainer.sample(3, "ddim", steps=10, eta=1.0, seed=3)
    assert not torch.allclose(a, noisy)


def test_ddim_with_eta1_over_all_steps_is_ddpm(short_trainer):
    """Song et al. 2021: eta = 1 over every timestep reproduces DDPM's ancestral sampler exactly."""
    ddpm = short_trainer.sample(4, "ddpm", seed=11)
    ddim = short_trainer.sample(4, "ddim", steps=50, eta=1.0, seed=11)
    torch.testing.assert_close(ddim, ddpm, rtol=1e-3, atol=1e-3)


def test_ddim_timesteps(trainer):
    steps = trainer.ddim_timesteps(50)
    assert len(steps) == 50 and steps[0] == 999 and steps[-1] == 0
    assert all(a > b for a, b in zip(steps, steps[1:]))


def test_ema_update_is_a_lerp_with_warmup(ig):
    """After step n the EMA moves (1 - decay) of the way to the live weights, decay = min(d, (1+n)/(10+n))."""
    torch.manual_seed(0)
    tr = ig.DiffusionTrainer(ig.DiffusionModel(base_channels=8), torch.device("cpu"), ema_decay=0.9, total_steps=10)
    x0 = torch.rand(8, 1, 28, 28) * 2 - 1
    tr.train_step(x0)
    before = [p.clone() for p in tr.ema_model.parameters()]
    tr.train_step(x0)  # step 2: decay = min(0.9, 3 / 12) = 0.25
    for old, ema, live in zip(before, tr.ema_model.parameters(), tr.model.parameters()):
        torch.testing.assert_close(ema, old + 0.75 * (live.detach() - old))


def test_training_reduces_loss(ig):
    """A few dozen steps on a fixed batch drive the noise-prediction loss well below its start (1.0)."""
    torch.manual_seed(0)
    tr = ig.DiffusionTrainer(ig.DiffusionModel(base_channels=8), torch.device("cpu"), total_steps=40,
                             learning_rate=3e-3)
    x0 = torch.zeros(16, 1, 28, 28) - 1  # black images: the easiest possible target
    first = tr.train_step(x0).item()
    for _ in range(40):
        last = tr.train_step(x0).item()
    assert first > 0.8 and last < 0.5 * first
