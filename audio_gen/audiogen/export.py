"""--mode export: a checkpoint's inference weights as safetensors plus config.json, the form to share and to
load anywhere (--checkpoint/--prior/--vocoder FOLDER, the API, the demo, hubconf.py). An autoencoder or VAE
exported with its learned prior and its vocoder keeps them in subfolders that config.json names ("pairs"),
and whatever loads the folder uses them unless told otherwise."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import (CHECKPOINT_FORMAT, PRIOR_FORMAT, VOCODER_FORMAT, load_checkpoint, load_prior_checkpoint,
                         load_vocoder_checkpoint)
from .common import EXPORT_CONFIG, EXPORT_WEIGHTS, export_weights, usage_error
from .inverse import VOCODER_INVERSES, VOCODER_INVERSES_TEXT

# Per format: (the state dicts inference needs, the fields that only resume training).
EXPORTED = {
    CHECKPOINT_FORMAT: (("model",), ("optimizer", "schedule", "kl_weight", "partial_epoch", "rng", "rank_rng")),
    PRIOR_FORMAT: (("ema",), ("model", "optimizer", "schedule", "ema_updates", "partial_epoch", "rng")),
    VOCODER_FORMAT: (("model",), ("optimizer", "schedule", "partial_epoch", "rng")),
}
# What a vocoder's phase refiner keeps in an export: its weights go to model.safetensors as "refiner_model".
REFINER_KEPT = ("refiner_config", "vocoder_fingerprint", "epoch")
NAMES = {CHECKPOINT_FORMAT: "autoencoder", PRIOR_FORMAT: "learned prior", VOCODER_FORMAT: "vocoder"}


def declared_format(path):
    """The "format" a checkpoint file or exported folder declares, or None when it cannot be read (the loader
    then says what is wrong with it)."""
    path = Path(path)
    try:
        if path.is_dir():
            return json.loads((path / EXPORT_CONFIG).read_text()).get("format")
        return torch.load(path, map_location="cpu", weights_only=True).get("format")
    except Exception:
        return None


def export(checkpoint, export_dir, prior=None, vocoder=None):
    """Write `checkpoint` (an autoencoder/VAE, a learned prior or a vocoder) to `export_dir`; with an autoencoder,
    also its `prior` (checked to belong to it) and `vocoder` (checked to voice its features) into
    export_dir/prior and export_dir/vocoder. Returns the folder."""
    fmt = declared_format(checkpoint)
    if fmt in (PRIOR_FORMAT, VOCODER_FORMAT):
        if prior or vocoder:
            usage_error(f"{checkpoint} is a {NAMES[fmt]}: --prior and --vocoder pair with an autoencoder's export")
        state = (load_prior_checkpoint if fmt == PRIOR_FORMAT else load_vocoder_checkpoint)(checkpoint)
    else:
        state = load_checkpoint(checkpoint)  # an unknown file gets its one-line error here
        pairs = {}
        if prior:
            if state["kind"] != "vae":
                usage_error(f"--prior: {checkpoint} is a plain autoencoder, whose latent has no prior")
            export_weights(load_prior_checkpoint(prior, state, checkpoint), Path(export_dir) / "prior",
                           *EXPORTED[PRIOR_FORMAT])
            pairs["prior"] = "prior"
        if vocoder:
            write(load_vocoder_checkpoint(vocoder, state["transform_config"]), Path(export_dir) / "vocoder")
            pairs["vocoder"] = "vocoder"
        state = {**state, "pairs": pairs}
    folder = write(state, export_dir)
    size = (folder / EXPORT_WEIGHTS).stat().st_size / 1e6
    beside = "".join(f", with its {NAMES[f]} in {name}/" for name, f in (("prior", PRIOR_FORMAT),
                                                                          ("vocoder", VOCODER_FORMAT))
                     if name in state.get("pairs", {}))
    print(f"Exported the {NAMES[state['format']]} of {checkpoint} (epoch {state['epoch']}) to {folder}: "
          f"{EXPORT_WEIGHTS} ({size:.1f} MB) and {EXPORT_CONFIG}{beside}")
    return folder


def write(state, folder):
    """export_weights with the format's state dicts; a vocoder's phase refiner (a nested entry, which
    safetensors cannot hold) has its weights stored as a state dict of their own, "refiner_model", and its
    training state dropped. checkpoint.load_vocoder_checkpoint puts them back in place."""
    weights, drop = EXPORTED[state["format"]]
    record = state.get("refiner")
    if record:
        state = {**state, "refiner": {k: record[k] for k in REFINER_KEPT}, "refiner_model": record["model"]}
        weights = (*weights, "refiner_model")
    return export_weights(state, folder, weights, drop)


def vocoder_choice_error(inverse, vocoder, checkpoint):
    """What the API and the demo say of their --audio_inverse and --vocoder when they disagree, else None: a
    vocoder no chosen inverse reads, or a vocoder inverse with neither --vocoder nor a vocoder paired with the
    exported `checkpoint` folder."""
    if vocoder is not None and inverse not in VOCODER_INVERSES:
        return (f"--vocoder goes with --audio_inverse {VOCODER_INVERSES_TEXT} (which without it use the vocoder an "
                f"exported --audio_checkpoint folder pairs with)")
    if inverse in VOCODER_INVERSES and vocoder is None and paired(checkpoint, "vocoder") is None:
        return f"--audio_inverse {inverse} needs --vocoder (or an exported --audio_checkpoint folder with its vocoder)"
    return None


def paired(checkpoint, name):
    """The `name` ('prior' or 'vocoder') exported beside an autoencoder in folder `checkpoint`, else None."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        return None
    try:
        pairs = json.loads((checkpoint / EXPORT_CONFIG).read_text()).get("pairs") or {}
    except (OSError, ValueError):
        return None
    return checkpoint / pairs[name] if name in pairs else None
