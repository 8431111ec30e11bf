"""Stage 7: figures are drawn from the tables, carry the chance line, and save atomically."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from xalign import plots
from xalign.overlap import average_overlap, overlap_pairs
from xalign.stats import pearson

D, K = 40, 6
LANGS = ["ar", "en", "es", "fr", "zh"]
STEPS = [10, 100, 1000]


@pytest.fixture(scope="module")
def tables():
    """Selections whose cross-lingual sharing grows with step; transfer grows too."""
    rng = np.random.default_rng(0)
    rows = []
    for i, step in enumerate(STEPS):
        ck = f"step-{step:06d}"
        for layer in ([1, 2, 3] if step == STEPS[-1] else [2, 3]):
            for attr in ("Number", "POS"):
                core = rng.choice(D, K, replace=False).tolist()
                for lang in LANGS:
                    n_shared = min(K, 2 * i + (lang == "es") + 1)
                    rest = [n for n in rng.permutation(D).tolist() if n not in core][:K - n_shared]
                    rows.append(dict(checkpoint=ck, step=step, layer=layer, attribute=attr, language=lang,
                                     d=D, k=K, neurons=core[:n_shared] + rest))
    pairs = overlap_pairs(pd.DataFrame(rows))
    tr = []
    for i, step in enumerate(STEPS):
        for lang in LANGS + ["en-dev"]:
            for task, metric in (("xnli", "accuracy"), ("pos", "f1")):
                tr.append(dict(checkpoint=f"step-{step:06d}", step=step, task=task, language=lang, metric=metric,
                               value=float(0.3 + 0.15 * i + rng.normal(0, 0.03)), n=100))
    return pairs, average_overlap(pairs), pd.DataFrame(tr)


def chance_lines(fig: Figure) -> list[float]:
    """Positions of the dashed lines drawn by the figure (horizontal or vertical)."""
    out = []
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_linestyle() == "--":
                xs, ys = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
                out.append(float(ys[0]) if np.ptp(ys) == 0 else float(xs[0]))
    return out


def assert_saved(fig: Figure, out_dir, name: str) -> None:
    paths = plots.save(fig, out_dir, name, dpi=60)
    assert [p.name for p in paths] == [f"{name}.png", f"{name}.pdf"]
    png, pdf = (p.read_bytes() for p in paths)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000
    assert pdf.startswith(b"%PDF") and len(pdf) > 2000
    assert not [p.name for p in out_dir.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_fig_overlap_vs_step(tables, tmp_path):
    _, avg, _ = tables
    fig = plots.fig_overlap_vs_step(avg)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["Number", "POS"]
    for ax in panels:
        assert ax.get_xscale() == "log"
        # layers 2 and 3 have all checkpoints; layer 1 (final-only sweep) is left out
        data_lines = [l for l in ax.get_lines() if l.get_linestyle() != "--"]
        assert sorted(l.get_label() for l in data_lines) == ["ℓ = 2", "ℓ = 3"]
        assert all(len(l.get_xdata()) == len(STEPS) for l in data_lines)
    assert chance_lines(fig) == pytest.approx([K / D] * 2)
    assert_saved(fig, tmp_path, "fig1_overlap_vs_step")
    assert len(plots.fig_overlap_vs_step(avg, layers=[1]).axes[0].get_lines()) == 2  # 1 point + chance


def test_fig_overlap_vs_layer_defaults_to_last_checkpoint(tables, tmp_path):
    _, avg, _ = tables
    assert plots.last_checkpoint(avg) == "step-001000"
    fig = plots.fig_overlap_vs_layer(avg)
    ax = fig.axes[0]
    assert "step-001000" in ax.get_title()
    lines = {l.get_label(): l for l in ax.get_lines() if l.get_linestyle() != "--"}
    assert sorted(lines) == ["Number", "POS"]
    assert list(lines["POS"].get_xdata()) == [1, 2, 3]
    want = avg[(avg["checkpoint"] == "step-001000") & (avg["attribute"] == "POS")].sort_values("layer")
    np.testing.assert_allclose(lines["POS"].get_ydata(), want["overlap_rate"])
    assert chance_lines(fig) == pytest.approx([K / D])
    assert_saved(fig, tmp_path, "fig2_overlap_vs_layer")
    with pytest.raises(ValueError, match="no rows with checkpoint"):
        plots.fig_overlap_vs_layer(avg, "step-999999")


def test_fig_overlap_transfer_vs_step(tables, tmp_path):
    _, avg, tr = tables
    fig = plots.fig_overlap_transfer_vs_step(avg, tr, layer=3)
    assert len(fig.axes) == 3
    ylabels = [ax.get_ylabel() for ax in fig.axes]
    assert "overlap" in ylabels[0] and ylabels[1].startswith("XNLI accuracy") and ylabels[2].startswith("POS F1")
    mean_xnli = [np.mean([v for (c, t, lang, v) in zip(tr["step"], tr["task"], tr["language"], tr["value"])
                          if c == s and t == "xnli" and lang not in ("en", "en-dev")]) for s in STEPS]
    line = next(l for l in fig.axes[1].get_lines() if l.get_label() == "mean over targets")
    np.testing.assert_allclose(line.get_ydata(), mean_xnli)
    assert K / D in chance_lines(fig)
    assert_saved(fig, tmp_path, "fig3_overlap_transfer")


def test_fig_pairwise_scatter_reports_r(tables, tmp_path):
    pairs, _, tr = tables
    fig = plots.fig_pairwise_scatter(pairs, tr, layer=3, attribute="Number")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert [t.split(":")[0] for t in titles] == ["XNLI", "POS"]
    en = pairs[(pairs["layer"] == 3) & (pairs["attribute"] == "Number")
               & ((pairs["lang_a"] == "en") | (pairs["lang_b"] == "en"))].copy()
    en["language"] = np.where(en["lang_a"] == "en", en["lang_b"], en["lang_a"])
    m = en.merge(tr[(tr["task"] == "xnli") & (tr["metric"] == "accuracy")], on=["checkpoint", "language"])
    r, _, n = pearson(m["overlap_rate"], m["value"])
    assert n == len(STEPS) * (len(LANGS) - 1)
    assert f"r = {r:.2f}" in titles[0] and f"n = {n}" in titles[0]
    assert chance_lines(fig) == pytest.approx([K / D] * 2)  # vertical, one per panel
    assert_saved(fig, tmp_path, "fig4_pairwise_scatter")
    with pytest.raises(ValueError, match="no en–target pairs at layer=9"):
        plots.fig_pairwise_scatter(pairs, tr, layer=9, attribute="Number")


def test_fig_transfer_vs_step(tables, tmp_path):
    _, _, tr = tables
    fig = plots.fig_transfer_vs_step(tr)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split()[0] for ax in panels] == ["XNLI", "POS"]
    labels = [l.get_label() for l in panels[0].get_lines()]
    assert "en (source)" in labels and "en-dev" not in labels
    assert {"ar", "es", "fr", "zh"} <= set(labels)
    assert_saved(fig, tmp_path, "fig5_transfer_vs_step")


def test_fig_overlap_heatmap_marks_significant_cells(tables, tmp_path):
    pairs, _, _ = tables
    g = pairs[(pairs["checkpoint"] == "step-000100") & (pairs["layer"] == 3) & (pairs["attribute"] == "POS")]
    assert 0 < g["significant"].sum() < len(g)  # the plant gives both kinds of cells
    fig = plots.fig_overlap_heatmap(pairs, "step-000100", 3, "POS")
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 2 * len(g)  # every off-diagonal cell, none on the diagonal
    assert sum(t.endswith("*") for t in texts) == 2 * int(g["significant"].sum())
    assert f"{K / D:.3f}" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == sorted(LANGS)
    cbar = fig.axes[1]
    assert any(np.allclose(l.get_ydata(), K / D) for l in cbar.get_lines())
    assert_saved(fig, tmp_path, "figB1_heatmap")


def test_saved_figures_are_byte_reproducible(tables, tmp_path):
    _, avg, _ = tables
    fig = plots.fig_overlap_vs_layer(avg)
    first = plots.save(fig, tmp_path / "a", "fig2", formats=("png", "pdf", "svg"))
    time.sleep(1.1)  # PDF/SVG dates have one-second resolution
    second = plots.save(plots.fig_overlap_vs_layer(avg), tmp_path / "b", "fig2", formats=("png", "pdf", "svg"))
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_save_is_atomic_and_validates(tables, tmp_path):
    _, avg, _ = tables
    fig = plots.fig_overlap_vs_layer(avg)
    paths = plots.save(fig, tmp_path / "sub", "fig2", formats=("png",))
    assert [p.name for p in paths] == ["fig2.png"]

    def broken(fname, **kw):
        with open(fname, "wb") as f:
            f.write(b"half")
        raise OSError("No space left on device")

    fig.savefig = broken
    with pytest.raises(OSError):
        plots.save(fig, tmp_path / "broken", "fig2")
    assert list((tmp_path / "broken").iterdir()) == []  # no half-written file, no temp file
    with pytest.raises(ValueError, match="figure name"):
        plots.save(fig, tmp_path, "../escape")
    with pytest.raises(ValueError, match="unsupported formats"):
        plots.save(fig, tmp_path, "x", formats=("jpg",))


def test_steps_missing_or_zero(tables):
    _, avg, _ = tables
    no_step = avg.assign(step=pd.array([pd.NA] * len(avg), dtype="Int64"))
    with pytest.raises(ValueError, match="all 'step' values are NA"):
        plots.fig_overlap_vs_step(no_step)
    with_zero = avg.copy()
    with_zero.loc[with_zero["step"] == 10, "step"] = 0
    fig = plots.fig_overlap_vs_step(with_zero)
    assert fig.axes[0].get_xscale() == "symlog"
    final = avg.copy()
    final["step"] = final["step"].astype("Int64")
    final.loc[final["checkpoint"] == "step-000010", "step"] = pd.NA
    assert plots.last_checkpoint(final) == "step-000010"  # no step = the final model


def test_fig_overlap_vs_layer_with_the_papers_eleven_attributes(tables, tmp_path):
    """Figure 2 with all eleven attributes: one line each with its own marker and colour,
    and an attribute × layer heatmap of the same values (blank where not probed)."""
    from xalign.params import ALL_ATTRIBUTES

    _, avg, _ = tables
    rng = np.random.default_rng(1)
    rows = [dict(checkpoint="final", step=pd.NA, layer=l, attribute=a, k=K, d=D,
                 overlap_rate=float(rng.uniform(0.1, 0.5)), chance_rate=K / D)
            for a in ALL_ATTRIBUTES for l in (1, 5, 9, 13) if not (a == "Voice" and l == 1)]
    big = pd.DataFrame(rows).astype({"step": "Int64"})
    fig = plots.fig_overlap_vs_layer(big, "final")
    ax, heat = fig.axes[0], fig.axes[1]
    lines = [l for l in ax.get_lines() if l.get_linestyle() != "--"]
    assert sorted(l.get_label() for l in lines) == sorted(ALL_ATTRIBUTES)
    assert len({(l.get_marker(), l.get_color(), l.get_linestyle()) for l in lines}) == 11  # all distinct
    assert len({l.get_marker() for l in lines}) == 11
    im = heat.get_images()[0].get_array()
    assert im.shape == (11, 4)
    rows_ = [t.get_text() for t in heat.get_yticklabels()]
    assert rows_ == sorted(ALL_ATTRIBUTES)
    assert bool(im.mask[rows_.index("Voice"), 0]) and int(im.mask.sum()) == 1  # only Voice at layer 1 blank
    want = big.set_index(["attribute", "layer"]).overlap_rate
    assert float(im[rows_.index("Case"), 2]) == pytest.approx(want[("Case", 9)])
    assert K / D in chance_lines(fig)
    assert_saved(fig, tmp_path, "fig2_eleven")
    # three attributes: the single panel as before
    assert len(plots.fig_overlap_vs_layer(avg).axes) == 1


def test_overlap_figures_draw_intervals_ceiling_and_drops():
    """Figure 1 shades the average's interval, dots the self-overlap ceiling and marks the
    significant drop; without interval columns nothing is shaded."""
    from matplotlib.collections import PolyCollection

    avg = pd.DataFrame(dict(checkpoint=["a", "b", "c"], step=[10, 100, 1000], layer=3, attribute="POS", k=5, d=100,
                            overlap_rate=[0.2, 0.3, 0.1], overlap_rate_std=0.05, n_pairs=10, chance_rate=0.05,
                            n_significant=1, n_seeds=3, overlap_lo=[0.15, 0.25, 0.05], overlap_hi=[0.25, 0.35, 0.15],
                            self_overlap_rate=[0.6, 0.7, 0.65]))
    changes = pd.DataFrame(dict(layer=[3, 3], attribute="POS", checkpoint_from=["a", "b"], checkpoint_to=["b", "c"],
                                step_from=[10, 100], step_to=[100, 1000], overlap_from=[0.2, 0.3],
                                overlap_to=[0.3, 0.1], delta=[0.1, -0.2], drop=[False, True]))
    ax = plots.fig_overlap_vs_step(avg, changes=changes).axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1 and bands[0].get_paths()[0].vertices[:, 1].max() == pytest.approx(0.35)
    labels = [l.get_label() for l in ax.lines]
    assert "self-overlap ceiling (seeds)" in labels
    drops = [c for c in ax.collections if c.get_label() == "significant drop (Holm)"]
    assert len(drops) == 1 and drops[0].get_offsets().tolist() == [[1000.0, 0.1]]
    bare = plots.fig_overlap_vs_step(avg.drop(columns=["overlap_lo", "overlap_hi", "self_overlap_rate"])).axes[0]
    assert not [c for c in bare.collections if isinstance(c, PolyCollection)]


def test_step_axis_labels_checkpoints_without_overlap():
    """Ticks at the checkpoints' steps (BLOOM-560m's series), compact labels, none overlapping
    (a label too close to the previous one is left blank; its tick stays)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from xalign.plots import _step_axis

    steps = [1000, 10000, 100000, 200000, 300000, 400000, 500000, 600000]
    shown = {}
    for width in (4, 12):
        fig = Figure(figsize=(width, 3))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.plot(steps, range(len(steps)))
        _step_axis(ax, steps)
        assert list(ax.get_xticks()) == steps
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels[:3] == ["1k", "10k", "100k"]
        fig.canvas.draw()
        boxes = [t.get_window_extent() for t in ax.get_xticklabels() if t.get_text()]
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))
        shown[width] = [lab for lab in labels if lab]
    assert len(shown[4]) < len(shown[12]) and "200k" in shown[12]  # thinned only where needed
