"""Stage 6: correlation between cross-lingual neuron overlap and zero-shot transfer.

Method (Wang, Minervini & Ponti 2024, Sec. 4 and Table 1): Pearson's r (with its
two-sided p-value, ``scipy.stats.pearsonr``) between the overlap rate of probe selections
and the zero-shot transfer score of a model fine-tuned on the source language, per task:

* **average**: one point per checkpoint; x = overlap rate averaged over all language pairs
  (for one attribute and layer, or additionally averaged over attributes), y = transfer
  score averaged over the target languages (every language but the source and "en-dev").
* **pairwise**: one point per (target language, checkpoint); x = the source-target overlap
  rate, y = that target language's transfer score.

Inputs are the ``pairs`` table of :func:`xalign.overlap.overlap_pairs` and the
``transfer`` table of stage 5 (one row per checkpoint, task, language, metric).

Every r carries its uncertainty (:data:`UNCERTAINTY_COLUMNS`): the Fisher-z interval
(Fisher 1915/1921), an exact permutation p for few points (Pitman 1937), the range of r
leaving one checkpoint out, the partial r controlling for log10(step) (both overlap and
transfer trend with training), and for "pairwise" rows a bootstrap that resamples target
languages as clusters (Field & Welsh 2007; Cameron, Gelbach & Miller 2008).
:func:`survives` states per row whether r is distinguishable from noise.
"""

from __future__ import annotations

import itertools
import math
import warnings
from functools import lru_cache
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats as _st

from xalign.overlap import average_overlap, pair_overlap_with

#: The metric that counts as "the" transfer score of each task (other metrics are ignored).
DEFAULT_METRICS: dict[str, str] = {"pos": "f1", "xnli": "accuracy"}
#: Transfer-table languages that are never zero-shot targets (English dev of the source).
NON_TARGETS = ("en-dev",)
#: Uncertainty of each Table 1 r (both recipes, after the recipe's own columns):
#: ``r_lo, r_hi`` Fisher-z 95% interval (:func:`pearson_ci`); ``p_perm`` permutation p
#: (:func:`permutation_p`, exact for <= 9 points); ``r_loo_min, r_loo_max`` range of r leaving
#: one checkpoint out (:func:`leave_one_out_range`); ``r_partial, p_partial, n_partial``
#: partial r controlling for log10(step) (:func:`partial_pearson`; the final model, step
#: NaN, is not a point); ``r_boot_lo, r_boot_hi`` 95% cluster-bootstrap interval over target
#: languages (:func:`cluster_bootstrap_ci`; "pairwise" rows only, NaN for "average").
UNCERTAINTY_COLUMNS = ["r_lo", "r_hi", "p_perm", "r_loo_min", "r_loo_max", "r_partial", "p_partial",
                       "n_partial", "r_boot_lo", "r_boot_hi"]
#: Columns of :func:`correlation_table` (recipe "per_layer").
TABLE_COLUMNS = ["task", "kind", "attribute", "layer", "r", "p", "n"] + UNCERTAINTY_COLUMNS
#: Columns of :func:`correlation_table` with ``recipe="paper"``: one row per (task, kind);
#: ``attributes`` and ``layers`` say what x averages over (comma-separated).
PAPER_COLUMNS = ["task", "kind", "r", "p", "n", "attributes", "layers"] + UNCERTAINTY_COLUMNS
#: Table 1 recipes: xalign's per-layer, per-attribute table, and the authors' computation.
RECIPES = ("per_layer", "paper")
#: The attributes of the paper's checkpoint experiments (Sec. 4): x of its "average" rows.
PAPER_ATTRIBUTES = ("Number", "Gender", "POS")
#: Name of a series' final model (:data:`xalign.checkpoints.FINAL`); its step is NaN.
FINAL = "final"
_TRANSFER_REQUIRED = ["checkpoint", "task", "language", "metric", "value"]


def pearson(x: Iterable[float], y: Iterable[float]) -> tuple[float, float, int]:
    """Pearson's r and its two-sided p-value, robust to degenerate input.

    Pairs where x or y is NaN/inf are dropped first. With fewer than 3 remaining points
    or a constant x or y, r and p are NaN (no exception, no scipy warning).

    Returns:
        ``(r, p, n)`` with n the number of finite (x, y) points used.

    Raises:
        ValueError: x and y have different lengths.
    """
    x = np.asarray(list(x), dtype=float)
    y = np.asarray(list(y), dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"pearson: x and y differ in length ({x.size} vs {y.size})")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NearConstantInputWarning on nearly flat input
        res = _st.pearsonr(x, y)
    return float(res.statistic), float(res.pvalue), n


# ---- uncertainty of r (pure kernels: numpy/scipy, no file I/O) ----------------------------

#: Default confidence of every interval (Fisher z and cluster bootstrap).
CONFIDENCE = 0.95
#: Permutation test: exact (all n! orderings) up to this many points, Monte Carlo above.
EXACT_MAX = 9
#: Largest ``exact_max`` accepted (10! x 10 indices is already 36 MB).
_EXACT_LIMIT = 10
#: Monte Carlo permutations and cluster-bootstrap resamples, and their fixed seed.
N_RESAMPLES, N_BOOT, SEED = 9999, 2000, 0
#: Relative tolerance with which a resampled |r*| counts as ">= |r|" (ties count).
_TIE_RTOL = 1e-12


def _finite_pairs(name: str, x, y, *extra) -> tuple[np.ndarray, ...]:
    """x and y as float arrays (and ``extra`` arrays alongside), keeping the points where
    both x and y are finite. Raises ValueError on differing lengths."""
    x = np.asarray(list(x) if not isinstance(x, np.ndarray) else x, dtype=float).ravel()
    y = np.asarray(list(y) if not isinstance(y, np.ndarray) else y, dtype=float).ravel()
    extra = [np.asarray(list(e) if not isinstance(e, np.ndarray) else e).ravel() for e in extra]
    if x.shape != y.shape or any(e.shape != x.shape for e in extra):
        sizes = [x.size, y.size] + [e.size for e in extra]
        raise ValueError(f"{name}: inputs differ in length ({sizes})")
    ok = np.isfinite(x) & np.isfinite(y)
    return (x[ok], y[ok], *(e[ok] for e in extra))


def _check_confidence(name: str, confidence: float) -> float:
    confidence = float(confidence)
    if not 0 < confidence < 1:
        raise ValueError(f"{name}: confidence must lie in (0, 1), got {confidence}")
    return confidence


def _degenerate(x: np.ndarray, y: np.ndarray, n_min: int) -> bool:
    return x.size < n_min or np.ptp(x) == 0 or np.ptp(y) == 0


def _unit(v: np.ndarray) -> np.ndarray:
    """v centred and scaled to unit Euclidean norm (so r = unit(x) . unit(y))."""
    c = v - v.mean()
    return c / np.sqrt(c @ c)


def pearson_ci(x: Iterable[float], y: Iterable[float],
               confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Confidence interval of Pearson's r by Fisher's z transformation.

    Method: Fisher (1915, 1921): z = atanh(r) is approximately normal with standard error
    1/sqrt(n - 3), so the interval is tanh(atanh(r) -/+ z_{(1+c)/2} / sqrt(n - 3)); computed by
    ``scipy.stats.pearsonr(x, y).confidence_interval(confidence_level=confidence)``. It
    assumes independent, bivariate-normal points.

    Args:
        x, y: 1-D sequences of equal length n (any units); pairs where x or y is NaN/inf are
            dropped first.
        confidence: coverage of the interval, in (0, 1); default 0.95.

    Returns:
        ``(lo, hi)``, bounds on r (dimensionless, in [-1, 1]). Both NaN when fewer than 4
        finite points remain (Fisher z needs n > 3) or x or y is constant; (1, 1) or (-1, -1)
        up to rounding when |r| = 1.

    Raises:
        ValueError: x and y differ in length, or confidence is outside (0, 1).
    """
    confidence = _check_confidence("pearson_ci", confidence)
    x, y = _finite_pairs("pearson_ci", x, y)
    if _degenerate(x, y, 4):
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = _st.pearsonr(x, y).confidence_interval(confidence_level=confidence)
    return float(ci.low), float(ci.high)


@lru_cache(maxsize=4)
def _all_orderings(n: int) -> np.ndarray:
    """All n! orderings of range(n), shape (n!, n), int8 (read-only, cached)."""
    out = np.array(list(itertools.permutations(range(n))), dtype=np.int8).reshape(-1, n)
    out.setflags(write=False)
    return out


def permutation_p(x: Iterable[float], y: Iterable[float], exact_max: int = EXACT_MAX,
                  n_resamples: int = N_RESAMPLES, seed: int = SEED) -> float:
    """Two-sided permutation p-value of Pearson's r (H0: x and y are exchangeable pairings).

    Method: Pitman (1937), "Significance tests which may be applied to samples from any
    populations. II. The correlation coefficient test": under H0 every ordering of y
    against x is equally likely. The statistic is |r|; a permuted |r*| counts when
    |r*| >= |r| (1 - 1e-12), so numerically tied orderings count.

    * n <= ``exact_max``: exact, over all n! orderings (the observed one included), p =
      #{|r*| >= |r|} / n!; the seed is not used. E.g. 5 perfectly monotone points give
      p = 2/120 (the identity and the reversal).
    * otherwise Monte Carlo with ``n_resamples`` random orderings from
      ``numpy.random.default_rng(seed)``: p = (1 + #{|r*| >= |r|}) / (1 + n_resamples)
      (Phipson & Smyth 2010), never 0.

    ``scipy.stats.permutation_test`` is not used: its "two-sided" p is twice the smaller
    one-sided p, not the |r| test. Like the t-test p, this p assumes the points are
    exchangeable; points sharing a language (Table 1 "pairwise") are not, for which see
    :func:`cluster_bootstrap_ci`.

    Args:
        x, y: 1-D sequences of equal length n; pairs where x or y is NaN/inf are dropped.
        exact_max: largest n enumerated exactly, at most 10 (9! = 362,880 orderings).
        n_resamples: Monte Carlo orderings B (>= 1).
        seed: seed of the Monte Carlo generator (fixed, so results are deterministic).

    Returns:
        p in (0, 1]; NaN when fewer than 3 finite points remain or x or y is constant.

    Raises:
        ValueError: differing lengths, exact_max > 10, or n_resamples < 1.
    """
    if exact_max > _EXACT_LIMIT:
        raise ValueError(f"permutation_p: exact_max must be <= {_EXACT_LIMIT}, got {exact_max}")
    if n_resamples < 1:
        raise ValueError(f"permutation_p: n_resamples must be >= 1, got {n_resamples}")
    x, y = _finite_pairs("permutation_p", x, y)
    if _degenerate(x, y, 3):
        return math.nan
    n = x.size
    xs, ys = _unit(x), _unit(y)
    thr = abs(float(xs @ ys)) * (1 - _TIE_RTOL)
    if n <= exact_max:
        idx = _all_orderings(n)
        return float(np.count_nonzero(np.abs(ys[idx] @ xs) >= thr) / idx.shape[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)
    hits = done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        perm = rng.permuted(np.tile(ys, (b, 1)), axis=1)
        hits += int(np.count_nonzero(np.abs(perm @ xs) >= thr))
        done += b
    return (1 + hits) / (1 + n_resamples)


def leave_one_out_range(x: Iterable[float], y: Iterable[float],
                        groups: Iterable | None = None) -> tuple[float, float]:
    """Smallest and largest Pearson r when one group of points is left out at a time.

    A jackknife-style influence check (Quenouille 1949; Tukey 1958): if the range crosses 0,
    the sign of r hangs on a single group. For Table 1's "average" rows a group is one
    point (one checkpoint); for "pairwise" rows pass ``groups`` = checkpoint labels, so
    each step leaves out one checkpoint with all its languages.

    Args:
        x, y: 1-D sequences of equal length n; pairs where x or y is NaN/inf are dropped.
        groups: length-n labels (any hashable); default each point its own group. Points
            whose label is missing (None/NaN) are dropped.

    Returns:
        ``(min r, max r)`` over the leave-one-group-out samples whose r is defined (at least
        3 points, neither input constant, see :func:`pearson`); both NaN when there are
        fewer than 2 groups or no such sample.

    Raises:
        ValueError: inputs differ in length.
    """
    if groups is None:
        x, y = _finite_pairs("leave_one_out_range", x, y)
        codes, n_groups = np.arange(x.size), x.size
    else:
        x, y, g = _finite_pairs("leave_one_out_range", x, y, groups)
        codes, uniq = pd.factorize(pd.Series(g, dtype=object))
        keep = codes >= 0
        x, y, codes, n_groups = x[keep], y[keep], codes[keep], len(uniq)
    if n_groups < 2:
        return math.nan, math.nan
    rs = np.array([pearson(x[codes != k], y[codes != k])[0] for k in range(n_groups)])
    rs = rs[np.isfinite(rs)]
    return (float(rs.min()), float(rs.max())) if rs.size else (math.nan, math.nan)


def _cluster_resample_r(x: np.ndarray, y: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Pearson r of each cluster resample: ``counts[b, g]`` copies of cluster g's points
    (``codes`` in 0..G-1, counts shape (B, G)). NaN where x or y is constant in a resample.
    Uses per-cluster sums of the standardised data, so no resample is materialised."""
    xs, ys = (x - x.mean()) / x.std(), (y - y.mean()) / y.std()
    G = counts.shape[1]
    S = np.stack([np.bincount(codes, weights=w, minlength=G)
                  for w in (np.ones_like(xs), xs, ys, xs * xs, ys * ys, xs * ys)], axis=1)  # (G, 6)
    N, Sx, Sy, Sxx, Syy, Sxy = (counts @ S).T
    vx, vy, cxy = Sxx - Sx * Sx / N, Syy - Sy * Sy / N, Sxy - Sx * Sy / N
    ok = (vx > 1e-10 * N) & (vy > 1e-10 * N)
    r = np.full(N.shape, np.nan)
    r[ok] = np.clip(cxy[ok] / np.sqrt(vx[ok] * vy[ok]), -1.0, 1.0)
    return r


def cluster_bootstrap_ci(x: Iterable[float], y: Iterable[float], clusters: Iterable,
                         n_boot: int = N_BOOT, confidence: float = CONFIDENCE,
                         seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of Pearson's r resampling whole clusters.

    Method: the cluster (block) bootstrap — Field & Welsh (2007), "Bootstrapping clustered
    data", JRSS-B 69(3); Cameron, Gelbach & Miller (2008), "Bootstrap-based improvements for
    inference with clustered errors", REStat 90(3). The G clusters (Table 1 "pairwise":
    target languages, whose points over checkpoints are not independent) are drawn G
    times with replacement, all points of a drawn cluster kept, and r is recomputed. The
    interval is built on Fisher's z scale, ``tanh(atanh(r) ± t_{G-1} · sd(atanh(r*)))``:
    the bootstrap standard error with a Student-t critical value on G - 1 degrees of
    freedom, the small-cluster correction Cameron et al. (2008) recommend. The plain
    percentile interval under-covered with few clusters (benchmarks/bench_calibration.py,
    1000 replicates, nominal 0.95: 0.874 / 0.886 / 0.898 with 5 / 8 / 12 clusters).
    Resamples where r is undefined (x or y constant) or ±1 are dropped.

    Args:
        x, y: 1-D sequences of equal length n; pairs where x or y is NaN/inf are dropped.
        clusters: length-n cluster labels (any hashable); points with a missing label are
            dropped.
        n_boot: number of resamples B (>= 1).
        confidence: coverage, in (0, 1); default 0.95.
        seed: seed of ``numpy.random.default_rng`` (fixed: deterministic).

    Returns:
        ``(lo, hi)``, bounds on r; NaN when fewer than 3 clusters, r of the full sample is
        undefined (fewer than 3 points or constant input), or no resample has a defined r.

    Raises:
        ValueError: inputs differ in length, n_boot < 1, or confidence outside (0, 1).
    """
    confidence = _check_confidence("cluster_bootstrap_ci", confidence)
    if n_boot < 1:
        raise ValueError(f"cluster_bootstrap_ci: n_boot must be >= 1, got {n_boot}")
    x, y, c = _finite_pairs("cluster_bootstrap_ci", x, y, clusters)
    codes, uniq = pd.factorize(pd.Series(c, dtype=object), sort=True)  # draws independent of point order
    keep = codes >= 0
    x, y, codes = x[keep], y[keep], codes[keep]
    G = len(uniq)
    if G < 3 or _degenerate(x, y, 3):
        return math.nan, math.nan
    draws = np.random.default_rng(seed).integers(G, size=(n_boot, G))  # G clusters per resample
    counts = np.bincount((draws + G * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * G)
    r = _cluster_resample_r(x, y, codes, counts.reshape(n_boot, G).astype(float))
    r = r[np.isfinite(r) & (np.abs(r) < 1)]
    if r.size < 2:
        return math.nan, math.nan
    z_hat = math.atanh(float(np.clip(pearson(x, y)[0], -1 + 1e-15, 1 - 1e-15)))
    half = float(_st.t.ppf((1 + confidence) / 2, G - 1)) * float(np.std(np.arctanh(r), ddof=1))
    return math.tanh(z_hat - half), math.tanh(z_hat + half)


def partial_pearson(x: Iterable[float], y: Iterable[float], z: Iterable[float]) -> tuple[float, float, int]:
    """Partial correlation of x and y controlling for one covariate z, with its t-test p.

    Method: regression residuals (Fisher 1924, "The distribution of the partial correlation
    coefficient"): x and y are each regressed by ordinary least squares on [1, z]; the
    partial r is Pearson's r of the two residual vectors, equal to
    (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)). Its two-sided p is from
    t = r sqrt((n - 3) / (1 - r^2)) with n - 3 degrees of freedom. In Table 1, z = log10 of
    the training step: overlap and transfer both trend with training, and the partial r
    asks whether they co-vary beyond that shared trend.

    Args:
        x, y, z: 1-D sequences of equal length; points where any of the three is NaN/inf are
            dropped (the final model, step NaN, so drops out).

    Returns:
        ``(r, p, n)`` with n the points used; r and p NaN when n < 4, or x, y or z is
        constant, or a residual vanishes (x or y an exact linear function of z). p = 0 when
        |r| = 1.

    Raises:
        ValueError: inputs differ in length.
    """
    x, y, z = _finite_pairs("partial_pearson", x, y, z)
    z = z.astype(float)
    ok = np.isfinite(z)
    x, y, z = x[ok], y[ok], z[ok]
    n = int(x.size)
    if _degenerate(x, y, 4) or np.ptp(z) == 0:
        return math.nan, math.nan, n
    A = np.column_stack([np.ones(n), z])
    (ex, ey) = (v - A @ np.linalg.lstsq(A, v, rcond=None)[0] for v in (x, y))
    sx, sy = ex @ ex, ey @ ey
    if sx <= 1e-12 * np.sum((x - x.mean()) ** 2) or sy <= 1e-12 * np.sum((y - y.mean()) ** 2):
        return math.nan, math.nan, n
    r = float(np.clip((ex @ ey) / math.sqrt(sx * sy), -1.0, 1.0))
    df = n - 3
    if abs(r) >= 1.0:
        return r, 0.0, n
    t = r * math.sqrt(df / (1.0 - r * r))
    return r, float(2.0 * _st.t.sf(abs(t), df)), n


def task_scores(transfer: pd.DataFrame, *, source: str = "en",
                metrics: Mapping[str, str] | None = None, targets_only: bool = True) -> pd.DataFrame:
    """The transfer rows that count: each task's main metric, on target languages.

    Args:
        transfer: stage-5 table with ``checkpoint``, ``task``, ``language``, ``metric``,
            ``value`` (and optionally ``step``, ``n``).
        source: the fine-tuning language, excluded when ``targets_only``.
        metrics: task -> metric name; default :data:`DEFAULT_METRICS` ("pos" -> "f1",
            "xnli" -> "accuracy"). Tasks not in it and other metrics are dropped.
        targets_only: drop ``source`` and :data:`NON_TARGETS` ("en-dev"); with False only
            "en-dev" is dropped (the source's own test score is kept).

    Returns:
        The filtered rows (same columns), index reset.

    Raises:
        ValueError: missing columns, or two rows for one (checkpoint, task, language, metric).
    """
    missing = [c for c in _TRANSFER_REQUIRED if c not in transfer.columns]
    if missing:
        raise ValueError(f"transfer table: missing columns {missing} (have {list(transfer.columns)})")
    metrics = dict(DEFAULT_METRICS if metrics is None else metrics)
    keep = transfer["metric"] == transfer["task"].map(metrics)
    drop = set(NON_TARGETS) | ({source} if targets_only else set())
    keep &= ~transfer["language"].isin(drop)
    out = transfer[keep].reset_index(drop=True)
    dup = out.duplicated(subset=["checkpoint", "task", "language", "metric"], keep=False)
    if dup.any():
        r = out[dup].iloc[0]
        raise ValueError(f"transfer table: duplicate rows for checkpoint={r['checkpoint']} "
                         f"task={r['task']} language={r['language']} metric={r['metric']}")
    return out


def mean_transfer(transfer: pd.DataFrame, *, source: str = "en",
                  metrics: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Transfer score averaged over target languages, per (checkpoint, task).

    The y of Table 1's "average" rows and of Figure 3 (Wang et al. 2024, Sec. 4).

    Returns:
        Columns ``checkpoint``, ``step`` (if present in ``transfer``), ``task``, ``metric``,
        ``value`` (mean over targets, same units as the input), ``n_languages``.
    """
    s = task_scores(transfer, source=source, metrics=metrics)
    keys = ["checkpoint"] + (["step"] if "step" in s.columns else []) + ["task", "metric"]
    cols = keys + ["value", "n_languages"]
    if s.empty:
        return pd.DataFrame(columns=cols)
    out = (s.groupby(keys, sort=False, dropna=False)
            .agg(value=("value", "mean"), n_languages=("language", "nunique")).reset_index())
    return out[cols]


def _attribute_views(table: pd.DataFrame, attrs: list[str], keys: list[str],
                     attribute_mean: bool) -> list[tuple[str, pd.DataFrame]]:
    """(attribute label, rows with ``keys`` + overlap_rate) per attribute present in
    ``table``, plus their mean when at least two are present."""
    present = [a for a in attrs if (table["attribute"] == a).any()]
    views = [(a, table[table["attribute"] == a][keys + ["overlap_rate"]]) for a in present]
    if attribute_mean and len(present) > 1:
        sub = table[table["attribute"].isin(present)]
        mean = sub.groupby(keys, sort=False, dropna=False)["overlap_rate"].mean().reset_index()
        views.append(("mean", mean))
    return views


def correlation_table(pairs: pd.DataFrame, transfer: pd.DataFrame, *, source: str = "en",
                      attributes: Iterable[str] | None = None, layers: Iterable[int] | None = None,
                      metrics: Mapping[str, str] | None = None,
                      attribute_mean: bool = True, recipe: str = "per_layer") -> pd.DataFrame:
    """Pearson correlation of overlap and zero-shot transfer (the paper's Table 1).

    Method: Wang et al. (2024), Sec. 4 / Table 1; see the module docstring for the
    "average" (one point per checkpoint) and "pairwise" (one point per target language
    and checkpoint) variants. Overlap and transfer are joined on ``checkpoint``.
    ``recipe="paper"`` is the authors' computation instead (:func:`paper_table`).

    Args:
        recipe: "per_layer" (this function: one row per task, kind, attribute, layer) or
            "paper" (:func:`paper_table`, which takes ``source``, ``attributes``, ``layers``
            and ``metrics``; ``attribute_mean`` does not apply).
        pairs: output of :func:`xalign.overlap.overlap_pairs`.
        transfer: stage-5 table (see :func:`task_scores`); for each task only the metric
            in ``metrics`` counts, and "en-dev" is never a target.
        source: the fine-tuning (and pairwise pivot) language.
        attributes: attributes to report; default all in ``pairs``.
        layers: layers ℓ to report; default all in ``pairs``.
        metrics: task -> metric; default :data:`DEFAULT_METRICS`.
        attribute_mean: also report attribute "mean", where x is the overlap rate averaged
            over the chosen attributes (over those available for that checkpoint, or
            checkpoint and language), for layers where at least two chosen attributes
            have overlaps.

    A (layer, attribute) without any overlap row gives no row.

    Returns:
        Columns :data:`TABLE_COLUMNS`: ``task``, ``kind`` ("average" | "pairwise"),
        ``attribute`` (or "mean"), ``layer``, ``r``, ``p`` (two-sided), ``n`` (points).
        r and p are NaN when n < 3 or an input is constant. Then the uncertainty of r,
        :data:`UNCERTAINTY_COLUMNS` (see :func:`_pearson_row`): Fisher-z 95% interval,
        permutation p, leave-one-checkpoint-out range, partial r for log10(step) (step from
        ``pairs`` or ``transfer``; NaN without one), and for pairwise rows the 95% bootstrap
        interval resampling target languages.

    Raises:
        ValueError: bad transfer table (see :func:`task_scores`), or an unknown recipe.
    """
    if recipe not in RECIPES:
        raise ValueError(f"correlation recipe {recipe!r} unknown; known: {list(RECIPES)}")
    if recipe == "paper":
        return paper_table(pairs, transfer, source=source, attributes=attributes, layers=layers, metrics=metrics)
    attrs = sorted(pairs["attribute"].unique()) if attributes is None else list(attributes)
    lays = sorted(int(v) for v in pairs["layer"].unique()) if layers is None else [int(v) for v in layers]
    avg = average_overlap(pairs)
    piv = pair_overlap_with(pairs, source)
    log_step = _log_steps(pairs, transfer)
    scores = task_scores(transfer, source=source, metrics=metrics)
    means = mean_transfer(transfer, source=source, metrics=metrics)
    rows = []
    for task in sorted(scores["task"].unique()):
        y_avg = means[means["task"] == task][["checkpoint", "value"]]
        y_pair = scores[scores["task"] == task][["checkpoint", "language", "value"]]
        for layer in lays:
            a_l = avg[avg["layer"] == layer]
            for attr, x in _attribute_views(a_l, attrs, ["checkpoint"], attribute_mean):
                m = x.merge(y_avg, on="checkpoint", how="inner").rename(columns={"overlap_rate": "x"})
                rows.append(dict(task=task, kind="average", attribute=attr, layer=layer,
                                 **_pearson_row(m, log_step, "average")))
            p_l = piv[piv["layer"] == layer]
            for attr, x in _attribute_views(p_l, attrs, ["checkpoint", "language"], attribute_mean):
                m = x.merge(y_pair, on=["checkpoint", "language"], how="inner").rename(columns={"overlap_rate": "x"})
                rows.append(dict(task=task, kind="pairwise", attribute=attr, layer=layer,
                                 **_pearson_row(m, log_step, "pairwise")))
    out = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return out.astype({"layer": "int64", **_DTYPES})


def correlation_by_method(methods: pd.DataFrame, selections: pd.DataFrame, transfer: pd.DataFrame, *,
                          recipe: str = "per_layer", layers: Iterable[int] | None = None,
                          attributes: Iterable[str] | None = None, checkpoints: Iterable[str] | None = None,
                          alpha: float = 0.05) -> pd.DataFrame:
    """Table 1 once per neuron-selection method: does the overlap-transfer correlation depend
    on how neurons are picked (issue 15; Antverg & Belinkov 2022 on probe-based rankings)?

    Each method's selections (stage 3's ``probing/methods.parquet``, and greedy's
    ``selections.parquet`` as ``"greedy"``) go through the stage-4 and stage-6 computation
    unchanged: :func:`xalign.overlap.overlap_pairs` per replicate,
    :func:`xalign.overlap.summarise_seeds` over replicates (stage 4's ``pairs``), restricted to
    ``layers`` / ``attributes`` / ``checkpoints`` as stage 6 restricts them, then
    :func:`correlation_table` with ``recipe``. So the ``greedy`` rows equal the stage's Table 1.

    Args:
        methods: rows with ``method`` and the overlap columns (may be empty: greedy only).
        selections: stage 3's greedy selections.
        transfer: stage 5's results table.
        recipe: "per_layer" or "paper" (:func:`correlation_table`).
        layers, attributes, checkpoints: what stage 6 reads (``extraction.layers``,
            ``probe.attributes``, the series' checkpoints); None: all.
        alpha: family-wise error rate of the pairs' tests.

    Returns:
        ``method`` then the columns of :func:`correlation_table`, methods in name order.

    Raises:
        ValueError: ``methods`` without a ``method`` column, or as :func:`correlation_table`.
    """
    from xalign.overlap import overlap_pairs, summarise_seeds

    if len(methods) and "method" not in methods.columns:
        raise ValueError(f"correlation_by_method: methods table has no 'method' column (have {list(methods.columns)})")
    table = pd.concat([selections.assign(method="greedy"), methods], ignore_index=True)
    keep = pd.Series(True, index=table.index)
    for col, values in (("layer", layers), ("attribute", attributes), ("checkpoint", checkpoints)):
        if values is not None:
            keep &= table[col].isin(list(values))
    out = []
    for method, g in table[keep].groupby("method", sort=True):
        pairs = summarise_seeds(overlap_pairs(g.drop(columns="method"), alpha=alpha))
        if len(pairs):
            out.append(correlation_table(pairs, transfer, recipe=recipe).assign(method=method))
    if not out:
        return pd.DataFrame(columns=["method"])
    res = pd.concat(out, ignore_index=True)
    return res[["method"] + [c for c in res.columns if c != "method"]]


def _is_final(df: pd.DataFrame) -> pd.Series:
    """Rows of the final model: checkpoint named :data:`FINAL`, or a step that is NaN."""
    final = df["checkpoint"] == FINAL
    return final | df["step"].isna() if "step" in df.columns else final


def paper_table(pairs: pd.DataFrame, transfer: pd.DataFrame, *, source: str = "en",
                attributes: Iterable[str] | None = None, layers: Iterable[int] | None = None,
                metrics: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Table 1 as the authors computed it (Wang et al. 2024, Table 1; their released result files).

    * **average**: one point per *intermediate* checkpoint (the final model is left out).
      x = the overlap rate averaged over all language pairs, for each probed layer and each
      of ``attributes`` (default Number, Gender, POS), then averaged over the attributes,
      then over the layers. y = the task score averaged over every evaluated language,
      **including the source's own test score** ("en-dev" never counts).
    * **pairwise**: one point per (checkpoint, target language) for every checkpoint with
      transfer results, **the final model included**. x = the **POS** overlap rate between
      ``source`` and the target, averaged over the layers (POS for both tasks); y = that
      target's score. The source is not a target.

    Pearson's r and its two-sided p over those points (``scipy.stats.pearsonr``); call it
    per model, never on tables pooled across model scales.

    Args:
        pairs: :func:`xalign.overlap.overlap_pairs` output (final model: checkpoint
            ``"final"``, step NaN).
        transfer: stage-5 table (``checkpoint, step, task, language, metric, value, n``).
        source: the fine-tuning language (English).
        attributes: x of the average rows; default :data:`PAPER_ATTRIBUTES`.
        layers: layers averaged over; default every layer in ``pairs``.
        metrics: task -> metric; default :data:`DEFAULT_METRICS`.

    The uncertainty columns (:data:`UNCERTAINTY_COLUMNS`) are as in
    :func:`correlation_table`: for the pairwise rows leave-one-out drops one checkpoint
    with all its languages, the bootstrap resamples target languages, and the partial r
    leaves out the final model (step NaN), so ``n_partial`` < ``n`` there.

    Returns:
        Columns :data:`PAPER_COLUMNS`, one row per (task, kind); r and p are NaN when
        fewer than 3 points or an input is constant.

    Raises:
        ValueError: bad transfer table (see :func:`task_scores`).
    """
    attrs = list(PAPER_ATTRIBUTES if attributes is None else attributes)
    lays = sorted(int(v) for v in pairs["layer"].unique()) if layers is None else [int(v) for v in layers]
    sel = pairs[pairs["layer"].isin(lays)]
    avg = average_overlap(sel[sel["attribute"].isin(attrs)])
    avg = avg[~_is_final(avg)]
    x_avg = (avg.groupby(["checkpoint", "layer"])["overlap_rate"].mean()  # over attributes
             .groupby("checkpoint").mean().rename("x").reset_index())     # then over layers
    piv = pair_overlap_with(sel[sel["attribute"] == "POS"], source)
    x_pair = piv.groupby(["checkpoint", "language"])["overlap_rate"].mean().rename("x").reset_index()
    all_langs = task_scores(transfer, source=source, metrics=metrics, targets_only=False)
    targets = task_scores(transfer, source=source, metrics=metrics)
    log_step = _log_steps(pairs, transfer)
    rows = []
    for task in sorted(all_langs["task"].unique()):
        y = all_langs[(all_langs["task"] == task) & ~_is_final(all_langs)]
        y = y.groupby("checkpoint")["value"].mean().reset_index()
        m = x_avg.merge(y, on="checkpoint")
        rows.append(dict(task=task, kind="average", **_pearson_row(m, log_step, "average"),
                         attributes=",".join(attrs)))
        m = x_pair.merge(targets[targets["task"] == task][["checkpoint", "language", "value"]],
                         on=["checkpoint", "language"])
        rows.append(dict(task=task, kind="pairwise", **_pearson_row(m, log_step, "pairwise"), attributes="POS"))
    out = pd.DataFrame(rows, columns=[c for c in PAPER_COLUMNS if c != "layers"])
    out.insert(PAPER_COLUMNS.index("layers"), "layers", ",".join(map(str, lays)))
    return out.astype(_DTYPES)


_DTYPES = {"n": "int64", "r": "float64", "p": "float64", "n_partial": "int64",
           **{c: "float64" for c in UNCERTAINTY_COLUMNS if c != "n_partial"}}


def _log_steps(*tables: pd.DataFrame) -> dict:
    """checkpoint -> log10(step) from the tables' ``checkpoint``/``step`` columns (the first
    finite value wins); NaN for a missing step (the final model) or a step <= 0."""
    out: dict = {}
    for t in tables:
        if "step" not in t.columns or "checkpoint" not in t.columns or t.empty:
            continue
        u = t[["checkpoint", "step"]].drop_duplicates("checkpoint")
        steps = pd.to_numeric(u["step"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        pos = np.isfinite(steps) & (steps > 0)
        z = np.full(steps.shape, np.nan)
        z[pos] = np.log10(steps[pos])
        for ck, v in zip(u["checkpoint"], z):
            if not np.isfinite(out.get(ck, math.nan)):
                out[ck] = float(v)
    return out


def _pearson_row(m: pd.DataFrame, log_step: Mapping, kind: str) -> dict:
    """r, p, n and :data:`UNCERTAINTY_COLUMNS` of the points ``m`` (columns ``x``, ``value``,
    ``checkpoint`` and, for pairwise, ``language``). Leave-one-out leaves one checkpoint
    out (all its languages); the cluster bootstrap resamples languages (pairwise only)."""
    x, y = m["x"].to_numpy(dtype=float), m["value"].to_numpy(dtype=float)
    r, p, n = pearson(x, y)
    lo, hi = pearson_ci(x, y)
    loo = leave_one_out_range(x, y, groups=m["checkpoint"].to_numpy(dtype=object))
    z = m["checkpoint"].map(lambda c: log_step.get(c, math.nan)).to_numpy(dtype=float)
    r_z, p_z, n_z = partial_pearson(x, y, z)
    boot = (cluster_bootstrap_ci(x, y, m["language"].to_numpy(dtype=object)) if kind == "pairwise"
            else (math.nan, math.nan))
    return dict(r=r, p=p, n=n, r_lo=lo, r_hi=hi, p_perm=permutation_p(x, y), r_loo_min=loo[0],
                r_loo_max=loo[1], r_partial=r_z, p_partial=p_z, n_partial=n_z,
                r_boot_lo=boot[0], r_boot_hi=boot[1])


def _fmt_p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def _fmt_ci(lo: float, hi: float, digits: int = 2) -> str:
    return "[n/a]" if not (np.isfinite(lo) and np.isfinite(hi)) else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def _get(row, col: str) -> float:
    """A numeric field of a table row (Series or mapping); NaN when absent or NA."""
    v = row.get(col, math.nan) if hasattr(row, "get") else getattr(row, col, math.nan)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _r_cell(row, digits: int) -> str:
    """``r [lo, hi] p=<p> (perm <p_perm>)``; ``r (p)`` for a table without the uncertainty
    columns."""
    r, p = _get(row, "r"), _get(row, "p")
    if not np.isfinite(r):
        return f"n/a (n={int(_get(row, 'n'))})"
    if "r_lo" not in row or "p_perm" not in row:
        return f"{r:.{digits}f} ({_fmt_p(p)})"
    return (f"{r:.{digits}f} {_fmt_ci(_get(row, 'r_lo'), _get(row, 'r_hi'), digits)} p={_fmt_p(p)} "
            f"(perm {_fmt_p(_get(row, 'p_perm'))})")


def table1_markdown(table: pd.DataFrame, digits: int = 2) -> str:
    """Render :func:`correlation_table` output as a Markdown table like the paper's Table 1.

    Rows are task × kind (e.g. "XNLI average"), columns are "ℓ=<layer> <attribute>"; each
    cell is ``r [lo, hi] p=<p> (perm <p_perm>)``: r, its Fisher-z 95% interval ("[n/a]"
    below 4 points), the two-sided t-test p and the permutation p (``<0.001`` below
    0.001), or ``n/a (n=<n>)`` when r is undefined; a table without the uncertainty
    columns (:data:`UNCERTAINTY_COLUMNS`) gets ``r (p)`` cells. A last column lists the
    number(s) of points per row.

    A ``recipe="paper"`` table (:data:`PAPER_COLUMNS`) gets one row per task and kind:
    ``r (p)``, n, what x averages over, then the Fisher-z 95% interval, the permutation p,
    the range of r leaving one checkpoint out, the partial r controlling for log10(step)
    (its p and points), and the 95% interval of the bootstrap over target languages
    (pairwise rows; "—" for average rows).

    Raises:
        ValueError: ``table`` lacks one of the first 7 columns of :data:`TABLE_COLUMNS`.
    """
    base = TABLE_COLUMNS[:TABLE_COLUMNS.index("n") + 1]
    if "layer" not in table.columns and all(c in table.columns for c in PAPER_COLUMNS[:7]):
        return _paper_markdown(table, digits)
    missing = [c for c in base if c not in table.columns]
    if missing:
        raise ValueError(f"correlation table: missing columns {missing}")
    if table.empty:
        return "| task | kind |\n|---|---|\n"
    attrs = list(dict.fromkeys(table["attribute"]))
    attrs = sorted((a for a in attrs if a != "mean")) + (["mean"] if "mean" in attrs else [])
    cols = [(int(l), a) for l in sorted(table["layer"].unique()) for a in attrs
            if ((table["layer"] == l) & (table["attribute"] == a)).any()]
    header = ["task", "kind"] + [f"ℓ={l} {a}" for l, a in cols] + ["n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(cols) + 1)) + "|"]
    for (task, kind), g in table.groupby(["task", "kind"], sort=True):
        cells = [str(task).upper(), str(kind)]
        for l, a in cols:
            hit = g[(g["layer"] == l) & (g["attribute"] == a)]
            cells.append("" if hit.empty else _r_cell(hit.iloc[0], digits))
        cells.append("/".join(str(int(v)) for v in sorted(g["n"].unique())))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _paper_markdown(table: pd.DataFrame, digits: int) -> str:
    extra = "r_lo" in table.columns
    head = "| task | kind | r (p) | n | x: attributes | x: layers |"
    rule = "|---|---|---:|---:|---|---|"
    if extra:
        head += (" 95% CI (Fisher z) | p (permutation) | r, one checkpoint out | partial r, log step (p, n)"
                 " | 95% CI (language bootstrap) |")
        rule += "---:|---:|---:|---:|---:|"
    lines = [head, rule]
    for _, row in table.sort_values(["task", "kind"]).iterrows():
        cell = "n/a" if not np.isfinite(row.r) else f"{row.r:.{digits}f} ({_fmt_p(row.p)})"
        line = f"| {str(row.task).upper()} | {row.kind} | {cell} | {int(row.n)} | {row.attributes} | {row.layers} |"
        if extra:
            rz = _get(row, "r_partial")
            partial = ("n/a" if not np.isfinite(rz) else
                       f"{rz:.{digits}f} ({_fmt_p(_get(row, 'p_partial'))}, n={int(_get(row, 'n_partial'))})")
            boot = "—" if row.kind != "pairwise" else _fmt_ci(_get(row, "r_boot_lo"), _get(row, "r_boot_hi"), digits)
            line += (f" {_fmt_ci(_get(row, 'r_lo'), _get(row, 'r_hi'), digits)} | {_fmt_p(_get(row, 'p_perm'))} |"
                     f" {_fmt_ci(_get(row, 'r_loo_min'), _get(row, 'r_loo_max'), digits)} | {partial} | {boot} |")
        lines.append(line)
    return "\n".join(lines) + "\n"


def _excludes_zero(lo: float, hi: float) -> bool:
    return bool(np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0))


def survives(row, alpha: float = 0.05) -> str:
    """One plain-English sentence: is this Table 1 correlation distinguishable from noise?

    Rule: it survives only if the Fisher-z 95% interval (``r_lo, r_hi``) excludes 0 AND the
    permutation p (``p_perm``) is below ``alpha`` AND, for a "pairwise" row, the
    cluster-bootstrap interval over target languages (``r_boot_lo, r_boot_hi``) excludes 0.
    An undefined interval or p counts as not excluding / not below. The sentence also
    gives the leave-one-checkpoint-out range when it crosses 0, and the partial r
    controlling for log step when defined. The intervals are the table's (95%, whatever
    ``alpha`` is).

    Args:
        row: one row of :func:`correlation_table` / :func:`paper_table` (a Series or a
            mapping with ``task``, ``kind``, ``r``, ``n`` and :data:`UNCERTAINTY_COLUMNS`;
            ``attribute`` and ``layer`` are named when present).
        alpha: level of the permutation test.

    Returns:
        e.g. "XNLI pairwise: r = 0.31, 95% CI [-0.02, 0.58] includes 0, permutation p = 0.050;
        ...: not distinguishable from no correlation; controlling for log step, r = 0.10
        (p = 0.500)."
    """
    get = row.get if hasattr(row, "get") else (lambda k, d=None: getattr(row, k, d))
    label = f"{str(get('task', '')).upper()} {get('kind', '')}"
    if get("layer") is not None and get("attribute") is not None:
        label += f" (ℓ={int(get('layer'))} {get('attribute')})"
    r, n = _get(row, "r"), _get(row, "n")
    if not np.isfinite(r):
        n_txt = f"n = {int(n)} points" if np.isfinite(n) else "too few points"
        return f"{label}: r is undefined ({n_txt} or constant input): no evidence either way."
    lo, hi, pp = _get(row, "r_lo"), _get(row, "r_hi"), _get(row, "p_perm")
    pairwise = get("kind") == "pairwise"
    fisher_ok = _excludes_zero(lo, hi)
    perm_ok = bool(np.isfinite(pp) and pp < alpha)
    parts = [f"r = {r:.2f}",
             (f"95% CI [{lo:.2f}, {hi:.2f}] {'excludes' if fisher_ok else 'includes'} 0"
              if np.isfinite(lo) and np.isfinite(hi) else "95% CI undefined (fewer than 4 points)"),
             f"permutation p = {_fmt_p(pp)}"]
    ok = fisher_ok and perm_ok
    if pairwise:
        blo, bhi = _get(row, "r_boot_lo"), _get(row, "r_boot_hi")
        boot_ok = _excludes_zero(blo, bhi)
        parts.append(f"language-bootstrap 95% CI [{blo:.2f}, {bhi:.2f}] {'excludes' if boot_ok else 'includes'} 0"
                     if np.isfinite(blo) and np.isfinite(bhi) else "language-bootstrap CI undefined")
        ok = ok and boot_ok
    verdict = (f"distinguishable from no correlation (alpha = {alpha:g})" if ok
               else "not distinguishable from no correlation")
    text = f"{label}: {', '.join(parts)}: {verdict}"
    l0, l1 = _get(row, "r_loo_min"), _get(row, "r_loo_max")
    if np.isfinite(l0) and np.isfinite(l1) and l0 <= 0 <= l1:
        text += f"; leaving one checkpoint out, r ranges from {l0:.2f} to {l1:.2f} (crosses 0)"
    rz = _get(row, "r_partial")
    if np.isfinite(rz):
        text += f"; controlling for log step, r = {rz:.2f} (p = {_fmt_p(_get(row, 'p_partial'))})"
    return text + "."
