"""End to end: every notebook through jupytext + papermill (run_all.sh) on params/minimal.yaml."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_run_all_minimal(minimal_run: Path) -> None:
    tmp_path = minimal_run
    run = tmp_path / "runs" / "minimal"
    executed = sorted(p.name for p in (run / "notebooks").glob("*.ipynb"))
    assert executed == [f"{p.stem}.ipynb" for p in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py"))]
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-000005", "step-000015", "step-000040"]

    sel = pd.read_parquet(run / "probing" / "selections.parquet")
    assert set(sel.language) == {"en", "es", "fr"}
    assert set(sel.attribute) <= {"Number", "POS"} and "POS" in set(sel.attribute)
    assert (sel.neurons.map(len) == 3).all() and (sel.d == 64).all()
    # the layer sweep (1..3 hidden states) exists on the last checkpoint only
    assert set(sel[sel.checkpoint == "step-000040"].layer) == {1, 2, 3}
    assert set(sel[sel.checkpoint == "step-000005"].layer) == {2, 3}

    pairs = pd.read_csv(run / "overlap" / "pairs.csv")
    assert ((pairs.overlap_rate >= 0) & (pairs.overlap_rate <= 1)).all()
    assert (pairs.chance_rate.round(6) == round(3 / 64, 6)).all()

    tr = pd.read_csv(run / "transfer" / "results.csv")
    assert {"pos", "xnli"} == set(tr.task)
    assert {"es", "fr"} <= set(tr[tr.task == "pos"].language)
    table1 = (run / "correlation" / "table1.md").read_text()
    assert "xnli" in table1.lower() and "pos" in table1.lower()
    paper = pd.read_csv(run / "correlation" / "table1_paper.csv")  # the authors' recipe beside it
    assert list(zip(paper.task, paper.kind)) == [("pos", "average"), ("pos", "pairwise"),
                                                  ("xnli", "average"), ("xnli", "pairwise")]
    assert (paper[paper.kind == "average"].n == 3).all()  # lab checkpoints 5, 15, 40: no final model
    assert "| POS | pairwise |" in (run / "correlation" / "table1_paper.md").read_text()

    figs = {p.name for p in (tmp_path / "figures" / "minimal").glob("*.png")}
    for name in ("fig1_overlap_vs_step.png", "fig2_overlap_vs_layer.png", "fig3_overlap_transfer_vs_step.png",
                 "fig5_transfer_vs_step.png"):
        assert name in figs
    assert any(n.startswith("heatmap_") for n in figs) and any(n.startswith("fig4_") for n in figs)
    timings = (run / "timings.csv").read_text().splitlines()
    assert len(timings) == 8

    # the manifest: every artefact with identity, inputs and hash; provenance of the run
    import json

    m = json.loads((run / "manifest.json").read_text())
    assert set(m["stages"]) == {"pretrain", "data_prep", "extraction", "probing", "overlap", "transfer",
                                "correlation", "figures"}
    assert m["run"]["seed"] == 0 and m["run"]["packages"]["torch"].startswith("2.13")
    assert m["run"]["git_commit"] is None or len(m["run"]["git_commit"]) == 40
    keys = set(m["artefacts"])
    for rel in ("data/labels.parquet", "checkpoints/step-000040", "vectors/step-000040/es.safetensors",
                "probing/selections.parquet", "overlap/pairs.parquet", "transfer/results.parquet",
                "correlation/table1.md", "../../figures/minimal/fig2_overlap_vs_layer.png"):
        assert rel in keys, rel
    for rel, e in m["artefacts"].items():
        assert (run / rel).exists() and len(e["identity"]) == 64 and len(e["sha256"]) == 64, rel
    assert m["artefacts"]["vectors/step-000040/es.safetensors"]["inputs"].keys() == {"weights", "words"}
