"""Stage 4 (notebook ``04_overlap``): pairwise overlap rates |A ∩ B| / k of the selected
neurons with hypergeometric p-values (Holm), and their averages per checkpoint, layer and
attribute (Wang et al. 2024, Sec. 3.3), with the uncertainty over probe seeds and languages.

One unit; it reads ``probing/selections.parquet`` (one row per probe and seed) and writes, in
``overlap/`` (parquet + CSV):

* ``pairs_by_seed``: one row per language pair and seed (a seed's selections against the same seed's);
* ``pairs``: one row per pair, the mean over seeds with a t interval
  (:func:`xalign.overlap.summarise_seeds`); what Table 1 and Figure 4 use;
* ``self``: per dataset, the overlap between its seeds (the self-overlap ceiling, :func:`xalign.overlap.self_overlap`);
* ``average``: per (checkpoint, layer, attribute), the mean over pairs and seeds with a
  bootstrap interval over seeds and languages, chance k/d and the ceiling
  (:func:`xalign.overlap.average_with_intervals`);
* ``changes``: consecutive checkpoints' change in the average, bootstrap p and Holm over
  steps (:func:`xalign.overlap.overlap_changes`);
* ``pairs_stability`` (``probe.selection: stability``): pairs of the stability selections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..params import result_config
from ..pipeline import Context, StageSummary, Unit, code_version
from ..store import read_table, write_table

name, notebook, upstream = "overlap", "04_overlap", ("probing",)
CODE = ("xalign.overlap", "xalign.stages.overlap")
TABLES = ("pairs_by_seed", "pairs", "self", "average", "changes")


def plan(ctx: Context) -> Iterator[list[Unit]]:
    """One unit: all tables from the stage-3 selections."""
    P, run = ctx.P, ctx.run_dir
    f_sel = run / "probing" / "selections.parquet"
    stab = P.probe.selection == "stability"
    f_stab = run / "probing" / "stability.parquet"
    out = run / "overlap"
    tables = TABLES + (("pairs_stability",) if stab else ())
    outputs = tuple(out / f"{t}.{ext}" for t in tables for ext in ("parquet", "csv"))
    inputs = {"selections": ctx.sha(f_sel), **({"stability": ctx.sha(f_stab)} if stab else {})}
    yield [Unit(name, "all", {**result_config(P.overlap), "seed": P.seed}, inputs, outputs, compute,
                {"selections": f_sel, "stability": f_stab if stab else None, "out": out,
                 "alpha": P.overlap.alpha, "seed": P.seed}, code_version(*CODE))]


def compute(selections: Path, stability: Path | None, out: Path, alpha: float, seed: int) -> dict:
    """Write the stage's tables (parquet + CSV) from a selections table."""
    from .. import overlap as ov

    sel = read_table(selections)
    by_seed = ov.overlap_pairs(sel, alpha=alpha)
    own = ov.self_overlap(sel)
    tables = {"pairs_by_seed": by_seed, "pairs": ov.summarise_seeds(by_seed), "self": own,
              "average": ov.average_with_intervals(by_seed, own, seed=seed),
              "changes": ov.overlap_changes(by_seed, alpha=alpha, seed=seed)}
    if stability is not None:
        tables["pairs_stability"] = ov.overlap_pairs(read_table(stability), alpha=alpha)
    for t, df in tables.items():
        write_table(df, out / f"{t}.parquet", csv=True)
    return {"pairs": len(tables["pairs"]), "drops": int(tables["changes"]["drop"].sum())}


def gather(ctx: Context, s: StageSummary, units: list[Unit]) -> None:
    """Tables ``pairs``, ``average``, ``self`` and ``changes``."""
    out = ctx.run_dir / "overlap"
    if units:
        s.tables.update({t: read_table(out / f"{t}.parquet") for t in ("pairs", "average", "self", "changes")})
