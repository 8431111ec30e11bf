"""Stage 2: word vectors = mean of subword hidden states, layer ℓ = hidden_states[ℓ-1]."""

from __future__ import annotations

import copy
import itertools

import conllu
import pytest
import torch

from xalign import lab
from xalign.checkpoints import hidden_size, num_hidden_states
from xalign.extraction import extract_word_vectors, words_to_subwords

UD_FILES = [("UD_English-GUM", "en_gum-ud-dev.conllu"), ("UD_Vietnamese-VTB", "vi-ud-dev.conllu"),
            ("UD_Chinese-GSD", "zh-ud-dev.conllu"), ("UD_Arabic-PUD", "ar_pud-ud-test.conllu")]


def _ud_sentences(path, n):
    out = []
    with open(path, encoding="utf-8") as f:
        for tl in itertools.islice(conllu.parse_incr(f), n):
            out.append([t["form"] for t in tl if isinstance(t["id"], int)])
    return out


@pytest.fixture(scope="module")
def sentences(data_root):
    out = []
    for folder, name in UD_FILES:
        out += _ud_sentences(data_root / "ud" / folder / name, 8)
    return out


@pytest.fixture(scope="module")
def tokenizer(data_root):
    texts = lab.build_corpus(data_root, ["en", "vi", "zh", "ar"], max_lines_per_source=60, seed=0)
    return lab.train_tokenizer(texts, vocab_size=500)


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import AutoModel, BloomConfig

    torch.manual_seed(0)
    cfg = BloomConfig(vocab_size=len(tokenizer), hidden_size=32, n_layer=2, n_head=4)
    return AutoModel.from_config(cfg, attn_implementation="eager").eval()


def _flat(sentences):
    return [w for s in sentences for w in s]


# ---- words -> subwords -------------------------------------------------------------------

def test_ud_words_with_spaces_are_covered(sentences):
    assert any(" " in w for w in _flat(sentences))  # Vietnamese VTB multi-syllable words


def test_per_word_concatenates_word_pieces(tokenizer, sentences):
    for words in sentences[:15]:
        ids, wids = words_to_subwords(tokenizer, words, "per_word")
        expect = [(t, i) for i, w in enumerate(words) for t in tokenizer(w, add_special_tokens=False)["input_ids"]]
        assert list(zip(ids, wids)) == expect


def test_sentence_mode_maps_pieces_to_words(tokenizer, sentences):
    for words in sentences:
        ids, wids = words_to_subwords(tokenizer, words, "sentence")
        assert ids == tokenizer(" ".join(words))["input_ids"]
        assert sorted(set(wids)) == list(range(len(words)))  # every word has >= 1 piece
        assert wids == sorted(wids)  # pieces are contiguous, in word order
        for i, w in enumerate(words):  # byte-level BPE: a word's pieces decode to " "? + the word
            text = tokenizer.decode([t for t, j in zip(ids, wids) if j == i])
            assert text.lstrip(" ") == w, (text, w)


def test_leading_space_piece_goes_to_the_following_word(tokenizer):
    words = ["a", "我们"]  # 'Ġ' has no merge with CJK bytes here: a lone space piece
    ids, wids = words_to_subwords(tokenizer, words, "sentence")
    toks = tokenizer.convert_ids_to_tokens(ids)
    assert "Ġ" in toks
    assert wids[toks.index("Ġ")] == 1


def test_empty_word_still_gets_a_subword(tokenizer):
    ids, wids = words_to_subwords(tokenizer, ["x", "", "y"], "per_word")
    assert wids.count(1) == 1 and ids[wids.index(1)] == tokenizer.unk_token_id
    ids, wids = words_to_subwords(tokenizer, ["x", "", "y"], "sentence")
    assert set(wids) == {0, 1, 2}


def test_bad_mode_and_input(model, tokenizer):
    with pytest.raises(ValueError, match="mode"):
        words_to_subwords(tokenizer, ["a"], "char")
    with pytest.raises(ValueError, match="words: must be a list"):
        words_to_subwords(tokenizer, "a b", "sentence")
    with pytest.raises(ValueError, match=r"sentences\[1\]"):
        extract_word_vectors(model, tokenizer, [["a"], ["b", 3]], [1])


# ---- extraction --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["per_word", "sentence"])
def test_batching_and_padding_do_not_change_vectors(model, tokenizer, sentences, mode):
    n = num_hidden_states(model)
    kw = dict(mode=mode, max_length=2048)
    one = extract_word_vectors(model, tokenizer, sentences, list(range(1, n + 1)), batch_size=1, **kw)
    many = extract_word_vectors(model, tokenizer, sentences, list(range(1, n + 1)), batch_size=8, **kw)
    assert torch.equal(one.word_index, many.word_index)
    assert one.n_words_total == len(_flat(sentences)) == len(one.word_index)
    for layer in range(1, n + 1):
        assert one.vectors[layer].shape == (len(one.word_index), hidden_size(model))
        assert one.vectors[layer].dtype == torch.float32
        torch.testing.assert_close(one.vectors[layer], many.vectors[layer], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["per_word", "sentence"])
def test_mean_pooling_and_layer_numbering(model, tokenizer, sentences, mode):
    n = num_hidden_states(model)
    got = extract_word_vectors(model, tokenizer, sentences, list(range(1, n + 1)), mode=mode, batch_size=4,
                               max_length=2048)
    for words in sentences[::7]:
        start = sum(len(s) for s in sentences[: sentences.index(words)])
        row = int((got.word_index == start).nonzero())
        ids, wids = words_to_subwords(tokenizer, words, mode)
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model(input_ids=x, output_hidden_states=True)
            emb = model.word_embeddings_layernorm(model.word_embeddings(x))[0]
        w = torch.tensor(wids)
        for i in range(len(words)):
            sel = w == i
            # ℓ = 1 is the embedding output, ℓ = n the last hidden state (after ln_f)
            torch.testing.assert_close(got.vectors[1][row + i], emb[sel].mean(0), atol=1e-5, rtol=0)
            torch.testing.assert_close(got.vectors[n][row + i], out.last_hidden_state[0][sel].mean(0),
                                       atol=1e-5, rtol=0)
            for layer in range(1, n + 1):
                manual = out.hidden_states[layer - 1][0][sel].mean(0)
                torch.testing.assert_close(got.vectors[layer][row + i], manual, atol=1e-5, rtol=0)
    assert not torch.allclose(got.vectors[1], got.vectors[2])


def test_modes_differ_but_agree_on_single_words(model, tokenizer):
    a = extract_word_vectors(model, tokenizer, [["hello"], ["a", "hello"]], [2], mode="per_word")
    b = extract_word_vectors(model, tokenizer, [["hello"], ["a", "hello"]], [2], mode="sentence")
    torch.testing.assert_close(a.vectors[2][0], b.vectors[2][0], atol=1e-6, rtol=0)  # same pieces
    assert not torch.allclose(a.vectors[2][2], b.vectors[2][2], atol=1e-4)  # "hello" vs "Ġhello"


def test_causal_lm_is_reduced_to_base_model(model, tokenizer, sentences):
    from transformers import BloomForCausalLM

    lm = BloomForCausalLM(model.config).eval()
    lm.transformer.load_state_dict(model.state_dict())
    a = extract_word_vectors(model, tokenizer, sentences[:8], [3])
    b = extract_word_vectors(lm, tokenizer, sentences[:8], [3])
    torch.testing.assert_close(a.vectors[3], b.vectors[3], atol=1e-6, rtol=0)


def test_long_sentences_are_skipped_and_counted(model, tokenizer, sentences):
    lengths = [len(words_to_subwords(tokenizer, s, "sentence")[0]) for s in sentences]
    limit = sorted(lengths)[len(lengths) // 2]
    got = extract_word_vectors(model, tokenizer, sentences, [2], max_length=limit, batch_size=5)
    too_long = [i for i, n in enumerate(lengths) if n > limit]
    assert got.n_sentences_skipped == len(too_long) > 0
    assert got.n_words_total == len(_flat(sentences))
    starts = [sum(len(s) for s in sentences[:i]) for i in range(len(sentences))]
    expect = [starts[i] + j for i in range(len(sentences)) if i not in too_long for j in range(len(sentences[i]))]
    assert got.word_index.tolist() == expect
    full = extract_word_vectors(model, tokenizer, sentences, [2], batch_size=5, max_length=2048)
    pos = {int(w): r for r, w in enumerate(full.word_index)}
    torch.testing.assert_close(got.vectors[2], full.vectors[2][[pos[w] for w in expect]], atol=1e-5, rtol=0)


def test_bf16_autocast_is_close(model, tokenizer, sentences):
    fp = extract_word_vectors(model, tokenizer, sentences[:10], [3])
    bf = extract_word_vectors(model, tokenizer, sentences[:10], [3], bf16=True)
    assert bf.vectors[3].dtype == torch.float32
    torch.testing.assert_close(bf.vectors[3], fp.vectors[3], atol=0.1, rtol=0.05)


@pytest.mark.parametrize("layer", [0, 4, -1])
def test_layer_out_of_range(model, tokenizer, layer):
    with pytest.raises(ValueError, match=rf"layer {layer} .*1\.\.3"):
        extract_word_vectors(model, tokenizer, [["a"]], [1, layer])


def test_nan_hidden_states_name_the_layer(model, tokenizer, sentences):
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.h[1].mlp.dense_4h_to_h.bias.fill_(float("nan"))
    ok = extract_word_vectors(bad, tokenizer, sentences[:3], [1, 2])  # block 2 feeds only ℓ = 3
    assert torch.isfinite(ok.vectors[2]).all()
    with pytest.raises(FloatingPointError, match="layer 3"):
        extract_word_vectors(bad, tokenizer, sentences[:3], [1, 3])


def test_empty_input(model, tokenizer):
    got = extract_word_vectors(model, tokenizer, [[], []], [1])
    assert got.n_words_total == 0 and got.word_index.shape == (0,) and got.vectors[1].shape == (0, 32)


def test_dropout_is_off_during_extraction_and_mode_restored(tokenizer, sentences):
    from transformers import AutoModel, BloomConfig

    torch.manual_seed(1)
    cfg = BloomConfig(vocab_size=len(tokenizer), hidden_size=16, n_layer=1, n_head=2,
                      hidden_dropout=0.5, attention_dropout=0.5)
    m = AutoModel.from_config(cfg, attn_implementation="eager")
    m.train()
    a = extract_word_vectors(m, tokenizer, sentences[:4], [2])
    assert m.training
    b = extract_word_vectors(m.eval(), tokenizer, sentences[:4], [2])
    torch.testing.assert_close(a.vectors[2], b.vectors[2], atol=1e-6, rtol=0)
