"""--mode export (safetensors + config.json), loading such a folder wherever a checkpoint goes (infer, generate,
the API, the demo, torch.hub), the installed project, and the one-line errors of bad exports."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import ROOT
from test_demo import demo_args, generate, page, singles
from audiogen.inverse import InverseConfig
from audiogen.pretrained import MusicAutoencoder
from imagegen.diffusion import SamplerSettings
from imagegen.pretrained import ImageGenerator

SETTINGS = SamplerSettings("ddim", 4, 0.0, 1.0, 5)


def export_image(ig, checkpoint, folder):
    ig.main(["--mode", "export", "--checkpoint", str(checkpoint), "--export_dir", str(folder)])
    return folder


@pytest.fixture(scope="module")
def exported(ig, demo_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    return {name: export_image(ig, demo_checkpoints[name], root / name) for name in ("image", "gan")}


def test_an_export_holds_the_ema_weights_and_what_describes_them(exported, demo_checkpoints):
    full = torch.load(demo_checkpoints["image"], weights_only=True)
    config = json.loads((exported["image"] / "config.json").read_text())
    assert config["format"] == full["format"] and config["kind"] == "ddpm" and config["weights"] == ["ema"]
    assert config["model_config"] == full["model_config"] and config["diffusion_config"] == full["diffusion_config"]
    assert config["class_names"] == [str(c) for c in range(10)] and config["dataset"] == "mnist"
    assert config["history"] == json.loads(json.dumps(full["history"])) and config["step"] == full["step"]
    assert config["package_version"] and config["export_version"] == 1
    for resume_only in ("optimizer", "model", "generator", "epoch_progress", "lr_plan"):
        assert resume_only not in config
    tensors = load_file(exported["image"] / "model.safetensors")
    assert sorted(tensors) == sorted(f"ema.{k}" for k in full["ema"])
    assert all(torch.equal(tensors[f"ema.{k}"], v) for k, v in full["ema"].items())
    # much smaller than the training checkpoint, which also holds the raw weights and AdamW's two moments
    assert (exported["image"] / "model.safetensors").stat().st_size < 0.4 * demo_checkpoints["image"].stat().st_size


@pytest.mark.parametrize("name", ["image", "gan"])
def test_a_folder_draws_the_pixels_of_its_checkpoint(exported, demo_checkpoints, name):
    from_folder = ImageGenerator.load(exported[name]).sample([3, 7], 2, SETTINGS)
    from_file = ImageGenerator.load(demo_checkpoints[name]).sample([3, 7], 2, SETTINGS)
    assert torch.equal(from_folder, from_file) and from_file.std() > 0


def test_infer_takes_a_folder(ig, exported, demo_checkpoints, mnist_dir, tmp_path):
    pictures = {}
    for source in ("folder", "file"):
        checkpoint = exported["image"] if source == "folder" else demo_checkpoints["image"]
        ig.main(["--mode", "infer", "--checkpoint", str(checkpoint), "--digits", "2", "--num_samples", "2",
                 "--sampling_steps", "4", "--device", "cpu", "--data_dir", str(mnist_dir),
                 "--results_dir", str(tmp_path / source)])
        pictures[source] = [np.asarray(Image.open(p)) for p in sorted((tmp_path / source / "samples").glob("*.png"))]
    assert len(pictures["file"]) == 2
    assert all(np.array_equal(a, b) for a, b in zip(pictures["folder"], pictures["file"]))


def test_the_api_and_the_demo_serve_a_folder(exported, demo_checkpoints, monkeypatch, ig):
    from api.models import ImageModel
    groups = [(4, 2, 11), (None, 1, 12)]
    folder, file = ImageModel.load(exported["image"], "cpu"), ImageModel.load(demo_checkpoints["image"], "cpu")
    assert folder.draw(groups, SETTINGS) == file.draw(groups, SETTINGS)  # the same PNG bytes
    assert folder.health()["position"] == file.health()["position"] and len(folder.sha256) == 64
    at = page(monkeypatch, *demo_args(demo_checkpoints, image_checkpoint=exported["image"]))
    generate(at, classes=["5"], steps=3, seed=2, count=2, guidance=1.0)
    from_folder = singles(at)
    at = page(monkeypatch, *demo_args(demo_checkpoints))
    generate(at, classes=["5"], steps=3, seed=2, count=2, guidance=1.0)
    assert from_folder.keys() == singles(at).keys()
    assert all(np.array_equal(from_folder[k], singles(at)[k]) for k in from_folder)


def test_torch_hub_returns_ready_models(exported, demo_checkpoints, ag, tmp_path):
    ddpm = torch.hub.load(str(ROOT), "image_ddpm", source="local", path=exported["image"])
    assert torch.equal(ddpm.sample([1], 2, SETTINGS), ImageGenerator.load(demo_checkpoints["image"]).sample([1], 2, SETTINGS))
    gan = torch.hub.load(str(ROOT), "image_gan", source="local", path=exported["gan"])
    assert gan.sample([0, 9], 3).shape == (6, 1, 28, 28)
    with pytest.raises(SystemExit) as refused:  # imagegen's UsageError: exit code 2, the reason in .message
        torch.hub.load(str(ROOT), "image_ddpm", source="local", path=exported["gan"])
    assert refused.value.message.startswith("hubconf image_ddpm needs a DDPM checkpoint")
    ag.main(["--mode", "export", "--checkpoint", str(demo_checkpoints["vae"]), "--export_dir", str(tmp_path / "vae")])
    music = torch.hub.load(str(ROOT), "audio_autoencoder", source="local", path=tmp_path / "vae", inverse="griffinlim")
    log_mels, waves = music.generate(1, seed=4)
    expected = MusicAutoencoder.load(demo_checkpoints["vae"]).generate(1, seed=4)[0]
    assert waves.shape == (1, 80_000) and torch.equal(log_mels, expected)


def test_a_vae_exported_with_its_prior_and_vocoder_generates_what_its_files_do(ag, demo_checkpoints, tmp_path):
    """The folder pairs the prior and the vocoder with its phase refiner: generate from it alone writes the WAV
    that the three files with --prior and --vocoder write."""
    cache = ["--cache_dir", str(tmp_path / "cache"), "--device", "cpu"]
    prior, vocoder, vae = tmp_path / "prior.pt", tmp_path / "vocoder.pt", demo_checkpoints["vae"]
    ag.main(["--mode", "train_prior", "--checkpoint", str(vae), "--prior", str(prior), "--epochs", "1",
             "--prior_hidden", "16", "--prior_blocks", "2", "--batch_size", "2", "--warmup_steps", "2",
             "--results_dir", str(tmp_path / "prior_results"), *cache])
    ag.main(["--mode", "train_vocoder", "--audio_dir", str(demo_checkpoints["music"]), "--vocoder", str(vocoder),
             "--epochs", "1", "--vocoder_dim", "16", "--vocoder_blocks", "1", "--segment_frames", "16",
             "--batch_size", "4", "--audio_eval_clips", "0", "--results_dir", str(tmp_path / "vocoder_results"),
             *cache])
    ag.main(["--mode", "train_refiner", "--audio_dir", str(demo_checkpoints["music"]), "--vocoder", str(vocoder),
             "--epochs", "1", "--refiner_channels", "4", "--refiner_iters", "2", "--batch_size", "4",
             "--audio_eval_clips", "0", "--results_dir", str(tmp_path / "refiner_results"), *cache])
    folder = tmp_path / "vae_export"
    ag.main(["--mode", "export", "--checkpoint", str(vae), "--prior", str(prior), "--vocoder", str(vocoder),
             "--export_dir", str(folder)])
    assert json.loads((folder / "config.json").read_text())["pairs"] == {"prior": "prior", "vocoder": "vocoder"}
    assert (folder / "prior" / "model.safetensors").is_file() and (folder / "vocoder" / "config.json").is_file()
    common = ["--mode", "generate", "--inverse", "vocoder-refined", "--num_samples", "1",
              "--prior_steps", "5", "--seed", "2", "--fad_embedding", "mel-frames", *cache]
    ag.main([*common, "--checkpoint", str(vae), "--prior", str(prior), "--vocoder", str(vocoder),
             "--results_dir", str(tmp_path / "files")])
    ag.main([*common, "--checkpoint", str(folder), "--results_dir", str(tmp_path / "folder")])
    wav = (tmp_path / "folder" / "generated_000.wav").read_bytes()
    assert wav == (tmp_path / "files" / "generated_000.wav").read_bytes()
    from api.models import AudioModel
    served = AudioModel.load(folder, "cpu", inverse=InverseConfig("vocoder-refined"))
    assert served.health()["prior"].startswith("learned prior vae_export/prior (epoch 1")
    assert served.health()["inverse"] == "vocoder vae_export/vocoder magnitude + PGHI + RAAR-2 + phase refiner"
    with pytest.raises(SystemExit) as err:  # a prior of another VAE is refused before anything is written
        ag.main(["--mode", "export", "--checkpoint", str(demo_checkpoints["audio"]), "--prior", str(prior),
                 "--export_dir", str(tmp_path / "wrong")])
    assert "plain autoencoder" in err.value.message and not (tmp_path / "wrong").exists()


def test_bad_exports_and_folders_are_one_line_errors(ig, ag, exported, demo_checkpoints, tmp_path, capsys):
    def error(main, *argv):
        with pytest.raises(SystemExit) as err:
            main([*argv])
        return str(err.value) if err.value.code not in (0, 2) else capsys.readouterr().err
    assert "does not exist" in error(ig.main, "--mode", "export", "--checkpoint", str(tmp_path / "no.pt"),
                                     "--export_dir", str(tmp_path / "x"))
    assert "is not an ImageAudioGen checkpoint of type 'imageaudiogen.ddpm'" in error(
        ig.main, "--mode", "export", "--checkpoint", str(demo_checkpoints["audio"]), "--export_dir", str(tmp_path / "x"))
    assert "writes to --export_dir" in error(ig.main, "--mode", "export", "--checkpoint", str(demo_checkpoints["image"]))
    (tmp_path / "empty").mkdir()
    assert "a folder without config.json" in error(ig.main, "--mode", "infer", "--checkpoint", str(tmp_path / "empty"),
                                                   "--device", "cpu")
    newer = tmp_path / "newer"
    newer.mkdir()
    config = json.loads((exported["image"] / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps({**config, "export_version": 9, "package_version": "9.0"}))
    assert "exported by a newer ImageAudioGen (9.0, export format 9)" in error(
        ig.main, "--mode", "infer", "--checkpoint", str(newer), "--device", "cpu")
    (newer / "config.json").write_text(json.dumps(config))
    assert "has config.json but no model.safetensors" in error(ig.main, "--mode", "infer", "--checkpoint", str(newer),
                                                               "--device", "cpu")
    for argv in (["--resume"], []):  # training would write into the folder, resuming would read no optimizer
        assert "holds the sampling weights only" in error(ig.main, *argv, "--checkpoint", str(exported["image"]),
                                                          "--device", "cpu")
        assert "holds the inference weights only" in error(ag.main, *argv, "--checkpoint", str(exported["image"]),
                                                           "--device", "cpu")
    assert "holds the inference weights only" in error(ag.main, "--mode", "train_vocoder", "--vocoder",
                                                       str(exported["image"]), "--device", "cpu")
    assert "is not an ImageAudioGen checkpoint of type 'imageaudiogen.audio_autoencoder'" in error(
        ag.main, "--mode", "export", "--checkpoint", str(exported["image"]), "--export_dir", str(tmp_path / "y"))


def test_the_installed_commands_run_the_scripts_cli(tmp_path):
    """`pip install -e .` put image-gen and audio-gen beside the interpreter; they are the scripts' main."""
    bin_dir = Path(sys.executable).parent
    for command, script in (("image-gen", "image_gen/image_gen.py"), ("audio-gen", "audio_gen/audio_gen.py")):
        installed = subprocess.run([str(bin_dir / command), "--help"], capture_output=True, text=True, timeout=120,
                                   cwd=tmp_path)
        scripted = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                                  timeout=120)
        assert installed.returncode == 0 and "--mode" in installed.stdout
        assert installed.stdout.split("\n\n", 1)[1] == scripted.stdout.split("\n\n", 1)[1]  # all but the usage
