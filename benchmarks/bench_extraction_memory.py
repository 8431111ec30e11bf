"""Benchmark: peak memory of writing word vectors, kept in memory vs streamed (not a test).

The extraction stage writes ``vectors/<checkpoint>/<lang>.safetensors`` with one
``(n_words, d)`` float32 matrix per layer. Two ways, each run in a fresh subprocess on the
same sentences, model and layers:

* ``memory``: :func:`xalign.extraction.extract_word_vectors` keeps every layer's matrix
  and :func:`xalign.store.save_tensors` (``safetensors.torch.save_file``) writes them:
  what the stage did before vectors were streamed;
* ``stream``: the stage's way: a :class:`xalign.extraction.VectorSink` writes each
  sentence's rows into the file as its batch is done (:func:`xalign.store.stream_tensors`).

Prints, per way, the peak resident memory of the subprocess above its resident memory
just before extraction (model loaded, sentences read), the wall time, the size of the
vectors (n_words x d x layers x 4 bytes), and whether the two files hold equal tensors.

Model: the tiny-lab's last checkpoint if present, else a random BLOOM (d = 192, 4
layers); ``--hidden-size``/``--layers-n`` make the random model larger.

Usage: ``python benchmarks/bench_extraction_memory.py [--sentences 2000] [--threads 1]
[--hidden-size 512 --layers-n 6]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def child(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_extraction import tiny_bloom, ud_sentences
    from transformers import BloomConfig, BloomModel

    from xalign import checkpoints as ck
    from xalign.extraction import extract_word_vectors
    from xalign.params import resolve_data_root
    from xalign.store import save_tensors, stream_tensors

    torch.set_num_threads(args.threads)
    root = resolve_data_root(None)
    sentences = ud_sentences(root, args.sentences, 0)
    if args.hidden_size:
        model, tok, _ = tiny_bloom(root)
        torch.manual_seed(0)
        cfg = BloomConfig(vocab_size=len(tok), hidden_size=args.hidden_size, n_layer=args.layers_n, n_head=8)
        model = BloomModel(cfg).eval()
    else:
        model, tok, _ = tiny_bloom(root)
    layers = list(range(1, ck.num_hidden_states(model) + 1))
    d = ck.hidden_size(model)
    base = _rss_kib()
    t0 = time.perf_counter()
    if args.way == "memory":
        res = extract_word_vectors(model, tok, sentences, layers, batch_size=8, max_length=10**6)
        save_tensors({f"layer_{l}": v for l, v in res.vectors.items()}, args.out)
        n = len(res.word_index)
    else:
        class Sink:
            def open(self, n_words, d_, layers_):
                specs = {f"layer_{l}": ((n_words, d_), torch.float32) for l in layers_}
                self.cm = stream_tensors(args.out, specs)
                self.w = self.cm.__enter__()

            def write(self, layer, start, block):
                self.w.write_rows(f"layer_{layer}", start, block)

        sink = Sink()
        res = extract_word_vectors(model, tok, sentences, layers, batch_size=8, max_length=10**6, sink=sink)
        sink.cm.__exit__(None, None, None)
        n = len(res.word_index)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_above_base_mib": (peak - base) / 1024, "seconds": dt, "n_words": n, "d": d,
                      "layers": len(layers), "vectors_mib": n * d * len(layers) * 4 / 2**20}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hidden-size", type=int, default=0, help="random BLOOM of this width (0: tiny lab)")
    ap.add_argument("--layers-n", type=int, default=4)
    ap.add_argument("--way", choices=["memory", "stream"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.way:
        child(args)
        return 0
    from safetensors.torch import load_file

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for way in ("memory", "stream"):
            out = Path(tmp) / f"{way}.safetensors"
            cmd = [sys.executable, __file__, "--way", way, "--out", str(out), "--sentences", str(args.sentences),
                   "--threads", str(args.threads), "--hidden-size", str(args.hidden_size),
                   "--layers-n", str(args.layers_n)]
            rows[way] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True)
                                   .stdout.strip().splitlines()[-1])
        a, b = load_file(str(Path(tmp) / "memory.safetensors")), load_file(str(Path(tmp) / "stream.safetensors"))
        equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    r = rows["memory"]
    print(f"{r['n_words']} words, d = {r['d']}, {r['layers']} layers: vectors {r['vectors_mib']:.0f} MiB; "
          f"{args.threads} thread(s)")
    print("| way | peak RSS above base (MiB) | seconds |")
    print("|---|---:|---:|")
    for way, r in rows.items():
        print(f"| {way} | {r['peak_above_base_mib']:.0f} | {r['seconds']:.1f} |")
    print(f"memory/stream peak ratio: {rows['memory']['peak_above_base_mib'] / max(rows['stream']['peak_above_base_mib'], 1):.1f}")
    print(f"files hold equal tensors: {equal}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
