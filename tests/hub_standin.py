"""A local stand-in for the few Hugging Face Hub endpoints xalign's download code uses.

The tests never reach the network: they save tiny models into folders, serve them here on
127.0.0.1 and point ``HF_ENDPOINT`` at this server, so the real ``huggingface_hub`` client
(model info with file metadata, tree listing, HEAD/GET on ``resolve`` with HTTP Range,
refs) runs unchanged. Served like the Hub: ``*.safetensors``/``*.bin`` as LFS files
(``lfs.sha256`` in the metadata, ``X-Linked-Etag`` = SHA-256), other files as git blobs;
errors with the Hub's ``X-Error-Code`` header (RepoNotFound, RevisionNotFound,
EntryNotFound, GatedRepo).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin")


class StandInHub:
    """Repos as ``{repo: {branch: {path: bytes}}}``; start() returns the endpoint URL.

    Attributes:
        requests: ``(method, path, Range header or None)`` for every request served.
        truncate: ``{file name: [n, times]}``: the next ``times`` GETs of that file (every
            GET if None) send the body only up to byte n, then drop the connection.
        gated: repos answered with 403 GatedRepo.
    """

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.truncate: dict[str, list] = {}
        self.gated: set[str] = set()
        self._server: ThreadingHTTPServer | None = None

    def add(self, repo: str, branch: str, folder: Path | dict[str, bytes]) -> str:
        """Serve a folder's files (or a dict of them) as ``repo@branch``; returns its commit SHA."""
        files = folder if isinstance(folder, dict) else {
            str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}
        self.repos.setdefault(repo, {})[branch] = dict(files)
        return self.commit(repo, branch)

    def commit(self, repo: str, branch: str) -> str:
        files = self.repos[repo][branch]
        h = hashlib.sha1(f"{repo}@{branch}".encode())
        for name in sorted(files):
            h.update(name.encode() + hashlib.sha256(files[name]).digest())
        return h.hexdigest()

    def resolve_ref(self, repo: str, rev: str) -> str | None:
        """Branch name for a branch or commit SHA, None if unknown."""
        branches = self.repos[repo]
        if rev in branches:
            return rev
        return next((b for b in branches if self.commit(repo, b) == rev), None)

    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            owner = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _entry(name: str, data: bytes) -> dict:
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    e = {"path": name, "size": len(data), "oid": blob}
    if name.endswith(LFS_SUFFIXES):
        e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return e


class _Handler(BaseHTTPRequestHandler):
    owner: StandInHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _error(self, status: int, code: str) -> None:
        body = json.dumps({"error": code}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _repo(self, parts: list[str]) -> tuple[str, list[str]] | None:
        repo = "/".join(parts[:2])
        if repo not in self.owner.repos:
            self._error(404, "RepoNotFound")
            return None
        if repo in self.owner.gated:
            self._error(403, "GatedRepo")
            return None
        return repo, parts[2:]

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        self.owner.requests.append((self.command, path, self.headers.get("Range")))
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "models"]:
            got = self._repo(parts[2:])
            if got:
                self._api(*got)
        elif len(parts) >= 5 and parts[2] == "resolve":
            got = self._repo(parts)
            if got:
                self._resolve(got[0], got[1][1], "/".join(got[1][2:]))
        else:
            self._error(404, "EntryNotFound")

    def _api(self, repo: str, rest: list[str]) -> None:
        hub = self.owner
        if rest == ["refs"]:
            self._json({"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": hub.commit(repo, b)}
                                     for b in hub.repos[repo]], "tags": [], "converts": []})
            return
        if len(rest) < 2 or rest[0] not in ("revision", "tree"):
            self._error(404, "EntryNotFound")
            return
        branch = hub.resolve_ref(repo, rest[1])
        if branch is None:
            self._error(404, "RevisionNotFound")
            return
        files = hub.repos[repo][branch]
        if rest[0] == "tree":
            self._json([{"type": "file", **_entry(n, d)} for n, d in sorted(files.items())])
            return
        siblings = []
        for n, d in sorted(files.items()):
            e = _entry(n, d)
            s = {"rfilename": n, "size": e["size"], "blobId": e["oid"]}
            if "lfs" in e:
                s["lfs"] = {"sha256": e["lfs"]["oid"], "size": e["size"], "pointerSize": 134}
            siblings.append(s)
        self._json({"id": repo, "modelId": repo, "sha": hub.commit(repo, branch), "private": False,
                    "siblings": siblings})

    def _resolve(self, repo: str, rev: str, name: str) -> None:
        hub = self.owner
        branch = hub.resolve_ref(repo, rev)
        if branch is None:
            self._error(404, "RevisionNotFound")
            return
        data = hub.repos[repo][branch].get(name)
        if data is None:
            self._error(404, "EntryNotFound")
            return
        e = _entry(name, data)
        etag = e["lfs"]["oid"] if "lfs" in e else e["oid"]
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and self.command == "GET":
            start = int(rng[len("bytes="):].split("-")[0])
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", hub.commit(repo, branch))
        self.send_header("ETag", f'"{etag}"')
        if "lfs" in e:
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        rule = hub.truncate.get(Path(name).name)
        if rule is not None and rule[1] != 0:  # an interrupted download: part of the body, then no more
            cut = rule[0]
            if rule[1] is not None:
                rule[1] -= 1
            self.wfile.write(data[start:max(start, cut)])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data[start:])
