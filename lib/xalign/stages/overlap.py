"""Stage 4 (notebook ``04_overlap``): pairwise overlap rates |A ∩ B| / k of the selected
neurons with hypergeometric p-values (Holm), and their averages per checkpoint, layer and
attribute (Wang et al. 2024, Sec. 3.3). One unit: it reads ``probing/selections.parquet``."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..params import result_config
from ..pipeline import Context, StageSummary, Unit, code_version
from ..store import read_table, write_table

name, notebook, upstream = "overlap", "04_overlap", ("probing",)
CODE = ("xalign.overlap", "xalign.stages.overlap")


def plan(ctx: Context) -> Iterator[list[Unit]]:
    """One unit: all pairs from the stage-3 selections."""
    f_sel = ctx.run_dir / "probing" / "selections.parquet"
    out = ctx.run_dir / "overlap"
    outputs = (out / "pairs.parquet", out / "pairs.csv", out / "average.parquet", out / "average.csv")
    yield [Unit(name, "all", result_config(ctx.P.overlap), {"selections": ctx.sha(f_sel)}, outputs, compute,
                {"selections": f_sel, "out": out, "alpha": ctx.P.overlap.alpha}, code_version(*CODE))]


def compute(selections: Path, out: Path, alpha: float) -> dict:
    """Write ``pairs`` and ``average`` (parquet + CSV) from a selections table."""
    from ..overlap import average_overlap, overlap_pairs

    pairs = overlap_pairs(read_table(selections), alpha=alpha)
    write_table(pairs, out / "pairs.parquet", csv=True)
    write_table(average_overlap(pairs), out / "average.parquet", csv=True)
    return {"pairs": len(pairs)}


def gather(ctx: Context, s: StageSummary, units: list[Unit]) -> None:
    """Tables ``pairs`` and ``average``."""
    out = ctx.run_dir / "overlap"
    if units:
        s.tables.update(pairs=read_table(out / "pairs.parquet"), average=read_table(out / "average.parquet"))
