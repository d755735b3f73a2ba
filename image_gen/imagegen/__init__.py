"""The image model's package: a class-conditional DDPM on MNIST and Fashion-MNIST, and a GAN beside it.

    cli         the command line: options, checks, dispatch (image_gen.py and the `image-gen` command run it)
    pretrained  ImageGenerator: a trained DDPM or GAN, ready to draw (the API, the demo, hubconf.py)
    export      --mode export: the EMA weights as safetensors + config.json
    data        MNIST / Fashion-MNIST IDX files, class names, pixel ranges
    unet        the noise predictor eps_theta(x_t, t, c) and the Denoiser that runs it
    diffusion   the math: schedule, q_sample, loss, DDPM and DDIM steps and loops, guidance; SamplerSettings
    sampling    batches, per-class noise streams, eval mode, progress: the Sampler; GanSampler (one pass)
    training    TrainState (weights, EMA, AdamW, LR plan, generator) and one resumable epoch
    gan         the GAN (--model gan): generator, projection discriminator, losses, R1 (networks and math)
    gan_training  GanTrainState: both networks, the generator's EMA, two Adams, the training generator
    coverage    class histogram, within-class diversity, nearest training image (beside FID in infer)
    checkpoint  what a checkpoint holds; reading older versions
    classifier  the data set's own CNN: class accuracy, fallback FID features
    inception   the FID Inception-v3 weights, converted offline
    fid         FID/KID/accuracy of images against the test set (FidEvaluator)
    guidance    the guidance scale: default, fit after training, sweep
    plots       grids, single PNGs, curves
    train       --mode train      infer   --mode infer      benchmark   --mode benchmark
    common      helpers shared with the audio package (an identical file there)
"""
