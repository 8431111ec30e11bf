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
# # 02 · Extraction: word vectors from every checkpoint
#
# A word's vector at layer ℓ is the **mean of its subwords' hidden states**, with layers
# numbered as in the paper: ℓ = 1 is the embedding output, i.e. `hidden_states[ℓ-1]`.
# `extraction.tokenization` chooses how words meet the tokenizer: `per_word` tokenises each
# UD word form on its own (the paper's code), `sentence` tokenises the running text and maps
# subwords back to words by character offsets.
#
# Every checkpoint gets `extraction.layers`; the last one also gets the layer sweep for
# Figure 2. Checkpoints with identical weights are excluded (the paper found such duplicates
# among BLOOM's released checkpoints). Vectors are stored as safetensors with metadata,
# one file per (checkpoint, language), written sentence by sentence as batches finish, so
# memory does not grow with the treebank. The model runs on `extraction.device` (`auto`:
# the GPU when torch sees one, e.g. on Colab).

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
summary = runs.run_extraction(P)

# %% [markdown]
# The checkpoint series with provenance (weights hash), and words extracted per language:

# %%
pd.read_json(P.run_dir() / "checkpoints.json")

# %%
ext = summary.tables["extracted"]
ext.pivot_table(index="language", columns="checkpoint", values="words") if len(ext) else ext
