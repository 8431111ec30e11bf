"""Units of work: what a stage declares, and the identity that decides whether it is current.

A stage does not loop over its work itself. It *declares* its units (one per checkpoint
and language for probing, one per checkpoint and task for transfer, ...) as
:class:`Unit` values: a key, the params the result depends on, the SHA-256 of its
inputs, the files it writes, and a module-level function that computes them. The
scheduler (:mod:`xalign.pipeline.scheduler`) decides which units are current, runs the
rest through an executor and records what they wrote.

A unit's identity covers the stage, the key, the config, the inputs **and the code**:
:func:`code_version` hashes the source of the modules that implement the stage's method
(comments and docstrings ignored), plus the torch and transformers versions, so an edit to
a kernel recomputes what it computed instead of silently reusing stale tables.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from ..store import identity

#: Packages whose versions enter every code version (their numerics define the results).
CODE_PACKAGES = ("torch", "transformers")


@dataclass(frozen=True)
class Resources:
    """What a unit needs from an executor: a GPU (extraction, transfer) and a group name;
    units of one group run in one job, one after another, so a model is loaded once."""

    gpu: bool = False
    group: str | None = None


@dataclass
class Unit:
    """One unit of work of a stage.

    Attributes:
        stage: the stage that declares it (``"probing"``).
        key: unique within the stage (``"step-000025/en"``).
        config: the params the result depends on (JSON-able); params that cannot change a
            result (batch sizes of inference, threads, executor, devices) are left out.
        inputs: name -> SHA-256 of every input (earlier artefacts, data files, weights).
        outputs: the files or folders it writes (absolute paths).
        fn: a module-level function, called as ``fn(**args)``, that writes ``outputs``
            (atomically) and returns JSON-able notes (``dict``) or ``None``. Notes are kept
            in the manifest, so a reused unit reports what a computed one did. A note
            ``"files": [...]`` lists further files it wrote (e.g. figures), relative to
            the run folder, recorded too.
        args: small, picklable arguments of ``fn`` (paths, names, params): large objects
            are passed as file paths.
        code: :func:`code_version` of the modules ``fn`` runs.
        resources: see :class:`Resources`.
        receipt: where :func:`run_unit` writes the unit's receipt (identity, notes, the
            outputs' sizes and mtimes) once its outputs are written; a driver restarted
            after a kill collects a finished unit from it instead of recomputing it.
    """

    stage: str
    key: str
    config: dict[str, Any]
    inputs: dict[str, str]
    outputs: tuple[Path, ...]
    fn: Callable[..., dict[str, Any] | None]
    args: dict[str, Any] = field(default_factory=dict)
    code: str = ""
    resources: Resources = field(default_factory=Resources)
    receipt: Path | None = None  # set by the scheduler: where run_unit leaves its receipt

    @property
    def identity(self) -> str:
        """SHA-256 over stage, key, config, inputs and code (:func:`xalign.store.identity`)."""
        return identity(self.stage, {"key": self.key, "config": self.config, "code": self.code}, self.inputs)


def _source_digest(path: Path) -> str:
    """SHA-256 of a module's code: its AST with docstrings removed (comments never reach it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


@lru_cache(maxsize=None)
def code_version(*modules: str) -> str:
    """The version of a stage's method: a hash of its modules' code and of :data:`CODE_PACKAGES`.

    Args:
        modules: importable module names (``"xalign.probe"``); each is located, not
            imported, and its source parsed. Docstrings and comments do not count.

    Returns:
        64 hex digits; it changes when any listed module's code, this module's (which seeds
        and runs units) or the torch / transformers version changes. Cached per process (a
        driver sees the code it started with).

    Raises:
        ModuleNotFoundError: a listed module does not exist.
    """
    from importlib import metadata

    h = hashlib.sha256()
    for name in sorted(set(modules) | {__name__}):  # this module: how a unit is seeded and run
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"code_version: no module {name!r}")
        h.update(f"{name}\0{_source_digest(Path(spec.origin))}\n".encode())
    for pkg in CODE_PACKAGES:
        try:
            h.update(f"{pkg}=={metadata.version(pkg)}\n".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{pkg} absent\n".encode())
    return h.hexdigest()


def unit_seed(u: Unit) -> int:
    """The seed of the global RNGs while ``u`` runs: from its identity, so a result never
    depends on which units ran before it in the same process (any executor, any order)."""
    return int(u.identity[:8], 16)


def wrap_library_error(where: str, e: Exception) -> Exception | None:
    """``e`` wrapped as one line saying where it happened, if it was raised outside xalign.

    An exception raised by xalign's own code already names its file, key or unit and is
    returned as None (re-raise it as it is). One raised in a library (the innermost frame of
    its traceback is not in the ``xalign`` package), say numpy's ``expected non-negative
    integer``, becomes ``UnitFailed("<where>: ValueError in numpy: expected non-negative
    integer")``, ``where`` being e.g. ``transfer unit step-000025/pos/seed-0 (fine-tuning,
    zero-shot evaluation)``.
    """
    from ..errors import UnitFailed, XalignError, one_line

    if isinstance(e, XalignError):
        return None
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    here = Path(__file__).resolve().parents[1]
    if tb is None or Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(here):
        return None
    lib = str(tb.tb_frame.f_globals.get("__name__", "?")).split(".")[0]
    return UnitFailed(f"{where}: {type(e).__name__} in {lib}: {one_line(str(e)) or '(no message)'}")


def run_unit(u: Unit) -> dict[str, Any] | None:
    """Run one unit where an executor put it (this process, a worker, a SLURM job).

    Seeds torch, numpy and ``random`` with :func:`unit_seed`, calls ``u.fn(**u.args)``, then
    writes ``u.receipt`` (atomically) if set.

    Returns:
        The unit's notes (JSON-able dict) or None.

    Raises:
        Whatever ``u.fn`` raises (no receipt then); an exception raised inside a library
        (not in xalign's own code) as :class:`~xalign.errors.UnitFailed` naming the stage,
        the unit and the library (:func:`wrap_library_error`), the original as its cause.
    """
    import json
    import random

    import numpy as np
    import torch

    from ..store import atomic_path, path_stat

    seed = unit_seed(u)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        notes = u.fn(**u.args)
    except Exception as e:  # noqa: BLE001 - a library's error gets what xalign was doing
        from ..errors import stage_activity

        wrapped = wrap_library_error(f"{u.stage} unit {u.key} ({stage_activity(u.stage)})", e)
        if wrapped is None:
            raise
        raise wrapped from e
    if u.receipt is not None:
        files = [*u.outputs, *(Path(u.receipt).parents[2] / f for f in (notes or {}).get("files", []))]
        rec = {"identity": u.identity, "key": u.key, "notes": notes,
               "outputs": {str(f): list(path_stat(Path(f))) for f in files}}
        with atomic_path(u.receipt) as tmp:
            tmp.write_text(json.dumps(rec, default=str), encoding="utf-8")
    return notes


def read_receipt(u: Unit) -> dict[str, Any] | None:
    """The notes of a finished run of ``u`` from its receipt (:func:`run_unit`), if the receipt
    is for this very identity and every output is still as that run left it; else None."""
    import json

    from ..store import path_stat

    if u.receipt is None or not Path(u.receipt).is_file():
        return None
    try:
        rec = json.loads(Path(u.receipt).read_text(encoding="utf-8"))
        if rec.get("identity") != u.identity:
            return None
        if any(not Path(f).exists() or list(path_stat(Path(f))) != st for f, st in rec["outputs"].items()):
            return None
    except (ValueError, KeyError, OSError):
        return None
    return {"notes": rec.get("notes")}
