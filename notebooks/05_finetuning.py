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
# # 05 · Fine-tuning and zero-shot cross-lingual transfer
#
# Each checkpoint is fine-tuned **on English only** with LoRA (r = 8, α = 32, dropout 0.05,
# on `query_key_value` for BLOOM) or QLoRA (`transfer.qlora: true`: 4-bit NF4 weights with
# double quantisation, `transfer.compute_dtype` bf16 on a GPU) and evaluated zero-shot on the
# other languages:
#
# * **POS** (token classification, label on each word's first subword): trained on the English
#   treebank's train split, or on XTREME's English train (`transfer.pos_train: xtreme`, the
#   paper); scored per target treebank with **seqeval F1** (metric `f1`, as XTREME reports
#   it), word accuracy (`accuracy`) and macro F1 over UPOS tags (`macro_f1`);
# * **XNLI** (sequence classification): trained on MultiNLI (`transfer.xnli_train: mnli`, the
#   paper: 392k pairs read from disk batch by batch) or, when the data root has no MultiNLI, on
#   English XNLI dev minus a held-out `xnli_dev_fraction`; test accuracy per language.
#
# English dev is scored every `transfer.eval_every` optimiser steps (the paper: 100 for POS,
# 500 for XNLI; null: once per epoch) and the best state is restored before the targets are
# evaluated. While a unit trains, `transfer/parts/<checkpoint>/<task>.resume.pt` holds the state
# of its last evaluation: rerunning this notebook after a kill continues from there.

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/xalign/xalign/blob/main/notebooks/05_finetuning.ipynb)
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
from xalign.stats import DEFAULT_METRICS

P = notebook.setup(params, overrides, missing_upstream, stage="transfer", namespace=globals())

# %%
summary = runs.run_transfer(P)
res = summary.tables.get("transfer", pd.DataFrame())

# %% [markdown]
# Zero-shot scores per target language and checkpoint (POS seqeval F1, XNLI accuracy; `en-dev`
# is the English dev score of the selected evaluation step):

# %%
if len(res):
    main = res[[m == DEFAULT_METRICS[t] for t, m in zip(res.task, res.metric)]]  # one metric per task
    display(main.pivot_table(index=["task", "language"], columns="step", values="value").round(3))
else:
    print("no transfer run:", "; ".join(summary.skipped))
