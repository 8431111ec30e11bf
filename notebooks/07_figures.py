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
# # 07 · Figures
#
# Analogues of the paper's figures, written as PNG and PDF to `figures/<run>/`:
# Figure 1 (overlap vs step per attribute), Figure 2 (overlap vs layer on the last
# checkpoint), Figure 3 (overlap, XNLI and POS vs step), Figure 4 (pairwise overlap vs
# transfer), Figure 5 (per-language transfer vs step) and the Appendix B.1 heatmaps with
# significant cells marked. The chance level k/d is drawn next to every overlap. The run's
# report, `runs/<run>/report.html`, gathers them with Table 1 and the run's provenance.

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/xalign/xalign/blob/main/notebooks/07_figures.ipynb)
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

P = notebook.setup(params, overrides, missing_upstream, stage="figures", namespace=globals())

# %%
summary = runs.run_figures(P)
summary.tables["figures"]

# %%
from IPython.display import Image, display

for name in ["fig1_overlap_vs_step", "fig2_overlap_vs_layer", "fig3_overlap_transfer_vs_step"]:
    f = P.figure_dir() / f"{name}.png"
    if f.is_file():
        display(Image(filename=str(f)))

# %% [markdown]
# ## The report
#
# The same stage writes `runs/<run>/report.html` (a copy in `figures/<run>/`): one
# self-contained page with the headline numbers, Table 1 with its intervals, every figure,
# the skipped datasets, stage timings and provenance (`xalign.report`). Open it in any
# browser, offline.

# %%
from xalign import report

print(report.describe(P.run_dir() / report.REPORT_NAME))
