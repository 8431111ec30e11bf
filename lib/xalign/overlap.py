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


def _validate(selections: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED if c not in selections.columns]
    if missing:
        raise ValueError(f"selections table: missing columns {missing} (have {list(selections.columns)})")
    dup = selections.duplicated(subset=_GROUP + ["language"], keep=False)
    if dup.any():
        r = selections[dup].iloc[0]
        raise ValueError(
            f"selections table: {int(dup.sum())} duplicate rows for checkpoint={r['checkpoint']} "
            f"layer={r['layer']} attribute={r['attribute']} language={r['language']}")


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
        ck, layer, attr = group
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
            a selection with duplicate neurons, neurons outside [0, d) or not k neurons
            (message names checkpoint/layer/attribute/language); alpha outside (0, 1).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"overlap_pairs: alpha={alpha} must be in (0, 1)")
    _validate(selections)
    cols: dict[str, list] = {c: [] for c in PAIR_COLUMNS}
    with _gc_frozen():  # multipletests(method="holm") runs gc.collect() on every call
        for group, g in selections.groupby(_GROUP, sort=True, dropna=False):
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
    out = pd.DataFrame(cols, columns=PAIR_COLUMNS)
    out["step"] = out["step"].astype("Int64")
    out = out.astype({"layer": "int64", "k": "int64", "d": "int64", "n_overlap": "int64",
                      "significant": "bool"})
    return _sort(out, ["layer", "attribute", "lang_a", "lang_b"])


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
        Columns :data:`PIVOT_COLUMNS`: one row per (checkpoint, step, layer, attribute,
        language) where ``language`` is the non-pivot member of a pair containing the pivot.
        Empty if the pivot has no pair.
    """
    m = (pairs["lang_a"] == pivot) | (pairs["lang_b"] == pivot)
    sub = pairs[m].copy()
    sub["language"] = np.where(sub["lang_a"] == pivot, sub["lang_b"], sub["lang_a"])
    out = sub[PIVOT_COLUMNS] if not sub.empty else pd.DataFrame(columns=PIVOT_COLUMNS)
    return _sort(out, ["layer", "attribute", "language"])
