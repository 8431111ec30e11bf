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
summary = runs.run_correlation(P)
if "table1" in summary.tables:
    for name in sorted(summary.tables):  # table1 (correlation.recipe), then the other recipe
        print(f"{name}  ({P.run_dir() / 'correlation' / (name + '.md')})")
        print((P.run_dir() / "correlation" / f"{name}.md").read_text())
    display(summary.tables["table1"].round(3))
else:
    print("no correlation table:", "; ".join(summary.skipped))

# %%
from xalign.stats import survives  # noqa: E402

if "table1" in summary.tables:
    for _, row in summary.tables["table1"].iterrows():
        print("-", survives(row))
