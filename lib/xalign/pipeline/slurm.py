"""The SLURM executor (``executor.kind: slurm``): submitit job arrays, one job per unit group.

Per wave, the groups (:func:`~xalign.pipeline.executors.groups_of`) are submitted as at most
two job arrays (``AutoExecutor.map_array``): one for the groups that need a GPU (extraction,
transfer; ``executor.gpus`` per job) and one for the rest (no GPU). Jobs get units, whose
arguments are small (params, names, file paths: the large inputs are read from the run
folder), and write their outputs there. Logs: ``<run>/logs/slurm/<stage>/<job id>/``.

The driver polls (one ``sacct`` per look, every ``executor.poll_s`` s) and yields each group's
units as its job finishes, so the scheduler records them at once. A job that ends without a
result (:func:`dead_reason`: scancel, NODE_FAIL, TIMEOUT, OUT_OF_MEMORY, or submitit's
time-limit signal) is logged with its log path and resubmitted, up to ``executor.max_retries``
times. ``submitted.json`` in the log folder lists each job with the identities of its units:
a driver restarted after a kill waits for its earlier jobs that still run (and collects the
finished ones from their receipts) instead of submitting them again.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from .executors import Result, _yield_group, groups_of, run_group
from .units import Unit

log = logging.getLogger("xalign.pipeline")


def dead_reason(job: Any, refresh: bool = True) -> str | None:
    """Why a submitit job ended without doing its work (so resubmit it), else None (pending,
    running, finished with a result, or failed by an exception of its function).

    A final accounting state (submitit's ``watcher.is_done``) with no result file is a job
    killed from outside: that state ("CANCELLED by 0", "TIMEOUT", "NODE_FAIL", ...). A result
    that is submitit's ``UncompletedJobError`` is a job stopped at its time limit. ``refresh``
    first updates every watched job's state (one ``sacct`` call).
    """
    from submitit.core import utils

    if refresh:
        job.watcher.update()
    if not job.watcher.is_done(job.job_id, mode="cache"):
        return None
    state = job.watcher.get_state(job.job_id, mode="cache")
    if not job.paths.result_pickle.exists():
        return state
    outcome, payload = utils.pickle_load(job.paths.result_pickle)
    if outcome == "error" and "submitit.core.utils.UncompletedJobError" in str(payload):
        return f"{state} (time limit: {str(payload).strip().splitlines()[-1]})"
    return None


class SlurmExecutor:
    """submitit on SLURM; see the module docstring and :class:`~xalign.params.ExecutorParams`."""

    def __init__(self, ep: Any, threads: int | None) -> None:
        self.ep, self.threads = ep, threads or ep.cpus_per_task

    def _executor(self, folder: Path, stage: str, gpu: bool) -> Any:
        import submitit

        ep = self.ep
        ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm")
        ex.update_parameters(name=f"xalign-{stage}", timeout_min=ep.time_min, mem_gb=ep.mem_gb,
                             cpus_per_task=ep.cpus_per_task, slurm_array_parallelism=ep.array_parallelism,
                             **({"slurm_partition": ep.partition} if ep.partition else {}),
                             **({"gpus_per_node": ep.gpus} if gpu and ep.gpus else {}),
                             **({"slurm_additional_parameters": dict(ep.slurm_extra)} if ep.slurm_extra else {}))
        return ex

    def _submit(self, folder: Path, stage: str, groups: list[list[Unit]]) -> list[Any]:
        """Submit ``groups`` (GPU groups and the others as separate arrays); jobs in group order."""
        jobs: list[Any] = [None] * len(groups)
        for gpu in (True, False):
            idx = [i for i, g in enumerate(groups) if any(u.resources.gpu for u in g) == gpu]
            if idx:
                sub = self._executor(folder, stage, gpu).map_array(
                    run_group, [groups[i] for i in idx], [self.threads] * len(idx))
                for i, j in zip(idx, sub):
                    jobs[i] = j
        _note_submitted(folder, groups, jobs)
        return jobs

    def run(self, units: list[Unit], ctx: Any) -> Result:
        """Submit the groups (or reattach to an earlier driver's jobs), yield as jobs finish."""
        groups = groups_of(units)
        if not groups:
            return
        stage = groups[0][0].stage
        folder = ctx.run_dir / "logs" / "slurm" / stage
        earlier = _earlier_jobs(folder, groups)
        new = [g for g, j in zip(groups, earlier) if j is None]
        fresh = iter(self._submit(folder, stage, new) if new else [])
        pending = {id(g): (g, j if j is not None else next(fresh), 0) for g, j in zip(groups, earlier)}
        if any(j is not None for j in earlier):
            log.info("[%s] waiting for %d jobs an earlier driver submitted", stage, sum(j is not None for j in earlier))
        try:
            yield from self._wait(folder, stage, pending)
        finally:
            for g, job, _ in pending.values():  # the driver stops (an error, a kill): so do they
                job.cancel(check=False)

    def _wait(self, folder: Path, stage: str, pending: dict) -> Result:
        ep = self.ep
        while pending:
            next(iter(pending.values()))[1].watcher.update()  # one sacct for every job
            for k, (g, job, tries) in list(pending.items()):
                reason = dead_reason(job, refresh=False)
                if reason is not None:
                    where = f"{stage}/{g[0].key}{' ...' if len(g) > 1 else ''}: SLURM job {job.job_id} {reason} " \
                            f"(log {job.paths.stderr})"
                    if tries >= ep.max_retries:
                        del pending[k]
                        raise RuntimeError(f"{where}; gave up after {tries} resubmissions (executor.max_retries)")
                    log.warning("%s; resubmitting (%d/%d)", where, tries + 1, ep.max_retries)
                    pending[k] = (g, self._submit(folder, stage, [g])[0], tries + 1)
                elif job.done():
                    del pending[k]
                    try:
                        results = job.result()
                    except Exception as e:  # submitit could not run run_group at all
                        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                        raise RuntimeError(f"{stage}/{g[0].key}: SLURM job {job.job_id} failed: {msg} "
                                           f"(log {job.paths.stderr})") from None
                    yield from _yield_group(g, results, f"in SLURM job {job.job_id} (log {job.paths.stderr})")
            if pending:
                time.sleep(ep.poll_s)


def _group_id(g: list[Unit]) -> list[str]:
    return [u.identity for u in g]


def _note_submitted(folder: Path, groups: list[list[Unit]], jobs: list[Any]) -> None:
    """Append the jobs to ``submitted.json``: job id, log folder, the identities of its units."""
    from ..store import write_json

    f = folder / "submitted.json"
    rows = json.loads(f.read_text()) if f.is_file() else []
    rows += [{"job_id": j.job_id, "folder": str(j.paths.folder), "units": [u.key for u in g],
              "identities": _group_id(g)} for g, j in zip(groups, jobs)]
    write_json(rows, f)


def _earlier_jobs(folder: Path, groups: list[list[Unit]]) -> list[Any]:
    """Per group, the job an earlier driver submitted for exactly these units, if it has not
    ended (still pending or running); else None."""
    import submitit

    f = folder / "submitted.json"
    if not f.is_file():
        return [None] * len(groups)
    last = {tuple(r["identities"]): r for r in json.loads(f.read_text())}
    out = []
    for g in groups:
        r = last.get(tuple(_group_id(g)))
        job = submitit.SlurmJob(folder=str(folder / "%j"), job_id=r["job_id"]) if r else None
        if job is not None and (job.paths.result_pickle.exists() or job.watcher.is_done(job.job_id, mode="force")):
            job = None  # ended: a finished one was collected from its receipts, the others rerun
        out.append(job)
    return out
