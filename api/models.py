"""The models the server holds: each loaded once by its own package (imagegen.pretrained, audiogen.pretrained,
as the demo and hubconf.py load them), described (what it is, what it scored) and wrapped in the one operation
the API asks of it, with its answers as PNG or WAV bytes."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from audiogen.audio_io import SILENCE_RMS, UnusableAudio, wav_bytes
from audiogen.inverse import InverseConfig
from audiogen.pretrained import MusicAutoencoder
from imagegen.common import read_json
from imagegen.plots import png_bytes
from imagegen.pretrained import ImageGenerator, PromptError


class BadRequest(ValueError):
    """A request this model cannot serve; the message is for the client (status 400)."""


def file_sha256(path):
    """SHA-256 of a checkpoint file, or of an exported folder's config.json and weights together."""
    path = Path(path)
    digest = hashlib.sha256()
    for part in ([path / "config.json", path / "model.safetensors"] if path.is_dir() else [path]):
        with open(part, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def matching_infer_record(results_dir, checkpoint, key, value):
    """metrics.json["infer"] of `results_dir` when it was written for this checkpoint at this point of its
    training (`key` == `value`), else None: a record of another model must not be served as this one's."""
    record = read_json(Path(results_dir) / "metrics.json").get("infer") if results_dir else None
    if not record or not record.get("checkpoint") or record.get(key) != value:
        return None
    return record if Path(record["checkpoint"]).resolve() == Path(checkpoint).resolve() else None


@dataclass
class ImageModel:
    """An image checkpoint's ImageGenerator (fp32, not compiled: the pixels of `image_gen.py --mode infer`)."""
    path: Path
    sha256: str
    generator: ImageGenerator
    results_dir: Path | None = None

    @classmethod
    def load(cls, path, device, results_dir=None):
        return cls(Path(path), file_sha256(path), ImageGenerator.load(path, device), results_dir)

    @property
    def state(self):
        return self.generator.state

    @property
    def sampler(self):
        return self.generator.sampler

    @property
    def kind(self):
        """'ddpm' or 'gan'."""
        return self.generator.kind

    @property
    def id(self):
        return f"{self.kind}-{self.dataset}"

    @property
    def dataset(self):
        return self.generator.dataset

    @property
    def conditional(self):
        return self.generator.conditional

    @property
    def default_guidance(self):
        return self.generator.default_guidance

    def label_of(self, prompt):
        """The class index a prompt names (7, '7', 'ankle boot', 'ankle-boot'), or None for 'random'."""
        try:
            return self.generator.label_of(prompt)
        except PromptError as err:
            raise BadRequest(str(err)) from None

    def noise_seed(self, label, seed):
        return self.generator.noise_seed(label, seed)

    def draw(self, groups, settings):
        """groups [(label, n, noise seed)] drawn as one batch -> one list of PNG bytes per group."""
        return [[png_bytes(image) for image in group] for group in self.generator.draw(groups, settings)]

    def health(self):
        return {"id": self.id, "kind": self.kind, "checkpoint": str(self.path), "sha256": self.sha256,
                "dataset": self.dataset, "epochs": self.state["epochs_completed"], "step": self.state["step"],
                "position": self.generator.position}

    def card(self):
        """health() plus what the model is and what it scored, from the checkpoint and its results folder."""
        classes = self.generator.class_names
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
    """A MusicAutoencoder: the mel autoencoder (or VAE) of a checkpoint with its transform, the inverse that voices
    its mels (audio_gen's default unless told) and a VAE's prior."""
    path: Path
    sha256: str
    autoencoder: MusicAutoencoder
    results_dir: Path | None = None

    @classmethod
    def load(cls, path, device, results_dir=None, inverse=InverseConfig(), prior=None):
        """The checkpoint at `path`, voiced by the InverseConfig `inverse`; with `prior`, the learned prior that
        generations sample (it must belong to this VAE; default DDIM settings)."""
        return cls(Path(path), file_sha256(path), MusicAutoencoder.load(path, device, inverse, prior), results_dir)

    @property
    def state(self):
        return self.autoencoder.state

    @property
    def model(self):
        return self.autoencoder.model

    @property
    def inverse(self):
        return self.autoencoder.inverse

    @property
    def prior_name(self):
        return self.autoencoder.prior_name

    @property
    def transform(self):
        return self.autoencoder.transform

    @property
    def kind(self):
        return self.autoencoder.kind

    @property
    def id(self):
        return "mel-vae" if self.kind == "vae" else "mel-autoencoder"

    def generate(self, count, seed):
        """`count` clips from the VAE's prior (N(0, I) or the learned one) as WAV bytes: what `audio_gen.py --mode
        generate --seed` (with the same --prior and --inverse) writes for the same seed."""
        _, audio = self.autoencoder.generate(count, seed)
        return [wav_bytes(a, self.transform.sample_rate) for a in audio]

    @property
    def clip_seconds(self):
        return self.autoencoder.clip_seconds

    def decode(self, data, name):
        """The uploaded bytes (file `name`) as a mono waveform at the model's rate; UnusableAudio says why not."""
        return self.autoencoder.decode(data, name)

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
        result = self.autoencoder.reconstruct(clip)
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
