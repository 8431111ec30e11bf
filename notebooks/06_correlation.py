# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Correlation between overlap and transfer (Table 1)
#
# Pearson's r (scipy) between neuron overlap and zero-shot transfer, per task:
#
# * **average**: per checkpoint, the mean overlap over language pairs against the mean
#   transfer over target languages;
# * **pairwise**: per (target language, checkpoint), the English–target overlap against that
#   language's transfer.
#
# Two recipes are computed (`correlation.recipe` picks which one is `table1.*`):
#
# * `per_layer` (xalign): one r per layer and attribute, plus the attribute mean; every
#   checkpoint; y over the target languages only.
# * `paper` (the authors' computation, `xalign.stats.paper_table`): one r per task and kind.
#   The average rows leave out the final model, average x over Number, Gender and POS and then
#   over the layers, and include English's own test score in y; the pairwise rows use the POS
#   overlap (for both tasks), averaged over the layers, and include the final model.
#
# **Signal or noise.** Every r carries its Fisher-z 95% interval, an exact permutation p
# (all orderings for <= 9 points), the range of r leaving one checkpoint out, the partial r
# controlling for log training step (overlap and transfer both trend with training), and,
# for pairwise rows, a bootstrap interval that resamples target languages as clusters (a
# language's points over checkpoints are not independent). The last cell says in one
# sentence per row whether the correlation survives (`xalign.stats.survives`).

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/xalign/xalign/blob/main/notebooks/06_correlation.ipynb)
# On Colab, the next cell clones xalign, installs it pinned and fetches the data (see
# `xalign.colab`); elsewhere it does nothing.

# %%
import sys

if "google.colab" in sys.modules:  # Colab only: clone, install pinned, fetch data (xalign.colab)
    import subprocess
    subprocess.run("test -d /content/xalign || git clone -q --depth 1 https://github.com/xalign/xalign /content/xalign",
                   shell=True, check=True)
    sys.path.insert(0, "/content/xalign/lib")
    from xalign.colab import bootstrap
    bootstrap()

# %% tags=["parameters"]
params: str = "params/tiny-lab.yaml"  # a params file (relative to the repository root), or the dict papermill -f injects
overrides: dict = {}  # dotted params keys on top of it, e.g. {"probe.k": 20} (validated by the same schema)
missing_upstream: str = "slice"  # if earlier stages are not current: "slice" runs on the built-in slice, "error" stops

# %%
from xalign import notebook, runs

P = notebook.setup(params, overrides, missing_upstream, stage="correlation", namespace=globals())

# %% [markdown]
# ## One Table 1 cell, inline
#
# Before the sweep, **one** cell of the `per_layer` table, from the two tables stage 6 reads:
# the overlap pairs of stage 4 (`overlap/pairs.parquet`: the rate |A ∩ B| / k of every
# language pair's k selected neurons, mean over probe seeds) restricted to this run's
# `extraction.layers`, checkpoints and `probe.attributes`, and the zero-shot scores of stage 5
# (`transfer/results.parquet`, mean over fine-tuning seeds). By default: POS transfer, the
# **average** kind, the last main layer and the POS overlap (pass `task=`, `kind=`, `layer=`,
# `attribute=` to `wt.inline_cell` for another). Each point is one checkpoint: x its overlap
# rate averaged over language pairs, y its transfer score averaged over the target languages
# (English, the fine-tuning language, and `en-dev` are not targets). Pearson's r over these
# points is the cell; its 95% interval by Fisher's z assumes independent points, which
# checkpoints of one training run are not, so read it as optimistic.

# %%
from IPython.display import display  # noqa: E402

from xalign.walkthrough import transfer as wt  # noqa: E402

pairs, transfer = wt.load_cell_inputs(P)
cell = wt.default_cell(P)
pts, one = wt.inline_cell(pairs, transfer, **cell)
print(f"{cell}: {len(pts)} points (checkpoints), r = {one.r:.3f} (p = {one.p:.3g}), "
      f"Fisher-z 95% interval [{one.r_lo:.2f}, {one.r_hi:.2f}]")
wt.show(wt.fig_cell(pairs, transfer, one))
pts.round(4)

# %% [markdown]
# The **pairwise** kind of the same cell: one point per (checkpoint, target language), x the
# English–target overlap rate, y that target's own score. A language's points over
# checkpoints are not independent (they share the language), hence the cluster bootstrap over
# languages in the sweep's table.

# %%
pts_pw, one_pw = wt.inline_cell(pairs, transfer, **{**cell, "kind": "pairwise"})
print(f"pairwise: {len(pts_pw)} points over {pts_pw.language.nunique()} target languages, r = {one_pw.r:.3f}")
wt.show(wt.fig_cell(pairs, transfer, one_pw))

# %% [markdown]
# ## The sweep
#
# The stage runner computes every cell, by both recipes, with the uncertainty columns, and
# writes `correlation/table1.{parquet,csv,md}` (the recipe `correlation.recipe` names) and
# `correlation/table1_<other recipe>.*`. The inline cells are rows of the `per_layer` table.

# %%
summary = runs.run_correlation(P)
if "table1" in summary.tables:
    for name in sorted(summary.tables):  # table1 (correlation.recipe), then the other recipe
        print(f"{name}  ({P.run_dir() / 'correlation' / (name + '.md')})")
        print((P.run_dir() / "correlation" / f"{name}.md").read_text())
    display(summary.tables["table1"].round(3))
else:
    print("no correlation table:", "; ".join(summary.skipped))

# %%
tables = {(P.correlation.recipe if name == "table1" else name.removeprefix("table1_")): t
          for name, t in summary.tables.items()}
if "per_layer" in tables:
    for c in (one, one_pw):
        row = wt.table_row(tables["per_layer"], c)
        print(f"{c.task} {c.kind} ℓ = {c.layer} {c.attribute}: inline r = {c.r:.6f}, n = {c.n}; "
              f"sweep r = {row.r:.6f}, n = {row.n}")

# %% [markdown]
# ## The scatter behind every cell
#
# Each panel is one row of a table: its points (pairwise rows coloured by target language,
# each point labelled with its checkpoint's training step), the least-squares line, and the
# table's r with its Fisher-z interval and n in the title. A handful of points can give a
# large |r| by chance, and overlap and transfer both trend with training, so a panel whose
# points line up along the training steps says "both grow with training", not more (the
# partial r for log step in the table controls for that). `check_cells` recomputes every r
# from the drawn points: `same` is True when it equals the table's.

# %%
for recipe, t in sorted(tables.items()):
    print(f"recipe {recipe}: {len(t)} cells")
    wt.show(wt.fig_cells(pairs, transfer, t, recipe=recipe), dpi=70)
    display(wt.check_cells(pairs, transfer, t, recipe).round(4))

# %%
from xalign.stats import survives  # noqa: E402

if "table1" in summary.tables:
    for _, row in summary.tables["table1"].iterrows():
        print("-", survives(row))

# %% [markdown]
# ## Does the conclusion depend on the probe?
#
# The overlaps above come from neurons the latent probe ranks and scores itself. With
# `probe.compare_methods` (here: Probeless, Antverg & Belinkov 2022, a probe-free ranking by
# class-mean differences), stage 3 also selected k neurons per probe by each method. The same
# overlap and Table 1 computation on those selections (`xalign.stats.correlation_by_method`;
# its `greedy` rows are the table above) says whether the overlap–transfer correlation is a
# property of the model or of the probe: r per method, side by side, for the `per_layer`
# recipe's average rows (one point per checkpoint).

# %%
import pandas as pd  # noqa: E402

from xalign.stages._common import checkpoint_rows  # noqa: E402
from xalign.stats import correlation_by_method  # noqa: E402

f_methods = P.run_dir() / "probing" / "methods.parquet"
if P.probe.compare_methods and f_methods.is_file() and len(transfer):
    by_method = correlation_by_method(
        pd.read_parquet(f_methods), pd.read_parquet(P.run_dir() / "probing" / "selections.parquet"), transfer,
        recipe="per_layer", layers=P.extraction.layers, attributes=P.probe.attributes,
        checkpoints=[c["name"] for c in checkpoint_rows(P.run_dir())])
    avg_rows = by_method[by_method.kind == "average"] if "kind" in by_method else by_method
    display(avg_rows.pivot_table(index=[c for c in ("task", "attribute", "layer") if c in avg_rows],
                                 columns="method", values="r").round(3))
else:
    print("probe.compare_methods is empty (or no transfer results): greedy only")
