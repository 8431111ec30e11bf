"""Greedy neuron selection with a trained intrinsic probe, and a weight-mass baseline.

Wang, Minervini & Ponti (2024, arXiv 2406.13229, Sec. 2.1) follow Stańczak et al. (2022,
2023): after training the latent-variable probe (:mod:`xalign.probe`), the top-k
dimensions ("neurons") for an attribute are chosen greedily on the dev set. Starting from
the empty set, each step adds the dimension that maximises the dev log-likelihood of the
*same* probe when every dimension not selected is zeroed (no retraining between steps).

Along the path we report, per step, on dev (and optionally test):

* normalised mutual information in bits, ``(H(Y) - H(Y|X)) / H(Y)``, with ``H(Y|X)`` the
  probe's cross-entropy on the eval set and ``H(Y)`` the cross-entropy of the label prior
  (add-one smoothed *training* label frequencies) on the same set, so MI is the gain of
  the probe over the prior (it can be negative when the probe is worse than the prior);
* accuracy.

The greedy log-likelihood path need **not** increase at every step: without retraining,
adding a dimension can lower the log-likelihood (its weights were fitted together with
other dimensions); the step still picks the least harmful dimension. It does not
decrease (up to finite-sample noise) when the masked probe is the exact posterior
``p(π | h_S)`` for every subset S, since extra evidence cannot raise the expected
cross-entropy; a well-trained latent probe approximates that for the informative dims.

Probe-free baseline: :func:`probeless_select` ranks dimensions by the Probeless score of
Antverg & Belinkov (2022), the summed absolute differences of class means on the training
split (:func:`probeless_scores`); its path is scored by a probe exactly like the weight-mass
baseline's, and :func:`selection_agreement` compares two methods' top-k lists.

All-d numbers: ``SelectionResult.dev_mi_all`` is the same probe with every dimension
on, the "ALL" row of the reference greedy code. The probe was trained under masks that
keep about half of the dims, so this input is off its training distribution and the
number is often below the top-k MI, even negative. :func:`retrained_mi` gives the
reference to compare the top-k MI with: L2 linear probes retrained on the k neurons and
on all d dims (the reference code's "upper bound" probe).

Kernel: with base logits ``Z_S`` of the current set S, the logits of ``S ∪ {c}`` are
``Z_S + x[:, c] ⊗ W[c, :]``; candidates are scored in chunks of at most ``chunk_bytes``
(a (C, chunk, n) tensor), and ``Z_S`` is updated in place after each pick, so a step
costs O(N · d · C) without ever holding an N × d × C tensor.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from xalign.probe import LatentProbe, ProbeConfig, _check_X, _check_y, train_l2_probe, train_linear_probe

#: Default memory bound of one candidate chunk (bytes); small chunks stay in cache.
DEFAULT_CHUNK_BYTES = 4 * 2**20
_MAX_CHUNK_BYTES = 64 * 2**20
_LN2 = math.log(2.0)


@dataclass
class SelectionResult:
    """The selected neurons and the MI / accuracy path.

    Attributes:
        neurons: the k dimension indices, in the order chosen.
        dev_loglik: mean dev log-likelihood (nats/example) after each step, len k.
        dev_mi, dev_acc: normalised MI (bits/bits) and accuracy on dev after each step.
        test_mi, test_acc: the same on test, or ``None`` without a test set.
        dev_mi_all, dev_acc_all, test_mi_all, test_acc_all: the same probe with all d
            dimensions on (reference code's "ALL" row; off the latent probe's training
            distribution, see the module docstring; :func:`retrained_mi` is the clean reference).
        method: ``"greedy"`` (:func:`greedy_select`), ``"weight_mass"``
            (:func:`weight_mass_select`) or ``"probeless"`` (:func:`probeless_select`).
        dev_gain: per step, the gain in mean dev log-likelihood (nats/example) of adding
            that neuron, ``mean_n [ll_n(S_t) - ll_n(S_{t-1})]`` (step 1: over the empty set).
        dev_gain_se: its standard error over dev examples, ``std_n(·) / sqrt(N)`` (paired:
            the same examples before and after). A gain below about 2 SE is not
            distinguishable from zero on this dev set: the path's picks from there on may be noise.
    """

    neurons: list[int]
    dev_loglik: list[float]
    dev_mi: list[float]
    dev_acc: list[float]
    test_mi: list[float] | None
    test_acc: list[float] | None
    dev_mi_all: float
    dev_acc_all: float
    test_mi_all: float | None
    test_acc_all: float | None
    method: str
    dev_gain: list[float] | None = None
    dev_gain_se: list[float] | None = None


def normalised_mi(log_probs: Tensor, y: Tensor, label_prior: Tensor) -> float:
    """Normalised mutual information ``(H(Y) - H(Y|X)) / H(Y)`` (bits/bits).

    ``H(Y|X) = -mean_n log2 p(y_n | x_n)`` (the probe's cross-entropy on this set) and
    ``H(Y) = -mean_n log2 prior(y_n)`` (cross-entropy of the training label prior on this
    set), as in Stańczak et al. (2023) / Wang et al. (2024) Sec. 2.1. 1 = labels fully
    predicted, 0 = no gain over the prior, < 0 = worse than the prior.

    Args:
        log_probs: (N, C) natural-log probabilities. y: (N,) int labels.
        label_prior: (C,) probabilities (e.g. ``LatentProbe.label_prior``).

    Raises:
        ValueError: on shape mismatch, empty input, or ``H(Y) == 0``.
    """
    lp, y = _check_eval(log_probs, y, "normalised_mi")
    if label_prior.shape != (lp.shape[1],):
        raise ValueError(f"normalised_mi: label_prior has shape {tuple(label_prior.shape)}, "
                         f"expected ({lp.shape[1]},)")
    h_y_x = -float(lp.gather(1, y[:, None]).to(torch.float64).mean()) / _LN2
    h_y = -float(torch.log(label_prior.to(torch.float64))[y].mean()) / _LN2
    if not h_y > 0:
        raise ValueError("normalised_mi: H(Y) is 0 (the prior puts all mass on the observed labels)")
    return (h_y - h_y_x) / h_y


def accuracy(log_probs: Tensor, y: Tensor) -> float:
    """Fraction of rows of ``log_probs`` (N, C) whose argmax equals ``y`` (N,)."""
    lp, y = _check_eval(log_probs, y, "accuracy")
    return float((lp.argmax(dim=1) == y).to(torch.float64).mean())


def _check_eval(log_probs: Tensor, y: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if log_probs.ndim != 2 or y.ndim != 1 or log_probs.shape[0] != y.shape[0] or y.shape[0] == 0:
        raise ValueError(f"{what}: log_probs must be (N, C) and y (N,) with N > 0, got "
                         f"{tuple(log_probs.shape)} and {tuple(y.shape)}")
    y = y.to(torch.int64)
    if int(y.min()) < 0 or int(y.max()) >= log_probs.shape[1]:
        raise ValueError(f"{what}: labels out of range [0, {log_probs.shape[1]})")
    return log_probs, y


# ---------------------------------------------------------------------------------------
# incremental path


class _Path:
    """Base logits ``Z_S`` (C, N) of one eval set, updated as neurons are added."""

    def __init__(self, probe: LatentProbe, X: Tensor, y: Tensor) -> None:
        self.probe, self.y = probe, y
        self.XT = X.T.contiguous()  # (d, N)
        self.ZT = probe.b[:, None].expand(-1, X.shape[0]).contiguous()  # (C, N), empty set
        self.mi: list[float] = []
        self.acc: list[float] = []
        self.loglik: list[float] = []
        self.gain: list[float] = []
        self.gain_se: list[float] = []
        self._ll_n = self._example_loglik()  # (N,) of the empty set

    def _example_loglik(self) -> Tensor:
        return torch.log_softmax(self.ZT, dim=0).gather(0, self.y[None, :])[0].to(torch.float64)

    def add(self, c: int) -> None:
        self.ZT.addcmul_(self.probe.W[c][:, None], self.XT[c][None, :])
        lp = torch.log_softmax(self.ZT.T, dim=1)
        ll_n = lp.gather(1, self.y[:, None])[:, 0].to(torch.float64)
        diff, self._ll_n = ll_n - self._ll_n, ll_n
        n = diff.shape[0]
        self.gain.append(float(diff.mean()))
        self.gain_se.append(float(diff.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan)
        self.loglik.append(float(ll_n.mean()))
        self.mi.append(normalised_mi(lp, self.y, self.probe.label_prior))
        self.acc.append(accuracy(lp, self.y))


def _candidate_loglik(ZT: Tensor, XT: Tensor, WT: Tensor, y: Tensor, lin: Tensor,
                      cand: Tensor, chunk_bytes: int) -> Tensor:
    """Summed log-likelihood (float64, nats) of ``S ∪ {c}`` for each candidate c.

    Args:
        ZT: (C, N) base logits of S. XT: (d, N) inputs. WT: (C, d) probe weights.
        y: (N,) labels. lin: (d,) ``Σ_n x[n, c] W[c, y_n]`` per dimension.
        cand: (B,) candidate dimensions. chunk_bytes: bound on one (C, b, n) chunk.

    Returns:
        (B,) ``Σ_n log p(y_n | x_n restricted to S ∪ {c})``.
    """
    C, N = ZT.shape
    elems = max(C, chunk_bytes // 4)
    nb = min(N, max(1, elems // C))  # examples per block
    cb = max(1, elems // (C * nb))  # candidates per block
    lse = torch.zeros(cand.shape[0], dtype=torch.float64)
    for n0 in range(0, N, nb):
        Zb = ZT[:, None, n0:n0 + nb]  # (C, 1, n)
        for c0 in range(0, cand.shape[0], cb):
            idx = cand[c0:c0 + cb]
            T = torch.addcmul(Zb, WT[:, idx, None], XT[idx, n0:n0 + nb][None])  # (C, b, n)
            mx = T.amax(dim=0)
            s = T.sub_(mx).exp_().sum(dim=0)
            lse[c0:c0 + cb] += s.log_().add_(mx).sum(dim=1, dtype=torch.float64)
    zy = ZT.gather(0, y[None, :]).sum(dtype=torch.float64)
    return zy + lin[cand] - lse


def _pick_pruned(ZT: Tensor, XT: Tensor, W: Tensor, WT: Tensor, y: Tensor, onehotT: Tensor,
                 lin: Tensor, xw: Tensor, cand: Tensor, chunk_bytes: int) -> int:
    """Best candidate by branch and bound; same pick as scoring every candidate.

    Upper bound: for each example, ``t -> log softmax(z + t a)_y`` is concave in t (log-sum-exp
    is convex), so the log-likelihood after adding candidate c is at most its first-order
    expansion at the current set S,
    ``UB(c) = LL(S) + Σ_n x[n, c] (W[c, y_n] - Σ_j p_S(j | x_n) W[c, j])``,
    one (d, N) @ (N, C) product for all candidates. Candidates are scored exactly in order
    of decreasing UB until the next UB is below the best exact score by more than a
    margin (1e-5 nats per example per unit of logit magnitude, covering float32 rounding).
    Ties go to the lowest dimension index.
    """
    C, N = ZT.shape
    logp = torch.log_softmax(ZT, dim=0)
    ll_s = logp.gather(0, y[None, :]).sum(dtype=torch.float64)
    R = onehotT - logp.exp()  # (C, N) one-hot minus current probabilities
    gain = (XT @ R.T)[cand].mul_(W[cand]).sum(dim=1, dtype=torch.float64)
    ub = ll_s + gain
    margin = 1e-5 * float((1 + ZT.abs().amax(dim=0) + xw).sum(dtype=torch.float64))
    order = torch.sort(ub, descending=True, stable=True).indices
    elems = max(C, chunk_bytes // 4)
    step = max(1, elems // (C * N))  # candidates scored per round
    best = -math.inf
    seen_idx, seen_val = [], []
    for c0 in range(0, order.shape[0], step):
        block = order[c0:c0 + step]
        if float(ub[block[0]]) + margin < best:
            break
        scores = _candidate_loglik(ZT, XT, WT, y, lin, cand[block], chunk_bytes)
        seen_idx.append(cand[block])
        seen_val.append(scores)
        best = max(best, float(scores.max()))
    idx, val = torch.cat(seen_idx), torch.cat(seen_val)
    return int(idx[val == val.max()].min())


def greedy_select(probe: LatentProbe, X_dev: Tensor, y_dev: Tensor, k: int = 50,
                  X_test: Tensor | None = None, y_test: Tensor | None = None,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES, prune: bool = True) -> SelectionResult:
    """Greedy top-k neuron selection on dev (Stańczak et al. 2022/2023; Wang et al. 2024 Sec. 2.1).

    At step t the dimension c maximising the mean dev log-likelihood
    ``log p(y | x ⊙ 1[S_{t-1} ∪ {c}])`` of the trained ``probe`` (unselected dims zeroed,
    no retraining) is added. Ties go to the lowest dimension index.

    Args:
        probe: a trained :class:`~xalign.probe.LatentProbe` (W (d, C), b (C,)).
        X_dev: (N_dev, d) float, y_dev: (N_dev,) int labels in [0, C).
        k: number of neurons, 1 <= k <= d.
        X_test, y_test: optional test set (both or neither) for the test MI/accuracy path.
        chunk_bytes: memory bound of one candidate chunk (<= 64 MiB).
        prune: skip candidates whose concavity upper bound (see :func:`_pick_pruned`)
            cannot beat the best exact score; same picks as ``prune=False`` (exhaustive).

    Returns:
        :class:`SelectionResult` with ``method="greedy"``.

    Raises:
        ValueError: one line, for k out of range, shape/label mismatches, NaN/inf inputs.
    """
    d = probe.n_dims
    _check_k(k, d, "greedy_select")
    if not 0 < chunk_bytes <= _MAX_CHUNK_BYTES:
        raise ValueError(f"greedy_select: chunk_bytes={chunk_bytes} must be in (0, {_MAX_CHUNK_BYTES}]")
    dev, test = _eval_sets(probe, X_dev, y_dev, X_test, y_test, "greedy_select")
    XT, y = dev.XT, dev.y
    W, WT = probe.W, probe.W.T.contiguous()
    onehotT = torch.zeros(probe.n_classes, y.shape[0]).scatter_(0, y[None, :], 1.0)  # (C, N)
    lin = (onehotT @ XT.T).T.mul_(W).sum(dim=1, dtype=torch.float64)  # (d,) Σ_n x[n,c] W[c,y_n]
    # per-example magnitude of the largest added logit, for the pruning margin
    xw = (XT.abs() * W.abs().amax(dim=1, keepdim=True)).amax(dim=0)  # (N,)
    remaining = torch.ones(d, dtype=torch.bool)
    neurons: list[int] = []
    for _ in range(k):
        cand = remaining.nonzero().squeeze(1)
        if prune:
            c = _pick_pruned(dev.ZT, XT, W, WT, y, onehotT, lin, xw, cand, chunk_bytes)
        else:
            scores = _candidate_loglik(dev.ZT, XT, WT, y, lin, cand, chunk_bytes)
            c = int(cand[scores == scores.max()].min())
        neurons.append(c)
        remaining[c] = False
        for path in (dev, test):
            if path is not None:
                path.add(c)
    return _result(probe, neurons, dev, test, "greedy")


def weight_mass_select(X_train: Tensor, y_train: Tensor, n_classes: int, X_dev: Tensor, y_dev: Tensor,
                       k: int = 50, X_test: Tensor | None = None, y_test: Tensor | None = None,
                       seed: int = 0, config: ProbeConfig | None = None,
                       eval_probe: LatentProbe | None = None) -> SelectionResult:
    """Baseline: top-k dimensions by linear-probe weight mass (NeuroX-style, Dalvi et al. 2019).

    Trains a plain linear softmax probe on all d dims (:func:`xalign.probe.train_linear_probe`
    with ``config``, default minibatch Adam as in NeuroX, ``ProbeConfig(lr=1e-3, batch_size=128,
    seed=seed)``), ranks dimensions by ``Σ_c |W[d, c]|`` (ties: lowest index first) and keeps
    the top k. Weights are not normalised by the input scale, so dimensions of small
    variance with large weights rank high. Full-batch Adam is a poor choice here when d is
    close to N: its first, sign-like steps move every weight by about ``lr`` and early
    stopping then keeps those near-uniform weights, so ``|W|`` says little.

    The MI/accuracy path is computed like :func:`greedy_select`'s: by ``eval_probe``
    (default: the plain linear probe) with the dimensions not yet in the top-t zeroed.

    Args:
        X_train: (N, d) float, y_train: (N,) int labels; n_classes: C.
        X_dev, y_dev: dev set; X_test, y_test: optional test set; k: 1 <= k <= d.

    Returns:
        :class:`SelectionResult` with ``method="weight_mass"``.

    Raises:
        ValueError: one line, as :func:`xalign.probe.train_linear_probe` and for k out of range.
    """
    X_train = _check_X(X_train, "weight_mass_select: X_train")
    _check_k(k, X_train.shape[1], "weight_mass_select")
    cfg = config if config is not None else ProbeConfig(lr=1e-3, batch_size=128, seed=seed)
    lin_probe = train_linear_probe(X_train, y_train, n_classes, cfg)
    mass = lin_probe.W.abs().sum(dim=1)
    neurons = [int(i) for i in torch.sort(mass, descending=True, stable=True).indices[:k]]
    probe = eval_probe if eval_probe is not None else lin_probe
    if probe.W.shape != lin_probe.W.shape:
        raise ValueError(f"weight_mass_select: eval_probe has W {tuple(probe.W.shape)}, "
                         f"expected {tuple(lin_probe.W.shape)}")
    dev, test = _eval_sets(probe, X_dev, y_dev, X_test, y_test, "weight_mass_select")
    for c in neurons:
        for path in (dev, test):
            if path is not None:
                path.add(c)
    return _result(probe, neurons, dev, test, "weight_mass")


def probeless_scores(X: Tensor, y: Tensor, n_classes: int) -> Tensor:
    """Per-neuron Probeless score (Antverg & Belinkov 2022, ICLR, Sec. 2, "Probeless").

    With ``q(z) = mean_{n: y_n = z} X[n, :]`` the mean representation of class z, the score
    of dimension j is ``r_j = Σ_{z < z'} |q(z)_j - q(z')_j|``, the sum over unordered pairs
    of classes of the absolute differences of the class means. (Summing over ordered pairs
    ``(z, z')``, as the paper's ``Σ_{z, z'}`` may be read, gives ``2 r``: same ranking.) No probe
    is trained; the score only sees differences of *per-dimension* means, so information
    carried by a combination of dimensions (e.g. an XOR) with equal class means is invisible.
    Computed in float64 from the sorted class means, ``r_j = Σ_i (2i - C + 1) q_(i)j``
    (``q_(0)j <= ... <= q_(C-1)j``), O(N d + d C log C).

    Args:
        X: (N, d) float representations (e.g. the training split).
        y: (N,) int labels in [0, n_classes); every class must occur at least once.
        n_classes: C >= 2.

    Returns:
        (d,) float64 scores, in the units of X (a sum of differences of means); >= 0.

    Raises:
        ValueError: one line, naming the argument: X not a finite 2-D float tensor,
            y of the wrong shape/dtype or out of range, n_classes < 2, a class with no examples.
    """
    return _probeless(X, y, n_classes, "probeless_scores: X", "probeless_scores: y")


def _probeless(X: Tensor, y: Tensor, n_classes: int, xname: str, yname: str) -> Tensor:
    what = yname.rsplit(":", 1)[0]
    if isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral) or n_classes < 2:
        raise ValueError(f"{what}: n_classes={n_classes!r} must be an int >= 2")
    C = int(n_classes)
    X = _check_X(X, xname)
    y = _check_y(y, yname, X.shape[0], C)
    counts = torch.bincount(y, minlength=C)
    empty = (counts == 0).nonzero().squeeze(1).tolist()
    if empty:
        raise ValueError(f"{yname} has no examples of class(es) {empty[:5]} (of n_classes={C})")
    sums = torch.zeros(C, X.shape[1], dtype=torch.float64).index_add_(0, y, X.to(torch.float64))
    q = sums / counts[:, None].to(torch.float64)  # (C, d) class means
    coef = 2 * torch.arange(C, dtype=torch.float64) - (C - 1)  # (C,)
    return (coef[:, None] * q.sort(dim=0).values).sum(dim=0)


def probeless_select(X_train: Tensor, y_train: Tensor, n_classes: int, X_dev: Tensor, y_dev: Tensor,
                     k: int = 50, X_test: Tensor | None = None, y_test: Tensor | None = None,
                     seed: int = 0, config: ProbeConfig | None = None,
                     eval_probe: LatentProbe | None = None) -> SelectionResult:
    """Probe-free baseline: top-k dimensions by the Probeless score (Antverg & Belinkov 2022, Sec. 2).

    Ranks dimensions by :func:`probeless_scores` on the *training* split (highest first;
    ties, i.e. exactly equal float64 scores, go to the lower dimension index) and keeps the
    top k. The ranking uses no probe. The MI/accuracy path is computed exactly as
    :func:`weight_mass_select`'s: by ``eval_probe`` with the dimensions not yet in the top-t
    zeroed; without ``eval_probe``, by the same plain linear probe :func:`weight_mass_select`
    trains (:func:`xalign.probe.train_linear_probe` with ``config``, default
    ``ProbeConfig(lr=1e-3, batch_size=128, seed=seed)``), so with equal arguments the
    greedy / weight-mass / Probeless rows of one table are scored by the same probe.

    Args:
        X_train: (N, d) float, y_train: (N,) int labels in [0, n_classes), every class present;
            n_classes: C >= 2.
        X_dev, y_dev: dev set; X_test, y_test: optional test set (both or neither); k: 1 <= k <= d.
        seed, config: of the default evaluation probe (unused when ``eval_probe`` is given).
        eval_probe: a probe with W of shape (d, C) that scores the path.

    Returns:
        :class:`SelectionResult` with ``method="probeless"``.

    Raises:
        ValueError: one line, as :func:`probeless_scores`, for k out of range, an
            ``eval_probe`` of the wrong shape, and as :func:`xalign.probe.train_linear_probe`.
    """
    what = "probeless_select"
    X_train = _check_X(X_train, f"{what}: X_train")
    d = X_train.shape[1]
    _check_k(k, d, what)
    scores = _probeless(X_train, y_train, n_classes, f"{what}: X_train", f"{what}: y_train")
    neurons = [int(i) for i in torch.sort(scores, descending=True, stable=True).indices[:k]]
    if eval_probe is None:
        cfg = config if config is not None else ProbeConfig(lr=1e-3, batch_size=128, seed=seed)
        probe = train_linear_probe(X_train, y_train, n_classes, cfg)
    else:
        probe = eval_probe
        if tuple(probe.W.shape) != (d, int(n_classes)):
            raise ValueError(f"{what}: eval_probe has W {tuple(probe.W.shape)}, expected {(d, int(n_classes))}")
    dev, test = _eval_sets(probe, X_dev, y_dev, X_test, y_test, what)
    for c in neurons:
        for path in (dev, test):
            if path is not None:
                path.add(c)
    return _result(probe, neurons, dev, test, "probeless")


def selection_agreement(a: list[int], b: list[int]) -> float:
    """Agreement ``|A ∩ B| / k`` of two top-k neuron selections (e.g. two methods, one dataset).

    The same quantity as the cross-lingual overlap rate of :mod:`xalign.overlap` (Wang et al.
    2024, Sec. 3), for two plain lists; order within a list is ignored. Chance level for two
    independent random k-subsets of d dims is k / d.

    Args:
        a, b: k >= 1 distinct int indices each, same k.

    Returns:
        float in [0, 1] (a fraction of k).

    Raises:
        ValueError: one line, for empty lists, lists of different lengths, non-int or
            repeated indices.
    """
    for name, s in (("a", a), ("b", b)):
        if (not isinstance(s, (list, tuple)) or not s
                or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) for c in s)):
            raise ValueError(f"selection_agreement: {name} must be a non-empty list of ints, got {s!r:.60}")
        if len(set(s)) != len(s):
            raise ValueError(f"selection_agreement: {name} has repeated neurons: {s!r:.60}")
    if len(a) != len(b):
        raise ValueError(f"selection_agreement: a and b must have the same length k, got {len(a)} and {len(b)}")
    return len(set(int(c) for c in a) & set(int(c) for c in b)) / len(a)


@dataclass
class StabilityResult:
    """Neurons chosen by stability selection (:func:`stability_select`).

    Attributes:
        neurons: the k dimensions with the highest selection frequency (ties: earlier mean
            position on the greedy paths, then the lower index).
        frequency: (d,) float, fraction of the runs (probe seeds x dev resamples) whose
            greedy top-k contains each dimension.
        n_runs: number of greedy runs counted.
        threshold: the frequency ``π_thr`` asked for; ``stable`` = dimensions at or above it
            (may be fewer or more than k).
        stable: those dimensions, by decreasing frequency.
    """

    neurons: list[int]
    frequency: Tensor
    n_runs: int
    threshold: float
    stable: list[int]


def selection_frequency(selections: list[list[int]], d: int, k: int, threshold: float = 0.6) -> StabilityResult:
    """Stability selection from given top-k selections (Meinshausen & Bühlmann 2010, Sec. 2).

    The frequency of a dimension is the fraction of ``selections`` containing it; the result
    keeps the k most frequent (k fixed, as the overlap rate needs; ties broken by the mean
    position at which the runs picked the dimension, a dimension a run did not pick
    counting as position k, then by the lower index), and lists the dimensions with
    frequency >= ``threshold`` (M&B's ``π_thr``, 0.6-0.9 in their paper).

    Args:
        selections: R >= 1 lists of distinct ints in [0, d), each of length >= k.
        d: number of dimensions. k: 1 <= k <= d. threshold: in (0, 1].

    Raises:
        ValueError: empty ``selections``, a selection shorter than k or out of range, k or
            threshold out of range.
    """
    _check_k(k, d, "selection_frequency")
    if not selections:
        raise ValueError("selection_frequency: no selections")
    if not 0 < threshold <= 1:
        raise ValueError(f"selection_frequency: threshold={threshold} must be in (0, 1]")
    pos = torch.full((len(selections), d), float(k), dtype=torch.float64)
    for r, sel in enumerate(selections):
        if len(sel) < k or len(set(sel)) != len(sel) or any(not 0 <= int(c) < d for c in sel):
            raise ValueError(f"selection_frequency: selection {r} must be >= {k} distinct ints in [0, {d}), got {sel!r:.60}")
        pos[r, torch.tensor([int(c) for c in sel[:k]])] = torch.arange(k, dtype=torch.float64)
    freq = (pos < k).to(torch.float64).mean(dim=0)
    mean_pos = pos.mean(dim=0)
    order = sorted(range(d), key=lambda c: (-float(freq[c]), float(mean_pos[c]), c))
    stable = [c for c in order if float(freq[c]) >= threshold - 1e-12]
    return StabilityResult(neurons=order[:k], frequency=freq.to(torch.float32), n_runs=len(selections),
                           threshold=threshold, stable=stable)


def stability_select(probes: list[LatentProbe], X_dev: Tensor, y_dev: Tensor, k: int = 50,
                     n_resamples: int = 10, fraction: float = 0.5, threshold: float = 0.6,
                     seed: int = 0) -> StabilityResult:
    """Stability selection over probe seeds and dev subsamples (Meinshausen & Bühlmann 2010).

    Greedy selection (:func:`greedy_select`) is run with every probe (one per seed) on
    ``n_resamples`` random subsamples of the dev set without replacement, each of
    ``round(fraction * N_dev)`` examples (M&B's subsamples of size N/2), or on the whole dev
    set when ``n_resamples == 0``; then :func:`selection_frequency`. Neurons the greedy path
    picks only because of one seed's or one subsample's noise are rarely chosen again, so
    the frequency ranks them below consistently informative ones.

    Args:
        probes: R >= 1 trained probes of one dataset (e.g. :func:`xalign.probe.train_probes`).
        X_dev: (N_dev, d) float, y_dev: (N_dev,) int labels. k: 1 <= k <= d.
        n_resamples: subsamples per probe (0 = the whole dev set once per probe).
        fraction: subsample size as a fraction of N_dev, in (0, 1).
        threshold: ``π_thr`` of :func:`selection_frequency`.
        seed: seeds the subsamples.

    Returns:
        :class:`StabilityResult` over ``R * max(n_resamples, 1)`` runs.

    Raises:
        ValueError: no probes, probes of different shapes, n_resamples < 0, fraction out
            of range or leaving fewer than 1 example, and as :func:`greedy_select`.
    """
    if not probes or len({(p.n_dims, p.n_classes) for p in probes}) != 1:
        raise ValueError("stability_select: give one or more probes of the same shape")
    if n_resamples < 0 or not 0 < fraction < 1:
        raise ValueError(f"stability_select: n_resamples={n_resamples} must be >= 0 and fraction={fraction} in (0, 1)")
    n = X_dev.shape[0]
    m = int(round(fraction * n))
    if n_resamples and m < 1:
        raise ValueError(f"stability_select: fraction={fraction} of {n} dev examples leaves none")
    gen = torch.Generator().manual_seed(seed)
    subsets = [torch.randperm(n, generator=gen)[:m].sort().values for _ in range(n_resamples)] or [None]
    runs = []
    for probe in probes:
        for idx in subsets:
            Xs, ys = (X_dev, y_dev) if idx is None else (X_dev[idx], y_dev[idx])
            runs.append(greedy_select(probe, Xs, ys, k=k).neurons)
    return selection_frequency(runs, probes[0].n_dims, k, threshold)


@dataclass
class RetrainedMI:
    """Held-out MI / accuracy of plain linear probes retrained on the selected neurons and on all d.

    The reference numbers of :func:`retrained_mi`. ``*_subset``: a probe trained on the k
    selected dimensions only; ``*_all``: a probe trained on all d dimensions. MI is the
    normalised MI of :func:`normalised_mi` (bits/bits) with the add-one smoothed training
    label prior; ``test_*`` are ``None`` without a test set.

    Attributes:
        neurons: the dimensions of the subset probe, in the order given.
        dev_mi_subset, dev_acc_subset, test_mi_subset, test_acc_subset: subset probe.
        dev_mi_all, dev_acc_all, test_mi_all, test_acc_all: all-d probe.
        l2_subset, l2_all: the L2 strength chosen on the held-out split for each probe.
    """

    neurons: list[int]
    dev_mi_subset: float
    dev_acc_subset: float
    test_mi_subset: float | None
    test_acc_subset: float | None
    dev_mi_all: float
    dev_acc_all: float
    test_mi_all: float | None
    test_acc_all: float | None
    l2_subset: float
    l2_all: float


def retrained_mi(X_train: Tensor, y_train: Tensor, n_classes: int, neurons: list[int],
                 X_dev: Tensor, y_dev: Tensor, X_test: Tensor | None = None, y_test: Tensor | None = None,
                 config: ProbeConfig = ProbeConfig()) -> RetrainedMI:
    """Reference MI: linear probes retrained on the selected subset and on all d dimensions.

    The greedy path (:func:`greedy_select`) scores subsets with the *one* latent-variable
    probe, trained under random masks that keep about half of the dimensions; that is the
    method (Stańczak et al. 2023; Wang et al. 2024 Sec. 2.1), but the same probe with *all*
    d dimensions on (``SelectionResult.dev_mi_all``) sees inputs far from its training masks
    and is over-confident. This function gives the clean comparison, in the spirit of the
    "upper bound" probe of the reference code (``--trainer upperbound``, which retrains a
    probe for the evaluated set of dimensions; copenlu/multilingual-typology-probing,
    Stańczak et al. 2022): one L2-regularised linear softmax probe on ``X[:, neurons]`` and
    one on all d dims (:func:`xalign.probe.train_l2_probe`: fitted by L-BFGS, L2
    strength chosen on the seeded held-out part of the training split), each scored on
    dev (and test). Both estimate the same held-out quantity, so up to estimation error
    the all-d MI is >= the subset MI. Compare them on **test**: the neurons were chosen on
    dev, so any dev MI of the subset is optimistic (markedly so with a few hundred dev words).

    Args:
        X_train: (N, d) float, y_train: (N,) int labels in [0, n_classes); the data the
            latent probe was trained on (same standardisation as X_dev / X_test).
        n_classes: C >= 2.
        neurons: the selected dimensions (e.g. ``SelectionResult.neurons``), distinct ints in [0, d).
        X_dev, y_dev: dev set; X_test, y_test: optional test set (both or neither).
        config: its ``held_out_fraction`` and ``seed`` fix the split that chooses the L2 strength.

    Returns:
        :class:`RetrainedMI`.

    Raises:
        ValueError: one line, for repeated or out-of-range neurons, shape or label mismatches,
            NaN/inf inputs, or as :func:`xalign.probe.train_l2_probe`.
    """
    what = "retrained_mi"
    X_train = _check_X(X_train, f"{what}: X_train")
    d = X_train.shape[1]
    if (not isinstance(neurons, (list, tuple)) or not neurons
            or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c < d for c in neurons)):
        raise ValueError(f"{what}: neurons must be a non-empty list of ints in [0, d={d}), got {neurons!r}")
    if len(set(neurons)) != len(neurons):
        raise ValueError(f"{what}: neurons has repeated dimensions: {neurons!r}")
    if (X_test is None) != (y_test is None):
        raise ValueError(f"{what}: give both X_test and y_test, or neither")
    sets = {"dev": (_check_X(X_dev, f"{what}: X_dev", d=d), y_dev)}
    if X_test is not None:
        sets["test"] = (_check_X(X_test, f"{what}: X_test", d=d), y_test)
    for name, (X, y) in sets.items():
        if X.shape[0] == 0:
            raise ValueError(f"{what}: X_{name} is empty")
        sets[name] = (X, _check_y(y, f"{what}: y_{name}", X.shape[0], int(n_classes)))
    idx = torch.tensor(neurons, dtype=torch.long)
    sub = train_l2_probe(X_train[:, idx], y_train, n_classes, config)
    full = train_l2_probe(X_train, y_train, n_classes, config)
    out: dict = {}
    for tag, probe, cols in (("subset", sub, idx), ("all", full, None)):
        for name in ("dev", "test"):
            if name not in sets:
                out[f"{name}_mi_{tag}"] = out[f"{name}_acc_{tag}"] = None
                continue
            X, y = sets[name]
            lp = probe.log_probs(X if cols is None else X[:, cols])
            out[f"{name}_mi_{tag}"] = normalised_mi(lp, y, probe.label_prior)
            out[f"{name}_acc_{tag}"] = accuracy(lp, y)
    return RetrainedMI(neurons=[int(c) for c in neurons], l2_subset=sub.history[sub.best_epoch]["l2"],
                       l2_all=full.history[full.best_epoch]["l2"], **out)


# ---------------------------------------------------------------------------------------


def _check_k(k: int, d: int, what: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
        raise ValueError(f"{what}: k={k!r} must be an int in [1, d={d}]")


def _eval_sets(probe: LatentProbe, X_dev: Tensor, y_dev: Tensor, X_test: Tensor | None,
               y_test: Tensor | None, what: str) -> tuple[_Path, _Path | None]:
    if (X_test is None) != (y_test is None):
        raise ValueError(f"{what}: give both X_test and y_test, or neither")
    sets = []
    for name, X, y in (("dev", X_dev, y_dev), ("test", X_test, y_test)):
        if X is None:
            sets.append(None)
            continue
        X = _check_X(X, f"{what}: X_{name}", d=probe.n_dims)
        if X.shape[0] == 0:
            raise ValueError(f"{what}: X_{name} is empty")
        y = _check_y(y, f"{what}: y_{name}", X.shape[0], probe.n_classes)
        sets.append(_Path(probe, X, y))
    return sets[0], sets[1]


def _result(probe: LatentProbe, neurons: list[int], dev: _Path, test: _Path | None,
            method: str) -> SelectionResult:
    def all_dims(p: _Path) -> tuple[float, float]:
        lp = probe.log_probs(p.XT.T)
        return normalised_mi(lp, p.y, probe.label_prior), accuracy(lp, p.y)

    dev_mi_all, dev_acc_all = all_dims(dev)
    test_mi_all, test_acc_all = all_dims(test) if test is not None else (None, None)
    return SelectionResult(
        neurons=neurons, dev_loglik=dev.loglik, dev_mi=dev.mi, dev_acc=dev.acc,
        test_mi=test.mi if test is not None else None,
        test_acc=test.acc if test is not None else None,
        dev_mi_all=dev_mi_all, dev_acc_all=dev_acc_all,
        test_mi_all=test_mi_all, test_acc_all=test_acc_all, method=method,
        dev_gain=dev.gain, dev_gain_se=dev.gain_se)
