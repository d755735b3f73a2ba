"""Pictures: sample grids with a labelled row per class, single PNGs, the training curves, FID/KID per
epoch with the real-vs-real floor, and the guidance sweep."""
from __future__ import annotations

import io
import math

import torch.nn.functional as F

from .common import pyplot


def save_grid(images, path, scale=4):
    """Save (n, 1, 28, 28) images in [0, 1] as one near-square grid, upscaled for viewing."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = math.ceil(math.sqrt(len(images)))
    big = F.interpolate(images.float().cpu(), scale_factor=scale, mode="nearest")
    save_image(big, path, nrow=nrow, padding=2 * scale, pad_value=0.5)


def save_titled_grid(images, path, title, scale=4):
    """Save (n, 1, 28, 28) images in [0, 1] as one near-square grid under `title` (unconditional samples)."""
    cols = math.ceil(math.sqrt(len(images)))
    save_class_grid(images, [""] * math.ceil(len(images) / cols), path, title, scale, cols=cols)


def save_class_grid(images, row_names, path, title=None, scale=4, cols=None):
    """Save (rows * cols, 1, 28, 28) images in [0, 1], class by class, as a grid with one row per class,
    each row labelled with its class name."""
    from torchvision.utils import make_grid

    plt = pyplot()
    rows = len(row_names)
    cols = cols or len(images) // rows
    pad = 2
    grid = make_grid(images.float().cpu(), nrow=cols, padding=pad, pad_value=0.5)[0].numpy()
    cell = 28 + pad
    fig, ax = plt.subplots(figsize=(1.2 + cols * 28 * scale / 120, 0.4 + rows * 28 * scale / 120), dpi=120)
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([pad + cell * r + 14 for r in range(rows)], labels=list(row_names))
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def save_individual(images, folder, names):
    """One PNG per image, `folder`/<name>.png; earlier samples in the folder are removed first, so a
    smaller run leaves nothing stale behind."""
    from torchvision.utils import save_image

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    for image, name in zip(images.cpu(), names):
        save_image(image, folder / f"{name}.png")


def png_bytes(image):
    """One (C, H, W) image in [0, 1] as the bytes of the PNG file save_individual writes for it."""
    from torchvision.utils import save_image

    buffer = io.BytesIO()
    save_image(image.cpu(), buffer, format="png")
    return buffer.getvalue()


def _epoch_axis(ax):
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # also a lone first epoch
    ax.set_xlabel("epoch")


def _plot_losses(ax, history):
    """A DDPM's noise-prediction MSE (log scale), or a GAN's discriminator and generator losses (the
    hinge generator loss can be negative: linear scale)."""
    epochs = [h["epoch"] for h in history]
    marker = "o" if len(history) <= 60 else None
    if history and "g_loss" in history[0]:
        ax.plot(epochs, [h["loss"] for h in history], marker=marker, color="tab:blue", label="discriminator")
        ax.plot(epochs, [h["g_loss"] for h in history], marker=marker, color="tab:orange", label="generator")
        ax.set(ylabel="GAN loss (mean over epoch)")
        ax.legend(fontsize=8)
    else:
        ax.plot(epochs, [h["loss"] for h in history], marker=marker, color="tab:blue")
        ax.set(ylabel="noise-prediction MSE (mean over epoch)", yscale="log")


def plot_training_loss(history, path, dataset_title, model="DDPM"):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    _plot_losses(ax, history)
    ax.set_title(f"{model} training loss on {dataset_title}")
    _epoch_axis(ax)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_metrics_comparison(history, evaluator, sampler, path, guidance=None, run_w=None):
    """Per evaluated epoch: class accuracy (the quick check, or FID's own draws) and FID with the
    real-vs-real floor, beside the training loss; the titles name N, the sampler and the backbone. The points
    name their w where it differs from the run's (the last epoch after the guidance fit). `guidance` (the
    checkpoint's fit, with its rows) adds the w's the fit tried at the last epoch to the accuracy panel; `run_w`:
    the run's own w (None: unguided), beside which the points drawn at another w are labelled."""
    plt = pyplot()
    fig, (ax_acc, ax_fid, ax_loss) = plt.subplots(1, 3, figsize=(15, 4), dpi=120)
    checked = [h for h in history if h.get("accuracy") is not None]
    if checked:
        ax_acc.plot([h["epoch"] for h in checked], [100 * h["accuracy"] for h in checked], marker="o",
                    color="tab:green")
        ax_acc.axhline(99, color="gray", ls=":", label="99% (the guidance fit's bar)")
        _label_guidance(ax_acc, checked, lambda h: 100 * h["accuracy"], run_w)
        if guidance and guidance.get("rows"):
            _plot_guidance_fit(ax_acc, guidance, history[-1]["epoch"])
        ax_acc.legend(fontsize=8, loc="center left")
        sizes = sorted({h["accuracy_samples"] for h in checked})
        ax_acc.set_title(f"Class accuracy, N={'/'.join(map(str, sizes))}, {sampler}", fontsize=9)
    else:
        ax_acc.text(0.5, 0.5, "class accuracy not measured\n(unconditional model or --accuracy_samples 0)",
                    ha="center", va="center", transform=ax_acc.transAxes)
    ax_acc.set_ylabel("samples recognised as the asked class (%)")
    evaluated = [h for h in history if h.get("fid") is not None]
    if evaluated and evaluator is not None:
        ax_fid.plot([h["epoch"] for h in evaluated], [h["fid"] for h in evaluated], marker="o", color="tab:red",
                    label="generated")
        ax_fid.axhline(evaluator.floor["fid"], color="gray", ls="--", label="real vs real (floor)")
        _label_guidance(ax_fid, evaluated, lambda h: h["fid"], run_w, show_value=True)
        if min([h["fid"] for h in evaluated] + [evaluator.floor["fid"]]) > 0:
            ax_fid.set_yscale("log")  # the scores fall by orders of magnitude
        ax_fid.legend(fontsize=8)
        ax_fid.set_title(f"FID, {evaluator.backbone}, N={evaluator.num_samples}, {sampler}", fontsize=9)
    else:
        ax_fid.text(0.5, 0.5, "FID not measured\n(--fid_samples, --fid_every)", ha="center", va="center",
                    transform=ax_fid.transAxes)
    ax_fid.set_ylabel("FID (lower is better)")
    _plot_losses(ax_loss, history)
    ax_loss.set_title("Training loss")
    for ax in (ax_acc, ax_fid, ax_loss):
        ax.grid(True, alpha=0.3)
        _epoch_axis(ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_guidance_fit(ax, guidance, epoch):
    """The guidance fit at `epoch`: the recorded w's accuracy as a star, and the rungs it tried listed in a box
    (they lie too close together near 99 % to label as points)."""
    chosen = [r for r in guidance["rows"] if r["guidance_scale"] == guidance["scale"]]
    if chosen:
        ax.plot([epoch], [100 * chosen[0]["accuracy"]], marker="*", markersize=13, color="tab:purple", ls="none",
                label=f"recorded w = {guidance['scale']:g} ({guidance['rule']})")
    lines = [f"w={r['guidance_scale']:g}: {r['accuracy']:.1%}" + (f" (stopped at {r['accuracy_samples']})"
                                                                  if r.get("stopped") else "")
             for r in guidance["rows"]]
    ax.text(0.98, 0.04, f"guidance fit, epoch {epoch}:\n" + "\n".join(lines), transform=ax.transAxes, ha="right",
            va="bottom", fontsize=7, color="tab:purple", bbox={"facecolor": "white", "edgecolor": "tab:purple",
                                                                "alpha": 0.9})


def _label_guidance(ax, rows, value, run_w, show_value=False):
    """Writes 'w=2' beside the points measured at another w than `run_w` (and, with `show_value`, each point's
    value)."""
    for h in rows:
        w = h.get("guidance_scale")
        text = [f"{value(h):.1f}"] if show_value else []
        if w is not None and run_w is not None and w != run_w:
            text.append(f"w={w:g}")
        if text:
            ax.annotate(", ".join(text), (h["epoch"], value(h)), textcoords="offset points", xytext=(4, 6),
                        fontsize=8)


def plot_guidance_sweep(rows, floor, description, path, chosen=None):
    """FID (with the real-vs-real floor) and class accuracy against the guidance scale w; `chosen` (a w)
    is marked on both."""
    plt = pyplot()
    scales = [r["guidance_scale"] for r in rows]
    fig, (ax_fid, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    ax_fid.plot(scales, [r["fid"] for r in rows], marker="o", color="tab:red", label="generated")
    ax_fid.axhline(floor["fid"], color="gray", ls="--", label="real vs real (floor)")
    ax_fid.set(xlabel="guidance scale w", ylabel="FID (lower is better)", title=f"FID, {description}")
    ax_acc.plot(scales, [100 * r["accuracy"] for r in rows], marker="o", color="tab:green")
    ax_acc.axhline(99, color="gray", ls=":", label="99%")
    ax_acc.set(xlabel="guidance scale w", ylabel="samples recognised as the asked class (%)",
               title="Class accuracy (data set's own classifier)")
    for ax in (ax_fid, ax_acc):
        if chosen is not None:
            ax.axvline(chosen, color="tab:blue", ls=":", label=f"chosen: best FID at >= 99%, w = {chosen:g}")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.title.set_fontsize(9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
