"""Stage 0, the tiny-model lab: corpus, tokenizer and pretraining on the bundle's real text."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from xalign import lab

LANGS = ["en", "zh", "vi", "ar", "ca"]
TINY = dict(hidden_size=32, n_layer=2, n_head=2, seq_len=32, batch_size=8, lr=3e-2, warmup_steps=3)


@pytest.fixture(scope="module")
def corpus(data_root):
    return lab.build_corpus(data_root, LANGS, max_lines_per_source=80, seed=0)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return lab.train_tokenizer(corpus, vocab_size=600)


@pytest.fixture(scope="module")
def run(corpus, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("lab") / "checkpoints"
    dirs = lab.pretrain(corpus, tokenizer, out, vocab_size=600, checkpoint_steps=[1, 10, 30], seed=0,
                        threads=1, device="cpu", **TINY)
    return out, dirs


# ---- corpus ------------------------------------------------------------------------------

def _raw(data_root: Path, source: str, lang: str) -> list[str]:
    return [s.strip() for s in (data_root / "text" / source / f"{lang}.txt").read_text("utf-8").splitlines()
            if s.strip()]


def test_corpus_is_a_seeded_deterministic_sample(data_root, corpus):
    again = lab.build_corpus(data_root, LANGS, max_lines_per_source=80, seed=0)
    other = lab.build_corpus(data_root, LANGS, max_lines_per_source=80, seed=1)
    assert corpus == again
    assert corpus != other
    # 5 languages x 2 sources x 80 lines, minus Catalan PAN-X (absent upstream)
    assert len(corpus) == 9 * 80
    assert all(s and s == s.strip() for s in corpus)


def test_corpus_lines_come_from_the_requested_sources(data_root):
    got = lab.build_corpus(data_root, ["ca"], sources=("tatoeba", "panx"), max_lines_per_source=50, seed=3)
    raw = set(_raw(data_root, "tatoeba", "ca"))
    assert len(got) == 50 and set(got) <= raw  # no PAN-X Catalan: only Tatoeba lines
    full = lab.build_corpus(data_root, ["ta"], sources=("tatoeba",), max_lines_per_source=None)
    assert sorted(full) == sorted(_raw(data_root, "tatoeba", "ta"))


def test_chinese_panx_spaces_removed(data_root):
    got = lab.build_corpus(data_root, ["zh"], sources=("panx",), max_lines_per_source=200, seed=0)
    raw = {s.replace(" ", "") for s in _raw(data_root, "panx", "zh")}
    cjk_space = re.compile(r"[\u4e00-\u9fff] [\u4e00-\u9fff]")
    assert not any(cjk_space.search(s) for s in got)
    assert all(s in raw for s in got)
    assert sum(bool(re.search(r"[\u4e00-\u9fff]{2}", s)) for s in got) > 150


def test_extra_texts_are_a_source(data_root):
    extra = {"en": ["The cat sat on the mat .", "  ", "UD sentence two ."]}
    got = lab.build_corpus(data_root, ["en"], sources=("tatoeba", "ud"), max_lines_per_source=10, extra_texts=extra)
    assert "The cat sat on the mat ." in got and "UD sentence two ." in got
    assert len(got) == 12


@pytest.mark.parametrize("kwargs, match", [
    (dict(languages=["xx"]), "'xx'"),
    (dict(languages=["en"], sources=("wiki",)), "unknown text source"),
    (dict(languages=["en"], sources=("ud",)), "extra_texts"),
    (dict(languages=["en"], extra_texts={"fr": ["x"]}), "extra_texts"),
    (dict(languages=["en"], max_lines_per_source=0), "max_lines_per_source"),
])
def test_corpus_errors(data_root, kwargs, match):
    with pytest.raises(ValueError, match=match):
        lab.build_corpus(data_root, **kwargs)


# ---- tokenizer ---------------------------------------------------------------------------

def test_tokenizer_is_lossless_and_round_trips(tokenizer, corpus, tmp_path):
    from transformers import AutoTokenizer

    assert 300 < len(tokenizer) <= 600
    assert (tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == \
        ("<unk>", "<s>", "</s>", "<pad>")
    tokenizer.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    sample = corpus[:50] + ["Hôm nay 我们 مرحبا  double  space", "émoji 🙂"]
    for s in sample:
        ids = tokenizer(s)["input_ids"]
        assert loaded(s)["input_ids"] == ids
        assert tokenizer.decode(ids) == s  # byte-level BPE: no unknown characters
    # it learnt merges from the text: fewer tokens than UTF-8 bytes
    n_tok = sum(len(x) for x in tokenizer(corpus[:200])["input_ids"])
    assert n_tok < 0.6 * sum(len(s.encode("utf-8")) for s in corpus[:200])


def test_tokenizer_errors():
    with pytest.raises(ValueError, match="vocab_size"):
        lab.train_tokenizer(["some text"], vocab_size=100)
    with pytest.raises(ValueError, match="no non-empty text"):
        lab.train_tokenizer(["", "  "], vocab_size=400)


# ---- pretraining -------------------------------------------------------------------------

def test_pretrain_saves_checkpoints_and_loss_decreases(run, tokenizer):
    out, dirs = run
    assert [d.name for d in dirs] == ["step-000001", "step-000010", "step-000030"]
    states = [lab.read_training_state(d) for d in dirs]
    assert [s["step"] for s in states] == [1, 10, 30]
    assert [s["tokens_seen"] for s in states] == [k * 8 * 32 for k in (1, 10, 30)]
    assert all(s["seed"] == 0 for s in states)
    # random init: loss ~ ln(vocab); it must drop clearly on held-out blocks
    assert abs(states[0]["eval_loss"] - math.log(len(tokenizer))) < 0.5
    assert states[2]["eval_loss"] < states[1]["eval_loss"] < states[0]["eval_loss"]
    assert states[2]["eval_loss"] < states[0]["eval_loss"] - 0.8
    assert states[2]["loss"] < states[0]["loss"] - 0.8
    assert not list(out.glob(".*tmp"))  # no leftover temporary folders


def test_checkpoint_loads_back_and_reproduces_eval_loss(run, corpus):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, dirs = run
    state = lab.read_training_state(dirs[-1])
    model = AutoModelForCausalLM.from_pretrained(str(dirs[-1]), attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(str(dirs[-1]))
    assert model.config.hidden_size == TINY["hidden_size"] and model.config.n_layer == TINY["n_layer"]
    # rebuild the held-out split exactly as pretrain does and recompute its loss
    blocks = lab.pack_blocks(corpus, tok, TINY["seq_len"])
    blocks = blocks[torch.randperm(len(blocks), generator=torch.Generator().manual_seed(0))]
    held = blocks[: state["n_eval_blocks"]]
    with torch.no_grad():
        losses = [float(model(input_ids=held[i:i + 8], labels=held[i:i + 8]).loss) * len(held[i:i + 8])
                  for i in range(0, len(held), 8)]
    assert sum(losses) / len(held) == pytest.approx(state["eval_loss"], abs=1e-4)


def _weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(d / "model.safetensors"))


def test_pretrain_is_deterministic(run, corpus, tokenizer, tmp_path):
    _, dirs = run
    # same schedule (the learning rate at step 10 depends on the last step)
    again = lab.pretrain(corpus, tokenizer, tmp_path / "a", vocab_size=600, checkpoint_steps=[10, 30], seed=0,
                         threads=1, device="cpu", **TINY)
    other = lab.pretrain(corpus, tokenizer, tmp_path / "b", vocab_size=600, checkpoint_steps=[10, 30], seed=1,
                         threads=1, device="cpu", **TINY)
    w0, w1, w2 = _weights(dirs[1]), _weights(again[0]), _weights(other[0])
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert not all(torch.equal(w0[k], w2[k]) for k in w0)
    assert lab.read_training_state(again[0])["eval_loss"] == lab.read_training_state(dirs[1])["eval_loss"]


@pytest.mark.parametrize("change, match", [
    (dict(checkpoint_steps=[10, 5]), "checkpoint_steps"),
    (dict(vocab_size=320), "vocab_size"),
    (dict(n_head=3), "n_head"),
])
def test_pretrain_errors(corpus, tokenizer, tmp_path, change, match):
    kw = dict(TINY, vocab_size=600, checkpoint_steps=[2])
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        lab.pretrain(corpus, tokenizer, tmp_path, **kw)


def test_pretrain_too_little_text(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="fewer than"):
        lab.pretrain(["a few words only"] * 3, tokenizer, tmp_path, vocab_size=600,
                     checkpoint_steps=[2], **TINY)


def test_interrupted_pretraining_resumes_with_identical_weights(run, corpus, tokenizer, tmp_path, monkeypatch):
    _, dirs = run  # uninterrupted: steps 1, 10, 30
    kw = dict(vocab_size=600, checkpoint_steps=[1, 10, 30], seed=0, threads=1, device="cpu", **TINY)
    out = tmp_path / "ckpt"
    real = lab._save_resume_state

    def killed_after_step_10(out_dir, state):
        real(out_dir, state)
        if state["step"] == 10:
            raise KeyboardInterrupt  # as if killed right after the step-10 checkpoint
    monkeypatch.setattr(lab, "_save_resume_state", killed_after_step_10)
    with pytest.raises(KeyboardInterrupt):
        lab.pretrain(corpus, tokenizer, out, **kw)
    monkeypatch.setattr(lab, "_save_resume_state", real)
    assert (out / lab.RESUME_STATE).is_file() and not (out / "step-000030").exists()
    kept = (out / "step-000010" / "model.safetensors").stat().st_mtime_ns

    new = []
    got = lab.pretrain(corpus, tokenizer, out, on_checkpoint=new.append, **kw)
    assert [d.name for d in got] == ["step-000001", "step-000010", "step-000030"]
    assert [d.name for d in new] == ["step-000030"]  # resumed after step 10, not restarted
    assert (out / "step-000010" / "model.safetensors").stat().st_mtime_ns == kept
    assert not (out / lab.RESUME_STATE).exists()  # removed when the series is complete
    w_ref, w_got = _weights(dirs[-1]), _weights(got[-1])
    assert all(torch.equal(w_ref[k], w_got[k]) for k in w_ref)
    s_ref, s_got = lab.read_training_state(dirs[-1]), lab.read_training_state(got[-1])
    for key in ("loss", "eval_loss", "lr", "tokens_seen"):
        assert s_ref[key] == s_got[key], key


@pytest.mark.parametrize("case", ["other_args", "corrupt", "weights_changed"])
def test_pretraining_resume_state_that_does_not_fit_is_ignored(corpus, tokenizer, tmp_path, monkeypatch, case):
    kw = dict(vocab_size=600, checkpoint_steps=[2, 4], seed=0, threads=1, device="cpu", **TINY)
    out = tmp_path / "ckpt"
    real = lab._save_resume_state

    def killed(out_dir, state):
        real(out_dir, state)
        raise KeyboardInterrupt
    monkeypatch.setattr(lab, "_save_resume_state", killed)
    with pytest.raises(KeyboardInterrupt):
        lab.pretrain(corpus, tokenizer, out, **kw)
    monkeypatch.setattr(lab, "_save_resume_state", real)
    if case == "other_args":
        kw["lr"] = 1e-2
    elif case == "corrupt":
        f = out / lab.RESUME_STATE
        f.write_bytes(f.read_bytes()[:100])
    else:
        f = out / "step-000002" / "model.safetensors"
        f.write_bytes(f.read_bytes()[:-4] + b"\0\0\0\0")
    new = []
    lab.pretrain(corpus, tokenizer, out, on_checkpoint=new.append, **kw)
    assert [d.name for d in new] == ["step-000002", "step-000004"]  # trained from step 0
