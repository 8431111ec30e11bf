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
# # 04 · Overlap: do languages share their most informative neurons?
#
# For two languages with selected sets A and B of k neurons, the **overlap rate** is
# |A ∩ B| / k. Under random selection the overlap is hypergeometric, so its expected rate,
# the **chance level**, is k/d, and the p-value of an observed overlap o is
# P[X ≥ o] = `hypergeom.sf(o-1, d, k, k)`, Holm-corrected across the language pairs of each
# (checkpoint, layer, attribute). The average overlap is the mean over pairs.
#
# **Signal or noise.** With several probe seeds (`probe.seeds`) every seed's selections are
# compared with the same seed's, and each number gets an interval:
#
# * a pair's rate is the mean over seeds with a t interval (`overlap_lo`, `overlap_hi`);
#   `significant` means above chance in *every* seed;
# * the **self-overlap ceiling** is the overlap between two seeds of the *same* language:
#   a cross-language overlap can only be read relative to it and to chance k/d;
# * the average's 95% interval comes from a bootstrap that resamples languages as clusters;
# * `changes` tests each step's change of the average (paired by language, Holm over steps):
#   a `drop` is a decrease beyond seed and language noise.

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/xalign/xalign/blob/main/notebooks/04_overlap.ipynb)
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

P = notebook.setup(params, overrides, missing_upstream, stage="overlap", namespace=globals())

# %%
summary = runs.run_overlap(P)
avg = summary.tables["average"]

# %% [markdown]
# Average overlap per checkpoint with its 95% interval, next to chance k/d and the ceiling:

# %%
avg[["checkpoint", "layer", "attribute", "overlap_rate", "overlap_lo", "overlap_hi", "chance_rate",
     "self_overlap_rate", "n_pairs", "n_seeds", "n_significant"]].round(3)

# %% [markdown]
# Selection stability across seeds (mean pairwise Jaccard and overlap rate of one
# language's seeds), per attribute and layer, averaged over checkpoints and languages:

# %%
summary.tables["self"].groupby(["attribute", "layer"])[["self_overlap_rate", "jaccard"]].mean().round(3)

# %% [markdown]
# Changes of the average between consecutive checkpoints; `drop` marks significant decreases:

# %%
summary.tables["changes"].round(3)

# %% [markdown]
# The most-overlapping significant pairs on the last checkpoint:

# %%
pairs = summary.tables["pairs"]
last = pairs[pairs.checkpoint == pairs.sort_values("step").checkpoint.iloc[-1]]
last[last.significant].sort_values("overlap_rate", ascending=False).head(15)
