"""Artefact I/O: atomic writes of tensors (safetensors), tables (parquet + CSV) and JSON.

Every writer goes through :func:`atomic_path`: the artefact is written to a temporary
file beside its destination and renamed into place only when complete, so a crash or a
full disk never leaves a half-written artefact that a later stage could read back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch


class ArtefactError(ValueError):
    """An artefact on disk that cannot be read or does not match what was expected."""


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it to ``dest`` if the block succeeds.

    On any exception (including ``OSError: No space left on device``) the temporary file
    is removed and ``dest`` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(obj: Any, dest: str | Path) -> Path:
    """Write ``obj`` as indented UTF-8 JSON, atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return Path(dest)


def read_json(path: str | Path) -> Any:
    """Read JSON; raises :class:`ArtefactError` naming the file if it is missing or corrupt."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtefactError(f"{path}: missing artefact (run the stage that writes it first)") from None
    except json.JSONDecodeError as e:
        raise ArtefactError(f"{path}: corrupt JSON ({e.msg} at line {e.lineno})") from None


def write_table(df: pd.DataFrame, dest: str | Path, csv: bool = False) -> Path:
    """Write a DataFrame as parquet (and a CSV twin with the same stem if ``csv``), atomically."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        df.to_parquet(tmp, index=False)
    if csv:
        with atomic_path(dest.with_suffix(".csv")) as tmp:
            df.to_csv(tmp, index=False)
    return dest


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a parquet table; raises :class:`ArtefactError` naming the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path}: missing artefact (run the stage that writes it first)")
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise ArtefactError(f"{path}: unreadable parquet ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def save_tensors(tensors: dict[str, torch.Tensor], dest: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Save named tensors to a ``.safetensors`` file with JSON-encoded metadata, atomically.

    Raises:
        ArtefactError: a tensor holds NaN or inf (named in the message); nothing is written.
    """
    from safetensors.torch import save_file

    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise ArtefactError(f"{dest}: tensor '{name}' has {bad} NaN/inf values; not written")
    meta = {k: json.dumps(v, default=str) for k, v in (metadata or {}).items()}
    with atomic_path(dest) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    return Path(dest)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a ``.safetensors`` file written by :func:`save_tensors`.

    Returns:
        ``(tensors, metadata)`` with metadata values JSON-decoded.

    Raises:
        ArtefactError: the file is missing, truncated or corrupt (one line, naming it).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path}: missing artefact (run the stage that writes it first)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ArtefactError(f"{path}: corrupt or truncated safetensors file ({str(e).splitlines()[0]})") from None
    return tensors, meta


def load_metadata(path: str | Path) -> dict[str, Any]:
    """Read only the JSON-decoded metadata of a ``.safetensors`` file (no tensor data).

    Raises:
        ArtefactError: the file is missing or its header is corrupt (one line, naming it).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path}: missing artefact (run the stage that writes it first)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except Exception as e:
        raise ArtefactError(f"{path}: corrupt or truncated safetensors file ({str(e).splitlines()[0]})") from None


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
