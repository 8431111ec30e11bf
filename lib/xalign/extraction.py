"""Stage 2: word vectors from hidden states (mean of a word's subword representations).

Following Wang, Minervini & Ponti (2024, Sec. 3) and Stańczak et al. (2022, Sec. 4),
the representation of a UD word at layer ℓ is the mean over its subword tokens of the
hidden state at that layer::

    h_ℓ(w) = (1/|S(w)|) Σ_{t ∈ S(w)} hidden_states[ℓ-1][t]

with ℓ = 1 the embedding output and ℓ = num_hidden_states the last hidden state (after
the final layer norm for BLOOM). Two ways of getting S(w):

* ``per_word`` - every word form is tokenised on its own, without special tokens, and
  the pieces of a sentence are concatenated (the paper's code did this; a byte-level
  BPE then never sees the leading space of a word);
* ``sentence`` - the running text ``" ".join(words)`` is tokenised once with
  ``return_offsets_mapping`` and pieces are mapped back to words by character offsets;
  a piece that covers only a space belongs to the following word.

In both modes the tokenizer's own special tokens (none for BLOOM, ``<bos>`` for Gemma)
wrap the sentence and are not part of any word.
"""

from __future__ import annotations

import bisect
import contextlib
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from xalign.checkpoints import hidden_size, num_hidden_states
from xalign.progress import progress

Mode = Literal["per_word", "sentence"]
MODES = ("per_word", "sentence")


@dataclass
class Extracted:
    """Word vectors of several layers for the words of many sentences.

    Attributes:
        vectors: layer ℓ -> ``(n_kept_words, d)`` float32, row i = word ``word_index[i]``.
        word_index: ``(n_kept_words,)`` int64, ascending; index into the flattened word
            list of all input sentences (skipped sentences' words are missing).
        n_sentences_skipped: sentences with more than ``max_length`` tokens (not extracted).
        n_words_total: words in all input sentences (kept or not).
        n_sentences_per_word_fallback: ``sentence``-mode sentences in which some word got
            no piece of its own and which were therefore encoded ``per_word``.
    """

    vectors: dict[int, torch.Tensor]
    word_index: torch.Tensor
    n_sentences_skipped: int
    n_words_total: int
    n_sentences_per_word_fallback: int = 0


# ---------------------------------------------------------------------------------------
# words -> subwords
# ---------------------------------------------------------------------------------------

def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """Special tokens the tokenizer puts before/after a text (e.g. ``[<bos>], []``)."""
    probe = "a"
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for k in range(len(full) - len(bare) + 1):
        if full[k:k + len(bare)] == bare:
            return full[:k], full[k + len(bare):]
    return [], []


def _encode_per_word(tokenizer, sentences: Sequence[Sequence[str]], affixes) -> list[tuple[list[int], list[int]]]:
    prefix, suffix = affixes
    flat = [w for s in sentences for w in s]
    pieces = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    out, k = [], 0
    for s in sentences:
        ids, wids = list(prefix), [-1] * len(prefix)
        for i, w in enumerate(s):
            p = list(pieces[k])
            k += 1
            if not p:
                # e.g. an empty form: the word still gets one vector, from <unk>
                if tokenizer.unk_token_id is None:
                    raise ValueError(f"words: the tokenizer yields no subword for {w!r} and has no unk token")
                p = [tokenizer.unk_token_id]
            ids.extend(p)
            wids.extend([i] * len(p))
        ids.extend(suffix)
        wids.extend([-1] * len(suffix))
        out.append((ids, wids))
    return out


def _assign_by_offsets(text: str, starts: list[int], ends: list[int], ids, offsets, special: set[int]) -> list[int]:
    """Word index of each piece from its character span (see :func:`words_to_subwords`).

    A piece belongs to the word holding its first non-space character. A piece of
    spaces only (or with an empty span after offset trimming) belongs to the word it lies
    inside (a space within a word, e.g. Vietnamese ``học sinh``), else to the following
    word; after the last word it belongs to none (-1), as do special tokens.
    """
    wids = []
    for tid, (s, e) in zip(ids, offsets):
        if e <= s and tid in special:
            wids.append(-1)
            continue
        w = -1
        for c in range(s, e):                           # first non-space character
            if not text[c].isspace():
                j = bisect.bisect_right(starts, c) - 1
                if j >= 0 and c < ends[j]:
                    w = j
                    break
        if w < 0:
            j = bisect.bisect_right(starts, s) - 1
            inside = j >= 0 and s < ends[j] and (starts[j] < s if e <= s else starts[j] <= s)
            if inside:
                w = j
            else:                                       # a leading space: the following word
                k = bisect.bisect_left(starts, s)
                w = k if k < len(starts) else -1
        wids.append(w)
    return wids


def _encode_sentence(tokenizer, sentences: Sequence[Sequence[str]], affixes) -> list[tuple[list[int], list[int], bool]]:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("tokenizer: mode 'sentence' needs a fast tokenizer (character offsets); use mode 'per_word'")
    texts, bounds = [], []
    for s in sentences:
        starts, ends, pos = [], [], 0
        for w in s:
            starts.append(pos)
            ends.append(pos + len(w))
            pos += len(w) + 1
        texts.append(" ".join(s))
        bounds.append((starts, ends))
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True)
    special = set(tokenizer.all_special_ids)
    out = []
    for i, s in enumerate(sentences):
        ids = list(enc["input_ids"][i])
        wids = _assign_by_offsets(texts[i], *bounds[i], ids, enc["offset_mapping"][i], special)
        if len(set(w for w in wids if w >= 0)) < len(s):
            ids, wids = _encode_per_word(tokenizer, [s], affixes)[0]
            out.append((ids, wids, True))
        else:
            out.append((ids, wids, False))
    return out


def _encode(tokenizer, sentences, mode: str) -> list[tuple[list[int], list[int], bool]]:
    if mode not in MODES:
        raise ValueError(f"mode: unknown tokenization mode '{mode}'; known: {list(MODES)}")
    for i, s in enumerate(sentences):
        if isinstance(s, str) or not all(isinstance(w, str) for w in s):
            raise ValueError(f"sentences[{i}]: must be a list of word strings")
    affixes = _special_affixes(tokenizer)
    if mode == "per_word":
        return [(ids, wids, False) for ids, wids in _encode_per_word(tokenizer, sentences, affixes)]
    return _encode_sentence(tokenizer, sentences, affixes)


def words_to_subwords(tokenizer, words: Sequence[str], mode: str) -> tuple[list[int], list[int]]:
    """Tokenise one sentence given as words and map every subword to its word.

    ``per_word``: each word is tokenised alone without special tokens, pieces are
    concatenated. ``sentence``: ``" ".join(words)`` is tokenised once; a piece belongs
    to the word holding its first non-space character, a piece made only of spaces to
    the following word. In both modes the tokenizer's special tokens wrap the
    sequence (word id -1).

    Every word gets at least one subword: in ``per_word`` mode a word the tokenizer
    yields nothing for (an empty form) gets ``<unk>`` (``ValueError`` if there is no unk
    token); in ``sentence`` mode, if some word gets no piece of its own (an empty form,
    or a piece spanning two words), the sentence is encoded ``per_word`` instead.

    Args:
        tokenizer: a transformers tokenizer (fast for ``sentence``).
        words: the word forms of one sentence (e.g. UD FORMs).
        mode: ``"per_word"`` or ``"sentence"``.

    Returns:
        ``(input_ids, word_ids)``, equal length; ``word_ids[t]`` is the index in ``words``
        of token t, or -1 for special tokens.

    Raises:
        ValueError: unknown mode, ``words`` not a list of str, or a slow tokenizer in
            ``sentence`` mode.
    """
    if isinstance(words, str):
        raise ValueError("words: must be a list of word strings, got one str")
    ids, wids, _ = _encode(tokenizer, [list(words)], mode)[0]
    return ids, wids


# ---------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------

def check_layers(model, layers: Sequence[int]) -> list[int]:
    """Validate layer numbers ℓ against ``1..num_hidden_states(model)``.

    Raises:
        ValueError: a layer out of range or not an int (names it and the valid range).
    """
    n = num_hidden_states(model)
    out = []
    for l in layers:
        if isinstance(l, bool) or not isinstance(l, int) or not 1 <= l <= n:
            raise ValueError(f"layers: layer {l!r} is out of range; this model has layers 1..{n} "
                             f"(ℓ = 1 is the embedding output)")
        out.append(l)
    if not out:
        raise ValueError("layers: no layer given")
    return sorted(set(out))


def _pad_id(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if t is not None:
            return int(t)
    return 0


def extract_word_vectors(
    model,
    tokenizer,
    sentences: Sequence[Sequence[str]],
    layers: Sequence[int],
    *,
    mode: str = "sentence",
    batch_size: int = 32,
    max_length: int = 256,
    bf16: bool = False,
) -> Extracted:
    """Word vectors at layers ℓ: the mean of each word's subword hidden states.

    ``h_ℓ(w) = mean_{t ∈ S(w)} hidden_states[ℓ-1][t]`` (Wang et al. 2024, Sec. 3;
    Stańczak et al. 2022, Sec. 4), with S(w) from :func:`words_to_subwords`. Sentences
    are sorted by token length (longest first), batched, right-padded with an attention
    mask (for a causal LM right padding leaves every real position's hidden state
    unchanged) and run under ``torch.inference_mode`` (optionally bf16 autocast). Pooling
    is in float32.

    Args:
        model: a transformers model (a ``*ForCausalLM`` is reduced to its base model).
        tokenizer: its tokenizer.
        sentences: word forms per sentence, e.g. UD FORMs.
        layers: layers ℓ in ``1..num_hidden_states(model)``.
        mode: ``"sentence"`` (default) or ``"per_word"``.
        batch_size: sentences per forward pass.
        max_length: sentences with more tokens than this are skipped and counted.
        bf16: run the forward pass under bfloat16 autocast.

    Returns:
        :class:`Extracted`: vectors ``{ℓ: (n_kept_words, d)}`` with d =
        ``hidden_size(model)``, ``word_index`` into the flattened word list.

    Raises:
        ValueError: a layer out of range (names it and the valid range), unknown mode,
            bad batch_size/max_length, malformed sentences.
        FloatingPointError: NaN/inf in the hidden states (names the layer).
    """
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"batch_size/max_length: must be >= 1, got {batch_size}/{max_length}")
    layers = check_layers(model, layers)
    n_hs, d = num_hidden_states(model), hidden_size(model)
    encoded = _encode(tokenizer, sentences, mode)

    word_start, pos = [], 0
    for s in sentences:
        word_start.append(pos)
        pos += len(s)
    n_words_total = pos
    kept = [i for i, (ids, _, _) in enumerate(encoded) if len(sentences[i]) and len(ids) <= max_length]
    n_skipped = sum(1 for i, (ids, _, _) in enumerate(encoded) if len(sentences[i]) and len(ids) > max_length)
    n_fallback = sum(1 for i in kept if encoded[i][2])
    word_index = torch.tensor([word_start[i] + j for i in kept for j in range(len(sentences[i]))], dtype=torch.long)
    row_of_sentence = {}
    r = 0
    for i in kept:
        row_of_sentence[i] = r
        r += len(sentences[i])

    sums = {l: torch.zeros(len(word_index), d, dtype=torch.float32) for l in layers}
    counts = torch.zeros(len(word_index), dtype=torch.float32)
    base = getattr(model, "base_model", model)
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    order = sorted(kept, key=lambda i: (-len(encoded[i][0]), i))
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    amp = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())
    was_training = base.training
    base.eval()  # no dropout; the mode is restored below
    try:
        with torch.inference_mode(), amp:
            for batch in progress(batches, desc="extract", total=len(batches)):
                T = max(len(encoded[i][0]) for i in batch)
                ids = torch.full((len(batch), T), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), T), dtype=torch.long)
                rows = torch.full((len(batch), T), -1, dtype=torch.long)
                for b, i in enumerate(batch):
                    tok, wids, _ = encoded[i]
                    ids[b, :len(tok)] = torch.tensor(tok)
                    mask[b, :len(tok)] = 1
                    w = torch.tensor(wids)
                    rows[b, :len(tok)] = torch.where(w >= 0, w + row_of_sentence[i], -1)
                out = base(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
                hs = out.hidden_states
                if len(hs) != n_hs:
                    raise RuntimeError(f"model returned {len(hs)} hidden_states, config says {n_hs}")
                sel = rows >= 0
                tgt = rows[sel]
                for l in layers:
                    h = hs[l - 1][sel.to(hs[l - 1].device)].float().cpu()
                    if not torch.isfinite(h).all():
                        raise FloatingPointError(f"layer {l}: hidden_states[{l - 1}] has NaN/inf values "
                                                 f"(sentences {batch[:5]}{'...' if len(batch) > 5 else ''})")
                    sums[l].index_add_(0, tgt, h)
                counts.index_add_(0, tgt, torch.ones(len(tgt)))
    finally:
        base.train(was_training)
    if len(counts) and counts.min() < 1:  # guaranteed by words_to_subwords; guard anyway
        raise RuntimeError("internal: a kept word received no subword")
    vectors = {l: sums[l] / counts[:, None] for l in layers}
    return Extracted(vectors=vectors, word_index=word_index, n_sentences_skipped=n_skipped,
                     n_words_total=n_words_total, n_sentences_per_word_fallback=n_fallback)
