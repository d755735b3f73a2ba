#!/usr/bin/env bash
# Reconstruct MUSDB18 test clips with a trained checkpoint: WAVs, spectrograms, metrics.
# Works from any folder; extra arguments go to audio_gen.py.
#   NUM_EXAMPLES=4 CHECKPOINT=models/my_model.pt ./infer.sh
# Variables: CHECKPOINT MUSDB_ROOT DEVICE NUM_EXAMPLES SEED RESULTS_DIR CACHE_DIR GRIFFIN_LIM_ITERS DOWNLOAD
#            AUDIO_EVAL_CLIPS
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../scripts/wrapper.sh"

args=(--mode infer)
flag --checkpoint CHECKPOINT
flag --musdb_root MUSDB_ROOT
flag --device DEVICE
flag --num_examples NUM_EXAMPLES
flag --seed SEED
flag --results_dir RESULTS_DIR
flag --cache_dir CACHE_DIR
flag --griffin_lim_iters GRIFFIN_LIM_ITERS
flag --download DOWNLOAD
flag --audio_eval_clips AUDIO_EVAL_CLIPS

exec "$(python_bin)" "$here/audio_gen.py" "${args[@]}" "$@"
