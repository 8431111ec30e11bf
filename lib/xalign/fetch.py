"""Fetch the paper's corpora from their official archives and build a data root.

``python -m xalign.data fetch [--root DIR] [--only ud,xnli,mnli,udpos] [--languages en,es,...]
[--keep-downloads] [--via archive|hf]`` writes the data root the pipeline reads (point
``data_root`` in the params file, or ``$XALIGN_DATA``, at it)::

    <root>/
      ud/<UD folder>/*-ud-{train,dev,test}.conllu  [ud]     UD v2.1 (the paper's release), one folder per
                                                            treebank under today's name (v2.1 UD_English ->
                                                            UD_English-EWT, ...; see UD21_TREEBANKS), with
                                                            the treebank's LICENSE/README
      ud/UD_English-GUM/en_gum-ud-*.conllu         [udpos]  UD v2.5: the default English treebank of
                                                            xalign.data.LANGUAGES (GUM is not in v2.1)
      udpos/en-ud-train.conllu                     [udpos]  XTREME's English UD-POS training data: the train
                                                            files of UD v2.5 EWT, GUM, LinES, ParTUT, in that
                                                            order (21,253 sentences); CoNLL-U, read it with
                                                            xalign.data.read_conllu
      xnli/{dev,test}-<lang>.tsv                   [xnli]   XNLI 1.0 dev/test, 15 languages, header
                                                            premise<TAB>hypothesis<TAB>label (test labelled)
      xnli/train-en.tsv                            [mnli]   MultiNLI 1.0 train (the XNLI task's English
                                                            training data), same format, no "-" pairs
      FETCHED.tsv                                           one row per downloaded (or converted) file:
                                                            name, url, bytes, sha256, what was checked
      downloads/                                            archives while fetching; <name>.part while
                                                            incomplete (a rerun resumes it); the archives
                                                            are deleted once used unless --keep-downloads

``text/`` (Tatoeba/PAN-X text for the tiny-model lab) is not fetched.

Every download has its size and SHA-256 in :data:`SOURCES` where a citable value exists,
and is verified after download; the transfer resumes with an HTTP Range request from the
``.part`` file. Each step builds its output in a temporary folder inside the root
(``.fetch-*``) and renames it into place only when complete, so an interrupted or corrupt
download leaves no half-built data root. Errors are one line naming the file and the
problem (:class:`FetchError`).

With ``--via hf`` the XNLI and MultiNLI steps read the same data through Hugging Face
``datasets`` (``facebook/xnli``, ``nyu-mll/multi_nli``; optional dependency) instead of the
archives, for machines where the archive URLs are blocked.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from tqdm import tqdm

from xalign import data
from xalign.store import file_sha256

STEPS: tuple[str, ...] = ("ud", "xnli", "mnli", "udpos")
XNLI_LANGUAGES: tuple[str, ...] = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr",
                                   "ur", "vi", "zh")
TSV_HEADER = "premise\thypothesis\tlabel\n"


class FetchError(RuntimeError):
    """A download, checksum or archive problem; the message is one line naming the file."""


@dataclass(frozen=True)
class Source:
    """One file to download.

    Attributes:
        name: file name written under ``<root>/downloads/``.
        url: where to get it.
        size: expected size in bytes, or None where no citable value exists.
        sha256: expected SHA-256 (hex), or None where no citable value exists.
        reference: where ``size``/``sha256`` were taken from.
    """

    name: str
    url: str
    size: int | None
    sha256: str | None
    reference: str


#: The official archives. Checksums are only ones published by a third party, cited here;
#: None where no citable value was found (the computed values go to FETCHED.tsv).
SOURCES: Mapping[str, Source] = MappingProxyType({
    # UD v2.1, LINDAT/CLARIN handle 11234/1-2515. SHA-256 of the .tgz: pyconll/pyconll
    # tests/int/corpora.py (CorporaRegistration "2.1", zip_hash; its test_corpora.py checks that
    # field with hashlib.sha256 over the downloaded file). No citable size found.
    "ud-v2.1": Source("ud-treebanks-v2.1.tgz",
                      "https://lindat.mff.cuni.cz/repository/xmlui/bitstream/handle/11234/1-2515/ud-treebanks-v2.1.tgz",
                      None, "446cc70f2194d0141fb079fb22c05b310cae9213920e3036b763899f349fee9b",
                      "sha256: pyconll/pyconll tests/int/corpora.py; size: none published"),
    # UD v2.5, handle 11234/1-3105 (XTREME's UD-POS source). Size and SHA-256: huggingface/datasets
    # datasets/xtreme/dataset_infos.json, download_checksums of the udpos.* configs; the same
    # SHA-256 is pyconll's CorporaRegistration "2.5" zip_hash.
    "ud-v2.5": Source("ud-treebanks-v2.5.tgz",
                      "https://lindat.mff.cuni.cz/repository/xmlui/bitstream/handle/11234/1-3105/ud-treebanks-v2.5.tgz",
                      355216681, "5ff973e44345a5f69b94cc1427158e14e851c967d58773cc2ac5a1d3adaca409",
                      "huggingface/datasets datasets/xtreme/dataset_infos.json (udpos.*); pyconll corpora.py"),
    # XNLI 1.0. Size and SHA-256: huggingface/datasets datasets/xtreme/dataset_infos.json (XNLI,
    # this exact URL) and tensorflow/datasets url_checksums/xnli.txt (same file at cims.nyu.edu).
    "xnli": Source("XNLI-1.0.zip", "https://dl.fbaipublicfiles.com/XNLI/XNLI-1.0.zip",
                   17865352, "4ba1d5e1afdb7161f0f23c66dc787802ccfa8a25a3ddd3b165a35e50df346ab1",
                   "huggingface/datasets datasets/xtreme/dataset_infos.json; "
                   "tensorflow/datasets url_checksums/xnli.txt"),
    # MultiNLI 1.0. Size and SHA-256: tensorflow/datasets url_checksums/multi_nli.txt (this URL);
    # the same SHA-256 in facebookresearch/ParlAI parlai/tasks/multinli/build.py.
    "mnli": Source("multinli_1.0.zip", "https://cims.nyu.edu/~sbowman/multinli/multinli_1.0.zip",
                   226850426, "049f507b9e36b1fcb756cfd5aeb3b7a0cfcb84bf023793652987f7e7e0957822",
                   "tensorflow/datasets url_checksums/multi_nli.txt; ParlAI multinli/build.py"),
})
#: The sources each step downloads.
STEP_SOURCES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"ud": ("ud-v2.1",), "xnli": ("xnli",), "mnli": ("mnli",), "udpos": ("ud-v2.5",)})

#: Per language: (folder in the UD v2.1 archive, folder written under <root>/ud/). Until v2.1 a
#: language's default treebank had the bare name (the paper's list: UD_Arabic, UD_English, ...);
#: it is written under today's name, the one xalign.data.LANGUAGES and the params use. Where the
#: registry's default differs from the paper's treebank (ar, hi: PUD; es: AnCora) both are written.
UD21_TREEBANKS: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType({
    "ar": (("UD_Arabic", "UD_Arabic-PADT"), ("UD_Arabic-PUD", "UD_Arabic-PUD")),
    "eu": (("UD_Basque", "UD_Basque-BDT"),),
    "ca": (("UD_Catalan", "UD_Catalan-AnCora"),),
    "zh": (("UD_Chinese", "UD_Chinese-GSD"), ("UD_Chinese-CFL", "UD_Chinese-CFL")),
    "en": (("UD_English", "UD_English-EWT"),),
    "fr": (("UD_French", "UD_French-GSD"),),
    "hi": (("UD_Hindi", "UD_Hindi-HDTB"), ("UD_Hindi-PUD", "UD_Hindi-PUD")),
    "mr": (("UD_Marathi", "UD_Marathi-UFAL"),),
    "pt": (("UD_Portuguese", "UD_Portuguese-Bosque"),),
    "es": (("UD_Spanish", "UD_Spanish-GSD"), ("UD_Spanish-AnCora", "UD_Spanish-AnCora")),
    "ta": (("UD_Tamil", "UD_Tamil-TTB"),),
    "ur": (("UD_Urdu", "UD_Urdu-UDTB"),),
    "vi": (("UD_Vietnamese", "UD_Vietnamese-VTB"),),
})
#: The default English treebank of xalign.data.LANGUAGES; not in UD v2.1, so taken from v2.5.
GUM = "UD_English-GUM"
#: XTREME's English UD-POS train (google-research/xtreme scripts/download_data.sh, download_udpos, and
#: utils_preprocess.py, udpos_preprocess): every en_* train file of UD v2.5, concatenated in file-name
#: order. en_esl (UD_English-ESL) ships without word forms ("_") and XTREME's reader drops such
#: sentences, so it is left out; the four below give the 21,253 train sentences of Hugging Face
#: xtreme's udpos.English (datasets/xtreme/dataset_infos.json).
XTREME_EN_TREEBANKS: tuple[str, ...] = ("UD_English-EWT", "UD_English-GUM", "UD_English-LinES", "UD_English-ParTUT")
UDPOS_TRAIN = "udpos/en-ud-train.conllu"
XTREME_EN_TRAIN_SENTENCES = 21253


# ---------------------------------------------------------------------------------------
# Download: resumable, verified
# ---------------------------------------------------------------------------------------
def _reason(e: object) -> str:
    """An exception (or reason) as one short line: ``Type: message`` with whitespace collapsed."""
    text = " ".join(str(e).split())
    if isinstance(e, BaseException):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text[:300]


class _Interrupted(Exception):
    def __init__(self, got: int, total: int | None, reason: str) -> None:
        super().__init__(reason)
        self.got, self.total, self.reason = got, total, reason


def verify(path: str | Path, source: Source) -> tuple[int, str, str]:
    """Check a downloaded file against ``source.size`` / ``source.sha256`` (where known).

    Returns:
        ``(size, sha256, check)`` with ``check`` saying what was verified.

    Raises:
        FetchError: ``<name>: size mismatch (...)`` or ``<name>: SHA-256 mismatch (expected ..., got ...);
            delete <path> and retry``.
    """
    path = Path(path)
    size = path.stat().st_size
    if source.size is not None and size != source.size:
        raise FetchError(f"{source.name}: size mismatch (expected {source.size:,} bytes, got {size:,}); "
                         f"delete {path} and retry")
    sha = file_sha256(path)
    if source.sha256 is not None and sha != source.sha256.lower():
        raise FetchError(f"{source.name}: SHA-256 mismatch (expected {source.sha256}, got {sha}); "
                         f"delete {path} and retry")
    if source.sha256 is not None:
        check = "SHA-256 verified"
    elif source.size is not None:
        check = "size verified; no recorded SHA-256"
    else:
        check = "not verified: no recorded size or SHA-256"
    return size, sha, check


def download(source: Source, folder: str | Path, *, retries: int = 3, timeout: float = 60.0,
             progress: bool = True) -> Path:
    """Download ``source`` to ``<folder>/<name>``, resuming, and verify it.

    Bytes go to ``<folder>/<name>.part``; an existing ``.part`` is resumed with an HTTP
    ``Range`` request (a server that ignores it restarts the file). A dropped connection is
    retried up to ``retries`` times in all, each time from where it stopped; the ``.part``
    is renamed to ``<name>`` only after :func:`verify` passes. An existing ``<name>`` is
    verified again and reused.

    Raises:
        FetchError: HTTP error, unreachable URL, interrupted ``retries`` times (the ``.part``
            is kept: rerun to resume), or a size/SHA-256 mismatch (names the file to delete).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final, part = folder / source.name, folder / f"{source.name}.part"
    if final.is_file():
        verify(final, source)
        return final
    for attempt in range(1, max(1, retries) + 1):
        try:
            _transfer(source, part, timeout, progress)
            break
        except _Interrupted as e:
            if attempt >= retries:
                total = f"{e.total:,}" if e.total is not None else "?"
                raise FetchError(f"{source.name}: download interrupted at {e.got:,} of {total} bytes "
                                 f"({e.reason}); rerun to resume from {part}") from None
            print(f"{source.name}: interrupted at {e.got:,} bytes ({e.reason}); resuming "
                  f"(attempt {attempt + 1} of {retries})", file=sys.stderr)
    verify(part, source)
    os.replace(part, final)
    return final


def _open(url: str, start: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": "xalign-fetch/1 (+python urllib)"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _response_start(source: Source, resp: http.client.HTTPResponse, start: int) -> tuple[int, int | None]:
    """(offset the body starts at, total size or None) of a response to a request from ``start``."""
    length = resp.headers.get("Content-Length")
    if resp.status == 206:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", "").strip())
        if not m or int(m.group(1)) != start:
            raise FetchError(f"{source.name}: server answered a Range request from byte {start:,} with "
                             f"Content-Range {resp.headers.get('Content-Range')!r}; delete the .part and retry")
        total = int(m.group(3)) if m.group(3) != "*" else None
        return start, total
    return 0, int(length) if length is not None else None  # 200: the whole file (Range ignored)


def _transfer(source: Source, part: Path, timeout: float, progress: bool) -> None:
    """Append the missing bytes of ``source`` to ``part``; raises _Interrupted on a dropped transfer."""
    start = part.stat().st_size if part.exists() else 0
    if source.size is not None and start > source.size:
        raise FetchError(f"{source.name}: {part} has {start:,} bytes, more than the expected "
                         f"{source.size:,}; delete it and retry")
    if source.size is not None and start == source.size:
        return  # complete; the checksum decides
    try:
        resp = _open(source.url, start, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start > 0 and _range_end(e) == start:
            return  # nothing left to fetch
        raise FetchError(f"{source.name}: HTTP {e.code} {e.reason} from {source.url}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = _reason(getattr(e, "reason", e))
        raise FetchError(f"{source.name}: cannot download {source.url} ({reason})") from None
    with resp:
        offset, total = _response_start(source, resp, start)
        if source.size is not None and total is not None and total != source.size:
            raise FetchError(f"{source.name}: server reports {total:,} bytes, expected {source.size:,} "
                             f"({source.url})")
        _copy_body(source, resp, part, offset, total, progress)


def _range_end(err: urllib.error.HTTPError) -> int | None:
    m = re.fullmatch(r"bytes \*/(\d+)", (err.headers or {}).get("Content-Range", "").strip())
    return int(m.group(1)) if m else None


def _copy_body(source: Source, resp: http.client.HTTPResponse, part: Path, offset: int,
               total: int | None, progress: bool) -> None:
    tty = sys.stderr.isatty()
    got = offset
    with open(part, "r+b" if offset else "wb") as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=source.name,
            disable=not progress, file=sys.stderr, ascii=not tty, mininterval=0.5 if tty else 10.0,
            leave=tty) as bar:
        f.seek(offset)
        f.truncate()
        try:
            while block := resp.read(1 << 20):
                f.write(block)
                got += len(block)
                bar.update(len(block))
        except (http.client.HTTPException, OSError) as e:
            raise _Interrupted(got, total, _reason(e)) from None
        finally:
            f.flush()
            os.fsync(f.fileno())
    if total is not None and got < total:
        raise _Interrupted(got, total, "connection closed early")


# ---------------------------------------------------------------------------------------
# Atomic build: a temporary folder inside the root, renamed into place when complete
# ---------------------------------------------------------------------------------------
class _Stage:
    """A temporary ``<root>/.fetch-*`` folder: outputs are written under ``new/<area>/<entry>``
    and :meth:`commit` renames each entry to ``<root>/<area>/<entry>`` (replacing an older one).
    The folder is removed on exit, whether or not the build completed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
        self.new = self.dir / "new"

    def path(self, rel: str) -> Path:
        p = self.new / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def scratch(self, name: str) -> Path:
        p = self.dir / "scratch" / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def commit(self) -> list[Path]:
        placed = []
        for area in sorted(self.new.iterdir()):
            for entry in sorted(area.iterdir()):
                dest = self.root / area.name / entry.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.exists():
                    old = self.dir / "old" / area.name
                    old.mkdir(parents=True, exist_ok=True)
                    os.replace(dest, old / entry.name)
                os.replace(entry, dest)
                placed.append(dest)
        return placed

    def __enter__(self) -> "_Stage":
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _remove_stale_stages(root: Path) -> None:
    for p in root.glob(".fetch-*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# UD treebanks
# ---------------------------------------------------------------------------------------
def _keep_ud_file(name: str) -> bool:
    return name.endswith(".conllu") or name.startswith(("LICENSE", "README"))


def extract_treebanks(archive: str | Path, folders: Iterable[str], dest: str | Path) -> dict[str, Path]:
    """Extract treebank folders from an official UD release tarball.

    Only ``<top>/<folder>/*.conllu`` and the folder's LICENSE/README files are extracted
    (with tarfile's ``filter="data"``), not the raw ``.txt`` files.

    Args:
        archive: ``ud-treebanks-v2.x.tgz`` (layout ``ud-treebanks-v2.x/UD_<Lang>[-<TB>]/<files>``).
        folders: treebank folder names to extract.
        dest: empty folder to extract into.

    Returns:
        ``{folder: path of the extracted folder}``.

    Raises:
        FetchError: a folder is not in the archive, or the archive is corrupt.
    """
    archive, dest, wanted = Path(archive), Path(dest), set(folders)
    found: dict[str, Path] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                parts = PurePosixPath(m.name).parts
                if len(parts) == 3 and parts[1] in wanted and m.isfile() and _keep_ud_file(parts[2]):
                    tar.extract(m, dest, filter="data")
                    found[parts[1]] = dest / parts[0] / parts[1]
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise FetchError(f"{archive.name}: corrupt archive ({_reason(e)}); "
                         f"delete {archive} and retry") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise FetchError(f"{archive.name}: no treebank folder {', '.join(missing)} in the archive "
                         "(expected <top>/UD_<Lang>[-<TB>]/*.conllu)")
    return found


def _build_ud(archives: Mapping[str, Path], stage: _Stage, languages: Sequence[str]) -> None:
    pairs = [pair for lang in languages for pair in UD21_TREEBANKS[lang]]
    found = extract_treebanks(archives["ud-v2.1"], [src for src, _ in pairs], stage.scratch("ud"))
    for src, dst in pairs:
        os.replace(found[src], stage.path(f"ud/{dst}"))
        data.find_treebank_files(stage.new, "", dst)  # has split files, one per split
    print(f"ud: {len(pairs)} UD v2.1 treebanks: " + ", ".join(f"{s} -> {d}" for s, d in pairs))
    if "en" in languages:
        print(f"ud: note: {GUM}, the default en treebank, is not in UD v2.1; it comes with --only udpos "
              "(UD v2.5), or set data.treebanks: {en: UD_English-EWT} (the paper's)")


def _build_udpos(archives: Mapping[str, Path], stage: _Stage, languages: Sequence[str]) -> None:
    archive = archives["ud-v2.5"]
    found = extract_treebanks(archive, XTREME_EN_TREEBANKS, stage.scratch("udpos"))
    out = stage.path(UDPOS_TRAIN)
    with open(out, "wb") as f:
        for tb in XTREME_EN_TREEBANKS:
            train = sorted(found[tb].glob("*-ud-train.conllu"))
            if len(train) != 1:
                raise FetchError(f"{archive.name}: {tb} has {len(train)} *-ud-train.conllu files, expected one")
            f.write(train[0].read_bytes().rstrip(b"\n") + b"\n\n")  # one blank line between files
    n = data.count_sentences(out)
    os.replace(found[GUM], stage.path(f"ud/{GUM}"))
    data.find_treebank_files(stage.new, "en", GUM)
    print(f"udpos: {UDPOS_TRAIN}: {n:,} sentences from UD v2.5 {' + '.join(XTREME_EN_TREEBANKS)} train "
          f"(XTREME: {XTREME_EN_TRAIN_SENTENCES:,}); ud/{GUM} from UD v2.5")


# ---------------------------------------------------------------------------------------
# XNLI and MultiNLI -> the pipeline's TSV
# ---------------------------------------------------------------------------------------
_LABEL_ALIASES = {"contradictory": "contradiction"}


def _clean(text: str) -> str:
    """A TSV field: tabs and line breaks become spaces, outer whitespace is stripped."""
    return re.sub(r"[\t\r\n]", " ", text).strip()


def _label(raw: str, where: str) -> str:
    label = _LABEL_ALIASES.get(raw.strip(), raw.strip())
    if label not in data.XNLI_LABELS:
        raise FetchError(f"{where}: label {raw!r} not in {list(data.XNLI_LABELS)}")
    return label


def xnli_pairs(lines: Iterable[str], where: str = "xnli") -> dict[str, list[tuple[str, str, str]]]:
    """(premise, hypothesis, label) per language from the lines of ``XNLI-1.0/xnli.{dev,test}.tsv``.

    The official files are tab-separated with a header (``language, gold_label, ...,
    sentence1, sentence2, ...``); columns are found by name. Labels are mapped as XTREME
    does (``contradictory`` -> ``contradiction``); the file order is kept per language
    (row i is the same item in every language).

    Raises:
        FetchError: a missing column, a row with the wrong number of fields, or an unknown label
            (``<where>: line <n>: ...``).
    """
    it = iter(lines)
    header = next(it, "").rstrip("\r\n").split("\t")
    missing = [c for c in ("language", "gold_label", "sentence1", "sentence2") if c not in header]
    if missing:
        raise FetchError(f"{where}: header lacks columns {missing} (found {header[:8]})")
    col = {c: header.index(c) for c in ("language", "gold_label", "sentence1", "sentence2")}
    out: dict[str, list[tuple[str, str, str]]] = {}
    for n, line in enumerate(it, start=2):
        fields = line.rstrip("\r\n").split("\t")
        if fields == [""]:
            continue
        if len(fields) != len(header):
            raise FetchError(f"{where}: line {n}: {len(fields)} fields, header has {len(header)}")
        out.setdefault(fields[col["language"]], []).append(
            (_clean(fields[col["sentence1"]]), _clean(fields[col["sentence2"]]),
             _label(fields[col["gold_label"]], f"{where}: line {n}")))
    return out


def mnli_pairs(lines: Iterable[str], where: str = "multinli") -> list[tuple[str, str, str]]:
    """(premise, hypothesis, label) from the lines of ``multinli_1.0_train.jsonl``.

    Pairs whose ``gold_label`` is ``-`` (no annotator majority) are dropped.

    Raises:
        FetchError: a line that is not JSON or lacks ``gold_label``/``sentence1``/``sentence2``,
            or an unknown label.
    """
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            gold, s1, s2 = row["gold_label"], row["sentence1"], row["sentence2"]
        except (ValueError, KeyError, TypeError) as e:
            raise FetchError(f"{where}: line {n}: not a MultiNLI JSON row ({_reason(e)})") from None
        if gold == "-":
            continue
        out.append((_clean(s1), _clean(s2), _label(gold, f"{where}: line {n}")))
    return out


def hf_pairs(rows: Iterable[Mapping], label_names: Sequence[str] | None = None,
             where: str = "hf") -> list[tuple[str, str, str]]:
    """(premise, hypothesis, label) from Hugging Face rows (``facebook/xnli`` per-language
    configs, ``nyu-mll/multi_nli``): fields ``premise``, ``hypothesis``, ``label``.

    ``label`` is an index into ``label_names`` (the dataset's ClassLabel names, for both
    datasets ``entailment, neutral, contradiction``) or a string; ``-1`` (no gold label) is dropped.

    Raises:
        FetchError: a missing field, an index without ``label_names`` or out of range, or an unknown label.
    """
    out = []
    for i, row in enumerate(rows):
        try:
            premise, hypothesis, label = row["premise"], row["hypothesis"], row["label"]
        except KeyError as e:
            raise FetchError(f"{where}: row {i}: no field {e}") from None
        if isinstance(label, int):
            if label == -1:
                continue
            if not label_names or not 0 <= label < len(label_names):
                raise FetchError(f"{where}: row {i}: label index {label} without a matching name")
            label = label_names[label]
        out.append((_clean(premise), _clean(hypothesis), _label(str(label), f"{where}: row {i}")))
    return out


def write_pairs(path: str | Path, pairs: Iterable[tuple[str, str, str]]) -> int:
    """Write the pipeline's XNLI TSV (UTF-8, LF, header ``premise<TAB>hypothesis<TAB>label``,
    no quoting); returns the number of rows."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(TSV_HEADER)
        for p, h, label in pairs:
            f.write(f"{p}\t{h}\t{label}\n")
            n += 1
    return n


def _zip_lines(archive: Path, suffix: str) -> Iterator[str]:
    """Lines of the one member of a zip whose path ends with ``suffix`` (``__MACOSX`` ignored)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.endswith(suffix) and not n.startswith("__MACOSX")]
            if len(names) != 1:
                raise FetchError(f"{archive.name}: expected one member */{suffix}, found {names or 'none'}")
            with zf.open(names[0]) as raw:
                yield from io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
    except (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError) as e:
        raise FetchError(f"{archive.name}: corrupt archive ({_reason(e)}); "
                         f"delete {archive} and retry") from None


def _build_xnli(archives: Mapping[str, Path], stage: _Stage, languages: Sequence[str]) -> None:
    archive = archives["xnli"]
    for split in ("dev", "test"):
        by_lang = xnli_pairs(_zip_lines(archive, f"xnli.{split}.tsv"), f"{archive.name}: xnli.{split}.tsv")
        _write_xnli_split(stage, split, by_lang, f"{archive.name}: xnli.{split}.tsv")


def _write_xnli_split(stage: _Stage, split: str, by_lang: Mapping[str, list], where: str) -> None:
    if sorted(by_lang) != sorted(XNLI_LANGUAGES):
        raise FetchError(f"{where}: languages {sorted(by_lang)}, expected {sorted(XNLI_LANGUAGES)}")
    counts = {lang: len(v) for lang, v in by_lang.items()}
    if len(set(counts.values())) != 1:
        raise FetchError(f"{where}: languages have different row counts {counts} (not parallel)")
    for lang in XNLI_LANGUAGES:
        write_pairs(stage.path(f"xnli/{split}-{lang}.tsv"), by_lang[lang])
        data.read_xnli(stage.new, split, lang)  # the pipeline reads it back
    print(f"xnli: {split}-<lang>.tsv, {len(XNLI_LANGUAGES)} languages x {counts['en']:,} pairs")


def _build_mnli(archives: Mapping[str, Path], stage: _Stage, languages: Sequence[str]) -> None:
    archive = archives["mnli"]
    pairs = mnli_pairs(_zip_lines(archive, "multinli_1.0_train.jsonl"), f"{archive.name}: multinli_1.0_train.jsonl")
    n = write_pairs(stage.path("xnli/train-en.tsv"), pairs)
    data.read_xnli(stage.new, "train", "en")
    print(f"mnli: xnli/train-en.tsv, {n:,} pairs (MultiNLI 1.0 train without gold label '-'; expected 392,702)")


# ---------------------------------------------------------------------------------------
# Optional: XNLI / MultiNLI through Hugging Face datasets
# ---------------------------------------------------------------------------------------
def _hf_dataset(name: str, config: str | None, split: str):
    try:
        import datasets  # optional dependency
    except ImportError:
        raise FetchError("--via hf needs the optional package 'datasets' (pip install datasets); "
                         "or fetch the official archives (--via archive)") from None
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as e:  # any loader/network failure -> one line
        raise FetchError(f"{name} ({config or 'default'}, {split}): cannot load from Hugging Face "
                         f"({_reason(e)})") from None


def _hf_labels(ds) -> Sequence[str] | None:
    feature = getattr(ds, "features", {}).get("label")
    return getattr(feature, "names", None)


def _build_xnli_hf(stage: _Stage) -> list[dict]:
    records = []
    for split, hf_split in (("dev", "validation"), ("test", "test")):
        by_lang = {}
        for lang in XNLI_LANGUAGES:
            ds = _hf_dataset("facebook/xnli", lang, hf_split)
            by_lang[lang] = hf_pairs(ds, _hf_labels(ds), f"facebook/xnli {lang} {hf_split}")
        _write_xnli_split(stage, split, by_lang, f"facebook/xnli {hf_split}")
        records += [_output_record(stage, f"xnli/{split}-{lang}.tsv", f"hf://datasets/facebook/xnli ({lang}, "
                                   f"{hf_split})") for lang in XNLI_LANGUAGES]
    return records


def _build_mnli_hf(stage: _Stage) -> list[dict]:
    ds = _hf_dataset("nyu-mll/multi_nli", None, "train")
    n = write_pairs(stage.path("xnli/train-en.tsv"), hf_pairs(ds, _hf_labels(ds), "nyu-mll/multi_nli train"))
    data.read_xnli(stage.new, "train", "en")
    print(f"mnli: xnli/train-en.tsv, {n:,} pairs (nyu-mll/multi_nli train)")
    return [_output_record(stage, "xnli/train-en.tsv", "hf://datasets/nyu-mll/multi_nli (train)")]


def _output_record(stage: _Stage, rel: str, url: str) -> dict:
    p = stage.new / rel
    return {"name": rel, "url": url, "bytes": p.stat().st_size, "sha256": file_sha256(p),
            "check": "converted from Hugging Face datasets"}


# ---------------------------------------------------------------------------------------
# The fetch command
# ---------------------------------------------------------------------------------------
_BUILDERS: Mapping[str, Callable[[Mapping[str, Path], _Stage, Sequence[str]], None]] = MappingProxyType(
    {"ud": _build_ud, "xnli": _build_xnli, "mnli": _build_mnli, "udpos": _build_udpos})
_HF_BUILDERS: Mapping[str, Callable[[_Stage], list[dict]]] = MappingProxyType(
    {"xnli": _build_xnli_hf, "mnli": _build_mnli_hf})
FETCHED_COLUMNS = ("name", "url", "bytes", "sha256", "check")


def _check_args(only: Iterable[str] | None, languages: Iterable[str] | None, via: str) -> tuple[list, list]:
    steps = list(STEPS) if only is None else list(dict.fromkeys(only))
    bad = [s for s in steps if s not in STEPS]
    if bad or not steps:
        raise FetchError(f"unknown fetch steps {bad or '(none)'}; choose from {', '.join(STEPS)}")
    langs = list(UD21_TREEBANKS) if languages is None else list(dict.fromkeys(languages))
    bad = [x for x in langs if x not in UD21_TREEBANKS]
    if bad or not langs:
        raise FetchError(f"unknown languages {bad or '(none)'}; choose from {', '.join(UD21_TREEBANKS)}")
    if via not in ("archive", "hf"):
        raise FetchError(f"unknown --via {via!r}; choose archive or hf")
    return [s for s in STEPS if s in steps], langs


def fetch(root: str | Path, only: Iterable[str] | None = None, *, sources: Mapping[str, Source] | None = None,
          languages: Iterable[str] | None = None, keep_downloads: bool = False, via: str = "archive",
          retries: int = 3, timeout: float = 60.0, progress: bool = True) -> list[Path]:
    """Build (or update) a data root from the official archives; see the module docstring for the layout.

    Steps run in the order ud, xnli, mnli, udpos. Each downloads its archives into
    ``<root>/downloads/`` (:func:`download`: resumable, verified), builds its output in a
    temporary folder inside the root and renames it into place when complete, records every
    downloaded file in ``<root>/FETCHED.tsv`` and deletes the archives it no longer needs
    (unless ``keep_downloads``). A failed step leaves the root's data folders as they were
    before it (only ``downloads/``, with a resumable ``.part``, may have changed).

    Args:
        root: the data root (created if missing).
        only: steps to run (default all of :data:`STEPS`).
        sources: replaces :data:`SOURCES` (e.g. a mirror, or a local server in tests).
        languages: UD languages (default the 13 of :data:`UD21_TREEBANKS`); XNLI always has its 15.
        keep_downloads: keep the verified archives in ``<root>/downloads/``.
        via: ``"archive"`` (official archives) or ``"hf"`` (XNLI/MultiNLI via Hugging Face datasets).
        retries, timeout, progress: as in :func:`download`.

    Returns:
        The files and folders placed in the root.

    Raises:
        FetchError: unknown step or language, or any download/checksum/archive problem (one line).
    """
    steps, langs = _check_args(only, languages, via)
    sources = SOURCES if sources is None else sources
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_stages(root)
    downloads, placed = root / "downloads", []
    try:
        for i, step in enumerate(steps):
            with _Stage(root) as stage:
                if via == "hf" and step in _HF_BUILDERS:
                    records = _HF_BUILDERS[step](stage)
                else:
                    archives, records = _download_step(step, sources, downloads, retries, timeout, progress)
                    _BUILDERS[step](archives, stage, langs)
                placed += stage.commit()
            write_fetched(root, records)
            if not (via == "hf" and step in _HF_BUILDERS) and not keep_downloads:
                later = {k for s in steps[i + 1:] for k in STEP_SOURCES[s]}
                for key in set(STEP_SOURCES[step]) - later:
                    (downloads / sources[key].name).unlink(missing_ok=True)
    finally:
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()
    print(f"data root {root} ready ({', '.join(steps)}); point data_root in the params file (or "
          f"$XALIGN_DATA) at it")
    return placed


def _download_step(step: str, sources: Mapping[str, Source], downloads: Path, retries: int, timeout: float,
                   progress: bool) -> tuple[dict[str, Path], list[dict]]:
    archives, records = {}, []
    for key in STEP_SOURCES[step]:
        src = sources[key]
        archives[key] = path = download(src, downloads, retries=retries, timeout=timeout, progress=progress)
        size, sha, check = verify(path, src)
        print(f"{src.name}: {size:,} bytes, sha256 {sha} ({check})")
        records.append({"name": src.name, "url": src.url, "bytes": size, "sha256": sha, "check": check})
    return archives, records


def write_fetched(root: str | Path, records: Iterable[Mapping]) -> Path:
    """Add or update rows (by ``name``) of ``<root>/FETCHED.tsv`` (columns :data:`FETCHED_COLUMNS`),
    written atomically; returns its path."""
    path = Path(root) / "FETCHED.tsv"
    rows: dict[str, list[str]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:
            fields = line.split("\t")
            if len(fields) == len(FETCHED_COLUMNS):
                rows[fields[0]] = fields
    for r in records:
        rows[str(r["name"])] = [str(r[c]) for c in FETCHED_COLUMNS]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\t".join(FETCHED_COLUMNS) + "\n" + "".join("\t".join(v) + "\n" for v in rows.values()),
                   encoding="utf-8")
    os.replace(tmp, path)
    return path


def add_arguments(parser) -> None:
    """The ``fetch`` subcommand's options (for :func:`xalign.data.main`)."""
    parser.add_argument("--root", help="data root to build (default: $XALIGN_DATA)")
    parser.add_argument("--only", help=f"comma-separated steps (default all: {','.join(STEPS)})")
    parser.add_argument("--languages", help="comma-separated UD languages (default the paper's 13)")
    parser.add_argument("--keep-downloads", action="store_true", help="keep the archives in <root>/downloads")
    parser.add_argument("--via", choices=("archive", "hf"), default="archive",
                        help="hf: XNLI/MultiNLI through Hugging Face datasets instead of the archives")
    parser.add_argument("--retries", type=int, default=3, help="attempts per download (resuming)")


def run_cli(args) -> int:
    """Run ``fetch`` from parsed :func:`add_arguments` options; returns the exit status.

    Raises:
        FetchError: no root (neither ``--root`` nor ``$XALIGN_DATA``), or as :func:`fetch`.
    """
    root = args.root or os.environ.get("XALIGN_DATA")
    if not root:
        raise FetchError("no data root: pass --root DIR or set XALIGN_DATA")
    fetch(root, _csv_list(args.only), languages=_csv_list(args.languages), keep_downloads=args.keep_downloads,
          via=args.via, retries=args.retries)
    return 0


def _csv_list(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None
