"""MUSDB18 (Rafii et al. 2017, https://sigsep.github.io/datasets/musdb.html) on disk: which layout a folder
holds, its official train/valid/test split, and a checked download when the folder is empty."""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import urllib.request
import zipfile
from pathlib import Path

from .common import progress_bar

# MUSDB18's official validation split: 14 of the 100 training tracks (as named by the musdb package).
VALIDATION_TRACKS = frozenset({
    "Actions - One Minute Smile", "Alexander Ross - Goodbye Bolero", "ANiMAL - Rockshow",
    "Clara Berry And Wooldog - Waltz For My Victims", "Fergessen - Nos Palpitants", "James May - On The Line",
    "Johnny Lokke - Promises & Lies", "Leaf - Summerghost", "Meaxic - Take A Step",
    "Patrick Talbot - A Reason To Leave", "Skelpolu - Human Mistakes", "Traffic Experiment - Sirens",
    "Triviul - Angelsaint", "Young Griffo - Pennies"})
DATASETS = {
    # MUSDB18-7: 7-second excerpts of all 150 tracks, what `musdb.DB(download=True)` fetches.
    "preview": {"url": "https://github.com/sigsep/sigsep-mus-db/releases/download/v0.4.0/MUSDB18-7-STEMS.zip",
                "size": 147_209_385, "md5": None},
    # The full MUSDB18 (stems, AAC), Zenodo record 1117372. Zenodo may ask you to log in: then fetch it by hand.
    "full": {"url": "https://zenodo.org/record/1117372/files/musdb18.zip",
             "size": None, "md5": "af06762477334799bfc5abf237648207"},
}
CHUNK = 1 << 20  # download block: 1 MiB


def detect_layout(root):
    """'stems' for MUSDB18 (.stem.mp4), 'wav' for MUSDB18-HQ folders, None when neither is there."""
    root = Path(root)
    if any(root.glob("train/*.stem.mp4")) or any(root.glob("test/*.stem.mp4")):
        return "stems"
    if any(root.glob("train/*/mixture.wav")) or any(root.glob("test/*/mixture.wav")):
        return "wav"
    return None


def list_musdb_tracks(root, subset, layout):
    """Sorted (name, path) pairs of one MUSDB18 subset."""
    folder = Path(root) / subset
    if not folder.is_dir():
        return []
    if layout == "stems":
        return sorted((p.name[:-len(".stem.mp4")], p) for p in folder.glob("*.stem.mp4"))
    return sorted((p.name, p) for p in folder.iterdir() if (p / "mixture.wav").is_file())


def musdb_splits(root, layout):
    """{split: [(track name, path)]}: MUSDB18's official validation tracks come out of train/."""
    train = list_musdb_tracks(root, "train", layout)
    valid = [t for t in train if t[0] in VALIDATION_TRACKS]
    if not valid and len(train) >= 10:  # a subset without the official tracks: hold out every 10th
        valid = train[9::10]
    return {"train": [t for t in train if t not in valid], "valid": valid,
            "test": list_musdb_tracks(root, "test", layout)}


def fetch(url, archive, expected_size, desc):
    """Stream `url` into the file `archive` with a progress report; the md5 hex digest of what arrived."""
    md5 = hashlib.md5()
    with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
        size = int(response.headers.get("Content-Length") or 0) or expected_size
        blocks = iter(lambda: response.read(CHUNK), b"")
        for chunk in progress_bar(blocks, desc, total=math.ceil(size / CHUNK) if size else None, unit="MiB"):
            out.write(chunk)
            md5.update(chunk)
    return md5.hexdigest()


def check_archive(archive, spec, md5):
    """Raise ValueError unless `archive` has the size and md5 that `spec` expects and is an intact zip."""
    size = archive.stat().st_size
    if spec["size"] is not None and size != spec["size"]:
        raise ValueError(f"size {size:,} bytes, expected {spec['size']:,}")
    if spec["md5"] is not None and md5 != spec["md5"]:
        raise ValueError(f"md5 {md5}, expected {spec['md5']}")
    if not zipfile.is_zipfile(archive):
        raise ValueError("not a zip archive")
    with zipfile.ZipFile(archive) as zf:
        if zf.testzip() is not None:
            raise ValueError("corrupt zip member")


def download_dataset(kind, root):
    """Fetch MUSDB18 (`kind` in DATASETS) into `root`: progress report, size/md5/zip checks, atomic move.

    Nothing is left behind on failure: the archive and the extraction live in temporary paths
    next to `root` until the final rename.
    """
    spec = DATASETS[kind]
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    archive = root.parent / f".{root.name}.{kind}.zip.part"
    staging = root.parent / f".{root.name}.{kind}.extract"
    print(f"Downloading MUSDB18 ({kind}) from {spec['url']} into {root} ...", flush=True)
    try:
        md5 = fetch(spec["url"], archive, spec["size"], f"MUSDB18 {kind}")
        check_archive(archive, spec, md5)
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(staging)
        # The archive holds train/ and test/ either at its top or inside one folder.
        top = staging if (staging / "train").is_dir() else next((p for p in staging.iterdir() if (p / "train").is_dir()), None)
        if top is None or detect_layout(top) is None:
            raise ValueError("the archive holds no train/ and test/ folders of MUSDB18")
        if root.exists() and not any(root.iterdir()):
            root.rmdir()  # an empty placeholder folder is replaced
        os.replace(top, root)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise SystemExit(f"error: no MUSDB18 in {root} and the {kind} download failed: {err}.\n"
                         f"Put MUSDB18 ({root}/train/*.stem.mp4, {root}/test/*.stem.mp4) or MUSDB18-HQ "
                         f"({root}/{{train,test}}/<track>/mixture.wav, drums.wav, ...) there, "
                         f"or pass --musdb_root PATH.")
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    print(f"MUSDB18 ({kind}) is ready in {root}")


def ensure_dataset(root, download):
    """The MUSDB18 layout in `root`, downloading first when it is empty and `download` ('preview', 'full'
    or 'none') allows."""
    layout = detect_layout(root)
    if layout is None and download != "none":
        download_dataset(download, root)
        layout = detect_layout(root)
    if layout is None:
        raise SystemExit(f"error: no MUSDB18 in {root}. Put MUSDB18 ({{train,test}}/*.stem.mp4) or MUSDB18-HQ "
                         f"({{train,test}}/<track>/<source>.wav) there, pass --musdb_root PATH or --audio_dir DIR, "
                         f"or allow --download preview.")
    return layout
