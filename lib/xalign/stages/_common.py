"""Small helpers the stage modules share (no method code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..store import read_json


def checkpoint_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``checkpoints.json`` that are not excluded as duplicate weights."""
    return [c for c in read_json(run_dir / "checkpoints.json") if not c["excluded"]]
