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

# %%
summary = runs.run_probing(P)
sel = summary.tables["selections"]
print(f"probes trained: {len(sel)}; k = {P.probe.k}, d = {sel.d.iloc[0] if len(sel) else '?'}")

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
    display(plots.fig_greedy_gains(paths, last_ck, layer))
    paths["at_noise"] = paths.dev_gain < 2 * paths.dev_gain_se
    display(paths.groupby(["attribute", "step_k"]).at_noise.mean().unstack("step_k").round(2))
