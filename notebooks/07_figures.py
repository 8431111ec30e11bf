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
# # 07 · Figures
#
# Analogues of the paper's figures, written as PNG and PDF to `figures/<run>/`:
# Figure 1 (overlap vs step per attribute), Figure 2 (overlap vs layer on the last
# checkpoint), Figure 3 (overlap, XNLI and POS vs step), Figure 4 (pairwise overlap vs
# transfer), Figure 5 (per-language transfer vs step) and the Appendix B.1 heatmaps with
# significant cells marked. The chance level k/d is drawn next to every overlap.

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
summary = runs.run_figures(P)
summary.tables["figures"]

# %%
from IPython.display import Image, display

for name in ["fig1_overlap_vs_step", "fig2_overlap_vs_layer", "fig3_overlap_transfer_vs_step"]:
    f = P.figure_dir() / f"{name}.png"
    if f.is_file():
        display(Image(filename=str(f)))
