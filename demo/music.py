"""The demo's Audio tab: reconstruct 5 s of any music through the checkpoint's autoencoder beside the oracle
(the true mel through the same inverse), and, for a VAE, generate new clips from its prior."""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import torch
from audiogen.audio_io import SILENCE_RMS, UnusableAudio, decode_music_bytes, decode_music_file, wav_bytes
from audiogen.common import read_json
from audiogen.data import folder_splits
from audiogen.inverse import InverseConfig
from audiogen.metrics import versus_baseline
from audiogen.musdb import detect_layout, musdb_splits
from audiogen.plots import plot_spectrogram_grid, plot_spectrograms
from audiogen.pretrained import MusicAutoencoder

from demo.common import errors_as_messages, open_checkpoint, same_checkpoint

MAX_UPLOAD_MB = 50      # about an hour of compressed music, several minutes of WAV
MAX_GENERATED = 8       # clips per click of the audio Generate panel: a few seconds of mel inversion on a CPU


@st.cache_resource(show_spinner="Loading the audio checkpoint ...", max_entries=2)
def load_audio_checkpoint(path, stamp, device, inverse_kind=InverseConfig.kind, vocoder=None, prior=None):
    """(what the page says about the checkpoint, its MusicAutoencoder: the autoencoder, the MelInverse that voices
    its mels (audio_gen's default, or `inverse_kind` with the `vocoder` file) and a VAE's learned `prior`, else
    N(0, I)): loaded by audiogen.pretrained once per server and file version."""
    autoencoder = MusicAutoencoder.load(path, device, InverseConfig(inverse_kind, vocoder=Path(vocoder) if vocoder
                                                                    else None), Path(prior) if prior else None)
    state = autoencoder.state
    about = {"epoch": state["epoch"], "history": state["history"], "data": state["data"], "kind": state["kind"],
             "inverse": autoencoder.inverse.name, "prior": autoencoder.prior_name}
    return about, autoencoder


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


def reconstruct_clip(autoencoder, clip, title):
    """Original, autoencoder and oracle audio (the true mel through the same inverse) of one (clip_samples,) clip
    as WAVs, its spectrogram plot and scores (audio_gen's score_clip)."""
    start = time.perf_counter()
    transform = autoencoder.transform
    result = autoencoder.reconstruct(clip)
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
    about, autoencoder = loaded
    transform, inverse = autoencoder.transform, autoencoder.inverse
    describe_audio_checkpoint(about, autoencoder.model, args.audio_checkpoint, args.audio_results)
    generation_section(about["kind"], autoencoder)
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
                    result = reconstruct_clip(autoencoder, clip, f"{name} @ {start:.1f}s")
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


def generation_section(kind, autoencoder):
    """The Generate panel for a VAE; for a plain autoencoder, a line on how to get one."""
    st.subheader("Generate")
    if kind != "vae":
        st.caption("This checkpoint is a plain autoencoder: its latent has no prior to sample from. Train a VAE "
                   "(`MODEL=vae AUDIO_DIR=~/Music audio_gen/train.sh`) and open it with "
                   "`make demo AUDIO_CKPT=audio_gen/models/audio_vae.pt` to generate music.")
        return
    generate_panel(autoencoder)


@st.fragment
def generate_panel(autoencoder):
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
                    st.session_state["generated"] = generate_clips(autoencoder, count, seed)
            shown = st.session_state.get("generated")
            if shown is None:
                return
            for i, wav in enumerate(shown.wavs):
                st.markdown(f"**Clip {i}** (seed {shown.seed})")
                st.audio(wav, format="audio/wav")
            st.caption(f"{len(shown.wavs)} clips of 5 s generated in {shown.seconds:.1f} s "
                       f"({autoencoder.inverse.name}).")
        st.image(shown.grid, caption="Log-mel spectrograms of the generated clips, before they become audio")


def generate_clips(autoencoder, count, seed):
    """`count` clips from the VAE's prior (N(0, I), or its learned prior) with audio_gen's generate functions, so a
    seed gives what `--mode generate --seed` (with the same --prior and --inverse) gives: WAVs and a spectrogram grid."""
    start = time.perf_counter()
    log_mels, audio = autoencoder.generate(count, seed)
    transform = autoencoder.transform
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
