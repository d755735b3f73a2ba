"""--mode benchmark: training, sampling and FID-feature throughput on one device. Figures are printed,
never asserted; docs/image-results.md keeps the measured ones."""
from __future__ import annotations

import time

import torch

from .diffusion import SamplerSettings
from .guidance import DEFAULT_GUIDANCE_SCALE
from .inception import InceptionUnavailable, ieee_fp32_convolutions, inception_extractor, inception_weights
from .sampling import Sampler, sampling_batch_size
from .training import TrainState, new_lr_plan
from .unet import DiffusionModel

BENCHMARK_COND_DROP_PROB = 0.1  # training's default label dropout, so the step is the one train runs


def _timed(fn, device, repeats):
    fn()  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def benchmark_training(model, device, batch_size, repeats, precision="fp32", compile_model=False):
    """(images/s, GFLOP/s) of full training steps (forward, backward, AdamW, EMA) on random data, with
    random labels and label dropout as `train` uses them when the model is class-conditional."""
    from torch.utils.flop_counter import FlopCounterMode

    conditional = model.num_classes > 0
    state = TrainState(model, device, lr_plan=new_lr_plan(10_000, 1e-3), precision=precision,
                       compile_model=compile_model, cond_drop_prob=BENCHMARK_COND_DROP_PROB if conditional else 0.0)
    x0 = torch.randn(batch_size, 1, 28, 28, device=device)
    labels = torch.randint(0, model.num_classes, (batch_size,), device=device) if conditional else None
    with FlopCounterMode(display=False) as counter:
        state.loss(x0, labels).backward()
    seconds = _timed(lambda: state.train_step(x0, labels), device, repeats)
    return batch_size / seconds, counter.get_total_flops() / seconds / 1e9


def benchmark(device, base_channels=32, batch_size=64, seed=0, precision="fp32", compile_model=False,
              cache_dir="data/cache", fid_weights=None):
    """Throughput on `device`; run it once per device to compare."""
    cpu = device.type == "cpu"
    torch.manual_seed(seed)
    model = DiffusionModel(base_channels, num_classes=10)  # the default: class-conditional
    rate, gflops = benchmark_training(model, device, batch_size, 5 if cpu else 50, precision, compile_model)
    print(f"[{device}] training  batch {batch_size}: {rate:8.0f} img/s  {gflops:7.1f} GFLOP/s "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {precision})")
    model.eval()
    sampler = Sampler(model, precision=precision, compile_model=compile_model)
    for label, settings in (("DDPM-1000", SamplerSettings("ddpm")), ("DDIM-50", SamplerSettings("ddim", 50)),
                            ("DDIM-100", SamplerSettings("ddim", 100))):
        n = 16 if cpu and settings.sampler == "ddpm" else sampling_batch_size(device)  # CPU DDPM-1000: under a minute
        seconds = _timed(lambda: sampler.sample(n, settings), device, 1)
        print(f"[{device}] sampling {label:9s} batch {n}: {n / seconds:8.1f} img/s")
    n = sampling_batch_size(device)
    for w in (0.0, DEFAULT_GUIDANCE_SCALE):
        seconds = _timed(lambda: sampler.sample(n, SamplerSettings("ddim", 50, guidance_scale=w), label=7), device, 1)
        kind = f"guided w={w:g} (2 evaluations per step, one stacked pass)" if w else "conditional, unguided"
        print(f"[{device}] sampling DDIM-50   {n} images, {kind}: {n / seconds:8.1f} img/s")
    benchmark_waits(sampler, device)
    try:
        extractor = inception_extractor(inception_weights(cache_dir, fid_weights), device)
    except InceptionUnavailable as err:
        print(f"[{device}] FID Inception features: not measured ({err})")
        return
    n = 16 if cpu else 500
    images = torch.randint(0, 256, (n, 3, 28, 28), dtype=torch.uint8, device=device)
    with torch.no_grad(), ieee_fp32_convolutions():  # as FidEvaluator.features runs it
        seconds = _timed(lambda: extractor(images), device, 2)
    print(f"[{device}] FID Inception-v3 features (28 -> 299 px) batch {n}: {n / seconds:8.1f} img/s")


def benchmark_waits(sampler, device, rounds=3):
    """What a user waits for: 16 guided digits (a demo grid) and 4 (an API request), with DDIM-50 and with the
    default sampler, alternating, the median of `rounds`."""
    default = SamplerSettings()
    for n, what in ((16, "16 guided digits (a demo grid)"), (4, "4 guided digits (an API request)")):
        times = {}
        for _ in range(rounds):
            for settings in (SamplerSettings("ddim", 50), default):
                settings = settings.replace(guidance_scale=DEFAULT_GUIDANCE_SCALE)
                seconds = _timed(lambda: sampler.sample(n, settings, label=7), device, 1)
                times.setdefault(settings.name(guided=True), []).append(seconds)
        medians = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
        (slow, slow_s), (fast, fast_s) = medians.items()
        print(f"[{device}] {what}: {slow} {slow_s:.2f} s, {fast} {fast_s:.2f} s ({slow_s / fast_s:.1f}x; medians "
              f"of {rounds}, alternating)")


def benchmark_gan(device, base_channels=32, latent_dim=128, batch_size=64, seed=0):
    """The class-conditional GAN's training steps (one D and one G update each) and one-pass sampling, on
    `device`, with the default GanConfig."""
    from .gan import Discriminator, Generator
    from .gan_training import GanTrainState

    cpu = device.type == "cpu"
    torch.manual_seed(seed)
    state = GanTrainState(Generator(latent_dim, base_channels, 10), Discriminator(base_channels, 10), device)
    x = torch.rand(batch_size, 1, 28, 28, device=device) * 2 - 1
    labels = torch.randint(0, 10, (batch_size,), device=device)
    seconds = _timed(lambda: state.train_step(x, labels), device, 10 if cpu else 100)
    sizes = {name: sum(p.numel() for p in net.parameters()) / 1e6
             for name, net in (("G", state.model), ("D", state.discriminator))}
    print(f"[{device}] GAN training batch {batch_size}: {batch_size / seconds:8.0f} img/s "
          f"(G {sizes['G']:.2f}M, D {sizes['D']:.2f}M params, fp32)")
    n = sampling_batch_size(device) * 4
    seconds = _timed(lambda: state.sampler.sample(n, SamplerSettings(), label=7), device, 3)
    print(f"[{device}] GAN sampling, one generator pass, batch {state.sampler.batch_size(False)}: "
          f"{n / seconds:8.1f} img/s")
