#!/usr/bin/env bash
# Reconstruct held-out music with a trained checkpoint: WAVs, spectrograms, metrics. AUDIO_DIR may be
# any folder the model never heard (scored whole when it has no train/valid/test subfolders).
# Works from any folder; extra arguments go to audio_gen.py.
#   AUDIO_DIR=~/OtherMusic NUM_EXAMPLES=4 ./infer.sh
# Variables: CHECKPOINT AUDIO_DIR MUSDB_ROOT DOWNLOAD CACHE_DIR DEVICE NUM_EXAMPLES SEED RESULTS_DIR
#            GRIFFIN_LIM_ITERS AUDIO_EVAL_CLIPS
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../scripts/wrapper.sh"

args=(--mode infer)
flag --checkpoint CHECKPOINT
flag --audio_dir AUDIO_DIR
flag --musdb_root MUSDB_ROOT
flag --download DOWNLOAD
flag --cache_dir CACHE_DIR
flag --device DEVICE
flag --num_examples NUM_EXAMPLES
flag --seed SEED
flag --results_dir RESULTS_DIR
flag --griffin_lim_iters GRIFFIN_LIM_ITERS
flag --audio_eval_clips AUDIO_EVAL_CLIPS

exec "$(python_bin)" "$here/audio_gen.py" "${args[@]}" "$@"
