"""Stage runners: what each numbered notebook calls, one function per stage.

Each runner takes validated :class:`~xalign.params.RunParams`, reads the artefacts of the
stages before it from ``runs/<run_name>/`` and writes its own there (atomically, via
:mod:`xalign.store`). It returns a small :class:`StageSummary` with the tables a notebook
shows, and prints its one-line summary (computed / reused / skipped with reasons).

**Caching and resume.** Every artefact has an identity (:func:`xalign.store.identity`):
a hash of its stage, the params it depends on, the SHA-256 of its inputs (data files,
earlier artefacts) and the checkpoint's weights hash. ``manifest.json`` records each
artefact with its identity, inputs, params, SHA-256 and the provenance of the run
(seed, git commit, package versions). A stage reuses an artefact only when the
manifest holds it with the identity the stage would give it now and its bytes are
unchanged; otherwise it recomputes it. So a parameter change recomputes only what
depends on it, and a run killed at any point (every write is atomic, the manifest is
rewritten after each artefact) resumes where it stopped: the work units are one
checkpoint series (pretraining), one language (data prep), one (checkpoint, language)
(extraction, probing) and one (checkpoint, task) (transfer).

Layout of a run directory::

    manifest.json                     every artefact: identity, inputs, params, SHA-256; provenance
    params.json                       resolved params of the last stage run
    checkpoints/step-NNNNNN/          tiny-model lab checkpoints (stage 0)
    checkpoints.json                  the series analysed: location, revision, weights hash
    data/words/<lang>.parquet         every UD word with UPOS, FEATS, UniMorph (stage 1)
    data/labels.parquet               (language, attribute, word, value, split) rows
    data/summary.csv                  kept / skipped datasets with reasons
    vectors/<checkpoint>/<lang>.safetensors   layer_<l>: (n_words, d), word_index (stage 2)
    probing/parts/<checkpoint>/<lang>.{selections,paths}.parquet   one unit of stage 3
    probing/selections.parquet        one row per probe: selected neurons, MI, accuracy (stage 3)
    probing/paths.parquet             MI / accuracy at every greedy step
    overlap/pairs.parquet|csv         pairwise overlap rates, p-values (stage 4)
    overlap/average.csv               mean overlap per (checkpoint, layer, attribute)
    transfer/parts/<checkpoint>/<task>.parquet   one unit of stage 5
    transfer/results.parquet|csv      zero-shot transfer per (checkpoint, task, language) (stage 5)
    correlation/table1.csv|md         Pearson r between overlap and transfer, correlation.recipe (stage 6)
    correlation/table1_<recipe>.*     the other recipe (per_layer | paper)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .params import RunParams, result_config
from .progress import progress
from .pipeline import StageSummary, run_stage
from .pipeline.manifest import Manifest
from .stages import STAGES
from .stages._common import checkpoint_rows
from .stages.extraction import release_weights
from .store import (content_sha256, file_sha256, identity, path_sha256, provenance, read_table,
                    remove_stale_temps, write_json, write_table)

log = logging.getLogger("xalign.runs")


@dataclass
class _Stage:
    """One stage run in progress: its params, run folder, manifest, summary and start time."""

    P: RunParams
    run_dir: Path
    m: Manifest
    s: StageSummary
    t0: float

    def current(self, path: Path, ident: str) -> bool:
        """True if ``path`` is in the manifest with identity ``ident`` and unchanged on disk."""
        return self.m.is_current(path, ident)

    def record(self, path: Path, ident: str, config: Any = None, inputs: dict[str, str] | None = None) -> str:
        """Record a just-written artefact of this stage in the manifest; returns its SHA-256."""
        return self.m.record(path, self.s.stage, ident, config, inputs)


def _start(P: RunParams, stage: str) -> _Stage:
    run_dir = P.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(P.model_dump(mode="json"), run_dir / "params.json")
    torch.manual_seed(P.seed)
    if P.threads:
        torch.set_num_threads(P.threads)
    stale = remove_stale_temps(run_dir)  # left by a killed run; never read back
    if stale:
        log.info("removed %d temporary files left by an interrupted run in %s", stale, run_dir)
    m = Manifest.open(run_dir)
    m.run = provenance(P.seed)
    return _Stage(P, run_dir, m, StageSummary(stage), time.perf_counter())


def _finish(st: _Stage) -> StageSummary:
    s = st.s
    s.seconds = time.perf_counter() - st.t0
    st.m.stages[s.stage] = {"computed": s.computed, "reused": s.reused, "skipped": s.skipped,
                            "seconds": round(s.seconds, 2), "git_commit": st.m.run.get("git_commit"),
                            "finished": st.m.run.get("time")}
    st.m.save()
    log.debug(s.line())  # printed below; avoid a twin line in notebooks
    print(s.line())
    return s


def _treebank_hashes(root: Path, lang: str, treebank: str | None) -> dict[str, str]:
    """``{"ud/<folder>/<file>": sha256}`` of a language's treebank split files."""
    from . import data

    return {f"ud/{p.parent.name}/{p.name}": file_sha256(p)
            for p in sorted(data.find_treebank_files(root, lang, treebank).values())}


# ----------------------------------------------------------------------------- stage 0
def run_pretrain(P: RunParams) -> StageSummary:
    """Stage 0: train the tiny BLOOM lab on the bundle's text; save ``checkpoints/step-*``.

    The series is reused when every checkpoint folder of ``P.pretrain.checkpoint_steps``
    is in the manifest with this stage's identity (pretraining params, seed, languages and
    the SHA-256 of the text and treebank files). Otherwise it is trained; a killed
    pretraining resumes after its last saved checkpoint (:func:`xalign.lab.pretrain`'s
    ``.resume.pt``), with the same weights as an uninterrupted run. Each folder is written
    atomically and recorded in the manifest as soon as it is saved.
    """
    from . import data, lab

    st = _start(P, "pretrain")
    s = st.s
    out = st.run_dir / "checkpoints"
    want = [out / f"step-{step:06d}" for step in P.pretrain.checkpoint_steps]
    if not P.pretrain.enabled or P.checkpoints.source != "lab":
        s.skipped.append(f"no lab to train (pretrain.enabled={P.pretrain.enabled}, "
                         f"checkpoints.source={P.checkpoints.source})")
        return _finish(st)
    root = P.resolved_data_root()
    pp = P.pretrain
    config = {**result_config(pp), "languages": P.data.languages, "seed": P.seed,
              "treebanks": P.data.treebanks}
    inputs = {"text": path_sha256(root / "text")} if (root / "text").is_dir() else {}
    if "ud" in pp.text_sources:
        for lang in P.data.languages:
            inputs.update(_treebank_hashes(root, lang, P.data.treebanks.get(lang)))
    idents = {d: identity("pretrain", {**config, "checkpoint": d.name}, inputs) for d in want}
    if all(st.current(d, idents[d]) for d in want):
        s.reused = len(want)
    else:
        extra = None
        if "ud" in pp.text_sources:
            extra = {lang: data.treebank_texts(root, lang, max_sentences=pp.max_lines_per_source, seed=P.seed,
                                               treebank=P.data.treebanks.get(lang))
                     for lang in P.data.languages}
        texts = lab.build_corpus(root, P.data.languages, sources=[x for x in pp.text_sources if x != "ud"],
                                 max_lines_per_source=pp.max_lines_per_source, seed=P.seed, extra_texts=extra)
        tok = lab.train_tokenizer(texts, pp.vocab_size)

        def record(d: Path) -> None:
            st.record(d, idents[d], {**config, "checkpoint": d.name}, inputs)

        def saved(d: Path) -> None:
            record(d)
            s.computed += 1

        dirs = lab.pretrain(texts, tok, out, vocab_size=pp.vocab_size, hidden_size=pp.hidden_size,
                            n_layer=pp.n_layer, n_head=pp.n_head, seq_len=pp.seq_len, batch_size=pp.batch_size,
                            lr=pp.lr, warmup_steps=pp.warmup_steps, checkpoint_steps=pp.checkpoint_steps,
                            seed=P.seed, threads=pp.threads, on_checkpoint=saved)
        s.reused = len(dirs) - s.computed  # kept from an interrupted run (resumed after them)
        for d in dirs[:s.reused]:
            if not st.current(d, idents[d]):  # saved by a run killed before recording it
                record(d)
        s.tables["corpus"] = pd.DataFrame({"lines": [len(texts)], "characters": [sum(map(len, texts))]})
    states = []
    for d in want:
        f = d / "training_state.json"
        if f.is_file():
            states.append({"checkpoint": d.name, **json.loads(f.read_text())})
    s.tables["checkpoints"] = pd.DataFrame(states)
    return _finish(st)


# ----------------------------------------------------------------------------- stage 1
def run_data_prep(P: RunParams) -> StageSummary:
    """Stage 1: UD treebanks -> UniMorph -> one dataset per (language, attribute), split by
    lemma; :mod:`xalign.stages.data_prep`."""
    return run_stage(P, "data_prep", STAGES)


# ----------------------------------------------------------------------------- checkpoints
def resolve_checkpoints(P: RunParams) -> list:
    """List the run's checkpoint series, record provenance, drop duplicate weights.

    Writes ``checkpoints.json`` (:func:`xalign.stages.extraction.write_series`: name, step,
    source, location, revision, the Hub commit it resolved to, weights hash, download size,
    duplicates). Checkpoints whose weights hash equals another's are all excluded with a
    warning, as the paper did for BLOOM's identical released checkpoints (Wang et al. 2024,
    Sec. 4). In a run, stage 2 does this as its first unit.

    Returns:
        The :class:`~xalign.checkpoints.Checkpoint` objects kept, in series order.
    """
    from . import checkpoints as ck
    from .stages.extraction import write_series

    write_series(P)
    return [ck.checkpoint_from_row(r) for r in checkpoint_rows(P.run_dir())]


# ----------------------------------------------------------------------------- stage 2
def run_extraction(P: RunParams) -> StageSummary:
    """Stage 2: word vectors (mean of subword hidden states) for every labelled word;
    :mod:`xalign.stages.extraction`.

    Raises:
        ValueError: a layer out of range (naming ``extraction.layers`` or
            ``extraction.sweep_layers`` and the valid range), or ``extraction.device``
            asks for CUDA where there is none.
    """
    return run_stage(P, "extraction", STAGES)


# ----------------------------------------------------------------------------- stage 3
def run_probing(P: RunParams) -> StageSummary:
    """Stage 3: one latent-variable probe per (checkpoint, layer, attribute, language), then
    greedy selection of the k most informative neurons on dev (Wang et al. 2024, Eq. 1-4);
    :mod:`xalign.stages.probing`.

    Raises:
        ValueError: ``probe.k`` larger than a checkpoint's hidden size.
        ArtefactError: a vectors file whose hidden size disagrees with its metadata or with
            the checkpoint's other files.
    """
    return run_stage(P, "probing", STAGES)


# ----------------------------------------------------------------------------- stage 4
def run_overlap(P: RunParams) -> StageSummary:
    """Stage 4: pairwise overlap rates |A cap B|/k with hypergeometric p-values (Holm);
    :mod:`xalign.stages.overlap`."""
    return run_stage(P, "overlap", STAGES)


# ----------------------------------------------------------------------------- stage 5
#: English training files written by the fetcher (``python -m xalign.data fetch --only <step>``).
TRANSFER_TRAIN_FILES = {"xtreme": ("udpos/en-ud-train.conllu", "udpos", "XTREME's English UD-POS train"),
                        "mnli": ("xnli/train-en.tsv", "mnli", "MultiNLI 1.0 train")}


def _train_file(root: Path, source: str, key: str) -> Path:
    """The fetched English training file for ``transfer.<key>: <source>``; one line if absent."""
    from .data import FETCH_COMMAND

    rel, step, what = TRANSFER_TRAIN_FILES[source]
    f = root / rel
    if not f.is_file():
        raise FileNotFoundError(f"{f}: {what} not found (params transfer.{key}: {source}); "
                                f"fetch it with `{FETCH_COMMAND} --only {step} --root {root}`")
    return f


def _pos_sets(P: RunParams, root: Path) -> tuple[tuple, str]:
    """(train, dev, eval sets) for POS and their content hash. ``en`` = the source's test split."""
    from . import data

    tp, cap_tr, cap_ev = P.transfer, P.transfer.max_train_examples, P.transfer.max_eval_examples
    src = tp.pos_source_treebank or P.data.treebanks.get("en")  # None: the en default (GUM)
    if tp.pos_train == "xtreme":
        sents = data.read_treebank({"train": _train_file(root, "xtreme", "pos_train")}, cap_tr, P.seed)
        train = [([w.form for w in s.words], [w.upos for w in s.words]) for s in sents]
    else:
        train = data.read_pos_sentences(root, "en", split="train", treebank=src, max_sentences=cap_tr, seed=P.seed)
    dev = data.read_pos_sentences(root, "en", split="dev", treebank=src, max_sentences=cap_ev, seed=P.seed)
    langs = tp.pos_languages or ["en", *(l for l in P.data.languages if l != "en")]
    evals = {l: data.read_pos_sentences(root, l, split="test", treebank=src if l == "en" else P.data.treebanks.get(l),
                                        max_sentences=cap_ev, seed=P.seed) for l in langs}
    sets = (train, dev, evals)
    return sets, content_sha256(sets)


def _xnli_sets(P: RunParams, root: Path) -> tuple[tuple, str]:
    """(train, dev, eval sets) for XNLI and their content hash; MultiNLI is a streamed file."""
    from . import data
    from .transfer import XnliTsvStream, split_xnli_dev

    tp, cap_tr, cap_ev = P.transfer, P.transfer.max_train_examples, P.transfer.max_eval_examples
    evals = {l: data.read_xnli(root, "test", l, max_rows=cap_ev).reset_index(drop=True) for l in tp.xnli_languages}
    if tp.xnli_train == "mnli":
        f = _train_file(root, "mnli", "xnli_train")
        dev = data.read_xnli(root, "dev", "en", max_rows=cap_ev)
        stream = XnliTsvStream(f)
        if cap_tr is not None and cap_tr < len(stream):
            import random
            stream.keep = sorted(random.Random(P.seed).sample(range(len(stream)), cap_tr))
        sets = (stream, dev, evals)
        return sets, content_sha256({"train": file_sha256(f), "rows": stream.keep, "dev": dev, "evals": evals})
    # no MultiNLI: train on English XNLI dev minus a held-out part (premise-disjoint)
    xtrain, xdev = split_xnli_dev(data.read_xnli(root, "dev", "en"), tp.xnli_dev_fraction, P.seed)
    if cap_tr:
        xtrain = xtrain.sample(frac=1.0, random_state=P.seed).iloc[:cap_tr]
    sets = (xtrain.reset_index(drop=True), xdev.reset_index(drop=True), evals)
    return sets, content_sha256(sets)


def run_transfer(P: RunParams) -> StageSummary:
    """Stage 5: (Q)LoRA fine-tuning on English, zero-shot evaluation on every target language.

    The unit of work and of reuse is one (checkpoint, task), written to
    ``transfer/parts/<checkpoint>/<task>.parquet`` and reused while the checkpoint's
    weights, the training/evaluation data and the transfer params are unchanged. While a
    unit trains, ``<task>.resume.pt`` beside it holds the state of its last English-dev
    evaluation; a rerun after a kill continues from there.

    Raises:
        FileNotFoundError: a training file the params name is absent (one line with the
            fetch command), before any training.
    """
    from . import checkpoints as ck
    from .transfer import ResumeFile, TransferConfig, finetune_pos, finetune_xnli

    st = _start(P, "transfer")
    s, run_dir, tp = st.s, st.run_dir, P.transfer
    if not tp.tasks:
        s.skipped.append("transfer.tasks is empty")
        return _finish(st)
    root = P.resolved_data_root()
    sets, data_sha = {}, {}
    if "pos" in tp.tasks:
        sets["pos"], data_sha["pos"] = _pos_sets(P, root)
    if "xnli" in tp.tasks:
        sets["xnli"], data_sha["xnli"] = _xnli_sets(P, root)
    cfgs = {task: TransferConfig.from_params(tp, seed=P.seed, task=task) for task in sets}
    fns = {"pos": finetune_pos, "xnli": finetune_xnli}
    out, part_idents = [], {}
    for c in progress(checkpoint_rows(run_dir), desc="transfer", total=None):
        for task in ("pos", "xnli"):
            if task not in sets:
                continue
            config = {**result_config(tp, {"tasks"}), "task": task, "seed": P.seed, "checkpoint": c["name"],
                      "revision": c["revision"]}
            inputs = {"weights": c["weights_sha256"], "data": data_sha[task]}
            ident = identity("transfer", config, inputs)
            dest = run_dir / "transfer" / "parts" / c["name"] / f"{task}.parquet"
            part_idents[f"{c['name']}/{task}"] = ident
            if st.current(dest, ident):
                out.append(read_table(dest))
                s.reused += 1
                continue
            model_dir, tok_dir = ck.local_files(ck.checkpoint_from_row(c))  # hub: download on demand
            resume = ResumeFile(dest.with_name(f"{task}.resume.pt"), ident)
            df = fns[task](model_dir, *sets[task], cfgs[task], revision=None, tokenizer_path=tok_dir, resume=resume)
            df = df.assign(task=task)
            df.insert(0, "step", c["step"])
            df.insert(0, "checkpoint", c["name"])
            write_table(df, dest)
            st.record(dest, ident, config, inputs)
            out.append(df)
            s.computed += 1
        release_weights(P, c)
    res = pd.concat(out, ignore_index=True) if out else pd.DataFrame()
    dest = run_dir / "transfer" / "results.parquet"
    write_table(res, dest, csv=True)
    st.record(dest, identity("transfer.all", {"parts": sorted(part_idents)}, part_idents), None, part_idents)
    s.tables["transfer"] = res
    return _finish(st)


# ----------------------------------------------------------------------------- stage 6
def run_correlation(P: RunParams) -> StageSummary:
    """Stage 6: Pearson r between overlap and zero-shot transfer (the paper's Table 1), by
    both recipes; :mod:`xalign.stages.correlation`."""
    return run_stage(P, "correlation", STAGES)


# ----------------------------------------------------------------------------- stage 7
def run_figures(P: RunParams) -> StageSummary:
    """Stage 7: Figures 1-5 and the Appendix B.1 heatmaps, PNG and PDF, in ``figures/<run>/``;
    :mod:`xalign.stages.figures`."""
    return run_stage(P, "figures", STAGES)


