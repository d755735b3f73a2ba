#!/usr/bin/env bash
# Generate digits from a trained checkpoint. Works from any folder; extra arguments go to image_gen.py.
#   DIGITS=7 GUIDANCE_SCALE=2 SAMPLER=ddim ./infer.sh
# Variables: CHECKPOINT NUM_SAMPLES DEVICE SEED SAMPLER SAMPLING_STEPS ETA DATA_DIR RESULTS_DIR
#            FID_SAMPLES FID_BACKBONE FID_WEIGHTS CACHE_DIR PRECISION DIGITS GUIDANCE_SCALE DATASET COMPILE=1
#            MODEL=gan (the GAN's default checkpoint and results folder)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../scripts/wrapper.sh"

args=(--mode infer)
flag --model MODEL
flag --checkpoint CHECKPOINT
flag --num_samples NUM_SAMPLES
flag --digits DIGITS
flag --guidance_scale GUIDANCE_SCALE
flag --dataset DATASET
flag --device DEVICE
flag --seed SEED
flag --sampler SAMPLER
flag --sampling_steps SAMPLING_STEPS
flag --eta ETA
flag --data_dir DATA_DIR
flag --results_dir RESULTS_DIR
flag --fid_samples FID_SAMPLES
flag --fid_backbone FID_BACKBONE
flag --fid_weights FID_WEIGHTS
flag --cache_dir CACHE_DIR
flag --precision PRECISION
switch --compile COMPILE

exec "$(python_bin)" "$here/image_gen.py" "${args[@]}" "$@"
