"""Artefact store: atomic writes of tensors (safetensors), tables (parquet + CSV) and JSON;
artefact identities and provenance (the run manifest is :mod:`xalign.pipeline.manifest`).

Every writer goes through :func:`atomic_path`: the artefact is written to a temporary
file beside its destination and renamed into place only when complete, so a crash or a
full disk never leaves a half-written artefact that a later stage could read back.

An artefact's :func:`identity` hashes its stage, the params it depends on and the
SHA-256 of its inputs; :class:`xalign.pipeline.manifest.Manifest` (``<run_dir>/manifest.json``)
records every artefact with its identity, inputs and bytes' SHA-256, plus the run's
:func:`provenance`, so the scheduler reuses exactly what is still valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd
import torch

from .errors import XalignError

log = logging.getLogger("xalign.store")


class ArtefactError(XalignError, ValueError):
    """An artefact on disk that cannot be read or does not match what was expected."""


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it to ``dest`` if the block succeeds.

    On any exception (including ``OSError: No space left on device``) the temporary file
    is removed and ``dest`` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{_owner()}.", suffix=".tmp", dir=dest.parent)
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


def _owner() -> str:
    """Marks a temporary file with its writer, ``~<host>~<pid>~`` (see :func:`remove_stale_temps`)."""
    return f"~{socket.gethostname().replace('~', '-')}~{os.getpid()}~"


_OWNER_RE = re.compile(r"~([^~]+)~(\d+)~")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temps(folder: str | Path, max_age_s: float = 86400.0) -> int:
    """Delete temporary files that :func:`atomic_path` left under ``folder`` when its writer
    was killed (``.<name>.~<host>~<pid>~<random>.tmp``; never read back).

    A temp file is removed only when its owner cannot be writing it any more: written on this
    host by a process that no longer exists, or unmarked (an older xalign), or written on
    another host (a SLURM node) more than ``max_age_s`` seconds ago. A live writer's file,
    here or on another node, is left alone. Returns the number removed.
    """
    import time

    host, n = socket.gethostname().replace("~", "-"), 0
    for p in Path(folder).rglob(".*.tmp"):
        if not p.is_file():
            continue
        m = _OWNER_RE.search(p.name)
        if m and m.group(1) == host:
            stale = not _pid_alive(int(m.group(2)))
        elif m:
            stale = time.time() - p.stat().st_mtime > max_age_s
        else:
            stale = True
        if stale:
            p.unlink(missing_ok=True)
            n += 1
    return n


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


_ST_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32"}


class TensorFileWriter:
    """A ``.safetensors`` file written piece by piece: shapes fixed up front, rows written
    in any order, metadata settable until the end. See :func:`stream_tensors`."""

    _RESERVE = 8192  # spare header bytes for metadata set after opening

    def __init__(self, path: Path, specs: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 metadata: dict[str, Any] | None, dest: Path) -> None:
        self.dest = dest
        self.metadata = dict(metadata or {})
        self._specs = {k: (tuple(int(n) for n in shape), dt) for k, (shape, dt) in specs.items()}
        self._layout: dict[str, tuple[int, int]] = {}
        self._rows_written = {k: 0 for k in specs}
        offset = 0
        for name, (shape, dt) in self._specs.items():
            if dt not in _ST_DTYPES:
                raise ValueError(f"{dest}: tensor '{name}': unsupported dtype {dt}")
            if len(shape) < 1:
                raise ValueError(f"{dest}: tensor '{name}' needs at least one dimension")
            n = dt.itemsize
            for x in shape:
                n *= x
            self._layout[name] = (offset, offset + n)
            offset += n
        self._data_bytes = offset
        self._header_len = len(self._header()) + self._RESERVE
        self._header_len += -self._header_len % 8
        self._f = open(path, "r+b")
        self._f.truncate(8 + self._header_len + self._data_bytes)  # zeros

    def _header(self) -> bytes:
        h: dict[str, Any] = {"__metadata__": {k: json.dumps(v, default=str) for k, v in self.metadata.items()}}
        for name, (shape, dt) in self._specs.items():
            h[name] = {"dtype": _ST_DTYPES[dt], "shape": list(shape), "data_offsets": list(self._layout[name])}
        return json.dumps(h, separators=(",", ":")).encode("utf-8")

    def write_rows(self, name: str, start: int, block: torch.Tensor) -> None:
        """Write ``block`` as rows ``start .. start + len(block)`` of tensor ``name``.

        ``block`` is converted to the tensor's dtype.

        Raises:
            ArtefactError: NaN/inf in a floating block, or a block outside the tensor or of the
                wrong row shape (names the file and tensor).
        """
        shape, dt = self._specs[name]
        block = block.detach().to("cpu", dt).contiguous()
        if tuple(block.shape[1:]) != shape[1:] or start < 0 or start + len(block) > shape[0]:
            raise ArtefactError(f"{self.dest}: tensor '{name}' {shape}: rows {start}..{start + len(block)} "
                                f"of shape {tuple(block.shape)} do not fit")
        if block.is_floating_point() and not torch.isfinite(block).all():
            bad = int((~torch.isfinite(block)).sum())
            raise ArtefactError(f"{self.dest}: tensor '{name}' has {bad} NaN/inf values; not written")
        row_bytes = block[0].numel() * dt.itemsize if len(block) else 0
        self._f.seek(8 + self._header_len + self._layout[name][0] + start * row_bytes)
        self._f.write(block.view(torch.uint8).numpy().tobytes())  # raw bytes (numpy has no bfloat16)
        self._rows_written[name] += len(block)

    def _commit(self) -> None:
        short = {k: f"{n} of {self._specs[k][0][0]}" for k, n in self._rows_written.items()
                 if n != self._specs[k][0][0]}
        if short:
            raise ArtefactError(f"{self.dest}: rows written {short}; not written")
        header = self._header()
        if len(header) > self._header_len:
            raise ArtefactError(f"{self.dest}: metadata of {len(header)} bytes exceeds the reserved header")
        self._f.seek(0)
        self._f.write(self._header_len.to_bytes(8, "little"))
        self._f.write(header + b" " * (self._header_len - len(header)))
        self._f.flush()
        os.fsync(self._f.fileno())


@contextlib.contextmanager
def stream_tensors(dest: str | Path, specs: dict[str, tuple[tuple[int, ...], torch.dtype]],
                   metadata: dict[str, Any] | None = None) -> Iterator[TensorFileWriter]:
    """Write a ``.safetensors`` file row block by row block, without holding it in memory.

    The tensors' shapes and dtypes are fixed up front; :meth:`TensorFileWriter.write_rows`
    writes rows at any position (each row exactly once, in any order), and
    ``writer.metadata`` (JSON-encoded like :func:`save_tensors`') may change until the
    block ends. The file is written next to ``dest`` and renamed into place only if the
    block succeeds and every row was written (:func:`atomic_path`); it reads back with
    :func:`load_tensors` / ``safetensors.safe_open`` like any other.

    Args:
        dest: the ``.safetensors`` file.
        specs: name -> (shape, dtype); dtypes float32/64, float16, bfloat16, int64, int32.
        metadata: initial metadata.

    Raises:
        ArtefactError: NaN/inf in a written block, rows left unwritten, or metadata larger
            than the header's reserve (8 KiB); nothing is written.
    """
    with atomic_path(dest) as tmp:
        w = TensorFileWriter(tmp, specs, metadata, Path(dest))
        try:
            yield w
            w._commit()
        finally:
            w._f.close()


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a ``.safetensors`` file written by :func:`save_tensors` or :func:`stream_tensors`.

    Returns:
        ``(tensors, metadata)`` with metadata values JSON-decoded.

    Raises:
        ArtefactError: the file is missing, truncated or corrupt (one line, naming it).
    """
    lazy = LazyTensors(path)
    return {k: lazy[k] for k in lazy}, lazy.metadata


class LazyTensors(Mapping[str, torch.Tensor]):
    """The tensors of a ``.safetensors`` file, each read from disk when indexed.

    Memory holds only the tensor asked for (a vectors file with a 7-layer sweep of a
    d = 1024 model over 228k words is 6.5 GB; one layer is 0.9 GB). ``shapes`` and
    ``metadata`` come from the header, read once at construction.

    Raises:
        ArtefactError: the file is missing, truncated or corrupt (at construction or
            when a tensor is read; one line, naming it).
    """

    def __init__(self, path: str | Path) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        if not self.path.is_file():
            raise ArtefactError(f"{self.path}: missing artefact (run the stage that writes it first)")
        try:
            with safe_open(str(self.path), framework="pt") as f:
                self.metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
                self.shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:
            raise ArtefactError(f"{self.path}: corrupt or truncated safetensors file "
                                f"({str(e).splitlines()[0]})") from None

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self.shapes:
            raise KeyError(name)
        try:
            with safe_open(str(self.path), framework="pt") as f:
                return f.get_tensor(name)
        except Exception as e:
            raise ArtefactError(f"{self.path}: cannot read tensor '{name}' ({str(e).splitlines()[0]})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def load_metadata(path: str | Path) -> dict[str, Any]:
    """Read only the JSON-decoded metadata of a ``.safetensors`` file (no tensor data).

    Raises:
        ArtefactError: the file is missing or its header is corrupt (one line, naming it).
    """
    return LazyTensors(path).metadata


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- identity
def content_sha256(obj: Any) -> str:
    """SHA-256 of a value's content, stable across processes and platforms.

    DataFrames hash their column names, dtypes and values (``pandas.util.hash_pandas_object``,
    index excluded); tensors their dtype, shape and bytes; other values their canonical JSON
    (dict keys sorted). Containers may nest these.
    """
    import numpy as np

    def enc(x: Any) -> Any:
        if isinstance(x, pd.DataFrame):
            h = hashlib.sha256(json.dumps([list(map(str, x.columns)), [str(t) for t in x.dtypes]]).encode())
            if len(x):
                h.update(pd.util.hash_pandas_object(x, index=False).to_numpy().tobytes())
            return {"__frame__": h.hexdigest(), "rows": len(x)}
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            return {"__tensor__": hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
                    .hexdigest(), "dtype": str(t.dtype), "shape": list(t.shape)}
        if isinstance(x, np.ndarray):
            return {"__array__": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest(),
                    "dtype": str(x.dtype), "shape": list(x.shape)}
        if isinstance(x, dict):
            return {str(k): enc(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [enc(v) for v in x]
        if hasattr(x, "__dataclass_fields__"):
            from dataclasses import asdict
            return enc(asdict(x))
        if isinstance(x, Path):
            return str(x)
        if isinstance(x, (np.integer, np.floating, np.bool_)):
            return x.item()
        return x

    blob = json.dumps(enc(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def identity(stage: str, config: Any, inputs: dict[str, str] | None = None) -> str:
    """An artefact's identity: SHA-256 over its stage, the params that affect it and its inputs.

    Args:
        stage: the stage that writes the artefact (e.g. ``"probing"``).
        config: the parameters the artefact depends on (JSON-able; order of dict keys is
            irrelevant). Parameters that cannot change the result (batch sizes, thread
            counts, progress bars) belong elsewhere.
        inputs: name -> SHA-256 of every input: artefact files (:meth:`Manifest.sha256`),
            data files, checkpoint weights (``weights_sha256``).

    Returns:
        64 hex digits. Equal identities mean the artefact would be recomputed identically
        (given a deterministic stage), so a stage may reuse it (:meth:`Manifest.is_current`).
    """
    return content_sha256({"stage": stage, "config": config, "inputs": dict(sorted((inputs or {}).items()))})


def path_stat(path: Path) -> tuple[int, int]:
    """(bytes, newest mtime in ns) of a file, or of all files under a folder."""
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        return sum(p.stat().st_size for p in files), max((p.stat().st_mtime_ns for p in files), default=0)
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def path_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a folder: each file's relative name and SHA-256, in name order."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


PROVENANCE_PACKAGES = ("xalign", "torch", "transformers", "tokenizers", "peft", "bitsandbytes", "safetensors",
                       "numpy", "pandas", "pyarrow", "scipy", "statsmodels", "conllu", "ud-compatibility",
                       "gguf", "matplotlib", "papermill", "jupytext", "pydantic")


def provenance(seed: int | None = None) -> dict[str, Any]:
    """Where and with what a stage ran: git commit (and whether the tree was dirty), Python,
    platform, installed versions of :data:`PROVENANCE_PACKAGES`, torch threads and device, seed."""
    import platform
    import subprocess
    import sys
    from importlib import metadata

    repo = Path(__file__).resolve().parents[2]
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        if commit:
            st = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10).stdout
            dirty = bool(st.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"seed": seed, "git_commit": commit, "git_dirty": dirty, "python": sys.version.split()[0],
            "platform": platform.platform(), "packages": versions, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
