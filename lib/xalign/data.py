"""Data preparation: UD treebanks -> UniMorph -> one labelled dataset per (language, attribute).

The method is that of Wang et al. (2024, Sec. 3), which follows Stańczak et al. (2022):
each language's UD v2.1 treebank is read (all splits pooled), every syntactic word's
UPOS + FEATS are converted to UniMorph features (McCarthy et al. 2018, see
:mod:`xalign.unimorph`), the words are re-split into train/dev/test *by lemma* (all forms
of a lemma fall in one split), and for each attribute (Number, Gender, POS, ...) only the
values occurring at least ``min_count`` times in every split are kept; an attribute with
fewer than two such values is skipped for that language.

The module also reads the other data the pipeline needs: XNLI dev/test (Conneau et al.
2018, XTREME's TSV files) and MultiNLI train in the same format, (word forms, UPOS)
sentences for the zero-shot POS transfer stage, and treebank sentences as pretraining
text for the tiny-model lab.

``python -m xalign.data fetch`` (:func:`main`, :mod:`xalign.fetch`) builds a data root
from the official archives (UD v2.1, XNLI 1.0, MultiNLI 1.0, XTREME's UD v2.5 English
POS data); missing-file errors name the fetch command that provides the file.

**Two values for one attribute.** Where a word's UniMorph features give one attribute two
or more values (the converter writes POS ``V`` and ``V.PTCP`` for English, Basque, Urdu
and Tamil participles, ``ADJ`` and ``V.PTCP`` for Spanish and Catalan participial
adjectives; UD ``Case=Acc,Dat`` becomes the disjunction ``{ACC/DAT}``), the word is left
out of that attribute's dataset (:func:`xalign.unimorph.attribute_values`) and counted in
the summary's ``n_multi_value``. The paper's code (Stańczak et al.'s ``utils/parser.py``,
``parse_unimorph_features``) also skips disjunctions, but of two plain values it keeps the
one written last; the converter writes its features in set order, which changes with
Python's string hash seed, so which POS such a participle got there varied from run to
run. That is the one difference. On the bundle's default treebanks (syntactic words) it
concerns POS only, except 51 Urdu Case disjunctions: 4,852 English (GUM) words, 4,394
Basque, 2,156 Urdu, 1,215 Spanish (AnCora), 1,211 Catalan, 1,092 Tamil, 196 Marathi, 141
Arabic (PUD), 1 Portuguese; none in French, Chinese, Hindi, Vietnamese. A multiword token
read as one surface word (``data.multiword_tokens: surface``) follows the paper's merge
rule exactly (:func:`merge_multiword_attributes`: an attribute carried by two of its words
is dropped, even with the same value).

Bad input raises an error with a one-line message naming the file (and line) and the problem.
"""

from __future__ import annotations

import csv
import io
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Iterator, Mapping, Sequence, TextIO

import conllu
import pandas as pd
from conllu.exceptions import ParseException

from xalign.errors import InputError
from xalign.inputs import CONLLU_EMPTY, TextLines, conllu_columns_problem
from xalign.progress import progress
from xalign.unimorph import ATTRIBUTES, UniMorphError, attribute_values, multi_value_attributes, to_unimorph

logger = logging.getLogger("xalign.data")

SPLITS: tuple[str, ...] = ("train", "dev", "test")
FETCH_COMMAND = "python -m xalign.data fetch"
UD_SOURCE = f"the official UD v2.1 release (fetch with `{FETCH_COMMAND} --only ud`)"
XNLI_SOURCE = f"XNLI 1.0 (Conneau et al. 2018) dev/test (fetch with `{FETCH_COMMAND} --only xnli`)"
MNLI_SOURCE = f"MultiNLI 1.0 train, the English XNLI training data (fetch with `{FETCH_COMMAND} --only mnli`)"
XNLI_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
XNLI_COLUMNS: tuple[str, ...] = ("premise", "hypothesis", "label")
#: Problems of an XNLI TSV without rows (:func:`read_xnli`, :class:`xalign.transfer.XnliTsvStream`,
#: :func:`xalign.inputs.scan_xnli`).
XNLI_EMPTY = "empty file (no header premise<TAB>hypothesis<TAB>label, no rows)"
XNLI_NO_ROWS = "no XNLI rows (the file has only its header)"


# ---------------------------------------------------------------------------------------
# Language registry
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LanguageInfo:
    """One of the paper's languages.

    Attributes:
        code: ISO 639-1 code used throughout the project (``"es"``).
        name: English name.
        treebank: default treebank folder under ``<data_root>/ud/`` (the bundle's primary one).
        unimorph_lang: language code passed to :func:`xalign.unimorph.to_unimorph`; codes
            without a language-specific ud-compatibility translator get the base one.
    """

    code: str
    name: str
    treebank: str
    unimorph_lang: str


_REGISTRY = [
    # The bundle's primary treebank per language (data README, section 1). Arabic and Hindi
    # use PUD (PADT/HDTB are absent); English uses GUM (has a train split; the paper's
    # UD_English = EWT is available as "UD_English-EWT"); Spanish uses AnCora (the paper's
    # UD_Spanish = GSD is available as "UD_Spanish-GSD").
    LanguageInfo("ar", "Arabic", "UD_Arabic-PUD", "ar"),
    LanguageInfo("eu", "Basque", "UD_Basque-BDT", "eu"),
    LanguageInfo("ca", "Catalan", "UD_Catalan-AnCora", "ca"),
    LanguageInfo("zh", "Chinese", "UD_Chinese-GSD", "zh"),
    LanguageInfo("en", "English", "UD_English-GUM", "en"),
    LanguageInfo("fr", "French", "UD_French-GSD", "fr"),
    LanguageInfo("hi", "Hindi", "UD_Hindi-PUD", "hi"),
    LanguageInfo("mr", "Marathi", "UD_Marathi-UFAL", "mr"),
    LanguageInfo("pt", "Portuguese", "UD_Portuguese-Bosque", "pt"),
    LanguageInfo("es", "Spanish", "UD_Spanish-AnCora", "es"),
    LanguageInfo("ta", "Tamil", "UD_Tamil-TTB", "ta"),
    LanguageInfo("ur", "Urdu", "UD_Urdu-UDTB", "ur"),
    LanguageInfo("vi", "Vietnamese", "UD_Vietnamese-VTB", "vi"),
]
#: ISO 639-1 code -> :class:`LanguageInfo` for the paper's 13 languages (read-only).
LANGUAGES: Mapping[str, LanguageInfo] = MappingProxyType({x.code: x for x in _REGISTRY})


def language_info(lang: str) -> LanguageInfo:
    """Registry entry of ``lang``; raises ValueError naming the code and the known ones."""
    try:
        return LANGUAGES[lang]
    except KeyError:
        raise ValueError(
            f"unknown language code {lang!r}; known: {', '.join(LANGUAGES)} "
            "(or pass treebank=<UD folder> explicitly)") from None


def find_treebank_files(data_root: str | Path, lang: str, treebank: str | None = None) -> dict[str, Path]:
    """The CoNLL-U split files of one language's treebank.

    Args:
        data_root: the data bundle (holds ``ud/``).
        lang: ISO 639-1 code of one of the 13 languages (any code if ``treebank`` is given).
        treebank: folder under ``<data_root>/ud/`` overriding the default (e.g. ``"UD_English-EWT"``).

    Returns:
        ``{"train"|"dev"|"test": path}`` for the splits present (``*-ud-<split>.conllu``),
        in train, dev, test order.

    Raises:
        ValueError: unknown ``lang`` without ``treebank``, or two files for one split.
        FileNotFoundError: the folder or all its split files are missing (names what is expected).
    """
    if treebank is None:
        treebank = language_info(lang).treebank
    folder = Path(data_root) / "ud" / treebank
    expected = f"{folder}/*-ud-{{train,dev,test}}.conllu"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: treebank folder not found; expected {expected} from {_ud_source(treebank)}")
    files: dict[str, Path] = {}
    for split in SPLITS:
        found = sorted(folder.glob(f"*-ud-{split}.conllu"))
        if len(found) > 1:
            raise ValueError(f"{folder}: several {split} files ({', '.join(p.name for p in found)}); keep one")
        if found:
            files[split] = found[0]
    if not files:
        raise FileNotFoundError(f"{folder}: no treebank split files; expected {expected} from {_ud_source(treebank)}")
    return files


def _ud_source(treebank: str) -> str:
    """Where a treebank folder comes from: UD v2.1, except GUM (not in v2.1; fetched from UD v2.5)."""
    if treebank == "UD_English-GUM":
        return f"UD v2.5 (GUM is not in UD v2.1; fetch with `{FETCH_COMMAND} --only udpos`)"
    return UD_SOURCE


# ---------------------------------------------------------------------------------------
# CoNLL-U reading
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Word:
    """One syntactic word (CoNLL-U line with an integer ID).

    ``feats`` is the raw FEATS column (``"_"`` if none); ``mwt_form`` is the surface form of
    the multiword token the word belongs to (``"del"`` for ``de`` + ``el``), else None;
    ``mwt_start`` is that token's first word ID (the ``4`` of range ``4-5``), else None.
    """

    form: str
    lemma: str
    upos: str
    feats: str
    mwt_form: str | None = None
    mwt_start: int | None = None


@dataclass(frozen=True)
class Sentence:
    """One treebank sentence: ``sent_id``, ``# text`` (or the forms joined by spaces), its
    syntactic words, and ``ud_split``, the treebank file it came from ("train"/"dev"/"test")."""

    sent_id: str
    text: str
    words: list[Word]
    ud_split: str = ""


class _TrackedLines:
    """A text file fed line by line to ``conllu.parse_incr``.

    Remembers the current sentence block (a maximal run of non-blank lines), its index and
    its first line number, so errors can name the line; with ``select``, only the blocks
    whose index is in it reach the parser (the others are skipped unparsed).
    """

    def __init__(self, f: TextIO, select: set[int] | None = None) -> None:
        self._f = f
        self._select = select
        self.lineno = 0
        self.block_idx = -1
        self.block_start = 0
        self.block: list[str] = []
        self._in_block = False
        self._keep = True

    def read(self, *args: object) -> str:  # parse_incr only checks that it exists
        return self._f.read(*args)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[str]:
        for line in self._f:
            self.lineno += 1
            if line.strip():
                if not self._in_block:
                    self._in_block = True
                    self.block_idx += 1
                    self.block, self.block_start = [], self.lineno
                    self._keep = self._select is None or self.block_idx in self._select
                if self._keep:
                    self.block.append(line)
                    yield line
            else:
                self._in_block = False
                yield line


def count_sentences(path: str | Path) -> int:
    """Number of sentence blocks (maximal runs of non-blank lines) in a CoNLL-U file, unparsed.

    Raises:
        InputError: not UTF-8, a byte-order mark (rejected), a NUL byte (file and line named,
            see :mod:`xalign.inputs`), or no sentence (``empty file (no sentences)``).
    """
    n, in_block = 0, False
    with TextLines(path) as f:
        for line in f:
            if line.strip():
                n += not in_block
                in_block = True
            else:
                in_block = False
    if n == 0:
        raise InputError(path, CONLLU_EMPTY)
    return n


def _raw(line: list[str], i: int) -> str:
    return line[i]


# Only the first six columns are parsed (HEAD, DEPREL, DEPS, MISC are not used; parsing
# them costs ~40% of the read time); every word line is still checked to have 10 columns.
_FIELDS = ("id", "form", "lemma", "upos", "xpos", "feats")
_FIELD_PARSERS = {"id": lambda line, i: conllu.parser.parse_id_value(line[i]), "xpos": _raw, "feats": _raw}


def _locate_error(path: Path, tracked: _TrackedLines, err: Exception) -> InputError:
    """Find the line of ``tracked.block`` that conllu rejects; one-line InputError."""
    for k, line in enumerate(tracked.block):
        text = line.rstrip("\r\n")
        if text.startswith("#"):
            continue
        try:
            conllu.parser.parse_line(text, _FIELDS, dict(_FIELD_PARSERS))
        except ParseException as e:
            return InputError(path, f"malformed CoNLL-U line ({e})", line=tracked.block_start + k)
    return InputError(path, f"malformed CoNLL-U sentence ({err})", line=tracked.block_start)


def _check_block(path: Path, tracked: _TrackedLines) -> None:
    for k, line in enumerate(tracked.block):
        if line.startswith("#"):
            continue
        problem = conllu_columns_problem(line)
        if problem:
            raise InputError(path, problem, line=tracked.block_start + k)


def read_conllu(path: str | Path, ud_split: str = "", select: set[int] | None = None) -> list[Sentence]:
    """Read one CoNLL-U file with ``conllu.parse_incr`` into :class:`Sentence` objects.

    Multiword-token range lines (``1-2``) and empty nodes (``8.1``) are not words: the
    syntactic words are kept, and a word inside a multiword token records its surface
    form in ``mwt_form``.

    Args:
        path: the ``.conllu`` file.
        ud_split: recorded in each ``Sentence.ud_split``.
        select: 0-based indices of the sentences to read (others are skipped unparsed,
            so their lines are not checked); None reads all.

    The file must be UTF-8 without a byte-order mark: a UTF-8 BOM (U+FEFF) or a UTF-16/32
    one is rejected (at line 1), not skipped.

    Raises:
        FileNotFoundError: the file does not exist.
        InputError (a ValueError): one line ``<file>: line <n>: <problem>``: a malformed line
            (``malformed CoNLL-U line (<problem>)``), not UTF-8 (``not UTF-8 (byte 0xe9 at
            offset 584; ...)`` at the line of that byte), a byte-order mark, a NUL byte, or,
            reading all sentences, a file without any (``empty file (no sentences)``).
    """
    path = Path(path)
    sentences: list[Sentence] = []
    with TextLines(path) as f:
        tracked = _TrackedLines(f, select)
        it = conllu.parse_incr(tracked, fields=_FIELDS, field_parsers=_FIELD_PARSERS)  # type: ignore[arg-type]
        while True:
            try:
                tokenlist = next(it)
            except StopIteration:
                break
            except ParseException as e:
                raise _locate_error(path, tracked, e) from None
            _check_block(path, tracked)
            sentences.append(_sentence(path, tracked, tokenlist, ud_split))
    if not sentences and select is None:
        raise InputError(path, CONLLU_EMPTY)
    return sentences


def _sentence(path: Path, tracked: _TrackedLines, tokenlist: conllu.TokenList, ud_split: str) -> Sentence:
    mwt: dict[int, tuple[str, int]] = {}
    words: list[Word] = []
    for tok in tokenlist:
        tid = tok["id"]
        if isinstance(tid, tuple):
            if tid[1] == "-":
                for i in range(tid[0], tid[2] + 1):
                    mwt[i] = (tok["form"], tid[0])
            continue  # range line or empty node
        if not isinstance(tid, int):
            raise InputError(path, "a word line without an ID", line=tracked.block_start)
        form, start = mwt.get(tid, (None, None))
        words.append(Word(tok["form"], tok["lemma"], tok["upos"], tok["feats"] or "_", form, start))
    meta = tokenlist.metadata
    sent_id = meta.get("sent_id") or f"{path.name}:{tracked.block_idx + 1}"
    text = meta.get("text") or " ".join(w.form for w in words)
    return Sentence(str(sent_id), str(text), words, ud_split)


def read_treebank(files: Mapping[str, Path], max_sentences: int | None = None, seed: int = 0) -> list[Sentence]:
    """All sentences of a treebank, splits pooled (train, dev, test order).

    The method pools each treebank's sentences and re-splits the words by lemma
    (:func:`split_by_lemma`), so the UD split only survives as ``Sentence.ud_split``.

    Args:
        files: ``{split: path}`` as from :func:`find_treebank_files`.
        max_sentences: if given and smaller than the pooled count, a uniform random sample
            of this many sentences, drawn with ``random.Random(seed)`` over the pooled
            sentence indices (deterministic) and kept in file order; only the sampled
            sentences are parsed.
        seed: sampling seed.

    Raises:
        ValueError: ``max_sentences < 1``, an unknown split name, or a malformed file.
    """
    if max_sentences is not None and max_sentences < 1:
        raise ValueError(f"max_sentences must be >= 1, got {max_sentences}")
    bad = sorted(set(files) - set(SPLITS))
    if bad:
        raise ValueError(f"unknown split names {bad}; expected some of {list(SPLITS)}")
    order = [s for s in SPLITS if s in files]
    select: dict[str, set[int] | None] = {s: None for s in order}
    if max_sentences is not None:
        counts = [count_sentences(files[s]) for s in order]
        total = sum(counts)
        if max_sentences < total:
            chosen = random.Random(seed).sample(range(total), max_sentences)
            offset = 0
            for s, n in zip(order, counts):
                select[s] = {i - offset for i in chosen if offset <= i < offset + n}
                offset += n
    sentences: list[Sentence] = []
    for split in order:
        if select[split] != set():
            sentences.extend(read_conllu(files[split], ud_split=split, select=select[split]))
    return sentences


# ---------------------------------------------------------------------------------------
# Words table and datasets
# ---------------------------------------------------------------------------------------
WORD_COLUMNS = ["language", "sent_idx", "word_idx", "form", "lemma", "upos", "feats",
                "unimorph", "mwt_form", "sent_id"]


MULTIWORD_MODES = ("syntactic", "surface")


def merge_multiword_attributes(parts: Sequence[frozenset[str]]) -> frozenset[str]:
    """UniMorph features of a multiword token from those of its syntactic words.

    The rule of Stańczak et al.'s ``preprocess_treebank.py`` (``merge_attributes``), which the
    paper's code used: an attribute is kept, with its value, only if exactly one of the
    syntactic words carries it; an attribute carried by two or more is dropped, even with
    the same value (so ``del`` = ``de`` (ADP) + ``el`` (DET, Masc, Sing) has Gender MASC and
    Number SG but no POS). Features outside the eleven attributes are dropped.

    Args:
        parts: each syntactic word's UniMorph features (:func:`xalign.unimorph.to_unimorph`).

    Returns:
        The merged features, one per kept attribute, in :func:`attribute_values`' spelling.
    """
    carriers: dict[str, list[str]] = {}
    for tags in parts:
        for attr, value in attribute_values(tags).items():
            carriers.setdefault(attr, []).append(value)
    return frozenset(v[0] for v in carriers.values() if len(v) == 1)


def words_table(lang: str, sentences: Sequence[Sentence], multiword: str = "syntactic") -> pd.DataFrame:
    """One row per word, with its UniMorph features.

    Args:
        lang: ISO 639-1 code; selects the ud-compatibility translator (an unregistered code
            is passed to the converter as is, i.e. usually the base translator).
        sentences: as from :func:`read_treebank`.
        multiword: how multiword tokens (UD range lines, Spanish ``del`` = ``de`` + ``el``)
            become rows (``data.multiword_tokens`` in the run params):

            * ``"syntactic"`` (default): one row per syntactic word (``de``, ``el``), each
              with its own FEATS, and ``mwt_form`` = ``"del"``;
            * ``"surface"``: one row for the surface token, as the paper's code (Stańczak
              et al.'s ``preprocess_treebank.py``) did: ``form`` = ``"del"``, ``lemma``,
              ``upos`` and ``feats`` the syntactic words' joined with ``+`` (``"de+el"``,
              ``"ADP+DET"``), ``unimorph`` from :func:`merge_multiword_attributes`,
              ``mwt_form`` = ``"del"``. The model then reads the surface text.

    Returns:
        DataFrame with columns ``language, sent_idx`` (0..n-1 in list order), ``word_idx``
        (0-based position among the sentence's rows), ``form, lemma, upos, feats`` (raw UD
        columns), ``unimorph`` (``;``-joined sorted UniMorph features, ``"_"`` if none),
        ``mwt_form`` (surface multiword token or None) and ``sent_id``.

    Raises:
        ValueError: the converter fails on a word (names sentence id, word and FEATS), or an
            unknown ``multiword``.
    """
    if multiword not in MULTIWORD_MODES:
        raise ValueError(f"data.multiword_tokens: unknown mode {multiword!r}; use one of {list(MULTIWORD_MODES)}")
    um_lang = LANGUAGES[lang].unimorph_lang if lang in LANGUAGES else lang
    rows: dict[str, list] = {c: [] for c in WORD_COLUMNS}

    def add(si: int, wi: int, sent: Sentence, form, lemma, upos, feats, um, mwt_form) -> None:
        for col, v in zip(WORD_COLUMNS, (lang, si, wi, form, lemma, upos, feats, ";".join(sorted(um)) or "_",
                                         mwt_form, sent.sent_id)):
            rows[col].append(v)

    for si, sent in enumerate(sentences):
        ums = []
        for wi, w in enumerate(sent.words):
            try:
                ums.append(to_unimorph(um_lang, w.upos, w.feats, w.form, w.lemma))
            except UniMorphError as e:
                raise ValueError(f"{lang} sentence {sent.sent_id} word {wi + 1} ({w.form!r}): {e}") from None
        if multiword == "syntactic":
            for wi, (w, um) in enumerate(zip(sent.words, ums)):
                add(si, wi, sent, w.form, w.lemma, w.upos, w.feats, um, w.mwt_form)
            continue
        out, i = 0, 0
        while i < len(sent.words):
            w, j = sent.words[i], i + 1
            if w.mwt_start is None:
                add(si, out, sent, w.form, w.lemma, w.upos, w.feats, ums[i], None)
            else:  # the syntactic words of one multiword token -> one row for its surface form
                while j < len(sent.words) and sent.words[j].mwt_start == w.mwt_start:
                    j += 1
                part = sent.words[i:j]
                add(si, out, sent, w.mwt_form, "+".join(p.lemma for p in part), "+".join(p.upos for p in part),
                    "+".join(p.feats for p in part), merge_multiword_attributes(ums[i:j]), w.mwt_form)
            out, i = out + 1, j
    df = pd.DataFrame(rows, columns=WORD_COLUMNS)
    df["sent_idx"] = df["sent_idx"].astype("int64")
    df["word_idx"] = df["word_idx"].astype("int64")
    return df


def load_words(data_root: str | Path, languages: Iterable[str], treebanks: Mapping[str, str] | None = None,
               max_sentences_per_language: int | None = None, seed: int = 0,
               multiword: str = "syntactic") -> pd.DataFrame:
    """:func:`words_table` of several languages, concatenated (``sent_idx`` restarts per language).

    Each language's treebank is found with :func:`find_treebank_files` (``treebanks``
    overrides the folder per language) and read with :func:`read_treebank`; ``multiword``
    as in :func:`words_table`.
    """
    treebanks = treebanks or {}
    tables = []
    for lang in progress(list(languages), desc="UD -> UniMorph"):
        files = find_treebank_files(data_root, lang, treebanks.get(lang))
        sentences = read_treebank(files, max_sentences_per_language, seed)
        tables.append(words_table(lang, sentences, multiword))
    if not tables:
        return pd.DataFrame({c: [] for c in WORD_COLUMNS})
    return pd.concat(tables, ignore_index=True)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(x) for x in fractions)
    if len(fr) != 3 or any(x < 0 for x in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    return fr  # type: ignore[return-value]


def split_by_lemma(lemmas: Iterable[str], fractions: Sequence[float] = (0.8, 0.1, 0.1),
                   seed: int = 0) -> dict[str, str]:
    """Assign each distinct lemma to "train", "dev" or "test" (the method's lemma-disjoint split).

    The distinct lemmas are sorted (so the result does not depend on input order or on
    Python's hash seed), shuffled with ``random.Random(seed)``, and cut by fractions of the
    *number of lemmas*: the first ``round(f_train * n)`` go to train, the next
    ``round(f_dev * n)`` to dev, the rest to test. All forms of a lemma therefore fall in
    one split; splits hold fractions of lemmas, not of word tokens.

    Raises:
        ValueError: ``fractions`` are not three non-negative numbers summing to 1.
    """
    f_train, f_dev, _ = _check_fractions(fractions)
    distinct = sorted(set(lemmas))
    random.Random(seed).shuffle(distinct)
    n = len(distinct)
    n_train = int(round(f_train * n))
    n_dev = min(int(round(f_dev * n)), n - n_train)
    out = {lem: "train" for lem in distinct[:n_train]}
    out.update({lem: "dev" for lem in distinct[n_train:n_train + n_dev]})
    out.update({lem: "test" for lem in distinct[n_train + n_dev:]})
    return out


def split_key(words: pd.DataFrame) -> pd.Series:
    """What :func:`build_datasets` splits a language's words by: the LEMMA, or the FORM where
    the treebank has no lemma (``_``; e.g. all of Hindi-PUD).

    Args:
        words: a words table (:func:`words_table`; needs ``lemma`` and ``form``), N rows.

    Returns:
        (N,) string Series aligned with ``words``, the input of :func:`split_by_lemma`.
    """
    lemma = words["lemma"].astype("string").fillna("_")
    return lemma.where(lemma != "_", words["form"].astype("string"))


LABEL_COLUMNS = ["language", "attribute", "sent_idx", "word_idx", "value", "split"]
SUMMARY_COLUMNS = ["language", "attribute", "status", "reason", "n_values", "values",
                   "n_train", "n_dev", "n_test", "n_multi_value"]


def build_datasets(words: pd.DataFrame, attributes: Sequence[str], min_count: int = 20,
                   fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                   sources: Mapping[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One labelled dataset per (language, attribute), split by lemma (Stańczak et al. 2022).

    For each language one lemma split (:func:`split_by_lemma`, shared by all attributes) is
    made; words whose LEMMA is ``_`` are split by their form. For each attribute the words
    carrying it (:func:`xalign.unimorph.attribute_values`) are taken, and a value is kept
    only if it occurs at least ``min_count`` times in *every* split; with fewer than two
    values left the attribute is skipped for that language (logged at INFO on logger
    ``xalign.data`` with its reason).

    Args:
        words: as from :func:`words_table` / :func:`load_words` (needs ``language, sent_idx,
            word_idx, form, lemma, unimorph``).
        attributes: subset of ``xalign.unimorph.ATTRIBUTES``.
        min_count: minimum count of a value in each split.
        fractions: train/dev/test fractions of lemmas.
        seed: lemma-split seed.
        sources: language -> treebank name, named in skip reasons (e.g. a treebank whose
            FEATS never carry the attribute).

    Returns:
        ``(labels, summary)``. ``labels``: columns ``language, attribute, sent_idx,
        word_idx, value, split``, one row per labelled word. ``summary``: one row per
        (language, attribute) with ``status`` ("kept"/"skipped"), ``reason`` (empty when
        kept), ``n_values``/``values`` (values that passed the filter, comma-joined),
        ``n_train, n_dev, n_test`` (words with such values per split) and
        ``n_multi_value``: words of the language left out of the attribute because it takes
        two or more values on them (:func:`xalign.unimorph.multi_value_attributes`; see
        "Two values for one attribute" in the module docstring).

    Raises:
        ValueError: unknown attribute, missing column, empty ``words``, or ``min_count < 1``.
    """
    bad = [a for a in attributes if a not in ATTRIBUTES]
    if bad:
        raise ValueError(f"unknown attributes {bad}; known: {list(ATTRIBUTES)}")
    missing = [c for c in ("language", "sent_idx", "word_idx", "form", "lemma", "unimorph") if c not in words]
    if missing:
        raise ValueError(f"words table lacks columns {missing}")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if words.empty:
        raise ValueError("words table is empty: no treebank words to build datasets from")
    _check_fractions(fractions)

    labels: list[pd.DataFrame] = []
    summary: list[dict] = []
    parsed: dict[str, dict[str, str]] = {}
    multi: dict[str, frozenset[str]] = {}
    for lang in pd.unique(words["language"]):
        sub = words[words["language"] == lang]
        key = split_key(sub)
        split = key.map(split_by_lemma(key.tolist(), fractions, seed))
        uniq = pd.unique(sub["unimorph"])
        for s in uniq:
            if s not in parsed:
                parsed[s] = attribute_values(frozenset(str(s).split(";")))
                multi[s] = multi_value_attributes(frozenset(str(s).split(";")))
        n_by_tags = sub["unimorph"].value_counts()
        for attr in attributes:
            value = sub["unimorph"].map({s: parsed[s].get(attr) for s in uniq})
            has = value.notna()
            n_multi = int(sum(n for s, n in n_by_tags.items() if attr in multi[s]))
            row = {"language": lang, "attribute": attr, "n_multi_value": n_multi}
            if not has.any():
                src = (sources or {}).get(lang)
                _skip(summary, row, f"no words carry {attr}" + (f" (no FEATS for it in {src})" if src else "")
                      + (f" with a single value ({n_multi} carry several)" if n_multi else ""))
                continue
            counts = (pd.crosstab(value[has], split[has])
                      .reindex(columns=list(SPLITS), fill_value=0).sort_index())
            ok = counts[(counts >= min_count).all(axis=1)]
            kept = list(ok.index)
            n_split = {f"n_{s}": int(ok[s].sum()) for s in SPLITS}
            row.update(n_values=len(kept), values=",".join(kept), **n_split)
            if len(kept) < 2:
                dropped = counts.drop(index=kept).sort_values("train", ascending=False)
                detail = ", ".join(f"{v} {r.train}/{r.dev}/{r.test}" for v, r in dropped.head(5).iterrows())
                if len(dropped) > 5:
                    detail += f", +{len(dropped) - 5} more"
                _skip(summary, row,
                      f"{len(kept)} value{'s' if len(kept) != 1 else ''} left after min_count={min_count} "
                      f"filter: {', '.join(kept) or 'none'}"
                      + (f" (dropped, train/dev/test counts: {detail})" if detail else ""))
                continue
            sel = has & value.isin(kept)
            labels.append(pd.DataFrame({
                "language": lang, "attribute": attr,
                "sent_idx": sub.loc[sel, "sent_idx"].to_numpy(), "word_idx": sub.loc[sel, "word_idx"].to_numpy(),
                "value": value[sel].to_numpy(), "split": split[sel].astype(str).to_numpy()}))
            summary.append({**row, "status": "kept", "reason": ""})
            logger.debug("%s %s kept: %s", lang, attr, row["values"])
    out = (pd.concat(labels, ignore_index=True) if labels
           else pd.DataFrame({c: pd.Series(dtype="int64" if c.endswith("_idx") else object)
                              for c in LABEL_COLUMNS}))
    return out[LABEL_COLUMNS], pd.DataFrame(summary, columns=SUMMARY_COLUMNS)


def _skip(summary: list[dict], row: dict, reason: str) -> None:
    full = {"n_values": 0, "values": "", "n_train": 0, "n_dev": 0, "n_test": 0, **row,
            "status": "skipped", "reason": reason}
    summary.append(full)
    logger.debug("skipped %s %s: %s", row["language"], row["attribute"], reason)  # counted in the stage line


# ---------------------------------------------------------------------------------------
# Transfer-stage data and pretraining text
# ---------------------------------------------------------------------------------------
def xnli_problem(fields: Sequence[str], header: bool = False) -> str | None:
    """What is wrong with one line of an XNLI TSV split at tabs (None: nothing).

    The header (``header=True``) must be exactly ``premise, hypothesis, label``; a row must
    have 3 fields and a label in :data:`XNLI_LABELS`. The one rule of :func:`read_xnli`,
    :class:`xalign.transfer.XnliTsvStream` and :func:`xalign.inputs.scan_xnli`.
    """
    if header:
        if tuple(fields) != XNLI_COLUMNS:
            return f"header must be premise<TAB>hypothesis<TAB>label, found {list(fields)}"
        return None
    if len(fields) != 3:
        return f"expected 3 tab-separated fields premise, hypothesis, label; found {len(fields)}"
    if fields[2] not in XNLI_LABELS:
        return f"label {fields[2]!r} not in {list(XNLI_LABELS)}"
    return None


def read_xnli(data_root: str | Path, split: str, lang: str, max_rows: int | None = None) -> pd.DataFrame:
    """XNLI pairs of one language and split: ``<data_root>/xnli/<split>-<lang>.tsv``.

    Rows are parallel across languages (row i is the same item), so ``max_rows`` keeps the
    first rows rather than a random sample (only the lines up to the last row kept are
    read and checked). ``split="train"``, ``lang="en"`` reads ``xnli/train-en.tsv``,
    MultiNLI 1.0 train, written by ``python -m xalign.data fetch --only mnli``.

    The file is read as strict UTF-8 (a byte-order mark is rejected, see
    :mod:`xalign.inputs`); every line is checked by :func:`xnli_problem` before pandas
    parses them (tab-separated, no quoting). Blank lines are skipped, as pandas does; the
    first other line is the header.

    Returns:
        DataFrame with string columns ``premise, hypothesis, label`` (label in
        entailment/neutral/contradiction).

    Raises:
        FileNotFoundError: no such file (one line naming it, its source and what is available).
        InputError (a ValueError): ``<file>: line <n>: <problem>``: not UTF-8, a byte-order
            mark, a wrong header, a row without exactly 3 tab-separated fields, an
            unknown label, an empty file, or a file with only its header.
        ValueError: ``max_rows < 1``.
    """
    folder = Path(data_root) / "xnli"
    path = folder / f"{split}-{lang}.tsv"
    if not path.is_file():
        have = sorted(p.stem for p in folder.glob("*.tsv")) if folder.is_dir() else []
        avail = f"available: {', '.join(have)}" if have else f"{folder} has no .tsv files"
        source = MNLI_SOURCE if split == "train" else XNLI_SOURCE
        raise FileNotFoundError(f"{path}: XNLI file not found (expected from {source}; {avail})")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    lines, n_rows = [], 0
    with TextLines(path) as f:
        for line in f:
            text = line.rstrip("\r\n")
            if not text:
                continue  # blank lines are skipped, as pandas does; the first other line is the header
            problem = xnli_problem(text.split("\t"), header=not lines)
            if problem:
                raise InputError(path, problem, line=f.lineno)
            n_rows += bool(lines)
            lines.append(line)
            if n_rows == max_rows:
                break
    if not lines:
        raise InputError(path, XNLI_EMPTY)
    if not n_rows:
        raise InputError(path, XNLI_NO_ROWS)
    return pd.read_csv(io.StringIO("".join(lines)), sep="\t", quoting=csv.QUOTE_NONE, dtype=str,
                       keep_default_na=False)


def read_pos_sentences(data_root: str | Path, lang: str, split: str | None = None,
                       treebank: str | None = None, max_sentences: int | None = None,
                       seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """(word forms, UPOS tags) per sentence, for zero-shot POS transfer (XTREME UD-POS style).

    Syntactic words are used (multiword-token surface forms are not). English training
    uses the default en treebank, GUM train.

    Args:
        split: "train", "dev" or "test"; None pools all available splits.
        treebank, max_sentences, seed: as in :func:`find_treebank_files` / :func:`read_treebank`.

    Raises:
        FileNotFoundError: the treebank lacks that split (names the file expected).
        ValueError: unknown language/split, or a malformed file.
    """
    files = find_treebank_files(data_root, lang, treebank)
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)} or None")
        if split not in files:
            folder = next(iter(files.values())).parent
            raise FileNotFoundError(
                f"{folder}/*-ud-{split}.conllu: this treebank has no {split} split "
                f"(has {', '.join(files)}; files come from {UD_SOURCE})")
        files = {split: files[split]}
    sentences = read_treebank(files, max_sentences, seed)
    return [([w.form for w in s.words], [w.upos for w in s.words]) for s in sentences]


def treebank_texts(data_root: str | Path, lang: str, max_sentences: int | None = None,
                   seed: int = 0, treebank: str | None = None) -> list[str]:
    """Sentence texts (``# text``, else the forms joined by spaces) of a language's treebank
    (default one unless ``treebank`` is given), all splits pooled, sampled as in
    :func:`read_treebank`; pretraining text for the tiny-model lab."""
    files = find_treebank_files(data_root, lang, treebank)
    return [s.text for s in read_treebank(files, max_sentences, seed)]


# ---------------------------------------------------------------------------------------
# Command line: python -m xalign.data fetch ...
# ---------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m xalign.data fetch [--root DIR] [--only ud,xnli,mnli,udpos] ...``: build a data
    root from the official archives (:mod:`xalign.fetch`, which documents the layout).

    Returns the exit status: 0, or 1 after printing a one-line ``error: ...`` to stderr.
    """
    import argparse
    import sys

    from xalign import fetch

    parser = argparse.ArgumentParser(prog="python -m xalign.data", description="xalign data tools")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch.add_arguments(sub.add_parser("fetch", help="download UD v2.1/v2.5, XNLI 1.0, MultiNLI 1.0 into a data root"))
    args = parser.parse_args(argv)
    try:
        return fetch.run_cli(args)
    except fetch.FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
