"""Shared test fixtures. Tests never touch the network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data bundle (``$XALIGN_DATA`` or ``../shared/data``)."""
    from xalign.params import resolve_data_root

    return resolve_data_root(None, REPO)


@pytest.fixture
def mirrored_data(data_root, tmp_path) -> Path:
    """The real data bundle as real folders in ``tmp_path/data`` whose files are symlinks to
    the originals: unlink a file and write a bad one in its place to plant a problem (the
    bundle itself is never touched, nothing is copied)."""
    dst = tmp_path / "data"
    for folder, _, files in os.walk(data_root):
        out = dst / Path(folder).relative_to(data_root)
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            (out / f).symlink_to(Path(folder) / f)
    return dst


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread for the whole suite: the models and probes in the tests are tiny,
    and on a 2-core machine OpenMP threads waiting for a descheduled sibling make small ops
    many times slower than one thread. Restored at the end."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def minimal_run(tmp_path_factory) -> Path:
    """``bash run_all.sh`` (every notebook through jupytext + papermill) on ``params/minimal.yaml``,
    once per session, into a temporary folder; returns that folder (``runs/minimal``,
    ``figures/minimal``, the params file ``minimal.yaml`` and the terminal's output
    ``run_all.stdout`` / ``run_all.stderr`` inside). Used by the end-to-end
    test and as the uninterrupted reference run of the resume/determinism tests."""
    import yaml

    tmp = tmp_path_factory.mktemp("minimal_run")
    cfg = yaml.safe_load((REPO / "params" / "minimal.yaml").read_text())
    cfg["params"]["runs_dir"] = str(tmp / "runs")
    cfg["params"]["figures_dir"] = str(tmp / "figures")
    pfile = tmp / "minimal.yaml"
    pfile.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(REPO / "run_all.sh"), str(pfile)], cwd=REPO, env=env,
                          capture_output=True, timeout=900)  # bytes: text mode would turn \r into \n
    out, err = (b.decode("utf-8", errors="replace") for b in (proc.stdout, proc.stderr))
    assert proc.returncode == 0, out[-4000:] + err[-4000:]
    (tmp / "run_all.stdout").write_bytes(proc.stdout)
    (tmp / "run_all.stderr").write_bytes(proc.stderr)
    return tmp


@pytest.fixture(scope="session")
def slurm_cluster():
    """The default partition of the local SLURM cluster (``bash scripts/slurm-local.sh start``),
    found through ``$SLURM_CONF`` or the default state folder's ``slurm.conf``, which is then
    exported for the session so that submitit's sbatch/sacct calls find it too. Skips when the
    cluster does not answer, fails instead when ``XALIGN_REQUIRE_SLURM=1`` (CI)."""
    from slurm_support import NOT_RUNNING, cluster_partition, slurm_conf

    partition, why = cluster_partition()
    if partition is None:
        if os.environ.get("XALIGN_REQUIRE_SLURM") == "1":
            pytest.fail(f"{NOT_RUNNING} (XALIGN_REQUIRE_SLURM=1: {why})", pytrace=False)
        pytest.skip(NOT_RUNNING)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(slurm_conf()))
        yield partition
