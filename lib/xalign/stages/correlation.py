"""Stage 6 (notebook ``06_correlation``): Pearson r between overlap and zero-shot transfer,
the paper's Table 1 (Wang et al. 2024, Sec. 4.2), by both recipes of
:func:`xalign.stats.correlation_table`. The one ``correlation.recipe`` names is
``correlation/table1.{parquet,csv,md}`` (summary table ``table1``), the other
``correlation/table1_<recipe>.*`` (table ``table1_<recipe>``): one unit each."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..pipeline import Context, StageSummary, Unit, code_version
from ..store import atomic_path, read_table, write_table
from ._common import checkpoint_rows

name, notebook, upstream = "correlation", "06_correlation", ("overlap", "transfer")
CODE = ("xalign.stats", "xalign.stages.correlation")


def _table_name(P, recipe: str) -> str:
    return "table1" if recipe == P.correlation.recipe else f"table1_{recipe}"


def plan(ctx: Context) -> Iterator[list[Unit]]:
    """One unit per recipe; none (and the old tables removed) without transfer tasks."""
    from ..stats import RECIPES

    P, run = ctx.P, ctx.run_dir
    if not P.transfer.tasks:
        ctx.skip("no transfer results to correlate with (transfer.tasks is empty)")
        yield []
        return
    f_pairs, f_tr = run / "overlap" / "pairs.parquet", run / "transfer" / "results.parquet"
    inputs = {"pairs": ctx.sha(f_pairs), "transfer": ctx.sha(f_tr)}
    base = {"layers": list(P.extraction.layers), "attributes": list(P.probe.attributes),
            "checkpoints": [c["name"] for c in checkpoint_rows(run)]}
    units = []
    for recipe in sorted(RECIPES, key=lambda r: r != P.correlation.recipe):  # the chosen one first
        table = _table_name(P, recipe)
        outs = tuple(run / "correlation" / f"{table}.{ext}" for ext in ("parquet", "csv", "md"))
        units.append(Unit(name, table, {**base, "recipe": recipe}, inputs, outs, compute,
                          {"pairs": f_pairs, "transfer": f_tr, "recipe": recipe, "dest": outs[0], **base},
                          code_version(*CODE)))
    yield units


def compute(pairs: Path, transfer: Path, recipe: str, dest: Path, layers: list[int], attributes: list[str],
            checkpoints: list[str]) -> dict:
    """Table 1 by ``recipe`` over the series' pairs (``layers`` x ``attributes`` x ``checkpoints``)."""
    from ..stats import correlation_table, table1_markdown

    p = read_table(pairs)
    # the sweep exists on one checkpoint only, and so do probe.sweep_attributes
    p = p[p.layer.isin(layers) & p.checkpoint.isin(checkpoints) & p.attribute.isin(attributes)]
    table = correlation_table(p, read_table(transfer), recipe=recipe)
    write_table(table, dest, csv=True)
    with atomic_path(dest.with_suffix(".md")) as tmp:
        tmp.write_text(table1_markdown(table) + "\n", encoding="utf-8")
    return {"rows": len(table)}


def gather(ctx: Context, s: StageSummary, units: list[Unit]) -> None:
    """One table per recipe (``table1``, ``table1_<other>``)."""
    for u in units:
        s.tables[u.key] = read_table(u.outputs[0])
