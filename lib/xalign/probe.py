"""Latent-variable intrinsic probe (Stańczak et al. 2023, AAAI; Poisson sampling).

The probe of Wang, Minervini & Ponti (2024, arXiv 2406.13229, Sec. 2.1, Eq. 1-4) asks
which *subset* of the d dimensions of a word vector ``h`` encodes a morphosyntactic
attribute ``π`` (UPOS, Number, Gender, ...). The subset is a latent binary mask ``m``:

    p(π | h) = Σ_m p(π | h ⊙ m) p(m),     p(π | h ⊙ m) = softmax((h ⊙ m) W + b)

with a uniform prior over subsets. The sum over 2^d subsets is bounded by an ELBO with
a mean-field Bernoulli ("Poisson sampling") variational family
``q(m) = Π_d Bernoulli(σ(φ_d))``:

    ELBO = E_q[log p(π | h ⊙ m)] + H(q) + const,

(the KL to the uniform prior is ``-H(q) + d log 2``). :func:`train_probe` maximises it
with Adam (Kingma & Ba 2015) on minibatches:

* ``W, b``: Monte-Carlo gradient of ``E_q[log p(π | h ⊙ m)]`` with ``mc_samples`` (S,
  default 4; the reference code's default is 5) masks ``m_s ~ q`` per step. One mask per
  sample is shared by all examples of the minibatch (the subset is one latent variable of
  the dataset, see "Entropy weight"; the reference code draws one per example, which has
  the same expectation), so a step costs one matrix product ``X @ [m_1 ⊙ W | ... | m_S ⊙ W]``.
* ``φ``: score-function (REINFORCE) estimator ``(f(m_s) - b_s) ∇_φ log q(m_s)`` with a
  *leave-one-out* baseline ``b_s = mean_{s' ≠ s} f(m_{s'})`` over the S samples (unbiased,
  Kool et al. 2019); with ``mc_samples == 1`` the baseline is an exponential moving
  average (decay 0.9) of past ``f``. ``H(q)`` is differentiated analytically.
* Masked inputs are **not** rescaled, in training or in evaluation (no ``1/σ(φ)``
  dropout scaling): ``h ⊙ m`` is exactly the vector with the dropped dimensions set to
  zero, as in the reference code (``input * mask`` in ``MaskableNeuralProbeModel``,
  copenlu/multilingual-typology-probing), and the same input that :mod:`xalign.selection`
  feeds the probe when it zeroes the unselected dimensions. Consequence: the probe is
  fitted to inputs with about ``Σ_d σ(φ_d)`` dimensions on, so "all d dimensions on" is
  off its training distribution and over-confident; report the all-d MI of
  :func:`train_l2_probe` (via :func:`xalign.selection.retrained_mi`) instead.

Entropy weight (``ProbeConfig.entropy_scale``):

* ``"per_example"`` (default): the ELBO of the whole training set,
  ``Σ_n E_q[log p(π_n | h_n ⊙ m)] + H(q)``, divided by N, i.e. mean log-likelihood
  ``+ H(q) / N``. This is the bound when the subset is *one* latent variable shared by
  the dataset, which is what intrinsic probing asks for ("the" dimensions that encode
  the attribute). **Full batch only** (see "Minibatches").
* ``"reference"``: the weighting of the reference implementation, mean log-likelihood
  ``+ H(q)`` per minibatch (``PoissonTrainer.train_loss``, copenlu
  multilingual-typology-probing). That is the bound for an independent subset per example; with d in the
  hundreds ``H(q)`` (up to ``d ln 2`` nats) dwarfs the per-example log-likelihood
  (at most ``ln C`` nats) and drives every marginal ``σ(φ_d)`` towards 0.5, so q says
  little about where the attribute lives. The BLOOM params use it, as the paper did.

Where φ settles: ``∂/∂φ_d`` of ``E_q[f] + λ H(q)`` is ``σ'(φ_d) (Δ_d - λ φ_d)``, with
``Δ_d`` the gain in mean training log-likelihood (nats/example) of keeping dimension d on.
So ``φ_d → Δ_d / λ``: ``Δ_d`` with ``"reference"`` (λ = 1; marginals near 0.5),
``N Δ_d`` with ``"per_example"`` (λ = 1/N). With N in the thousands the latter saturates
every dimension with ``Δ_d`` above ~1e-3 nats, including dimensions whose only gain is the
point-estimated W fitting noise; the probe is then trained with most of them always on,
and greedy selection on it varies with the seed. Full-batch Adam (one step per epoch)
stops on the held-out criterion long before it gets there.

Minibatches (``batch_size``, default ``None`` = full batch; the reference code uses
minibatches of 256): the training split is shuffled once with the seed and cut into
``ceil(N / batch_size)`` near-equal contiguous batches whose order is reshuffled every
epoch. A step's gradient is an unbiased estimate of the full-batch one (a batch's mean
log-likelihood, the same ``λ``), so minibatches optimise the same objective, but take
``ceil(N / batch_size)`` steps per epoch: with ``"per_example"`` they reach the saturated
optimum above. Measured (benchmarks/bench_entropy_minibatch.py, 4 seeds, k = 10; planted
d = 256/512 and tiny-lab vectors, raw and standardised): per-example weighting with
minibatches of 256 gave seed agreement 0.13-0.52 with up to 40% of marginals above 0.9,
against 0.32-0.75 and none for the reference weighting with the same minibatches, and full
batch run for as many steps saturated as much. :func:`train_probe` therefore rejects
``"per_example"`` with minibatches (``batch_size`` < training examples), and
``params.ProbeParams`` rejects it with any ``batch_size`` but null. On large N minibatches
reach a better held-out log-likelihood in far fewer passes than full-batch Adam
(benchmarks/bench_probe_selection.py, N = 18,000, d = 1024, measured with per-example
weighting and minibatches of 1024 before they were rejected: held-out log-likelihood -0.26
after 117 epochs vs -0.45 after the 300-epoch cap).

Early stopping: a seeded held-out part of the training data (``held_out_fraction``) is
scored after every epoch by the Monte-Carlo estimate of ``E_q[log p(π | h ⊙ m)]`` with
:data:`EVAL_MC_SAMPLES` fixed masks (common random numbers drawn once from the seed, so
the criterion is a deterministic function of the parameters); training stops after
``patience`` epochs without improvement. ``restore="best"`` (default) returns the best
epoch's ``W``, ``b`` **and** ``φ``; ``restore="last"`` the last epoch's, ``patience``
epochs past the best, as the reference trainer (it saves the best model but goes on with
the last: ``model = torch.load(...)`` rebinds a local, and q is not saved at all).
With the same seed on CPU, training is bitwise reproducible.

Cost: about ``4 N d S C`` flops per epoch (two matrix products) plus a held-out pass;
gradients are written out by hand (no autograd), and every batch is kept as one
contiguous transposed (d, n_b) block, built once, so both products run at full BLAS speed
and no step copies data. Small probes are dominated by per-op overhead: on a busy machine
``torch.set_num_threads(1)`` is often several times faster than the default thread count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

#: Number of fixed masks used to score the held-out split for early stopping.
EVAL_MC_SAMPLES = 8
#: Decay of the moving-average baseline used when ``mc_samples == 1``.
_EMA_DECAY = 0.9
_ENTROPY_SCALES = ("per_example", "reference")
_RESTORES = ("best", "last")


def standardize(X_train: Tensor, *X_other: Tensor, eps: float = 1e-6) -> tuple[Tensor, ...]:
    """Z-score every dimension with the training split's mean and standard deviation.

    LLM residual streams carry a few "massive" dimensions (|h| up to ~1e4 in Gemma-3-270m's
    middle layers, ~1e2 in the tiny lab) that dominate an unscaled linear probe: its
    probabilities under the random masks of training and the k-of-d masks of selection are
    then badly calibrated (negative held-out MI on test). Standardising with *train*
    statistics only is a per-dimension affine map, so it changes neither which information
    a dimension carries nor the split discipline. (Our addition; the probe of Stańczak et al.
    2023 is applied to raw vectors. Switch: ``params.probe.standardize``.)

    Args:
        X_train: (N, d) float tensor whose statistics are used.
        *X_other: further (M_i, d) tensors (dev, test) transformed with the same statistics.
        eps: floor of the standard deviation (constant dimensions map to 0).

    Returns:
        ``(X_train_z, *X_other_z)``, same shapes.

    Raises:
        ValueError: a tensor whose second dimension differs from ``X_train``'s.
    """
    d = X_train.shape[1]
    for X in X_other:
        if X.ndim != 2 or X.shape[1] != d:
            raise ValueError(f"standardize: expected (M, {d}) tensors, got {tuple(X.shape)}")
    mean = X_train.mean(0)
    std = X_train.std(0, unbiased=False).clamp_min(eps)
    return tuple((X - mean) / std for X in (X_train, *X_other))


@dataclass(frozen=True)
class ProbeConfig:
    """Training hyper-parameters of :func:`train_probe` (mirrors ``params.ProbeParams``).

    Attributes:
        lr: Adam learning rate.
        weight_decay: L2 penalty (Adam ``weight_decay``) on ``W`` only, not on ``b``/``φ``.
        max_epochs: upper bound on passes over the training split.
        patience: epochs without a better held-out log-likelihood before stopping.
        batch_size: largest minibatch; the training split is cut into ``ceil(N / batch_size)``
            near-equal batches; ``None`` (default) = full batch (one Adam step per epoch).
            Minibatches (``batch_size`` < N) need ``entropy_scale="reference"``:
            :func:`train_probe` rejects them with ``"per_example"`` (see the module doc).
        mc_samples: S, masks sampled from q per step (>= 2 enables the leave-one-out baseline).
        entropy_scale: ``"per_example"`` (``H(q)/N``) or ``"reference"`` (``H(q)``); see module doc.
        held_out_fraction: fraction of the training data held out for early stopping.
        seed: seeds the held-out split, the masks and the evaluation masks.
        restore: which parameters :func:`train_probe` returns: ``"best"`` (default) those of
            the epoch with the best held-out log-likelihood; ``"last"`` those of the last epoch
            trained (the stopping epoch, ``best + patience`` after early stopping, else
            ``max_epochs - 1``), as the reference trainer, which saves its best model but
            keeps training's last one (copenlu/multilingual-typology-probing,
            ``FlexibleNeuralProbeTrainer``: ``model = torch.load(...)`` rebinds a local).

    Raises:
        ValueError: one line naming the field, for out-of-range values.
    """

    lr: float = 1e-2
    weight_decay: float = 0.0
    max_epochs: int = 300
    patience: int = 20
    batch_size: int | None = None
    mc_samples: int = 4
    entropy_scale: Literal["per_example", "reference"] = "per_example"
    held_out_fraction: float = 0.1
    seed: int = 0
    restore: Literal["best", "last"] = "best"

    def __post_init__(self) -> None:
        checks = [
            ("lr", self.lr > 0, "must be > 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("max_epochs", self.max_epochs >= 1, "must be >= 1"),
            ("patience", self.patience >= 1, "must be >= 1"),
            ("batch_size", self.batch_size is None or self.batch_size >= 1, "must be None or >= 1"),
            ("mc_samples", self.mc_samples >= 1, "must be >= 1"),
            ("entropy_scale", self.entropy_scale in _ENTROPY_SCALES, f"must be one of {_ENTROPY_SCALES}"),
            ("held_out_fraction", 0 < self.held_out_fraction < 1, "must be in (0, 1)"),
            ("restore", self.restore in _RESTORES, f"must be one of {_RESTORES}"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"ProbeConfig.{name}={getattr(self, name)!r} {what}")


@dataclass
class LatentProbe:
    """A trained probe: CPU float32 tensors.

    Attributes:
        W: (d, C) weights of the linear softmax classifier.
        b: (C,) bias.
        phi: (d,) logits of ``q(m_d = 1)``; ``+inf`` for a plain linear probe
            (:func:`train_linear_probe`, every dimension always on).
        label_prior: (C,) add-one smoothed label frequencies of the training labels.
        history: one dict per epoch: ``epoch`` (0-based, = index), ``train_elbo``,
            ``train_loglik`` (nats/example, MC), ``entropy`` (H(q), nats),
            ``held_out_loglik`` (nats/example, the early-stopping criterion),
            ``mean_marginal`` (mean of σ(φ)).
        best_epoch: index into ``history`` of the returned parameters: the best held-out
            epoch with ``config.restore="best"``, the last epoch with ``"last"``.
        config: the :class:`ProbeConfig` used (``None`` if built by hand).
    """

    W: Tensor
    b: Tensor
    phi: Tensor
    label_prior: Tensor
    history: list[dict]
    best_epoch: int
    config: ProbeConfig | None = None

    @property
    def n_dims(self) -> int:
        """d, the input dimensionality."""
        return int(self.W.shape[0])

    @property
    def n_classes(self) -> int:
        """C, the number of attribute values."""
        return int(self.W.shape[1])

    @property
    def marginals(self) -> Tensor:
        """(d,) ``q(m_d = 1) = σ(φ_d)``."""
        return torch.sigmoid(self.phi)

    def log_probs(self, X: Tensor, mask: Tensor | None = None) -> Tensor:
        """Log-probabilities ``log p(π | x ⊙ mask)`` (nats).

        Args:
            X: (N, d) float word vectors.
            mask: ``None`` (all d dims), a (d,) or (N, d) bool/0-1 tensor; dims with mask 0
                are set to zero (not rescaled).

        Returns:
            (N, C) float32 log-probabilities.

        Raises:
            ValueError: one line, if the shapes do not match the probe.
        """
        X = _check_X(X, "LatentProbe.log_probs: X", d=self.n_dims)
        if mask is not None:
            if mask.shape not in ((self.n_dims,), tuple(X.shape)):
                raise ValueError(f"LatentProbe.log_probs: mask has shape {tuple(mask.shape)}, "
                                 f"expected ({self.n_dims},) or {tuple(X.shape)}")
            X = X * mask.to(X.dtype)
        return torch.log_softmax(X @ self.W + self.b, dim=-1)


# ---------------------------------------------------------------------------------------
# validation helpers


def _check_X(X: Tensor, what: str, d: int | None = None) -> Tensor:
    if not isinstance(X, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(X).__name__}")
    if X.ndim != 2:
        raise ValueError(f"{what} must be 2-D (N, d), got shape {tuple(X.shape)}")
    if not X.dtype.is_floating_point:
        raise ValueError(f"{what} must be a float tensor, got {X.dtype}")
    if d is not None and X.shape[1] != d:
        raise ValueError(f"{what} has {X.shape[1]} dims, the probe has {d}")
    X = X.detach().to(device="cpu", dtype=torch.float32)
    # fast path: the sum is finite if every entry is (the full check only runs otherwise,
    # e.g. on a float32 overflow of the sum)
    if not math.isfinite(float(X.sum())) and not bool(torch.isfinite(X).all()):
        bad = int((~torch.isfinite(X)).any(dim=1).sum())
        raise ValueError(f"{what} contains NaN or inf (in {bad} of {X.shape[0]} rows)")
    return X


def _check_y(y: Tensor, what: str, n: int, n_classes: int) -> Tensor:
    if not isinstance(y, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(y).__name__}")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{what} must have shape ({n},) to match X, got {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{what} must be an integer tensor, got {y.dtype}")
    y = y.detach().to(device="cpu", dtype=torch.int64)
    if n and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"{what} has labels in [{int(y.min())}, {int(y.max())}], "
                         f"expected [0, {n_classes})")
    return y


def label_prior(y: Tensor, n_classes: int) -> Tensor:
    """(C,) add-one smoothed label frequencies ``(count_c + 1) / (N + C)`` of int64 labels ``y``."""
    counts = torch.bincount(y, minlength=n_classes).to(torch.float64)
    return ((counts + 1) / (counts.sum() + n_classes)).to(torch.float32)


def held_out_split(n: int, fraction: float, seed: int, what: str = "held_out_split") -> tuple[Tensor, Tensor]:
    """Seeded random split of ``range(n)`` into (train, held-out) int64 index tensors.

    The held-out part has ``round(fraction * n)`` examples.

    Raises:
        ValueError: if either part would be empty.
    """
    n_held = int(round(fraction * n))
    if n_held < 1 or n - n_held < 1:
        raise ValueError(f"{what}: N={n} examples is too small to hold out "
                         f"held_out_fraction={fraction} (held-out {n_held}, train {n - n_held})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_held:].sort().values, perm[:n_held].sort().values


def _eval_noise(d: int, seed: int, n_samples: int = EVAL_MC_SAMPLES) -> Tensor:
    return torch.rand(n_samples, d, generator=torch.Generator().manual_seed(seed + 7919))


def _bernoulli_entropy(phi: Tensor) -> Tensor:
    """Σ_d H(Bernoulli(σ(φ_d))) in nats (0 for infinite φ)."""
    p = torch.sigmoid(phi)
    h = p * F.softplus(-phi) + (1 - p) * F.softplus(phi)
    return torch.nan_to_num(h, nan=0.0).sum()


def _entropy_grad(phi: Tensor) -> Tensor:
    """(d,) ``dH(q)/dφ = -φ σ(φ) (1 - σ(φ))``."""
    p = torch.sigmoid(phi)
    return -phi * p * (1 - p)


def _score_grad(f: Tensor, M: Tensor, p: Tensor, ema: float | None = None) -> Tensor:
    """Score-function estimate of ``∇_φ E_q[f(m)]`` with a leave-one-out baseline.

    Args:
        f: (S,) objective values f(m_s). M: (S, d) 0/1 masks drawn from q. p: (d,) σ(φ).
        ema: baseline used when S == 1 (moving average of past f; ``None`` = no baseline
            on the very first step, which then contributes a zero gradient).

    Returns:
        (d,) ``mean_s (f_s - b_s) (m_s - σ(φ))``; ``m_s - σ(φ) = ∇_φ log q(m_s)`` for
        Bernoulli(σ(φ)), and ``b_s = mean_{s' ≠ s} f_{s'}`` does not depend on ``m_s``, so
        the estimate is unbiased (Kool et al. 2019, "Buy 4 REINFORCE samples ...").
    """
    S = f.shape[0]
    if S > 1:
        baseline = (f.sum() - f) / (S - 1)
    else:
        baseline = f if ema is None else torch.full_like(f, ema)
    return ((f - baseline)[:, None] * (M - p)).mean(dim=0)


def _masked_forward(XT: Tensor, y: Tensor, W: Tensor, b: Tensor, M: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Logits for S masks at once, in the cache-friendly layout (S, C, n).

    Args: XT (d, n) the transposed inputs, y (n,), W (d, C), b (C,), M (S, d) 0/1 masks.

    Returns:
        P: (S, C, n) ``exp(logit - max_c logit)`` (unnormalised softmax),
        s: (S, 1, n) its sum over classes, ll: (S, n) ``log p(y_n | x_n ⊙ m_s)``.
        One product ``[m_1 ⊙ W | ... | m_S ⊙ W]^T @ X^T`` computes all S logit sets.
    """
    S, d = M.shape
    C, n = W.shape[1], XT.shape[1]
    WT = (M[:, None, :] * W.T[None]).reshape(S * C, d)
    Z = torch.addmm(b.repeat(S)[:, None], WT, XT).view(S, C, n)
    Z.sub_(Z.amax(dim=1, keepdim=True))
    zy = Z.gather(1, y.view(1, 1, n).expand(S, 1, n))
    P = Z.exp_()
    s = P.sum(dim=1, keepdim=True)
    return P, s, (zy - s.log()).squeeze(1)


def held_out_log_lik(probe: LatentProbe, X: Tensor, y: Tensor, seed: int) -> float:
    """Early-stopping criterion: MC estimate of ``E_q[log p(π | x ⊙ m)]``, nats/example.

    Uses :data:`EVAL_MC_SAMPLES` masks ``m_s = [u_s < σ(φ)]`` with uniforms ``u_s`` drawn
    once from ``seed`` (common random numbers), so it is deterministic in the probe's
    parameters; :func:`train_probe` records it as ``history[i]["held_out_loglik"]``.

    Args:
        probe: a trained probe. X: (N, d) float. y: (N,) int64 labels. seed: ProbeConfig.seed.
    """
    X = _check_X(X, "held_out_log_lik: X", d=probe.n_dims)
    y = _check_y(y, "held_out_log_lik: y", X.shape[0], probe.n_classes)
    M = (_eval_noise(probe.n_dims, seed) < probe.marginals).to(torch.float32)
    return _mean_loglik(X.T.contiguous(), y, probe.W, probe.b, M)


def _mean_loglik(XT: Tensor, y: Tensor, W: Tensor, b: Tensor, M: Tensor) -> float:
    return float(_masked_forward(XT, y, W, b, M)[2].to(torch.float64).mean())


# ---------------------------------------------------------------------------------------
# training


def train_probe(X: Tensor, y: Tensor, n_classes: int, config: ProbeConfig = ProbeConfig()) -> LatentProbe:
    """Train the latent-variable intrinsic probe (Stańczak et al. 2023; Eq. 1-4 of 2406.13229).

    Maximises the ELBO described in the module docstring with Adam, full batch or
    minibatches (``config.batch_size``), ``config.mc_samples`` masks per step, a leave-one-out
    score-function baseline for φ, early stopping on a seeded held-out split, and returns
    the best epoch's W, b, φ (``config.restore="best"``) or the last epoch's (``"last"``, the
    reference trainer's).
    ``W`` starts at 0, ``b`` at the log label prior of the training split, ``φ`` at 0
    (all marginals 0.5).

    Args:
        X: (N, d) float word vectors (converted to CPU float32).
        y: (N,) integer labels in ``[0, n_classes)``.
        n_classes: C >= 2, the number of attribute values.
        config: hyper-parameters; ``config.seed`` fixes everything random.

    Returns:
        A :class:`LatentProbe` (CPU float32) with its per-epoch ``history``.

    Raises:
        ValueError: one line, for a shape mismatch, NaN/inf in X, labels out of range,
            ``n_classes < 2``, N too small to hold out ``held_out_fraction``, or
            minibatches (``config.batch_size`` < training examples) with
            ``config.entropy_scale="per_example"``.
    """
    return _train_seeds(X, y, n_classes, config, None, latent=True)[0]


def train_linear_probe(X: Tensor, y: Tensor, n_classes: int,
                       config: ProbeConfig = ProbeConfig()) -> LatentProbe:
    """Plain linear softmax probe on all d dims (no latent mask), same training loop.

    The baseline of :func:`xalign.selection.weight_mass_select` (NeuroX-style ranking,
    Dalvi et al. 2019). Same Adam / early stopping / held-out split as :func:`train_probe`;
    the held-out criterion is the log-likelihood with all dims. Returns a
    :class:`LatentProbe` with ``phi = +inf`` (every dimension always on).

    Raises:
        ValueError: as :func:`train_probe`.
    """
    return _train_seeds(X, y, n_classes, config, None, latent=False)[0]


class _Adam:
    """Adam (Kingma & Ba 2015) with L2 weight decay, updating tensors in place.

    Same update as ``torch.optim.Adam`` (betas 0.9/0.999, eps 1e-8); written out because
    constructing a ``torch.optim`` optimizer imports ``torch._dynamo`` (seconds, once per
    process) and its per-step bookkeeping outweighs this tiny model's arithmetic.
    """

    def __init__(self, params: list[Tensor], lr: float, weight_decay: list[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lr, self.wd, self.betas, self.eps = params, lr, weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads: list[Tensor]) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, math.sqrt(1 - b2 ** self.t)
        for p, g, m, v, wd in zip(self.params, grads, self.m, self.v, self.wd):
            if wd:
                g = g.add(p, alpha=wd)
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m, v.sqrt().div_(c2).add_(self.eps), value=-self.lr / c1)


def _step_grads(XT: Tensor, y: Tensor, Y1hT: Tensor, W: Tensor, b: Tensor, M: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
    """One MC step, gradients by hand (cheaper than autograd for this small model).

    Args: XT (d, n) the transposed inputs, y (n,), Y1hT (C, n) one-hot of y,
        W (d, C), b (C,), M (S, d) 0/1 masks.

    Returns:
        f: (S,) mean log-likelihood per mask; gW: (d, C), gb: (C,) gradients of
        ``-mean_s f_s`` (the loss) with respect to W and b.
    """
    S, d = M.shape
    C, n = Y1hT.shape
    P, s, ll = _masked_forward(XT, y, W, b, M)
    G = P.div_(s).sub_(Y1hT).div_(n * S)  # (softmax - one-hot) / (nS) = d loss / d logits
    gW = ((G.view(S * C, n) @ XT.T).view(S, C, d) * M[:, None, :]).sum(dim=0).T
    return ll.mean(dim=1), gW, G.sum(dim=(0, 2))


def _train(X: Tensor, y: Tensor, n_classes: int, config: ProbeConfig, latent: bool,
           check_entropy_batch: bool = True) -> LatentProbe:
    """The training loop of :func:`train_probe` (``latent``) and :func:`train_linear_probe`.

    ``check_entropy_batch=False`` skips the rejection of ``per_example`` with minibatches
    (only for benchmarks/bench_entropy_minibatch.py, which measures what it rejects).
    """
    name = "train_probe" if latent else "train_linear_probe"
    if not isinstance(config, ProbeConfig):
        raise ValueError(f"{name}: config must be a ProbeConfig, got {type(config).__name__}")
    if isinstance(n_classes, bool) or int(n_classes) != n_classes or n_classes < 2:
        raise ValueError(f"{name}: n_classes must be an int >= 2, got {n_classes!r}")
    X = _check_X(X, f"{name}: X")
    y = _check_y(y, f"{name}: y", X.shape[0], int(n_classes))
    N, d = X.shape
    C = int(n_classes)
    tr_idx, ho_idx = held_out_split(N, config.held_out_fraction, config.seed, what=name)
    gen = torch.Generator().manual_seed(config.seed)
    n_tr = tr_idx.shape[0]
    bs = n_tr if config.batch_size is None else min(config.batch_size, n_tr)
    if check_entropy_batch and latent and bs < n_tr and config.entropy_scale == "per_example":
        raise ValueError(f"{name}: ProbeConfig.batch_size={config.batch_size} < {n_tr} training examples "
                         "(minibatches) with entropy_scale='per_example' is rejected: q(m) saturates and "
                         "the selected neurons vary with the seed (xalign.probe, 'Entropy weight'); "
                         "use batch_size=None or entropy_scale='reference'")
    if bs < n_tr:
        # minibatches: shuffle the training examples once (seeded) and cut them into fixed
        # batches; the order of the batches is reshuffled every epoch
        tr_idx = tr_idx[torch.randperm(n_tr, generator=gen)]
    ytr, yho = y[tr_idx], y[ho_idx]
    n_batches = -(-n_tr // bs)  # ceil: near-equal batches, no tiny remainder batch
    bounds = [(i * n_tr // n_batches, (i + 1) * n_tr // n_batches) for i in range(n_batches)]
    # one transposed, contiguous (d, n_b) block per batch: both matrix products of a step run
    # at full BLAS speed on it, and no step copies data
    batches = [(X[tr_idx[lo:hi]].T.contiguous(), ytr[lo:hi],
                F.one_hot(ytr[lo:hi], C).T.to(torch.float32).contiguous()) for lo, hi in bounds]
    XTho = X[ho_idx].T.contiguous()
    prior = label_prior(y, C)

    W = torch.zeros(d, C)
    b = torch.log(label_prior(ytr, C))
    phi = torch.zeros(d)
    opt = _Adam([W, b, phi] if latent else [W, b], config.lr, [config.weight_decay, 0.0, 0.0])
    S = config.mc_samples if latent else 1
    lam = (1.0 / n_tr) if config.entropy_scale == "per_example" else 1.0
    noise_eval = _eval_noise(d, config.seed) if latent else None
    ones = torch.ones(1, d)
    ema: float | None = None

    history: list[dict] = []
    best: tuple[float, int, tuple[Tensor, ...] | None] = (-math.inf, -1, None)
    for epoch in range(config.max_epochs):
        order = batches if n_batches == 1 else [batches[i] for i in torch.randperm(n_batches, generator=gen)]
        sum_ll = sum_elbo = 0.0
        for xbT, yb, YbT in order:
            if latent:
                p = torch.sigmoid(phi)
                M = (torch.rand(S, d, generator=gen) < p).to(torch.float32)
            else:
                M = ones
            f, gW, gb = _step_grads(xbT, yb, YbT, W, b, M)
            ll = float(f.mean())
            ent = 0.0
            if latent:
                gphi = -(_score_grad(f, M, p, ema) + lam * _entropy_grad(phi))
                if S == 1:
                    ema = ll if ema is None else _EMA_DECAY * ema + (1 - _EMA_DECAY) * ll
                ent = float(_bernoulli_entropy(phi))
            opt.step([gW, gb, gphi] if latent else [gW, gb])
            w = yb.shape[0] / n_tr
            sum_ll += w * ll
            sum_elbo += w * (ll + lam * ent)
        Mho = (noise_eval < torch.sigmoid(phi)).to(torch.float32) if latent else ones
        ho = _mean_loglik(XTho, yho, W, b, Mho)
        history.append({"epoch": epoch, "train_elbo": sum_elbo, "train_loglik": sum_ll,
                        "entropy": float(_bernoulli_entropy(phi)) if latent else 0.0,
                        "held_out_loglik": ho,
                        "mean_marginal": float(torch.sigmoid(phi).mean()) if latent else 1.0})
        if best[1] < 0 or ho > best[0]:
            best = (ho, epoch, (W.clone(), b.clone(), phi.clone()) if config.restore == "best" else None)
        elif epoch - best[1] >= config.patience:
            break

    if config.restore == "last":  # the reference trainer's model: the last epoch trained
        best = (ho, epoch, (W, b, phi))
    W_best, b_best, phi_best = best[2]
    if not latent:
        phi_best = torch.full((d,), math.inf)
    return LatentProbe(W=W_best, b=b_best, phi=phi_best, label_prior=prior,
                       history=history, best_epoch=best[1], config=config)


# ---------------------------------------------------------------------------------------
# reference probe (for reporting, not for selection)

#: L2 strengths tried by :func:`train_l2_probe` (penalty ``λ/2 ||W||²`` on a mean log-likelihood).
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _fit_l2(X: Tensor, Y1hT: Tensor, lam: float, init: tuple[Tensor, Tensor], max_iter: int
            ) -> tuple[Tensor, Tensor, int]:
    """Minimise ``-mean_n log softmax(x_n W + b)_{y_n} + λ/2 ||W||²`` with L-BFGS.

    ``torch.optim.LBFGS`` (strong-Wolfe line search, history 10) with gradients written out
    (no autograd graph), in the (C, N) logit layout (several times faster than (N, C) for
    small C). Args: X (N, d) float32, Y1hT (C, N) float32 one-hot, init (W (d, C), b (C,))
    start values (copied). Returns: (W (d, C), b (C,), iterations).
    """
    N = X.shape[0]
    XT = X.T.contiguous()
    WT = init[0].T.contiguous().requires_grad_(True)
    b = init[1].clone().requires_grad_(True)
    opt = torch.optim.LBFGS([WT, b], lr=1.0, max_iter=max_iter, history_size=10, tolerance_grad=1e-5,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    @torch.no_grad()
    def closure() -> Tensor:
        ZT = torch.addmm(b[:, None], WT, XT)  # (C, N)
        lse = torch.logsumexp(ZT, dim=0)
        loss = ((lse - (ZT * Y1hT).sum(0)).sum(dtype=torch.float64) / N
                + 0.5 * lam * WT.pow(2).sum(dtype=torch.float64))
        GT = torch.exp(ZT - lse).sub_(Y1hT).div_(N)
        WT.grad = torch.addmm(WT, GT, X, beta=lam)
        b.grad = GT.sum(1)
        return loss

    opt.step(closure)
    return WT.detach().T.contiguous(), b.detach(), int(opt.state[WT]["n_iter"])


def train_l2_probe(X: Tensor, y: Tensor, n_classes: int, config: ProbeConfig = ProbeConfig(),
                   l2_grid: tuple[float, ...] = L2_GRID, max_iter: int = 100) -> LatentProbe:
    """Plain linear softmax probe with an L2 penalty, fitted by L-BFGS (reporting only).

    The reference probe of :func:`xalign.selection.retrained_mi`. Multinomial logistic
    regression ``p(π | x) = softmax(x W + b)`` maximising the mean log-likelihood minus
    ``λ/2 ||W||²`` (``b`` unpenalised), a convex problem solved by L-BFGS
    (``torch.optim.LBFGS``, strong-Wolfe line search, float32 products; warm-started along
    ``l2_grid`` from strong to weak penalty). ``λ`` is chosen on the seeded held-out split
    of :func:`held_out_split` (``config.held_out_fraction``, ``config.seed``) by held-out
    log-likelihood, then the probe is refitted on all of ``X`` with that ``λ`` (warm start:
    the held-out fit). Unlike the Adam-trained probes, the result depends on neither a
    learning rate nor early stopping: with d close to N a plain probe trained by Adam
    overshoots in its first steps (each of the d weights moves by about ``lr``) and is
    over-confident on held-out data, which makes its MI meaningless; a converged,
    held-out-regularised fit does not have that problem.

    Args:
        X: (N, d) float, y: (N,) int labels in [0, n_classes); n_classes: C >= 2.
        config: only ``held_out_fraction`` and ``seed`` are used.
        l2_grid: candidate λ values (> 0).
        max_iter: L-BFGS iterations per fit (each fit is warm-started). 100 leaves the MI
            within ~0.005 of the converged fit on the weakest penalties, where convergence is
            slowest (tiny-lab Spanish UPOS, N = 20k, d = 192: MI 0.3905 at 100 iterations vs
            0.3877 at 500), at a third of the time.

    Returns:
        :class:`LatentProbe` with ``phi = +inf`` (every dimension on), ``history`` one dict
        per λ (``l2``, ``held_out_loglik`` nats/example, ``iterations``) and ``best_epoch``
        the index of the chosen λ.

    Raises:
        ValueError: one line, as :func:`train_probe`, or for an empty / non-positive ``l2_grid``.
    """
    name = "train_l2_probe"
    if isinstance(n_classes, bool) or int(n_classes) != n_classes or n_classes < 2:
        raise ValueError(f"{name}: n_classes must be an int >= 2, got {n_classes!r}")
    if not l2_grid or any(not lam > 0 for lam in l2_grid):
        raise ValueError(f"{name}: l2_grid must be a non-empty tuple of values > 0, got {l2_grid!r}")
    X = _check_X(X, f"{name}: X")
    C = int(n_classes)
    y = _check_y(y, f"{name}: y", X.shape[0], C)
    N, d = X.shape
    tr, ho = held_out_split(N, config.held_out_fraction, config.seed, what=name)
    Y1hT = F.one_hot(y, C).T.to(torch.float32).contiguous()
    Xtr, Ytr, Xho = X[tr], Y1hT[:, tr].contiguous(), X[ho]
    history: list[dict] = []
    fits = []
    init = (torch.zeros(d, C), torch.log(label_prior(y[tr], C)))
    for lam in sorted(l2_grid, reverse=True):  # warm starts from strong to weak penalty
        W, b, nit = _fit_l2(Xtr, Ytr, lam, init, max_iter)
        lp = torch.log_softmax(torch.addmm(b, Xho, W), dim=1)
        history.append({"l2": lam, "held_out_loglik": float(lp.gather(1, y[ho, None]).mean()),
                        "iterations": nit})
        fits.append((W, b))
        init = (W, b)
    best = max(range(len(history)), key=lambda i: (history[i]["held_out_loglik"], -i))
    W, b, _ = _fit_l2(X, Y1hT, history[best]["l2"], fits[best], max_iter)
    return LatentProbe(W=W, b=b, phi=torch.full((d,), math.inf),
                       label_prior=label_prior(y, C), history=history, best_epoch=best, config=config)


# ---------------------------------------------------------------------------------------
# several seeds as one computation


def train_probes(X: Tensor, y: Tensor, n_classes: int, config: ProbeConfig = ProbeConfig(),
                 seeds: list[int] | tuple[int, ...] | None = None) -> list[LatentProbe]:
    """Train the latent probe of :func:`train_probe` once per seed, the seeds batched.

    Each seed ``s`` gives the probe of ``train_probe(X, y, C, replace(config, seed=s))`` (same
    held-out split, masks and evaluation masks, drawn from a generator seeded with ``s``) up to
    float rounding: vectorised elementwise kernels (exp, sigmoid) round a tensor's tail
    elements differently with its length, so a seed's parameters can move by ~1e-9 with the
    other seeds in its batch (measured: max |Δφ| 3.7e-9, same epochs and selections). The
    same call is bitwise reproducible. With a full batch the seeds run as one computation, every
    parameter and data tensor getting a leading seed dimension R, so one step is one batched
    matrix product ``(R, S·C, d) @ (R, d, n)`` instead of R small ones (the per-op overhead
    dominates small probes). A seed that stops early is dropped from the batch. Minibatches
    (``batch_size`` < training examples) and problems with N·d·C above
    :data:`BATCH_SEEDS_MAX_WORK` (compute-bound) run the seeds one after another.

    Args:
        X: (N, d) float word vectors. y: (N,) int labels in ``[0, n_classes)``.
        n_classes: C >= 2. config: as :func:`train_probe`; its ``seed`` is ignored when
            ``seeds`` is given.
        seeds: distinct ints >= 0; default ``[config.seed]``.

    Returns:
        One :class:`LatentProbe` per seed, in the order of ``seeds``; ``probe.config.seed`` is its seed.

    Raises:
        ValueError: as :func:`train_probe`, or for empty, repeated or negative seeds.
    """
    return _train_seeds(X, y, n_classes, config, seeds, latent=True)


def _seed_list(seeds, config: ProbeConfig, name: str) -> list[int]:
    seeds = [config.seed] if seeds is None else list(seeds)
    if (not seeds or len(set(seeds)) != len(seeds)
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        raise ValueError(f"{name}: seeds must be distinct ints >= 0, got {seeds!r}")
    return seeds


def _train_seeds(X: Tensor, y: Tensor, n_classes: int, config: ProbeConfig, seeds, latent: bool
                 ) -> list[LatentProbe]:
    """Dispatch: one batched full-batch run over ``seeds``, or minibatch runs one seed at a time."""
    name = "train_probe" if latent else "train_linear_probe"
    if not isinstance(config, ProbeConfig):
        raise ValueError(f"{name}: config must be a ProbeConfig, got {type(config).__name__}")
    seeds = _seed_list(seeds, config, name)
    configs = [replace(config, seed=s) for s in seeds]
    X = _check_X(X, f"{name}: X")
    n_tr = X.shape[0] - int(round(config.held_out_fraction * X.shape[0]))
    if config.batch_size is not None and config.batch_size < n_tr:
        return [_train(X, y, n_classes, c, latent=latent) for c in configs]
    if X.shape[0] * X.shape[1] * max(int(n_classes), 1) > BATCH_SEEDS_MAX_WORK:  # compute-bound: one by one
        return [p for c in configs for p in _BatchedTrainer(X, y, n_classes, [c], latent, name).run()]
    return _BatchedTrainer(X, y, n_classes, configs, latent, name).run()


#: Above this N·d·C the seeds are trained one after another (same code, one seed per batch): batching
#: only saves per-op overhead, and on a compute-bound problem the stacked copies cost more
#: (benchmarks/bench_seeds.py, 5 seeds: 2.7x faster at N·d·C = 2.3e5, 1.1x at 4.6e6, 0.87x at 1.0e8).
BATCH_SEEDS_MAX_WORK = 2e7


class _BatchedTrainer:
    """Full-batch training of R probes (one per config, i.e. per seed) as one computation.

    State tensors carry a leading seed dimension: W (R, d, C), b (R, C), φ (R, d), the
    training blocks XT (R, d, n), the held-out blocks (R, d, n_ho). Seeds whose early
    stopping fired are removed from every tensor (``_keep``).
    """

    def __init__(self, X: Tensor, y: Tensor, n_classes: int, configs: list[ProbeConfig], latent: bool,
                 name: str) -> None:
        if isinstance(n_classes, bool) or int(n_classes) != n_classes or n_classes < 2:
            raise ValueError(f"{name}: n_classes must be an int >= 2, got {n_classes!r}")
        self.C = C = int(n_classes)
        y = _check_y(y, f"{name}: y", X.shape[0], C)
        N, self.d = X.shape
        cfg = self.cfg = configs[0]
        self.configs, self.latent = configs, latent
        splits = [held_out_split(N, cfg.held_out_fraction, c.seed, what=name) for c in configs]
        self.gens = [torch.Generator().manual_seed(c.seed) for c in configs]
        tr = torch.stack([s[0] for s in splits])  # (R, n_tr)
        ho = torch.stack([s[1] for s in splits])  # (R, n_ho)
        self.n_tr = tr.shape[1]
        self.XT = X[tr].transpose(1, 2).contiguous()  # (R, d, n_tr)
        self.ytr = y[tr]
        self.Y1hT = F.one_hot(self.ytr, C).transpose(1, 2).to(torch.float32).contiguous()  # (R, C, n_tr)
        self.XTho, self.yho = X[ho].transpose(1, 2).contiguous(), y[ho]
        self.prior = label_prior(y, C)
        R = len(configs)
        self.W = torch.zeros(R, self.d, C)
        self.b = torch.stack([torch.log(label_prior(t, C)) for t in self.ytr])
        self.phi = torch.zeros(R, self.d)
        self.opt = _Adam([self.W, self.b, self.phi] if latent else [self.W, self.b], cfg.lr,
                         [cfg.weight_decay, 0.0, 0.0])
        self.lam = (1.0 / self.n_tr) if cfg.entropy_scale == "per_example" else 1.0
        self.noise_eval = torch.stack([_eval_noise(self.d, c.seed) for c in configs]) if latent else None
        self.active = list(range(R))  # positions in ``configs`` of the rows of the state tensors
        self.ema: Tensor | None = None

    def _masks(self) -> Tensor:
        """(R_active, S, d) masks, each seed's drawn from its own generator."""
        S = self.cfg.mc_samples
        if not self.latent:
            return torch.ones(len(self.active), 1, self.d)
        p = torch.sigmoid(self.phi)
        u = torch.stack([torch.rand(S, self.d, generator=self.gens[i]) for i in self.active])
        return (u < p[:, None, :]).to(torch.float32)

    def _step(self) -> tuple[Tensor, Tensor]:
        """One Adam step of every active seed. Returns (train loglik (R,), ELBO (R,))."""
        M = self._masks()
        f, gW, gb = _step_grads_batched(self.XT, self.ytr, self.Y1hT, self.W, self.b, M)
        ll = f.mean(dim=1)
        if not self.latent:
            self.opt.step([gW, gb])
            return ll, ll
        p = torch.sigmoid(self.phi)
        gphi = -(_score_grad_batched(f, M, p, self.ema) + self.lam * _entropy_grad(self.phi))
        if f.shape[1] == 1:
            self.ema = ll.clone() if self.ema is None else _EMA_DECAY * self.ema + (1 - _EMA_DECAY) * ll
        ent = self._entropy()
        self.opt.step([gW, gb, gphi])
        return ll, ll + self.lam * ent

    def _held_out(self) -> Tensor:
        """(R_active,) held-out log-likelihood with the fixed evaluation masks."""
        if self.latent:
            M = (self.noise_eval < torch.sigmoid(self.phi)[:, None, :]).to(torch.float32)
        else:
            M = torch.ones(len(self.active), 1, self.d)
        ll = _masked_forward_batched(self.XTho, self.yho, self.W, self.b, M)[2]
        return ll.to(torch.float64).mean(dim=(1, 2))

    def _keep(self, rows: list[int]) -> None:
        """Keep only the state rows ``rows`` (seeds still training)."""
        idx = torch.tensor(rows, dtype=torch.long)
        for attr in ("XT", "ytr", "Y1hT", "XTho", "yho", "W", "b", "phi", "noise_eval", "ema"):
            t = getattr(self, attr)
            if t is not None:
                setattr(self, attr, t[idx].contiguous())
        self.opt.params = [self.W, self.b, self.phi][:len(self.opt.params)]
        self.opt.m = [m[idx].contiguous() for m in self.opt.m]
        self.opt.v = [v[idx].contiguous() for v in self.opt.v]
        self.active = [self.active[r] for r in rows]

    def run(self) -> list[LatentProbe]:
        R, cfg = len(self.configs), self.cfg
        history: list[list[dict]] = [[] for _ in range(R)]
        best: list[tuple[float, int, tuple | None]] = [(-math.inf, -1, None)] * R
        done: dict[int, tuple] = {}
        for epoch in range(cfg.max_epochs):
            ll, elbo = self._step()
            ho = self._held_out()
            ent = self._entropy() if self.latent else torch.zeros(len(self.active))
            # per row, as train_probe reduces them (a (R, d) reduction rounds differently)
            marg = (torch.stack([torch.sigmoid(p).mean() for p in self.phi]) if self.latent
                    else torch.ones(len(self.active)))
            keep = []
            rows = torch.stack([elbo.double(), ll.double(), ent.double(), ho, marg.double()], dim=1).tolist()
            for r, i in enumerate(self.active):
                e, t, h_q, h, m = rows[r]
                history[i].append({"epoch": epoch, "train_elbo": e, "train_loglik": t, "entropy": h_q,
                                   "held_out_loglik": h, "mean_marginal": m})
                if best[i][1] < 0 or h > best[i][0]:
                    best[i] = (h, epoch, self._state(r) if cfg.restore == "best" else None)
                elif epoch - best[i][1] >= cfg.patience:
                    done[i] = (h, epoch, self._state(r))
                    continue
                keep.append(r)
            if not keep:
                break
            if len(keep) < len(self.active):
                self._keep(keep)
        for r, i in enumerate(self.active):  # ran to max_epochs
            done.setdefault(i, (None, cfg.max_epochs - 1, self._state(r)))
        return [self._probe(i, best[i], done[i], history[i]) for i in range(R)]

    def _entropy(self) -> Tensor:
        """(R_active,) H(q) per seed, each reduced as :func:`train_probe` reduces it."""
        return torch.stack([_bernoulli_entropy(p) for p in self.phi])

    def _state(self, r: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.W[r].clone(), self.b[r].clone(), self.phi[r].clone()

    def _probe(self, i: int, best: tuple, last: tuple, history: list[dict]) -> LatentProbe:
        epoch, (W, b, phi) = (last[1], last[2]) if self.cfg.restore == "last" else (best[1], best[2])
        if not self.latent:
            phi = torch.full((self.d,), math.inf)
        return LatentProbe(W=W, b=b, phi=phi, label_prior=self.prior, history=history,
                           best_epoch=epoch, config=self.configs[i])


def _masked_forward_batched(XT: Tensor, y: Tensor, W: Tensor, b: Tensor, M: Tensor
                            ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_masked_forward` with a leading seed dimension R.

    Args: XT (R, d, n), y (R, n), W (R, d, C), b (R, C), M (R, S, d) 0/1 masks.

    Returns:
        P (R, S, C, n) unnormalised softmax, s (R, S, 1, n) its class sum,
        ll (R, S, n) ``log p(y_n | x_n ⊙ m_s)``; one ``baddbmm`` for all seeds and masks.
    """
    R, S, d = M.shape
    C, n = W.shape[2], XT.shape[2]
    WT = (M[:, :, None, :] * W.transpose(1, 2)[:, None]).reshape(R, S * C, d)
    Z = torch.baddbmm(b.repeat(1, S)[:, :, None], WT, XT).view(R, S, C, n)
    Z.sub_(Z.amax(dim=2, keepdim=True))
    zy = Z.gather(2, y.view(R, 1, 1, n).expand(R, S, 1, n))
    P = Z.exp_()
    s = P.sum(dim=2, keepdim=True)
    return P, s, (zy - s.log()).squeeze(2)


def _step_grads_batched(XT: Tensor, y: Tensor, Y1hT: Tensor, W: Tensor, b: Tensor, M: Tensor
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_step_grads` with a leading seed dimension: XT (R, d, n), y (R, n), Y1hT (R, C, n),
    W (R, d, C), b (R, C), M (R, S, d). Returns f (R, S), gW (R, d, C), gb (R, C)."""
    R, S, d = M.shape
    C, n = Y1hT.shape[1:]
    P, s, ll = _masked_forward_batched(XT, y, W, b, M)
    G = P.div_(s).sub_(Y1hT[:, None]).div_(n * S)  # (R, S, C, n)
    gW = (torch.bmm(G.view(R, S * C, n), XT.transpose(1, 2)).view(R, S, C, d) * M[:, :, None, :]).sum(dim=1)
    return ll.mean(dim=2), gW.transpose(1, 2), G.sum(dim=(1, 3))


def _score_grad_batched(f: Tensor, M: Tensor, p: Tensor, ema: Tensor | None) -> Tensor:
    """:func:`_score_grad` per seed: f (R, S), M (R, S, d), p (R, d), ema (R,) or None -> (R, d)."""
    S = f.shape[1]
    if S > 1:
        baseline = (f.sum(dim=1, keepdim=True) - f) / (S - 1)
    else:
        baseline = f if ema is None else ema[:, None].expand_as(f)
    return ((f - baseline)[:, :, None] * (M - p[:, None, :])).mean(dim=1)
