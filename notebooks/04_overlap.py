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

# %% [markdown]
# ## One pair, inline
#
# Before the sweep, one language pair by hand. Stage 3 has written its selections
# (`probing/selections.parquet`, one row per probe: k neurons out of d), so take English and
# one other language for one (checkpoint, layer, attribute) and one replicate (probe seed,
# lemma-split seed): by default the last checkpoint, the last main layer, POS, the first
# other language and the first seeds (pass `lang_b=`, `seed=`, … to `wt.pick_pair`).

# %%
from xalign.walkthrough import probing as wt  # noqa: E402

sel = wt.load_selections(P.run_dir())
ex = wt.default_example(P)
group = (ex["checkpoint"], ex["layer"], ex["attribute"])
pair = wt.pick_pair(sel, *group, lang_a=ex["language"])
print(pair.describe())

# %% [markdown]
# **Is that more than chance?** If A and B were independent uniformly random k-subsets of the
# d neurons, X = |A ∩ B| would be hypergeometric: population d, k "successes" (the neurons in
# A), k draws (B). Its mean is k²/d, i.e. the chance *rate* k/d, and the exact one-sided
# p-value of an observed overlap o is P[X ≥ o] = `hypergeom.sf(o - 1, d, k, k)`
# (`xalign.overlap.overlap_p_value`). The table is that null distribution from
# `scipy.stats.hypergeom` directly; the row of the observed o gives the same p.

# %%
null = wt.hypergeom_table(pair.d, pair.k, pair.n_overlap)
print(f"d = {pair.d}, k = {pair.k}: chance rate k/d = {pair.chance:.4f}; observed |A ∩ B| = {pair.n_overlap}, "
      f"p = {pair.p_value:.4g} (xalign.overlap) = {null.p_tail[pair.n_overlap]:.4g} (scipy.stats.hypergeom)")
wt.show(wt.fig_null(pair))
null.round(5)

# %% [markdown]
# One replicate is one draw of the probe's noise. The same pair in every replicate (probe seed
# × lemma-split seed) of the run: the stage's `pairs` row is their mean, with a t interval.

# %%
wt.pair_replicates(sel, *group, pair.lang_a, pair.lang_b).round(4)

# %% [markdown]
# **Every pair of the group.** The same computation for all language pairs of this
# (checkpoint, layer, attribute), p-values Holm-corrected over the group's pairs in each
# replicate, then averaged over replicates (`significant` = above chance in every replicate):
# the Appendix B.1 heatmap.

# %%
wt.show(wt.fig_heatmap(sel, *group, alpha=P.overlap.alpha))
wt.group_pairs(sel, *group, alpha=P.overlap.alpha)[
    ["lang_a", "lang_b", "k", "d", "n_overlap", "overlap_rate", "chance_rate", "p_holm", "significant",
     "n_seeds", "overlap_lo", "overlap_hi"]].round(3)

# %% [markdown]
# ## The sweep
#
# The stage runner does this for every (checkpoint, layer, attribute), adds the self-overlap
# ceiling, the averages with their bootstrap intervals and the step-to-step changes, and
# writes `overlap/*.parquet` (and CSV). The inline pair is one row of `pairs_by_seed`.

# %%
import pandas as pd  # noqa: E402

summary = runs.run_overlap(P)
avg = summary.tables["average"]
row = wt.sweep_pair(pd.read_parquet(P.run_dir() / "overlap" / "pairs_by_seed.parquet"), pair)
print(f"{pair.lang_a}–{pair.lang_b} in the sweep: n_overlap {row.n_overlap}, rate {row.overlap_rate:.3f}, "
      f"p {row.p_value:.4g} (Holm {row.p_holm:.4g}); inline: {pair.n_overlap}, {pair.rate:.3f}, {pair.p_value:.4g}")

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
# The most-overlapping pairs on the last checkpoint (`significant`: Holm-corrected p < α in
# every replicate):

# %%
pairs = summary.tables["pairs"]
last = pairs[pairs.checkpoint == pairs.sort_values("step").checkpoint.iloc[-1]]
print(f"{int(last.significant.sum())} of {len(last)} pairs on {last.checkpoint.iloc[0]} are significant")
last.sort_values(["significant", "overlap_rate"], ascending=False).head(15)

# %% [markdown]
# ## Does the overlap depend on the selector?
#
# The paper selects neurons with its probe (greedy, above). With `probe.compare_methods`,
# stage 3 also ranks the neurons of every dataset and seed without greedy search:
# **Probeless** (Antverg & Belinkov 2022: the summed absolute differences of the class means
# of each dimension, no probe) and/or **weight mass** (a linear probe's |W|), and writes
# `probing/methods.parquet`. The same latent probe scores every method's k neurons, so their
# MI is comparable. First, how much each method agrees with greedy on the same dataset:
# |A ∩ G| / k, averaged over checkpoints, languages and seeds, next to chance k/d
# (`xalign.overlap.method_agreement`).

# %%
from xalign import overlap as ov  # noqa: E402

f_methods = P.run_dir() / "probing" / "methods.parquet"
methods = pd.read_parquet(f_methods) if f_methods.is_file() else pd.DataFrame()
print(f"probe.compare_methods = {P.probe.compare_methods}: {len(methods)} rows in probing/methods.parquet"
      + ("" if len(methods) else " (list e.g. [probeless] to compare)"))
ov.method_agreement(methods).groupby(["attribute", "layer", "method"])[["agreement", "chance_rate"]].mean().round(3)

# %% [markdown]
# Then the cross-lingual overlap rate computed from each method's selections by the same
# kernels as the sweep (pairs per seed, mean over pairs and seeds; `greedy` is the `average`
# table above), per checkpoint, layer and attribute (`xalign.overlap.overlap_by_method`). If
# the overlap also rises above chance under Probeless, the paper's observation does not hinge
# on its probe. Overlap stage 4 and the correlation with transfer (notebook 06) use greedy only.

# %%
by_method = ov.overlap_by_method(methods, sel, alpha=P.overlap.alpha)
by_method.pivot_table(index=["checkpoint", "layer", "attribute", "chance_rate"], columns="method",
                      values="overlap_rate").round(3)
