"""Stage 2: word vectors = mean of subword hidden states, layer ℓ = hidden_states[ℓ-1]."""

from __future__ import annotations

import copy
import itertools

import conllu
import pytest
import torch

from xalign import extraction, lab
from xalign.checkpoints import hidden_size, num_hidden_states
from xalign.extraction import (decoder_blocks, extract_word_vectors, layer_hidden_states,
                               words_to_subwords)

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


@pytest.fixture(scope="module")
def gemma(tokenizer):
    """A tiny random Gemma 3 (sliding and full attention layers, GQA, sdpa)."""
    from transformers import AutoModel, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    return AutoModel.from_config(cfg).eval()


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


def test_per_word_pieces_of_repeated_words(tokenizer):
    # each distinct form is tokenised once: repeats must get the same pieces as alone
    words = ["the", "the", "Hà Nội", "", "the", "我们", "Hà Nội"]
    ids, wids = words_to_subwords(tokenizer, words, "per_word")
    for i, w in enumerate(words):
        alone = tokenizer(w, add_special_tokens=False)["input_ids"] or [tokenizer.unk_token_id]
        assert [t for t, j in zip(ids, wids) if j == i] == alone


def test_multiword_tokens_are_read_as_syntactic_words(data_root, model, tokenizer):
    from xalign.data import find_treebank_files, read_treebank

    files = find_treebank_files(data_root, "es", treebank="UD_Spanish-GSD")  # AnCora writes de + el apart
    sents = read_treebank(files, max_sentences=40, seed=0)
    with_mwt = [s for s in sents if any((w.mwt_form or "").lower() in ("del", "al") for w in s.words)][:4]
    assert with_mwt  # "del" = de + el, "al" = a + el are frequent in Spanish
    words = [[w.form for w in s.words] for s in with_mwt]
    for s, ws in zip(with_mwt, words):
        mwt = [i for i, w in enumerate(s.words) if w.mwt_form]
        assert any(ws[i] == "el" for i in mwt)
        for mode in ("per_word", "sentence"):
            ids, wids = words_to_subwords(tokenizer, ws, mode)
            for i in mwt:  # each syntactic word (de, el) has pieces of its own, spelling its form
                assert tokenizer.decode([t for t, j in zip(ids, wids) if j == i]).strip() == ws[i]
    for mode in ("per_word", "sentence"):
        got = extract_word_vectors(model, tokenizer, words, [2], mode=mode)
        assert got.vectors[2].shape[0] == len(_flat(words))  # one vector per syntactic word


# ---- hidden states of the requested layers only ----------------------------------------------

@pytest.mark.parametrize("which", ["bloom", "gemma"])
def test_early_stop_hooks_equal_output_hidden_states(request, which):
    m = request.getfixturevalue("model" if which == "bloom" else which)
    n = num_hidden_states(m)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, m.config.vocab_size, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    ref = m(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(ref) == n
    subsets = [c for k in range(1, n + 1) for c in itertools.combinations(range(1, n + 1), k)]
    for layers in subsets:
        got = layer_hidden_states(m, ids, mask, list(layers))
        assert sorted(got) == list(layers)  # only the requested layers are kept
        for l in layers:
            assert torch.equal(got[l], ref[l - 1]), (which, layers, l)


@pytest.mark.parametrize("which", ["bloom", "gemma"])
def test_early_stop_runs_no_block_above_the_top_layer(request, which, tokenizer, sentences):
    m = request.getfixturevalue("model" if which == "bloom" else which)
    n = num_hidden_states(m)
    blocks = decoder_blocks(m)
    assert blocks is not None and len(blocks) == n - 1
    calls = [0] * len(blocks)

    def count(k):  # batches of 4 and 2 sentences; the one-sentence self-check runs every block
        return lambda mod, args, out: calls.__setitem__(k, calls[k] + (args[0].shape[0] > 1))
    hooks = [b.register_forward_hook(count(k)) for k, b in enumerate(blocks)]
    try:
        for top in range(1, n + 1):
            calls[:] = [0] * len(blocks)
            got = extract_word_vectors(m, tokenizer, sentences[:6], [1, top], batch_size=4, max_length=2048)
            ran = [k for k, c in enumerate(calls) if c]
            assert ran == list(range(top - 1 if top < n else n - 1)), (top, calls)
            assert got.n_blocks_run == len(ran)
            full = extract_word_vectors(m, tokenizer, sentences[:6], [1, top], batch_size=4, max_length=2048,
                                        early_stop=False)
            for l in {1, top}:
                torch.testing.assert_close(got.vectors[l], full.vectors[l], atol=1e-6, rtol=0)
    finally:
        for h in hooks:
            h.remove()


def test_hooks_that_disagree_fall_back_to_output_hidden_states(model, tokenizer, sentences, monkeypatch):
    blocks = decoder_blocks(model)
    # a wrong block stack (reversed): the self-check on the shortest sentence must catch it
    monkeypatch.setattr(extraction, "decoder_blocks", lambda m: torch.nn.ModuleList(list(blocks)[::-1]))
    with pytest.warns(RuntimeWarning, match="disagree"):
        got = extract_word_vectors(model, tokenizer, sentences[:6], [2], max_length=2048)
    monkeypatch.undo()
    ref = extract_word_vectors(model, tokenizer, sentences[:6], [2], max_length=2048, early_stop=False)
    torch.testing.assert_close(got.vectors[2], ref.vectors[2], atol=1e-6, rtol=0)


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


def test_sink_receives_every_row_once_and_the_same_vectors(model, tokenizer, sentences):
    class Sink:
        def open(self, n_words, d, layers):
            self.shape, self.layers, self.calls = (n_words, d), layers, []
            self.out = {l: torch.full((n_words, d), float("nan")) for l in layers}

        def write(self, layer, start, block):
            assert layer in self.layers
            self.calls.append((layer, start, len(block)))
            self.out[layer][start:start + len(block)] = block

    long = ["x" * 3000]  # skipped (too long): its words get no rows
    sents = sentences[:5] + [long] + sentences[5:12]
    mem = extract_word_vectors(model, tokenizer, sents, [1, 3], batch_size=3, max_length=200)
    sink = Sink()
    got = extract_word_vectors(model, tokenizer, sents, [1, 3], batch_size=3, max_length=200, sink=sink)
    assert got.vectors == {} and torch.equal(got.word_index, mem.word_index)
    assert got.n_sentences_skipped == mem.n_sentences_skipped >= 1
    assert sink.shape == (len(mem.word_index), hidden_size(model))
    for l in (1, 3):
        assert torch.equal(sink.out[l], mem.vectors[l])  # bitwise, no row left unwritten
        rows = sorted((s, n) for layer, s, n in sink.calls if layer == l)
        assert [s for s, _ in rows] == list(itertools.accumulate([0] + [n for _, n in rows[:-1]]))
        assert len(rows) == len(sents) - got.n_sentences_skipped  # one block per kept sentence


@pytest.mark.parametrize("mode", ["per_word", "sentence"])
def test_gemma_vectors_equal_reference_path(gemma, tokenizer, sentences, mode):
    n = num_hidden_states(gemma)
    kw = dict(mode=mode, max_length=2048)
    ours = extract_word_vectors(gemma, tokenizer, sentences, [2, n - 1], batch_size=8, **kw)
    ref = extract_word_vectors(gemma, tokenizer, sentences, [2, n - 1], batch_size=1, early_stop=False, **kw)
    for l in (2, n - 1):
        torch.testing.assert_close(ours.vectors[l], ref.vectors[l], atol=1e-5, rtol=0)


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


def test_sentences_beyond_the_model_context_are_skipped(tokenizer, sentences):
    from transformers import AutoModel, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=24)
    m = AutoModel.from_config(cfg).eval()
    lengths = [len(words_to_subwords(tokenizer, s, "sentence")[0]) for s in sentences]
    assert min(lengths) <= 24 < max(lengths)
    got = extract_word_vectors(m, tokenizer, sentences, [2], max_length=2048)
    assert got.n_sentences_skipped == sum(n > 24 for n in lengths)
    assert len(got.word_index) == sum(len(s) for s, n in zip(sentences, lengths) if n <= 24)


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
    with pytest.raises(FloatingPointError, match=r"layer 3: .* first: sentence 0, word 0"):
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


def test_resolve_device(monkeypatch):
    assert extraction.resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "mps", "cuda:x"):
        with pytest.raises(ValueError, match=f"extraction.device: unknown device '{bad}'"):
            extraction.resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert extraction.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="'cuda' asked for, but torch sees no CUDA device"):
        extraction.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert extraction.resolve_device("auto") == torch.device("cuda")
    assert extraction.resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="'cuda:1' asked for, but torch sees 1 CUDA device"):
        extraction.resolve_device("cuda:1")
