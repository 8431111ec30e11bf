"""Groundwork of the causal ablation stage (issue 15) on stage 5's kept transfer model.

A tiny lab (two checkpoints of the minimal params, POS only, one fine-tuning seed, 6 epochs
of 8 optimiser steps, enough to beat the majority tag on English; stages 0-2 and 5, about
10 s on one thread) is run in a temporary folder.
Each stage-5 unit must leave its kept adapter + head as a recorded folder output;
:func:`xalign.transfer.load_finetuned` must give back a model whose zero-shot scores
(:func:`xalign.transfer.score_with_ablation` with no neuron) are the unit's stored ones
exactly; ablating all d neurons of the last layer must leave only the head's bias, so one
tag for every word (at most the majority tag's accuracy: a drop where the model beats it); the hooks must be gone afterwards. An XNLI round trip (finetune_xnli with
``adapter_dir``, reload, score) on the lab's checkpoint and the real XNLI bundle closes it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from xalign import runs
from xalign.params import load_params
from xalign.store import path_sha256, read_table

REPO = Path(__file__).resolve().parents[1]
CKPT = "step-000010"


def _lab_params(tmp: Path):
    return load_params(REPO / "params" / "minimal.yaml", overrides={
        "run_name": "transfer-ablation", "runs_dir": str(tmp / "runs"), "figures_dir": str(tmp / "figures"),
        "pretrain.checkpoint_steps": [5, 10], "pretrain.max_lines_per_source": 50,
        "data.languages": ["en", "es"], "data.max_sentences_per_language": 60, "data.split_seeds": [0],
        "transfer.tasks": ["pos"], "transfer.seeds": [0], "transfer.batch_size": 8, "transfer.epochs": 6,
        "transfer.max_train_examples": 64, "transfer.max_eval_examples": 8})


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Stages 0-2 and 5 of a tiny lab; returns the params."""
    P = _lab_params(tmp_path_factory.mktemp("transfer_ablation"))
    for stage in ("pretrain", "data_prep", "extraction", "transfer"):
        getattr(runs, f"run_{stage}")(P)
    return P


def _files(P, name: str = CKPT) -> tuple[str, str, dict]:
    from xalign import checkpoints as ck
    from xalign.stages._common import checkpoint_rows

    c = {r["name"]: r for r in checkpoint_rows(P.run_dir())}[name]
    model_dir, tok_dir = ck.local_files(ck.checkpoint_from_row(c))
    return model_dir, tok_dir, c


@pytest.fixture(scope="module")
def reloaded(lab):
    """(params, model, tokenizer, config, {language: POS sentences}, the unit's stored rows)."""
    from xalign.stages import transfer as st
    from xalign.transfer import TransferConfig, load_finetuned

    P = lab
    cfg = TransferConfig.from_params(P.transfer, seed=0, task="pos")
    model_dir, tok_dir, _ = _files(P)
    dest = P.run_dir() / "transfer" / "parts" / CKPT / "pos.seed-0.parquet"
    model, tok = load_finetuned(model_dir, st.adapter_path(dest), "pos", cfg, tokenizer_path=tok_dir)
    _, dev, evals = st.pos_sets(P)
    return P, model, tok, cfg, {"en-dev": dev, **evals}, read_table(dest)


def test_adapter_is_a_recorded_output_and_recomputed_alone(lab):
    from xalign.pipeline.manifest import Manifest
    from xalign.pipeline.scheduler import Context
    from xalign.stages import STAGES
    from xalign.transfer import ADAPTER_INFO

    P = lab
    run = P.run_dir()
    parts, _ = list(STAGES["transfer"].plan(Context(P, run, Manifest.open(run), STAGES)))
    assert [u.outputs[2].name for u in parts] == ["pos.seed-0.adapter"] * 2
    m = Manifest.open(run)
    for u in parts:
        folder = u.outputs[2]
        assert {"adapter_config.json", "adapter_model.safetensors", ADAPTER_INFO} <= {f.name for f in folder.iterdir()}
        e = m.artefacts[m.key(folder)]
        assert e["identity"] == u.identity and e["sha256"] == path_sha256(folder)
        assert not list(folder.parent.glob(".*.tmp"))  # no temporary folder left behind
    folder = parts[0].outputs[2]
    before = path_sha256(folder)
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    s = runs.run_transfer(P)
    assert (s.computed, s.reused) == (1, 2)  # that unit; same scores, so the results unit is reused
    assert path_sha256(folder) == before  # the same seeded run saves the same bytes


def test_reloaded_model_gives_the_units_scores(reloaded):
    from xalign.checkpoints import num_hidden_states
    from xalign.transfer import POS_METRICS, score_with_ablation

    P, model, tok, cfg, sets, stored = reloaded
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    last = num_hidden_states(model)
    assert set(stored.language) == set(sets)
    for lang, sents in sets.items():
        got = score_with_ablation(model, tok, "pos", sents, last, [], config=cfg)
        want = stored[stored.language == lang].set_index("metric")["value"]
        assert set(got) == set(POS_METRICS)
        for metric in POS_METRICS:
            assert got[metric] == want[metric], (lang, metric)  # exactly: same model, same path


def _head_bias(model) -> torch.Tensor:
    (b,) = [p for n, p in model.named_parameters() if n.endswith("classifier.modules_to_save.default.bias")]
    return b.detach()


def test_ablating_every_neuron_of_the_last_layer_leaves_the_heads_bias(reloaded):
    from xalign.checkpoints import hidden_size, num_hidden_states
    from xalign.transfer import POS_LABELS, _encode_pos, score_with_ablation

    P, model, tok, cfg, sets, stored = reloaded
    d, last = hidden_size(model), num_hidden_states(model)
    tag = POS_LABELS[int(_head_bias(model).argmax())]  # zero hidden state: logits = bias
    dropped = []
    for lang, sents in sets.items():
        gold = [t for s in _encode_pos(tok, sents, cfg.max_length, "t").gold_tags for t in s]
        got = score_with_ablation(model, tok, "pos", sents, last, list(range(d)), config=cfg)
        majority = pd.Series(gold).value_counts(normalize=True).iloc[0]
        assert got["accuracy"] == pytest.approx(sum(g == tag for g in gold) / len(gold), abs=1e-12)
        assert got["accuracy"] <= majority + 1e-12
        clean = stored[(stored.language == lang) & (stored.metric == "accuracy")].value.item()
        if clean > majority:
            assert got["accuracy"] < clean
            dropped.append(lang)
    assert {"en-dev", "en"} <= set(dropped)  # the trained model beats the majority tag on English


def test_hooks_are_removed_and_arguments_checked(reloaded):
    from xalign.ablation import ablate
    from xalign.checkpoints import hidden_size, num_hidden_states
    from xalign.transfer import score_with_ablation

    P, model, tok, cfg, sets, _ = reloaded
    d, last = hidden_size(model), num_hidden_states(model)
    ids = tok(["the cat sat on the mat", "el gato"], return_tensors="pt", padding=True)

    def logits() -> torch.Tensor:
        with torch.inference_mode():
            return model(**ids).logits.clone()

    before = logits()
    with ablate(model, 2, list(range(d // 2))):
        assert not torch.equal(logits(), before)  # the ablation acts on the model
    sents = sets["en"]
    score_with_ablation(model, tok, "pos", sents, last, list(range(d)), config=cfg)
    score_with_ablation(model, tok, "pos", sents, 2, torch.arange(0, d, 3), "mean", torch.randn(d), config=cfg)
    assert torch.equal(logits(), before)
    for bad, kw in [("out of range", dict(layer=last + 1, neurons=[])),
                    ("needs values", dict(layer=last, neurons=[], mode="mean")),
                    ("out of range", dict(layer=last, neurons=[d]))]:
        with pytest.raises(ValueError, match=bad):
            score_with_ablation(model, tok, "pos", sents, config=cfg, **kw)
    with pytest.raises(ValueError, match="eval_set is empty"):
        score_with_ablation(model, tok, "pos", [], last, [], config=cfg)
    assert torch.equal(logits(), before)


def test_load_finetuned_refuses_a_wrong_folder(lab, tmp_path):
    from xalign.stages import transfer as st
    from xalign.transfer import ADAPTER_INFO, TransferConfig, load_finetuned

    P = lab
    cfg = TransferConfig.from_params(P.transfer, seed=0, task="pos")
    model_dir, tok_dir, _ = _files(P)
    folder = st.adapter_path(P.run_dir() / "transfer" / "parts" / CKPT / "pos.seed-0.parquet")
    with pytest.raises(ValueError, match=rf"{ADAPTER_INFO}: field 'task' is 'pos', expected 'xnli'"):
        load_finetuned(model_dir, folder, "xnli", cfg, tokenizer_path=tok_dir)
    with pytest.raises(FileNotFoundError, match="not a saved transfer adapter"):
        load_finetuned(model_dir, tmp_path, "pos", cfg, tokenizer_path=tok_dir)


@pytest.mark.parametrize("qlora", [False, True], ids=["lora", "qlora"])
def test_xnli_round_trip(lab, data_root: Path, tmp_path, qlora: bool):
    """Also QLoRA (nf4 on CPU, float32 compute): the reload quantises the base the same way."""
    from xalign.checkpoints import hidden_size, num_hidden_states
    from xalign import data as D
    from xalign.transfer import TransferConfig, finetune_xnli, load_finetuned, score_with_ablation, split_xnli_dev

    model_dir, tok_dir, _ = _files(lab)
    train, dev = split_xnli_dev(D.read_xnli(data_root, "dev", "en"), 0.1, seed=0)
    train, dev = train.head(32), dev.head(16)
    evals = {lang: D.read_xnli(data_root, "test", lang, max_rows=16) for lang in ("fr", "zh")}
    cfg = TransferConfig(epochs=1, batch_size=16, max_length=48, seed=1, qlora=qlora, compute_dtype="float32")
    folder = tmp_path / "xnli.seed-1.adapter"
    df = finetune_xnli(model_dir, train, dev, evals, cfg, tokenizer_path=tok_dir, adapter_dir=folder)
    model, tok = load_finetuned(model_dir, folder, "xnli", cfg, tokenizer_path=tok_dir)
    if qlora:
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    with pytest.raises(ValueError, match="field 'qlora'"):
        load_finetuned(model_dir, folder, "xnli", TransferConfig(qlora=not qlora), tokenizer_path=tok_dir)
    last = num_hidden_states(model)
    for lang, table in [("en-dev", dev), *evals.items()]:
        got = score_with_ablation(model, tok, "xnli", table, last, [], config=cfg)
        assert got == {"accuracy": df[df.language == lang].value.item()}
    # the sequence head has no bias: a zero last hidden state gives logits 0, argmax "entailment"
    allz = score_with_ablation(model, tok, "xnli", dev, last, list(range(hidden_size(model))), config=cfg)
    assert allz["accuracy"] == pytest.approx((dev.label == "entailment").mean(), abs=1e-12)


def test_save_finetuned_is_atomic(reloaded, tmp_path, monkeypatch):
    from xalign.store import path_sha256
    from xalign.transfer import ADAPTER_INFO, save_finetuned

    P, model, tok, cfg, sets, _ = reloaded
    dest = tmp_path / "pos.seed-0.adapter"
    stale = tmp_path / ".pos.seed-0.adapter.~{}~999999999~abc.tmp".format(__import__("socket").gethostname())
    stale.mkdir()  # a killed writer's temporary folder (no such pid): removed
    save_finetuned(model, dest, "pos", cfg)
    first = path_sha256(dest)
    save_finetuned(model, dest, "pos", cfg)  # an existing folder is replaced
    assert path_sha256(dest) == first and (dest / ADAPTER_INFO).is_file() and not (dest / "README.md").exists()

    def half_written(folder, **kw):
        (Path(folder) / "adapter_config.json").write_text("{}")
        raise OSError("No space left on device")

    monkeypatch.setattr(model, "save_pretrained", half_written)
    with pytest.raises(OSError, match="No space"):
        save_finetuned(model, dest, "pos", cfg)
    assert path_sha256(dest) == first  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name]  # no temporary folder left
