"""UD -> UniMorph conversion (McCarthy et al. 2018 converter) and attribute parsing."""

from __future__ import annotations

import sys

import pytest

from xalign import unimorph as U
from xalign.data import LANGUAGES, find_treebank_files


def test_import_is_silent_and_leaves_no_pkg_resources_shim(capsys):
    had_pkg_resources = "pkg_resources" in sys.modules
    for name in [m for m in sys.modules if m.startswith("ud_compatibility")]:
        del sys.modules[name]
    U._package.cache_clear()
    U._translator.cache_clear()
    U._convert.cache_clear()
    assert U.to_unimorph("es", "NOUN", "Gender=Fem|Number=Sing") == {"N", "FEM", "SG"}
    assert capsys.readouterr().out == ""
    assert ("pkg_resources" in sys.modules) == had_pkg_resources


def test_language_specific_translators_are_registered():
    classes = U.translator_classes()
    for lang in ["es", "en", "pt", "ca", "fr", "eu", "ur"]:
        assert lang in classes, lang
    assert classes["es"].__name__ == "SpanishTranslator"
    assert "zh" not in classes and "vi" not in classes
    assert U.translator_name("es") == "SpanishTranslator"
    assert U.translator_name("zh") == "Translator"


def test_clever_rules_change_the_output():
    # Spanish translator adds PFV to a simple past; the base translator (zh here) does not.
    feats = "Mood=Ind|Number=Sing|Person=3|Tense=Past|VerbForm=Fin"
    es = U.to_unimorph("es", "VERB", feats, form="llegó", lemma="llegar")
    base = U.to_unimorph("zh", "VERB", feats)
    assert {"V", "PST", "PFV", "3", "SG", "IND"} <= es and "FIN" not in es
    assert "PFV" not in base and "FIN" in base
    # English translator drops IND and FIN.
    en = U.to_unimorph("en", "VERB", "Mood=Ind|Tense=Past|VerbForm=Fin")
    assert en == {"V", "PST"}


def test_no_features_and_unknown_features():
    assert U.to_unimorph("en", "PUNCT", "_") == frozenset()
    assert U.to_unimorph("en", "NOUN", "Foreign=Yes") == {"N"}
    assert "_" not in U.to_unimorph("fr", "X", "_")
    with pytest.raises(U.UniMorphError, match="strings"):
        U.to_unimorph("en", "NOUN", None)  # type: ignore[arg-type]


def test_basque_argument_agreement_does_not_break():
    tags = U.to_unimorph("eu", "AUX", "Mood=Ind|Number[abs]=Sing|Person[abs]=3|Number[erg]=Plur|Person[erg]=1|VerbForm=Fin")
    assert "ARGAB3S" in tags and "ARGER1P" in tags
    assert U.attribute_values(tags)["POS"] == "V"
    assert "Number" not in U.attribute_values(tags)  # agreement markers are not the word's Number


def test_dimensions_cover_the_schema_examples():
    d = U.UNIMORPH_DIMENSIONS
    expect = {"SG": "Number", "PL": "Number", "DU": "Number", "MASC": "Gender", "FEM": "Gender",
              "NEUT": "Gender", "N": "POS", "V": "POS", "V.PTCP": "POS", "V.MSDR": "POS", "V.CVB": "POS",
              "PRO": "POS", "ADP": "POS", "NOM": "Case", "ACC": "Case", "GEN": "Case", "DAT": "Case",
              "PST": "Tense", "PRS": "Tense", "FUT": "Tense", "IND": "Mood", "SBJV": "Mood", "IMP": "Mood",
              "COND": "Mood", "1": "Person", "3": "Person", "IPFV": "Aspect", "PFV": "Aspect", "PRF": "Aspect",
              "PROG": "Aspect", "DEF": "Definiteness", "INDF": "Definiteness", "FIN": "Finiteness",
              "NFIN": "Finiteness", "ACT": "Voice", "PASS": "Voice", "MID": "Voice"}
    for feat, attr in expect.items():
        assert d[feat] == attr, feat
    assert set(d.values()) == set(U.ATTRIBUTES)
    assert "POS" not in d and "NEG" not in d  # polarity is not probed


def test_attribute_values_rules():
    av = U.attribute_values
    assert av(frozenset({"N", "FEM", "SG"})) == {"POS": "N", "Gender": "FEM", "Number": "SG"}
    # two POS values on one word: POS left out, the rest kept
    assert av(frozenset({"V", "V.PTCP", "PST"})) == {"Tense": "PST"}
    # disjunction: left out
    assert av(frozenset({"PRO", "{ACC/DAT}", "3"})) == {"POS": "PRO", "Person": "3"}
    # conjunction within one attribute: one value, sorted conjuncts
    assert av(frozenset({"N", "IN+ESS"})) == {"POS": "N", "Case": "ESS+IN"}
    assert av(frozenset({"N", "MASC+FEM"}))["Gender"] == "FEM+MASC"
    assert av(frozenset({"V", "PST+PRF"}))["Tense"] == "PST+PRF"
    assert av(frozenset({"N", "NDEF"}))["Definiteness"] == "INDF"
    # other dimensions and language-specific features are ignored
    assert av(frozenset({"ADJ", "CMPR", "NEG", "LGSPEC1", "PSS3S", "POS"})) == {"POS": "ADJ"}
    assert av(frozenset()) == {}


# Features of UniMorph dimensions this project does not probe (schema: Sylak-Glassman 2016).
_OTHER_DIMENSIONS = {
    "ANIM", "INAN", "HUM", "NHUM",                     # Animacy
    "POS", "NEG",                                      # Polarity
    "CMPR", "SPRL", "AB", "RL", "EQT",                 # Comparison
    "INFM", "FORM", "ELEV", "HUMB", "POL",             # Politeness
    "REFL", "CAUS", "RECP", "INTR", "TR",              # Valency
    "FH", "NFH", "QUOT",                               # Evidentiality
    "PSSD",                                            # Possession
}


def _atoms(feature: str) -> list[str]:
    return [p for chunk in feature.strip("{}").split("/") for p in chunk.split("+")]


def test_every_feature_in_the_bundle_is_classified(data_root):
    """Every UniMorph feature the converter emits on the 13 treebanks (first 4000 words of
    each language's first file) is either one of the 11 attributes' values or a known
    feature of another dimension, so no probed value is silently dropped."""
    unclassified: dict[str, set[str]] = {}
    seen_attrs: set[str] = set()
    for lang in LANGUAGES:
        path = next(iter(find_treebank_files(data_root, lang).values()))
        n = 0
        with open(path, encoding="utf-8") as f:
            for line in f:
                cols = line.rstrip("\n").split("\t")
                if len(cols) != 10 or not cols[0].isdigit():
                    continue
                tags = U.to_unimorph(lang, cols[3], cols[5], cols[1], cols[2])
                seen_attrs |= set(U.attribute_values(tags))
                for feat in tags:
                    for atom in _atoms(feat):
                        if atom in U.UNIMORPH_DIMENSIONS or atom in _OTHER_DIMENSIONS:
                            continue
                        if atom.startswith(("ARG", "PSS", "LGSPEC")):
                            continue
                        unclassified.setdefault(lang, set()).add(atom)
                n += 1
                if n >= 4000:
                    break
    assert unclassified == {}
    assert {"POS", "Number", "Gender", "Case", "Tense", "Mood", "Person", "Aspect"} <= seen_attrs
