"""A report people read: ``runs/<run>/report.html`` (and ``figures/<run>/report.html``).

One self-contained HTML page per run, written by stage 7 (:mod:`xalign.stages.figures`)
beside its figures and recorded in the manifest as an output of that stage:

* a one-line summary (also in ``<meta name="xalign-summary">``, see :func:`describe`);
* **headline numbers**: the mean overlap rate per attribute and layer at the last
  checkpoint with its 95% interval, chance k/d and the self-overlap ceiling
  (``overlap/average``), and zero-shot transfer at the last checkpoint per task and language
  with its intervals, and the mean over target languages (``transfer/results``);
* **Table 1** (``correlation/table1``) with its intervals, permutation p, leave-one-out
  range, partial r and language bootstrap, a verdict per row and
  :func:`xalign.stats.survives`'s sentence per row; the other recipe folded below;
* **the figures**, PNG embedded as ``data:`` URIs, each with a caption;
* **datasets** kept and skipped (``data/summary``: a language x attribute grid, counts,
  and a collapsible list of the skipped ones with reasons) and the other stages' skip notes;
* **stage timings**: per stage, the units computed and reused and the seconds of its last
  run (``manifest.json``), and the notebook's wall time (the last row of ``timings.csv``);
* **provenance**: git commit, Python, platform, package versions, seed, the checkpoint
  series with weight hashes, and the resolved params (``params.json``).

No external CSS, scripts, fonts or images: it reads offline, and it is built with the
standard library (:func:`html.escape`) and :meth:`pandas.DataFrame.to_html`. The same
inputs give the same bytes: nothing in it depends on when it was written, except the
stage start times the manifest already records. What changes on every stage run is left
out: the provenance's ``time``, and stage 7's own timings (its manifest record and
``timings.csv`` row are written after the report). Stage 7 hashes everything the report
shows (:func:`context` included), so the report is redrawn when any of it changes.

``python -m xalign.report RUN_DIR -o OUT.html`` rebuilds a finished run's report from its
folder (figures from ``figures.json``'s PNG files); for a run whose stage 7 just ran, it
gives the bytes stage 7 wrote.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from .store import ArtefactError, atomic_path, read_json

REPORT_NAME = "report.html"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Provenance keys left out of the report (they change on every stage run).
VOLATILE = ("time",)
#: The stage that writes the report (its own timings are not known yet when it does).
THIS_STAGE = "figures"
_DASH = "—"

_CSS = """
:root { --fg:#1d232b; --muted:#5b6673; --line:#d9dee4; --band:#f4f6f8; --accent:#1f5fa8; --ok:#1c7a3a; }
* { box-sizing: border-box; }
body { margin:0; color:var(--fg); background:#fff; font:15px/1.5 -apple-system, "Segoe UI", Roboto,
       "Helvetica Neue", Arial, "DejaVu Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 6px; }
p { margin: 6px 0 10px; }
a { color: var(--accent); }
.lead { font-size: 16px; margin: 6px 0 12px; }
.note, figcaption, .muted { color: var(--muted); font-size: 13.5px; }
nav { margin: 10px 0 4px; font-size: 14px; }
nav a { margin-right: 14px; }
code, pre { font: 13px/1.45 "DejaVu Sans Mono", Menlo, Consolas, monospace; }
pre { background: var(--band); padding: 10px 12px; overflow-x: auto; border-radius: 4px; }
pre.cols { columns: 2 420px; column-gap: 28px; white-space: pre-wrap; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13.5px;
        font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--band); font-weight: 600; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td { white-space: nowrap; }
td.wrap, table.wrap td { white-space: normal; }
table.kv th { text-align: left; background: none; font-weight: 600; padding-right: 18px; }
table.kv tr td, table.kv tr th { background: none !important; }
details { margin: 8px 0 12px; }
summary { cursor: pointer; color: var(--accent); }
figure { margin: 18px 0 26px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 10px 22px; }
.grid figure { margin: 10px 0; }
.yes { color: var(--ok); font-weight: 600; }
ol.sentences li { margin: 3px 0; }
"""


# ----------------------------------------------------------------------------- formatting
def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _num(x: Any, digits: int = 3) -> str:
    if not _finite(x):
        return _DASH
    t = f"{float(x):.{digits}f}"
    return t[1:] if t.startswith("-") and not t.strip("-0.") else t  # no "-0.00"


def _p(x: Any) -> str:
    if not _finite(x):
        return _DASH
    return "<0.001" if float(x) < 0.001 else f"{float(x):.3f}"


def _ci(lo: Any, hi: Any, digits: int = 3) -> str:
    return f"[{_num(lo, digits)}, {_num(hi, digits)}]" if _finite(lo) and _finite(hi) else _DASH


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _table(df: pd.DataFrame, cls: str = "") -> str:
    """``df`` (already formatted as strings) as an HTML table, escaped, in a scroll box."""
    if df.empty:
        return '<p class="note">none</p>'
    body = df.to_html(index=False, border=0, escape=True, na_rep=_DASH, classes=cls or None)
    return f'<div class="scroll">{body}</div>'


def _kv(rows: Iterable[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{_e(k)}</th><td class=\"wrap\">{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{cells}</table>'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}">\n<h2>{_e(title)}</h2>\n{body}\n</section>\n'


def _details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{_e(summary)}</summary>\n{body}\n</details>"


# ----------------------------------------------------------------------------- context
def read_timings(path: Path) -> list[dict[str, Any]]:
    """The last row per notebook of ``timings.csv`` (``ended,notebook,seconds`` lines written
    by ``run_all.sh``), in notebook order; stage 7's own row is left out (it is written
    after the report). Missing file: ``[]``."""
    if not path.is_file():
        return []
    last: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.reader(f):
            if len(row) != 3:
                continue
            ended, nb, sec = (c.strip() for c in row)
            try:
                seconds = float(sec)
            except ValueError:
                continue
            last[nb] = {"notebook": nb, "seconds": seconds, "ended": ended}
    return [last[nb] for nb in sorted(last) if not nb.startswith("07_")]


def context(run: Mapping[str, Any], stages: Mapping[str, Mapping[str, Any]], params: Mapping[str, Any],
            timings: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """What the report shows besides the run's tables, JSON-able: the run's provenance
    without :data:`VOLATILE` keys, every other stage's last record in the manifest
    (computed, reused, removed, seconds, start time, commit, skip notes), the params, and
    ``timings`` (:func:`read_timings`). Stage 7 hashes it into the report's identity."""
    keep = ("computed", "reused", "removed", "seconds", "finished", "git_commit", "skipped")
    return {"provenance": {k: v for k, v in run.items() if k not in VOLATILE},
            "stages": {name: {k: e.get(k) for k in keep} for name, e in stages.items() if name != THIS_STAGE},
            "params": dict(params), "timings": [dict(t) for t in timings]}


def context_from_run(run_dir: str | Path) -> dict[str, Any]:
    """:func:`context` from a run folder's ``manifest.json``, ``params.json`` and ``timings.csv``.

    Raises:
        ArtefactError: ``manifest.json`` or ``params.json`` is missing or corrupt.
    """
    run_dir = Path(run_dir)
    m = read_json(run_dir / "manifest.json")
    return context(m.get("run", {}), m.get("stages", {}), read_json(run_dir / "params.json"),
                   read_timings(run_dir / "timings.csv"))


# ----------------------------------------------------------------------------- sections
def _headline(avg: pd.DataFrame | None, transfer: pd.DataFrame | None, last: str, layers: Sequence[int],
              source: str = "en") -> tuple[str, dict[str, Any]]:
    """Headline numbers at the last checkpoint; returns the HTML and facts for the summary."""
    from .stats import DEFAULT_METRICS, task_scores

    facts: dict[str, Any] = {}
    parts = [f'<p>At the last checkpoint, <code>{_e(last)}</code>.</p>', "<h3>Overlap rate</h3>"]
    if avg is not None and len(avg):
        a = avg[(avg.checkpoint == last) & avg.layer.isin(list(layers))].sort_values(["attribute", "layer"])
        rows = []
        for r in a.itertuples():
            ratio = r.overlap_rate / r.chance_rate if _finite(r.chance_rate) and r.chance_rate > 0 else float("nan")
            rows.append({"attribute": r.attribute, "layer": int(r.layer), "overlap rate": _num(r.overlap_rate),
                         "95% CI": _ci(getattr(r, "overlap_lo", None), getattr(r, "overlap_hi", None)),
                         "× chance": _num(ratio, 1), "chance k/d": _num(r.chance_rate),
                         "ceiling (self-overlap)": _num(getattr(r, "self_overlap_rate", None)),
                         "pairs above chance": f"{int(r.n_significant)} of {int(r.n_pairs)}",
                         "seeds": str(int(getattr(r, "n_seeds", 1) or 1)), "k / d": f"{int(r.k)} / {int(r.d)}"})
        parts.append(_table(pd.DataFrame(rows)))
        parts.append('<p class="note">Mean over language pairs of |A∩B|/k, the neurons selected for one attribute '
                     'in two languages. The 95% interval is a bootstrap over languages (clusters) of the '
                     'seed-averaged overlaps; chance is k/d; the ceiling is the overlap between two seeds of the '
                     'same language. "Pairs above chance": significant in every seed (Holm).</p>')
        facts["overlap"] = [(r["attribute"], r["layer"], r["overlap rate"], r["95% CI"], r["chance k/d"]) for r in rows]
    else:
        parts.append('<p class="note">no overlap table</p>')
    parts.append("<h3>Zero-shot transfer</h3>")
    if transfer is not None and len(transfer):
        s = task_scores(transfer, source=source, targets_only=False)
        s = s[s.checkpoint == last]
        rows = []
        for task, g in s.groupby("task", sort=True):
            targets = g[g.language != source]
            order = list(g[g.language == source].itertuples()) + list(targets.sort_values("language").itertuples())
            for r in order:
                rows.append({"task": str(task).upper(), "metric": r.metric,
                             "language": f"{r.language} (source)" if r.language == source else r.language,
                             "score": _num(r.value), "95% CI (examples)": _ci(getattr(r, "ci_low", None),
                                                                               getattr(r, "ci_high", None)),
                             "95% CI (seeds)": _ci(getattr(r, "seed_lo", None), getattr(r, "seed_hi", None)),
                             "n": str(int(r.n)) if _finite(getattr(r, "n", None)) else _DASH})
            if len(targets):
                mean = float(targets.value.mean())
                rows.append({"task": str(task).upper(), "metric": str(g.metric.iloc[0]),
                             "language": f"mean of {len(targets)} targets", "score": _num(mean),
                             "95% CI (examples)": _DASH, "95% CI (seeds)": _DASH, "n": _DASH})
                facts.setdefault("transfer", []).append((str(task).upper(), _num(mean)))
        parts.append(_table(pd.DataFrame(rows)))
        metrics = ", ".join(f"{t.upper()}: {m}" for t, m in DEFAULT_METRICS.items())
        parts.append(f'<p class="note">Fine-tuned on English, evaluated zero-shot ({_e(metrics)}). '
                     'Intervals: a bootstrap over evaluation examples, and a t interval over fine-tuning seeds '
                     '(where there are several). The mean of targets excludes the source and its dev set.</p>')
    else:
        parts.append('<p class="note">no transfer results (transfer.tasks is empty)</p>')
    return "\n".join(parts), facts


def _table1_frame(t: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Table 1 formatted for reading, and the number of rows that survive."""
    from .stats import survives

    rows, n_ok = [], 0
    for _, r in t.iterrows():
        ok = "not distinguishable" not in survives(r) and _finite(r.get("r"))
        n_ok += ok
        row = {"task": str(r["task"]).upper(), "kind": r["kind"]}
        if "attribute" in t.columns:
            row["attribute"] = r["attribute"]
        if "layer" in t.columns:
            row["layer"] = str(int(r["layer"])) if _finite(r["layer"]) else _DASH
        if "attributes" in t.columns:
            row["x averages"] = f"{', '.join(str(r['attributes']).split(','))} at ℓ {str(r['layers'])}"
        row.update({"n": str(int(r["n"])) if _finite(r.get("n")) else _DASH,
                    "r": _num(r.get("r"), 2), "95% CI (Fisher z)": _ci(r.get("r_lo"), r.get("r_hi"), 2),
                    "p": _p(r.get("p")), "p (permutation)": _p(r.get("p_perm")),
                    "95% CI (language bootstrap)": _ci(r.get("r_boot_lo"), r.get("r_boot_hi"), 2),
                    "distinguishable from 0": "yes" if ok else "no",
                    "r leaving one checkpoint out": _ci(r.get("r_loo_min"), r.get("r_loo_max"), 2),
                    "partial r given log step (p)": (f"{_num(r.get('r_partial'), 2)} ({_p(r.get('p_partial'))})"
                                                     if _finite(r.get("r_partial")) else _DASH)})
        rows.append(row)
    return pd.DataFrame(rows), n_ok


def _table1(tables: Mapping[str, pd.DataFrame], recipe: str | None) -> tuple[str, dict[str, Any]]:
    from .stats import survives

    if "table1" not in tables:
        return '<p class="note">No Table 1: the run has no transfer tasks to correlate with.</p>', {}
    t = tables["table1"]
    frame, n_ok = _table1_frame(t)
    body = [f'<p>Pearson r between overlap and zero-shot transfer over the checkpoints '
            f'(recipe <code>{_e(recipe or "?")}</code>): "average" rows correlate the mean overlap with the mean '
            f'transfer over target languages, "pairwise" rows each English–target pair\'s overlap with that '
            f'target\'s transfer. <b>{n_ok} of {len(t)}</b> rows are distinguishable from no correlation '
            '(Fisher-z interval excludes 0, permutation p &lt; 0.05 and, for pairwise rows, the language '
            'bootstrap interval excludes 0; <code>xalign.stats.survives</code>).</p>',
            _table(frame).replace("<td>yes</td>", '<td class="yes">yes</td>')]
    sentences = "".join(f"<li>{_e(survives(r))}</li>" for _, r in t.iterrows())
    body.append(_details(f"Each row in one sentence ({len(t)})", f'<ol class="sentences">{sentences}</ol>'))
    for name, other in sorted(tables.items()):
        if name != "table1":
            of, n_o = _table1_frame(other)
            body.append(_details(f"The other recipe ({name.removeprefix('table1_')}): {n_o} of {len(other)} rows "
                                 "distinguishable from no correlation", _table(of)))
    return "\n".join(body), {"table1": (n_ok, len(t))}


def caption(name: str) -> str:
    """The caption of a figure written by stage 7, from its file stem."""
    m = re.fullmatch(r"fig4_pairwise_scatter_(.+)_L(\d+)", name)
    if m:
        return (f"Figure 4 ({m[1]}, layer {m[2]}). English–target overlap vs the target's zero-shot transfer, one "
                "point per (target language, checkpoint), least-squares line and Pearson r; error bars: the "
                "overlap's interval over seeds and the score's bootstrap interval; chance k/d dashed.")
    m = re.fullmatch(r"heatmap_(.+)_L(\d+)_(.+)", name)
    if m:
        return (f"Appendix B.1 ({m[1]}, layer {m[2]}, {m[3]}). Language × language overlap rate |A∩B|/k; "
                "* marks pairs above chance (Holm-corrected hypergeometric p); chance k/d on the colour bar.")
    fixed = {
        "fig1_overlap_vs_step": "Figure 1. Mean cross-lingual overlap rate vs training step, one panel per attribute, "
                                "one line per layer; band: 95% interval; dotted: self-overlap ceiling; dashed: chance "
                                "k/d; ▽: significant drops.",
        "fig2_overlap_vs_layer": "Figure 2. Mean overlap rate vs layer at the last checkpoint, one line per attribute; "
                                 "chance k/d dashed.",
        "fig3_overlap_transfer_vs_step": "Figure 3. Overlap at one layer, and the transfer score averaged over target "
                                         "languages per task, vs training step (bands: 95% intervals).",
        "fig5_transfer_vs_step": "Figure 5. Zero-shot transfer per language vs training step; the source's own score "
                                 "in black; bands: 95% bootstrap intervals over evaluation examples.",
    }
    return fixed.get(name, name)


def _figures(figures: Mapping[str, bytes]) -> str:
    if not figures:
        return '<p class="note">No figures (or none written as PNG: add png to figures.formats).</p>'
    main, grid = [], []
    for name in sorted(figures):
        data = figures[name]
        if not data.startswith(PNG_MAGIC):
            raise ArtefactError(f"figure {name}: not a PNG")
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        block = (f'<figure id="fig-{_e(name)}"><img src="{uri}" alt="{_e(name)}">'
                 f"<figcaption><b>{_e(name)}</b>. {_e(caption(name))}</figcaption></figure>")
        (grid if name.startswith(("heatmap_", "fig4_")) else main).append(block)
    out = "\n".join(main)
    if grid:
        out += '\n<h3>Pairwise views</h3>\n<div class="grid">\n' + "\n".join(grid) + "\n</div>"
    return out


def _datasets(summary: pd.DataFrame | None, stage_notes: Mapping[str, Sequence[str]]) -> tuple[str, dict[str, Any]]:
    parts, facts = [], {}
    if summary is not None and len(summary):
        s = summary.copy()
        if "split_seed" not in s.columns:
            s["split_seed"] = 0
        n_splits = s.split_seed.nunique()
        kept = s[s.status == "kept"]
        n_ds = s[["language", "attribute"]].drop_duplicates().shape[0]
        kept_n = kept.groupby(["language", "attribute"]).split_seed.nunique()
        facts["datasets"] = (int((kept_n == n_splits).sum()), n_ds)
        grid = pd.DataFrame(index=sorted(s.language.unique()), columns=list(dict.fromkeys(s.attribute)))
        for (lang, attr), _ in s.groupby(["language", "attribute"]):
            k = int(kept_n.get((lang, attr), 0))
            grid.loc[lang, attr] = ("kept" if k == n_splits else "skipped" if k == 0 else f"kept in {k} of {n_splits}")
        grid = grid.fillna(_DASH).rename_axis("language").reset_index()
        counts = s.groupby("status").size()
        parts.append(f"<p>{facts['datasets'][0]} of {n_ds} (language, attribute) datasets kept in every split "
                     f"({n_splits} lemma split{'s' if n_splits != 1 else ''}: {int(counts.get('kept', 0))} kept, "
                     f"{int(counts.get('skipped', 0))} skipped, counting each split).</p>")
        parts.append(_table(grid).replace("<td>skipped</td>", '<td class="muted">skipped</td>'))
        sk = s[s.status != "kept"]
        if len(sk):
            lst = (sk.groupby(["language", "attribute", "reason"], sort=True).split_seed
                   .apply(lambda v: ", ".join(str(int(x)) for x in sorted(set(v)))).reset_index()
                   .rename(columns={"split_seed": "split seeds"}))
            lst = lst[["language", "attribute", "split seeds", "reason"]]
            parts.append(_details(f"Skipped datasets ({len(lst)})", _table(lst, "wrap")))
    else:
        parts.append('<p class="note">no data/summary table</p>')
    notes = [(st, n) for st, ns in stage_notes.items() for n in ns]
    if notes:
        lst = pd.DataFrame(notes, columns=["stage", "note"])
        parts.append(_details(f"Skip notes of the other stages ({len(lst)})", _table(lst, "wrap")))
    return "\n".join(parts), facts


def _timings(ctx: Mapping[str, Any]) -> str:
    from .stages import STAGES

    by_nb = {t["notebook"]: t for t in ctx.get("timings", [])}
    rows, total = [], 0.0
    for name, st in STAGES.items():
        rec = ctx.get("stages", {}).get(name)
        t = by_nb.get(st.notebook)
        if name == THIS_STAGE:
            rows.append({"stage": name, "notebook": st.notebook, "computed": _DASH, "reused": _DASH,
                         "stage seconds": "this stage", "notebook seconds": _DASH, "started (UTC)": _DASH})
            continue
        if t:
            total += float(t["seconds"])
        rows.append({"stage": name, "notebook": st.notebook,
                     "computed": str(rec.get("computed")) if rec else _DASH,
                     "reused": str(rec.get("reused")) if rec else _DASH,
                     "stage seconds": _num(rec.get("seconds"), 2) if rec else _DASH,
                     "notebook seconds": _num(t["seconds"], 1) if t else _DASH,
                     "started (UTC)": str(rec.get("finished") or _DASH) if rec else _DASH})
    note = ('<p class="note">"Stage seconds": the stage\'s last run, units computed and reused '
            '(<code>manifest.json</code>); a stage that reused everything took a fraction of its compute time. '
            '"Notebook seconds": the notebook\'s last wall time in <code>timings.csv</code> (written by '
            '<code>run_all.sh</code>; with Python start-up and imports). Stage 7 writes this report, so its own '
            'time is recorded only after it.</p>')
    tot = f"<p>Notebooks 00–06: {total:.1f} s of wall time in their last runs.</p>" if by_nb else ""
    return tot + _table(pd.DataFrame(rows)) + note


def _flat(obj: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, value)`` for every leaf of nested mappings (lists are leaves), in order."""
    out: list[tuple[str, Any]] = []
    for k, v in obj.items():
        key = f"{prefix}{k}"
        out += _flat(v, key + ".") if isinstance(v, Mapping) and v else [(key, v)]
    return out


def _provenance(ctx: Mapping[str, Any], checkpoints: Sequence[Mapping[str, Any]]) -> str:
    prov = ctx.get("provenance", {})
    commit = prov.get("git_commit")
    dirty = prov.get("git_dirty")
    rows = [("run", ctx.get("params", {}).get("run_name", _DASH)), ("seed", prov.get("seed")),
            ("git commit", f"{commit or 'unknown'}" + (" (uncommitted changes)" if dirty else "")),
            ("Python", prov.get("python")), ("platform", prov.get("platform")),
            ("torch threads", prov.get("torch_threads")), ("CUDA", prov.get("cuda"))]
    other = sorted({(n, s.get("git_commit")) for n, s in ctx.get("stages", {}).items()
                    if s.get("git_commit") and s.get("git_commit") != commit})
    parts = [_kv(rows)]
    if other:
        parts.append("<p>Stages last run at another commit: " + ", ".join(
            f"{_e(n)} <code>{_e(str(c)[:12])}</code>" for n, c in other) + ".</p>")
    pk = prov.get("packages") or {}
    if pk:
        parts.append("<h3>Package versions</h3>")
        items = [(k, v or "not installed") for k, v in pk.items()]
        per = -(-len(items) // 3)  # three (package, version) column pairs, read down
        body = "".join("<tr>" + "".join(f"<td>{_e(items[i + j * per][0])}</td><td>{_e(items[i + j * per][1])}</td>"
                                        if i + j * per < len(items) else "<td></td><td></td>" for j in range(3))
                       + "</tr>" for i in range(per))
        head = "<tr>" + "<th>package</th><th>version</th>" * 3 + "</tr>"
        parts.append(f'<div class="scroll"><table><thead>{head}</thead><tbody>{body}</tbody></table></div>')
    if checkpoints:
        parts.append("<h3>Checkpoint series</h3>")
        parts.append(_table(pd.DataFrame([{
            "checkpoint": c.get("name"), "step": str(c.get("step")) if c.get("step") is not None else "final",
            "source": c.get("source"), "revision": c.get("commit") or c.get("revision") or _DASH,
            "weights SHA-256": str(c.get("weights_sha256") or _DASH)[:16] + "…"} for c in checkpoints])))
    params = ctx.get("params")
    if params:
        lines = [f"{k} = {json.dumps(v, ensure_ascii=False, default=str)}" for k, v in _flat(params)]
        parts.append(_details(f"Params (params.json, {len(lines)} values)",
                              '<pre class="cols">' + _e("\n".join(lines)) + "</pre>"))
    return "\n".join(parts)


# ----------------------------------------------------------------------------- the page
def _summary_line(run_name: str, n_ckpt: int, langs: Sequence[str], n_fig: int, facts: Mapping[str, Any]) -> str:
    bits = [f"{run_name}: {n_ckpt} checkpoints, {len(langs)} languages, {n_fig} figures"]
    if "table1" in facts:
        a, b = facts["table1"]
        bits.append(f"Table 1: {a} of {b} rows distinguishable from no correlation")
    if "datasets" in facts:
        a, b = facts["datasets"]
        bits.append(f"{b - a} of {b} datasets skipped")
    return "; ".join(bits)


def build(*, figures: Mapping[str, bytes], ctx: Mapping[str, Any], average: pd.DataFrame | None,
          transfer: pd.DataFrame | None, tables1: Mapping[str, pd.DataFrame], summary: pd.DataFrame | None,
          checkpoints: Sequence[Mapping[str, Any]], layers: Sequence[int], figure_notes: Sequence[str] = ()) -> str:
    """The report's HTML (a ``str``; the same arguments give the same text).

    Args:
        figures: figure name -> PNG bytes (shown in name order).
        ctx: :func:`context`.
        average, transfer: ``overlap/average`` and ``transfer/results`` (None: absent).
        tables1: ``{"table1": ..., "table1_<other recipe>": ...}`` (empty without transfer).
        summary: ``data/summary``.
        checkpoints: the series analysed (rows of ``checkpoints.json`` not excluded).
        layers: ``extraction.layers`` (the headline rows).
        figure_notes: stage 7's own skip notes (figures it could not draw).

    Raises:
        ArtefactError: a figure's bytes are not PNG.
    """
    params = ctx.get("params", {})
    run_name = str(params.get("run_name", "run"))
    last = checkpoints[-1]["name"] if checkpoints else _DASH
    langs = list((params.get("data") or {}).get("languages") or [])
    head, facts = _headline(average, transfer, last, layers)
    t1, f1 = _table1(tables1, (params.get("correlation") or {}).get("recipe"))
    facts.update(f1)
    notes = {n: list(s.get("skipped") or []) for n, s in ctx.get("stages", {}).items() if n != "data_prep"}
    notes = {n: v for n, v in notes.items() if v}
    if figure_notes:
        notes[THIS_STAGE] = list(figure_notes)
    ds, f2 = _datasets(summary, notes)
    facts.update(f2)
    line = _summary_line(run_name, len(checkpoints), langs, len(figures), facts)
    steps = [str(c.get("step")) for c in checkpoints if c.get("step") is not None]
    overlap_txt = ""
    if facts.get("overlap"):
        best = max(facts["overlap"], key=lambda r: (float(r[2]) if r[2] != _DASH else -1, r[0], r[1]))
        overlap_txt = (f" Highest mean overlap at {_e(last)}: {_e(best[0])} at layer {best[1]}, {best[2]} "
                       f"(95% CI {best[3]}; chance {best[4]}).")
    transfer_txt = "".join(f" Mean {_e(t)} transfer over targets: {v}." for t, v in facts.get("transfer", []))
    toc = [("headline", "Headline numbers"), ("table1", "Table 1"), ("figures", "Figures"),
           ("datasets", "Datasets"), ("timings", "Stage timings"), ("provenance", "Provenance")]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>xalign report: {_e(run_name)}</title>",
        f'<meta name="xalign-summary" content="{_e(line)}">',
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>xalign report: {_e(run_name)}</h1>",
        '<p class="muted">Probing the emergence of cross-lingual alignment during LLM training '
        "(Wang, Minervini &amp; Ponti, 2024): how far the neurons that encode a morphosyntactic attribute are "
        "shared across languages, and whether that overlap tracks zero-shot transfer.</p>",
        f'<p class="lead">{_e(line)}.{overlap_txt}{transfer_txt}</p>',
        f'<p class="muted">Checkpoints: {_e(", ".join(c["name"] for c in checkpoints) or _DASH)}'
        f"{' (steps ' + _e(', '.join(steps)) + ')' if steps else ''}. Languages: {_e(', '.join(langs) or _DASH)}.</p>",
        "<nav>" + "".join(f'<a href="#{i}">{_e(t)}</a>' for i, t in toc) + "</nav>",
        _section("headline", "Headline numbers", head),
        _section("table1", "Table 1: overlap vs transfer", t1),
        _section("figures", "Figures", _figures(figures)),
        _section("datasets", "Datasets kept and skipped", ds),
        _section("timings", "Stage timings", _timings(ctx)),
        _section("provenance", "Provenance", _provenance(ctx, checkpoints)),
        "</main>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(out)


def write(text: str, dests: Iterable[str | Path]) -> list[Path]:
    """Write the report's text to each of ``dests`` atomically (UTF-8); returns the paths."""
    out = []
    for d in dests:
        with atomic_path(d) as tmp:
            tmp.write_bytes(text.encode("utf-8"))
        out.append(Path(d))
    return out


def _read(path: Path) -> pd.DataFrame | None:
    from .store import read_table

    return read_table(path) if path.is_file() else None


def tables1(run_dir: Path) -> dict[str, pd.DataFrame]:
    """``correlation/table1*.parquet`` of a run, by stem."""
    from .store import read_table

    return {p.stem: read_table(p) for p in sorted((Path(run_dir) / "correlation").glob("table1*.parquet"))}


def build_from_run(run_dir: str | Path, figure_dir: str | Path | None = None) -> str:
    """The report of a finished run, from its folder: the tables, the PNG files ``figures.json``
    lists (in ``figure_dir``, default ``params.json``'s ``<figures_dir>/<run_name>``), and
    :func:`context_from_run`. For a run whose stage 7 just ran, the bytes stage 7 wrote.

    Raises:
        ArtefactError: a file the report reads is missing or corrupt.
    """
    from .stages._common import checkpoint_rows

    run_dir = Path(run_dir)
    ctx = context_from_run(run_dir)
    P = ctx["params"]
    if figure_dir is None:
        from .params import repo_root

        fd = Path(P.get("figures_dir", "figures"))
        figure_dir = (fd if fd.is_absolute() else repo_root() / fd) / P["run_name"]
    names = [n for n in read_json(run_dir / "figures.json") if n.endswith(".png")]
    figs = {Path(n).stem: (Path(figure_dir) / n).read_bytes() for n in names}
    entry = read_json(run_dir / "manifest.json").get("artefacts", {}).get("figures.json", {})
    notes = list((entry.get("notes") or {}).get("skipped", []))
    transfer = _read(run_dir / "transfer" / "results.parquet") if (P.get("transfer") or {}).get("tasks") else None
    return build(figures=figs, ctx=ctx, average=_read(run_dir / "overlap" / "average.parquet"), transfer=transfer,
                 tables1=tables1(run_dir), summary=_read(run_dir / "data" / "summary.parquet"),
                 checkpoints=checkpoint_rows(run_dir), layers=list(P["extraction"]["layers"]), figure_notes=notes)


def describe(path: str | Path) -> str:
    """``<path>: <one-line summary>`` of a written report (its ``xalign-summary`` meta tag)."""
    text = Path(path).read_text(encoding="utf-8")
    m = re.search(r'<meta name="xalign-summary" content="([^"]*)">', text)
    size = Path(path).stat().st_size
    return f"{path} ({size / 1024:.0f} KiB): {html.unescape(m[1]) if m else 'no summary'}"


def main(argv: list[str] | None = None) -> int:
    """``python -m xalign.report RUN_DIR -o OUT.html [--figures DIR]``: rebuild a finished
    run's report into OUT (atomically); prints :func:`describe`'s line. Exit 2 on a run
    folder it cannot read (one ``error:`` line)."""
    ap = argparse.ArgumentParser(prog="python -m xalign.report", description="Rebuild a run's HTML report.")
    ap.add_argument("run_dir", type=Path, help="the run folder (runs/<run>)")
    ap.add_argument("-o", "--out", type=Path, required=True, help="where to write the HTML")
    ap.add_argument("--figures", type=Path, default=None, help="the run's figure folder (default from params.json)")
    args = ap.parse_args(argv)
    try:
        text = build_from_run(args.run_dir, args.figures)
    except (ArtefactError, FileNotFoundError, KeyError) as e:
        print(f"error: {args.run_dir}: {e}", file=sys.stderr)
        return 2
    write(text, [args.out])
    print(describe(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
