"""Local web demo of both models: draw digits with the DDPM (or the GAN), reconstruct music with the mel autoencoder.

    make demo                                                # prints http://127.0.0.1:8501
    make demo IMAGE_CKPT=runs/ddpm.pt AUDIO_CKPT=runs/ae.pt  # other checkpoints
    python -m streamlit run demo/app.py -- --image_checkpoint runs/ddpm.pt --audio_checkpoint runs/ae.pt --device cpu

Run from the repository root, Streamlit reads .streamlit/config.toml: address 127.0.0.1, no browser opened,
uploads up to 50 MB.

Streamlit runs this file from the top on every click: it reads the options and lays out the two tabs, one
module each (demo/digits.py, demo/music.py; demo/common.py holds what they share). The checkpoints are read
once per server process (st.cache_resource, keyed by path and modification time, so a checkpoint retrained
meanwhile is read again) by the models' own packages (imagegen.pretrained, audiogen.pretrained, as the API
reads them), and every step of the work is a function of those packages: the demo lays out controls and
results and checks the user's input. The project is installed into .venv (pip install -e ., as `make demo`
does), which makes the packages and this one importable.
Without a checkpoint a tab says how to train one; bad input (a file that is not audio, an empty or silent
file, a file or count over the limits, a checkpoint of the wrong kind) gives a message in the page.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import audiogen.cli as ag  # the command lines: their defaults and folders
import imagegen.cli as ig
import streamlit as st
from audiogen.export import vocoder_choice_error
from audiogen.inverse import INVERSES, InverseConfig
from imagegen.common import resolve_device, resolve_path
from imagegen.unet import PRECISIONS

from demo.common import errors_as_messages
from demo.digits import MAX_IMAGES, image_tab
from demo.music import MAX_UPLOAD_MB, audio_tab


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
                   help="image_gen checkpoint or exported folder (default: image_gen's own default path)")
    p.add_argument("--audio_checkpoint", type=Path, default=script_default(ag, "checkpoint"),
                   help="audio_gen checkpoint or exported folder (default: audio_gen's own default path)")
    p.add_argument("--image_results", type=Path, default=script_default(ig, "results_dir"),
                   help="image_gen results folder whose metrics.json holds infer's FID for the checkpoint")
    p.add_argument("--audio_results", type=Path, default=script_default(ag, "results_dir"),
                   help="audio_gen results folder whose metrics.json holds infer's scores for the checkpoint")
    p.add_argument("--audio_inverse", choices=INVERSES, default=InverseConfig.kind,
                   help="how audio_gen's log-mels become audio (audio_gen.py --inverse); the vocoder kinds need "
                        "--vocoder, or an exported --audio_checkpoint folder with its vocoder")
    p.add_argument("--vocoder", type=Path, default=None, help="audio_gen vocoder checkpoint (--mode train_vocoder)")
    p.add_argument("--audio_prior", type=Path, default=None,
                   help="a learned prior of the audio VAE (--mode train_prior) that Generate samples instead of "
                        "N(0, I), with DDIM 50 steps, eta 0")
    p.add_argument("--device", default=None, help="torch device, cpu or cuda (default: cuda if available)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the U-Net's arithmetic for digits. auto: bf16 on a CPU with bfloat16 instructions "
                        "(avx512_bf16 or amx_bf16), else fp32; fp32 with --no-compile draws exactly infer's digits")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile the U-Net when the image checkpoint loads (about half a minute the first "
                        "time, less with torch's compile cache), so every click samples ~1.6x faster; falls back "
                        "to eager sampling, saying so, where compiling fails")
    args = p.parse_args(argv)
    problem = vocoder_choice_error(args.audio_inverse, args.vocoder, args.audio_checkpoint)
    if problem:
        p.error(problem)
    for name in ("vocoder", "audio_prior"):
        if getattr(args, name) is not None and not getattr(args, name).exists():
            p.error(f"--{name} {getattr(args, name)}: no such file or folder")
    args.device = resolve_device(args.device, p)
    return args


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
