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

# %% [markdown]
# ## One sentence, inline
#
# The last checkpoint of the series, loaded as stage 2 loads it, and one English sentence of
# stage 1's words table. First how its words meet the tokenizer, in both
# `extraction.tokenization` modes (`Ġ` marks a leading space in byte-level BPE; in `sentence`
# mode a word's pieces are those whose characters fall inside it):

# %%
from IPython.display import display  # noqa: E402

from xalign.walkthrough import data as wd  # noqa: E402

language = "en" if "en" in P.data.languages else P.data.languages[0]
ckpt, model, tokenizer = wd.load_last_checkpoint(P)
words = wd.language_words(P, language)
sent = wd.pick_sentence(words)
forms = words[words.sent_idx == sent].sort_values("word_idx").form.tolist()
print(f"checkpoint {ckpt.name} (step {ckpt.step}); {language} sentence {sent}: {' '.join(forms)}")
for mode in ("per_word", "sentence"):
    print(f"tokenization: {mode}" + ("  (this run's)" if mode == P.extraction.tokenization else ""))
    display(wd.subword_table(tokenizer, forms, mode))

# %% [markdown]
# Then one forward pass with `output_hidden_states`: the word vector at layer ℓ is the mean of
# the word's subwords' `hidden_states[ℓ-1]`, for every layer from ℓ = 1 (the embedding
# output) to n_layer + 1 (after the final layer norm). Per layer: the shape (words × hidden
# size d), the mean vector norm, and the mean cosine between different words (how much the
# vectors share one direction).

# %%
n_layers = model.config.num_hidden_layers + 1
vectors = wd.word_vectors(P, model, tokenizer, forms, list(range(1, n_layers + 1)))
display(wd.layer_table(vectors))
wd.show(wd.fig_word_vector(vectors, 1, forms[1]))

# %% [markdown]
# ## The sweep
#
# Stage 2 does this for every sentence of every language at `extraction.layers` of every
# checkpoint (plus the layer sweep at the last), in batches, and stores the vectors.

# %%
summary = runs.run_extraction(P)

# %% [markdown]
# The inline vectors are the stage's: the largest difference between them and the stored rows
# of this sentence (batched with padding, so equal up to float rounding).

# %%
from xalign.store import load_tensors  # noqa: E402

stored, meta = load_tensors(P.run_dir() / "vectors" / ckpt.name / f"{language}.safetensors")
rows = stored["sent_idx"] == sent
for key in sorted(k for k in stored if k.startswith("layer_")):
    l = int(key.split("_")[1])
    diff = (vectors[l][stored["word_idx"][rows].long()] - stored[key][rows].float()).abs().max().item()
    print(f"ℓ = {l}: {int(rows.sum())} stored words of sentence {sent}, max |inline - stored| = {diff:.2e}")

# %% [markdown]
# The checkpoint series with provenance (weights hash), and words extracted per language:

# %%
pd.read_json(P.run_dir() / "checkpoints.json")

# %%
ext = summary.tables["extracted"]
ext.pivot_table(index="language", columns="checkpoint", values="words") if len(ext) else ext
