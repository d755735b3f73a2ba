"""The audio model's package; audio_gen.py beside it runs its command line (cli). One module per job:

    cli         the command line: options, checks, dispatch (also the installed `audio-gen` command)
    pretrained  MusicAutoencoder: a trained autoencoder with its inverse and prior, ready to use (API, demo, hub)
    export      --mode export: inference weights as safetensors + config.json, a VAE's prior and vocoder beside
    common      helpers shared with image_gen (a byte-identical copy): CLI checks, files, checkpoints, logs
    audio_io    decoding any audio file to mono 16 kHz with PyAV; writing WAVs
    musdb       MUSDB18 on disk: layout, official splits, checked download
    data        folders of music and their splits, the per-file log-mel cache, build_splits
    clips       MelClips: a split's log-mels as scoring windows and random training crops
    transform   LogMelTransform (waveform -> log-mel) and per-bin normalisation statistics
    inverse     log-mel -> audio: NNLS, PGHI, RAAR or fast Griffin-Lim; MelInverse, the one call every mode uses
    vocoder     the Vocos-style vocoder (ConvNeXt over mel frames, an iSTFT head) and its losses
    phase_refiner the phase refiner: a small 2-D conv net that corrects the phase PGHI + RAAR
                retrieve from the vocoder's magnitude, and its losses
    waves       the vocoder's training audio: 16-bit waveforms per split, cached, as random segments
    model       AudioAutoencoder: residual Conv1d encoder/decoder with a PCA-initialised linear path; as a
                VAE, the posterior, reparameterisation and the KL term
    trainer     the cosine schedule, the loss (and the VAE's KL weight), AdamW steps and resumable epochs
    prior       the learned prior: a small diffusion model over a VAE's latents, its math and DDIM sampling
    checkpoint  the checkpoint formats (the autoencoder's, the learned prior's, the vocoder's with its phase
                refiner): save, load, rebuild; load_inverse
    metrics     mel metrics, PESQ/STOI beside the oracle (the true mel through the same inverse), split scores
    fad         Frechet audio distance and its embeddings (aisfx, VGGish, log-mel frames)
    plots       training curves, spectrogram comparisons and grids
    train       the train command
    infer       the infer command
    generate    the generate command: prior samples, their scores against real music, memorisation
    train_prior the train_prior command: the learned prior, fitted to the VAE's training latents
    train_vocoder the train_vocoder command: the vocoder, fitted to the training music
    train_refiner the train_refiner command: the vocoder's phase refiner, fitted to phases retrieved once
    benchmark   the benchmark command
"""
