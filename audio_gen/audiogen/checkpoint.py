"""The checkpoint: what rebuilds the model and its transform, and what resumes training at the exact step
(optimizer, schedule, RNG, history). Its keys and format version stay stable: older files still load."""
from __future__ import annotations

import dataclasses
import hashlib

import torch

from . import common
from .inverse import MelInverse
from .model import AudioAutoencoder
from .phase_refiner import PhaseRefiner
from .prior import LatentPrior
from .vocoder import Vocoder

CHECKPOINT_FORMAT = "imageaudiogen.audio_autoencoder"
CHECKPOINT_VERSION = 3  # 3: "kind" ('ae' or 'vae') and the KL weight; version 2 files are plain autoencoders
PRIOR_FORMAT = "imageaudiogen.audio_latent_prior"
PRIOR_VERSION = 2  # 2 added clip_context to prior_config; a version-1 prior has none
VOCODER_FORMAT = "imageaudiogen.audio_vocoder"
VOCODER_VERSION = 1


def load_checkpoint(path):
    """The audio autoencoder checkpoint in `path`; a missing, damaged or foreign file ends the program with one line."""
    state = common.load_checkpoint(path, CHECKPOINT_FORMAT, (2, CHECKPOINT_VERSION))
    state.setdefault("kind", "ae")
    return state


def require_vae(state, path, mode):
    """A plain autoencoder's latent has no distribution to sample from: its checkpoint is a usage error."""
    if state["kind"] != "vae":
        common.usage_error(f"{path} is a plain autoencoder (kind '{state['kind']}'), whose latent has no prior to "
                           f"sample from; --mode {mode} needs a VAE (train one with --model vae)")


def checkpoint_kind(model):
    """'vae' or 'ae': what the checkpoint of `model` records as its kind."""
    return "vae" if model.variational else "ae"


def rng_state():
    """The global CPU (and CUDA) random states: dropout draws from them."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore rng_state(); on a host with fewer GPUs than the one that saved it, the GPUs it has take the first
    saved states (set_rng_state_all would fail), and a CPU-only host restores the CPU state alone."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for index, saved in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(saved, index)


def data_record(data):
    """The checkpoint's "data" entry for a DataConfig: infer compares it with the folder it is given."""
    return {"audio_dir": str(data.audio_dir.resolve()) if data.audio_dir else None,
            "musdb_root": str(data.musdb_root) if data.musdb_root else None, "sources": list(data.sources)}


def make_checkpoint(run, data, command_line, rank_rngs=None):
    """Everything to rebuild the model (config, weights with normalisation) and to resume exactly:
    `epoch` is the last finished epoch; `partial_epoch` the next one's steps done, or None between epochs.
    `data`: the DataConfig trained on; `command_line`: the options as given, a plain dict kept as "args".
    `rank_rngs`: with several processes, each one's rng_state() (their dropout differs), kept as "rank_rng"."""
    return {**({"rank_rng": rank_rngs, "processes": len(rank_rngs)} if rank_rngs else {}),
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": checkpoint_kind(run.trainer.model),
        "model_config": dict(run.trainer.model.config), "transform_config": run.transform.config,
        **run.trainer.state_dict(), "epoch": run.epoch, "partial_epoch": run.progress,
        "interrupted": run.progress is not None, "rng": rng_state(), "history": run.history,
        "data": data_record(data), "args": dict(command_line),
    }


def model_from_checkpoint(state, device):
    """The trained autoencoder of a loaded checkpoint, in eval mode on `device`."""
    model = AudioAutoencoder(**{"pca_path": False, **state["model_config"]})  # older checkpoints had none
    model.load_state_dict(state["model"])
    return model.to(device).eval()


# --- the learned prior ------------------------------------------------------------------------

def weights_fingerprint(weights):
    """16 hex digits of SHA-256 over a state dict's names and values: which VAE a prior was trained on."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def load_prior_checkpoint(path, vae_state=None, vae_path=None):
    """The learned-prior checkpoint in `path`; with `vae_state`, also checked to belong to that VAE (a prior
    is meaningless over another VAE's latents): a mismatch is a one-line usage error."""
    state = common.load_checkpoint(path, PRIOR_FORMAT, (1, PRIOR_VERSION))
    state["prior_config"].setdefault("clip_context", False)
    if vae_state is not None and state["vae"]["fingerprint"] != weights_fingerprint(vae_state["model"]):
        common.usage_error(f"{path} is the learned prior of another VAE ({state['vae']['checkpoint']}, epoch "
                           f"{state['vae']['epoch']}), not of {vae_path}: train one for it with --mode train_prior")
    return state


def prior_from_checkpoint(state, device):
    """The learned prior of a loaded prior checkpoint, with its averaged (EMA) weights, in eval mode on `device`."""
    prior = LatentPrior(**state["prior_config"])
    prior.load_state_dict(state["ema"])
    return prior.to(device).eval()


# --- the vocoder ------------------------------------------------------------------------------

def load_vocoder_checkpoint(path, transform_config=None):
    """The vocoder checkpoint in `path`; with `transform_config`, also checked to voice those features (a vocoder
    made for other mels would voice noise): a mismatch is a one-line usage error."""
    state = common.load_checkpoint(path, VOCODER_FORMAT, (VOCODER_VERSION,))
    if "refiner_model" in state:  # an exported folder keeps the phase refiner's weights apart (export.write)
        state["refiner"] = {**state["refiner"], "model": state.pop("refiner_model")}
    if transform_config is not None and state["transform_config"] != transform_config:
        theirs, ours = state["transform_config"], transform_config
        differ = ", ".join(f"{k} {theirs.get(k)} (needed: {ours.get(k)})" for k in ours if theirs.get(k) != ours.get(k))
        common.usage_error(f"{path} is a vocoder for other features: {differ}; train one for these with "
                           f"--mode train_vocoder")
    return state


def vocoder_from_checkpoint(state, device):
    """The trained vocoder of a loaded vocoder checkpoint, in eval mode on `device`."""
    vocoder = Vocoder(**state["vocoder_config"])
    vocoder.load_state_dict(state["model"])
    return vocoder.to(device).eval()


def refiner_is_current(state):
    """Whether the phase refiner in a loaded vocoder checkpoint was trained for the vocoder weights it now holds
    (train_vocoder --resume changes them)."""
    return state["refiner"]["vocoder_fingerprint"] == weights_fingerprint(state["model"])


def refiner_from_checkpoint(state, path, device):
    """The phase refiner kept in a loaded vocoder checkpoint (train_refiner writes it there), in eval mode on
    `device`. A vocoder without one, or whose weights changed since the refiner was trained (train_vocoder
    --resume), is a one-line usage error."""
    record = state.get("refiner")
    if record is None:
        common.usage_error(f"{path} has no phase refiner: train one for it with --mode train_refiner --vocoder {path}")
    if not refiner_is_current(state):
        common.usage_error(f"{path}'s phase refiner was trained for other vocoder weights: train it again with "
                           f"--mode train_refiner")
    refiner = PhaseRefiner.from_config(record["refiner_config"])
    refiner.load_state_dict(record["model"])
    return refiner.to(device).eval()


def load_inverse(config, transform):
    """The MelInverse that InverseConfig `config` describes for `transform`'s features, with its vocoder loaded
    (and checked to be made for those features) when it names one, and for 'vocoder-refined' the vocoder's
    phase refiner, after the phase retrieval it was trained on (whatever `config` says)."""
    vocoder = refiner = None
    if config.needs_vocoder:
        state = load_vocoder_checkpoint(config.vocoder, transform.config)
        vocoder = vocoder_from_checkpoint(state, transform.device)
        if config.kind == "vocoder-refined":
            refiner = refiner_from_checkpoint(state, config.vocoder, transform.device)
            config = dataclasses.replace(config, iterations=refiner.config["iterations"],
                                         retrieval=refiner.config["retrieval"])
    return MelInverse(config, transform, vocoder, refiner)
