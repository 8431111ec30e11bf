"""Stage 7 (notebook ``07_figures``): Figures 1-5 and the Appendix B.1 heatmaps of Wang et
al. (2024), PNG and PDF, in ``figures/<run>/``. One unit; the files it wrote are listed in
``<run_dir>/figures.json`` and in the manifest, so figures the params no longer produce (a
dropped task, a dropped attribute) are removed.

Figures 1, 3 and 4 (and Table 1, stage 6) use ``probe.attributes`` at ``extraction.layers``;
Figure 2 and the heatmaps (last checkpoint, at ``extraction.layers``) draw every attribute
probed there, ``probe.sweep_attributes`` too.

The same unit writes the run's report (:mod:`xalign.report`), ``<run_dir>/report.html`` and
``figures/<run>/report.html``: the figures embedded, Table 1 (stage 6, hence upstream),
headline numbers, skipped datasets, stage timings and provenance. Its inputs cover all of
it, the stage records and ``timings.csv`` rows of stages 0-6 included, so a rerun of
earlier stages redraws the report (and the figures, with the same bytes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from ..params import result_config
from ..pipeline import Context, StageSummary, Unit, code_version
from ..store import content_sha256, read_json, read_table, write_json
from ._common import checkpoint_rows

name, notebook, upstream = "figures", "07_figures", ("overlap", "transfer", "correlation")
CODE = ("xalign.plots", "xalign.overlap", "xalign.stages.figures", "xalign.report")


def plan(ctx: Context) -> Iterator[list[Unit]]:
    """One unit over the overlap pairs and, with transfer tasks, the transfer results and
    Table 1; it writes the figures and the report."""
    from .. import report
    from ..stats import RECIPES
    from .correlation import _table_name

    P, run = ctx.P, ctx.run_dir
    f_pairs, f_tr = run / "overlap" / "pairs.parquet", run / "transfer" / "results.parquet"
    f_avg, f_ch = run / "overlap" / "average.parquet", run / "overlap" / "changes.parquet"
    use_transfer = bool(P.transfer.tasks) and f_tr.is_file()
    f_t1 = [run / "correlation" / f"{_table_name(P, r)}.parquet" for r in RECIPES] if use_transfer else []
    f_t1 = [f for f in f_t1 if f.is_file()]
    f_sum, f_ck = run / "data" / "summary.parquet", run / "checkpoints.json"
    # what the report shows besides the tables: provenance, the other stages' records, params, timings
    rctx = report.context(ctx.m.run, ctx.m.stages, read_json(run / "params.json"),
                          report.read_timings(run / "timings.csv"))
    inputs = {"pairs": ctx.sha(f_pairs), "average": ctx.sha(f_avg), "changes": ctx.sha(f_ch),
              **({"transfer": ctx.sha(f_tr)} if use_transfer else {}),
              **{f.stem: ctx.sha(f) for f in f_t1}, "summary": ctx.sha(f_sum), "checkpoints": ctx.sha(f_ck),
              "report": content_sha256(rctx)}
    config = {**result_config(P.figures), "layers": list(P.extraction.layers),
              "attributes": list(P.probe.attributes), "checkpoints": [c["name"] for c in checkpoint_rows(run)],
              "figure_dir": str(P.figure_dir())}
    outs = (run / "figures.json", run / report.REPORT_NAME, P.figure_dir() / report.REPORT_NAME)
    yield [Unit(name, "all", config, inputs, outs, compute,
                {"pairs": f_pairs, "average": f_avg, "changes": f_ch, "transfer": f_tr if use_transfer else None,
                 "dest": run / "figures.json", "tables1": f_t1, "summary": f_sum, "report_ctx": rctx,
                 "reports": outs[1:], **config}, code_version(*CODE))]


def _figures(pairs: pd.DataFrame, avg: pd.DataFrame, changes: pd.DataFrame, transfer: pd.DataFrame | None,
             layers: list[int], attributes: list[str], last: str, skipped: list[str]) -> dict[str, Any]:
    """The figures (name -> matplotlib Figure) for one run's tables (overlap ``pairs``,
    ``average`` with intervals and ``changes`` of stage 4)."""
    from .. import plots

    main_layers = [l for l in layers if l in set(pairs.layer)]
    series = avg[avg.layer.isin(main_layers) & avg.attribute.isin(attributes)]
    series_ok = series.step.dropna().nunique() >= 2  # figures against step need two steps
    figs: dict[str, Any] = {"fig2_overlap_vs_layer": plots.fig_overlap_vs_layer(avg, last)}
    if series_ok:
        figs["fig1_overlap_vs_step"] = plots.fig_overlap_vs_step(series, changes=changes)
    else:
        skipped.append("figures 1, 3 and 5 (vs step): fewer than two checkpoints with a step")
    layer = main_layers[-1] if main_layers else int(pairs.layer.max())
    if transfer is not None and len(transfer):
        if series_ok:
            figs["fig3_overlap_transfer_vs_step"] = plots.fig_overlap_transfer_vs_step(series, transfer, layer,
                                                                                  changes=changes)
            figs["fig5_transfer_vs_step"] = plots.fig_transfer_vs_step(transfer)
        at_layer = pairs[(pairs.layer == layer) & pairs.attribute.isin(attributes)]
        with_source = at_layer[(at_layer.lang_a == "en") | (at_layer.lang_b == "en")]
        for attr in sorted(set(with_source.attribute)):
            figs[f"fig4_pairwise_scatter_{attr}_L{layer}"] = plots.fig_pairwise_scatter(at_layer, transfer, layer, attr)
    at_last = pairs[pairs.checkpoint == last]
    for attr in sorted(set(at_last.attribute)):
        for l in main_layers:
            if ((at_last.attribute == attr) & (at_last.layer == l)).any():
                figs[f"heatmap_{attr}_L{l}_{last}"] = plots.fig_overlap_heatmap(pairs, last, l, attr)
    return figs


def compute(pairs: Path, average: Path, changes: Path, transfer: Path | None, dest: Path, layers: list[int],
            attributes: list[str], checkpoints: list[str], figure_dir: str, formats: list[str], dpi: int,
            tables1: list[Path] = (), summary: Path | None = None, report_ctx: dict | None = None,
            reports: tuple[Path, ...] = (), **_: Any) -> dict:
    """Draw and save every figure, then write the report (:mod:`xalign.report`) to each of
    ``reports``; notes list the files (``files``) and figures (``figures``)."""
    import io

    from .. import plots, report

    skipped: list[str] = []
    avg, tr = read_table(average), read_table(transfer) if transfer else None
    figs = _figures(read_table(pairs), avg, read_table(changes), tr, layers, attributes, checkpoints[-1], skipped)
    saved = [p for n, fig in figs.items() for p in plots.save(fig, Path(figure_dir), n, formats=tuple(formats),
                                                               dpi=dpi)]
    write_json(sorted(p.name for p in saved), dest)
    files = [os.path.relpath(p, dest.parent) for p in saved]  # relative to the run folder (it may move)
    if reports:
        pngs = {}
        for n, fig in figs.items():
            if "png" in formats:  # the bytes just written
                pngs[n] = (Path(figure_dir) / f"{n}.png").read_bytes()
            else:  # the report still embeds PNG: rendered in memory only
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=dpi)
                pngs[n] = buf.getvalue()
        run = dest.parent
        text = report.build(figures=pngs, ctx=report_ctx or {}, average=avg, transfer=tr,
                            tables1={Path(f).stem: read_table(f) for f in tables1},
                            summary=read_table(summary) if summary and Path(summary).is_file() else None,
                            checkpoints=[c for c in read_json(run / "checkpoints.json") if not c["excluded"]],
                            layers=layers, figure_notes=skipped)
        report.write(text, reports)
    return {"files": files, "figures": sorted(figs), "skipped": skipped}


def gather(ctx: Context, s: StageSummary, units: list[Unit]) -> None:
    """Table ``figures``: the names of the figures drawn (each saved in every format)."""
    for u in units:
        s.tables["figures"] = pd.DataFrame({"figure": ctx.notes(u).get("figures", [])})
