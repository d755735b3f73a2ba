"""The image checkpoint: what it holds, how it is written and read (older versions included)."""
from __future__ import annotations

from . import common
from .data import class_names

CHECKPOINT_FORMAT = "imageaudiogen.ddpm"
CHECKPOINT_VERSION = 4
READABLE_CHECKPOINT_VERSIONS = (2, 3, 4)  # 2: unconditional MNIST only (no num_classes, no dataset); 3: no kind
MODEL_KINDS = {"ddpm": "DDPM", "gan": "GAN"}
# The fields that only resume training: sampling needs the EMA network ("ema") and what describes it.
RESUME_ONLY = ("model", "optimizer", "discriminator", "d_optimizer", "generator", "epoch_progress", "lr_plan",
               "augment")


def load_checkpoint(path):
    """An image checkpoint (a DDPM or a GAN), loaded with weights_only=True and brought to the current
    version's fields."""
    state = common.load_checkpoint(path, CHECKPOINT_FORMAT, READABLE_CHECKPOINT_VERSIONS)
    state.setdefault("kind", "ddpm")  # versions 2 and 3 knew only the DDPM
    # version 2 predates class conditioning and Fashion-MNIST: an unconditional MNIST model
    state["model_config"].setdefault("num_classes", 0)
    state.setdefault("dataset", "mnist")
    state.setdefault("cond_drop_prob", 0.0)
    state.setdefault("guidance", None)
    return state


def make_checkpoint(state, epochs_completed, steps_per_epoch, progress, history, dataset, command_line,
                    guidance=None, interrupted=False):
    """Everything a run needs to continue exactly, and what it holds, said outright:

    `kind` ('ddpm' or 'gan') and the fields that rebuild the networks (state.describe()): a DDPM's
    model_config, diffusion_config and label dropout; a GAN's generator, discriminator and GanConfig.

    `epochs_completed` whole epochs, plus `step_in_epoch` steps of the next one (0 at an epoch boundary;
    then `epoch_progress` holds that epoch's data order and the losses so far), `interrupted` when Ctrl-C
    ended the run there. `step` counts all optimizer steps. A conditional model says its data set, class
    names, label dropout and the guidance scale its final evaluation supports (`guidance`, see
    train.fit_guidance); model_config["num_classes"] is 0 for an unconditional one. `command_line`: the
    settings the run was started with, for the record."""
    in_epoch = progress is not None and progress.step > 0
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "dataset": dataset,
        "class_names": list(class_names(dataset)),
        "guidance": guidance,
        **state.describe(),
        **state.state_dict(),
        "epochs_completed": epochs_completed,
        "step_in_epoch": progress.step if in_epoch else 0,
        "steps_per_epoch": steps_per_epoch,
        "interrupted": interrupted,
        "epoch_progress": progress.state_dict() if in_epoch else None,
        "history": history,
        "args": dict(command_line),
    }


def checkpoint_position(state):
    """'epoch 3' or 'epoch 3 + 120/937 steps of epoch 4'."""
    text = f"epoch {state['epochs_completed']}"
    if state["step_in_epoch"]:
        text += f" + {state['step_in_epoch']}/{state['steps_per_epoch']} steps of epoch {state['epochs_completed'] + 1}"
    return text


def checkpoint_dataset(state, dataset, path):
    """The checkpoint's data set; a different `dataset` asked on the command line is a usage error."""
    if dataset and dataset != state["dataset"]:
        common.usage_error(f"--dataset {dataset} does not match {path}, which was trained on {state['dataset']}")
    return state["dataset"]


def require_kind(state, kind, path, what):
    """A usage error (one line, exit code 2) unless the checkpoint is of `kind`: `what` needs it."""
    if state["kind"] != kind:
        common.usage_error(f"{what} needs a {MODEL_KINDS[kind]} checkpoint; {path} is a {MODEL_KINDS[state['kind']]} "
                           f"(trained with --model {state['kind']})")


def checkpoint_guidance(state, default):
    """The guidance scale the checkpoint's own evaluation supports, else `default` (older checkpoints)."""
    return state["guidance"]["scale"] if state.get("guidance") else default
