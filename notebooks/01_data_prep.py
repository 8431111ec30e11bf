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

# %% [markdown]
# ## One sentence, inline
#
# One English sentence of this run, read as stage 1 reads it (`xalign.data.load_words`, the
# same sentence sample and multiword-token handling): each word's FORM, LEMMA, UPOS and UD
# FEATS, the UniMorph features the converter gives it, and the value it has for each
# attribute in `data.attributes` (blank where it has none: a word only enters the datasets of
# the attributes it carries).

# %%
from IPython.display import display  # noqa: E402

from xalign.walkthrough import data as wd  # noqa: E402

language = "en" if "en" in P.data.languages else P.data.languages[0]
words = wd.language_words(P, language)
sent = wd.pick_sentence(words)
print(f"{language}: {len(words)} words in {words.sent_idx.nunique()} sentences; sentence {sent}:")
wd.sentence_table(words, sent, list(P.data.attributes))

# %% [markdown]
# ## The lemma split, inline
#
# The words are split 80/10/10 **by lemma**, with the run's first lemma-split seed: every form
# of a lemma lands in the same split, so a probe is tested on lemmas it never saw and cannot
# score by memorising them. The fractions hold for lemmas, not for word tokens: a frequent
# lemma (*be*, *the*) puts all its tokens in one split.

# %%
split_seed = P.data.split_seed_list(P.seed)[0]
split = wd.lemma_split(words, P.data.split_fractions, split_seed)
print(f"lemma-split seed {split_seed}; lemmas with words in more than one split: {split.lemmas_in_two_splits()}")
display(split.summary())
wd.lemma_examples(words, split)

# %% [markdown]
# ## The sweep
#
# Stage 1 does this for every language, then builds one dataset per (language, attribute):
# the values kept are those with at least `data.min_count` words in every split.

# %%
summary = runs.run_data_prep(P)
table = summary.tables["summary"]

# %% [markdown]
# The inline split is the stage's: the split of every labelled word of this language in
# `data/labels.parquet` against the inline one (the count of disagreements must be 0).

# %%
from xalign.store import read_table  # noqa: E402

labels = read_table(P.run_dir() / "data" / "labels.parquet")
mine = labels[(labels.language == language) & (labels.split_seed == split_seed)]
both = mine.merge(words.assign(inline=split.split)[["sent_idx", "word_idx", "inline"]], on=["sent_idx", "word_idx"])
print(f"{len(both)} labelled (word, attribute) rows of {language}; split disagreements: {int((both.split != both.inline).sum())}")

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
