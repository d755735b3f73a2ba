"""What both tabs of the demo share: checkpoints read once per file version, and errors shown as messages."""
from __future__ import annotations

import contextlib
import traceback
from pathlib import Path

import streamlit as st


def file_stamp(path):
    """(size, modification time) of a checkpoint file, or of an exported folder's two files: part of the cache
    key, so a checkpoint rewritten by training (or exported again) is read again."""
    path = Path(path)
    files = [path / "config.json", path / "model.safetensors"] if path.is_dir() else [path]
    return tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())


def open_checkpoint(loader, path, device, train_hint, *options):
    """(what `loader(path, stamp, device, *options)` returns, None), or (None, a message): a missing
    checkpoint says how to train one; an unreadable one, or one of the wrong kind, says what is wrong with it."""
    if not path.exists():
        return None, (f"No checkpoint at `{path}`. Train one with `{train_hint}` (or `make run` for both models), "
                      f"or pass another: `make demo IMAGE_CKPT=... AUDIO_CKPT=...`.")
    try:
        return loader(str(path), file_stamp(path), str(device), *options), None
    except SystemExit as err:  # the scripts' load_checkpoint ends a command-line run with one line
        return None, getattr(err, "message", None) or str(err).removeprefix("error: ")
    except (KeyError, RuntimeError) as err:  # the right format, but weights that do not fit its own config
        return None, f"{path} cannot be used: {type(err).__name__}: {err}"


def same_checkpoint(recorded, path):
    """Whether a path written into a metrics.json names the checkpoint the page shows."""
    return bool(recorded) and Path(recorded).resolve() == path.resolve()


@contextlib.contextmanager
def errors_as_messages():
    """A bug must not turn the page into a traceback: one line in the page, the details in the server's log.
    (Streamlit's own rerun and stop signals are not Exceptions, so they pass.)"""
    try:
        yield
    except Exception as err:
        traceback.print_exc()
        st.error(f"Something went wrong: {type(err).__name__}: {err}. The details are in the server's log.")
