"""Shared fixtures: tiny datasets written in their real on-disk formats, and script loading."""
import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name, path):
    """Import a standalone script (image_gen/image_gen.py, ...) as a module."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def ig():
    return load_script("image_gen", "image_gen/image_gen.py")


def synthetic_digits(n, seed):
    """(n, 28, 28) uint8 images of bright strokes on black, and (n,) labels 0..9: MNIST-like statistics."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = np.zeros((n, 28, 28), np.uint8)
    yy, xx = np.mgrid[0:28, 0:28]
    for i, label in enumerate(labels):
        angle = np.pi * label / 10
        cy, cx = 14 + rng.normal(0, 1.5, 2)
        # a thick bar whose angle encodes the label, plus a ring for odd labels
        dist = np.abs((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle))
        along = np.abs((yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle))
        img = np.where((dist < 2.0) & (along < 9), 255, 0)
        if label % 2:
            ring = np.abs(np.hypot(yy - cy, xx - cx) - 7) < 1.5
            img = np.maximum(img, ring * 255)
        images[i] = img
    return images, labels


def write_idx(raw_dir, n_train=192, n_test=96):
    """Write the four uncompressed MNIST IDX files that torchvision's MNIST reads."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        (raw_dir / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw_dir / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    write_idx(root / "MNIST" / "raw")
    return root
