"""Stage 7: the paper's figures, from the overlap and transfer tables.

Analogues of Wang, Minervini & Ponti (2024), Figures 1-5 and the Appendix B.1 heatmaps.
Every ``fig_*`` function takes tables and returns a :class:`matplotlib.figure.Figure`
drawn on its own Agg canvas (no pyplot, no global backend switch, so it also displays
inline in notebooks); :func:`save` writes it atomically as PNG and PDF.

Conventions: the overlap rate |A ∩ B| / k is a fraction in [0, 1]; the chance rate k / d
(the expected overlap rate of two random k-subsets of d neurons) is drawn as a dashed
grey line next to every overlap; layers are numbered as in the paper (ℓ = 1 is the
embedding output); checkpoints without a ``step`` (NA) are left out of the plots against
training steps.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from xalign.overlap import overlap_matrix, pair_overlap_with
from xalign.stats import DEFAULT_METRICS, mean_transfer, pearson, task_scores
from xalign.store import atomic_path

OVERLAP_LABEL = "overlap rate |A∩B| / k (fraction)"
STEP_LABEL = "training step (log scale)"
LAYER_LABEL = "layer ℓ (1 = embedding output)"
_CHANCE_STYLE = dict(color="0.35", linestyle="--", linewidth=1.2)
_TASK_ORDER = {"xnli": 0, "pos": 1}
_FORMATS = ("png", "pdf", "svg")


# ---- helpers ---------------------------------------------------------------------------
def _figure(n_panels: int, ncols: int | None = None, panel: tuple[float, float] = (4.6, 3.4),
            sharex: bool = False, sharey: bool = False) -> tuple[Figure, list]:
    ncols = ncols or min(n_panels, 3)
    nrows = -(-n_panels // ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _with_steps(df: pd.DataFrame, what: str) -> pd.DataFrame:
    if "step" not in df.columns:
        raise ValueError(f"{what}: no 'step' column to plot against training steps")
    out = df[df["step"].notna()].copy()
    if out.empty:
        raise ValueError(f"{what}: no checkpoint has a training step (all 'step' values are NA)")
    out["step"] = out["step"].astype(float)
    return out.sort_values("step")


def _step_axis(ax, steps: Iterable[float]) -> None:
    """Log-scale step axis, ticked at the checkpoints' steps with compact labels (``40``,
    ``1.5k``, ``600k``); a label that would run into the previous one at the axis' width is
    left out (its tick stays); no minor ticks."""
    steps = np.asarray(list(steps), dtype=float)
    pos = steps[steps > 0]
    if (steps <= 0).any():
        ax.set_xscale("symlog", linthresh=float(pos.min()) if pos.size else 1.0)
    else:
        ax.set_xscale("log")
    ticks = sorted(set(steps[np.isfinite(steps)].tolist()))
    ax.set_xticks(ticks, _thinned_labels(ax, ticks))
    ax.minorticks_off()
    ax.set_xlabel(STEP_LABEL)


def _thinned_labels(ax, ticks: list[float]) -> list[str]:
    """Compact labels for ``ticks`` on a log axis, blank where a label would overlap the last
    one kept: widths estimated from the tick font (0.6 em per character, 30% margin) and
    the axis' width in inches (at 85%: constrained layout shrinks it)."""
    from matplotlib.font_manager import FontProperties
    import matplotlib as mpl

    pos = [t for t in ticks if t > 0]
    if len(pos) < 2:
        return [_compact(t) for t in ticks]
    decades = max(np.log10(max(pos)) - np.log10(min(pos)), 1e-9) * 1.1  # margins
    inch_per_decade = ax.get_position().width * ax.figure.get_figwidth() * 0.85 / decades
    em = FontProperties(size=mpl.rcParams["xtick.labelsize"]).get_size_in_points() / 72
    labels, last = [], None
    for t in ticks:
        lab = _compact(t)
        if last is not None and t > 0 and last[0] > 0:
            need = 1.3 * 0.6 * em * (len(lab) + len(last[1])) / 2
            if (np.log10(t) - np.log10(last[0])) * inch_per_decade < need:
                labels.append("")
                continue
        labels.append(lab)
        last = (t, lab)
    return labels


def _compact(step: float) -> str:
    """``5`` → "5", ``1500`` → "1.5k", ``600000`` → "600k", ``2e6`` → "2M"."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(step) >= div:
            return f"{step / div:.3g}{suffix}"
    return f"{step:.3g}"


def _chance_lines(ax, values: Iterable[float], vertical: bool = False) -> None:
    """Dashed line(s) at the chance overlap rate k/d, labelled for the legend."""
    for v in sorted({round(float(v), 6) for v in values if pd.notna(v)}):
        label = f"chance k/d = {v:.3f}"
        (ax.axvline if vertical else ax.axhline)(v, label=label, **_CHANCE_STYLE)


def _band(ax, x, df: pd.DataFrame, lo: str, hi: str, color, label: str | None = None) -> None:
    """Shade the interval ``df[lo]..df[hi]`` (if the columns exist and are finite somewhere)."""
    if lo in df.columns and hi in df.columns and np.isfinite(df[lo].to_numpy(float)).any():
        ax.fill_between(np.asarray(x, float), df[lo].to_numpy(float), df[hi].to_numpy(float),
                        color=color, alpha=0.18, linewidth=0, label=label)


def _ceiling(ax, x, df: pd.DataFrame, color) -> None:
    """Dotted line: the self-overlap ceiling (two seeds of the same language), if known."""
    if "self_overlap_rate" in df.columns and np.isfinite(df["self_overlap_rate"].to_numpy(float)).any():
        ax.plot(np.asarray(x, float), df["self_overlap_rate"].to_numpy(float), color=color, linestyle=":",
                linewidth=1.2, label="self-overlap ceiling (seeds)")


def _mark_drops(ax, changes: pd.DataFrame | None, layer: int, attribute: str, color="C3") -> None:
    """Down-triangles at the checkpoints whose average overlap dropped significantly
    (:func:`xalign.overlap.overlap_changes`, Holm over steps)."""
    if changes is None or changes.empty:
        return
    d = changes[(changes["layer"] == layer) & (changes["attribute"] == attribute) & changes["drop"]
                & changes["step_to"].notna()]
    if len(d):
        ax.scatter(d["step_to"].astype(float), d["overlap_to"], marker="v", s=70, facecolor="none",
                   edgecolor=color, linewidth=1.5, zorder=4, label="significant drop (Holm)")


def _yerr(df: pd.DataFrame, mid: str, lo: str, hi: str) -> np.ndarray | None:
    """(2, n) error-bar lengths from interval columns, or None when absent or all NaN."""
    if lo not in df.columns or hi not in df.columns or not np.isfinite(df[lo].to_numpy(float)).any():
        return None
    m = df[mid].to_numpy(float)
    return np.nan_to_num(np.vstack([m - df[lo].to_numpy(float), df[hi].to_numpy(float) - m]).clip(min=0))


def _mean_ci(transfer: pd.DataFrame, mean_rows: pd.DataFrame, task: str, source: str,
             metrics: Mapping[str, str] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Normal-approximation 95% interval of the mean over target languages per checkpoint:
    each language's standard error from its bootstrap interval, ``(hi - lo) / (2 · 1.96)``,
    combined as independent, ``sqrt(Σ se²) / L``. None without ``ci_low/ci_high``."""
    s = task_scores(transfer, source=source, metrics=metrics)
    s = s[s["task"] == task]
    if "ci_low" not in s.columns or not np.isfinite(s["ci_low"].to_numpy(float)).any():
        return None
    se = ((s["ci_high"] - s["ci_low"]) / (2 * 1.959964)).pow(2).groupby(s["checkpoint"]).agg(["sum", "size"])
    half = 1.959964 * np.sqrt(se["sum"]) / se["size"]
    h = mean_rows["checkpoint"].map(half).to_numpy(float)
    v = mean_rows["value"].to_numpy(float)
    return v - h, v + h


def _fig_legend(fig: Figure, axes: list, title: str, first: Sequence[str] = ()) -> None:
    """One legend for all panels, right of them: labels in ``first`` order, then the rest."""
    seen: dict[str, object] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    labels = [l for l in first if l in seen] + [l for l in seen if l not in first]
    # centred on the right: "upper" ran into the suptitle, which spans the whole figure
    fig.legend([seen[l] for l in labels], labels, loc="outside right center", fontsize="small", title=title)


def _tasks(tasks: Iterable[str]) -> list[str]:
    return sorted(set(tasks), key=lambda t: (_TASK_ORDER.get(t, 9), t))


def _score_label(task: str, metric: str, values: pd.Series, what: str = "") -> str:
    unit = "(0–1)" if len(values) and float(np.nanmax(values)) <= 1.0 else "(%)"
    metric = {"f1": "F1", "macro_f1": "macro F1", "acc": "accuracy"}.get(metric, metric)
    return f"{task.upper()} {metric} {unit}{what}"


def _xnli_chance(ax, values: pd.Series) -> None:
    scale = 1.0 if len(values) and float(np.nanmax(values)) <= 1.0 else 100.0
    ax.axhline(scale / 3, color="0.6", linestyle=":", linewidth=1, label="chance (3 classes)")


def _lang_colors(languages: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(languages) <= 10 else "tab20"]
    return {lang: cmap(i % cmap.N) for i, lang in enumerate(languages)}


def _select(df: pd.DataFrame, column: str, values, what: str) -> pd.DataFrame:
    if values is None:
        return df
    values = list(values)
    out = df[df[column].isin(values)]
    if out.empty:
        raise ValueError(f"{what}: no rows with {column} in {values} (have {sorted(df[column].unique())})")
    return out


def last_checkpoint(table: pd.DataFrame) -> str:
    """The final checkpoint of a table: the one without a step (NA, e.g. "main"), else the
    one with the largest step.

    Raises:
        ValueError: empty table.
    """
    if table.empty:
        raise ValueError("last_checkpoint: empty table")
    na = table[table["step"].isna()]["checkpoint"].unique()
    if len(na):
        return str(sorted(na)[-1])
    return str(table.loc[table["step"].astype(float).idxmax(), "checkpoint"])


# ---- figures ---------------------------------------------------------------------------
def fig_overlap_vs_step(avg: pd.DataFrame, attributes: Iterable[str] | None = None,
                        layers: Iterable[int] | None = None, changes: pd.DataFrame | None = None) -> Figure:
    """Figure 1 (Wang et al. 2024): average cross-lingual overlap rate vs training step.

    One panel per attribute, one line per layer ℓ, log-x, chance rate k/d dashed; with the
    columns of :func:`xalign.overlap.average_with_intervals`, the 95% interval as a band and
    the self-overlap ceiling dotted; significant drops (``changes``) marked ▽.

    Args:
        avg: output of :func:`xalign.overlap.average_overlap` or ``average_with_intervals``.
        attributes, layers: subsets to draw (default all).
        changes: :func:`xalign.overlap.overlap_changes` output, or None.

    Raises:
        ValueError: nothing to draw (no rows with a step for the chosen subsets).
    """
    df = _with_steps(_select(_select(avg, "attribute", attributes, "average overlap"),
                             "layer", layers, "average overlap"), "average overlap")
    if layers is None:  # leave out layers swept on one checkpoint only (Figure 2's sweep)
        n_ck = df.groupby("layer")["checkpoint"].nunique()
        if (n_ck > 1).any():
            df = df[df["layer"].isin(n_ck[n_ck > 1].index)]
    attrs = sorted(df["attribute"].unique())
    fig, axes = _figure(len(attrs), sharey=True)
    for ax, attr in zip(axes, attrs):
        g = df[df["attribute"] == attr]
        for layer, gl in g.groupby("layer", sort=True):
            color = f"C{int(layer) % 10}"
            ax.plot(gl["step"], gl["overlap_rate"], marker="o", ms=4, color=color, label=f"ℓ = {layer}")
            _band(ax, gl["step"], gl, "overlap_lo", "overlap_hi", color, "95% interval (seeds, languages)")
            _ceiling(ax, gl["step"], gl, color)
            _mark_drops(ax, changes, int(layer), attr)
        _chance_lines(ax, g["chance_rate"])
        _step_axis(ax, g["step"])
        ax.set_title(attr)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(OVERLAP_LABEL)
    tops = [df[c].to_numpy(float) for c in ("overlap_rate", "chance_rate", "overlap_hi", "self_overlap_rate")
            if c in df.columns]
    top = float(np.nanmax(np.concatenate(tops)))
    axes[0].set_ylim(0, max(top * 1.08, 0.05))
    _fig_legend(fig, axes, "layer")
    fig.suptitle("Average cross-lingual neuron overlap over training (mean over language pairs)")
    return fig


def fig_overlap_vs_layer(avg: pd.DataFrame, checkpoint: str | None = None,
                         attributes: Iterable[str] | None = None) -> Figure:
    """Figure 2 (Wang et al. 2024): average overlap rate vs layer on one checkpoint.

    One line per attribute (overlap rate, a fraction, against layer ℓ), chance rate k/d
    dashed. With more than :data:`MANY_ATTRIBUTES` attributes (the paper's eleven) each line
    also gets its own marker, the legend goes below the panel, and a second panel shows the
    same values as an attribute × layer heatmap (cells annotated, chance k/d dashed on the
    colour bar; blank where an attribute was not probed at a layer).

    Args:
        avg: output of :func:`xalign.overlap.average_overlap`.
        checkpoint: default :func:`last_checkpoint` of ``avg``.
        attributes: subset to draw (default all).

    Raises:
        ValueError: no rows for that checkpoint.
    """
    checkpoint = checkpoint if checkpoint is not None else last_checkpoint(avg)
    df = _select(_select(avg, "checkpoint", [checkpoint], "average overlap"),
                 "attribute", attributes, "average overlap").sort_values("layer")
    many = df["attribute"].nunique() > MANY_ATTRIBUTES
    if many:
        fig = Figure(figsize=(13.0, 5.2), layout="constrained")
        FigureCanvasAgg(fig)
        ax, axh = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1.0]})
    else:
        fig, (ax,) = _figure(1, panel=(6.0, 4.0))
    for i, (attr, g) in enumerate(df.groupby("attribute", sort=True)):
        style = dict(marker=_MARKERS[i % len(_MARKERS)], ms=5, color=f"C{i % 10}",
                     linestyle="-" if i < 10 else "-.") if many else dict(marker="o", ms=4)
        ax.plot(g["layer"], g["overlap_rate"], label=attr, **style)
        if not many and {"overlap_lo", "overlap_hi"} <= set(g.columns):
            ax.errorbar(g["layer"], g["overlap_rate"], yerr=_yerr(g, "overlap_rate", "overlap_lo", "overlap_hi"),
                        fmt="none", ecolor=ax.lines[-1].get_color(), capsize=3, linewidth=1)
    _chance_lines(ax, df["chance_rate"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(LAYER_LABEL)
    ax.set_ylabel(OVERLAP_LABEL)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if many:
        layers = sorted(int(l) for l in df["layer"].unique())
        if len(layers) <= 13:
            ax.set_xticks(layers)
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=4)
        _attribute_layer_heatmap(fig, axh, df)
    else:
        ax.legend(fontsize="small")
    step = df["step"].iloc[0] if len(df) else pd.NA
    suffix = f" (step {int(step)})" if pd.notna(step) else ""
    ax.set_title(f"Average overlap vs layer, checkpoint {checkpoint}{suffix}")
    return fig


#: Above this many attributes Figure 2 gets distinct markers and an attribute × layer heatmap.
MANY_ATTRIBUTES = 6
_MARKERS = "osD^v<>pPXh*"


def _attribute_layer_heatmap(fig: Figure, ax, df: pd.DataFrame) -> None:
    """Figure 2's second panel: average overlap rate per attribute (rows) and layer (columns)."""
    from matplotlib import colormaps

    grid = df.pivot_table(index="attribute", columns="layer", values="overlap_rate", aggfunc="mean")
    grid = grid.sort_index().reindex(columns=sorted(grid.columns))
    vals = grid.to_numpy(float)
    chance = float(df["chance_rate"].dropna().iloc[0]) if df["chance_rate"].notna().any() else float("nan")
    top = float(np.nanmax(vals)) if np.isfinite(vals).any() else 0.0
    vmax = max(top, 2 * chance if np.isfinite(chance) else 0.0, 0.05)
    cmap = colormaps["viridis"].with_extremes(bad="0.9")
    im = ax.imshow(np.ma.masked_invalid(vals), cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto")
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            if np.isfinite(vals[i, j]):
                ax.text(j, i, f"{vals[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if im.norm(vals[i, j]) < 0.6 else "black")
    ax.set_xticks(range(len(grid.columns)), [str(int(c)) for c in grid.columns])
    ax.set_yticks(range(len(grid.index)), grid.index)
    ax.set_xlabel(LAYER_LABEL)
    ax.set_title("the same, as attribute × layer", fontsize="medium")
    cb = fig.colorbar(im, ax=ax, shrink=0.9)
    cb.set_label(OVERLAP_LABEL)
    if np.isfinite(chance):
        cb.ax.axhline(chance, color="white", linestyle="--", linewidth=1.5)
        cb.ax.axhline(chance, color="k", linestyle=(0, (2, 2)), linewidth=1.5)


def fig_overlap_transfer_vs_step(avg: pd.DataFrame, transfer: pd.DataFrame, layer: int,
                                 attributes: Iterable[str] | None = None, *, source: str = "en",
                                 metrics: Mapping[str, str] | None = None,
                                 changes: pd.DataFrame | None = None) -> Figure:
    """Figure 3 (Wang et al. 2024): overlap, XNLI and POS transfer vs training step.

    Stacked panels sharing the log-x step axis: (1) average overlap at layer ℓ, one line
    per attribute, chance k/d dashed; (2..) per task, the transfer score averaged over
    target languages (source and "en-dev" excluded). Bands: the overlap's 95% interval
    (seeds and languages) and, when the transfer table has ``ci_low/ci_high`` per language,
    a normal-approximation 95% interval of the mean over targets (languages' bootstrap
    intervals combined as independent); significant overlap drops (``changes``) marked ▽.

    Raises:
        ValueError: no overlap rows for the layer, or no stepped rows.
    """
    ov = _with_steps(_select(_select(avg, "layer", [layer], "average overlap"),
                             "attribute", attributes, "average overlap"), "average overlap")
    mt = mean_transfer(transfer, source=source, metrics=metrics)
    mt = _with_steps(mt, "transfer") if len(mt) else mt
    tasks = _tasks(mt["task"]) if len(mt) else []
    fig, axes = _figure(1 + len(tasks), ncols=1, panel=(6.5, 2.6), sharex=True)
    ax = axes[0]
    for i, (attr, g) in enumerate(ov.groupby("attribute", sort=True)):
        ax.plot(g["step"], g["overlap_rate"], marker="o", ms=4, label=attr, color=f"C{i % 10}")
        _band(ax, g["step"], g, "overlap_lo", "overlap_hi", f"C{i % 10}")
        _mark_drops(ax, changes, layer, attr, color=f"C{i % 10}")
    _chance_lines(ax, ov["chance_rate"])
    ax.set_ylabel("overlap rate\n|A∩B| / k")
    ax.set_ylim(bottom=0)
    fig.suptitle(f"Average overlap at layer ℓ = {layer} and mean zero-shot transfer ({source} → targets)")
    ax.legend(fontsize="small", ncols=2)
    for ax, task in zip(axes[1:], tasks):
        g = mt[mt["task"] == task]
        ax.plot(g["step"], g["value"], marker="s", ms=4, color="C3", label="mean over targets")
        ci = _mean_ci(transfer, g, task, source, metrics)
        if ci is not None:
            ax.fill_between(g["step"].to_numpy(float), ci[0], ci[1], color="C3", alpha=0.18, linewidth=0,
                            label="95% interval (eval examples)")
        if task == "xnli":
            _xnli_chance(ax, g["value"])
        ax.set_ylabel(_score_label(task, str(g["metric"].iloc[0]), g["value"]))
        ax.legend(fontsize="small")
    all_steps = np.concatenate([ov["step"].to_numpy(float)] + ([mt["step"].to_numpy(float)] if len(mt) else []))
    for ax in axes:
        ax.grid(alpha=0.3)
        _step_axis(ax, all_steps)
        ax.label_outer()
    return fig


def fig_pairwise_scatter(pairs: pd.DataFrame, transfer: pd.DataFrame, layer: int, attribute: str, *,
                         source: str = "en", metrics: Mapping[str, str] | None = None) -> Figure:
    """Figure 4 (Wang et al. 2024): source–target overlap vs target transfer score.

    One panel per task; one point per (target language, checkpoint), coloured by
    language; least-squares line and Pearson r (two-sided p, n) in the panel title;
    chance rate k/d as a dashed vertical line; error bars: the overlap's interval over
    seeds (``overlap_lo/hi`` of :func:`xalign.overlap.summarise_seeds`) and the score's
    bootstrap interval (``ci_low/ci_high``), where the tables have them.

    Raises:
        ValueError: no source–target overlap rows for (layer, attribute).
    """
    piv = pair_overlap_with(pairs, source)
    piv = piv[(piv["layer"] == layer) & (piv["attribute"] == attribute)]
    if piv.empty:
        raise ValueError(f"overlap pairs: no {source}–target pairs at layer={layer} attribute={attribute}")
    scores = task_scores(transfer, source=source, metrics=metrics)
    tasks = _tasks(scores["task"])
    if not tasks:
        raise ValueError("transfer table: no rows with a task's main metric on a target language")
    xcols = [c for c in ("overlap_lo", "overlap_hi") if c in piv.columns]
    ycols = [c for c in ("ci_low", "ci_high") if c in scores.columns]
    m_all = piv[["checkpoint", "language", "overlap_rate", *xcols]].merge(
        scores[["checkpoint", "task", "metric", "language", "value", *ycols]], on=["checkpoint", "language"])
    langs = sorted(m_all["language"].unique())
    colors = _lang_colors(langs)
    fig, axes = _figure(len(tasks), panel=(4.8, 4.0))
    for ax, task in zip(axes, tasks):
        m = m_all[m_all["task"] == task]
        for lang, g in m.groupby("language", sort=True):
            ax.scatter(g["overlap_rate"], g["value"], s=22, color=colors[lang], label=lang, alpha=0.85)
            xerr = _yerr(g, "overlap_rate", "overlap_lo", "overlap_hi")
            yerr = _yerr(g, "value", "ci_low", "ci_high")
            if xerr is not None or yerr is not None:
                ax.errorbar(g["overlap_rate"], g["value"], xerr=xerr, yerr=yerr, fmt="none",
                            ecolor=colors[lang], alpha=0.45, linewidth=0.8)
        r, p, n = pearson(m["overlap_rate"], m["value"])
        if np.isfinite(r):
            slope, icpt = np.polyfit(m["overlap_rate"].astype(float), m["value"].astype(float), 1)
            xs = np.linspace(m["overlap_rate"].min(), m["overlap_rate"].max(), 2)
            ax.plot(xs, slope * xs + icpt, color="k", linewidth=1, label="least squares")
        _chance_lines(ax, piv["chance_rate"], vertical=True)
        stat = f"r = {r:.2f} (p = {p:.3g}, n = {n})" if np.isfinite(r) else f"r undefined (n = {n})"
        ax.set_title(f"{task.upper()}: {stat}")
        ax.set_xlabel(f"{source}–target overlap rate |A∩B| / k")
        metric = str(m["metric"].iloc[0]) if len(m) else (metrics or DEFAULT_METRICS).get(task, "")
        ax.set_ylabel(_score_label(task, metric, m["value"], ", target language"))
        ax.grid(alpha=0.3)
    _fig_legend(fig, axes, "target", first=langs)
    fig.suptitle(f"Pairwise overlap vs zero-shot transfer: {attribute}, layer ℓ = {layer}")
    return fig


def fig_transfer_vs_step(transfer: pd.DataFrame, *, source: str = "en",
                         metrics: Mapping[str, str] | None = None) -> Figure:
    """Figure 5 (Wang et al. 2024): per-language zero-shot transfer vs training step.

    One panel per task, one line per language; the source language's own test score is
    drawn in black, "en-dev" is left out; XNLI's 3-class chance level is dotted; each
    language's 95% bootstrap interval over evaluation examples (``ci_low/ci_high``) shaded.

    Raises:
        ValueError: no stepped rows with a task's main metric.
    """
    s = task_scores(transfer, source=source, metrics=metrics, targets_only=False)
    s = _with_steps(s, "transfer")
    tasks = _tasks(s["task"])
    langs = sorted(set(s["language"]) - {source})
    colors = _lang_colors(langs)
    fig, axes = _figure(len(tasks), panel=(5.2, 3.8))
    for ax, task in zip(axes, tasks):
        g = s[s["task"] == task]
        for lang, gl in g.groupby("language", sort=True):
            color = "k" if lang == source else colors[lang]
            if lang == source:
                ax.plot(gl["step"], gl["value"], color="k", linewidth=2.2, marker="o", ms=3,
                        label=f"{lang} (source)", zorder=3)
            else:
                ax.plot(gl["step"], gl["value"], color=color, marker="o", ms=3, label=lang)
            _band(ax, gl["step"], gl, "ci_low", "ci_high", color)
        if task == "xnli":
            _xnli_chance(ax, g["value"])
        _step_axis(ax, g["step"])
        ax.set_ylabel(_score_label(task, str(g["metric"].iloc[0]), g["value"]))
        ax.set_title(f"{task.upper()} (fine-tuned on {source})")
        ax.grid(alpha=0.3)
    _fig_legend(fig, axes, "language", first=[f"{source} (source)"] + langs)
    fig.suptitle("Zero-shot cross-lingual transfer over training")
    return fig


def fig_overlap_heatmap(pairs: pd.DataFrame, checkpoint: str, layer: int, attribute: str,
                        languages: Iterable[str] | None = None) -> Figure:
    """Appendix B.1 (Wang et al. 2024): language × language overlap-rate heatmap.

    Cells show |A∩B| / k; '*' marks pairs whose Holm-corrected hypergeometric p is below
    alpha; the diagonal is blank; the chance rate k/d is given in the title and as a
    dashed line on the colour bar.

    Raises:
        ValueError: no pair for (checkpoint, layer, attribute).
    """
    from matplotlib import colormaps

    rate, sig = overlap_matrix(pairs, checkpoint, layer, attribute, languages)
    g = pairs[(pairs["checkpoint"] == checkpoint) & (pairs["layer"] == layer)
              & (pairs["attribute"] == attribute)]
    chance, k, d = float(g["chance_rate"].iloc[0]), int(g["k"].iloc[0]), int(g["d"].iloc[0])
    n = len(rate)
    size = max(4.5, 0.55 * n + 2.0)
    fig = Figure(figsize=(size + 1.0, size), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    cmap = colormaps["viridis"].with_extremes(bad="0.9")
    vals = rate.to_numpy(float)
    vmax = max(float(np.nanmax(vals)) if np.isfinite(vals).any() else 0.0, 2 * chance, 0.05)
    im = ax.imshow(np.ma.masked_invalid(vals), cmap=cmap, vmin=0.0, vmax=vmax)
    fs = 9 if n <= 8 else 7 if n <= 14 else 5
    for i in range(n):
        for j in range(n):
            v = vals[i, j]
            if not np.isfinite(v):
                continue
            star = "*" if sig.iat[i, j] else ""
            light = im.norm(v) < 0.6
            ax.text(j, i, f"{v:.2f}{star}", ha="center", va="center", fontsize=fs,
                    color="white" if light else "black")
    ax.set_xticks(range(n), rate.columns, rotation=45, ha="right")
    ax.set_yticks(range(n), rate.index)
    ax.set_xlabel("language")
    ax.set_ylabel("language")
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.set_label(OVERLAP_LABEL)
    cb.ax.axhline(chance, color="white", linestyle="--", linewidth=1.5)
    cb.ax.axhline(chance, color="k", linestyle=(0, (2, 2)), linewidth=1.5)
    ax.set_title(f"{attribute}, layer ℓ = {layer}, {checkpoint}\n"
                 f"chance k/d = {k}/{d} = {chance:.3f} (dashed on colour bar); "
                 f"* = Holm-corrected p < α", fontsize="medium")
    return fig


def fig_greedy_gains(paths: pd.DataFrame, checkpoint: str, layer: int) -> Figure:
    """Where the greedy path's gains fall to noise level (notebook 03).

    One panel per attribute: per step t of the greedy path (:func:`xalign.selection.greedy_select`),
    the gain in dev log-likelihood of the t-th pick divided by its standard error over dev
    examples (``dev_gain / dev_gain_se``), one thin line per (language, seed), and their
    median in black; the dashed line at 2 marks noise level (a pick below it is not
    distinguishable from no gain on that dev set).

    Args:
        paths: ``probing/paths.parquet`` (``step_k``, ``dev_gain``, ``dev_gain_se``, ...).
        checkpoint, layer: the probes to draw.

    Raises:
        ValueError: no path rows with gains for (checkpoint, layer).
    """
    g = paths[(paths["checkpoint"] == checkpoint) & (paths["layer"] == layer)]
    if g.empty or "dev_gain_se" not in g.columns:
        raise ValueError(f"greedy paths: no rows with dev_gain_se for checkpoint={checkpoint} layer={layer}")
    g = g.assign(z=g["dev_gain"] / g["dev_gain_se"])
    attrs = sorted(g["attribute"].unique())
    fig, axes = _figure(len(attrs), sharey=True)
    for ax, attr in zip(axes, attrs):
        ga = g[g["attribute"] == attr]
        keys = ["language"] + (["seed"] if "seed" in ga.columns else [])
        for _, gl in ga.groupby(keys):
            ax.plot(gl["step_k"], gl["z"], color="0.6", linewidth=0.6, alpha=0.6)
        med = ga.groupby("step_k")["z"].median()
        ax.plot(med.index, med.to_numpy(), color="k", linewidth=2, marker="o", ms=3, label="median")
        ax.axhline(2.0, color="C3", linestyle="--", linewidth=1, label="noise level (gain = 2 SE)")
        ax.set_yscale("symlog", linthresh=2.0)
        ax.set_xlabel("greedy step t (t-th neuron added)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(attr)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("dev log-likelihood gain / SE")
    _fig_legend(fig, axes, "")
    fig.suptitle(f"Greedy selection: gain of each pick over dev noise ({checkpoint}, layer ℓ = {layer})")
    return fig


# ---- output ----------------------------------------------------------------------------
_NO_DATE = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def save(fig: Figure, out_dir: str | Path, name: str, formats: Sequence[str] = ("png", "pdf"),
         dpi: int = 150) -> list[Path]:
    """Write ``fig`` as ``<out_dir>/<name>.<fmt>`` for each format, atomically.

    Each file is rendered to a temporary file beside its destination and renamed into
    place (:func:`xalign.store.atomic_path`), so no half-written figure is ever left. The
    files carry no timestamp and SVG ids are fixed, so the same figure gives the same bytes
    (a re-run does not touch committed figures).

    Returns:
        The written paths, in ``formats`` order.

    Raises:
        ValueError: ``name`` is empty, starts with '.' or contains a path separator, or a
            format is not one of png/pdf/svg.
    """
    if not name or name.startswith(".") or re.search(r"[/\\\x00]", name):
        raise ValueError(f"figure name {name!r}: must be a plain file stem (no path separator, no leading '.')")
    bad = [f for f in formats if f not in _FORMATS]
    if bad:
        raise ValueError(f"figure {name}: unsupported formats {bad}; use {list(_FORMATS)}")
    paths = []
    for fmt in formats:
        dest = Path(out_dir) / f"{name}.{fmt}"
        # no timestamps, fixed SVG ids: the same figure gives the same bytes
        with atomic_path(dest) as tmp, matplotlib.rc_context({"svg.hashsalt": "xalign"}):
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_NO_DATE.get(fmt))
        paths.append(dest)
    return paths


__all__ = [
    "fig_overlap_vs_step", "fig_overlap_vs_layer", "fig_overlap_transfer_vs_step",
    "fig_pairwise_scatter", "fig_transfer_vs_step", "fig_overlap_heatmap", "save",
    "last_checkpoint",
]
