"""image_gen.py end to end: tiny training runs on IDX files written by the tests, infer, resume,
wrappers, and the errors a user can run into."""
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import ROOT

TINY = ["--base_channels", "8", "--batch_size", "32", "--sampling_steps", "4", "--num_samples", "4", "--device", "cpu"]


def paths(tmp_path, mnist_dir):
    return ["--data_dir", str(mnist_dir), "--results_dir", str(tmp_path / "results"),
            "--checkpoint", str(tmp_path / "models" / "ddpm.pt")]


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
    """Two epochs with FID (fallback backbone), then infer: the outputs every test below reads."""
    tmp = tmp_path_factory.mktemp("run")
    ig.main(["--epochs", "2", "--fid_samples", "48", *TINY, *paths(tmp, mnist_dir)])
    ig.main(["--mode", "infer", "--fid_samples", "48", *TINY, *paths(tmp, mnist_dir)])
    return tmp


def test_training_outputs(trained):
    results = trained / "results"
    assert_png(results / "training_loss.png")
    assert_png(results / "epoch_comparisons" / "metrics_comparison.png")
    for epoch in (1, 2):
        # 4 samples -> 2x2 grid of 28 px images upscaled 4x with 8 px padding
        assert_png(results / "epoch_comparisons" / f"samples_epoch_{epoch:03d}.png", (2 * 112 + 3 * 8,) * 2)
    metrics = json.loads((results / "metrics.json").read_text())
    train = metrics["train"]
    assert train["fid_backbone"] == "mnist-classifier" and train["fid_samples"] == 48
    assert [e["epoch"] for e in train["epochs"]] == [1, 2]
    assert all(e["fid"] > 0 and e["loss"] > 0 and e["images_per_s"] > 0 for e in train["epochs"])
    assert train["epochs"][1]["loss"] < train["epochs"][0]["loss"]


def test_checkpoint_describes_itself(trained, ig):
    state = load(trained / "models" / "ddpm.pt")
    assert state["format"] == ig.CHECKPOINT_FORMAT and state["epoch"] == 2
    assert state["model_config"] == {"base_channels": 8, "image_channels": 1}
    assert state["diffusion_config"] == {"num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    assert {"model", "ema", "optimizer", "scheduler", "rng", "history", "args", "step"} <= set(state)
    assert state["step"] == 2 * (192 // 32)
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    assert state["args"]["batch_size"] == 32
    # the classifier used as FID fallback is cached beside the checkpoint
    assert (trained / "models" / "mnist_classifier.pt").is_file()


def test_infer_outputs(trained):
    results = trained / "results"
    assert_png(results / "final_samples.png")
    samples = sorted((results / "samples").glob("*.png"))
    assert [p.name for p in samples] == [f"sample_{i:03d}.png" for i in range(4)]
    for path in samples:
        assert_png(path, (28, 28))
    infer = json.loads((results / "metrics.json").read_text())["infer"]
    assert infer["sampler"] == "ddpm" and infer["steps"] == 1000 and infer["epoch"] == 2
    assert infer["fid"] > 0 and infer["fid_backbone"] == "mnist-classifier"
    assert "train" in json.loads((results / "metrics.json").read_text())  # infer adds, never replaces


def test_evaluation_epochs(ig):
    assert ig.evaluation_epochs(20) == [1, 5, 10, 15, 20]
    assert ig.evaluation_epochs(7) == [1, 5, 7]
    assert ig.evaluation_epochs(1) == [1]


def test_default_paths_resolve_next_to_script(ig):
    args = ig.parse_args(["--device", "cpu"])
    assert args.checkpoint == ROOT / "image_gen" / "models" / "diffusion_model.pt"
    assert args.results_dir == ROOT / "image_gen" / "results"
    assert args.data_dir == ROOT / "image_gen" / "data"
    assert str(ig.parse_args(["--checkpoint", "mine.pt", "--device", "cpu"]).checkpoint) == "mine.pt"


def test_resume_matches_uninterrupted_run(ig, mnist_dir, tmp_path, monkeypatch):
    """Ctrl-C in epoch 2 saves a checkpoint; --resume then ends with the same weights as a straight run."""
    common = ["--epochs", "2", "--fid_samples", "0", *TINY]
    ig.main([*common, *paths(tmp_path / "straight", mnist_dir)])

    real_epoch = ig.train_one_epoch

    def interrupt_in_epoch_2(trainer, images, batch_size, epoch, epochs, **kw):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(trainer, images, batch_size, epoch, epochs, **kw)

    monkeypatch.setattr(ig, "train_one_epoch", interrupt_in_epoch_2)
    with pytest.raises(SystemExit, match="Interrupted during epoch 2.*--resume"):
        ig.main([*common, *paths(tmp_path / "resumed", mnist_dir)])
    saved = load(tmp_path / "resumed" / "models" / "ddpm.pt")
    assert saved["epoch"] == 1 and saved["interrupted"]

    monkeypatch.setattr(ig, "train_one_epoch", real_epoch)
    ig.main([*common, "--resume", *paths(tmp_path / "resumed", mnist_dir)])
    straight = load(tmp_path / "straight" / "models" / "ddpm.pt")
    resumed = load(tmp_path / "resumed" / "models" / "ddpm.pt")
    assert resumed["epoch"] == 2 and resumed["step"] == straight["step"]
    for key in straight["ema"]:
        torch.testing.assert_close(resumed["ema"][key], straight["ema"][key])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]


def test_nonfinite_loss_stops_with_epoch_and_step(ig, mnist_dir, tmp_path, monkeypatch):
    real_loss = ig.DiffusionTrainer.loss
    calls = {"n": 0}

    def loss_goes_nan_at_step_3(self, x0):
        calls["n"] += 1
        value = real_loss(self, x0)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(ig.DiffusionTrainer, "loss", loss_goes_nan_at_step_3)
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


@pytest.mark.parametrize("flags, expected", [
    (["--epochs", "-1"], "--epochs: must be >= 1"),
    (["--batch_size", "0"], "--batch_size: must be >= 1"),
    (["--learning_rate", "0"], "--learning_rate: must be > 0"),
    (["--mode", "fly"], "invalid choice: 'fly'"),
    (["--base_channels", "12"], "multiple of 8"),
    (["--device", "tpu"], "--device"),
])
def test_bad_arguments(flags, expected):
    result = run_script(flags)
    assert result.returncode == 2 and expected in result.stderr, result.stderr


def test_bad_checkpoints(tmp_path, trained):
    good = (trained / "models" / "ddpm.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.pt").write_bytes(os.urandom(2048))
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
    state = load(tmp_path / "models" / "w.pt")
    assert state["epoch"] == 1 and state["args"]["batch_size"] == 64 and state["args"]["learning_rate"] == 2e-3
    assert state["model_config"]["base_channels"] == 8
    infer = subprocess.run([str(ROOT / "image_gen" / "infer.sh"), "--sampler", "ddim"], cwd=tmp_path,
                           env={**env, "NUM_SAMPLES": "5"}, capture_output=True, text=True, timeout=300)
    assert infer.returncode == 0, infer.stderr
    assert len(list((tmp_path / "out" / "samples").glob("sample_*.png"))) == 5
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["infer"]["sampler"] == "ddim"
