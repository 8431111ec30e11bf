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

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/xalign/xalign/blob/main/notebooks/01_data_prep.ipynb)
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
from xalign import notebook, runs

P = notebook.setup(params, overrides, missing_upstream, stage="data_prep", namespace=globals())

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
