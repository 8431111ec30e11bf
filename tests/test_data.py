"""Data prep: CoNLL-U reading, lemma split, per-(language, attribute) datasets, XNLI and POS readers."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from xalign import data as D

# ---------------------------------------------------------------------------------------
# planted CoNLL-U
# ---------------------------------------------------------------------------------------
_SENT_MWT = """# sent_id = s1
# text = Vino del mar.
1\tVino\tvenir\tVERB\t_\tMood=Ind|Number=Sing|Person=3|Tense=Past|VerbForm=Fin\t0\troot\t_\t_
2-3\tdel\t_\t_\t_\t_\t_\t_\t_\t_
2\tde\tde\tADP\t_\tAdpType=Prep\t4\tcase\t_\t_
3\tel\tel\tDET\t_\tDefinite=Def|Gender=Masc|Number=Sing|PronType=Art\t4\tdet\t_\t_
4\tmar\tmar\tNOUN\t_\tGender=Masc|Number=Sing\t1\tobl\t_\t_
4.1\tvino\tvenir\tVERB\t_\t_\t_\t_\t1:conj\t_
5\t.\t.\tPUNCT\t_\tPunctType=Peri\t1\tpunct\t_\t_

"""

_SENT_PLAIN = """1\tCasas\tcasa\tNOUN\t_\tGender=Fem|Number=Plur\t0\troot\t_\t_
2\tblancas\tblanco\tADJ\t_\tGender=Fem|Number=Plur\t1\tamod\t_\t_

"""


def _sentence(k: int, lemma: str = "casa") -> str:
    return (f"# sent_id = x{k}\n# text = casa {k}\n"
            f"1\tcasa\t{lemma}\tNOUN\t_\tGender=Fem|Number=Sing\t0\troot\t_\t_\n"
            f"2\t{k}\t{k}\tNUM\t_\tNumType=Card\t1\tnummod\t_\t_\n\n")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_read_conllu_words_mwt_and_empty_nodes(tmp_path):
    f = _write(tmp_path / "xx-ud-dev.conllu", _SENT_MWT + _SENT_PLAIN)
    sents = D.read_conllu(f, ud_split="dev")
    assert len(sents) == 2
    s = sents[0]
    assert s.sent_id == "s1" and s.text == "Vino del mar." and s.ud_split == "dev"
    assert [w.form for w in s.words] == ["Vino", "de", "el", "mar", "."]  # no range line, no 4.1
    assert [w.mwt_form for w in s.words] == [None, "del", "del", None, None]
    assert s.words[2].feats == "Definite=Def|Gender=Masc|Number=Sing|PronType=Art"
    assert s.words[4].upos == "PUNCT"
    # no # sent_id / # text: fallbacks
    assert sents[1].sent_id == "xx-ud-dev.conllu:2"
    assert sents[1].text == "Casas blancas"


@pytest.mark.parametrize("bad_line, problem", [
    ("3\tel\tel\tDET\t_\tGender=Masc\t4\tdet\t_", "expected 10 tab-separated columns, found 9"),
    ("x\tel\tel\tDET\t_\t_\t4\tdet\t_\t_", "not a valid ID"),
    ("3 el el DET", "tabs"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad_line, problem):
    lines = _SENT_MWT.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("3\tel"))
    lines[i] = bad_line
    text = _SENT_PLAIN + "\n".join(lines) + "\n\n"
    f = _write(tmp_path / "bad-ud-test.conllu", text)
    with pytest.raises(ValueError) as e:
        D.read_conllu(f)
    msg = str(e.value)
    expected_line = _SENT_PLAIN.count("\n") + i + 1
    assert str(f) in msg and f"line {expected_line}:" in msg and problem in msg
    assert "\n" not in msg


def _treebank(root: Path, folder: str, prefix: str, n_per_split: dict[str, int]) -> Path:
    k = 0
    for split, n in n_per_split.items():
        text = "".join(_sentence(k + j) for j in range(n))
        k += n
        _write(root / "ud" / folder / f"{prefix}-ud-{split}.conllu", text)
    return root / "ud" / folder


def test_find_treebank_files_and_errors(tmp_path):
    _treebank(tmp_path, "UD_Spanish-AnCora", "es_ancora", {"dev": 2, "test": 2})
    files = D.find_treebank_files(tmp_path, "es")
    assert list(files) == ["dev", "test"] and files["dev"].name == "es_ancora-ud-dev.conllu"
    _treebank(tmp_path, "UD_Spanish-GSD", "es", {"train": 1, "test": 1})
    assert list(D.find_treebank_files(tmp_path, "es", treebank="UD_Spanish-GSD")) == ["train", "test"]

    with pytest.raises(ValueError, match=r"unknown language code 'xx'.*ar, eu, ca, zh, en"):
        D.find_treebank_files(tmp_path, "xx")
    with pytest.raises(FileNotFoundError, match=r"UD_English-GUM.*-ud-\{train,dev,test\}\.conllu.*UD v2\.1"):
        D.find_treebank_files(tmp_path, "en")
    (tmp_path / "ud" / "UD_Tamil-TTB").mkdir()
    with pytest.raises(FileNotFoundError, match="no treebank split files.*UD v2.1"):
        D.find_treebank_files(tmp_path, "ta")


def test_read_treebank_pools_and_samples_deterministically(tmp_path):
    folder = _treebank(tmp_path, "UD_Tamil-TTB", "ta", {"train": 20, "dev": 5, "test": 5})
    files = D.find_treebank_files(tmp_path, "ta")
    everything = D.read_treebank(files)
    assert [s.sent_id for s in everything] == [f"x{k}" for k in range(30)]
    assert [s.ud_split for s in everything] == ["train"] * 20 + ["dev"] * 5 + ["test"] * 5

    a = D.read_treebank(files, max_sentences=8, seed=0)
    b = D.read_treebank(files, max_sentences=8, seed=0)
    c = D.read_treebank(files, max_sentences=8, seed=1)
    ids = [s.sent_id for s in a]
    assert ids == [s.sent_id for s in b] and len(ids) == 8 and len(set(ids)) == 8
    assert ids != [s.sent_id for s in c]
    order = [s.sent_id for s in everything]
    assert [order.index(x) for x in ids] == sorted(order.index(x) for x in ids)  # file order kept
    assert len(D.read_treebank(files, max_sentences=100)) == 30
    with pytest.raises(ValueError, match="max_sentences"):
        D.read_treebank(files, max_sentences=0)
    # only sampled sentences are parsed: a malformed last sentence matters only when drawn
    test_file = folder / "ta-ud-test.conllu"
    test_file.write_text(test_file.read_text() + "1\tbad\n\n", encoding="utf-8")
    files = D.find_treebank_files(tmp_path, "ta")
    drawn = {seed: 30 in random.Random(seed).sample(range(31), 8) for seed in range(50)}
    assert len(D.read_treebank(files, 8, seed=min(k for k, v in drawn.items() if not v))) == 8
    with pytest.raises(ValueError, match=r"ta-ud-test\.conllu: line 26: .*found 2"):
        D.read_treebank(files, 8, seed=min(k for k, v in drawn.items() if v))


def test_words_table_columns_and_unimorph(tmp_path):
    f = _write(tmp_path / "es-ud-dev.conllu", _SENT_MWT + _SENT_PLAIN)
    w = D.words_table("es", D.read_conllu(f))
    assert list(w.columns[:8]) == ["language", "sent_idx", "word_idx", "form", "lemma", "upos", "feats", "unimorph"]
    assert w["sent_idx"].tolist() == [0] * 5 + [1] * 2
    assert w["word_idx"].tolist() == [0, 1, 2, 3, 4, 0, 1]
    row = w[(w.sent_idx == 1) & (w.word_idx == 0)].iloc[0]
    assert row.unimorph == "FEM;N;PL" and row.language == "es"
    assert w[w.form == "."].unimorph.item() == "_"
    assert w[w.form == "el"].mwt_form.item() == "del"


def test_words_table_surface_multiword_tokens(tmp_path):
    # s3: two adjacent MWTs with the same surface form stay two rows (grouped by range, not form)
    f = _write(tmp_path / "es-ud-dev.conllu", _SENT_MWT + _SENT_PLAIN + """# sent_id = s3
1-2\tdel\t_\t_\t_\t_\t_\t_\t_\t_
1\tde\tde\tADP\t_\tAdpType=Prep\t2\tcase\t_\t_
2\tel\tel\tDET\t_\tGender=Masc|Number=Sing\t0\troot\t_\t_
3-4\tdel\t_\t_\t_\t_\t_\t_\t_\t_
3\tde\tde\tADP\t_\tAdpType=Prep\t4\tcase\t_\t_
4\tel\tel\tDET\t_\tGender=Fem|Number=Plur\t2\tdet\t_\t_

""")
    sents = D.read_conllu(f)
    assert [w.mwt_start for w in sents[0].words] == [None, 2, 2, None, None]
    syn = D.words_table("es", sents)
    sur = D.words_table("es", sents, multiword="surface")
    assert sur[sur.sent_idx == 0].form.tolist() == ["Vino", "del", "mar", "."]
    assert sur[sur.sent_idx == 0].word_idx.tolist() == [0, 1, 2, 3]
    d = sur[(sur.sent_idx == 0) & (sur.word_idx == 1)].iloc[0]
    assert (d.lemma, d.upos, d.mwt_form) == ("de+el", "ADP+DET", "del")
    # POS is carried by both de and el: dropped; Gender, Number, Definiteness by el only: kept
    assert D.attribute_values(frozenset(d.unimorph.split(";"))) == {"Gender": "MASC", "Number": "SG",
                                                                   "Definiteness": "DEF"}
    # words outside MWTs are the same rows in both modes
    keep = ["form", "lemma", "upos", "feats", "unimorph"]
    plain = syn[syn.mwt_form.isna()][keep].reset_index(drop=True)
    assert plain.equals(sur[sur.mwt_form.isna()][keep].reset_index(drop=True))
    s3 = sur[sur.sent_idx == 2]
    assert s3.form.tolist() == ["del", "del"] and s3.unimorph.tolist() == ["MASC;SG", "FEM;PL"]
    with pytest.raises(ValueError, match="data.multiword_tokens: unknown mode 'mwt'"):
        D.words_table("es", sents, multiword="mwt")


def test_merge_multiword_attributes_keeps_attributes_of_exactly_one_word():
    m = D.merge_multiword_attributes
    assert m([frozenset({"ADP"}), frozenset({"DET", "MASC", "SG"})]) == {"MASC", "SG"}
    # same value on two words is still dropped (the reference rule)
    assert m([frozenset({"V", "SG"}), frozenset({"PRO", "SG", "ACC"})]) == {"ACC"}
    assert m([frozenset({"N", "IN+ESS"})]) == {"N", "ESS+IN"}
    assert m([]) == frozenset()


def test_split_by_lemma_partition_and_fractions():
    lemmas = [f"l{i}" for i in range(1000)]
    split = D.split_by_lemma(lemmas + lemmas[:50], seed=3)
    assert set(split) == set(lemmas)
    counts = pd.Series(split).value_counts().to_dict()
    assert counts == {"train": 800, "dev": 100, "test": 100}
    assert D.split_by_lemma(list(reversed(lemmas)), seed=3) == split  # input order irrelevant
    assert D.split_by_lemma(lemmas, seed=4) != split
    assert pd.Series(D.split_by_lemma(lemmas, fractions=(0.5, 0.25, 0.25))).value_counts()["dev"] == 250
    with pytest.raises(ValueError, match="fractions"):
        D.split_by_lemma(lemmas, fractions=(0.8, 0.1, 0.2))


def test_split_by_lemma_ignores_python_hash_seed():
    code = ("from xalign.data import split_by_lemma; "
            "print(sorted(split_by_lemma([f'w{i}' for i in range(200)], seed=0).items()))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # this process runs with another hash seed
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    here = sorted(D.split_by_lemma([f"w{i}" for i in range(200)], seed=0).items())
    assert out.strip() == str(here)


def _planted_words(n_lemmas: int = 300) -> pd.DataFrame:
    """Each lemma: 2 SG + 2 PL nouns; 3 DU words in total; no Gender anywhere; Tense only PST."""
    rows = []
    for i in range(n_lemmas):
        for j, um in enumerate(["N;SG", "N;PL", "N;SG", "N;PL"]):
            rows.append(("xx", i, j, f"f{i}_{j}", f"lem{i}", um))
        rows.append(("xx", i, 4, f"v{i}", f"verb{i}", "PST;V"))
    for k in range(3):
        rows.append(("xx", n_lemmas + k, 0, f"du{k}", f"lem{k}", "DU;N"))
    return pd.DataFrame(rows, columns=["language", "sent_idx", "word_idx", "form", "lemma", "unimorph"])


def test_build_datasets_planted(caplog):
    words = _planted_words()
    with caplog.at_level(logging.DEBUG, logger="xalign.data"):
        labels, summary = D.build_datasets(words, ["Number", "POS", "Gender", "Tense"], min_count=20, seed=0)
    assert list(labels.columns) == ["language", "attribute", "sent_idx", "word_idx", "value", "split"]
    s = summary.set_index("attribute")
    assert s.loc["Number", "status"] == "kept" and s.loc["Number", "values"] == "PL,SG"
    num = labels[labels.attribute == "Number"]
    assert set(num.value) == {"SG", "PL"}  # DU (3 words) removed by min_count
    assert len(num) == 4 * 300
    assert s.loc["Number", ["n_train", "n_dev", "n_test"]].sum() == len(num)
    assert set(num.split) == {"train", "dev", "test"}
    # all forms of a lemma in one split; the lemma split is shared by all attributes
    merged = num.merge(words, on=["sent_idx", "word_idx"])
    assert merged.groupby("lemma")["split"].nunique().max() == 1
    pos = labels[labels.attribute == "POS"].set_index(["sent_idx", "word_idx"])["split"]
    assert (num.set_index(["sent_idx", "word_idx"])["split"] == pos.reindex(num.set_index(["sent_idx", "word_idx"]).index)).all()
    assert set(labels[labels.attribute == "POS"].value) == {"N", "V"}
    # skips, with reasons, logged
    assert s.loc["Gender", "status"] == "skipped" and s.loc["Gender", "reason"] == "no words carry Gender"
    assert s.loc["Tense", "status"] == "skipped"
    assert s.loc["Tense", "reason"].startswith("1 value left after min_count=20 filter: PST")
    assert "Gender" not in set(labels.attribute) and "Tense" not in set(labels.attribute)
    logged = caplog.text
    assert "skipped xx Gender: no words carry Gender" in logged and "skipped xx Tense" in logged


def test_build_datasets_min_count_and_determinism():
    words = _planted_words()
    l1, _ = D.build_datasets(words, ["Number"], min_count=20, seed=5)
    l2, _ = D.build_datasets(words.sample(frac=1.0, random_state=1), ["Number"], min_count=20, seed=5)
    key = ["sent_idx", "word_idx"]
    pd.testing.assert_frame_equal(l1.sort_values(key).reset_index(drop=True),
                                  l2.sort_values(key).reset_index(drop=True))
    # with min_count above any per-split count nothing survives
    labels, summary = D.build_datasets(words, ["Number"], min_count=10_000)
    assert labels.empty and summary.status.tolist() == ["skipped"]
    assert summary.reason.item().startswith("0 values left after min_count=10000 filter: none")
    with pytest.raises(ValueError, match="unknown attributes"):
        D.build_datasets(words, ["Colour"])


# ---------------------------------------------------------------------------------------
# real bundle (kept cheap with max_sentences)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("lang", ["en", "es"])
def test_real_number_datasets(data_root, lang):
    files = D.find_treebank_files(data_root, lang)
    words = D.words_table(lang, D.read_treebank(files, max_sentences=600, seed=0))
    labels, summary = D.build_datasets(words, ["Number", "Gender", "POS"], min_count=20)
    num = labels[labels.attribute == "Number"]
    for split in D.SPLITS:
        assert {"SG", "PL"} <= set(num[num.split == split].value), split
    lemma_split = (labels.merge(words, on=["sent_idx", "word_idx"])
                   .assign(key=lambda d: d.lemma.where(d.lemma != "_", d.form)))
    assert lemma_split.groupby("key")["split"].nunique().max() == 1
    s = summary.set_index("attribute")
    assert s.loc["Number", "status"] == "kept" and s.loc["POS", "status"] == "kept"
    if lang == "es":
        assert s.loc["Gender", "values"] == "FEM,MASC"


def test_real_portuguese_surface_multiword_tokens(data_root):
    sents = D.read_treebank(D.find_treebank_files(data_root, "pt"), max_sentences=300, seed=0)
    syn = D.words_table("pt", sents)
    sur = D.words_table("pt", sents, multiword="surface")
    # each MWT of k syntactic words becomes one row: the table shrinks by sum(k - 1)
    n_parts = sum(len([w for w in s.words if w.mwt_start is not None]) for s in sents)
    n_tokens = sum(len({w.mwt_start for w in s.words if w.mwt_start is not None}) for s in sents)
    assert n_tokens > 100  # do = de + o, da = de + a, no = em + o, ... are frequent in Bosque
    assert len(syn) - len(sur) == n_parts - n_tokens > 0
    do = sur[sur.form.str.lower() == "do"]
    assert len(do) > 20 and (do.lemma == "de+o").all()
    assert (do.upos == "ADP+DET").mean() > 0.9  # a few are SCONJ+DET, ADP+PRON in Bosque
    vals = [D.attribute_values(frozenset(u.split(";"))) for u in do.unimorph]
    assert all("POS" not in v and v.get("Number") == "SG" and v.get("Gender") == "MASC" for v in vals)
    # the surface rows are what the model reads: the sentence text, spaces aside
    for si in sorted(set(sur.sent_idx))[:100]:
        assert "".join(sur[sur.sent_idx == si].form) == sents[si].text.replace(" ", ""), sents[si].sent_id


def test_real_hindi_without_lemmas_is_split_by_form(data_root):
    words = D.words_table("hi", D.read_treebank(D.find_treebank_files(data_root, "hi"), max_sentences=400))
    assert (words.lemma == "_").all()
    labels, summary = D.build_datasets(words, ["POS"], min_count=5)
    assert set(labels.split) == {"train", "dev", "test"}


def test_read_xnli(data_root):
    dev = D.read_xnli(data_root, "dev", "en")
    assert len(dev) == 2490 and list(dev.columns) == ["premise", "hypothesis", "label"]
    assert dev.label.value_counts().to_dict() == {"entailment": 830, "neutral": 830, "contradiction": 830}
    head = D.read_xnli(data_root, "dev", "ur", max_rows=5)
    assert len(head) == 5 and head.label.tolist() == dev.label.head(5).tolist()  # parallel rows
    with pytest.raises(FileNotFoundError, match=r"dev-xx\.tsv.*XNLI 1\.0"):
        D.read_xnli(data_root, "dev", "xx")
    with pytest.raises(FileNotFoundError, match=r"train-en\.tsv.*MultiNLI"):
        D.read_xnli(data_root, "train", "en")


def test_read_xnli_bad_files(tmp_path):
    _write(tmp_path / "xnli" / "dev-aa.tsv", "premise\thypothesis\tlabel\n")
    with pytest.raises(ValueError, match=r"dev-aa\.tsv: no XNLI rows"):
        D.read_xnli(tmp_path, "dev", "aa")
    _write(tmp_path / "xnli" / "dev-bb.tsv", "premise\thypo\tlabel\na\tb\tneutral\n")
    with pytest.raises(ValueError, match=r"dev-bb\.tsv: line 1: header"):
        D.read_xnli(tmp_path, "dev", "bb")
    _write(tmp_path / "xnli" / "dev-cc.tsv", "premise\thypothesis\tlabel\na\tb\tneutral\nc\td\tmaybe\n")
    with pytest.raises(ValueError, match=r"dev-cc\.tsv: line 3: label 'maybe'"):
        D.read_xnli(tmp_path, "dev", "cc")
    _write(tmp_path / "xnli" / "dev-dd.tsv", 'premise\thypothesis\tlabel\n"a\tb\tneutral\n')
    assert D.read_xnli(tmp_path, "dev", "dd").premise.item() == '"a'  # QUOTE_NONE


def test_read_pos_sentences_and_texts(data_root):
    pos = D.read_pos_sentences(data_root, "en", "train", max_sentences=20)
    assert len(pos) == 20
    upos = {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON",
            "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X"}
    for forms, tags in pos:
        assert len(forms) == len(tags) > 0 and set(tags) <= upos
    with pytest.raises(FileNotFoundError, match=r"-ud-train\.conllu.*no train split"):
        D.read_pos_sentences(data_root, "es", "train")
    texts = D.treebank_texts(data_root, "vi", max_sentences=10, seed=2)
    assert len(D.treebank_texts(data_root, "zh", max_sentences=5, treebank="UD_Chinese-CFL")) == 5
    assert len(texts) == 10 and all(isinstance(t, str) and t.strip() for t in texts)
    assert texts == D.treebank_texts(data_root, "vi", max_sentences=10, seed=2)


def test_empty_inputs_raise(tmp_path):
    f = _write(tmp_path / "xx-ud-dev.conllu", "\n")
    with pytest.raises(ValueError, match=r"xx-ud-dev\.conllu: empty file \(no sentences\)"):
        D.read_conllu(f)
    with pytest.raises(ValueError, match="words table is empty"):
        D.build_datasets(_planted_words().iloc[:0], ["Number"])


def test_load_words_concatenates_languages(tmp_path):
    _treebank(tmp_path, "UD_Spanish-AnCora", "es_ancora", {"dev": 3, "test": 2})
    _treebank(tmp_path, "UD_Tamil-TTB", "ta", {"train": 4})
    w = D.load_words(tmp_path, ["es", "ta"], max_sentences_per_language=3, seed=0)
    assert w.groupby("language").sent_idx.apply(sorted).to_dict() == {"es": [0, 0, 1, 1, 2, 2], "ta": [0, 0, 1, 1, 2, 2]}
    assert set(w[w.upos == "NOUN"].unimorph) == {"FEM;N;SG"}
    _treebank(tmp_path, "UD_Other", "zz", {"dev": 2})
    assert len(D.load_words(tmp_path, ["es"], treebanks={"es": "UD_Other"})) == 4


def test_registry_matches_paper_languages_and_bundle(data_root):
    from xalign.params import PAPER_LANGUAGES

    assert list(D.LANGUAGES) == PAPER_LANGUAGES
    splits = {lang: list(D.find_treebank_files(data_root, lang)) for lang in D.LANGUAGES}
    assert splits["ar"] == ["test"] and splits["hi"] == ["test"]
    assert splits["en"] == ["train", "dev", "test"] and splits["es"] == ["dev", "test"]


def test_treebank_without_feats_for_an_attribute_is_skipped_with_its_name(data_root, tmp_path):
    """A real treebank whose FEATS column was emptied: POS is still built, Number and Gender are
    skipped with a reason naming the treebank, and the run goes on (no exception)."""
    src = data_root / "ud" / "UD_Spanish-AnCora" / "es_ancora-ud-dev.conllu"
    lines = []
    for line in src.read_text(encoding="utf-8").splitlines()[:6000]:
        cols = line.split("\t")
        if len(cols) == 10:
            cols[5] = "_"
        lines.append("\t".join(cols))
    text = "\n".join(lines).rsplit("\n\n", 1)[0] + "\n\n"  # cut at a sentence boundary
    _write(tmp_path / "ud" / "UD_Spanish-AnCora" / "es_ancora-ud-dev.conllu", text)
    words = D.load_words(tmp_path, ["es"])
    labels, summary = D.build_datasets(words, ["POS", "Number", "Gender"], min_count=5,
                                       sources={"es": "UD_Spanish-AnCora"})
    s = summary.set_index("attribute")
    assert s.loc["POS", "status"] == "kept" and set(labels.attribute) == {"POS"}
    for attr in ("Number", "Gender"):
        assert s.loc[attr, "status"] == "skipped"
        assert s.loc[attr, "reason"] == f"no words carry {attr} (no FEATS for it in UD_Spanish-AnCora)"


def test_two_values_for_one_attribute_are_left_out_and_counted(tmp_path):
    """English participles get POS V and V.PTCP from the converter, UD ``Case=Nom,Acc`` the
    disjunction {NOM/ACC}: the word is left out of that attribute only, and the summary's
    ``n_multi_value`` counts such words per (language, attribute)."""
    part = "1\twalked\twalk\tVERB\t_\tTense=Past|VerbForm=Part\t0\troot\t_\t_\n"
    pron = "2\tthey\tthey\tPRON\t_\tCase=Nom,Acc|Number=Plur\t1\tnsubj\t_\t_\n"
    noun = "3\thouses\thouse\tNOUN\t_\tNumber=Plur\t1\tobj\t_\t_\n"
    fin = "1\twalks\twalk\tVERB\t_\tMood=Ind|Number=Sing|Person=3|Tense=Pres|VerbForm=Fin\t0\troot\t_\t_\n"
    text = "".join(f"# sent_id = p{i}\n" + (part + pron + noun if i % 2 else fin) + "\n" for i in range(10))
    f = _write(tmp_path / "en-ud-dev.conllu", text)
    words = D.words_table("en", D.read_conllu(f))
    assert words[words.form == "walked"].unimorph.iloc[0] == "PST;V;V.PTCP"
    assert words[words.form == "they"].unimorph.iloc[0] == "PL;PRO;{NOM/ACC}"
    labels, summary = D.build_datasets(words, ["POS", "Tense", "Case", "Number"], min_count=1, seed=0)
    assert list(summary.columns)[-1] == "n_multi_value"
    n = summary.set_index("attribute")["n_multi_value"].to_dict()
    assert n == {"POS": 5, "Tense": 0, "Case": 5, "Number": 0}
    # left out of that attribute only
    tags = lambda form: frozenset(words[words.form == form].unimorph.iloc[0].split(";"))
    assert D.attribute_values(tags("walked")) == {"Tense": "PST"}
    assert D.attribute_values(tags("they")) == {"POS": "PRO", "Number": "PL"}
    from xalign.unimorph import multi_value_attributes
    assert multi_value_attributes(tags("walked")) == {"POS"} and multi_value_attributes(tags("houses")) == set()
    # Case: only disjunctions, so no word carries it with one value
    case = summary.set_index("attribute").loc["Case"]
    assert case.status == "skipped" and "5 carry several" in case.reason
