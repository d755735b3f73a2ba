"""FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) of generated images against real test
images, plus class accuracy, in the feature space of the FID Inception-v3 or of the data set's classifier."""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .classifier import fingerprint, load_or_train_classifier
from .common import atomic_torch_save, progress_bar
from .data import dataset_title, load_images
from .inception import InceptionUnavailable, ieee_fp32_convolutions, inception_extractor, inception_weights

REAL_STATS_FORMAT = "imageaudiogen.fid_real_features"


@dataclass(frozen=True)
class FidSettings:
    """N generated and N real images per FID/KID (0: none), the feature backbone ('auto', 'inception' or
    'mnist-classifier') and, optionally, the user's own Inception weights file."""
    num_samples: int = 1000
    backbone: str = "auto"
    weights: str | None = None


class _Features(nn.Module):
    """Identity 'extractor': torchmetrics' FID and KID are fed features we computed once."""

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, features):
        return features


def file_sha1(path):
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FidEvaluator:
    """FID and KID of generated images against `real` images (uint8 (N, 28, 28): the first N test images),
    in the feature space of `extractor` (uint8 (n, 3, 28, 28) -> (n, d)).

    The real features, and the real-vs-real floor (`reference`, the first N training images, scored like
    generated ones), are computed once per backbone, data set and N, and cached in `cache_dir`. KID uses
    100 subsets of min(N, 1000) and a fixed seed, so it draws nothing from the caller's RNG. With a
    `classifier`, class-conditional samples are also scored for accuracy (share recognised as asked)."""

    def __init__(self, backbone, extractor, weights_id, real, reference, cache_dir, device, dataset="mnist",
                 classifier=None):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        self.backbone, self.extractor, self.device = backbone, extractor.eval(), device
        self.dataset, self.classifier = dataset, classifier
        self.num_samples = len(real)
        key = fingerprint(backbone, weights_id, real.numpy().tobytes(), reference.numpy().tobytes())
        cache = Path(cache_dir) / f"fid-real-{dataset}-{backbone}-n{self.num_samples}-{key}.pt"
        cached = self._load_cache(cache, key)
        if cached is None:
            print(f"Computing {backbone} features of {self.num_samples} test and {self.num_samples} training "
                  f"images (once; cached in {cache})", flush=True)
            real_features = self.features(real.unsqueeze(1))
            reference_features = self.features(reference.unsqueeze(1))
        else:
            real_features = cached["real_features"]
        self.real_features = real_features  # (N, d): what a caller resamples for a bootstrap interval
        dim = real_features.shape[1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # KID's "will save all extracted features" notice
            self.fid = FrechetInceptionDistance(feature=_Features(dim), reset_real_features=False)
            self.kid = KernelInceptionDistance(feature=_Features(dim), subsets=100,
                                               subset_size=min(1000, self.num_samples), reset_real_features=False)
        self.fid.update(real_features.double(), real=True)
        self.kid.update(real_features.double(), real=True)
        if cached is None:
            self.floor = self.scores(reference_features)
            atomic_torch_save({"format": REAL_STATS_FORMAT, "key": key, "real_features": real_features,
                               "floor": self.floor}, cache)
        else:
            self.floor = cached["floor"]

    @staticmethod
    def _load_cache(path, key):
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            return state if state.get("format") == REAL_STATS_FORMAT and state.get("key") == key else None
        except Exception:
            return None  # broken cache: recompute

    @torch.no_grad()
    def features(self, images_uint8, batch_size=16):
        """uint8 (n, 1, 28, 28) -> float32 (n, d) on the CPU, in batches of 16 (fastest per image on a CPU)
        or 500 on a GPU. On a GPU the convolutions run in IEEE fp32, not TF32, so that a GPU computes the
        features as the CPU does (docs/gpu.md has the comparison)."""
        if self.device.type == "cuda":
            batch_size = 500
        with ieee_fp32_convolutions():
            out = [self.extractor(images_uint8[i:i + batch_size].to(self.device).expand(-1, 3, -1, -1)).float().cpu()
                   for i in progress_bar(range(0, len(images_uint8), batch_size), f"{self.backbone} features",
                                         unit="batches")]
        return torch.cat(out)

    def scores(self, features):
        """{'fid', 'kid', 'kid_std'} of (n, d) features against the real ones."""
        self.fid.reset()  # keeps the real statistics
        self.kid.reset()
        self.fid.update(features.double(), real=False)
        self.kid.update(features.double(), real=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # KID's subsets use the global RNG
            kid, kid_std = self.kid.compute()
        return {"fid": float(self.fid.compute()), "kid": float(kid), "kid_std": float(kid_std)}

    def __call__(self, generated_uint8, labels=None):
        """Scores of generated uint8 (n, 1, 28, 28) images; with their asked `labels` (n,) also 'accuracy'."""
        scores = self.scores(self.features(generated_uint8))
        if labels is not None and self.classifier is not None:
            scores["accuracy"] = (self.classifier.predict(generated_uint8) == labels.cpu()).float().mean().item()
        return scores

    def describe(self):
        return f"{self.backbone}, N={self.num_samples}"

    def summary(self):
        return {"fid_backbone": self.backbone, "fid_samples": self.num_samples, "dataset": self.dataset,
                "real_vs_real_floor": {**self.floor, "what": f"first {self.num_samples} training images against "
                                                             f"the first {self.num_samples} test images"},
                **({"classifier_test_accuracy": self.classifier.test_accuracy} if self.classifier else {})}


def load_classifier(cache_dir, dataset, data_dir, device):
    """The data set's classifier (trained once and cached), with its test accuracy as `test_accuracy`."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        classifier, accuracy, path = load_or_train_classifier(cache_dir, dataset, data_dir, device)
    classifier.test_accuracy, classifier.path = accuracy, path
    print(f"Class accuracy is measured by the {dataset_title(dataset)} classifier, trained on the training "
          f"set ({accuracy:.2%} on the test set)")
    return classifier


def make_evaluator(settings, dataset, data_dir, cache_dir, device, conditional, classifier=None):
    """The FID/KID evaluator that `settings` (FidSettings) names, on N = min(settings.num_samples, test
    set size) images; for a `conditional` model it also carries the data set's classifier (`classifier`,
    or loaded here) for class accuracy. Built inside fork_rng: it draws nothing from the caller's RNG,
    whichever backbone, cache or download state it meets."""
    if conditional and classifier is None:
        classifier = load_classifier(cache_dir, dataset, data_dir, device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        backbone = None
        if settings.backbone in ("auto", "inception"):
            try:
                path = inception_weights(cache_dir, settings.weights)
                extractor, backbone = inception_extractor(path, device), "inception-v3"
                weights_id = file_sha1(path)
            except InceptionUnavailable as err:
                if settings.backbone == "inception":
                    raise SystemExit(f"error: --fid_backbone inception: {err}")
                print(f"note: {err}. FID/KID fall back to the features of a small {dataset_title(dataset)} "
                      f"classifier; such values are NOT comparable with Inception FID.")
        if backbone is None:
            if classifier is None:
                classifier = load_classifier(cache_dir, dataset, data_dir, device)
            extractor, accuracy, path = classifier, classifier.test_accuracy, classifier.path
            backbone, weights_id = "mnist-classifier", file_sha1(path)
            print(f"FID/KID backbone: {dataset_title(dataset)} classifier (test accuracy {accuracy:.2%})")
        real = load_images(dataset, data_dir, train=False)[0]
        reference = load_images(dataset, data_dir, train=True)[0]
        n = min(settings.num_samples, len(real), len(reference))
        if n < settings.num_samples:
            print(f"note: FID/KID use N = {n} (the test set has {len(real)} images), not {settings.num_samples}")
        return FidEvaluator(backbone, extractor, weights_id, real[:n], reference[:n], cache_dir, device, dataset,
                            classifier)
