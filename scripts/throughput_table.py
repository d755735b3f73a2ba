"""Training throughput on this machine: the project's DDPM step under each speed setting, beside two anchors.

    python scripts/throughput_table.py --rounds 5 --out throughput.json

Every row is a full training step at batch 64 on random data (forward, backward, optimizer step; ours also
clips the gradient and updates the EMA, as `train` does). The rows run in turn, round after round, so that a
machine that slows down or speeds up during the sitting touches all of them alike; each round times `--steps`
steps after one warm-up step, and a row's figure is the median over rounds with the range beside it.

The anchors are optional and are not dependencies of the project (install them anywhere on PYTHONPATH):
lucidrains' denoising-diffusion-pytorch (MIT) `Unet(dim=32, channels=1, dim_mults=(1, 2, 4))` inside its
`GaussianDiffusion`, and diffusers' (Apache-2.0) `UNet2DModel` as the Hugging Face diffusion course builds it for
MNIST (unit 1: channels 32/64/64, two residual blocks per level, attention at 14 x 14 and 7 x 7). Both train in
fp32, as their documentation shows them.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from imagegen.common import number, write_json_atomic
from imagegen.training import TrainState, new_lr_plan
from imagegen.unet import DiffusionModel, cpu_has_bf16

BATCH = 64


def ours(precision="fp32", compile_model=False, channels_last=False, fused_adamw=False):
    """A step of the project's DDPM training (TrainState, as `train` runs it) in `precision`, compiled or not;
    `channels_last` and `fused_adamw` are tried here only (they did not pay on this CPU, so train has no flag)."""
    torch.manual_seed(0)
    state = TrainState(DiffusionModel(32, num_classes=10), torch.device("cpu"), lr_plan=new_lr_plan(10_000, 1e-3),
                       cond_drop_prob=0.1, precision=precision, compile_model=compile_model)
    if channels_last:
        state.model.to(memory_format=torch.channels_last)  # in place: the optimizer keeps its parameters
    if fused_adamw:
        state.optimizer = torch.optim.AdamW(state.model.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
    x0 = torch.randn(BATCH, 1, 28, 28)
    labels = torch.randint(0, 10, (BATCH,))
    return lambda: state.train_step(x0, labels), state.model


def lucidrains():
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    torch.manual_seed(0)
    model = Unet(dim=32, channels=1, dim_mults=(1, 2, 4))
    diffusion = GaussianDiffusion(model, image_size=28, timesteps=1000)
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=1e-4)
    x = torch.rand(BATCH, 1, 28, 28)

    def step():
        loss = diffusion(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step, model


def diffusers_unet():
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    model = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=2,
                        block_out_channels=(32, 64, 64),
                        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x0 = torch.randn(BATCH, 1, 28, 28)
    alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)

    def step():
        t = torch.randint(0, 1000, (BATCH,))
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step, model


ROWS = {
    "ours fp32 (before)": lambda: ours(),
    "ours fp32 channels_last": lambda: ours(channels_last=True),
    "ours fp32 fused AdamW": lambda: ours(fused_adamw=True),
    "ours bf16": lambda: ours(precision="bf16"),
    "ours bf16 channels_last": lambda: ours(precision="bf16", channels_last=True),
    "ours fp32 compiled": lambda: ours(compile_model=True),
    "ours bf16 compiled": lambda: ours(precision="bf16", compile_model=True),
    "lucidrains Unet": lucidrains,
    "diffusers UNet2DModel": diffusers_unet,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), metavar="ROW",
                   help=f"which rows, in this order each round (default all: {', '.join(ROWS)})")
    p.add_argument("--rounds", type=number(int, 1, 50), default=3, help="rounds over all rows (default 3)")
    p.add_argument("--steps", type=number(int, 1, 1000), default=10, help="timed steps per row and round (default 10)")
    p.add_argument("--out", help="write the rows as JSON here")
    return p.parse_args(argv)


def build(rows):
    """{row: step function}, skipping the anchors that are not installed and the bf16 rows on a CPU without
    bf16 arithmetic (emulated there, many times slower)."""
    steps = {}
    for name in rows:
        if "bf16" in name and not cpu_has_bf16():
            print(f"{name}: skipped (this CPU has no avx512_bf16 or amx_bf16)")
            continue
        try:
            step, model = ROWS[name]()
        except ImportError as err:
            print(f"{name}: skipped ({err})")
            continue
        step()  # warm-up (and compilation)
        steps[name] = step
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    return steps


def main(argv=None):
    args = parse_args(argv)
    steps = build(args.rows)
    rates = {name: [] for name in steps}
    for round_ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[name].append(args.steps * BATCH / (time.perf_counter() - start))
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{n} {r[-1]:.0f}" for n, r in rates.items()), flush=True)
    baseline = statistics.median(rates[next(iter(rates))]) if rates else None
    table = []
    print(f"\ntraining img/s, batch {BATCH}, median of {args.rounds} rounds x {args.steps} steps "
          f"({torch.get_num_threads()} threads)")
    for name, values in rates.items():
        median = statistics.median(values)
        table.append({"row": name, "img_per_s": median, "min": min(values), "max": max(values)})
        print(f"  {name:28s} {median:7.1f} img/s  [{min(values):.1f}, {max(values):.1f}]  "
              f"{median / baseline:5.2f}x the first row")
    if args.out:
        write_json_atomic({"batch": BATCH, "rounds": args.rounds, "steps": args.steps, "rows": table}, args.out)


if __name__ == "__main__":
    main()
