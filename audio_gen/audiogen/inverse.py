"""Log-mel spectrograms back to audio: the mel-to-linear step and the phase.

Five inverses share one call, (n, n_mels, frames) log-mels -> (n, clip_samples) waveforms:

- 'pghi' (the default): the linear magnitude by non-negative least squares on the mel filterbank, a
  starting phase by Phase Gradient Heap Integration, then iterative phase retrieval from that phase: relaxed
  averaged alternating reflections (RAAR, the default) or fast Griffin-Lim. Deterministic.
- 'griffinlim': the chain before it, kept for comparison: torchaudio's minimum-norm least squares with the
  negatives cut to 0, then fast Griffin-Lim from a random phase that a seed draws.
- 'vocoder': a network trained on music (vocoder.py) that corrects the NNLS magnitude and predicts phase;
  'vocoder-pghi' takes only its magnitude and finds the phase as 'pghi' does; 'vocoder-refined' then corrects
  that phase with the phase refiner trained for the vocoder (phase_refiner.py, --mode train_refiner).

PGHI at this project's low redundancy (n_fft / hop = 1024 / 313 = 3.27) is discussed in docs/audio-model.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .common import checkpoint_name
from .transform import InverseSTFT

INVERSES = ("pghi", "griffinlim", "vocoder", "vocoder-pghi", "vocoder-refined")
VOCODER_INVERSES = tuple(kind for kind in INVERSES if kind.startswith("vocoder"))  # those that read --vocoder
VOCODER_INVERSES_TEXT = ", ".join(VOCODER_INVERSES[:-1]) + " or " + VOCODER_INVERSES[-1]  # for messages
# RAAR's relaxation, chosen on the training composer's validation clips (docs/audio-results.md): 0.9-0.97 score
# alike, 0.8 and below score worse.
RAAR_BETA = 0.95
# The Hann window's equivalent Gaussian: lambda = HANN_LAMBDA * n_fft^2 samples^2 (Prusa et al. 2017, Sec. V;
# ltfat's pghi uses the same constant), where the Gaussian window is exp(-pi t^2 / lambda).
HANN_LAMBDA = 0.25645


@dataclass(frozen=True)
class InverseConfig:
    """How log-mels become audio. `kind`: one of INVERSES; `iterations`: those of the phase retrieval (after
    PGHI, or fast Griffin-Lim's from a random phase); `retrieval`: the algorithm after PGHI, one of RETRIEVALS
    ('griffinlim' always runs fast Griffin-Lim); `nnls_iterations`: FISTA steps of the mel-to-linear solve;
    `vocoder`: the vocoder
    checkpoint of the kinds 'vocoder' (its magnitude and phase), 'vocoder-pghi' (its magnitude, the phase by
    PGHI and fast Griffin-Lim) and 'vocoder-refined' (then its phase refiner, after as many iterations as the
    refiner was trained on, by its algorithm: checkpoint.load_inverse sets them)."""
    kind: str = "pghi"
    iterations: int = 64
    retrieval: str = "raar"
    nnls_iterations: int = 3
    vocoder: Path | None = None

    def __post_init__(self):
        if self.kind not in INVERSES:
            raise ValueError(f"unknown inverse {self.kind!r}: one of {', '.join(INVERSES)}")
        if self.retrieval not in RETRIEVALS:  # defined below, with the algorithms
            raise ValueError(f"unknown phase retrieval {self.retrieval!r}: one of {', '.join(RETRIEVALS)}")

    @property
    def name(self):
        """How tables and logs name it, e.g. 'NNLS + PGHI + FGLA-64'."""
        if self.kind == "griffinlim":
            return f"least squares + random-phase FGLA-{self.iterations}"
        retrieval = f"PGHI + {self.retrieval.upper()}-{self.iterations}"
        if self.kind == "pghi":
            return f"NNLS + {retrieval}"
        vocoder = f"vocoder {checkpoint_name(self.vocoder)}" if self.vocoder else "vocoder"
        if self.kind == "vocoder":
            return vocoder
        retrieved = f"{vocoder} magnitude + {retrieval}"
        return retrieved + " + phase refiner" if self.kind == "vocoder-refined" else retrieved

    @property
    def needs_vocoder(self):
        return self.kind in VOCODER_INVERSES


# --- mel -> linear magnitude ---------------------------------------------------------------------

def nnls_operators(filterbank):
    """What every NNLS solve on `filterbank` ((n_freq, n_mels), mel = fb^T S) needs, computed once: the basis
    (n_mels, n_freq), its pseudo-inverse (n_freq, n_mels) and FISTA's step, 1 / the gradient's Lipschitz
    constant (a 0-dim tensor)."""
    basis = filterbank.float().T
    return basis, torch.linalg.pinv(basis), 1.0 / torch.linalg.matrix_norm(basis, ord=2).pow(2)


def nnls_magnitude(mel, filterbank, iterations=100, operators=None):
    """Non-negative least squares min_{S >= 0} ||F^T S - M||^2, batched: the linear magnitude whose mel is
    closest to `mel`.

    mel: (..., n_mels, frames) mel magnitudes; filterbank: (n_freq, n_mels), torchaudio's `fb` (mel = fb^T S);
    `operators`: nnls_operators(filterbank) when the caller keeps them (else computed here).
    Returns (..., n_freq, frames). FISTA (Beck & Teboulle 2009, Alg. 2 with the projection onto S >= 0 as
    the proximal step) from the clipped minimum-norm solution, which is where least squares stops today.
    """
    basis, pseudo_inverse, step = operators if operators is not None else nnls_operators(filterbank)
    estimate = (pseudo_inverse @ mel).clamp(min=0)
    momentum_point, t = estimate, 1.0
    for _ in range(iterations):
        gradient = basis.T @ (basis @ momentum_point - mel)
        updated = (momentum_point - step * gradient).clamp(min=0)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        momentum_point = updated + ((t - 1) / t_next) * (updated - estimate)
        estimate, t = updated, t_next
    return estimate


# --- phase from magnitude ------------------------------------------------------------------------

def phase_gradients(log_magnitude, n_fft, hop_length, lam):
    """The phase's change per frame and per bin that a Gaussian window's STFT ties to its log-magnitude.

    log_magnitude: (n_freq, frames) float64 array. For a Gaussian window exp(-pi t^2 / lam) (t in samples),
    with phase referenced to each frame's start as torch.stft does (Prusa et al. 2017, Eq. 17-18 after the
    change of reference):
        d phi / d x     = (1 / lam) d s / d omega + 2 pi omega     (rad per sample, omega in cycles per sample)
        d phi / d omega = -lam d s / d x - pi n_fft                (the window's centre sits n_fft / 2 samples in)
    The derivatives of s are central differences, which are exact for a quadratic s: a stationary sinusoid
    (along frequency) and an impulse (along time) under a Gaussian window. Returns (per_frame, per_bin): the
    phase advance from frame m to m + 1 and from bin k to k + 1, each (n_freq, frames).
    """
    n_freq = log_magnitude.shape[0]
    d_bins = np.gradient(log_magnitude, axis=0)     # d s / d k
    d_frames = np.gradient(log_magnitude, axis=1)   # d s / d m
    omega = np.arange(n_freq)[:, None] / n_fft
    per_frame = hop_length * (n_fft / lam * d_bins + 2 * np.pi * omega)
    per_bin = -lam / (n_fft * hop_length) * d_frames - np.pi
    return per_frame, per_bin


def pghi_phase(magnitude, n_fft, hop_length, lam=None, tolerance=1e-5):
    """Phase Gradient Heap Integration (Prusa, Balazs & Sondergaard, IEEE TASLP 2017, Alg. 1): a phase for a
    (n_freq, frames) magnitude array, float64, integrated from its phase gradients along the loudest paths.

    The heap of Alg. 1 grows the integrated region from its loudest coefficient, always through the loudest
    coefficient next to it. Here that order is a maximum spanning tree of the grid (edge weight: the quieter
    end's log-magnitude, so paths stay on ridges), built by scipy in C instead of a Python heap; each
    coefficient's phase is its parent's plus the trapezoidal rule along the edge, summed down the tree by
    pointer jumping. Coefficients below `tolerance` times the maximum get phase 0, as Alg. 1 leaves them
    out (it draws them at random; 0 keeps the result deterministic); each region they cut off starts at its
    own loudest coefficient, also with phase 0.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

    n_freq, frames = magnitude.shape
    lam = HANN_LAMBDA * n_fft ** 2 if lam is None else lam
    peak = float(magnitude.max())
    if peak <= 0:
        return np.zeros_like(magnitude)
    # Floored at the tolerance: NNLS leaves exact zeros, whose logarithm would give their loud neighbours
    # false gradients of tens of nepers per bin (measured: +0.05 PESQ from this floor alone).
    log_magnitude = np.log(np.maximum(magnitude, peak * tolerance))
    per_frame, per_bin = phase_gradients(log_magnitude, n_fft, hop_length, lam)
    loud = magnitude > tolerance * peak
    top = log_magnitude.max()
    index = np.arange(n_freq * frames).reshape(n_freq, frames)
    rows, cols, costs = [], [], []
    for first, second in ((np.s_[:, :-1], np.s_[:, 1:]), (np.s_[:-1], np.s_[1:])):  # along time, along frequency
        joined = loud[first] & loud[second]
        s_first, s_second = log_magnitude[first][joined], log_magnitude[second][joined]
        # Costs that fall as the quieter end gets louder (every cost > 0: scipy drops 0s); among equally quiet
        # ends, the louder other end wins, so a coefficient hangs from its loudest neighbour.
        costs.append(1.0 + (top - np.minimum(s_first, s_second)) + 1e-3 * (top - np.maximum(s_first, s_second)))
        rows.append(index[first][joined])
        cols.append(index[second][joined])
    # A root joined to every loud local maximum by edges dearer than any in the grid: each connected region joins
    # it once, through its loudest coefficient, which is one of them.
    dearest_grid_edge = max(c.max(initial=1.0) for c in costs)
    padded = np.pad(log_magnitude, 1, constant_values=-np.inf)
    peaks = loud & (log_magnitude >= np.maximum.reduce([padded[:-2, 1:-1], padded[2:, 1:-1],
                                                         padded[1:-1, :-2], padded[1:-1, 2:]]))
    root = n_freq * frames
    starts = index[peaks]
    costs.append(dearest_grid_edge + 1.0 + (top - log_magnitude[peaks]))
    rows.append(np.full(len(starts), root))
    cols.append(starts)
    graph = coo_matrix((np.concatenate(costs), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(root + 1, root + 1)).tocsr()
    tree = minimum_spanning_tree(graph)
    _, parent = breadth_first_order(tree, root, directed=False, return_predecessors=True)
    child = np.flatnonzero(parent >= 0)
    parent_of = parent[child]
    step = np.zeros(root + 1)
    inner = parent_of != root
    c, p = child[inner], parent_of[inner]
    along_time = c // frames == p // frames  # else along frequency
    rate = np.where(along_time, per_frame.ravel()[c] + per_frame.ravel()[p], per_bin.ravel()[c] + per_bin.ravel()[p]) / 2
    step[c] = np.sign(c - p) * rate
    # Pointer jumping: after j rounds every node holds the sum of the steps on its 2^j nearest ancestors' edges.
    up = np.arange(root + 1)
    up[child] = parent_of
    while np.any(up[up] != up):
        step, up = step + step[up], up[up]
    return np.where(loud, step[:root].reshape(n_freq, frames), 0.0)


def consistent(spectrum, inverse):
    """The projection onto consistent spectrograms, the STFT of the inverse STFT (centred, reflect-padded as the
    transform analyses): (n, n_freq, frames) complex -> the same shape. `inverse`: the InverseSTFT."""
    return torch.stft(inverse(spectrum), inverse.n_fft, inverse.hop_length, window=inverse.window, center=True,
                      pad_mode="reflect", return_complex=True)


def hann_inverse_stft(magnitude, n_fft, hop_length, length):
    """The InverseSTFT (Hann window) that a retrieval from `magnitude` (n, n_freq, frames) runs every iteration."""
    window = torch.hann_window(n_fft, dtype=magnitude.dtype, device=magnitude.device)
    return InverseSTFT(n_fft, hop_length, window, magnitude.shape[-1], length)


def fast_griffin_lim(magnitude, phase, n_fft, hop_length, iterations, length, momentum=0.99):
    """Fast Griffin-Lim (Perraudin, Balazs & Sondergaard 2013) from a given starting phase.

    magnitude, phase: (n, n_freq, frames); returns (n, length) waveforms. The update is torchaudio's
    (`griffinlim`), which starts only from a random or a zero phase.
    """
    inverse = hann_inverse_stft(magnitude, n_fft, hop_length, length)
    angles = torch.polar(torch.ones_like(magnitude), phase)
    previous = torch.zeros((), dtype=angles.dtype, device=magnitude.device)
    weight = momentum / (1 + momentum)
    for _ in range(iterations):
        rebuilt = consistent(magnitude * angles, inverse)
        angles = rebuilt - weight * previous
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    return inverse(magnitude * angles)


def raar(magnitude, phase, n_fft, hop_length, iterations, length, beta=RAAR_BETA):
    """Relaxed averaged alternating reflections (RAAR; Luke, Inverse Problems 21, 2005) from a given phase.

    magnitude, phase: (n, n_freq, frames); returns (n, length) waveforms. With P_A the projection onto the
    spectrograms of magnitude `magnitude` (keep each coefficient's angle), P_C the one onto consistent
    spectrograms (the STFT of the inverse STFT) and R = 2P - I their reflections, every iteration is
        X <- beta / 2 (R_C R_A + I) X + (1 - beta) P_A X  =  beta (X + P_C(2 P_A X - X)) + (1 - 2 beta) P_A X,
    at the cost of one STFT pair, as a fast Griffin-Lim iteration. Griffin-Lim (X <- P_C P_A X) settles in the
    nearest local optimum; the reflections keep RAAR moving out of poor ones (beta = 1 is plain averaged
    alternating reflections, Douglas-Rachford), which Peer, Welker & Gerkmann (IWAENC 2022) found to pay on
    speech and docs/audio-results.md measures on music at this low redundancy. The audio is the inverse STFT of
    P_A X: the magnitude as given, the phase retrieved.
    """
    inverse = hann_inverse_stft(magnitude, n_fft, hop_length, length)

    def magnitude_scale(spectrum):  # P_A X = magnitude_scale(X) X, a real scale
        return magnitude / (spectrum.abs() + 1e-16)

    spectrum = torch.polar(magnitude, phase)
    for _ in range(iterations):
        # With a real scale, 2 P_A X - X and the update are X times real factors: half the complex arithmetic of
        # the formula as written, which on the CPU costs as much as the STFT pair.
        scale = magnitude_scale(spectrum)
        reflected = consistent(spectrum * (2 * scale - 1), inverse)
        spectrum = torch.add(spectrum * (beta + (1 - 2 * beta) * scale), reflected, alpha=beta)
    return inverse(spectrum * magnitude_scale(spectrum))


RETRIEVALS = {"raar": raar, "fgla": fast_griffin_lim}  # the iterations after PGHI, by InverseConfig.retrieval


# --- the inverses ---------------------------------------------------------------------------------

class MelInverse:
    """Log-mels -> audio as an InverseConfig says, for one LogMelTransform's features.

    Call it on (n, n_mels, frames) log-mels for (n, clip_samples) waveforms on the CPU. `seed` draws the
    starting phase of 'griffinlim' and is ignored by the others. 'pghi' works one clip at a time, so that a
    clip's audio never depends on the batch it came in.
    """

    def __init__(self, config, transform, vocoder=None, refiner=None):
        import torchaudio.transforms as T

        if config.needs_vocoder and vocoder is None:
            raise ValueError(f"the '{config.kind}' inverse needs a trained vocoder")
        if config.kind == "vocoder-refined" and refiner is None:
            raise ValueError("the 'vocoder-refined' inverse needs the vocoder's phase refiner")
        self.config, self.transform, self.vocoder, self.refiner = config, transform, vocoder, refiner
        self.filterbank = transform.mel.mel_scale.fb.detach()  # (n_freq, n_mels), on the transform's device
        self.operators = nnls_operators(self.filterbank)
        if config.kind == "griffinlim":
            device = transform.device
            self.least_squares = T.InverseMelScale(n_stft=transform.n_fft // 2 + 1, n_mels=transform.n_mels,
                                                   sample_rate=transform.sample_rate).to(device)
            self.griffin_lim = T.GriffinLim(n_fft=transform.n_fft, hop_length=transform.hop_length, power=1.0,
                                            n_iter=config.iterations, momentum=0.99,
                                            length=transform.clip_samples).to(device)

    @property
    def name(self):
        return self.config.name

    def magnitude(self, log_mels):
        """(n, n_mels, frames) log-mels -> (n, n_freq, frames) linear magnitudes, on the transform's device: by
        NNLS, or the vocoder's ('vocoder-pghi', 'vocoder-refined')."""
        if self.config.kind in ("vocoder-pghi", "vocoder-refined"):
            return self.vocoder.spectrum(log_mels.to(self.transform.device))[0].exp()
        mel = log_mels.to(self.transform.device).float().exp()
        return nnls_magnitude(mel, self.filterbank, self.config.nnls_iterations, self.operators)

    @torch.no_grad()
    def __call__(self, log_mels, seed=0):
        if self.config.kind == "griffinlim":
            return self.random_phase_griffin_lim(log_mels, seed)
        if not len(log_mels):
            return torch.zeros(0, self.transform.clip_samples)
        one_clip = {"vocoder": self.voice, "vocoder-refined": self.refine}.get(self.config.kind, self.pghi)
        return torch.cat([one_clip(log_mels[i:i + 1]) for i in range(len(log_mels))])

    def voice(self, log_mels):
        """The vocoder's waveforms, (n, clip_samples) on the CPU."""
        return self.vocoder(log_mels.to(self.transform.device), self.transform.clip_samples).cpu()

    def pghi(self, log_mels):
        """The magnitude (NNLS or the vocoder's), PGHI's starting phase, the phase retrieval: (n, clip_samples) on the CPU."""
        return self.retrieve_phase(self.magnitude(log_mels))

    def retrieve_phase(self, magnitude, length=None):
        """(n, n_freq, frames) linear magnitudes -> (n, length or clip_samples) waveforms on the CPU: PGHI's
        phase, then the config's iterative retrieval (RAAR or fast Griffin-Lim)."""
        t = self.transform
        phase = torch.stack([torch.from_numpy(pghi_phase(m.double().cpu().numpy(), t.n_fft, t.hop_length))
                             for m in magnitude]).to(magnitude)
        retrieve = RETRIEVALS[self.config.retrieval]
        return retrieve(magnitude, phase, t.n_fft, t.hop_length, self.config.iterations,
                        length or t.clip_samples).cpu()

    def retrieved_phase(self, magnitude, length=None):
        """(n, n_freq, frames) magnitudes -> (n, n_freq, frames) phases on their device: the phase of the STFT of
        retrieve_phase's waveforms (n, length or clip_samples), what the phase refiner corrects."""
        t = self.transform
        waves = self.retrieve_phase(magnitude, length).to(magnitude.device)
        window = torch.hann_window(t.n_fft, device=magnitude.device)
        return torch.stft(waves, t.n_fft, t.hop_length, window=window, return_complex=True).angle()

    def refine(self, log_mels):
        """The vocoder's magnitude, the retrieved phase corrected by the refiner: (n, clip_samples) on the CPU."""
        magnitude = self.magnitude(log_mels)
        phase = self.retrieved_phase(magnitude)
        return self.refiner.synthesize(magnitude, phase, self.transform.clip_samples).cpu()

    def random_phase_griffin_lim(self, log_mels, seed):
        """The chain before PGHI: least squares, negatives cut, fast Griffin-Lim from the phase `seed` draws.
        Forking the RNG leaves the global one untouched, so a resumed training run matches an uninterrupted one."""
        device = self.transform.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            linear = self.least_squares(log_mels.to(device).float().exp()).clamp(min=0)
            return self.griffin_lim(linear).cpu()
