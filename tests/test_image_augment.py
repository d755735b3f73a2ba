"""The GAN's differentiable augmentation (imagegen/augment.py): what each transform does, gradients through it to
the generator, the same transforms for real and generated images, ADA's probability and its resume."""
import copy

import pytest
import torch
from imagegen.augment import Augment, AugmentConfig, cut_out, translate
from imagegen.gan import Discriminator, Generator, generator_loss
from imagegen.gan_training import GanConfig, GanTrainState


def digit_like(n=8):
    """(n, 1, 28, 28) images of background -1 with a bright 6x6 square at their centre."""
    images = torch.full((n, 1, 28, 28), -1.0)
    images[:, :, 11:17, 11:17] = 1.0
    return images


def test_translation_moves_the_content_and_brings_in_background():
    images = digit_like(64)
    moved = translate(images, torch.ones(64, dtype=torch.bool), 0.125, torch.Generator().manual_seed(0))
    assert moved.shape == images.shape and set(moved.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal((moved == 1).sum(dim=(1, 2, 3)), torch.full((64,), 36))  # the square stays whole
    centres = [(m[0] == 1).nonzero().float().mean(dim=0) - 13.5 for m in moved]
    shifts = torch.stack(centres).abs().max()
    assert 0 < shifts <= 4  # round(28 / 8) = 4 pixels at most
    kept = translate(images, torch.zeros(64, dtype=torch.bool), 0.125, torch.Generator().manual_seed(0))
    assert torch.equal(kept, images)


def test_cutout_blanks_a_square_of_half_the_side():
    images = torch.ones(32, 1, 28, 28)
    cut = cut_out(images, torch.ones(32, dtype=torch.bool), 0.5, torch.Generator().manual_seed(1))
    blanked = (cut == -1).sum(dim=(1, 2, 3))
    assert blanked.max() == 14 * 14 and blanked.min() > 0  # whole inside, partly over an edge elsewhere


def test_gradients_reach_the_generator_through_the_augmentation():
    torch.manual_seed(0)
    G, D = Generator(16, 8, 10), Discriminator(8, 10)
    augment = Augment(AugmentConfig(("translation", "cutout"), 1.0), torch.Generator().manual_seed(0))
    labels = torch.arange(8) % 10
    generator_loss(D(augment(G(torch.randn(8, 16), labels)), labels), "hinge").backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())


def test_real_and_generated_images_get_the_same_distribution_of_transforms():
    """Each transform hits each image with probability p, whoever made the image: with p = 0.5 about half of
    4,000 real and of 4,000 generated images move, and the two shares agree within sampling noise."""
    augment = Augment(AugmentConfig(("translation",), 0.5), torch.Generator().manual_seed(2))
    real, fake = digit_like(4000), -digit_like(4000)
    moved = [float((augment(x) != x).flatten(1).any(dim=1).float().mean()) for x in (real, fake)]
    # p = 0.5 of the shifts are drawn, and a drawn shift of (0, 0) (1 in 81) moves nothing
    for share in moved:
        assert share == pytest.approx(0.5 * 80 / 81, abs=0.03)
    assert abs(moved[0] - moved[1]) < 0.04


def test_ada_raises_p_when_the_discriminator_is_sure_of_the_reals_and_lowers_it_otherwise():
    config = AugmentConfig(("translation",), 0.2, ada_target=0.6, ada_interval=4, ada_images=1000)
    sure, unsure = Augment(config, torch.Generator()), Augment(config, torch.Generator())
    for _ in range(40):
        sure.observe(torch.ones(10), 10)                       # r_t = 1 > 0.6: overfitting
        unsure.observe(torch.tensor([1.0, -1.0] * 5), 10)      # r_t = 0 < 0.6
    assert sure.p == pytest.approx(0.2 + 10 * 40 / 1000) and unsure.p == 0.0


def test_ada_p_rises_as_a_discriminator_overfits_a_toy_set_and_resumes():
    """Eight real digits, a fast discriminator: it learns them by heart, E[sign(D(real))] goes to 1 and p rises.
    The checkpoint's state restores p and ADA's running count."""
    torch.manual_seed(0)
    config = GanConfig(d_learning_rate=2e-3, augment=AugmentConfig(("translation", "cutout"), 0.0, ada_target=0.6,
                                                                   ada_interval=2, ada_images=400))
    state = GanTrainState(Generator(16, 8, 10), Discriminator(8, 10), torch.device("cpu"), config, seed=3)
    images, labels = torch.rand(8, 1, 28, 28) * 2 - 1, torch.arange(8) % 10
    for _ in range(31):
        state.train_step(images, labels)
    assert state.augment.p > 0.2
    saved = copy.deepcopy(state.state_dict())  # as from disk: optimizers would otherwise share their tensors
    resumed = GanTrainState.from_checkpoint({**saved, **state.describe()}, torch.device("cpu"), seed=3)
    assert resumed.augment.state_dict() == state.augment.state_dict()
    assert resumed.config.augment == config.augment
    torch.testing.assert_close(resumed.train_step(images, labels), state.train_step(images, labels), rtol=0, atol=0)


def test_a_gan_run_records_its_augmentation_and_p(ig, mnist_dir, tmp_path):
    """--augment and --ada_target reach the checkpoint: the policy in its gan_config, the current p in its state
    and in each epoch's record."""
    from test_image_e2e import load, paths
    from test_image_gan import GAN_TINY

    ig.main(["--epochs", "1", "--fid_samples", "0", *GAN_TINY, "--augment", "translation", "cutout",
             "--ada_target", "0.6", *paths(tmp_path, mnist_dir)])
    saved = load(tmp_path / "models" / "ddpm.pt")
    augment = saved["gan_config"]["augment"]
    assert augment["policy"] == ["translation", "cutout"] and augment["ada_target"] == 0.6
    assert augment["probability"] == 0.0  # ADA starts at 0 unless --augment_p says otherwise
    assert saved["augment"]["p"] == saved["history"][-1]["augment_p"] >= 0.0
    assert list((tmp_path / "results" / "tensorboard").glob("events.out.tfevents.*"))  # the GAN logs too


def test_augment_none_is_the_plain_gan_and_goes_alone():
    from imagegen.cli import parse_args

    assert parse_args(["--model", "gan", "--augment", "none"]).augment == []
    assert parse_args(["--model", "gan"]).augment == ["translation", "cutout"]
    with pytest.raises(SystemExit):
        parse_args(["--model", "gan", "--augment", "none", "cutout"])
    with pytest.raises(SystemExit):
        parse_args(["--model", "gan", "--augment", "none", "--augment_p", "0.5"])
