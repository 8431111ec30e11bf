"""Stage 2: word vectors from hidden states (mean of a word's subword representations).

Following Wang, Minervini & Ponti (2024, Sec. 3) and Stańczak et al. (2022, Sec. 4),
the representation of a UD word at layer ℓ is the mean over its subword tokens of the
hidden state at that layer::

    h_ℓ(w) = (1/|S(w)|) Σ_{t ∈ S(w)} hidden_states[ℓ-1][t]

with ℓ = 1 the embedding output and ℓ = num_hidden_states the last hidden state (after
the final norm: ``ln_f`` for BLOOM, ``norm`` for Gemma). Two ways of getting S(w)
(``extraction.tokenization`` in the run params):

* ``per_word`` - every word form is tokenised on its own, without special tokens, and
  the pieces of a sentence are concatenated. The paper's code did this (its
  ``subword_tokenize``: ``tokenizer.tokenize(form)`` per UD word), so a byte-level BPE
  never sees the space before a word: ``"cat"`` is cut as at the start of a text, not as
  ``"Ġcat"``, the piece the model saw in running text during pre-training. Default of
  the BLOOM reproduction params.
* ``sentence`` - the running text ``" ".join(words)`` is tokenised once with
  ``return_offsets_mapping`` and pieces are mapped back to words by character offsets;
  a piece that covers only a space belongs to the following word. The model reads its
  input as it read its pre-training text. Default elsewhere.

In both modes the tokenizer's own special tokens (none for BLOOM, ``<bos>`` for Gemma)
wrap the sentence and are not part of any word. The choice matters: for Gemma 3 270M
(150 sentences per language, 13 languages; ``benchmarks/compare_tokenization.py``, details
in ``params/gemma-270m.yaml``) ``per_word`` cuts 38% of the probed words differently
(1.94 vs 1.60 pieces per word), lowers the probes' test MI (0.36 vs 0.45 bits) and the
mean overlap rate over all layers (0.151 vs 0.176), and shares only 39% of the selected
neurons with ``sentence`` (71% between two probe seeds).

Multiword tokens (UD range lines, e.g. French ``du`` = ``de`` + ``le``) reach this module
as the stage-1 words table has them (``data.multiword_tokens``, :func:`xalign.data.words_table`),
so labels and vectors always line up one to one: ``syntactic`` (default) gives each
syntactic word its own vector (``per_word`` tokenises ``de`` and ``le``; ``sentence`` the
text ``"... de le ..."``), as stage 5 (zero-shot POS transfer,
:func:`xalign.data.read_pos_sentences`) also feeds the model; ``surface`` gives one vector
to the surface token ``du``, labelled with the attributes that exactly one of its
syntactic words carries, as the paper's code (Stańczak et al.'s ``preprocess_treebank.py``)
did.

Sentences longer than ``max_length`` tokens, or than the model's context
(``max_position_embeddings`` of its config, if it has one), are skipped and counted
(:attr:`Extracted.n_sentences_skipped`), as the paper's code skipped sentences of 2048 or
more subwords.

Speed (``benchmarks/bench_extraction.py``): sentences are tokenised in one batch call
(``per_word``: each distinct form once), sorted by length, right-padded into batches with
an attention mask and run under ``torch.inference_mode`` (optionally bf16 autocast)
without a KV cache. Forward pre-hooks on the decoder blocks keep only the requested
layers, and the pass stops after the highest one (:func:`layer_hidden_states`); pooling
is one ``index_add_`` per layer and batch over all words of the batch. Given a
:class:`VectorSink`, each sentence's vectors leave memory as soon as its batch is done
(the extraction stage streams them into the ``.safetensors`` file with
:func:`xalign.store.stream_tensors`), so memory does not grow with words x layers x d
(``benchmarks/bench_extraction_memory.py``). The model runs where its parameters are
(the stage moves it to ``extraction.device``, CUDA when available).
"""

from __future__ import annotations

import bisect
import contextlib
import inspect
import warnings
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

import torch

from xalign.checkpoints import hidden_size, num_hidden_states
from xalign.progress import progress

Mode = Literal["per_word", "sentence"]
MODES = ("per_word", "sentence")


@dataclass
class Extracted:
    """Word vectors of several layers for the words of many sentences.

    Attributes:
        vectors: layer ℓ -> ``(n_kept_words, d)`` float32, row i = word ``word_index[i]``;
            empty when the vectors went to a ``sink`` (:func:`extract_word_vectors`).
        word_index: ``(n_kept_words,)`` int64, ascending; index into the flattened word
            list of all input sentences (skipped sentences' words are missing).
        n_sentences_skipped: sentences with more than ``max_length`` tokens, or more than
            the model's ``max_position_embeddings`` (not extracted).
        n_words_total: words in all input sentences (kept or not).
        n_sentences_per_word_fallback: ``sentence``-mode sentences in which some word got
            no piece of its own and which were therefore encoded ``per_word``.
        n_blocks_run: decoder blocks run per forward pass (fewer than the model has when
            the highest requested layer is below the last: the pass stops there).
    """

    vectors: dict[int, torch.Tensor]
    word_index: torch.Tensor
    n_sentences_skipped: int
    n_words_total: int
    n_sentences_per_word_fallback: int = 0
    n_blocks_run: int | None = None


class VectorSink(Protocol):
    """Where :func:`extract_word_vectors` streams word vectors instead of keeping them.

    ``open(n_words, d, layers)`` is called once, before the first forward pass, with the
    number of kept words; ``write(layer, start, block)`` then receives rows ``start ..
    start + len(block)`` of layer ℓ's ``(n_words, d)`` float32 matrix, one sentence at a
    time, each row exactly once, in batch order (not row order). See
    :mod:`xalign.runs` (``vectors/<checkpoint>/<lang>.safetensors`` written with
    :func:`xalign.store.stream_tensors`).
    """

    def open(self, n_words: int, d: int, layers: list[int]) -> None: ...

    def write(self, layer: int, start: int, block: torch.Tensor) -> None: ...


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


def _word_pieces(tokenizer, words: Sequence[str]) -> list[list[int]]:
    """Subword ids of every word tokenised on its own, without special tokens.

    Each distinct form is tokenised once (UD text repeats function words and
    punctuation: 300 sentences of the 13 treebanks have 6,668 words, 3,739 distinct).
    A fast tokenizer is called through its Rust backend (``encode_batch_fast``), which
    is what ``tokenizer(list, add_special_tokens=False)`` calls after its Python checks;
    a slow one through its batch call. Same ids as ``tokenizer(w, add_special_tokens=
    False)["input_ids"]`` per word: checked on the first 16 distinct forms, the batch
    call is used for all if they differ (a tokenizer doing work in Python).
    """
    unique = list(dict.fromkeys(words))
    if not unique:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    encode = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)
    ids = None
    if encode is not None:
        ids = [e.ids for e in encode(unique, add_special_tokens=False)]
        if [list(x) for x in tokenizer(unique[:16], add_special_tokens=False)["input_ids"]] != ids[:16]:
            ids = None
    if ids is None:
        ids = tokenizer(unique, add_special_tokens=False)["input_ids"]
    table = dict(zip(unique, ids))
    return [table[w] for w in words]


def _encode_per_word(tokenizer, sentences: Sequence[Sequence[str]], affixes) -> list[tuple[list[int], list[int]]]:
    prefix, suffix = affixes
    pieces = _word_pieces(tokenizer, [w for s in sentences for w in s])
    out, k = [], 0
    for s in sentences:
        ids, wids = list(prefix), [-1] * len(prefix)
        for i, w in enumerate(s):
            p = pieces[k]
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
# hidden states of the requested layers only
# ---------------------------------------------------------------------------------------

def check_layers(model, layers: Sequence[int]) -> list[int]:
    """Validate layer numbers ℓ against ``1..num_hidden_states(model)``.

    Returns:
        The layers, sorted, without duplicates.

    Raises:
        ValueError: a layer out of range or not an int (names it and the valid range),
            or no layer.
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


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device extraction runs on (``extraction.device`` in the run params).

    Args:
        name: ``"auto"`` (CUDA if ``torch.cuda.is_available()``, else CPU, as stage 5 does),
            ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ValueError: an unknown name, or CUDA asked for but not available (one line naming
            ``extraction.device``).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"extraction.device: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"extraction.device: unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"extraction.device: {name!r} asked for, but torch sees no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"extraction.device: {name!r} asked for, but torch sees "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return dev


def context_length(model) -> int | None:
    """The longest input the model's (text) config allows: ``max_position_embeddings``.

    ``None`` if the config has none (BLOOM: ALiBi positions, trained on 2048 tokens).
    """
    config = getattr(model, "config", model)
    get = getattr(config, "get_text_config", None)
    n = getattr(get() if callable(get) else config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def decoder_blocks(model) -> torch.nn.ModuleList | None:
    """The stack of decoder blocks whose inputs are ``hidden_states[0..L-1]``, or ``None``.

    The shallowest ``nn.ModuleList`` of the base model with ``L = num_hidden_states - 1``
    modules of one class (``h`` for BLOOM, ``layers`` for Gemma, Llama, Pythia).
    ``None`` if there is none (:func:`layer_hidden_states` then falls back to
    ``output_hidden_states=True``).
    """
    base = getattr(model, "base_model", model)
    n = num_hidden_states(model) - 1
    best = None
    for name, m in base.named_modules():
        if isinstance(m, torch.nn.ModuleList) and n > 0 and len(m) == n and len({type(b) for b in m}) == 1:
            if best is None or name.count(".") < best[0].count("."):
                best = (name, m)
    return best[1] if best else None


class _StopForward(Exception):
    """Raised by a pre-hook to end a forward pass after the highest requested layer."""


def _forward_kwargs(base) -> dict:
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


def layer_hidden_states(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layers: Sequence[int],
    *,
    early_stop: bool = True,
) -> dict[int, torch.Tensor]:
    """``hidden_states[ℓ-1]`` of one forward pass, for the requested layers ℓ only.

    With ``early_stop`` (and a :func:`decoder_blocks` stack), forward pre-hooks on the
    decoder blocks capture the block inputs (``hidden_states[i]`` is the input of block
    i, i < L, in transformers' BLOOM and Gemma 3 code) and the pass is stopped in the
    pre-hook of block ``max(layers) - 1``, so the blocks above the highest requested layer
    never run. ℓ = num_hidden_states, the output of the final norm, needs the full pass
    and is read from ``last_hidden_state``. No other layer is kept and no KV cache is
    built (``use_cache=False``). Without ``early_stop`` this is the reference
    ``model(..., output_hidden_states=True).hidden_states`` (what the paper's code read);
    the two agree exactly (tested on BLOOM and Gemma 3 configs).

    Args:
        model: a transformers model (a ``*ForCausalLM`` is reduced to its base model).
        input_ids: ``(B, T)`` int64 token ids.
        attention_mask: ``(B, T)`` 1 = token, 0 = padding, or ``None``.
        layers: layers ℓ in ``1..num_hidden_states(model)``.
        early_stop: use the hooks (default); ``False`` for the reference path.

    Returns:
        ``{ℓ: (B, T, d)}`` in the model's (or autocast) dtype, on the model's device.

    Raises:
        ValueError: a layer out of range.
        RuntimeError: the model returned a different number of hidden states than its
            config implies (reference path).
    """
    layers = check_layers(model, layers)
    blocks = decoder_blocks(model) if early_stop else None
    base = getattr(model, "base_model", model)
    return _hidden_states(base, num_hidden_states(model), blocks, _forward_kwargs(base), input_ids, attention_mask,
                          layers)


def _hidden_states(base, n_hs: int, blocks, fkw: dict, input_ids, attention_mask, layers: list[int]):
    """:func:`layer_hidden_states` with its per-model look-ups done once by the caller."""
    kw = dict(input_ids=input_ids, attention_mask=attention_mask, **fkw)
    if blocks is None:
        hs = base(**kw, output_hidden_states=True).hidden_states
        if len(hs) != n_hs:
            raise RuntimeError(f"model returned {len(hs)} hidden_states, config says {n_hs}")
        return {l: hs[l - 1] for l in layers}

    captured: dict[int, torch.Tensor] = {}
    top = layers[-1]

    def capture(l: int):
        def hook(module, args, kwargs):
            captured[l] = args[0] if args else kwargs["hidden_states"]
            if l == top:
                raise _StopForward
        return hook

    handles = [blocks[l - 1].register_forward_pre_hook(capture(l), with_kwargs=True) for l in layers if l < n_hs]
    try:
        out = base(**kw)
        captured[n_hs] = out[0] if isinstance(out, tuple) else out.last_hidden_state
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return {l: captured[l] for l in layers}


def _hooks_agree(base, n_hs: int, blocks, fkw: dict, ids: torch.Tensor, layers: list[int]) -> bool:
    """Early-stop hooks give the reference hidden states on one (short) sentence ``(1, T)``."""
    mask = torch.ones_like(ids)
    a = _hidden_states(base, n_hs, blocks, fkw, ids, mask, layers)
    b = _hidden_states(base, n_hs, None, fkw, ids, mask, layers)
    return all(a[l].shape == b[l].shape and torch.allclose(a[l].float(), b[l].float(), rtol=1e-4, atol=1e-5,
                                                           equal_nan=True) for l in layers)


def _pad_id(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if t is not None:
            return int(t)
    return 0


# ---------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------

@dataclass
class _Plan:
    """Which sentences :func:`extract_word_vectors` runs and where their words' rows go.

    Attributes:
        kept: indices of the sentences extracted (non-empty, at most the token limit).
        n_skipped: non-empty sentences over the limit. n_fallback: kept ``sentence``-mode
            sentences encoded ``per_word`` (:func:`_encode_sentence`).
        n_words_total: words in all sentences. n_kept_words: words in the kept ones.
        word_index: ``(n_kept_words,)`` int64, the kept words' flat indices, ascending.
        tok_t, wid_t: per kept sentence, ``(T,)`` int64 token ids and per token its word
            (-1: special token).
        row0: per kept sentence, the output row of its first word.
    """

    kept: list[int]
    n_skipped: int
    n_fallback: int
    n_words_total: int
    n_kept_words: int
    word_index: torch.Tensor
    tok_t: dict[int, torch.Tensor]
    wid_t: dict[int, torch.Tensor]
    row0: dict[int, int]


def _plan(sentences: Sequence[Sequence[str]], encoded, limit: int) -> _Plan:
    """Keep the non-empty sentences of at most ``limit`` tokens and number their words.

    Args:
        sentences: word forms per sentence. encoded: :func:`_encode`'s
            ``(ids, word_ids, fallback)`` per sentence. limit: the most tokens kept.
    """
    word_start, pos = [], 0
    for s in sentences:
        word_start.append(pos)
        pos += len(s)
    kept = [i for i, (ids, _, _) in enumerate(encoded) if len(sentences[i]) and len(ids) <= limit]
    n_skipped = sum(1 for i, (ids, _, _) in enumerate(encoded) if len(sentences[i]) and len(ids) > limit)
    n_fallback = sum(1 for i in kept if encoded[i][2])
    word_index = torch.tensor([word_start[i] + j for i in kept for j in range(len(sentences[i]))], dtype=torch.long)

    # per kept sentence: token ids, its first output row, and per token its word (-1: special)
    tok_t, wid_t, row0, r = {}, {}, {}, 0
    for i in kept:
        ids, wids, _ = encoded[i]
        tok_t[i] = torch.tensor(ids, dtype=torch.long)
        wid_t[i] = torch.tensor(wids, dtype=torch.long)
        row0[i] = r
        r += len(sentences[i])
    return _Plan(kept, n_skipped, n_fallback, pos, r, word_index, tok_t, wid_t, row0)


def _output(sink: VectorSink | None, n_words: int, d: int, layers: list[int]):
    """Where pooled vectors go: ``(out, emit)``; ``emit(layer, start, block)`` writes rows
    ``start ..`` of layer ℓ's ``(n_words, d)`` float32 matrix, into ``out`` (in memory) or,
    with a ``sink``, to the sink (``out`` then stays empty; the sink is opened here)."""
    if sink is None:
        out = {l: torch.empty(n_words, d, dtype=torch.float32) for l in layers}

        def emit(l: int, start: int, block: torch.Tensor) -> None:
            out[l][start:start + len(block)] = block
        return out, emit
    sink.open(n_words, d, layers)
    return {}, sink.write


def _batch_layout(batch: list[int], sentences, plan: _Plan, pad: int):
    """Right-padded inputs of one batch and, per real token, its word among the batch's words.

    Returns:
        ``(loc0, n_loc, ids, mask, at, tgt, counts)``: ``loc0[j]`` the first local row of
        sentence ``batch[j]`` (the batch's words, sentence after sentence; ``n_loc`` in
        all), ``ids``/``mask`` ``(B, T)`` int64, ``at`` the flat ``(B*T)`` positions of the
        word tokens, ``tgt`` their local rows, ``counts`` ``(n_loc,)`` float32 subwords per word.

    Raises:
        RuntimeError: a word without a subword (cannot happen after :func:`_encode`).
    """
    # local rows: the batch's words, sentence after sentence
    loc0, n_loc = [], 0
    for i in batch:
        loc0.append(n_loc)
        n_loc += len(sentences[i])
    ids = torch.nn.utils.rnn.pad_sequence([plan.tok_t[i] for i in batch], batch_first=True, padding_value=pad)
    rows = torch.nn.utils.rnn.pad_sequence(
        [torch.where(plan.wid_t[i] >= 0, plan.wid_t[i] + o, -1) for i, o in zip(batch, loc0)],
        batch_first=True, padding_value=-1)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(plan.tok_t[i]) for i in batch], batch_first=True)
    flat = rows.view(-1)
    at = (flat >= 0).nonzero().squeeze(1)
    tgt = flat[at]
    counts = torch.zeros(n_loc, dtype=torch.float32).index_add_(0, tgt, torch.ones(len(tgt)))
    if n_loc and counts.min() < 1:  # guaranteed by words_to_subwords; guard anyway
        raise RuntimeError("internal: a kept word received no subword")
    return loc0, n_loc, ids, mask, at, tgt, counts


def _mean_pool(h: torch.Tensor, at_dev: torch.Tensor, tgt: torch.Tensor, counts: torch.Tensor, d: int):
    """``(n_loc, d)`` float32 CPU word vectors: the mean of each word's subword states.

    ``h`` is one layer's ``(B, T, d)`` hidden states, ``at_dev`` the flat positions of the
    word tokens (on ``h``'s device), ``tgt`` their words, ``counts`` ``(n_loc,)`` the
    subwords per word (:func:`_batch_layout`). One ``index_add_`` for all words.
    """
    h = h.reshape(-1, h.shape[-1]).index_select(0, at_dev).float().cpu()
    return torch.zeros(len(counts), d, dtype=torch.float32).index_add_(0, tgt, h).div_(counts[:, None])


def _check_finite(mean: torch.Tensor, l: int, batch: list[int], loc0: list[int]) -> None:
    """Raise if layer ℓ's ``(n_loc, d)`` word vectors of a batch hold NaN/inf.

    Raises:
        FloatingPointError: names the layer, the number of words hit and the first
            (sentence index, word index in it).
    """
    if not torch.isfinite(mean.sum()):  # one reduction; NaN/inf propagate into the sum
        bad = (~torch.isfinite(mean)).any(1).nonzero().squeeze(1).tolist()
        where = [(batch[j], b - loc0[j]) for b in bad for j in [bisect.bisect_right(loc0, b) - 1]]
        raise FloatingPointError(
            f"layer {l}: hidden_states[{l - 1}] has NaN/inf values ({len(bad)} words in its batch; "
            "first: sentence {}, word {})".format(*min(where)))


def _checked_blocks(base, n_hs: int, blocks, fkw: dict, shortest: torch.Tensor | None, layers: list[int]):
    """``blocks`` if the early-stop hooks reproduce ``output_hidden_states`` on ``shortest``
    (``(1, T)``, or None: nothing to check), else None with a ``RuntimeWarning``."""
    if blocks is not None and shortest is not None and not _hooks_agree(base, n_hs, blocks, fkw, shortest, layers):
        # stacklevel 3: the warning names the caller of extract_word_vectors
        warnings.warn(f"{type(base).__name__}: early-stop hooks disagree with output_hidden_states; "
                      "extracting with output_hidden_states=True", RuntimeWarning, stacklevel=3)
        return None
    return blocks


@dataclass(frozen=True)
class _Pass:
    """The forward pass of :func:`extract_word_vectors`, with its per-model look-ups done once:
    ``fwd(ids, mask)`` moves the ``(B, T)`` inputs to ``device`` and returns ``{ℓ: (B, T, d)}``
    (:func:`_hidden_states`; ``blocks`` None = ``output_hidden_states=True``)."""

    base: torch.nn.Module
    n_hs: int
    blocks: torch.nn.ModuleList | None
    fkw: dict
    layers: list[int]
    device: torch.device

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[int, torch.Tensor]:
        return _hidden_states(self.base, self.n_hs, self.blocks, self.fkw, ids.to(self.device),
                              mask.to(self.device), self.layers)


def _extract_batch(fwd: _Pass, d: int, batch: list[int], sentences, plan: _Plan, pad: int, emit) -> None:
    """Run one batch of sentences and ``emit`` each sentence's ``(n_words, d)`` float32 word
    vectors per layer (see :func:`extract_word_vectors`).

    Raises:
        FloatingPointError: NaN/inf in a word's hidden states (:func:`_check_finite`).
    """
    loc0, n_loc, ids, mask, at, tgt, counts = _batch_layout(batch, sentences, plan, pad)
    hs = fwd(ids, mask)
    at_dev = at.to(fwd.device)
    for l in fwd.layers:
        mean = _mean_pool(hs[l], at_dev, tgt, counts, d)
        _check_finite(mean, l, batch, loc0)
        for i, o in zip(batch, loc0):
            emit(l, plan.row0[i], mean[o:o + len(sentences[i])])


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
    early_stop: bool = True,
    sink: VectorSink | None = None,
) -> Extracted:
    """Word vectors at layers ℓ: the mean of each word's subword hidden states.

    ``h_ℓ(w) = mean_{t ∈ S(w)} hidden_states[ℓ-1][t]`` (Wang et al. 2024, Sec. 3;
    Stańczak et al. 2022, Sec. 4), with S(w) from :func:`words_to_subwords`. Sentences
    are sorted by token length (longest first), batched, right-padded with an attention
    mask (for a causal LM right padding leaves every real position's hidden state
    unchanged) and run under ``torch.inference_mode`` (optionally bf16 autocast) through
    :func:`layer_hidden_states`, which keeps only the requested layers and stops after the
    highest. Pooling is in float32: one ``index_add_`` per layer and batch; a word's
    subwords all lie in its sentence, so its vector is final after its batch and is
    written out then (to ``sink`` if given: memory stays O(batch) however many words).
    The first call checks the early-stop hooks against ``output_hidden_states=True`` on
    the shortest sentence and falls back to the latter (with a warning) if they disagree.

    Args:
        model: a transformers model (a ``*ForCausalLM`` is reduced to its base model).
        tokenizer: its tokenizer.
        sentences: word forms per sentence, e.g. UD FORMs (syntactic words).
        layers: layers ℓ in ``1..num_hidden_states(model)``.
        mode: ``"sentence"`` (default) or ``"per_word"``.
        batch_size: sentences per forward pass.
        max_length: sentences with more tokens than this (or than the model's
            ``max_position_embeddings``, if smaller) are skipped and counted.
        bf16: run the forward pass under bfloat16 autocast (fast only on CPUs/GPUs with
            bf16 units; the 2-core EPYC of the project has none).
        early_stop: stop each pass after the highest requested layer (default); ``False``
            runs the full pass with ``output_hidden_states=True``. Same vectors.
        sink: a :class:`VectorSink` that receives the vectors as they are computed
            (``Extracted.vectors`` is then empty); None keeps them in memory.

    Returns:
        :class:`Extracted`: vectors ``{ℓ: (n_kept_words, d)}`` with d =
        ``hidden_size(model)``, ``word_index`` into the flattened word list.

    Raises:
        ValueError: a layer out of range (names it and the valid range), unknown mode,
            bad batch_size/max_length, malformed sentences.
        FloatingPointError: NaN/inf in the hidden states of a word (names the layer and
            the sentence).
    """
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"batch_size/max_length: must be >= 1, got {batch_size}/{max_length}")
    layers = check_layers(model, layers)
    n_hs, d = num_hidden_states(model), hidden_size(model)
    encoded = _encode(tokenizer, sentences, mode)
    plan = _plan(sentences, encoded, min(max_length, context_length(model) or max_length))
    out, emit = _output(sink, plan.n_kept_words, d, layers)

    base = getattr(model, "base_model", model)
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    order = sorted(plan.kept, key=lambda i: (-len(plan.tok_t[i]), i))
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    amp = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())
    blocks = decoder_blocks(model) if early_stop else None
    fkw = _forward_kwargs(base)
    was_training = base.training
    base.eval()  # no dropout; the mode is restored below
    try:
        with torch.inference_mode(), amp:
            shortest = plan.tok_t[order[-1]][None].to(device) if order else None
            blocks = _checked_blocks(base, n_hs, blocks, fkw, shortest, layers)
            fwd = _Pass(base, n_hs, blocks, fkw, layers, device)
            for batch in progress(batches, desc="extract", total=len(batches)):
                _extract_batch(fwd, d, batch, sentences, plan, pad, emit)
    finally:
        base.train(was_training)
    n_blocks = (layers[-1] - 1 if layers[-1] < n_hs else n_hs - 1) if blocks is not None else n_hs - 1
    return Extracted(vectors=out, word_index=plan.word_index, n_sentences_skipped=plan.n_skipped,
                     n_words_total=plan.n_words_total, n_sentences_per_word_fallback=plan.n_fallback,
                     n_blocks_run=n_blocks)
