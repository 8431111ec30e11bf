"""Stage 5 (notebook ``05_finetuning``): (Q)LoRA fine-tuning on English, zero-shot evaluation
on every target language (Wang et al. 2024, Sec. 4.2; :mod:`xalign.transfer`).

Wave 1: one unit per (checkpoint, task, fine-tuning seed of ``transfer.seeds``),
``transfer/parts/<checkpoint>/<task>.seed-<seed>.parquet`` and its English-dev curve
``<task>.seed-<seed>.history.parquet`` (:data:`HISTORY_COLUMNS`) and the kept model, the folder
``<task>.seed-<seed>.adapter/`` (LoRA adapter + classification head, :func:`xalign.transfer.save_finetuned`;
reload it with :func:`xalign.transfer.load_finetuned`, e.g. for the ablation of issue 15), grouped per checkpoint and marked as needing a GPU; reused while the checkpoint's weights,
the training / evaluation files (their SHA-256) and the transfer params are unchanged.
While a unit trains, ``<task>.resume.pt`` beside it holds the state of its last English-dev
evaluation; a rerun after a kill continues from there. Wave 2: ``transfer/results_by_seed.parquet``,
the parts concatenated, ``transfer/results.{parquet,csv}``, their mean over seeds, and
``transfer/dev_history.parquet``, the units' dev curves concatenated. With ``transfer.tasks: []`` there are no units, and the scheduler
removes the earlier results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from ..params import result_config
from ..pipeline import Context, Resources, StageSummary, Unit, code_version
from ..store import content_sha256, read_table, write_table
from ._common import checkpoint_rows

name, notebook, upstream = "transfer", "05_finetuning", ("extraction",)
CODE = ("xalign.transfer", "xalign.data", "xalign.checkpoints", "xalign.stages.transfer")
TASKS = ("pos", "xnli")
#: Columns of ``transfer/dev_history.parquet``: one row per English-dev evaluation of a unit
#: (checkpoint, its pre-training ``step``, task, fine-tuning seed); ``eval_step`` is the
#: fine-tuning optimiser step (1-based, over all epochs) and ``epoch`` its 1-based epoch;
#: ``dev_score`` the selection score (POS seqeval F1, XNLI accuracy, in [0, 1]); ``kept``
#: marks the evaluation whose parameters were kept (the first maximum, the row's ``best_step``).
HISTORY_COLUMNS = ["checkpoint", "step", "task", "seed", "eval_step", "epoch", "dev_score", "kept"]

#: English training files written by the fetcher (``python -m xalign.data fetch --only <step>``).
TRAIN_FILES = {"xtreme": ("udpos/en-ud-train.conllu", "udpos", "XTREME's English UD-POS train"),
               "mnli": ("xnli/train-en.tsv", "mnli", "MultiNLI 1.0 train")}


def train_file(root: Path, source: str, key: str) -> Path:
    """The fetched English training file for ``transfer.<key>: <source>``.

    Raises:
        FileNotFoundError: it is absent (one line naming the file, the params key and the
            fetch command).
    """
    from ..data import FETCH_COMMAND

    rel, step, what = TRAIN_FILES[source]
    f = root / rel
    if not f.is_file():
        raise FileNotFoundError(f"{f}: {what} not found (params transfer.{key}: {source}); "
                                f"fetch it with `{FETCH_COMMAND} --only {step} --root {root}`")
    return f


def _pos_languages(P: Any) -> list[str]:
    return P.transfer.pos_languages or ["en", *(l for l in P.data.languages if l != "en")]


def data_files(P: Any, task: str) -> list[Path]:
    """Every file a task's training and evaluation sets are read from (their hashes are
    the unit's data inputs). Raises FileNotFoundError as :func:`train_file`."""
    from .. import data

    tp, root = P.transfer, P.resolved_data_root()
    if task == "pos":
        files = [train_file(root, "xtreme", "pos_train")] if tp.pos_train == "xtreme" else []
        src = tp.pos_source_treebank or P.data.treebanks.get("en")
        files += data.find_treebank_files(root, "en", src).values()
        for l in _pos_languages(P):
            if l != "en":
                files += data.find_treebank_files(root, l, P.data.treebanks.get(l)).values()
        return files
    files = [train_file(root, "mnli", "xnli_train")] if tp.xnli_train == "mnli" else []
    return [*files, root / "xnli" / "dev-en.tsv", *(root / "xnli" / f"test-{l}.tsv" for l in tp.xnli_languages)]


def check(P: Any) -> None:
    """Every task's data files exist (FileNotFoundError, one line, as :func:`train_file`)."""
    for task in (t for t in TASKS if t in P.transfer.tasks):
        for f in data_files(P, task):
            if not f.is_file():
                raise FileNotFoundError(f"{f}: not found (read by transfer.tasks: {task})")


def plan(ctx: Context) -> Iterator[list[Unit]]:
    """One unit per (checkpoint, task), then the results table; nothing without tasks.

    Raises:
        FileNotFoundError: a training file the params name is absent, before any training.
    """
    P, run, tp = ctx.P, ctx.run_dir, ctx.P.transfer
    if not tp.tasks:
        ctx.skip("transfer.tasks is empty")
        return
    root = P.resolved_data_root()
    tasks = [t for t in TASKS if t in tp.tasks]
    data_sha = {t: content_sha256({str(f.relative_to(root)) if f.is_relative_to(root) else str(f): ctx.input_sha(f)
                                   for f in data_files(P, t)}) for t in tasks}
    code, parts = code_version(*CODE), []
    seeds = tp.seed_list(P.seed)
    for c in checkpoint_rows(run):
        group = []
        for task in tasks:
            for seed in seeds:
                config = {**result_config(tp, {"tasks", "seeds"}), "task": task, "seed": seed,
                          "data_seed": P.seed, "checkpoint": c["name"], "revision": c["revision"]}
                dest = run / "transfer" / "parts" / c["name"] / f"{task}.seed-{seed}.parquet"
                u = Unit(name, f"{c['name']}/{task}/seed-{seed}", config,
                         {"weights": c["weights_sha256"], "data": data_sha[task]},
                         (dest, history_path(dest), adapter_path(dest)), finetune,
                         {"P": P, "c": c, "task": task, "seed": seed, "dest": dest}, code,
                         Resources(gpu=True, group=c["name"]))
                u.args["resume_key"] = u.identity
                group.append(u)
        group[-1].args["release"] = True  # the checkpoint's last unit may free its weights
        parts += group
    yield parts
    outs = (run / "transfer" / "results.parquet", run / "transfer" / "results.csv",
            run / "transfer" / "results_by_seed.parquet", run / "transfer" / "dev_history.parquet")
    inputs = {**{u.key: ctx.sha(u.outputs[0]) for u in parts},
              **{f"{u.key}/history": ctx.sha(u.outputs[1]) for u in parts}}
    yield [Unit(name, "results", {"parts": [u.key for u in parts]}, inputs,
                outs, concat_parts, {"parts": [u.outputs[0] for u in parts], "dest": outs[0]}, code)]


def history_path(dest: Path) -> Path:
    """The dev-curve table beside a unit's result part: ``<task>.seed-<seed>.history.parquet``."""
    return dest.with_name(f"{dest.stem}.history.parquet")


def adapter_path(dest: Path) -> Path:
    """The kept model's folder beside a unit's result part: ``<task>.seed-<seed>.adapter/``
    (peft's ``adapter_config.json``, ``adapter_model.safetensors`` with the head, and
    :data:`xalign.transfer.ADAPTER_INFO`)."""
    return dest.with_name(f"{dest.stem}.adapter")


def pos_sets(P: Any) -> tuple:
    """(train, dev, eval sets) for POS: ``[(forms, upos)]`` per sentence; English dev for
    model selection; ``en`` evaluated on the source treebank's test split, never dev."""
    from .. import data

    tp, root = P.transfer, P.resolved_data_root()
    cap_tr, cap_ev = tp.max_train_examples, tp.eval_cap("pos")
    src = tp.pos_source_treebank or P.data.treebanks.get("en")  # None: the en default (GUM)
    if tp.pos_train == "xtreme":
        sents = data.read_treebank({"train": train_file(root, "xtreme", "pos_train")}, cap_tr, P.seed)
        train = [([w.form for w in s.words], [w.upos for w in s.words]) for s in sents]
    else:
        train = data.read_pos_sentences(root, "en", split="train", treebank=src, max_sentences=cap_tr, seed=P.seed)
    dev = data.read_pos_sentences(root, "en", split="dev", treebank=src, max_sentences=cap_ev, seed=P.seed)
    evals = {l: data.read_pos_sentences(root, l, split="test", treebank=src if l == "en" else P.data.treebanks.get(l),
                                        max_sentences=cap_ev, seed=P.seed) for l in _pos_languages(P)}
    return train, dev, evals


def xnli_sets(P: Any) -> tuple:
    """(train, dev, eval sets) for XNLI: MultiNLI streamed from its file (``xnli_train: mnli``)
    or English XNLI dev minus a premise-disjoint held-out part."""
    import random

    from .. import data
    from ..transfer import XnliTsvStream, split_xnli_dev

    tp, root = P.transfer, P.resolved_data_root()
    cap_tr, cap_ev = tp.max_train_examples, tp.eval_cap("xnli")
    evals = {l: data.read_xnli(root, "test", l, max_rows=cap_ev).reset_index(drop=True) for l in tp.xnli_languages}
    if tp.xnli_train == "mnli":
        stream = XnliTsvStream(train_file(root, "mnli", "xnli_train"))
        if cap_tr is not None and cap_tr < len(stream):
            stream.keep = sorted(random.Random(P.seed).sample(range(len(stream)), cap_tr))
        return stream, data.read_xnli(root, "dev", "en", max_rows=cap_ev), evals
    xtrain, xdev = split_xnli_dev(data.read_xnli(root, "dev", "en"), tp.xnli_dev_fraction, P.seed)
    if cap_tr:
        xtrain = xtrain.sample(frac=1.0, random_state=P.seed).iloc[:cap_tr]
    return xtrain.reset_index(drop=True), xdev.reset_index(drop=True), evals


_SETS: dict[str, Any] = {}  # one task's data sets per process: a group's units share them


def _sets(P: Any, task: str) -> tuple:
    """(train, dev, eval sets) of ``task``, read once per process and params."""
    key = json.dumps([task, str(P.resolved_data_root()), result_config(P.transfer), P.data.treebanks,
                      P.data.languages, P.seed], sort_keys=True, default=str)
    if key not in _SETS:
        _SETS.clear()
        _SETS[key] = (pos_sets if task == "pos" else xnli_sets)(P)
    return _SETS[key]


def finetune(P: Any, c: dict, task: str, seed: int, dest: Path, resume_key: str, release: bool = False) -> dict:
    """Fine-tune checkpoint row ``c`` on English ``task`` with fine-tuning ``seed``, evaluate
    zero-shot, write ``dest`` (rows carry ``seed``), its dev curve and the kept adapter
    (:func:`adapter_path`, written first, atomically)."""
    from .. import checkpoints as ck
    from ..transfer import ResumeFile, TransferConfig, finetune_pos, finetune_xnli
    from .extraction import release_weights

    cfg = TransferConfig.from_params(P.transfer, seed=seed, task=task)
    model_dir, tok_dir = ck.local_files(ck.checkpoint_from_row(c))  # hub: download on demand
    resume = ResumeFile(dest.with_name(f"{dest.stem}.resume.pt"), resume_key)
    fn = finetune_pos if task == "pos" else finetune_xnli
    history: list[dict] = []
    df = fn(model_dir, *_sets(P, task), cfg, revision=None, tokenizer_path=tok_dir, resume=resume,
            history=history, adapter_dir=adapter_path(dest)).assign(task=task)
    df.insert(0, "step", c["step"])
    df.insert(0, "checkpoint", c["name"])
    df["seed"] = seed
    write_table(history_table(history, c, task, seed, int(df["best_step"].iloc[0])), history_path(dest))
    write_table(df, dest)
    if release:
        release_weights(P, c)
    return {"rows": len(df)}


def history_table(history: list[dict], c: dict, task: str, seed: int, best_step: int) -> pd.DataFrame:
    """One unit's English-dev curve as :data:`HISTORY_COLUMNS` rows, from the ``history``
    :func:`xalign.transfer.finetune_pos` / ``finetune_xnli`` fill (``step`` → ``eval_step``)."""
    h = pd.DataFrame(history, columns=["step", "epoch", "dev_score"]).rename(columns={"step": "eval_step"})
    h.insert(0, "seed", seed)
    h.insert(0, "task", task)
    h.insert(0, "step", c["step"])
    h.insert(0, "checkpoint", c["name"])
    h["kept"] = h["eval_step"] == best_step
    return h.astype({"eval_step": "int64", "epoch": "int64", "dev_score": "float64", "kept": "bool"})[HISTORY_COLUMNS]


def concat_parts(parts: list[Path], dest: Path) -> None:
    """``transfer/results_by_seed.parquet``: every part, in unit order; ``results.{parquet,csv}``:
    the mean over fine-tuning seeds (:func:`xalign.transfer.mean_over_seeds`);
    ``dev_history.parquet``: every part's dev curve (:func:`history_path`), in unit order."""
    from ..transfer import mean_over_seeds

    dfs = [read_table(p) for p in parts]
    by_seed = pd.concat(dfs, ignore_index=True) if dfs else pd.DataFrame()
    write_table(by_seed, dest.with_name("results_by_seed.parquet"))
    write_table(mean_over_seeds(by_seed) if len(by_seed) else by_seed, dest, csv=True)
    hs = [read_table(history_path(p)) for p in parts]
    write_table(pd.concat(hs, ignore_index=True) if hs else pd.DataFrame(columns=HISTORY_COLUMNS),
                dest.with_name("dev_history.parquet"))


def gather(ctx: Context, s: StageSummary, units: list[Unit]) -> None:
    """Table ``transfer``: zero-shot scores per (checkpoint, task, language); table
    ``dev_history``: every unit's English-dev curve (:data:`HISTORY_COLUMNS`)."""
    f = ctx.run_dir / "transfer" / "results.parquet"
    s.tables["transfer"] = read_table(f) if units else pd.DataFrame()
    h = f.with_name("dev_history.parquet")
    s.tables["dev_history"] = read_table(h) if units and h.is_file() else pd.DataFrame(columns=HISTORY_COLUMNS)
