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

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/xalign/xalign/blob/main/notebooks/02_extraction.ipynb)
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

P = notebook.setup(params, overrides, missing_upstream, stage="extraction", namespace=globals())

# %%
summary = runs.run_extraction(P)

# %% [markdown]
# The checkpoint series with provenance (weights hash), and words extracted per language:

# %%
pd.read_json(P.run_dir() / "checkpoints.json")

# %%
ext = summary.tables["extracted"]
ext.pivot_table(index="language", columns="checkpoint", values="words") if len(ext) else ext
