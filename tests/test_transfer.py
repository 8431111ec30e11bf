"""Stage 5: (Q)LoRA fine-tuning on English and zero-shot evaluation (xalign.transfer).

A tiny random BLOOM (hidden 64, 2 layers, 4 heads; 64 keeps every Linear in-feature a
multiple of bitsandbytes' 4-bit block size) with a small byte-level BPE trained on real
bundle text is fine-tuned on real UD English GUM and real XNLI rows.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from xalign.params import TransferParams
from xalign import data as D
from xalign.transfer import (DEV_LANGUAGE, _EncodedTrain, ResumeFile, XnliTsvStream, POS_LABELS, XNLI_LABELS, TransferConfig, _load, _encode_pos,
                             _predict, _train, accuracy_bootstrap_ci, bootstrap_sums, finetune_pos, finetune_xnli,
                             percentile_interval, pos_bootstrap_ci, pos_scores, pos_sentence_stats,
                             pos_stats_scores, split_xnli_dev)



# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------
def _tiny_tokenizer(lines: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def tiny_bloom(tmp_path_factory, data_root: Path) -> str:
    """A random BLOOM (hidden 64, 2 layers, n_head 4) + 1000-type BPE, saved to a temp folder."""
    from transformers import BloomConfig, BloomForCausalLM

    lines = []
    for lang, n in [("en", 400), ("fr", 150), ("zh", 100)]:
        with open(data_root / "text" / "tatoeba" / f"{lang}.txt", encoding="utf-8") as f:
            lines += [next(f).strip() for _ in range(n)]
    tok = _tiny_tokenizer(lines, 1000)
    out = tmp_path_factory.mktemp("tiny_bloom")
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = BloomConfig(vocab_size=len(tok), hidden_size=64, n_layer=2, n_head=4, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    BloomForCausalLM(cfg).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def gum(data_root: Path):
    train = D.read_pos_sentences(data_root, "en", split="train", max_sentences=320)
    dev = D.read_pos_sentences(data_root, "en", split="dev", max_sentences=120)
    fr = D.read_pos_sentences(data_root, "fr", split="test", max_sentences=40)
    return train, dev, {"fr": fr}


def _majority_baseline(train, dev) -> float:
    tag = Counter(t for _, tags in train for t in tags).most_common(1)[0][0]
    words = [t for _, tags in dev for t in tags]
    return sum(t == tag for t in words) / len(words)


POS_CFG = dict(epochs=3, lr=5e-3, batch_size=16, max_length=64, seed=0)


# ---------------------------------------------------------------------------------------
# metrics and readers
# ---------------------------------------------------------------------------------------
def test_pos_scores_hand_built():
    # accuracy 3/4; NOUN: tp 3, fp 1, fn 0 -> 6/7; VERB: tp 0, fn 1 -> 0; macro 3/7
    # seqeval reads N+OUN / V+ERB as chunks: gold spans OUN[0..2], ERB[3]; predicted OUN[0..3]:
    # no span matches -> F1 0
    m = pos_scores([["NOUN", "NOUN", "NOUN", "VERB"]], [["NOUN", "NOUN", "NOUN", "NOUN"]])
    assert m["accuracy"] == pytest.approx(0.75) and m["macro_f1"] == pytest.approx(3 / 7)
    assert m["f1"] == 0.0
    # runs of one tag are one span: DET NOUN VERB vs DET NOUN NOUN -> gold 3 spans, predicted 2
    # (ET[0], OUN[1..2]); 1 correct: P 1/2, R 1/3, F1 0.4 (accuracy 2/3)
    m = pos_scores([["DET", "NOUN", "VERB"]], [["DET", "NOUN", "NOUN"]])
    assert m["f1"] == pytest.approx(0.4) and m["accuracy"] == pytest.approx(2 / 3)
    # ADJ is predicted but absent from gold: not averaged (macro = (0 + 1) / 2, not /3)
    m = pos_scores([["NOUN"], ["VERB"]], [["ADJ"], ["VERB"]])
    assert m["accuracy"] == pytest.approx(0.5) and m["macro_f1"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)  # spans OUN, ERB vs DJ, ERB: P = R = 1/2
    assert pos_scores([["DET", "NOUN"]], [["DET", "NOUN"]]) == {"accuracy": 1.0, "f1": 1.0, "macro_f1": 1.0}
    with pytest.raises(ValueError, match="sentence 0"):
        pos_scores([["DET", "NOUN"]], [["DET"]])
    with pytest.raises(ValueError, match="gold sentences"):
        pos_scores([["DET"]], [])
    with pytest.raises(ValueError, match="no words"):
        pos_scores([[]], [[]])


def _random_tagging(rng: np.random.Generator, n: int, tags: list[str], p_repeat: float, p_error: float):
    """n sentences of 1-30 words; a tag repeats its predecessor with p_repeat (runs = spans);
    each predicted tag is replaced by a random one with p_error."""
    gold, pred = [], []
    for _ in range(n):
        g = [tags[rng.integers(len(tags))]]
        for _ in range(int(rng.integers(0, 30))):
            g.append(g[-1] if rng.random() < p_repeat else tags[rng.integers(len(tags))])
        gold.append(g)
        pred.append([tags[rng.integers(len(tags))] if rng.random() < p_error else t for t in g])
    return gold, pred


def test_sentence_counts_reproduce_seqeval_exactly():
    """Summed per-sentence span counts give seqeval's precision, recall and F1 bit for bit, also with
    X (seqeval's chunk type "_", which can join sentences) and S-tags (SCONJ, SYM: one-word chunks)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    # a seqeval span across a sentence break: gold X | X VERB is one "_" chunk from word 1 to 3
    st = pos_sentence_stats([["NOUN", "X"], ["X", "VERB"]], [["NOUN", "X"], ["NOUN", "VERB"]])
    assert list(st.span_gold) == [1, 2] and list(st.span_pred) == [1, 2] and list(st.span_correct) == [1, 1]
    assert list(st.words) == [2, 2] and list(st.correct) == [2, 1]
    for seed, tags, p_rep, p_err in [(0, POS_LABELS, 0.3, 0.2), (1, POS_LABELS, 0.6, 0.4), (2, ["X", "NOUN", "SYM"], 0.5, 0.3),
                                     (3, ["X", "SCONJ", "INTJ", "ADP"], 0.2, 0.5), (4, POS_LABELS, 0.0, 0.05),
                                     (5, ["X", "NOUN"], 0.8, 0.1)]:
        gold, pred = _random_tagging(np.random.default_rng(seed), 60, tags, p_rep, p_err)
        st = pos_sentence_stats(gold, pred)
        got, ref = pos_stats_scores(st), pos_scores(gold, pred)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, r = precision_score(gold, pred), recall_score(gold, pred)
            assert got["f1"] == float(f1_score(gold, pred)) == ref["f1"], seed
        tp, npred, ngold = st.span_correct.sum(), st.span_pred.sum(), st.span_gold.sum()
        assert (tp / npred, tp / ngold) == (p, r), seed
        assert got["accuracy"] == ref["accuracy"] and got["macro_f1"] == pytest.approx(ref["macro_f1"], rel=1e-12)
        assert st.words.sum() == sum(map(len, gold)) and len(st) == 60
        assert (st.tag_tp + st.tag_fn).sum() == st.words.sum()  # every gold word is one gold tag


def test_bootstrap_interval_contains_estimate_and_is_deterministic():
    gold, pred = _random_tagging(np.random.default_rng(7), 200, POS_LABELS, 0.3, 0.25)
    st = pos_sentence_stats(gold, pred)
    ci, m = pos_bootstrap_ci(st), pos_scores(gold, pred)
    for metric in ("accuracy", "f1", "macro_f1"):
        lo, hi = ci[metric]
        assert 0 <= lo < m[metric] < hi <= 1, (metric, lo, m[metric], hi)
        assert hi - lo < 0.1, metric  # ~4 000 words
    assert pos_bootstrap_ci(st) == ci  # fixed seed: bitwise-equal reruns
    assert pos_bootstrap_ci(st, seed=1) != ci
    c = np.random.default_rng(3).random(300) < 0.7
    lo, hi = accuracy_bootstrap_ci(c)
    assert lo < c.mean() < hi and accuracy_bootstrap_ci(c) == (lo, hi)
    assert accuracy_bootstrap_ci(np.ones(50, bool)) == (1.0, 1.0)
    # every resample has n rows; chunked draws (n large) still give B resamples of n
    sums = bootstrap_sums(np.ones(5000), n_boot=1001)
    assert sums.shape == (1001, 1) and (sums == 5000).all()
    assert percentile_interval(np.array([np.nan, 0.5, 0.5])) == (0.5, 0.5)
    assert all(np.isnan(percentile_interval(np.array([np.nan]))))
    with pytest.raises(ValueError, match="non-empty"):
        accuracy_bootstrap_ci([])
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_sums(np.ones(3), n_boot=0)
    with pytest.raises(ValueError, match="confidence"):
        percentile_interval(np.ones(3), confidence=1.0)
    with pytest.raises(ValueError, match="sentence 0"):
        pos_sentence_stats([["DET", "NOUN"]], [["DET"]])


def test_interval_width_shrinks_with_sqrt_n():
    """Same accuracy 0.75 on 40 and on 640 pairs: the width scales as 1/sqrt(n), ratio ~4."""
    def width(n: int) -> float:
        c = np.zeros(n, bool)
        c[: 3 * n // 4] = True
        lo, hi = accuracy_bootstrap_ci(c)
        return hi - lo

    ratio = width(40) / width(640)
    assert 3 <= ratio <= 5.5, ratio


def test_sentence_resampling_is_wider_when_errors_cluster():
    """40 sentences of 10 words, 24 tagged all right and 16 all wrong: the words are not independent,
    the sentence bootstrap (effectively n = 40) is ~sqrt(10) wider than resampling the 400 words."""
    gold = [["NOUN", "VERB", "DET", "ADJ", "NOUN", "ADP", "DET", "NOUN", "PUNCT", "X"]] * 40
    pred = [list(g) if i % 5 in (0, 2, 4) else ["PRON"] * 10 for i, g in enumerate(gold)]
    st = pos_sentence_stats(gold, pred)
    ci = pos_bootstrap_ci(st)
    words = np.asarray([a == b for g, p in zip(gold, pred) for a, b in zip(g, p)])
    assert words.mean() == pytest.approx(0.6) == pos_scores(gold, pred)["accuracy"]
    w_sent = ci["accuracy"][1] - ci["accuracy"][0]
    lo, hi = accuracy_bootstrap_ci(words)
    assert w_sent > 2 * (hi - lo), (w_sent, hi - lo)
    # the same words as 400 one-word sentences: the POS kernel then matches the word bootstrap
    st_words = pos_sentence_stats([[t] for g in gold for t in g], [[t] for p in pred for t in p])
    lo_w, hi_w = pos_bootstrap_ci(st_words)["accuracy"]
    assert hi_w - lo_w == pytest.approx(hi - lo, rel=0.25)
    for metric in ("f1", "macro_f1"):
        assert ci[metric][1] - ci[metric][0] > 0.15, metric


def test_accuracy_interval_coverage():
    """200 seeded replicates of n = 200 Bernoulli(0.6) predictions: the 95% interval covers 0.6 in >= 90%."""
    rng = np.random.default_rng(2024)
    hits = 0
    for _ in range(200):
        lo, hi = accuracy_bootstrap_ci(rng.random(200) < 0.6)
        hits += lo <= 0.6 <= hi
    assert hits / 200 >= 0.90, hits


def _check_intervals(df: pd.DataFrame) -> None:
    """Every score row has a 95% bootstrap interval in [0, 1] around its value."""
    assert {"ci_low", "ci_high"} <= set(df.columns)
    assert df["ci_low"].notna().all() and df["ci_high"].notna().all()
    assert (df["ci_low"] >= 0).all() and (df["ci_high"] <= 1).all()
    bad = df[~((df["ci_low"] <= df["value"]) & (df["value"] <= df["ci_high"]))]
    assert bad.empty, bad[["language", "metric", "ci_low", "value", "ci_high", "n"]]


def test_encode_pos_labels_first_subwords_with_bos(tiny_bloom):
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bloom)
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])  # a BOS-adding tokenizer
    words, tags = ["Naturally", "occurring", "tokens", "."], ["ADV", "VERB", "NOUN", "PUNCT"]
    enc = _encode_pos(tok, [(words, tags)], 128, "t")
    ids, labels = enc.input_ids[0], enc.labels[0]
    assert ids[0] == tok.bos_token_id and labels[0] == -100
    assert tok.decode(ids[1:]) == " ".join(words)
    first = [i for i, lab in enumerate(labels) if lab != -100]
    assert [POS_LABELS[labels[i]] for i in first] == tags and enc.n_cut == 0
    # each labelled position starts a word: decoding from it gives the rest of the sentence
    for i, k in zip(first, range(len(words))):
        assert tok.decode(ids[i:]).strip() == " ".join(words[k:])
    # truncation cuts at a word boundary and counts the words cut
    short = _encode_pos(tok, [(words, tags)], first[2], "t")  # BOS + words 0-1 fill it exactly
    assert len(short.input_ids[0]) == first[2]
    assert short.gold_tags == [tags[:2]] and short.n_cut == 2


def test_split_xnli_dev(data_root: Path):
    df = D.read_xnli(data_root, "dev", "en")
    assert len(df) == 2490 and set(df["label"]) == set(XNLI_LABELS)
    train, dev = split_xnli_dev(df, 0.1, seed=0)
    assert len(train) + len(dev) == len(df)
    assert 0.08 < len(dev) / len(df) < 0.12
    assert not set(train["premise"]) & set(dev["premise"])
    again, _ = split_xnli_dev(df, 0.1, seed=0)
    other, _ = split_xnli_dev(df, 0.1, seed=1)
    assert again.equals(train) and not other.equals(train)


def test_config_validation_and_from_params():
    cfg = TransferConfig.from_params(TransferParams(), seed=3)
    assert cfg == TransferConfig(seed=3)
    assert TransferConfig(target_modules=["q_proj", "v_proj"]).target_modules == ("q_proj", "v_proj")
    with pytest.raises(ValueError, match="lora_dropout"):
        TransferConfig(lora_dropout=1.0)
    with pytest.raises(ValueError, match="target_modules"):
        TransferConfig(target_modules="query_key_value")


# ---------------------------------------------------------------------------------------
# errors before training
# ---------------------------------------------------------------------------------------
def test_empty_eval_set_raises_before_training(gum):
    train, dev, _ = gum
    missing = "/nonexistent/model"  # loading it would fail differently: the check must come first
    with pytest.raises(ValueError, match="pos: eval set for language 'mr' is empty"):
        finetune_pos(missing, train, dev, {"fr": dev[:3], "mr": []}, TransferConfig())
    x = pd.DataFrame({"premise": ["a"], "hypothesis": ["b"], "label": ["neutral"]})
    with pytest.raises(ValueError, match="xnli: eval set for language 'ur' is empty"):
        finetune_xnli(missing, x, x, {"ur": x.iloc[:0]}, TransferConfig())


def test_unknown_upos_and_missing_target_module(tiny_bloom, gum):
    train, dev, _ = gum
    bad = [(["Hello"], ["NOUNISH"])]
    with pytest.raises(ValueError, match="NOUNISH"):
        finetune_pos(tiny_bloom, train[:4], dev[:4], {"xx": bad}, TransferConfig(epochs=1))
    with pytest.raises(ValueError, match="peft LoRA setup failed"):
        finetune_pos(tiny_bloom, train[:4], dev[:4], {"fr": dev[:2]}, TransferConfig(target_modules=("q_proj",)))


# ---------------------------------------------------------------------------------------
# learning
# ---------------------------------------------------------------------------------------
def _check_pos_frame(df: pd.DataFrame, eval_sets: dict, epochs: int, tok_words) -> None:
    assert set(df.columns) >= {"task", "language", "metric", "value", "n", "n_words", "n_words_cut", "best_epoch"}
    assert list(df["language"].unique()) == [DEV_LANGUAGE, *eval_sets]
    assert sorted(df["metric"].unique()) == ["accuracy", "f1", "macro_f1"] and len(df) == 3 * (1 + len(eval_sets))
    assert df["value"].between(0, 1).all()
    _check_intervals(df)
    assert df["best_epoch"].nunique() == 1 and 1 <= df["best_epoch"].iloc[0] <= epochs
    for lang, sents in eval_sets.items():
        row = df[(df.language == lang) & (df.metric == "accuracy")].iloc[0]
        assert row.n_words + row.n_words_cut == tok_words(sents)
        assert row.n <= len(sents)


def test_pos_lora_learns_english_gum(tiny_bloom, gum):
    train, dev, evals = gum
    cfg = TransferConfig(**POS_CFG)
    df = finetune_pos(tiny_bloom, train, dev, evals, cfg)
    _check_pos_frame(df, evals, cfg.epochs, lambda s: sum(len(f) for f, _ in s))
    en = df[(df.language == DEV_LANGUAGE) & (df.metric == "accuracy")].iloc[0]
    base = _majority_baseline(train, dev)
    assert en.value > base + 0.2, (en.value, base)
    # a max_length of 64 cuts some long sentences: cut words are counted, not scored
    assert en.n_words_cut > 0 and en.n_words + en.n_words_cut == sum(len(f) for f, _ in dev)


def test_qlora_quantises_base_and_trains(tiny_bloom, gum):
    import bitsandbytes as bnb

    train, dev, evals = gum
    cfg = TransferConfig(qlora=True, **POS_CFG)
    model, tok, device = _load(tiny_bloom, "pos", POS_LABELS, cfg, None, None)
    qkv = [m for n, m in model.named_modules() if n.endswith("query_key_value.base_layer")]
    assert qkv and all(isinstance(m, bnb.nn.Linear4bit) for m in qkv)
    assert all(m.weight.quant_state.quant_type == "nf4" and m.weight.quant_state.nested for m in qkv)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier.modules_to_save" in n for n in trainable)
    assert any("classifier.modules_to_save" in n for n in trainable)
    frozen = qkv[0].weight.detach().clone()
    enc = _encode_pos(tok, train[:48], cfg.max_length, "t")
    _train(model, _EncodedTrain(enc, True), lambda: (0.0, None), TransferConfig(qlora=True, epochs=1, max_length=64),
           tok.pad_token_id, device, "pos")
    after = dict(model.named_parameters())
    assert all(not torch.equal(after[n], v) for n, v in trainable.items() if "lora_B" in n or "classifier" in n)
    assert torch.equal(qkv[0].weight.detach(), frozen)  # the 4-bit base stays frozen
    # end to end: QLoRA learns English POS well above the majority-tag baseline
    df = finetune_pos(tiny_bloom, train, dev, evals, cfg)
    en = df[(df.language == DEV_LANGUAGE) & (df.metric == "accuracy")].iloc[0]
    assert en.value > _majority_baseline(train, dev) + 0.2


def test_qlora_trains_after_an_evaluation_pass(tiny_bloom, gum):
    """A training step after dev evaluation gives the same gradients as before it.

    bitsandbytes 0.50 repacks 4-bit weights for its AVX512-BF16 CPU kernel on the first
    eval-mode pass without grad; that kernel has no backward and adds the bias in place, so
    the next training step raised (BLOOM's layers have biases) or dropped the input gradient.
    """
    import bitsandbytes as bnb
    from xalign.transfer import _collate

    train, _, _ = gum
    cfg = TransferConfig(qlora=True, **POS_CFG)
    model, tok, device = _load(tiny_bloom, "pos", POS_LABELS, cfg, None, None)
    enc = _encode_pos(tok, train[:16], cfg.max_length, "t")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    batch = _collate(enc, list(range(8)), tok.pad_token_id, True, device)

    def grads() -> dict[str, torch.Tensor]:
        model.train()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # same LoRA dropout masks
        model(**batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if "lora_B" in n}

    before = grads()
    qkv = [n for n, _ in model.named_modules() if n.endswith("query_key_value.base_layer")]
    assert len(before) == len(qkv) == 2 and all(g.abs().sum() > 0 for g in before.values())
    _predict(model, enc, True, tok.pad_token_id, device, 8, "dev")  # what dev_eval does between epochs
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    after = grads()
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_model_selection_restores_best_epoch(tiny_bloom, gum):
    train, _, _ = gum
    cfg = TransferConfig(epochs=3, max_length=48, lr=1e-2)
    model, tok, device = _load(tiny_bloom, "pos", POS_LABELS, cfg, None, None)
    enc = _encode_pos(tok, train[:16], cfg.max_length, "t")
    scores, snapshots = iter([0.2, 0.5, 0.3]), []

    def dev_eval():  # planted dev curve: epoch 2 is best
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        s = next(scores)
        return s, f"result {s}"

    pr = _train(model, _EncodedTrain(enc, True), dev_eval, cfg, tok.pad_token_id, device, "pos")
    assert (pr.best_epoch, pr.best_result) == (2, "result 0.5")
    now = dict(model.named_parameters())
    assert all(torch.equal(now[n], v) for n, v in snapshots[1].items())
    assert any(not torch.equal(now[n], v) for n, v in snapshots[2].items())


def test_xnli_pipeline_real_data_and_determinism(tiny_bloom, data_root: Path):
    train, dev = split_xnli_dev(D.read_xnli(data_root, "dev", "en"), 0.1, seed=0)
    train, dev = train.head(64), dev.head(32)
    evals = {lang: D.read_xnli(data_root, "test", lang, max_rows=24) for lang in ("fr", "zh")}
    cfg = TransferConfig(epochs=2, batch_size=16, max_length=48, seed=1)
    rng = torch.get_rng_state()
    df = finetune_xnli(tiny_bloom, train, dev, evals, cfg)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is forked, not consumed
    assert list(df["language"]) == [DEV_LANGUAGE, "fr", "zh"]
    assert (df["metric"] == "accuracy").all() and list(df["n"]) == [32, 24, 24]
    assert df["value"].between(0, 1).all() and df["best_epoch"].isin([1, 2]).all()
    assert df["n_truncated"].between(0, df["n"]).all() and df["n_truncated"].sum() > 0  # 48 tokens is tight
    _check_intervals(df)
    again = finetune_xnli(tiny_bloom, train, dev, evals, cfg)
    pd.testing.assert_frame_equal(df, again)


# ---------------------------------------------------------------------------------------
# the paper's schedule: accumulation, evaluation every N steps, resume, streaming
# ---------------------------------------------------------------------------------------
def test_grad_accum_and_eval_every_schedule(tiny_bloom, gum):
    """36 examples, micro-batch 4, 2 per step -> 9 micro-batches, 5 steps an epoch, 10 in all;
    dev is scored every 3 steps and after the last; the best evaluation (planted) is restored."""
    train, _, _ = gum
    cfg = TransferConfig(epochs=2, batch_size=4, grad_accum=2, eval_every=3, max_length=48, lr=1e-2)
    model, tok, device = _load(tiny_bloom, "pos", POS_LABELS, cfg, None, None)
    ts = _EncodedTrain(_encode_pos(tok, train[:36], cfg.max_length, "t"), True)
    assert len(ts.keep) == 36
    steps, snaps, scores = [], [], iter([0.1, 0.6, 0.2, 0.3])
    opt_steps = []
    orig_step = torch.optim.AdamW.step

    def counting_step(self, *a, **k):
        opt_steps.append(1)
        return orig_step(self, *a, **k)

    def dev_eval():
        snaps.append(_trainable(model))
        steps.append(len(opt_steps))
        return next(scores), None

    torch.optim.AdamW.step = counting_step
    try:
        pr = _train(model, ts, dev_eval, cfg, tok.pad_token_id, device, "pos")
    finally:
        torch.optim.AdamW.step = orig_step
    assert steps == [3, 6, 9, 10] and pr.step == 10 and [h[0] for h in pr.history] == steps
    assert (pr.best_step, pr.best_epoch) == (6, 2)  # step 6 is the first of epoch 2
    now = _trainable(model)
    assert all(torch.equal(now[n], v) for n, v in snaps[1].items())
    assert any(not torch.equal(now[n], v) for n, v in snaps[3].items())


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class _Killed(Exception):
    pass


def test_killed_finetuning_resumes_from_last_evaluation(tiny_bloom, gum, tmp_path, monkeypatch):
    """A run interrupted after its 2nd of 3 evaluations (step 4, inside epoch 2), then resumed, gives the same table as
    an uninterrupted run, bit for bit; a state saved under another key is not used."""
    train, dev, evals = gum
    train, dev = train[:48], dev[:24]
    cfg = TransferConfig(epochs=2, batch_size=8, grad_accum=2, eval_every=2, max_length=48, lr=5e-3, seed=2)
    full = finetune_pos(tiny_bloom, train, dev, evals, cfg)
    assert list(full["n_evals"].unique()) == [3] and list(full["n_steps"].unique()) == [6]  # 3 steps an epoch
    path = tmp_path / "pos.resume.pt"
    saves, orig = [], ResumeFile.save

    def save_then_die(self, state):
        orig(self, state)
        saves.append(state["progress"]["step"])
        if len(saves) == 2:
            raise _Killed

    monkeypatch.setattr(ResumeFile, "save", save_then_die)
    with pytest.raises(_Killed):
        finetune_pos(tiny_bloom, train, dev, evals, cfg, resume=ResumeFile(path, "key-a"))
    assert saves == [2, 4] and path.is_file()
    monkeypatch.setattr(ResumeFile, "save", orig)
    resumed = finetune_pos(tiny_bloom, train, dev, evals, cfg, resume=ResumeFile(path, "key-a"))
    pd.testing.assert_frame_equal(resumed, full)
    assert not path.exists()  # removed once the targets are scored
    # a stale state (another key) is ignored: training starts from step 0
    monkeypatch.setattr(ResumeFile, "save", save_then_die)
    saves.clear()
    with pytest.raises(_Killed):
        finetune_pos(tiny_bloom, train, dev, evals, cfg, resume=ResumeFile(path, "key-a"))
    monkeypatch.setattr(ResumeFile, "save", orig)
    assert path.is_file()
    other = TransferConfig(**{**cfg.__dict__, "lr": 1e-3})
    fresh = finetune_pos(tiny_bloom, train, dev, evals, other)
    pd.testing.assert_frame_equal(finetune_pos(tiny_bloom, train, dev, evals, other,
                                               resume=ResumeFile(path, "key-b")), fresh)


def _write_tsv(df: pd.DataFrame, path: Path) -> Path:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("premise\thypothesis\tlabel\n")
        for p, h, l in zip(df.premise, df.hypothesis, df.label):
            f.write(f"{p}\t{h}\t{l}\n")
    return path


def test_xnli_streams_a_tsv_and_matches_the_table(tiny_bloom, data_root: Path, tmp_path):
    """Training from a TSV read batch by batch gives the table's result; no call to the
    tokenizer sees more than one batch of training pairs."""
    train, dev = split_xnli_dev(D.read_xnli(data_root, "dev", "en"), 0.1, seed=0)
    train, dev = train.head(72).reset_index(drop=True), dev.head(24)
    evals = {"fr": D.read_xnli(data_root, "test", "fr", max_rows=16)}
    cfg = TransferConfig(epochs=1, batch_size=8, grad_accum=2, eval_every=2, max_length=48, seed=1)
    stream = XnliTsvStream(_write_tsv(train, tmp_path / "train-en.tsv"))
    assert len(stream) == 72 and stream.read([3, 0]).equals(train.iloc[[3, 0]].reset_index(drop=True))
    sizes = []
    orig = XnliTsvStream.read
    XnliTsvStream.read = lambda self, idx: sizes.append(len(idx)) or orig(self, idx)
    try:
        streamed = finetune_xnli(tiny_bloom, stream, dev, evals, cfg)
    finally:
        XnliTsvStream.read = orig
    assert max(sizes) == 8 and sum(sizes) == 72
    pd.testing.assert_frame_equal(streamed, finetune_xnli(tiny_bloom, train, dev, evals, cfg))
    sub = XnliTsvStream(tmp_path / "train-en.tsv", rows=range(40))
    assert len(sub) == 40


def test_xnli_tsv_stream_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "train-en.tsv"
    bad.write_text("premise\thypothesis\tlabel\na\tb\tneutral\nc\td\tmaybe\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train-en.tsv: line 3: label 'maybe' not in"):
        XnliTsvStream(bad)
    bad.write_text("premise\thypothesis\tlabel\na\tb\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 2: expected 3 tab-separated fields premise, hypothesis, label; found 2"):
        XnliTsvStream(bad)
    bad.write_text("sentence1\tsentence2\tgold_label\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header must be"):
        XnliTsvStream(bad)


def test_per_task_epochs_and_eval_every_from_params():
    tp = TransferParams(epochs={"pos": 10, "xnli": 5}, eval_every={"pos": 100, "xnli": 500}, grad_accum=4,
                        batch_size=8, lr=2e-5, compute_dtype="bfloat16")
    pos, xnli = (TransferConfig.from_params(tp, task=t) for t in ("pos", "xnli"))
    assert (pos.epochs, pos.eval_every, xnli.epochs, xnli.eval_every) == (10, 100, 5, 500)
    assert pos.grad_accum == 4 and pos.compute_dtype == "bfloat16"
    with pytest.raises(ValueError, match="transfer.epochs: no value for task None"):
        TransferConfig.from_params(tp)
    with pytest.raises(ValueError, match="eval_every"):
        TransferConfig(eval_every=0)


def test_mean_over_fine_tuning_seeds():
    from scipy.stats import t as student

    from xalign.transfer import mean_over_seeds

    rows = [dict(checkpoint="c", step=10, task="xnli", language=l, metric="accuracy", value=v, ci_low=v - 0.03,
                 ci_high=v + 0.03, n=500, best_epoch=s, seed=s)
            for s, vals in ((0, (0.40, 0.50)), (1, (0.44, 0.52)), (2, (0.42, 0.57))) for l, v in zip(("ar", "es"), vals)]
    df = pd.DataFrame(rows)
    m = mean_over_seeds(df).set_index("language")
    assert m.loc["ar", "value"] == pytest.approx(0.42) and (m.n_seeds == 3).all()
    half = student.ppf(0.975, 2) * np.std([0.40, 0.44, 0.42], ddof=1) / np.sqrt(3)
    assert (m.loc["ar", "seed_lo"], m.loc["ar", "seed_hi"]) == pytest.approx((0.42 - half, 0.42 + half))
    assert m.loc["es", "ci_low"] == pytest.approx(np.mean([0.50, 0.52, 0.57]) - 0.03)
    assert m.loc["ar", "best_epoch"] == 0  # bookkeeping: the first seed's
    one = mean_over_seeds(df[df.seed == 1])
    pd.testing.assert_frame_equal(one.drop(columns=["n_seeds", "seed_lo", "seed_hi"]),
                                  df[df.seed == 1].drop(columns="seed").reset_index(drop=True), check_dtype=False)
    assert one.seed_lo.isna().all()
    with pytest.raises(ValueError, match="two rows for"):
        mean_over_seeds(pd.concat([df, df.iloc[[0]]]))
