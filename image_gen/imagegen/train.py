"""--mode train: a run (new or resumed) of a DDPM or a GAN, its epochs, the per-epoch evaluation, the guidance
fit, and the checkpoint, plots and metrics.json it leaves behind. Interrupting with Ctrl-C saves an exactly
resumable state."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision.utils import make_grid

from .checkpoint import MODEL_KINDS, checkpoint_dataset, checkpoint_position, load_checkpoint, make_checkpoint
from .common import Board, StopRequest, World, atomic_torch_save, read_json, usage_error, write_json_atomic
from .data import class_names, dataset_title, load_images, to_model_range, to_unit_range
from .diffusion import SamplerSettings
from .fid import FidSettings, make_evaluator
from .gan import Discriminator, Generator
from .gan_training import GanConfig, GanTrainState
from .guidance import DEFAULT_GUIDANCE_SCALE, fit_guidance
from .plots import plot_metrics_comparison, plot_training_loss, save_class_grid, save_titled_grid
from .training import (EpochProgress, TrainState, evaluation_epochs, mean_losses, new_lr_plan, replan_lr,
                       train_one_epoch)
from .unet import DiffusionModel


@dataclass(frozen=True)
class TrainConfig:
    """What a training run is asked to do. `guidance_scale` None: evaluate at DEFAULT_GUIDANCE_SCALE and fit
    the checkpoint's guidance at the last epoch (fit_guidance); a number: use and record that w.
    `command_line`: the settings as typed, stored in the checkpoint for the record. `world`: the processes
    that torchrun started (World); `batch_size` is the global batch, which they share equally.
    `model`: 'ddpm' (`learning_rate`, `cond_drop_prob` and the sampler fields apply) or 'gan' (`gan` and
    `latent_dim` apply; the generator's EMA decay is gan.ema_decay)."""
    checkpoint: Path
    data_dir: Path
    results_dir: Path
    cache_dir: Path
    device: torch.device
    dataset: str | None = None
    model: str = "ddpm"
    conditioning: str = "class"
    cond_drop_prob: float = 0.1
    base_channels: int = 32
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    ema_decay: float = 0.999
    seed: int = 0
    precision: str = "fp32"
    compile_model: bool = False
    resume: bool = False
    num_samples: int = 16
    sampling_steps: int = 50
    eta: float = 0.0
    guidance_scale: float | None = None
    gan: GanConfig = GanConfig()
    latent_dim: int = 128
    fid: FidSettings = FidSettings()
    command_line: dict = field(default_factory=dict)
    world: World = field(default_factory=World)

    def eval_settings(self, seed):
        """The per-epoch evaluation's sampler: always DDIM, guided at the run's w for a conditional model."""
        w = DEFAULT_GUIDANCE_SCALE if self.guidance_scale is None else self.guidance_scale
        return SamplerSettings("ddim", self.sampling_steps, self.eta, w, seed)


@dataclass
class Run:
    """A training run between steps: what --resume restores and a checkpoint holds."""
    config: TrainConfig
    state: TrainState
    dataset: str
    images: torch.Tensor          # (n, 1, 28, 28) in [-1, 1], on the device
    labels: torch.Tensor | None   # (n,) class indices on the device; None for an unconditional model
    steps_per_epoch: int
    history: list                 # one record per finished epoch
    epochs_completed: int = 0
    progress: EpochProgress | None = None   # the unfinished next epoch, if any
    guidance: dict | None = None  # the fitted or chosen guidance (see checkpoint.make_checkpoint)
    board: Board | None = None    # TensorBoard logs (rank 0)

    @property
    def conditional(self):
        return self.state.model.num_classes > 0

    @property
    def guided(self):
        """Whether the evaluation samples with classifier-free guidance (a conditional DDPM)."""
        return self.conditional and self.state.kind == "ddpm"

    def save(self, interrupted=False):
        """The checkpoint, written by rank 0 (every process holds the same state)."""
        if not self.config.world.is_main:
            return
        atomic_torch_save(make_checkpoint(self.state, self.epochs_completed, self.steps_per_epoch, self.progress,
                                          self.history, self.dataset, self.config.command_line, self.guidance,
                                          interrupted), self.config.checkpoint)


def start_run(config):
    """A new run, or the one in config.checkpoint with config.resume (its LR plan stretched to config.epochs).
    The global RNG is seeded first: it draws the initial weights, nothing later."""
    torch.manual_seed(config.seed)
    saved = load_checkpoint(config.checkpoint) if config.resume else None
    dataset = checkpoint_dataset(saved, config.dataset, config.checkpoint) if saved else (config.dataset or "mnist")
    images, labels = load_images(dataset, config.data_dir, train=True)
    images = to_model_range(images).to(config.device)
    steps_per_epoch = max(1, len(images) // config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    settings = dict(ema_decay=config.ema_decay, seed=config.seed, precision=config.precision,
                    compile_model=config.compile_model, world=config.world)
    if saved and config.command_line.get("model") not in (None, saved["kind"]):
        usage_error(f"--model {config.command_line['model']} cannot resume {config.checkpoint}, a "
                    f"{MODEL_KINDS[saved['kind']]} checkpoint")
    if saved and saved["step_in_epoch"] and (saved["steps_per_epoch"] != steps_per_epoch
                                             or len(saved["epoch_progress"]["order"]) != len(images)):
        raise SystemExit(f"error: {config.checkpoint} stopped inside an epoch of {saved['steps_per_epoch']} "
                         f"steps; resume it with the same data and --batch_size {saved['args']['batch_size']}")
    if saved and saved["kind"] == "gan":
        if config.world.active:
            usage_error(f"{config.checkpoint} is a GAN, which trains in one process; resume it without torchrun")
        state = GanTrainState.from_checkpoint(saved, config.device, config.seed)
        run = resumed_run(config, saved, state, dataset, images, steps_per_epoch)
    elif saved:
        state = TrainState(DiffusionModel(**saved["model_config"]), config.device, saved["diffusion_config"],
                           cond_drop_prob=saved["cond_drop_prob"], **settings)
        state.load_state_dict(saved)
        state.lr_plan = replan_lr(state.lr_plan, state.step, total_steps)
        run = resumed_run(config, saved, state, dataset, images, steps_per_epoch)
    else:
        if config.checkpoint.exists():
            print(f"note: starting a new run; {config.checkpoint} will be overwritten (use --resume to continue it)")
        num_classes = len(class_names(dataset)) if config.conditioning == "class" else 0
        if config.model == "gan":
            state = GanTrainState(Generator(config.latent_dim, config.base_channels, num_classes),
                                  Discriminator(config.base_channels, num_classes), config.device,
                                  config.gan, config.seed, config.world)
        else:
            state = TrainState(DiffusionModel(config.base_channels, num_classes=num_classes), config.device,
                               lr_plan=new_lr_plan(total_steps, config.learning_rate),
                               cond_drop_prob=config.cond_drop_prob if num_classes else 0.0, **settings)
        run = Run(config, state, dataset, images, None, steps_per_epoch, [])
    run.labels = labels.to(config.device) if run.conditional else None
    return run


def resumed_run(config, saved, state, dataset, images, steps_per_epoch):
    """The Run a checkpoint holds, with its unfinished epoch."""
    run = Run(config, state, dataset, images, None, steps_per_epoch, saved["history"], saved["epochs_completed"],
              guidance=saved["guidance"])
    if saved["epoch_progress"] is not None:
        p = saved["epoch_progress"]
        run.progress = EpochProgress(p["order"].to(config.device), p["losses"], p["seconds"])
    print(f"Resuming from {config.checkpoint} at {checkpoint_position(saved)} (step {state.step})")
    return run


def evaluate_epoch(run, evaluator, epoch):
    """Sample grid from fixed noise (a conditional model: one row per class, guided), and FID/KID (plus
    class accuracy) when enabled. Returns the record fields it measured."""
    config, sampler, world = run.config, run.state.sampler, run.config.world
    start = time.perf_counter()
    settings = config.eval_settings(config.seed + 1)
    path = config.results_dir / "epoch_comparisons" / f"samples_epoch_{epoch:03d}.png"
    title = f"epoch {epoch}, {sampler.name(settings, guided=run.guided)}"
    if run.conditional:
        classes = list(range(sampler.num_classes))
        grid = sampler.sample_classes(classes, config.num_samples, settings, world=world)
        if world.is_main:
            save_class_grid(to_unit_range(grid), [class_names(run.dataset)[c] for c in classes], path, title=title)
            run.board.image("samples", make_grid(to_unit_range(grid).cpu(), nrow=config.num_samples), epoch)
    elif world.is_main:
        grid = to_unit_range(sampler.sample(config.num_samples, settings))
        save_titled_grid(grid, path, title=title)
        run.board.image("samples", make_grid(grid.cpu()), epoch)
    scores = {"fid": None, "kid": None}
    if evaluator is not None:
        print(f"  epoch {epoch}: drawing {evaluator.num_samples} samples for FID/KID "
              f"({sampler.name(settings, guided=run.guided)}) ...", flush=True)
        scores = score_samples(run, evaluator, settings.replace(seed=config.seed + 2))
        scores.update(fid_backbone=evaluator.backbone, fid_samples=evaluator.num_samples)
    return {**scores, "eval_seconds": time.perf_counter() - start}


def score_samples(run, evaluator, settings):
    """The evaluator's scores of the EMA model's draw_for_fid samples. Several processes share the drawing;
    rank 0 gathers the images, scores them and tells the others the scores."""
    world = run.config.world
    images, labels = run.state.sampler.draw_for_fid(evaluator.num_samples, settings, world=world)
    return world.broadcast(evaluator(images, labels) if world.is_main else None)


def choose_run_guidance(run, evaluator, record):
    """The guidance the checkpoint records after the last epoch: the run's own w when --guidance_scale was
    given, else fit_guidance from this evaluation up the ladder (each further w costs one more evaluation)."""
    config = run.config
    if config.guidance_scale is not None:
        return {"scale": config.guidance_scale, "rows": [], "rule": "set by --guidance_scale"}
    if evaluator is None or evaluator.classifier is None:
        return None  # nothing measured: infer falls back to the default w
    settings = config.eval_settings(config.seed + 2)
    first = {"guidance_scale": settings.guidance_scale,
             **{k: record[k] for k in ("fid", "kid", "kid_std", "accuracy")}}

    def score(w):
        print(f"  guidance fit: w = {w:g} (class accuracy at the previous w is under 99%) ...", flush=True)
        return score_samples(run, evaluator, settings.replace(guidance_scale=w))

    start = time.perf_counter()
    fitted = fit_guidance(score, first)
    record["eval_seconds"] += time.perf_counter() - start
    steps = ", ".join(f"w={r['guidance_scale']:g}: {r['accuracy']:.1%}" for r in fitted["rows"])
    print(f"Guidance recorded in the checkpoint: w = {fitted['scale']:g} ({fitted['rule']}; {steps}; "
          f"{evaluator.describe()}, {settings.name(guided=False)})")
    return {**fitted, "sampler": settings.name(guided=False), "fid_samples": evaluator.num_samples,
            "epoch": record["epoch"]}


def write_training_outputs(run, evaluator, sampler):
    """training_loss.png, epoch_comparisons/metrics_comparison.png and metrics.json["train"] (rank 0)."""
    config, history = run.config, run.history
    if not config.world.is_main:
        return
    plot_training_loss(history, config.results_dir / "training_loss.png", dataset_title(run.dataset),
                       MODEL_KINDS[run.state.kind])
    plot_metrics_comparison(history, evaluator, sampler,
                            config.results_dir / "epoch_comparisons" / "metrics_comparison.png")
    metrics = read_json(config.results_dir / "metrics.json")
    metrics["train"] = {
        **(evaluator.summary() if evaluator else {"fid_backbone": None, "fid_samples": 0}),
        "model": run.state.kind, "fid_sampler": sampler, "device": str(config.device), "batch_size": config.batch_size,
        **({"processes": config.world.size} if config.world.active else {}), "epochs": history,
        "train_seconds": sum(h["train_seconds"] for h in history),
        "eval_seconds": sum(h["eval_seconds"] for h in history),
        "guidance": run.guidance,
    }
    write_json_atomic(metrics, config.results_dir / "metrics.json")


def train_epochs(run, evaluator, stop):
    """Epochs until config.epochs or a stop request: train, evaluate (epoch 1, every 5th, the last), log,
    checkpoint and plot after each. Raises SystemExit after saving when stopped early."""
    config, state = run.config, run.state
    eval_epochs = evaluation_epochs(config.epochs)
    sampler = state.sampler.name(config.eval_settings(config.seed + 1), guided=run.guided)
    for epoch in range(run.epochs_completed + 1, config.epochs + 1):
        if run.progress is None:
            run.progress = EpochProgress(torch.randperm(len(run.images), generator=state.generator).to(config.device))
        if not train_one_epoch(state, run.images, run.labels, config.batch_size, epoch, config.epochs, run.progress,
                               stop):
            run.save(interrupted=True)
            config.world.barrier()  # no process ends (which makes torchrun stop the others) before the save
            raise SystemExit(f"Interrupted in epoch {epoch} after step {run.progress.step} of {run.steps_per_epoch}: "
                             f"saved to {config.checkpoint}; continue with --resume.")
        progress = run.progress
        losses = mean_losses(progress.losses)
        record = {"epoch": epoch, "loss": losses[0], **({"g_loss": losses[1]} if len(losses) > 1 else {}),
                  "images_per_s": run.steps_per_epoch * config.batch_size / progress.seconds,
                  "train_seconds": progress.seconds, "fid": None, "kid": None, "eval_seconds": 0.0,
                  "lr": state.learning_rate()}
        if getattr(state, "augment", None) is not None and state.augment.config.policy:
            record["augment_p"] = state.augment.p
        run.progress = None
        loss = (f"D loss {record['loss']:.4f}  G loss {record['g_loss']:.4f}" if "g_loss" in record
                else f"loss {record['loss']:.4f}")
        if "augment_p" in record:
            loss += f"  augment p {record['augment_p']:.3f}"
        line = (f"epoch {epoch:3d}/{config.epochs}  {loss}  {record['images_per_s']:7.0f} img/s"
                f"  {record['train_seconds']:6.1f}s")
        if epoch in eval_epochs:
            record.update(evaluate_epoch(run, evaluator, epoch))
            if record["fid"] is not None:
                line += (f"  FID {record['fid']:.2f} KID {record['kid']:.4f}"
                         + (f" acc {record['accuracy']:.1%}" if record.get("accuracy") is not None else "")
                         + f" ({evaluator.describe()}, {sampler})")
            line += f"  eval {record['eval_seconds']:.1f}s"
        print(line, flush=True)
        if epoch == config.epochs and run.guided:
            run.guidance = choose_run_guidance(run, evaluator, record)
        run.history.append(record)
        run.board.record(record, epoch)
        run.epochs_completed = epoch
        run.save()
        write_training_outputs(run, evaluator, sampler)
        if stop.poll(boundary=True) and epoch < config.epochs:
            config.world.barrier()
            raise SystemExit(f"Stopped after epoch {epoch}: saved to {config.checkpoint}; continue with --resume.")


def summarize_timing(history):
    train_s = sum(h["train_seconds"] for h in history)
    eval_s = sum(h["eval_seconds"] for h in history)
    if train_s + eval_s > 0:
        print(f"Done: training {train_s:.0f}s, evaluation {eval_s:.0f}s "
              f"({100 * eval_s / (train_s + eval_s):.0f}% of the run)")


def train(config):
    """Train (or resume) the run that `config` describes; returns its history (one record per epoch)."""
    run = start_run(config)
    if run.epochs_completed >= config.epochs:
        print(f"Nothing to do: the checkpoint already has {run.epochs_completed} epochs (--epochs {config.epochs}).")
        return run.history
    (config.results_dir / "epoch_comparisons").mkdir(parents=True, exist_ok=True)
    model = run.state.model
    if run.state.kind == "gan":
        gan = run.state.config
        kind = (f"{'class-conditional' if run.conditional else 'unconditional'}, {gan.loss} loss, "
                f"G/D rates {gan.g_learning_rate:g}/{gan.d_learning_rate:g}"
                + (f", R1 {gan.r1_gamma:g}" if gan.r1_gamma else ""))
        model = torch.nn.ModuleList([model, run.state.discriminator])
    else:
        kind = (f"class-conditional, label dropout {run.state.cond_drop_prob:g}" if run.conditional
                else "unconditional")
    world = config.world
    processes = (f" in {world.size} processes ({config.batch_size // world.size} images each per step of "
                 f"{config.batch_size})" if world.active else "")
    print(f"Training {MODEL_KINDS[run.state.kind]} ({kind}) on {len(run.images)} {dataset_title(run.dataset)} images, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, device {config.device}"
          f"{processes}, {run.steps_per_epoch} steps/epoch")
    evaluator = None
    if config.fid.num_samples:
        with world.main_first():  # rank 0 fills the caches (classifier, real features), the others read them
            evaluator = make_evaluator(config.fid, run.dataset, config.data_dir, config.cache_dir, config.device,
                                       run.conditional)
    run.board = Board(config.results_dir / "tensorboard", enabled=world.is_main)
    try:
        with StopRequest(world) as stop:
            train_epochs(run, evaluator, stop)
    except KeyboardInterrupt:
        raise SystemExit(f"\nQuit without saving; {config.checkpoint} holds the last save.")
    except FloatingPointError as err:
        raise SystemExit(f"error: {err}. The last good checkpoint is {config.checkpoint}.")
    finally:
        run.board.close()
    summarize_timing(run.history)
    return run.history
