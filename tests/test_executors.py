"""Executors: ``processes`` and ``slurm`` give the tables of ``local`` exactly; a scancelled
job is resubmitted; a killed driver's finished jobs are collected, not recomputed; a kernel
edit recomputes the stages that run it. The reference is the ``minimal_run`` fixture
(``run_all.sh`` on ``params/minimal.yaml``, local executor)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from test_runs import REPO, STAGES, _summaries, _tables

_DRIVER = ("import sys; from xalign.params import load_params; from xalign import runs\n"
           "if __name__ == '__main__':\n"
           "    P = load_params(sys.argv[1]); [getattr(runs, 'run_' + s)(P) for s in sys.argv[2:]]")


def _params(tmp: Path, runs_dir: Path, **executor) -> Path:
    cfg = yaml.safe_load((REPO / "params" / "minimal.yaml").read_text())
    cfg["params"].update(runs_dir=str(runs_dir), figures_dir=str(tmp / "figures"), executor=executor)
    f = tmp / f"minimal-{executor.get('kind', 'local')}.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def _driver(pfile: Path, *stages: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _DRIVER, str(pfile), *stages], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _assert_tables_equal(run: Path, ref: Path) -> None:
    got, want = _tables(run), _tables(ref)
    for rel in want:
        pd.testing.assert_frame_equal(got[rel], want[rel], check_exact=True, obj=rel)


def _jobs(name: str, state: str = "RUNNING") -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-t", state, "-o", "%i"], capture_output=True, text=True)
    return out.stdout.split()


@pytest.mark.e2e
def test_processes_with_two_workers_equals_local(minimal_run: Path, tmp_path: Path) -> None:
    pfile = _params(tmp_path, tmp_path / "runs", kind="processes", workers=2)
    proc = _driver(pfile, *STAGES)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert _summaries(out)["probing"] == (10, 0)
    _assert_tables_equal(tmp_path / "runs" / "minimal", minimal_run / "runs" / "minimal")


@pytest.mark.e2e
@pytest.mark.slurm
def test_slurm_equals_local_and_a_scancelled_job_is_resubmitted(slurm_cluster, minimal_run, tmp_path) -> None:
    """The whole minimal run as SLURM job arrays; one probing job is scancelled while it runs:
    the driver reports it, resubmits it, and the tables equal the local run's exactly."""
    pfile = _params(tmp_path, tmp_path / "runs", kind="slurm", partition=slurm_cluster, poll_s=0.5,
                    mem_gb=1, time_min=20)
    proc = _driver(pfile, *STAGES)
    t0, cancelled = time.monotonic(), None
    try:
        while cancelled is None:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() - t0 < 600, "no probing job ran within 600 s"
            running = _jobs("xalign-probing")
            if running:
                cancelled = running[0]
                subprocess.run(["scancel", cancelled], check=True, timeout=30)
            time.sleep(0.2)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert f"SLURM job {cancelled} CANCELLED" in err and "resubmitting (1/2)" in err, err[-3000:]
    run = tmp_path / "runs" / "minimal"
    assert (run / "logs" / "slurm" / "probing" / "submitted.json").is_file()
    _assert_tables_equal(run, minimal_run / "runs" / "minimal")
    assert not list(run.rglob("*.tmp")) and not list((run / ".receipts").rglob("*.json"))


@pytest.mark.e2e
@pytest.mark.slurm
def test_a_killed_driver_restarted_collects_finished_jobs(slurm_cluster, minimal_run, tmp_path) -> None:
    """probe.k 3 -> 2 on SLURM; the driver is SIGKILLed once its jobs run; they finish without
    it; the restarted driver records them from their receipts and computes only the tables."""
    shutil.copytree(minimal_run / "runs", tmp_path / "runs")
    pfile = _params(tmp_path, tmp_path / "runs", kind="slurm", partition=slurm_cluster, poll_s=0.5,
                    mem_gb=1, time_min=20)
    cfg = yaml.safe_load(pfile.read_text())
    cfg["params"]["probe"]["k"] = 2
    pfile.write_text(yaml.safe_dump(cfg))
    proc = _driver(pfile, "probing")
    t0 = time.monotonic()
    while not _jobs("xalign-probing"):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() - t0 < 300, "no probing job ran within 300 s"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    while _jobs("xalign-probing", "PENDING,RUNNING,COMPLETING"):  # they go on without the driver
        assert time.monotonic() - t0 < 600
        time.sleep(0.5)
    again = _driver(pfile, "probing")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert _summaries(out)["probing"] == (1, 9), out  # the tables only; 9 parts collected
    import json

    jobs = json.loads((tmp_path / "runs" / "minimal" / "logs" / "slurm" / "probing" / "submitted.json").read_text())
    assert sorted(len(j["units"]) for j in jobs) == [1] * 10 and sum(j["units"] == ["tables"] for j in jobs) == 1
    sel = pd.read_parquet(tmp_path / "runs" / "minimal" / "probing" / "selections.parquet")
    before = pd.read_parquet(minimal_run / "runs" / "minimal" / "probing" / "selections.parquet")
    assert (sel.neurons.map(len) == 2).all() and len(sel) == len(before)  # every probe, every replicate


@pytest.mark.e2e
def test_a_kernel_edit_recomputes_the_stages_that_run_it(minimal_run, tmp_path) -> None:
    """EVAL_MC_SAMPLES in probe.py changed, in a copy of the package: probing is recomputed
    (and overlap, whose input changed); data prep and extraction are reused."""
    pkg = tmp_path / "pkg"
    shutil.copytree(REPO / "lib" / "xalign", pkg / "xalign", ignore=shutil.ignore_patterns("__pycache__"))
    f = pkg / "xalign" / "probe.py"
    text = f.read_text()
    assert "EVAL_MC_SAMPLES = 8\n" in text
    f.write_text(text.replace("EVAL_MC_SAMPLES = 8\n", "EVAL_MC_SAMPLES = 4\n"))
    shutil.copytree(minimal_run / "runs", tmp_path / "runs")
    pfile = _params(tmp_path, tmp_path / "runs")
    env = {**os.environ, "PYTHONPATH": str(pkg)}
    proc = _driver(pfile, "data_prep", "extraction", "probing", "overlap", env=env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    s = _summaries(out)
    assert s["data_prep"] == (0, 4) and s["extraction"] == (0, 10)
    assert s["probing"] == (10, 0) and s["overlap"][0] == 1
    # the original code again: its probes are the reference's (recomputed, the same numbers)
    proc = _driver(pfile, "probing")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and _summaries(out)["probing"] == (10, 0), err[-3000:]
    ref = pd.read_parquet(minimal_run / "runs" / "minimal" / "probing" / "selections.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "runs" / "minimal" / "probing" / "selections.parquet"),
                                  ref, check_exact=True)
