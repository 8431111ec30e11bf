# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
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
# double quantisation) and evaluated zero-shot on the other languages:
#
# * **POS** (token classification): trained on English UD, F1 per target treebank;
# * **XNLI** (sequence classification): the bundle has no English train split (MultiNLI), so
#   we train on the English dev set, hold out `xnli_dev_fraction` of it for model selection,
#   and report test accuracy per language.
#
# The epoch with the best English dev score is restored before evaluating the targets.

# %% tags=["parameters"]
# A params file (path, relative to the repository root) or the dict papermill injects
# with `-f params/<run>.yaml`. The default is the tiny-model lab over the data bundle.
params = "params/tiny-lab.yaml"

# %%
import logging

import pandas as pd

from xalign import runs
from xalign.params import load_params

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
pd.set_option("display.width", 160, "display.max_columns", 30)
P = load_params(params)
print(P.run_name, "->", P.run_dir())

# %%
summary = runs.run_transfer(P)
res = summary.tables.get("transfer", pd.DataFrame())

# %% [markdown]
# Zero-shot scores per target language and checkpoint (POS F1, XNLI accuracy; `en-dev` is the
# English dev score of the selected epoch):

# %%
if len(res):
    main = res[res.metric.isin(["f1", "accuracy"])]
    display(main.pivot_table(index=["task", "language"], columns="step", values="value").round(3))
else:
    print("no transfer run:", "; ".join(summary.skipped))
