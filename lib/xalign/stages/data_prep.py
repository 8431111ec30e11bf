"""Stage 1 (notebook ``01_data_prep``): UD treebanks -> UniMorph (McCarthy et al. 2018) ->
one dataset per (language, attribute), split 80/10/10 by lemma (Wang et al. 2024, Sec. 3.1).

Wave 1: one unit per language, ``data/words/<lang>.parquet`` (every UD word with UPOS, FEATS,
UniMorph), reused while its treebank files and sampling params are unchanged. Wave 2: one
unit, ``data/labels.parquet`` and ``data/summary.{parquet,csv}``, over all words tables
and ``attributes``, ``min_count``, ``split_fractions`` and the lemma-split seeds
(``data.split_seeds``, default ``[seed]``): one split per seed, rows carry ``split_seed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..pipeline import Context, StageSummary, Unit, code_version
from ..store import read_table, write_table

name, notebook, upstream = "data_prep", "01_data_prep", ()
CODE = ("xalign.data", "xalign.unimorph", "xalign.stages.data_prep")


def treebank_inputs(ctx: Context, root: Path, lang: str, treebank: str | None) -> dict[str, str]:
    """``{"ud/<folder>/<file>": sha256}`` of a language's treebank split files (cached hashes)."""
    from .. import data

    return {f"ud/{p.parent.name}/{p.name}": ctx.input_sha(p)
            for p in sorted(data.find_treebank_files(root, lang, treebank).values())}


def plan(ctx: Context) -> Iterator[list[Unit]]:
    """Words per language, then the labels and summary over all of them."""
    from .. import data

    P, run, dp = ctx.P, ctx.run_dir, ctx.P.data
    root, code = P.resolved_data_root(), code_version(*CODE)
    words = {}
    for lang in dp.languages:
        dest = run / "data" / "words" / f"{lang}.parquet"
        config = {"language": lang, "treebank": dp.treebanks.get(lang),
                  "max_sentences_per_language": dp.max_sentences_per_language, "seed": P.seed,
                  "multiword_tokens": dp.multiword_tokens}
        words[lang] = Unit(name, f"words/{lang}", config, treebank_inputs(ctx, root, lang, dp.treebanks.get(lang)),
                           (dest,), make_words, {"root": root, "dest": dest, "treebanks": dict(dp.treebanks),
                                                 **config}, code)
    yield list(words.values())
    config = {"languages": dp.languages, "attributes": dp.attributes, "min_count": dp.min_count,
              "split_fractions": list(dp.split_fractions), "split_seeds": dp.split_seed_list(P.seed)}
    d = run / "data"
    sources = {l: dp.treebanks.get(l) or data.language_info(l).treebank for l in dp.languages}
    yield [Unit(name, "labels", config, {f"words/{l}": ctx.sha(u.outputs[0]) for l, u in words.items()},
                (d / "labels.parquet", d / "summary.parquet", d / "summary.csv"), make_labels,
                {"words": [u.outputs[0] for u in words.values()], "out": d, "sources": sources, **config}, code)]


def make_words(root: Path, dest: Path, language: str, treebank: str | None, treebanks: dict,
               max_sentences_per_language: int | None, seed: int, multiword_tokens: str) -> dict:
    """One language's words table (:func:`xalign.data.load_words`)."""
    from .. import data

    w = data.load_words(root, [language], treebanks=treebanks, max_sentences_per_language=max_sentences_per_language,
                        seed=seed, multiword=multiword_tokens)
    write_table(w, dest)
    return {"words": len(w)}


def make_labels(words: list[Path], out: Path, sources: dict, languages: list[str], attributes: list[str],
                min_count: int, split_fractions: list[float], split_seeds: list[int]) -> dict:
    """Labels and summary (:func:`xalign.data.build_datasets`) from the words tables, once per
    lemma-split seed; both tables get a ``split_seed`` column."""
    import pandas as pd

    from .. import data

    w = pd.concat([read_table(f) for f in words], ignore_index=True)
    labels, summary = [], []
    for s in split_seeds:
        lab, summ = data.build_datasets(w, attributes, min_count=min_count, fractions=split_fractions, seed=s,
                                        sources=sources)
        labels.append(lab.assign(split_seed=s))
        summary.append(summ.assign(split_seed=s))
    summary = pd.concat(summary, ignore_index=True)
    _require_kept(summary)
    write_table(pd.concat(labels, ignore_index=True), out / "labels.parquet")
    write_table(summary, out / "summary.parquet", csv=True)
    tag = len(split_seeds) > 1
    return {"skipped": [f"{r.language}/{r.attribute}" + (f" (split seed {r.split_seed})" if tag else "")
                        + f": {r.reason}" for r in summary.itertuples() if r.status != "kept"]}


def _require_kept(summary) -> None:
    """Raise before anything is written when no (language, attribute) dataset was kept.

    Raises:
        XalignError: one line with the number skipped and the commonest reasons.
    """
    from ..errors import XalignError

    if (summary.status == "kept").any():
        return
    reasons = summary.reason.str.split(r"[:(]", regex=True).str[0].str.strip()
    top = "; ".join(f"{r} ({n}x)" for r, n in reasons.value_counts().head(2).items())
    raise XalignError(f"data prep: no dataset kept, all {len(summary)} (language, attribute) datasets were skipped "
                      f"({top}); lower data.min_count, raise data.max_sentences_per_language or check "
                      "data.languages / data.attributes")


def gather(ctx: Context, s: StageSummary, units: list[Unit]) -> None:
    """Table ``summary``: one row per (language, attribute), kept or skipped with a reason."""
    s.tables["summary"] = read_table(ctx.run_dir / "data" / "summary.parquet")
