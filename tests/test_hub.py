"""Hub checkpoint series against a local stand-in Hub (tests/hub_standin.py), never the network.

The real download code (huggingface_hub's model info, tree, resolve with HTTP Range, cache)
runs in subprocesses whose ``HF_ENDPOINT`` points at the stand-in and whose ``HF_HOME`` is a
temp folder, as a user's machine would be set up. The series: three branches of
``org/tiny-intermediate`` (global_step100 and global_step300 with identical weights, as
BLOOM's duplicates) and the final model plus tokenizer in ``org/tiny``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hub_standin import StandInHub

INTER, FINAL = "org/tiny-intermediate", "org/tiny"


def _save_model(out: Path, seed: int, hidden: int = 32, n_layer: int = 2) -> Path:
    from transformers import BloomConfig, BloomModel

    torch.manual_seed(seed)
    BloomModel(BloomConfig(vocab_size=300, hidden_size=hidden, n_layer=n_layer, n_head=2)).save_pretrained(out)
    (out / "flax_model.msgpack").write_bytes(b"\0" * 4096)  # files a model does not need
    (out / "README.md").write_text("tiny\n")
    return out


@pytest.fixture(scope="module")
def hub(tmp_path_factory, data_root):
    from test_transfer import _tiny_tokenizer

    tmp = tmp_path_factory.mktemp("standin")
    a, b, c = (_save_model(tmp / n, s) for n, s in [("a", 0), ("b", 1), ("c", 2)])
    big = _save_model(tmp / "big", 3, hidden=256, n_layer=4)  # 12.6 MB: more than one 10 MB download chunk
    lines = (data_root / "text" / "tatoeba" / "en.txt").read_text(encoding="utf-8").splitlines()[:200]
    _tiny_tokenizer(lines, 300).save_pretrained(c)
    h = StandInHub()
    for branch, folder in [("global_step100", a), ("global_step200", b), ("global_step300", a)]:
        h.add(INTER, branch, folder)
    h.add(INTER, "global_step400", big)
    h.add(FINAL, "main", c)
    url = h.start()
    yield h, url, tmp
    h.stop()


def _params(tmp: Path, name: str, revisions: list[str], repo: str = INTER) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"params": {
        "run_name": name, "runs_dir": str(tmp / "runs"), "pretrain": {"enabled": False},
        "checkpoints": {"source": "hub", "repo": repo, "revisions": revisions, "final_repo": FINAL,
                        "tokenizer_repo": FINAL}}}))
    return p


def _env(url: str, home: Path, offline: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=url, HF_HOME=str(home), HF_HUB_OFFLINE="1" if offline else "0",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_ETAG_TIMEOUT="5")
    return env


def _run(env: dict, *args: str, code: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "xalign.checkpoints", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode == 1 and len(lines) == 1, proc.stdout + proc.stderr
    return lines[0]


def _snapshot(home: Path, repo: str, commit: str) -> Path:
    return home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / commit


def test_list_finds_duplicates_from_metadata_without_downloading(hub, tmp_path):
    h, url, tmp = hub
    p = _params(tmp_path, "tiny", ["global_step300", "global_step100", "global_step200"])
    h.requests.clear()
    proc = _run(_env(url, tmp_path / "hf"), "list", str(p))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows = {l.split()[0]: l for l in out.splitlines()[2:] if l.startswith(("global_step", "final"))}
    assert list(rows) == ["global_step100", "global_step200", "global_step300", "final"]
    for name, branch, repo in [("global_step100", "global_step100", INTER), ("final", "main", FINAL)]:
        assert h.commit(repo, branch)[:12] in rows[name]
    assert "same weights as global_step300: excluded" in rows["global_step100"]
    assert "same weights as global_step100: excluded" in rows["global_step300"]
    assert "excluded" not in rows["global_step200"]
    assert "4 checkpoints, 2 excluded as duplicates; to download: 2" in out
    assert not any("/resolve/" in path for _, path, _ in h.requests)  # metadata only
    assert not (tmp_path / "hf" / "hub" / f"models--{INTER.replace('/', '--')}" / "blobs").exists()


_LOAD = """
import sys, torch
from xalign import checkpoints as ck
c = ck.list_checkpoints("hub", repo=sys.argv[1], revisions=[sys.argv[2]], tokenizer_repo=sys.argv[3])[0]
model, tok = ck.load_model(c)
print(sum(float(p.double().sum()) for p in model.parameters()), type(tok).__name__, len(tok))
"""


def test_download_fetches_only_model_files_and_works_offline_after(hub, tmp_path):
    h, url, tmp = hub
    home = tmp_path / "hf"
    p = _params(tmp_path, "tiny", ["global_step100", "global_step200", "global_step300"])
    proc = _run(_env(url, home), "download", str(p))
    assert proc.returncode == 0, proc.stderr
    commit = h.commit(INTER, "global_step200")
    snap = _snapshot(home, INTER, commit)
    assert sorted(f.name for f in snap.iterdir()) == ["config.json", "model.safetensors"]
    assert not _snapshot(home, INTER, h.commit(INTER, "global_step100")).exists()  # duplicates not fetched
    tok = _snapshot(home, FINAL, h.commit(FINAL, "main"))
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"} <= \
        {f.name for f in tok.iterdir()}
    assert "flax_model.msgpack" not in {f.name for f in tok.iterdir()}
    # offline now: the series resolves from the cache, its hashes computed locally equal the Hub's
    online = _run(_env(url, home), "list", str(p)).stdout
    offline = _run(_env("http://127.0.0.1:9", home, offline=True), "list", str(p))
    assert offline.returncode == 0, offline.stderr
    weights = lambda out, name: next(l.split()[4] for l in out.splitlines() if l.startswith(name + " "))
    assert weights(offline.stdout, "global_step200") == weights(online, "global_step200")
    assert "cached" in next(l for l in offline.stdout.splitlines() if l.startswith("global_step200"))
    # a cache filled by other tools (no xalign record of the Hub's metadata): local files are hashed
    import shutil

    shutil.rmtree(home / "xalign")
    only = _params(tmp_path, "only200", ["global_step200"])
    local = _run(_env("http://127.0.0.1:9", home, offline=True), "list", str(only))
    assert local.returncode == 0, local.stderr
    assert weights(local.stdout, "global_step200") == weights(online, "global_step200")
    assert weights(local.stdout, "final") == weights(online, "final")
    # the loaded model is the one served, bit for bit
    from safetensors.torch import load_file

    expect = sum(float(t.double().sum()) for t in load_file(tmp / "b" / "model.safetensors").values())
    got = _run(_env("http://127.0.0.1:9", home, offline=True), INTER, "global_step200", FINAL, code=_LOAD)
    assert got.returncode == 0, got.stderr
    total, tok_cls, n_vocab = got.stdout.split()
    assert float(total) == pytest.approx(expect, rel=0, abs=1e-9) and int(n_vocab) > 100


def test_interrupted_download_resumes(hub, tmp_path):
    """A dropped connection resumes with an HTTP Range request in the same call; a download
    that keeps failing is one line, leaves no partial file, and the next call fetches only
    the files still missing (huggingface_hub 2.x keeps no partial file across processes)."""
    from huggingface_hub import constants

    h, url, tmp = hub
    home = tmp_path / "hf"
    p = _params(tmp_path, "tiny", ["global_step400"])
    data = (tmp / "big" / "model.safetensors").read_bytes()
    chunk = constants.DOWNLOAD_CHUNK_SIZE  # huggingface_hub writes (and so resumes) in chunks of 10 MB
    assert len(data) > chunk + 2**20
    h.truncate["model.safetensors"] = [chunk + 2**20, None]  # the Hub stops mid-file, every time
    h.requests.clear()
    try:
        first = _run(_env(url, home), "download", str(p))
    finally:
        del h.truncate["model.safetensors"]
    line = _error_line(first)
    assert f"hub {INTER}@global_step400" in line, line
    ranges = [r for m, path, r in h.requests if m == "GET" and path.endswith("model.safetensors")]
    assert ranges[0] is None and f"bytes={chunk}-" in ranges[1:]  # it resumed, then gave up
    assert not list((home / "hub").rglob("*.incomplete"))
    h.truncate["model.safetensors"] = [chunk + 2**20, 1]  # one drop: resumed within the call
    h.requests.clear()
    second = _run(_env(url, home), "download", str(p))
    assert second.returncode == 0, second.stderr
    gets = [(path, r) for m, path, r in h.requests if m == "GET" and "/resolve/" in path]
    commit = h.commit(INTER, "global_step400")
    assert gets.count((f"/{INTER}/resolve/{commit}/model.safetensors", f"bytes={chunk}-")) == 1
    assert not any(INTER in path and path.endswith("config.json") for path, _ in gets)  # kept from the first call
    assert (_snapshot(home, INTER, commit) / "model.safetensors").read_bytes() == data


_RESOLVE = """
import sys
from xalign import runs
from xalign.params import load_params
runs.resolve_checkpoints(load_params(sys.argv[1]))
"""


def test_offline_missing_revision_missing_or_gated_repo_are_one_line(hub, tmp_path):
    h, url, tmp = hub
    home = tmp_path / "hf"
    p = _params(tmp_path, "tiny", ["global_step200"])
    line = _error_line(_run(_env(url, home, offline=True), "list", str(p)))
    assert f"hub {INTER}@global_step200: offline" in line and "HF_HUB_OFFLINE" in line
    bad = _params(tmp_path, "typo", ["global_step200", "global_step999"])
    line = _error_line(_run(_env(url, home), "list", str(bad)))
    assert f"hub {INTER}@global_step999: no such revision" in line
    line = _error_line(_run(_env(url, home), "list", str(_params(tmp_path, "norepo", ["x"], repo="org/nope"))))
    assert "hub org/nope: repository not found" in line
    h.gated.add(INTER)
    try:
        line = _error_line(_run(_env(url, home), "list", str(p)))
    finally:
        h.gated.discard(INTER)
    assert f"hub {INTER}: gated repository" in line
    # in the pipeline: the same one line, and no checkpoints.json written
    proc = _run(_env(url, home), str(bad), code=_RESOLVE)
    assert proc.returncode == 1 and "global_step999: no such revision" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs" / "typo" / "checkpoints.json").exists()


_RELEASE = """
import sys, json
from xalign import checkpoints as ck
rows = ck.series_table(ck.list_checkpoints("hub", repo=sys.argv[1], revisions=[sys.argv[2]]))
c = ck.checkpoint_from_row(rows[0])
ck.local_files(c)
print(json.dumps({"commit": c.commit, "freed": ck.release_files(c), "again": ck.release_files(c)}))
"""


def test_release_removes_the_revision_from_the_cache(hub, tmp_path):
    h, url, tmp = hub
    home = tmp_path / "hf"
    proc = _run(_env(url, home), INTER, "global_step200", code=_RELEASE)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["commit"] == h.commit(INTER, "global_step200")
    assert out["freed"] >= (tmp / "b" / "model.safetensors").stat().st_size and out["again"] == 0
    assert not _snapshot(home, INTER, out["commit"]).exists()
    blobs = home / "hub" / f"models--{INTER.replace('/', '--')}" / "blobs"
    assert not blobs.exists() or not any(blobs.iterdir())


def test_bloom_560m_series_listing(hub, tmp_path):
    """``list params/bloom-560m.yaml`` against a stand-in holding its nine revisions (tiny
    models; global_step10000 planted equal to global_step500000, as the paper found)."""
    h, url, tmp = hub
    folders = {s: _save_model(tmp_path / f"m{s}", 10 + i) for i, s in enumerate(
        [1000, 10000, 100000, 200000, 300000, 400000, 600000])}
    folders[500000] = folders[10000]
    for s, f in folders.items():
        h.add("bigscience/bloom-560m-intermediate", f"global_step{s}", f)
    h.add("bigscience/bloom-560m", "main", tmp / "c")
    proc = _run(_env(url, tmp_path / "hf"), "list", "params/bloom-560m.yaml")
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    rows = {l.split()[0]: l for l in proc.stdout.splitlines() if l.startswith(("global_step", "final"))}
    assert len(rows) == 9 and list(rows)[-1] == "final"
    assert "same weights as global_step500000: excluded" in rows["global_step10000"]
    assert "same weights as global_step10000: excluded" in rows["global_step500000"]
    assert "9 checkpoints, 2 excluded as duplicates; to download: 7" in proc.stdout
