"""Local web demo of both models: draw digits with the DDPM (or the GAN), reconstruct music with the mel autoencoder.

    make demo                                                # prints http://127.0.0.1:8501
    make demo IMAGE_CKPT=runs/ddpm.pt AUDIO_CKPT=runs/ae.pt  # other checkpoints
    python -m streamlit run demo/app.py -- --image_checkpoint runs/ddpm.pt --audio_checkpoint runs/ae.pt --device cpu

Run from the repository root, Streamlit reads .streamlit/config.toml: address 127.0.0.1, no browser opened,
uploads up to 50 MB.

Streamlit runs this file from the top on every click. The checkpoints are read once per server process
(st.cache_resource, keyed by path and modification time, so a checkpoint retrained meanwhile is read
again), and every step of the work is a function of the models' packages (image_gen/imagegen,
audio_gen/audiogen), imported from their folders: this file lays out controls and results and checks the
user's input.
Without a checkpoint a tab says how to train one; bad input (a file that is not audio, an empty or silent
file, a file or count over the limits, a checkpoint of the wrong kind) gives a message in the page.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import torch

ROOT = Path(__file__).resolve().parents[1]
MAX_IMAGES = 64         # per click: 4x the time of 16 digits (README), under half a minute of one CPU core
MAX_UPLOAD_MB = 50      # about an hour of compressed music, several minutes of WAV
MAX_GENERATED = 8       # clips per click of the audio Generate panel: a few seconds of mel inversion on a CPU


for folder in ("image_gen", "audio_gen"):  # each model's script and package live in its folder
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))

import audio_gen as ag  # noqa: E402  the command lines: their defaults and folders
import image_gen as ig  # noqa: E402
from audiogen.audio_io import SILENCE_RMS, UnusableAudio, decode_music_bytes, decode_music_file, wav_bytes  # noqa: E402
from audiogen.checkpoint import load_checkpoint as load_audio_state  # noqa: E402
from audiogen.checkpoint import load_inverse, model_from_checkpoint  # noqa: E402
from audiogen.data import folder_splits  # noqa: E402
from audiogen.generate import draw_clips, load_learned_prior  # noqa: E402
from audiogen.inverse import INVERSES, InverseConfig  # noqa: E402
from audiogen.metrics import score_clip, versus_baseline  # noqa: E402
from audiogen.musdb import detect_layout, musdb_splits  # noqa: E402
from audiogen.plots import plot_spectrogram_grid, plot_spectrograms  # noqa: E402
from audiogen.prior import SamplerConfig  # noqa: E402
from audiogen.transform import LogMelTransform  # noqa: E402
from imagegen.checkpoint import MODEL_KINDS, checkpoint_guidance, checkpoint_position, load_checkpoint  # noqa: E402
from imagegen.common import read_json, resolve_device, resolve_path  # noqa: E402
from imagegen.data import class_names, class_slug, dataset_title, to_unit_range  # noqa: E402
from imagegen.diffusion import SamplerSettings  # noqa: E402
from imagegen.guidance import DEFAULT_GUIDANCE_SCALE  # noqa: E402
from imagegen.plots import save_class_grid, save_grid, save_individual  # noqa: E402
from imagegen.sampling import ema_sampler_from_checkpoint  # noqa: E402
from imagegen.unet import cpu_has_bf16  # noqa: E402


# ============================================================================================
# Config / CLI
# ============================================================================================

class UsageError(Exception):
    """A bad command-line argument, or --help: (message, usage text), shown in the page. argparse would
    raise SystemExit, which ends the page's run without a word."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message, self.format_usage())

    def print_help(self, file=None):
        raise UsageError("the command-line options (after `--`) are:", self.format_help())


def script_default(module, name):
    """A script's default path for argument `name`, resolved next to the script as the script does."""
    default = module.build_parser().get_default(name)
    return resolve_path(default, default, module.SCRIPT_DIR)


def parse_args(argv):
    """The demo's options: `streamlit run demo/app.py -- --image_checkpoint PATH ...`."""
    p = ArgumentParser(prog="demo/app.py", description="Local web demo of image_gen and audio_gen.")
    p.add_argument("--image_checkpoint", type=Path, default=script_default(ig, "checkpoint"),
                   help="image_gen checkpoint (default: image_gen's own default path)")
    p.add_argument("--audio_checkpoint", type=Path, default=script_default(ag, "checkpoint"),
                   help="audio_gen checkpoint (default: audio_gen's own default path)")
    p.add_argument("--image_results", type=Path, default=script_default(ig, "results_dir"),
                   help="image_gen results folder whose metrics.json holds infer's FID for the checkpoint")
    p.add_argument("--audio_results", type=Path, default=script_default(ag, "results_dir"),
                   help="audio_gen results folder whose metrics.json holds infer's scores for the checkpoint")
    p.add_argument("--audio_inverse", choices=INVERSES, default=InverseConfig.kind,
                   help="how audio_gen's log-mels become audio (audio_gen.py --inverse); the vocoder kinds need --vocoder")
    p.add_argument("--vocoder", type=Path, default=None, help="audio_gen vocoder checkpoint (--mode train_vocoder)")
    p.add_argument("--audio_prior", type=Path, default=None,
                   help="a learned prior of the audio VAE (--mode train_prior) that Generate samples instead of "
                        "N(0, I), with DDIM 50 steps, eta 0")
    p.add_argument("--device", default=None, help="torch device, cpu or cuda (default: cuda if available)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="the U-Net's arithmetic for digits. auto: bf16 on a CPU with bfloat16 instructions "
                        "(avx512_bf16 or amx_bf16), else fp32; fp32 with --no-compile draws exactly infer's digits")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile the U-Net when the image checkpoint loads (about half a minute the first "
                        "time, less with torch's compile cache), so every click samples ~1.6x faster; falls back "
                        "to eager sampling, saying so, where compiling fails")
    args = p.parse_args(argv)
    if args.audio_inverse.startswith("vocoder") != (args.vocoder is not None):
        p.error("--vocoder goes with --audio_inverse vocoder or vocoder-pghi, and they with it")
    for name in ("vocoder", "audio_prior"):
        if getattr(args, name) is not None and not getattr(args, name).is_file():
            p.error(f"--{name} {getattr(args, name)}: no such file")
    args.device = resolve_device(args.device, p)
    args.precision = resolve_precision(args.precision, args.device)
    return args


def resolve_precision(choice, device):
    """fp32 or bf16 for `--precision auto|fp32|bf16`: auto is bf16 only on a CPU with bfloat16 instructions
    (a GPU samples 16 digits in well under a second in fp32, so it keeps infer's exact arithmetic)."""
    if choice != "auto":
        return choice
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


# ============================================================================================
# Checkpoints: loaded once per server
# ============================================================================================

def file_stamp(path):
    """(size, modification time): part of the cache key, so a checkpoint rewritten by training is read again."""
    stat = Path(path).stat()
    return stat.st_size, stat.st_mtime_ns


@st.cache_resource(show_spinner="Loading the image checkpoint (and compiling the U-Net) ...", max_entries=2)
def load_image_checkpoint(path, stamp, device, precision="fp32", compile_model=False):
    """(what the page says about the checkpoint, its EMA sampler in `precision`, compiled if asked and
    possible): read, compiled and warmed up once per server and file version."""
    state = load_checkpoint(path)
    sampler = ema_sampler_from_checkpoint(state, torch.device(device), precision, compile_model)
    compile_error = None
    try:
        warm_up(sampler, state["dataset"])  # with compile_model this compiles: torch.compile works on the first call
    except Exception as err:
        if not compile_model:
            raise
        # no C++ compiler, say: eager sampling still works
        compile_error = ": ".join([type(err).__name__, *str(err).strip().splitlines()[:1]])
        sampler = ema_sampler_from_checkpoint(state, torch.device(device), precision)
        warm_up(sampler, state["dataset"])
    compiled = compile_model and compile_error is None
    about = {"dataset": state["dataset"], "kind": state["kind"], "position": checkpoint_position(state),
             "guidance": checkpoint_guidance(state, DEFAULT_GUIDANCE_SCALE), "step": state["step"],
             "history": state["history"], "args": state.get("args", {}), "model_config": state["model_config"],
             "compiled": compiled, "compile_error": compile_error}
    return about, sampler


@st.cache_resource(show_spinner="Loading the audio checkpoint ...", max_entries=2)
def load_audio_checkpoint(path, stamp, device, inverse_kind=InverseConfig.kind, vocoder=None, prior=None):
    """(what the page says about the checkpoint, the autoencoder, the MelInverse that voices its mels (audio_gen's
    default, or `inverse_kind` with the `vocoder` file), the learned `prior` of a VAE or None): read once per server
    and file version."""
    state = load_audio_state(path)
    model = model_from_checkpoint(state, torch.device(device))
    inverse = load_inverse(InverseConfig(inverse_kind, vocoder=Path(vocoder) if vocoder else None),
                           LogMelTransform.from_config(state["transform_config"], torch.device(device)))
    learned, prior_name = load_learned_prior(Path(prior) if prior else None, state, path, SamplerConfig(),
                                             torch.device(device))
    about = {"epoch": state["epoch"], "history": state["history"], "data": state["data"], "kind": state["kind"],
             "inverse": inverse.name, "prior": prior_name}
    return about, model, inverse, learned


def open_checkpoint(loader, path, device, train_hint, *options):
    """(what `loader(path, stamp, device, *options)` returns, None), or (None, a message): a missing
    checkpoint says how to train one; an unreadable one, or one of the wrong kind, says what is wrong with it."""
    if not path.is_file():
        return None, (f"No checkpoint at `{path}`. Train one with `{train_hint}` (or `make run` for both models), "
                      f"or pass another: `make demo IMAGE_CKPT=... AUDIO_CKPT=...`.")
    try:
        return loader(str(path), file_stamp(path), str(device), *options), None
    except SystemExit as err:  # the scripts' load_checkpoint ends a command-line run with one line
        return None, getattr(err, "message", None) or str(err).removeprefix("error: ")
    except (KeyError, RuntimeError) as err:  # the right format, but weights that do not fit its own config
        return None, f"{path} cannot be used: {type(err).__name__}: {err}"


def same_checkpoint(recorded, path):
    """Whether a path written into a metrics.json names the checkpoint the page shows."""
    return bool(recorded) and Path(recorded).resolve() == path.resolve()


# ============================================================================================
# Digits
# ============================================================================================

@dataclass
class Images:
    """One click's images, kept in the session: any later click reruns the page, which still shows them."""
    grid_png: bytes
    singles_zip: bytes
    count: int
    seconds: float
    sampler: str


def image_scores(about, path, results_dir):
    """Lines about the checkpoint's measured FID: its last per-epoch evaluation, and infer's record for it
    in `results_dir`/metrics.json."""
    lines = []
    evaluated = [h for h in about["history"] if h.get("fid") is not None]
    if evaluated:
        h, args = evaluated[-1], about["args"]
        accuracy = f", class accuracy {h['accuracy']:.1%}" if h.get("accuracy") is not None else ""
        sampler = f"DDIM-{args.get('sampling_steps')}" if about["kind"] == "ddpm" else "one generator pass"
        lines.append(f"FID {h['fid']:.2f}, KID {h['kid']:.4f}{accuracy} after epoch {h['epoch']} (training's "
                     f"evaluation: {sampler}, N = {args.get('fid_samples')}, "
                     f"--fid_backbone {args.get('fid_backbone')})")
    infer = read_json(results_dir / "metrics.json").get("infer", {})
    if infer.get("fid") is not None and same_checkpoint(infer.get("checkpoint"), path) \
            and infer.get("step") == about["step"]:
        accuracy = f", class accuracy {infer['accuracy']:.1%}" if infer.get("accuracy") is not None else ""
        drawn = f"{infer['fid_samples_drawn']}, " if infer.get("fid_samples_drawn") else ""
        lines.append(f"FID {infer['fid']:.2f}, KID {infer['kid']:.4f}{accuracy} in infer ({infer['fid_sampler']}, "
                     f"{drawn}N = {infer['fid_samples']}, {infer['fid_backbone']} features)")
    return lines or ["No FID measured for this checkpoint yet (train with --fid_samples > 0, or run image_gen/infer.sh)."]


def describe_image_checkpoint(about, path, results_dir):
    config = about["model_config"]
    kind = f"class-conditional ({config['num_classes']} classes)" if config["num_classes"] else "unconditional"
    kind = f"{MODEL_KINDS[about['kind']]}, {kind}"
    lines = [f"Checkpoint `{path}`: {dataset_title(about['dataset'])}, {kind}, base channels "
             f"{config['base_channels']}, {about['position']}."] + image_scores(about, path, results_dir)
    st.markdown("\n".join(f"- {line}" for line in lines))


def draw_images(diffusion, classes, per_class, sampler, steps, seed, guidance):
    """(images in [0, 1], seconds of sampling): `per_class` of each class in `classes` (None = the null
    class) for a conditional model, `per_class` images in all for an unconditional one."""
    start = time.perf_counter()
    settings = SamplerSettings(sampler, steps, 0.0, guidance, seed)
    if diffusion.num_classes:
        samples = diffusion.sample_classes(classes, per_class, settings)
    else:
        samples = diffusion.sample(per_class, settings)
    return to_unit_range(samples), time.perf_counter() - start


def warm_up(diffusion, dataset):
    """Draw one DDIM step for a small and a large batch and make a grid and PNGs, then drop them. Otherwise
    the first click pays for matplotlib's import and font set-up and the first oneDNN kernels (measured in
    the browser: 16 digits on screen 4.75 s after the first click, 2.7 s after later ones) and, with
    --compile, for compiling: in fp32 torch compiles one graph for batches of 2-15 and one for 16 or more."""
    classes = [0] if diffusion.num_classes else None
    for count in (1, 8) if diffusion.num_classes else (2, 16):  # a guided pass doubles the batch
        images, _ = draw_images(diffusion, classes, count, "ddim", 1, 0, DEFAULT_GUIDANCE_SCALE)
    image_files(images, dataset, classes, count, "warm-up")


def image_files(images, dataset, classes, per_class, title):
    """(grid PNG, ZIP of one PNG per image) as image_gen's infer writes them: a grid with one labelled row
    per class (a plain grid for an unconditional model) and files named like infer's samples/."""
    if classes is None:
        names = [f"sample_{i:03d}" for i in range(len(images))]
    else:
        names = [f"{'unconditional' if c is None else class_slug(dataset, c)}_{i:03d}"
                 for c in classes for i in range(per_class)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if classes is None:
            save_grid(images, tmp / "grid.png")
        else:
            row_names = ["unconditional" if c is None else class_names(dataset)[c] for c in classes]
            save_class_grid(images, row_names, tmp / "grid.png", title=title)
        save_individual(images, tmp / "samples", names)
        singles = io.BytesIO()
        with zipfile.ZipFile(singles, "w") as archive:
            for name in names:
                archive.write(tmp / "samples" / f"{name}.png", f"{name}.png")
        return (tmp / "grid.png").read_bytes(), singles.getvalue()


def image_controls(diffusion, dataset, default_guidance, kind):
    """The sampling settings chosen in the page: (classes or None, per_class, sampler, steps, seed, guidance).
    A GAN draws in one pass: no sampler, steps or guidance, and a conditional one has no null class."""
    classes, guidance, sampler, steps = None, 0.0, "ddim", 50
    ddpm = kind == "ddpm"
    if diffusion.num_classes:
        labels = {name: c for c, name in enumerate(class_names(dataset))}
        if ddpm:
            labels["unconditional (no class)"] = None
        chosen = st.multiselect("Classes, one grid row each", list(labels),
                                default=list(labels)[:diffusion.num_classes], key="classes")
        classes = [labels[name] for name in chosen]
        if ddpm:
            guidance = st.slider("Classifier-free guidance w (0: the plain conditional model)", 0.0, 5.0,
                                 float(default_guidance), 0.5, key="guidance")
    if ddpm:
        sampler = st.radio("Sampler", ["ddim", "dpm++2m", "ddpm"], key="sampler", horizontal=True,
                           format_func=lambda s: {"ddim": "DDIM", "dpm++2m": "DPM-Solver++(2M)",
                                                  "ddpm": "DDPM (all 1000 steps: slow)"}[s])
    left, middle, right = st.columns(3)
    if ddpm:
        steps = left.number_input("Steps (DDIM, DPM-Solver++)", 1, diffusion.num_timesteps, 50, key="steps",
                                  disabled=sampler == "ddpm")
    else:
        left.caption("GAN: one generator pass per image")
    seed = middle.number_input("Seed", 0, 2**31 - 1, 0, key="seed")
    per_class = right.number_input("Images per class" if diffusion.num_classes else "Images", 1, MAX_IMAGES,
                                   2 if diffusion.num_classes else 16, key="count")
    return classes, int(per_class), sampler, int(steps), int(seed), guidance


def image_tab(args):
    loaded, problem = open_checkpoint(load_image_checkpoint, args.image_checkpoint, args.device,
                                      "image_gen/train.sh", args.precision, args.compile)
    if problem:
        st.warning(problem)
        return
    about, diffusion = loaded
    describe_image_checkpoint(about, args.image_checkpoint, args.image_results)
    if args.precision == "bf16":
        st.caption("Sampling in bf16 (this CPU has bfloat16 instructions: about 1.7x faster). The digits differ "
                   "from infer's fp32 ones by well under one grey level on average; `--precision fp32 "
                   "--no-compile` draws exactly infer's.")
    if about["compiled"]:
        st.caption("The U-Net is compiled (torch.compile, once when the checkpoint loaded): about 1.6x faster "
                   "sampling. In fp32 its digits differ from eager ones by at most one grey level; `--no-compile` "
                   "turns it off.")
    elif about["compile_error"]:
        st.caption(f"torch.compile failed here ({about['compile_error']}), so the digits are sampled without it.")
    digits_panel(diffusion, about["dataset"], about["guidance"], about["kind"])


@st.fragment
def digits_panel(diffusion, dataset, default_guidance, kind):
    """Controls, Generate and the result. A fragment: a click here reruns only this panel, not the whole
    page with its audio tab, so the grid reaches the screen sooner (main's guard does not run then, hence
    its own)."""
    with errors_as_messages():
        controls, output = st.columns([2, 3], gap="large")
        with controls:
            settings = image_controls(diffusion, dataset, default_guidance, kind)
            clicked = st.button("Generate", type="primary", key="generate")
        with output:
            if clicked:
                generate(diffusion, dataset, *settings)
            show_images(st.session_state.get("images"))


def generate(diffusion, dataset, classes, per_class, sampler, steps, seed, guidance):
    """Check the count, then draw, save and keep the images in the session; a message when they are too many."""
    count = per_class * (len(classes) if classes is not None else 1)
    if classes == []:
        st.error("Choose at least one class.")
        return
    if count > MAX_IMAGES:
        st.error(f"{count} images asked ({per_class} x {len(classes)} classes): the limit is {MAX_IMAGES} per "
                 f"click. Choose fewer classes or fewer images per class.")
        return
    guided = classes is not None and classes != [None]
    name = diffusion.name(SamplerSettings(sampler, steps, 0.0, guidance, seed), guided)
    with st.spinner(f"Sampling {count} images with {name} ..."):
        images, seconds = draw_images(diffusion, classes, per_class, sampler, steps, seed, guidance)
        grid, singles = image_files(images, dataset, classes, per_class,
                                    f"{dataset_title(dataset)}, {name}, seed {seed}")
    st.session_state["images"] = Images(grid, singles, count, seconds, name)


def show_images(shown):
    if not shown:
        return
    st.image(shown.grid_png, caption=f"{shown.count} images, {shown.sampler}: sampled in {shown.seconds:.2f} s")
    left, right = st.columns(2)
    left.download_button("Download the grid (PNG)", shown.grid_png, "grid.png", "image/png", key="download_grid",
                         on_click="ignore")
    right.download_button(f"Download the {shown.count} single PNGs (ZIP)", shown.singles_zip, "samples.zip",
                          "application/zip", key="download_singles", on_click="ignore")


# ============================================================================================
# Audio
# ============================================================================================

@dataclass
class Reconstruction:
    """One clip's result, kept in the session with the clip it belongs to."""
    clip: tuple              # (file name, its length, start sample): shown only while that clip is chosen
    original: bytes          # WAV files, 16 kHz mono
    reconstruction: bytes
    oracle: bytes
    spectrograms: bytes      # PNG
    scores: dict             # PESQ / STOI of reconstruction and oracle
    mel: dict                # audio_gen's mel metrics
    seconds: float


def decode(path, kind, sample_rate):
    """(mono float32 waveform at `sample_rate`, None), or (None, why the file cannot be used)."""
    try:
        return decode_music_file(path, sample_rate, kind), None
    except UnusableAudio as err:
        return None, f"{str(err)[0].upper()}{str(err)[1:]}."


@st.cache_resource(max_entries=2, show_spinner="Decoding the upload ...")
def decode_upload(file_id, name, _data, sample_rate):
    """(waveform, None) or (None, why not) of an uploaded file, once per upload (the slider reruns the page);
    `_data` is not hashed."""
    try:
        return decode_music_bytes(_data, name, sample_rate), None
    except UnusableAudio as err:
        return None, f"{str(err)[0].upper()}{str(err)[1:]}."


@st.cache_resource(max_entries=4, show_spinner="Decoding the test file ...")
def decode_test_file(path, kind, sample_rate):
    return decode(path, kind, sample_rate)


@st.cache_data(ttl=300, show_spinner=False)
def test_files(audio_dir, musdb_root):
    """(name, path, kind) of the test split of the data the checkpoint was trained on, when that data is
    on this machine: music the model never heard."""
    if audio_dir and Path(audio_dir).is_dir():
        root = Path(audio_dir)
        return [(str(p.relative_to(root)), str(p), "file") for p in folder_splits(root)["test"]]
    layout = detect_layout(musdb_root) if musdb_root else None
    if layout:
        return [(name, str(path), layout) for name, path in musdb_splits(musdb_root, layout)["test"]]
    return []


def reconstruct_clip(model, inverse, clip, title):
    """Original, autoencoder and oracle audio (the true mel through the same inverse) of one (clip_samples,) clip
    as WAVs, its spectrogram plot and scores (audio_gen's score_clip)."""
    start = time.perf_counter()
    transform = inverse.transform
    result = score_clip(model, inverse, clip)
    seconds = time.perf_counter() - start
    plot = io.BytesIO()
    heard = transform(torch.stack([result["audio"], result["oracle"]])).cpu()
    plot_spectrograms(result["log_mel"][None], heard[:1], [title], plot, "log-mel spectrograms of what you hear",
                      oracles=heard[1:], names=("original", "autoencoder"))
    rate = transform.sample_rate
    return dict(original=wav_bytes(clip, rate), reconstruction=wav_bytes(result["audio"], rate),
                oracle=wav_bytes(result["oracle"], rate), spectrograms=plot.getvalue(), scores=result["scores"],
                mel=result["mel"], seconds=seconds)


def audio_scores(about, path, results_dir):
    """Lines about the checkpoint's measured scores: its last PESQ/STOI milestone on unseen validation
    clips, and infer's record for it in `results_dir`/metrics.json."""
    lines = []
    scored = [h for h in about["history"] if h.get("audio_valid", {}).get("stoi") is not None]
    if scored:
        h = scored[-1]
        lines.append(f"After epoch {h['epoch']}, {speech_line(h['audio_valid'])} on {h['audio_valid']['clips']} "
                     f"unseen validation clips; mel MSE {h['valid']['mse']:.4f}, "
                     f"{versus_baseline(h['valid'])} than the time-average baseline")
    infer = read_json(results_dir / "metrics.json").get("infer", {})
    test = infer.get("test", {})
    if test and same_checkpoint(infer.get("checkpoint"), path) and infer.get("epoch") == about["epoch"]:
        audio = f"{speech_line(test['audio'])}, " if test.get("audio", {}).get("stoi") is not None else ""
        lines.append(f"In infer: {audio}mel MSE {test['mse']:.4f} on {test['clips']} clips of {test['scored_on']}")
    return lines or ["No PESQ/STOI measured for this checkpoint yet (run audio_gen/infer.sh)."]


def speech_line(audio):
    pesq = (f"PESQ {audio['pesq']:.2f} (oracle {audio['oracle_pesq']:.2f}), "
            if audio.get("pesq") is not None else "PESQ undefined, ")
    return pesq + f"STOI {audio['stoi']:.3f} (oracle {audio['oracle_stoi']:.3f})"


def describe_audio_checkpoint(about, model, path, results_dir):
    data = about["data"]
    origin = data.get("audio_dir") or f"MUSDB18 {data.get('musdb_root')}"
    kind = ", a VAE" if about["kind"] == "vae" else ""
    prior = f" Generates from the {about['prior']}." if about["kind"] == "vae" else ""
    lines = [f"Checkpoint `{path}`{kind}: epoch {about['epoch']}, {model.compression:g}x compression, trained on "
             f"`{origin}`; audio by {about['inverse']}.{prior}"] + audio_scores(about, path, results_dir)
    st.markdown("\n".join(f"- {line}" for line in lines))


def choose_recording(about, sample_rate):
    """(source name, waveform) of the uploaded or chosen test file, or (None, None) with a message shown."""
    tests = test_files(about["data"].get("audio_dir"), about["data"].get("musdb_root"))
    options = ["Upload a file"] + (["A test clip (music the model never heard)"] if tests else [])
    source = st.radio("Audio", options, key="audio_source", horizontal=True)
    if source == options[0]:
        upload = st.file_uploader(f"Any audio file FFmpeg reads (wav, flac, ogg/opus, mp3, m4a, ...), at most "
                                  f"{MAX_UPLOAD_MB} MB", key="upload", max_upload_size=MAX_UPLOAD_MB)
        if upload is None:
            return None, None
        if upload.size > MAX_UPLOAD_MB * 2**20:
            st.error(f"{upload.name} is {upload.size / 2**20:.1f} MB: the limit is {MAX_UPLOAD_MB} MB.")
            return None, None
        if upload.size == 0:
            st.error(f"{upload.name} is empty.")
            return None, None
        wave, problem = decode_upload(upload.file_id, upload.name, upload.getvalue(), sample_rate)
        name = upload.name
    else:
        names = {name: (path, kind) for name, path, kind in tests}
        name = st.selectbox("Test file", list(names), key="test_clip")
        wave, problem = decode_test_file(*names[name], sample_rate)
    if problem:
        st.error(f"{name}: {problem}")
        return None, None
    return name, wave


def audio_tab(args):
    loaded, problem = open_checkpoint(load_audio_checkpoint, args.audio_checkpoint, args.device,
                                      "AUDIO_DIR=~/Music audio_gen/train.sh", args.audio_inverse,
                                      str(args.vocoder) if args.vocoder else None,
                                      str(args.audio_prior) if args.audio_prior else None)
    if problem:
        st.warning(problem)
        return
    about, model, inverse, prior = loaded
    transform = inverse.transform
    describe_audio_checkpoint(about, model, args.audio_checkpoint, args.audio_results)
    generation_section(about["kind"], model, inverse, prior)
    st.subheader("Reconstruct")
    controls, output = st.columns([2, 3], gap="large")
    with controls:
        name, wave = choose_recording(about, transform.sample_rate)
        if wave is None:
            return
        clip, start = choose_window(wave, transform)
        clicked = st.button("Reconstruct", type="primary", key="reconstruct")
    key = (name, len(wave), int(start * transform.sample_rate))
    with output:
        if clicked:
            if float(clip.pow(2).mean().sqrt()) < SILENCE_RMS:
                st.error(f"The {len(clip) / transform.sample_rate:g} s from {start:.1f} s are silent: move the window.")
            else:
                with st.spinner("Reconstructing ..."):
                    result = reconstruct_clip(model, inverse, clip, f"{name} @ {start:.1f}s")
                st.session_state["audio"] = Reconstruction(clip=key, **result)
        shown = st.session_state.get("audio")
        if shown is None or shown.clip != key:  # a result of another file or window would be misleading
            return
        show_reconstruction(shown, inverse.name)
    st.image(shown.spectrograms, caption="Original, reconstruction and oracle, each the log-mel of the audio played above")


@dataclass
class Generated:
    """One click's generated clips, kept in the session."""
    seed: int
    wavs: list               # WAV files, 16 kHz mono
    grid: bytes              # PNG of their spectrograms
    seconds: float


def generation_section(kind, model, inverse, prior):
    """The Generate panel for a VAE; for a plain autoencoder, a line on how to get one."""
    st.subheader("Generate")
    if kind != "vae":
        st.caption("This checkpoint is a plain autoencoder: its latent has no prior to sample from. Train a VAE "
                   "(`MODEL=vae AUDIO_DIR=~/Music audio_gen/train.sh`) and open it with "
                   "`make demo AUDIO_CKPT=audio_gen/models/audio_vae.pt` to generate music.")
        return
    generate_panel(model, inverse, prior)


@st.fragment
def generate_panel(model, inverse, prior):
    """Count, seed, Generate and the clips. A fragment: a click reruns only this panel."""
    with errors_as_messages():
        controls, output = st.columns([2, 3], gap="large")
        with controls:
            count = st.slider("Clips", 1, MAX_GENERATED, 2, key="generate_count")
            seed = int(st.number_input("Seed (the same seed gives the same clips, as --mode generate)", 0,
                                       2**31 - 1, 0, key="generate_seed"))
            clicked = st.button("Generate", type="primary", key="generate_audio")
        with output:
            if clicked:
                with st.spinner(f"Decoding {count} prior samples and turning them into audio ..."):
                    st.session_state["generated"] = generate_clips(model, inverse, prior, count, seed)
            shown = st.session_state.get("generated")
            if shown is None:
                return
            for i, wav in enumerate(shown.wavs):
                st.markdown(f"**Clip {i}** (seed {shown.seed})")
                st.audio(wav, format="audio/wav")
            st.caption(f"{len(shown.wavs)} clips of 5 s generated in {shown.seconds:.1f} s "
                       f"({inverse.name}).")
        st.image(shown.grid, caption="Log-mel spectrograms of the generated clips, before they become audio")


def generate_clips(model, inverse, prior, count, seed):
    """`count` clips from the VAE's prior (N(0, I), or the learned `prior`) with audio_gen's generate functions, so a
    seed gives what `--mode generate --seed` (with the same --prior and --inverse) gives: WAVs and a spectrogram grid."""
    start = time.perf_counter()
    log_mels, audio = draw_clips(model, inverse, count, seed, prior=prior, sampler=SamplerConfig())
    transform = inverse.transform
    grid = io.BytesIO()
    plot_spectrogram_grid(log_mels, [f"clip {i}" for i in range(count)], grid, f"Prior samples, seed {seed}",
                          columns=min(4, count))
    return Generated(seed, [wav_bytes(a, transform.sample_rate) for a in audio], grid.getvalue(),
                     time.perf_counter() - start)


def choose_window(wave, transform):
    """(the 5-s clip, its start in seconds): a slider over a longer recording, zero padding for a shorter one."""
    rate, clip_seconds = transform.sample_rate, transform.clip_samples // transform.sample_rate
    seconds = len(wave) / rate
    start = 0.0
    if seconds > clip_seconds:
        start = st.slider(f"Start of the {clip_seconds}-s window (s) in {seconds:.1f} s of audio", 0.0,
                          round(seconds - clip_seconds, 1), 0.0, 0.1, key="start")
    else:
        st.caption(f"{seconds:.1f} s of audio: the {clip_seconds}-s clip is padded with silence.")
    return transform.cut(torch.from_numpy(wave), int(start * rate)), start


def show_reconstruction(result, inverse_name):
    for label, audio in (("Original", result.original), ("Autoencoder", result.reconstruction),
                         ("Oracle (the true mel, turned into audio the same way)", result.oracle)):
        st.markdown(f"**{label}**")
        st.audio(audio, format="audio/wav")
    s, mel = result.scores, result.mel
    fmt = lambda value, spec: "undefined" if value is None else format(value, spec)  # noqa: E731
    st.table({"audio": ["autoencoder", "oracle"],
              "PESQ (wide-band)": [fmt(s["pesq"], ".2f"), fmt(s["oracle_pesq"], ".2f")],
              "STOI": [fmt(s["stoi"], ".3f"), fmt(s["oracle_stoi"], ".3f")]})
    st.caption(f"Mel: MSE {mel['mse']:.4f} ({versus_baseline(mel)} than the clip's time-average), cosine "
               f"{mel['cosine']:.3f}, 1 - spectral convergence {mel['mel_sc_score']:.3f}. Reconstructed, inverted "
               f"({inverse_name}, twice) and scored in {result.seconds:.2f} s.")


# ============================================================================================
# main
# ============================================================================================

@contextlib.contextmanager
def errors_as_messages():
    """A bug must not turn the page into a traceback: one line in the page, the details in the server's log.
    (Streamlit's own rerun and stop signals are not Exceptions, so they pass.)"""
    try:
        yield
    except Exception as err:
        traceback.print_exc()
        st.error(f"Something went wrong: {type(err).__name__}: {err}. The details are in the server's log.")


def main():
    st.set_page_config(page_title="ImageAudioGen demo", layout="wide")
    st.title("ImageAudioGen demo")
    try:
        args = parse_args(sys.argv[1:])
    except UsageError as err:
        message, usage = err.args
        st.error(f"demo/app.py: {message}")
        st.code(usage, language=None)
        return
    st.caption(f"Limits: at most {MAX_IMAGES} images per click; uploads up to {MAX_UPLOAD_MB} MB; audio is "
               f"reconstructed one 5-s window at a time. Device: {args.device}.")
    for tab, render in zip(st.tabs(["Digits", "Audio"]), (image_tab, audio_tab)):
        with tab, errors_as_messages():
            render(args)


main()
