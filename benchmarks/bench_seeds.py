"""Benchmark: seeds of one dataset trained as one batched computation, and stability selection.

Part 1 (the batched seeds): ``xalign.probe.train_probes`` with S = 5 seeds against five
``train_probe`` calls, one per seed, on the same data, side by side, on a small
(tiny-lab-sized: N = 400, d = 192, 3 classes) and a mid problem (N = 2,000, d = 192, 12 classes) and
on N = 20,000 / d = 1,024 (5 classes; 100 epochs; forced into one batch here, though
``train_probes`` runs such compute-bound problems seed by seed). Prints both wall times, their
ratio and the largest difference between the two runs' weights (float rounding only).

Part 2 (selection on planted data with weak informative dims): d = 96, C = 4, N = 1,500
train / 600 dev; 12 informative dims, 6 strong (class-mean separation 1.0) and 6 weak
(0.25), the rest Gaussian noise; k = 12. For ``--reps`` data draws, prints the mean
precision@k (fraction of the k picks that are informative) of plain greedy selection
(one seed; averaged over the seeds) and of stability selection
(``xalign.selection.stability_select``: 5 seeds x 10 dev half-subsamples), and the mean
gain (nats/example) and gain/SE of greedy's last three picks.

Usage: ``python benchmarks/bench_seeds.py [--threads 1] [--reps 10] [--skip-large]``
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

import xalign.probe as probe_mod
from xalign.probe import ProbeConfig, standardize, train_probe, train_probes
from xalign.selection import greedy_select, stability_select


def timing(N: int, d: int, C: int, epochs: int, seeds: int = 5) -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, d, generator=g)
    y = torch.randint(0, C, (N,), generator=g)
    y[: N // 2] = (X[: N // 2, :3].sum(1) > 0).long()
    cfg = ProbeConfig(max_epochs=epochs, patience=10_000)
    t0 = time.perf_counter()
    seq = [train_probe(X, y, C, replace(cfg, seed=s)) for s in range(seeds)]
    t1 = time.perf_counter()
    probe_mod.BATCH_SEEDS_MAX_WORK = float("inf")  # measure the batch itself
    bat = train_probes(X, y, C, cfg, list(range(seeds)))
    t2 = time.perf_counter()
    diff = max(float((a.W - b.W).abs().max()) for a, b in zip(seq, bat))
    print(f"N={N:>6} d={d:>5} C={C:>2} {seeds} seeds x {epochs} epochs: sequential {t1 - t0:7.2f} s, "
          f"batched {t2 - t1:7.2f} s, ratio {(t1 - t0) / (t2 - t1):.2f}x, max |W diff| {diff:g}")


def planted(rep: int, d: int = 96, C: int = 4, n_tr: int = 1500, n_dev: int = 600):
    g = torch.Generator().manual_seed(1000 + rep)
    informative = torch.randperm(d, generator=g)[:12]
    scale = torch.tensor([1.0] * 6 + [0.25] * 6)
    means = torch.randn(C, 12, generator=g) * scale

    def draw(n):
        y = torch.randint(0, C, (n,), generator=g)
        X = torch.randn(n, d, generator=g)
        X[:, informative] += means[y]
        return X, y

    (Xtr, ytr), (Xdv, ydv) = draw(n_tr), draw(n_dev)
    Xtr, Xdv = standardize(Xtr, Xdv)
    return Xtr, ytr, Xdv, ydv, set(informative.tolist())


def selection(reps: int, k: int = 12, seeds: int = 5) -> None:
    p_greedy, p_stab, tail_gain, tail_z = [], [], [], []
    for rep in range(reps):
        Xtr, ytr, Xdv, ydv, inf = planted(rep)
        probes = train_probes(Xtr, ytr, 4, ProbeConfig(), list(range(seeds)))
        for p in probes:
            r = greedy_select(p, Xdv, ydv, k=k)
            p_greedy.append(len(inf & set(r.neurons)) / k)
            tail_gain += r.dev_gain[-3:]
            tail_z += [g / se for g, se in zip(r.dev_gain[-3:], r.dev_gain_se[-3:])]
        s = stability_select(probes, Xdv, ydv, k=k, n_resamples=10, seed=rep)
        p_stab.append(len(inf & set(s.neurons)) / k)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    print(f"planted d=96, 12 informative (6 weak), k={k}, {reps} data draws, {seeds} seeds:")
    print(f"  precision@k  greedy (one seed) {mean(p_greedy):.3f}   stability selection {mean(p_stab):.3f}")
    print(f"  greedy's last 3 picks: mean gain {mean(tail_gain):.5f} nats/example, mean gain/SE {mean(tail_z):.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--skip-large", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    timing(400, 192, 3, 300)
    timing(2000, 192, 12, 300)
    if not a.skip_large:
        timing(20_000, 1024, 5, 100)
    selection(a.reps)
