"""The run manifest: ``<run_dir>/manifest.json``, written by the scheduler alone.

It records every artefact (file or folder) a unit wrote, keyed by its path relative to the
run folder: the stage and unit key that wrote it, the unit's identity, config, inputs and
code version, its notes, the bytes' SHA-256, size and mtime. It also caches the SHA-256 of
input files outside the run (treebanks, text, XNLI) by (size, mtime), so declaring units
does not rehash gigabytes each time, and holds the run's provenance and one summary per
stage. Rewritten atomically, so a run killed at any point keeps a consistent record.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..store import ArtefactError, file_sha256, path_sha256, path_stat, read_json, write_json

log = logging.getLogger("xalign.pipeline")

MANIFEST_NAME = "manifest.json"


@dataclass
class Manifest:
    """The run's record of every artefact: identity, inputs, params, SHA-256, and provenance.

    An entry holds ``stage``, ``unit`` (key), ``identity``, ``config``, ``inputs`` (name ->
    SHA-256), ``code``, ``notes``, ``sha256``, ``bytes``, ``mtime_ns`` and ``written`` (UTC).
    An artefact is current (:meth:`is_current`) when the file exists, its entry has the
    identity the unit has now, and its bytes are those recorded (size and mtime equal, or
    else the SHA-256 recomputed and equal: a rewrite behind the manifest's back is noticed;
    a same-size, same-mtime edit is not, see the README).
    """

    run_dir: Path
    artefacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    input_hashes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, run_dir: str | Path) -> "Manifest":
        """Read ``<run_dir>/manifest.json``, or start an empty manifest.

        An unreadable manifest is not fatal: it is set aside as ``manifest.json.corrupt``
        with a warning, and every artefact is recomputed (nothing unverified is reused).
        """
        run_dir = Path(run_dir)
        f = run_dir / MANIFEST_NAME
        if not f.is_file():
            return cls(run_dir)
        try:
            obj = read_json(f)
            return cls(run_dir, dict(obj["artefacts"]), dict(obj.get("run", {})), dict(obj.get("stages", {})),
                       dict(obj.get("input_hashes", {})))
        except (ArtefactError, KeyError, TypeError) as e:
            log.warning("%s: unreadable manifest (%s); set aside, artefacts will be recomputed", f, e)
            os.replace(f, f.with_name(MANIFEST_NAME + ".corrupt"))
            return cls(run_dir)

    def key(self, path: str | Path) -> str:
        """Manifest key of ``path``: relative to the run folder (may start with ``..``)."""
        p = Path(path)
        p = p if p.is_absolute() else self.run_dir / p
        return Path(os.path.relpath(p, self.run_dir)).as_posix()

    def _unchanged(self, key: str, entry: dict[str, Any]) -> bool:
        p = self.run_dir / key
        if not p.exists():
            return False
        size, mtime = path_stat(p)
        if (size, mtime) == (entry.get("bytes"), entry.get("mtime_ns")):
            return True
        if size != entry.get("bytes"):
            return False
        same = path_sha256(p) == entry.get("sha256")
        if same:  # touched but identical: refresh the stat so the next check is cheap
            entry["mtime_ns"] = mtime
        return same

    def is_current(self, path: str | Path, ident: str) -> bool:
        """True if ``path`` exists, was recorded with identity ``ident``, and is unchanged since."""
        entry = self.artefacts.get(self.key(path))
        return bool(entry) and entry.get("identity") == ident and self._unchanged(self.key(path), entry)

    def sha256(self, path: str | Path) -> str:
        """SHA-256 of an artefact: the recorded one if the file is unchanged, else computed.

        Raises:
            ArtefactError: the file does not exist.
        """
        k = self.key(path)
        entry = self.artefacts.get(k)
        if entry and self._unchanged(k, entry):
            return entry["sha256"]
        p = self.run_dir / k
        if not p.exists():
            raise ArtefactError(f"{p}: missing artefact (run the stage that writes it first)")
        return path_sha256(p)

    def input_sha256(self, path: str | Path) -> str:
        """SHA-256 of an input file outside the run (a treebank), cached by (size, mtime_ns)."""
        p = Path(path).resolve()
        size, mtime = path_stat(p)
        hit = self.input_hashes.get(str(p))
        if hit and (hit["bytes"], hit["mtime_ns"]) == (size, mtime):
            return hit["sha256"]
        sha = file_sha256(p) if p.is_file() else path_sha256(p)
        self.input_hashes[str(p)] = {"bytes": size, "mtime_ns": mtime, "sha256": sha}
        return sha

    def record(self, path: str | Path, stage: str, ident: str, config: Any = None,
               inputs: dict[str, str] | None = None, save: bool = True, **extra: Any) -> str:
        """Record a just-written artefact (file or folder); returns its SHA-256.

        ``extra`` (``unit``, ``code``, ``notes``) is stored in the entry as given.
        """
        k = self.key(path)
        p = self.run_dir / k
        size, mtime = path_stat(p)
        sha = path_sha256(p)
        self.artefacts[k] = {"stage": stage, "identity": ident, "config": config, "inputs": dict(inputs or {}),
                             **extra, "sha256": sha, "bytes": size, "mtime_ns": mtime,
                             "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if save:
            self.save()
        return sha

    def forget(self, key: str) -> None:
        """Drop an entry (its file was removed as no longer produced by the params)."""
        self.artefacts.pop(key, None)

    def save(self) -> Path:
        """Write ``manifest.json`` atomically."""
        return write_json({"run": self.run, "stages": self.stages, "artefacts": dict(sorted(self.artefacts.items())),
                           "input_hashes": dict(sorted(self.input_hashes.items()))}, self.run_dir / MANIFEST_NAME)
