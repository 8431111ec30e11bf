"""Check a run before anything runs, and report a stage's failure in one line.

``python -m xalign.check [--set KEY=VALUE ...] params/<run>.yaml [...]`` (what ``run_all.sh``
calls first; ``--set`` overrides apply to every file):

1. the params file: read and validated against the schema (:func:`xalign.params.load_params`:
   types, ranges, names, combinations), one line naming the file and dotted key;
2. the model, where it is known without downloading: the lab's (from ``pretrain``, in the
   schema) and a ``local`` series' ``config.json`` files: every layer in ``extraction.layers``
   and ``sweep_layers`` exists and ``probe.k`` <= d. Hub and GGUF series are checked by stage
   2 on the first checkpoint it loads, before extracting anything;
3. the data root and every data file the run reads (:func:`xalign.inputs.check_inputs`:
   encodings, byte-order marks, empty files, column counts, labels), in one pass.

Every problem is printed as one ``error: ...`` line; the exit status is 1 if there was one.

``python -m xalign.check --verify runs/<run>`` rehashes every artefact and input file the
run's manifest records and prints one line per mismatch
(:func:`xalign.pipeline.manifest.verify_run`; exit 1 if any).

``python -m xalign.check --stage-error NOTEBOOK LOG STAGE`` prints the one line
``run_all.sh`` ends with when a stage fails (:func:`stage_error_line`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .errors import one_line
from .params import ParamsError, RunParams, load_params


def model_problems(P: RunParams) -> list[str]:
    """Layers and k against a ``local`` series' configs (one line each); [] for other sources.

    Reads only ``config.json`` of each checkpoint folder (no weights).
    """
    if P.checkpoints.source != "local":
        return []
    from . import checkpoints as ck
    from .stages.extraction import check_layers

    try:
        series = ck.series_of(P.checkpoints, P.run_dir())
    except ck.CheckpointError as e:
        return [one_line(str(e))]
    out: list[str] = []
    for c in series:
        try:
            config = ck.load_config(c)
        except ck.CheckpointError as e:
            return [one_line(str(e))]
        n_hs, d = ck.num_hidden_states(config), ck.hidden_size(config)
        ex = P.extraction
        for key, ls in (("layers", ex.layers), ("sweep_layers", [] if ex.sweep_layers == "all" else ex.sweep_layers)):
            try:  # stage 2's own check, here before anything runs
                check_layers(list(ls), n_hs, c.name, f"extraction.{key}")
            except ValueError as e:
                out.append(f"params.{e}")
        if P.probe.k > d:
            out.append(f"params.probe.k: {P.probe.k} > the hidden size {d} of {c.name}")
        if out:
            break
    return out


def run_problems(source: str, overrides: dict[str, Any] | None = None) -> list[str]:
    """Every problem of one run, one line each: params (with ``overrides``), model, data
    files (see module doc)."""
    try:
        P = load_params(source, overrides)
    except ParamsError as e:
        return [str(e)]
    out = [f"{source}: {p}" for p in model_problems(P)]
    try:
        P.resolved_data_root()
    except FileNotFoundError as e:
        return [*out, one_line(str(e))]
    from .inputs import check_inputs

    return [*out, *check_inputs(P)]


def _error_output(nb: dict[str, Any]) -> tuple[str, str] | None:
    """``(ename, evalue)`` of the first error output in an executed notebook, if any."""
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                return str(o.get("ename", "")), str(o.get("evalue", ""))
    return None


def stage_error_line(notebook: str | Path, log: str | Path, stage: str) -> str:
    """The one line ``run_all.sh`` prints when ``stage`` fails.

    ``error: <stage>: <message> (traceback: <log>; notebook: <notebook>)``. The message is
    the exception's own (xalign's errors name the file, key or unit; others get their type
    in front). Without an error in the notebook (the kernel died, papermill failed to
    start), the last line of the log stands in for it.
    """
    where = f"(traceback: {log}; notebook: {notebook})"
    try:
        found = _error_output(json.loads(Path(notebook).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        found = None
    if found:
        ename, evalue = found
        msg = one_line(evalue) or ename
        own = ename in {"ParamsError", "InputError", "UnitFailed", "StaleUpstream", "CheckpointError",
                        "ArtefactError", "RunLocked", "FetchError"}
        return f"error: {stage}: {msg if own else f'{ename}: {msg}'} {where}"
    try:
        lines = [ln for ln in Path(log).read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    last = one_line(lines[-1]) if lines else "no output"
    return f"error: {stage}: failed without a Python error in the notebook (last log line: {last}) {where}"


def main(argv: list[str] | None = None) -> int:
    """CLI (see the module docstring). Returns 0, 1 (problems found) or 2 (usage)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--stage-error"] and len(args) == 4:
        print(stage_error_line(*args[1:]))
        return 0
    if args[:1] == ["--verify"] and len(args) == 2:
        from .pipeline import manifest

        return manifest.main(args)
    from .params import split_cli

    try:
        files, over, flags = split_cli(args)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not files or flags:
        print("usage: python -m xalign.check [--set KEY=VALUE ...] params/<run>.yaml [...] | --verify RUN_DIR | "
              "--stage-error NOTEBOOK LOG STAGE", file=sys.stderr)
        return 2
    problems = [p for f in files for p in run_problems(f, over)]
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
