"""--mode train: a run (new or resumed) of a DDPM or a GAN, its epochs, the per-epoch evaluation, the guidance
fit, and the checkpoint, plots and metrics.json it leaves behind. Interrupting with Ctrl-C saves an exactly
resumable state."""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision.utils import make_grid

from .checkpoint import MODEL_KINDS, checkpoint_dataset, checkpoint_position, load_checkpoint, make_checkpoint
from .common import Board, StopRequest, World, atomic_torch_save, read_json, usage_error, write_json_atomic
from .data import class_names, dataset_title, load_images, to_model_range, to_unit_range
from .diffusion import SamplerSettings
from .fid import FidSettings, load_classifier, make_evaluator
from .gan import Discriminator, Generator
from .gan_training import GanConfig, GanTrainState
from .guidance import DEFAULT_GUIDANCE_SCALE, MIN_ACCURACY, fit_guidance
from .plots import plot_metrics_comparison, plot_training_loss, save_class_grid, save_titled_grid
from .training import (EpochProgress, TrainState, evaluation_epochs, mean_losses, new_lr_plan, replan_lr,
                       train_one_epoch)
from .unet import DiffusionModel


# By default a run measures Inception FID (N = 1000, at its last epoch) only when it trains on at least this many
# images (10 epochs of MNIST): on a 2-core CPU one FID costs about 1.5 minutes (draws and their Inception
# features) and the first also 2.5 minutes of real features, as much as a 1-epoch MNIST run trains
# (docs/image-results.md, what evaluation costs).
AUTO_FID_IMAGES = 600_000


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
    sampling: SamplerSettings = SamplerSettings()
    guidance_scale: float | None = None
    gan: GanConfig = GanConfig()
    latent_dim: int = 128
    fid: FidSettings = FidSettings()
    fid_every: int = 0
    accuracy_samples: int = 300
    command_line: dict = field(default_factory=dict)
    world: World = field(default_factory=World)

    def eval_settings(self, seed):
        """The evaluation's sampler (`sampling`), guided at the run's w for a conditional model."""
        w = DEFAULT_GUIDANCE_SCALE if self.guidance_scale is None else self.guidance_scale
        return self.sampling.replace(guidance_scale=w, seed=seed)

    def fid_epochs(self):
        """The epochs with an Inception FID: every `fid_every`-th and the last (none without FID)."""
        if not self.fid.num_samples:
            return set()
        every = set(range(self.fid_every, self.epochs + 1, self.fid_every)) if self.fid_every else set()
        return {self.epochs} | every


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


def draw_epoch_grid(run, epoch, settings):
    """epoch_comparisons/samples_epoch_NNN.png and the board's image: a conditional model's grid has one row per
    class (guided at `settings`' w), an unconditional model's is a plain grid."""
    config, sampler, world = run.config, run.state.sampler, run.config.world
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


def evaluate_epoch(run, checks, epoch):
    """Class accuracy of `accuracy_samples` class-balanced draws, the sample grid from fixed noise, and at the
    FID epochs Inception FID/KID (with the accuracy of those N draws). The last epoch of a guided run first fits
    the checkpoint's w on class accuracy (choose_run_guidance), then draws its grid and measures its FID at that
    w, so the last grid shows what infer will draw. Returns the record fields it measured, with `eval_parts`:
    the seconds of each part."""
    config, sampler = run.config, run.state.sampler
    parts, clock = {}, time.perf_counter()

    def lap(name):
        nonlocal clock
        parts[name] = time.perf_counter() - clock
        clock = time.perf_counter()

    grid_settings = config.eval_settings(config.seed + 1)
    settings = grid_settings.replace(seed=config.seed + 2)
    record = {"fid": None, "kid": None}
    fid_now, fit_now = epoch in config.fid_epochs(), epoch == config.epochs and run.guided
    at_w = lambda s: {"guidance_scale": s.guidance_scale} if run.guided else {}  # noqa: E731  the w measured at
    if checks.classifier is not None and (fit_now or not fid_now):  # FID's own draws give the accuracy
        record.update(checks.accuracy(settings), **at_w(settings))
        lap("accuracy")
    if fit_now:
        run.guidance = choose_run_guidance(run, checks, record["accuracy"] if "accuracy" in record else None)
        if run.guidance:
            settings = settings.replace(guidance_scale=run.guidance["scale"])
            grid_settings = grid_settings.replace(guidance_scale=run.guidance["scale"])
        lap("guidance_fit")
    draw_epoch_grid(run, epoch, grid_settings)
    lap("grid")
    if fid_now:
        print(f"  epoch {epoch}: drawing {checks.fid.num_samples} samples for FID/KID "
              f"({sampler.name(settings, guided=run.guided)}) ...", flush=True)
        record.update(checks.scores(settings), fid_backbone=checks.fid.backbone, fid_samples=checks.fid.num_samples,
                      **at_w(settings))
        lap("fid")
    return {**record, "eval_seconds": sum(parts.values()), "eval_parts": parts}


class EpochChecks:
    """What the training evaluation measures with: the data set's `classifier` (class accuracy of
    `accuracy_samples` draws; None when the model is unconditional or the check is off) and the FID/KID
    evaluator `fid` (None without FID), and the seconds their one-off set-up took. Several processes share
    each drawing; rank 0 scores it and tells the others."""

    def __init__(self, run, classifier, fid, setup_seconds=0.0):
        self.run, self.classifier, self.fid, self.setup_seconds = run, classifier, fid, setup_seconds

    def _draw(self, n, settings):
        return self.run.state.sampler.draw_for_fid(n, settings, world=self.run.config.world)

    def accuracy(self, settings, required=None):
        """{'accuracy', 'accuracy_samples'}: the share of `accuracy_samples` class-balanced draws that the
        classifier recognises as the class asked for.

        `required` (a share such as 0.99; one process only): a yes/no check instead of a measurement. The
        classes are drawn in turn and drawing stops at the first miss beyond the (1 - required) x N that the
        full draw may have, since the full draw cannot then reach `required`; the record says how many were
        drawn (`accuracy_samples`) and that the check `stopped`. A draw that completes gives the full figure."""
        n, world = self.run.config.accuracy_samples, self.run.config.world
        if required is not None and not world.active:
            allowed_misses = math.floor((1.0 - required) * n + 1e-9)
            correct = drawn = 0
            for images, labels in self.run.state.sampler.draw_classes_in_turn(n, settings):
                correct += (self.classifier.predict(images) == labels).sum().item()
                drawn += len(labels)
                if drawn - correct > allowed_misses:
                    break
            return {"accuracy": correct / drawn, "accuracy_samples": drawn, **({"stopped": True} if drawn < n else {})}
        images, labels = self._draw(n, settings)
        value = (self.classifier.predict(images) == labels).float().mean().item() if world.is_main else None
        return {"accuracy": world.broadcast(value), "accuracy_samples": n}

    def scores(self, settings):
        """The FID evaluator's scores (FID, KID, and class accuracy of its N draws)."""
        images, labels = self._draw(self.fid.num_samples, settings)
        world = self.run.config.world
        scores = world.broadcast(self.fid(images, labels) if world.is_main else None)
        return {**scores, **({"accuracy_samples": self.fid.num_samples} if "accuracy" in scores else {})}


def choose_run_guidance(run, checks, accuracy):
    """The guidance the checkpoint records after the last epoch: the run's own w when --guidance_scale was
    given, else fit_guidance on class accuracy from this epoch's `accuracy` at the evaluation's w up the
    ladder (each further w costs one more check of `accuracy_samples` draws; no Inception)."""
    config = run.config
    if config.guidance_scale is not None:
        return {"scale": config.guidance_scale, "rows": [], "rule": "set by --guidance_scale"}
    if accuracy is None:
        return None  # nothing measured: infer falls back to the default w
    settings = config.eval_settings(config.seed + 2)

    def score(w):
        print(f"  guidance fit: w = {w:g} (class accuracy at the previous w is under {MIN_ACCURACY:.0%}) ...",
              flush=True)
        return checks.accuracy(settings.replace(guidance_scale=w), required=MIN_ACCURACY)

    fitted = fit_guidance(score, {"guidance_scale": settings.guidance_scale, "accuracy": accuracy,
                                  "accuracy_samples": config.accuracy_samples})
    steps = ", ".join(f"w={r['guidance_scale']:g}: {r['accuracy']:.1%}"
                      + (f" (stopped after {r['accuracy_samples']})" if r.get("stopped") else "") for r in fitted["rows"])
    print(f"Guidance recorded in the checkpoint: w = {fitted['scale']:g} ({fitted['rule']}; {steps}; "
          f"up to {config.accuracy_samples} draws each, {settings.name(guided=False)})")
    return {**fitted, "sampler": settings.name(guided=False), "accuracy_samples": config.accuracy_samples,
            "epoch": config.epochs}


def write_training_outputs(run, checks, sampler, run_w):
    """training_loss.png, epoch_comparisons/metrics_comparison.png and metrics.json["train"] (rank 0); `run_w`:
    the w the evaluation draws at (None for an unguided model), so the plot can mark points drawn at another."""
    config, history = run.config, run.history
    if not config.world.is_main:
        return
    plot_training_loss(history, config.results_dir / "training_loss.png", dataset_title(run.dataset),
                       MODEL_KINDS[run.state.kind])
    plot_metrics_comparison(history, checks.fid, sampler,
                            config.results_dir / "epoch_comparisons" / "metrics_comparison.png", run.guidance, run_w)
    metrics = read_json(config.results_dir / "metrics.json")
    metrics["train"] = {
        **(checks.fid.summary() if checks.fid else {"fid_backbone": None, "fid_samples": 0}),
        "model": run.state.kind, "fid_sampler": sampler, "device": str(config.device), "batch_size": config.batch_size,
        **({"processes": config.world.size} if config.world.active else {}), "epochs": history,
        "setup_seconds": checks.setup_seconds,
        "train_seconds": sum(h["train_seconds"] for h in history),
        "eval_seconds": sum(h["eval_seconds"] for h in history),
        "guidance": run.guidance,
    }
    write_json_atomic(metrics, config.results_dir / "metrics.json")


def train_epochs(run, checks, stop):
    """Epochs until config.epochs or a stop request: train, evaluate (epoch 1, every 5th, the FID epochs and
    the last), log, checkpoint and plot after each. Raises SystemExit after saving when stopped early."""
    config, state = run.config, run.state
    eval_epochs = set(evaluation_epochs(config.epochs)) | config.fid_epochs()
    settings = config.eval_settings(config.seed + 1)
    run_w = settings.guidance_scale if run.guided else None

    def sampler_at(w):  # the evaluation's sampler, named at the w an epoch's record was drawn at
        return state.sampler.name(settings if w is None else settings.replace(guidance_scale=w), guided=run.guided)
    sampler = sampler_at(run_w)
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
            record.update(evaluate_epoch(run, checks, epoch))
            line += describe_evaluation(record, checks, sampler_at(record.get("guidance_scale", run_w)))
        print(line, flush=True)
        run.history.append(record)
        run.board.record(record, epoch)
        run.epochs_completed = epoch
        run.save()
        write_training_outputs(run, checks, sampler, run_w)
        if stop.poll(boundary=True) and epoch < config.epochs:
            config.world.barrier()
            raise SystemExit(f"Stopped after epoch {epoch}: saved to {config.checkpoint}; continue with --resume.")


def describe_evaluation(record, checks, sampler):
    """The epoch line's evaluation part: accuracy (N), FID/KID (backbone, N), the sampler (named at the w the
    record was drawn at) and the seconds."""
    text = ""
    if record.get("accuracy") is not None:
        text += f"  acc {record['accuracy']:.1%} (N={record['accuracy_samples']})"
    if record["fid"] is not None:
        text += f"  FID {record['fid']:.2f} KID {record['kid']:.4f} ({checks.fid.describe()})"
    if text:
        text += f" [{sampler}]"
    return text + f"  eval {record['eval_seconds']:.1f}s"


def resolve_fid(config, num_images):
    """`config` with its FID settled: --fid_samples as given, or by default N = 1000 at the last epoch for
    runs that show at least AUTO_FID_IMAGES training images and none for shorter ones (said either way)."""
    if config.fid.num_samples is not None:
        return config
    shown = config.epochs * num_images
    n = 1000 if shown >= AUTO_FID_IMAGES else 0
    if n:
        print(f"FID/KID: N = {n} at the last epoch{' and every %d' % config.fid_every if config.fid_every else ''} "
              f"(the default for runs of at least {AUTO_FID_IMAGES:,} training images; --fid_samples 0 for none)")
    else:
        print(f"FID/KID: not measured in this short run ({shown:,} training images shown, under "
              f"{AUTO_FID_IMAGES:,}): an Inception FID at N = 1000 would cost more than its training on a CPU. "
              f"Ask with --fid_samples 1000, or later: --mode infer --fid_samples 1000")
    return dataclasses.replace(config, fid=dataclasses.replace(config.fid, num_samples=n))


def epoch_checks(run):
    """The EpochChecks of `run`: the classifier (a conditional model, unless --accuracy_samples 0) and the
    FID evaluator (with --fid_samples), each loaded or prepared once and cached; the seconds that took."""
    config, start = run.config, time.perf_counter()
    classifier = None
    if run.conditional and (config.accuracy_samples or config.fid.num_samples):
        classifier = load_classifier(config.cache_dir, run.dataset, config.data_dir, config.device)
    fid = (make_evaluator(config.fid, run.dataset, config.data_dir, config.cache_dir, config.device,
                          run.conditional, classifier) if config.fid.num_samples else None)
    return EpochChecks(run, classifier if config.accuracy_samples else None, fid, time.perf_counter() - start)


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
                + (f", R1 {gan.r1_gamma:g}" if gan.r1_gamma else "")
                + (f", mode seeking {gan.mode_seeking:g}" if gan.mode_seeking else ""))
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
    run.config = config = resolve_fid(config, len(run.images))
    with world.main_first():  # rank 0 fills the caches (classifier, real features), the others read them
        checks = epoch_checks(run)
    run.board = Board(config.results_dir / "tensorboard", enabled=world.is_main)
    try:
        with StopRequest(world) as stop:
            train_epochs(run, checks, stop)
    except KeyboardInterrupt:
        raise SystemExit(f"\nQuit without saving; {config.checkpoint} holds the last save.")
    except FloatingPointError as err:
        raise SystemExit(f"error: {err}. The last good checkpoint is {config.checkpoint}.")
    finally:
        run.board.close()
    summarize_timing(run.history)
    return run.history
