#!/usr/bin/env bash
# Train the mel autoencoder on MUSDB18 (the 7-s preview is downloaded if MUSDB_ROOT is empty).
# Works from any folder; extra arguments go to audio_gen.py.
#   EPOCHS=10 MUSDB_ROOT=/data/musdb18 DOWNLOAD=none ./train.sh --sources vocals drums
# Variables: EPOCHS BATCH_SIZE LEARNING_RATE DEVICE CHECKPOINT MUSDB_ROOT N_MELS LATENT_DIM SEED RESULTS_DIR
#            CACHE_DIR GRIFFIN_LIM_ITERS DOWNLOAD AUDIO_EVAL_CLIPS EVAL_EVERY RESUME=1
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../scripts/wrapper.sh"

args=(--mode train)
flag --epochs EPOCHS
flag --batch_size BATCH_SIZE
flag --learning_rate LEARNING_RATE
flag --device DEVICE
flag --checkpoint CHECKPOINT
flag --musdb_root MUSDB_ROOT
flag --n_mels N_MELS
flag --latent_dim LATENT_DIM
flag --seed SEED
flag --results_dir RESULTS_DIR
flag --cache_dir CACHE_DIR
flag --griffin_lim_iters GRIFFIN_LIM_ITERS
flag --download DOWNLOAD
flag --audio_eval_clips AUDIO_EVAL_CLIPS
flag --eval_every EVAL_EVERY
switch --resume RESUME

exec "$(python_bin)" "$here/audio_gen.py" "${args[@]}" "$@"
