"""Compare two runs' results: how far apart are overlap rates, transfer scores and Table 1?

Used to measure what is reproducible within a tolerance (README, "Reproducibility"), e.g. the
tiny lab pretrained with 1 thread vs 2 threads:

    python benchmarks/compare_runs.py runs/tiny-lab runs/tiny-lab-pt1

Prints, for each table, whether it is identical and the largest absolute difference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

TABLES = {  # file, key columns, value column
    "overlap pairs": ("overlap/pairs.parquet", ["checkpoint", "layer", "attribute", "lang_a", "lang_b"], "overlap_rate"),
    "overlap averages": ("overlap/average.parquet", ["checkpoint", "layer", "attribute"], "overlap_rate"),
    "transfer": ("transfer/results.parquet", ["checkpoint", "task", "language", "metric"], "value"),
    "Table 1 r": ("correlation/table1.parquet", ["task", "kind", "attribute", "layer"], "r"),
}


def compare(a: Path, b: Path) -> list[str]:
    """One line per table: identical or the largest |difference| and where it is."""
    out = []
    for name, (f, keys, col) in TABLES.items():
        x, y = pd.read_parquet(a / f), pd.read_parquet(b / f)
        m = x.merge(y, on=keys, suffixes=("_a", "_b"), how="outer", indicator=True)
        unmatched = int((m["_merge"] != "both").sum())
        m = m[m["_merge"] == "both"]
        d = (m[f"{col}_a"] - m[f"{col}_b"]).abs()
        i = d.idxmax()
        where = ", ".join(f"{k}={m.loc[i, k]}" for k in keys)
        out.append(f"{name}: {len(m)} rows, {int((d > 0).sum())} differ, max |diff| {d.max():.4f} ({where}); "
                   f"mean |diff| {d.mean():.4f}" + (f"; {unmatched} rows in one run only" if unmatched else ""))
    return out


if __name__ == "__main__":
    a, b = (Path(p) for p in sys.argv[1:3])
    print("\n".join(compare(a, b)))
