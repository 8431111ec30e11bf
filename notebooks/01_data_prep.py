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
# # 01 · Data prep: UD treebanks → UniMorph → one dataset per (language, attribute)
#
# Following Stańczak et al. (2022) and Wang et al. (2024, Sec. 3):
#
# 1. read each language's UD treebank (CoNLL-U). Multiword tokens (French *du* = *de* + *le*)
#    become their syntactic words (`data.multiword_tokens: syntactic`, the default), or one
#    word per surface token whose attributes are those exactly one of its syntactic words
#    carries (`surface`, what the paper's code did; the BLOOM reproduction params use it),
# 2. map UD FEATS to UniMorph features with the converter of McCarthy et al. (2018)
#    (`ud-compatibility`), and group features into attributes (Number, Gender, POS, ...);
#    a word on which an attribute takes two values (POS `V` and `V.PTCP` for English
#    participles) is left out of that attribute (`n_multi_value` counts them; the paper's
#    code kept one of the two, which one depending on Python's hash seed),
# 3. pool the treebank's sentences and split 80/10/10 **by lemma** (all forms of a lemma in
#    one split; seeded),
# 4. keep an attribute value only if it occurs at least `min_count` times in every split; an
#    attribute left with fewer than two values is skipped, and the reason is logged.

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
summary = runs.run_data_prep(P)
table = summary.tables["summary"]

# %% [markdown]
# Kept datasets: number of values and examples per split.

# %%
table[table.status == "kept"].pivot_table(index="language", columns="attribute", values="n_train", aggfunc="first")

# %% [markdown]
# Skipped (language, attribute) pairs and why:

# %%
table[table.status != "kept"][["language", "attribute", "reason"]]

# %% [markdown]
# Words left out of an attribute because it takes two or more values on them
# (`xalign.unimorph.multi_value_attributes`), per language and attribute:

# %%
table[table.n_multi_value > 0].pivot_table(index="language", columns="attribute", values="n_multi_value",
                                           aggfunc="first", fill_value=0)
