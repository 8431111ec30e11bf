"""Notebooks 00-02, inline: the lab's corpus and tokenizer, one UD sentence to UniMorph and
the lemma split, one sentence's subwords to words and its word vectors per layer.

Nothing here is a second implementation of the method. The functions pick one example, call
the functions the stages call with the arguments the stages give them, and return tables and
figures. ``tests/test_walkthrough_data.py`` checks that the inline examples equal the stages'
artefacts: the same corpus and tokenizer, the same split of every word, the same vectors.

Notebook 00 (the tiny lab, :mod:`xalign.lab`):

* :func:`corpus_overview` — the pretraining text and byte-level BPE tokenizer of stage 0
  (:func:`xalign.stages.pretrain.corpus`), and the (n_blocks, seq_len) token blocks it trains on;
* :func:`tokenized_examples` — one UD sentence per language in that tokenizer;
* :func:`fig_loss_curve` — training and held-out loss (nats/token) at each saved checkpoint.

Notebook 01 (Wang et al. 2024, Sec. 3; Stańczak et al. 2022; McCarthy et al. 2018):

* :func:`language_words` — a language's words table exactly as stage 1 builds it;
* :func:`sentence_table` — one sentence: FORM, LEMMA, UPOS, FEATS, its UniMorph features and
  the attribute → value of each probed attribute;
* :func:`lemma_split` — the seeded lemma-disjoint 80/10/10 split of the language's words
  (:func:`xalign.data.split_by_lemma` on :func:`xalign.data.split_key`), per split and per lemma.

Notebook 02 (Wang et al. 2024, Sec. 3: a word's vector is the mean of its subwords'
hidden states, ``hidden_states[ℓ-1]`` for layer ℓ):

* :func:`load_last_checkpoint` — the series' last checkpoint, loaded as stage 2 loads it;
* :func:`subword_table` — one sentence's subwords with the word each belongs to, in both
  ``extraction.tokenization`` modes;
* :func:`word_vectors` — that sentence's word vectors at every layer (n_words, d), via
  :func:`xalign.extraction.extract_word_vectors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from .probing import WalkthroughError, _fig, show

__all__ = ["CorpusOverview", "corpus_overview", "tokenized_examples", "fig_loss_curve", "language_words",
           "pick_sentence", "sentence_table", "LemmaSplit", "lemma_split", "lemma_examples",
           "load_last_checkpoint", "subword_table", "word_vectors", "layer_table", "fig_word_vector",
           "show", "WalkthroughError"]


# ---------------------------------------------------------------------------------------
# notebook 00: corpus, tokenizer, loss


@dataclass
class CorpusOverview:
    """Stage 0's pretraining text and tokenizer.

    Attributes:
        texts: the shuffled text lines (one line = one training text).
        tokenizer: the byte-level BPE tokenizer trained on ``texts`` (a transformers fast tokenizer).
        blocks: (n_blocks, seq_len) int64 token ids, the texts packed into training blocks
            (:func:`xalign.lab.pack_blocks`; the lab holds some of them out for its eval loss).
    """

    texts: list[str]
    tokenizer: Any
    blocks: torch.Tensor

    def describe(self) -> str:
        """One line: lines, characters, vocabulary, tokens and blocks."""
        n_tok = int(self.blocks.numel())
        chars = sum(map(len, self.texts))
        return (f"{len(self.texts)} text lines, {chars} characters; tokenizer vocabulary {len(self.tokenizer)}; "
                f"packed into blocks {tuple(self.blocks.shape)} (n_blocks × seq_len) = {n_tok} tokens, "
                f"{chars / max(n_tok, 1):.2f} characters per token")


def corpus_overview(P: Any) -> CorpusOverview:
    """The text, tokenizer and blocks stage 0 trains the lab on (``pretrain`` params of ``P``).

    Raises:
        FileNotFoundError, InputError: a text file of the data bundle is missing or unreadable.
    """
    from ..lab import pack_blocks
    from ..stages.pretrain import corpus

    texts, tok = corpus(P)
    return CorpusOverview(texts, tok, pack_blocks(texts, tok, P.pretrain.seq_len))


def tokenized_examples(P: Any, tokenizer: Any, languages: list[str] | None = None) -> pd.DataFrame:
    """The first UD sentence (in stage 0's seeded sample) of each language, tokenised.

    Returns:
        One row per language: ``text``, ``n_chars``, ``n_tokens``, ``chars_per_token`` and
        ``tokens`` (the pieces, ``Ġ`` marking a leading space as in byte-level BPE).
    """
    from ..data import treebank_texts

    rows = []
    for lang in languages or list(P.data.languages):
        text = treebank_texts(P.resolved_data_root(), lang, max_sentences=1, seed=P.seed,
                              treebank=P.data.treebanks.get(lang))[0]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append({"language": lang, "text": text, "n_chars": len(text), "n_tokens": len(ids),
                     "chars_per_token": round(len(text) / max(len(ids), 1), 2),
                     "tokens": " ".join(tokenizer.convert_ids_to_tokens(ids))})
    return pd.DataFrame(rows).set_index("language")


def fig_loss_curve(checkpoints: pd.DataFrame, title: str = "") -> Figure:
    """Training loss (mean since the last checkpoint) and held-out loss, nats/token, against
    the optimiser step (log scale), one point per saved checkpoint (stage 0's ``checkpoints``
    table: the checkpoints' ``training_state.json``).

    Raises:
        WalkthroughError: the table has no ``step``/``loss`` columns (stage 0 did not run).
    """
    if checkpoints.empty or not {"step", "loss"} <= set(checkpoints.columns):
        raise WalkthroughError("no checkpoint losses: stage 0 has not trained this series")
    fig, (ax,) = _fig(1, (6.0, 3.6))
    df = checkpoints.sort_values("step")
    ax.plot(df.step, df.loss, "o-", label="training loss (mean since the previous checkpoint)")
    if "eval_loss" in df and df.eval_loss.notna().any():
        ax.plot(df.step, df.eval_loss, "s--", label="held-out blocks")
    ax.set_xscale("log")
    ax.set_xticks(df.step.tolist(), [str(int(s)) for s in df.step])
    ax.minorticks_off()
    ax.set_xlabel("optimiser step (log scale; ticks at the saved checkpoints)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend(fontsize=8)
    ax.set_title(title or "Lab pretraining: loss at the saved checkpoints", fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------
# notebook 01: one sentence, UniMorph, the lemma split


def language_words(P: Any, language: str) -> pd.DataFrame:
    """One language's words table as stage 1's ``words/<lang>`` unit builds it
    (:func:`xalign.data.load_words` with ``data.max_sentences_per_language``, the run seed and
    ``data.multiword_tokens``): one row per word, columns :data:`xalign.data.WORD_COLUMNS`.

    Raises:
        WalkthroughError: ``language`` is not in ``data.languages``.
        FileNotFoundError, InputError: the treebank is missing or malformed.
    """
    from ..data import load_words

    if language not in P.data.languages:
        raise WalkthroughError(f"{P.run_name}: language {language!r} is not read (data.languages: {P.data.languages})")
    dp = P.data
    return load_words(P.resolved_data_root(), [language], treebanks=dict(dp.treebanks),
                      max_sentences_per_language=dp.max_sentences_per_language, seed=P.seed,
                      multiword=dp.multiword_tokens)


def pick_sentence(words: pd.DataFrame, min_words: int = 6, max_words: int = 14) -> int:
    """The ``sent_idx`` of the first sentence with ``min_words``..``max_words`` words of which
    at least two carry FEATS (a readable example).

    Raises:
        WalkthroughError: no such sentence.
    """
    for si, g in words.groupby("sent_idx", sort=True):
        if min_words <= len(g) <= max_words and int((g.feats != "_").sum()) >= 2:
            return int(si)
    raise WalkthroughError(f"no sentence of {min_words}-{max_words} words with FEATS")


def sentence_table(words: pd.DataFrame, sent_idx: int, attributes: list[str]) -> pd.DataFrame:
    """One sentence, word by word: FORM, LEMMA, UPOS, FEATS (UD), its UniMorph features
    (McCarthy et al. 2018's converter, :func:`xalign.unimorph.to_unimorph`, as stored by stage
    1) and, per attribute, the value the word has for it (:func:`xalign.unimorph.attribute_values`;
    empty where the word does not carry the attribute or carries two values of it).

    Raises:
        WalkthroughError: no sentence ``sent_idx`` in ``words``.
    """
    from ..unimorph import attribute_values, multi_value_attributes

    g = words[words.sent_idx == sent_idx].sort_values("word_idx")
    if g.empty:
        raise WalkthroughError(f"no sentence {sent_idx} in the words table")
    rows = []
    for w in g.itertuples():
        tags = frozenset(str(w.unimorph).split(";")) - {""}
        vals, multi = attribute_values(tags), multi_value_attributes(tags)
        rows.append({"form": w.form, "lemma": w.lemma, "upos": w.upos, "feats": w.feats, "unimorph": w.unimorph,
                     **{a: ("(two values)" if a in multi else vals.get(a, "")) for a in attributes}})
    return pd.DataFrame(rows, index=pd.Index(g.word_idx.tolist(), name="word_idx"))


@dataclass
class LemmaSplit:
    """A language's lemma-disjoint split (:func:`xalign.data.split_by_lemma`).

    Attributes:
        language, seed, fractions: which split.
        split: (N,) Series aligned with the words table: ``"train"``/``"dev"``/``"test"`` per word.
        key: (N,) the lemma (or the form where LEMMA is ``_``) each word is split by.
    """

    language: str
    seed: int
    fractions: tuple[float, float, float]
    split: pd.Series
    key: pd.Series

    def summary(self) -> pd.DataFrame:
        """Per split: distinct lemmas and word tokens, and their shares. The shares of lemmas
        are the fractions (up to rounding); the shares of tokens are not, because frequent
        lemmas (*be*, *the*) have many tokens."""
        df = pd.DataFrame({"key": self.key, "split": self.split})
        out = df.groupby("split").agg(lemmas=("key", "nunique"), words=("key", "size")).reindex(["train", "dev", "test"])
        out["lemma_share"] = (out.lemmas / out.lemmas.sum()).round(3)
        out["word_share"] = (out.words / out.words.sum()).round(3)
        return out

    def lemmas_in_two_splits(self) -> int:
        """How many lemmas have words in more than one split (0 for a lemma split)."""
        return int((pd.DataFrame({"key": self.key, "split": self.split}).groupby("key").split.nunique() > 1).sum())


def lemma_split(words: pd.DataFrame, fractions: Any, seed: int) -> LemmaSplit:
    """The split stage 1 gives ``words`` (one language) for lemma-split ``seed``
    (:func:`xalign.data.build_datasets` splits each language this way, shared by all attributes).

    Raises:
        WalkthroughError: ``words`` holds no or several languages.
        ValueError: bad ``fractions`` (from :func:`xalign.data.split_by_lemma`).
    """
    from ..data import split_by_lemma, split_key

    langs = list(pd.unique(words.language))
    if len(langs) != 1:
        raise WalkthroughError(f"lemma_split: expected the words of one language, got {langs}")
    key = split_key(words)
    split = key.map(split_by_lemma(key.tolist(), fractions, seed)).astype(str)
    return LemmaSplit(langs[0], int(seed), tuple(float(f) for f in fractions), split, key)


def lemma_examples(words: pd.DataFrame, ls: LemmaSplit, n: int = 6) -> pd.DataFrame:
    """Lemmas with the most distinct forms, their forms and the one split they all fall in."""
    df = words.assign(key=ls.key, split=ls.split)
    g = df.groupby("key").agg(forms=("form", lambda f: ", ".join(sorted(set(f)))), n_forms=("form", "nunique"),
                              words=("form", "size"), split=("split", lambda s: "/".join(sorted(set(s)))))
    return g.sort_values(["n_forms", "words"], ascending=False).head(n)


# ---------------------------------------------------------------------------------------
# notebook 02: subwords to words, word vectors per layer


def load_last_checkpoint(P: Any) -> tuple[Any, Any, Any]:
    """(checkpoint, base model, tokenizer) of the series' last checkpoint, listed and loaded as
    stage 2 does (:func:`xalign.checkpoints.series_of`, :func:`xalign.checkpoints.load_model`
    with ``checkpoints.dtype``), on the CPU.

    Raises:
        WalkthroughError: the series has no checkpoint yet (for the lab: stage 0 not run).
    """
    from .. import checkpoints as ck

    series = ck.series_of(P.checkpoints, P.run_dir())
    if not series:
        raise WalkthroughError(f"{P.run_name}: checkpoints.source={P.checkpoints.source}: no checkpoint found")
    c = max(series, key=lambda s: (s.step if s.step is not None else -1))
    model, tok = ck.load_model(c, dtype=P.checkpoints.dtype)
    return c, model.eval(), tok


def subword_table(tokenizer: Any, forms: list[str], mode: str) -> pd.DataFrame:
    """One sentence's tokens in ``mode`` (``"per_word"`` or ``"sentence"``,
    :func:`xalign.extraction.words_to_subwords`): one row per word with its subword pieces
    (special tokens, word id -1, are listed under ``<special>``)."""
    from ..extraction import words_to_subwords

    ids, wids = words_to_subwords(tokenizer, forms, mode)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    rows: dict[int, list[str]] = {}
    for p, w in zip(pieces, wids):
        rows.setdefault(w, []).append(p)
    out = [{"word": forms[w] if w >= 0 else "<special>", "pieces": " ".join(ps), "n_subwords": len(ps)}
           for w, ps in sorted(rows.items())]
    return pd.DataFrame(out, index=pd.Index(sorted(rows), name="word_id"))


def word_vectors(P: Any, model: Any, tokenizer: Any, forms: list[str], layers: list[int]) -> dict[int, torch.Tensor]:
    """The sentence's word vectors at layers ℓ, {ℓ: (n_words, d) float32}, with stage 2's
    ``extraction.tokenization`` and ``max_length`` (:func:`xalign.extraction.extract_word_vectors`).

    Raises:
        WalkthroughError: the sentence is longer than ``extraction.max_length`` tokens.
        ValueError: a layer outside 1..n_layer+1.
    """
    from ..extraction import extract_word_vectors

    ep = P.extraction
    res = extract_word_vectors(model, tokenizer, [forms], layers, mode=ep.tokenization, max_length=ep.max_length)
    if res.n_sentences_skipped:
        raise WalkthroughError(f"the sentence is longer than extraction.max_length={ep.max_length} tokens")
    return {int(l): v for l, v in res.vectors.items()}


def layer_table(vectors: dict[int, torch.Tensor]) -> pd.DataFrame:
    """Per layer ℓ: the shape (n_words, d) and the mean L2 norm of the word vectors, and the
    mean cosine similarity between different words of the sentence (high values: the vectors
    share a common direction, as in the embedding-space anisotropy of LMs)."""
    rows = []
    for l, v in sorted(vectors.items()):
        u = torch.nn.functional.normalize(v.double(), dim=1)
        n = v.shape[0]
        cos = (u @ u.T).sum().item() - n
        rows.append({"layer": l, "n_words": n, "d": int(v.shape[1]), "mean_norm": float(v.norm(dim=1).mean()),
                     "mean_cosine": cos / max(n * (n - 1), 1)})
    return pd.DataFrame(rows).set_index("layer")


def fig_word_vector(vectors: dict[int, torch.Tensor], word: int, form: str, n_dims: int = 64) -> Figure:
    """One word's vector at each layer: its first ``n_dims`` dimensions as a heatmap (layers ×
    dimensions), the values the probes of stage 3 see for this word (before z-scoring)."""
    layers = sorted(vectors)
    M = np.stack([vectors[l][word, :n_dims].numpy() for l in layers])
    fig, (ax,) = _fig(1, (7.0, 0.45 * len(layers) + 1.4))
    lim = float(np.abs(M).max()) or 1.0
    im = ax.imshow(M, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_yticks(range(len(layers)), [f"ℓ = {l}" for l in layers])
    ax.set_xlabel(f"dimension (first {M.shape[1]} of {vectors[layers[0]].shape[1]})")
    ax.set_title(f"word vector of {form!r} per layer (mean of its subwords' hidden states)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    return fig
