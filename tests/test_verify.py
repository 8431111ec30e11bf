"""Verify mode (``XALIGN_VERIFY=1``) and ``python -m xalign.pipeline.manifest --verify``:
what the default size+mtime check cannot see (a wrong recorded SHA-256, a same-size edit
with the mtime put back) is found by rehashing; the CLI's lines and exit codes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xalign.pipeline.manifest import Manifest, main
from xalign.store import file_sha256

WRONG = "0" * 64


def _run(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A run folder with two recorded artefacts (a file and a folder)."""
    run = tmp_path / "run"
    (run / "t").mkdir(parents=True)
    a = run / "t" / "a.txt"
    a.write_bytes(b"alpha\n")
    d = run / "ckpt"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "w.bin").write_bytes(b"123")
    m = Manifest.open(run, verify=False)
    m.record(a, "s", "id")
    m.record(d, "s", "id")
    return run, a, d


def _corrupt_recorded(run: Path, key: str) -> None:
    f = run / "manifest.json"
    obj = json.loads(f.read_text())
    obj["artefacts"][key]["sha256"] = WRONG
    f.write_text(json.dumps(obj))


def _same_size_edit(f: Path, data: bytes) -> None:
    st = f.stat()
    assert len(data) == st.st_size
    f.write_bytes(data)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_verify_is_read_from_the_environment_when_opened(tmp_path, monkeypatch):
    monkeypatch.setenv("XALIGN_VERIFY", "1")
    assert Manifest.open(tmp_path).verify
    monkeypatch.setenv("XALIGN_VERIFY", "0")
    assert not Manifest.open(tmp_path).verify
    monkeypatch.delenv("XALIGN_VERIFY")
    assert not Manifest.open(tmp_path).verify and Manifest(tmp_path, verify=True).verify


def test_a_wrong_recorded_sha256_is_current_by_default_and_not_in_verify_mode(tmp_path, caplog):
    run, a, d = _run(tmp_path)
    _corrupt_recorded(run, "t/a.txt")
    assert Manifest.open(run, verify=False).is_current(a, "id")
    with caplog.at_level(logging.WARNING, logger="xalign.pipeline"):
        m = Manifest.open(run, verify=True)
        assert not m.is_current(a, "id") and not m.is_current(a, "id")
        assert m.is_current(d, "id")  # the other artefact is rehashed and matches
        assert m.sha256(a) == file_sha256(a)  # the bytes' hash, not the recorded one
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["t/a.txt: bytes differ from the SHA-256 recorded in manifest.json; recomputing"]
    m.record(a, "s", "id")  # recomputed and recorded: current again, in verify mode too
    assert m.is_current(a, "id") and Manifest.open(run, verify=True).is_current(a, "id")


@pytest.mark.parametrize("which", ["file", "folder"])
def test_a_same_size_edit_with_the_mtime_restored_is_found_only_in_verify_mode(tmp_path, which):
    run, a, d = _run(tmp_path)
    if which == "file":
        target, f, data = a, a, b"alphA\n"
    else:
        target, f, data = d, d / "sub" / "w.bin", b"124"
    _same_size_edit(f, data)
    assert Manifest.open(run, verify=False).is_current(target, "id")
    assert not Manifest.open(run, verify=True).is_current(target, "id")


def test_verify_mode_reads_each_artefact_once_per_open_manifest(tmp_path, monkeypatch):
    import xalign.pipeline.manifest as mod

    run, a, _ = _run(tmp_path)
    reads: list[Path] = []
    real = mod.path_sha256
    monkeypatch.setattr(mod, "path_sha256", lambda p: reads.append(Path(p)) or real(p))
    m = Manifest.open(run, verify=True)
    assert m.is_current(a, "id") and m.is_current(a, "id") and m.sha256(a) == file_sha256(a)
    assert reads == [a]
    _same_size_edit(a, b"alphA\n")  # same stat: this open manifest has read it already
    os.utime(a, ns=(1, 1))  # a new mtime: read again
    assert not m.is_current(a, "id") and reads == [a, a]


def test_an_input_whose_cached_sha256_is_wrong_is_rehashed_in_verify_mode(tmp_path, caplog):
    run, _, _ = _run(tmp_path)
    tb = tmp_path / "data" / "tb.conllu"
    tb.parent.mkdir()
    tb.write_bytes(b"# sent 1\n")
    m = Manifest.open(run, verify=False)
    assert m.input_sha256(tb) == file_sha256(tb)
    m.input_hashes[str(tb.resolve())]["sha256"] = WRONG
    m.save()
    assert Manifest.open(run, verify=False).input_sha256(tb) == WRONG  # the cache is trusted
    with caplog.at_level(logging.WARNING, logger="xalign.pipeline"):
        m = Manifest.open(run, verify=True)
        assert m.input_sha256(tb) == file_sha256(tb) == m.input_hashes[str(tb.resolve())]["sha256"]
    assert f"{tb.resolve()}: bytes differ from the SHA-256 cached in manifest.json; rehashed" in caplog.text
    _same_size_edit(tb, b"# sent 2\n")  # the cache is not trusted in verify mode
    assert Manifest.open(run, verify=True).input_sha256(tb) == file_sha256(tb)


def _cli(run: Path, capsys) -> tuple[int, list[str], str]:
    rc = main(["--verify", str(run)])
    cap = capsys.readouterr()
    return rc, cap.out.splitlines(), cap.err


def test_cli_clean_run_exits_0_with_one_summary_line(tmp_path, capsys):
    run, _, _ = _run(tmp_path)
    tb = tmp_path / "tb.conllu"
    tb.write_bytes(b"x\n")
    m = Manifest.open(run)
    m.input_sha256(tb)
    m.save()
    before = (run / "manifest.json").read_bytes()
    rc, out, err = _cli(run, capsys)
    assert rc == 0 and err == "" and len(out) == 1
    assert out[0].startswith("verified 2 artefacts and 1 inputs in ") and out[0].endswith(" s: 0 mismatches")
    assert (run / "manifest.json").read_bytes() == before  # read only


def test_cli_reports_mismatches_and_missing_files_and_exits_1(tmp_path, capsys):
    run, a, d = _run(tmp_path)
    real = file_sha256(a)
    _corrupt_recorded(run, "t/a.txt")
    tb = tmp_path / "gone.conllu"
    tb.write_bytes(b"x\n")
    m = Manifest.open(run)
    m.input_sha256(tb)
    m.save()
    tb.unlink()
    (d / "sub" / "w.bin").write_bytes(b"124")
    found_d = Manifest(run).sha256(d)
    recorded_d = m.artefacts["ckpt"]["sha256"]
    rc, out, _ = _cli(run, capsys)
    assert rc == 1
    assert out[:-1] == [f"{d}: recorded sha256 {recorded_d[:12]}…, found {found_d[:12]}…",
                        f"{a}: recorded sha256 {WRONG[:12]}…, found {real[:12]}…",
                        f"{tb.resolve()}: missing"]
    assert out[-1].startswith("verified 2 artefacts and 1 inputs in ") and out[-1].endswith(" s: 3 mismatches")
    a.unlink()
    rc, out, _ = _cli(run, capsys)
    assert rc == 1 and f"{a}: missing" in out


def test_cli_without_a_manifest_is_one_error_line_and_exit_2(tmp_path, capsys):
    rc, out, err = _cli(tmp_path, capsys)
    assert rc == 2 and out == [] and err == f"error: {tmp_path}/manifest.json: not found\n"
    (tmp_path / "manifest.json").write_text("{", encoding="utf-8")
    rc, out, err = _cli(tmp_path, capsys)
    assert rc == 2 and err.startswith(f"error: {tmp_path}/manifest.json: corrupt JSON") and err.count("\n") == 1


def test_cli_as_a_module(tmp_path):
    run, _, _ = _run(tmp_path)
    _corrupt_recorded(run, "t/a.txt")
    p = subprocess.run([sys.executable, "-m", "xalign.pipeline.manifest", "--verify", str(run)],
                       capture_output=True, text=True)
    assert p.returncode == 1 and p.stdout.splitlines()[-1].endswith(": 1 mismatches")
    p = subprocess.run([sys.executable, "-m", "xalign.pipeline.manifest", "--verify", str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.splitlines()[-1] == f"error: {tmp_path}/manifest.json: not found"


def test_scheduler_in_verify_mode_recomputes_only_the_unit_whose_recorded_hash_is_wrong(tmp_path, monkeypatch):
    from test_pipeline import CALLS, STAGES, ToyParams

    from xalign.pipeline import run_stage

    monkeypatch.delenv("XALIGN_VERIFY", raising=False)
    P = ToyParams(tmp_path)
    run_stage(P, "words", STAGES)
    _corrupt_recorded(P.run_dir(), "words/a.parquet")
    CALLS.clear()
    assert (run_stage(P, "words", STAGES).reused, CALLS) == (2, [])  # default: not noticed
    monkeypatch.setenv("XALIGN_VERIFY", "1")
    s = run_stage(P, "words", STAGES)
    assert (s.computed, s.reused) == (1, 1) and CALLS == ["a"]
    rec = json.loads((P.run_dir() / "manifest.json").read_text())["artefacts"]["words/a.parquet"]
    assert rec["sha256"] == file_sha256(P.run_dir() / "words" / "a.parquet")
    s = run_stage(P, "words", STAGES)
    assert (s.computed, s.reused) == (0, 2) and CALLS == ["a"]
