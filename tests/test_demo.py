"""demo/app.py through Streamlit's own headless test API (AppTest): every control of both tabs on tiny
checkpoints trained by the tests (conftest's demo_checkpoints), the checkpoint and its scores on the page,
models loaded once per server, and a message in the page, never a traceback, for every bad input."""
import io
import json
import os
import sys
import zipfile

import numpy as np
import pytest
import soundfile as sf
import streamlit as st
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import ROOT, write_music_file
import audiogen.checkpoint as audio_checkpoint
import imagegen.checkpoint as image_checkpoint
from imagegen import sampling, unet
from imagegen.checkpoint import checkpoint_guidance, load_checkpoint
from imagegen.data import to_unit_range
from imagegen.diffusion import SamplerSettings
from imagegen.guidance import DEFAULT_GUIDANCE_SCALE
from imagegen.sampling import Sampler, ema_sampler_from_checkpoint

APP = str(ROOT / "demo" / "app.py")
CLIP = 80_000


def page(monkeypatch, *argv, timeout=120):
    """The page after its first run, with `argv` as its command line (what follows `streamlit run demo/app.py --`)."""
    monkeypatch.setattr(sys, "argv", ["demo/app.py", *map(str, argv)])
    at = AppTest.from_file(APP, default_timeout=timeout)
    return run(at)


def run(at):
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements):
    return " | ".join(e.value for e in elements)


def demo_args(ckpt, **override):
    paths = {"image_checkpoint": ckpt["image"], "audio_checkpoint": ckpt["audio"],
             "image_results": ckpt["image_results"], "audio_results": ckpt["audio_results"], **override}
    # fp32 and eager: the digits are compared with image_gen's own bit for bit, whatever this CPU's bf16
    # support (auto would vary); compiling is tested on its own, it costs half a minute per page
    return [word for name, value in paths.items() for word in (f"--{name}", value)] + [
        "--device", "cpu", "--precision", "fp32", "--no-compile"]


@pytest.fixture
def app(monkeypatch, demo_checkpoints):
    return page(monkeypatch, *demo_args(demo_checkpoints))


def generate(at, **settings):
    """Set the digit controls named by key (classes, guidance, sampler, steps, seed, count), click Generate."""
    for key, value in settings.items():
        widget = {"classes": at.multiselect, "guidance": at.slider, "sampler": at.radio}.get(key, at.number_input)
        widget(key=key).set_value(value)
    at.button(key="generate").click()
    return run(at)


def singles(at):
    """{file name: (28, 28) uint8 grey image} from the ZIP of single PNGs the page offers."""
    with zipfile.ZipFile(io.BytesIO(at.session_state["images"].singles_zip)) as archive:
        return {name: np.asarray(Image.open(io.BytesIO(archive.read(name))))[..., 0] for name in archive.namelist()}


def eager_digits(ig, ckpt, classes, per_class, steps, seed, guidance, precision="fp32",
                 sampler=SamplerSettings.sampler):
    """uint8 (n, 28, 28): what image_gen's own eager sampler draws for these settings, as the page's PNGs hold it."""
    images = ema_sampler_from_checkpoint(load_checkpoint(ckpt), torch.device("cpu"), precision).sample_classes(
        classes, per_class, SamplerSettings(sampler, steps, guidance_scale=guidance, seed=seed))
    return to_unit_range(images).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)[:, 0].numpy()


def wav(audio, rate=44_100):
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="WAV")
    return buffer.getvalue()


def music_bytes(tmp_path, name, seconds, seed=7):
    write_music_file(tmp_path / name, seconds, seed)
    return (tmp_path / name).read_bytes()


def upload(at, name, data):
    at.file_uploader(key="upload").set_value((name, data, "application/octet-stream"))
    return run(at)


def reconstruct(at):
    at.button(key="reconstruct").click()
    return run(at)


def decoded(wav_bytes):
    audio, rate = sf.read(io.BytesIO(wav_bytes))
    return audio, rate


# --- the page around the models ------------------------------------------------------------------

def test_without_checkpoints_the_page_says_how_to_train(monkeypatch, tmp_path):
    at = page(monkeypatch, "--image_checkpoint", tmp_path / "none.pt", "--audio_checkpoint", tmp_path / "none.pt")
    warning = texts(at.warning)
    assert "image_gen/train.sh" in warning and "audio_gen/train.sh" in warning and "make run" in warning
    assert not at.button and not at.file_uploader and "Limits: at most 64 images" in texts(at.caption)


def test_checkpoints_of_the_wrong_kind_or_garbage_are_messages(monkeypatch, demo_checkpoints, tmp_path):
    swapped = demo_args(demo_checkpoints, image_checkpoint=demo_checkpoints["audio"],
                        audio_checkpoint=demo_checkpoints["image"])
    warning = texts(page(monkeypatch, *swapped).warning)
    assert "is not an ImageAudioGen checkpoint of type 'imageaudiogen.ddpm'" in warning
    assert "is not an ImageAudioGen checkpoint of type 'imageaudiogen.audio_autoencoder'" in warning
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(2048))
    warning = texts(page(monkeypatch, *demo_args(demo_checkpoints, image_checkpoint=garbage,
                                                 audio_checkpoint=garbage)).warning)
    assert warning.count("truncated or not a PyTorch file") == 2


def test_a_bad_command_line_is_a_message(monkeypatch, demo_checkpoints):
    at = page(monkeypatch, "--image_checkpint", demo_checkpoints["image"])
    assert "demo/app.py: unrecognized arguments: --image_checkpint" in texts(at.error)
    assert "usage: demo/app.py [-h] [--image_checkpoint IMAGE_CHECKPOINT]" in at.code[0].value
    at = page(monkeypatch, "--device", "cuda:7" if torch.cuda.is_available() else "cuda")
    assert "demo/app.py: --device" in texts(at.error)
    at = page(monkeypatch, "--help")
    assert "--audio_results AUDIO_RESULTS" in at.code[0].value and not at.get("tab")


def test_the_page_names_each_checkpoint_and_its_measured_scores(monkeypatch, demo_checkpoints, tmp_path):
    state = torch.load(demo_checkpoints["image"], map_location="cpu", weights_only=True)
    state["history"][-1].update(fid=123.45, kid=0.0789, accuracy=0.5)  # as a run with --fid_samples writes them
    image = tmp_path / "ddpm_with_fid.pt"
    torch.save(state, image)
    results = tmp_path / "image_results"
    results.mkdir()
    (results / "metrics.json").write_text(json.dumps({"infer": {
        "checkpoint": str(image), "step": state["step"], "fid": 98.76, "kid": 0.05, "accuracy": 0.9,
        "fid_samples": 1000, "fid_backbone": "inception", "fid_sampler": "ddim-50, w=1",
        "fid_samples_drawn": "class-balanced, guided"}}))
    at = page(monkeypatch, *demo_args(demo_checkpoints, image_checkpoint=image, image_results=results))
    described = texts(at.markdown)
    assert f"Checkpoint `{image}`: MNIST, DDPM, class-conditional (10 classes)" in described
    assert "FID 123.45, KID 0.0789, class accuracy 50.0% after epoch 1" in described
    assert "FID 98.76, KID 0.0500, class accuracy 90.0% in infer (ddim-50, w=1, class-balanced, guided, N = 1000, " \
        "inception" in described
    # the audio checkpoint: PESQ/STOI of its last milestone, from its own history
    assert f"Checkpoint `{demo_checkpoints['audio']}`: epoch 1, 8x compression" in described
    assert "on 1 unseen validation clips" in described and "STOI" in described
    # infer's record of another checkpoint (or an older state of this one) is not shown as this one's
    state["step"] += 1
    torch.save(state, image)
    assert "in infer" not in texts(page(monkeypatch, *demo_args(demo_checkpoints, image_checkpoint=image,
                                                                image_results=results)).markdown)


def test_models_load_once_per_server_and_again_when_retrained(monkeypatch, demo_checkpoints, ig, ag, tmp_path):
    st.cache_resource.clear()
    loads = []
    for module in (image_checkpoint, audio_checkpoint):  # the demo reads both through these
        original = module.load_checkpoint
        monkeypatch.setattr(module, "load_checkpoint", lambda *a, _f=original: loads.append(str(a[0])) or _f(*a))
    audio = tmp_path / "ae.pt"
    audio.write_bytes(demo_checkpoints["audio"].read_bytes())
    at = page(monkeypatch, *demo_args(demo_checkpoints, audio_checkpoint=audio))
    generate(at, classes=["1"], steps=2, count=1)
    upload(at, "clip.wav", music_bytes(tmp_path, "clip.wav", 6.0))
    reconstruct(at)
    generate(at)
    assert sorted(loads) == sorted([str(demo_checkpoints["image"]), str(audio)])
    os.utime(audio, ns=(audio.stat().st_atime_ns, audio.stat().st_mtime_ns + 10**9))  # as a new save would
    run(at)
    assert loads.count(str(audio)) == 2


def test_a_failure_inside_a_tab_is_a_message_not_a_traceback(app, ig, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(Sampler, "sample_classes", broken)
    generate(app, steps=2, count=1)
    assert "Something went wrong: RuntimeError: out of memory" in texts(app.error)
    assert app.radio(key="audio_source")  # the other tab still works


# --- digits -----------------------------------------------------------------------------------

def test_every_digit_control_reaches_the_sampler(app, demo_checkpoints, ig):
    assert app.multiselect(key="classes").value == [str(c) for c in range(10)]  # all classes by default
    recorded = checkpoint_guidance(load_checkpoint(demo_checkpoints["image"]), DEFAULT_GUIDANCE_SCALE)
    assert app.slider(key="guidance").value == recorded  # the w the checkpoint's own fit recorded
    assert app.number_input(key="steps").value == SamplerSettings.steps
    assert app.radio(key="sampler").value == SamplerSettings.sampler
    generate(app, classes=["3", "7"], guidance=2.0, sampler="ddim", steps=3, seed=5, count=3)
    assert not app.error
    shown = app.session_state["images"]
    assert shown.count == 6 and shown.sampler == "ddim-3, w=2" and shown.seconds > 0
    assert len(app.image) == 1 and "6 images, ddim-3, w=2: sampled in" in app.image[0].captions[0]
    assert Image.open(io.BytesIO(shown.grid_png)).format == "PNG"
    assert [b.label for b in app.get("download_button")] == ["Download the grid (PNG)",
                                                               "Download the 6 single PNGs (ZIP)"]
    files = singles(app)
    assert sorted(files) == [f"digit{c}_{i:03d}.png" for c in (3, 7) for i in range(3)]
    # exactly what image_gen draws for these settings
    np.testing.assert_array_equal(np.stack([files[name] for name in sorted(files)]),
                                  eager_digits(ig, demo_checkpoints["image"], [3, 7], 3, 3, 5, 2.0, sampler="ddim"))
    # the result outlives the rerun a download click causes; another seed draws other digits
    app.get("download_button")[0].click()
    run(app)
    assert app.session_state["images"] is shown
    generate(app, seed=6)
    assert not np.array_equal(singles(app)["digit3_000.png"], files["digit3_000.png"])


def test_bf16_digits_are_image_gens_bf16_digits(monkeypatch, demo_checkpoints, ig):
    at = page(monkeypatch, *demo_args(demo_checkpoints), "--precision", "bf16")
    assert "Sampling in bf16" in texts(at.caption)
    generate(at, classes=["2"], guidance=1.0, steps=3, seed=1, count=2)
    files = singles(at)
    np.testing.assert_array_equal(np.stack([files[name] for name in sorted(files)]),
                                  eager_digits(ig, demo_checkpoints["image"], [2], 2, 3, 1, 1.0, "bf16"))


def test_compiled_digits_match_eager_ones_up_to_rounding(monkeypatch, demo_checkpoints, ig):
    st.cache_resource.clear()
    args = [word for word in demo_args(demo_checkpoints) if word != "--no-compile"]  # compiling is the default
    at = page(monkeypatch, *args, timeout=600)  # a cold compile cache: two graphs of half a minute or more each
    assert "The U-Net is compiled" in texts(at.caption)
    generate(at, classes=["3", "8"], guidance=1.0, steps=3, seed=5, count=3)  # another batch size than warm-up's
    files = singles(at)
    shown = np.stack([files[name] for name in sorted(files)]).astype(int)
    difference = np.abs(shown - eager_digits(ig, demo_checkpoints["image"], [3, 8], 3, 3, 5, 1.0))
    assert difference.max() <= 2 and difference.mean() < 0.05, (difference.max(), difference.mean())


def test_a_failed_compile_falls_back_to_eager_sampling(monkeypatch, demo_checkpoints, ig):
    class Uncompilable(torch.nn.Module):  # torch.compile fails on the first call, e.g. without a C++ compiler
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, *args):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

    st.cache_resource.clear()
    monkeypatch.setattr(sampling, "compiled_for_sampling", Uncompilable)
    at = page(monkeypatch, *[word for word in demo_args(demo_checkpoints) if word != "--no-compile"])
    assert "torch.compile failed here (RuntimeError: InvalidCxxCompiler" in texts(at.caption)
    assert not at.error and "The U-Net is compiled" not in texts(at.caption)
    generate(at, classes=["2"], guidance=1.0, steps=3, seed=1, count=2)
    files = singles(at)
    np.testing.assert_array_equal(np.stack([files[name] for name in sorted(files)]),
                                  eager_digits(ig, demo_checkpoints["image"], [2], 2, 3, 1, 1.0))
    st.cache_resource.clear()


@pytest.mark.parametrize("has_bf16", [True, False])
def test_auto_precision_is_bf16_only_on_a_cpu_with_bf16_instructions(monkeypatch, demo_checkpoints, ig, has_bf16):
    monkeypatch.setattr(unet, "cpu_has_bf16", lambda: has_bf16)
    st.cache_resource.clear()  # 'auto' is resolved when the checkpoint loads, and loads are cached per argument
    args = [word for word in demo_args(demo_checkpoints) if word not in ("--precision", "fp32")]
    at = page(monkeypatch, *args)
    assert ("Sampling in bf16" in texts(at.caption)) == has_bf16


def test_auto_precision_keeps_a_gan_in_fp32_as_infer_does(monkeypatch, demo_checkpoints):
    """'auto' is resolved for the checkpoint's kind once it is loaded: the GAN was measured in fp32 only."""
    monkeypatch.setattr(unet, "cpu_has_bf16", lambda: True)
    st.cache_resource.clear()
    args = [word for word in demo_args(demo_checkpoints, image_checkpoint=demo_checkpoints["gan"])
            if word not in ("--precision", "fp32")]
    at = page(monkeypatch, *args)
    assert "GAN, class-conditional" in texts(at.markdown) and "Sampling in bf16" not in texts(at.caption)


def test_ddpm_and_unconditional_rows(app):
    generate(app, classes=["4", "unconditional (no class)"], guidance=0.0, sampler="ddpm", count=1)
    assert app.number_input(key="steps").disabled
    assert app.session_state["images"].sampler == "ddpm-1000, w=0"
    assert sorted(singles(app)) == ["digit4_000.png", "unconditional_000.png"]


def test_an_unconditional_checkpoint_has_no_class_controls(monkeypatch, demo_checkpoints):
    at = page(monkeypatch, *demo_args(demo_checkpoints, image_checkpoint=demo_checkpoints["image_unconditional"]))
    assert "unconditional" in texts(at.markdown) and not at.multiselect and not at.slider
    assert at.number_input(key="count").label == "Images" and at.number_input(key="count").value == 16
    generate(at, steps=2, count=5)
    assert sorted(singles(at)) == [f"sample_{i:03d}.png" for i in range(5)]
    assert at.session_state["images"].sampler == "dpm++2m-2"


def test_a_gan_checkpoint_draws_classes_without_sampler_or_guidance(monkeypatch, demo_checkpoints, ig, mnist_dir,
                                                                    tmp_path):
    at = page(monkeypatch, *demo_args(demo_checkpoints, image_checkpoint=demo_checkpoints["gan"]))
    assert "GAN, class-conditional" in texts(at.markdown)
    assert not at.slider and "sampler" not in [r.key for r in at.radio]
    assert "unconditional (no class)" not in at.multiselect(key="classes").options
    generate(at, classes=["3"], seed=4, count=2)
    assert at.session_state["images"].sampler == "GAN generator (EMA), one pass"
    ig.main(["--mode", "infer", "--digits", "3", "--num_samples", "2", "--seed", "4", "--device", "cpu",
             "--checkpoint", str(demo_checkpoints["gan"]), "--results_dir", str(tmp_path), "--data_dir", str(mnist_dir)])
    shown = singles(at)
    assert sorted(shown) == ["digit3_000.png", "digit3_001.png"]
    for name, image in shown.items():
        assert np.array_equal(image, np.asarray(Image.open(tmp_path / "samples" / name))[..., 0]), name


def test_a_count_over_the_limit_or_no_class_is_a_message(app):
    generate(app, count=7)  # 10 classes x 7
    assert "70 images asked (7 x 10 classes): the limit is 64" in texts(app.error)
    assert "images" not in app.session_state
    generate(app, classes=[])
    assert "Choose at least one class." in texts(app.error)
    assert app.number_input(key="count").max == 64


# --- audio ------------------------------------------------------------------------------------

def test_an_uploaded_file_gives_three_players_spectrograms_and_scores(app, tmp_path):
    upload(app, "song.opus", music_bytes(tmp_path, "song.opus", 12.0))  # any format PyAV decodes
    start = app.slider(key="start")
    assert start.value == 0.0 and start.max == pytest.approx(7.0, abs=0.15)  # 12 s, less the 5-s window
    start.set_value(4.0)
    reconstruct(run(app))
    assert not app.error
    result = app.session_state["audio"]
    assert result.clip[2] == 4 * 16_000
    for data in (result.original, result.reconstruction, result.oracle):
        audio, rate = decoded(data)
        assert rate == 16_000 and audio.shape == (CLIP,) and np.abs(audio).max() > 0.01
    assert len(app.get("audio")) == 3
    assert Image.open(io.BytesIO(result.spectrograms)).size == (1400, 320)  # audio_gen's three panels
    table = app.table[0].value
    assert list(table["audio"]) == ["autoencoder", "oracle"]
    assert 0 < float(table["STOI"][0]) <= 1 and 0 < float(table["STOI"][1]) <= 1
    assert "NNLS + PGHI + RAAR-64" in texts(app.caption) and result.mel["clips"] == 1
    # moving the window hides the old result until the next click
    app.slider(key="start").set_value(1.0)
    assert not run(app).get("audio")


def test_a_vae_checkpoint_generates_what_generate_mode_writes(monkeypatch, demo_checkpoints, ag, tmp_path):
    at = page(monkeypatch, *demo_args(demo_checkpoints, audio_checkpoint=demo_checkpoints["vae"]))
    assert f"Checkpoint `{demo_checkpoints['vae']}`, a VAE: epoch 1, 128x compression" in texts(at.markdown)
    at.slider(key="generate_count").set_value(2)
    at.number_input(key="generate_seed").set_value(3)
    at.button(key="generate_audio").click()
    run(at)
    shown = at.session_state["generated"]
    assert shown.seed == 3 and len(shown.wavs) == 2 and len(at.get("audio")) == 2
    assert Image.open(io.BytesIO(shown.grid)).size[0] > 400
    ag.main(["--mode", "generate", "--checkpoint", str(demo_checkpoints["vae"]), "--num_samples", "2", "--seed", "3",
             "--device", "cpu", "--results_dir", str(tmp_path)])
    for i, data in enumerate(shown.wavs):  # the same clips, byte for byte, as the command line's
        assert data == (tmp_path / f"generated_{i:03d}.wav").read_bytes()


def test_a_plain_autoencoder_says_how_to_get_a_vae(app):
    assert "plain autoencoder" in texts(app.caption)
    assert "generate_audio" not in [b.key for b in app.button]


def test_a_test_clip_of_the_checkpoint_data(app):
    source = app.radio(key="audio_source")
    source.set_value(source.options[1])
    run(app)
    assert app.selectbox(key="test_clip").options == ["test/d.wav", "test/e.opus"]
    app.selectbox(key="test_clip").set_value("test/e.opus")
    reconstruct(run(app))
    assert len(app.get("audio")) == 3 and not app.error


def test_a_short_file_is_padded(app):
    upload(app, "short.wav", wav(0.3 * np.sin(np.arange(32_000) / 16_000 * 2 * np.pi * 440), 16_000))
    assert "start" not in [s.key for s in app.slider] and "2.0 s of audio: the 5-s clip is padded with silence" in texts(app.caption)
    reconstruct(app)
    audio, _ = decoded(app.session_state["audio"].original)
    assert audio.shape == (CLIP,) and np.abs(audio[40_000:]).max() == 0


@pytest.mark.parametrize("name, data, message", [
    ("notes.wav", np.random.default_rng(1).bytes(50_000), "notes.wav: This file cannot be read as audio"),
    ("notes.txt", b"not audio at all\n" * 100, "notes.txt: This file cannot be read as audio"),
    ("empty.wav", b"", "empty.wav is empty."),
    ("no_samples.wav", wav(np.zeros(0, np.float32)), "no_samples.wav: This file holds no audio samples."),
    ("silent.flac", None, "silent.flac: This file is silent (below -60 dBFS)"),
    ("huge.wav", bytes(50 * 2**20 + 1), "huge.wav is 50.0 MB: the limit is 50 MB."),
])
def test_bad_uploads_are_messages(app, name, data, message):
    if data is None:
        buffer = io.BytesIO()
        sf.write(buffer, np.zeros(44_100 * 6, np.float32), 44_100, format="FLAC")
        data = buffer.getvalue()
    upload(app, name, data)
    assert message in texts(app.error)
    assert "reconstruct" not in [b.key for b in app.button]
    assert "audio" not in app.session_state


def test_a_silent_window_is_a_message(app):
    rate = 44_100
    music = np.concatenate([np.zeros(6 * rate), 0.3 * np.sin(np.arange(6 * rate) / rate * 2 * np.pi * 220)])
    upload(app, "late_start.wav", wav(music.astype(np.float32)))
    reconstruct(app)
    assert "The 5 s from 0.0 s are silent: move the window." in texts(app.error)
    app.slider(key="start").set_value(6.0)
    reconstruct(run(app))
    assert not app.error and len(app.get("audio")) == 3


def test_the_demo_generates_with_a_learned_prior_and_another_inverse(monkeypatch, demo_checkpoints, ag, tmp_path):
    """--audio_prior and --audio_inverse griffinlim: the page names both, and Generate gives the command line's
    clips for the same prior, inverse and seed, byte for byte."""
    prior = tmp_path / "prior.pt"
    ag.main(["--mode", "train_prior", "--checkpoint", str(demo_checkpoints["vae"]), "--prior", str(prior),
             "--epochs", "1", "--prior_hidden", "16", "--prior_blocks", "2", "--batch_size", "2", "--warmup_steps", "2",
             "--device", "cpu", "--results_dir", str(tmp_path / "prior_results"), "--cache_dir", str(tmp_path / "c")])
    at = page(monkeypatch, *demo_args(demo_checkpoints, audio_checkpoint=demo_checkpoints["vae"]),
              "--audio_prior", prior, "--audio_inverse", "griffinlim")
    assert ("audio by least squares + random-phase FGLA-64. Generates from the learned prior prior.pt (epoch 1, "
            "ddim-50)." in texts(at.markdown))
    at.number_input(key="generate_seed").set_value(4)
    at.button(key="generate_audio").click()
    run(at)
    ag.main(["--mode", "generate", "--checkpoint", str(demo_checkpoints["vae"]), "--prior", str(prior),
             "--inverse", "griffinlim", "--num_samples", "2", "--seed", "4", "--device", "cpu",
             "--results_dir", str(tmp_path / "generated")])
    for i, data in enumerate(at.session_state["generated"].wavs):
        assert data == (tmp_path / "generated" / f"generated_{i:03d}.wav").read_bytes()
