"""--mode export: a checkpoint's sampling weights as safetensors plus config.json, the form to share and to
load anywhere (--checkpoint FOLDER, the API, the demo, hubconf.py)."""
from __future__ import annotations

from .checkpoint import RESUME_ONLY, checkpoint_position, load_checkpoint
from .common import EXPORT_CONFIG, EXPORT_WEIGHTS, export_weights


def export(checkpoint, export_dir):
    """Write `checkpoint`'s EMA weights and description to `export_dir`; returns the folder."""
    state = load_checkpoint(checkpoint)
    folder = export_weights(state, export_dir, weights=("ema",), drop=RESUME_ONLY)
    size = (folder / EXPORT_WEIGHTS).stat().st_size / 1e6
    print(f"Exported the {state['kind'].upper()} of {checkpoint} ({state['dataset']}, {checkpoint_position(state)}) "
          f"to {folder}: {EXPORT_WEIGHTS} ({size:.1f} MB, EMA weights) and {EXPORT_CONFIG}")
    return folder
