#!/usr/bin/env bash
# Train the mel autoencoder on a folder of music (AUDIO_DIR) or on MUSDB18 (MUSDB_ROOT; the 7-s preview
# is downloaded if it is empty). Works from any folder; extra arguments go to audio_gen.py.
#   AUDIO_DIR=~/Music EPOCHS=10 ./train.sh
#   MUSDB_ROOT=/data/musdb18 DOWNLOAD=none ./train.sh --sources vocals drums
#   AUDIO_DIR=~/Music MODEL=vae ./train.sh          # a VAE, for ./generate.sh
# Variables: AUDIO_DIR MUSDB_ROOT DOWNLOAD CACHE_DIR EPOCHS BATCH_SIZE LEARNING_RATE WARMUP_STEPS DEVICE
#            CHECKPOINT MODEL N_MELS LATENT_DIM TIME_DOWNSAMPLE HIDDEN DROPOUT KL_WEIGHT KL_WARMUP_STEPS SEED
#            RESULTS_DIR GRIFFIN_LIM_ITERS AUDIO_EVAL_CLIPS EVAL_EVERY RESUME=1
#            NPROC=N (torchrun, N processes; BATCH_SIZE is then the global batch) TORCHRUN_ARGS (several machines)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../scripts/wrapper.sh"

args=(--mode train)
flag --audio_dir AUDIO_DIR
flag --musdb_root MUSDB_ROOT
flag --download DOWNLOAD
flag --cache_dir CACHE_DIR
flag --epochs EPOCHS
flag --batch_size BATCH_SIZE
flag --learning_rate LEARNING_RATE
flag --warmup_steps WARMUP_STEPS
flag --device DEVICE
flag --checkpoint CHECKPOINT
flag --model MODEL
flag --n_mels N_MELS
flag --latent_dim LATENT_DIM
flag --time_downsample TIME_DOWNSAMPLE
flag --hidden HIDDEN
flag --dropout DROPOUT
flag --kl_weight KL_WEIGHT
flag --kl_warmup_steps KL_WARMUP_STEPS
flag --seed SEED
flag --results_dir RESULTS_DIR
flag --griffin_lim_iters GRIFFIN_LIM_ITERS
flag --audio_eval_clips AUDIO_EVAL_CLIPS
flag --eval_every EVAL_EVERY
switch --resume RESUME

launch "$here/audio_gen.py" "${args[@]}" "$@"
