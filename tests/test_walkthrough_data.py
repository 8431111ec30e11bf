"""The inline walkthrough of notebooks 00-02 (:mod:`xalign.walkthrough.data`) against the
artefacts of the headless minimal run (``minimal_run``): the corpus and tokenizer stage 0
trained on, the lemma split stage 1 gave every word, the vectors stage 2 stored."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
import torch

from xalign.params import load_params
from xalign.store import load_tensors, read_table
from xalign.walkthrough import data as wd
from xalign.walkthrough.probing import WalkthroughError

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def P(minimal_run: Path):
    return load_params(minimal_run / "minimal.yaml")


@pytest.fixture(scope="module")
def en_words(P):
    return wd.language_words(P, "en")


def test_corpus_is_the_one_stage_0_trained_on(P):
    co = wd.corpus_overview(P)
    run = P.run_dir()
    last = sorted((run / "checkpoints").glob("step-*"))[-1]
    saved = json.loads((last / "tokenizer.json").read_text())["model"]["vocab"]
    assert co.tokenizer.get_vocab() == saved
    state = json.loads((last / "training_state.json").read_text())
    assert co.blocks.shape[1] == P.pretrain.seq_len
    assert co.blocks.shape[0] == state["n_train_blocks"] + state["n_eval_blocks"]
    assert "tokens" in co.describe() and str(len(co.texts)) in co.describe()


def test_tokenized_examples_decode_back_to_the_text(P):
    co = wd.corpus_overview(P)
    ex = wd.tokenized_examples(P, co.tokenizer)
    assert list(ex.index) == list(P.data.languages)
    for lang, row in ex.iterrows():
        ids = co.tokenizer(row.text, add_special_tokens=False)["input_ids"]
        assert len(ids) == row.n_tokens == len(row.tokens.split(" "))
        assert co.tokenizer.decode(ids) == row.text


def test_loss_curve_draws_every_checkpoint(P):
    rows = [json.loads((d / "training_state.json").read_text())
            for d in sorted((P.run_dir() / "checkpoints").glob("step-*"))]
    fig = wd.fig_loss_curve(pd.DataFrame(rows))
    assert len(fig.axes[0].lines[0].get_xdata()) == len(rows)
    with pytest.raises(WalkthroughError, match="stage 0"):
        wd.fig_loss_curve(pd.DataFrame())


def test_sentence_table_carries_the_treebanks_features(P, en_words):
    si = wd.pick_sentence(en_words)
    attrs = list(P.data.attributes)
    t = wd.sentence_table(en_words, si, attrs)
    g = en_words[en_words.sent_idx == si].sort_values("word_idx")
    assert t.form.tolist() == g.form.tolist() and t.feats.tolist() == g.feats.tolist()
    for w in t.itertuples():
        if "Number=Sing" in w.feats.split("|"):
            assert getattr(w, "Number") == "SG"
        if "Number=Plur" in w.feats.split("|"):
            assert getattr(w, "Number") == "PL"
        if w.upos == "NOUN":
            assert w.POS == "N"
    with pytest.raises(WalkthroughError, match="no sentence"):
        wd.sentence_table(en_words, -1, attrs)
    with pytest.raises(WalkthroughError, match="not read"):
        wd.language_words(P, "xx")


def test_inline_lemma_split_is_stage_1s(P, en_words):
    labels = read_table(P.run_dir() / "data" / "labels.parquet")
    seed = P.data.split_seed_list(P.seed)[0]
    ls = wd.lemma_split(en_words, P.data.split_fractions, seed)
    assert ls.lemmas_in_two_splits() == 0
    inline = en_words.assign(split=ls.split)[["sent_idx", "word_idx", "split"]]
    stage = labels[(labels.language == "en") & (labels.split_seed == seed)][["sent_idx", "word_idx", "split"]]
    m = stage.merge(inline, on=["sent_idx", "word_idx"], suffixes=("_stage", "_inline"), validate="many_to_one")
    assert len(m) == len(stage) > 100
    assert (m.split_stage == m.split_inline).all()
    s = ls.summary()
    assert s.lemmas.sum() == ls.key.nunique() and s.words.sum() == len(en_words)
    ex = wd.lemma_examples(en_words, ls)
    assert not ex.split.str.contains("/").any()  # every lemma in one split
    with pytest.raises(WalkthroughError, match="one language"):
        wd.lemma_split(pd.concat([en_words, en_words.assign(language="fr")]), P.data.split_fractions, seed)


@pytest.mark.parametrize("mode", ["per_word", "sentence"])
def test_subwords_cover_every_word(P, en_words, mode):
    _, _, tok = wd.load_last_checkpoint(P)
    si = wd.pick_sentence(en_words)
    forms = en_words[en_words.sent_idx == si].sort_values("word_idx").form.tolist()
    t = wd.subword_table(tok, forms, mode)
    words = t[t.index >= 0]
    assert words.index.tolist() == list(range(len(forms))) and words.word.tolist() == forms
    assert (words.n_subwords >= 1).all()
    for w in words.itertuples():  # the pieces spell the word (up to the space marker)
        assert tok.convert_tokens_to_string(w.pieces.split(" ")).strip() == w.word


def test_inline_word_vectors_are_stage_2s(P, en_words):
    c, model, tok = wd.load_last_checkpoint(P)
    stored, _ = load_tensors(P.run_dir() / "vectors" / c.name / "en.safetensors")
    rows = stored["sent_idx"] == int(stored["sent_idx"][0])
    si = int(stored["sent_idx"][0])
    forms = en_words[en_words.sent_idx == si].sort_values("word_idx").form.tolist()
    layers = sorted(int(k.split("_")[1]) for k in stored if k.startswith("layer_"))
    v = wd.word_vectors(P, model, tok, forms, layers)
    widx = stored["word_idx"][rows].long()
    for l in layers:
        assert v[l].shape == (len(forms), model.config.hidden_size)
        torch.testing.assert_close(v[l][widx], stored[f"layer_{l}"][rows].float(), atol=1e-4, rtol=1e-4)
    lt = wd.layer_table(v)
    assert lt.index.tolist() == layers and (lt.d == model.config.hidden_size).all()
    fig = wd.fig_word_vector(v, 0, forms[0], n_dims=16)
    assert fig.axes[0].images[0].get_array().shape == (len(layers), 16)
    with pytest.raises(ValueError):
        wd.word_vectors(P, model, tok, forms, [len(layers) + 99])
