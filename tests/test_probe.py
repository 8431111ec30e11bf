"""Latent-variable intrinsic probe (xalign.probe) on planted data."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from xalign.probe import (
    LatentProbe,
    ProbeConfig,
    _bernoulli_entropy,
    _entropy_grad,
    _score_grad,
    _step_grads,
    held_out_log_lik,
    held_out_split,
    label_prior,
    train_l2_probe,
    train_linear_probe,
    train_probe,
)


def planted(n: int, d: int, C: int, dims: list[int], strength: float, seed: int):
    """Labels encoded in ``dims`` by a binary code (±strength); every other dim is N(0, 1) noise.

    Class c shifts planted dim j by +strength if bit (j mod B) of c is set, else -strength,
    with B = ceil(log2 C): any two classes differ by 2·strength in some planted dim.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    X = torch.randn(n, d, generator=g)
    B = max(1, math.ceil(math.log2(C)))
    bits = torch.tensor([[(c >> (j % B)) & 1 for j in range(len(dims))] for c in range(C)])
    X[:, dims] += strength * (2 * bits.float() - 1)[y]
    return X, y


# ---- configuration and input errors ------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("lr", 0.0), ("weight_decay", -1.0), ("max_epochs", 0), ("patience", 0), ("batch_size", 0),
    ("mc_samples", 0), ("entropy_scale", "dataset"), ("held_out_fraction", 1.0),
    ("held_out_fraction", 0.0), ("restore", "first"),
])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"ProbeConfig.{field}="):
        ProbeConfig(**{field: value})


def test_train_probe_input_errors():
    X, y = planted(40, 6, 3, [0], 2.0, seed=0)
    cfg = ProbeConfig(max_epochs=2)
    cases = [
        ((X[:, 0], y, 3), "must be 2-D"),
        ((X, y[:-1], 3), r"must have shape \(40,\)"),
        ((X.to(torch.int64), y, 3), "must be a float tensor"),
        ((X, y.float(), 3), "must be an integer tensor"),
        ((X, y, 2), r"labels in \[0, 2\], expected \[0, 2\)"),
        ((X, y - 1, 3), r"labels in \[-1, 1\]"),
        ((X, y, 1), "n_classes must be an int >= 2"),
        ((X[:4], y[:4], 3), "too small to hold out"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            train_probe(*args, config=cfg)
    for bad in (float("nan"), float("inf")):
        Xb = X.clone()
        Xb[3, 2] = bad
        with pytest.raises(ValueError, match=r"NaN or inf \(in 1 of 40 rows\)"):
            train_probe(Xb, y, 3, cfg)
    with pytest.raises(ValueError, match="config must be a ProbeConfig"):
        train_probe(X, y, 3, {"lr": 0.1})


def test_log_probs_masks_zero_dims_without_rescaling():
    X, y = planted(30, 5, 3, [0, 1], 2.0, seed=1)
    probe = train_probe(X, y, 3, ProbeConfig(max_epochs=20))
    mask = torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool)
    Xz = X * mask
    expected = torch.log_softmax(Xz @ probe.W + probe.b, dim=1)
    assert torch.allclose(probe.log_probs(X, mask), expected)
    assert torch.allclose(probe.log_probs(X, mask.expand(30, 5)), expected)
    assert torch.allclose(probe.log_probs(X).exp().sum(1), torch.ones(30))
    with pytest.raises(ValueError, match=r"mask has shape \(4,\)"):
        probe.log_probs(X, mask[:4])
    with pytest.raises(ValueError, match="has 4 dims, the probe has 5"):
        probe.log_probs(X[:, :4])


# ---- estimator pieces ------------------------------------------------------------------

def test_manual_gradients_match_autograd():
    g = torch.Generator().manual_seed(2)
    n, d, C, S = 50, 7, 4, 3
    X = torch.randn(n, d, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    W = torch.randn(d, C, generator=g, requires_grad=True)
    b = torch.randn(C, generator=g, requires_grad=True)
    M = (torch.rand(S, d, generator=g) < 0.5).float()
    logits = torch.stack([(X * m) @ W + b for m in M])  # (S, n, C)
    ll = torch.log_softmax(logits, -1).gather(-1, y.expand(S, n)[..., None]).squeeze(-1)
    (-ll.mean()).backward()
    f, gW, gb = _step_grads(X.T.contiguous(), y, torch.nn.functional.one_hot(y, C).T.float(),
                            W.detach(), b.detach(), M)
    assert torch.allclose(f, ll.mean(1).detach(), atol=1e-5)
    assert torch.allclose(gW, W.grad, atol=1e-6)
    assert torch.allclose(gb, b.grad, atol=1e-6)


def test_entropy_and_its_gradient():
    phi = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0], requires_grad=True)
    p = torch.sigmoid(phi)
    H = -(p * p.log() + (1 - p) * (1 - p).log()).sum()
    assert torch.allclose(_bernoulli_entropy(phi), H)
    H.backward()
    assert torch.allclose(_entropy_grad(phi.detach()), phi.grad, atol=1e-6)
    assert float(_bernoulli_entropy(torch.zeros(10))) == pytest.approx(10 * math.log(2))
    assert float(_bernoulli_entropy(torch.full((3,), math.inf))) == 0.0


def test_score_function_estimator_is_unbiased():
    """Mean of the leave-one-out estimator over many draws = exact gradient by enumeration."""
    phi = torch.tensor([0.8, -0.4, 0.1])
    p = torch.sigmoid(phi)
    vals = torch.tensor([-1.0, 0.3, 2.0])

    def f(m: torch.Tensor) -> torch.Tensor:  # any non-linear function of the mask
        return torch.sin(m @ vals) + (m[..., 0] * m[..., 2])

    phi_r = phi.clone().requires_grad_(True)
    q = torch.sigmoid(phi_r)
    masks = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))  # all 8 subsets
    exact = (torch.where(masks.bool(), q, 1 - q).prod(dim=1) * f(masks)).sum()
    exact.backward()
    g = torch.Generator().manual_seed(3)
    S, reps = 4, 40_000
    M = (torch.rand(reps, S, 3, generator=g) < p).float()
    est = torch.stack([_score_grad(f(Mi), Mi, p) for Mi in M[:2000]]).mean(0)  # spot check API
    fM = f(M)  # (reps, S)
    base = (fM.sum(1, keepdim=True) - fM) / (S - 1)
    est_all = ((fM - base)[..., None] * (M - p)).mean(1).mean(0)
    assert torch.allclose(est_all, phi_r.grad, atol=0.01)
    assert torch.allclose(est, phi_r.grad, atol=0.06)


# ---- training ----------------------------------------------------------------------------

def test_probe_learns_planted_attribute_and_locates_it():
    dims = [3, 17, 40]
    X, y = planted(1200, 64, 4, dims, 2.0, seed=4)
    probe = train_probe(X[:1000], y[:1000], 4)
    lp = probe.log_probs(X[1000:])
    assert float((lp.argmax(1) == y[1000:]).float().mean()) > 0.8
    prior_ll = float(torch.log(probe.label_prior)[y[1000:]].mean())
    assert float(lp.gather(1, y[1000:, None]).mean()) > prior_ll + 0.5
    # q(m) puts more mass on the planted dims than on the noise dims
    marg = probe.marginals
    others = torch.ones(64, dtype=torch.bool)
    others[dims] = False
    assert float(marg[dims].min()) > float(marg[others].mean()) + 0.05
    assert probe.W.dtype == torch.float32 and probe.W.shape == (64, 4) and probe.phi.shape == (64,)
    assert torch.allclose(probe.label_prior, label_prior(y[:1000], 4))
    assert set(probe.history[0]) >= {"epoch", "train_elbo", "train_loglik", "entropy",
                                     "held_out_loglik", "mean_marginal"}


def test_reference_entropy_scale_keeps_marginals_near_half():
    dims = [3, 17, 40]
    X, y = planted(1000, 64, 4, dims, 1.5, seed=4)
    per_ex = train_probe(X, y, 4, ProbeConfig(entropy_scale="per_example"))
    ref = train_probe(X, y, 4, ProbeConfig(entropy_scale="reference"))
    dev = lambda pr: float((pr.marginals[dims] - 0.5).abs().mean())  # noqa: E731
    assert dev(ref) < 0.5 * dev(per_ex)
    # the reference ELBO adds H(q) (~ d ln 2 nats) unscaled
    h = ref.history[0]
    assert h["train_elbo"] - h["train_loglik"] == pytest.approx(h["entropy"], rel=1e-3)


@pytest.mark.parametrize("batch_size", [None, 64])
def test_same_seed_is_bitwise_reproducible_and_seed_matters(batch_size):
    X, y = planted(300, 20, 3, [1, 5], 1.0, seed=5)
    es = "per_example" if batch_size is None else "reference"  # minibatches need "reference"
    cfg = ProbeConfig(max_epochs=40, seed=11, batch_size=batch_size, entropy_scale=es)
    a, b = train_probe(X, y, 3, cfg), train_probe(X, y, 3, cfg)
    for name in ("W", "b", "phi", "label_prior"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.history == b.history and a.best_epoch == b.best_epoch
    c = train_probe(X, y, 3, dataclasses.replace(cfg, seed=12))
    assert not torch.equal(a.phi, c.phi)


def test_batch_size_at_least_n_is_full_batch():
    X, y = planted(200, 10, 3, [1, 5], 1.0, seed=5)
    cfg = ProbeConfig(max_epochs=15, batch_size=None, entropy_scale="reference")
    full = train_probe(X, y, 3, cfg)
    big = train_probe(X, y, 3, dataclasses.replace(cfg, batch_size=10**6))
    assert torch.equal(full.W, big.W) and torch.equal(full.phi, big.phi)
    mini = train_probe(X, y, 3, dataclasses.replace(cfg, batch_size=50))
    assert not torch.equal(full.W, mini.W)


@pytest.mark.parametrize("batch_size", [None, 32])
def test_early_stopping_restores_best_parameters(batch_size):
    # few examples, noise dims, large steps: the held-out log-lik peaks, then falls
    X, y = planted(200, 60, 3, [0, 1], 1.5, seed=6)
    cfg = ProbeConfig(lr=0.05, max_epochs=300, patience=15, held_out_fraction=0.25, seed=3,
                      batch_size=batch_size, entropy_scale="per_example" if batch_size is None else "reference")
    probe = train_probe(X, y, 3, cfg)
    hist = [h["held_out_loglik"] for h in probe.history]
    assert len(hist) < cfg.max_epochs, "early stopping did not trigger"
    assert len(hist) == probe.best_epoch + cfg.patience + 1
    assert 0 < probe.best_epoch < len(hist) - 1
    assert hist[probe.best_epoch] == max(hist)
    _, ho = held_out_split(200, 0.25, 3)
    got = held_out_log_lik(probe, X[ho], y[ho], seed=3)
    assert got == pytest.approx(hist[probe.best_epoch], abs=1e-6)
    assert got > hist[-1] + 1e-3  # not the last epoch's parameters
    # φ too: the restored marginals are those of the best epoch, not of the last one
    marg = [h["mean_marginal"] for h in probe.history]
    assert float(probe.marginals.mean()) == marg[probe.best_epoch] != marg[-1]
    # bitwise: training with the same seed for exactly best_epoch + 1 epochs ends at the
    # restored W, b and φ (the random stream does not depend on max_epochs)
    stop = train_probe(X, y, 3, dataclasses.replace(cfg, max_epochs=probe.best_epoch + 1))
    assert stop.best_epoch == probe.best_epoch
    for name in ("W", "b", "phi"):
        assert torch.equal(getattr(probe, name), getattr(stop, name)), name


@pytest.mark.parametrize("batch_size", [None, 32])
def test_restore_last_returns_the_last_epoch(batch_size):
    # the setting of test_early_stopping_restores_best_parameters: the best epoch is not the last
    X, y = planted(200, 60, 3, [0, 1], 1.5, seed=6)
    cfg = ProbeConfig(lr=0.05, max_epochs=300, patience=15, held_out_fraction=0.25, seed=3,
                      batch_size=batch_size, entropy_scale="reference", restore="last")
    last = train_probe(X, y, 3, cfg)
    best = train_probe(X, y, 3, dataclasses.replace(cfg, restore="best"))
    hist = [h["held_out_loglik"] for h in last.history]
    assert last.history == best.history  # same training, only the returned parameters differ
    assert len(hist) < cfg.max_epochs and last.best_epoch == len(hist) - 1
    assert best.best_epoch == hist.index(max(hist)) < last.best_epoch
    _, ho = held_out_split(200, 0.25, 3)
    assert held_out_log_lik(last, X[ho], y[ho], seed=3) == pytest.approx(hist[-1], abs=1e-6)
    assert float(last.marginals.mean()) == last.history[-1]["mean_marginal"]
    assert not torch.equal(last.phi, best.phi) and not torch.equal(last.W, best.W)
    # bitwise: the last epoch of a run capped at best_epoch + 1 epochs is the best epoch
    capped = train_probe(X, y, 3, dataclasses.replace(cfg, max_epochs=best.best_epoch + 1))
    assert capped.best_epoch == best.best_epoch
    for name in ("W", "b", "phi"):
        assert torch.equal(getattr(capped, name), getattr(best, name)), name


def test_per_example_entropy_with_minibatches_is_rejected():
    X, y = planted(300, 20, 3, [1, 5], 1.5, seed=5)  # 270 training examples
    for bs in (32, 269):
        with pytest.raises(ValueError, match=rf"^train_probe: ProbeConfig.batch_size={bs} < 270 training "
                                             r"examples \(minibatches\) with entropy_scale='per_example'"):
            train_probe(X, y, 3, ProbeConfig(batch_size=bs, max_epochs=2))
    # one batch (batch_size >= N) is full batch; the reference weighting and the plain linear
    # probe (no latent mask, no entropy) take minibatches
    for cfg in (ProbeConfig(batch_size=270, max_epochs=2), ProbeConfig(batch_size=None, max_epochs=2),
                ProbeConfig(batch_size=32, max_epochs=2, entropy_scale="reference")):
        assert len(train_probe(X, y, 3, cfg).history) == 2
    assert len(train_linear_probe(X, y, 3, ProbeConfig(batch_size=32, max_epochs=2)).history) == 2


def test_params_reject_per_example_entropy_with_a_batch_size():
    from xalign.params import ParamsError, ProbeParams, load_params

    assert ProbeParams().batch_size is None and ProbeParams().entropy_scale == "per_example"
    assert ProbeParams(batch_size=256, entropy_scale="reference", restore="last").restore == "last"
    with pytest.raises(ParamsError, match=r"params\.probe\.batch_size: 256 with entropy_scale 'per_example' "
                                          r"is rejected .*use null \(full batch\)"):
        load_params("params/minimal.yaml", overrides={"probe.batch_size": 256})
    with pytest.raises(ParamsError, match=r"params\.probe\.restore: "):
        load_params("params/minimal.yaml", overrides={"probe.restore": "first"})


def test_held_out_split_is_seeded_and_disjoint():
    tr, ho = held_out_split(50, 0.2, seed=9)
    assert len(ho) == 10 and len(tr) == 40
    assert sorted(torch.cat([tr, ho]).tolist()) == list(range(50))
    assert torch.equal(held_out_split(50, 0.2, seed=9)[1], ho)
    assert not torch.equal(held_out_split(50, 0.2, seed=10)[1], ho)


@pytest.mark.parametrize("cfg", [ProbeConfig(batch_size=64, entropy_scale="reference"), ProbeConfig(mc_samples=1),
                                 ProbeConfig(weight_decay=1e-3)])
def test_minibatch_single_sample_and_weight_decay_variants_learn(cfg):
    X, y = planted(600, 32, 3, [2, 9], 2.0, seed=7)
    probe = train_probe(X[:500], y[:500], 3, cfg)
    acc = float((probe.log_probs(X[500:]).argmax(1) == y[500:]).float().mean())
    assert acc > 0.8
    assert all(math.isfinite(h["train_elbo"]) for h in probe.history)


def test_linear_probe_has_no_latent_mask():
    X, y = planted(400, 16, 3, [4], 2.5, seed=8)
    probe = train_linear_probe(X, y, 3, ProbeConfig(max_epochs=100))
    assert isinstance(probe, LatentProbe)
    assert torch.all(torch.isinf(probe.phi)) and torch.all(probe.marginals == 1)
    assert all(h["entropy"] == 0.0 for h in probe.history)
    assert float(probe.W[4].abs().sum()) == float(probe.W.abs().sum(1).max())


def test_standardize_uses_train_statistics_only():
    from xalign.probe import standardize

    g = torch.Generator().manual_seed(0)
    Xtr = torch.randn(200, 5, generator=g) * torch.tensor([1.0, 10.0, 1e4, 0.1, 0.0]) + 3.0
    Xdv = torch.randn(50, 5, generator=g) + 100.0
    ztr, zdv = standardize(Xtr, Xdv)
    assert torch.allclose(ztr.mean(0), torch.zeros(5), atol=1e-4)
    assert torch.allclose(ztr[:, :4].std(0, unbiased=False), torch.ones(4), atol=1e-4)
    assert torch.equal(ztr[:, 4], torch.zeros(200))  # a constant dimension maps to 0, not NaN
    expected = (Xdv - Xtr.mean(0)) / Xtr.std(0, unbiased=False).clamp_min(1e-6)
    assert torch.allclose(zdv, expected)  # dev uses the train mean/std, not its own
    with pytest.raises(ValueError, match=r"expected \(M, 5\)"):
        standardize(Xtr, torch.zeros(3, 4))


# ---- L2 reference probe ----------------------------------------------------------------

def test_l2_probe_is_converged_and_picks_l2_on_held_out():
    X, y = planted(400, 60, 3, [2, 9, 30], 1.5, seed=9)
    probe = train_l2_probe(X, y, 3, ProbeConfig(seed=2), l2_grid=(0.001, 1.0, 0.01, 0.1))
    lams = [h["l2"] for h in probe.history]
    assert lams == [1.0, 0.1, 0.01, 0.001]  # strong to weak (warm starts)
    ho = [h["held_out_loglik"] for h in probe.history]
    assert probe.best_epoch == ho.index(max(ho))
    lam = lams[probe.best_epoch]
    # on 60 dims with 360 training examples some shrinkage beats the weakest penalty
    assert lam > 0.001, ho
    # stationarity of the refitted objective on all of X: its gradient (float64 autograd) is ~0
    W = probe.W.double().requires_grad_(True)
    b = probe.b.double().requires_grad_(True)
    nll = -torch.log_softmax(X.double() @ W + b, 1).gather(1, y[:, None]).mean()
    (nll + 0.5 * lam * W.pow(2).sum()).backward()
    assert float(W.grad.abs().max()) < 1e-4 and float(b.grad.abs().max()) < 1e-4
    assert torch.all(torch.isinf(probe.phi)) and torch.equal(probe.label_prior, label_prior(y, 3))
    # it predicts the planted attribute on fresh data
    Xn, yn = planted(500, 60, 3, [2, 9, 30], 1.5, seed=10)
    assert float((probe.log_probs(Xn).argmax(1) == yn).float().mean()) > 0.85
    # deterministic
    again = train_l2_probe(X, y, 3, ProbeConfig(seed=2), l2_grid=(0.001, 1.0, 0.01, 0.1))
    assert torch.equal(again.W, probe.W)
    with pytest.raises(ValueError, match="l2_grid must be"):
        train_l2_probe(X, y, 3, l2_grid=(0.1, 0.0))
    with pytest.raises(ValueError, match="n_classes must be"):
        train_l2_probe(X, y, 1)
    with pytest.raises(ValueError, match=r"y has labels in \[0, 2\], expected \[0, 2\)"):
        train_l2_probe(X, y, 2)


# ---- several seeds in one batched computation ------------------------------------------

def _planted_seeds_data(N=600, d=24, C=3, seed=11):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, d, generator=g)
    y = torch.randint(0, C, (N,), generator=g)
    X[:, :3] += torch.nn.functional.one_hot(y, C).float() * 1.5
    return X, y, C


def _same_probe(a, b) -> None:
    """Equal up to float rounding: vectorised elementwise kernels (exp, sigmoid) round the
    last bit of a tensor's tail differently with its length, so a seed's probe can differ
    by ~1e-9 with the other seeds of its batch."""
    assert a.config.seed == b.config.seed and a.best_epoch == b.best_epoch and len(a.history) == len(b.history)
    for t in ("W", "b", "phi"):
        assert torch.allclose(getattr(a, t), getattr(b, t), rtol=0, atol=1e-6), t
    for ha, hb in zip(a.history, b.history):
        assert ha == pytest.approx(hb, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("restore", ["best", "last"])
def test_batched_seeds_are_the_sequential_probes(restore):
    """Seeds stop at different epochs (patience 3), so the batch shrinks while training;
    each seed's probe is the sequential one and selects the same neurons."""
    from dataclasses import replace

    from xalign.probe import train_probes
    from xalign.selection import greedy_select

    X, y, C = _planted_seeds_data()
    cfg = ProbeConfig(max_epochs=80, patience=3, restore=restore)
    batched = train_probes(X, y, C, cfg, seeds=[4, 0, 9, 3, 7])
    stops = set()
    for p, s in zip(batched, [4, 0, 9, 3, 7]):
        ref = train_probe(X, y, C, replace(cfg, seed=s))
        _same_probe(p, ref)
        assert greedy_select(p, X[:200], y[:200], k=6).neurons == greedy_select(ref, X[:200], y[:200], k=6).neurons
        stops.add(len(ref.history))
    assert len(stops) > 1  # the seeds did leave the batch at different epochs
    again = train_probes(X, y, C, cfg, seeds=[4, 0, 9, 3, 7])
    assert all(torch.equal(a.phi, b.phi) and a.history == b.history for a, b in zip(batched, again))  # same call, same bits


def test_batched_seeds_minibatches_run_one_by_one_and_match():
    from dataclasses import replace

    from xalign.probe import train_probes

    X, y, C = _planted_seeds_data()
    cfg = ProbeConfig(max_epochs=6, batch_size=128, entropy_scale="reference")
    for p, s in zip(train_probes(X, y, C, cfg, seeds=[1, 2]), [1, 2]):
        assert torch.equal(p.W, train_probe(X, y, C, replace(cfg, seed=s)).W)


@pytest.mark.parametrize("seeds", [[], [1, 1], [-1], [0.5]])
def test_bad_seed_lists_are_one_line_errors(seeds):
    from xalign.probe import train_probes

    X, y, C = _planted_seeds_data(N=60)
    with pytest.raises(ValueError, match="seeds must be distinct ints >= 0"):
        train_probes(X, y, C, ProbeConfig(max_epochs=2), seeds=seeds)


def test_compute_bound_seeds_run_one_by_one(monkeypatch):
    import xalign.probe as probe_mod

    X, y, C = _planted_seeds_data()
    cfg = ProbeConfig(max_epochs=30, patience=3)
    batched = probe_mod.train_probes(X, y, C, cfg, seeds=[3, 7])
    monkeypatch.setattr(probe_mod, "BATCH_SEEDS_MAX_WORK", 10)
    calls = []
    real = probe_mod._BatchedTrainer.run
    monkeypatch.setattr(probe_mod._BatchedTrainer, "run", lambda self: calls.append(len(self.configs)) or real(self))
    single = probe_mod.train_probes(X, y, C, cfg, seeds=[3, 7])
    assert calls == [1, 1]
    for a, b in zip(batched, single):
        _same_probe(a, b)
