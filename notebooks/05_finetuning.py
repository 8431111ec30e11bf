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
# # 05 · Fine-tuning and zero-shot cross-lingual transfer
#
# Each checkpoint is fine-tuned **on English only** with LoRA (r = 8, α = 32, dropout 0.05,
# on `query_key_value` for BLOOM) or QLoRA (`transfer.qlora: true`: 4-bit NF4 weights with
# double quantisation, `transfer.compute_dtype` bf16 on a GPU) and evaluated zero-shot on the
# other languages:
#
# * **POS** (token classification, label on each word's first subword): trained on the English
#   treebank's train split, or on XTREME's English train (`transfer.pos_train: xtreme`, the
#   paper); scored per target treebank with **seqeval F1** (metric `f1`, as XTREME reports
#   it), word accuracy (`accuracy`) and macro F1 over UPOS tags (`macro_f1`);
# * **XNLI** (sequence classification): trained on MultiNLI (`transfer.xnli_train: mnli`, the
#   paper: 392k pairs read from disk batch by batch) or, when the data root has no MultiNLI, on
#   English XNLI dev minus a held-out `xnli_dev_fraction`; test accuracy per language.
#
# English dev is scored every `transfer.eval_every` optimiser steps (the paper: 100 for POS,
# 500 for XNLI; null: once per epoch) and the best state is restored before the targets are
# evaluated. While a unit trains, `transfer/parts/<checkpoint>/<task>.resume.pt` holds the state
# of its last evaluation: rerunning this notebook after a kill continues from there.

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/xalign/xalign/blob/main/notebooks/05_finetuning.ipynb)
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
from xalign.stats import DEFAULT_METRICS

P = notebook.setup(params, overrides, missing_upstream, stage="transfer", namespace=globals())

# %% [markdown]
# ## One fine-tuning run, inline
#
# Before the sweep, the method on **one** unit of this stage: one checkpoint, one task, one
# fine-tuning seed (by default the last checkpoint, POS if the run fine-tunes on it, and the
# first seed of `transfer.seeds`; pass `checkpoint=`, `task=`, `seed=` to `wt.finetune_one` for
# another). It is trained exactly as the stage trains it: the checkpoint's weights from
# `checkpoints.json` (stage 2), the English training and dev sets and the target evaluation
# sets capped as `transfer.max_train_examples` / `max_eval_examples` say, the stage's
# `TransferConfig` and `params.threads` torch threads. Nothing is written to the run. It costs
# the time of one unit of the sweep (seconds on the built-in slice; on a Hub model with the
# paper's settings, as long as that unit takes on this machine).

# %%
from IPython.display import display  # noqa: E402

from xalign.walkthrough import transfer as wt  # noqa: E402

one = wt.finetune_one(P)
print(one.describe())
one.sizes

# %% [markdown]
# **Model selection on English dev.** A randomly initialised classification head (17 UPOS tags
# for POS, 3 labels for XNLI) and LoRA adapters are trained with AdamW on English only (the
# learning rate decays linearly to 0); the base weights stay frozen. Every
# `transfer.eval_every` optimiser steps (or once per epoch) the model is scored on English dev
# (POS: seqeval F1; XNLI: accuracy), and the adapters and head of the **first best**
# evaluation are kept: the targets are scored with those parameters, never with the last
# ones. No target-language data is seen before the zero-shot evaluation, so selection cannot
# leak the targets into the score.
#
# How many evaluations there are is the params' choice: with `transfer.eval_every: null` and
# one epoch (the built-in slice) English dev is scored once, and the curve is a single point;
# the paper scores it every 100 (POS) or 500 (XNLI) steps.

# %%
wt.show(wt.fig_dev_curve(one.history, title=f"{one.task} at {one.checkpoint}: English dev score per evaluation "
                                            f"(fine-tuning seed {one.seed})"))
one.history

# %% [markdown]
# **Zero-shot scores.** The kept model is evaluated on each language's test set: `en-dev`
# is the selection score itself, `en` the English test split (the source language, not a
# target), the others are zero-shot transfer. Each score carries a 95% percentile-bootstrap
# interval over sentences (POS) or premise-hypothesis pairs (XNLI): with a few dozen examples
# per language, as in the built-in slice, two languages whose intervals overlap are not
# distinguishable.

# %%
wt.show(wt.fig_scores(one.results, title=f"{one.task} at {one.checkpoint}: zero-shot scores (seed {one.seed})"))
wt.scores_table(one.results).round(3)

# %% [markdown]
# ## The sweep
#
# The stage runner does the above for every (checkpoint, task, fine-tuning seed), reusing any
# unit whose checkpoint weights, data files and params are unchanged, and writes
# `transfer/results_by_seed.parquet` (one row per unit, language and metric),
# `transfer/results.{parquet,csv}` (their mean over seeds, with the spread over seeds) and
# `transfer/dev_history.parquet` (every unit's English-dev curve). The inline unit is one of
# its units: same seed, data and threads, so its numbers are the sweep's exactly (`abs_diff`
# 0; on a GPU, nondeterministic kernels may leave a difference in the last digits).

# %%
summary = runs.run_transfer(P)
res = summary.tables.get("transfer", pd.DataFrame())
if len(res):
    by_seed = pd.read_parquet(P.run_dir() / "transfer" / "results_by_seed.parquet")
    cmp = wt.compare_with_sweep(one, by_seed)
    print(f"inline vs sweep, {one.checkpoint}/{one.task}/seed-{one.seed}: max |difference| over "
          f"{len(cmp)} (language, metric) rows = {cmp.abs_diff.max():.3g}")
    display(cmp[cmp.metric == DEFAULT_METRICS[one.task]].round(4))
else:
    print("no transfer run:", "; ".join(summary.skipped))

# %% [markdown]
# Every unit's English-dev curve: where the kept step falls shows whether training was long
# enough (a maximum at the last evaluation means more steps could still help) and whether
# selection matters (a flat curve: any step would do).

# %%
if len(res):
    hist = summary.tables["dev_history"]
    wt.show(wt.fig_dev_curve(hist[(hist.task == one.task) & (hist.seed == one.seed)],
                             title=f"{one.task}: English dev score per evaluation, every checkpoint (seed {one.seed})"))

# %% [markdown]
# Zero-shot scores per target language and checkpoint (POS seqeval F1, XNLI accuracy; `en-dev`
# is the English dev score of the selected evaluation step), mean over fine-tuning seeds:

# %%
if len(res):
    main = res[[m == DEFAULT_METRICS[t] for t, m in zip(res.task, res.metric)]]  # one metric per task
    display(main.pivot_table(index=["task", "language"], columns="step", values="value").round(3))
