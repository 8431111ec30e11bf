"""``probe.compare_methods``: stage 3 also runs Probeless (Antverg & Belinkov 2022) and weight
mass next to greedy, scored by the same latent probe, into ``probing/methods.parquet``.

Planted run: three of d = 16 standard-normal dims shift the class means of a 3-valued POS in
every language, so greedy and Probeless must both find them (agreement 1, the same MI at k),
the cross-lingual overlap is high under both, and greedy's own tables do not change."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from xalign.params import ParamsError, load_params
from xalign.pipeline import run_stage
from xalign.store import read_table, save_tensors, write_json, write_table

REPO = Path(__file__).resolve().parents[1]
D, PLANTED, LAYER, CKPT, LANGS = 16, (2, 7, 12), 3, "step-000010", ("en", "es", "fr")


def _plant_run(run_dir: Path, n_sent: int = 50, seed: int = 0) -> None:
    """checkpoints.json, data/labels.parquet, data/summary.parquet and one vectors file per
    language: POS with values A, B, C whose class means differ by 1.5 sd on the planted dims."""
    write_json([{"name": CKPT, "step": 10, "excluded": False}], run_dir / "checkpoints.json")
    g = torch.Generator().manual_seed(seed)
    rows = []
    for lang in LANGS:
        n = n_sent * 10
        y = torch.arange(n) % 3
        X = torch.randn(n, D, generator=g)
        for j, dim in enumerate(PLANTED):
            X[:, dim] += 1.5 * ((y + j) % 3 - 1).float()
        sent, word = torch.arange(n) // 10, torch.arange(n) % 10
        save_tensors({f"layer_{LAYER}": X, "sent_idx": sent, "word_idx": word},
                     run_dir / "vectors" / CKPT / f"{lang}.safetensors",
                     metadata={"language": lang, "layers": [LAYER], "hidden_size": D, "checkpoint": CKPT})
        split = np.where(sent.numpy() % 10 < 6, "train", np.where(sent.numpy() % 10 < 8, "dev", "test"))
        rows.append(pd.DataFrame({"language": lang, "attribute": "POS", "sent_idx": sent.numpy(),
                                  "word_idx": word.numpy(), "value": np.array(["A", "B", "C"])[y.numpy()],
                                  "split": split, "split_seed": 0}))
    write_table(pd.concat(rows, ignore_index=True), run_dir / "data" / "labels.parquet")
    write_table(pd.DataFrame({"language": list(LANGS), "attribute": "POS", "status": "kept", "reason": ""}),
                run_dir / "data" / "summary.parquet")


def _params(tmp: Path, methods: list[str]):
    return load_params(REPO / "params" / "minimal.yaml", overrides={
        "run_name": "planted", "runs_dir": str(tmp / "runs"), "figures_dir": str(tmp / "figures"),
        "probe.attributes": ["POS"], "probe.sweep_attributes": None, "probe.max_epochs": 100,
        "probe.patience": 20, "probe.lr": 0.05, "probe.retrain": False, "probe.compare_methods": methods})


def _probing(P):
    """Stage 3 alone (the planted run has no extraction manifest to be current against)."""
    from xalign.stages import probing

    stage = types.SimpleNamespace(name="probing", notebook="03_probing", upstream=(),
                                  plan=probing.plan, gather=probing.gather)
    return run_stage(P, "probing", {"probing": stage})


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("methods")
    P = _params(tmp, ["probeless", "weight_mass"])
    _plant_run(P.run_dir())
    s = _probing(P)
    run = P.run_dir() / "probing"
    return P, s, read_table(run / "selections.parquet"), read_table(run / "methods.parquet")


def test_methods_table_has_one_row_per_probe_and_method(planted):
    P, s, sel, meth = planted
    n_probes = len(LANGS) * len(P.probe.seed_list(P.seed))
    assert len(sel) == n_probes and len(meth) == 2 * n_probes
    assert meth.groupby("method").size().to_dict() == {"probeless": n_probes, "weight_mass": n_probes}
    assert {"checkpoint", "step", "layer", "attribute", "language", "split_seed", "seed", "d", "k", "method",
            "neurons", "dev_mi", "test_mi", "dev_acc", "test_acc", "agreement_with_greedy"} <= set(meth.columns)
    assert "methods" in s.tables and len(s.tables["methods"]) == len(meth)
    parts = sorted((P.run_dir() / "probing" / "parts" / CKPT).glob("*.methods.parquet"))
    assert [p.name for p in parts] == [f"{l}.methods.parquet" for l in LANGS]
    assert (meth.k == P.probe.k).all() and (meth.d == D).all()


def test_probeless_and_greedy_find_the_planted_dims(planted):
    P, _, sel, meth = planted
    k = P.probe.k
    assert k == len(PLANTED)
    greedy = {(r.language, r.seed): sorted(int(n) for n in r.neurons) for r in sel.itertuples()}
    assert all(v == sorted(PLANTED) for v in greedy.values())
    pl = meth[meth.method == "probeless"]
    for r in pl.itertuples():
        assert sorted(int(n) for n in r.neurons) == sorted(PLANTED)
        own = len(set(int(n) for n in r.neurons) & set(greedy[(r.language, r.seed)])) / k
        assert r.agreement_with_greedy == own == 1.0
    # every row's agreement is |A ∩ G| / k of its own neurons (weight mass included)
    for r in meth.itertuples():
        own = len(set(int(n) for n in r.neurons) & set(greedy[(r.language, r.seed)])) / k
        assert r.agreement_with_greedy == pytest.approx(own)


def test_same_set_same_probe_same_mi(planted):
    """MI at k depends on the set only (the same latent probe scores every method's path)."""
    _, _, sel, meth = planted
    m = meth.merge(sel, on=["checkpoint", "layer", "attribute", "language", "split_seed", "seed"],
                   suffixes=("", "_greedy"))
    same = m[m.agreement_with_greedy == 1.0]
    assert len(same) >= len(sel)  # at least every Probeless row
    for col in ("dev_mi", "test_mi", "dev_acc", "test_acc"):
        # float32 paths, neurons added in another order: equal to rounding
        np.testing.assert_allclose(same[col], same[f"{col}_greedy"], rtol=0, atol=1e-6)
    assert (same.test_mi > 0.3).all()


def test_overlap_by_method_reuses_the_stage_kernels(planted, tmp_path):
    from xalign import overlap as ov
    from xalign.stages.overlap import compute

    P, _, sel, meth = planted
    write_table(sel, tmp_path / "probing" / "selections.parquet")
    compute(tmp_path / "probing" / "selections.parquet", None, tmp_path / "overlap", alpha=0.05, seed=0)
    stage_avg = read_table(tmp_path / "overlap" / "average.parquet")
    by = ov.overlap_by_method(meth, sel)
    assert list(by.columns) == ov.METHOD_AVERAGE_COLUMNS
    assert sorted(by.method) == ["greedy", "probeless", "weight_mass"]
    g = by[by.method == "greedy"].iloc[0]
    assert g.overlap_rate == pytest.approx(stage_avg.overlap_rate.iloc[0], abs=1e-12)
    assert g.n_pairs == stage_avg.n_pairs.iloc[0] == 3 and g.n_seeds == 2
    p = by[by.method == "probeless"].iloc[0]
    assert p.overlap_rate == 1.0 and p.chance_rate == P.probe.k / D and p.n_significant == 3
    assert ov.overlap_by_method(meth.iloc[:0]).empty
    with pytest.raises(ValueError, match="no 'method' column"):
        ov.overlap_by_method(sel)


def test_method_agreement_table(planted):
    from xalign import overlap as ov

    P, _, _, meth = planted
    ag = ov.method_agreement(meth)
    assert list(ag.columns) == ov.AGREEMENT_COLUMNS and sorted(ag.method) == ["probeless", "weight_mass"]
    pl = ag[ag.method == "probeless"].iloc[0]
    assert pl.agreement == 1.0 and pl.n_probes == 6 and pl.chance_rate == P.probe.k / D
    wm = ag[ag.method == "weight_mass"].iloc[0]
    assert wm.agreement == pytest.approx(meth[meth.method == "weight_mass"].agreement_with_greedy.mean())


def test_no_methods_table_without_compare_methods(planted):
    """[] (the default): no methods table, and greedy's selections are what they were."""
    P0, _, sel, _ = planted
    P = _params(P0.run_dir().parents[1], [])  # the same run folder (this test runs last)
    assert P.run_dir() == P0.run_dir()
    s = _probing(P)
    run = P.run_dir() / "probing"
    assert not (run / "methods.parquet").exists() and not list(run.rglob("*.methods.parquet"))
    assert "methods" not in s.tables
    cols = ["language", "seed", "dev_mi", "test_mi", "best_epoch"]
    after = read_table(run / "selections.parquet")
    pd.testing.assert_frame_equal(after[cols], sel[cols])
    assert [list(map(int, n)) for n in after.neurons] == [list(map(int, n)) for n in sel.neurons]


@pytest.mark.parametrize("value, needle", [
    (["greedy"], "params.probe.compare_methods: unknown method(s) ['greedy']; known: ['probeless', 'weight_mass']"),
    (["probeless", "probeless"], "params.probe.compare_methods: ['probeless'] listed twice"),
    (["Probeless"], "params.probe.compare_methods: unknown method(s) ['Probeless']"),
])
def test_bad_compare_methods_is_one_line_naming_the_key(value, needle):
    with pytest.raises(ParamsError) as e:
        load_params(REPO / "params" / "minimal.yaml", overrides={"probe.compare_methods": value})
    msg = str(e.value)
    assert "\n" not in msg and needle in msg
