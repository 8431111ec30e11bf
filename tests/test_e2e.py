"""End to end: every notebook through jupytext + papermill (run_all.sh) on params/minimal.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_run_all_minimal(tmp_path: Path) -> None:
    cfg = yaml.safe_load((REPO / "params" / "minimal.yaml").read_text())
    cfg["params"]["runs_dir"] = str(tmp_path / "runs")
    cfg["params"]["figures_dir"] = str(tmp_path / "figures")
    pfile = tmp_path / "minimal.yaml"
    pfile.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(REPO / "run_all.sh"), str(pfile)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

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

    figs = {p.name for p in (tmp_path / "figures" / "minimal").glob("*.png")}
    for name in ("fig1_overlap_vs_step.png", "fig2_overlap_vs_layer.png", "fig3_overlap_transfer_vs_step.png",
                 "fig5_transfer_vs_step.png"):
        assert name in figs
    assert any(n.startswith("heatmap_") for n in figs) and any(n.startswith("fig4_") for n in figs)
    timings = (run / "timings.csv").read_text().splitlines()
    assert len(timings) == 8
