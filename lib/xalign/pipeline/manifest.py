"""The run manifest: ``<run_dir>/manifest.json``, written by the scheduler alone.

It records every artefact (file or folder) a unit wrote, keyed by its path relative to the
run folder: the stage and unit key that wrote it, the unit's identity, config, inputs and
code version, its notes, the bytes' SHA-256, size and mtime. It also caches the SHA-256 of
input files outside the run (treebanks, text, XNLI) by (size, mtime), so declaring units
does not rehash gigabytes each time, and holds the run's provenance and one summary per
stage. Rewritten atomically, so a run killed at any point keeps a consistent record.

What "unchanged" means, and what it costs:

* By default an artefact is unchanged when its size and mtime are those recorded; only
  when the size is equal and the mtime differs is its SHA-256 recomputed (a touched file
  with the same bytes is reused, its new mtime recorded). A different size means changed,
  unread. An input file's cached SHA-256 is reused while its size and mtime are equal.
  This costs one ``stat`` per file, so a stage checks hundreds of artefacts in
  milliseconds. What it does not notice: an edit that keeps both the size and the mtime
  (``os.utime`` restoring it, a copy with ``cp -p`` of other bytes, a file system with
  coarse mtimes), and a SHA-256 in ``manifest.json`` that is wrong for the bytes it
  describes (a hand-edited or merged manifest): such an artefact is reused as it is.
* Verify mode (``XALIGN_VERIFY=1`` in the environment, which ``bash run_all.sh --verify``
  sets; read once when the manifest is opened) recomputes the SHA-256 of every artefact
  a stage checks and of every input before trusting it, even when its size and mtime are
  those recorded: a mismatch is logged as a warning naming the file, and the unit that
  wrote it is recomputed (or, for an upstream stage's artefact, the stage stops with
  :class:`~xalign.pipeline.scheduler.StaleUpstream`). Each file is read once per manifest
  opened (that is, once per stage run), not once per check. It costs one full read of
  every artefact and input, at the disk's read speed or SHA-256's (about 1.4 GB/s on one
  core): ``python -m xalign.pipeline.manifest --verify runs/tiny-lab`` (314 artefacts,
  3.2 GB, and 39 inputs, 90 MB) measured 6.2 s on a first read and 2.3 s with the files in
  the page cache, ``runs/minimal`` (81 artefacts, 43 MB; 12 inputs, 41 MB) 0.2 s, plus
  about 2 s to start Python and import the package.

``python -m xalign.pipeline.manifest --verify RUN_DIR`` checks a whole run folder without
running anything (see :func:`main`); it reads, and never writes, the run folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ..store import ArtefactError, path_sha256, path_stat, read_json, write_json

log = logging.getLogger("xalign.pipeline")

MANIFEST_NAME = "manifest.json"
VERIFY_ENV = "XALIGN_VERIFY"


def verify_from_env() -> bool:
    """True if ``XALIGN_VERIFY`` is set to ``1`` (or ``true``/``yes``) in the environment."""
    return os.environ.get(VERIFY_ENV, "").strip().lower() in ("1", "true", "yes")


@dataclass
class Manifest:
    """The run's record of every artefact: identity, inputs, params, SHA-256, and provenance.

    An entry holds ``stage``, ``unit`` (key), ``identity``, ``config``, ``inputs`` (name ->
    SHA-256), ``code``, ``notes``, ``sha256``, ``bytes``, ``mtime_ns`` and ``written`` (UTC).
    An artefact is current (:meth:`is_current`) when the file exists, its entry has the
    identity the unit has now, and its bytes are those recorded. By default "the bytes are
    those recorded" is decided from size and mtime, rehashing only when the mtime differs:
    a rewrite behind the manifest's back is noticed, but a same-size, same-mtime edit or a
    wrong SHA-256 in ``manifest.json`` is not. With ``verify`` (``XALIGN_VERIFY=1``) every
    artefact checked and every input is rehashed once and compared with the recorded
    SHA-256, at the cost of reading all of them (see the module docstring for timings).
    """

    run_dir: Path
    artefacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    input_hashes: dict[str, dict[str, Any]] = field(default_factory=dict)
    verify: bool = False
    # path -> (size, mtime_ns, sha256) hashed while this manifest is open; keys warned about
    _hashed: dict[str, tuple[int, int, str]] = field(default_factory=dict, repr=False, compare=False)
    _warned: set[str] = field(default_factory=set, repr=False, compare=False)

    @classmethod
    def open(cls, run_dir: str | Path, verify: bool | None = None) -> "Manifest":
        """Read ``<run_dir>/manifest.json``, or start an empty manifest.

        ``verify`` defaults to :func:`verify_from_env` (``XALIGN_VERIFY``), read here once.
        An unreadable manifest is not fatal: it is set aside as ``manifest.json.corrupt``
        with a warning, and every artefact is recomputed (nothing unverified is reused).
        """
        run_dir = Path(run_dir)
        verify = verify_from_env() if verify is None else verify
        if verify:
            log.info("%s=1: every artefact's SHA-256 is recomputed before it is reused", VERIFY_ENV)
        f = run_dir / MANIFEST_NAME
        if not f.is_file():
            return cls(run_dir, verify=verify)
        try:
            obj = read_json(f)
            return cls(run_dir, dict(obj["artefacts"]), dict(obj.get("run", {})), dict(obj.get("stages", {})),
                       dict(obj.get("input_hashes", {})), verify=verify)
        except (ArtefactError, KeyError, TypeError) as e:
            log.warning("%s: unreadable manifest (%s); set aside, artefacts will be recomputed", f, e)
            os.replace(f, f.with_name(MANIFEST_NAME + ".corrupt"))
            return cls(run_dir, verify=verify)

    def key(self, path: str | Path) -> str:
        """Manifest key of ``path``: relative to the run folder (may start with ``..``)."""
        p = Path(path)
        p = p if p.is_absolute() else self.run_dir / p
        return Path(os.path.relpath(p, self.run_dir)).as_posix()

    def _sha_now(self, p: Path, size: int, mtime: int) -> str:
        """SHA-256 of ``p`` (file or folder), read at most once per (size, mtime) while open."""
        hit = self._hashed.get(str(p))
        if hit and hit[:2] == (size, mtime):
            return hit[2]
        sha = path_sha256(p)
        self._hashed[str(p)] = (size, mtime, sha)
        return sha

    def _unchanged(self, key: str, entry: dict[str, Any]) -> bool:
        """True if the bytes at ``key`` are those of ``entry`` (see the class docstring)."""
        p = self.run_dir / key
        if not p.exists():
            return False
        size, mtime = path_stat(p)
        if size != entry.get("bytes"):
            return False
        if mtime == entry.get("mtime_ns") and not self.verify:
            return True
        same = self._sha_now(p, size, mtime) == entry.get("sha256")
        if same:  # touched but identical: refresh the stat so the next check is cheap
            entry["mtime_ns"] = mtime
        elif self.verify and key not in self._warned:
            self._warned.add(key)
            log.warning("%s: bytes differ from the SHA-256 recorded in %s; recomputing", key, MANIFEST_NAME)
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
        return self._sha_now(p, *path_stat(p))

    def input_sha256(self, path: str | Path) -> str:
        """SHA-256 of an input file outside the run (a treebank), cached by (size, mtime_ns).

        In verify mode the cache is not trusted: the file is rehashed (once while this
        manifest is open) and a cached SHA-256 found wrong is logged as a warning.

        Raises:
            FileNotFoundError: ``path`` does not exist.
        """
        p = Path(path).resolve()
        size, mtime = path_stat(p)
        hit = self.input_hashes.get(str(p))
        same_stat = bool(hit) and (hit["bytes"], hit["mtime_ns"]) == (size, mtime)
        if same_stat and not self.verify:
            return hit["sha256"]
        sha = self._sha_now(p, size, mtime)
        if same_stat and hit["sha256"] != sha:
            log.warning("%s: bytes differ from the SHA-256 cached in %s; rehashed", p, MANIFEST_NAME)
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
        sha = path_sha256(p)  # always read: the unit has just written these bytes
        self._hashed[str(p)] = (size, mtime, sha)
        self._warned.discard(k)
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


# --------------------------------------------------------------------------- --verify CLI
def _short(sha: Any) -> str:
    return f"{str(sha)[:12]}…"


def _check(p: Path, recorded: Any) -> str | None:
    """The line for ``p`` if it is missing or its SHA-256 is not ``recorded``, else None."""
    if not p.exists():
        return f"{p}: missing"
    found = path_sha256(p)
    return None if found == recorded else f"{p}: recorded sha256 {_short(recorded)}, found {_short(found)}"


def verify_lines(run_dir: Path, obj: dict[str, Any]) -> Iterator[str | None]:
    """Rehash every artefact, then every cached input, of a read manifest ``obj``.

    Yields, per file, its mismatch line (``<path>: recorded sha256 …, found …`` or
    ``<path>: missing``) or None if its bytes are those recorded.
    """
    for key, entry in sorted(obj.get("artefacts", {}).items()):
        yield _check(run_dir / key, entry.get("sha256"))
    for path, entry in sorted(obj.get("input_hashes", {}).items()):
        yield _check(Path(path), entry.get("sha256"))


def verify_run(run_dir: str | Path, out: Any = None) -> int:
    """Rehash everything ``<run_dir>/manifest.json`` records; print a line per mismatch or
    missing file and a summary line. Reads only. Returns the exit status: 0 clean, 1 if any
    file is missing or differs.

    Raises:
        ArtefactError: the manifest is missing or not readable JSON (one line naming it).
    """
    out = out or sys.stdout
    run_dir = Path(run_dir)
    f = run_dir / MANIFEST_NAME
    if not f.is_file():
        raise ArtefactError(f"{f}: not found")
    obj = read_json(f)
    if not isinstance(obj, dict):
        raise ArtefactError(f"{f}: not a manifest (a JSON object with 'artefacts')")
    t0, bad = time.perf_counter(), 0
    for line in verify_lines(run_dir, obj):
        if line is not None:
            bad += 1
            print(line, file=out, flush=True)
    n, m = len(obj.get("artefacts", {})), len(obj.get("input_hashes", {}))
    print(f"verified {n} artefacts and {m} inputs in {time.perf_counter() - t0:.1f} s: {bad} mismatches", file=out)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m xalign.pipeline.manifest --verify RUN_DIR``: exit 0 if every artefact and
    cached input hash matches its bytes, 1 if any differs or is missing, 2 on a run folder
    without a readable ``manifest.json`` (one line ``error: …`` on stderr)."""
    ap = argparse.ArgumentParser(prog="python -m xalign.pipeline.manifest",
                                 description="Rehash a run's artefacts and inputs against manifest.json.")
    ap.add_argument("--verify", metavar="RUN_DIR", required=True, type=Path,
                    help="the run folder whose manifest.json to check (read only)")
    args = ap.parse_args(argv)
    try:
        return verify_run(args.verify)
    except ArtefactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
