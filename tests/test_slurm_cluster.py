"""submitit on the real local SLURM cluster (``bash scripts/slurm-local.sh start``): a job array
of three tasks, and a scancelled job that must be reported dead, not finished. Skipped when the
cluster does not answer (failed with ``XALIGN_REQUIRE_SLURM=1``)."""

from __future__ import annotations

import subprocess
import sys
import time

import cloudpickle
import pytest
import submitit
from submitit.core.utils import UncompletedJobError

from slurm_support import dead_reason, squeue_state

pytestmark = pytest.mark.slurm

# The jobs unpickle these functions in a fresh interpreter where this test module is not
# importable: pickle them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square(x: int) -> int:
    return x * x


def sleep_then_return(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def _executor(folder, partition: str, name: str, **params) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(**{"name": name, "slurm_partition": partition, "timeout_min": 5,
                            "mem_gb": 1, "cpus_per_task": 1, "slurm_array_parallelism": 3,
                            **params})
    return ex


def _wait(what: str, ok, limit_s: float, show=lambda: ""):
    start = time.monotonic()
    while True:
        value = ok()
        if value:
            return value
        assert time.monotonic() - start < limit_s, f"{what}: not within {limit_s:g} s {show()}"
        time.sleep(0.5)


def test_map_array_runs_three_tasks(slurm_cluster, tmp_path):
    ex = _executor(tmp_path / "submitit", slurm_cluster, "xalign-test-array")
    jobs = ex.map_array(square, [1, 2, 3])
    try:
        assert len({job.job_id.split("_")[0] for job in jobs}) == 1  # one array job
        _wait("3 array tasks done", lambda: all(job.done() for job in jobs), 120)
        assert [job.result() for job in jobs] == [1, 4, 9]
        states: list[str] = []

        def completed() -> bool:  # sacct (accounting) has it a moment after the result files
            jobs[0].watcher.update()
            states[:] = [job.watcher.get_state(job.job_id, mode="cache") for job in jobs]
            return states == ["COMPLETED"] * 3

        _wait("sacct says COMPLETED", completed, 30, lambda: states)
        assert all(dead_reason(job) is None for job in jobs)
    finally:
        for job in jobs:
            job.cancel(check=False)


def test_scancelled_job_is_dead_not_finished(slurm_cluster, tmp_path):
    ex = _executor(tmp_path / "submitit", slurm_cluster, "xalign-test-cancel")
    job = ex.submit(sleep_then_return, 300)
    try:
        _wait("job running", lambda: squeue_state(job.job_id) == "RUNNING", 60)
        assert dead_reason(job) is None
        subprocess.run(["scancel", job.job_id], check=True, timeout=30)  # as an admin or a kill would
        reason = _wait("scancelled job reported dead", lambda: dead_reason(job), 60)
        assert reason.startswith("CANCELLED"), reason  # sacct: "CANCELLED by 0"
        # slurmctld agrees once the job's processes are gone (COMPLETING until then: submitit's
        # job ignores SIGTERM, so they die by SIGKILL after KillWait, 5 s); it forgets the job
        # MinJobAge (300 s) after that
        _wait("squeue says CANCELLED", lambda: squeue_state(job.job_id) == "CANCELLED", 30)
        assert not job.paths.result_pickle.exists()
        assert job.done()  # submitit sees it ended, from sacct ...
        job._results_timeout_s = 1  # (submitit waits 15 s for a late result file)
        with pytest.raises(UncompletedJobError, match="has not produced any output"):
            job.result()  # ... and result() raises instead of waiting forever
    finally:
        job.cancel(check=False)


def test_timed_out_job_is_dead_not_failed(slurm_cluster, tmp_path):
    # 1 min limit, USR2 55 s before it: Slurm signals within the first ~30 s, submitit's job
    # writes an UncompletedJobError result (not a Checkpointable: no requeue) and exits 1
    ex = _executor(tmp_path / "submitit", slurm_cluster, "xalign-test-timeout", timeout_min=1,
                   slurm_signal_delay_s=55)
    job = ex.submit(sleep_then_return, 300)
    try:
        reason = _wait("timed-out job reported dead", lambda: dead_reason(job), 120)
        assert reason.startswith("FAILED (time limit: "), reason
        assert "timed-out and not checkpointable" in reason
        with pytest.raises(submitit.core.utils.FailedJobError, match="UncompletedJobError"):
            job.result()
    finally:
        job.cancel(check=False)
