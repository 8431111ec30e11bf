"""The project's own errors: one line a user can act on.

Every message names where the problem is (a params key ``params.probe.k``, a file and line
``…/en_gum-ud-dev.conllu: line 12``, or a stage unit) and what is wrong. ``run_all.sh``
prints the message of the exception that stopped a stage as its last line
(:func:`xalign.check.stage_error_line`), and keeps the full traceback in the executed
notebook and in ``runs/<run>/logs/<stage>.log``.

* :class:`XalignError` — the base; a message without newlines.
* :class:`InputError` — a data file that cannot be used as it is (encoding, byte-order
  mark, empty, wrong column count, unknown label): ``<file>: line <n>: <problem>``. It is a
  ``ValueError``, as the readers' errors were before.
* :class:`UnitFailed` — an exception raised inside a library (numpy, transformers, …) while
  a unit of work ran, wrapped with the stage and unit it happened in
  (:func:`xalign.pipeline.units.run_unit`).
"""

from __future__ import annotations

from pathlib import Path


class XalignError(Exception):
    """An error whose message is one line naming the file, field or unit and the problem."""


class InputError(XalignError, ValueError):
    """A data file that cannot be read as it is; the message starts with the file (and line)."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        where = f"{path}: line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = Path(path), line, problem


class UnitFailed(XalignError, RuntimeError):
    """A library raised while a unit ran: ``<stage> unit <key>: <what>: <Type>: <message>``."""


def one_line(text: str, limit: int = 400) -> str:
    """``text`` as one line: its first non-empty line, cut to ``limit`` characters."""
    first = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return first if len(first) <= limit else first[: limit - 1] + "…"


#: What each stage's units do, for :class:`UnitFailed` messages.
STAGE_ACTIVITY = {
    "pretrain": "training the lab model", "data_prep": "reading treebanks, building datasets",
    "extraction": "extracting hidden states", "probing": "training probes, selecting neurons",
    "overlap": "computing overlap rates", "transfer": "fine-tuning, zero-shot evaluation",
    "correlation": "computing Table 1", "figures": "drawing figures",
}


def stage_activity(stage: str) -> str:
    """What a unit of ``stage`` was doing, in a few words (the stage name if unknown)."""
    return STAGE_ACTIVITY.get(stage, stage)
