"""Greedy neuron selection and the weight-mass baseline (xalign.selection) on planted data."""

from __future__ import annotations

import math
import numpy as np

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xalign.probe import L2_GRID, LatentProbe, ProbeConfig, label_prior, train_l2_probe, train_probe
from xalign.selection import (
    RetrainedMI,
    SelectionResult,
    accuracy,
    greedy_select,
    normalised_mi,
    retrained_mi,
    weight_mass_select,
)


def planted_with_distractors(n: int, d: int, C: int, n_inf: int, seed: int):
    """Class code in ``n_inf`` informative dims (±1.5 by bit), ``n_inf`` distractor dims that
    are noisy copies of them (corr ~0.6), the rest N(0, 1) noise; dims shuffled.

    Returns X (n, d), y (n,), informative dims, distractor dims.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    B = max(1, math.ceil(math.log2(C)))
    bits = torch.tensor([[(c >> (j % B)) & 1 for j in range(n_inf)] for c in range(C)]).float()
    inf_block = 1.5 * (2 * bits - 1)[y] + torch.randn(n, n_inf, generator=g)
    dis_block = 0.6 * inf_block + 1.2 * torch.randn(n, n_inf, generator=g)
    X = torch.randn(n, d, generator=g)
    perm = torch.randperm(d, generator=g)
    inf, dis = perm[:n_inf], perm[n_inf:2 * n_inf]
    X[:, inf], X[:, dis] = inf_block, dis_block
    return X, y, inf.tolist(), dis.tolist()


def random_probe(d: int, C: int, seed: int) -> LatentProbe:
    g = torch.Generator().manual_seed(seed)
    y_tr = torch.randint(0, C, (50,), generator=g)
    return LatentProbe(W=torch.randn(d, C, generator=g), b=torch.randn(C, generator=g) * 0.5,
                       phi=torch.zeros(d), label_prior=label_prior(y_tr, C), history=[], best_epoch=0)


def brute_force_loglik(probe: LatentProbe, X, y, dims: list[int]) -> float:
    mask = torch.zeros(X.shape[1])
    mask[dims] = 1.0
    Xm = (X * mask).double()
    lp = torch.log_softmax(Xm @ probe.W.double() + probe.b.double(), dim=1)
    return float(lp.gather(1, y[:, None]).mean())


# ---- planted recovery ------------------------------------------------------------------

@pytest.fixture(scope="module")
def planted_1024():
    X, y, inf, dis = planted_with_distractors(2200, 1024, 4, 8, seed=0)
    probe = train_probe(X[:1500], y[:1500], 4, ProbeConfig(seed=0))
    return X, y, inf, dis, probe


def test_greedy_recovers_planted_dims_among_1024(planted_1024):
    X, y, inf, dis, probe = planted_1024
    res = greedy_select(probe, X[1500:1900], y[1500:1900], k=8, X_test=X[1900:], y_test=y[1900:])
    assert isinstance(res, SelectionResult) and res.method == "greedy"
    precision = len(set(res.neurons) & set(inf)) / 8
    assert precision >= 7 / 8, f"precision@8 = {precision:.3f}: {res.neurons} vs planted {sorted(inf)}"
    assert not set(res.neurons) & set(dis), "a distractor (noisy copy of a planted dim) was picked"
    assert len(set(res.neurons)) == 8
    # the path: MI / accuracy grow over the planted picks, end near the all-dims probe
    assert res.dev_loglik == sorted(res.dev_loglik)
    assert res.dev_mi[-1] > res.dev_mi[0] + 0.3
    assert res.dev_acc[-1] > 0.9 and res.test_acc is not None and res.test_acc[-1] > 0.9
    assert res.dev_mi[-1] >= res.dev_mi_all - 0.05
    for seq in (res.dev_loglik, res.dev_mi, res.dev_acc, res.test_mi, res.test_acc):
        assert len(seq) == 8 and all(math.isfinite(v) for v in seq)
    lp_all = probe.log_probs(X[1500:1900])
    assert res.dev_mi_all == pytest.approx(normalised_mi(lp_all, y[1500:1900], probe.label_prior))
    assert res.dev_acc_all == pytest.approx(accuracy(lp_all, y[1500:1900]))
    assert res.test_mi_all is not None and res.test_acc_all is not None


def test_weight_mass_baseline_same_interface(planted_1024):
    X, y, inf, dis, probe = planted_1024
    res = weight_mass_select(X[:1500], y[:1500], 4, X[1500:1900], y[1500:1900], k=8, seed=0,
                             X_test=X[1900:], y_test=y[1900:])
    assert res.method == "weight_mass" and len(res.neurons) == 8
    assert len(set(res.neurons) & set(inf)) >= 7, (res.neurons, inf)
    assert len(res.dev_mi) == len(res.dev_acc) == len(res.dev_loglik) == len(res.test_mi) == 8
    assert res.dev_acc[-1] > 0.9
    # scored by another probe (the latent one) along the same ranking
    res2 = weight_mass_select(X[:1500], y[:1500], 4, X[1500:1900], y[1500:1900], k=8, seed=0,
                              eval_probe=probe)
    assert res2.neurons == res.neurons and res2.test_mi is None
    assert res2.dev_loglik[-1] == pytest.approx(
        brute_force_loglik(probe, X[1500:1900], y[1500:1900], res.neurons), abs=1e-5)


def test_weak_dims_only_separate_together():
    """20 of d = 1024 dims each carry a weak signal (alone ~66% accuracy, Bayes rate Φ(0.4));
    only together do they separate the classes (Bayes rate Φ(0.4 √20) ≈ 96%)."""
    g = torch.Generator().manual_seed(1)
    n_tr, n, d = 3000, 4500, 1024
    dims = torch.randperm(d, generator=g)[:20].tolist()
    y = torch.randint(0, 2, (n,), generator=g)
    X = torch.randn(n, d, generator=g)
    X[:, dims] += 0.4 * (2 * y[:, None].float() - 1)
    probe = train_probe(X[:n_tr], y[:n_tr], 2)
    res = greedy_select(probe, X[n_tr:], y[n_tr:], k=20)
    precision = len(set(res.neurons) & set(dims)) / 20
    assert precision >= 0.9, f"precision@20 = {precision:.2f}: {res.neurons} vs {sorted(dims)}"
    assert res.dev_acc[0] < 0.7  # one dim alone is weak
    assert res.dev_acc[-1] > 0.93  # all of them together separate the classes
    assert res.dev_mi[-1] > 4 * res.dev_mi[0]


def test_same_seed_same_neurons_and_tensors():
    X, y, inf, _ = planted_with_distractors(500, 48, 3, 4, seed=2)
    runs = []
    for _ in range(2):
        probe = train_probe(X[:350], y[:350], 3, ProbeConfig(seed=5, max_epochs=60))
        runs.append((probe, greedy_select(probe, X[350:], y[350:], k=6)))
    (p1, r1), (p2, r2) = runs
    assert torch.equal(p1.W, p2.W) and torch.equal(p1.b, p2.b) and torch.equal(p1.phi, p2.phi)
    assert r1 == r2


def test_chunking_and_pruning_do_not_change_the_result():
    X, y, _, _ = planted_with_distractors(300, 40, 3, 4, seed=3)
    probe = train_probe(X[:200], y[:200], 3, ProbeConfig(max_epochs=50))
    ref = greedy_select(probe, X[200:], y[200:], k=10, prune=False)
    for kw in ({"chunk_bytes": 64}, {"chunk_bytes": 3 * 100 * 4 * 5}, {"prune": True},
               {"prune": True, "chunk_bytes": 3 * 100 * 4 * 2}):
        res = greedy_select(probe, X[200:], y[200:], k=10, **kw)
        assert res.neurons == ref.neurons, kw
        assert res.dev_loglik == pytest.approx(ref.dev_loglik, abs=1e-6)


def test_selecting_every_dim_reproduces_the_full_probe():
    X, y, _, _ = planted_with_distractors(200, 12, 3, 3, seed=4)
    probe = train_probe(X[:150], y[:150], 3, ProbeConfig(max_epochs=50))
    res = greedy_select(probe, X[150:], y[150:], k=12)
    assert sorted(res.neurons) == list(range(12))
    full = float(probe.log_probs(X[150:]).gather(1, y[150:, None]).mean())
    assert res.dev_loglik[-1] == pytest.approx(full, abs=1e-5)
    assert res.dev_mi[-1] == pytest.approx(res.dev_mi_all, abs=1e-5)


def test_greedy_path_can_decrease_without_retraining():
    """Documented behaviour: with no retraining, every remaining dim can hurt; greedy still picks."""
    X = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    y = torch.tensor([0, 1, 0, 1])
    probe = LatentProbe(W=torch.tensor([[3.0, -3.0], [-4.0, 4.0]]), b=torch.zeros(2),
                        phi=torch.zeros(2), label_prior=torch.tensor([0.5, 0.5]), history=[], best_epoch=0)
    res = greedy_select(probe, X, y, k=2)
    assert res.neurons == [0, 1]
    assert res.dev_loglik[1] < res.dev_loglik[0]


# ---- metrics ---------------------------------------------------------------------------

def test_normalised_mi_and_accuracy_definitions():
    y = torch.tensor([0, 0, 1, 2, 2, 2])
    prior = torch.tensor([0.3, 0.2, 0.5])
    assert normalised_mi(torch.log(prior).expand(6, 3), y, prior) == pytest.approx(0.0, abs=1e-6)
    logits = torch.tensor([[2.0, 0, 0], [0, 1, 0], [0, 3, 0], [1, 0, 2], [0, 0, 1], [0, 2, 0]])
    lp = torch.log_softmax(logits, 1)
    h_y = -sum(math.log2(prior[c]) for c in y.tolist()) / 6
    h_yx = -sum(float(lp[i, c]) / math.log(2) for i, c in enumerate(y.tolist())) / 6
    assert normalised_mi(lp, y, prior) == pytest.approx((h_y - h_yx) / h_y)
    assert accuracy(lp, y) == pytest.approx(4 / 6)
    near_perfect = torch.log_softmax(30 * torch.nn.functional.one_hot(y, 3).float(), 1)
    assert normalised_mi(near_perfect, y, prior) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="H\\(Y\\) is 0"):
        normalised_mi(lp[:2], y[:2], torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="labels out of range"):
        accuracy(lp, y + 1)


# ---- errors ----------------------------------------------------------------------------

def test_selection_input_errors():
    probe = random_probe(6, 3, seed=0)
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(20, 6, generator=g), torch.randint(0, 3, (20,), generator=g)
    cases = [
        (dict(k=7), r"k=7 must be an int in \[1, d=6\]"),
        (dict(k=0), r"k=0 must be"),
        (dict(k=2.0), r"k=2.0 must be"),
        (dict(X_dev=X[:, :5]), "X_dev has 5 dims, the probe has 6"),
        (dict(y_dev=y + 1), r"y_dev has labels in \[1, 3\], expected \[0, 3\)"),
        (dict(y_dev=y[:5]), r"y_dev must have shape \(20,\)"),
        (dict(X_test=X), "give both X_test and y_test, or neither"),
        (dict(X_dev=X.masked_fill(X > 2, float("nan"))), "X_dev contains NaN or inf"),
        (dict(chunk_bytes=2**30), "chunk_bytes=1073741824 must be in"),
        (dict(X_dev=X[:0], y_dev=y[:0]), "X_dev is empty"),
    ]
    for kw, msg in cases:
        args = dict(X_dev=X, y_dev=y, k=3) | kw
        with pytest.raises(ValueError, match=msg):
            greedy_select(probe, **args)
    with pytest.raises(ValueError, match=r"weight_mass_select: k=9 must be an int in \[1, d=6\]"):
        weight_mass_select(X, y, 3, X, y, k=9)


# ---- properties ------------------------------------------------------------------------

small = dict(d=st.integers(2, 16), n=st.integers(3, 30), C=st.integers(2, 4), seed=st.integers(0, 10**6))
prop = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _data(d, n, C, seed):
    probe = random_probe(d, C, seed)
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, d, generator=g) * torch.exp(torch.randn(d, generator=g))
    return probe, X, torch.randint(0, C, (n,), generator=g)


@prop
@given(**small, prune=st.booleans())
def test_incremental_selection_equals_brute_force(d, n, C, seed, prune):
    probe, X, y = _data(d, n, C, seed)
    k = min(d, 5)
    res = greedy_select(probe, X, y, k=k, prune=prune, chunk_bytes=256)
    chosen: list[int] = []
    for t, c in enumerate(res.neurons):
        scores = {j: brute_force_loglik(probe, X, y, chosen + [j]) for j in range(d) if j not in chosen}
        best = max(scores.values())
        # the pick is optimal among all candidates (up to float32 rounding)
        assert scores[c] >= best - 1e-5
        assert res.dev_loglik[t] == pytest.approx(scores[c], abs=1e-5)
        chosen.append(c)


@prop
@given(**small)
def test_permuting_dims_permutes_the_selection(d, n, C, seed):
    probe, X, y = _data(d, n, C, seed)
    perm = torch.randperm(d, generator=torch.Generator().manual_seed(seed))
    pprobe = LatentProbe(W=probe.W[perm], b=probe.b, phi=probe.phi[perm], label_prior=probe.label_prior,
                         history=[], best_epoch=0)
    k = min(d, 5)
    a = greedy_select(probe, X, y, k=k)
    b = greedy_select(pprobe, X[:, perm], y, k=k)
    for t in range(k):
        assert b.dev_loglik[t] == pytest.approx(a.dev_loglik[t], abs=1e-5)
        if int(perm[b.neurons[t]]) != a.neurons[t]:
            break  # an exact tie between two dims: the paths may legitimately part here
    else:
        assert [int(perm[j]) for j in b.neurons] == a.neurons


@prop
@given(**small)
def test_each_step_is_at_least_as_good_as_any_other_single_addition(d, n, C, seed):
    """The greedy path never falls below what any other candidate would have given; it rises
    whenever some candidate improves on the current set."""
    probe, X, y = _data(d, n, C, seed)
    k = min(d, 4)
    res = greedy_select(probe, X, y, k=k)
    prev = brute_force_loglik(probe, X, y, [])
    for t in range(k):
        chosen = res.neurons[:t]
        cand = [brute_force_loglik(probe, X, y, chosen + [j]) for j in range(d) if j not in chosen]
        if max(cand) > prev + 1e-5:
            assert res.dev_loglik[t] > prev
        prev = res.dev_loglik[t]


# ---- all-d reference: retrained probes ---------------------------------------------------

def test_retrained_mi_gives_a_meaningful_all_d_reference(planted_1024):
    """The all-d reference MI (L2 probe retrained on all 1024 dims) is >= the top-k MI up to a
    small tolerance (over-fitting 1024 weights on 1500 words), on held-out test data."""
    X, y, inf, dis, probe = planted_1024
    res = greedy_select(probe, X[1500:1900], y[1500:1900], k=8, X_test=X[1900:], y_test=y[1900:])
    ref = retrained_mi(X[:1500], y[:1500], 4, res.neurons, X[1500:1900], y[1500:1900],
                       X[1900:], y[1900:], config=ProbeConfig(seed=0))
    assert isinstance(ref, RetrainedMI) and ref.neurons == res.neurons
    assert ref.test_mi_all >= ref.test_mi_subset - 0.05, ref
    assert ref.test_mi_all >= res.test_mi[-1] - 0.05, (ref, res.test_mi[-1])
    # the planted dims carry (nearly) all the information, so the subset probe is close to it
    assert ref.test_mi_subset > 0.9 and ref.test_acc_subset > 0.95
    assert ref.l2_all in L2_GRID and ref.l2_subset in L2_GRID
    # the numbers are those of the documented probe, scored on the documented sets
    idx = torch.tensor(res.neurons)
    sub = train_l2_probe(X[:1500][:, idx], y[:1500], 4, ProbeConfig(seed=0))
    lp = sub.log_probs(X[1900:][:, idx])
    assert ref.test_mi_subset == pytest.approx(normalised_mi(lp, y[1900:], sub.label_prior))
    assert ref.dev_acc_subset == pytest.approx(accuracy(sub.log_probs(X[1500:1900][:, idx]), y[1500:1900]))


def test_retrained_mi_without_test_and_input_errors():
    X, y, inf, _ = planted_with_distractors(300, 12, 3, 3, seed=5)
    ref = retrained_mi(X[:200], y[:200], 3, inf, X[200:], y[200:])
    assert ref.test_mi_all is None and ref.test_acc_subset is None
    assert ref.dev_acc_subset > 0.8 and math.isfinite(ref.dev_mi_all)
    cases = [
        (dict(neurons=[1, 1]), "repeated dimensions"),
        (dict(neurons=[12]), r"ints in \[0, d=12\)"),
        (dict(neurons=[]), "non-empty list"),
        (dict(neurons=[0.0]), "non-empty list of ints"),
        (dict(X_test=X[200:]), "give both X_test and y_test"),
        (dict(X_dev=X[200:, :5]), "X_dev has 5 dims, the probe has 12"),
        (dict(y_dev=y[200:] + 3), r"y_dev has labels in \[3, 5\]"),
    ]
    for kw, msg in cases:
        args = dict(X_train=X[:200], y_train=y[:200], n_classes=3, neurons=inf, X_dev=X[200:], y_dev=y[200:]) | kw
        with pytest.raises(ValueError, match=msg):
            retrained_mi(**args)


# ---- the monotonicity property, where it must hold -----------------------------

def bayes_case(d: int, n_planted: int, C: int, a: float, n: int, seed: int):
    """Naive-Bayes data whose masked linear probe is the *exact* posterior for every subset.

    ``x_j = a s_{j,y} + N(0, 1)`` on ``n_planted`` planted dims with class codes ``s = ±1``
    (bit ``j mod B`` of y), N(0, 1) elsewhere. Since ``s² = 1``, ``log N(x_j; a s, 1) =
    a s x_j + (terms free of y)``, so ``p(y | x_S) = softmax(log prior + Σ_{j∈S} a s_{j,y} x_j)``
    = the probe ``W[j] = a s_{j,·}`` (planted), ``W[j] = 0`` (noise), ``b = log prior``,
    with the unselected dims zeroed. Returns (probe, X, y, planted dims).
    """
    g = torch.Generator().manual_seed(seed)
    B = max(1, math.ceil(math.log2(C)))
    prior = torch.rand(C, generator=g) + 0.5
    prior /= prior.sum()
    y = torch.multinomial(prior, n, replacement=True, generator=g)
    dims = torch.randperm(d, generator=g)[:n_planted]
    S = torch.tensor([[2.0 * ((c >> (j % B)) & 1) - 1 for j in range(n_planted)] for c in range(C)])
    X = torch.randn(n, d, generator=g)
    X[:, dims] += a * S[y]
    W = torch.zeros(d, C)
    W[dims] = a * S.T
    probe = LatentProbe(W=W, b=prior.log(), phi=torch.zeros(d), label_prior=prior, history=[], best_epoch=0)
    return probe, X, y, dims.tolist()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(C=st.integers(2, 4), n_planted=st.integers(1, 4), extra=st.integers(0, 8),
       a=st.floats(0.3, 1.0), seed=st.integers(0, 10**6))
def test_dev_loglik_does_not_decrease_when_the_probe_is_the_exact_posterior(C, n_planted, extra, a, seed):
    """The issue's property "dev log-likelihood does not decrease along the greedy path".

    Without retraining it is false in general (see test_greedy_path_can_decrease_without_
    retraining). It must hold when the masked probe is the exact posterior p(y | x_S) for
    every subset S: then the expected gain of adding a dim is the conditional mutual
    information I(Y; X_j | X_S) >= 0 ("information never hurts"), and an ignored dim adds
    exactly 0. On a finite dev set a gain is a sample mean, so the planted regime keeps
    the expected gains well above their standard error (a <= 1, <= 4 planted dims, 4000
    words; 1,500 random cases of this regime gave no decrease); the test is derandomised.
    It also checks the path is not flat: the planted dims come first, each a strict gain,
    then every noise dim adds exactly nothing.
    """
    d = n_planted + extra
    probe, X, y, planted = bayes_case(d, n_planted, C, a, 4000, seed)
    res = greedy_select(probe, X, y, k=d)
    path = [float(torch.log_softmax(probe.b, 0)[y].to(torch.float64).mean())] + res.dev_loglik
    assert all(b >= a_ for a_, b in zip(path, path[1:])), path
    assert set(res.neurons[:n_planted]) == set(planted)
    assert all(b > a_ for a_, b in zip(path[:n_planted + 1], path[1:n_planted + 1]))
    assert path[n_planted + 1:] == [path[n_planted]] * extra


# ---- per-step gains and stability selection ---------------------------------------------

def _weak_planted(seed=0, d=48, C=3, n_tr=1200, n_dev=500):
    g = torch.Generator().manual_seed(seed)
    inf = torch.arange(8)
    scale = torch.tensor([1.2] * 4 + [0.3] * 4)
    means = torch.randn(C, 8, generator=g) * scale

    def draw(n):
        y = torch.randint(0, C, (n,), generator=g)
        X = torch.randn(n, d, generator=g)
        X[:, inf] += means[y]
        return X, y

    return (*draw(n_tr), *draw(n_dev), C)


def test_step_gains_add_up_to_the_path_and_carry_a_standard_error():
    Xtr, ytr, Xdv, ydv, C = _weak_planted()
    probe = train_probe(Xtr, ytr, C, ProbeConfig(max_epochs=150))
    r = greedy_select(probe, Xdv, ydv, k=12)
    empty = float(torch.log(torch.softmax(probe.b, 0))[ydv].double().mean())
    np.testing.assert_allclose(np.cumsum(r.dev_gain) + empty, r.dev_loglik, atol=1e-6)
    assert all(se > 0 for se in r.dev_gain_se)
    z = np.array(r.dev_gain) / np.array(r.dev_gain_se)
    assert z[:3].min() > 5  # strong dims first, far above noise
    assert z[-4:].max() < 2.5  # the path's tail: gains at the dev set's noise level
    assert len(set(r.neurons[-4:]) - set(range(8))) >= 2  # ... and mostly non-informative picks


def test_selection_frequency_ranks_by_frequency_then_mean_position():
    from xalign.selection import selection_frequency

    r = selection_frequency([[1, 2, 3], [2, 3, 4], [3, 2, 9]], d=10, k=3, threshold=0.6)
    assert r.neurons == [2, 3, 1] and r.stable == [2, 3] and r.n_runs == 3
    assert float(r.frequency[2]) == 1.0 and float(r.frequency[9]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="selection 0 must be"):
        selection_frequency([[1, 1, 2]], d=10, k=3)


def test_stability_selection_prefers_informative_dims_over_greedy_noise():
    """Planted: 4 strong + 4 weak informative dims of 48, k = 8. Over 4 data draws, stability
    selection (3 seeds x 6 dev half-subsamples) picks at least as many informative dims as
    one seed's greedy path, and more in total."""
    from xalign.probe import train_probes
    from xalign.selection import stability_select

    greedy_hits = stab_hits = 0
    for rep in range(4):
        Xtr, ytr, Xdv, ydv, C = _weak_planted(seed=rep)
        probes = train_probes(Xtr, ytr, C, ProbeConfig(max_epochs=150), seeds=[0, 1, 2])
        greedy_hits += np.mean([len(set(greedy_select(p, Xdv, ydv, k=8).neurons) & set(range(8))) for p in probes])
        st = stability_select(probes, Xdv, ydv, k=8, n_resamples=6, seed=rep)
        assert st.n_runs == 18 and len(st.neurons) == 8
        stab_hits += len(set(st.neurons) & set(range(8)))
    assert stab_hits >= greedy_hits, (stab_hits, greedy_hits)
