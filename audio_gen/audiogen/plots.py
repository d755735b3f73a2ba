"""Figures a run writes: training curves against training time, and log-mel spectrograms side by side."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from .common import pyplot


def plot_training_curves(history, path, valid_name):
    """Loss, log-mel MSE against the time-average baseline, similarity scores and PESQ/STOI (with the
    oracle: the true mel through the same inverse), for training clips and unseen clips, against minutes of training."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=110)
    minutes = np.cumsum([h["train_seconds"] for h in history]) / 60

    def line(ax, split, key, label, **kw):
        points = [(m, h[split][key]) for m, h in zip(minutes, history)
                  if h.get(split, {}).get(key) is not None]
        if points:
            dots = {"marker": "o", "markersize": 3} if len(points) <= 60 else {}  # dots would hide long curves
            ax.plot(*zip(*points), label=label, **{**dots, **kw})

    seen, unseen = "training clips", f"unseen ({valid_name})"
    ax = axes[0, 0]
    line(ax, "train", "loss_during_epoch", "loss during epoch (MSE + L1, random crops)", color="black")
    line(ax, "valid", "loss", f"{unseen} loss", color="tab:red")
    ax.set(title="Loss", yscale="log")
    ax = axes[0, 1]
    for split, style, name in (("train", "-", seen), ("valid", "--", unseen)):
        line(ax, split, "mse", f"{name} MSE", linestyle=style, color="tab:blue")
        line(ax, split, "time_average_mse", f"{name} time-average baseline", linestyle=style, color="grey")
    ax.set(title="Log-mel MSE (normalised units)", yscale="log")
    ax = axes[1, 0]
    for split, style, name in (("train", "-", seen), ("valid", "--", unseen)):
        line(ax, split, "cosine", f"{name} cosine", linestyle=style, color="tab:green")
        line(ax, split, "mel_sc_score", f"{name} 1 - mel spectral convergence", linestyle=style, color="tab:purple")
    ax.set(title="Similarity (higher is better)", ylim=(0, 1.02))
    ax = axes[1, 1]
    for split, style, name in (("audio_train", "-", seen), ("audio_valid", "--", unseen)):
        line(ax, split, "pesq", f"PESQ {name}", linestyle=style, color="tab:red")
        line(ax, split, "oracle_pesq", f"PESQ oracle, {name}", linestyle=style, color="tab:red", alpha=0.4)
    ax2 = ax.twinx()
    for split, style, name in (("audio_train", "-", seen), ("audio_valid", "--", unseen)):
        line(ax2, split, "stoi", f"STOI {name}", linestyle=style, color="tab:blue")
        line(ax2, split, "oracle_stoi", f"STOI oracle, {name}", linestyle=style, color="tab:blue", alpha=0.4)
    ax.set(title="Audio (faint: the oracle, the true mel through the same inverse)", ylabel="PESQ (wide-band, 1-4.6)")
    ax2.set_ylabel("STOI (0-1)")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    if handles:
        ax.legend(handles, [h.get_label() for h in handles], fontsize=6, loc="lower right")
    for ax in axes.flat:
        ax.set_xlabel("training time (min)")
        ax.grid(True, alpha=0.3)
        if ax is not axes[1, 1] and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("Audio autoencoder training")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_spectrograms(originals, reconstructions, titles, path, suptitle, oracles=None,
                      names=("original", "reconstruction")):
    """One row per clip: original, reconstruction and their difference, as log-mel images on shared
    scales; with `oracles` (log-mels of the oracle) the third column is the oracle instead.
    originals, reconstructions, oracles: (clips, n_mels, frames); `names` label the first two columns;
    `path` is a file name or a binary file object."""
    plt = pyplot()
    rows = len(originals)
    fig, axes = plt.subplots(rows, 3, figsize=(14, 3.2 * rows), dpi=100, squeeze=False)
    for r, (a, b, title) in enumerate(zip(originals, reconstructions, titles)):
        a, b = a.cpu().numpy(), b.cpu().numpy()
        low, high = float(a.min()), float(a.max())
        shared = {"vmin": low, "vmax": high, "cmap": "magma"}
        third = ((b - a, f"{names[1]} - {names[0]}", {"vmin": -3, "vmax": 3, "cmap": "coolwarm"}) if oracles is None
                 else (oracles[r].cpu().numpy(), "oracle (the true mel, same inverse)", shared))
        for c, (image, name, kwargs) in enumerate(((a, names[0], shared), (b, names[1], shared), third)):
            ax = axes[r, c]
            shown = ax.imshow(image, origin="lower", aspect="auto", extent=(0, 5, 0, image.shape[0]), **kwargs)
            ax.set(title=f"{title}\n{name}" if c == 0 else name, xlabel="time (s)", ylabel="mel bin")
            fig.colorbar(shown, ax=ax, label="difference" if c == 2 and oracles is None else "log magnitude")
    fig.suptitle(suptitle)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_spectrogram_grid(log_mels, titles, path, suptitle, columns=4):
    """(clips, n_mels, frames) log-mels as a grid of spectrograms on one shared colour scale, `columns` wide;
    axis labels on the outer panels only."""
    plt = pyplot()
    rows = -(-len(log_mels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns + 1.2, 2.4 * rows + 0.8), dpi=100,
                             squeeze=False, sharex=True, sharey=True, constrained_layout=True)
    low, high = float(log_mels.min()), float(log_mels.max())
    for ax in axes.flat[len(log_mels):]:
        ax.axis("off")
    for i, (ax, image, title) in enumerate(zip(axes.flat, log_mels.cpu().numpy(), titles)):
        shown = ax.imshow(image, origin="lower", aspect="auto", extent=(0, 5, 0, image.shape[0]), cmap="magma",
                          vmin=low, vmax=high)
        ax.set_title(textwrap.fill(title, 34), fontsize=9)  # long inverse names would run into the next panel
        if i % columns == 0:
            ax.set_ylabel("mel bin")
        if i + columns >= len(log_mels):
            ax.set_xlabel("time (s)")
    fig.colorbar(shown, ax=axes, label="log magnitude", shrink=0.8)
    fig.suptitle(suptitle)
    fig.savefig(path)
    plt.close(fig)


def plot_prior_curves(history, path, origin):
    """The learned prior's diffusion loss (v-prediction MSE, averaged over t) during each epoch and on unseen clips
    with the EMA weights, against minutes of training."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    minutes = np.cumsum([h["train_seconds"] for h in history]) / 60
    dots = {"marker": "o", "markersize": 3} if len(history) <= 60 else {}
    ax.plot(minutes, [h["train_loss"] for h in history], color="black", label="training crops, during epoch", **dots)
    ax.plot(minutes, [h["valid_loss_ema"] for h in history], color="tab:red", label="unseen clips, EMA weights", **dots)
    ax.set(title=f"Learned prior: diffusion loss over the VAE's latents\n({origin})", xlabel="training time (min)",
           ylabel="v-prediction MSE (1 = predicting 0)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_vocoder_curves(history, path, origin):
    """The vocoder's losses on unseen crops and PESQ/STOI of unseen 5-s clips beside the deterministic inverse,
    against minutes of training."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), dpi=110)
    minutes = np.cumsum([h["train_seconds"] for h in history]) / 60
    dots = {"marker": "o", "markersize": 3} if len(history) <= 60 else {}
    left.plot(minutes, [h["train_loss"] for h in history], color="black", label="training crops: total", **dots)
    for key, color in (("magnitude", "tab:purple"), ("convergence", "tab:pink"), ("phase", "tab:red"),
                       ("mel", "tab:blue"), ("stft", "tab:green")):
        left.plot(minutes, [h["valid"].get(key, np.nan) for h in history], color=color, label=f"unseen crops: {key}",
                  **dots)
    left.set(title=f"Vocoder losses\n({origin})", xlabel="training time (min)", yscale="log")
    plot_clip_scores(right, minutes, history, (("", "o-", "s-", "vocoder"),
                                               ("magnitude_pghi_", "^:", "v:", "its magnitude + PGHI"),
                                               ("reference_", "--", "--", "NNLS + PGHI + RAAR")))
    right.set_title("Unseen 5-s clips, through their true mel")
    save_curves(plt, fig, left, path)


def plot_refiner_curves(history, path, origin):
    """The phase refiner's losses on unseen segments against the unrefined phase's, and PESQ/STOI of unseen 5-s
    clips with and without it, against minutes of training."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), dpi=110)
    minutes = np.cumsum([h["train_seconds"] for h in history]) / 60
    dots = {"marker": "o", "markersize": 3} if len(history) <= 60 else {}
    # Relative to a reference, since the refiner moves its losses by a few per cent.
    first = history[0]["train_loss"]
    left.plot(minutes, [h["train_loss"] / first for h in history], color="black",
              label="training pool: total / its first epoch", **dots)
    for key, name, color in (("stft", "multi-resolution STFT", "tab:green"), ("mel", "log-mel L1", "tab:blue")):
        left.plot(minutes, [h["valid"][key] / h["valid_unrefined"][key] for h in history], color=color,
                  label=f"unseen: {name} / unrefined phase's", **dots)
    left.axhline(1, color="gray", linestyle="--", label="unrefined phase")
    left.set(title=f"Phase refiner losses, relative\n({origin})", xlabel="training time (min)", ylabel="ratio")
    plot_clip_scores(right, minutes, history, (("", "o-", "s-", "refined phase"),
                                               ("reference_", "--", "--", "unrefined phase")))
    right.set_title("Unseen 5-s clips, the vocoder's magnitude of their true mel")
    save_curves(plt, fig, left, path)


def plot_clip_scores(axis, minutes, history, curves):
    """PESQ on `axis` and STOI on its twin, at the epochs of `history` that scored clips ("audio"); `curves`:
    (key prefix, PESQ line style, STOI line style, label) for each pair of keys f"{prefix}pesq", f"{prefix}stoi"."""
    axis.set(xlabel="training time (min)", ylabel="PESQ (wide-band)")
    scored = [(m, h["audio"]) for m, h in zip(minutes, history) if h.get("audio")]
    if not scored:
        return
    m, audio = zip(*scored)
    values = lambda key: [np.nan if a.get(key) is None else a[key] for a in audio]  # noqa: E731  (undefined PESQ)
    twin = axis.twinx()
    for prefix, pesq_style, stoi_style, label in curves:
        axis.plot(m, values(f"{prefix}pesq"), pesq_style, color="tab:blue", label=f"PESQ, {label}")
        twin.plot(m, values(f"{prefix}stoi"), stoi_style, color="tab:orange", label=f"STOI, {label}")
    twin.set_ylabel("STOI")
    axis.legend(loc="lower left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)


def save_curves(plt, fig, losses, path):
    """Grid and legend on the `losses` axis, then `fig` written to `path` and closed."""
    losses.grid(True, alpha=0.3)
    losses.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
