#!/usr/bin/env bash
# Generate new music from a VAE checkpoint (train one with MODEL=vae ./train.sh): WAVs, a spectrogram grid,
# metrics.json; with AUDIO_DIR, also scores against that folder's real music and the memorisation check.
# Works from any folder; extra arguments go to audio_gen.py.
#   NUM_SAMPLES=8 SEED=3 ./generate.sh
#   AUDIO_DIR=~/OtherMusic NUM_SAMPLES=64 ./generate.sh
#   PRIOR=models/audio_prior.pt ./generate.sh      # latents from a learned prior (./train_prior.sh)
# Variables: CHECKPOINT AUDIO_DIR CACHE_DIR DEVICE NUM_SAMPLES SEED RESULTS_DIR GRIFFIN_LIM_ITERS
#            FAD_EMBEDDING (space-separated) FAD_WEIGHTS PRIOR PRIOR_STEPS PRIOR_ETA
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../scripts/wrapper.sh"

args=(--mode generate)
flag --checkpoint CHECKPOINT
flag --audio_dir AUDIO_DIR
flag --cache_dir CACHE_DIR
flag --device DEVICE
flag --num_samples NUM_SAMPLES
flag --seed SEED
flag --results_dir RESULTS_DIR
flag --griffin_lim_iters GRIFFIN_LIM_ITERS
if [[ -n "${FAD_EMBEDDING:-}" ]]; then
  read -r -a embeddings <<< "$FAD_EMBEDDING"
  args+=(--fad_embedding "${embeddings[@]}")
fi
flag --fad_weights FAD_WEIGHTS
flag --prior PRIOR
flag --prior_steps PRIOR_STEPS
flag --prior_eta PRIOR_ETA

exec "$(python_bin)" "$here/audio_gen.py" "${args[@]}" "$@"
