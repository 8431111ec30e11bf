"""Input data files: strict UTF-8 reading for every reader, and a fast preflight scan.

**Strict text.** Every reader of a data file (:func:`xalign.data.read_conllu`,
:func:`~xalign.data.count_sentences`, :func:`~xalign.data.read_xnli`,
:class:`xalign.transfer.XnliTsvStream`, the lab's text reader) decodes it with the helpers
here, so a file that cannot be used as it is stops with one
:class:`~xalign.errors.InputError` line, ``<file>: line <n>: <problem>``:

* not UTF-8: ``not UTF-8 (byte 0xe9 at offset 584; invalid continuation byte); save the
  file as UTF-8`` at the line of the first bad byte (offset = bytes from the file start);
* a byte-order mark (UTF-8 ``EF BB BF`` = U+FEFF, UTF-16/32 LE/BE) is **rejected**, at
  line 1: ``starts with a UTF-8 byte-order mark; save the file as UTF-8 without a
  byte-order mark``. A UTF-8 BOM would otherwise stick to the first field (the header's
  ``premise``, a CoNLL-U comment), and a UTF-16/32 file is not UTF-8 at all;
* a NUL character (a UTF-16 file without byte-order mark, or a binary file): ``contains a
  NUL byte (...)``.

**Preflight scan.** :func:`check_inputs` lists every data file a run reads
(:func:`run_inputs`) and scans each once with raw checks (:func:`scan_conllu`,
:func:`scan_xnli`, :func:`scan_text`; no CoNLL-U parser, no pandas), returning one line per
problem. The whole data bundle (116 MB) scans in about 0.7 s: see :func:`check_inputs`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterator

from xalign.errors import InputError

#: Byte-order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one).
BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\x00\x00\xfe\xff", "UTF-32 BE"), (b"\xff\xfe\x00\x00", "UTF-32 LE"), (b"\xef\xbb\xbf", "UTF-8"),
    (b"\xfe\xff", "UTF-16 BE"), (b"\xff\xfe", "UTF-16 LE"))
#: Problems a scanner reports per file at most (the first ones, in file order).
MAX_PROBLEMS = 3
#: The problem of an empty text file (the lab's text reader and :func:`scan_text`).
TEXT_EMPTY = "empty file (no text lines)"
#: The problem of a CoNLL-U file without sentences (:func:`xalign.data.read_conllu`, :func:`scan_conllu`).
CONLLU_EMPTY = "empty file (no sentences)"
NUL_PROBLEM = ("contains a NUL byte (a UTF-16 file without byte-order mark, or not a text file?); "
               "save the file as UTF-8")


# ---------------------------------------------------------------------------------------
# strict UTF-8: the one place that decodes data files
# ---------------------------------------------------------------------------------------
def check_bom(path: str | Path, head: bytes) -> None:
    """Raise :class:`InputError` (line 1) if ``head``, the file's first bytes (4 suffice),
    starts with a byte-order mark; BOMs are rejected, not skipped."""
    for mark, name in BOMS:
        if head.startswith(mark):
            raise InputError(path, f"starts with a {name} byte-order mark; "
                             "save the file as UTF-8 without a byte-order mark", line=1)


def _not_utf8(path: str | Path, err: UnicodeDecodeError, base: int, line: int) -> InputError:
    """The error for ``err`` from decoding bytes that start at file offset ``base``."""
    byte = err.object[err.start]
    return InputError(path, f"not UTF-8 (byte 0x{byte:02x} at offset {base + err.start}; {err.reason}); "
                      "save the file as UTF-8", line=line)


def decode_line(path: str | Path, raw: bytes, line: int, offset: int) -> str:
    """One line of a file read in binary, decoded as strict UTF-8.

    Args:
        path: the file (named in errors).
        raw: the line's bytes; ``line``: its 1-based number; ``offset``: its first byte's
            offset in the file.

    Raises:
        InputError: not UTF-8 (byte, file offset, line), or a NUL byte (whichever comes first).
    """
    return _decode(path, raw, offset, lambda i: line)


def _decode(path: str | Path, data: bytes, base: int, line_of: Callable[[int], int]) -> str:
    """``data`` (starting at file offset ``base``) as strict UTF-8 without NUL; ``line_of(i)``
    is the line of byte ``i`` of ``data``. The first problem in the bytes is the one raised."""
    nul = data.find(b"\x00")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if not 0 <= nul < e.start:
            raise _not_utf8(path, e, base, line_of(e.start)) from None
    if nul >= 0:
        raise InputError(path, NUL_PROBLEM, line=line_of(nul))
    return text


def read_text(path: str | Path) -> str:
    """A whole file as strict UTF-8 (line endings as in the file); for the scanners and
    files read in full.

    Raises:
        FileNotFoundError / OSError: as ``open``.
        InputError: a byte-order mark, not UTF-8 (line and offset of the first bad byte), a NUL byte.
    """
    with open(path, "rb") as f:
        data = f.read()
    check_bom(path, data[:4])
    return _decode(path, data, 0, lambda i: data.count(b"\n", 0, i) + 1)


class TextLines:
    """A text file read line by line as strict UTF-8, as ``open(path, encoding="utf-8")``
    would (universal newlines), but every problem is an :class:`InputError` naming the file
    and line (see the module docstring). Use as a context manager; ``lineno`` is the number
    of the line last yielded.

    The good path runs at the speed of ``open``'s own decoder; only on a decoding error is
    the file read again in binary to find the line and offset of the first bad byte.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lineno = 0
        self._f = None

    def __enter__(self) -> "TextLines":
        with open(self.path, "rb") as f:
            check_bom(self.path, f.read(4))
        self._f = open(self.path, encoding="utf-8", errors="strict")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            self._f.close()

    def read(self, *args: Any) -> str:  # conllu.parse_incr only checks that it exists
        return self._f.read(*args)

    def __iter__(self) -> Iterator[str]:
        try:
            for line in self._f:
                self.lineno += 1
                if "\x00" in line:
                    raise InputError(self.path, NUL_PROBLEM, line=self.lineno)
                yield line
        except UnicodeDecodeError:
            raise self._locate() from None

    def _locate(self) -> InputError:
        """The error for the first bad byte, found by reading the file again in binary."""
        with open(self.path, "rb") as f:
            pos = 0
            for n, raw in enumerate(f, 1):
                try:
                    decode_line(self.path, raw, n, pos)
                except InputError as e:
                    return e
                pos += len(raw)
        return InputError(self.path, "not UTF-8; save the file as UTF-8")  # not reached: the decoder failed


# ---------------------------------------------------------------------------------------
# raw scanners
# ---------------------------------------------------------------------------------------
def conllu_columns_problem(line: str) -> str | None:
    """The problem of a CoNLL-U word line without 10 tab-separated columns (None if it has 10)."""
    n = line.rstrip("\r\n").count("\t") + 1
    return None if n == 10 else f"malformed CoNLL-U line (expected 10 tab-separated columns, found {n})"


_CONLLU_ID = re.compile(r"[0-9]+(?:[-.][0-9]+)?")  # 1, 1-2 (multiword token), 8.1 (empty node)


def _read(path: Path) -> tuple[str | None, list[str]]:
    """(text, []) or (None, [one problem line]) for a file that cannot be read as UTF-8 text."""
    try:
        return read_text(path), []
    except InputError as e:
        return None, [str(e)]
    except FileNotFoundError:
        return None, [f"{path}: file not found"]
    except OSError as e:
        return None, [f"{path}: cannot read ({e.strerror or e})"]


def scan_conllu(path: str | Path) -> list[str]:
    """Raw checks of a CoNLL-U file, without the CoNLL-U parser.

    Checks: strict UTF-8 without byte-order mark (as :class:`TextLines`), not empty (some
    non-blank line), and every word line (non-blank, not starting with ``#``) has an ID
    (``1``, ``1-2`` or ``8.1``) and exactly 10 tab-separated columns. A file cut mid-line
    fails the column count on its last line.

    Returns:
        One-line problems ``<file>: line <n>: <problem>``; an encoding problem is the only
        one reported for its file, otherwise the first :data:`MAX_PROBLEMS` bad lines.
    """
    path = Path(path)
    text, problems = _read(path)
    if text is None:
        return problems
    if not text.strip():
        return [str(InputError(path, CONLLU_EMPTY))]
    is_id = _CONLLU_ID.fullmatch
    for n, line in enumerate(text.split("\n"), 1):  # a plain loop: ~0.6 s for the 67 MB of the bundle
        if not line or line[0] == "#":
            continue
        if line.count("\t") == 9:
            tid = line[:line.find("\t")]
            if tid.isdigit() and tid.isascii() or is_id(tid):
                continue
            problem = (f"malformed CoNLL-U line (ID {tid!r} is not an integer, a range like 1-2 "
                       "or an empty node like 8.1)")
        elif not line.strip():
            continue
        else:
            problem = conllu_columns_problem(line)
        problems.append(str(InputError(path, problem, line=n)))
        if len(problems) >= MAX_PROBLEMS:
            break
    return problems


def scan_xnli(path: str | Path) -> list[str]:
    """Raw checks of an XNLI/MultiNLI TSV (the rules of :func:`xalign.data.read_xnli`).

    Checks: strict UTF-8 without byte-order mark, the header (the first non-blank line)
    exactly ``premise<TAB>hypothesis<TAB>label``, every row (blank lines aside) 3
    tab-separated fields with a label in :data:`xalign.data.XNLI_LABELS`, at least one row.

    Returns:
        One-line problems; an encoding or header problem is the only one for its file,
        otherwise the first :data:`MAX_PROBLEMS` bad rows.
    """
    from xalign.data import XNLI_EMPTY, XNLI_NO_ROWS, xnli_problem

    path = Path(path)
    text, problems = _read(path)
    if text is None:
        return problems
    header = None
    n_rows = 0
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line:
            continue  # blank lines are skipped; the first other line is the header
        if header is None:
            header = n
            problem = xnli_problem(line.split("\t"), header=True)
            if problem:
                return [str(InputError(path, problem, line=n))]
            continue
        n_rows += 1
        problem = xnli_problem(line.split("\t"))
        if problem:
            problems.append(str(InputError(path, problem, line=n)))
            if len(problems) >= MAX_PROBLEMS:
                break
    if header is None:
        return [str(InputError(path, XNLI_EMPTY))]
    if not n_rows:
        problems.append(str(InputError(path, XNLI_NO_ROWS)))
    return problems


def scan_text(path: str | Path) -> list[str]:
    """Raw checks of a pretraining text file (one text a line): strict UTF-8 without
    byte-order mark and at least one non-blank line. Returns one-line problems."""
    path = Path(path)
    text, problems = _read(path)
    if text is not None and not text.strip():
        problems.append(str(InputError(path, TEXT_EMPTY)))
    return problems


SCANNERS: dict[str, Callable[[str | Path], list[str]]] = {"conllu": scan_conllu, "xnli": scan_xnli,
                                                          "text": scan_text}


# ---------------------------------------------------------------------------------------
# which files a run reads, and the one-pass check
# ---------------------------------------------------------------------------------------
def run_inputs(P: Any, problems: list[str] | None = None) -> list[tuple[Path, str, str]]:
    """Every data file a run with params ``P`` (:class:`xalign.params.RunParams`) reads.

    Decided by the functions the stages use: :func:`xalign.data.find_treebank_files` for
    data prep (``data.languages``) and for the lab's UD text (``pretrain.text_sources: ud``),
    :func:`xalign.lab.text_files` for the lab's Tatoeba/PAN-X text (only files that exist:
    PAN-X has no Catalan), :func:`xalign.stages.transfer.data_files` per task of
    ``transfer.tasks``. The lab's files count only with ``checkpoints.source: lab`` and
    ``pretrain.enabled``.

    Args:
        P: validated run params.
        problems: if given, a file that cannot be found (the one-line FileNotFoundError /
            ValueError of those functions), or a lab language with no text file, is appended
            to it as a problem line and the listing goes on; if None, it is raised.

    Returns:
        ``(path, kind, why)`` in stage order, ``kind`` in ``conllu``/``xnli``/``text`` (the
        scanner), ``why`` the params key and value that make the run read it
        (``"data.languages: fr"``, ``"transfer.xnli_languages: ur"``,
        ``"pretrain.text_sources: tatoeba"``, ``"transfer.xnli_train: mnli"``). A path read for
        several reasons appears once per reason.

    Raises:
        FileNotFoundError: the data root does not exist (always raised), or, without
            ``problems``, a file lookup failed.
    """
    from xalign import data, lab
    from xalign.stages import transfer

    root = P.resolved_data_root()
    out: list[tuple[Path, str, str]] = []
    failed: dict[str, list[str]] = {}  # lookup error -> the reasons it was looked up for

    def lookup(why: str, find: Callable[[], Any]) -> Any:
        try:
            return find()
        except (FileNotFoundError, ValueError) as e:
            if problems is None:
                raise
            failed.setdefault(str(e), []).append(why)
            return None

    def treebanks(why_format: str) -> None:
        for lang in P.data.languages:
            why = why_format.format(lang)
            files = lookup(why, lambda: data.find_treebank_files(root, lang, P.data.treebanks.get(lang)))
            out.extend((p, "conllu", why) for p in (files or {}).values())

    treebanks("data.languages: {}")
    pp = P.pretrain
    if P.checkpoints.source == "lab" and pp.enabled:
        if "ud" in pp.text_sources:
            treebanks("pretrain.text_sources: ud")
        sources = [s for s in pp.text_sources if s != "ud"]
        found = lookup("pretrain.text_sources", lambda: lab.text_files(root, P.data.languages, sources))
        for (source, _), p in (found or {}).items():
            out.append((p, "text", f"pretrain.text_sources: {source}"))
        if found is not None and "ud" not in pp.text_sources:
            for lang in P.data.languages:
                if not any(key[1] == lang for key in found):
                    msg = (f"{root / 'text'}: no text file for '{lang}' in sources {sources} "
                           "(read by pretrain.text_sources; data.languages)")
                    if problems is None:
                        raise FileNotFoundError(msg)
                    failed[msg] = []
    train_why = {root / transfer.TRAIN_FILES[src][0]: f"transfer.{key}: {src}"
                 for src, key in (("xtreme", "pos_train"), ("mnli", "xnli_train"))}
    for task in (t for t in transfer.TASKS if t in P.transfer.tasks):
        why = f"transfer.tasks: {task}"
        for p in lookup(why, lambda: transfer.data_files(P, task)) or []:
            m = re.fullmatch(r"test-(.+)\.tsv", p.name)
            reason = train_why.get(p) or (f"transfer.xnli_languages: {m.group(1)}" if task == "xnli" and m else why)
            out.append((Path(p), "conllu" if p.suffix == ".conllu" else "xnli", reason))
    if problems is not None:
        problems += [msg + (f" (read by {'; '.join(whys)})" if whys else "") for msg, whys in failed.items()]
    return out


def check_inputs(P: Any) -> list[str]:
    """All problems of the data files a run with params ``P`` reads, in one fast pass.

    Every file of :func:`run_inputs` is scanned once (paths deduplicated; the reasons of a
    path read for several are joined) with its raw scanner: :func:`scan_conllu`,
    :func:`scan_xnli`, :func:`scan_text` (strict UTF-8 without byte-order mark, not empty,
    CoNLL-U column counts and IDs, the XNLI header, field counts and labels). Files that
    cannot be found are problems too.

    Cost, measured on this project's 2-core CPU machine (warm page cache): the whole
    bundle scans in 0.7 s (34 treebank files, 69 MB: 0.55 s; 30 XNLI files, 29 MB: 0.10 s;
    25 text files, 18 MB: 0.02 s); ``params/tiny-lab.yaml`` (63 files, 90 MB) in 0.52 s,
    plus about 1 s on the first call to import :mod:`xalign.data`, :mod:`xalign.lab` and
    :mod:`xalign.stages.transfer` (torch, pandas).

    Returns:
        One line per problem, each starting with the file (``<file>: line <n>: <problem>``)
        and ending `` (read by <params key: value>)``; ``[]``: every input is fine.
    """
    problems: list[str] = []
    try:
        entries = run_inputs(P, problems)
    except FileNotFoundError as e:  # no data root
        return [str(e)]
    why: dict[Path, tuple[str, list[str]]] = {}
    for path, kind, reason in entries:
        reasons = why.setdefault(path, (kind, []))[1]
        if reason not in reasons:
            reasons.append(reason)
    for path, (kind, reasons) in why.items():
        problems += [f"{p} (read by {'; '.join(reasons)})" for p in SCANNERS[kind](path)]
    return problems
