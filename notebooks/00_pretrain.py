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

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/xalign/xalign/blob/main/notebooks/00_pretrain.ipynb)
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

P = notebook.setup(params, overrides, missing_upstream, stage="pretrain", namespace=globals())

# %%
summary = runs.run_pretrain(P)

# %% [markdown]
# Loss at each saved checkpoint (cross-entropy in nats per token on the training stream):

# %%
summary.tables.get("checkpoints", pd.DataFrame())
