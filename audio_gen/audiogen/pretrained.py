"""A trained music autoencoder (or VAE), loaded once with its transform, its inverse and its prior: what the REST
API, the web demo and hubconf.py hold (checkpoint file or exported folder alike), so that they give exactly what
`audio_gen.py --mode infer / generate` give for the same settings and seed."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .audio_io import decode_music_bytes
from . import checkpoint
from .checkpoint import load_inverse, model_from_checkpoint
from .common import usage_error
from .export import EXPORTED, paired
from .generate import draw_clips, load_learned_prior
from .inverse import InverseConfig
from .metrics import score_clip
from .prior import SamplerConfig
from .transform import LogMelTransform


@dataclass
class MusicAutoencoder:
    """The autoencoder of a checkpoint (`model`, in eval mode), the MelInverse that voices its mels (`inverse`,
    which holds the log-mel transform) and, for a VAE, the learned `prior` its generations sample (None: N(0, I)).
    `state`: the checkpoint without its weights (configs, data, history)."""
    path: Path
    state: dict
    model: object
    inverse: object
    prior: object = None
    prior_name: str = "N(0, I)"
    sampler: SamplerConfig = SamplerConfig()

    @classmethod
    def load(cls, path, device="cpu", inverse=InverseConfig(), prior=None, sampler=SamplerConfig()):
        """The checkpoint (or exported folder) at `path` on `device`, voiced by the InverseConfig `inverse`; a VAE
        generates from the learned `prior` (a checkpoint of it, which must belong to this VAE), run as `sampler`
        says. An exported folder's own prior and vocoder (its "pairs") serve unless others are given."""
        path, device = Path(path), torch.device(device)
        state = checkpoint.load_checkpoint(path)  # (a module attribute: tests count the loads)
        if inverse.needs_vocoder and inverse.vocoder is None:
            vocoder = paired(path, "vocoder")
            if vocoder is None:
                usage_error(f"the inverse '{inverse.kind}' needs a vocoder: give one (--vocoder), or export {path} "
                            f"with its vocoder")
            inverse = dataclasses.replace(inverse, vocoder=vocoder)
        if prior is None and state["kind"] == "vae":
            prior = paired(path, "prior")
        model = model_from_checkpoint(state, device)
        mel_inverse = load_inverse(inverse, LogMelTransform.from_config(state["transform_config"], device))
        learned, prior_name = load_learned_prior(prior, state, path, sampler, device)
        weights, resume_only = EXPORTED[state["format"]]
        light = {k: v for k, v in state.items() if k not in weights and k not in resume_only}
        return cls(path, light, model, mel_inverse, learned, prior_name, sampler)

    @property
    def transform(self):
        return self.inverse.transform

    @property
    def kind(self):
        """'ae' or 'vae'."""
        return self.state["kind"]

    @property
    def clip_seconds(self):
        return self.transform.clip_samples / self.transform.sample_rate

    def generate(self, count, seed=0):
        """`count` clips from the VAE's prior (N(0, I) or the learned one): ((count, n_mels, frames) log-mels,
        (count, clip_samples) waveforms), what `--mode generate --seed` writes with the same prior and inverse."""
        if self.kind != "vae":
            raise ValueError("a plain autoencoder's latent has no prior to sample from: load a VAE")
        return draw_clips(self.model, self.inverse, count, seed, prior=self.prior, sampler=self.sampler)

    def reconstruct(self, clip):
        """One (clip_samples,) waveform at the model's rate through the autoencoder and the inverse, scored beside
        the oracle (the true mel through the same inverse): metrics.score_clip's dict."""
        return score_clip(self.model, self.inverse, clip)

    def decode(self, data, name):
        """Audio file bytes (named `name`) as a mono float32 waveform at the model's rate (UnusableAudio: why not)."""
        return decode_music_bytes(data, name, self.transform.sample_rate)
