"""The inline walkthrough of notebooks 05 and 06 (:mod:`xalign.walkthrough.transfer`).

Notebook 05: a tiny lab (two checkpoints of the minimal params, POS only, one fine-tuning
seed, 4 optimiser steps) is run through stages 0-2 and 5 in a temporary folder; the inline
fine-tuning of one unit must give the stage's rows and dev curve bit for bit (same seed,
data, one torch thread), and its curve must say which evaluation was kept.
Notebook 06: on planted neuron selections and transfer scores, the points behind every
Table 1 row, as the walkthrough rebuilds them, must give the r and n that stage 6 wrote, by
both recipes (checked against ``scipy.stats.pearsonr``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy.stats import pearsonr

from xalign import runs
from xalign.params import load_params
from xalign.store import ArtefactError, read_table, write_json, write_table
from xalign.walkthrough import transfer as wt

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, BATCH = 32, 8  # 4 optimiser steps, each followed by an English-dev evaluation


def _lab_params(tmp: Path, **over):
    return load_params(REPO / "params" / "minimal.yaml", overrides={
        "run_name": "wt-transfer", "runs_dir": str(tmp / "runs"), "figures_dir": str(tmp / "figures"),
        "pretrain.checkpoint_steps": [5, 10], "pretrain.max_lines_per_source": 50,
        "data.languages": ["en", "es"], "data.max_sentences_per_language": 60, "data.split_seeds": [0],
        "transfer.tasks": ["pos"], "transfer.seeds": [0], "transfer.batch_size": BATCH,
        "transfer.max_train_examples": N_TRAIN, "transfer.max_eval_examples": 8, "transfer.eval_every": 1,
        **over})


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Stages 0-2 and 5 of a tiny lab (about 15 s on one thread); returns (params, transfer summary)."""
    P = _lab_params(tmp_path_factory.mktemp("wt_transfer"))
    for stage in ("pretrain", "data_prep", "extraction"):
        getattr(runs, f"run_{stage}")(P)
    return P, runs.run_transfer(P)


def test_inline_finetune_keeps_the_best_dev_evaluation(lab):
    P, _ = lab
    run = wt.finetune_one(P)  # defaults: last checkpoint, POS, first seed
    assert (run.checkpoint, run.step, run.task, run.seed) == ("step-000010", 10, "pos", 0)
    assert run.sizes.loc["train", "n"] == N_TRAIN and run.sizes.loc["dev", "n"] == 8
    assert list(run.sizes.index) == ["train", "dev", "eval en", "eval es"] and run.n_labels == 17
    r = run.results.iloc[0]
    h = run.history
    n_steps = math.ceil(N_TRAIN / BATCH)
    assert int(r.n_steps) == n_steps and int(r.n_evals) == len(h) == n_steps  # eval_every: 1
    assert list(h.eval_step) == list(range(1, n_steps + 1)) and set(h.epoch) == {1}
    assert h.kept.sum() == 1
    kept = h[h.kept].iloc[0]
    assert kept.eval_step == r.best_step and kept.epoch == r.best_epoch
    assert kept.dev_score == h.dev_score.max()
    assert kept.eval_step == h.eval_step[h.dev_score == h.dev_score.max()].min()  # the first maximum
    res = run.results
    en_dev_f1 = res[(res.language == "en-dev") & (res.metric == "f1")].value.item()
    assert en_dev_f1 == pytest.approx(kept.dev_score, abs=1e-12)  # the kept parameters' dev score
    assert f"{n_steps} optimiser steps" in run.describe() and f"kept step {int(r.best_step)}" in run.describe()

    t = wt.scores_table(res)
    assert list(t.index) == ["en-dev", "en", "es"] and list(t.target) == [False, False, True]
    assert ((t.ci_low <= t.value) & (t.value <= t.ci_high)).all() and t.index.name == "pos f1"
    assert wt.scores_table(res, "accuracy").index.name == "pos accuracy"

    fig = wt.fig_dev_curve(h)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    (line,) = fig.axes[0].get_lines()[:1]
    assert list(line.get_xdata()) == list(h.eval_step) and list(line.get_ydata()) == list(h.dev_score)
    assert len(fig.axes[0].collections[0].get_offsets()) == 1  # the kept evaluation, marked
    fig = wt.fig_scores(res)
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == len(t)


def test_inline_unit_equals_the_stage_unit(lab):
    """Same (checkpoint, task, seed), one torch thread: the sweep's rows and dev curve exactly."""
    P, summary = lab
    by_seed = read_table(P.run_dir() / "transfer" / "results_by_seed.parquet")
    hist = wt.load_history(P.run_dir())
    pd.testing.assert_frame_equal(hist, summary.tables["dev_history"])
    assert sorted(hist.checkpoint.unique()) == ["step-000005", "step-000010"]
    for ck in ("step-000005", "step-000010"):
        run = wt.finetune_one(P, ck, "pos", 0)
        pd.testing.assert_frame_equal(run.results, wt.sweep_rows(by_seed, run))
        cmp = wt.compare_with_sweep(run, by_seed)
        assert len(cmp) == len(run.results) and (cmp.abs_diff == 0).all()
        h = hist[hist.checkpoint == ck].reset_index(drop=True)
        pd.testing.assert_frame_equal(run.history, h)
    assert len(wt.fig_dev_curve(hist).axes[0].get_lines()) >= 2  # one curve per unit


def test_the_results_unit_depends_on_every_history(lab):
    """Each unit writes its dev curve beside its part; a missing one is recomputed alone,
    and the results unit is keyed on every curve's hash as on every part's."""
    from xalign.pipeline.manifest import Manifest
    from xalign.pipeline.scheduler import Context
    from xalign.stages import STAGES
    from xalign.stages import transfer as st

    P, _ = lab
    run = P.run_dir()
    parts, (results,) = list(STAGES["transfer"].plan(Context(P, run, Manifest.open(run), STAGES)))
    assert [u.outputs[1].name for u in parts] == ["pos.seed-0.history.parquet"] * 2
    assert set(results.inputs) == {u.key for u in parts} | {f"{u.key}/history" for u in parts}
    assert run / "transfer" / "dev_history.parquet" in results.outputs
    f = st.history_path(run / "transfer" / "parts" / "step-000005" / "pos.seed-0.parquet")
    before = read_table(f)
    assert list(before.columns) == st.HISTORY_COLUMNS
    f.unlink()
    s = runs.run_transfer(P)
    assert (s.computed, s.reused) == (1, 2)  # that unit; the results unit sees the same hashes
    pd.testing.assert_frame_equal(read_table(f), before)


# ---------------------------------------------------------------------------------------
# notebook 06 on a planted run

STEPS = [10, 20, 40, 80]  # and the final model
LANGS = ["en", "es", "fr", "de"]


def _planted_pairs() -> pd.DataFrame:
    """Stage 4's ``pairs.parquet`` from planted selections: k = 4 of d = 20, one seed; the
    shared neurons grow with the step (noisily, per language), a third layer (9) and a third
    attribute (Gender) that the params do not analyse, which the walkthrough must drop."""
    from xalign import overlap as ov

    rng = np.random.default_rng(3)
    rows = []
    for i, (ck, step) in enumerate([*((f"step-{s:06d}", s) for s in STEPS), ("final", None)]):
        for layer in (2, 3, 9):
            for attr in ("Number", "POS", "Gender"):
                for lang in LANGS:
                    n_shared = min(4, int(rng.integers(0, 2 + i)))
                    rest = [int(n) for n in rng.permutation(np.arange(4, 20))[:4 - n_shared]]
                    rows.append({"checkpoint": ck, "step": step, "layer": layer, "attribute": attr, "language": lang,
                                 "split_seed": 0, "seed": 0, "d": 20, "k": 4,
                                 "neurons": list(range(n_shared)) + rest})
    return ov.summarise_seeds(ov.overlap_pairs(pd.DataFrame(rows), alpha=0.05))


def _planted_transfer() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    rows = []
    for i, (ck, step) in enumerate([*((f"step-{s:06d}", s) for s in STEPS), ("final", np.nan)]):
        for task, metric in (("pos", "f1"), ("xnli", "accuracy")):
            for lang in ["en-dev", *LANGS]:
                for m in {metric, "accuracy"}:
                    rows.append({"checkpoint": ck, "step": step, "task": task, "language": lang, "metric": m,
                                 "value": float(0.2 + 0.1 * i + rng.uniform(0, 0.15)), "n": 24})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A run folder with checkpoints.json, overlap/pairs.parquet, transfer/results.parquet and
    stage 6's Table 1 by both recipes (the stage's own ``compute``)."""
    from xalign.stages.correlation import compute

    tmp = tmp_path_factory.mktemp("wt_cells")
    P = load_params(REPO / "params" / "minimal.yaml", overrides={
        "run_name": "planted", "runs_dir": str(tmp / "runs"), "figures_dir": str(tmp / "figures")})
    run = P.run_dir()
    ckpts = [*((f"step-{s:06d}", s) for s in STEPS), ("final", None)]
    write_json([{"name": n, "step": s, "excluded": False} for n, s in ckpts], run / "checkpoints.json")
    write_table(_planted_pairs(), run / "overlap" / "pairs.parquet")
    write_table(_planted_transfer(), run / "transfer" / "results.parquet")
    for recipe, name in (("per_layer", "table1"), ("paper", "table1_paper")):
        compute(run / "overlap" / "pairs.parquet", run / "transfer" / "results.parquet", recipe,
                run / "correlation" / f"{name}.parquet", layers=list(P.extraction.layers),
                attributes=list(P.probe.attributes), checkpoints=[n for n, _ in ckpts])
    return P


@pytest.mark.parametrize("recipe", ["per_layer", "paper"])
def test_cell_points_give_each_table1_r(planted, recipe):
    P = planted
    pairs, transfer = wt.load_cell_inputs(P)
    assert set(pairs.layer) == {2, 3} and set(pairs.attribute) == {"Number", "POS"}
    table = read_table(P.run_dir() / "correlation" / ("table1.parquet" if recipe == "per_layer" else "table1_paper.parquet"))
    n_ck = len(STEPS) + 1
    assert len(table) == (2 * 2 * 3 * 2 if recipe == "per_layer" else 4)  # tasks × layers × (2 attrs + mean) × kinds
    for row in table.itertuples(index=False):
        pts = wt.cell_points(pairs, transfer, row, recipe)
        r = pearsonr(pts.x, pts.y).statistic
        assert len(pts) == row.n and r == pytest.approx(row.r, abs=1e-12), (recipe, row)
        assert pts.x.between(0, 1).all() and pts.y.between(0, 1).all()
        final_in = pts.checkpoint.eq("final").any()
        if row.kind == "average":
            assert len(pts) == (n_ck if recipe == "per_layer" else n_ck - 1) and final_in == (recipe == "per_layer")
            assert "language" not in pts
        else:
            assert len(pts) == n_ck * 3 and sorted(pts.language.unique()) == ["de", "es", "fr"] and final_in
        assert pts.step.isna().equals(pts.checkpoint.eq("final")) and set(pts.step.dropna()) <= set(STEPS)
    cells = wt.check_cells(pairs, transfer, table, recipe)
    assert len(cells) == len(table) and cells.same.all()


def test_inline_cell_is_the_stage_row(planted):
    """The notebook's inline cell: its r, p, n and Fisher-z interval are the stage's row's."""
    from scipy.stats import pearsonr

    P = planted
    pairs, transfer = wt.load_cell_inputs(P)
    table = read_table(P.run_dir() / "correlation" / "table1.parquet")
    cell = wt.default_cell(P)
    assert cell == {"task": "pos", "kind": "average", "layer": 3, "attribute": "POS"}
    for kind in ("average", "pairwise"):
        for attribute in ("POS", "Number", "mean"):
            pts, one = wt.inline_cell(pairs, transfer, **{**cell, "kind": kind, "attribute": attribute})
            row = wt.table_row(table, one)
            assert (row.kind, row.attribute, row.layer) == (kind, attribute, 3)
            assert one.n == row.n == len(pts) and isinstance(one.n, int)
            for c in ("r", "p", "r_lo", "r_hi"):
                assert one[c] == pytest.approx(row[c], abs=1e-12), (kind, attribute, c)
            ci = pearsonr(pts.x, pts.y).confidence_interval()
            assert (one.r_lo, one.r_hi) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert len(wt.fig_cell(pairs, transfer, one).axes) == 1


def test_check_cells_flags_a_wrong_r(planted):
    """The check can fail: a table whose r is off by 0.01 (or whose n is off by one) is not
    what the points give."""
    pairs, transfer = wt.load_cell_inputs(planted)
    table = read_table(planted.run_dir() / "correlation" / "table1_paper.parquet")
    assert wt.check_cells(pairs, transfer, table, "paper").same.all()
    assert not wt.check_cells(pairs, transfer, table.assign(r=table.r + 0.01), "paper").same.any()
    assert not wt.check_cells(pairs, transfer, table.assign(n=table.n + 1), "paper").same.any()
    # the per_layer recipe's points of the paper table's rows are other points
    per_layer = read_table(planted.run_dir() / "correlation" / "table1.parquet")
    assert not wt.check_cells(pairs, transfer, per_layer, "per_layer").r.equals(table.r)


def test_cell_figures_draw_every_point(planted):
    P = planted
    pairs, transfer = wt.load_cell_inputs(P)
    table = read_table(P.run_dir() / "correlation" / "table1.parquet")
    for _, row in table[(table.layer == 3) & (table.attribute == "POS")].iterrows():
        fig = wt.fig_cell(pairs, transfer, row)
        assert isinstance(fig, Figure) and len(fig.axes) == 1
        ax = fig.axes[0]
        assert sum(len(c.get_offsets()) for c in ax.collections) == row.n
        assert f"n = {row.n}" in ax.get_title() and f"r = {row.r:.2f}" in ax.get_title()
    fig = wt.fig_cells(pairs, transfer, table.head(5), ncols=3)
    assert len(fig.axes) == 6 and sum(ax.get_visible() for ax in fig.axes) == 5
    paper = read_table(P.run_dir() / "correlation" / "table1_paper.parquet")
    fig = wt.fig_cells(pairs, transfer, paper, recipe="paper", ncols=2)
    assert len(fig.axes) == 4 and all("layers 2,3" in ax.get_title() for ax in fig.axes)


# ---------------------------------------------------------------------------------------
# errors


def test_helpers_reject_what_is_not_in_the_run(lab, planted, tmp_path):
    P, _ = lab
    bad = [(dict(checkpoint="step-999"), r"no stage-5 unit step-999/pos/seed-0 \(checkpoints \['step-000005', "
                                         r"'step-000010'\], tasks \['pos'\], seeds \[0\]\)"),
           (dict(task="xnli"), r"no stage-5 unit step-000010/xnli/seed-0"),
           (dict(seed=7), r"no stage-5 unit step-000010/pos/seed-7")]
    for kw, msg in bad:
        with pytest.raises(wt.WalkthroughError, match=msg) as e:
            wt.finetune_one(P, **kw)
        assert "\n" not in str(e.value)
    empty = _lab_params(Path(P.runs_dir).parent, **{"transfer.tasks": []})
    with pytest.raises(wt.WalkthroughError, match=r"wt-transfer: nothing to fine-tune \(2 checkpoints, transfer.tasks = \[\]\)"):
        wt.default_unit(empty)
    by_seed = read_table(P.run_dir() / "transfer" / "results_by_seed.parquet")
    with pytest.raises(wt.WalkthroughError, match=r"pos: no metric 'bleu' \(have \['accuracy', 'f1', 'macro_f1'\]\)"):
        wt.scores_table(by_seed, "bleu")
    fake = wt.InlineRun("step-000010", 10, "pos", 3, None, pd.DataFrame(), 17, by_seed, pd.DataFrame(), 0.0)
    with pytest.raises(wt.WalkthroughError, match="results_by_seed.parquet: no rows for step-000010/pos/seed-3"):
        wt.sweep_rows(by_seed, fake)
    with pytest.raises(ArtefactError, match="dev_history.parquet: missing artefact"):
        wt.load_history(tmp_path)
    pairs, transfer = wt.load_cell_inputs(planted)
    table = read_table(planted.run_dir() / "correlation" / "table1.parquet")
    with pytest.raises(wt.WalkthroughError, match=r"correlation recipe 'pearson' unknown \(per_layer, paper\)"):
        wt.cell_points(pairs, transfer, table.iloc[0], "pearson")
    with pytest.raises(wt.WalkthroughError, match=r"no overlap for layer 9, attribute POS \(have layers \[2, 3\], "
                                                  r"attributes \['Number', 'POS'\]\)"):
        wt.inline_cell(pairs, transfer, "pos", "average", 9, "POS")
    with pytest.raises(wt.WalkthroughError, match="no overlap for layer 3, attribute Gender"):
        wt.inline_cell(pairs, transfer, "pos", "average", 3, "Gender")
    with pytest.raises(wt.WalkthroughError, match="Table 1 kind 'mean' unknown"):
        wt.inline_cell(pairs, transfer, "pos", "mean", 3, "POS")
    _, one = wt.inline_cell(pairs, transfer, "pos", "average", 3, "POS")
    with pytest.raises(wt.WalkthroughError, match=r"Table 1 \(per_layer\): no row for pos average, POS, ℓ = 3"):
        wt.table_row(table[table.kind != "average"], one)
    with pytest.raises(wt.WalkthroughError, match=r"planted: no Table 1 \(transfer.tasks = \[\]\)"):
        wt.default_cell(planted.model_copy(update={"transfer": planted.transfer.model_copy(update={"tasks": []})}))
    with pytest.raises(wt.WalkthroughError, match="Table 1 has no rows to draw"):
        wt.fig_cells(pairs, transfer, table.iloc[:0])
    with pytest.raises(ArtefactError, match="pairs.parquet: missing artefact"):
        wt.load_cell_inputs(P)  # the lab has no stage 4
