"""Executors: who runs the units the scheduler hands over (``executor.kind`` in params, part
of no identity, so every executor gives the same tables).

* ``local`` (default): this process, one unit after another, in the order given.
* ``processes``: ``executor.workers`` spawned worker processes (:mod:`concurrent.futures`).
* ``slurm``: submitit job arrays (``AutoExecutor.map_array``) on a SLURM cluster.

Units of one :class:`~xalign.pipeline.units.Resources` group (a checkpoint's extraction or
transfer units) run in one worker call or one job, one after another, so the model is
loaded once. Every unit runs through :func:`~xalign.pipeline.units.run_unit` (seeded from
its identity, receipt written), and the scheduler records each one as its executor yields it,
so a killed driver loses no finished unit. A unit's exception reaches the driver as the same
exception, raised there; a SLURM job that dies without a result (scancel, node failure, time
limit, out of memory) is logged with its log path and resubmitted up to
``executor.max_retries`` times.
"""

from __future__ import annotations

import logging
import os
import traceback
from typing import Any, Iterable, Iterator

from .units import Unit, run_unit

log = logging.getLogger("xalign.pipeline")

Result = Iterator[tuple[Unit, "dict[str, Any] | None"]]


def groups_of(units: Iterable[Unit]) -> list[list[Unit]]:
    """Units split into the lists one worker call / job runs: one per ``resources.group``
    (in first-seen order), one per ungrouped unit."""
    out: list[list[Unit]] = []
    by_name: dict[str, list[Unit]] = {}
    for u in units:
        g = u.resources.group
        if g is None:
            out.append([u])
        elif g in by_name:
            by_name[g].append(u)
        else:
            by_name[g] = [u]
            out.append(by_name[g])
    return out


def run_group(units: list[Unit], threads: int | None) -> list[tuple[str, Any]]:
    """A worker's or job's call: run ``units`` in order with ``threads`` torch threads.

    Returns:
        ``("ok", notes)`` per unit, ending at the first failure with ``("error", (exception,
        traceback text))``; the driver re-raises the exception.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    out: list[tuple[str, Any]] = []
    for u in units:
        try:
            out.append(("ok", run_unit(u)))
        except Exception as e:  # noqa: BLE001 - handed to the driver, raised there
            out.append(("error", (e, traceback.format_exc())))
            break
    return out


def _yield_group(units: list[Unit], results: list[tuple[str, Any]], where: str) -> Result:
    for u, (status, value) in zip(units, results):
        if status == "error":
            exc, tb = value
            log.error("unit %s/%s failed %s:\n%s", u.stage, u.key, where, tb)
            raise exc
        yield u, value


class LocalExecutor:
    """In process, one unit after another (``executor.kind: local``)."""

    def run(self, units: Iterable[Unit], ctx: Any = None) -> Result:
        """Yield ``(unit, notes)`` as each unit finishes; a unit's exception propagates."""
        for u in units:
            yield u, run_unit(u)


_POOLS: dict[tuple[int, int | None], Any] = {}  # one pool per (workers, threads), kept across stages


def _pool(workers: int, threads: int | None) -> Any:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    key = (workers, threads)
    if key not in _POOLS:
        _POOLS[key] = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    return _POOLS[key]


def _drop_pool(key: tuple[int, int | None]) -> None:
    pool = _POOLS.pop(key, None)
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


class ProcessExecutor:
    """``workers`` spawned processes, one unit group per task (``executor.kind: processes``).

    The pool is kept for the driver's lifetime (started once, not per stage). A wave of one
    group runs in the driver itself, with the workers' thread count (same results, no
    start-up cost)."""

    def __init__(self, workers: int, threads: int | None) -> None:
        self.workers, self.threads = workers, threads

    def run(self, units: Iterable[Unit], ctx: Any = None) -> Result:
        """Yield ``(unit, notes)`` per group as it finishes; the first failure is raised
        after the other groups are cancelled (the pool is then restarted next time)."""
        import torch
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        groups = groups_of(units)
        if len(groups) == 1:
            before = torch.get_num_threads()
            try:
                yield from _yield_group(groups[0], run_group(groups[0], self.threads), "in the driver")
            finally:
                torch.set_num_threads(before)
            return
        key, ok = (self.workers, self.threads), False
        todo = {_pool(*key).submit(run_group, g, self.threads): g for g in groups}
        try:
            while todo:
                done, _ = wait(todo, return_when=FIRST_COMPLETED)
                for f in done:
                    g = todo.pop(f)
                    try:
                        results = f.result()
                    except BrokenProcessPool:
                        raise RuntimeError(
                            f"{g[0].stage}/{g[0].key}: a worker process died (killed, out of memory, or a script "
                            "without `if __name__ == '__main__':`, which spawned workers re-run)") from None
                    yield from _yield_group(g, results, "in a worker process")
            ok = True
        finally:
            if not ok:  # an error or the driver stopping: no unit keeps running behind its back
                _drop_pool(key)


def make_executor(P: Any) -> Any:
    """The executor ``P.executor.kind`` names (:class:`~xalign.params.ExecutorParams`)."""
    ep = getattr(P, "executor", None)
    if ep is None or ep.kind == "local":
        return LocalExecutor()
    if ep.kind == "processes":  # without run threads, split the cores between the workers
        return ProcessExecutor(ep.workers, P.threads or max(1, (os.cpu_count() or 1) // ep.workers))
    from .slurm import SlurmExecutor

    return SlurmExecutor(ep, P.threads)
