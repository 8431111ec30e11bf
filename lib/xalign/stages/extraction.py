"""Stage 2 (notebook ``02_extraction``): word vectors, the mean of a word's subword hidden
states at layers ℓ (ℓ = 1 is the embedding output; Wang et al. 2024, Sec. 3.2).

Wave 1: one unit, ``checkpoints.json``: the series (name, step, location, revision, the Hub
commit it resolved to, weights hash, duplicates excluded), reused while the checkpoint
params (and, for the lab, the checkpoint folders) are unchanged. Wave 2: one unit per
(checkpoint, language), ``vectors/<checkpoint>/<lang>.safetensors``, grouped per checkpoint
(one model load per group); reused while the weights, the language's words and the
extraction params (not the batch size or device) are unchanged. The last checkpoint also
gets the layer sweep ``extraction.sweep_layers`` (Figure 2) and the sentences of the words
labelled for ``probe.sweep_attributes``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch

from ..params import result_config
from ..pipeline import Context, Resources, StageSummary, Unit, code_version
from ..store import ArtefactError, content_sha256, read_table, stream_tensors, write_json
from ._common import checkpoint_rows, sweep_attributes, vectors_path

name, notebook, upstream = "extraction", "02_extraction", ("data_prep", "pretrain")
CODE = ("xalign.extraction", "xalign.checkpoints", "xalign.stages.extraction")


def _series_unit(ctx: Context) -> Unit:
    P, run = ctx.P, ctx.run_dir
    inputs = {}
    if P.checkpoints.source == "lab":
        for d in _lab_folders(P):
            inputs[d.name] = ctx.sha(d)
    return Unit(name, "checkpoints", result_config(P.checkpoints), inputs, (run / "checkpoints.json",),
                write_series, {"P": P}, code_version("xalign.checkpoints", "xalign.stages.extraction"))


def _lab_folders(P: Any) -> list[Path]:
    """The lab's checkpoint folders: those of ``pretrain.checkpoint_steps`` (not whatever is on
    disk) while stage 0 trains them; else every ``checkpoints/step-*``."""
    out = P.run_dir() / "checkpoints"
    if P.pretrain.enabled:
        return [out / f"step-{s:06d}" for s in P.pretrain.checkpoint_steps]
    return sorted(out.glob("step-*"))


def write_series(P: Any) -> dict:
    """``checkpoints.json`` for the params' series (:func:`xalign.checkpoints.series_table`)."""
    import logging

    from .. import checkpoints as ck

    cp = P.checkpoints
    ckpts = ck.series_of(cp, P.run_dir())
    if cp.source == "lab":
        want = [d.name for d in _lab_folders(P)]
        missing = sorted(set(want) - {c.name for c in ckpts})
        if missing:
            raise FileNotFoundError(f"{P.run_dir() / 'checkpoints'}: no {', '.join(missing)} of "
                                    f"pretrain.checkpoint_steps (run notebook 00_pretrain first)")
        ckpts = [c for c in ckpts if c.name in want]
    if not ckpts:
        raise FileNotFoundError(f"checkpoints.source={cp.source}: no checkpoints found "
                                f"(for 'lab', run notebook 00_pretrain first)")
    rows = ck.series_table(ckpts)  # hub: metadata only, duplicates found before any download
    for r in rows:
        if r["excluded"]:
            logging.getLogger("xalign.runs").warning("checkpoint %s has the same weights as %s: excluded",
                                                     r["name"], ", ".join(r["duplicate_of"]))
    write_json(rows, P.run_dir() / "checkpoints.json")
    return {"checkpoints": len(rows), "excluded": sum(bool(r["excluded"]) for r in rows)}


def plan(ctx: Context) -> Iterator[list[Unit]]:
    """The series, then one unit per (checkpoint, language) with labelled words."""
    P, run, ep = ctx.P, ctx.run_dir, ctx.P.extraction
    yield [_series_unit(ctx)]
    all_labels = read_table(run / "data" / "labels.parquet")
    sweep_attrs = sweep_attributes(P)
    ckpts, units = checkpoint_rows(run), []
    code = code_version(*CODE)
    for i, c in enumerate(ckpts):
        last = i == len(ckpts) - 1
        wanted = [*P.probe.attributes, *sweep_attrs] if last else list(P.probe.attributes)
        lab_c = all_labels[all_labels.attribute.isin(wanted)]
        group = []
        for lang in P.data.languages:
            need = lab_c[lab_c.language == lang]
            if need.empty:
                ctx.skip(f"{c['name']}/{lang}: no labelled words for {wanted}")
                continue
            keep = sorted(set(int(x) for x in need.sent_idx))
            words_f = run / "data" / "words" / f"{lang}.parquet"
            config = {"checkpoint": c["name"], "revision": c["revision"], "language": lang,
                      **result_config(ep, {"sweep_layers"}), "sweep_layers": ep.sweep_layers if last else None,
                      "dtype": P.checkpoints.dtype, "sentences": content_sha256(keep)}
            dest = vectors_path(run, c["name"], lang)
            group.append(Unit(name, f"{c['name']}/{lang}", config,
                              {"weights": c["weights_sha256"], "words": ctx.sha(words_f)}, (dest,), extract,
                              {"P": P, "c": c, "lang": lang, "words": words_f, "sentences": keep, "last": last,
                               "dest": dest}, code, Resources(gpu=True, group=c["name"])))
        if group:
            group[-1].args["release"] = True  # the checkpoint's last unit may free its weights
        units += group
    yield units


_MODEL: dict[str, Any] = {}  # one loaded checkpoint per process: a group's units share it


def _model(P: Any, c: dict) -> tuple[Any, Any, int]:
    """(model on the device, tokenizer, number of hidden states) of checkpoint row ``c``."""
    from .. import checkpoints as ck
    from .. import extraction as ex

    key = f"{c['name']}|{c['location']}|{c['revision']}|{P.checkpoints.dtype}|{P.extraction.device}"
    if _MODEL.get("key") != key:
        _MODEL.clear()
        model, tok = ck.load_model(ck.checkpoint_from_row(c), dtype=P.checkpoints.dtype)
        model.to(ex.resolve_device(P.extraction.device))
        _MODEL.update(key=key, model=model, tok=tok, n_hs=ck.num_hidden_states(model))
    return _MODEL["model"], _MODEL["tok"], _MODEL["n_hs"]


def check_layers(layers: list[int], n_hs: int, name: str, key: str) -> None:
    """Raises ValueError (one line, naming the params key and the valid range 1..n_hs)."""
    bad = [l for l in layers if not 1 <= l <= n_hs]
    if bad:
        raise ValueError(f"{key}: layer(s) {bad} out of range for {name} "
                         f"(valid 1..{n_hs}; l = 1 is the embedding output)")


class _VectorsFile:
    """A :class:`xalign.extraction.VectorSink` writing ``layer_<l>``: (n_words, d) float32 and
    ``sent_idx``/``word_idx``: (n_words,) int64 with :func:`xalign.store.stream_tensors`."""

    def __init__(self, dest: Path, meta: dict[str, Any], stack: contextlib.ExitStack) -> None:
        self.dest, self.meta, self.stack = dest, meta, stack
        self.writer: Any = None

    def open(self, n_words: int, d: int, layers: list[int]) -> None:
        specs = {f"layer_{l}": ((n_words, d), torch.float32) for l in layers}
        specs.update(sent_idx=((n_words,), torch.int64), word_idx=((n_words,), torch.int64))
        self.writer = self.stack.enter_context(stream_tensors(self.dest, specs, self.meta))

    def write(self, layer: int, start: int, block: torch.Tensor) -> None:
        self.writer.write_rows(f"layer_{layer}", start, block)


def extract(P: Any, c: dict, lang: str, words: Path, sentences: list[int], last: bool, dest: Path,
            release: bool = False) -> dict:
    """One (checkpoint, language)'s vectors file; layers checked against the model first.

    Raises:
        ValueError: a layer out of range (``extraction.layers`` or ``extraction.sweep_layers``).
        ArtefactError: hidden states not finite (naming layer, sentence, word); nothing written.
    """
    from .. import checkpoints as ck
    from .. import extraction as ex

    ep = P.extraction
    model, tok, n_hs = _model(P, c)
    sweep = list(range(1, n_hs + 1)) if ep.sweep_layers == "all" else list(ep.sweep_layers or [])
    check_layers(list(ep.layers), n_hs, c["name"], "extraction.layers")
    check_layers(sweep, n_hs, c["name"], "extraction.sweep_layers")  # a series shares its depth
    layers = sorted(set(ep.layers) | set(sweep)) if last else list(ep.layers)
    w = read_table(words)
    sub = w[w.sent_idx.isin(sentences)].sort_values(["sent_idx", "word_idx"])
    sents = [g.form.tolist() for _, g in sub.groupby("sent_idx", sort=True)]
    meta = {"checkpoint": c["name"], "step": c["step"], "location": c["location"], "revision": c["revision"],
            "language": lang, "layers": layers, "tokenization": ep.tokenization, "hidden_size": ck.hidden_size(model)}
    with contextlib.ExitStack() as stack:  # streamed sentence by sentence; the file appears when complete
        sink = _VectorsFile(dest, meta, stack)
        try:
            res = ex.extract_word_vectors(model, tok, sents, layers, mode=ep.tokenization, batch_size=ep.batch_size,
                                          max_length=ep.max_length, bf16=ep.bf16, sink=sink)
        except FloatingPointError as e:  # NaN/inf: nothing written
            raise ArtefactError(f"{c['name']}/{lang}: hidden states not finite: {e}") from None
        flat = sub[["sent_idx", "word_idx"]].to_numpy()[res.word_index.numpy()]
        sink.writer.write_rows("sent_idx", 0, torch.as_tensor(flat[:, 0], dtype=torch.int64))
        sink.writer.write_rows("word_idx", 0, torch.as_tensor(flat[:, 1], dtype=torch.int64))
        sink.writer.metadata.update(n_sentences_skipped=res.n_sentences_skipped, n_words_total=res.n_words_total)
    if release:
        _MODEL.clear()
        if not P.transfer.tasks:  # no later stage needs the weights
            release_weights(P, c)
    skipped = [f"{c['name']}/{lang}: {res.n_sentences_skipped} sentences longer than max_length={ep.max_length}"
               ] if res.n_sentences_skipped else []
    return {"words": len(flat), "sentences_skipped": res.n_sentences_skipped, "skipped": skipped}


def release_weights(P: Any, c: dict) -> None:
    """``checkpoints.keep_weights: false``: drop a Hub checkpoint's files from the HF cache."""
    import logging

    from .. import checkpoints as ck

    if not P.checkpoints.keep_weights:
        freed = ck.release_files(ck.checkpoint_from_row(c))
        if freed:
            logging.getLogger("xalign.runs").info("checkpoint %s: removed from the HF cache (%.2f GB freed; "
                                                  "keep_weights: false)", c["name"], freed / 1e9)


def gather(ctx: Context, s: StageSummary, units: list[Unit]) -> None:
    """Table ``extracted``: words and skipped sentences per (checkpoint, language)."""
    rows = [{"checkpoint": u.args["c"]["name"], "language": u.args["lang"], "words": n.get("words"),
             "sentences_skipped": n.get("sentences_skipped")}
            for u in units if u.key != "checkpoints" for n in [ctx.notes(u)]]
    s.tables["extracted"] = pd.DataFrame(rows)
