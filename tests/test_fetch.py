"""The data fetcher (xalign.fetch, ``python -m xalign.data fetch``) against a local HTTP server.

The server (127.0.0.1, port 0, in a thread) serves small archives built here in the official
layouts: a UD v2.1 and a UD v2.5 tarball whose CoNLL-U files are slices of the real bundle's
treebanks, an XNLI 1.0 zip (``XNLI-1.0/xnli.{dev,test}.tsv`` with the official 19 columns,
rows from the bundle's XNLI TSVs) and a MultiNLI 1.0 zip
(``multinli_1.0/multinli_1.0_train.jsonl``). Nothing touches the network.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import yaml

from xalign import data as D
from xalign import fetch as F

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------
# a local HTTP server with Range support and a mode that drops the connection
# ---------------------------------------------------------------------------------------
class _Server:
    """Serves ``files`` (name -> bytes). ``log`` records (name, Range header) per GET;
    ``drop_after = n`` makes the next response send n body bytes and close the connection."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.log, self.drop_after = files, [], None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                name = self.path.lstrip("/")
                rng = self.headers.get("Range")
                server.log.append((name, rng))
                if name not in server.files:
                    self.send_error(404)
                    return
                body, start = server.files[name], 0
                if rng:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                drop, server.drop_after = server.drop_after, None
                if drop is None:
                    self.wfile.write(body[start:])
                    return
                self.wfile.write(body[start:start + drop])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------------------------------
# archives in the official layouts, from slices of the real bundle
# ---------------------------------------------------------------------------------------
def _blocks(path: Path) -> list[str]:
    return [b.strip("\n") + "\n\n" for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip()]


def _slice(path: Path, start: int, n: int) -> bytes:
    return "".join(_blocks(path)[start:start + n]).encode("utf-8")


_NO_FORMS = "".join(f"# sent_id = esl-{k}\n1\t_\t_\tNOUN\t_\t_\t0\troot\t_\t_\n2\t_\t_\tPUNCT\t_\t_\t1\tpunct\t_\t_\n\n"
                    for k in range(3)).encode()


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), 0o644
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _ud21(ud: Path) -> tuple[bytes, dict[str, bytes]]:
    """A UD v2.1 release tarball with the v2.1 folder names (UD_English = EWT, UD_Spanish = GSD, ...)."""
    ewt, anc, gsd, fr = ud / "UD_English-EWT", ud / "UD_Spanish-AnCora", ud / "UD_Spanish-GSD", ud / "UD_French-GSD"
    files = {
        "UD_English/en-ud-train.conllu": _slice(ewt / "en-ud-dev.conllu", 0, 150),
        "UD_English/en-ud-dev.conllu": _slice(ewt / "en-ud-dev.conllu", 150, 50),
        "UD_English/en-ud-test.conllu": _slice(ewt / "en-ud-test.conllu", 0, 50),
        "UD_English/en-ud-train.txt": b"raw text, not extracted\n",
        "UD_English/LICENSE.txt": (ewt / "LICENSE.txt").read_bytes(),
        "UD_English/README.md": b"# UD English\n",
        "UD_English/stats.xml": b"<treebank/>\n",
        "UD_Spanish/es-ud-dev.conllu": _slice(gsd / "es-ud-dev.conllu", 0, 100),
        "UD_Spanish/es-ud-test.conllu": _slice(gsd / "es-ud-test.conllu", 0, 50),
        "UD_Spanish-AnCora/es_ancora-ud-dev.conllu": _slice(anc / "es_ancora-ud-dev.conllu", 0, 150),
        "UD_Spanish-AnCora/es_ancora-ud-test.conllu": _slice(anc / "es_ancora-ud-test.conllu", 0, 100),
        "UD_French/fr-ud-dev.conllu": _slice(fr / "fr-ud-dev.conllu", 0, 150),
        "UD_French/fr-ud-test.conllu": _slice(fr / "fr-ud-test.conllu", 0, 100),
        "UD_German/de-ud-train.conllu": _NO_FORMS,  # not one of the paper's languages
    }
    return _tgz({f"ud-treebanks-v2.1/{k}": v for k, v in files.items()}), files


def _ud25(ud: Path) -> tuple[bytes, dict[str, bytes]]:
    """A UD v2.5 tarball with the English treebanks XTREME's UD-POS reads (and two it does not)."""
    gum, ewt = ud / "UD_English-GUM", ud / "UD_English-EWT"
    files = {
        "UD_English-ESL/en_esl-ud-train.conllu": _NO_FORMS,  # no word forms in the release
        "UD_English-EWT/en_ewt-ud-train.conllu": _slice(ewt / "en-ud-dev.conllu", 200, 40),
        "UD_English-GUM/en_gum-ud-train.conllu": _slice(gum / "en_gum-ud-train.conllu", 0, 150),
        "UD_English-GUM/en_gum-ud-dev.conllu": _slice(gum / "en_gum-ud-dev.conllu", 0, 50),
        "UD_English-GUM/en_gum-ud-test.conllu": _slice(gum / "en_gum-ud-test.conllu", 0, 50),
        "UD_English-GUM/LICENSE.txt": (gum / "LICENSE.txt").read_bytes(),
        "UD_English-LinES/en_lines-ud-train.conllu": _slice(ewt / "en-ud-test.conllu", 50, 30),
        "UD_English-ParTUT/en_partut-ud-train.conllu": _slice(ewt / "en-ud-test.conllu", 80, 20),
        "UD_English-PUD/en_pud-ud-test.conllu": _slice(ewt / "en-ud-test.conllu", 100, 10),
    }
    return _tgz({f"ud-treebanks-v2.5/{k}": v for k, v in files.items()}), files


XNLI_HEADER = ("language gold_label sentence1_binary_parse sentence2_binary_parse sentence1_parse sentence2_parse "
               "sentence1 sentence2 promptID pairID genre label1 label2 label3 label4 label5 sentence1_tokenized "
               "sentence2_tokenized match").split()
XNLI_ROWS = 30


def _xnli(xnli: Path) -> bytes:
    """XNLI-1.0.zip: xnli.{dev,test}.tsv in the official 19-column layout, rows from the bundle."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for split in ("dev", "test"):
            lines = ["\t".join(XNLI_HEADER)]
            for lang in F.XNLI_LANGUAGES:
                rows = (xnli / f"{split}-{lang}.tsv").read_text(encoding="utf-8").splitlines()[1:XNLI_ROWS + 1]
                for i, row in enumerate(rows):
                    p, h, label = row.split("\t")
                    lines.append("\t".join([lang, label, f"( {p} )", f"( {h} )", f"(ROOT {p})", f"(ROOT {h})", p, h,
                                            str(i), f"{i}n", "fiction", label, label, label, label, label, p, h,
                                            "True"]))
            zf.writestr(f"XNLI-1.0/xnli.{split}.tsv", "\n".join(lines) + "\n")
            zf.writestr(f"__MACOSX/XNLI-1.0/._xnli.{split}.tsv", b"\x00\x05\x16\x07junk")
        zf.writestr("XNLI-1.0/README.md", "XNLI\n")
    return buf.getvalue()


MNLI = [("Conceptually cream skimming has two basic dimensions - product and geography.",
         "Product and geography are what make cream skimming work. ", "neutral"),
        ("you know during the season and i guess at at your level", "You lose the things to the following level.",
         "entailment"),
        ("One of our number will carry out your\tinstructions minutely.",
         "A member of my team will execute\nyour orders",
         "entailment"),
        ('He said "no" twice.', "He agreed.", "contradiction"),
        ("An undecided pair.", "Nobody agreed on it.", "-")]


def _mnli() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        rows = [json.dumps({"annotator_labels": [g], "genre": "fiction", "gold_label": g, "pairID": f"{i}n",
                            "promptID": i, "sentence1": p, "sentence1_binary_parse": "( x )",
                            "sentence1_parse": "(ROOT)",
                            "sentence2": h, "sentence2_binary_parse": "( y )", "sentence2_parse": "(ROOT)"})
                for i, (p, h, g) in enumerate(MNLI)]
        zf.writestr("multinli_1.0/multinli_1.0_train.jsonl", "\n".join(rows) + "\n")
        zf.writestr("multinli_1.0/multinli_1.0_train.txt", "gold_label\tsentence1\n")
        zf.writestr("__MACOSX/multinli_1.0/._multinli_1.0_train.jsonl", b"\x00junk")
    return buf.getvalue()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture(scope="module")
def archives(data_root: Path) -> dict:
    ud21, ud21_files = _ud21(data_root / "ud")
    ud25, ud25_files = _ud25(data_root / "ud")
    return {"ud-treebanks-v2.1.tgz": ud21, "ud-treebanks-v2.5.tgz": ud25, "XNLI-1.0.zip": _xnli(data_root / "xnli"),
            "multinli_1.0.zip": _mnli(), "not-a-tarball.tgz": b"this is not a gzip file\n" * 10,
            "ud21_files": ud21_files, "ud25_files": ud25_files}


@pytest.fixture(scope="module")
def server(archives: dict):
    srv = _Server({k: v for k, v in archives.items() if not k.endswith("_files")})
    yield srv
    srv.close()


@pytest.fixture()
def sources(server: _Server, archives: dict) -> dict[str, F.Source]:
    """The real table's entries pointed at the local server, with the test archives' checksums
    (ud-v2.1 without size or SHA-256, as in the real table)."""
    server.log.clear()
    out = {}
    for key, src in F.SOURCES.items():
        body = archives[src.name]
        known = key != "ud-v2.1"
        out[key] = F.Source(src.name, server.url(src.name), len(body) if known else None,
                            _sha(body) if known else None, "test archive")
    return out


@pytest.fixture(scope="module")
def fetched(tmp_path_factory, server: _Server, archives: dict) -> Path:
    """A data root fetched once (all steps, languages en, es, fr) from the local server."""
    srcs = {k: F.Source(s.name, server.url(s.name), len(archives[s.name]) if k != "ud-v2.1" else None,
                        _sha(archives[s.name]) if k != "ud-v2.1" else None, "test") for k, s in F.SOURCES.items()}
    root = tmp_path_factory.mktemp("fetched") / "data"
    F.fetch(root, sources=srcs, languages=["en", "es", "fr"], progress=False)
    return root


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---------------------------------------------------------------------------------------
# the fetched layout, read back by xalign.data
# ---------------------------------------------------------------------------------------
def test_fetch_builds_the_layout_and_data_reads_it_back(fetched: Path, archives: dict) -> None:
    root, ud21 = fetched, archives["ud21_files"]
    assert sorted(p.name for p in (root / "ud").iterdir()) == [
        "UD_English-EWT", "UD_English-GUM", "UD_French-GSD", "UD_Spanish-AnCora", "UD_Spanish-GSD"]
    assert sorted(p.name for p in (root / "ud" / "UD_English-EWT").iterdir()) == [
        "LICENSE.txt", "README.md", "en-ud-dev.conllu", "en-ud-test.conllu", "en-ud-train.conllu"]
    assert not list(root.glob(".fetch-*")) and not (root / "downloads").exists()  # archives deleted once used
    for lang, tb, src in [("en", "UD_English-EWT", "UD_English/en"), ("es", "UD_Spanish-GSD", "UD_Spanish/es"),
                          ("es", "UD_Spanish-AnCora", "UD_Spanish-AnCora/es_ancora"), ("fr", None, "UD_French/fr")]:
        files = D.find_treebank_files(root, lang, tb)
        for split, path in files.items():
            assert path.read_bytes() == ud21[f"{src}-ud-{split}.conllu"]
            assert len(D.read_conllu(path)) == len(_blocks(path))
    assert list(D.find_treebank_files(root, "en")) == ["train", "dev", "test"]  # the default: GUM (UD v2.5)
    assert len(D.read_pos_sentences(root, "en", split="train")) == 150

    ud25 = archives["ud25_files"]
    xtreme = b"".join(ud25[f"{tb}/{name}-ud-train.conllu"] for tb, name in [
        ("UD_English-EWT", "en_ewt"), ("UD_English-GUM", "en_gum"), ("UD_English-LinES", "en_lines"),
        ("UD_English-ParTUT", "en_partut")])
    udpos = root / "udpos" / "en-ud-train.conllu"
    assert udpos.read_bytes() == xtreme and len(D.read_conllu(udpos)) == 40 + 150 + 30 + 20

    for split in ("dev", "test"):
        for lang in F.XNLI_LANGUAGES:
            df = D.read_xnli(root, split, lang)
            assert len(df) == XNLI_ROWS
    train = D.read_xnli(root, "train", "en")
    assert train.values.tolist() == [
        ["Conceptually cream skimming has two basic dimensions - product and geography.",
         "Product and geography are what make cream skimming work.", "neutral"],
        ["you know during the season and i guess at at your level", "You lose the things to the following level.",
         "entailment"],
        ["One of our number will carry out your instructions minutely.", "A member of my team will execute your orders",
         "entailment"],
        ['He said "no" twice.', "He agreed.", "contradiction"]]  # the "-" pair is dropped

    rows = [line.split("\t") for line in (root / "FETCHED.tsv").read_text().splitlines()]
    assert rows[0] == list(F.FETCHED_COLUMNS)
    by_name = {r[0]: r for r in rows[1:]}
    assert set(by_name) == {"ud-treebanks-v2.1.tgz", "ud-treebanks-v2.5.tgz", "XNLI-1.0.zip", "multinli_1.0.zip"}
    for name, r in by_name.items():
        assert r[2] == str(len(archives[name])) and r[3] == _sha(archives[name])
    assert by_name["ud-treebanks-v2.1.tgz"][4] == "not verified: no recorded size or SHA-256"
    assert by_name["XNLI-1.0.zip"][4] == "SHA-256 verified"


def test_fetched_xnli_tsvs_equal_the_bundle_format(fetched: Path, data_root: Path) -> None:
    """Converted from the official layout, the TSVs are byte-identical to the bundle's (XTREME's) rows."""
    for split in ("dev", "test"):
        for lang in F.XNLI_LANGUAGES:
            want = (data_root / "xnli" / f"{split}-{lang}.tsv").read_text(encoding="utf-8").splitlines(True)
            assert (fetched / "xnli" / f"{split}-{lang}.tsv").read_text(encoding="utf-8") == "".join(
                want[:XNLI_ROWS + 1])


def test_data_prep_runs_on_the_fetched_root(fetched: Path, tmp_path: Path) -> None:
    """The pipeline's stage 1 on params/minimal.yaml (en, es, fr) with data_root = the fetched root,
    and the transfer stage's inputs (POS sentences, XNLI dev/test, MultiNLI train)."""
    from xalign import runs
    from xalign.params import load_params

    cfg = yaml.safe_load((REPO / "params" / "minimal.yaml").read_text())["params"]
    cfg.update(data_root=str(fetched), runs_dir=str(tmp_path / "runs"), figures_dir=str(tmp_path / "figures"))
    P = load_params(cfg)
    assert P.resolved_data_root() == fetched
    s = runs.run_data_prep(P)
    summary = s.tables["summary"]
    kept = summary[summary.status == "kept"]
    assert set(kept.language) == {"en", "es", "fr"} and "POS" in set(kept.attribute)
    labels = pd.read_parquet(P.run_dir() / "data" / "labels.parquet")
    assert set(labels.language) == {"en", "es", "fr"} and set(labels.split) == {"train", "dev", "test"}
    for lang in ("es", "fr"):
        assert D.read_pos_sentences(fetched, lang, split="test")
        assert len(D.read_xnli(fetched, "test", lang, max_rows=24)) == 24
    assert len(D.read_xnli(fetched, "dev", "en")) == XNLI_ROWS


# ---------------------------------------------------------------------------------------
# interrupted and corrupt downloads
# ---------------------------------------------------------------------------------------
def test_resume_after_an_interrupted_download(tmp_path: Path, server: _Server, sources: dict,
                                              archives: dict) -> None:
    body = archives["XNLI-1.0.zip"]
    cut = len(body) // 3
    server.drop_after = cut
    with pytest.raises(F.FetchError) as e:
        F.fetch(tmp_path, ["xnli"], sources=sources, retries=1, keep_downloads=True, progress=False)
    part = tmp_path / "downloads" / "XNLI-1.0.zip.part"
    assert str(e.value) == (f"XNLI-1.0.zip: download interrupted at {cut:,} of {len(body):,} bytes "
                            f"(connection closed early); rerun to resume from {part}")
    assert part.stat().st_size == cut and not (tmp_path / "xnli").exists()
    assert _listing(tmp_path) == ["downloads", "downloads/XNLI-1.0.zip.part"]

    F.fetch(tmp_path, ["xnli"], sources=sources, retries=1, keep_downloads=True, progress=False)
    assert server.log[-1] == ("XNLI-1.0.zip", f"bytes={cut}-")
    assert (tmp_path / "downloads" / "XNLI-1.0.zip").read_bytes() == body and not part.exists()
    assert len(list((tmp_path / "xnli").glob("*.tsv"))) == 30

    # within one call: the dropped transfer is retried from where it stopped
    server.log.clear()
    server.drop_after = cut
    root = tmp_path / "again"
    F.fetch(root, ["xnli"], sources=sources, retries=2, keep_downloads=True, progress=False)
    assert server.log == [("XNLI-1.0.zip", None), ("XNLI-1.0.zip", f"bytes={cut}-")]
    assert (root / "downloads" / "XNLI-1.0.zip").read_bytes() == body


def test_a_complete_part_file_is_not_downloaded_again(tmp_path: Path, server: _Server, sources: dict,
                                                      archives: dict) -> None:
    part = tmp_path / "downloads" / "multinli_1.0.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(archives["multinli_1.0.zip"])
    F.fetch(tmp_path, ["mnli"], sources=sources, progress=False)
    assert server.log == [] and (tmp_path / "xnli" / "train-en.tsv").is_file()
    assert not (tmp_path / "downloads").exists()


def test_checksum_failure_leaves_no_data_folder(tmp_path: Path, sources: dict) -> None:
    bad = dict(sources, xnli=F.Source("XNLI-1.0.zip", sources["xnli"].url, sources["xnli"].size, "0" * 64, "wrong"))
    with pytest.raises(F.FetchError) as e:
        F.fetch(tmp_path, ["xnli"], sources=bad, progress=False)
    part = tmp_path / "downloads" / "XNLI-1.0.zip.part"
    assert re.fullmatch(rf"XNLI-1\.0\.zip: SHA-256 mismatch \(expected 0{{64}}, got [0-9a-f]{{64}}\); "
                        rf"delete {re.escape(str(part))} and retry", str(e.value))
    assert _listing(tmp_path) == ["downloads", "downloads/XNLI-1.0.zip.part"]

    wrong_size = dict(sources, mnli=F.Source("multinli_1.0.zip", sources["mnli"].url, 123, None, "wrong"))
    with pytest.raises(F.FetchError, match=r"^multinli_1\.0\.zip: server reports [\d,]+ bytes, expected 123 "):
        F.fetch(tmp_path / "m", ["mnli"], sources=wrong_size, progress=False)
    assert _listing(tmp_path / "m") == []


def test_corrupt_archive_without_checksum_leaves_no_data_folder(tmp_path: Path, server: _Server,
                                                                sources: dict) -> None:
    bad = dict(sources, **{"ud-v2.1": F.Source("ud-treebanks-v2.1.tgz", server.url("not-a-tarball.tgz"),
                                               None, None, "none")})
    with pytest.raises(F.FetchError, match=r"^ud-treebanks-v2\.1\.tgz: corrupt archive \(.*\); delete .* and retry$"):
        F.fetch(tmp_path, ["ud"], sources=bad, progress=False)
    assert _listing(tmp_path) == ["downloads", "downloads/ud-treebanks-v2.1.tgz"]


def test_missing_treebank_folder_is_named(tmp_path: Path, sources: dict) -> None:
    with pytest.raises(F.FetchError, match=r"^ud-treebanks-v2\.1\.tgz: no treebank folder UD_Basque in the archive"):
        F.fetch(tmp_path, ["ud"], sources=sources, languages=["eu", "fr"], progress=False)
    assert not (tmp_path / "ud").exists() and not list(tmp_path.glob(".fetch-*"))


def test_refetch_replaces_a_step_and_keeps_the_others(tmp_path: Path, sources: dict) -> None:
    F.fetch(tmp_path, ["xnli", "mnli"], sources=sources, progress=False)
    (tmp_path / "xnli" / "dev-en.tsv").write_text("stale\n")
    F.fetch(tmp_path, ["xnli"], sources=sources, progress=False)
    assert len(D.read_xnli(tmp_path, "dev", "en")) == XNLI_ROWS
    assert len(D.read_xnli(tmp_path, "train", "en")) == 4


# ---------------------------------------------------------------------------------------
# conversions (pure), arguments, CLI, messages
# ---------------------------------------------------------------------------------------
def test_xnli_pairs_reads_the_official_columns() -> None:
    head = "\t".join(XNLI_HEADER)
    row = lambda lang, label, p, h: "\t".join([lang, label, "", "", "", "", p, h] + [""] * 11)  # noqa: E731
    got = F.xnli_pairs([head, row("en", "contradictory", " A man. ", "B"), row("fr", "neutral", "Un", "Deux"),
                        row("en", "entailment", "C\r", "D")])
    assert got == {"en": [("A man.", "B", "contradiction"), ("C", "D", "entailment")],
                   "fr": [("Un", "Deux", "neutral")]}
    with pytest.raises(F.FetchError, match=r"^x: line 2: label 'maybe' not in"):
        F.xnli_pairs([head, row("en", "maybe", "a", "b")], "x")
    with pytest.raises(F.FetchError, match=r"^x: line 3: 3 fields, header has 19$"):
        F.xnli_pairs([head, row("en", "neutral", "a", "b"), "en\tneutral\tonly"], "x")
    with pytest.raises(F.FetchError, match=r"^x: header lacks columns \['sentence1', 'sentence2'\]"):
        F.xnli_pairs(["language\tgold_label"], "x")


def test_mnli_and_hf_pairs() -> None:
    lines = [json.dumps({"gold_label": g, "sentence1": p, "sentence2": h}) for p, h, g in MNLI]
    assert [x[2] for x in F.mnli_pairs(lines)] == ["neutral", "entailment", "entailment", "contradiction"]
    with pytest.raises(F.FetchError, match=r"^m: line 1: not a MultiNLI JSON row"):
        F.mnli_pairs(['{"sentence1": "a"}'], "m")
    names = ["entailment", "neutral", "contradiction"]
    rows = [{"premise": "P0", "hypothesis": "H0", "label": 2}, {"premise": "P1", "hypothesis": "H1", "label": -1},
            {"premise": "P2\t", "hypothesis": "H\n2", "label": "neutral"}]
    assert F.hf_pairs(rows, names) == [("P0", "H0", "contradiction"), ("P2", "H 2", "neutral")]
    with pytest.raises(F.FetchError, match=r"^h: row 0: label index 2 without a matching name$"):
        F.hf_pairs(rows[:1], None, "h")
    with pytest.raises(F.FetchError, match=r"^h: row 0: no field 'hypothesis'$"):
        F.hf_pairs([{"premise": "p", "label": 0}], names, "h")


def test_write_pairs_is_read_by_read_xnli(tmp_path: Path) -> None:
    (tmp_path / "xnli").mkdir()
    pairs = F.hf_pairs([{"premise": 'a "quoted" premise', "hypothesis": "#not a comment", "label": 0}],
                       ["entailment", "neutral", "contradiction"])
    assert F.write_pairs(tmp_path / "xnli" / "dev-xx.tsv", pairs) == 1
    got = D.read_xnli(tmp_path, "dev", "xx").values.tolist()
    assert got == [['a "quoted" premise', "#not a comment", "entailment"]]


def test_via_hf_without_datasets_is_one_line(tmp_path: Path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(F.FetchError, match=r"^--via hf needs the optional package 'datasets'"):
        F.fetch(tmp_path, ["mnli"], via="hf", progress=False)
    assert _listing(tmp_path) == []


def test_bad_arguments_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(F.FetchError, match=r"^unknown fetch steps \['pos'\]; choose from ud, xnli, mnli, udpos$"):
        F.fetch(tmp_path / "r", ["pos"])
    with pytest.raises(F.FetchError, match=r"^unknown languages \['de'\]"):
        F.fetch(tmp_path / "r", ["ud"], languages=["de"])
    assert not (tmp_path / "r").exists()


def test_cli(tmp_path: Path, sources: dict, monkeypatch, capsys) -> None:
    monkeypatch.setattr(F, "SOURCES", sources)
    monkeypatch.delenv("XALIGN_DATA", raising=False)
    assert D.main(["fetch", "--only", "mnli"]) == 1
    assert capsys.readouterr().err == "error: no data root: pass --root DIR or set XALIGN_DATA\n"
    assert D.main(["fetch", "--root", str(tmp_path), "--only", "mnli", "--retries", "1"]) == 0
    out = capsys.readouterr().out
    mnli = sources["mnli"]
    assert f"multinli_1.0.zip: {mnli.size:,} bytes, sha256 {mnli.sha256} (SHA-256 verified)" in out
    assert len(D.read_xnli(tmp_path, "train", "en")) == 4
    assert D.main(["fetch", "--root", str(tmp_path), "--only", "ud,bogus"]) == 1
    assert capsys.readouterr().err.startswith("error: unknown fetch steps ['bogus']")


def test_missing_files_name_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"UD_Basque-BDT: treebank folder not found; .* \(fetch with "
                                                r"`python -m xalign\.data fetch --only ud`\)$"):
        D.find_treebank_files(tmp_path, "eu")
    with pytest.raises(FileNotFoundError, match=r"UD v2\.5 \(GUM is not in UD v2\.1; fetch with "
                                                r"`python -m xalign\.data fetch --only udpos`\)$"):
        D.find_treebank_files(tmp_path, "en")
    with pytest.raises(FileNotFoundError, match=r"dev-en\.tsv: XNLI file not found \(expected from XNLI 1\.0 .*"
                                                r"`python -m xalign\.data fetch --only xnli`\)"):
        D.read_xnli(tmp_path, "dev", "en")
    with pytest.raises(FileNotFoundError, match=r"train-en\.tsv: XNLI file not found \(expected from MultiNLI 1\.0 "
                                                r"train.*`python -m xalign\.data fetch --only mnli`\)"):
        D.read_xnli(tmp_path, "train", "en")


def test_the_fetched_treebanks_cover_the_registry() -> None:
    """Every language's default treebank (xalign.data.LANGUAGES) is written by the fetcher:
    from UD v2.1 by the ud step, GUM from UD v2.5 by the udpos step."""
    assert list(F.UD21_TREEBANKS) == list(D.LANGUAGES)
    for lang, info in D.LANGUAGES.items():
        written = {dst for _, dst in F.UD21_TREEBANKS[lang]} | ({F.GUM} if lang == "en" else set())
        assert info.treebank in written, lang
    assert F.GUM in F.XTREME_EN_TREEBANKS
    for src in F.SOURCES.values():
        assert src.url.startswith("https://") and src.reference
        assert src.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", src.sha256)
