"""One driver per run folder: a file lock held while a stage runs.

Two drivers (two notebooks, a notebook and ``run_all.sh``, two SLURM drivers) on one run
folder would interleave manifest writes and delete each other's temporary files. The
scheduler takes ``<run_dir>/.xalign.lock`` (:mod:`filelock`, released by the OS when the
process dies, so a killed driver never leaves it held) for the length of a stage; a second
driver fails at once with one line naming the holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from ..errors import XalignError

LOCK_NAME = ".xalign.lock"
_held: set[Path] = set()  # run folders this process holds (a stage may call another's planner)


class RunLocked(XalignError, RuntimeError):
    """Another live process holds the run folder."""


@contextlib.contextmanager
def run_lock(run_dir: Path, stage: str) -> Iterator[None]:
    """Hold ``run_dir``'s lock while the block runs.

    Raises:
        RunLocked: another process holds it (one line: the holder's pid, host, stage and
            start time, from ``.xalign.lock.json``).
    """
    run_dir = run_dir.resolve()
    if run_dir in _held:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK_NAME, thread_local=False)
    info = run_dir / f"{LOCK_NAME}.json"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunLocked(f"{run_dir}: in use by {_holder(info)}; wait for it to finish or stop it") from None
    _held.add(run_dir)
    try:
        info.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "stage": stage,
                                    "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
        yield
    finally:
        _held.discard(run_dir)
        lock.release()


def _holder(info: Path) -> str:
    try:
        h = json.loads(info.read_text())
        return f"pid {h['pid']} on {h['host']} (stage {h['stage']}, since {h['since']})"
    except (OSError, ValueError, KeyError):
        return "another process"
