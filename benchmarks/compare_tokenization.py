"""Compare two runs that differ in ``extraction.tokenization`` (per_word vs sentence).

Given the run directories of two runs of the same model and data (e.g.
``runs/gemma-270m`` with ``tokenization: sentence`` and ``runs/gemma-270m-per_word``
with ``per_word``, stages 01-04 done), prints per (attribute, layer):

* (i)   the mean pairwise overlap rate |A ∩ B|/k (``overlap/pairs.parquet``; Wang et
  al. 2024, Sec. 3.3) in each run and the difference, with a paired Wilcoxon
  signed-rank test over all (layer, attribute, language pair) rates;
* (ii)  the agreement |S_1 ∩ S_2|/k between the k neurons selected for the same
  (language, attribute, layer) in the two runs (``probing/selections.parquet``), mean
  over languages; chance is k/d;
* (iii) the probe's dev and test mutual information (bits, with the k selected neurons)
  in each run;
* (iv)  with ``--segmentation``: the share of the probed words whose subword
  segmentation differs between the two modes (the tokenizer is loaded from the first
  run's checkpoint; for a GGUF this reads the whole file, about a minute), counting a
  word as differently segmented when its pieces differ after removing the space marker
  (``Ġ``, ``▁``) of the first piece, and the mean number of pieces per word;
* with ``--seed-floor SEED``: the same agreement between run A's selections and probes
  retrained on run A's own vectors and splits with another probe seed (layers
  ``--layers``): how much of (ii)'s disagreement the probe's own randomness explains.

Usage: ``python benchmarks/compare_tokenization.py RUN_A RUN_B [--layers 10,13]
[--segmentation] [--seed-floor 1]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from scipy.stats import wilcoxon

KEY = ["checkpoint", "layer", "attribute"]


def _mode(run: Path) -> str:
    p = json.loads((run / "params.json").read_text())
    p = p.get("params", p)
    return str(p["extraction"]["tokenization"])


def _read(run: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    for f in ("overlap/pairs.parquet", "probing/selections.parquet"):
        if not (run / f).is_file():
            raise SystemExit(f"{run / f}: missing (run stages 01-04 first)")
    return pd.read_parquet(run / "overlap" / "pairs.parquet"), pd.read_parquet(run / "probing" / "selections.parquet")


def overlap_table(pa: pd.DataFrame, pb: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean overlap rate per (layer, attribute) in A and B, over language pairs present in both."""
    on = KEY + ["lang_a", "lang_b"]
    m = pa[on + ["overlap_rate"]].merge(pb[on + ["overlap_rate"]], on=on, suffixes=("_a", "_b"))
    t = m.groupby(["attribute", "layer"]).agg(overlap_a=("overlap_rate_a", "mean"),
                                              overlap_b=("overlap_rate_b", "mean"),
                                              n_pairs=("overlap_rate_a", "size")).reset_index()
    t["overlap_diff"] = t.overlap_b - t.overlap_a
    return t, m


def agreement_table(sa: pd.DataFrame, sb: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """|S_A ∩ S_B|/k of the selected neurons per (language, attribute, layer); means per (attribute, layer)."""
    on = KEY + ["language"]
    cols = ["neurons", "k", "d", "dev_mi", "test_mi"]
    m = sa[on + cols].merge(sb[on + cols], on=on, suffixes=("_a", "_b"))
    m["agreement"] = [len(set(x) & set(y)) / k for x, y, k in zip(m.neurons_a, m.neurons_b, m.k_a)]
    m["chance"] = m.k_a / m.d_a
    t = m.groupby(["attribute", "layer"]).agg(
        agreement=("agreement", "mean"), chance=("chance", "mean"), n_probes=("agreement", "size"),
        dev_mi_a=("dev_mi_a", "mean"), dev_mi_b=("dev_mi_b", "mean"),
        test_mi_a=("test_mi_a", "mean"), test_mi_b=("test_mi_b", "mean")).reset_index()
    return t, m


def segmentation(run_a: Path, mode_a: str, mode_b: str) -> dict[str, float]:
    """Share of probed words whose segmentation differs between the modes; pieces per word."""
    import torch  # noqa: F401  (transformers import order)

    from xalign import checkpoints as ck
    from xalign.extraction import words_to_subwords

    row = next(c for c in json.loads((run_a / "checkpoints.json").read_text()) if not c["excluded"])
    c = ck.Checkpoint(row["name"], row["step"], row["source"], row["location"], row["revision"],
                      row["tokenizer_location"], row["gguf_file"])
    tok = ck.load_tokenizer(c)
    labels = pd.read_parquet(run_a / "data" / "labels.parquet")
    n = n_ids = n_seg = 0
    pieces = {mode_a: 0, mode_b: 0}

    def strings(ids):
        s = tok.convert_ids_to_tokens(ids)
        if s:
            s[0] = s[0].lstrip("Ġ▁ ")
        return tuple(p for p in s if p)

    for lang, lab in labels.groupby("language"):
        words = pd.read_parquet(run_a / "data" / "words" / f"{lang}.parquet")
        probed = set(zip(lab.sent_idx, lab.word_idx))
        for sent_idx, g in words[words.sent_idx.isin(set(lab.sent_idx))].groupby("sent_idx"):
            g = g.sort_values("word_idx")
            forms = g.form.tolist()
            seg = {}
            for mode in (mode_a, mode_b):
                ids, wids = words_to_subwords(tok, forms, mode)
                seg[mode] = [[t for t, j in zip(ids, wids) if j == i] for i in range(len(forms))]
            for i, w in enumerate(g.word_idx):
                if (sent_idx, w) not in probed:
                    continue
                a, b = seg[mode_a][i], seg[mode_b][i]
                n += 1
                n_ids += a != b
                n_seg += strings(a) != strings(b)
                pieces[mode_a] += len(a)
                pieces[mode_b] += len(b)
    return {"words": n, "ids_differ": n_ids / n, "segmentation_differs": n_seg / n,
            f"pieces_per_word_{mode_a}": pieces[mode_a] / n, f"pieces_per_word_{mode_b}": pieces[mode_b] / n}


def seed_floor(run: Path, sel: pd.DataFrame, layers: list[int], seed: int) -> pd.DataFrame:
    """Agreement |S_seed0 ∩ S_seed|/k: run's probes retrained with probe seed ``seed``.

    Same vectors, labels, splits and probe params as the run (``params.json``); only
    ``ProbeConfig.seed`` differs (initialisation, minibatches, Monte Carlo masks, held-out
    part of train). Mirrors the run's stage 3 (standardise on train, train, greedy
    selection on dev).
    """
    from xalign.probe import ProbeConfig, standardize, train_probe
    from xalign.stages.probing import probe_splits
    from xalign.selection import greedy_select
    from xalign.store import load_tensors

    p = json.loads((run / "params.json").read_text())
    pp = p.get("params", p)["probe"]
    cfg = ProbeConfig(lr=pp["lr"], weight_decay=pp["weight_decay"], max_epochs=pp["max_epochs"],
                      patience=pp["patience"], batch_size=pp["batch_size"], mc_samples=pp["mc_samples"],
                      entropy_scale=pp["entropy_scale"], held_out_fraction=pp["held_out_fraction"],
                      restore=pp.get("restore", "best"), seed=seed)
    labels = pd.read_parquet(run / "data" / "labels.parquet")
    rows = []
    todo = sel[sel.layer.isin(layers)]
    for (ckpt, lang), part in todo.groupby(["checkpoint", "language"]):
        tensors, _ = load_tensors(run / "vectors" / ckpt / f"{lang}.safetensors")
        for r in part.itertuples():
            lab = labels[(labels.language == lang) & (labels.attribute == r.attribute)]
            xy, values = probe_splits(lab, tensors, int(r.layer))
            (Xtr, ytr), (Xdv, ydv), (Xte, yte) = xy["train"], xy["dev"], xy["test"]
            if pp.get("standardize", True):
                Xtr, Xdv, Xte = standardize(Xtr, Xdv, Xte)
            probe = train_probe(Xtr, ytr, len(values), cfg)
            res = greedy_select(probe, Xdv, ydv, k=int(r.k), X_test=Xte, y_test=yte)
            rows.append({"checkpoint": ckpt, "step": r.step, "language": lang, "attribute": r.attribute,
                         "layer": r.layer, "d": r.d, "k": r.k, "neurons": [int(n) for n in res.neurons],
                         "agreement": len(set(res.neurons) & set(r.neurons)) / r.k, "test_mi": res.test_mi[-1]})
    return pd.DataFrame(rows)


def _markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    cols = list(df.columns)
    align = ["---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in cols]
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join(align) + "|"]
    for _, r in df.iterrows():
        out.append("| " + " | ".join(format(v, floatfmt) if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--layers", default=None, help="comma-separated layers for the summary lines (default: all)")
    ap.add_argument("--segmentation", action="store_true", help="(iv): load the tokenizer and compare segmentations")
    ap.add_argument("--seed-floor", type=int, default=None, metavar="SEED",
                    help="retrain run A's probes at --layers with this probe seed: agreement between seeds")
    args = ap.parse_args(argv)
    mode_a, mode_b = _mode(args.run_a), _mode(args.run_b)
    print(f"A = {args.run_a} (tokenization: {mode_a});  B = {args.run_b} (tokenization: {mode_b})")
    pa, sa = _read(args.run_a)
    pb, sb = _read(args.run_b)
    ov, ov_pairs = overlap_table(pa, pb)
    ag, ag_probes = agreement_table(sa, sb)
    t = ov.merge(ag, on=["attribute", "layer"], how="outer").sort_values(["attribute", "layer"])
    cols = ["attribute", "layer", "n_pairs", "overlap_a", "overlap_b", "overlap_diff", "n_probes", "agreement",
            "chance", "dev_mi_a", "dev_mi_b", "test_mi_a", "test_mi_b"]
    print("\nPer (attribute, layer): mean overlap rate (i), neuron agreement |S_A ∩ S_B|/k (ii), "
          "probe MI in bits with the k selected neurons (iii)\n")
    print(_markdown(t[cols]))

    layers = [int(x) for x in args.layers.split(",")] if args.layers else sorted(set(ov_pairs.layer))
    sets = [("all layers", sorted(set(ov_pairs.layer)))] + ([(f"layers {layers}", layers)] if args.layers else [])
    print()
    for name, ls in sets:
        o = ov_pairs[ov_pairs.layer.isin(ls)]
        g = ag_probes[ag_probes.layer.isin(ls)]
        diff = o.overlap_rate_b - o.overlap_rate_a
        p = wilcoxon(o.overlap_rate_b, o.overlap_rate_a).pvalue if (diff != 0).any() else 1.0
        print(f"{name}: mean overlap rate A {o.overlap_rate_a.mean():.4f}, B {o.overlap_rate_b.mean():.4f}, "
              f"B - A {diff.mean():+.4f} (paired over {len(o)} (layer, attribute, pair) rates; "
              f"Wilcoxon p = {p:.2g}); |diff| mean {diff.abs().mean():.4f}")
        print(f"{name}: neuron agreement |S_A ∩ S_B|/k mean {g.agreement.mean():.3f} over {len(g)} probes "
              f"(chance {g.chance.mean():.3f}); test MI A {g.test_mi_a.mean():.3f}, B {g.test_mi_b.mean():.3f} bits; "
              f"dev MI A {g.dev_mi_a.mean():.3f}, B {g.dev_mi_b.mean():.3f} bits")
    if args.seed_floor is not None:
        import torch

        torch.set_num_threads(1)
        f = seed_floor(args.run_a, sa, layers, args.seed_floor)
        g = ag_probes[ag_probes.layer.isin(layers)]
        seed_a = json.loads((args.run_a / "params.json").read_text()).get("seed")
        print(f"\nseed floor, layers {layers}: A (seed {seed_a}) vs A retrained with probe seed {args.seed_floor}: "
              f"agreement {f.agreement.mean():.3f} over {len(f)} probes "
              f"(A vs B: {g.agreement.mean():.3f}); test MI {f.test_mi.mean():.3f} bits")
        from xalign.overlap import overlap_pairs

        po = overlap_pairs(f)
        o = ov_pairs[ov_pairs.layer.isin(layers)]
        print(f"seed floor, layers {layers}: mean overlap rate A (seed 0) {o.overlap_rate_a.mean():.4f}, A (probe seed "
              f"{args.seed_floor}) {po.overlap_rate.mean():.4f}; B (other mode) {o.overlap_rate_b.mean():.4f}")
        print(_markdown(f.groupby(["attribute", "layer"]).agreement.mean().reset_index()
                        .merge(g.groupby(["attribute", "layer"]).agreement.mean().rename("agreement_a_vs_b")
                               .reset_index(), on=["attribute", "layer"])))
    if args.segmentation:
        s = segmentation(args.run_a, mode_a, mode_b)
        print(f"\n(iv) {s['words']} probed words: piece ids differ for {s['ids_differ']:.1%}, segmentation "
              f"(pieces without the space marker) differs for {s['segmentation_differs']:.1%}; pieces per word "
              + ", ".join(f"{k.removeprefix('pieces_per_word_')} {v:.2f}" for k, v in s.items()
                          if k.startswith("pieces_per_word_")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
