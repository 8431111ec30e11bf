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
# # 00 · Tiny-model lab: a checkpoint series we can train here
#
# The paper analyses the intermediate checkpoints of BLOOM (560m, 1b1, 1b7). The Hugging Face
# Hub is not always reachable, so the default run *makes* a real checkpoint series: a small
# BLOOM-architecture causal LM (`BloomConfig`, random init) trained from scratch on the data
# bundle's multilingual text (Tatoeba, PAN-X and the UD sentences themselves), with a
# byte-level BPE tokenizer trained on the same text. Checkpoints are saved at log-spaced steps
# as `save_pretrained` folders `runs/<run>/checkpoints/step-NNNNNN/`, which the later stages
# treat exactly like Hub revisions.
#
# Runs with `checkpoints.source` other than `lab` skip this notebook.

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
summary = runs.run_pretrain(P)

# %% [markdown]
# Loss at each saved checkpoint (cross-entropy in nats per token on the training stream):

# %%
summary.tables.get("checkpoints", pd.DataFrame())
