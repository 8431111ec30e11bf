"""The scheduler: one loop for every stage. It decides what is current, runs the rest
through an executor, records what the units wrote, removes what the params no longer
produce, and lets the stage gather its tables from disk.

A stage (:class:`Stage`) declares its units in *waves* (:meth:`Stage.plan` yields lists of
:class:`~xalign.pipeline.units.Unit`): a wave is planned only once the previous one is
current, since its inputs are the previous wave's outputs (probing's per-language parts,
then the stage's tables that concatenate them). Before planning, the stages upstream are
checked, recursively: a stage never runs on the outputs of a stage that is stale for the
current params; it stops with one line naming the stage to run first
(:class:`StaleUpstream`). Only the scheduler writes ``manifest.json``, and only while it
holds the run's lock (:mod:`xalign.pipeline.lock`).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import pandas as pd
import torch

from ..errors import XalignError
from ..store import atomic_path, provenance, remove_stale_temps, write_json
from .lock import run_lock
from .manifest import Manifest
from .units import Unit

log = logging.getLogger("xalign.pipeline")


class StaleUpstream(XalignError, RuntimeError):
    """An earlier stage's outputs do not match the current params: run that stage first."""


#: the longest skip reason a stage's summary line shows in full
SHOWN_REASON_CHARS = 100


@dataclass
class StageSummary:
    """What a stage did: units computed / reused, outputs removed, skips with reasons,
    wall time, and the tables a notebook shows (gathered from disk either way)."""

    stage: str
    computed: int = 0
    reused: int = 0
    skipped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: where the skip reasons are listed (``skipped/<stage>.csv`` in the run folder), if any
    skipped_table: Path | None = None

    def line(self) -> str:
        """One line: units computed and reused, outputs removed, skipped, time. One short skip
        reason is shown; several are counted, and :attr:`skipped_table` names the table
        that lists them (``skipped/<stage>.csv``: one row per reason)."""
        sk = "; skipped 0"
        if len(self.skipped) == 1 and len(self.skipped[0]) <= SHOWN_REASON_CHARS:
            sk = f"; skipped 1 ({self.skipped[0]})"
        elif self.skipped:
            where = f"{self.skipped_table.parent.name}/{self.skipped_table.name}" if self.skipped_table else "the manifest"
            sk = f"; skipped {len(self.skipped)} (reasons in {where})"
        rm = f"; removed {len(self.removed)} outputs no longer produced" if self.removed else ""
        return f"[{self.stage}] computed {self.computed}, reused {self.reused}{rm}{sk}; {self.seconds:.1f} s"


class Stage(Protocol):
    """What a stage module provides (see :mod:`xalign.stages`)."""

    name: str          # "probing"
    notebook: str      # "03_probing"
    upstream: tuple[str, ...]

    def plan(self, ctx: "Context") -> Iterator[list[Unit]]: ...

    def gather(self, ctx: "Context", s: StageSummary, units: list[Unit]) -> None: ...

    # optional: ``check(P)`` raises on a missing or bad input of the stage itself, before
    # the upstream stages are checked and anything runs


@dataclass
class Context:
    """What a stage's planner and gatherer see: params, run folder, manifest, stage registry."""

    P: Any
    run_dir: Path
    m: Manifest
    stages: dict[str, Stage]
    skipped: list[str] = field(default_factory=list)
    _checked: set[str] = field(default_factory=set)

    def sha(self, path: Path) -> str:
        """SHA-256 of an artefact of this run (recorded, or computed if changed)."""
        return self.m.sha256(path)

    def input_sha(self, path: Path) -> str:
        """SHA-256 of a data file outside the run (cached by size and mtime)."""
        return self.m.input_sha256(path)

    def skip(self, reason: str) -> None:
        """A stage-level skip reason, shown in the summary line."""
        self.skipped.append(reason)

    def notes(self, u: Unit) -> dict[str, Any]:
        """The notes a unit returned when it was computed (kept in the manifest)."""
        e = self.m.artefacts.get(self.m.key(u.outputs[0])) if u.outputs else None
        return dict((e or {}).get("notes") or {})

    def outputs(self, u: Unit) -> list[Path]:
        """A unit's declared outputs plus the further files its notes list."""
        return [*u.outputs, *(self.run_dir / f for f in self.notes(u).get("files", []))]

    def is_current(self, u: Unit) -> bool:
        """Every output exists, unchanged, recorded with the unit's identity."""
        ident = u.identity
        return all(self.m.is_current(p, ident) for p in u.outputs) and \
            all(self.m.is_current(p, ident) for p in self.outputs(u)[len(u.outputs):])

    def record(self, u: Unit, notes: dict[str, Any] | None) -> None:
        """Record a computed unit's outputs (and the files its notes list); save once."""
        notes = dict(notes or {})
        extra = {"unit": u.key, "code": u.code}
        ident = u.identity
        for i, p in enumerate([*u.outputs, *(self.run_dir / f for f in notes.get("files", []))]):
            self.m.record(p, u.stage, ident, u.config, u.inputs, save=False, **extra,
                          **({"notes": notes} if i == 0 else {}))
        self.m.save()
        if u.receipt is not None:  # recorded: the receipt has done its job
            Path(u.receipt).unlink(missing_ok=True)

    def why_stale(self, u: Unit) -> str:
        """Why a unit is not current, for :class:`StaleUpstream`'s line."""
        e = self.m.artefacts.get(self.m.key(u.outputs[0])) if u.outputs else None
        if e is None or not u.outputs[0].exists():
            return f"{u.key} not computed"
        if e.get("code") != u.code:
            return f"{u.key} computed by other code"
        old, new = e.get("config") or {}, u.config
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            k = changed[0]
            return f"{u.key}: {k} was {old.get(k)!r}, params say {new.get(k)!r}"
        if (e.get("inputs") or {}) != u.inputs:
            return f"{u.key}: its inputs changed"
        return f"{u.key}: changed on disk"

    def require_current(self, name: str) -> None:
        """Check stage ``name`` (and, first, its upstream) is current for these params.

        Raises:
            StaleUpstream: one line naming the stage (and notebook) to run first and why.
        """
        if name in self._checked:
            return
        stage = self.stages[name]
        for up in stage.upstream:
            self.require_current(up)
        for wave in stage.plan(self):
            for u in wave:
                if not self.is_current(u):
                    raise StaleUpstream(f"{name} is not current for these params ({self.why_stale(u)}): "
                                        f"run {name} first (notebook {stage.notebook})")
        self.skipped.clear()  # an upstream planner's skip notes are not this stage's
        self._checked.add(name)


def _start(P: Any, stage: str) -> tuple[Path, Manifest]:
    run_dir = P.run_dir()
    write_json(P.model_dump(mode="json"), run_dir / "params.json")
    torch.manual_seed(P.seed)
    if P.threads:
        torch.set_num_threads(P.threads)
    stale = remove_stale_temps(run_dir)  # left by killed writers; a live writer's are kept
    fig_dir = P.figure_dir()
    if fig_dir.is_dir():
        stale += remove_stale_temps(fig_dir)
    if stale:
        log.info("removed %d temporary files left by an interrupted run in %s", stale, run_dir)
    m = Manifest.open(run_dir)
    m.run = provenance(P.seed)
    return run_dir, m


def _collect_finished(ctx: Context, stage: str, todo: list[Unit]) -> list[Unit]:
    """Give each unit to run its receipt path; record the units a killed driver's jobs (or
    workers) finished, from their receipts. Returns the units still to run."""
    from .units import read_receipt

    left, n = [], 0
    for u in todo:
        u.receipt = ctx.run_dir / ".receipts" / stage / f"{hashlib.sha256(u.key.encode()).hexdigest()[:20]}.json"
        rec = read_receipt(u)
        if rec is None:
            left.append(u)
        else:
            ctx.record(u, rec["notes"])
            n += 1
    if n:
        log.info("[%s] collected %d units finished by an earlier driver (from their receipts)", stage, n)
    return left


def _prune_empty(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents while empty, up to (not including) ``stop``."""
    folder, stop = folder.resolve(), stop.resolve()
    while folder != stop and stop in folder.parents and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def _remove_stale(ctx: Context, stage: str, units: Iterable[Unit]) -> list[str]:
    """Delete the outputs this stage recorded earlier that its current units do not produce."""
    keep = {ctx.m.key(p) for u in units for p in ctx.outputs(u)}
    gone = []
    for key, e in list(ctx.m.artefacts.items()):
        if e.get("stage") != stage or key in keep:
            continue
        p = ctx.run_dir / key
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        ctx.m.forget(key)
        gone.append(key)
        _prune_empty(p.parent, stop=ctx.run_dir)
    if gone:
        log.info("[%s] removed %d outputs no longer produced by the params: %s", stage, len(gone),
                 ", ".join(gone[:5]) + (" ..." if len(gone) > 5 else ""))
    return gone


def run_stage(P: Any, name: str, stages: dict[str, Stage], executor: Any = None) -> StageSummary:
    """Run one stage: check upstream, plan its waves, run what is not current, record,
    remove outputs no longer produced, gather its tables; print and return the summary.

    Args:
        P: validated :class:`~xalign.params.RunParams`.
        name: the stage (a key of ``stages``).
        stages: the registry (:data:`xalign.stages.STAGES`).
        executor: runs units (:mod:`xalign.pipeline.executors`); default from ``P.executor``.

    Raises:
        StaleUpstream: an upstream stage is not current for ``P`` (nothing is run).
        RunLocked: another process holds the run folder.
        Whatever a unit raises (its outputs are written atomically: nothing half-written);
        an exception raised inside a library while planning or gathering as
        :class:`~xalign.errors.UnitFailed` naming the stage (the original as its cause).
    """
    from ..errors import stage_activity
    from .units import wrap_library_error

    try:
        return _run_stage(P, name, stages, executor)
    except Exception as e:  # noqa: BLE001 - a library's error gets the stage it stopped
        wrapped = wrap_library_error(f"{name} stage ({stage_activity(name)})", e)
        if wrapped is None:
            raise
        raise wrapped from e


def _write_skipped(run_dir: Path, name: str, skipped: list[str]) -> Path | None:
    """``skipped/<stage>.csv`` (columns stage, reason; one row per skip reason) when the stage
    skipped something, else remove an earlier one. Returns its path, or None."""
    dest = run_dir / "skipped" / f"{name}.csv"
    if not skipped:
        dest.unlink(missing_ok=True)
        return None
    with atomic_path(dest) as tmp:
        pd.DataFrame({"stage": name, "reason": skipped}).to_csv(tmp, index=False)
    return dest


def _run_stage(P: Any, name: str, stages: dict[str, Stage], executor: Any) -> StageSummary:
    """:func:`run_stage` without the wrapping of library errors."""
    from .executors import make_executor

    t0 = time.perf_counter()
    stage = stages[name]
    s = StageSummary(name)
    with run_lock(P.run_dir(), name):
        run_dir, m = _start(P, name)
        ctx = Context(P, run_dir, m, stages)
        if hasattr(stage, "check"):  # the stage's own inputs first: a missing file in seconds
            stage.check(P)
        for up in stage.upstream:
            ctx.require_current(up)
        ex = executor or make_executor(P)
        units: list[Unit] = []
        for wave in stage.plan(ctx):
            todo = [u for u in wave if not ctx.is_current(u)]
            left = _collect_finished(ctx, name, todo)
            s.reused += len(wave) - len(left)
            for u, notes in ex.run(left, ctx):
                ctx.record(u, notes)
                s.computed += 1
            units += wave
        s.removed = _remove_stale(ctx, name, units)
        s.skipped += ctx.skipped
        for u in units:
            s.skipped += ctx.notes(u).get("skipped", [])
        stage.gather(ctx, s, units)
        s.skipped_table = _write_skipped(run_dir, name, s.skipped)
        s.seconds = time.perf_counter() - t0
        m.stages[name] = {"computed": s.computed, "reused": s.reused, "removed": len(s.removed),
                          "skipped": s.skipped, "seconds": round(s.seconds, 2),
                          "git_commit": m.run.get("git_commit"), "finished": m.run.get("time")}
        m.save()
        remove_stale_temps(run_dir)  # a killed job's (its writer is gone); live writers' stay
    log.debug(s.line())  # printed below; avoid a twin line in notebooks
    print(s.line())
    return s
