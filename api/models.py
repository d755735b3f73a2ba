"""The models the server holds: each checkpoint loaded once, described (what it is, what it scored) and
wrapped in the one operation the API asks of it. All the work is done by the model packages."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from audiogen.audio_io import SILENCE_RMS, UnusableAudio, decode_music_bytes, wav_bytes
from audiogen.checkpoint import load_checkpoint as load_audio_checkpoint
from audiogen.checkpoint import load_inverse, model_from_checkpoint
from audiogen.generate import draw_clips, load_learned_prior
from audiogen.inverse import InverseConfig
from audiogen.metrics import score_clip
from audiogen.prior import SamplerConfig
from audiogen.transform import LogMelTransform
from imagegen.checkpoint import checkpoint_guidance, checkpoint_position
from imagegen.checkpoint import load_checkpoint as load_image_checkpoint
from imagegen.common import read_json
from imagegen.data import class_names, class_slug, dataset_title, to_unit_range
from imagegen.guidance import DEFAULT_GUIDANCE_SCALE
from imagegen.plots import png_bytes
from imagegen.sampling import class_seed, ema_sampler_from_checkpoint

RANDOM_PROMPTS = ("random", "unconditional", "none")


class BadRequest(ValueError):
    """A request this model cannot serve; the message is for the client (status 400)."""


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def matching_infer_record(results_dir, checkpoint, key, value):
    """metrics.json["infer"] of `results_dir` when it was written for this checkpoint at this point of its
    training (`key` == `value`), else None: a record of another model must not be served as this one's."""
    record = read_json(Path(results_dir) / "metrics.json").get("infer") if results_dir else None
    if not record or not record.get("checkpoint") or record.get(key) != value:
        return None
    return record if Path(record["checkpoint"]).resolve() == Path(checkpoint).resolve() else None


@dataclass
class ImageModel:
    """An image checkpoint's EMA sampler, a DDPM's or a GAN generator's (fp32, not compiled: the pixels of
    `image_gen.py --mode infer`)."""
    path: Path
    sha256: str
    state: dict          # the checkpoint without its weights
    sampler: object      # imagegen.sampling.Sampler or GanSampler
    results_dir: Path | None = None

    @classmethod
    def load(cls, path, device, results_dir=None):
        state = load_image_checkpoint(path)
        sampler = ema_sampler_from_checkpoint(state, device)
        heavy = ("model", "ema", "optimizer", "discriminator", "d_optimizer", "generator", "epoch_progress")
        light = {k: v for k, v in state.items() if k not in heavy}
        return cls(Path(path), file_sha256(path), light, sampler, results_dir)

    @property
    def kind(self):
        """'ddpm' or 'gan'."""
        return self.state["kind"]

    @property
    def id(self):
        return f"{self.kind}-{self.dataset}"

    @property
    def dataset(self):
        return self.state["dataset"]

    @property
    def conditional(self):
        return self.sampler.num_classes > 0

    @property
    def default_guidance(self):
        return checkpoint_guidance(self.state, DEFAULT_GUIDANCE_SCALE)

    def label_of(self, prompt):
        """The class index a prompt names (7, '7', 'ankle boot', 'ankle-boot'), or None for 'random'."""
        text = str(prompt).strip().lower()
        if text in RANDOM_PROMPTS:
            if self.conditional and self.kind == "gan":
                raise BadRequest(f"{self.id} is a class-conditional GAN: it has no unconditional samples; "
                                 f"give a class of {dataset_title(self.dataset)}")
            return None
        if not self.conditional:
            raise BadRequest(f"{self.id} is unconditional: the only prompt it takes is 'random'")
        names = class_names(self.dataset)
        for label, name in enumerate(names):
            if text in (name.lower(), class_slug(self.dataset, label)):
                return label
        if text.lstrip("-").isdigit():
            raise BadRequest(f"class {text} is out of range: {self.id} has classes 0 to {len(names) - 1}")
        raise BadRequest(f"unknown prompt {prompt!r}: give a class of {dataset_title(self.dataset)} "
                         f"({', '.join(names)}), its index 0-{len(names) - 1}, or 'random'")

    def noise_seed(self, label, seed):
        """The seed of the noise `image_gen.py --mode infer --seed seed` draws for this class (or for an
        unconditional model's samples), so a request reproduces infer's images."""
        if not self.conditional:
            return seed
        return class_seed(seed, self.sampler.null_class if label is None else label)

    def draw(self, groups, settings):
        """groups [(label, n, noise seed)] drawn as one batch -> one list of PNG bytes per group."""
        with torch.inference_mode():
            images = self.sampler.sample_groups(groups, settings)
        return [[png_bytes(image) for image in to_unit_range(group)] for group in images]

    def health(self):
        return {"id": self.id, "kind": self.kind, "checkpoint": str(self.path), "sha256": self.sha256,
                "dataset": self.dataset, "epochs": self.state["epochs_completed"], "step": self.state["step"],
                "position": checkpoint_position(self.state)}

    def card(self):
        """health() plus what the model is and what it scored, from the checkpoint and its results folder."""
        classes = list(class_names(self.dataset)) if self.conditional else []
        evaluated = [h for h in self.state["history"] if h.get("fid") is not None]
        train = read_json(Path(self.results_dir) / "metrics.json").get("train", {}) if self.results_dir else {}
        same_run = train.get("epochs") and train["epochs"][-1] == self.state["history"][-1]
        training = None
        if evaluated:
            h = evaluated[-1]
            training = {"epoch": h["epoch"], "fid": h["fid"], "kid": h["kid"], "accuracy": h.get("accuracy"),
                        "fid_samples": h.get("fid_samples"), "fid_backbone": h.get("fid_backbone"),
                        "sampler": train.get("fid_sampler") if same_run else None,
                        "real_vs_real_floor": train.get("real_vs_real_floor") if same_run else None}
        infer = matching_infer_record(self.results_dir, self.path, "step", self.state["step"])
        ddpm = self.kind == "ddpm"
        return {**self.health(), "classes": classes, "conditional": self.conditional,
                "default_guidance_scale": self.default_guidance if self.conditional and ddpm else None,
                "guidance_fit": self.state.get("guidance"),
                "num_timesteps": self.sampler.num_timesteps if ddpm else None,
                "scores": {"training": training,
                           "infer": {k: infer.get(k) for k in ("fid", "kid", "accuracy", "fid_samples",
                                                              "fid_backbone", "fid_sampler", "real_vs_real_floor")}
                           if infer and infer.get("fid") is not None else None}}


@dataclass
class AudioModel:
    """The mel autoencoder (or VAE) of a checkpoint, its log-mel transform and the inverse that voices its mels
    (audio_gen's default)."""
    path: Path
    sha256: str
    state: dict
    model: object
    inverse: object
    results_dir: Path | None = None
    prior: object = None         # a learned prior over the VAE's latents, or None: N(0, I)
    prior_name: str = "N(0, I)"

    @classmethod
    def load(cls, path, device, results_dir=None, inverse=InverseConfig(), prior=None):
        """The checkpoint at `path`, voiced by the InverseConfig `inverse`; with `prior`, the learned prior that
        generations sample (it must belong to this VAE; default DDIM settings)."""
        state = load_audio_checkpoint(path)
        model = model_from_checkpoint(state, device)
        inverse = load_inverse(inverse, LogMelTransform.from_config(state["transform_config"], device))
        learned, prior_name = load_learned_prior(prior, state, path, SamplerConfig(), device)
        light = {k: v for k, v in state.items() if k in ("epoch", "history", "data", "args", "model_config", "kind")}
        return cls(Path(path), file_sha256(path), light, model, inverse, results_dir, learned, prior_name)

    @property
    def transform(self):
        return self.inverse.transform

    @property
    def kind(self):
        return self.state["kind"]

    @property
    def id(self):
        return "mel-vae" if self.kind == "vae" else "mel-autoencoder"

    def generate(self, count, seed):
        """`count` clips from the VAE's prior (N(0, I) or the learned one) as WAV bytes: what `audio_gen.py --mode
        generate --seed` (with the same --prior and --inverse) writes for the same seed."""
        _, audio = draw_clips(self.model, self.inverse, count, seed, prior=self.prior, sampler=SamplerConfig())
        return [wav_bytes(a, self.transform.sample_rate) for a in audio]

    @property
    def clip_seconds(self):
        return self.transform.clip_samples / self.transform.sample_rate

    def decode(self, data, name):
        """The uploaded bytes (file `name`) as a mono waveform at the model's rate; UnusableAudio says why not."""
        return decode_music_bytes(data, name, self.transform.sample_rate)

    def reconstruct(self, wave, start, with_oracle):
        """The `clip_seconds` window from `start` s of a decoded waveform through the autoencoder and the
        inverse, scored beside the oracle (the true mel, same inverse): (WAV bytes, oracle WAV bytes or None, scores)."""
        rate = self.transform.sample_rate
        duration = len(wave) / rate
        if start >= duration:
            raise BadRequest(f"start {start:g} s is past the end of the audio ({duration:.2f} s)")
        clip = self.transform.cut(torch.from_numpy(wave), int(start * rate))
        if float(clip.pow(2).mean().sqrt()) < SILENCE_RMS:
            raise UnusableAudio(f"the {self.clip_seconds:g} s from {start:g} s are silent (below -60 dBFS)")
        result = score_clip(self.model, self.inverse, clip)
        oracle = wav_bytes(result["oracle"], rate) if with_oracle else None
        return wav_bytes(result["audio"], rate), oracle, {"audio": result["scores"], "mel": result["mel"],
                                                          "duration_seconds": duration}

    def health(self):
        return {"id": self.id, "kind": "vae" if self.kind == "vae" else "autoencoder", "checkpoint": str(self.path),
                "sha256": self.sha256, "can_generate": self.kind == "vae", "inverse": self.inverse.name,
                "prior": self.prior_name if self.kind == "vae" else None,
                "dataset": self.state["data"].get("audio_dir") or f"MUSDB18 {self.state['data'].get('musdb_root')}",
                "epochs": self.state["epoch"]}

    def card(self):
        scored = [h for h in self.state["history"] if h.get("audio_valid", {}).get("stoi") is not None]
        training = None
        if scored:
            h = scored[-1]
            training = {"epoch": h["epoch"], "split": "valid", **h["audio_valid"],
                        "mel_mse": h["valid"]["mse"], "time_average_mse": h["valid"]["time_average_mse"]}
        infer = matching_infer_record(self.results_dir, self.path, "epoch", self.state["epoch"])
        test = (infer or {}).get("test") or {}
        return {**self.health(), "sample_rate": self.transform.sample_rate, "clip_seconds": self.clip_seconds,
                "n_mels": self.transform.config["n_mels"], "compression": self.model.compression,
                "scores": {"training": training,
                           "infer": {"split": test.get("scored_on"), "clips": test.get("clips"),
                                     "mel_mse": test.get("mse"), "time_average_mse": test.get("time_average_mse"),
                                     **(test.get("audio") or {})} if test else None}}
