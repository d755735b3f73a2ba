"""The image model's package: a class-conditional DDPM on MNIST and Fashion-MNIST.

    data        MNIST / Fashion-MNIST IDX files, class names, pixel ranges
    unet        the noise predictor eps_theta(x_t, t, c) and the Denoiser that runs it
    diffusion   the math: schedule, q_sample, loss, DDPM and DDIM steps and loops, guidance; SamplerSettings
    sampling    batches, per-class noise streams, eval mode, progress: the Sampler
    training    TrainState (weights, EMA, AdamW, LR plan, generator) and one resumable epoch
    checkpoint  what a checkpoint holds; reading older versions
    classifier  the data set's own CNN: class accuracy, fallback FID features
    inception   the FID Inception-v3 weights, converted offline
    fid         FID/KID/accuracy of images against the test set (FidEvaluator)
    guidance    the guidance scale: default, fit after training, sweep
    plots       grids, single PNGs, curves
    train       --mode train      infer   --mode infer      benchmark   --mode benchmark
    common      helpers shared with the audio package (an identical file there)
"""
