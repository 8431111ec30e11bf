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
# # 03 · Probing: which neurons encode each attribute?
#
# For every (checkpoint, layer, attribute, language) we train the latent-variable intrinsic
# probe of Stańczak et al. (2023): a linear softmax classifier p(π | h ⊙ m) over a Bernoulli
# mask m ~ q(m) = ∏ Bernoulli(σ(φ_d)), fitted by maximising E_q[log p] + H(q) with a uniform
# prior (Wang et al. 2024, Eq. 1–4), with early stopping on a held-out part of train.
# Then we **greedily select the k most informative neurons** on dev: at each step the neuron
# whose addition (all other dims zeroed) most increases dev log-likelihood. We record dev
# and test normalised mutual information (bits) and accuracy along the path.
#
# With a small hidden size d, choose k so that k/d stays near the paper's 50/1024 ≈ 5%.
#
# `probe.attributes` are probed at every extracted layer of every checkpoint;
# `probe.sweep_attributes` (the BLOOM-560m params: all eleven, as the paper's Figure 2 and
# Appendix B) only at the layer sweep of the last checkpoint.

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/xalign/xalign/blob/main/notebooks/03_probing.ipynb)
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
import pandas as pd

from xalign import notebook, runs

P = notebook.setup(params, overrides, missing_upstream, stage="probing", namespace=globals())

# %% [markdown]
# ## One probe, inline
#
# Before the sweep, the method on **one** dataset of this run: one checkpoint, one layer ℓ,
# one attribute, one language, one lemma split and one probe seed (by default the last
# checkpoint, the last main layer, POS and English; pass `checkpoint=`, `layer=`,
# `attribute=`, `language=` to `wt.pick_dataset` for another). The word vectors come from
# stage 2 (`vectors/<checkpoint>/<lang>.safetensors`, one row per labelled word), the labels
# and the lemma-disjoint train/dev/test split from stage 1 (`data/labels.parquet`). Each
# dimension is z-scored with the *training* split's mean and standard deviation
# (`probe.standardize`), as the stage does.

# %%
from IPython.display import display  # noqa: E402

from xalign.walkthrough import probing as wt  # noqa: E402

ds = wt.pick_dataset(P)
print(ds.describe())
ds.shapes()

# %% [markdown]
# **Training.** The probe is a linear softmax classifier on the masked vector,
# p(π | h ⊙ m) = softmax((h ⊙ m) W + b), with W (d × C) and b (C), and a mean-field mask
# distribution q(m) = ∏_d Bernoulli(σ(φ_d)) with φ (d). Training maximises the ELBO
# E_q[log p(π | h ⊙ m)] + λ H(q) (Eq. 1–4; λ = 1/N with `entropy_scale: per_example`, 1 with
# `reference`) with Adam: a Monte-Carlo gradient for W and b over `probe.mc_samples` masks per
# step, a score-function gradient with a leave-one-out baseline for φ. Early stopping watches
# the log-likelihood of a held-out part of the training split (under fixed masks), and the
# best epoch's W, b, φ are returned. Same config and seed as the stage's probe for this dataset.

# %%
import math  # noqa: E402

config = wt.probe_config(P)
probe = wt.train_one(ds, config)
best = probe.history[probe.best_epoch]
print(f"W {tuple(probe.W.shape)} (d × C), b {tuple(probe.b.shape)}, φ {tuple(probe.phi.shape)}; "
      f"{len(probe.history)} epochs (max {config.max_epochs}, patience {config.patience}), returned epoch "
      f"{probe.best_epoch}: held-out log-likelihood {best['held_out_loglik']:.3f} nats/example, "
      f"H(q) = {best['entropy']:.1f} nats of at most d ln 2 = {ds.d * math.log(2):.1f}")
wt.show(wt.fig_training_curve(probe, title=f"{ds.language} {ds.attribute}, ℓ = {ds.layer}, {ds.checkpoint}: "
                                           f"training the latent-variable probe (seed {config.seed})"))
wt.training_table(probe).iloc[sorted({0, probe.best_epoch, len(probe.history) - 1})].round(4)

# %% [markdown]
# **Mask marginals.** σ(φ_d) = q(m_d = 1) is how often the probe keeps dimension d on. A
# dimension whose removal costs log-likelihood is pushed towards 1; the entropy term pulls
# every marginal back towards 0.5, the start. With a short training budget (the built-in slice
# trains at most 40 full-batch epochs) the marginals hardly leave 0.5, so the ranking of the
# marginals is not the selection: the neurons are chosen greedily on dev, next.

# %%
wt.show(wt.fig_marginals(probe, title=f"{ds.language} {ds.attribute}, ℓ = {ds.layer}: σ(φ_d) sorted (d = {ds.d})"))
wt.marginals_table(probe, top=max(P.probe.k, 5)).round(3)

# %% [markdown]
# **Greedy selection on dev.** From the empty set, each step adds the dimension whose
# addition (every other dimension zeroed, the *same* probe, no retraining) most raises the mean
# dev log-likelihood. The first k = `probe.k` picks are the selected neurons (the path is
# nested, so running it a few steps further changes nothing before step k). Along the path:
# normalised MI (H(Y) − H(Y|X)) / H(Y) in bits/bits against the training label prior, on dev
# (optimistic: the picks were made there) and on test (the honest number; it can be below 0
# when test's label mix differs from train's), and each pick's dev gain with its standard
# error: a gain below about 2 SE is noise.

# %%
k = P.probe.k
res = wt.greedy_path(probe, ds, k, extra=max(5, k))
selected = res.neurons[:k]
rank = {int(n): r for r, n in enumerate(wt.marginals_table(probe, top=ds.d).neuron)}
print(f"N_dev × d = {ds.X_dev.shape[0]} × {ds.d}, C = {ds.n_classes}, k = {k} (k/d = {k / ds.d:.3f}): selected neurons "
      f"{selected}, their ranks by σ(φ) {[rank[n] for n in selected]}; test MI at k = {res.test_mi[k - 1]:.3f}, "
      f"the same probe with all d on {res.test_mi_all:.3f} (off its training distribution)")
wt.show(wt.fig_greedy_path(res, k, ds.d, title=f"{ds.language} {ds.attribute}, ℓ = {ds.layer}, {ds.checkpoint}: "
                                               f"greedy path (first {k} selected)"))
wt.show(wt.fig_marginals(probe, selected, title="The selected neurons among the sorted marginals"))
wt.path_table(res, k).round(4)

# %% [markdown]
# ## The sweep
#
# The stage runner does the above for every (checkpoint, layer, attribute, language, lemma
# split, probe seed), reusing any part whose inputs and params are unchanged, and writes
# `probing/selections.parquet` (one row per probe) and `probing/paths.parquet` (one row per
# greedy step). The inline probe's dataset is one of its rows.

# %%
summary = runs.run_probing(P)
sel = summary.tables["selections"]
print(f"probes trained: {len(sel)}; k = {P.probe.k}, d = {sel.d.iloc[0] if len(sel) else '?'}")
row = wt.sweep_row(sel, ds, config.seed)
print(f"this dataset in the sweep: neurons {[int(n) for n in row.neurons]}, test MI {row.test_mi:.3f}; inline: {selected}, "
      f"{res.test_mi[k - 1]:.3f}")

# %% [markdown]
# Normalised MI (bits/bits) on test with the k selected neurons, mean over languages. The
# latent probe is trained under random masks, so its own score with all d neurons on
# (`test_mi_all`) is off its training distribution; with `probe.retrain` the reference is a
# plain L2 probe retrained on the k neurons (`test_mi_subset_retrained`) and on all d
# (`test_mi_all_retrained`). Dev MI at k is optimistic: the neurons were chosen on dev.

# %%
cols = ["test_mi", "test_mi_all", "test_acc", "test_acc_all"]
cols += [c for c in ("test_mi_subset_retrained", "test_mi_all_retrained") if c in sel]
sel.groupby(["checkpoint", "layer", "attribute"])[cols].mean().round(3)

# %% [markdown]
# ## Signal or noise along the greedy path
#
# Each probe is trained once per seed in `probe.seeds` (the seeds of a dataset run as one
# batched computation, equal to separate runs up to float rounding). Every pick of the greedy path records
# its gain in dev log-likelihood and the standard error of that gain over dev examples. A pick
# whose gain is below about 2 SE is not distinguishable from no gain on this dev set: the
# last picks of a path are often such noise dimensions, so overlaps that differ only in them
# say nothing. Below: gain / SE per step on the last checkpoint's last main layer, and the
# share of picks at noise level per attribute.

# %%
from xalign import plots  # noqa: E402

paths = pd.read_parquet(P.run_dir() / "probing" / "paths.parquet")
if len(paths):
    last_ck = sel.sort_values("step").checkpoint.iloc[-1]
    layer = max(l for l in P.extraction.layers if l in set(paths[paths.checkpoint == last_ck].layer))
    wt.show(plots.fig_greedy_gains(paths, last_ck, layer))
    paths["at_noise"] = paths.dev_gain < 2 * paths.dev_gain_se
    display(paths.groupby(["attribute", "step_k"]).at_noise.mean().unstack("step_k").round(2))
