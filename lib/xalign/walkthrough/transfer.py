"""Notebooks 05 and 06, inline: one fine-tuning run of stage 5 (its English-dev curve and
per-language zero-shot scores), and the scatter behind each cell of Table 1.

Nothing here is a second implementation of the method. The functions pick one example of a
run, call what the stages call (:func:`xalign.transfer.finetune_pos` /
:func:`~xalign.transfer.finetune_xnli` on the data of :func:`xalign.stages.transfer.pos_sets` /
:func:`~xalign.stages.transfer.xnli_sets` with :meth:`xalign.transfer.TransferConfig.from_params`;
:func:`xalign.overlap.average_overlap`, :func:`xalign.overlap.pair_overlap_with`,
:func:`xalign.stats.task_scores`, :func:`xalign.stats.mean_transfer`,
:func:`xalign.stats.pearson`) and draw. ``tests/test_walkthrough_transfer.py`` checks that the
inline unit gives the stage's rows, and that each scatter's Pearson r is its Table 1 r.

Notebook 05 (Wang et al. 2024, Sec. 4.2):

* :func:`default_unit`, :func:`finetune_one` — one (checkpoint, task, fine-tuning seed) unit of
  stage 5, trained inline: its result rows (as ``transfer/results_by_seed.parquet``) and its
  English-dev curve (as ``transfer/dev_history.parquet``);
* :func:`fig_dev_curve` — dev score against the fine-tuning optimiser step, the kept step marked;
* :func:`scores_table`, :func:`fig_scores` — the zero-shot score per language with its 95%
  bootstrap interval;
* :func:`sweep_rows`, :func:`compare_with_sweep` — the sweep's rows of the same unit, and the
  difference.

Notebook 06 (Wang et al. 2024, Sec. 4.2, Table 1):

* :func:`load_cell_inputs` — the overlap pairs and transfer table as stage 6 reads them;
* :func:`default_cell`, :func:`inline_cell`, :func:`table_row` — one ``per_layer`` cell
  computed inline (points, r, its Fisher-z interval), and the stage's row for it;
* :func:`cell_points` — the (x = overlap rate, y = transfer score) points of one Table 1 row;
* :func:`check_cells` — every row's r recomputed from its points, next to the table's;
* :func:`fig_cell`, :func:`fig_cells` — the scatter(s), r and its Fisher-z interval in the title.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .probing import WalkthroughError, _fig, show

__all__ = ["InlineRun", "UNIT_KEYS", "WalkthroughError", "cell_points", "check_cells", "compare_with_sweep",
           "default_cell", "default_unit", "fig_cell", "fig_cells", "fig_dev_curve", "fig_scores", "finetune_one",
           "inline_cell", "load_cell_inputs", "load_history", "scores_table", "show", "sweep_rows", "table_row"]

#: Result columns that say which unit a row of ``transfer/results_by_seed.parquet`` is.
UNIT_KEYS = ["checkpoint", "task", "seed"]


# ---------------------------------------------------------------------------------------
# notebook 05: one fine-tuning run


@dataclass
class InlineRun:
    """One stage-5 unit trained inline (Wang et al. 2024, Sec. 4.2).

    Attributes:
        checkpoint, step: the pre-training checkpoint (name, training step; None for a final model).
        task: ``"pos"`` or ``"xnli"``. seed: the fine-tuning seed.
        config: the :class:`xalign.transfer.TransferConfig` used (the stage's).
        sizes: one row per set (``train``, ``dev`` (English), ``eval <language>``) with ``n``
            (sentences or premise-hypothesis pairs) and, for POS, ``words``.
        n_labels: classes of the head (17 UPOS tags; 3 NLI labels).
        results: the rows stage 5 writes for this unit (:func:`xalign.transfer.finetune_pos`
            columns, plus ``checkpoint``, ``step``, ``seed``).
        history: the English-dev curve, :data:`xalign.stages.transfer.HISTORY_COLUMNS`.
        seconds: wall-clock time of the fine-tuning and evaluation.
    """

    checkpoint: str
    step: int | None
    task: str
    seed: int
    config: Any
    sizes: pd.DataFrame
    n_labels: int
    results: pd.DataFrame
    history: pd.DataFrame
    seconds: float

    def describe(self) -> str:
        """One line: which unit, the set sizes, the steps and evaluations, the kept step."""
        r = self.results.iloc[0]
        n_tr = int(self.sizes.loc["train", "n"])
        what = "sentences" if self.task == "pos" else "pairs"
        return (f"{self.task} at {self.checkpoint} (step {self.step}), fine-tuning seed {self.seed}: "
                f"{n_tr} English train {what}, {int(self.sizes.loc['dev', 'n'])} dev, "
                f"{len(self.sizes) - 2} target sets; {self.n_labels} labels; {int(r.n_steps)} optimiser steps "
                f"(batch {self.config.batch_size} × accumulation {self.config.grad_accum}, {self.config.epochs} "
                f"epoch(s)), {int(r.n_evals)} dev evaluations, kept step {int(r.best_step)} "
                f"(epoch {int(r.best_epoch)}); {self.seconds:.1f} s")


def default_unit(P: Any) -> dict[str, Any]:
    """The unit the notebook shows unless told otherwise: the last non-excluded checkpoint of
    ``checkpoints.json``, POS if ``transfer.tasks`` has it (else its first task), and the
    first fine-tuning seed of ``transfer.seeds``.

    Raises:
        WalkthroughError: no checkpoint, or ``transfer.tasks`` is empty.
        ArtefactError: no ``checkpoints.json`` yet.
    """
    from ..stages._common import checkpoint_rows

    ckpts = checkpoint_rows(P.run_dir())
    tasks = list(P.transfer.tasks)
    if not ckpts or not tasks:
        raise WalkthroughError(f"{P.run_name}: nothing to fine-tune ({len(ckpts)} checkpoints, "
                               f"transfer.tasks = {tasks})")
    return {"checkpoint": ckpts[-1]["name"], "task": "pos" if "pos" in tasks else tasks[0],
            "seed": P.transfer.seed_list(P.seed)[0]}


def _set_sizes(task: str, train: Any, dev: Any, evals: dict) -> pd.DataFrame:
    sets = [("train", train), ("dev", dev), *((f"eval {l}", v) for l, v in evals.items())]
    rows = []
    for name, v in sets:
        row = {"set": name, "n": len(v)}
        if task == "pos":
            row["words"] = sum(len(forms) for forms, _ in v)
        rows.append(row)
    return pd.DataFrame(rows).set_index("set")


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside (the stage runs with ``params.threads``), restored after."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def finetune_one(P: Any, checkpoint: str | None = None, task: str | None = None,
                 seed: int | None = None) -> InlineRun:
    """One unit of stage 5, trained inline exactly as the stage's ``finetune`` trains it: the
    checkpoint's weights (:func:`xalign.checkpoints.local_files`), the task's sets
    (:func:`xalign.stages.transfer.pos_sets` / ``xnli_sets``), the
    :class:`~xalign.transfer.TransferConfig` of ``params.transfer`` with ``seed``, and
    ``params.threads`` torch threads; nothing is written, nothing resumed.

    Wang et al. 2024, Sec. 4.2: (Q)LoRA fine-tuning on English, the parameters of the best
    English-dev evaluation kept, then zero-shot evaluation per target language.

    Args:
        P: the run's params. checkpoint, task, seed: the unit (each left out: :func:`default_unit`).

    Raises:
        WalkthroughError: the checkpoint, task or seed is not one of the run's.
        FileNotFoundError, ValueError: as :func:`xalign.transfer.finetune_pos` / ``_xnli``.
    """
    from .. import checkpoints as ck
    from ..stages import transfer as st
    from ..stages._common import checkpoint_rows
    from ..transfer import POS_LABELS, XNLI_LABELS, TransferConfig, finetune_pos, finetune_xnli

    ex = default_unit(P)
    checkpoint, task = checkpoint or ex["checkpoint"], task or ex["task"]
    seed = ex["seed"] if seed is None else int(seed)
    rows = {c["name"]: c for c in checkpoint_rows(P.run_dir())}
    seeds = P.transfer.seed_list(P.seed)
    if checkpoint not in rows or task not in P.transfer.tasks or seed not in seeds:
        raise WalkthroughError(f"{P.run_name}: no stage-5 unit {checkpoint}/{task}/seed-{seed} (checkpoints "
                               f"{sorted(rows)}, tasks {list(P.transfer.tasks)}, seeds {seeds})")
    c = rows[checkpoint]
    cfg = TransferConfig.from_params(P.transfer, seed=seed, task=task)
    sets = (st.pos_sets if task == "pos" else st.xnli_sets)(P)
    model_dir, tok_dir = ck.local_files(ck.checkpoint_from_row(c))
    fn = finetune_pos if task == "pos" else finetune_xnli
    history: list[dict] = []
    t0 = time.perf_counter()
    with _threads(P.threads):
        df = fn(model_dir, *sets, cfg, revision=None, tokenizer_path=tok_dir, history=history).assign(task=task)
    secs = time.perf_counter() - t0
    df.insert(0, "step", c["step"])
    df.insert(0, "checkpoint", c["name"])
    df["seed"] = seed
    hist = st.history_table(history, c, task, seed, int(df["best_step"].iloc[0]))
    return InlineRun(checkpoint=checkpoint, step=c["step"], task=task, seed=seed, config=cfg,
                     sizes=_set_sizes(task, *sets), n_labels=len(POS_LABELS if task == "pos" else XNLI_LABELS),
                     results=df, history=hist, seconds=secs)


def fig_dev_curve(history: pd.DataFrame, title: str = "") -> Figure:
    """English-dev score (POS seqeval F1 or XNLI accuracy, in [0, 1]) at each evaluation
    against the fine-tuning optimiser step (rows of :data:`~xalign.stages.transfer.HISTORY_COLUMNS`,
    one unit or several: one line per (checkpoint, task, seed)); the kept evaluation (the first
    maximum, whose parameters are evaluated on the targets) marked, epoch ends dotted.
    Model selection on English dev as in Wang et al. 2024, Sec. 4.2. Returns one Axes."""
    fig, (ax,) = _fig(1, (6.4, 3.6))
    for i, (key, h) in enumerate(history.groupby(UNIT_KEYS, sort=False)):
        h = h.sort_values("eval_step")
        label = f"{key[0]} {key[1]} seed {key[2]}"
        ax.plot(h.eval_step, h.dev_score, marker="o", color=f"C{i % 10}", label=label)
        k = h[h.kept]
        ax.scatter(k.eval_step, k.dev_score, s=140, facecolors="none", edgecolors="C3", zorder=3,
                   label="kept (best English dev)" if i == 0 else None)
        for e in h.groupby("epoch").eval_step.max().iloc[:-1]:
            ax.axvline(e, color="0.7", linestyle=":", linewidth=1)
    task = str(history.task.iloc[0]) if len(history) else ""
    ax.set_xlabel("fine-tuning optimiser step")
    ax.set_ylabel({"pos": "English dev seqeval F1", "xnli": "English dev accuracy"}.get(task, "English dev score"))
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    ax.set_title(title or "Model selection on English dev")
    return fig


def scores_table(results: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """One row per language of one unit's results: ``value`` (the task's main metric,
    :data:`xalign.stats.DEFAULT_METRICS`, unless ``metric``), its 95% percentile-bootstrap
    interval ``ci_low``/``ci_high`` (over sentences or pairs), ``n``; ``target`` is False for
    English dev and English test (the source, not a zero-shot target).

    Raises:
        WalkthroughError: no row with that metric.
    """
    from ..stats import DEFAULT_METRICS, NON_TARGETS

    task = str(results.task.iloc[0])
    metric = metric or DEFAULT_METRICS[task]
    r = results[results.metric == metric]
    if r.empty:
        raise WalkthroughError(f"{task}: no metric {metric!r} (have {sorted(results.metric.unique())})")
    out = r[["language", "value", "ci_low", "ci_high", "n"]].set_index("language")
    out["target"] = ~out.index.isin([*NON_TARGETS, "en"])
    return out.rename_axis(f"{task} {metric}")


def fig_scores(results: pd.DataFrame, metric: str | None = None, title: str = "") -> Figure:
    """The zero-shot score per language (bars) with its 95% bootstrap interval (error bars),
    English dev and English test in grey, and the mean over targets dashed (Wang et al. 2024,
    Sec. 4.2: zero-shot transfer from English). One Axes, one bar per language.

    Raises:
        WalkthroughError: as :func:`scores_table`.
    """
    t = scores_table(results, metric)
    fig, (ax,) = _fig(1, (max(4.0, 0.9 * len(t) + 2), 3.6))
    x = np.arange(len(t))
    err = np.vstack([t.value - t.ci_low, t.ci_high - t.value]).clip(min=0)
    ax.bar(x, t.value, color=["C0" if v else "0.65" for v in t.target], yerr=err, capsize=4)
    if t.target.any():
        m = float(t.value[t.target].mean())
        ax.axhline(m, color="C0", linestyle="--", linewidth=1, label=f"mean over targets {m:.3f}")
        ax.legend(fontsize="small")
    ax.set_xticks(x, t.index)
    ax.set_ylabel(t.index.name)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title or "Zero-shot scores with 95% bootstrap intervals")
    return fig


def sweep_rows(by_seed: pd.DataFrame, run: InlineRun) -> pd.DataFrame:
    """The rows of ``transfer/results_by_seed.parquet`` (stage 5) of the same unit, in order.

    Raises:
        WalkthroughError: the table has none.
    """
    m = (by_seed.checkpoint == run.checkpoint) & (by_seed.task == run.task) & (by_seed.seed == run.seed)
    if not m.any():
        raise WalkthroughError(f"transfer/results_by_seed.parquet: no rows for {run.checkpoint}/{run.task}/"
                               f"seed-{run.seed}")
    return by_seed[m].reset_index(drop=True)


def compare_with_sweep(run: InlineRun, by_seed: pd.DataFrame) -> pd.DataFrame:
    """The inline unit's ``value``, ``ci_low``, ``ci_high`` next to the sweep's, per
    (language, metric), with ``abs_diff`` = max |inline − sweep| over the three (0 when the
    runs are bit-identical: same seed, data, threads and device)."""
    s = sweep_rows(by_seed, run)
    cols = ["value", "ci_low", "ci_high"]
    m = run.results.merge(s, on=["language", "metric"], suffixes=("", "_sweep"), how="outer", validate="1:1")
    diff = np.nanmax(np.abs(np.stack([m[c] - m[f"{c}_sweep"] for c in cols])), axis=0)
    out = m[["language", "metric", "value", "value_sweep", "ci_low", "ci_low_sweep", "ci_high", "ci_high_sweep"]]
    return out.assign(abs_diff=diff)


def load_history(run_dir: str | Path) -> pd.DataFrame:
    """``transfer/dev_history.parquet`` of a run (stage 5; one row per English-dev evaluation).

    Raises:
        ArtefactError: missing (stage 5 has not run) or unreadable, one line.
    """
    from ..store import read_table

    return read_table(Path(run_dir) / "transfer" / "dev_history.parquet")


# ---------------------------------------------------------------------------------------
# notebook 06: the scatter behind each Table 1 cell


def load_cell_inputs(P: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(pairs, transfer)``: ``overlap/pairs.parquet`` restricted as stage 6 restricts it (the
    run's ``extraction.layers``, non-excluded checkpoints and ``probe.attributes``), and
    ``transfer/results.parquet`` (mean over fine-tuning seeds) — the inputs of
    :func:`xalign.stats.correlation_table`.

    Raises:
        ArtefactError: a table is missing (stages 4-5 have not run) or unreadable.
    """
    from ..stages._common import checkpoint_rows
    from ..store import read_table

    run = P.run_dir()
    p = read_table(run / "overlap" / "pairs.parquet")
    names = [c["name"] for c in checkpoint_rows(run)]
    p = p[p.layer.isin(list(P.extraction.layers)) & p.checkpoint.isin(names) & p.attribute.isin(list(P.probe.attributes))]
    return p, read_table(run / "transfer" / "results.parquet")


def _final(df: pd.DataFrame) -> pd.Series:
    from ..stats import FINAL

    final = df["checkpoint"] == FINAL
    return final | df["step"].isna() if "step" in df.columns else final


def _x_per_layer(pairs: pd.DataFrame, row: Any, source: str) -> pd.DataFrame:
    """x of a ``per_layer`` row: one layer, one attribute or (``mean``) the mean over the
    attributes present in that layer; ``average`` over pairs, ``pairwise`` with ``source``."""
    from ..overlap import average_overlap, pair_overlap_with

    keys = ["checkpoint"] + (["language"] if row.kind == "pairwise" else [])
    t = (average_overlap(pairs) if row.kind == "average" else pair_overlap_with(pairs, source))
    t = t[t.layer == int(row.layer)]
    if row.attribute != "mean":
        return t[t.attribute == row.attribute][keys + ["overlap_rate"]].rename(columns={"overlap_rate": "x"})
    return t.groupby(keys, sort=False, dropna=False)["overlap_rate"].mean().rename("x").reset_index()


def _x_paper(pairs: pd.DataFrame, row: Any, source: str) -> pd.DataFrame:
    """x of a ``paper`` row: average rows over ``row.attributes`` then over ``row.layers``
    (final model left out); pairwise rows the POS overlap with ``source`` over the layers."""
    from ..overlap import average_overlap, pair_overlap_with

    layers = [int(v) for v in str(row.layers).split(",")]
    sel = pairs[pairs.layer.isin(layers)]
    if row.kind == "pairwise":
        piv = pair_overlap_with(sel[sel.attribute == "POS"], source)
        return piv.groupby(["checkpoint", "language"])["overlap_rate"].mean().rename("x").reset_index()
    avg = average_overlap(sel[sel.attribute.isin(str(row.attributes).split(","))])
    avg = avg[~_final(avg)]
    return (avg.groupby(["checkpoint", "layer"])["overlap_rate"].mean()
            .groupby("checkpoint").mean().rename("x").reset_index())


def cell_points(pairs: pd.DataFrame, transfer: pd.DataFrame, row: Any, recipe: str = "per_layer",
                source: str = "en") -> pd.DataFrame:
    """The points one Table 1 row's Pearson r is computed from (Wang et al. 2024, Sec. 4.2),
    rebuilt from the public pieces :func:`xalign.stats.correlation_table` (``per_layer``) or
    :func:`xalign.stats.paper_table` (``paper``) uses.

    Args:
        pairs, transfer: as :func:`load_cell_inputs` returns them.
        row: a row of ``correlation/table1*.parquet`` (``task``, ``kind`` and, per_layer,
            ``layer``, ``attribute``; paper, ``attributes``, ``layers``).
        recipe: the recipe of that table, ``"per_layer"`` or ``"paper"``.
        source: the fine-tuning language.

    Returns:
        One row per point: ``checkpoint``, ``language`` (pairwise only), ``x`` (overlap rate
        |A ∩ B| / k, a fraction) and ``y`` (transfer score in [0, 1]: mean over targets for
        average rows — in the paper recipe over every evaluated language, English test included,
        final model left out — or the language's own score for pairwise rows), and ``step``.

    Raises:
        WalkthroughError: an unknown recipe.
    """
    from ..stats import mean_transfer, task_scores

    if recipe not in ("per_layer", "paper"):
        raise WalkthroughError(f"correlation recipe {recipe!r} unknown (per_layer, paper)")
    x = (_x_per_layer if recipe == "per_layer" else _x_paper)(pairs, row, source)
    if row.kind == "pairwise":
        s = task_scores(transfer, source=source)
        y, on = s[s.task == row.task][["checkpoint", "language", "value"]], ["checkpoint", "language"]
    elif recipe == "paper":
        s = task_scores(transfer, source=source, targets_only=False)
        s = s[(s.task == row.task) & ~_final(s)]
        y, on = s.groupby("checkpoint")["value"].mean().reset_index(), ["checkpoint"]
    else:
        mt = mean_transfer(transfer, source=source)
        y, on = mt[mt.task == row.task][["checkpoint", "value"]], ["checkpoint"]
    m = x.merge(y, on=on, how="inner").rename(columns={"value": "y"})
    steps = transfer.drop_duplicates("checkpoint").set_index("checkpoint")["step"] if "step" in transfer else {}
    return m.assign(step=m.checkpoint.map(steps))


def default_cell(P: Any) -> dict[str, Any]:
    """The Table 1 cell notebook 06 shows unless told otherwise (``per_layer`` recipe): POS
    transfer if ``transfer.tasks`` has it (else its first task), the ``average`` kind, the
    last main layer (``extraction.layers``) and the POS overlap (else the first of
    ``probe.attributes``).

    Raises:
        WalkthroughError: ``transfer.tasks`` is empty (there is no Table 1).
    """
    tasks, attrs = list(P.transfer.tasks), list(P.probe.attributes)
    if not tasks:
        raise WalkthroughError(f"{P.run_name}: no Table 1 (transfer.tasks = [])")
    return {"task": "pos" if "pos" in tasks else tasks[0], "kind": "average", "layer": max(P.extraction.layers),
            "attribute": "POS" if "POS" in attrs else attrs[0]}


def inline_cell(pairs: pd.DataFrame, transfer: pd.DataFrame, task: str, kind: str, layer: int,
                attribute: str, source: str = "en") -> tuple[pd.DataFrame, pd.Series]:
    """One ``per_layer`` Table 1 cell computed inline (Wang et al. 2024, Sec. 4.2, Table 1):
    its points (:func:`cell_points`) and Pearson r with :func:`xalign.stats.pearson` and the
    Fisher-z 95% interval of :func:`xalign.stats.pearson_ci`, as stage 6 computes them.

    Args:
        pairs, transfer: as :func:`load_cell_inputs` returns them.
        task: ``"pos"`` / ``"xnli"``; kind: ``"average"`` (one point per checkpoint) or
            ``"pairwise"`` (one per checkpoint and target language); layer: ℓ; attribute: an
            attribute of ``pairs`` or ``"mean"`` (the mean over the attributes present).
        source: the fine-tuning language.

    Returns:
        ``(points, row)``: the points (:func:`cell_points`), and a row with ``task``, ``kind``,
        ``layer``, ``attribute``, ``r``, ``p`` (two-sided), ``n`` (points), ``r_lo``, ``r_hi``
        (r NaN below 3 points or for a constant input; the interval NaN below 4).

    Raises:
        WalkthroughError: an unknown kind, or no overlap for that layer and attribute (one
            line naming what ``pairs`` has).
    """
    from ..stats import pearson, pearson_ci

    if kind not in ("average", "pairwise"):
        raise WalkthroughError(f"Table 1 kind {kind!r} unknown (average, pairwise)")
    have = pairs[pairs.layer == int(layer)]
    if have.empty or (attribute != "mean" and not (have.attribute == attribute).any()):
        raise WalkthroughError(f"overlap/pairs.parquet: no overlap for layer {layer}, attribute {attribute} (have "
                               f"layers {sorted(int(v) for v in pairs.layer.unique())}, attributes "
                               f"{sorted(pairs.attribute.unique())})")
    key = {"task": task, "kind": kind, "layer": int(layer), "attribute": attribute}
    pts = cell_points(pairs, transfer, pd.Series(key, dtype=object), "per_layer", source)
    r, p, n = pearson(pts.x, pts.y)
    lo, hi = pearson_ci(pts.x, pts.y)
    return pts, pd.Series({**key, "r": r, "p": p, "n": n, "r_lo": lo, "r_hi": hi}, dtype=object)


def table_row(table: pd.DataFrame, cell: pd.Series) -> pd.Series:
    """The row of a ``per_layer`` Table 1 table (``correlation/table1*.parquet``) for the same
    (task, kind, layer, attribute) as ``cell`` (:func:`inline_cell`'s row).

    Raises:
        WalkthroughError: the table has no such row.
    """
    m = ((table.task == cell.task) & (table.kind == cell.kind) & (table.layer == int(cell.layer))
         & (table.attribute == cell.attribute)) if "layer" in table else pd.Series(False, index=table.index)
    if not m.any():
        raise WalkthroughError(f"Table 1 (per_layer): no row for {_label(cell, 'per_layer')}")
    return table[m].iloc[0]


def _label(row: Any, recipe: str) -> str:
    if recipe == "paper":
        return f"{row.task} {row.kind} (x: {row.attributes}; layers {row.layers})"
    return f"{row.task} {row.kind}, {row.attribute}, ℓ = {int(row.layer)}"


def check_cells(pairs: pd.DataFrame, transfer: pd.DataFrame, table: pd.DataFrame,
                recipe: str = "per_layer") -> pd.DataFrame:
    """Every row of a Table 1 table with the r and n recomputed from :func:`cell_points`
    (:func:`xalign.stats.pearson`) beside the table's: ``r_points``, ``n_points``, and
    ``same`` (equal up to 1e-12, or both NaN, and the same n) — Wang et al. 2024, Table 1.

    Raises:
        WalkthroughError: as :func:`cell_points`.
    """
    from ..stats import pearson

    out = []
    for row in table.itertuples(index=False):
        pts = cell_points(pairs, transfer, row, recipe)
        r, _, n = pearson(pts.x, pts.y)
        same = (math.isnan(r) and math.isnan(row.r)) or abs(r - row.r) <= 1e-12
        out.append({"cell": _label(row, recipe), "r": row.r, "r_points": r, "n": row.n, "n_points": n,
                    "same": bool(same and n == row.n)})
    return pd.DataFrame(out)


def _draw_cell(ax: Any, pts: pd.DataFrame, row: Any, recipe: str) -> None:
    groups = pts.groupby("language", sort=True) if "language" in pts.columns else [(None, pts)]
    for i, (lang, g) in enumerate(groups):
        ax.scatter(g.x, g.y, color=f"C{i % 10}", label=lang, zorder=3)
        for _, p in g.iterrows():
            lab = "final" if pd.isna(p.step) else f"{int(p.step)}"
            ax.annotate(lab, (p.x, p.y), xytext=(3, 3), textcoords="offset points", fontsize=7, color="0.35")
    if len(pts) >= 2 and pts.x.nunique() > 1:
        b, a = np.polyfit(pts.x, pts.y, 1)
        xs = np.linspace(pts.x.min(), pts.x.max(), 2)
        ax.plot(xs, a + b * xs, color="0.4", linestyle="--", linewidth=1)
    if "language" in pts.columns:
        ax.legend(fontsize="x-small", title="target", title_fontsize="x-small")
    r = "n/a" if not np.isfinite(row.r) else f"{row.r:.2f}"
    ci = "" if not np.isfinite(row.r_lo) else f" [{row.r_lo:.2f}, {row.r_hi:.2f}]"
    ax.set_title(f"{_label(row, recipe)}\nr = {r}{ci}, n = {int(row.n)}", fontsize=9)
    ax.set_xlabel("overlap rate |A ∩ B| / k", fontsize=8)
    ax.set_ylabel("transfer score", fontsize=8)
    ax.grid(alpha=0.3)


def fig_cell(pairs: pd.DataFrame, transfer: pd.DataFrame, row: Any, recipe: str = "per_layer") -> Figure:
    """One Table 1 cell: its points (:func:`cell_points`; pairwise coloured by target language,
    each labelled with the checkpoint's training step), the least-squares line, and r with its
    Fisher-z 95% interval and n in the title (Wang et al. 2024, Table 1). One Axes; ``row``
    needs ``r``, ``r_lo``, ``r_hi``, ``n`` (a table row, or :func:`inline_cell`'s).

    Raises:
        WalkthroughError: as :func:`cell_points`.
    """
    fig, (ax,) = _fig(1, (5.0, 4.0))
    _draw_cell(ax, cell_points(pairs, transfer, row, recipe), row, recipe)
    return fig


def fig_cells(pairs: pd.DataFrame, transfer: pd.DataFrame, table: pd.DataFrame, recipe: str = "per_layer",
              ncols: int = 3) -> Figure:
    """Every row of a Table 1 table as a panel (:func:`fig_cell`), in table order, ``ncols`` per line.

    Raises:
        WalkthroughError: the table is empty.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if table.empty:
        raise WalkthroughError("Table 1 has no rows to draw")
    ncols = min(ncols, len(table))
    nrows = math.ceil(len(table) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.5 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, row in zip(axes, table.itertuples(index=False)):
        _draw_cell(ax, cell_points(pairs, transfer, row, recipe), row, recipe)
    for ax in axes[len(table):]:
        ax.set_visible(False)
    return fig
