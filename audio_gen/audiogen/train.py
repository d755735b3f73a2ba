"""The train command: a new run (or a resumed one), epochs of random crops with scores after each, a
checkpoint after each epoch and on Ctrl-C, and the final plots and scores."""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .checkpoint import (load_checkpoint, load_inverse, make_checkpoint, model_from_checkpoint, rng_state,
                         set_rng_state)
from .common import Board, StopRequest, World, atomic_torch_save, read_json, usage_error, write_json_atomic
from .data import DataConfig, build_splits
from .inverse import InverseConfig
from .metrics import AudioEvaluator, evaluate, require_speech_metrics, score_split, spread_positions, versus_baseline
from .model import AudioAutoencoder, ModelConfig, reconstruct
from .plots import plot_spectrograms, plot_training_curves
from .trainer import AudioTrainer, KlWeight, Optimisation, epoch_crops, milestone, run_epoch, steps_per_epoch
from .transform import LogMelTransform, compute_normalization


@dataclass(frozen=True)
class TrainConfig:
    """What the train command reads. `model` shapes a new model (a resumed one keeps its own, and its KL
    weight); `command_line` is the options as given, stored in the checkpoint as "args". `world`: the
    processes that torchrun started (World); `optim.batch_size` is the global batch, which they share equally.
    `kl_weight`: the VAE's KlWeight (ignored by the plain autoencoder)."""
    data: DataConfig
    model: ModelConfig
    optim: Optimisation
    eval_every: int
    checkpoint: Path
    results_dir: Path
    device: torch.device
    inverse: InverseConfig
    audio_eval_clips: int
    command_line: dict
    world: World = field(default_factory=World)
    kl_weight: KlWeight = field(default_factory=KlWeight)


@dataclass
class Run:
    """A training run's state between steps: what `--resume` restores and a checkpoint holds."""
    transform: LogMelTransform
    splits: dict
    trainer: AudioTrainer
    steps: int                  # steps per epoch
    history: list               # one record per finished epoch
    epoch: int = 0              # epochs finished
    progress: dict = None       # steps done in the next epoch, while it is unfinished


def new_model(shape, train_set):
    """A fresh autoencoder of ModelConfig `shape` whose normalisation holds the training log-mels' per-bin
    statistics and whose linear path starts as their PCA."""
    model = AudioAutoencoder(**asdict(shape))
    model.set_normalization(*compute_normalization(train_set.log_mels))
    model.init_pca(train_set.log_mels)
    return model


def rank_seed(seed, rank, step):
    """The dropout seed of process `rank` > 0 of several, at a new run (step 0) or at a resume that cannot
    restore its own random state (another number of processes)."""
    return (seed * 1_000_003 + rank) * 1_000_003 + step


def start_run(config):
    """A new run, or the one in the checkpoint when resuming (its schedule stretched to `config.optim.epochs`).

    Several processes build the same model; rank 0 prepares the data (and its cache) first. Dropout draws
    from each process's global RNG: rank 0's is the one-process state, the others' are seeded with
    rank_seed, and a checkpoint keeps them all, so a resume with as many processes is exact."""
    world = config.world
    state = load_checkpoint(config.checkpoint) if config.optim.resume else None
    kind = "vae" if config.model.variational else "ae"
    if state and state["kind"] != kind:
        usage_error(f"--model {kind} cannot resume {config.checkpoint}, a checkpoint of kind '{state['kind']}': "
                    f"resume it with --model {state['kind']}")
    transform = (LogMelTransform.from_config(state["transform_config"], config.device)
                 if state else LogMelTransform(n_mels=config.model.n_mels, device=config.device))
    with world.main_first():
        splits = build_splits(config.data, transform)
    if len(splits["train"]) == 0:
        raise SystemExit(f"error: no usable training recordings (5 s or longer, not silent) in {splits['train'].origin}")
    torch.manual_seed(config.optim.seed)
    model = model_from_checkpoint(state, config.device) if state else new_model(config.model, splits["train"])
    steps = steps_per_epoch(splits["train"], config.optim.batch_size)
    if state is None and config.checkpoint.exists():
        print(f"note: starting a new run; {config.checkpoint} will be overwritten (use --resume to continue it)")
    trainer = AudioTrainer(model, config.device, config.optim.schedule(steps),
                           kl_weight=KlWeight(config.kl_weight.weight, config.kl_weight.warmup_steps), world=world)
    run = Run(transform, splits, trainer, steps, history=[])
    if state:
        trainer.load_state_dict(state)
        trainer.schedule.extend(config.optim.epochs * steps, trainer.step)  # a longer run keeps decaying from here
        set_rng_state(state["rng"])
        if world.active and not world.is_main:
            if len(state.get("rank_rng") or []) == world.size:
                set_rng_state(state["rank_rng"][world.rank])
            else:
                torch.manual_seed(rank_seed(config.optim.seed, world.rank, trainer.step))
        run.history, run.epoch, run.progress = state["history"], state["epoch"], state["partial_epoch"]
        where = f"epoch {run.epoch + 1}, step {run.progress['steps_done']}" if run.progress else f"the end of epoch {run.epoch}"
        print(f"Resuming {config.checkpoint} at {where}")
    else:
        if world.active and not world.is_main:
            torch.manual_seed(rank_seed(config.optim.seed, world.rank, 0))
    return run


def save_run(run, config):
    """The checkpoint, written by rank 0; with several processes it also holds each one's random state."""
    world = config.world
    rank_rngs = world.gather_objects(rng_state()) if world.active else None
    if world.is_main:
        atomic_torch_save(make_checkpoint(run, config.data, config.command_line, rank_rngs), config.checkpoint)


def make_evaluators(splits, inverse, audio_clips, seed):
    """PESQ/STOI evaluators on `audio_clips` unseen validation clips and as many training clips (the gap shows)."""
    if not audio_clips:
        return {}
    require_speech_metrics()
    evaluators = {}
    for split in ("valid", "train"):
        if len(splits[split]):
            positions = spread_positions(len(splits[split]), audio_clips)
            print(f"Oracle ({inverse.name}) for PESQ/STOI on {len(positions)} {split} clips ...", flush=True)
            evaluators[split] = AudioEvaluator(splits[split].waveforms(positions), inverse, seed)
    return evaluators


def epoch_record(epoch, progress, trainer, splits, evaluators, milestone, eval_limit=512, board=None):
    """Metrics after one epoch: training-clip and unseen-clip mel scores; PESQ/STOI at milestones, whose first
    clip's audio goes to the TensorBoard `board` too."""
    start = time.perf_counter()
    steps = progress["steps_done"]
    record = {"epoch": epoch, "step": trainer.step, "train_seconds": progress["seconds"],
              "clips_per_s": steps * progress["batch_size"] / max(progress["seconds"], 1e-9),
              "train": {"loss_during_epoch": progress["loss_sum"] / steps,
                        **({"kl_per_clip": progress.get("kl_sum", 0.0) / steps,
                            "kl_weight": trainer.kl_weight(trainer.step - 1)} if trainer.model.variational else {}),
                        **score_split(trainer.model, splits["train"], eval_limit)},
              "valid": score_split(trainer.model, splits["valid"], eval_limit)}
    if record["valid"]:  # the loss is MSE + L1 in the same normalised units
        record["valid"]["loss"] = record["valid"]["mse"] + record["valid"]["mae"]
    if milestone:
        for split, evaluator in evaluators.items():
            record[f"audio_{split}"], audio, _ = evaluator(trainer.model)
            if board is not None:
                board.audio(f"reconstruction/{split}", audio[0], epoch, evaluator.transform.sample_rate)
    record["eval_seconds"] = time.perf_counter() - start
    return record


def epoch_line(record, epochs):
    """The one line printed after an epoch."""
    t, v = record["train"], record.get("valid", {})
    line = f"epoch {record['epoch']:3d}/{epochs}  loss {t['loss_during_epoch']:.4f}  train mse {t['mse']:.4f}"
    if "kl_per_clip" in t:
        line += f"  KL {t['kl_per_clip']:.0f} nats/clip (weight {t['kl_weight']:.3g})"
    if v:
        line += f"  unseen mse {v['mse']:.4f} ({versus_baseline(v)} than baseline) cos {v['cosine']:.3f}"
    for split, name in (("audio_valid", "unseen"), ("audio_train", "train")):
        a = record.get(split, {})
        if a.get("pesq") is not None:
            line += f"  {name} PESQ {a['pesq']:.2f}/{a['oracle_pesq']:.2f} STOI {a['stoi']:.2f}/{a['oracle_stoi']:.2f}"
    return line + f"  {record['clips_per_s']:.0f} clips/s"


def train_epochs(run, config, evaluators, stop, valid_name, board):
    """Epochs until `config.optim.epochs` or a stop request: train, score, log (also to the TensorBoard `board`),
    checkpoint, plot at milestones."""
    train_set = run.splits["train"]
    if config.device.type == "cuda":
        train_set.keep_on(config.device)
    while run.epoch < config.optim.epochs:
        number = run.epoch + 1
        run.progress = run.progress or {"epoch": number, "steps_done": 0, "loss_sum": 0.0, "seconds": 0.0,
                                        "batch_size": config.optim.batch_size}
        plan = epoch_crops(train_set, run.steps, config.optim.batch_size, config.optim.seed, number)
        if run.progress["steps_done"] < run.steps and not run_epoch(run.trainer, train_set, plan, run.progress,
                                                                     number, config.optim.epochs, stop):
            return
        scored = milestone(number, config.optim.epochs, config.eval_every)
        main = config.world.is_main  # rank 0 alone scores, prints and writes; the others wait for it
        record = (epoch_record(number, run.progress, run.trainer, run.splits, evaluators, scored, board=board)
                  if main else {"epoch": number})
        run.epoch, run.progress = number, None
        run.history.append(record)
        board.record(record, number)
        if main:
            print(epoch_line(record, config.optim.epochs), flush=True)
        save_run(run, config)
        if scored and main:
            plot_training_curves(run.history, config.results_dir / "training_curves.png", valid_name)
        if stop.poll(boundary=True):
            return


def train(config):
    """Train as `config` (a TrainConfig) says; the history of epoch records."""
    torch.set_flush_denormal(True)  # denormal floats appear mid-training and make CPU steps much slower
    run = start_run(config)
    if config.optim.done(run.epoch, config.checkpoint):
        return run.history
    config.results_dir.mkdir(parents=True, exist_ok=True)
    splits, model = run.splits, run.trainer.model
    valid_name = "validation files" if len(splits["valid"]) else "none: no validation files"
    world = config.world
    inverse = load_inverse(config.inverse, run.transform) if world.is_main else None
    evaluators = make_evaluators(splits, inverse, config.audio_eval_clips, config.optim.seed) if world.is_main else {}
    processes = (f" in {world.size} processes ({config.optim.batch_size // world.size} clips each per step of "
                 f"{config.optim.batch_size})" if world.active else "")
    kind = (f"VAE (KL weight {run.trainer.kl_weight.weight:g}, warm-up {run.trainer.kl_weight.warmup_steps} steps)"
            if model.variational else "autoencoder")
    print(f"Training the {kind} on {len(splits['train'].recordings)} recordings ({len(splits['train'])} clip windows), "
          f"{len(splits['valid'])} unseen validation clips; {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
          f"parameters, {model.compression:g}x compression, device {config.device}{processes}, {run.steps} steps/epoch")
    board = Board(config.results_dir / "tensorboard", enabled=world.is_main)
    with StopRequest(world) as stop, contextlib.closing(board):
        try:
            train_epochs(run, config, evaluators, stop, valid_name, board)
        except KeyboardInterrupt:
            raise SystemExit(f"\nInterrupted at once: {config.checkpoint} holds the state after epoch {run.epoch}.")
        except FloatingPointError as err:
            raise SystemExit(f"error: {err}. The last good checkpoint is {config.checkpoint}.")
    if stop.requested:
        save_stopped_run(run, config, valid_name)
    if world.is_main:
        write_final_outputs(run, config, inverse)
    return run.history


def save_stopped_run(run, config, valid_name):
    """After a Ctrl-C: save the checkpoint and the curves so far, then end saying how to resume."""
    save_run(run, config)
    if run.history and config.world.is_main:
        plot_training_curves(run.history, config.results_dir / "training_curves.png", valid_name)
    config.world.barrier()  # no process ends (which makes torchrun stop the others) before the save
    p = run.progress
    where = f"epoch {p['epoch']}, step {p['steps_done']} of {run.steps}" if p else f"epoch {run.epoch}"
    raise SystemExit(f"Stopped after {where}: checkpoint saved to {config.checkpoint}; continue with --resume.")


def write_final_outputs(run, config, inverse):
    """The spectrogram plot of unseen validation clips, and the final scores in metrics.json."""
    splits, model = run.splits, run.trainer.model
    held_out = splits["valid"] if len(splits["valid"]) else splits["train"]
    shown = spread_positions(len(held_out), 3)
    plot_spectrograms(held_out.clips(shown), reconstruct(model, held_out.clips(shown)).cpu(),
                      [held_out.describe(i) for i in shown], config.results_dir / "spectrogram_comparison.png",
                      f"{'Unseen validation' if len(splits['valid']) else 'Training (no validation files)'} "
                      f"clips after epoch {run.epoch}")
    metrics = read_json(config.results_dir / "metrics.json")
    metrics["train"] = {"data": {s: {"origin": d.origin, "recordings": len(d.recordings), "clips": len(d), **d.stats}
                                 for s, d in splits.items()},
                        "compression": model.compression, "epochs": run.history}
    metrics["final_test"] = evaluate(model, inverse, splits, config.audio_eval_clips, config.optim.seed,
                                     by_source=config.data.audio_dir is None)
    write_json_atomic(metrics, config.results_dir / "metrics.json")
