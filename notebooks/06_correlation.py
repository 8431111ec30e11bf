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
# # 06 · Correlation between overlap and transfer (Table 1)
#
# Pearson's r (scipy) between neuron overlap and zero-shot transfer, per task:
#
# * **average**: per checkpoint, the mean overlap over language pairs against the mean
#   transfer over target languages;
# * **pairwise**: per (target language, checkpoint), the English–target overlap against that
#   language's transfer.
#
# Two recipes are computed (`correlation.recipe` picks which one is `table1.*`):
#
# * `per_layer` (xalign): one r per layer and attribute, plus the attribute mean; every
#   checkpoint; y over the target languages only.
# * `paper` (the authors' computation, `xalign.stats.paper_table`): one r per task and kind.
#   The average rows leave out the final model, average x over Number, Gender and POS and then
#   over the layers, and include English's own test score in y; the pairwise rows use the POS
#   overlap (for both tasks), averaged over the layers, and include the final model.
#
# **Signal or noise.** Every r carries its Fisher-z 95% interval, an exact permutation p
# (all orderings for <= 9 points), the range of r leaving one checkpoint out, the partial r
# controlling for log training step (overlap and transfer both trend with training), and,
# for pairwise rows, a bootstrap interval that resamples target languages as clusters (a
# language's points over checkpoints are not independent). The last cell says in one
# sentence per row whether the correlation survives (`xalign.stats.survives`).

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/xalign/xalign/blob/main/notebooks/06_correlation.ipynb)
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

P = notebook.setup(params, overrides, missing_upstream, stage="correlation", namespace=globals())

# %%
summary = runs.run_correlation(P)
if "table1" in summary.tables:
    for name in sorted(summary.tables):  # table1 (correlation.recipe), then the other recipe
        print(f"{name}  ({P.run_dir() / 'correlation' / (name + '.md')})")
        print((P.run_dir() / "correlation" / f"{name}.md").read_text())
    display(summary.tables["table1"].round(3))
else:
    print("no correlation table:", "; ".join(summary.skipped))

# %%
from xalign.stats import survives  # noqa: E402

if "table1" in summary.tables:
    for _, row in summary.tables["table1"].iterrows():
        print("-", survives(row))
