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

# %% [markdown]
# ## The corpus and the tokenizer, inline
#
# What stage 0 trains on, built here exactly as the stage builds it
# (`xalign.stages.pretrain.corpus`): the text lines of the data bundle's sources for
# `data.languages`, shuffled with the run seed, and a byte-level BPE tokenizer of
# `pretrain.vocab_size` pieces trained on them. The lines are tokenised and packed into blocks
# of `pretrain.seq_len` tokens; a few blocks are held out to measure the loss on text the model
# does not train on. A small vocabulary cuts words into many short pieces (few characters per
# token), which is one reason the lab model is a caricature of BLOOM: its 250k-piece vocabulary
# keeps most words whole.

# %%
from IPython.display import display  # noqa: E402

from xalign.walkthrough import data as wd  # noqa: E402

if P.checkpoints.source == "lab":
    corpus = wd.corpus_overview(P)
    print(corpus.describe())
    display(wd.tokenized_examples(P, corpus.tokenizer))
else:
    print(f"checkpoints.source={P.checkpoints.source}: this run analyses an existing series; stage 0 trains nothing")

# %% [markdown]
# ## The sweep
#
# Stage 0 trains the model for `pretrain.steps` optimiser steps and saves a checkpoint at each
# step of `pretrain.save_steps`, together with its `training_state.json` (loss, held-out loss,
# tokens seen, seed, threads). A finished checkpoint is reused on a rerun; a killed run resumes
# from the last one.

# %%
summary = runs.run_pretrain(P)

# %% [markdown]
# Loss at each saved checkpoint: the training loss (mean since the previous checkpoint) and
# the loss on the held-out blocks, in nats per token. Uniform guessing over the vocabulary
# costs ln(vocabulary) nats; the curve should start near it and fall. The later stages ask
# whether cross-lingual alignment emerges *along* this curve.

# %%
ckpts = summary.tables.get("checkpoints", pd.DataFrame())
display(ckpts)
if len(ckpts):
    import math  # noqa: E402

    print(f"ln(vocabulary) = {math.log(len(corpus.tokenizer)):.2f} nats/token")
    wd.show(wd.fig_loss_curve(ckpts))
