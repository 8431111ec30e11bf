"""Defensive reading of input files (xalign.inputs): every reader and every preflight
scanner turns a bad file into one line naming the file and line.

Bad files are planted in tmp_path (a real bundle file is read and corrupted where that is
the point); nothing from the data bundle is copied into the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from xalign import data as D
from xalign import inputs, lab
from xalign.errors import InputError
from xalign.params import load_params
from xalign.transfer import XnliTsvStream

REPO = Path(__file__).resolve().parents[1]
TINY_LAB = REPO / "params" / "tiny-lab.yaml"


# ---- planted files -----------------------------------------------------------------------

def _conllu_sentence(k: int, form: str = "house") -> str:
    return (f"# sent_id = s{k}\n# text = the {form}\n"
            f"1\tthe\tthe\tDET\t_\tDefinite=Def\t2\tdet\t_\t_\n"
            f"2\t{form}\t{form}\tNOUN\t_\tNumber=Sing\t0\troot\t_\t_\n\n")


#: 300 ASCII sentences (beyond the text decoder's first chunks), then one with "é".
CONLLU = "".join(_conllu_sentence(k) for k in range(300)) + _conllu_sentence(300, "café")
XNLI = ("premise\thypothesis\tlabel\n" + "".join(f"p{k}\th{k}\tneutral\n" for k in range(1000))
        + "Il a bu un café\tIl a bu\tentailment\n")
TEXT = "".join(f"line {k}\n" for k in range(1500)) + "un café\n"


def _latin1(text: str) -> tuple[bytes, int, int]:
    """``text`` in Latin-1, with the line and byte offset of its first non-ASCII character."""
    i = next(k for k, c in enumerate(text) if ord(c) > 127)
    return text.encode("latin-1"), text.count("\n", 0, i) + 1, len(text[:i].encode("latin-1"))


def _plant(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _planted_xnli(tmp_path: Path, content: bytes | str) -> Path:
    return _plant(tmp_path / "xnli" / "dev-xx.tsv", content)


def _planted_text(tmp_path: Path, content: bytes | str) -> Path:
    return _plant(tmp_path / "text" / "tatoeba" / "xx.txt", content)


# each kind's readers and its scanner: name -> (where to plant, what to call on the path)
def _scan(scanner):
    def call(path: Path) -> None:
        problems = scanner(path)
        assert len(problems) == 1, problems
        raise InputError(path, problems[0])  # compared as the readers' errors are
    return call


READERS = {
    "conllu": (lambda tmp, c: _plant(tmp / "xx-ud-dev.conllu", c), {
        "read_conllu": D.read_conllu,
        "count_sentences": D.count_sentences,
        "scan_conllu": _scan(inputs.scan_conllu)}),
    "xnli": (_planted_xnli, {
        "read_xnli": lambda p: D.read_xnli(p.parent.parent, "dev", "xx"),
        "XnliTsvStream": XnliTsvStream,
        "scan_xnli": _scan(inputs.scan_xnli)}),
    "text": (_planted_text, {
        "build_corpus": lambda p: lab.build_corpus(p.parents[2], ["xx"], sources=("tatoeba",)),
        "scan_text": _scan(inputs.scan_text)}),
}
GOOD = {"conllu": CONLLU, "xnli": XNLI, "text": TEXT}
CASES = [(kind, name) for kind, (_, readers) in READERS.items() for name in readers]


def _problem(tmp_path: Path, kind: str, name: str, content: bytes | str) -> tuple[Path, str]:
    """Plant ``content`` for ``kind``, run reader ``name`` on it; (file, the one-line error)."""
    plant, readers = READERS[kind]
    path = plant(tmp_path, content)
    with pytest.raises(InputError) as e:
        readers[name](path)
    msg = str(e.value)
    if name.startswith("scan_"):  # the scanner's line itself, without the wrapper's prefix
        msg = msg[len(f"{path}: "):]
    return path, msg


def _assert_names(msg: str, path: Path, line: int | None, *parts: str) -> None:
    assert "\n" not in msg, msg
    assert msg.startswith(f"{path}: " if line is None else f"{path}: line {line}: "), msg
    for p in parts:
        assert p in msg, (p, msg)


# ---- encoding, byte-order marks, empty files: every reader and scanner -------------------

@pytest.mark.parametrize("kind, name", CASES)
def test_good_file_is_read(tmp_path, kind, name):
    plant, readers = READERS[kind]
    path = plant(tmp_path, GOOD[kind])
    if name.startswith("scan_"):
        assert getattr(inputs, name)(path) == []
    else:
        readers[name](path)


@pytest.mark.parametrize("kind, name", CASES)
def test_latin1_names_file_line_byte_and_offset(tmp_path, kind, name):
    content, line, offset = _latin1(GOOD[kind])
    assert line > 100 and offset > 8192  # past the first chunk the text decoder reads
    path, msg = _problem(tmp_path, kind, name, content)
    _assert_names(msg, path, line, f"not UTF-8 (byte 0xe9 at offset {offset};", "save the file as UTF-8")


@pytest.mark.parametrize("kind, name", CASES)
def test_utf8_bom_is_rejected_at_line_1(tmp_path, kind, name):
    path, msg = _problem(tmp_path, kind, name, "\ufeff" + GOOD[kind])
    _assert_names(msg, path, 1, "starts with a UTF-8 byte-order mark",
                  "save the file as UTF-8 without a byte-order mark")


@pytest.mark.parametrize("codec, mark", [("utf-16-le", "UTF-16 LE"), ("utf-16-be", "UTF-16 BE"),
                                         ("utf-32-le", "UTF-32 LE")])
@pytest.mark.parametrize("kind, name", CASES)
def test_utf16_and_utf32_files_are_rejected(tmp_path, kind, name, codec, mark):
    path, msg = _problem(tmp_path, kind, name, ("\ufeff" + GOOD[kind]).encode(codec))
    _assert_names(msg, path, 1, f"starts with a {mark} byte-order mark")


@pytest.mark.parametrize("kind, name", CASES)
def test_utf16_without_bom_is_caught_by_its_nul_bytes(tmp_path, kind, name):
    path, msg = _problem(tmp_path, kind, name, GOOD[kind].encode("utf-16-le"))
    _assert_names(msg, path, 1, "contains a NUL byte")


@pytest.mark.parametrize("content", ["", "\n\n\n"])
@pytest.mark.parametrize("kind, name", CASES)
def test_empty_file(tmp_path, kind, name, content):
    path, msg = _problem(tmp_path, kind, name, content)
    expected = {"conllu": "empty file (no sentences)",
                "xnli": "empty file (no header premise<TAB>hypothesis<TAB>label, no rows)",
                "text": "empty file (no text lines)"}
    _assert_names(msg, path, None, expected[kind])


@pytest.mark.parametrize("kind, name", CASES)
def test_missing_file(tmp_path, kind, name):
    plant, readers = READERS[kind]
    path = plant(tmp_path, GOOD[kind])
    path.unlink()
    if name.startswith("scan_"):
        assert getattr(inputs, name)(path) == [f"{path}: file not found"]
        return
    if name == "build_corpus":  # a missing text file is normal (PAN-X has no Catalan): no text for xx
        with pytest.raises(ValueError, match=r"no text for 'xx'"):
            readers[name](path)
        return
    with pytest.raises(FileNotFoundError) as e:
        readers[name](path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# ---- XNLI rows ---------------------------------------------------------------------------

XNLI_NAMES = list(READERS["xnli"][1])


@pytest.mark.parametrize("name", XNLI_NAMES)
def test_xnli_header_only(tmp_path, name):
    path, msg = _problem(tmp_path, "xnli", name, "premise\thypothesis\tlabel\n")
    _assert_names(msg, path, None, "no XNLI rows (the file has only its header)")


@pytest.mark.parametrize("name", XNLI_NAMES)
def test_xnli_wrong_header(tmp_path, name):
    path, msg = _problem(tmp_path, "xnli", name, "sentence1\tsentence2\tgold_label\na\tb\tneutral\n")
    _assert_names(msg, path, 1, "header must be premise<TAB>hypothesis<TAB>label, found ['sentence1'")


@pytest.mark.parametrize("row, problem", [
    ("a premise\ta hypothesis", "expected 3 tab-separated fields premise, hypothesis, label; found 2"),
    ("a\tb\tneutral\textra", "expected 3 tab-separated fields premise, hypothesis, label; found 4"),
    ("a premise\ta hypothesis\tmaybe", "label 'maybe' not in ['entailment', 'neutral', 'contradiction']"),
])
@pytest.mark.parametrize("name", XNLI_NAMES)
def test_xnli_bad_row_names_its_line(tmp_path, name, row, problem):
    lines = XNLI.splitlines(keepends=True)
    lines.insert(57, row + "\n")  # line 58 of the file
    path, msg = _problem(tmp_path, "xnli", name, "".join(lines))
    _assert_names(msg, path, 58, problem)


def test_xnli_two_fields_was_accepted_as_an_empty_label_before(tmp_path):
    """The former pandas reader read a 2-field row as label '' (and only the label check
    caught it, or with index inference a 4-field first row shifted every column)."""
    _planted_xnli(tmp_path, "premise\thypothesis\tlabel\na\tb\tneutral\nc\td\n")
    with pytest.raises(InputError, match=r"dev-xx\.tsv: line 3: expected 3 tab-separated fields .* found 2$"):
        D.read_xnli(tmp_path, "dev", "xx")
    _planted_xnli(tmp_path, "premise\thypothesis\tlabel\na\tb\tneutral\tx\n")
    with pytest.raises(InputError, match=r"line 2: .*found 4$"):
        D.read_xnli(tmp_path, "dev", "xx")


def test_read_xnli_max_rows_reads_only_the_rows_kept(tmp_path):
    lines = XNLI.splitlines(keepends=True)
    lines.insert(57, "bad row\n")
    _planted_xnli(tmp_path, "".join(lines))
    assert D.read_xnli(tmp_path, "dev", "xx", max_rows=50).premise.tolist() == [f"p{k}" for k in range(50)]
    with pytest.raises(InputError, match="line 58"):
        D.read_xnli(tmp_path, "dev", "xx", max_rows=60)


def test_xnli_scan_reports_the_first_problems(tmp_path):
    rows = XNLI.splitlines(keepends=True)
    for k in (10, 20, 30, 40):
        rows[k] = "x\ty\n"
    problems = inputs.scan_xnli(_planted_xnli(tmp_path, "".join(rows)))
    assert [p.split(": ")[1] for p in problems] == ["line 11", "line 21", "line 31"]  # MAX_PROBLEMS = 3


def test_xnli_blank_lines_are_skipped(tmp_path):
    path = _planted_xnli(tmp_path, "premise\thypothesis\tlabel\n\na\tb\tneutral\n\n")
    assert inputs.scan_xnli(path) == []
    assert D.read_xnli(tmp_path, "dev", "xx").label.tolist() == ["neutral"]
    assert len(XnliTsvStream(path)) == 1


# ---- CoNLL-U lines -----------------------------------------------------------------------

def _word_line(text: str, k: int) -> int:
    """1-based number of the k-th word line (counting from 0) of ``text``."""
    lines = text.split("\n")
    return [i for i, x in enumerate(lines, 1) if x and not x.startswith("#")][k]


@pytest.mark.parametrize("name", ["read_conllu", "scan_conllu"])
def test_conllu_nine_columns(tmp_path, name):
    lines = CONLLU.split("\n")
    n = _word_line(CONLLU, 41)
    lines[n - 1] = lines[n - 1].rsplit("\t", 1)[0]
    path, msg = _problem(tmp_path, "conllu", name, "\n".join(lines))
    _assert_names(msg, path, n, "malformed CoNLL-U line (expected 10 tab-separated columns, found 9)")


@pytest.mark.parametrize("name", ["read_conllu", "scan_conllu"])
def test_conllu_truncated_mid_line(tmp_path, name):
    n = _word_line(CONLLU, 101)
    start = sum(len(x) + 1 for x in CONLLU.split("\n")[:n - 1])
    cut = CONLLU[:start + len("2\thouse\thou")]  # the file ends in the middle of a word line
    path, msg = _problem(tmp_path, "conllu", name, cut)
    _assert_names(msg, path, n, "malformed CoNLL-U line (expected 10 tab-separated columns, found 3)")


def test_conllu_scan_bad_id_and_first_problems(tmp_path):
    lines = CONLLU.split("\n")
    bad = [_word_line(CONLLU, k) for k in (3, 5, 7, 9)]
    lines[bad[0] - 1] = "x" + lines[bad[0] - 1][1:]
    for n in bad[1:]:
        lines[n - 1] = lines[n - 1].replace("\t", " ", 1)
    problems = inputs.scan_conllu(_plant(tmp_path / "xx-ud-dev.conllu", "\n".join(lines)))
    assert len(problems) == 3  # MAX_PROBLEMS
    assert f"line {bad[0]}: malformed CoNLL-U line (ID 'x' is not an integer" in problems[0]
    assert f"line {bad[1]}: malformed CoNLL-U line (expected 10 tab-separated columns, found 9)" in problems[1]
    assert f"line {bad[2]}:" in problems[2]


def test_conllu_scan_accepts_ranges_empty_nodes_and_crlf(tmp_path):
    text = ("# sent_id = a\n1-2\tdel\t_\t_\t_\t_\t_\t_\t_\t_\n1\tde\tde\tADP\t_\t_\t0\troot\t_\t_\n"
            "2\tel\tel\tDET\t_\t_\t1\tdet\t_\t_\n2.1\tx\tx\tX\t_\t_\t_\t_\t1:dep\t_\n\n")
    assert inputs.scan_conllu(_plant(tmp_path / "a-ud-dev.conllu", text)) == []
    assert inputs.scan_conllu(_plant(tmp_path / "b-ud-dev.conllu", text.replace("\n", "\r\n"))) == []


def test_real_treebanks_scan_clean(data_root):
    files = sorted(data_root.glob("ud/*/*-ud-*.conllu"))
    assert len(files) >= 29
    assert [p for f in files for p in inputs.scan_conllu(f)] == []


# ---- which files a run reads, and check_inputs -------------------------------------------

def test_run_inputs_of_tiny_lab(data_root):
    P = load_params(TINY_LAB)
    entries = inputs.run_inputs(P)
    by_path: dict[Path, set[str]] = {}
    for path, kind, why in entries:
        assert kind == {".conllu": "conllu", ".tsv": "xnli", ".txt": "text"}[path.suffix]
        by_path.setdefault(path, set()).add(why)
    fr_dev = data_root / "ud" / "UD_French-GSD" / "fr-ud-dev.conllu"
    assert by_path[fr_dev] == {"data.languages: fr", "pretrain.text_sources: ud", "transfer.tasks: pos"}
    assert by_path[data_root / "xnli" / "test-ur.tsv"] == {"transfer.xnli_languages: ur"}
    assert by_path[data_root / "xnli" / "dev-en.tsv"] == {"transfer.tasks: xnli"}
    assert by_path[data_root / "text" / "tatoeba" / "ca.txt"] == {"pretrain.text_sources: tatoeba"}
    assert data_root / "text" / "panx" / "ca.txt" not in by_path  # PAN-X has no Catalan: not read
    texts = [p for p in by_path if p.suffix == ".txt"]
    assert len(texts) == 2 * 13 - 1
    assert sorted(p for p in by_path if p.suffix == ".tsv") == sorted(
        [data_root / "xnli" / "dev-en.tsv"] + [data_root / "xnli" / f"test-{l}.tsv" for l in P.transfer.xnli_languages])
    # without the lab, no text files
    other = load_params(TINY_LAB, overrides={"pretrain.enabled": False})
    assert not [e for e in inputs.run_inputs(other) if e[1] == "text" or e[2].startswith("pretrain")]


def test_check_inputs_tiny_lab_on_the_real_data_is_clean():
    assert inputs.check_inputs(load_params(TINY_LAB)) == []


def test_check_inputs_reports_each_bad_file_once(mirrored_data):
    root = mirrored_data
    # an XNLI test file with one row cut to two fields
    ur = root / "xnli" / "test-ur.tsv"
    lines = ur.read_text(encoding="utf-8").split("\n")
    lines[1233] = "\t".join(lines[1233].split("\t")[:2])
    ur.unlink()
    ur.write_text("\n".join(lines), encoding="utf-8")
    # a treebank file saved as Latin-1
    fr = root / "ud" / "UD_French-GSD" / "fr-ud-dev.conllu"
    text = fr.read_text(encoding="utf-8")
    i = next(k for k, c in enumerate(text) if 127 < ord(c) < 256)
    fr.unlink()
    fr.write_bytes(text.encode("latin-1", errors="replace"))
    offset, line = len(text[:i].encode("latin-1", errors="replace")), text.count("\n", 0, i) + 1

    problems = inputs.check_inputs(load_params(TINY_LAB, overrides={"data_root": str(root)}))
    assert len(problems) == 2, problems
    fr_msg, ur_msg = sorted(problems)  # ud/... before xnli/...
    _assert_names(fr_msg, fr, line, f"not UTF-8 (byte 0x{ord(text[i]):02x} at offset {offset};",
                  "(read by data.languages: fr; pretrain.text_sources: ud; transfer.tasks: pos)")
    _assert_names(ur_msg, ur, 1234, "expected 3 tab-separated fields premise, hypothesis, label; found 2",
                  "(read by transfer.xnli_languages: ur)")


def test_check_inputs_reports_missing_files(mirrored_data):
    root = mirrored_data
    for f in (root / "ud" / "UD_Tamil-TTB").iterdir():
        f.unlink()
    (root / "ud" / "UD_Tamil-TTB").rmdir()
    (root / "xnli" / "test-vi.tsv").unlink()
    (root / "text" / "tatoeba" / "ca.txt").unlink()  # Catalan keeps its UD text: not a problem
    P = load_params(TINY_LAB, overrides={"data_root": str(root)})
    problems = inputs.check_inputs(P)
    assert len(problems) == 2, problems
    tamil = next(p for p in problems if "UD_Tamil-TTB" in p)
    _assert_names(tamil, root / "ud" / "UD_Tamil-TTB", None, "treebank folder not found",
                  "(read by data.languages: ta; pretrain.text_sources: ud; transfer.tasks: pos)")
    vi = next(p for p in problems if "test-vi" in p)
    _assert_names(vi, root / "xnli" / "test-vi.tsv", None, "file not found",
                  "(read by transfer.xnli_languages: vi)")
    with pytest.raises(FileNotFoundError, match="UD_Tamil-TTB"):
        inputs.run_inputs(P)
    # without UD text, a language whose only text file is gone has no text at all
    no_ud = load_params(TINY_LAB, overrides={"data_root": str(root), "pretrain.text_sources": ["tatoeba", "panx"]})
    ca = [p for p in inputs.check_inputs(no_ud) if "'ca'" in p]
    assert ca == [f"{root / 'text'}: no text file for 'ca' in sources ['tatoeba', 'panx'] "
                  "(read by pretrain.text_sources; data.languages)"]


def test_check_inputs_without_a_data_root(tmp_path):
    problems = inputs.check_inputs(load_params(TINY_LAB, overrides={"data_root": str(tmp_path / "nowhere")}))
    assert len(problems) == 1 and str(tmp_path / "nowhere") in problems[0] and "\n" not in problems[0]


def test_run_inputs_names_the_fetched_training_files(mirrored_data):
    root = mirrored_data
    _plant(root / "xnli" / "train-en.tsv", XNLI)
    _plant(root / "udpos" / "en-ud-train.conllu", CONLLU)
    P = load_params(TINY_LAB, overrides={"data_root": str(root), "transfer.xnli_train": "mnli",
                                         "transfer.pos_train": "xtreme"})
    entries = inputs.run_inputs(P)
    assert (root / "xnli" / "train-en.tsv", "xnli", "transfer.xnli_train: mnli") in entries
    assert (root / "udpos" / "en-ud-train.conllu", "conllu", "transfer.pos_train: xtreme") in entries
    assert inputs.check_inputs(P) == []
    (root / "xnli" / "train-en.tsv").write_text("premise\thypothesis\tlabel\na\tb\n", encoding="utf-8")
    assert inputs.check_inputs(P) == [f"{root / 'xnli' / 'train-en.tsv'}: line 2: expected 3 tab-separated fields "
                                      "premise, hypothesis, label; found 2 (read by transfer.xnli_train: mnli)"]
    (root / "xnli" / "train-en.tsv").unlink()
    problems = inputs.check_inputs(P)
    assert len(problems) == 1 and "train-en.tsv: MultiNLI 1.0 train not found" in problems[0], problems
    assert problems[0].endswith("(read by transfer.tasks: xnli)")
