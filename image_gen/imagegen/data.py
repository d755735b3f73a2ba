"""MNIST and Fashion-MNIST: the IDX files read by torchvision, class names, and the pixel ranges.

Images are uint8 (n, 28, 28) on disk and float (n, 1, 28, 28) in [-1, 1] inside the model.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import shutil
from pathlib import Path

import torch

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")  # torchvision's FashionMNIST.classes
DATASETS = {
    # name: (torchvision class, folder under --data_dir, title, class names)
    "mnist": ("MNIST", "MNIST", "MNIST", tuple(str(i) for i in range(10))),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST", "Fashion-MNIST", FASHION_CLASSES),
}


def class_names(dataset):
    return DATASETS[dataset][3]


def dataset_title(dataset):
    """'MNIST' or 'Fashion-MNIST', for plots and messages."""
    return DATASETS[dataset][2]


def class_slug(dataset, label):
    """File-name form of a class: 'digit7' for MNIST, 'ankle-boot' for Fashion-MNIST."""
    if dataset == "mnist":
        return f"digit{label}"
    return "".join(ch if ch.isalnum() else "-" for ch in class_names(dataset)[label].lower())


def load_images(dataset, data_dir, train):
    """(images, labels) of MNIST or Fashion-MNIST: uint8 (n, 28, 28) and int64 (n,), read by torchvision
    from DATA_DIR/<folder>/raw (IDX files, plain or .gz), downloaded from torchvision's mirrors on first use."""
    import torchvision.datasets

    tv_class, folder, title, _ = DATASETS[dataset]
    loader = getattr(torchvision.datasets, tv_class)
    gunzip_idx_files(Path(data_dir) / folder / "raw")
    try:
        data = loader(str(data_dir), train=train, download=False)
        return data.data, data.targets
    except RuntimeError:
        pass  # not there yet: download below
    print(f"Downloading {title} into {data_dir} ...", flush=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints every mirror it tries
            data = loader(str(data_dir), train=train, download=True)
        return data.data, data.targets
    except (RuntimeError, OSError) as err:
        raw = Path(data_dir) / folder / "raw"
        raise SystemExit(
            f"error: {title} is not in {raw} and could not be downloaded ({str(err).splitlines()[0]}).\n"
            f"Put the four files {', '.join(IDX_FILES)} (or their .gz) in {raw}, "
            f"or point --data_dir at a folder that has {folder}/raw inside.")


def gunzip_idx_files(raw):
    """Decompress IDX files that `raw` holds only as .gz. torchvision unpacks a .gz itself only when its
    md5 is that of the official archive, so a copy compressed anywhere else would send it downloading."""
    for name in IDX_FILES:
        packed, plain = raw / f"{name}.gz", raw / name
        if packed.is_file() and not plain.is_file():
            partial = raw / f"{name}.partial"
            try:
                with gzip.open(packed, "rb") as source, open(partial, "wb") as target:
                    shutil.copyfileobj(source, target)
            except (OSError, EOFError) as err:
                partial.unlink(missing_ok=True)
                raise SystemExit(f"error: {packed} is not a readable gzip file ({err}); replace or delete it")
            partial.replace(plain)


def to_model_range(images_uint8):
    """uint8 (n, 28, 28) in [0, 255] -> float (n, 1, 28, 28) in [-1, 1], the range the diffusion works in."""
    return images_uint8.unsqueeze(1).float().div(127.5).sub(1.0)


def to_uint8(x):
    """Model range [-1, 1] (n, 1, 28, 28) -> uint8 grey levels, rounded to nearest: the exact inverse of
    to_model_range on real images (a truncating cast would move most levels down by one)."""
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def to_unit_range(x):
    """Model range [-1, 1] -> [0, 1] for saving PNGs."""
    return x.add(1.0).mul(0.5).clamp(0.0, 1.0)
