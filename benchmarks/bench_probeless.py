"""Benchmark: Probeless ranking vs greedy selection, side by side on the same data (not a test).

Synthetic data with a fixed seed (the generator of ``bench_probe_selection.py``: Zipf-like
labels, informative dims carrying class means, distractor dims that are noisy copies of
them, Gaussian noise of varying scale elsewhere). Per size it trains one latent probe
(``ProbeConfig(batch_size=1024, entropy_scale="reference")``, timed separately: greedy
needs it, Probeless does not), then times on the same dev/test split

* :func:`xalign.selection.greedy_select` (the probe's greedy top-k path), and
* :func:`xalign.selection.probeless_select` with ``eval_probe`` = that probe (Probeless
  ranking on train + the same MI/accuracy path evaluation), and the ranking alone
  (:func:`xalign.selection.probeless_scores`),

and prints the wall times, their ratio, dev MI at k, the agreement of the two top-k lists
(:func:`xalign.selection.selection_agreement`) and how many picks are informative dims.
Sizes: "small" N=1,000 train / 400 dev / 400 test, d=128, C=5, k=10; "realistic"
N=5,000 / 1,000 / 1,000, d=1024, C=10, k=50.

Usage: ``python benchmarks/bench_probeless.py [--threads T] [--repeats R]``
(``--threads 1`` on a shared machine, see ``bench_probe_selection.py``).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from xalign.probe import ProbeConfig, train_probe
from xalign.selection import greedy_select, probeless_scores, probeless_select, selection_agreement

SIZES = [  # name, n_train, n_dev, n_test, d, C, k, n_informative
    ("small", 1_000, 400, 400, 128, 5, 10, 12),
    ("realistic", 5_000, 1_000, 1_000, 1024, 10, 50, 48),
]


def synthetic(seed: int, n: int, d: int, C: int, n_inf: int):
    """(X (n, d) float32, y (n,) int64, informative dims) with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    freq = 1.0 / torch.arange(1, C + 1, dtype=torch.float64)
    y = torch.multinomial(freq / freq.sum(), n, replacement=True, generator=g)
    y[:C] = torch.arange(C)  # every class present in the training split
    scale = torch.exp(torch.randn(d, generator=g) * 0.5)
    X = torch.randn(n, d, generator=g) * scale
    perm = torch.randperm(d, generator=g)
    inf, dis = perm[:n_inf], perm[n_inf:2 * n_inf]
    X[:, inf] += torch.randn(C, n_inf, generator=g)[y] * 0.6 * scale[inf]
    X[:, dis] = 0.7 * X[:, inf] + 0.7 * torch.randn(n, n_inf, generator=g) * scale[inf]
    return X, y, set(inf.tolist())


def best_of(fn, repeats: int):
    """(result of the last call, minimum wall time over ``repeats`` calls)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions (minimum reported)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}")
    for name, n_tr, n_dev, n_te, d, C, k, n_inf in SIZES:
        X, y, inf = synthetic(0, n_tr + n_dev + n_te, d, C, n_inf)
        Xtr, ytr = X[:n_tr], y[:n_tr]
        Xdev, ydev = X[n_tr:n_tr + n_dev], y[n_tr:n_tr + n_dev]
        Xte, yte = X[n_tr + n_dev:], y[n_tr + n_dev:]
        t = time.perf_counter()
        probe = train_probe(Xtr, ytr, C, ProbeConfig(seed=0, batch_size=1024, entropy_scale="reference"))
        t_train = time.perf_counter() - t
        print(f"[{name}] train {tuple(Xtr.shape)}, dev {tuple(Xdev.shape)}, C={C}, k={k}; "
              f"probe training (greedy only): {t_train:.2f} s ({len(probe.history)} epochs)")
        gr, t_gr = best_of(lambda: greedy_select(probe, Xdev, ydev, k=k, X_test=Xte, y_test=yte), args.repeats)
        pl, t_pl = best_of(lambda: probeless_select(Xtr, ytr, C, Xdev, ydev, k=k, X_test=Xte, y_test=yte,
                                                    eval_probe=probe), args.repeats)
        _, t_sc = best_of(lambda: probeless_scores(Xtr, ytr, C), args.repeats)
        print(f"[{name}]   greedy_select    : {t_gr:8.4f} s; dev MI@k {gr.dev_mi[-1]:.3f}, test MI@k "
              f"{gr.test_mi[-1]:.3f}; {len(set(gr.neurons) & inf)}/{k} picks informative")
        print(f"[{name}]   probeless_select : {t_pl:8.4f} s; dev MI@k {pl.dev_mi[-1]:.3f}, test MI@k "
              f"{pl.test_mi[-1]:.3f}; {len(set(pl.neurons) & inf)}/{k} picks informative "
              f"(ranking alone, probeless_scores: {t_sc:.4f} s)")
        print(f"[{name}]   ratio greedy / probeless_select: {t_gr / t_pl:.1f}x "
              f"(greedy / ranking alone: {t_gr / t_sc:.0f}x); top-{k} agreement "
              f"{selection_agreement(gr.neurons, pl.neurons):.2f} (chance {k / d:.2f})", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} (min of {args.repeats} runs per timing)")


if __name__ == "__main__":
    main()
