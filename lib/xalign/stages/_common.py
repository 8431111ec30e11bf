"""Small helpers the stage modules share (no method code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..store import read_json


def checkpoint_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``checkpoints.json`` that are not excluded as duplicate weights."""
    return [c for c in read_json(run_dir / "checkpoints.json") if not c["excluded"]]


def vectors_path(run_dir: Path, ckpt_name: str, lang: str) -> Path:
    """``vectors/<checkpoint>/<lang>.safetensors`` of a run (stage 2)."""
    return run_dir / "vectors" / ckpt_name / f"{lang}.safetensors"


def sweep_attributes(P: Any) -> list[str]:
    """``probe.sweep_attributes`` not in ``probe.attributes`` (order kept): probed at the last
    checkpoint's sweep layers only. Empty without a sweep (``extraction.sweep_layers: []``)."""
    if not P.extraction.sweep_layers:
        return []
    return [a for a in (P.probe.sweep_attributes or []) if a not in P.probe.attributes]


def sweep_layers_in(P: Any, layers: list[int]) -> list[int]:
    """The sweep layers (``extraction.sweep_layers``, "all" = every one) among a vectors file's ``layers``."""
    sweep = P.extraction.sweep_layers
    return list(layers) if sweep == "all" else [l for l in layers if l in set(sweep)]
