"""End to end: every notebook through jupytext + papermill (run_all.sh) on params/minimal.yaml."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_run_all_prints_one_bar_and_one_summary_per_stage(minimal_run: Path) -> None:
    """The terminal of a headless run: per stage its header, papermill's progress bar (redrawn
    with \\r), the stage's summary line and its time; no per-cell lines, no kernel transport
    warning (``--engine xalign``: IPC), no papermill INFO lines, no Python warnings."""
    import re

    allowed = re.compile(r"^(== minimal: (\d\d_\w+( took [\d.]+ s)?|all stages took .*)"
                         r"|\[[a-z_]+\] computed \d+, reused \d+.*; [\d.]+ s|Executing: .*(cell/s|s/cell)\])$")
    text = "".join((minimal_run / f"run_all.{s}").read_bytes().decode() for s in ("stdout", "stderr"))
    lines = [ln.split("\r")[-1] if not ln.endswith("\r") else ln.rstrip("\r").split("\r")[-1]
             for ln in text.split("\n") if ln.strip("\r")]
    unexpected = [ln for ln in lines if not allowed.match(ln)]
    assert unexpected == [], unexpected[:10]
    n_stages = len(list((REPO / "notebooks").glob("[0-9][0-9]_*.py")))
    assert sum(ln.startswith("Executing: ") for ln in lines) == n_stages  # one bar each (its last state)
    assert sum(bool(re.match(r"^\[[a-z_]+\] computed", ln)) for ln in lines) == n_stages
    assert len(lines) == 4 * n_stages + 1


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
    # probe.seeds [0, 1] x data.split_seeds [0, 1]: every dataset twice, each probe twice,
    # pairs per replicate, intervals and the ceiling
    labels = pd.read_parquet(run / "data" / "labels.parquet")
    assert set(labels.split_seed) == {0, 1}
    for (lang, _), lab in labels.groupby(["language", "split_seed"]):  # each split stays lemma-disjoint
        words = pd.read_parquet(run / "data" / "words" / f"{lang}.parquet")
        m = lab.merge(words[["sent_idx", "word_idx", "lemma", "form"]], on=["sent_idx", "word_idx"])
        key = m.lemma.where(m.lemma != "_", m.form)
        assert (m.groupby(key).split.nunique() == 1).all()
    s0 = labels[labels.split_seed == 0].set_index(["language", "attribute", "sent_idx", "word_idx"]).split
    s1 = labels[labels.split_seed == 1].set_index(["language", "attribute", "sent_idx", "word_idx"]).split
    common = s0.index.intersection(s1.index)
    assert (s0[common] != s1[common]).mean() > 0.1  # the two seeds split differently
    assert set(sel.seed) == {0, 1} and set(sel.split_seed) == {0, 1}
    per_dataset = sel.groupby(["checkpoint", "layer", "attribute", "language"]).size()
    assert per_dataset.max() == 4
    by_seed = pd.read_parquet(run / "overlap" / "pairs_by_seed.parquet")
    assert len(by_seed) == pairs.n_seeds.sum() and pairs.n_seeds.max() == 4
    assert ((pairs.overlap_lo <= pairs.overlap_rate + 1e-9) & (pairs.overlap_rate <= pairs.overlap_hi + 1e-9)).all()
    avg = pd.read_parquet(run / "overlap" / "average.parquet")
    assert avg[["overlap_lo", "overlap_hi", "self_overlap_rate"]].notna().all().all()
    changes = pd.read_parquet(run / "overlap" / "changes.parquet")
    assert set(changes.checkpoint_to) == {"step-000015", "step-000040"}
    assert pd.read_parquet(run / "probing" / "paths.parquet").dev_gain_se.notna().all()

    tr = pd.read_csv(run / "transfer" / "results.csv")
    # transfer.seeds [0, 1]: per-seed rows, their mean and an interval over seeds
    by_seed = pd.read_parquet(run / "transfer" / "results_by_seed.parquet")
    assert set(by_seed.seed) == {0, 1} and len(by_seed) == 2 * len(tr) and (tr.n_seeds == 2).all()
    mean = by_seed.groupby(["checkpoint", "task", "language", "metric"]).value.mean()
    assert (tr.set_index(["checkpoint", "task", "language", "metric"]).value - mean).abs().max() < 1e-12
    assert ((tr.ci_low <= tr.ci_high) & tr.seed_lo.notna()).all()
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


def _paper_data_root(bundle: Path, dest: Path, n_dev: int) -> Path:
    """A data root for the paper's fine-tuning data: ``ud/``, ``text/`` and ``xnli/*.tsv`` link
    into the bundle, and the two training files the fetcher would write are planted from bundle
    rows (the bundle has neither): ``xnli/train-en.tsv`` from English XNLI dev rows after the
    first ``n_dev`` (the ones model selection reads), ``udpos/en-ud-train.conllu`` from GUM train."""
    (dest / "xnli").mkdir(parents=True)
    (dest / "udpos").mkdir()
    for sub in ("ud", "text"):
        (dest / sub).symlink_to(bundle / sub)
    for f in (bundle / "xnli").glob("*.tsv"):
        (dest / "xnli" / f.name).symlink_to(f)
    dev = (bundle / "xnli" / "dev-en.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (dest / "xnli" / "train-en.tsv").write_text("".join([dev[0], *dev[1 + n_dev:1 + n_dev + 400]]), encoding="utf-8")
    gum = (bundle / "ud" / "UD_English-GUM" / "en_gum-ud-train.conllu").read_text(encoding="utf-8")
    (dest / "udpos" / "en-ud-train.conllu").write_text("\n\n".join(gum.split("\n\n")[:300]) + "\n\n", encoding="utf-8")
    return dest


#: The paper's fine-tuning and the reference probe trainer, on the minimal run's small data:
#: QLoRA (nf4, double quantisation), LoRA r 8 / alpha 32 / dropout 0.05, AdamW 2e-5, gradient
#: accumulation, English dev scored every few optimiser steps with the best restored, XTREME /
#: MultiNLI training files; raw vectors, minibatches of 256, reference entropy, last epoch.
PAPER_MODE = {
    "probe": {"standardize": False, "batch_size": 256, "max_epochs": 5000, "patience": 50,
              "entropy_scale": "reference", "restore": "last"},
    "transfer": {"qlora": True, "compute_dtype": "float32", "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.05,
                 "lr": 2e-5, "epochs": {"pos": 2, "xnli": 1}, "batch_size": 8, "grad_accum": 2,
                 "eval_every": {"pos": 2, "xnli": 2}, "pos_train": "xtreme", "xnli_train": "mnli",
                 "pos_languages": ["en", "es", "fr"]},
    "correlation": {"recipe": "paper"},
}


@pytest.mark.e2e
def test_run_all_minimal_with_the_papers_fine_tuning_and_probe_settings(minimal_run: Path, data_root: Path,
                                                                      tmp_path: Path) -> None:
    """run_all.sh on params/minimal.yaml in paper mode, in a copy of the minimal run: stages
    before probing are reused, probing and transfer run with the paper's settings."""
    import json
    import math
    import os
    import shutil
    import subprocess
    import sys

    import yaml

    from xalign.params import load_params

    shutil.copytree(minimal_run / "runs", tmp_path / "runs")
    cfg = yaml.safe_load((REPO / "params" / "minimal.yaml").read_text())
    for section, values in PAPER_MODE.items():
        cfg["params"].setdefault(section, {}).update(values)
    n_ev = cfg["params"]["transfer"]["max_eval_examples"]
    cfg["params"].update(runs_dir=str(tmp_path / "runs"), figures_dir=str(tmp_path / "figures"),
                         data_root=str(_paper_data_root(data_root, tmp_path / "data", n_ev)))
    pfile = tmp_path / "minimal.yaml"
    pfile.write_text(yaml.safe_dump(cfg))
    P = load_params(pfile)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(REPO / "run_all.sh"), str(pfile)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run, ref = tmp_path / "runs" / "minimal", minimal_run / "runs" / "minimal"
    m, m_ref = (json.loads((r / "manifest.json").read_text())["artefacts"] for r in (run, ref))

    # data, checkpoints and vectors are the minimal run's; the probes are new, trained as the reference
    for rel in ("data/labels.parquet", "checkpoints/step-000040", "vectors/step-000040/es.safetensors"):
        assert m[rel]["identity"] == m_ref[rel]["identity"], rel
    probes = [e for rel, e in m.items() if rel.startswith("probing/parts/")]
    assert probes and all(e["identity"] != m_ref[rel]["identity"] for rel, e in m.items()
                          if rel.startswith("probing/parts/") and rel in m_ref)
    assert all({k: e["config"][k] for k in PAPER_MODE["probe"]} == PAPER_MODE["probe"] for e in probes)
    sel = pd.read_parquet(run / "probing" / "selections.parquet")
    assert (sel.neurons.map(len) == 3).all() and set(sel.language) == {"en", "es", "fr"}

    # transfer: the planted training files, the step schedule, seqeval F1 beside accuracy
    tr = pd.read_csv(run / "transfer" / "results.csv")
    pos, xnli = tr[tr.task == "pos"], tr[tr.task == "xnli"]
    assert set(pos.metric) == {"accuracy", "f1", "macro_f1"} and set(xnli.metric) == {"accuracy"}
    assert set(pos.language) == {"en-dev", "en", "es", "fr"} and set(xnli.language) == {"en-dev", "en", "es", "fr"}
    n_train = P.transfer.max_train_examples
    for task, df in (("pos", pos), ("xnli", xnli)):
        ep, every = P.transfer.epochs[task], P.transfer.eval_every[task]
        steps = ep * math.ceil(math.ceil(n_train / P.transfer.batch_size) / P.transfer.grad_accum)
        assert (df.n_steps == steps).all(), task
        assert (df.n_evals == steps // every + (steps % every != 0)).all(), task
        assert ((df.best_step >= 1) & (df.best_step <= steps)).all(), task
    assert not list((run / "transfer" / "parts").rglob("*.resume.pt"))  # finished units leave none
    assert ((tr.value >= 0) & (tr.value <= 1)).all()
    paper = pd.read_csv(run / "correlation" / "table1.csv")  # correlation.recipe: paper
    assert list(zip(paper.task, paper.kind)) == [("pos", "average"), ("pos", "pairwise"),
                                                  ("xnli", "average"), ("xnli", "pairwise")]


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    kids = {int(p) for p in out}
    return kids.union(*(_descendants(k) for k in kids)) if kids else set()


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_run_all_stops_its_stage(tmp_path, sig) -> None:
    """SIGTERM / SIGINT to run_all.sh's PID while a stage runs: the script exits non-zero and
    no process it started (papermill, the kernel, ...) is left."""
    import json
    import time

    import yaml

    cfg = yaml.safe_load((REPO / "params" / "minimal.yaml").read_text())
    cfg["params"].update(runs_dir=str(tmp_path / "runs"), figures_dir=str(tmp_path / "figures"))
    pfile = tmp_path / "minimal.yaml"
    pfile.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(["bash", str(REPO / "run_all.sh"), str(pfile)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest, t0 = tmp_path / "runs" / "minimal" / "manifest.json", time.monotonic()
    try:
        while True:  # the kernel is running stage 0 once its first checkpoint is recorded
            assert proc.poll() is None and time.monotonic() - t0 < 300, proc.stderr.read()[-2000:]
            try:
                if any(k.startswith("checkpoints/step-") for k in json.loads(manifest.read_text())["artefacts"]):
                    break
            except (FileNotFoundError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        started = _descendants(proc.pid)
        assert len(started) >= 2  # papermill and the kernel at least
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err[-2000:]
    assert "stopped by SIG" in err and "00_pretrain" in err
    time.sleep(0.5)
    left = [p for p in started if Path(f"/proc/{p}").exists()
            and Path(f"/proc/{p}/stat").read_text().split()[2] != "Z"]
    assert not left, f"processes left after stopping run_all.sh: {left}"


def test_table1_per_method_greedy_rows_are_the_stages(minimal_run: Path) -> None:
    """``stats.correlation_by_method`` on the minimal run (``probe.compare_methods:
    [probeless]``): greedy's rows equal stage 6's Table 1 in both recipes; Probeless gets its own."""
    from xalign.params import load_params
    from xalign.stages._common import checkpoint_rows
    from xalign.stats import correlation_by_method

    P = load_params(minimal_run / "minimal.yaml")
    run = P.run_dir()
    methods, sel = (pd.read_parquet(run / "probing" / f"{t}.parquet") for t in ("methods", "selections"))
    transfer = pd.read_parquet(run / "transfer" / "results.parquet")
    assert set(methods.method) == {"probeless"}
    for recipe in ("per_layer", "paper"):
        t = correlation_by_method(methods, sel, transfer, recipe=recipe, layers=P.extraction.layers,
                                  attributes=P.probe.attributes,
                                  checkpoints=[c["name"] for c in checkpoint_rows(run)])
        assert set(t.method) == {"greedy", "probeless"}
        name = "table1" if recipe == P.correlation.recipe else f"table1_{recipe}"
        stage = pd.read_parquet(run / "correlation" / f"{name}.parquet")
        greedy = t[t.method == "greedy"].drop(columns="method").reset_index(drop=True)
        pd.testing.assert_frame_equal(greedy[stage.columns], stage, check_dtype=False)
        assert len(t[t.method == "probeless"]) == len(stage)
