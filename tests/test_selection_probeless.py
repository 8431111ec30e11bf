"""The Probeless neuron ranking (Antverg & Belinkov 2022) in xalign.selection, on planted data."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
import torch

from xalign.probe import ProbeConfig, train_probe
from xalign.selection import (
    SelectionResult,
    accuracy,
    greedy_select,
    normalised_mi,
    probeless_scores,
    probeless_select,
    selection_agreement,
    weight_mass_select,
)

D, C = 32, 3
PLANTED = {5: 3.0, 17: 2.0, 26: 1.0}  # dim -> size of the class-mean shift (in noise SDs)


def planted(n: int, seed: int, shifts: dict[int, float] = PLANTED):
    """d = 32 N(0, 1) dims, 3 classes; in each planted dim j the class-z mean is
    ``shifts[j] * (z - 1)`` (classes at -s, 0, +s). Returns X (n, d) float32, y (n,) int64."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    X = torch.randn(n, D, generator=g)
    for j, s in shifts.items():
        X[:, j] += s * (y.float() - 1)
    return X, y


def brute_force_scores(X: torch.Tensor, y: torch.Tensor, n_classes: int) -> np.ndarray:
    """Σ over unordered class pairs of |mean_z - mean_z'|, per dim, in plain numpy float64."""
    Xn, yn = X.double().numpy(), y.numpy()
    means = [Xn[yn == z].mean(axis=0) for z in range(n_classes)]
    return sum(np.abs(means[a] - means[b]) for a, b in combinations(range(n_classes), 2))


def one_line_error(fn, *args, match: str, **kw) -> None:
    with pytest.raises(ValueError, match=match) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value), str(e.value)


# ---- planted recovery -----------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_planted_dims_ranked_on_top_in_order_of_shift_size(seed):
    X, y = planted(3000, seed)
    scores = probeless_scores(X, y, C)
    assert scores.shape == (D,) and scores.dtype == torch.float64
    np.testing.assert_allclose(scores.numpy(), brute_force_scores(X, y, C), rtol=1e-10, atol=1e-12)
    by_size = sorted(PLANTED, key=PLANTED.get, reverse=True)
    top = torch.sort(scores, descending=True, stable=True).indices[:3].tolist()
    assert top == by_size, (top, scores[by_size])
    # units of X: the expected score of a planted dim is s * (1 + 1 + 2) = 4 s
    for j, s in PLANTED.items():
        assert float(scores[j]) == pytest.approx(4 * s, rel=0.1)


def test_brute_force_agreement_on_skewed_classes_and_scale():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(400, 10, generator=g) * torch.exp(torch.randn(10, generator=g)) + 5
    y = torch.multinomial(torch.tensor([0.6, 0.25, 0.1, 0.05]), 400, replacement=True, generator=g)
    y[:4] = torch.arange(4)  # every class present
    np.testing.assert_allclose(probeless_scores(X, y, 4).numpy(), brute_force_scores(X, y, 4), rtol=1e-10)
    # same units as X: scaling a dim scales its score; a shift changes nothing; permuting permutes
    s = probeless_scores(X, y, 4)
    X2 = X.clone()
    X2[:, 2] = X2[:, 2] * 7.0 - 3.0
    s2 = probeless_scores(X2, y, 4)
    assert float(s2[2]) == pytest.approx(7.0 * float(s[2]), rel=1e-5)
    perm = torch.randperm(10, generator=g)
    torch.testing.assert_close(probeless_scores(X[:, perm], y, 4), s[perm])


def test_ties_go_to_the_lower_index():
    X, y = planted(600, seed=1)
    X[:, 9] = X[:, 5]  # an exact copy of the strongest planted dim: equal scores
    X[:, 2] = X[:, 5]
    res = probeless_select(X, y, C, X, y, k=4)
    assert res.neurons[:3] == [2, 5, 9] and res.neurons[3] == 17


def test_probeless_select_agrees_with_greedy_on_planted_data():
    X, y = planted(2400, seed=0)
    probe = train_probe(X[:1600], y[:1600], C, ProbeConfig(seed=0))
    pl = probeless_select(X[:1600], y[:1600], C, X[1600:2000], y[1600:2000], k=3,
                          X_test=X[2000:], y_test=y[2000:], eval_probe=probe)
    gr = greedy_select(probe, X[1600:2000], y[1600:2000], k=3)
    assert isinstance(pl, SelectionResult) and pl.method == "probeless"
    assert sorted(pl.neurons) == sorted(PLANTED)
    assert selection_agreement(pl.neurons, gr.neurons) == 1.0
    assert pl.dev_acc[-1] > 0.85 and pl.test_acc is not None and pl.test_acc[-1] > 0.85


# ---- graceful failure: information only in a combination of dims ---------------------

def test_xor_of_two_dims_is_invisible_to_probeless():
    """y = [x_a * x_b > 0]: the label is a deterministic function of (x_a, x_b), but by
    symmetry every class mean is 0 in every dim, so Probeless scores a and b like noise.

    No contrast with greedy_select is asserted: its probe is linear in x (logits x W + b),
    and no linear function of (x_a, x_b) predicts the sign of x_a * x_b, so greedy cannot
    find an XOR either; this test only pins down Probeless's behaviour.
    """
    a, b = 11, 23
    ranks, both_top3 = [], 0
    for seed in range(10):
        g = torch.Generator().manual_seed(100 + seed)
        X = torch.randn(3000, D, generator=g)
        y = (X[:, a] * X[:, b] > 0).long()
        assert float(((X[:, a] * X[:, b] > 0).long() == y).float().mean()) == 1.0  # fully informative
        scores = probeless_scores(X, y, 2)
        order = torch.sort(scores, descending=True, stable=True).indices.tolist()
        ra, rb = order.index(a), order.index(b)
        ranks += [ra, rb]
        both_top3 += ra < 3 and rb < 3
        # their scores are within the spread of the 30 noise dims'
        noise = scores[[j for j in range(D) if j not in (a, b)]]
        assert float(scores[[a, b]].max()) < float(noise.mean() + 4 * noise.std())
    # under "a, b are like noise" ranks are uniform on 0..31 (mean 15.5, SE of the mean of
    # 20 ranks ~2.1) and both land in the top 3 with probability ~0.6 % per seed
    assert both_top3 <= 1, ranks
    assert np.mean(ranks) > 8, ranks


# ---- interface consistency with weight_mass_select -------------------------------------

def test_same_fields_and_scoring_as_weight_mass():
    X, y = planted(1500, seed=4)
    Xtr, ytr, Xdev, ydev, Xte, yte = X[:900], y[:900], X[900:1200], y[900:1200], X[1200:], y[1200:]
    probe = train_probe(Xtr, ytr, C, ProbeConfig(seed=0))
    k = 6
    pl = probeless_select(Xtr, ytr, C, Xdev, ydev, k=k, X_test=Xte, y_test=yte, eval_probe=probe)
    wm = weight_mass_select(Xtr, ytr, C, Xdev, ydev, k=k, X_test=Xte, y_test=yte, eval_probe=probe)
    assert len(pl.neurons) == len(set(pl.neurons)) == k
    for f in ("neurons", "dev_loglik", "dev_mi", "dev_acc", "test_mi", "test_acc", "dev_gain", "dev_gain_se"):
        assert len(getattr(pl, f)) == len(getattr(wm, f)) == k, f
    # the same probe with all dims on: identical "ALL" numbers
    assert (pl.dev_mi_all, pl.dev_acc_all, pl.test_mi_all, pl.test_acc_all) == \
        (wm.dev_mi_all, wm.dev_acc_all, wm.test_mi_all, wm.test_acc_all)
    # every step is the eval probe on the top-t dims, recomputed by brute force
    for res in (pl, wm):
        for t in range(1, k + 1):
            mask = torch.zeros(D)
            mask[res.neurons[:t]] = 1.0
            lp = probe.log_probs(Xdev, mask)
            assert res.dev_mi[t - 1] == pytest.approx(normalised_mi(lp, ydev, probe.label_prior), abs=1e-5)
            assert res.dev_acc[t - 1] == pytest.approx(accuracy(lp, ydev), abs=1e-6)
    # k = d: the same neuron set for both methods -> the same final MI, that of all dims on
    pl_all = probeless_select(Xtr, ytr, C, Xdev, ydev, k=D, eval_probe=probe)
    wm_all = weight_mass_select(Xtr, ytr, C, Xdev, ydev, k=D, eval_probe=probe)
    assert sorted(pl_all.neurons) == sorted(wm_all.neurons) == list(range(D))
    assert pl_all.dev_mi[-1] == pytest.approx(wm_all.dev_mi[-1], abs=1e-5)
    assert pl_all.dev_mi[-1] == pytest.approx(pl_all.dev_mi_all, abs=1e-5)
    # without eval_probe both are scored by the same default linear probe (same seed)
    pl_d = probeless_select(Xtr, ytr, C, Xdev, ydev, k=k, seed=3)
    wm_d = weight_mass_select(Xtr, ytr, C, Xdev, ydev, k=k, seed=3)
    assert pl_d.neurons == pl.neurons and pl_d.test_mi is None
    assert (pl_d.dev_mi_all, pl_d.dev_acc_all) == (wm_d.dev_mi_all, wm_d.dev_acc_all)


def test_selection_agreement():
    assert selection_agreement([1, 2, 3], [3, 2, 1]) == 1.0
    assert selection_agreement([1, 2, 3], [3, 4, 5]) == pytest.approx(1 / 3)
    assert selection_agreement([0], [1]) == 0.0
    one_line_error(selection_agreement, [1, 2], [1, 2, 3], match="same length k, got 2 and 3")
    one_line_error(selection_agreement, [], [], match="a must be a non-empty list of ints")
    one_line_error(selection_agreement, [1, 1], [1, 2], match="a has repeated neurons")
    one_line_error(selection_agreement, [1, 2], [1.0, 2], match="b must be a non-empty list of ints")


# ---- errors ---------------------------------------------------------------------------

def test_input_errors_are_one_line_value_errors():
    X, y = planted(60, seed=0)
    y_missing = torch.where(y == 1, torch.zeros_like(y), y)
    one_line_error(probeless_scores, X, y_missing, C, match=r"probeless_scores: y has no examples of class\(es\) \[1\]")
    one_line_error(probeless_scores, X, y + 1, C, match=r"probeless_scores: y has labels in \[1, 3\], expected \[0, 3\)")
    one_line_error(probeless_scores, X, y[:10], C, match=r"probeless_scores: y must have shape \(60,\)")
    one_line_error(probeless_scores, X, y.float(), C, match="probeless_scores: y must be an integer tensor")
    one_line_error(probeless_scores, X.masked_fill(X > 2, float("inf")), y, C,
                   match="probeless_scores: X contains NaN or inf")
    one_line_error(probeless_scores, X.masked_fill(X > 2, float("nan")), y, C,
                   match="probeless_scores: X contains NaN or inf")
    one_line_error(probeless_scores, X[0], y, C, match=r"probeless_scores: X must be 2-D")
    one_line_error(probeless_scores, X, y, 1, match="probeless_scores: n_classes=1 must be an int >= 2")
    one_line_error(probeless_select, X, y_missing, C, X, y, k=2,
                   match=r"probeless_select: y_train has no examples of class\(es\) \[1\]")
    one_line_error(probeless_select, X.masked_fill(X > 2, float("nan")), y, C, X, y, k=2,
                   match="probeless_select: X_train contains NaN or inf")
    one_line_error(probeless_select, X, y, C, X, y, k=33, match=r"probeless_select: k=33 must be an int in \[1, d=32\]")
    one_line_error(probeless_select, X, y, C, X[:, :5], y, k=2, match="probeless_select: X_dev has 5 dims")
    one_line_error(probeless_select, X, y, C, X, y, k=2, X_test=X,
                   match="probeless_select: give both X_test and y_test, or neither")
    probe4 = train_probe(X, torch.remainder(y, 4), 4, ProbeConfig(seed=0, max_epochs=2))
    one_line_error(probeless_select, X, y, C, X, y, k=2, eval_probe=probe4,
                   match=r"probeless_select: eval_probe has W \(32, 4\), expected \(32, 3\)")
