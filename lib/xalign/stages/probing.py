"""Stage 3 (notebook ``03_probing``): one latent-variable probe (Stańczak et al. 2023) per
(checkpoint, layer, attribute, language), then greedy selection of the k most informative
neurons on dev (Wang et al. 2024, Eq. 1-4).

Wave 1: one unit per (checkpoint, language), ``probing/parts/<checkpoint>/<lang>.{selections,
paths}.parquet``: its probes for every kept attribute and extracted layer, reused while its
vectors file, its labels and the probe params are unchanged. Wave 2: ``probing/selections.parquet``
and ``probing/paths.parquet``, the parts concatenated. ``probe.attributes`` are probed at
every extracted layer of every checkpoint; ``probe.sweep_attributes`` (the paper's eleven,
Figure 2 and Appendix B) additionally at the sweep layers of the last checkpoint only.

Every dataset (one per lemma-split seed of ``data.split_seeds``, rows carry ``split_seed``)
is probed once per seed of ``probe.seeds`` (one batched computation,
:func:`xalign.probe.train_probes`); rows carry ``seed``. ``paths.parquet`` gives per greedy
step the dev log-likelihood gain and its standard error (``dev_gain``, ``dev_gain_se``).
With ``probe.selection: stability``, ``stability.parquet`` has one stability selection per
dataset (:func:`xalign.selection.stability_select`). With ``probe.compare_methods``,
``methods.parquet`` (and ``parts/<checkpoint>/<lang>.methods.parquet``) has per probe and
listed method (``probeless``, ``weight_mass``) that method's k neurons, scored by the same
latent probe as greedy's path, and ``agreement_with_greedy`` = |A ∩ G| / k
(:func:`xalign.selection.selection_agreement`); see :func:`_method_rows`. Only greedy's
selections feed the overlap and correlation stages.

``selections.parquet`` has per probe the selected neurons and normalised MI / accuracy on dev
and test with the k neurons (``dev_mi`` ...) and with all d dimensions (``dev_mi_all`` ...;
off the latent probe's training distribution, see :mod:`xalign.probe`). With
``probe.retrain`` it also has ``*_subset_retrained`` and ``*_all_retrained``: plain L2
probes retrained on the k neurons and on all d (:func:`xalign.selection.retrained_mi`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd
import torch

from ..params import result_config
from ..pipeline import Context, StageSummary, Unit, code_version
from ..store import ArtefactError, LazyTensors, content_sha256, read_table, write_table
from ._common import checkpoint_rows, sweep_attributes, sweep_layers_in, vectors_path

name, notebook, upstream = "probing", "03_probing", ("extraction",)
CODE = ("xalign.probe", "xalign.selection", "xalign.stages.probing")


def probe_splits(labels: pd.DataFrame, tensors: Mapping[str, torch.Tensor], layer: int
                 ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[str]]:
    """Join one (language, attribute)'s labels with its word vectors: the probe's datasets.

    Args:
        labels: rows of ``data/labels.parquet`` for one language and attribute
            (``sent_idx, word_idx, value, split``).
        tensors: a vectors file's tensors (``layer_<l>``: (n_words, d), ``sent_idx``, ``word_idx``).
        layer: ℓ, as in the paper (1 = embedding output).

    Returns:
        ``({"train"|"dev"|"test": (X (n, d) float, y (n,) int64)}, values)`` with ``y``
        indexing the sorted attribute ``values``. Labelled words without a vector (in
        sentences skipped at extraction) are dropped.
    """
    key = pd.DataFrame({"sent_idx": tensors["sent_idx"].numpy(), "word_idx": tensors["word_idx"].numpy()})
    key["row"] = range(len(key))
    m = labels.merge(key, on=["sent_idx", "word_idx"], how="inner")
    values = sorted(m.value.unique())
    index = {v: i for i, v in enumerate(values)}
    X = tensors[f"layer_{layer}"]
    out = {}
    for split in ("train", "dev", "test"):
        part = m[m.split == split]
        out[split] = (X[torch.tensor(part.row.to_numpy(), dtype=torch.long)],
                      torch.tensor(part.value.map(index).to_numpy(), dtype=torch.long))
    return out, values


def _check_vectors(f: Path, shapes: dict[str, tuple[int, ...]], meta: dict[str, Any], d_ckpt: int | None) -> int:
    """Hidden size of a vectors file (tensor ``shapes`` from its header), checked against its
    metadata and the checkpoint's other files.

    Raises:
        ArtefactError: a layer's width differs from ``hidden_size`` in the file's metadata
            or from the checkpoint's other languages (one line, naming the file).
    """
    d = int(meta["hidden_size"])
    for name, shape in shapes.items():
        if name.startswith("layer_") and (len(shape) != 2 or shape[1] != d):
            raise ArtefactError(f"{f}: {name} has shape {tuple(shape)}, but the file's hidden_size is {d}")
    if d_ckpt is not None and d != d_ckpt:
        raise ArtefactError(f"{f}: hidden size {d} differs from {d_ckpt} in the same checkpoint's other "
                            f"vectors (artefacts of different models; re-run extraction)")
    return d


def _probe_unit(P: Any, cfg, c: dict, lang: str, attrs: list[str], labels: pd.DataFrame,
                tensors: Mapping[str, torch.Tensor], meta: dict[str, Any], d: int,
                skipped: list[str], layers_of: Mapping[str, list[int]] | None = None
                ) -> dict[str, pd.DataFrame]:
    """Probes and greedy selections for one (checkpoint, language): every attribute x layer x seed.

    The seeds of a dataset (``probe.seeds``) are trained as one batched computation
    (:func:`xalign.probe.train_probes`); each gives its own greedy selection, rows carry ``seed``.
    ``layers_of`` gives the layers of an attribute probed at fewer than the vectors file's
    ``meta["layers"]`` (``probe.sweep_attributes``: the sweep layers only).

    Returns:
        ``{"selections", "paths", "stability", "methods"}`` tables (``stability`` empty unless
        ``probe.selection == "stability"``, ``methods`` unless ``probe.compare_methods``).
    """
    from ..probe import standardize

    pp = P.probe
    rows: dict[str, list[dict]] = {"selections": [], "paths": [], "stability": [], "methods": []}
    for attr, split_seed, lab in _datasets(labels, attrs):
        for layer in (layers_of or {}).get(attr, meta["layers"]):
            splits, values = probe_splits(lab, tensors, layer)
            (Xtr, ytr), (Xdv, ydv), (Xte, yte) = splits["train"], splits["dev"], splits["test"]
            if len(ytr) < pp.min_train_examples or len(ydv) == 0 or len(yte) == 0:
                skipped.append(f"{c['name']}/L{layer}/{attr}/{lang}: {len(ytr)} train, {len(ydv)} dev, "
                               f"{len(yte)} test examples (min_train_examples={pp.min_train_examples})")
                continue
            if pp.standardize:
                Xtr, Xdv, Xte = standardize(Xtr, Xdv, Xte)
            ident = {"checkpoint": c["name"], "step": c["step"], "layer": layer, "attribute": attr,
                     "language": lang, "split_seed": split_seed}
            _probe_dataset(P, cfg, ident, d, values, (Xtr, ytr, Xdv, ydv, Xte, yte), rows, skipped)
    return {name: pd.DataFrame(r) for name, r in rows.items()}


def _datasets(labels: pd.DataFrame, attrs: list[str]) -> Iterator[tuple[str, int, pd.DataFrame]]:
    """(attribute, lemma-split seed, its labels) of every dataset of one language, in order
    (labels without ``split_seed``, written before it existed, count as split seed 0)."""
    if "split_seed" not in labels.columns:
        labels = labels.assign(split_seed=0)
    for attr in attrs:
        lab = labels[labels.attribute == attr]
        for split_seed in sorted(lab.split_seed.unique()):
            yield attr, int(split_seed), lab[lab.split_seed == split_seed]


def _probe_dataset(P: Any, cfg, ident: dict, d: int, values: list[str], data: tuple,
                   rows: dict[str, list[dict]], skipped: list[str] | None = None) -> None:
    """Every seed's probe and greedy selection of one dataset (its stability selection, and
    the ``probe.compare_methods`` selections: :func:`_method_rows`)."""
    from ..probe import train_probes
    from ..selection import greedy_select, retrained_mi, stability_select

    pp = P.probe
    Xtr, ytr, Xdv, ydv, Xte, yte = data
    probes = train_probes(Xtr, ytr, len(values), cfg, pp.seed_list(P.seed))
    for probe in probes:
        res = greedy_select(probe, Xdv, ydv, k=pp.k, X_test=Xte, y_test=yte)
        seeded = {**ident, "seed": probe.config.seed}
        rows["selections"].append({
            **seeded, "d": d, "k": pp.k, "neurons": [int(n) for n in res.neurons],
            "n_classes": len(values), "values": ",".join(values),
            "n_train": len(ytr), "n_dev": len(ydv), "n_test": len(yte),
            "dev_mi": res.dev_mi[-1], "test_mi": res.test_mi[-1], "dev_acc": res.dev_acc[-1],
            "test_acc": res.test_acc[-1], "dev_mi_all": res.dev_mi_all, "test_mi_all": res.test_mi_all,
            "dev_acc_all": res.dev_acc_all, "test_acc_all": res.test_acc_all, "best_epoch": probe.best_epoch})
        if pp.retrain:
            ref = retrained_mi(Xtr, ytr, len(values), list(res.neurons), Xdv, ydv, Xte, yte, config=probe.config)
            rows["selections"][-1].update({f"{m}_retrained": getattr(ref, m) for m in (
                "dev_mi_subset", "test_mi_subset", "dev_acc_subset", "test_acc_subset",
                "dev_mi_all", "test_mi_all", "dev_acc_all", "test_acc_all", "l2_subset", "l2_all")})
        for i, n in enumerate(res.neurons):
            rows["paths"].append({**seeded, "step_k": i + 1, "neuron": int(n), "dev_loglik": res.dev_loglik[i],
                                  "dev_gain": res.dev_gain[i], "dev_gain_se": res.dev_gain_se[i],
                                  "dev_mi": res.dev_mi[i], "test_mi": res.test_mi[i],
                                  "dev_acc": res.dev_acc[i], "test_acc": res.test_acc[i]})
        rows["methods"] += _method_rows(pp, probe, res.neurons, seeded, d, len(values), data, skipped)
    if pp.selection == "stability":
        st = stability_select(probes, Xdv, ydv, k=pp.k, n_resamples=pp.stability_resamples,
                              threshold=pp.stability_threshold, seed=P.seed)
        rows["stability"].append({**ident, "d": d, "k": pp.k, "neurons": st.neurons,
                                  "frequency": [float(st.frequency[n]) for n in st.neurons],
                                  "n_runs": st.n_runs, "stable": st.stable})


def _method_rows(pp: Any, probe: Any, greedy: list[int], seeded: dict, d: int, n_classes: int,
                 data: tuple, skipped: list[str] | None) -> list[dict]:
    """One ``methods`` row per method of ``probe.compare_methods`` for one probe (seed).

    Each method (:func:`xalign.selection.probeless_select`, :func:`~xalign.selection.weight_mass_select`)
    ranks the d dimensions on the training split as the probe sees it (z-scored with
    ``probe.standardize``: Probeless's class-mean differences are then in train sd units)
    and keeps its top k; its path is scored by
    ``probe``, the latent probe whose greedy path gave ``greedy`` (``eval_probe=probe``), so
    the MI / accuracy at k of every method, greedy's included, come from one probe and are
    comparable. ``weight_mass`` trains its linear probe (NeuroX defaults) with the probe's seed.

    Args:
        pp: ``P.probe``. probe: the seed's trained :class:`~xalign.probe.LatentProbe`, W (d, C).
        greedy: its k greedy neurons. seeded: the dataset's identity and ``seed``.
        d: hidden size; n_classes: C. data: ``(Xtr, ytr, Xdv, ydv, Xte, yte)``, X (n, d), y (n,).
        skipped: where a method that cannot run is noted (a class without training
            examples: Probeless needs every class mean).

    Returns:
        Rows with the identity, ``d, k, method, neurons`` (k ints), ``dev_mi, test_mi``
        (normalised MI in [0, 1]), ``dev_acc, test_acc`` at k and ``agreement_with_greedy``
        in [0, 1] (chance k / d). [] without ``probe.compare_methods``.
    """
    from ..selection import probeless_select, selection_agreement, weight_mass_select

    Xtr, ytr, Xdv, ydv, Xte, yte = data
    if pp.compare_methods and int(torch.bincount(ytr, minlength=n_classes).min()) == 0:
        if skipped is not None:
            skipped.append(f"{seeded['checkpoint']}/L{seeded['layer']}/{seeded['attribute']}/{seeded['language']}"
                           f"/seed {seeded['seed']}: compare_methods need every class in train")
        return []
    select = {"probeless": probeless_select, "weight_mass": weight_mass_select}
    out = []
    for method in pp.compare_methods:
        res = select[method](Xtr, ytr, n_classes, Xdv, ydv, k=pp.k, X_test=Xte, y_test=yte,
                             seed=probe.config.seed, eval_probe=probe)
        out.append({**seeded, "d": d, "k": pp.k, "method": method, "neurons": [int(n) for n in res.neurons],
                    "dev_mi": res.dev_mi[-1], "test_mi": res.test_mi[-1], "dev_acc": res.dev_acc[-1],
                    "test_acc": res.test_acc[-1],
                    "agreement_with_greedy": selection_agreement(list(res.neurons), [int(n) for n in greedy])})
    return out


def _jobs(ctx: Context, kept: pd.DataFrame, sweep_attrs: list[str]) -> list[tuple[dict, str, list, list, Path]]:
    """(checkpoint row, language, attributes, sweep attributes, vectors file) of every unit."""
    P, ckpts = ctx.P, checkpoint_rows(ctx.run_dir)
    last = ckpts[-1]["name"] if ckpts else None
    jobs = []
    for c in ckpts:
        kept_c = kept if c["name"] == last else kept[kept.attribute.isin(P.probe.attributes)]
        for lang in sorted(kept_c.language.unique()):
            f = vectors_path(ctx.run_dir, c["name"], lang)
            if not f.is_file():
                ctx.skip(f"{c['name']}/{lang}: no vectors")
                continue
            kept_l = kept_c[kept_c.language == lang]  # one row per (attribute, split seed)
            attrs = sorted(set(kept_l[kept_l.attribute.isin(P.probe.attributes)].attribute))
            extra = sorted(set(kept_l[kept_l.attribute.isin(sweep_attrs)].attribute))
            jobs.append((c, lang, attrs, extra, f))
    return jobs


def _check_widths(P: Any, jobs: list) -> None:
    """Every vectors file's width agrees with its metadata, its checkpoint's other files and k
    (headers only), before any probe is trained."""
    d_of: dict[str, int] = {}
    for c, lang, attrs, extra, f in jobs:
        t = LazyTensors(f)
        d = _check_vectors(f, t.shapes, t.metadata, d_of.get(c["name"]))
        d_of.setdefault(c["name"], d)
        if P.probe.k > d:
            raise ValueError(f"probe.k={P.probe.k} exceeds the hidden size d={d} of {c['name']} ({f})")


def plan(ctx: Context) -> Iterator[list[Unit]]:
    """Parts per (checkpoint, language), then the stage's tables (:func:`_tables`).

    Raises:
        ValueError: ``probe.k`` larger than a checkpoint's hidden size.
        ArtefactError: a vectors file whose hidden size disagrees with its metadata or with
            the checkpoint's other files.
    """
    P, run, pp = ctx.P, ctx.run_dir, ctx.P.probe
    labels = read_table(run / "data" / "labels.parquet")
    summary = read_table(run / "data" / "summary.parquet")
    sweep_attrs = sweep_attributes(P)
    kept = summary[(summary.status == "kept") & summary.attribute.isin([*pp.attributes, *sweep_attrs])
                   & summary.language.isin(P.data.languages)]
    _require_datasets(pp.attributes, kept, summary)
    jobs = _jobs(ctx, kept, sweep_attrs)
    _check_widths(P, jobs)
    code, parts = code_version(*CODE), []
    for c, lang, attrs, extra, f in jobs:
        lab = labels[(labels.language == lang) & labels.attribute.isin(attrs + extra)].reset_index(drop=True)
        # compare_methods absent while empty, so that units without it keep their identity
        drop = {"attributes", "sweep_attributes"} | (set() if pp.compare_methods else {"compare_methods"})
        config = {**result_config(pp, drop), "attributes": attrs, "seed": P.seed,
                  "checkpoint": c["name"], "language": lang}
        if extra:  # absent otherwise, so units without a sweep keep their identity
            config.update(sweep_attributes=extra, sweep_layers=P.extraction.sweep_layers)
        base = run / "probing" / "parts" / c["name"]
        outs = tuple(base / f"{lang}.{t}.parquet" for t in _tables(pp))
        parts.append(Unit(name, f"{c['name']}/{lang}", config, {"vectors": ctx.sha(f), "labels": content_sha256(lab)},
                          outs, probe_part, {"P": P, "c": c, "lang": lang, "attrs": attrs, "extra": extra,
                                             "vectors": f, "labels": run / "data" / "labels.parquet",
                                             "outputs": outs}, code))
    yield parts
    tables = tuple(run / "probing" / f"{t}.parquet" for t in _tables(pp))
    yield [Unit(name, "tables", {"parts": [u.key for u in parts]},
                {f"{u.key}/{i}": ctx.sha(p) for u in parts for i, p in enumerate(u.outputs)}, tables, concat_parts,
                {"parts": [u.outputs for u in parts], "outputs": tables}, code)]


def _require_datasets(attributes: list[str], kept: Any, summary: Any) -> None:
    """Every ``probe.attributes`` entry has a dataset in at least one language.

    Raises:
        XalignError: one line naming the attribute(s) and why data prep skipped them.
    """
    from ..errors import XalignError

    none = [a for a in attributes if a not in set(kept.attribute)]
    if none:
        why = summary[summary.attribute == none[0]].reason.head(2).tolist()
        raise XalignError(f"probe.attributes: no dataset for {none} in any language of data.languages "
                          f"(data/summary.csv: {'; '.join(why) or 'not built'})")


def probe_part(P: Any, c: dict, lang: str, attrs: list[str], extra: list[str], vectors: Path, labels: Path,
               outputs: tuple[Path, ...]) -> dict:
    """Train one (checkpoint, language)'s probes and write its selections and greedy paths
    (and its stability / methods tables, see :func:`_tables`)."""
    from ..probe import ProbeConfig

    pp = P.probe
    cfg = ProbeConfig(lr=pp.lr, weight_decay=pp.weight_decay, max_epochs=pp.max_epochs, patience=pp.patience,
                      batch_size=pp.batch_size, mc_samples=pp.mc_samples, entropy_scale=pp.entropy_scale,
                      held_out_fraction=pp.held_out_fraction, restore=pp.restore, seed=P.seed)
    lab = read_table(labels)
    lab = lab[(lab.language == lang) & lab.attribute.isin(attrs + extra)].reset_index(drop=True)
    tensors = LazyTensors(vectors)  # one layer in memory at a time
    meta, skipped = tensors.metadata, []
    d = int(meta["hidden_size"])
    out = _probe_unit(P, cfg, c, lang, sorted(attrs + extra), lab, tensors, meta, d, skipped,
                      layers_of={a: sweep_layers_in(P, meta["layers"]) for a in extra})
    for t, dest in zip(_tables(pp), outputs):
        write_table(out[t], dest)
    return {"probes": len(out["selections"]), "skipped": skipped}


def _tables(pp: Any) -> tuple[str, ...]:
    """The tables a part (and the stage) writes: ``stability`` only with ``probe.selection: stability``,
    ``methods`` only with ``probe.compare_methods``."""
    return (("selections", "paths") + (("stability",) if pp.selection == "stability" else ())
            + (("methods",) if pp.compare_methods else ()))


def concat_parts(parts: list[tuple[Path, ...]], outputs: tuple[Path, ...]) -> dict:
    """The stage's tables: every part's selections (and paths, stability, methods), in unit order."""
    for i, dest in enumerate(outputs):
        dfs = [df for df in (read_table(p[i]) for p in parts) if len(df)]
        write_table(pd.concat(dfs, ignore_index=True) if dfs else pd.DataFrame(), dest)
    return None


def gather(ctx: Context, s: StageSummary, units: list[Unit]) -> None:
    """Table ``selections``: one row per probe (and seed); ``stability`` with stability selection;
    ``methods`` (one row per probe and compared method) with ``probe.compare_methods``."""
    f = ctx.run_dir / "probing" / "selections.parquet"
    s.tables["selections"] = read_table(f) if units else pd.DataFrame()
    f = ctx.run_dir / "probing" / "stability.parquet"
    if units and ctx.P.probe.selection == "stability":
        s.tables["stability"] = read_table(f)
    if units and ctx.P.probe.compare_methods:
        s.tables["methods"] = read_table(ctx.run_dir / "probing" / "methods.parquet")
