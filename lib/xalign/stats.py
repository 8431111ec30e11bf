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
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats as _st

from xalign.overlap import average_overlap, pair_overlap_with

#: The metric that counts as "the" transfer score of each task (other metrics are ignored).
DEFAULT_METRICS: dict[str, str] = {"pos": "f1", "xnli": "accuracy"}
#: Transfer-table languages that are never zero-shot targets (English dev of the source).
NON_TARGETS = ("en-dev",)
#: Columns of :func:`correlation_table` (recipe "per_layer").
TABLE_COLUMNS = ["task", "kind", "attribute", "layer", "r", "p", "n"]
#: Columns of :func:`correlation_table` with ``recipe="paper"``: one row per (task, kind);
#: ``attributes`` and ``layers`` say what x averages over (comma-separated).
PAPER_COLUMNS = ["task", "kind", "r", "p", "n", "attributes", "layers"]
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
        r and p are NaN when n < 3 or an input is constant.

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
    scores = task_scores(transfer, source=source, metrics=metrics)
    means = mean_transfer(transfer, source=source, metrics=metrics)
    rows = []
    for task in sorted(scores["task"].unique()):
        y_avg = means[means["task"] == task][["checkpoint", "value"]]
        y_pair = scores[scores["task"] == task][["checkpoint", "language", "value"]]
        for layer in lays:
            a_l = avg[avg["layer"] == layer]
            for attr, x in _attribute_views(a_l, attrs, ["checkpoint"], attribute_mean):
                m = x.merge(y_avg, on="checkpoint", how="inner")
                r, p, n = pearson(m["overlap_rate"], m["value"])
                rows.append(dict(task=task, kind="average", attribute=attr, layer=layer, r=r, p=p, n=n))
            p_l = piv[piv["layer"] == layer]
            for attr, x in _attribute_views(p_l, attrs, ["checkpoint", "language"], attribute_mean):
                m = x.merge(y_pair, on=["checkpoint", "language"], how="inner")
                r, p, n = pearson(m["overlap_rate"], m["value"])
                rows.append(dict(task=task, kind="pairwise", attribute=attr, layer=layer, r=r, p=p, n=n))
    out = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return out.astype({"layer": "int64", "n": "int64", "r": "float64", "p": "float64"})


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
    rows = []
    for task in sorted(all_langs["task"].unique()):
        y = all_langs[(all_langs["task"] == task) & ~_is_final(all_langs)]
        y = y.groupby("checkpoint")["value"].mean().reset_index()
        m = x_avg.merge(y, on="checkpoint")
        rows.append(dict(task=task, kind="average", **_pearson_row(m), attributes=",".join(attrs)))
        m = x_pair.merge(targets[targets["task"] == task][["checkpoint", "language", "value"]],
                         on=["checkpoint", "language"])
        rows.append(dict(task=task, kind="pairwise", **_pearson_row(m), attributes="POS"))
    out = pd.DataFrame(rows, columns=PAPER_COLUMNS[:-1]).assign(layers=",".join(map(str, lays)))
    return out.astype({"n": "int64", "r": "float64", "p": "float64"})


def _pearson_row(m: pd.DataFrame) -> dict:
    r, p, n = pearson(m["x"], m["value"])
    return dict(r=r, p=p, n=n)


def _fmt_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def table1_markdown(table: pd.DataFrame, digits: int = 2) -> str:
    """Render :func:`correlation_table` output as a Markdown table like the paper's Table 1.

    Rows are task × kind (e.g. "XNLI average"), columns are "ℓ=<layer> <attribute>";
    a ``recipe="paper"`` table (:data:`PAPER_COLUMNS`) gets one ``r (p)`` column instead;
    each cell is ``r (p)`` with p two-sided (``<0.001`` below 0.001), or ``n/a (n=<n>)``
    when r is undefined. A last column lists the number(s) of points per row.

    Raises:
        ValueError: ``table`` lacks a column of :data:`TABLE_COLUMNS`.
    """
    if "layer" not in table.columns and all(c in table.columns for c in PAPER_COLUMNS):
        return _paper_markdown(table, digits)
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
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
            if hit.empty:
                cells.append("")
                continue
            r, p, n = hit.iloc[0][["r", "p", "n"]]
            cells.append(f"n/a (n={int(n)})" if not np.isfinite(r) else f"{r:.{digits}f} ({_fmt_p(p)})")
        cells.append("/".join(str(int(v)) for v in sorted(g["n"].unique())))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _paper_markdown(table: pd.DataFrame, digits: int) -> str:
    lines = ["| task | kind | r (p) | n | x: attributes | x: layers |", "|---|---|---:|---:|---|---|"]
    for _, row in table.sort_values(["task", "kind"]).iterrows():
        cell = f"n/a" if not np.isfinite(row.r) else f"{row.r:.{digits}f} ({_fmt_p(row.p)})"
        lines.append(f"| {str(row.task).upper()} | {row.kind} | {cell} | {int(row.n)} | {row.attributes} | {row.layers} |")
    return "\n".join(lines) + "\n"
