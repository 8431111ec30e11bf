"""Stage 4: cross-lingual neuron overlap of probe selections and its significance.

Method (Wang, Minervini & Ponti 2024, Sec. 3-4): for a checkpoint, a layer ℓ and a
morphosyntactic attribute, the latent-variable probe selects a set of k neurons per
language out of the d dimensions of ``hidden_states[ℓ-1]``. For two languages with
selections A and B the *overlap rate* is |A ∩ B| / k. Under the null hypothesis that both
are independent uniformly random k-subsets of {0, ..., d-1}, |A ∩ B| is hypergeometric
(population d, k successes, k draws), so its expectation gives the *chance rate* k / d and
the one-sided p-value of an observed overlap o is the exact tail P[|A ∩ B| ≥ o] =
``scipy.stats.hypergeom.sf(o - 1, d, k, k)``. The p-values of all language pairs of one
(checkpoint, layer, attribute) group are Holm-corrected together (family-wise error rate
``alpha``).

Input is the ``selections`` table of stage 3 (one row per probe; see
:func:`overlap_pairs`); output tables are plain :class:`pandas.DataFrame` objects.
"""

from __future__ import annotations

import contextlib
import gc
import math
import warnings
from itertools import combinations
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
from scipy.stats import hypergeom
from statsmodels.stats.multitest import multipletests

#: The columns of :func:`overlap_pairs`' output, in order.
PAIR_COLUMNS = [
    "checkpoint", "step", "layer", "attribute", "lang_a", "lang_b", "k", "d",
    "n_overlap", "overlap_rate", "chance_rate", "p_value", "p_holm", "significant",
]
#: The columns of :func:`average_overlap`' output, in order.
AVERAGE_COLUMNS = [
    "checkpoint", "step", "layer", "attribute", "k", "d", "overlap_rate", "overlap_rate_std",
    "n_pairs", "chance_rate", "n_significant",
]
#: The columns of :func:`pair_overlap_with`' output, in order.
PIVOT_COLUMNS = [
    "checkpoint", "step", "layer", "attribute", "language", "k", "d", "n_overlap",
    "overlap_rate", "chance_rate", "p_value", "p_holm", "significant",
]
_REQUIRED = ["checkpoint", "step", "layer", "attribute", "language", "d", "k", "neurons"]
_GROUP = ["checkpoint", "layer", "attribute"]


def overlap_p_value(n_overlap: int, d: int, k: int) -> float:
    """Exact one-sided p-value P[|A ∩ B| ≥ n_overlap] for two random k-subsets of d neurons.

    |A ∩ B| ~ Hypergeometric(M=d, n=k, N=k) when A and B are independent uniformly random
    k-subsets (Wang et al. 2024, Sec. 4: overlap vs. the random baseline k/d).

    Raises:
        ValueError: ``k`` not in [1, d] or ``n_overlap`` not in [0, k].
    """
    if not 1 <= k <= d:
        raise ValueError(f"overlap_p_value: need 1 <= k <= d, got k={k}, d={d}")
    if not 0 <= n_overlap <= k:
        raise ValueError(f"overlap_p_value: n_overlap={n_overlap} outside [0, k={k}]")
    return float(hypergeom.sf(n_overlap - 1, d, k, k))


#: Replicate keys: a probe seed and a lemma-split seed (``data.split_seeds``) make one replicate.
_REPLICATE = ["seed", "split_seed"]


def _replicates(df: pd.DataFrame) -> list[str]:
    """The replicate columns the table has (``seed``, ``split_seed``)."""
    return [c for c in _REPLICATE if c in df.columns]


def _groups(selections: pd.DataFrame) -> list[str]:
    """The grouping keys: (checkpoint, layer, attribute), and the replicate columns it has."""
    return _GROUP + _replicates(selections)


def _validate(selections: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED if c not in selections.columns]
    if missing:
        raise ValueError(f"selections table: missing columns {missing} (have {list(selections.columns)})")
    dup = selections.duplicated(subset=_groups(selections) + ["language"], keep=False)
    if dup.any():
        r = selections[dup].iloc[0]
        raise ValueError(
            f"selections table: {int(dup.sum())} duplicate rows for checkpoint={r['checkpoint']} "
            f"layer={r['layer']} attribute={r['attribute']} language={r['language']}"
            + "".join(f" {c}={r[c]}" for c in _replicates(selections)))


@contextlib.contextmanager
def _gc_frozen() -> Iterator[None]:
    """Freeze the objects already tracked by the garbage collector for the block.

    statsmodels' Holm branch calls ``gc.collect()`` on every call, which costs ~0.1-0.5 s
    with torch loaded; with the existing heap frozen it costs microseconds. Nothing is
    done if something else has already frozen objects (its freeze is left untouched).
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _neuron_set(row: pd.Series, d: int, k: int) -> frozenset[int]:
    where = (f"checkpoint={row['checkpoint']} layer={row['layer']} "
             f"attribute={row['attribute']} language={row['language']}")
    raw = row["neurons"]
    if raw is None or isinstance(raw, (str, bytes)) or np.ndim(raw) == 0:
        raise ValueError(f"selections.neurons ({where}): expected a list of ints, got {raw!r:.40}")
    try:
        neurons = np.asarray(raw).ravel()
        if neurons.dtype == object:
            neurons = neurons.astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"selections.neurons ({where}): expected a list of ints, got {raw!r:.40}") from None
    if neurons.size and not np.issubdtype(neurons.dtype, np.integer):
        if not np.all(np.equal(np.mod(neurons.astype(float), 1), 0)):
            raise ValueError(f"selections.neurons ({where}): non-integer neuron indices")
        neurons = neurons.astype(np.int64)
    if len(neurons) != k:
        raise ValueError(f"selections.neurons ({where}): {len(neurons)} neurons but k={k}")
    s = frozenset(int(n) for n in neurons)
    if len(s) != len(neurons):
        raise ValueError(f"selections.neurons ({where}): duplicate neuron indices")
    bad = sorted(n for n in s if not 0 <= n < d)
    if bad:
        raise ValueError(f"selections.neurons ({where}): indices {bad[:5]} out of [0, d={d})")
    return s


def _single(values: pd.Series, field: str, group: tuple) -> int:
    uniq = sorted({int(v) for v in values})
    if len(uniq) != 1:
        ck, layer, attr = group[:3]
        hint = " (hidden-size mismatch between artefacts?)" if field == "d" else ""
        raise ValueError(
            f"selections.{field}: checkpoint={ck} layer={layer} attribute={attr} mixes "
            f"{field} values {uniq}{hint}")
    return uniq[0]


def overlap_pairs(selections: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Pairwise neuron overlap of every two languages' selections, with Holm-corrected p-values.

    Method: Wang et al. (2024), Sec. 3-4. For each (checkpoint, layer, attribute) group and
    each unordered pair of languages that both have a selection: ``n_overlap`` = |A ∩ B|,
    ``overlap_rate`` = |A ∩ B| / k, ``chance_rate`` = k / d (the expected rate for random
    k-subsets), ``p_value`` = hypergeom.sf(o - 1, d, k, k) (see :func:`overlap_p_value`),
    ``p_holm`` = Holm-corrected over the pairs of the group (statsmodels ``multipletests``),
    ``significant`` = ``p_holm < alpha``.

    Args:
        selections: one row per probe with at least ``checkpoint`` (str), ``step`` (int or
            NA), ``layer`` (int, ℓ = 1 is the embedding output), ``attribute``, ``language``,
            ``d`` (hidden size), ``k`` and ``neurons`` (k distinct ints in [0, d)).
        alpha: family-wise error rate per group, in (0, 1).

    Returns:
        One row per (checkpoint, layer, attribute, lang_a, lang_b) with ``lang_a < lang_b``
        (alphabetical), columns :data:`PAIR_COLUMNS`, sorted by step, checkpoint, layer,
        attribute, lang_a, lang_b. Groups with a single language contribute no rows.

    Raises:
        ValueError: missing columns; duplicate (checkpoint, layer, attribute, language) rows;
            different ``d`` or ``k`` inside a group (message names the group and values);
            (with a ``seed`` column, groups are per seed and rows carry ``seed``: one row per
            pair and seed; :func:`summarise_seeds` averages them);
            a selection with duplicate neurons, neurons outside [0, d) or not k neurons
            (message names checkpoint/layer/attribute/language); alpha outside (0, 1).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"overlap_pairs: alpha={alpha} must be in (0, 1)")
    _validate(selections)
    reps = _replicates(selections)
    cols: dict[str, list] = {c: [] for c in PAIR_COLUMNS + reps}
    with _gc_frozen():  # multipletests(method="holm") runs gc.collect() on every call
        for group, g in selections.groupby(_groups(selections), sort=True, dropna=False):
            d = _single(g["d"], "d", group)
            k = _single(g["k"], "k", group)
            if not 1 <= k <= d:
                raise ValueError(f"selections.k: checkpoint={group[0]} layer={group[1]} "
                                 f"attribute={group[2]}: k={k} not in [1, d={d}]")
            steps = g["step"].dropna().unique()
            step = steps[0] if len(steps) else pd.NA
            sets = {str(r["language"]): _neuron_set(r, d, k) for r in g.to_dict("records")}
            langs = sorted(sets)
            pairs = list(combinations(langs, 2))
            if not pairs:
                continue
            o = np.array([len(sets[a] & sets[b]) for a, b in pairs], dtype=np.int64)
            p = hypergeom.sf(o - 1, d, k, k)
            _, p_holm, _, _ = multipletests(p, alpha=alpha, method="holm")
            n = len(pairs)
            cols["checkpoint"] += [group[0]] * n
            cols["step"] += [step] * n
            cols["layer"] += [int(group[1])] * n
            cols["attribute"] += [group[2]] * n
            cols["lang_a"] += [a for a, _ in pairs]
            cols["lang_b"] += [b for _, b in pairs]
            cols["k"] += [k] * n
            cols["d"] += [d] * n
            cols["n_overlap"] += o.tolist()
            cols["overlap_rate"] += (o / k).tolist()
            cols["chance_rate"] += [k / d] * n
            cols["p_value"] += p.astype(float).tolist()
            cols["p_holm"] += p_holm.astype(float).tolist()
            cols["significant"] += (p_holm < alpha).tolist()
            for i, c in enumerate(reps):
                cols[c] += [int(group[3 + i])] * n
    out = pd.DataFrame(cols, columns=list(cols))
    out["step"] = out["step"].astype("Int64")
    out = out.astype({"layer": "int64", "k": "int64", "d": "int64", "n_overlap": "int64",
                      "significant": "bool"})
    return _sort(out, ["layer", "attribute", "lang_a", "lang_b"] + reps)


def _sort(df: pd.DataFrame, rest: list[str]) -> pd.DataFrame:
    return df.sort_values(["step", "checkpoint", *rest], na_position="last",
                          kind="stable").reset_index(drop=True)


def average_overlap(pairs: pd.DataFrame) -> pd.DataFrame:
    """Average overlap rate over language pairs, per (checkpoint, step, layer, attribute).

    The quantity of the paper's Figure 1-3 and the x of Table 1's "average" rows
    (Wang et al. 2024, Sec. 4).

    Args:
        pairs: output of :func:`overlap_pairs`.

    Returns:
        Columns :data:`AVERAGE_COLUMNS`: ``overlap_rate`` (mean over pairs),
        ``overlap_rate_std`` (sample std over pairs, NaN for one pair), ``n_pairs``,
        ``chance_rate`` (k / d), ``n_significant`` (pairs with Holm-corrected p < alpha).
    """
    if pairs.empty:
        return pd.DataFrame(columns=AVERAGE_COLUMNS)
    keys = ["checkpoint", "step", "layer", "attribute"]
    g = pairs.groupby(keys, sort=False, dropna=False)
    out = g.agg(k=("k", "first"), d=("d", "first"), overlap_rate=("overlap_rate", "mean"),
                overlap_rate_std=("overlap_rate", "std"), n_pairs=("overlap_rate", "size"),
                chance_rate=("chance_rate", "first"),
                n_significant=("significant", "sum")).reset_index()
    out["n_significant"] = out["n_significant"].astype("int64")
    return _sort(out[AVERAGE_COLUMNS], ["layer", "attribute"])


def overlap_matrix(pairs: pd.DataFrame, checkpoint: str, layer: int, attribute: str,
                   languages: Iterable[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Language × language overlap-rate and significance matrices of one group (for heatmaps).

    Source: Wang et al. (2024), Appendix B.1 heatmaps.

    Args:
        pairs: output of :func:`overlap_pairs`.
        checkpoint, layer, attribute: the group.
        languages: row/column order; default all languages of the group, alphabetical.
            Languages without a pair get NaN rates.

    Returns:
        ``(rate, significant)``: square DataFrames indexed by language on both axes;
        ``rate`` is symmetric with NaN on the diagonal, ``significant`` is boolean
        (Holm-corrected p < alpha) with False on the diagonal.

    Raises:
        ValueError: no pair for that (checkpoint, layer, attribute).
    """
    g = pairs[(pairs["checkpoint"] == checkpoint) & (pairs["layer"] == layer)
              & (pairs["attribute"] == attribute)]
    if g.empty:
        raise ValueError(f"overlap pairs: no rows for checkpoint={checkpoint} layer={layer} "
                         f"attribute={attribute}")
    langs = list(languages) if languages is not None else sorted(set(g["lang_a"]) | set(g["lang_b"]))
    rate = pd.DataFrame(np.nan, index=pd.Index(langs, name="language"), columns=langs)
    sig = pd.DataFrame(False, index=pd.Index(langs, name="language"), columns=langs)
    known = set(langs)
    for a, b, r, s in zip(g["lang_a"], g["lang_b"], g["overlap_rate"], g["significant"]):
        if a in known and b in known:
            rate.loc[a, b] = rate.loc[b, a] = float(r)
            sig.loc[a, b] = sig.loc[b, a] = bool(s)
    return rate, sig


def pair_overlap_with(pairs: pd.DataFrame, pivot: str = "en") -> pd.DataFrame:
    """Overlap of every language with one pivot (the transfer source), per group.

    The x of Table 1's "pairwise" rows and of Figure 4 (Wang et al. 2024, Sec. 4).

    Args:
        pairs: output of :func:`overlap_pairs`.
        pivot: the pivot language (ISO 639-1), e.g. the fine-tuning source "en".

    Returns:
        Columns :data:`PIVOT_COLUMNS` (and :data:`SEED_COLUMNS` when ``pairs`` has them):
        one row per (checkpoint, step, layer, attribute, language) where ``language`` is the non-pivot member of a pair containing the pivot.
        Empty if the pivot has no pair.
    """
    m = (pairs["lang_a"] == pivot) | (pairs["lang_b"] == pivot)
    sub = pairs[m].copy()
    sub["language"] = np.where(sub["lang_a"] == pivot, sub["lang_b"], sub["lang_a"])
    cols = PIVOT_COLUMNS + [c for c in SEED_COLUMNS if c in pairs.columns]  # from summarise_seeds
    out = sub[cols] if not sub.empty else pd.DataFrame(columns=cols)
    return _sort(out, ["layer", "attribute", "language"])


# ---------------------------------------------------------------------------------------
# seeds, intervals and tests (our addition: the paper reports single numbers)

_PAIR_KEYS = ["checkpoint", "step", "layer", "attribute", "lang_a", "lang_b"]
#: Columns :func:`summarise_seeds` adds to :data:`PAIR_COLUMNS`.
SEED_COLUMNS = ["n_seeds", "overlap_sd", "overlap_lo", "overlap_hi"]


def _t_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (NaN for fewer than 2)."""
    from scipy.stats import t

    n = len(values)
    if n < 2:
        return math.nan, math.nan
    m, se = float(np.mean(values)), float(np.std(values, ddof=1)) / math.sqrt(n)
    h = float(t.ppf(0.5 + confidence / 2, n - 1)) * se
    return max(0.0, m - h), min(1.0, m + h)  # rates lie in [0, 1]


def summarise_seeds(pairs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """One row per language pair from per-seed pairs: mean over probe seeds with an interval.

    ``overlap_rate`` and ``n_overlap`` are the means over replicates (each seed's selections
    compared with the same seed's; a replicate is a probe seed and, with ``split_seed``, a
    lemma-split seed); ``overlap_sd`` their sample standard deviation;
    ``overlap_lo, overlap_hi`` the Student-t ``confidence`` interval of the mean over seeds,
    clipped to [0, 1] (NaN with one seed: with 3-10 seeds a percentile bootstrap over seeds under-covers, the
    t interval does not; see the calibration test). Significance is an intersection-union
    test: ``p_value`` and ``p_holm`` are the largest over seeds, so ``significant`` means
    "above chance in every seed" (valid at level alpha, Berger 1982).

    Args:
        pairs: :func:`overlap_pairs` output with a ``seed`` column (without one, each
            pair counts as one seed).
        confidence: in (0, 1).

    Returns:
        :data:`PAIR_COLUMNS` + :data:`SEED_COLUMNS`; ``n_overlap`` is float.

    Raises:
        ValueError: ``confidence`` out of (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"summarise_seeds: confidence={confidence} must be in (0, 1)")
    cols = PAIR_COLUMNS + SEED_COLUMNS
    if pairs.empty:
        return pd.DataFrame(columns=cols)
    g = pairs.groupby(_PAIR_KEYS, sort=False, dropna=False)
    out = g.agg(k=("k", "first"), d=("d", "first"), n_overlap=("n_overlap", "mean"),
                overlap_rate=("overlap_rate", "mean"), chance_rate=("chance_rate", "first"),
                p_value=("p_value", "max"), p_holm=("p_holm", "max"), significant=("significant", "all"),
                n_seeds=("overlap_rate", "size"), overlap_sd=("overlap_rate", "std")).reset_index()
    ci = g["overlap_rate"].apply(lambda v: _t_interval(v.to_numpy(), confidence))
    out["overlap_lo"] = [c[0] for c in ci]
    out["overlap_hi"] = [c[1] for c in ci]
    out = out.astype({"layer": "int64", "k": "int64", "d": "int64", "n_seeds": "int64", "significant": "bool"})
    return _sort(out[cols], ["layer", "attribute", "lang_a", "lang_b"])


#: Columns of :func:`self_overlap`.
SELF_COLUMNS = ["checkpoint", "step", "layer", "attribute", "language", "k", "d", "n_seeds",
                "self_overlap_rate", "jaccard"]


def self_overlap(selections: pd.DataFrame) -> pd.DataFrame:
    """Selection stability across probe seeds: the self-overlap ceiling of each dataset.

    For one (checkpoint, layer, attribute, language) with replicates s = 1..S (probe seeds, and
    lemma-split seeds when ``data.split_seeds`` has several), the mean over the S(S-1)/2 pairs of the overlap rate |A_s ∩ A_t| / k and of the Jaccard index
    |A_s ∩ A_t| / |A_s ∪ A_t|. Two seeds of the *same* language share the data, so this is
    the ceiling a cross-language overlap can reach with these probes: a cross-language
    rate is only meaningful relative to it (and to chance k/d).

    Args:
        selections: stage-3 table with ``seed`` (see :func:`overlap_pairs`).

    Returns:
        :data:`SELF_COLUMNS`; rates NaN for datasets with one seed.
    """
    _validate(selections)
    rows = []
    for key, g in selections.groupby(["checkpoint", "layer", "attribute", "language"], sort=True):
        d, k = int(g["d"].iloc[0]), int(g["k"].iloc[0])
        sets = [_neuron_set(r, d, k) for r in g.to_dict("records")]
        inter = np.array([len(a & b) for a, b in combinations(sets, 2)], dtype=float)
        union = np.array([len(a | b) for a, b in combinations(sets, 2)], dtype=float)
        rows.append(dict(checkpoint=key[0], step=g["step"].iloc[0], layer=int(key[1]), attribute=key[2],
                         language=key[3], k=k, d=d, n_seeds=len(sets),
                         self_overlap_rate=float((inter / k).mean()) if len(inter) else math.nan,
                         jaccard=float((inter / union).mean()) if len(inter) else math.nan))
    out = pd.DataFrame(rows, columns=SELF_COLUMNS)
    out["step"] = out["step"].astype("Int64")
    return _sort(out, ["layer", "attribute", "language"])


def _rate_cube(g: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """(languages, O (S, L, L)) overlap rates of one group's per-replicate pairs (S replicates:
    probe seed x lemma-split seed); NaN where absent."""
    reps = _replicates(g)
    rep = g.groupby(reps, sort=True).ngroup().to_numpy() if reps else np.zeros(len(g), dtype=int)
    langs = sorted(set(g["lang_a"]) | set(g["lang_b"]))
    li = {l: i for i, l in enumerate(langs)}
    O = np.full((int(rep.max()) + 1 if len(rep) else 0, len(langs), len(langs)), np.nan)
    a, b, s = g["lang_a"].map(li).to_numpy(), g["lang_b"].map(li).to_numpy(), rep
    O[s, a, b] = O[s, b, a] = g["overlap_rate"].to_numpy(dtype=float)
    return langs, O


def _boot_average(O: np.ndarray, rng: np.random.Generator, n_boot: int,
                  lang_idx: np.ndarray | None = None) -> np.ndarray:
    """(n_boot,) average overlap over language pairs with languages resampled as clusters.

    O: (S, L, L) per-seed overlap rates (NaN diagonal), averaged over seeds first: seed noise
    enters through each pair's seed mean. Languages are drawn with replacement (L of them),
    the same language drawn twice giving no pair with itself; ``lang_idx`` (n_boot, L)
    fixes the draws (paired tests). Resampling seeds as well would count the seed noise
    twice: with it, the drop test of :func:`overlap_changes` gave no p below 0.05 in 200
    null replicates (tests/test_overlap_seeds.py).
    """
    L = O.shape[1]
    li = rng.integers(0, L, size=(n_boot, L)) if lang_idx is None else lang_idx
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: the diagonal
        Obar = np.nanmean(O, axis=0)  # (L, L)
        sub = Obar[li[:, :, None], li[:, None, :]]  # (B, L, L)
        upper = np.triu(np.ones((L, L), dtype=bool), 1)[None] & (li[:, :, None] != li[:, None, :])
        sub = np.where(upper, sub, np.nan)
        return np.nanmean(sub.reshape(n_boot, -1), axis=1)


def _point_average(O: np.ndarray) -> float:
    """Mean over language pairs of the seed-averaged rates of an (S, L, L) cube."""
    iu = np.triu_indices(O.shape[1], 1)
    return float(np.nanmean(O[:, iu[0], iu[1]]))


def _t_boot_interval(estimate: float, boot: np.ndarray, n_clusters: int, confidence: float) -> tuple[float, float]:
    """``estimate ± t_{G-1} · sd(boot)``: the bootstrap standard error with a Student-t critical
    value on G - 1 degrees of freedom (Cameron, Gelbach & Miller 2008's few-cluster correction;
    the plain percentile interval covered 0.897 at nominal 0.95 with 13 languages,
    benchmarks/bench_calibration.py). NaN without two finite resamples."""
    from scipy.stats import t

    boot = boot[np.isfinite(boot)]
    if boot.size < 2 or n_clusters < 2 or not np.isfinite(estimate):
        return math.nan, math.nan
    half = float(t.ppf((1 + confidence) / 2, n_clusters - 1)) * float(np.std(boot, ddof=1))
    return estimate - half, estimate + half


#: Columns :func:`average_with_intervals` adds to :data:`AVERAGE_COLUMNS`.
AVERAGE_CI_COLUMNS = ["n_seeds", "overlap_lo", "overlap_hi", "self_overlap_rate"]


def average_with_intervals(pairs: pd.DataFrame, self_table: pd.DataFrame | None = None,
                           n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Average overlap per (checkpoint, layer, attribute) with a bootstrap interval and the ceiling.

    The point estimate is :func:`average_overlap`'s (mean over pairs and seeds). The interval is
    ``estimate ± t_{L-1} · sd`` of a bootstrap that resamples the L languages as clusters (pairs
    sharing a language are not independent; Field & Welsh 2007) on the seed-averaged
    overlaps, so it covers the seed noise (through each pair's value) and the choice of
    languages (see ``_boot_average``). ``self_overlap_rate``
    is the mean over languages of :func:`self_overlap` (NaN with one seed), next to
    ``chance_rate`` = k/d.

    Args:
        pairs: per-seed :func:`overlap_pairs` output (a ``seed`` column; without one, one seed).
        self_table: :func:`self_overlap` output, or None.
        n_boot: bootstrap resamples (>= 100). confidence: in (0, 1). seed: numpy seed.

    Returns:
        :data:`AVERAGE_COLUMNS` + :data:`AVERAGE_CI_COLUMNS`.

    Raises:
        ValueError: ``n_boot`` < 100 or ``confidence`` out of (0, 1).
    """
    if n_boot < 100 or not 0 < confidence < 1:
        raise ValueError(f"average_with_intervals: n_boot={n_boot} must be >= 100 and confidence={confidence} in (0, 1)")
    avg = average_overlap(pairs.drop(columns=_REPLICATE, errors="ignore"))
    cols = AVERAGE_COLUMNS + AVERAGE_CI_COLUMNS
    if avg.empty:
        return pd.DataFrame(columns=cols)
    avg["n_pairs"] = pairs.drop_duplicates(_PAIR_KEYS).groupby(
        ["checkpoint", "layer", "attribute"], sort=False).size().reindex(
        pd.MultiIndex.from_frame(avg[["checkpoint", "layer", "attribute"]])).to_numpy()
    rng = np.random.default_rng(seed)
    lo, hi, ns = [], [], []
    groups = dict(tuple(pairs.groupby(["checkpoint", "layer", "attribute"], sort=False)))
    for key in zip(avg["checkpoint"], avg["layer"], avg["attribute"]):
        _, O = _rate_cube(groups[key])
        b = _boot_average(O, rng, n_boot)
        q = _t_boot_interval(_point_average(O), b, O.shape[1], confidence)
        lo.append(max(0.0, q[0]))
        hi.append(min(1.0, q[1]))
        ns.append(O.shape[0])
    avg["n_seeds"], avg["overlap_lo"], avg["overlap_hi"] = ns, lo, hi
    if self_table is not None and len(self_table):
        ceil = self_table.groupby(["checkpoint", "layer", "attribute"])["self_overlap_rate"].mean()
        avg["self_overlap_rate"] = [float(ceil.get(k, np.nan)) for k in
                                    zip(avg["checkpoint"], avg["layer"], avg["attribute"])]
    else:
        avg["self_overlap_rate"] = np.nan
    return avg[cols]


#: Columns of :func:`overlap_changes`.
CHANGE_COLUMNS = ["layer", "attribute", "checkpoint_from", "checkpoint_to", "step_from", "step_to",
                  "overlap_from", "overlap_to", "delta", "delta_lo", "delta_hi", "p_value", "p_holm",
                  "significant", "drop"]


def overlap_changes(pairs: pd.DataFrame, alpha: float = 0.05, n_boot: int = 2000, confidence: float = 0.95,
                    seed: int = 0) -> pd.DataFrame:
    """Does the average overlap change between consecutive checkpoints beyond seed noise?

    For each (layer, attribute) and consecutive checkpoints t, t+1 (by step; the final model,
    step NaN, last), Δ = average overlap at t+1 minus at t over the languages both have. Its
    bootstrap distribution resamples languages as clusters with the *same* draw for both
    checkpoints (the comparison is paired by language pair) on the seed-averaged overlaps,
    so each pair's seed noise at both checkpoints is in the spread; the two-sided bootstrap p-value is
    ``min(1, 2 min(P*(Δ* <= 0), P*(Δ* >= 0)))`` with the +1 correction
    (Davison & Hinkley 1997, Sec. 4.4), and the p-values of one (layer, attribute) are
    Holm-corrected over its steps (statsmodels). ``drop`` = significant and Δ < 0: the
    drops the paper discusses (Sec. 4), marked in Figures 1 and 3.

    Args:
        pairs: per-seed :func:`overlap_pairs` output. alpha: family-wise error rate per
            (layer, attribute). n_boot: resamples (>= 100). confidence: of ``delta_lo/hi``.
        seed: numpy seed.

    Returns:
        :data:`CHANGE_COLUMNS`, one row per consecutive pair of checkpoints.

    Raises:
        ValueError: alpha, confidence out of (0, 1) or n_boot < 100.
    """
    if not 0 < alpha < 1 or not 0 < confidence < 1 or n_boot < 100:
        raise ValueError(f"overlap_changes: need alpha, confidence in (0, 1) and n_boot >= 100, "
                         f"got {alpha}, {confidence}, {n_boot}")
    rng = np.random.default_rng(seed)
    rows = []
    for (layer, attr), g in pairs.groupby(["layer", "attribute"], sort=True):
        steps = g.drop_duplicates("checkpoint").sort_values("step", na_position="last")
        ckpts = list(steps["checkpoint"])
        step_of = steps.set_index("checkpoint")["step"]
        cubes = {c: _rate_cube(gc) for c, gc in g.groupby("checkpoint", sort=False)}  # each used twice
        family = []
        for a, b in zip(ckpts, ckpts[1:]):
            (la, Oa), (lb, Ob) = cubes[a], cubes[b]
            common = sorted(set(la) & set(lb))
            if len(common) < 3:
                continue
            Oa = Oa[:, [la.index(x) for x in common]][:, :, [la.index(x) for x in common]]
            Ob = Ob[:, [lb.index(x) for x in common]][:, :, [lb.index(x) for x in common]]
            iu = np.triu_indices(len(common), 1)
            x_a, x_b = float(np.nanmean(Oa[:, iu[0], iu[1]])), float(np.nanmean(Ob[:, iu[0], iu[1]]))
            li = rng.integers(0, len(common), size=(n_boot, len(common)))
            delta = _boot_average(Ob, rng, n_boot, li) - _boot_average(Oa, rng, n_boot, li)
            delta = delta[np.isfinite(delta)]
            p = min(1.0, 2 * min((1 + np.sum(delta <= 0)) / (1 + len(delta)), (1 + np.sum(delta >= 0)) / (1 + len(delta))))
            q = _t_boot_interval(x_b - x_a, delta, len(common), confidence)
            family.append(dict(layer=int(layer), attribute=attr, checkpoint_from=a, checkpoint_to=b,
                               step_from=step_of[a], step_to=step_of[b], overlap_from=x_a, overlap_to=x_b, delta=x_b - x_a,
                               delta_lo=float(q[0]), delta_hi=float(q[1]), p_value=p))
        if family:
            with _gc_frozen():
                _, p_holm, _, _ = multipletests([r["p_value"] for r in family], alpha=alpha, method="holm")
            for r, ph in zip(family, p_holm):
                r.update(p_holm=float(ph), significant=bool(ph < alpha), drop=bool(ph < alpha and r["delta"] < 0))
            rows += family
    out = pd.DataFrame(rows, columns=CHANGE_COLUMNS)
    return out.astype({"step_from": "Int64", "step_to": "Int64", "significant": "bool", "drop": "bool"})


# ---------------------------------------------------------------------------------------
# other selection methods (probe.compare_methods; our addition: the paper uses greedy only)

#: Columns of :func:`overlap_by_method`.
METHOD_AVERAGE_COLUMNS = ["checkpoint", "step", "layer", "attribute", "method", "k", "d", "overlap_rate",
                          "n_pairs", "n_seeds", "chance_rate", "n_significant"]
#: Columns of :func:`method_agreement`.
AGREEMENT_COLUMNS = ["checkpoint", "step", "layer", "attribute", "method", "k", "d", "agreement",
                     "agreement_sd", "n_probes", "chance_rate"]


def overlap_by_method(methods: pd.DataFrame, selections: pd.DataFrame | None = None,
                      alpha: float = 0.05) -> pd.DataFrame:
    """Average cross-lingual overlap rate per (checkpoint, layer, attribute, method).

    Each method's selections (``probing/methods.parquet``, one row per probe and method;
    with ``selections``, greedy's ``probing/selections.parquet`` as method ``"greedy"``) go
    through the stage-4 kernels unchanged: :func:`overlap_pairs` per replicate (a seed's
    selections against the same seed's, Holm over the group's pairs) and the mean over pairs
    and replicates of :func:`average_overlap`, i.e. the point estimate of the stage's
    ``average`` table (Wang et al. 2024, Sec. 3-4). So greedy's rows equal that table's
    ``overlap_rate``, and a method's rows say whether the overlap depends on the selector.

    Args:
        methods: rows with ``method`` and the :func:`overlap_pairs` columns (``checkpoint,
            step, layer, attribute, language, d, k, neurons``, replicate columns ``seed``,
            ``split_seed`` when present). May be empty.
        selections: the stage-3 greedy selections, or None.
        alpha: family-wise error rate per group, in (0, 1).

    Returns:
        :data:`METHOD_AVERAGE_COLUMNS`: ``overlap_rate`` (fraction of k, mean over pairs and
        replicates), ``n_pairs`` (distinct language pairs), ``n_seeds`` (replicates),
        ``chance_rate`` k/d, ``n_significant`` (pairs above chance in every replicate, as
        :func:`summarise_seeds`). Sorted by step, checkpoint, layer, attribute, method.

    Raises:
        ValueError: as :func:`overlap_pairs` (per method), or ``methods`` without ``method``.
    """
    if len(methods) and "method" not in methods.columns:
        raise ValueError(f"overlap_by_method: methods table has no 'method' column (have {list(methods.columns)})")
    frames = [df for df in (selections.assign(method="greedy") if selections is not None else None, methods)
              if df is not None and len(df)]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["method"])
    out = []
    for method, g in table.groupby("method", sort=True):
        by_seed = overlap_pairs(g.drop(columns="method"), alpha=alpha)
        if by_seed.empty:
            continue
        avg = average_overlap(by_seed.drop(columns=_REPLICATE, errors="ignore"))
        per_pair = summarise_seeds(by_seed).groupby(["checkpoint", "layer", "attribute"], sort=False)
        keys = pd.MultiIndex.from_frame(avg[["checkpoint", "layer", "attribute"]])
        avg["n_pairs"] = per_pair.size().reindex(keys).to_numpy()
        avg["n_seeds"] = per_pair["n_seeds"].max().reindex(keys).to_numpy()
        avg["n_significant"] = per_pair["significant"].sum().reindex(keys).to_numpy().astype("int64")
        out.append(avg.assign(method=method))
    if not out:
        return pd.DataFrame(columns=METHOD_AVERAGE_COLUMNS)
    return _sort(pd.concat(out, ignore_index=True)[METHOD_AVERAGE_COLUMNS], ["layer", "attribute", "method"])


def method_agreement(methods: pd.DataFrame) -> pd.DataFrame:
    """How often another method picks greedy's neurons, per (checkpoint, layer, attribute, method).

    ``agreement_with_greedy`` of ``probing/methods.parquet`` is |A ∩ G| / k for one probe
    (:func:`xalign.selection.selection_agreement`: the method's top k against greedy's on the
    same dataset and seed); here its mean and sample sd over the group's probes (languages x
    seeds x lemma-split seeds), next to chance k/d (two independent random k-subsets of d).

    Args:
        methods: rows with ``checkpoint, step, layer, attribute, method, k, d,
            agreement_with_greedy``. May be empty.

    Returns:
        :data:`AGREEMENT_COLUMNS`, fractions of k; ``agreement_sd`` NaN for one probe.

    Raises:
        ValueError: a required column missing (one line naming them).
    """
    need = ["checkpoint", "step", "layer", "attribute", "method", "k", "d", "agreement_with_greedy"]
    missing = [c for c in need if c not in methods.columns]
    if len(methods) and missing:
        raise ValueError(f"method_agreement: methods table is missing columns {missing}")
    if methods.empty:
        return pd.DataFrame(columns=AGREEMENT_COLUMNS)
    g = methods.groupby(["checkpoint", "step", "layer", "attribute", "method"], sort=False, dropna=False)
    out = g.agg(k=("k", "first"), d=("d", "first"), agreement=("agreement_with_greedy", "mean"),
                agreement_sd=("agreement_with_greedy", "std"),
                n_probes=("agreement_with_greedy", "size")).reset_index()
    out["chance_rate"] = out["k"] / out["d"]
    return _sort(out[AGREEMENT_COLUMNS], ["layer", "attribute", "method"])
