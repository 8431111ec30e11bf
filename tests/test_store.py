"""Artefact store: atomic writes, NaN guard, clear errors for corrupt artefacts."""

from __future__ import annotations

import errno
import os

import pandas as pd
import pytest
import torch

from xalign.store import (ArtefactError, LazyTensors, atomic_path, load_tensors, read_json, read_table,
                          save_tensors, stream_tensors, write_json, write_table)


def test_tensors_round_trip_with_metadata(tmp_path):
    t = {"layer_3": torch.randn(5, 4), "word_idx": torch.arange(5)}
    f = save_tensors(t, tmp_path / "v.safetensors", {"layers": [3], "hidden_size": 4, "name": "step-1"})
    back, meta = load_tensors(f)
    assert torch.equal(back["layer_3"], t["layer_3"]) and torch.equal(back["word_idx"], t["word_idx"])
    assert meta == {"layers": [3], "hidden_size": 4, "name": "step-1"}
    assert oct(os.stat(f).st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_nan_or_inf_is_refused_and_nothing_written(tmp_path):
    x = torch.zeros(3, 2)
    x[1, 1] = float("nan")
    with pytest.raises(ArtefactError, match="tensor 'layer_2' has 1 NaN/inf"):
        save_tensors({"layer_2": x}, tmp_path / "v.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_truncated_safetensors_gives_one_line_error(tmp_path):
    f = save_tensors({"a": torch.randn(100, 10)}, tmp_path / "v.safetensors")
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtefactError) as e:
        load_tensors(f)
    assert str(f) in str(e.value) and "corrupt or truncated" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ArtefactError, match="missing artefact"):
        load_tensors(tmp_path / "nope.safetensors")


def test_streamed_tensors_read_back_with_safetensors(tmp_path):
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(0)
    a, b, e = torch.randn(7, 3, generator=g), torch.arange(7) * 10, torch.randn(0, 3)
    specs = {"a": ((7, 3), torch.float32), "b": ((7,), torch.int64), "e": ((0, 3), torch.float32),
             "h": ((2, 2), torch.bfloat16)}
    with stream_tensors(tmp_path / "v.safetensors", specs, {"layers": [3]}) as w:
        for start in (4, 0, 2):  # any order
            w.write_rows("a", start, a[start:start + {4: 3, 0: 2, 2: 2}[start]])
        w.write_rows("b", 0, b)
        w.write_rows("e", 0, e)
        w.write_rows("h", 0, torch.tensor([[1.5, -2.0], [0.25, 3.0]]))
        assert not (tmp_path / "v.safetensors").exists()  # appears only when complete
        w.metadata["n_words_total"] = 9
    back = load_file(str(tmp_path / "v.safetensors"))  # the reference reader
    assert torch.equal(back["a"], a) and torch.equal(back["b"], b) and back["e"].shape == (0, 3)
    assert back["h"].dtype == torch.bfloat16 and back["h"].float().tolist() == [[1.5, -2.0], [0.25, 3.0]]
    assert load_tensors(tmp_path / "v.safetensors")[1] == {"layers": [3], "n_words_total": 9}
    # the same content gives the same bytes
    with stream_tensors(tmp_path / "w.safetensors", {"a": ((7, 3), torch.float32)}) as w:
        w.write_rows("a", 0, a)
    with stream_tensors(tmp_path / "x.safetensors", {"a": ((7, 3), torch.float32)}) as w:
        w.write_rows("a", 3, a[3:])
        w.write_rows("a", 0, a[:3])
    assert (tmp_path / "w.safetensors").read_bytes() == (tmp_path / "x.safetensors").read_bytes()


@pytest.mark.parametrize("case", ["nan", "rows_missing", "exception", "too_big", "bad_shape"])
def test_streamed_tensors_failures_write_nothing(tmp_path, case):
    dest = tmp_path / "v.safetensors"
    with pytest.raises((ArtefactError, KeyboardInterrupt)) as e:
        with stream_tensors(dest, {"a": ((4, 2), torch.float32)}) as w:
            x = torch.ones(4, 2)
            if case == "nan":
                x[2, 1] = float("inf")
            if case == "bad_shape":
                w.write_rows("a", 3, x)
            if case == "rows_missing":
                x = x[:3]
            w.write_rows("a", 0, x)
            if case == "exception":
                raise KeyboardInterrupt
            if case == "too_big":
                w.metadata["blob"] = "x" * 10_000
    assert list(tmp_path.iterdir()) == []  # no artefact, no temporary file
    msg = str(e.value)
    assert {"nan": "tensor 'a' has 1 NaN/inf", "rows_missing": "rows written {'a': '3 of 4'}",
            "exception": "", "too_big": "exceeds the reserved header",
            "bad_shape": "rows 3..7 of shape (4, 2) do not fit"}[case] in msg


def test_lazy_tensors_read_one_tensor_at_a_time(tmp_path):
    t = {"layer_1": torch.randn(6, 4), "layer_2": torch.randn(6, 4), "sent_idx": torch.arange(6)}
    f = save_tensors(t, tmp_path / "v.safetensors", {"hidden_size": 4})
    lazy = LazyTensors(f)
    assert lazy.shapes == {"layer_1": (6, 4), "layer_2": (6, 4), "sent_idx": (6,)}
    assert lazy.metadata == {"hidden_size": 4} and sorted(lazy) == sorted(t) and len(lazy) == 3
    assert torch.equal(lazy["layer_2"], t["layer_2"]) and lazy["layer_2"] is not lazy["layer_2"]
    with pytest.raises(KeyError):
        lazy["layer_9"]
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(ArtefactError, match="corrupt or truncated"):
        LazyTensors(f)


def test_disk_full_leaves_previous_artefact_and_no_temp_file(tmp_path):
    dest = tmp_path / "t.json"
    write_json({"v": 1}, dest)
    with pytest.raises(OSError) as e:
        with atomic_path(dest) as tmp:
            tmp.write_text("partial", encoding="utf-8")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.errno == errno.ENOSPC
    assert read_json(dest) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_tables_and_json(tmp_path):
    df = pd.DataFrame({"language": ["en", "es"], "neurons": [[1, 2], [3, 4]]})
    write_table(df, tmp_path / "s.parquet", csv=True)
    back = read_table(tmp_path / "s.parquet")
    assert back.language.tolist() == ["en", "es"] and list(back.neurons[1]) == [3, 4]
    assert (tmp_path / "s.csv").is_file()
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(ArtefactError, match="bad.parquet: unreadable parquet"):
        read_table(tmp_path / "bad.parquet")
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(ArtefactError, match="bad.json: corrupt JSON"):
        read_json(tmp_path / "bad.json")


def test_load_metadata_reads_header_only(tmp_path):
    from xalign.store import load_metadata

    f = save_tensors({"a": torch.randn(4, 3)}, tmp_path / "v.safetensors", {"layers": [3, 4]})
    assert load_metadata(f) == {"layers": [3, 4]}
    f.write_bytes(b"\x00\x01")
    with pytest.raises(ArtefactError, match="corrupt or truncated"):
        load_metadata(f)


# ------------------------------------------------------------------ identity and manifest
def test_identity_depends_on_stage_config_and_inputs_not_on_key_order():
    from xalign.store import content_sha256, identity

    base = identity("probing", {"k": 3, "lr": 0.01}, {"vectors": "aa", "labels": "bb"})
    assert base == identity("probing", {"lr": 0.01, "k": 3}, {"labels": "bb", "vectors": "aa"})
    assert len({base, identity("overlap", {"k": 3, "lr": 0.01}, {"vectors": "aa", "labels": "bb"}),
                identity("probing", {"k": 4, "lr": 0.01}, {"vectors": "aa", "labels": "bb"}),
                identity("probing", {"k": 3, "lr": 0.01}, {"vectors": "ab", "labels": "bb"})}) == 4
    df = pd.DataFrame({"value": ["SG", "PL"], "sent_idx": [1, 2]})
    assert content_sha256(df) == content_sha256(df.copy())
    assert content_sha256(df) != content_sha256(df.assign(sent_idx=[1, 3]))
    assert content_sha256(df) != content_sha256(df.rename(columns={"value": "label"}))
    assert content_sha256(torch.zeros(2, 3)) != content_sha256(torch.zeros(3, 2))


def test_manifest_records_and_checks_artefacts(tmp_path):
    from xalign.pipeline.manifest import Manifest
    from xalign.store import file_sha256

    run = tmp_path / "run"
    m = Manifest.open(run)
    f = write_table(pd.DataFrame({"a": [1, 2]}), run / "t" / "x.parquet")
    sha = m.record(f, "stage", "id1", {"p": 1}, {"in": "cafe"})
    assert sha == file_sha256(f)
    m2 = Manifest.open(run)  # saved on record, read back
    e = m2.artefacts["t/x.parquet"]
    assert e["identity"] == "id1" and e["inputs"] == {"in": "cafe"} and e["config"] == {"p": 1}
    assert m2.is_current(f, "id1") and not m2.is_current(f, "id2")
    os.utime(f, ns=(1, 1))  # touched, same bytes: still current
    assert m2.is_current(f, "id1") and m2.sha256(f) == sha
    write_table(pd.DataFrame({"a": [1, 3]}), f)  # rewritten behind the manifest's back
    assert not m2.is_current(f, "id1") and m2.sha256(f) == file_sha256(f) != sha
    f.unlink()
    assert not m2.is_current(f, "id1")
    with pytest.raises(ArtefactError, match="missing artefact"):
        m2.sha256(f)
    # a folder artefact (a checkpoint): hashed over its files' names and contents
    d = run / "ckpt"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "w.bin").write_bytes(b"123")
    m2.record(d, "pretrain", "id3")
    assert m2.is_current(d, "id3")
    (d / "sub" / "w.bin").write_bytes(b"124")
    assert not m2.is_current(d, "id3")


def test_corrupt_manifest_is_set_aside_and_nothing_is_reused(tmp_path, caplog):
    from xalign.pipeline.manifest import Manifest

    (tmp_path / "manifest.json").write_text('{"artefacts": {"x": ', encoding="utf-8")
    m = Manifest.open(tmp_path)
    assert m.artefacts == {} and "unreadable manifest" in caplog.text
    assert (tmp_path / "manifest.json.corrupt").is_file() and not (tmp_path / "manifest.json").exists()


def test_provenance_names_versions_and_commit():
    from xalign.store import provenance

    p = provenance(seed=7)
    assert p["seed"] == 7 and p["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    assert p["git_commit"] is None or len(p["git_commit"]) == 40
    assert p["python"].count(".") == 2


def test_stale_temporary_files_of_a_killed_writer_are_removed(tmp_path):
    from xalign.store import remove_stale_temps

    keep = write_json({"a": 1}, tmp_path / "sub" / "x.json")
    (tmp_path / "sub" / ".x.json.k2j3.tmp").write_text("half")  # what SIGKILL inside atomic_path leaves
    (tmp_path / ".y.parquet.abcd.tmp").write_bytes(b"PAR")
    assert remove_stale_temps(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["x.json"] and keep.is_file()


def test_a_live_writers_temporary_file_is_kept(tmp_path):
    """Only the owner's death makes a temp file stale: another driver must not delete it."""
    import socket
    import subprocess
    import sys

    from xalign.store import remove_stale_temps

    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    live = tmp_path / f".a.parquet.~{host}~{os.getpid()}~x1.tmp"
    gone = tmp_path / f".b.parquet.~{host}~{dead}~x2.tmp"
    remote = tmp_path / f".c.parquet.~other-node~{os.getpid()}~x3.tmp"
    for p in (live, gone, remote):
        p.write_bytes(b"half")
    assert remove_stale_temps(tmp_path) == 1 and not gone.exists() and live.exists() and remote.exists()
    os.utime(remote, (1, 1))  # another node's file, untouched for days
    assert remove_stale_temps(tmp_path) == 1 and not remote.exists() and live.exists()
    with atomic_path(tmp_path / "d.json") as tmp:  # what atomic_path writes carries the marker
        assert f"~{host}~{os.getpid()}~" in tmp.name
        assert remove_stale_temps(tmp_path) == 0
        tmp.write_text("{}")
