"""What tests/test_distributed.py starts under torchrun (python -m torch.distributed.run ... this file):

    distributed_entry.py image|audio ARGS...   image_gen.py / audio_gen.py main(ARGS); with SIGINT_AT_STEP=k
                                              the process of rank SIGINT_RANK sends itself a real SIGINT
                                              right after optimizer step k, as a Ctrl-C would
    distributed_entry.py sample CHECKPOINT OUT  the evaluation's draws from CHECKPOINT's EMA weights shared
                                              over the processes; rank 0 also draws them alone and saves
                                              both to OUT
"""
import os
import signal
import sys


def interrupt_after(trainer_class, step, rank):
    real = trainer_class.train_step

    def train_step(self, *args, **kwargs):
        loss = real(self, *args, **kwargs)
        if self.step == step and int(os.environ["RANK"]) == rank:
            signal.raise_signal(signal.SIGINT)
        return loss

    trainer_class.train_step = train_step


def shared_and_alone(checkpoint, out):
    import torch
    from imagegen.common import World
    from imagegen.diffusion import SamplerSettings
    from imagegen.sampling import ema_sampler_from_checkpoint

    world = World.from_environment()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    sampler = ema_sampler_from_checkpoint(state, torch.device("cpu"))
    settings = SamplerSettings("ddim", 3, 0.0, 0.5, 7)
    draws = {  # (what, per-process call, one-process call)
        "fid45_unequal_classes": lambda w: sampler.draw_for_fid(45, settings, world=w),
        "fid40_class_by_class": lambda w: sampler.draw_for_fid(40, settings, world=w),
        "fid20_one_batch": lambda w: sampler.draw_for_fid(20, settings, world=w),
        "fid12_null_class": lambda w: sampler.draw_for_fid(12, settings, unconditional=True, world=w),
        "grid_4_per_class": lambda w: (sampler.sample_classes(list(range(10)), 4, settings, world=w), None),
    }
    with world.session(torch.device("cpu")):
        shared = {name: draw(world) for name, draw in draws.items()}
        if world.is_main:
            alone = {name: draw(None) for name, draw in draws.items()}
            torch.save({"shared": shared, "alone": alone, "world": world.size}, out)
        else:
            assert all(images is None for images, _ in shared.values())


if __name__ == "__main__":
    kind, argv = sys.argv[1], sys.argv[2:]
    if kind == "sample":
        shared_and_alone(*argv)
        sys.exit(0)
    step, rank = int(os.environ.get("SIGINT_AT_STEP", "0")), int(os.environ.get("SIGINT_RANK", "0"))
    if kind == "image":
        from imagegen import cli as image_gen
        from imagegen.training import TrainState
        if step:
            interrupt_after(TrainState, step, rank)
        image_gen.main(argv)
    else:
        from audiogen import cli as audio_gen
        from audiogen.trainer import AudioTrainer
        if step:
            interrupt_after(AudioTrainer, step, rank)
        audio_gen.main(argv)
