"""Calibration of Table 1's uncertainty kernels (xalign.stats), on simulated data with a known truth.

Prints measured coverage / type-I error beside the nominal value, with the binomial
standard error of each measured fraction:

* Fisher-z 95% interval (:func:`xalign.stats.pearson_ci`) on bivariate normal data,
  rho = 0.5, for n = 5, 8, 12, 30 (Table 1 "average" rows have one point per checkpoint).
* Cluster bootstrap 95% interval (:func:`xalign.stats.cluster_bootstrap_ci`) on clustered
  data whose generating process has corr(x, y) = 0.5: x_ij = sqrt(3) a_i + e_ij,
  y_ij = sqrt(3) b_i + f_ij, corr(a, b) = 0.6 (a cluster effect shared by x and y),
  corr(e, f) = 0.2, unit variances, so rho = (3 * 0.6 + 0.2) / 4 = 0.5; 6 points per
  cluster, 5 to 20 clusters (Table 1 "pairwise": clusters = target languages). Beside it
  the naive point bootstrap (every point its own cluster) and the Fisher interval, which
  both treat the points as independent.
* Permutation p (:func:`xalign.stats.permutation_p`) under the null (x, y independent):
  exact (n = 7, all 5,040 orderings) and Monte Carlo (n = 15, 999 orderings); also under
  a clustered null (cluster effects in x and y but corr 0 between them), where points are
  not exchangeable and every test that assumes independence is anti-conservative.
* Partial r controlling for log step (:func:`xalign.stats.partial_pearson`): type-I error
  when x and y share only a trend in log step.

* Overlap intervals and the drop test (:mod:`xalign.overlap`), on planted selections
  (d = 120, k = 10): languages' informative sets share a core with a language-specific
  share replaced (~U(0.2, 0.8)), each seed's selection replaces each neuron w.p. 0.3.
  Coverage of a pair's t interval over 5 seeds (truth: the pair's expected overlap from
  20,000 draws), of the average's language-cluster bootstrap interval (13 languages x 3
  seeds; truth: the average over 300 languages), and the drop test's type-I error when
  both checkpoints come from the same process (10 languages x 3 seeds). ``--overlap-reps``
  replicates each (default 300).

Usage: ``.venv/bin/python benchmarks/bench_calibration.py [--reps 1000] [--overlap-reps 300] [--seed 0]
[--only stats|overlap]``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from xalign.stats import cluster_bootstrap_ci, partial_pearson, pearson, pearson_ci, permutation_p


def _bvn(rng, rho: float, size) -> tuple[np.ndarray, np.ndarray]:
    z = rng.normal(size=(2,) + tuple(np.atleast_1d(size)))
    return z[0], rho * z[0] + math.sqrt(1 - rho * rho) * z[1]


def _clustered(rng, n_clusters: int, size: int, rho_between: float = 0.6, rho_within: float = 0.2,
               var_between: float = 3.0):
    a, b = _bvn(rng, rho_between, n_clusters)
    e, f = _bvn(rng, rho_within, (n_clusters, size))
    s = math.sqrt(var_between)
    x, y = (s * a[:, None] + e).ravel(), (s * b[:, None] + f).ravel()
    rho = (var_between * rho_between + rho_within) / (var_between + 1)
    return x, y, np.repeat(np.arange(n_clusters), size), rho


def _line(what: str, nominal: float, hits: int, reps: int) -> str:
    f = hits / reps
    return f"  {what:<58s} nominal {nominal:5.3f}   measured {f:5.3f} ± {math.sqrt(f * (1 - f) / reps):5.3f}"


def _covers(ci, truth) -> bool:
    return bool(ci[0] <= truth <= ci[1])


def _excludes0(ci) -> bool:
    return bool(np.isfinite(ci[0]) and (ci[0] > 0 or ci[1] < 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1000, help="replicates per setting (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overlap-reps", type=int, default=300)
    ap.add_argument("--only", choices=("stats", "overlap"), default=None)
    a = ap.parse_args()
    if a.only != "stats":
        overlap_section(a.overlap_reps, a.seed)
    if a.only == "overlap":
        return
    R, t0 = a.reps, time.perf_counter()
    rng = np.random.default_rng(a.seed)
    print(f"xalign.stats calibration: {R} replicates per setting, seed {a.seed}")

    print("\nFisher-z 95% interval, bivariate normal, rho = 0.5 (coverage of rho)")
    for n in (5, 8, 12, 30):
        hits = sum(_covers(pearson_ci(*_bvn(rng, 0.5, n)), 0.5) for _ in range(R))
        print(_line(f"n = {n}", 0.95, hits, R))

    print("\n95% intervals on clustered data, 6 points per cluster, generating rho = 0.5 (coverage)")
    for g in (5, 8, 12, 20):
        cl = pt = fz = 0
        for _ in range(R):
            x, y, c, rho = _clustered(rng, g, 6)
            cl += _covers(cluster_bootstrap_ci(x, y, c), rho)
            pt += _covers(cluster_bootstrap_ci(x, y, np.arange(x.size)), rho)
            fz += _covers(pearson_ci(x, y), rho)
        print(_line(f"{g} clusters: cluster bootstrap (resample clusters)", 0.95, cl, R))
        print(_line(f"{g} clusters: point bootstrap (ignores clusters)", 0.95, pt, R))
        print(_line(f"{g} clusters: Fisher z (ignores clusters)", 0.95, fz, R))

    print("\nPermutation p under the null, x and y independent (type-I error)")
    for label, n, kw in (("exact, n = 7 (5,040 orderings)", 7, {}),
                         ("Monte Carlo, n = 15, B = 999", 15, {"n_resamples": 999})):
        ps = np.array([permutation_p(rng.normal(size=n), rng.normal(size=n), seed=i, **kw) for i in range(R)])
        for alpha in (0.05, 0.01):
            print(_line(f"{label}: p < {alpha}", alpha, int(np.sum(ps < alpha)), R))
        print(_line(f"{label}: p < 0.5", 0.5, int(np.sum(ps < 0.5)), R))

    print("\nClustered null (8 clusters x 6 points, cluster effects in x and y, rho = 0): rejection at 0.05")
    perm = tt = boot = 0
    for i in range(R):
        x, y, c, _ = _clustered(rng, 8, 6, rho_between=0.0, rho_within=0.0)
        perm += permutation_p(x, y, seed=i) < 0.05
        tt += pearson(x, y)[1] < 0.05
        boot += _excludes0(cluster_bootstrap_ci(x, y, c, seed=i))
    print(_line("permutation p < 0.05 (points not exchangeable)", 0.05, perm, R))
    print(_line("t-test p < 0.05 (scipy.stats.pearsonr)", 0.05, tt, R))
    print(_line("cluster-bootstrap 95% CI excludes 0", 0.05, boot, R))

    print("\nPartial r controlling for log step; x, y share only a trend in log step (n = 10, 40)")
    for n in (10, 40):
        z = np.log10(np.geomspace(1e3, 1e6, n))
        trend = (z - z.mean()) / z.std()
        raw = part = 0
        for _ in range(R):
            x, y = trend + 0.5 * rng.normal(size=n), trend + 0.5 * rng.normal(size=n)
            raw += pearson(x, y)[1] < 0.05
            part += partial_pearson(x, y, z)[1] < 0.05
        print(_line(f"n = {n}: raw Pearson p < 0.05 (confounded by the trend)", 0.05, raw, R))
        print(_line(f"n = {n}: partial p < 0.05", 0.05, part, R))
    print(f"\n{time.perf_counter() - t0:.1f} s")


D, K = 120, 10


def _perturb(base, q, rng):
    out = [int(c) for c in base]
    for i in range(len(out)):
        if rng.random() < q:
            while True:
                c = int(rng.integers(D))
                if c not in out:
                    out[i] = c
                    break
    return out


def _selections(world, seeds, q, rng, checkpoint="c1", step=1):
    import pandas as pd

    return pd.DataFrame([dict(checkpoint=checkpoint, step=step, layer=3, attribute="POS", language=f"l{i:03d}",
                              d=D, k=K, neurons=_perturb(inf, q, rng), seed=s)
                         for i, inf in enumerate(world) for s in range(seeds)])


def _world(rng, n, core):
    return [np.array(_perturb(core, rng.uniform(0.2, 0.8), rng)) for _ in range(n)]


def overlap_section(R: int, seed: int) -> None:
    import pandas as pd

    from xalign.overlap import average_with_intervals, overlap_changes, overlap_pairs, summarise_seeds

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    print(f"xalign.overlap calibration: {R} replicates per setting, seed {seed}")
    a, b = np.arange(10), np.r_[np.arange(6), np.arange(50, 54)]
    truth = np.mean([len(set(_perturb(a, 0.3, rng)) & set(_perturb(b, 0.3, rng))) for _ in range(20_000)]) / K
    hits = 0
    for _ in range(R):
        sel = _selections([a, b], 5, 0.3, rng)
        r = summarise_seeds(overlap_pairs(sel)).iloc[0]
        hits += r.overlap_lo <= truth <= r.overlap_hi
    print(_line(f"pair t interval over 5 seeds (truth {truth:.3f})", 0.95, hits, R))
    core = rng.choice(D, K, replace=False)
    truth = float(overlap_pairs(_selections(_world(rng, 300, core), 1, 0.3, rng)).overlap_rate.mean())
    hits = 0
    for i in range(R):
        avg = average_with_intervals(overlap_pairs(_selections(_world(rng, 13, core), 3, 0.3, rng)), seed=i).iloc[0]
        hits += avg.overlap_lo <= truth <= avg.overlap_hi
    print(_line(f"average: language-cluster bootstrap, 13 languages x 3 seeds (truth {truth:.3f})", 0.95, hits, R))
    rej = 0
    for i in range(R):
        world = _world(rng, 10, rng.choice(D, K, replace=False))
        sel = pd.concat([_selections(world, 3, 0.3, rng, "c1", 100), _selections(world, 3, 0.3, rng, "c2", 200)])
        rej += overlap_changes(overlap_pairs(sel), n_boot=1000, seed=i).p_value.iloc[0] < 0.05
    print(_line("drop test under no change, 10 languages x 3 seeds: p < 0.05", 0.05, rej, R))
    print(f"{time.perf_counter() - t0:.1f} s\n")


if __name__ == "__main__":
    main()
