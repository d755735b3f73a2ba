"""The data set's own classifier: a small CNN that measures the class accuracy of conditional samples and
gives the fallback FID feature space when no Inception weights can be had. Trained once, cached."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import atomic_torch_save, progress_bar
from .data import dataset_title, load_images

CLASSIFIER_FORMAT = "imageaudiogen.mnist_classifier"


class MnistClassifier(nn.Module):
    """Small CNN for 28x28 grey images (MNIST digits or Fashion-MNIST). Its 128-d penultimate layer is the
    fallback FID feature space; `classify` maps those features to the 10 classes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.classify = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, 10))

    def forward(self, images):
        """uint8 (batch, 1 or 3, 28, 28) -> (batch, 128) features (three channels: the grey image repeated)."""
        return self.features(images[:, :1].float() / 127.5 - 1.0)

    @torch.no_grad()
    def predict(self, images_uint8, batch_size=1000):
        """uint8 (n, 1, 28, 28) -> (n,) predicted classes."""
        device = next(self.parameters()).device
        return torch.cat([self.classify(self(images_uint8[i:i + batch_size].to(device))).argmax(1).cpu()
                          for i in range(0, len(images_uint8), batch_size)])


def fingerprint(*parts):
    """A short content hash of bytes and strings: cache keys."""
    digest = hashlib.sha1()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else str(part).encode())
    return digest.hexdigest()[:16]


def train_mnist_classifier(dataset, data_dir, device, max_steps=3000, max_epochs=30, batch_size=128, seed=0):
    """Fit MnistClassifier on the training set of `dataset` only; returns (model, test accuracy). Seeds its
    own RNG (callers run it inside torch.random.fork_rng, so the caller's RNG is untouched).

    Runs for `max_steps` steps (about 6 epochs of full MNIST) or `max_epochs` epochs, whichever is
    shorter, so small training sets still get enough passes."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = load_images(dataset, data_dir, train=True)
    x_test, y_test = load_images(dataset, data_dir, train=False)
    model = MnistClassifier().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    epochs = min(max_epochs, math.ceil(max_steps * batch_size / len(x_train)))
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in progress_bar(range(0, len(order), batch_size), f"{dataset_title(dataset)} classifier, "
                                                                    f"epoch {epoch + 1}/{epochs}", unit="steps"):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model.classify(model(x_train[idx].unsqueeze(1).to(device))), y_train[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    accuracy = (model.predict(x_test.unsqueeze(1)) == y_test).float().mean().item()
    return model, accuracy


def load_or_train_classifier(cache_dir, dataset, data_dir, device):
    """(classifier, its test accuracy, its cache file): the data set's classifier, trained once on its
    training set and cached under a name keyed by that training set's content, so that runs on different
    data (the 4k subset, the full set) each keep their own instead of retraining over each other."""
    images, labels = load_images(dataset, data_dir, train=True)
    key = fingerprint(CLASSIFIER_FORMAT, images.numpy().tobytes(), labels.numpy().tobytes())
    cache_path = Path(cache_dir) / f"{dataset}_classifier-{key}.pt"
    if cache_path.is_file():
        try:
            state = torch.load(cache_path, map_location="cpu", weights_only=True)
            if state.get("format") == CLASSIFIER_FORMAT and state.get("key") == key:
                model = MnistClassifier()
                model.load_state_dict(state["state_dict"])
                return model.to(device).eval(), state["test_accuracy"], cache_path
        except Exception:
            pass  # a broken cache is simply rebuilt
    print(f"Training the {dataset_title(dataset)} classifier (class accuracy, FID fallback; once, cached in "
          f"{cache_path}) ...", flush=True)
    model, accuracy = train_mnist_classifier(dataset, data_dir, device)
    atomic_torch_save({"format": CLASSIFIER_FORMAT, "key": key, "state_dict": model.state_dict(),
                       "test_accuracy": accuracy}, cache_path)
    return model, accuracy, cache_path
