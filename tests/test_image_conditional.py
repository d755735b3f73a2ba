"""Class-conditional DDPM with classifier-free guidance: the guidance math, per-class seeds, asking for
classes on the command line, Fashion-MNIST, older checkpoints, and the usage errors."""
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import write_idx
from test_image_e2e import CLASSIFIER, SAMPLE_TINY, SWEEP_TINY, TINY, assert_png, load, paths, run_script
from imagegen.benchmark import benchmark_training
from imagegen.common import World
from imagegen.checkpoint import CHECKPOINT_VERSION
from imagegen.diffusion import GaussianDiffusion, SamplerSettings
from imagegen.fid import FidSettings
from imagegen.guidance import DEFAULT_GUIDANCE_SCALE, choose_guidance, fit_guidance
from imagegen.sampling import Sampler, balanced_counts
from imagegen.train import EpochChecks
from imagegen.unet import DiffusionModel


@pytest.fixture(scope="module")
def cond_diffusion(ig):
    """A conditional model with a non-zero head (the real one starts at zero), on a 50-step chain."""
    torch.manual_seed(0)
    model = DiffusionModel(base_channels=8, num_classes=10).eval()
    torch.nn.init.normal_(model.head[-1].weight, std=0.1)
    return Sampler(model, GaussianDiffusion(num_timesteps=50, beta_start=1e-3, beta_end=0.2))


def inputs(n=6):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 28, 28, generator=generator)
    t = torch.randint(0, 50, (n,), generator=generator)
    labels = torch.arange(n) % 10
    return x, t, labels


@torch.no_grad()
def test_guidance_zero_is_exactly_the_conditional_prediction(cond_diffusion):
    x, t, labels = inputs()
    expected = cond_diffusion.model(x, t, labels)
    assert torch.equal(cond_diffusion.diffusion.predict_eps(cond_diffusion.denoiser, x, t, labels, guidance_scale=0.0), expected)


@torch.no_grad()
def test_null_class_is_the_unconditional_prediction(cond_diffusion):
    """Labels = null class and labels = None are the same input; guiding the null class changes nothing."""
    x, t, _ = inputs()
    null = torch.full((len(x),), 10)
    unconditional = cond_diffusion.model(x, t)
    assert torch.equal(cond_diffusion.diffusion.predict_eps(cond_diffusion.denoiser, x, t, null), unconditional)
    torch.testing.assert_close(cond_diffusion.diffusion.predict_eps(cond_diffusion.denoiser, x, t, null, guidance_scale=3.0), unconditional,
                               rtol=1e-5, atol=1e-5)
    conditional = cond_diffusion.model(x, t, torch.zeros(len(x), dtype=torch.long))
    assert (conditional - unconditional).abs().mean() > 1e-3 * unconditional.abs().mean()  # labels matter


@pytest.mark.parametrize("w", [0.5, 1.0, 3.0])
@torch.no_grad()
def test_stacked_guidance_equals_two_passes(cond_diffusion, w):
    """One forward pass over (cond, null) stacked gives eq. 6 of Ho & Salimans computed from two passes."""
    x, t, labels = inputs()
    eps_cond = cond_diffusion.model(x, t, labels)
    eps_null = cond_diffusion.model(x, t, torch.full_like(labels, 10))
    expected = (1 + w) * eps_cond - w * eps_null
    torch.testing.assert_close(cond_diffusion.diffusion.predict_eps(cond_diffusion.denoiser, x, t, labels, w), expected, rtol=1e-5, atol=1e-5)


def test_label_dropout_draws_from_the_training_generator(ig, cond_diffusion):
    """cond_drop_prob p replaces about p of the labels by the null class, using only the given generator."""
    seen = []
    real_forward = cond_diffusion.model.forward

    def spy(x, t, labels=None):
        seen.append(labels.clone())
        return real_forward(x, t, labels)

    cond_diffusion.model.forward = spy
    try:
        x0 = torch.zeros(4000, 1, 28, 28)
        labels = torch.arange(4000) % 10
        torch.manual_seed(0)
        before = torch.get_rng_state()
        with torch.no_grad():
            cond_diffusion.diffusion.loss(cond_diffusion.denoiser, x0, labels, torch.Generator().manual_seed(0), cond_drop_prob=0.25)
            cond_diffusion.diffusion.loss(cond_diffusion.denoiser, x0, labels, torch.Generator().manual_seed(0), cond_drop_prob=0.0)
        assert torch.equal(torch.get_rng_state(), before)
    finally:
        del cond_diffusion.model.forward
    dropped = seen[0] == 10
    assert 0.22 < dropped.float().mean() < 0.28
    assert torch.equal(seen[0][~dropped], labels[~dropped])
    assert torch.equal(seen[1], labels)


def test_unconditional_model_refuses_labels(ig):
    model = DiffusionModel(base_channels=8)
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("classes", [[7], [3, 5, 8], list(range(10)), [None]])
def test_sample_classes_shapes(cond_diffusion, classes):
    out = cond_diffusion.sample_classes(classes, 3, SamplerSettings("ddim", steps=4, seed=0))
    assert out.shape == (3 * len(classes), 1, 28, 28)
    assert out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize("sampler, w", [("ddim", 2.0), ("ddpm", 1.0)])
def test_seeded_samples_per_class(cond_diffusion, sampler, w):
    """The images of digit 7 depend on the seed and the class, not on which other classes are asked."""
    alone = cond_diffusion.sample_classes([7], 3, SamplerSettings(sampler, steps=5, guidance_scale=w, seed=4))
    among = cond_diffusion.sample_classes([2, 7, 9], 3, SamplerSettings(sampler, steps=5, guidance_scale=w, seed=4))  # one batch
    # the same numbers through a batch of 9 instead of 3: equal up to float rounding of the batched convs
    torch.testing.assert_close(among[3:6], alone, rtol=1e-4, atol=1e-4)
    assert (among[0:3] - alone).abs().max() > 0.1  # another class, another noise stream
    many = cond_diffusion.sample_classes([*range(10), None], 3, SamplerSettings(sampler, steps=5, guidance_scale=w, seed=4))
    assert len(many) == 33  # more than one guided sampling batch (32): class by class
    torch.testing.assert_close(many[21:24], alone, rtol=1e-4, atol=1e-4)
    again = cond_diffusion.sample_classes([7], 3, SamplerSettings(sampler, steps=5, guidance_scale=w, seed=4))
    assert torch.equal(again, alone)
    other_seed = cond_diffusion.sample_classes([7], 3, SamplerSettings(sampler, steps=5, guidance_scale=w, seed=5))
    assert not torch.equal(other_seed, alone)


def test_balanced_counts(ig):
    assert balanced_counts(1000, 10) == [100] * 10
    assert balanced_counts(23, 10) == [3, 3, 3] + [2] * 7


@pytest.mark.parametrize("text, expected", [
    ("7", [7]), ("0-9", list(range(10))), ("3,5,8", [3, 5, 8]), ("0-2, 7", [0, 1, 2, 7]), ("8,3,3", [3, 8]),
    ("none", [None]), ("NONE", [None]),
])
def test_parse_classes(ig, text, expected):
    assert ig.parse_classes(text) == expected


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def conditional_run(ig, mnist_dir, tmp_path_factory):
    """Two epochs of the default (class-conditional) model, FID and class accuracy on the classifier backbone."""
    tmp = tmp_path_factory.mktemp("cond")
    ig.main(["--epochs", "2", "--fid_samples", "20", "--accuracy_samples", "40", *TINY, *CLASSIFIER,
             *paths(tmp, mnist_dir)])
    return tmp


def test_conditional_training_records_what_it_is(ig, conditional_run):
    state = load(conditional_run / "models" / "ddpm.pt")
    assert state["version"] == CHECKPOINT_VERSION == 4 and state["kind"] == "ddpm"
    assert state["model_config"]["num_classes"] == 10 and state["cond_drop_prob"] == 0.1
    assert state["dataset"] == "mnist" and state["class_names"] == [str(i) for i in range(10)]
    assert state["ema"]["class_embedding.weight"].shape[0] == 11  # ten digits and the null class
    train = json.loads((conditional_run / "results" / "metrics.json").read_text())["train"]
    assert train["fid_sampler"] == f"dpm++2m-4, w={DEFAULT_GUIDANCE_SCALE:g}" and train["classifier_test_accuracy"] > 0.5
    first, last = train["epochs"]
    # epoch 1: the accuracy check alone; the last: the check, the guidance fit, then the grid and FID at the fitted w
    assert first["accuracy_samples"] == 40 and first["fid"] is None and set(first["eval_parts"]) == {"grid", "accuracy"}
    assert list(last["eval_parts"]) == ["accuracy", "guidance_fit", "grid", "fid"]
    assert last["fid"] > 0 and last["fid_samples"] == last["accuracy_samples"] == 20
    assert last["guidance_scale"] == state["guidance"]["scale"]
    assert_png(conditional_run / "results" / "epoch_comparisons" / "samples_epoch_002.png")


def infer(tmp, mnist_dir, *flags, results="infer"):
    return run_script(["--mode", "infer", *SAMPLE_TINY, *CLASSIFIER, *paths(tmp, mnist_dir),
                       "--results_dir", str(tmp / results), *flags])


def test_infer_asked_digits_with_both_samplers(conditional_run, mnist_dir):
    for sampler, fid_samples in (("ddim", "20"), ("ddpm", "10")):  # DDPM-1000 per class is slow: N = 10
        result = infer(conditional_run, mnist_dir, "--digits", "3,5", "--sampler", sampler, "--fid_samples",
                       fid_samples, "--guidance_scale", "2", results=sampler)
        assert result.returncode == 0, result.stderr
        out = conditional_run / sampler
        names = sorted(p.name for p in (out / "samples").glob("*.png"))
        assert names == [f"digit{d}_{i:03d}.png" for d in (3, 5) for i in range(4)]
        assert_png(out / "samples" / "digit5_003.png", (28, 28))
        assert_png(out / "final_samples.png")
        record = json.loads((out / "metrics.json").read_text())["infer"]
        assert record["classes"] == [3, 5] and record["guidance_scale"] == 2.0
        assert record["fid_samples_drawn"] == "class-balanced, guided" and 0 <= record["accuracy"] <= 1
        assert "class accuracy" in result.stdout and ", w=2" in result.stdout


def test_unconditional_samples_from_the_conditional_model(conditional_run, mnist_dir):
    result = infer(conditional_run, mnist_dir, "--digits", "none", "--sampler", "ddim", "--fid_samples", "20",
                   results="uncond")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (conditional_run / "uncond" / "samples").glob("*.png"))
    assert names == [f"unconditional_{i:03d}.png" for i in range(4)]
    record = json.loads((conditional_run / "uncond" / "metrics.json").read_text())["infer"]
    assert record["fid_samples_drawn"] == "unconditional (null class)" and "accuracy" not in record
    assert record["guidance_scale"] is None and record["fid"] > 0


def test_guidance_sweep(conditional_run, mnist_dir):
    result = run_script(["--mode", "guidance_sweep", "--guidance_scales", "0,2", "--sampler", "ddim",
                         "--fid_samples", "20", *SWEEP_TINY, *CLASSIFIER, *paths(conditional_run, mnist_dir),
                         "--results_dir", str(conditional_run / "sweep")])
    assert result.returncode == 0, result.stderr
    assert_png(conditional_run / "sweep" / "guidance_sweep.png")
    sweep = json.loads((conditional_run / "sweep" / "metrics.json").read_text())["guidance_sweep"]
    assert [r["guidance_scale"] for r in sweep["rows"]] == [0.0, 2.0]
    assert all(r["fid"] > 0 and 0 <= r["accuracy"] <= 1 for r in sweep["rows"])
    assert sweep["sampler"] == "ddim-4" and sweep["fid_samples"] == 20 and "99%" in sweep["verdict"]


def test_choose_guidance(ig):
    rows = [{"guidance_scale": 0, "fid": 5, "accuracy": 0.95}, {"guidance_scale": 1, "fid": 7, "accuracy": 0.991},
            {"guidance_scale": 3, "fid": 9, "accuracy": 0.999}]
    assert choose_guidance(rows)["guidance_scale"] == 1
    assert choose_guidance(rows[:1]) is None


def test_version_2_unconditional_checkpoint_still_samples(conditional_run, mnist_dir, ig, tmp_path):
    """A checkpoint written before class conditioning (version 2: no num_classes, no dataset) loads for infer."""
    ig.main(["--epochs", "1", "--fid_samples", "0", "--conditioning", "none", *TINY, *paths(tmp_path, mnist_dir)])
    state = load(tmp_path / "models" / "ddpm.pt")
    state["version"] = 2
    for key in ("dataset", "class_names", "cond_drop_prob"):
        del state[key]
    del state["model_config"]["num_classes"]
    torch.save(state, tmp_path / "v2.pt")
    result = run_script(["--mode", "infer", "--sampler", "ddim", "--fid_samples", "0", *SAMPLE_TINY,
                         "--checkpoint", str(tmp_path / "v2.pt"), "--results_dir", str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out" / "samples").glob("sample_*.png"))) == 4
    result = run_script(["--mode", "infer", "--digits", "7", "--device", "cpu", "--checkpoint", str(tmp_path / "v2.pt")])
    assert result.returncode == 2 and "needs a class-conditional checkpoint" in result.stderr


@pytest.mark.parametrize("flags, expected", [
    (["--digits", "12"], "class 12 is out of range"),
    (["--digits", "a"], "expected class indices"),
    (["--digits", ""], "expected class indices"),
    (["--digits", "5-3"], "runs backwards"),
    (["--guidance_scale", "-1"], "--guidance_scale: must be >= 0"),
    (["--guidance_scales", "0,x"], "comma-separated numbers"),
    (["--dataset", "cifar"], "invalid choice: 'cifar'"),
    (["--cond_drop_prob", "1.5"], "--cond_drop_prob: must be in [0.0, 1.0]"),
    (["--mode", "guidance_sweep", "--fid_samples", "0"], "--fid_samples must be >= 10"),
])
def test_bad_class_arguments_one_line_exit_2(flags, expected):
    result = run_script(["--mode", "infer", *flags] if "--mode" not in flags else flags)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_checkpoint_mismatches_one_line_exit_2(ig, conditional_run, mnist_dir, tmp_path):
    unconditional = tmp_path / "u"
    ig.main(["--epochs", "1", "--fid_samples", "0", "--conditioning", "none", *TINY, *paths(unconditional, mnist_dir)])
    cases = [
        (unconditional / "models" / "ddpm.pt", ["--digits", "3"], "--digits needs a class-conditional checkpoint"),
        (unconditional / "models" / "ddpm.pt", ["--guidance_scale", "2"], "--guidance_scale needs a class-conditional"),
        (unconditional / "models" / "ddpm.pt", ["--mode", "guidance_sweep"], "needs a class-conditional checkpoint"),
        (conditional_run / "models" / "ddpm.pt", ["--dataset", "fashion_mnist"],
         "--dataset fashion_mnist does not match"),
    ]
    for checkpoint, flags, expected in cases:
        mode = [] if "--mode" in flags else ["--mode", "infer"]
        result = run_script([*mode, *flags, "--device", "cpu", "--checkpoint", str(checkpoint),
                             "--data_dir", str(mnist_dir), "--results_dir", str(tmp_path / "r")])
        assert result.returncode == 2 and expected in result.stderr, (flags, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr


def test_fashion_mnist(ig, tmp_path):
    """--dataset fashion_mnist reads DATA_DIR/FashionMNIST/raw; names appear in files and the checkpoint."""
    write_idx(tmp_path / "data" / "FashionMNIST" / "raw", n_train=96, n_test=48)
    common = ["--data_dir", str(tmp_path / "data"), "--checkpoint", str(tmp_path / "f.pt"),
              "--cache_dir", str(tmp_path / "cache"), "--results_dir", str(tmp_path / "results")]
    ig.main(["--dataset", "fashion_mnist", "--epochs", "1", "--fid_samples", "12", *CLASSIFIER, *TINY, *common])
    state = load(tmp_path / "f.pt")
    assert state["dataset"] == "fashion_mnist" and state["class_names"][9] == "Ankle boot"
    assert len(list((tmp_path / "cache").glob("fashion_mnist_classifier-*.pt"))) == 1
    ig.main(["--mode", "infer", "--digits", "0,9", "--sampler", "ddim", "--fid_samples", "0", *SAMPLE_TINY, *common])
    names = sorted(p.name for p in (tmp_path / "results" / "samples").glob("*.png"))
    assert names == [f"{c}_{i:03d}.png" for c in ("ankle-boot", "t-shirt-top") for i in range(4)]
    record = json.loads((tmp_path / "results" / "metrics.json").read_text())["infer"]
    assert record["dataset"] == "fashion_mnist"


@pytest.mark.parametrize("num_classes", [0, 10])
def test_benchmark_trains_the_model_it_is_given(ig, num_classes):
    """`--mode benchmark` times real training steps of a conditional (the default) or unconditional model:
    the weights move, and a conditional model's class embedding learns from the labels it is given."""
    torch.manual_seed(0)
    model = DiffusionModel(base_channels=8, num_classes=num_classes)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    rate, gflops = benchmark_training(model, torch.device("cpu"), batch_size=4, repeats=2)
    assert rate > 0 and gflops > 0
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert "head.2.weight" in moved  # the zero-initialised output conv
    assert any(name.startswith("class_embedding") for name in moved) == (num_classes > 0)


# --------------------------------------------------------------------------------------------
# The guidance a checkpoint carries
# --------------------------------------------------------------------------------------------

def test_fit_guidance_climbs_the_ladder_until_99_percent():
    accuracy = {0.5: 0.90, 1.0: 0.97, 2.0: 0.992, 3.0: 0.999, 5.0: 1.0}
    asked = []

    def score(w):
        asked.append(w)
        return {"fid": 10 + w, "kid": 0.01, "accuracy": accuracy[w]}

    first = {"guidance_scale": 0.5, "fid": 9.0, "kid": 0.01, "accuracy": accuracy[0.5]}
    fitted = fit_guidance(score, first)
    assert fitted["scale"] == 2.0 and asked == [1.0, 2.0]  # stops at the first w that reaches 99%
    assert [r["guidance_scale"] for r in fitted["rows"]] == [0.5, 1.0, 2.0] and "smallest w" in fitted["rule"]
    assert fit_guidance(score, {**first, "accuracy": 0.995})["scale"] == 0.5  # already enough: nothing drawn
    assert asked == [1.0, 2.0]
    never = fit_guidance(lambda w: {"fid": 1.0, "kid": 0.0, "accuracy": 0.9 - w / 100}, first)
    assert never["scale"] == 5.0 and "no w reached" in never["rule"]  # the largest w, whatever its few draws said


class _Missing:
    """A classifier that gets every image right except those whose class is in `wrong_classes` (one miss each)."""

    def __init__(self, wrong_classes):
        self.wrong_classes = wrong_classes

    def predict(self, images):
        labels = images[:, 0, 0, 0].long()  # the stub sampler writes the asked class into the first pixel
        guess = labels.clone()
        for label in self.wrong_classes:
            where = (labels == label).nonzero()
            if len(where):
                guess[where[0]] = (label + 1) % 10
        return guess


class _InTurn:
    """A sampler stub: draw_classes_in_turn and draw_for_fid as the real ones split n, remembering which classes
    they drew."""

    def __init__(self):
        self.drawn = []

    def draw_classes_in_turn(self, n, settings):
        for label, count in enumerate(balanced_counts(n, 10)):
            self.drawn.append(label)
            yield torch.full((count, 1, 28, 28), label, dtype=torch.uint8), torch.full((count,), label)

    def draw_for_fid(self, n, settings, world=None):
        images, labels = zip(*self.draw_classes_in_turn(n, settings))
        return torch.cat(images), torch.cat(labels)


def _checks(sampler, classifier, n):
    config = SimpleNamespace(accuracy_samples=n, world=World())
    return EpochChecks(SimpleNamespace(config=config, state=SimpleNamespace(sampler=sampler)), classifier, None)


def test_a_guidance_rung_stops_once_it_cannot_reach_99_percent():
    """With `required`, the check stops at the first miss beyond the 1 % of N that a passing draw may have (here
    N = 200: 2 misses allowed, the third one decides), and its verdict is the full draw's."""
    sampler = _InTurn()
    stopped = _checks(sampler, _Missing({1, 4, 6, 8}), 200).accuracy(SamplerSettings(), required=0.99)
    assert sampler.drawn == [0, 1, 2, 3, 4, 5, 6] and stopped == {"accuracy": 137 / 140, "accuracy_samples": 140,
                                                                 "stopped": True}
    full = _checks(_InTurn(), _Missing({1, 4, 6, 8}), 200).accuracy(SamplerSettings())
    assert full == {"accuracy": pytest.approx(196 / 200), "accuracy_samples": 200}  # the full draw fails 99 % too
    sampler = _InTurn()
    passed = _checks(sampler, _Missing({1, 9}), 200).accuracy(SamplerSettings(), required=0.99)
    assert sampler.drawn == list(range(10)) and passed == {"accuracy": 0.99, "accuracy_samples": 200}


def test_classes_in_turn_draw_what_the_fid_draw_draws(cond_diffusion):
    """draw_classes_in_turn gives draw_for_fid's images class after class: bit-equal when the full draw goes
    class by class too (more images than a sampling batch), equal up to rounding when it is one batch."""
    settings = SamplerSettings("ddim", 3, guidance_scale=1.0, seed=5)
    for n in (150, 20):
        images, labels = cond_diffusion.draw_for_fid(n, settings)
        parts = list(cond_diffusion.draw_classes_in_turn(n, settings))
        assert torch.equal(torch.cat([p[1] for p in parts]), labels)
        difference = (torch.cat([p[0] for p in parts]).int() - images.int()).abs()
        assert difference.max() == 0 if n > cond_diffusion.batch_size(True) else difference.max() <= 1, n


def test_the_guidance_fit_runs_without_fid(ig, mnist_dir, tmp_path):
    """With --fid_samples 0 the run still fits w on class accuracy (no Inception, no FID), and with
    --accuracy_samples 0 it measures nothing and records no w."""
    ig.main(["--epochs", "1", "--fid_samples", "0", "--accuracy_samples", "30", *TINY, *paths(tmp_path, mnist_dir)])
    state = load(tmp_path / "models" / "ddpm.pt")
    record = state["history"][-1]
    assert record["fid"] is None and record["accuracy_samples"] == 30 and "fid" not in record["eval_parts"]
    assert state["guidance"]["rows"][0] == {"guidance_scale": DEFAULT_GUIDANCE_SCALE, "accuracy": record["accuracy"],
                                            "accuracy_samples": 30}
    assert record["guidance_scale"] == DEFAULT_GUIDANCE_SCALE  # the w that accuracy was measured at
    assert not list((tmp_path / "cache").glob("fid-real-*"))  # no real features were computed
    ig.main(["--epochs", "1", "--fid_samples", "0", "--accuracy_samples", "0", *TINY,
             *paths(tmp_path / "none", mnist_dir)])
    state = load(tmp_path / "none" / "models" / "ddpm.pt")
    assert state["guidance"] is None and "accuracy" not in state["history"][-1]


def test_fid_by_default_only_for_runs_long_enough():
    """--fid_samples unset: N = 1000 at the last epoch from 600,000 training images shown, else none."""
    from imagegen.train import AUTO_FID_IMAGES, TrainConfig, resolve_fid
    config = TrainConfig(Path("x.pt"), Path("."), Path("."), Path("."), torch.device("cpu"), epochs=20,
                         fid=FidSettings(None))
    assert resolve_fid(config, 60_000).fid.num_samples == 1000  # the default 20-epoch MNIST run
    assert resolve_fid(dataclasses.replace(config, epochs=1), 60_000).fid.num_samples == 0
    assert resolve_fid(dataclasses.replace(config, epochs=15), 4_000).fid.num_samples == 0
    assert resolve_fid(config, AUTO_FID_IMAGES // 20).fid.num_samples == 1000
    given = dataclasses.replace(config, epochs=1, fid=FidSettings(50))
    assert resolve_fid(given, 100).fid.num_samples == 50  # a given N is kept
    assert dataclasses.replace(config, fid_every=5, epochs=12, fid=FidSettings(10)).fid_epochs() == {5, 10, 12}
    assert dataclasses.replace(config, fid=FidSettings(0)).fid_epochs() == set()


def test_checkpoint_carries_its_guidance_and_infer_uses_it(conditional_run, mnist_dir):
    """Training fits w after its last evaluation and stores it; infer without --guidance_scale uses it, says
    so, and --guidance_scale still overrides it."""
    guidance = load(conditional_run / "models" / "ddpm.pt")["guidance"]
    rows = guidance["rows"]
    assert rows[0]["guidance_scale"] == DEFAULT_GUIDANCE_SCALE and guidance["scale"] in [r["guidance_scale"] for r in rows]
    assert guidance["sampler"] == "dpm++2m-4" and guidance["accuracy_samples"] == 40 and guidance["epoch"] == 2
    assert all(0 <= r["accuracy"] <= 1 and "fid" not in r for r in rows)  # fitted on class accuracy alone
    train = json.loads((conditional_run / "results" / "metrics.json").read_text())["train"]
    assert train["guidance"]["scale"] == guidance["scale"]
    result = infer(conditional_run, mnist_dir, "--digits", "1", "--fid_samples", "0", results="fitted")
    assert result.returncode == 0, result.stderr
    record = json.loads((conditional_run / "fitted" / "metrics.json").read_text())["infer"]
    assert record["guidance_scale"] == guidance["scale"] and record["guidance_source"] == "the checkpoint's own evaluation"
    assert f"w = {guidance['scale']:g} from the checkpoint's own evaluation" in result.stdout
    log = (conditional_run / "fitted" / "infer.log").read_text()
    assert "Sampling 4 per row (1)" in log and "FID/KID not measured" in log


def test_infer_refuses_training_flags_one_line_exit_2(conditional_run):
    for flags, expected in ((["--ema_decay", "0.9"], "--ema_decay applies to --mode train, not infer"),
                            (["--epochs", "3"], "--epochs applies to --mode train, not infer"),
                            (["--batch_size", "8"], "--batch_size applies to --mode benchmark or train, not infer")):
        result = run_script(["--mode", "infer", *flags, "--device", "cpu",
                             "--checkpoint", str(conditional_run / "models" / "ddpm.pt")])
        assert result.returncode == 2 and expected in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
