"""Real-data check of the probe and the greedy selection (not a test).

For already extracted word vectors of a run (``runs/<run>/vectors/<checkpoint>/<lang>.safetensors``,
labels ``runs/<run>/data/labels.parquet``, kept (language, attribute) pairs from
``runs/<run>/data/summary.parquet``), trains per (layer, attribute, language):

* the latent-variable probe (:func:`xalign.probe.train_probe`, standardised inputs as in the
  pipeline) and the greedy top-k selection on dev (:func:`xalign.selection.greedy_select`);
* the reference probes of :func:`xalign.selection.retrained_mi` (plain linear probes
  retrained on the k selected dims and on all d dims).

Prints one row per (layer, attribute) with mean [min, max] over languages of the dev
normalised MI (bits/bits):

* ``mi_k``: the latent probe on its top-k neurons (what the overlap analysis rests on);
* ``mi_all_latent``: the same probe with all d dims on (off its training distribution);
* ``mi_k_retrained`` / ``mi_all_retrained``: L2 linear probes retrained on the k neurons /
  on all d dims (:func:`xalign.probe.train_l2_probe`);

on dev (where the neurons were selected, so ``mi_k`` is optimistic there) and on test,
plus wall times. Usage::

    python benchmarks/probe_real_data.py --run runs/gemma-270m --layers 7 13 --k 50
    python benchmarks/probe_real_data.py --run runs/tiny-lab --layers 3 4 --k 50

Runs with one torch thread by default (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from xalign.probe import ProbeConfig, standardize, train_probe
from xalign.stages.probing import probe_splits
from xalign.selection import greedy_select, retrained_mi
from xalign.store import load_tensors, read_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/gemma-270m", help="run directory")
    ap.add_argument("--checkpoint", default=None, help="vectors/<checkpoint> (default: the last one)")
    ap.add_argument("--layers", type=int, nargs="+", default=[7, 13])
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--languages", nargs="*", default=None, help="default: every language with vectors")
    ap.add_argument("--attributes", nargs="*", default=None,
                    help="default: probe.attributes of the run's params.json (else every kept one)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=-1, help="ProbeConfig.batch_size (-1: its default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-retrain", action="store_true", help="skip the retrained reference probes")
    ap.add_argument("--out", default=None, help="optional CSV of the per-language rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    run = Path(args.run)
    vec_root = run / "vectors"
    ckpts = sorted(p for p in vec_root.iterdir() if p.is_dir())
    if not ckpts:
        raise SystemExit(f"{vec_root}: no vectors (run the extraction stage first)")
    ckpt = vec_root / args.checkpoint if args.checkpoint else ckpts[-1]
    labels = read_table(run / "data" / "labels.parquet")
    summary = read_table(run / "data" / "summary.parquet")
    kept = summary[summary.status == "kept"]
    attrs = args.attributes
    if attrs is None and (run / "params.json").is_file():
        attrs = json.loads((run / "params.json").read_text()).get("probe", {}).get("attributes")
    if attrs:
        kept = kept[kept.attribute.isin(attrs)]
    langs = sorted(p.stem for p in ckpt.glob("*.safetensors"))
    if args.languages:
        langs = [l for l in langs if l in args.languages]
    cfg = ProbeConfig(seed=args.seed) if args.batch_size == -1 else ProbeConfig(
        seed=args.seed, batch_size=None if args.batch_size == 0 else args.batch_size)
    print(f"{ckpt}: languages {langs}, layers {args.layers}, k={args.k}, torch threads "
          f"{torch.get_num_threads()}, {cfg}")

    rows = []
    t_all = time.perf_counter()
    for lang in langs:
        tensors, meta = load_tensors(ckpt / f"{lang}.safetensors")
        d = int(meta["hidden_size"])
        for attr in sorted(kept[kept.language == lang].attribute):
            lab = labels[(labels.language == lang) & (labels.attribute == attr)]
            for layer in args.layers:
                if layer not in meta["layers"]:
                    raise SystemExit(f"{ckpt / lang}.safetensors: layer {layer} not extracted "
                                     f"(has {meta['layers']})")
                splits, values = probe_splits(lab, tensors, layer)
                (Xtr, ytr), (Xdv, ydv), (Xte, yte) = splits["train"], splits["dev"], splits["test"]
                if len(ytr) < 50 or len(ydv) == 0 or len(yte) == 0:
                    continue
                Xtr, Xdv, Xte = standardize(Xtr, Xdv, Xte)
                k = min(args.k, d)
                t0 = time.perf_counter()
                probe = train_probe(Xtr, ytr, len(values), cfg)
                t1 = time.perf_counter()
                res = greedy_select(probe, Xdv, ydv, k=k, X_test=Xte, y_test=yte)
                t2 = time.perf_counter()
                row = {"layer": layer, "attribute": attr, "language": lang, "d": d, "k": k,
                       "n_classes": len(values), "n_train": len(ytr), "n_dev": len(ydv),
                       "best_epoch": probe.best_epoch, "epochs": len(probe.history),
                       "dev_mi_k": res.dev_mi[-1], "dev_mi_all_latent": res.dev_mi_all,
                       "test_mi_k": res.test_mi[-1], "test_mi_all_latent": res.test_mi_all,
                       "t_probe": t1 - t0, "t_greedy": t2 - t1}
                if not args.no_retrain:
                    ref = retrained_mi(Xtr, ytr, len(values), res.neurons, Xdv, ydv, Xte, yte, config=cfg)
                    row.update(dev_mi_k_retrained=ref.dev_mi_subset, dev_mi_all_retrained=ref.dev_mi_all,
                               test_mi_k_retrained=ref.test_mi_subset, test_mi_all_retrained=ref.test_mi_all,
                               t_retrain=time.perf_counter() - t2)
                rows.append(row)
                print(f"  L{layer} {attr:6s} {lang}: N={len(ytr)} C={len(values)} "
                      f"dev MI@{k} {row['dev_mi_k']:.3f} all(latent) {row['dev_mi_all_latent']:.3f}"
                      + ("" if args.no_retrain else
                         f" | retrained MI@{k} {row['dev_mi_k_retrained']:.3f} "
                         f"all {row['dev_mi_all_retrained']:.3f}")
                      + f" | probe {row['t_probe']:.2f}s ({row['epochs']} ep) greedy {row['t_greedy']:.2f}s",
                      flush=True)
    df = pd.DataFrame(rows)
    if args.out:
        df.to_csv(args.out, index=False)
    cols = ["mi_k", "mi_all_latent"] + ([] if args.no_retrain else ["mi_k_retrained", "mi_all_retrained"])
    fmt = lambda s: f"{s.mean():.3f} [{s.min():.3f}, {s.max():.3f}]"  # noqa: E731
    pd.set_option("display.width", 200)
    for split in ("dev", "test"):
        table = df.groupby(["layer", "attribute"]).agg(
            n_lang=("language", "nunique"), **{c: (f"{split}_{c}", fmt) for c in cols})
        print(f"\n{split} normalised MI (bits/bits), mean [min, max] over languages (k={args.k}; "
              f"neurons selected on dev{', so dev MI@k is optimistic' if split == 'dev' else ''}):")
        print(table.to_string())
    times = df[["t_probe", "t_greedy"] + ([] if args.no_retrain else ["t_retrain"])].sum()
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s wall; "
          + ", ".join(f"{c} {v:.1f} s" for c, v in times.items()))


if __name__ == "__main__":
    main()
