"""Hugging Face Hub revisions: metadata, on-demand download, duplicates and cache release.

BLOOM's checkpoint series (Wang, Minervini & Ponti 2024, Sec. 3) are branches of
``bigscience/bloom-*-intermediate`` (``global_step1000``, ...). Before anything is
downloaded, :func:`resolve_revision` asks the Hub for a revision's commit SHA and its
files' metadata: the Hub stores the SHA-256 of every LFS file, so the weights hash of a
revision (:meth:`HubRevision.weights_sha256`, the same formula as
:func:`xalign.checkpoints.weights_hash` on local files) is known without downloading, and
revisions with identical weights (the paper found 560m 10k = 500k, 1b7 1k = 10k and
250k = 300k) are dropped first. :func:`download` then fetches only the files a model needs
(config and weights, or the tokenizer's files) into the standard Hugging Face cache
(``HF_HOME`` / ``HF_HUB_CACHE`` respected), with huggingface_hub's progress bars and its
resumable ``.incomplete`` files, pinned to the resolved commit, and checks the bytes
against the Hub's SHA-256. :func:`release` removes a revision from the cache again
(``checkpoints.keep_weights: false``).

Offline (``HF_HUB_OFFLINE=1``, or the Hub unreachable), a revision already in the cache is
used from there (its files hashed locally); anything else is a one-line :class:`HubError`
naming repo and revision and what to do. ``HF_ENDPOINT`` points all of it at a mirror or,
in the tests, at a local stand-in server.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import CheckpointError, _reason

#: Files a tokenizer may need (``AutoTokenizer`` reads config.json for the model type).
TOKENIZER_PATTERNS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*",
                      "merges.txt", "*.model", "config.json")


class HubError(CheckpointError):
    """A Hub revision that cannot be resolved or downloaded (one line: repo, revision, what to do)."""


@dataclass(frozen=True)
class HubFile:
    """One file of a revision. ``sha256``: the content's SHA-256 for LFS files (the Hub stores
    it), None for small git files or when only the cache was seen."""

    path: str
    size: int | None
    sha256: str | None = None


def weight_file_names(names: list[str]) -> list[str]:
    """The weight files of a model folder or revision: top-level ``*.safetensors``, else ``*.bin``.

    Shared by local folders and Hub revisions so both hash the same files (sorted by name).
    """
    top = sorted(n for n in names if "/" not in n)
    return [n for n in top if n.endswith(".safetensors")] or [n for n in top if n.endswith(".bin")]


def combine_hashes(named: list[tuple[str, str]]) -> str:
    """SHA-256 over ``name NUL sha256 LF`` lines in name order: a weights hash (64 hex)."""
    h = hashlib.sha256()
    for name, sha in sorted(named):
        h.update(name.encode("utf-8") + b"\0" + sha.encode("ascii") + b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class HubRevision:
    """A Hub revision resolved to its commit, with its files' metadata.

    Attributes:
        repo: repo id, e.g. ``bigscience/bloom-560m-intermediate``.
        revision: as asked (branch, tag or commit), e.g. ``global_step1000``.
        commit: the resolved 40-hex commit SHA (every download is pinned to it).
        files: every file of the revision (from the Hub, or from the cache offline).
        snapshot: the cached snapshot folder when resolved offline from the cache, else None.
    """

    repo: str
    revision: str
    commit: str
    files: tuple[HubFile, ...]
    snapshot: str | None = None

    def describe(self) -> str:
        return f"{self.repo}@{self.revision}"

    def weight_files(self) -> list[HubFile]:
        by_name = {f.path: f for f in self.files}
        return [by_name[n] for n in weight_file_names(list(by_name))]

    def model_files(self) -> list[str]:
        """Files ``AutoModel.from_pretrained`` needs: config, weights and a shard index if any."""
        names = {f.path for f in self.files}
        index = [n for n in names if "/" not in n and n.endswith(".index.json")]
        return sorted({"config.json", *index, *(f.path for f in self.weight_files())} & names)

    def download_bytes(self) -> int:
        """Bytes of :meth:`model_files` (0 for sizes the cache scan did not report)."""
        sizes = {f.path: f.size or 0 for f in self.files}
        return sum(sizes[n] for n in self.model_files())

    def weights_sha256(self) -> str:
        """Weights hash from the Hub's LFS SHA-256s, or (cache only) from the local files.

        Raises:
            HubError: no weight files, or a weight file with no SHA-256 and no local copy.
        """
        files = self.weight_files()
        if not files:
            raise HubError(f"hub {self.describe()}: no *.safetensors or *.bin weight files in the revision")
        if all(f.sha256 for f in files):
            return combine_hashes([(f.path, f.sha256) for f in files])
        if self.snapshot is None:
            raise HubError(f"hub {self.describe()}: the Hub gave no SHA-256 for {[f.path for f in files]}")
        from .store import file_sha256

        return combine_hashes([(f.path, file_sha256(Path(self.snapshot) / f.path)) for f in files])


def _hub_error(repo: str, revision: str, e: BaseException) -> HubError:
    """Map huggingface_hub's errors to one line naming repo, revision and what to do."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = f"hub {repo}@{revision}"
    if isinstance(e, LocalEntryNotFoundError):
        return HubError(f"{where}: offline and its files are not in the local HF cache: go online once "
                        "(unset HF_HUB_OFFLINE), or run `python -m xalign.checkpoints download <params.yaml>` "
                        "where the Hub is reachable and share HF_HOME")
    if isinstance(e, RevisionNotFoundError):
        return HubError(f"{where}: no such revision in {repo} (see its branches: "
                        f"python -m xalign.checkpoints list <params.yaml>, or checkpoints.revisions)")
    if isinstance(e, GatedRepoError):
        return HubError(f"hub {repo}: gated repository: accept its terms on the Hub, then log in "
                        "(`hf auth login` or HF_TOKEN)")
    if isinstance(e, RepositoryNotFoundError):
        return HubError(f"hub {repo}: repository not found (misspelt, or private: log in with "
                        "`hf auth login` or set HF_TOKEN)")
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        return HubError(f"{where}: the Hub answered HTTP {e.response.status_code} ({_reason(e)})")
    return HubError(f"{where}: {_reason(e)}")


def _offline_error(e: BaseException) -> bool:
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    return isinstance(e, (OfflineModeIsEnabled, httpx2.ConnectError, httpx2.TimeoutException))


def resolve_revision(repo: str, revision: str) -> HubRevision:
    """Resolve ``repo@revision`` to its commit and file metadata; nothing is downloaded.

    Online: ``HfApi.model_info(repo, revision, files_metadata=True)`` (one request). Offline or
    unreachable: the cached snapshot of that revision, if the cache has one.

    Raises:
        HubError: missing revision, missing or gated repo, HTTP error, or offline with the
            revision not in the local cache (one line; nothing is written).
    """
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as e:
        if _offline_error(e):
            known = _read_record(repo, revision) or cached_revision(repo, revision)
            if known is not None:
                return known
            from huggingface_hub import constants

            raise HubError(f"hub {repo}@{revision}: offline ({_reason(e)}) and not in the local HF cache "
                           f"({constants.HF_HUB_CACHE}): go online once (unset HF_HUB_OFFLINE), or run "
                           "`python -m xalign.checkpoints download <params.yaml>` where the Hub is reachable "
                           "and share HF_HOME") from None
        raise _hub_error(repo, revision, e) from None
    files = tuple(HubFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings or [])
    rev = HubRevision(repo, revision, info.sha, files)
    _write_record(rev)
    return rev


def _record_path(repo: str, revision: str) -> Path:
    from urllib.parse import quote

    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "xalign" / "revisions" / repo.replace("/", "--") / f"{quote(revision, safe='')}.json"


def _write_record(rev: HubRevision) -> None:
    """Keep what the Hub said about a revision beside the HF cache (``$HF_HOME/xalign/revisions``),
    so an offline run still knows the commit and weights hash of revisions it never
    downloaded (duplicates) and of those it did."""
    import json

    from .store import atomic_path

    dest = _record_path(rev.repo, rev.revision)
    dest.parent.mkdir(parents=True, exist_ok=True)
    body = {"repo": rev.repo, "revision": rev.revision, "commit": rev.commit,
            "files": [[f.path, f.size, f.sha256] for f in rev.files]}
    with atomic_path(dest) as tmp:
        Path(tmp).write_text(json.dumps(body), encoding="utf-8")


def _read_record(repo: str, revision: str) -> HubRevision | None:
    import json

    path = _record_path(repo, revision)
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        return HubRevision(repo, revision, body["commit"], tuple(HubFile(*f) for f in body["files"]))
    except (ValueError, KeyError, TypeError):
        return None  # a damaged record is ignored, as if never written


def cached_revision(repo: str, revision: str) -> HubRevision | None:
    """The cached snapshot of ``repo@revision`` (a ref name or commit) as a :class:`HubRevision`, or None."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir()
    except CacheNotFound:
        return None
    for r in cache.repos:
        if r.repo_id != repo or r.repo_type != "model":
            continue
        for rev in r.revisions:
            if revision in rev.refs or rev.commit_hash == revision:
                snap = Path(rev.snapshot_path)
                files = tuple(HubFile(str(Path(f.file_path).relative_to(snap)), f.size_on_disk)
                              for f in rev.files)
                return HubRevision(repo, revision, rev.commit_hash, files, snapshot=str(snap))
    return None


def download(rev: HubRevision, patterns: list[str] | None = None) -> Path:
    """Download the model files of a revision (or the files matching ``patterns``) into the HF cache.

    Checked against ``rev.commit``; progress bars and resuming (``.incomplete`` files, HTTP Range)
    are huggingface_hub's. For model files the weights are checked against the Hub's
    SHA-256 afterwards. A revision resolved offline from the cache is returned as it is.

    Returns:
        The snapshot folder (``<HF cache>/models--org--name/snapshots/<commit>``).

    Raises:
        HubError: the download failed or the bytes do not match the Hub's SHA-256.
    """
    from huggingface_hub import snapshot_download

    if rev.snapshot is not None:
        return Path(rev.snapshot)
    allow = list(patterns) if patterns is not None else rev.model_files()
    try:  # by name, so the cache records the ref (offline runs find it); checked against the commit
        folder = Path(snapshot_download(rev.repo, revision=rev.revision, allow_patterns=allow))
    except Exception as e:
        raise _hub_error(rev.repo, rev.revision, e) from None
    if folder.name != rev.commit:
        raise HubError(f"hub {rev.describe()}: the revision moved from commit {rev.commit[:12]} to "
                       f"{folder.name[:12]} during this run; run again to use the new commit")
    if patterns is None:
        _verify(rev, folder)
    return folder


def _verify(rev: HubRevision, folder: Path) -> None:
    from .store import file_sha256

    for f in rev.weight_files():
        got = file_sha256(folder / f.path)
        if f.sha256 and got != f.sha256:
            raise HubError(f"hub {rev.describe()}: {f.path} downloaded with SHA-256 {got[:12]}..., the Hub says "
                           f"{f.sha256[:12]}...: corrupt download; run `hf cache rm {rev.repo}` and retry")


def release(repo: str, commit: str) -> int:
    """Delete one revision of ``repo`` from the HF cache (blobs other revisions share stay).

    Returns:
        Bytes freed (0 if the revision was not cached).
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir()
    except CacheNotFound:
        return 0
    if not any(r.repo_id == repo and any(v.commit_hash == commit for v in r.revisions) for r in cache.repos):
        return 0
    strategy = cache.delete_revisions(commit)
    strategy.execute()
    return int(strategy.expected_freed_size)
