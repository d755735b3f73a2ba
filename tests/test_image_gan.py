"""The GAN beside the DDPM (--model gan): its losses against hand-computed values, the networks' shapes and
ranges, seeded sampling, training that moves the generator and resumes exactly, the checkpoint's kind and
the one-line errors of a GAN checkpoint where only a DDPM can serve, infer with FID and the coverage checks."""
import json
import math

import pytest
import torch

from imagegen.coverage import coverage_report, mean_pairwise_distance, nearest_distances
from imagegen.data import load_images
from imagegen.diffusion import SamplerSettings
from imagegen.gan import (Discriminator, Generator, discriminator_loss, generator_loss, mode_seeking_loss,
                          r1_penalty)
from imagegen.gan_training import GanConfig, GanTrainState
from imagegen.sampling import GanSampler, class_seed
from test_image_e2e import assert_png, ctrl_c_at_call, load, paths, run_script

GAN_TINY = ["--model", "gan", "--base_channels", "8", "--latent_dim", "16", "--batch_size", "32", "--device", "cpu",
            "--num_samples", "4"]
REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-2.0, 0.0, 1.5])


def softplus(v):
    return math.log1p(math.exp(v))


def test_hinge_losses_by_hand():
    # D: mean(max(0, 1 - [2, .5, -1])) + mean(max(0, 1 + [-2, 0, 1.5])) = (0 + .5 + 2)/3 + (0 + 1 + 2.5)/3 = 2
    assert discriminator_loss(REAL, FAKE, "hinge").item() == pytest.approx(2.0, abs=1e-6)
    # G: -mean([-2, 0, 1.5]) = 1/6
    assert generator_loss(FAKE, "hinge").item() == pytest.approx(1 / 6, abs=1e-6)


def test_nonsaturating_losses_by_hand():
    # D: -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))) = softplus(-D(x)) + softplus(D(G(z)))
    expected_d = (softplus(-2) + softplus(-0.5) + softplus(1)) / 3 + (softplus(-2) + softplus(0) + softplus(1.5)) / 3
    assert expected_d == pytest.approx(1.478585, abs=1e-6)
    assert discriminator_loss(REAL, FAKE, "nonsaturating").item() == pytest.approx(expected_d, abs=1e-6)
    expected_g = (softplus(2) + softplus(0) + softplus(-1.5)) / 3  # -log sigmoid(D(G(z)))
    assert generator_loss(FAKE, "nonsaturating").item() == pytest.approx(expected_g, abs=1e-6)
    with pytest.raises(ValueError, match="unknown GAN loss"):
        discriminator_loss(REAL, FAKE, "wasserstein")


def test_r1_penalty_of_a_linear_critic_is_its_squared_weight_norm():
    """D(x) = <w, x> has grad w everywhere: E||grad||^2 = ||w||^2; and the penalty is differentiable."""
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]], requires_grad=True)
    x = torch.randn(5, 2, 2, requires_grad=True)
    scores = (x * w).sum(dim=(1, 2))
    penalty = r1_penalty(scores, x)
    assert penalty.item() == pytest.approx(1 + 4 + 0.25 + 9, abs=1e-5)
    penalty.backward()
    torch.testing.assert_close(w.grad, 2 * w.detach())


def test_mode_seeking_loss_by_hand_and_its_gradient_pushes_same_class_images_apart():
    """1 / (mean|I1 - I2| / mean|z1 - z2|): images 0.5 apart for latents 2 apart give 1 / 0.25 = 4; its gradient
    moves each image away from the other, and a collapsed pair (I1 = I2) is punished by 1 / eps."""
    z_1, z_2 = torch.zeros(3, 4), torch.full((3, 4), 2.0)
    images_1 = torch.zeros(3, 1, 2, 2, requires_grad=True)
    images_2 = torch.full((3, 1, 2, 2), 0.5)
    loss = mode_seeking_loss(images_1, images_2, z_1, z_2)
    assert loss.item() == pytest.approx(4.0, rel=1e-4)
    loss.backward()
    assert (images_1.grad > 0).all()  # a descent step lowers images_1, away from images_2 above it
    assert mode_seeking_loss(images_2, images_2, z_1, z_2).item() == pytest.approx(1e5)


def test_the_mode_seeking_term_is_added_to_the_generators_objective():
    """With --mode_seeking the generator draws two latents per image of the same classes; its objective is the
    adversarial loss over both plus the weighted term, and a step with the term alone makes those pairs differ more."""
    torch.manual_seed(0)
    labels = torch.arange(8) % 10
    state = GanTrainState(Generator(16, 8, 10), Discriminator(8, 10), torch.device("cpu"),
                          GanConfig(mode_seeking=2.0, g_learning_rate=1e-2))
    rng = state.generator.get_state()
    g_loss, objective = state._generator_objective(8, labels)
    state.generator.set_state(rng)
    z_1, z_2 = state._latents(8), state._latents(8)
    images = state.model(torch.cat([z_1, z_2]), torch.cat([labels, labels]))
    expected_ms = mode_seeking_loss(images[:8], images[8:], z_1, z_2)
    assert (objective - g_loss).item() == pytest.approx(2.0 * expected_ms.item(), rel=1e-4)

    def spread():
        with torch.no_grad():
            return (state.model(z_1, labels) - state.model(z_2, labels)).abs().mean().item()
    before = spread()
    for _ in range(3):
        state.g_optimizer.zero_grad()
        mode_seeking_loss(state.model(z_1, labels), state.model(z_2, labels), z_1, z_2).backward()
        state.g_optimizer.step()
    assert spread() > 1.2 * before
    assert state.describe()["gan_config"]["mode_seeking"] == 2.0


def test_networks_shapes_and_range():
    torch.manual_seed(0)
    G, D = Generator(16, 8, 10), Discriminator(8, 10)
    z, labels = 5 * torch.randn(6, 16), torch.arange(6)
    images = G(z, labels)
    assert images.shape == (6, 1, 28, 28)
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
    assert D(images, labels).shape == (6,)
    with pytest.raises(ValueError, match="needs labels"):
        G(z)
    with pytest.raises(ValueError, match="unconditional"):
        Generator(16, 8, 0)(z, labels)
    assert Generator(16, 8, 0)(z).shape == (6, 1, 28, 28) and Discriminator(8, 0)(images).shape == (6,)


def test_gan_sampling_is_seeded_per_class_and_batch_independent():
    torch.manual_seed(0)
    sampler = GanSampler(Generator(16, 8, 10).eval())
    settings = SamplerSettings(seed=3)
    both = sampler.sample_classes([3, 7], 4, settings)
    alone = sampler.sample_classes([7], 4, settings)
    torch.testing.assert_close(both[4:], alone, rtol=0, atol=1e-6)  # digit 7 is the same whatever else is asked
    torch.testing.assert_close(sampler.sample_classes([3, 7], 4, settings), both, rtol=0, atol=0)
    assert not torch.allclose(sampler.sample_classes([7], 4, settings.replace(seed=4)), alone)
    group = sampler.sample_groups([(7, 4, class_seed(3, 7)), (2, 1, 11)], settings)[0]
    torch.testing.assert_close(group, alone, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no null class"):
        sampler.sample(2, settings)


def test_a_training_step_moves_both_networks_and_the_ema():
    torch.manual_seed(0)
    state = GanTrainState(Generator(16, 8, 10), Discriminator(8, 10), torch.device("cpu"), GanConfig(r1_gamma=1.0))
    before = {name: [p.detach().clone() for p in net.parameters()]
              for name, net in (("G", state.model), ("D", state.discriminator), ("ema", state.ema_model))}
    losses = state.train_step(torch.rand(8, 1, 28, 28) * 2 - 1, torch.arange(8) % 10)
    assert losses.shape == (2,) and torch.isfinite(losses).all()
    for name, net in (("G", state.model), ("D", state.discriminator), ("ema", state.ema_model)):
        moved = [not torch.equal(a, b) for a, b in zip(before[name], net.parameters())]
        assert any(moved), name


@pytest.fixture(scope="module")
def gan_run(ig, mnist_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gan")
    ig.main(["--epochs", "2", "--fid_samples", "20", "--fid_backbone", "mnist-classifier", *GAN_TINY,
             *paths(tmp, mnist_dir)])
    return tmp


def test_gan_training_moves_the_generator_and_records_its_kind(gan_run):
    saved = load(gan_run / "models" / "ddpm.pt")
    assert saved["kind"] == "gan" and saved["version"] == 4 and saved["epochs_completed"] == 2
    assert saved["model_config"] == {"latent_dim": 16, "base_channels": 8, "num_classes": 10, "image_channels": 1}
    assert saved["gan_config"]["loss"] == "hinge" and saved["step"] == 2 * (192 // 32)
    # the measured defaults (docs/image-results.md): DiffAugment's translation and cutout at p = 1, mode seeking 0.03
    assert saved["gan_config"]["augment"]["policy"] == ["translation", "cutout"]
    assert saved["gan_config"]["augment"]["probability"] == 1.0 and saved["gan_config"]["mode_seeking"] == 0.03
    torch.manual_seed(0)  # training seeds the global RNG before building the generator: its initial weights
    initial = Generator(**saved["model_config"]).state_dict()
    changed = [k for k in initial if not torch.equal(initial[k], saved["model"][k])]
    assert len(changed) == len(initial)
    history = saved["history"]
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["g_loss"]) for h in history)
    assert history[-1]["fid_backbone"] == "mnist-classifier" and history[-1]["accuracy"] is not None
    assert_png(gan_run / "results" / "training_loss.png")
    assert_png(gan_run / "results" / "epoch_comparisons" / "samples_epoch_002.png")
    metrics = json.loads((gan_run / "results" / "metrics.json").read_text())
    assert metrics["train"]["model"] == "gan" and metrics["train"]["guidance"] is None


def test_gan_infer_grid_singles_fid_and_coverage(ig, gan_run, mnist_dir):
    ig.main(["--mode", "infer", "--digits", "3,7", "--num_samples", "3", "--fid_samples", "20", "--device", "cpu",
             "--fid_backbone", "mnist-classifier", *paths(gan_run, mnist_dir)])
    results = gan_run / "results"
    assert_png(results / "final_samples.png")
    assert sorted(p.name for p in (results / "samples").glob("*.png")) == [
        f"digit{d}_{i:03d}.png" for d in (3, 7) for i in range(3)]
    record = json.loads((results / "metrics.json").read_text())["infer"]
    assert record["model"] == "gan" and record["steps"] == 1 and record["guidance_scale"] is None
    assert record["fid_samples"] == 20 and 0 <= record["accuracy"] <= 1 and record["images_per_s"] > 0
    coverage = record["coverage"]
    assert sum(coverage["class_histogram"]) == 20 and set(coverage["diversity_ratio"]) == set("0123456789")
    assert coverage["nearest_training_distance"]["generated"]["median"] > 0


def test_gan_seeded_infer_repeats_itself(ig, gan_run, mnist_dir, tmp_path):
    for name in ("a", "b"):
        ig.main(["--mode", "infer", "--digits", "5", "--num_samples", "2", "--seed", "9", "--device", "cpu",
                 *paths(gan_run, mnist_dir)[:-2], "--results_dir", str(tmp_path / name)])
    for i in range(2):
        a = (tmp_path / "a" / "samples" / f"digit5_{i:03d}.png").read_bytes()
        assert a == (tmp_path / "b" / "samples" / f"digit5_{i:03d}.png").read_bytes()


def test_gan_ctrl_c_then_resume_matches_the_uninterrupted_run(ig, mnist_dir, tmp_path, monkeypatch):
    common = ["--epochs", "2", "--fid_samples", "0", *GAN_TINY]
    ig.main([*common, *paths(tmp_path / "straight", mnist_dir)])
    with monkeypatch.context() as patch:
        ctrl_c_at_call(ig, patch, k=8, cls=GanTrainState)
        with pytest.raises(SystemExit, match="Interrupted in epoch 2 after step 2 of 6"):
            ig.main([*common, *paths(tmp_path / "resumed", mnist_dir)])
    ig.main([*common, "--resume", *paths(tmp_path / "resumed", mnist_dir)])
    a, b = (load(tmp_path / name / "models" / "ddpm.pt") for name in ("straight", "resumed"))
    for part in ("model", "ema", "discriminator"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=f"{part}.{key}")
    assert torch.equal(a["generator"], b["generator"]) and a["step"] == b["step"] == 12
    assert [(h["loss"], h["g_loss"]) for h in a["history"]] == [(h["loss"], h["g_loss"]) for h in b["history"]]


def test_gan_checkpoint_where_a_ddpm_is_needed_is_one_line_exit_2(gan_run, mnist_dir, tmp_path):
    checkpoint = str(gan_run / "models" / "ddpm.pt")
    where = ["--device", "cpu", "--checkpoint", checkpoint, "--data_dir", str(mnist_dir),
             "--results_dir", str(tmp_path / "r")]
    cases = [
        (["--mode", "guidance_sweep"], "--mode guidance_sweep needs a DDPM checkpoint"),
        (["--mode", "infer", "--guidance_scale", "1"], "--guidance_scale needs a DDPM checkpoint"),
        (["--mode", "infer", "--digits", "none"], "has no null class"),
        (["--resume", "--model", "ddpm", "--epochs", "3"], "--model ddpm cannot resume"),
        (["--model", "gan", "--cond_drop_prob", "0.2"], "--cond_drop_prob does not apply to a GAN"),
        (["--mode", "infer", "--sampling_steps", "10"], "--sampling_steps does not apply to a GAN"),
        (["--gan_loss", "nonsaturating"], "--gan_loss applies to --model gan only"),
        (["--model", "gan", "--compile"], "--compile does not apply to a GAN"),
    ]
    for flags, expected in cases:
        result = run_script([*flags, *where])
        assert result.returncode == 2 and expected in result.stderr, (flags, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr


def test_coverage_flags_copies_and_collapse(mnist_dir):
    train = load_images("mnist", mnist_dir, train=True)[0]
    copies = train[:20].unsqueeze(1)
    assert nearest_distances(copies, train).max().item() == 0
    collapsed = copies[:1].repeat(10, 1, 1, 1)
    assert mean_pairwise_distance(collapsed) == 0 and mean_pairwise_distance(copies) > 1
    assert mean_pairwise_distance(copies[:1]) is None
    report = coverage_report(copies, torch.zeros(20, dtype=torch.long), "mnist", mnist_dir)
    assert report["copy_close_share"] == 1.0
    assert report["nearest_training_distance"]["real_test"]["median"] > 0


def test_gan_benchmark_prints_training_and_sampling_rates(ig, capsys):
    ig.main(["--mode", "benchmark", "--model", "gan", "--base_channels", "8", "--latent_dim", "16", "--batch_size", "8",
             "--device", "cpu"])
    out = capsys.readouterr().out
    assert "GAN training batch 8:" in out and "img/s" in out and "GAN sampling, one generator pass" in out

