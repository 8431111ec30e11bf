"""UD -> UniMorph feature conversion: the one wrapper around the ``ud-compatibility`` package.

The paper (Wang et al. 2024, Sec. 3) follows Stańczak et al. (2022) and converts the UD
v2.1 treebanks' UPOS + FEATS to UniMorph features with the converter of McCarthy et al.
(2018), "Marrying Universal Dependencies and Universal Morphology" (UDW 2018), packaged on
PyPI as ``ud-compatibility``. The package has three rough edges, handled here:

* it prints its whole mapping table on import: stdout is redirected during the import;
* it imports ``pkg_resources``, which setuptools >= 81 no longer ships: if it is missing, a
  one-function stand-in (``resource_filename`` via :mod:`importlib.resources`) is put in
  ``sys.modules`` for the duration of the import only;
* its ``translators`` registry is always empty (built with ``getattr(__import__(__name__), ...)``,
  which returns the top-level package), so its language-specific translators are never used:
  the map language -> ``<Name>Translator`` is rebuilt here from ``ud_compatibility.languages``.

With ``clever=True`` (McCarthy et al.'s "language-specific modifications") where a
translator class exists, else the base ``Translator`` (which is what languages without a
class get in the original tool too).

UniMorph attributes follow the UniMorph schema (Sylak-Glassman 2016, "The composition and
use of the universal morphological feature schema (UniMorph schema)"); the attribute names
are those of Stańczak et al. (2022) for the eleven attributes this project probes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.resources
import io
import sys
import types
from types import MappingProxyType
from typing import Any, Mapping

#: The eleven attributes data prep builds datasets for (same order as ``params.ALL_ATTRIBUTES``).
ATTRIBUTES: tuple[str, ...] = (
    "POS", "Number", "Gender", "Case", "Tense", "Mood",
    "Person", "Aspect", "Definiteness", "Finiteness", "Voice",
)

# UniMorph schema (Sylak-Glassman 2016, Table/Appendix of features; UniMorph 3.0 tag list),
# restricted to the eleven attributes above. Values not listed belong to other UniMorph
# dimensions (Polarity, Comparison, Animacy, Possession, Politeness, ...) and are ignored.
_SCHEMA: dict[str, tuple[str, ...]] = {
    "POS": ("N", "PROPN", "ADJ", "PRO", "CLF", "ART", "DET", "V", "ADV", "AUX",
            "V.PTCP", "V.MSDR", "V.CVB", "ADP", "COMP", "CONJ", "NUM", "PART", "INTJ"),
    "Number": ("SG", "PL", "GRPL", "DU", "TRI", "PAUC", "GPAUC", "INVN"),
    "Gender": ("MASC", "FEM", "NEUT")
    + tuple(f"BANT{i:02d}" for i in range(1, 24)) + tuple(f"NAKH{i}" for i in range(1, 9)),
    "Case": ("NOM", "ACC", "ERG", "ABS", "NOMS", "DAT", "BEN", "PRP", "GEN", "REL", "PRT",
             "INS", "COM", "VOC", "COMPV", "EQTV", "PRIV", "PROPR", "AVR", "FRML", "TRANS",
             "BYWAY", "INTER", "AT", "POST", "IN", "CIRC", "ANTE", "APUD", "ON", "ONHR",
             "ONVR", "SUB", "REM", "PRX", "ESS", "ALL", "ABL", "APPRX", "TERM", "PROL", "VERS"),
    "Tense": ("PRS", "PST", "FUT", "IMMED", "HOD", "1DAY", "RCT", "RMT"),
    "Mood": ("IND", "SBJV", "REAL", "IRR", "AUPRP", "AUNPRP", "IMP", "COND", "PURP", "INTEN",
             "POT", "LKLY", "ADM", "OBLIG", "DEB", "PERM", "DED", "SIM", "OPT"),
    "Person": ("0", "1", "2", "3", "4", "INCL", "EXCL", "PROXI", "OBVI"),
    "Aspect": ("IPFV", "PFV", "PRF", "PROG", "PROSP", "ITER", "HAB"),
    "Definiteness": ("DEF", "INDF", "SPEC", "NSPEC"),
    "Finiteness": ("FIN", "NFIN"),
    "Voice": ("ACT", "MID", "PASS", "ANTIP", "DIR", "INV", "AGFOC", "PFOC", "LFOC", "BFOC",
              "ACFOC", "IFOC", "CFOC"),
}

#: UniMorph feature -> attribute name, for the eleven probed attributes (read-only).
#: As in the schema, QUOT (from UD Mood=Qot) is Evidentiality and CAUS/RECP (from UD
#: Voice=Cau/Rcp) are Valency, so they are not Mood/Voice values here; ``NDEF`` (Hebrew
#: converter's indefinite nouns) counts as Definiteness=INDF (as Stańczak et al. 2022).
UNIMORPH_DIMENSIONS: Mapping[str, str] = MappingProxyType(
    {feat: attr for attr, feats in _SCHEMA.items() for feat in feats})

_ALIASES = {"NDEF": "INDF"}


class UniMorphError(ValueError):
    """A language or feature string the converter cannot handle (one-line message)."""


@contextlib.contextmanager
def _pkg_resources_shim():
    """Provide ``pkg_resources.resource_filename`` during the import if setuptools lacks it."""
    try:
        importlib.import_module("pkg_resources")
        yield
        return
    except ImportError:
        pass
    shim = types.ModuleType("pkg_resources")
    shim.resource_filename = (  # type: ignore[attr-defined]
        lambda package, resource: str(importlib.resources.files(package).joinpath(resource)))
    sys.modules["pkg_resources"] = shim
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]


@functools.lru_cache(maxsize=1)
def _package() -> tuple[Any, Any]:
    """Import ``ud_compatibility.translator`` and ``.languages`` quietly (once)."""
    with _pkg_resources_shim(), contextlib.redirect_stdout(io.StringIO()):
        translator = importlib.import_module("ud_compatibility.translator")
        languages = importlib.import_module("ud_compatibility.languages")
    return translator, languages


def translator_classes() -> dict[str, type]:
    """Language code (ud-compatibility's, ISO 639-1 mostly) -> its ``<Name>Translator`` class.

    Only languages with a language-specific class appear; the others use the base
    ``Translator``. Built from ``ud_compatibility.languages`` by class name, since the
    package's own ``translators`` dict stays empty.
    """
    translator, languages = _package()
    out: dict[str, type] = {}
    for lang in languages.languages:
        cls = getattr(translator, lang.name.replace("-", "_") + "Translator", None)
        if isinstance(cls, type) and issubclass(cls, translator.Translator):
            out[lang.ud] = cls
    return out


def translator_name(lang: str) -> str:
    """Name of the translator class :func:`to_unimorph` uses for ``lang`` (e.g. ``"SpanishTranslator"``)."""
    return type(_translator(lang)).__name__


@functools.lru_cache(maxsize=None)
def _translator(lang: str) -> Any:
    translator, _ = _package()
    cls = translator_classes().get(lang, translator.Translator)
    return cls(clever=True, replace_feats=True)


@functools.lru_cache(maxsize=1_000_000)
def _convert(lang: str, upos: str, feats: str, form: str, lemma: str) -> frozenset[str]:
    translator, _ = _package()
    utils = sys.modules["ud_compatibility.utils"]
    row = utils.CoNLLRow("1", form, lemma, upos, "_", feats, "_", "_", "_", "_")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            um = _translator(lang).translate(row).feats
    except (AssertionError, ValueError, KeyError, AttributeError) as e:
        raise UniMorphError(
            f"ud-compatibility cannot convert UPOS={upos!r} FEATS={feats!r} for language "
            f"{lang!r}: {type(e).__name__} {e}".rstrip()) from None
    return frozenset(f for f in str(um).split(";") if f and f != "_")


def to_unimorph(lang: str, upos: str, feats: str, form: str = "_", lemma: str = "_") -> frozenset[str]:
    """UniMorph features of one UD word (McCarthy et al. 2018 converter, language-specific rules on).

    Args:
        lang: language code as ud-compatibility knows it (ISO 639-1, e.g. ``"es"``); a code
            without a language-specific translator (``"zh"``, ``"vi"``, ...) gets the base one.
        upos: the UPOS column (``"NOUN"``).
        feats: the FEATS column string, ``"_"`` if none (``"Gender=Fem|Number=Sing"``).
        form, lemma: FORM and LEMMA columns; a few translators look at the form
            (e.g. Spanish ``-ra`` subjunctives, Portuguese ``-do`` participles).

    Returns:
        The set of UniMorph features, e.g. ``frozenset({"N", "FEM", "SG"})``; features joined
        with ``+`` (``"IN+ESS"``) or disjunctions (``"{MASC/FEM}"``) are kept as one string.
        Empty if the word has no UniMorph features (e.g. UPOS ``PUNCT``).

    Raises:
        UniMorphError: the converter fails on this UPOS/FEATS (message names both).
    """
    if not isinstance(feats, str) or not isinstance(upos, str):
        raise UniMorphError(f"upos and feats must be strings, got {upos!r} and {feats!r}")
    return _convert(lang, upos or "_", feats or "_", form or "_", lemma or "_")


def _attribute_of(feature: str) -> str | None:
    """Attribute of one UniMorph feature string, or None if it is not one of the eleven.

    ``A+B`` belongs to an attribute when all conjuncts do (``IN+ESS`` -> Case); the past
    perfect ``PST+PRF`` counts as Tense (as Stańczak et al. 2022). ``{A/B}`` belongs to
    the attribute of its disjuncts.
    """
    f = feature.strip("{}")
    if f == "PST+PRF":
        return "Tense"
    parts = [p for chunk in f.split("/") for p in chunk.split("+")]
    attrs = {UNIMORPH_DIMENSIONS.get(_ALIASES.get(p, p)) for p in parts}
    if len(attrs) == 1:
        return attrs.pop()
    return None


def attribute_values(tags: frozenset[str] | set[str]) -> dict[str, str]:
    """Attribute -> value for one word's UniMorph features.

    Conjunctions within one attribute become one value with sorted conjuncts
    (``"IN+ESS"`` -> Case ``"ESS+IN"``), as in Stańczak et al. (2022). An attribute that takes
    several values on the word (e.g. POS ``V`` and ``V.PTCP``), or whose value is a
    disjunction (``"{MASC/FEM}"``), is left out for that word (:func:`multi_value_attributes`;
    the paper's code kept one of two plain values, see there). Features outside the eleven
    attributes (``POS`` polarity, ``LGSPEC1``, ``PSS3S``, ...) are ignored.

    Example: ``attribute_values(frozenset({"N", "FEM", "SG"}))`` ->
    ``{"POS": "N", "Gender": "FEM", "Number": "SG"}``.
    """
    found, ambiguous = _values(tags)
    return {a: next(iter(v)) for a, v in found.items() if len(v) == 1 and a not in ambiguous}


def multi_value_attributes(tags: frozenset[str] | set[str]) -> frozenset[str]:
    """The attributes that :func:`attribute_values` leaves out of one word for having two values.

    That is, attributes among the eleven that take two or more distinct values on the word
    (POS ``V`` and ``V.PTCP``: the converter's English participles) or whose value is a
    disjunction (``"{ACC/DAT}"``, from UD ``Case=Acc,Dat``). ``data/summary``'s
    ``n_multi_value`` counts such words per (language, attribute).

    The paper's code (Stańczak et al.'s ``utils/parser.py``, ``parse_unimorph_features``)
    skips disjunctions too, but of two plain values keeps the one written last, and the
    converter writes its features in set order, which changes with Python's string hash
    seed: the same word gets POS ``V`` in one run and ``V.PTCP`` in another.

    Example: ``multi_value_attributes(frozenset({"V", "V.PTCP", "PST"}))`` -> ``{"POS"}``.
    """
    found, ambiguous = _values(tags)
    return frozenset(ambiguous | {a for a, v in found.items() if len(v) > 1})


def _values(tags: frozenset[str] | set[str]) -> tuple[dict[str, set[str]], set[str]]:
    """(attribute -> its plain values on the word, attributes with a disjunctive value)."""
    found: dict[str, set[str]] = {}
    ambiguous: set[str] = set()
    for feat in tags:
        attr = _attribute_of(feat)
        if attr is None:
            continue
        if "/" in feat:
            ambiguous.add(attr)
            continue
        if feat == "PST+PRF":
            value = feat
        else:
            value = "+".join(sorted(_ALIASES.get(p, p) for p in feat.split("+")))
        found.setdefault(attr, set()).add(value)
    return found, ambiguous
