"""The inline walkthrough of notebooks 03 and 04 (:mod:`xalign.walkthrough.probing`) on a
planted run: two of d dimensions carry the label. The inline probe must find them, pick what
the stage's own unit picks for the same dataset, and its overlap and p-value must be the
stage's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import hypergeom

from xalign.params import load_params
from xalign.store import ArtefactError, read_table, save_tensors, write_json, write_table
from xalign.walkthrough import probing as wt

REPO = Path(__file__).resolve().parents[1]
D, PLANTED, LAYER, CKPT = 16, (3, 11), 3, "step-000010"


def _plant_run(run_dir: Path, languages=("en", "es", "fr"), n_sent: int = 60, seed: int = 0) -> None:
    """A run folder with checkpoints.json, data/labels.parquet and one vectors file per language:
    POS with 4 values ``2·[x_3 > 0] + [x_11 > 0]`` (of d = 16 standard-normal dims), 10 words
    per sentence, a lemma-free 70/15/15 split by sentence."""
    write_json([{"name": CKPT, "step": 10, "excluded": False}], run_dir / "checkpoints.json")
    g = torch.Generator().manual_seed(seed)
    rows = []
    for li, lang in enumerate(languages):
        n = n_sent * 10
        X = torch.randn(n, D, generator=g)
        y = 2 * (X[:, PLANTED[0]] > 0).long() + (X[:, PLANTED[1]] > 0).long()
        sent, word = torch.arange(n) // 10, torch.arange(n) % 10
        save_tensors({f"layer_{LAYER}": X, "sent_idx": sent, "word_idx": word},
                     run_dir / "vectors" / CKPT / f"{lang}.safetensors",
                     metadata={"language": lang, "layers": [LAYER], "hidden_size": D, "checkpoint": CKPT})
        split = np.where(sent.numpy() % 20 < 14, "train", np.where(sent.numpy() % 20 < 17, "dev", "test"))
        rows.append(pd.DataFrame({"language": lang, "attribute": "POS", "sent_idx": sent.numpy(),
                                  "word_idx": word.numpy(), "value": np.array(["A", "B", "C", "D"])[y.numpy()],
                                  "split": split, "split_seed": 0}))
    write_table(pd.concat(rows, ignore_index=True), run_dir / "data" / "labels.parquet")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Minimal params (k = 3, seeds 0 and 1) on a planted run; 100 epochs so that q(m) moves."""
    tmp = tmp_path_factory.mktemp("wt_probing")
    P = load_params(REPO / "params" / "minimal.yaml", overrides={
        "run_name": "planted", "runs_dir": str(tmp / "runs"), "figures_dir": str(tmp / "figures"),
        "probe.max_epochs": 100, "probe.patience": 20, "probe.lr": 0.05, "probe.retrain": False})
    _plant_run(P.run_dir())
    return P


def test_inline_probe_finds_the_planted_dims(planted):
    P = planted
    ds = wt.pick_dataset(P)  # defaults: last checkpoint, last main layer, POS, English
    assert (ds.checkpoint, ds.layer, ds.attribute, ds.language) == (CKPT, LAYER, "POS", "en")
    assert ds.X_train.shape == (420, D) and ds.X_dev.shape == (90, D) and ds.n_classes == 4
    assert ds.shapes().loc["train", "N"] == 420 and "420×16" in ds.describe()
    assert torch.allclose(ds.X_train.mean(0), torch.zeros(D), atol=1e-5)  # z-scored with train statistics
    probe = wt.train_one(ds, wt.probe_config(P))
    assert probe.W.shape == (D, 4) and probe.phi.shape == (D,)
    top = wt.marginals_table(probe, top=2)
    assert set(top.neuron) == set(PLANTED)
    assert (probe.marginals[list(PLANTED)] > 0.6).all()
    h = wt.training_table(probe)
    assert len(h) == len(probe.history) and h.best.sum() == 1 and h.held_out_loglik.iloc[-1] > h.held_out_loglik.iloc[0]
    res = wt.greedy_path(probe, ds, k=P.probe.k, extra=4)
    assert len(res.neurons) == P.probe.k + 4 and set(res.neurons[:2]) == set(PLANTED)
    path = wt.path_table(res, P.probe.k)
    assert path.selected.sum() == P.probe.k and path.test_mi.iloc[1] > 0.5
    assert path.dev_gain.iloc[1] > 2 * path.dev_gain_se.iloc[1]  # the planted picks are signal
    for fig in (wt.fig_training_curve(probe), wt.fig_marginals(probe, res.neurons[:3]),
                wt.fig_greedy_path(res, P.probe.k, D)):
        assert fig.axes


def test_inline_probe_equals_the_stage_unit(planted, tmp_path):
    """The stage's unit for (checkpoint, en) writes the selections the walkthrough reproduces."""
    from xalign.stages.probing import probe_part

    P = planted
    run = P.run_dir()
    outs = (tmp_path / "sel.parquet", tmp_path / "paths.parquet")
    probe_part(P, {"name": CKPT, "step": 10}, "en", ["POS"], [], run / "vectors" / CKPT / "en.safetensors",
               run / "data" / "labels.parquet", outs)
    sel = read_table(outs[0])
    ds = wt.pick_dataset(P)
    for seed in P.probe.seed_list(P.seed):
        probe = wt.train_one(ds, wt.probe_config(P, seed))
        res = wt.greedy_path(probe, ds, k=P.probe.k, extra=3)
        row = wt.sweep_row(sel, ds, seed)
        assert [int(n) for n in row.neurons] == res.neurons[:P.probe.k]  # nested path: first k = the k-selection
        assert row.best_epoch == probe.best_epoch
        assert row.test_mi == pytest.approx(res.test_mi[P.probe.k - 1], abs=1e-6)


def _planted_selections() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for seed in (0, 1):
        for lang in ("en", "es", "fr", "de"):
            shared = [0, 1] if lang != "de" else []
            rest = [int(n) for n in rng.permutation(np.arange(2, 20))[:4 - len(shared)]]
            rows.append({"checkpoint": CKPT, "step": 10, "layer": LAYER, "attribute": "POS", "language": lang,
                         "split_seed": 0, "seed": seed, "d": 20, "k": 4, "neurons": shared + rest})
    return pd.DataFrame(rows)


def test_inline_overlap_equals_the_stage(tmp_path):
    from xalign.stages.overlap import compute

    sel = _planted_selections()
    write_table(sel, tmp_path / "probing" / "selections.parquet")
    compute(tmp_path / "probing" / "selections.parquet", None, tmp_path / "overlap", alpha=0.05, seed=0)
    by_seed = read_table(tmp_path / "overlap" / "pairs_by_seed.parquet")
    stage_pairs = read_table(tmp_path / "overlap" / "pairs.parquet")
    sel = wt.load_selections(tmp_path)
    for lang_b in ("es", "fr", "de"):
        for seed in (0, 1):
            pair = wt.pick_pair(sel, CKPT, LAYER, "POS", "en", lang_b, seed=seed)
            row = wt.sweep_pair(by_seed, pair)
            assert pair.n_overlap == row.n_overlap and pair.rate == row.overlap_rate
            assert pair.chance == row.chance_rate == 4 / 20
            assert pair.p_value == pytest.approx(row.p_value, rel=1e-12)
            assert pair.p_value == pytest.approx(float(hypergeom.sf(pair.n_overlap - 1, 20, 4, 4)), rel=1e-12)
            null = wt.hypergeom_table(20, 4, pair.n_overlap)
            assert null.p_tail[pair.n_overlap] == pytest.approx(pair.p_value) and null.pmf.sum() == pytest.approx(1)
    es = wt.pick_pair(sel, CKPT, LAYER, "POS", "en", "es")
    assert es.shared[:2] == [0, 1] and es.n_overlap >= 2 and "|A ∩ B| / k" in es.describe()
    assert wt.pick_pair(sel, CKPT, LAYER, "POS").lang_b == "de"  # first other language, alphabetical
    reps = wt.pair_replicates(sel, CKPT, LAYER, "POS", "en", "es")
    assert list(reps.seed) == [0, 1]
    group = wt.group_pairs(sel, CKPT, LAYER, "POS")
    cols = ["lang_a", "lang_b", "n_overlap", "overlap_rate", "p_holm", "significant", "overlap_lo", "overlap_hi"]
    pd.testing.assert_frame_equal(group[cols].reset_index(drop=True), stage_pairs[cols].reset_index(drop=True))
    assert group[(group.lang_a == "en") & (group.lang_b == "es")].overlap_rate.item() == pytest.approx(reps.overlap_rate.mean())
    assert wt.fig_heatmap(sel, CKPT, LAYER, "POS").axes and wt.fig_null(es).axes


def test_helpers_reject_what_is_not_in_the_run(planted, tmp_path):
    bad = [
        (dict(language="xx"), r"no dataset xx/POS \(have en: POS; es: POS; fr: POS\)"),
        (dict(attribute="Tense"), r"no dataset en/Tense"),
        (dict(checkpoint="step-999"), r"no checkpoint 'step-999' \(have \['step-000010'\]\)"),
        (dict(layer=7), r"no layer 7 \(have \[3\]\)"),
        (dict(split_seed=5), r"has no lemma split 5 \(have \[0\]\)"),
    ]
    for kw, msg in bad:
        with pytest.raises(wt.WalkthroughError, match=msg) as e:
            wt.pick_dataset(planted, **kw)
        assert "\n" not in str(e.value)
    sel = _planted_selections()
    with pytest.raises(wt.WalkthroughError, match="no selections for checkpoint=step-000010 layer=9"):
        wt.pick_pair(sel, CKPT, 9, "POS")
    with pytest.raises(wt.WalkthroughError, match=r"\['it'\] not available"):
        wt.pick_pair(sel, CKPT, LAYER, "POS", "en", "it")
    with pytest.raises(wt.WalkthroughError, match=r"seed=7 not in \[0, 1\]"):
        wt.pick_pair(sel, CKPT, LAYER, "POS", seed=7)
    with pytest.raises(ArtefactError, match="selections.parquet: missing artefact"):
        wt.load_selections(tmp_path)
    with pytest.raises(ArtefactError, match="missing artefact"):
        wt.load_dataset(tmp_path / "nowhere", CKPT, LAYER, "POS", "en")
