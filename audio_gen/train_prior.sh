#!/usr/bin/env bash
# Train a learned prior (a small diffusion model over the latents) for a VAE checkpoint, on the music that
# VAE trained on; then PRIOR=models/audio_prior.pt ./generate.sh samples it. Works from any folder; extra
# arguments go to audio_gen.py.
#   ./train_prior.sh                                  # models/audio_vae.pt -> models/audio_prior.pt
#   CHECKPOINT=models/my_vae.pt PRIOR=models/my_prior.pt EPOCHS=50 ./train_prior.sh
# Variables: CHECKPOINT (the VAE) PRIOR CACHE_DIR EPOCHS BATCH_SIZE LEARNING_RATE WARMUP_STEPS PRIOR_HIDDEN
#            PRIOR_BLOCKS PRIOR_CLIP_CONTEXT SEED DEVICE RESULTS_DIR RESUME=1
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../scripts/wrapper.sh"

args=(--mode train_prior)
flag --checkpoint CHECKPOINT
flag --prior PRIOR
flag --cache_dir CACHE_DIR
flag --epochs EPOCHS
flag --batch_size BATCH_SIZE
flag --learning_rate LEARNING_RATE
flag --warmup_steps WARMUP_STEPS
flag --prior_hidden PRIOR_HIDDEN
flag --prior_blocks PRIOR_BLOCKS
flag --prior_clip_context PRIOR_CLIP_CONTEXT
flag --seed SEED
flag --device DEVICE
flag --results_dir RESULTS_DIR
switch --resume RESUME

exec "$(python_bin)" "$here/audio_gen.py" "${args[@]}" "$@"
