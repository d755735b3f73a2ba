"""image_gen.py end to end: tiny training runs on IDX files written by the tests, infer, resume,
wrappers, and the errors a user can run into."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, write_idx
import imagegen.classifier as classifier_module
from imagegen.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from imagegen.classifier import MnistClassifier, load_or_train_classifier
from imagegen.data import IDX_FILES, load_images
from imagegen.diffusion import GaussianDiffusion
from imagegen.fid import FidEvaluator
from imagegen.training import TrainState, evaluation_epochs, lr_schedule

SWEEP_TINY = ["--sampling_steps", "4", "--device", "cpu"]  # each mode refuses the flags it does not read
SAMPLE_TINY = [*SWEEP_TINY, "--num_samples", "4"]
TINY = ["--base_channels", "8", "--batch_size", "32", *SAMPLE_TINY]
CLASSIFIER = ["--fid_backbone", "mnist-classifier"]


def paths(tmp_path, mnist_dir):
    return ["--data_dir", str(mnist_dir), "--results_dir", str(tmp_path / "results"),
            "--checkpoint", str(tmp_path / "models" / "ddpm.pt"), "--cache_dir", str(tmp_path / "cache")]


def run_script(args, cwd=ROOT, env=None, script="image_gen/image_gen.py"):
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_png(path, size=None):
    assert path.is_file(), f"missing {path}"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        if size:
            assert image.size == size


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def trained(ig, mnist_dir, tmp_path_factory):
    """Two epochs of an unconditional model (the class-conditional default has its own tests) with FID/KID
    on the classifier backbone (chosen here), then infer: the outputs the tests below read."""
    tmp = tmp_path_factory.mktemp("run")
    ig.main(["--epochs", "2", "--fid_samples", "48", "--conditioning", "none", *TINY, *CLASSIFIER,
             *paths(tmp, mnist_dir)])
    ig.main(["--mode", "infer", "--sampler", "ddpm", "--fid_samples", "16", *SAMPLE_TINY, *CLASSIFIER, *paths(tmp, mnist_dir)])
    return tmp


def test_training_outputs(trained):
    results = trained / "results"
    assert_png(results / "training_loss.png")
    assert_png(results / "epoch_comparisons" / "metrics_comparison.png")
    for epoch in (1, 2):
        # 4 samples: a titled 2x2 grid from fixed noise
        assert_png(results / "epoch_comparisons" / f"samples_epoch_{epoch:03d}.png")
    metrics = json.loads((results / "metrics.json").read_text())
    train = metrics["train"]
    assert train["fid_backbone"] == "mnist-classifier" and train["fid_samples"] == 48
    assert train["fid_sampler"] == "dpm++2m-4"
    floor = train["real_vs_real_floor"]
    assert floor["fid"] > 0 and "48 training images" in floor["what"]
    first, last = train["epochs"]
    assert [first["epoch"], last["epoch"]] == [1, 2]
    # FID at the last epoch only (no --fid_every); epoch 1 got the grid alone (unconditional: no accuracy check)
    assert first["fid"] is None and set(first["eval_parts"]) == {"grid"}
    assert set(last["eval_parts"]) == {"grid", "fid"} and "accuracy" not in last
    # the untrained-for-long model is much farther from the test digits than other real digits are
    assert last["fid"] > floor["fid"] and last["kid"] > floor["kid"] and last["fid_samples"] == 48
    assert last["eval_seconds"] == pytest.approx(sum(last["eval_parts"].values()))
    assert train["setup_seconds"] > 0
    assert last["loss"] < first["loss"]


def test_checkpoint_describes_itself(trained, ig):
    state = load(trained / "models" / "ddpm.pt")
    assert state["format"] == CHECKPOINT_FORMAT and state["version"] == CHECKPOINT_VERSION
    assert state["epochs_completed"] == 2 and state["step_in_epoch"] == 0 and state["steps_per_epoch"] == 6
    assert state["interrupted"] is False and state["epoch_progress"] is None
    assert state["model_config"] == {"base_channels": 8, "image_channels": 1, "num_classes": 0}
    assert state["dataset"] == "mnist" and state["cond_drop_prob"] == 0.0
    assert state["diffusion_config"] == {"num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    assert {"model", "ema", "optimizer", "lr_plan", "generator", "history", "args", "step"} <= set(state)
    assert state["step"] == 2 * (192 // 32) and state["lr_plan"]["total_steps"] == 12
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    assert state["args"]["batch_size"] == 32
    # the fallback classifier and the real features are cached in --cache_dir
    assert len(list((trained / "cache").glob("mnist_classifier-*.pt"))) == 1
    assert len(list((trained / "cache").glob("fid-real-mnist-mnist-classifier-n48-*.pt"))) == 1


def test_infer_outputs(trained):
    results = trained / "results"
    assert_png(results / "final_samples.png")
    samples = sorted((results / "samples").glob("*.png"))
    assert [p.name for p in samples] == [f"sample_{i:03d}.png" for i in range(4)]
    for path in samples:
        assert_png(path, (28, 28))
    metrics = json.loads((results / "metrics.json").read_text())
    infer = metrics["infer"]
    assert infer["sampler"] == "ddpm" and infer["steps"] == 1000 and infer["epochs_completed"] == 2
    assert infer["fid_sampler"] == "ddpm-1000" and infer["fid_samples"] == 16
    assert infer["fid"] > infer["real_vs_real_floor"]["fid"] and infer["kid_std"] >= 0
    assert "train" in metrics  # infer adds, never replaces


def test_real_features_are_cached(ig, trained, mnist_dir, monkeypatch):
    """A second evaluator with the same backbone, data and N extracts no real features again."""
    from test_image_fid import evaluator_from_command_line

    calls = []
    real_features = FidEvaluator.features
    monkeypatch.setattr(FidEvaluator, "features", lambda self, x, **kw: calls.append(len(x)) or real_features(self, x))
    evaluator = evaluator_from_command_line(ig, ["--fid_samples", "48", *TINY, *CLASSIFIER, *paths(trained, mnist_dir)])
    assert calls == [] and evaluator.num_samples == 48
    evaluator_from_command_line(ig, ["--fid_samples", "40", *TINY, *CLASSIFIER, *paths(trained, mnist_dir)])
    assert calls == [40, 40]  # another N: test and training digits, once


def test_classifier_cache_is_keyed_by_the_training_data(ig, tmp_path, monkeypatch):
    """Each training set keeps its own cached classifier: switching between two data folders retrains
    nothing after the first time, and a cache file that is broken is rebuilt."""
    trained_on = []

    def fake_training(dataset, data_dir, device):
        trained_on.append(Path(data_dir).name)
        return MnistClassifier(), 0.5

    monkeypatch.setattr(classifier_module, "train_mnist_classifier", fake_training)
    write_idx(tmp_path / "small" / "MNIST" / "raw", n_train=64, n_test=32)
    write_idx(tmp_path / "large" / "MNIST" / "raw", n_train=96, n_test=32)
    cache, cpu = tmp_path / "cache", torch.device("cpu")
    files = [load_or_train_classifier(cache, "mnist", tmp_path / name, cpu)[2] for name in ("small", "large", "small")]
    assert trained_on == ["small", "large"] and files[0] == files[2] != files[1]
    assert sorted(cache.glob("mnist_classifier-*.pt")) == sorted(files[:2])
    files[1].write_bytes(b"not a checkpoint")
    assert load_or_train_classifier(cache, "mnist", tmp_path / "large", cpu)[2] == files[1]
    assert trained_on == ["small", "large", "large"]


def test_infer_builds_no_optimizer(ig, trained, mnist_dir, tmp_path, monkeypatch):
    def no_optimizer(*args, **kwargs):
        raise AssertionError("infer built an optimizer")

    monkeypatch.setattr(torch.optim, "AdamW", no_optimizer)
    monkeypatch.setattr(torch.optim, "Adam", no_optimizer)
    ig.main(["--mode", "infer", "--sampler", "ddim", "--fid_samples", "0", *SAMPLE_TINY,
             "--checkpoint", str(trained / "models" / "ddpm.pt"), "--results_dir", str(tmp_path)])
    assert (tmp_path / "final_samples.png").is_file()


def test_evaluation_epochs(ig):
    assert evaluation_epochs(20) == [1, 5, 10, 15, 20]
    assert evaluation_epochs(7) == [1, 5, 7]
    assert evaluation_epochs(1) == [1]


def test_default_paths_resolve_next_to_script(ig):
    args = ig.parse_args(["--device", "cpu"])
    assert args.checkpoint == ROOT / "image_gen" / "models" / "diffusion_model.pt"
    assert args.results_dir == ROOT / "image_gen" / "results"
    assert args.data_dir == ROOT / "image_gen" / "data"
    assert args.cache_dir == ROOT / "image_gen" / "data" / "cache"
    assert str(ig.parse_args(["--checkpoint", "mine.pt", "--device", "cpu"]).checkpoint) == "mine.pt"


def ctrl_c_at_call(ig, monkeypatch, k, log=None, cls=TrainState):
    """Patch cls.train_step (the DDPM's TrainState, or the GanTrainState) so that its k-th call (1-based)
    sends this process a real SIGINT, as Ctrl-C would; `log` collects the learning rate of every step."""
    real_step = cls.train_step
    calls = {"n": 0}

    def step(self, x0, labels=None):
        calls["n"] += 1
        if log is not None:
            log.append(self.learning_rate())
        loss = real_step(self, x0, labels)
        if calls["n"] == k:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(cls, "train_step", step)


def assert_same_run(a, b):
    assert a["step"] == b["step"] and a["epochs_completed"] == b["epochs_completed"]
    for part in ("model", "ema"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=f"{part}.{key}")
    for key, value in a["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(value[name], b["optimizer"]["state"][key][name], rtol=0, atol=0)
    assert torch.equal(a["generator"], b["generator"])
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_ctrl_c_mid_epoch_then_resume_matches_uninterrupted_run(ig, mnist_dir, tmp_path, monkeypatch):
    """Ctrl-C at step 3 of epoch 2 (6 steps per epoch) saves exactly there; --resume then ends with the same
    weights, optimizer state, RNG and loss history as a run that was never interrupted."""
    common = ["--epochs", "3", "--fid_samples", "0", *TINY]
    ig.main([*common, *paths(tmp_path / "straight", mnist_dir)])

    with monkeypatch.context() as patch:
        ctrl_c_at_call(ig, patch, k=9)
        with pytest.raises(SystemExit, match="Interrupted in epoch 2 after step 3 of 6.*--resume"):
            ig.main([*common, *paths(tmp_path / "resumed", mnist_dir)])
    saved = load(tmp_path / "resumed" / "models" / "ddpm.pt")
    assert saved["interrupted"] is True and saved["epochs_completed"] == 1 and saved["step_in_epoch"] == 3
    assert saved["step"] == 9 and len(saved["epoch_progress"]["losses"]) == 3
    assert [h["epoch"] for h in saved["history"]] == [1]

    ig.main([*common, "--resume", *paths(tmp_path / "resumed", mnist_dir)])
    straight = load(tmp_path / "straight" / "models" / "ddpm.pt")
    resumed = load(tmp_path / "resumed" / "models" / "ddpm.pt")
    assert resumed["interrupted"] is False and resumed["step_in_epoch"] == 0
    assert_same_run(resumed, straight)


def test_resume_with_more_epochs_continues_the_lr_without_a_jump(ig, mnist_dir, tmp_path, monkeypatch):
    """A 4-epoch run stopped at step 9, resumed with --epochs 8: the rate goes on from where it was and
    decays to the floor at the new end."""
    rates = []
    with monkeypatch.context() as patch:
        ctrl_c_at_call(ig, patch, k=9, log=rates)
        with pytest.raises(SystemExit, match="Interrupted"):
            ig.main(["--epochs", "4", "--fid_samples", "0", *TINY, "--learning_rate", "0.01",
                     *paths(tmp_path, mnist_dir)])
    with monkeypatch.context() as patch:
        ctrl_c_at_call(ig, patch, k=0, log=rates)
        ig.main(["--epochs", "8", "--fid_samples", "0", "--resume", *TINY, *paths(tmp_path, mnist_dir)])
    assert len(rates) == 48
    state = load(tmp_path / "models" / "ddpm.pt")
    warmup = state["lr_plan"]["warmup_steps"]
    # step 9, the first after the resume, gets exactly the rate the 4-epoch plan had for it ...
    assert rates[9] == pytest.approx(0.01 * lr_schedule(9, 24, warmup), rel=1e-12)
    # ... and from there the rate changes no faster than it did before (a longer decay is gentler)
    changes = [abs(a - b) for a, b in zip(rates[1:], rates)]
    assert max(changes[9:]) <= max(changes[warmup:9]), "the rate jumped after the resume"
    assert state["lr_plan"]["total_steps"] == 48 and state["lr_plan"]["anchor_step"] == 9
    assert state["lr_plan"]["peak_lr"] == 0.01  # a resumed run keeps its own peak rate
    plan = state["lr_plan"]
    assert rates[-1] == pytest.approx(0.01 * lr_schedule(47, 48, plan["warmup_steps"], 9, plan["anchor_factor"]))


def test_same_seed_same_weights_whatever_the_evaluation(ig, mnist_dir, tmp_path):
    """--fid_samples 0, or N with the classifier trained now, or N with it cached: identical training."""
    common = ["--epochs", "2", *TINY]
    ig.main([*common, "--fid_samples", "0", *paths(tmp_path / "none", mnist_dir)])
    runs = [tmp_path / "fresh", tmp_path / "cached"]
    for run in runs:
        ig.main([*common, "--fid_samples", "16", *CLASSIFIER, *paths(run, mnist_dir),
                 "--cache_dir", str(tmp_path / "shared-cache")])
    reference = load(tmp_path / "none" / "models" / "ddpm.pt")
    for run in runs:
        assert_same_run(load(run / "models" / "ddpm.pt"), reference)


def test_nonfinite_loss_stops_with_epoch_and_step(ig, mnist_dir, tmp_path, monkeypatch):
    real_loss = GaussianDiffusion.loss
    calls = {"n": 0}

    def loss_goes_nan_at_step_3(self, *args, **kwargs):
        calls["n"] += 1
        value = real_loss(self, *args, **kwargs)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(GaussianDiffusion, "loss", loss_goes_nan_at_step_3)
    with pytest.raises(SystemExit, match=r"loss became nan at epoch 1, step 3 of 6"):
        ig.main(["--epochs", "1", "--fid_samples", "0", *TINY, *paths(tmp_path, mnist_dir)])


def test_no_data_offline(ig, tmp_path, monkeypatch, capsys):
    from torchvision.datasets import MNIST
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens there: offline
    with pytest.raises(SystemExit) as exc:
        ig.main(["--epochs", "1", *TINY, "--data_dir", str(tmp_path / "empty"),
                 "--results_dir", str(tmp_path / "r"), "--checkpoint", str(tmp_path / "m.pt")])
    message = str(exc.value)
    assert "could not be downloaded" in message and str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message


def test_gzipped_idx_files_load_offline(ig, tmp_path, monkeypatch):
    """IDX files that the user gzipped (not the official archives, so torchvision's md5 check would
    refuse them and go downloading) are decompressed and read without the network; a broken one is
    named in a one-line error."""
    import gzip
    from torchvision.datasets import MNIST
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens there: offline
    plain, packed = tmp_path / "plain" / "MNIST" / "raw", tmp_path / "packed" / "MNIST" / "raw"
    write_idx(plain, n_train=64, n_test=32)
    packed.mkdir(parents=True)
    for name in IDX_FILES:
        (packed / f"{name}.gz").write_bytes(gzip.compress((plain / name).read_bytes(), mtime=0))
    for train in (True, False):
        images, labels = load_images("mnist", tmp_path / "packed", train)
        expected_images, expected_labels = load_images("mnist", tmp_path / "plain", train)
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    broken = tmp_path / "broken" / "MNIST" / "raw"
    broken.mkdir(parents=True)
    (broken / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(SystemExit) as exc:
        load_images("mnist", tmp_path / "broken", True)
    assert "train-images-idx3-ubyte.gz is not a readable gzip file" in str(exc.value)
    assert not list(broken.glob("*.partial"))


@pytest.mark.parametrize("flags, expected", [
    (["--epochs", "-1"], "--epochs: must be >= 1"),
    (["--batch_size", "0"], "--batch_size: must be >= 1"),
    (["--learning_rate", "0"], "--learning_rate: must be > 0"),
    (["--mode", "fly"], "invalid choice: 'fly'"),
    (["--base_channels", "12"], "multiple of 8"),
    (["--device", "tpu"], "--device"),
    (["--fid_samples", "5"], "--fid_samples must be 0 (no FID) or >= 10"),
    (["--fid_backbone", "mnist-classifier", "--fid_weights", "w.pth"], "cannot be used with --fid_backbone"),
])
def test_bad_arguments(flags, expected):
    result = run_script(flags)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # no usage block


def test_bad_checkpoints(tmp_path, trained):
    good = (trained / "models" / "ddpm.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x09" + np.random.default_rng(0).bytes(2048))  # torch warns first
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    cases = {"missing.pt": "does not exist", "truncated.pt": "truncated or not a PyTorch file",
             "garbage.pt": "truncated or not a PyTorch file", "foreign.pt": "is not an ImageAudioGen checkpoint"}
    for name, expected in cases.items():
        result = run_script(["--mode", "infer", "--device", "cpu", "--checkpoint", str(tmp_path / name),
                             "--results_dir", str(tmp_path / "r")])
        assert result.returncode == 1, (name, result.stderr)
        assert expected in result.stderr and "Traceback" not in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_wrappers_with_environment_overrides(mnist_dir, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "EPOCHS": "1", "BATCH_SIZE": "64", "LEARNING_RATE": "2e-3",
           "DEVICE": "cpu", "CHECKPOINT": "models/w.pt", "DATA_DIR": str(mnist_dir), "RESULTS_DIR": "out",
           "FID_SAMPLES": "0", "NUM_SAMPLES": "3", "SAMPLING_STEPS": "3"}
    # run from an unrelated folder: relative paths the user gives are taken from there
    train = subprocess.run([str(ROOT / "image_gen" / "train.sh"), "--base_channels", "8"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    assert "%|" not in train.stderr and "\r" not in train.stderr  # no progress bars when not on a terminal
    state = load(tmp_path / "models" / "w.pt")
    assert state["epochs_completed"] == 1 and state["args"]["batch_size"] == 64 and state["args"]["learning_rate"] == 2e-3
    assert state["model_config"]["base_channels"] == 8
    infer = subprocess.run([str(ROOT / "image_gen" / "infer.sh"), "--sampler", "ddim"], cwd=tmp_path,
                           env={**env, "NUM_SAMPLES": "5"}, capture_output=True, text=True, timeout=300)
    assert infer.returncode == 0, infer.stderr
    assert len(list((tmp_path / "out" / "samples").glob("digit*_*.png"))) == 10 * 5  # 5 of each digit
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["infer"]["sampler"] == "ddim"
