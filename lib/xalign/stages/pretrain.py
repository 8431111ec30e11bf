"""Stage 0 (notebook ``00_pretrain``): the tiny-model lab, a small BLOOM trained from scratch
on the bundle's text (:func:`xalign.lab.pretrain`), saved as ``checkpoints/step-NNNNNN/``.

One unit per checkpoint of ``pretrain.checkpoint_steps``, one wave each: the unit of step
s continues the training from the checkpoint before it (``checkpoints/.resume.pt``) and
saves ``step-s``, so a killed pretraining resumes after its last recorded checkpoint, with
the weights of an uninterrupted run. A unit's config is the whole pretraining config (the
learning-rate schedule depends on the last step), the seed, languages and treebanks; its
inputs are the SHA-256 of the text and treebank files and of the checkpoint before it.
Checkpoints the params no longer list are removed by the scheduler.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from ..params import result_config
from ..pipeline import Context, StageSummary, Unit, code_version

name, notebook, upstream = "pretrain", "00_pretrain", ()
CODE = ("xalign.lab", "xalign.stages.pretrain")


def _inputs(ctx: Context) -> dict[str, str]:
    """SHA-256 of the pretraining text: ``text/`` and, with source "ud", the treebank files."""
    from .. import data

    P, root = ctx.P, ctx.P.resolved_data_root()
    inputs = {"text": ctx.input_sha(root / "text")} if (root / "text").is_dir() else {}
    if "ud" in P.pretrain.text_sources:
        for lang in P.data.languages:
            for p in data.find_treebank_files(root, lang, P.data.treebanks.get(lang)).values():
                inputs[f"ud/{p.parent.name}/{p.name}"] = ctx.input_sha(p)
    return inputs


def plan(ctx: Context) -> Iterator[list[Unit]]:
    """One wave per checkpoint step; none without a lab (``pretrain.enabled: false`` or
    another ``checkpoints.source``)."""
    P = ctx.P
    if not P.pretrain.enabled or P.checkpoints.source != "lab":
        ctx.skip(f"no lab to train (pretrain.enabled={P.pretrain.enabled}, "
                 f"checkpoints.source={P.checkpoints.source})")
        return
    out = ctx.run_dir / "checkpoints"
    config = {**result_config(P.pretrain), "languages": P.data.languages, "seed": P.seed,
              "treebanks": P.data.treebanks}
    inputs, code, previous = _inputs(ctx), code_version(*CODE), None
    for step in P.pretrain.checkpoint_steps:
        dest = out / f"step-{step:06d}"
        ins = {**inputs, **({"previous": ctx.sha(previous)} if previous else {})}
        yield [Unit(name, dest.name, {**config, "checkpoint": dest.name}, ins, (dest,), train_until,
                    {"P": P, "step": step}, code)]
        previous = dest


_CORPUS: dict[str, Any] = {}  # the text and tokenizer of one config per process: the units share them


def corpus(P: Any) -> tuple[list[str], Any]:
    """(text lines, tokenizer) of the lab's corpus (:func:`xalign.lab.build_corpus`) and its
    byte-level BPE tokenizer (:func:`xalign.lab.train_tokenizer`), exactly as stage 0 trains on;
    cached per process for one config."""
    from .. import data, lab

    pp, root = P.pretrain, P.resolved_data_root()
    key = json.dumps([str(root), result_config(pp), P.data.languages, P.data.treebanks, P.seed], sort_keys=True)
    if _CORPUS.get("key") != key:
        extra = None
        if "ud" in pp.text_sources:
            extra = {lang: data.treebank_texts(root, lang, max_sentences=pp.max_lines_per_source, seed=P.seed,
                                               treebank=P.data.treebanks.get(lang)) for lang in P.data.languages}
        texts = lab.build_corpus(root, P.data.languages, sources=[x for x in pp.text_sources if x != "ud"],
                                 max_lines_per_source=pp.max_lines_per_source, seed=P.seed, extra_texts=extra)
        _CORPUS.update(key=key, texts=texts, tok=lab.train_tokenizer(texts, pp.vocab_size))
    return _CORPUS["texts"], _CORPUS["tok"]


def train_until(P: Any, step: int) -> dict:
    """Train the series up to checkpoint ``step`` (continuing from the one before it) and
    save ``checkpoints/step-<step>``; notes: the corpus size."""
    from .. import lab

    pp = P.pretrain
    texts, tok = corpus(P)
    lab.pretrain(texts, tok, P.run_dir() / "checkpoints", vocab_size=pp.vocab_size, hidden_size=pp.hidden_size,
                 n_layer=pp.n_layer, n_head=pp.n_head, seq_len=pp.seq_len, batch_size=pp.batch_size, lr=pp.lr,
                 warmup_steps=pp.warmup_steps, checkpoint_steps=pp.checkpoint_steps, seed=P.seed,
                 threads=pp.threads, until=step)
    return {"lines": len(texts), "characters": sum(map(len, texts))}


def gather(ctx: Context, s: StageSummary, units: list[Unit]) -> None:
    """Tables ``checkpoints`` (each one's ``training_state.json``) and ``corpus`` (its size)."""
    states = []
    for u in units:
        f = Path(u.outputs[0]) / "training_state.json"
        if f.is_file():
            states.append({"checkpoint": u.key, **json.loads(f.read_text())})
    s.tables["checkpoints"] = pd.DataFrame(states)
    if units:
        n = ctx.notes(units[-1])
        s.tables["corpus"] = pd.DataFrame({"lines": [n.get("lines")], "characters": [n.get("characters")]})
