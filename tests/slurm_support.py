"""Helpers for the tests that need the local SLURM cluster (``bash scripts/slurm-local.sh start``).

The client commands find that cluster through ``SLURM_CONF``; when it is not set, the default
state folder's ``slurm.conf`` is used (``$XALIGN_SLURM_DIR``, default ``/tmp/xalign-slurm``).

Dead jobs: the cluster keeps accounting (slurmdbd), so ``sacct`` reports every job's final
state and submitit 1.5.4's watcher reads it; :func:`xalign.pipeline.slurm.dead_reason` (the
executor's test, re-exported here) calls a job without a result file whose accounting state is
final (CANCELLED, TIMEOUT, FAILED, NODE_FAIL, OUT_OF_MEMORY, ...) dead.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

from xalign.pipeline.slurm import dead_reason

__all__ = ["NOT_RUNNING", "cluster_partition", "dead_reason", "slurm_conf", "squeue_state"]

NOT_RUNNING = "SLURM cluster not running: start it with `bash scripts/slurm-local.sh start`"


def slurm_conf() -> Path:
    """``$SLURM_CONF``, else the default state folder's ``slurm.conf``."""
    if os.environ.get("SLURM_CONF"):
        return Path(os.environ["SLURM_CONF"])
    return Path(os.environ.get("XALIGN_SLURM_DIR") or "/tmp/xalign-slurm") / "slurm.conf"


def cluster_partition(timeout: float = 5.0) -> tuple[str | None, str]:
    """(default partition, "") when ``sinfo`` answers within ``timeout`` s, else (None, why)."""
    conf = slurm_conf()
    if not conf.is_file():
        return None, f"no {conf}"
    refused = _controller_refuses(conf)
    if refused:
        return None, refused
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P"], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except FileNotFoundError:
        return None, "sinfo not installed"
    except subprocess.TimeoutExpired:
        return None, f"sinfo did not answer within {timeout:g} s (SLURM_CONF={conf})"
    names = proc.stdout.split()
    if proc.returncode != 0 or not names:
        return None, f"sinfo failed (SLURM_CONF={conf}): {proc.stderr.strip()[-300:]}"
    default = [n for n in names if n.endswith("*")]
    return (default[0] if default else names[0]).rstrip("*"), ""


def _controller_refuses(conf: Path) -> str:
    """Why slurmctld cannot be there (its port refuses connections), else "" (it may be: ask
    sinfo). Spares the seconds that sinfo spends retrying a stopped controller."""
    text = conf.read_text(errors="replace")
    host = re.search(r"^\s*(?:SlurmctldHost|ControlMachine)\s*=\s*([^\s,#]+)", text, re.M | re.I)
    port = re.search(r"^\s*SlurmctldPort\s*=\s*(\d+)\s*$", text, re.M | re.I)
    if not host:
        return ""
    name, _, addr = host.group(1).partition("(")
    addr = addr.rstrip(")") or name
    try:
        socket.create_connection((addr, int(port.group(1)) if port else 6817), timeout=2).close()
    except ConnectionRefusedError:
        return f"slurmctld at {addr}:{port.group(1) if port else 6817} refuses connections ({conf})"
    except OSError:
        return ""
    return ""


def squeue_state(job_id: str) -> str | None:
    """The job's state as slurmctld has it (``squeue --states=all``): PENDING, RUNNING,
    CANCELLED, TIMEOUT, COMPLETED, ...; None once slurmctld has forgotten it (MinJobAge, 300 s
    after its end). Works without accounting."""
    proc = subprocess.run(["squeue", "-h", "--states=all", "-j", str(job_id), "-o", "%T"],
                          capture_output=True, text=True, timeout=30)
    lines = proc.stdout.split()
    return lines[0] if proc.returncode == 0 and lines else None
