"""Benchmark: latent-variable probe training and greedy neuron selection (not a test).

Synthetic data with a fixed seed: N=20,000 train / 4,000 dev / 4,000 test vectors,
d=1024, 17 classes (Zipf-like label frequencies, as for UPOS). 48 informative dims carry
class means, 48 distractor dims are noisy copies of them, the rest is Gaussian noise of
varying scale. Prints wall times of

* probe training with minibatches of 1024 (``ProbeConfig(batch_size=1024,
  entropy_scale="reference")``: minibatches need the reference entropy weighting, see
  :mod:`xalign.probe`) and, with ``--full-batch``, the default :class:`xalign.probe.ProbeConfig`
  (full batch, ``per_example``; it stops at the 300-epoch cap here);
* greedy selection k=50 (:func:`xalign.selection.greedy_select`), with and without the
  bound-based pruning,
* a naive greedy that recomputes the full masked forward pass for every candidate,
  timed on ``--naive-steps`` steps and extrapolated linearly in the number of candidate
  evaluations (printed as such),

their ratio, the peak resident memory (``resource.getrusage``) and the 1-minute load
average before and after (the machine is shared: compare timings only at low load).

Usage: ``python benchmarks/bench_probe_selection.py [--threads T] [--naive-steps S] [--full-batch]``

On a shared machine use ``--threads 1``: with 2 OpenMP threads and another process busy
on one of the 2 cores, probe training ran 18x slower (283 s vs 15.7 s) than with 1 thread.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch

from xalign.probe import ProbeConfig, train_probe
from xalign.selection import greedy_select, weight_mass_select


def synthetic(seed: int = 0, n: int = 28_000, d: int = 1024, C: int = 17, n_inf: int = 48):
    """(X (n, d) float32, y (n,) int64, informative dims) with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    freq = 1.0 / torch.arange(1, C + 1, dtype=torch.float64)
    y = torch.multinomial(freq / freq.sum(), n, replacement=True, generator=g)
    scale = torch.exp(torch.randn(d, generator=g) * 0.5)
    X = torch.randn(n, d, generator=g) * scale
    perm = torch.randperm(d, generator=g)
    inf, dis = perm[:n_inf], perm[n_inf:2 * n_inf]
    X[:, inf] += torch.randn(C, n_inf, generator=g)[y] * 0.6 * scale[inf]
    X[:, dis] = 0.7 * X[:, inf] + 0.7 * torch.randn(n, n_inf, generator=g) * scale[inf]
    return X, y, inf


def naive_greedy_steps(probe, X, y, steps: int) -> tuple[list[int], int, float]:
    """Greedy with a full masked forward pass per candidate; returns (picks, evals, seconds)."""
    d = X.shape[1]
    chosen: list[int] = []
    evals = 0
    t0 = time.perf_counter()
    for _ in range(steps):
        best = (-float("inf"), -1)
        for c in range(d):
            if c in chosen:
                continue
            mask = torch.zeros(d)
            mask[chosen + [c]] = 1.0
            ll = float(probe.log_probs(X, mask).gather(1, y[:, None]).mean())
            evals += 1
            if ll > best[0]:
                best = (ll, c)
        chosen.append(best[1])
    return chosen, evals, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--naive-steps", type=int, default=2)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--full-batch", action="store_true", help="also time ProbeConfig() (full batch)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    X, y, inf = synthetic()
    Xtr, ytr = X[:20_000], y[:20_000]
    Xdev, ydev = X[20_000:24_000], y[20_000:24_000]
    Xte, yte = X[24_000:], y[24_000:]
    d, C = X.shape[1], 17
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"train {tuple(Xtr.shape)}, dev {tuple(Xdev.shape)}, C={C}; load average {os.getloadavg()[0]:.2f}")

    configs = [("minibatch", ProbeConfig(seed=0, batch_size=1024, entropy_scale="reference"))]
    if args.full_batch:
        configs.append(("full batch", ProbeConfig(seed=0, batch_size=None)))
    for name, cfg in configs:
        t, cpu = time.perf_counter(), time.process_time()
        p = train_probe(Xtr, ytr, C, cfg)
        t_train, cpu_train = time.perf_counter() - t, time.process_time() - cpu
        h = p.history[p.best_epoch]
        print(f"probe training ({name}, batch_size={cfg.batch_size}): {t_train:.2f} s wall, {cpu_train:.2f} s CPU "
              f"({len(p.history)} epochs, best {p.best_epoch}, {t_train / len(p.history) * 1e3:.0f} ms/epoch; "
              f"held-out log-lik under q {h['held_out_loglik']:.4f} nats)", flush=True)
        if name == "minibatch":
            probe = p

    t, cpu = time.perf_counter(), time.process_time()
    res = greedy_select(probe, Xdev, ydev, k=args.k, X_test=Xte, y_test=yte)
    t_greedy, cpu_greedy = time.perf_counter() - t, time.process_time() - cpu
    t = time.perf_counter()
    exhaustive = greedy_select(probe, Xdev, ydev, k=args.k, prune=False)
    t_exh = time.perf_counter() - t
    assert exhaustive.neurons == res.neurons
    hits = len(set(res.neurons) & set(inf.tolist()))
    print(f"greedy k={args.k} without pruning (every candidate scored): {t_exh:.2f} s wall, "
          "same picks")
    print(f"greedy k={args.k}: {t_greedy:.2f} s wall, {cpu_greedy:.2f} s CPU; dev MI {res.dev_mi[-1]:.3f} "
          f"(all dims on {res.dev_mi_all:.3f}), acc {res.dev_acc[-1]:.3f} (all {res.dev_acc_all:.3f}); "
          f"{hits}/{args.k} picks informative")

    picks, evals, t_naive = naive_greedy_steps(probe, Xdev, ydev, args.naive_steps)
    assert picks == res.neurons[:args.naive_steps], (picks, res.neurons[:args.naive_steps])
    total_evals = sum(d - i for i in range(args.k))
    t_naive_k = t_naive / evals * total_evals
    print(f"naive greedy: {t_naive:.2f} s for {args.naive_steps} steps ({evals} candidate evaluations, "
          f"same picks); EXTRAPOLATED linearly to k={args.k} ({total_evals} evaluations): {t_naive_k:.0f} s")
    print(f"speed-up vs naive: greedy {t_naive_k / t_greedy:.0f}x, "
          f"greedy without pruning {t_naive_k / t_exh:.0f}x")

    t = time.perf_counter()
    wm = weight_mass_select(Xtr, ytr, C, Xdev, ydev, k=args.k, X_test=Xte, y_test=yte, seed=0)
    t_wm = time.perf_counter() - t
    print(f"weight-mass baseline k={args.k}: {t_wm:.2f} s; dev MI {wm.dev_mi[-1]:.3f}, "
          f"{len(set(wm.neurons) & set(inf.tolist()))}/{args.k} picks informative")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MiB; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
