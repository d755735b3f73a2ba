#!/usr/bin/env bash
# Train the MNIST diffusion model (MODEL=gan: the GAN). Works from any folder; extra arguments go to image_gen.py.
#   EPOCHS=5 BATCH_SIZE=128 DEVICE=cpu ./train.sh --seed 1
# Variables: EPOCHS BATCH_SIZE LEARNING_RATE DEVICE CHECKPOINT NUM_SAMPLES SEED DATA_DIR RESULTS_DIR
#            SAMPLING_STEPS ETA EMA_DECAY FID_SAMPLES FID_BACKBONE FID_WEIGHTS CACHE_DIR PRECISION RESUME=1 COMPILE=1
#            DATASET CONDITIONING COND_DROP_PROB GUIDANCE_SCALE BASE_CHANNELS
#            MODEL (ddpm or gan) GAN_LOSS R1_GAMMA D_LEARNING_RATE LATENT_DIM (the GAN's)
#            NPROC=N (torchrun, N processes; BATCH_SIZE is then the global batch) TORCHRUN_ARGS (several machines)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../scripts/wrapper.sh"

args=(--mode train)
flag --model MODEL
flag --gan_loss GAN_LOSS
flag --r1_gamma R1_GAMMA
flag --d_learning_rate D_LEARNING_RATE
flag --latent_dim LATENT_DIM
flag --epochs EPOCHS
flag --dataset DATASET
flag --conditioning CONDITIONING
flag --cond_drop_prob COND_DROP_PROB
flag --guidance_scale GUIDANCE_SCALE
flag --base_channels BASE_CHANNELS
flag --batch_size BATCH_SIZE
flag --learning_rate LEARNING_RATE
flag --device DEVICE
flag --checkpoint CHECKPOINT
flag --num_samples NUM_SAMPLES
flag --seed SEED
flag --data_dir DATA_DIR
flag --results_dir RESULTS_DIR
flag --sampler SAMPLER
flag --sampling_steps SAMPLING_STEPS
flag --eta ETA
flag --ema_decay EMA_DECAY
flag --fid_samples FID_SAMPLES
flag --fid_every FID_EVERY
flag --accuracy_samples ACCURACY_SAMPLES
flag --fid_backbone FID_BACKBONE
flag --fid_weights FID_WEIGHTS
flag --cache_dir CACHE_DIR
flag --precision PRECISION
switch --resume RESUME
switch --compile COMPILE

launch "$here/image_gen.py" "${args[@]}" "$@"
