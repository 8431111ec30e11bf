"""Notebooks 03 and 04, inline: one probe trained on one real dataset of a run, its greedy
path, and one language pair's overlap with its exact p-value.

Nothing here is a second implementation of the method. The functions pick one example from
a run's artefacts, call the kernels the stages call (:func:`xalign.probe.train_probes`,
:func:`xalign.selection.greedy_select`, :func:`xalign.overlap.overlap_p_value`,
:func:`xalign.overlap.overlap_pairs`, :func:`xalign.plots.fig_overlap_heatmap`) with the
arguments the stages give them, and return tables and figures. ``tests/test_walkthrough_probing.py``
checks that the inline probe picks the neurons the stage's unit picks for the same dataset,
and that the inline overlap equals the stage's.

Notebook 03 (Wang et al. 2024, Sec. 2.1, Eq. 1-4; Stańczak et al. 2023):

* :func:`pick_dataset` — one (checkpoint, layer ℓ, attribute, language) of a run: the
  train/dev/test word vectors (N × d, z-scored with train statistics as the stage does) and
  labels (N,) in C classes, from ``data/labels.parquet`` and ``vectors/<checkpoint>/<lang>.safetensors``;
* :func:`train_one` — the latent-variable probe on it (W (d, C), b (C,), φ (d,));
* :func:`fig_training_curve` — its per-epoch ELBO, training and held-out log-likelihood
  (nats/example), H(q) and the mean marginal;
* :func:`fig_marginals` — the mask marginals σ(φ_d) = q(m_d = 1), sorted;
* :func:`greedy_path`, :func:`path_table`, :func:`fig_greedy_path` — greedy selection on dev:
  normalised MI (bits/bits) against the number of neurons, the k selected marked.

Notebook 04 (Wang et al. 2024, Sec. 3-4):

* :func:`pick_pair` — two languages' selected neurons A, B (k of d each) for one
  (checkpoint, layer, attribute, seed): |A ∩ B|, the rate |A ∩ B| / k, chance k/d and the
  exact one-sided p-value P[X ≥ |A ∩ B|], X ~ Hypergeometric(d, k, k);
* :func:`hypergeom_table`, :func:`fig_null` — that null distribution with the observed overlap;
* :func:`group_pairs`, :func:`fig_heatmap` — every pair of one (checkpoint, layer, attribute),
  averaged over seeds, as the Appendix B.1 heatmap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from ..errors import XalignError
from ..probe import LatentProbe, ProbeConfig
from ..selection import SelectionResult


class WalkthroughError(XalignError, ValueError):
    """The example asked for does not exist in the run (one line naming what does)."""


def show(fig: Figure, dpi: int = 100) -> None:
    """Display a figure inline as PNG. The figures here (and :mod:`xalign.plots`') are drawn on
    their own Agg canvas without pyplot, so IPython has no formatter for them and
    ``display(fig)`` would only print ``<Figure size ...>``."""
    import io

    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    display(Image(data=buf.getvalue(), format="png"))


# ---------------------------------------------------------------------------------------
# notebook 03: one dataset, one probe


@dataclass
class Dataset:
    """One probing dataset: a (checkpoint, layer, attribute, language, lemma-split seed).

    Attributes:
        checkpoint, step, layer, attribute, language, split_seed: which one (layer ℓ as in
            the paper, 1 = embedding output).
        values: the C attribute values, sorted; label ``y = i`` is ``values[i]``.
        X_train, X_dev, X_test: (N_split, d) float32 word vectors (mean of subword hidden
            states, ``hidden_states[ℓ-1]``), z-scored with the training split's statistics
            when ``standardized`` (``probe.standardize``, as the stage).
        y_train, y_dev, y_test: (N_split,) int64 labels in [0, C).
    """

    checkpoint: str
    step: int | None
    layer: int
    attribute: str
    language: str
    split_seed: int
    values: list[str]
    X_train: Tensor
    y_train: Tensor
    X_dev: Tensor
    y_dev: Tensor
    X_test: Tensor
    y_test: Tensor
    standardized: bool = True

    @property
    def d(self) -> int:
        """Hidden size d (dimensions, "neurons")."""
        return int(self.X_train.shape[1])

    @property
    def n_classes(self) -> int:
        """C, the number of attribute values."""
        return len(self.values)

    def ident(self) -> dict[str, Any]:
        """The key columns of this dataset's rows in ``probing/selections.parquet``."""
        return {"checkpoint": self.checkpoint, "layer": self.layer, "attribute": self.attribute,
                "language": self.language, "split_seed": self.split_seed}

    def shapes(self) -> pd.DataFrame:
        """Per split: N × d of X, and how many examples each class has."""
        rows = []
        for split, X, y in (("train", self.X_train, self.y_train), ("dev", self.X_dev, self.y_dev),
                            ("test", self.X_test, self.y_test)):
            counts = torch.bincount(y, minlength=self.n_classes).tolist()
            rows.append({"split": split, "N": int(X.shape[0]), "d": int(X.shape[1]),
                         **{f"n_{v}": c for v, c in zip(self.values, counts)}})
        return pd.DataFrame(rows).set_index("split")

    def describe(self) -> str:
        """One line: which dataset, N × d per split, C and the values."""
        z = "z-scored with train statistics" if self.standardized else "raw"
        return (f"{self.language} {self.attribute} at {self.checkpoint} (step {self.step}), layer ℓ = {self.layer}, "
                f"lemma split {self.split_seed}: X_train {self.X_train.shape[0]}×{self.d}, "
                f"X_dev {self.X_dev.shape[0]}×{self.d}, X_test {self.X_test.shape[0]}×{self.d} ({z}); "
                f"C = {self.n_classes} classes {self.values}")


def _checkpoints(run_dir: Path) -> list[dict]:
    from ..stages._common import checkpoint_rows

    return checkpoint_rows(run_dir)


def load_dataset(run_dir: str | Path, checkpoint: str, layer: int, attribute: str, language: str,
                 split_seed: int = 0, standardize: bool = True) -> Dataset:
    """One dataset of a run, built as stage 3 builds it (:func:`xalign.stages.probing.probe_splits`,
    then :func:`xalign.probe.standardize` with train statistics).

    Args:
        run_dir: the run folder (``P.run_dir()``), with ``checkpoints.json``,
            ``data/labels.parquet`` and ``vectors/<checkpoint>/<language>.safetensors``.
        checkpoint: a checkpoint name (``step-000040``); layer: ℓ (1 = embedding output).
        attribute, language: e.g. ``"POS"``, ``"en"``. split_seed: a lemma-split seed of ``data.split_seeds``.
        standardize: z-score every dimension with the training split's mean and std.

    Raises:
        WalkthroughError: the checkpoint, language, attribute, split seed or layer is not in
            the run, or a split is empty (one line, naming what the run has).
        ArtefactError: a missing or corrupt artefact (one line, naming the file).
    """
    from ..probe import standardize as zscore
    from ..stages._common import vectors_path
    from ..stages.probing import probe_splits
    from ..store import LazyTensors, read_table

    run_dir = Path(run_dir)
    ckpts = {c["name"]: c for c in _checkpoints(run_dir)}
    if checkpoint not in ckpts:
        raise WalkthroughError(f"{run_dir.name}: no checkpoint {checkpoint!r} (have {sorted(ckpts)})")
    labels = read_table(run_dir / "data" / "labels.parquet")
    if "split_seed" not in labels.columns:  # written before split seeds existed: seed 0, as the stage
        labels = labels.assign(split_seed=0)
    lab = labels[(labels.language == language) & (labels.attribute == attribute)]
    if lab.empty:
        have = labels.groupby("language").attribute.unique()
        have = "; ".join(f"{l}: {', '.join(sorted(a))}" for l, a in have.items())
        raise WalkthroughError(f"{run_dir.name}/data/labels.parquet: no dataset {language}/{attribute} (have {have})")
    lab = lab[lab.split_seed == split_seed]
    if lab.empty:
        seeds = sorted(int(s) for s in labels[(labels.language == language)
                                              & (labels.attribute == attribute)].split_seed.unique())
        raise WalkthroughError(f"{run_dir.name}: {language}/{attribute} has no lemma split {split_seed} (have {seeds})")
    tensors = LazyTensors(vectors_path(run_dir, checkpoint, language))
    layers = list(tensors.metadata.get("layers", []))
    if layer not in layers:
        raise WalkthroughError(f"{tensors.path}: no layer {layer} (have {layers})")
    splits, values = probe_splits(lab, tensors, layer)
    (Xtr, ytr), (Xdv, ydv), (Xte, yte) = splits["train"], splits["dev"], splits["test"]
    empty = [s for s, (_, y) in splits.items() if len(y) == 0]
    if empty or len(values) < 2:
        raise WalkthroughError(f"{run_dir.name}: {language}/{attribute} at {checkpoint} layer {layer}: "
                               f"{'empty ' + '/'.join(empty) + ' split' if empty else 'one class only'}")
    if standardize:
        Xtr, Xdv, Xte = zscore(Xtr, Xdv, Xte)
    return Dataset(checkpoint=checkpoint, step=ckpts[checkpoint].get("step"), layer=int(layer), attribute=attribute,
                   language=language, split_seed=int(split_seed), values=list(values), X_train=Xtr, y_train=ytr,
                   X_dev=Xdv, y_dev=ydv, X_test=Xte, y_test=yte, standardized=standardize)


def default_example(P: Any) -> dict[str, Any]:
    """The example the notebooks show unless told otherwise: the last checkpoint, the last
    main layer (``extraction.layers``), POS if probed (else the first of ``probe.attributes``),
    English if probed (else the first language), the first lemma-split seed and probe seed.

    Raises:
        ArtefactError: the run has no ``checkpoints.json`` yet.
    """
    ckpts = _checkpoints(P.run_dir())
    if not ckpts:
        raise WalkthroughError(f"{P.run_name}: checkpoints.json lists no checkpoint")
    attrs = list(P.probe.attributes)
    langs = list(P.data.languages)
    return {"checkpoint": ckpts[-1]["name"], "layer": max(P.extraction.layers),
            "attribute": "POS" if "POS" in attrs else attrs[0], "language": "en" if "en" in langs else langs[0],
            "split_seed": P.data.split_seed_list(P.seed)[0],
            "seed": P.probe.seed_list(P.seed)[0]}


def pick_dataset(P: Any, checkpoint: str | None = None, layer: int | None = None, attribute: str | None = None,
                 language: str | None = None, split_seed: int | None = None) -> Dataset:
    """:func:`load_dataset` on ``P``'s run, every argument left out taken from :func:`default_example`.

    Raises:
        WalkthroughError, ArtefactError: as :func:`load_dataset`.
    """
    ex = default_example(P)
    given = {"checkpoint": checkpoint, "layer": layer, "attribute": attribute, "language": language,
             "split_seed": split_seed}
    args = {k: (v if v is not None else ex[k]) for k, v in given.items()}
    return load_dataset(P.run_dir(), standardize=P.probe.standardize, **args)


def probe_config(P: Any, seed: int | None = None) -> ProbeConfig:
    """The :class:`~xalign.probe.ProbeConfig` stage 3 trains with (``params.probe``; the
    stage's ``probe_part`` builds the same), with ``seed`` (default: the first of ``probe.seeds``)."""
    pp = P.probe
    return ProbeConfig(lr=pp.lr, weight_decay=pp.weight_decay, max_epochs=pp.max_epochs, patience=pp.patience,
                       batch_size=pp.batch_size, mc_samples=pp.mc_samples, entropy_scale=pp.entropy_scale,
                       held_out_fraction=pp.held_out_fraction, restore=pp.restore,
                       seed=pp.seed_list(P.seed)[0] if seed is None else int(seed))


def train_one(ds: Dataset, config: ProbeConfig) -> LatentProbe:
    """The latent-variable probe of one dataset and seed (``config.seed``), as stage 3 trains it
    (:func:`xalign.probe.train_probes`; Stańczak et al. 2023, Wang et al. 2024 Eq. 1-4).

    Maximises ``E_q[log p(π | h ⊙ m)] + λ H(q)`` over W (d, C), b (C,) and the mask logits
    φ (d,), ``q(m) = Π_d Bernoulli(σ(φ_d))``, with early stopping on a held-out part of train.

    Returns:
        The probe with its per-epoch ``history`` (see :class:`xalign.probe.LatentProbe`).
    """
    from ..probe import train_probes

    return train_probes(ds.X_train, ds.y_train, ds.n_classes, config, [config.seed])[0]


def training_table(probe: LatentProbe) -> pd.DataFrame:
    """One row per epoch: ``train_elbo``, ``train_loglik``, ``held_out_loglik`` (nats/example),
    ``entropy`` H(q) (nats), ``mean_marginal``; ``best`` marks the epoch returned."""
    df = pd.DataFrame(probe.history).set_index("epoch")
    df["best"] = df.index == probe.best_epoch
    return df


def _fig(ncols: int, size: tuple[float, float] = (5.2, 3.6)) -> tuple[Figure, list]:
    fig = Figure(figsize=(size[0] * ncols, size[1]), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(np.atleast_1d(fig.subplots(1, ncols)))


def fig_training_curve(probe: LatentProbe, title: str = "") -> Figure:
    """Left: the objective per epoch (training ELBO = log-likelihood + λ H(q), training and
    held-out log-likelihood under masks m ~ q, nats/example), the returned epoch marked.
    Right: H(q) / (d ln 2) (1 = every marginal 0.5) and the mean marginal σ(φ)."""
    h = training_table(probe)
    fig, (ax, ax2) = _fig(2)
    ax.plot(h.index, h.train_elbo, label="train ELBO (objective)", color="C0")
    ax.plot(h.index, h.train_loglik, label="train log-likelihood", color="C0", linestyle="--")
    ax.plot(h.index, h.held_out_loglik, label="held-out log-likelihood (early stopping)", color="C1")
    ax.axvline(probe.best_epoch, color="0.4", linestyle=":", label=f"returned epoch {probe.best_epoch}")
    ax.set_xlabel("epoch (one full-batch Adam step)" if (probe.config and probe.config.batch_size is None) else "epoch")
    ax.set_ylabel("nats / example")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    d = probe.n_dims
    ax2.plot(h.index, h.entropy / (d * np.log(2)), label="H(q) / (d ln 2)", color="C2")
    ax2.plot(h.index, h.mean_marginal, label="mean σ(φ)", color="C3")
    ax2.axvline(probe.best_epoch, color="0.4", linestyle=":")
    ax2.set_ylim(0, 1.05)
    ax2.set_xlabel("epoch")
    ax2.legend(fontsize="small")
    ax2.grid(alpha=0.3)
    fig.suptitle(title or "Training the latent-variable probe")
    return fig


def marginals_table(probe: LatentProbe, top: int = 10) -> pd.DataFrame:
    """The ``top`` dimensions by mask marginal ``σ(φ_d) = q(m_d = 1)``, highest first (ties:
    lower index), with ``phi`` and the weight norm ``||W[d, :]||``."""
    m = probe.marginals
    order = torch.sort(m, descending=True, stable=True).indices[:top]
    return pd.DataFrame({"neuron": order.tolist(), "marginal": m[order].tolist(), "phi": probe.phi[order].tolist(),
                         "w_norm": probe.W[order].norm(dim=1).tolist()}).rename_axis("rank")


def fig_marginals(probe: LatentProbe, selected: list[int] | None = None, title: str = "") -> Figure:
    """The d mask marginals σ(φ_d), sorted from high to low (one bar per dimension); the
    ``selected`` neurons (greedy, on dev) in colour and labelled. A dimension the attribute
    needs is kept on (marginal near 1); the entropy term pulls the others towards 0.5."""
    m = probe.marginals.numpy()
    order = np.argsort(-m, kind="stable")
    sel = set(selected or [])
    fig, (ax,) = _fig(1, (8.0, 3.4))
    colors = ["C3" if int(i) in sel else "0.65" for i in order]
    ax.bar(np.arange(len(m)), m[order], color=colors, width=0.9)
    for j, (r, i) in enumerate((r, i) for r, i in enumerate(order) if int(i) in sel):
        ax.annotate(str(int(i)), (r, m[i]), xytext=(0, 3 + 9 * (j % 2)), textcoords="offset points",
                    ha="center", fontsize=8, color="C3")
    handles = [ax.axhline(0.5, color="0.35", linestyle="--", linewidth=1, label="σ(φ) = 0.5 (start)")]
    if sel:
        handles.append(Patch(color="C3", label=f"greedy-selected on dev: {', '.join(map(str, selected))}"))
    ax.set_xlabel(f"dimension rank by σ(φ_d) (d = {len(m)})")
    ax.set_ylabel("q(m_d = 1) = σ(φ_d)")
    ax.set_ylim(0, 1.08)
    ax.legend(handles=handles, fontsize="small", loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title or "Mask marginals of the trained probe, sorted")
    return fig


def greedy_path(probe: LatentProbe, ds: Dataset, k: int, extra: int = 0) -> SelectionResult:
    """Greedy selection on dev (:func:`xalign.selection.greedy_select`, as stage 3), run for
    ``k + extra`` steps (at most d). The path is nested (step t does not depend on how many
    steps follow), so its first k neurons are the stage's k-selection; the extra steps show
    how the MI goes on."""
    from ..selection import greedy_select

    return greedy_select(probe, ds.X_dev, ds.y_dev, k=min(ds.d, k + extra), X_test=ds.X_test, y_test=ds.y_test)


def path_table(res: SelectionResult, k: int | None = None) -> pd.DataFrame:
    """One row per greedy step t: the neuron added, dev log-likelihood (nats/example), its
    gain and standard error, dev / test normalised MI (bits/bits) and accuracy; ``selected``
    marks t ≤ k."""
    n = len(res.neurons)
    df = pd.DataFrame({"neuron": res.neurons, "dev_loglik": res.dev_loglik, "dev_gain": res.dev_gain,
                       "dev_gain_se": res.dev_gain_se, "dev_mi": res.dev_mi, "test_mi": res.test_mi,
                       "dev_acc": res.dev_acc, "test_acc": res.test_acc}, index=pd.RangeIndex(1, n + 1, name="t"))
    df["selected"] = df.index <= (n if k is None else k)
    return df


def fig_greedy_path(res: SelectionResult, k: int, d: int, title: str = "") -> Figure:
    """Normalised MI (bits/bits) on dev and test against the number t of greedy-selected
    neurons, each point labelled with the neuron added; and the selection at t = k marked. (The same
    probe with all d dimensions on, ``res.test_mi_all``, is off its training distribution
    and not drawn.)"""
    t = np.arange(1, len(res.neurons) + 1)
    fig, (ax,) = _fig(1, (7.0, 3.8))
    ax.plot(t, res.dev_mi, marker="o", label="dev (selection set)", color="C0")
    ax.plot(t, res.test_mi, marker="s", label="test", color="C1")
    for ti, n, v in zip(t, res.neurons, res.dev_mi):
        ax.annotate(str(n), (ti, v), xytext=(0, 5), textcoords="offset points", ha="center", fontsize=8,
                    color="C3" if ti <= k else "0.4")
    ax.axvline(k, color="C3", linestyle="--", linewidth=1, label=f"k = {k} selected ({k}/{d} = {k / d:.3f})")
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_xlabel("t, neurons selected greedily on dev")
    ax.set_ylabel("normalised MI (bits / bits)")
    ax.set_xticks(t)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    ax.set_title(title or "Greedy selection: MI vs number of neurons")
    return fig


def sweep_row(selections: pd.DataFrame, ds: Dataset, seed: int) -> pd.Series:
    """The row of ``probing/selections.parquet`` for this dataset and probe seed.

    Raises:
        WalkthroughError: the table has no such row.
    """
    m = np.ones(len(selections), dtype=bool)
    for c, v in {**ds.ident(), "seed": seed}.items():
        if c in selections.columns:
            m &= (selections[c] == v).to_numpy()
    if not m.any():
        raise WalkthroughError(f"probing/selections.parquet: no row for {ds.ident()} seed {seed}")
    return selections[m].iloc[0]


# ---------------------------------------------------------------------------------------
# notebook 04: one pair's overlap


@dataclass
class PairOverlap:
    """Two languages' selections for one (checkpoint, layer, attribute, seed, split seed) and
    their overlap (Wang et al. 2024, Sec. 3-4).

    Attributes:
        A, B: the k neurons selected for ``lang_a`` and ``lang_b`` (sorted), out of d.
        shared: A ∩ B, sorted. n_overlap: |A ∩ B|. rate: |A ∩ B| / k. chance: k / d, the
            expected rate of two independent uniformly random k-subsets.
        p_value: exact one-sided P[X ≥ |A ∩ B|], X ~ Hypergeometric(M = d, n = k, N = k)
            (:func:`xalign.overlap.overlap_p_value`), before Holm.
    """

    checkpoint: str
    layer: int
    attribute: str
    lang_a: str
    lang_b: str
    seed: int
    split_seed: int
    d: int
    k: int
    A: list[int]
    B: list[int]
    shared: list[int] = field(init=False)
    n_overlap: int = field(init=False)
    rate: float = field(init=False)
    chance: float = field(init=False)
    p_value: float = field(init=False)

    def __post_init__(self) -> None:
        from ..overlap import overlap_p_value

        self.shared = sorted(set(self.A) & set(self.B))
        self.n_overlap = len(self.shared)
        self.rate = self.n_overlap / self.k
        self.chance = self.k / self.d
        self.p_value = overlap_p_value(self.n_overlap, self.d, self.k)

    def describe(self) -> str:
        """One line: the two sets, |A ∩ B|, the rate, chance and p."""
        return (f"{self.attribute}, layer ℓ = {self.layer}, {self.checkpoint}, seed {self.seed}: "
                f"A ({self.lang_a}) = {self.A}, B ({self.lang_b}) = {self.B}, A ∩ B = {self.shared}; "
                f"|A ∩ B| / k = {self.n_overlap}/{self.k} = {self.rate:.3f}, chance k/d = {self.k}/{self.d} = "
                f"{self.chance:.3f}, p = P[X ≥ {self.n_overlap}] = {self.p_value:.3g}")


def load_selections(run_dir: str | Path) -> pd.DataFrame:
    """``probing/selections.parquet`` of a run (stage 3's output; one row per probe and seed).

    Raises:
        ArtefactError: missing (probing has not run) or unreadable, one line.
    """
    from ..store import read_table

    return read_table(Path(run_dir) / "probing" / "selections.parquet")


def _group(sel: pd.DataFrame, checkpoint: str, layer: int, attribute: str) -> pd.DataFrame:
    g = sel[(sel.checkpoint == checkpoint) & (sel.layer == layer) & (sel.attribute == attribute)]
    if g.empty:
        have = sel.drop_duplicates(["checkpoint", "layer", "attribute"])
        have = sorted({(r.checkpoint, int(r.layer), r.attribute) for r in have.itertuples()})
        raise WalkthroughError(f"probing/selections.parquet: no selections for checkpoint={checkpoint} layer={layer} "
                               f"attribute={attribute} (have {len(have)} groups, e.g. {have[:4]})")
    return g


def pick_pair(selections: pd.DataFrame, checkpoint: str, layer: int, attribute: str, lang_a: str = "en",
              lang_b: str | None = None, seed: int | None = None, split_seed: int | None = None) -> PairOverlap:
    """One pair's overlap from the stage-3 selections table.

    Args:
        selections: ``probing/selections.parquet``. checkpoint, layer, attribute: the group.
        lang_a: the first language (the transfer source, English, by default); lang_b: the
            other (default: the first other language of the group, alphabetically).
        seed, split_seed: the replicate (default: the smallest in the table); the stage
            compares a seed's selections with the same seed's.

    Raises:
        WalkthroughError: the group, a language or the replicate is not in the table (one line).
    """
    g = _group(selections, checkpoint, layer, attribute)
    reps = {}
    for col, want in (("seed", seed), ("split_seed", split_seed)):
        if col in g.columns:
            have = sorted(int(v) for v in g[col].unique())
            v = have[0] if want is None else int(want)
            if v not in have:
                raise WalkthroughError(f"probing/selections.parquet: {col}={v} not in {have}")
            g, reps[col] = g[g[col] == v], v
    langs = sorted(g.language.unique())
    others = [l for l in langs if l != lang_a]
    lang_b = lang_b if lang_b is not None else (others[0] if others else None)
    missing = [l for l in (lang_a, lang_b) if l not in langs]
    if missing or lang_b == lang_a:
        raise WalkthroughError(f"probing/selections.parquet: {checkpoint} layer {layer} {attribute}: need two "
                               f"different languages, {missing or [lang_a]} not available (have {langs})")
    ra, rb = (g[g.language == l].iloc[0] for l in (lang_a, lang_b))
    return PairOverlap(checkpoint=checkpoint, layer=int(layer), attribute=attribute, lang_a=lang_a, lang_b=lang_b,
                       seed=reps.get("seed", 0), split_seed=reps.get("split_seed", 0), d=int(ra.d), k=int(ra.k),
                       A=sorted(int(n) for n in ra.neurons), B=sorted(int(n) for n in rb.neurons))


def hypergeom_table(d: int, k: int, observed: int | None = None) -> pd.DataFrame:
    """The null distribution of |A ∩ B| for two independent uniformly random k-subsets of d
    neurons: X ~ Hypergeometric(M = d, n = k, N = k) (``scipy.stats.hypergeom``), one row per
    o = 0..k with ``P[X = o]`` and the one-sided tail ``P[X ≥ o]`` (the p-value of an observed
    o); E[X] / k = k / d is the chance rate. ``observed`` marks one row."""
    from scipy.stats import hypergeom

    o = np.arange(k + 1)
    df = pd.DataFrame({"rate": o / k, "pmf": hypergeom.pmf(o, d, k, k), "p_tail": hypergeom.sf(o - 1, d, k, k)},
                      index=pd.Index(o, name="overlap"))
    if observed is not None:
        df["observed"] = df.index == observed
    return df


def fig_null(pair: PairOverlap) -> Figure:
    """The hypergeometric null of |A ∩ B| (bars, P[X = o]) with the observed overlap and its
    tail P[X ≥ o] (the p-value) in colour, and the chance mean k²/d dashed."""
    t = hypergeom_table(pair.d, pair.k, pair.n_overlap)
    fig, (ax,) = _fig(1, (6.0, 3.4))
    colors = ["C3" if o >= pair.n_overlap else "0.65" for o in t.index]
    ax.bar(t.index, t.pmf, color=colors)
    mean = ax.axvline(pair.k * pair.k / pair.d, color="0.35", linestyle="--", linewidth=1,
                      label=f"E[X] = k²/d = {pair.k ** 2 / pair.d:.2f} (rate k/d = {pair.chance:.3f})")
    tail = Patch(color="C3", label=f"X ≥ {pair.n_overlap} (observed): p = {pair.p_value:.3g}")
    ax.set_yscale("log")
    ax.set_xticks(t.index)
    ax.set_xlabel(f"|A ∩ B| under the null (two random {pair.k}-subsets of d = {pair.d})")
    ax.set_ylabel("P[X = o] (log scale)")
    ax.legend(handles=[tail, mean], fontsize="small", loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"{pair.lang_a}–{pair.lang_b}: hypergeometric null and the observed overlap")
    return fig


def group_pairs(selections: pd.DataFrame, checkpoint: str, layer: int, attribute: str,
                alpha: float = 0.05) -> pd.DataFrame:
    """Every language pair of one (checkpoint, layer, attribute), as the stage computes them:
    per replicate (:func:`xalign.overlap.overlap_pairs`, Holm over the group's pairs), then
    the mean over seeds (:func:`xalign.overlap.summarise_seeds`) — the group's rows of
    ``overlap/pairs.parquet``, which the Appendix B.1 heatmaps draw."""
    from ..overlap import overlap_pairs, summarise_seeds

    return summarise_seeds(overlap_pairs(_group(selections, checkpoint, layer, attribute), alpha=alpha))


def fig_heatmap(selections: pd.DataFrame, checkpoint: str, layer: int, attribute: str, alpha: float = 0.05) -> Figure:
    """Language × language overlap rates of one group, mean over seeds
    (:func:`xalign.plots.fig_overlap_heatmap` on :func:`group_pairs`)."""
    from ..plots import fig_overlap_heatmap

    return fig_overlap_heatmap(group_pairs(selections, checkpoint, layer, attribute, alpha), checkpoint, layer,
                               attribute)


def pair_replicates(selections: pd.DataFrame, checkpoint: str, layer: int, attribute: str, lang_a: str,
                    lang_b: str) -> pd.DataFrame:
    """The pair's overlap in every replicate (probe seed × lemma-split seed) the table has, one
    :class:`PairOverlap` per row: what the stage's ``pairs`` row averages over
    (``overlap_rate`` mean, t interval over the replicates)."""
    g = _group(selections, checkpoint, layer, attribute)
    cols = [c for c in ("seed", "split_seed") if c in g.columns]
    reps = g[cols].drop_duplicates().sort_values(cols).itertuples(index=False) if cols else [()]
    rows = []
    for rep in reps:
        kw = dict(zip(cols, (int(v) for v in rep)))
        p = pick_pair(selections, checkpoint, layer, attribute, lang_a, lang_b, **kw)
        rows.append({"seed": p.seed, "split_seed": p.split_seed, "A": p.A, "B": p.B, "shared": p.shared,
                     "n_overlap": p.n_overlap, "overlap_rate": p.rate, "chance_rate": p.chance, "p_value": p.p_value})
    return pd.DataFrame(rows)


def sweep_pair(pairs_by_seed: pd.DataFrame, pair: PairOverlap) -> pd.Series:
    """The row of ``overlap/pairs_by_seed.parquet`` (stage 4) for this pair and replicate.

    Raises:
        WalkthroughError: the table has no such row.
    """
    a, b = sorted((pair.lang_a, pair.lang_b))
    want = {"checkpoint": pair.checkpoint, "layer": pair.layer, "attribute": pair.attribute, "lang_a": a,
            "lang_b": b, "seed": pair.seed, "split_seed": pair.split_seed}
    m = np.ones(len(pairs_by_seed), dtype=bool)
    for c, v in want.items():
        if c in pairs_by_seed.columns:
            m &= (pairs_by_seed[c] == v).to_numpy()
    if not m.any():
        raise WalkthroughError(f"overlap/pairs_by_seed.parquet: no row for {want}")
    return pairs_by_seed[m].iloc[0]
