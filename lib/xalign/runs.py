"""Stage runners: what each numbered notebook calls, one function per stage.

Each runner takes validated :class:`~xalign.params.RunParams`, reads the artefacts of the
stages before it from ``runs/<run_name>/`` and writes its own there (atomically, via
:mod:`xalign.store`). It returns a small :class:`StageSummary` with the tables a notebook
shows. Layout of a run directory::

    params.json                       resolved params of the last stage run
    checkpoints/step-NNNNNN/          tiny-model lab checkpoints (stage 0)
    checkpoints.json                  the series analysed: location, revision, weights hash
    data/words/<lang>.parquet         every UD word with UPOS, FEATS, UniMorph (stage 1)
    data/labels.parquet               (language, attribute, word, value, split) rows
    data/summary.csv                  kept / skipped datasets with reasons
    vectors/<checkpoint>/<lang>.safetensors   layer_<l>: (n_words, d), word_index (stage 2)
    probing/selections.parquet        one row per probe: selected neurons, MI, accuracy (stage 3)
    probing/paths.parquet             MI / accuracy at every greedy step
    overlap/pairs.parquet|csv         pairwise overlap rates, p-values (stage 4)
    overlap/average.csv               mean overlap per (checkpoint, layer, attribute)
    transfer/results.parquet|csv      zero-shot transfer per (checkpoint, task, language) (stage 5)
    correlation/table1.csv|md         Pearson r between overlap and transfer (stage 6)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .params import RunParams
from .progress import progress
from .store import (ArtefactError, atomic_path, load_metadata, load_tensors, read_table, save_tensors,
                    write_json, write_table)

log = logging.getLogger("xalign.runs")


@dataclass
class StageSummary:
    """What a stage did: counts of computed / reused / skipped items, wall time, tables to show."""

    stage: str
    computed: int = 0
    reused: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def line(self) -> str:
        """One-line summary: what was computed, reused from disk, and skipped (with reasons)."""
        sk = f"; skipped {len(self.skipped)}" + (f" ({'; '.join(self.skipped[:3])}{' ...' if len(self.skipped) > 3 else ''})" if self.skipped else "")
        return f"[{self.stage}] computed {self.computed}, reused {self.reused}{sk}; {self.seconds:.1f} s"


def _start(P: RunParams, stage: str) -> tuple[Path, StageSummary, float]:
    run_dir = P.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(P.model_dump(mode="json"), run_dir / "params.json")
    torch.manual_seed(P.seed)
    if P.threads:
        torch.set_num_threads(P.threads)
    return run_dir, StageSummary(stage), time.perf_counter()


def _finish(s: StageSummary, t0: float) -> StageSummary:
    s.seconds = time.perf_counter() - t0
    log.debug(s.line())  # printed below; avoid a twin line in notebooks
    print(s.line())
    return s


# ----------------------------------------------------------------------------- stage 0
def run_pretrain(P: RunParams) -> StageSummary:
    """Stage 0: train the tiny BLOOM lab on the bundle's text; save ``checkpoints/step-*``.

    Skips training when every checkpoint folder of ``P.pretrain.checkpoint_steps`` exists.
    """
    from . import data, lab

    run_dir, s, t0 = _start(P, "pretrain")
    out = run_dir / "checkpoints"
    want = [out / f"step-{st:06d}" for st in P.pretrain.checkpoint_steps]
    if not P.pretrain.enabled or P.checkpoints.source != "lab":
        s.skipped.append(f"no lab to train (pretrain.enabled={P.pretrain.enabled}, "
                         f"checkpoints.source={P.checkpoints.source})")
        return _finish(s, t0)
    if all((d / "config.json").is_file() for d in want):
        s.reused = len(want)
    else:
        root = P.resolved_data_root()
        pp = P.pretrain
        extra = None
        if "ud" in pp.text_sources:
            extra = {lang: data.treebank_texts(root, lang, max_sentences=pp.max_lines_per_source, seed=P.seed,
                                               treebank=P.data.treebanks.get(lang))
                     for lang in P.data.languages}
        texts = lab.build_corpus(root, P.data.languages, sources=[x for x in pp.text_sources if x != "ud"],
                                 max_lines_per_source=pp.max_lines_per_source, seed=P.seed, extra_texts=extra)
        tok = lab.train_tokenizer(texts, pp.vocab_size)
        dirs = lab.pretrain(texts, tok, out, vocab_size=pp.vocab_size, hidden_size=pp.hidden_size,
                            n_layer=pp.n_layer, n_head=pp.n_head, seq_len=pp.seq_len, batch_size=pp.batch_size,
                            lr=pp.lr, warmup_steps=pp.warmup_steps, checkpoint_steps=pp.checkpoint_steps,
                            seed=P.seed, threads=pp.threads)
        s.computed = len(dirs)
        s.tables["corpus"] = pd.DataFrame({"lines": [len(texts)], "characters": [sum(map(len, texts))]})
    states = []
    for d in want:
        f = d / "training_state.json"
        if f.is_file():
            states.append({"checkpoint": d.name, **json.loads(f.read_text())})
    s.tables["checkpoints"] = pd.DataFrame(states)
    return _finish(s, t0)


# ----------------------------------------------------------------------------- stage 1
def run_data_prep(P: RunParams) -> StageSummary:
    """Stage 1: UD treebanks -> UniMorph -> one dataset per (language, attribute), split by lemma."""
    from . import data

    run_dir, s, t0 = _start(P, "data_prep")
    root = P.resolved_data_root()
    dp = P.data
    words = data.load_words(root, dp.languages, treebanks=dp.treebanks,
                            max_sentences_per_language=dp.max_sentences_per_language, seed=P.seed)
    for lang, w in words.groupby("language", sort=False):
        write_table(w.reset_index(drop=True), run_dir / "data" / "words" / f"{lang}.parquet")
        s.computed += 1
    labels, summary = data.build_datasets(words, dp.attributes, min_count=dp.min_count,
                                          fractions=dp.split_fractions, seed=P.seed)
    write_table(labels, run_dir / "data" / "labels.parquet")
    write_table(summary, run_dir / "data" / "summary.parquet", csv=True)
    for _, r in summary[summary.status != "kept"].iterrows():
        s.skipped.append(f"{r.language}/{r.attribute}: {r.reason}")
    s.tables["summary"] = summary
    return _finish(s, t0)


# ----------------------------------------------------------------------------- checkpoints
def resolve_checkpoints(P: RunParams) -> list:
    """List the run's checkpoint series, record provenance, drop duplicate weights.

    Writes ``checkpoints.json`` (name, step, source, location, revision, weights hash).
    Checkpoints whose weights hash equals another's are all excluded with a warning, as
    the paper did for BLOOM's identical released checkpoints (Wang et al. 2024, Sec. 4).
    """
    from . import checkpoints as ck

    cp = P.checkpoints
    ckpts = ck.list_checkpoints(cp.source, run_dir=P.run_dir(), repo=cp.repo, tokenizer_repo=cp.tokenizer_repo,
                                revisions=cp.revisions, local_dir=cp.local_dir, gguf_file=cp.gguf_file,
                                final_repo=cp.final_repo, gguf_package=cp.gguf_package)
    if not ckpts:
        raise FileNotFoundError(f"checkpoints.source={cp.source}: no checkpoints found "
                                f"(for 'lab', run notebook 00_pretrain first)")
    rows = []
    for c in ckpts:
        rows.append({"name": c.name, "step": c.step, "source": c.source, "location": c.location,
                     "revision": c.revision, "tokenizer_location": c.tokenizer_location,
                     "gguf_file": c.gguf_file, "weights_sha256": ck.weights_hash(c)})
    hashes = pd.Series([r["weights_sha256"] for r in rows])
    dup = hashes.duplicated(keep=False) & hashes.notna()
    for r, is_dup in zip(rows, dup):
        r["excluded"] = bool(is_dup)
        if is_dup:
            log.warning("checkpoint %s has the same weights as another checkpoint: excluded", r["name"])
    write_json(rows, P.run_dir() / "checkpoints.json")
    return [c for c, is_dup in zip(ckpts, dup) if not is_dup]


def _vectors_path(run_dir: Path, ckpt_name: str, lang: str) -> Path:
    return run_dir / "vectors" / ckpt_name / f"{lang}.safetensors"


# ----------------------------------------------------------------------------- stage 2
def run_extraction(P: RunParams) -> StageSummary:
    """Stage 2: word vectors (mean of subword hidden states) for every labelled word.

    Every checkpoint gets ``extraction.layers``; the last one also gets the layer sweep
    ``extraction.sweep_layers`` (Figure 2). Vectors are written per (checkpoint, language).
    """
    from . import checkpoints as ck
    from . import extraction as ex

    run_dir, s, t0 = _start(P, "extraction")
    ep = P.extraction
    labels = read_table(run_dir / "data" / "labels.parquet")
    labels = labels[labels.attribute.isin(P.probe.attributes)]
    ckpts = resolve_checkpoints(P)
    rows = []
    for i, c in enumerate(ckpts):
        model, tok = ck.load_model(c, dtype=P.checkpoints.dtype)
        n_hs = ck.num_hidden_states(model)
        layers = list(ep.layers)
        if i == len(ckpts) - 1:
            sweep = range(1, n_hs + 1) if ep.sweep_layers == "all" else ep.sweep_layers
            layers = sorted(set(layers) | set(sweep))
        bad = [l for l in layers if not 1 <= l <= n_hs]
        if bad:
            raise ValueError(f"extraction.layers: layer(s) {bad} out of range for {c.name} "
                             f"(valid 1..{n_hs}; l = 1 is the embedding output)")
        for lang in progress(P.data.languages, desc=f"extract {c.name}", total=len(P.data.languages)):
            dest = _vectors_path(run_dir, c.name, lang)
            if dest.is_file():
                try:
                    meta = load_metadata(dest)  # header only: reuse checks read no tensor data
                    if meta.get("layers") == layers and meta.get("tokenization") == ep.tokenization:
                        s.reused += 1
                        continue
                except ArtefactError:
                    pass  # unreadable header: extract again and overwrite atomically
            words = read_table(run_dir / "data" / "words" / f"{lang}.parquet")
            need = labels[labels.language == lang]
            if need.empty:
                s.skipped.append(f"{lang}: no labelled words for {P.probe.attributes}")
                continue
            keep_sents = sorted(set(need.sent_idx))
            sub = words[words.sent_idx.isin(keep_sents)].sort_values(["sent_idx", "word_idx"])
            sentences = [g.form.tolist() for _, g in sub.groupby("sent_idx", sort=True)]
            res = ex.extract_word_vectors(model, tok, sentences, layers, mode=ep.tokenization,
                                          batch_size=ep.batch_size, max_length=ep.max_length, bf16=ep.bf16)
            flat = sub[["sent_idx", "word_idx"]].to_numpy()[res.word_index.numpy()]
            tensors = {f"layer_{l}": v for l, v in res.vectors.items()}
            tensors["sent_idx"] = torch.as_tensor(flat[:, 0], dtype=torch.int64)
            tensors["word_idx"] = torch.as_tensor(flat[:, 1], dtype=torch.int64)
            meta = {"checkpoint": c.name, "step": c.step, "location": c.location, "revision": c.revision,
                    "language": lang, "layers": layers, "tokenization": ep.tokenization,
                    "hidden_size": ck.hidden_size(model), "n_sentences_skipped": res.n_sentences_skipped,
                    "n_words_total": res.n_words_total}
            save_tensors(tensors, dest, meta)
            s.computed += 1
            rows.append({"checkpoint": c.name, "language": lang, "words": len(flat),
                         "sentences_skipped": res.n_sentences_skipped})
            if res.n_sentences_skipped:
                s.skipped.append(f"{c.name}/{lang}: {res.n_sentences_skipped} sentences longer than "
                                 f"max_length={ep.max_length}")
        del model
    s.tables["extracted"] = pd.DataFrame(rows)
    return _finish(s, t0)


# ----------------------------------------------------------------------------- stage 3
def _dataset(labels: pd.DataFrame, tensors: dict[str, torch.Tensor], layer: int):
    """Join one (language, attribute)'s labels with its word vectors -> per-split (X, y)."""
    key = pd.DataFrame({"sent_idx": tensors["sent_idx"].numpy(), "word_idx": tensors["word_idx"].numpy()})
    key["row"] = range(len(key))
    m = labels.merge(key, on=["sent_idx", "word_idx"], how="inner")
    values = sorted(m.value.unique())
    index = {v: i for i, v in enumerate(values)}
    X = tensors[f"layer_{layer}"]
    out = {}
    for split in ("train", "dev", "test"):
        part = m[m.split == split]
        out[split] = (X[torch.as_tensor(part.row.to_numpy(), dtype=torch.long)],
                      torch.as_tensor(part.value.map(index).to_numpy(), dtype=torch.long))
    return out, values


def run_probing(P: RunParams) -> StageSummary:
    """Stage 3: one latent-variable probe per (checkpoint, layer, attribute, language), then
    greedy selection of the k most informative neurons on dev (Wang et al. 2024, Eq. 1-4)."""
    from .probe import ProbeConfig, standardize, train_probe
    from .selection import greedy_select

    run_dir, s, t0 = _start(P, "probing")
    pp = P.probe
    cfg = ProbeConfig(lr=pp.lr, weight_decay=pp.weight_decay, max_epochs=pp.max_epochs, patience=pp.patience,
                      batch_size=pp.batch_size, mc_samples=pp.mc_samples, entropy_scale=pp.entropy_scale,
                      held_out_fraction=pp.held_out_fraction, seed=P.seed)
    labels = read_table(run_dir / "data" / "labels.parquet")
    summary = read_table(run_dir / "data" / "summary.parquet")
    kept = summary[(summary.status == "kept") & summary.attribute.isin(pp.attributes)
                   & summary.language.isin(P.data.languages)]
    ckpts = json.loads((run_dir / "checkpoints.json").read_text())
    ckpts = [c for c in ckpts if not c["excluded"]]
    sel_rows, path_rows = [], []
    jobs = []
    for c in ckpts:
        for lang in sorted(kept.language.unique()):
            f = _vectors_path(run_dir, c["name"], lang)
            if not f.is_file():
                s.skipped.append(f"{c['name']}/{lang}: no vectors")
                continue
            jobs.append((c, lang, f))
    for c, lang, f in progress(jobs, desc="probing", total=len(jobs)):
        tensors, meta = load_tensors(f)
        d = int(meta["hidden_size"])
        if pp.k > d:
            raise ValueError(f"probe.k={pp.k} exceeds the hidden size d={d} of {c['name']}")
        for attr in sorted(kept[kept.language == lang].attribute):
            lab = labels[(labels.language == lang) & (labels.attribute == attr)]
            for layer in meta["layers"]:
                splits, values = _dataset(lab, tensors, layer)
                (Xtr, ytr), (Xdv, ydv), (Xte, yte) = splits["train"], splits["dev"], splits["test"]
                if pp.standardize and len(ytr):
                    Xtr, Xdv, Xte = standardize(Xtr, Xdv, Xte)
                if len(ytr) < pp.min_train_examples or len(ydv) == 0 or len(yte) == 0:
                    s.skipped.append(f"{c['name']}/L{layer}/{attr}/{lang}: {len(ytr)} train, {len(ydv)} dev, "
                                     f"{len(yte)} test examples (min_train_examples={pp.min_train_examples})")
                    continue
                probe = train_probe(Xtr, ytr, len(values), cfg)
                res = greedy_select(probe, Xdv, ydv, k=pp.k, X_test=Xte, y_test=yte)
                s.computed += 1
                ident = {"checkpoint": c["name"], "step": c["step"], "layer": layer, "attribute": attr,
                         "language": lang}
                sel_rows.append({**ident, "d": d, "k": pp.k, "neurons": [int(n) for n in res.neurons],
                                 "n_classes": len(values), "values": ",".join(values),
                                 "n_train": len(ytr), "n_dev": len(ydv), "n_test": len(yte),
                                 "dev_mi": res.dev_mi[-1], "test_mi": res.test_mi[-1],
                                 "dev_acc": res.dev_acc[-1], "test_acc": res.test_acc[-1],
                                 "dev_mi_all": res.dev_mi_all, "test_mi_all": res.test_mi_all,
                                 "dev_acc_all": res.dev_acc_all, "test_acc_all": res.test_acc_all,
                                 "best_epoch": probe.best_epoch})
                for i, n in enumerate(res.neurons):
                    path_rows.append({**ident, "step_k": i + 1, "neuron": int(n), "dev_loglik": res.dev_loglik[i],
                                      "dev_mi": res.dev_mi[i], "test_mi": res.test_mi[i],
                                      "dev_acc": res.dev_acc[i], "test_acc": res.test_acc[i]})
    sel = pd.DataFrame(sel_rows)
    write_table(sel, run_dir / "probing" / "selections.parquet")
    write_table(pd.DataFrame(path_rows), run_dir / "probing" / "paths.parquet")
    s.tables["selections"] = sel
    return _finish(s, t0)


# ----------------------------------------------------------------------------- stage 4
def run_overlap(P: RunParams) -> StageSummary:
    """Stage 4: pairwise overlap rates |A cap B|/k with hypergeometric p-values (Holm)."""
    from .overlap import average_overlap, overlap_pairs

    run_dir, s, t0 = _start(P, "overlap")
    sel = read_table(run_dir / "probing" / "selections.parquet")
    pairs = overlap_pairs(sel, alpha=P.overlap.alpha)
    avg = average_overlap(pairs)
    write_table(pairs, run_dir / "overlap" / "pairs.parquet", csv=True)
    write_table(avg, run_dir / "overlap" / "average.parquet", csv=True)
    s.computed = len(pairs)
    s.tables.update(pairs=pairs, average=avg)
    return _finish(s, t0)


# ----------------------------------------------------------------------------- stage 5
def run_transfer(P: RunParams) -> StageSummary:
    """Stage 5: (Q)LoRA fine-tuning on English, zero-shot evaluation on every target language."""
    from . import data
    from .transfer import TransferConfig, finetune_pos, finetune_xnli, split_xnli_dev

    run_dir, s, t0 = _start(P, "transfer")
    tp = P.transfer
    root = P.resolved_data_root()
    cfg = TransferConfig.from_params(tp, seed=P.seed)
    if not tp.tasks:
        s.skipped.append("transfer.tasks is empty")
        return _finish(s, t0)
    cap_tr, cap_ev = tp.max_train_examples, tp.max_eval_examples
    pos_sets = xnli_sets = None
    if "pos" in tp.tasks:
        src = tp.pos_source_treebank
        train = data.read_pos_sentences(root, "en", split="train", treebank=src, max_sentences=cap_tr, seed=P.seed)
        dev = data.read_pos_sentences(root, "en", split="dev", treebank=src, max_sentences=cap_ev, seed=P.seed)
        langs = tp.pos_languages or [l for l in P.data.languages if l != "en"]
        evals = {l: data.read_pos_sentences(root, l, split="test", treebank=P.data.treebanks.get(l),
                                            max_sentences=cap_ev, seed=P.seed) for l in langs}
        pos_sets = (train, dev, evals)
    if "xnli" in tp.tasks:
        # no MultiNLI in the bundle: train on English XNLI dev minus a held-out part (premise-disjoint)
        xtrain, xdev = split_xnli_dev(data.read_xnli(root, "dev", "en"), tp.xnli_dev_fraction, P.seed)
        if cap_tr:
            xtrain = xtrain.sample(frac=1.0, random_state=P.seed).iloc[:cap_tr]
        evals = {l: data.read_xnli(root, "test", l, max_rows=cap_ev) for l in tp.xnli_languages}
        xnli_sets = (xtrain, xdev, evals)
    ckpts = [c for c in json.loads((run_dir / "checkpoints.json").read_text()) if not c["excluded"]]
    out = []
    dest = run_dir / "transfer" / "results.parquet"
    done = read_table(dest) if dest.is_file() else pd.DataFrame(columns=["checkpoint", "task"])
    for c in progress(ckpts, desc="transfer", total=len(ckpts)):
        for task, sets, fn in (("pos", pos_sets, finetune_pos), ("xnli", xnli_sets, finetune_xnli)):
            if sets is None:
                continue
            prev = done[(done.checkpoint == c["name"]) & (done.task == task)]
            if len(prev):
                out.append(prev)
                s.reused += 1
                continue
            df = fn(c["location"], *sets, cfg, revision=c["revision"], tokenizer_path=c["tokenizer_location"])
            df = df.assign(task=task)
            df.insert(0, "step", c["step"])
            df.insert(0, "checkpoint", c["name"])
            out.append(df)
            s.computed += 1
            write_table(pd.concat(out, ignore_index=True), dest, csv=True)
    res = pd.concat(out, ignore_index=True) if out else pd.DataFrame()
    write_table(res, dest, csv=True)
    s.tables["transfer"] = res
    return _finish(s, t0)


# ----------------------------------------------------------------------------- stage 6
def run_correlation(P: RunParams) -> StageSummary:
    """Stage 6: Pearson r between overlap and zero-shot transfer (the paper's Table 1)."""
    from .stats import correlation_table, table1_markdown

    run_dir, s, t0 = _start(P, "correlation")
    if not P.transfer.tasks:
        s.skipped.append("no transfer results to correlate with (transfer.tasks is empty)")
        return _finish(s, t0)
    pairs = read_table(run_dir / "overlap" / "pairs.parquet")
    transfer = read_table(run_dir / "transfer" / "results.parquet")
    ckpt_names = [c["name"] for c in json.loads((run_dir / "checkpoints.json").read_text()) if not c["excluded"]]
    pairs = pairs[pairs.layer.isin(P.extraction.layers)]  # the sweep exists on one checkpoint only
    table = correlation_table(pairs[pairs.checkpoint.isin(ckpt_names)], transfer)
    md = table1_markdown(table)
    write_table(table, run_dir / "correlation" / "table1.parquet", csv=True)
    with atomic_path(run_dir / "correlation" / "table1.md") as tmp:
        tmp.write_text(md + "\n", encoding="utf-8")
    s.computed = len(table)
    s.tables["table1"] = table
    return _finish(s, t0)


# ----------------------------------------------------------------------------- stage 7
def run_figures(P: RunParams) -> StageSummary:
    """Stage 7: Figures 1-5 and the Appendix B.1 heatmaps, PNG and PDF, in ``figures/<run>/``."""
    from . import plots
    from .overlap import average_overlap

    run_dir, s, t0 = _start(P, "figures")
    out = P.figure_dir()
    pairs = read_table(run_dir / "overlap" / "pairs.parquet")
    avg = average_overlap(pairs)
    transfer_f = run_dir / "transfer" / "results.parquet"
    transfer = read_table(transfer_f) if P.transfer.tasks and transfer_f.is_file() else None
    ckpts = [c for c in json.loads((run_dir / "checkpoints.json").read_text()) if not c["excluded"]]
    last = ckpts[-1]["name"]
    fmt = tuple(P.figures.formats)
    main_layers = [l for l in P.extraction.layers if l in set(pairs.layer)]
    series = avg[avg.layer.isin(main_layers)]
    # figures against training step need a series: at least two checkpoints with a step
    series_ok = series.step.dropna().nunique() >= 2
    figs: dict[str, Any] = {"fig2_overlap_vs_layer": plots.fig_overlap_vs_layer(avg, last)}
    if series_ok:
        figs["fig1_overlap_vs_step"] = plots.fig_overlap_vs_step(series)
    else:
        s.skipped.append("figures 1, 3 and 5 (vs step): fewer than two checkpoints with a step")
    layer = main_layers[-1] if main_layers else int(pairs.layer.max())
    if transfer is not None and len(transfer):
        if series_ok:
            figs["fig3_overlap_transfer_vs_step"] = plots.fig_overlap_transfer_vs_step(series, transfer, layer)
            figs["fig5_transfer_vs_step"] = plots.fig_transfer_vs_step(transfer)
        at_layer = pairs[pairs.layer == layer]
        with_source = at_layer[(at_layer.lang_a == "en") | (at_layer.lang_b == "en")]
        for attr in sorted(set(with_source.attribute)):
            figs[f"fig4_pairwise_scatter_{attr}_L{layer}"] = plots.fig_pairwise_scatter(
                at_layer, transfer, layer, attr)
    for attr in sorted(set(pairs.attribute)):
        for l in main_layers:
            figs[f"heatmap_{attr}_L{l}_{last}"] = plots.fig_overlap_heatmap(pairs, last, l, attr)
    for name, fig in figs.items():
        plots.save(fig, out, name, formats=fmt, dpi=P.figures.dpi)
        s.computed += 1
    s.tables["figures"] = pd.DataFrame({"figure": sorted(figs)})
    return _finish(s, t0)
