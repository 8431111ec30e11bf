"""Runs: resume after SIGKILL, determinism, reuse by artefact identity, bad input at stage level.

The reference is the uninterrupted ``run_all.sh`` run of ``params/minimal.yaml`` (the
``minimal_run`` session fixture, also checked by the end-to-end test).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from xalign import runs
from xalign.params import ParamsError, load_params
from xalign.pipeline import StaleUpstream
from xalign.pipeline.manifest import Manifest
from xalign.store import ArtefactError, load_tensors, save_tensors

REPO = Path(__file__).resolve().parents[1]
STAGES = ["pretrain", "data_prep", "extraction", "probing", "overlap", "transfer", "correlation", "figures"]
_DRIVER = ("import sys; from xalign.params import load_params; from xalign import runs; "
           "P = load_params(sys.argv[1]); [getattr(runs, 'run_' + s)(P) for s in sys.argv[2:]]")


def _params_file(tmp: Path) -> Path:
    import yaml

    cfg = yaml.safe_load((REPO / "params" / "minimal.yaml").read_text())
    cfg["params"]["runs_dir"] = str(tmp / "runs")
    cfg["params"]["figures_dir"] = str(tmp / "figures")
    f = tmp / "minimal.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def _run_until(pfile: Path, run: Path, prefix: str, timeout: float = 600) -> None:
    """Start every stage in a subprocess; SIGKILL it as soon as the run's manifest records an
    artefact whose path starts with ``prefix`` (so at least one unit of that stage is done and
    the stage is still running)."""
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, str(pfile), *STAGES], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = run / "manifest.json"
    t0 = time.monotonic()

    def recorded() -> bool:
        try:
            return any(k.startswith(prefix) for k in json.loads(manifest.read_text())["artefacts"])
        except (FileNotFoundError, ValueError, KeyError):
            return False
    try:
        while not recorded():
            if proc.poll() is not None:
                raise AssertionError(f"run ended (rc {proc.returncode}) before {prefix} was recorded: "
                                     + proc.stderr.read().decode()[-2000:])
            assert time.monotonic() - t0 < timeout, f"{prefix} not recorded within {timeout} s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _summaries(stdout: str) -> dict[str, tuple[int, int]]:
    """``{stage: (computed, reused)}`` from the stages' one-line summaries."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("[") and "] computed " in line:
            stage, rest = line[1:].split("] computed ", 1)
            computed, reused = rest.split(";")[0].split(", reused ")
            out[stage] = (int(computed), int(reused))
    return out


def _tables(run: Path) -> dict[str, pd.DataFrame]:
    keys = {"probing/selections.parquet": ["checkpoint", "layer", "attribute", "language"],
            "probing/paths.parquet": ["checkpoint", "layer", "attribute", "language", "step_k"],
            "overlap/pairs.parquet": ["checkpoint", "layer", "attribute", "lang_a", "lang_b"],
            "transfer/results.parquet": ["checkpoint", "task", "language"],
            "correlation/table1.parquet": None}
    out = {}
    for rel, by in keys.items():
        df = pd.read_parquet(run / rel)
        out[rel] = (df.sort_values(by) if by else df).reset_index(drop=True)
    return out


@pytest.mark.e2e
def test_killed_and_resumed_run_equals_uninterrupted_run(minimal_run: Path, tmp_path: Path) -> None:
    """SIGKILL during pretraining, extraction, probing and transfer; a final start
    completes. Every table equals the uninterrupted papermill run's exactly: the run resumes
    correctly, and two runs with the same params and seed give identical checkpoints,
    vectors, neuron sets and numbers on CPU."""
    pfile = _params_file(tmp_path)
    run = tmp_path / "runs" / "minimal"
    _run_until(pfile, run, "checkpoints/step-")
    again = subprocess.run([sys.executable, "-c", _DRIVER, str(pfile), "pretrain"], cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    computed, reused = _summaries(again.stdout)["pretrain"]
    assert reused >= 1 and computed >= 1 and computed + reused == 3  # resumed after the saved checkpoints
    _run_until(pfile, run, "vectors/")
    _run_until(pfile, run, "probing/parts/")
    _run_until(pfile, run, "transfer/parts/")
    done = subprocess.run([sys.executable, "-c", _DRIVER, str(pfile), *STAGES], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summ = _summaries(done.stdout)
    assert summ["pretrain"] == (0, 3) and summ["data_prep"] == (0, 4) and summ["extraction"] == (0, 10)
    assert summ["probing"][1] > 0 and summ["transfer"][1] >= 1  # resumed, not restarted
    assert not [p for p in run.rglob("*.tmp")], "a killed run's temporary file was left behind"

    ref = minimal_run / "runs" / "minimal"
    w = lambda r: [c["weights_sha256"] for c in json.loads((r / "checkpoints.json").read_text())]
    assert w(run) == w(ref)
    for f in sorted((ref / "vectors").rglob("*.safetensors")):
        a, _ = load_tensors(f)
        b, _ = load_tensors(run / f.relative_to(ref))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    got, want = _tables(run), _tables(ref)
    for rel in want:
        pd.testing.assert_frame_equal(got[rel], want[rel], check_exact=True, obj=rel)


@pytest.fixture()
def run_copy(minimal_run: Path, tmp_path: Path):
    """A copy of the finished minimal run and a params loader pointing at it."""
    shutil.copytree(minimal_run / "runs", tmp_path / "runs")
    shutil.copytree(minimal_run / "figures", tmp_path / "figures")

    def params(**overrides):
        return load_params(REPO / "params" / "minimal.yaml",
                           overrides={"runs_dir": str(tmp_path / "runs"), "figures_dir": str(tmp_path / "figures"),
                                      **overrides})
    return tmp_path / "runs" / "minimal", params


def _counts(s: runs.StageSummary) -> tuple[int, int]:
    return s.computed, s.reused


def test_a_parameter_change_recomputes_only_what_depends_on_it(run_copy) -> None:
    run, params = run_copy
    P = params()
    # same params: the papermill run's artefacts are all reused (the run folder can move)
    assert _counts(runs.run_pretrain(P)) == (0, 3)
    assert _counts(runs.run_data_prep(P)) == (0, 4)
    assert _counts(runs.run_extraction(P)) == (0, 10)  # 9 vectors files + the series
    n_probes = runs.run_probing(P).reused
    assert n_probes > 0 and _counts(runs.run_overlap(P))[0] == 0
    assert _counts(runs.run_correlation(P))[0] == 0
    before = pd.read_parquet(run / "probing" / "selections.parquet")

    # probe.k: probing and overlap recomputed; extraction untouched
    P = params(**{"probe.k": 2})
    assert _counts(runs.run_extraction(P)) == (0, 10)  # 9 vectors files + the series
    assert _counts(runs.run_probing(P)) == (n_probes, 0)
    after = pd.read_parquet(run / "probing" / "selections.parquet")
    assert (after.neurons.map(len) == 2).all() and (before.neurons.map(len) == 3).all()
    n_pairs = runs.run_overlap(P).computed
    assert n_pairs > 0

    # overlap.alpha: only the overlap
    P = params(**{"probe.k": 2, "overlap.alpha": 0.01})
    assert _counts(runs.run_probing(P)) == (0, n_probes)
    assert _counts(runs.run_overlap(P)) == (n_pairs, 0)

    # an artefact changed on disk behind the manifest's back is not trusted
    f = run / "overlap" / "pairs.parquet"
    f.write_bytes(f.read_bytes()[:-10])
    assert runs.run_overlap(params(**{"probe.k": 2, "overlap.alpha": 0.01})).computed == n_pairs

    # data.min_count: words tables reused, labels rebuilt
    P = params(**{"data.min_count": 6})
    assert _counts(runs.run_data_prep(P)) == (1, 3)

    # data.multiword_tokens: words re-read; French (du = de + le, au, des, ...) changes, so its
    # vectors are extracted again for every checkpoint, with one vector per surface token
    fr_words = pd.read_parquet(run / "data" / "words" / "fr.parquet")
    P = params(**{"data.multiword_tokens": "surface"})
    assert _counts(runs.run_data_prep(P)) == (4, 0)
    fr_surface = pd.read_parquet(run / "data" / "words" / "fr.parquet")
    assert len(fr_surface) < len(fr_words) and (fr_surface.form == "du").any()
    s = runs.run_extraction(P)
    assert s.computed >= 3 and s.computed + s.reused == 10
    labels = pd.read_parquet(run / "data" / "labels.parquet")
    sents = set(labels[labels.language == "fr"].sent_idx)
    want = sorted(map(tuple, fr_surface[fr_surface.sent_idx.isin(sents)][["sent_idx", "word_idx"]].to_numpy()))
    for ckpt in ("step-000005", "step-000015", "step-000040"):
        vec = load_tensors(run / "vectors" / ckpt / "fr.safetensors")[0]
        assert sorted(zip(vec["sent_idx"].tolist(), vec["word_idx"].tolist())) == want


def test_corrupt_vectors_file_is_extracted_again(run_copy) -> None:
    run, params = run_copy
    f = run / "vectors" / "step-000015" / "fr.safetensors"
    good = {k: v.clone() for k, v in load_tensors(f)[0].items()}  # loaded tensors map the file
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated
    with pytest.raises(ArtefactError, match=f"{f}: corrupt or truncated"):
        load_tensors(f)
    assert _counts(runs.run_extraction(params())) == (1, 9)
    again, _ = load_tensors(f)
    assert all(torch.equal(good[k], again[k]) for k in good)


def test_nan_hidden_states_write_no_vectors(run_copy, monkeypatch) -> None:
    from xalign import extraction

    run, params = run_copy
    f = run / "vectors" / "step-000015" / "fr.safetensors"
    f.unlink()
    real = extraction._hidden_states
    calls = []

    def nan_in_third_batch(*args, **kw):
        hs = real(*args, **kw)
        calls.append(1)
        if len(calls) == 3:
            hs = {l: h.clone().fill_(float("nan")) for l, h in hs.items()}
        return hs
    monkeypatch.setattr(extraction, "_hidden_states", nan_in_third_batch)
    with pytest.raises(ArtefactError) as e:
        runs.run_extraction(params())
    msg = str(e.value)
    assert msg.startswith("step-000015/fr: hidden states not finite: layer ") and "first: sentence" in msg
    assert "\n" not in msg
    assert not f.exists() and not list(f.parent.glob(".*.tmp"))  # nothing half-written


@pytest.mark.parametrize("key, layers", [("extraction.layers", [2, 7]), ("extraction.sweep_layers", [1, 9])])
def test_layer_out_of_range_is_one_line_and_writes_no_vectors(run_copy, key, layers) -> None:
    run, params = run_copy
    before = {p: p.stat().st_mtime_ns for p in (run / "vectors").rglob("*")}
    manifest = (run / "manifest.json").read_text()
    with pytest.raises(ParamsError, match=rf"params.{key}: layer\(s\) \[{layers[-1]}\] out of range for the lab model"):
        params(**{key: layers})  # the lab's model is known up front: caught before any stage
    P = params()  # stage 2 checks what params cannot know (a Hub or GGUF model): bypass the schema
    P = P.model_copy(update={"extraction": P.extraction.model_copy(update={key.split(".")[1]: layers})})
    with pytest.raises(ValueError) as e:
        runs.run_extraction(P)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{key}: layer(s) [{layers[-1]}] out of range") and "1..3" in msg
    assert {p: p.stat().st_mtime_ns for p in (run / "vectors").rglob("*")} == before
    vec = lambda m: {k: v for k, v in json.loads(m)["artefacts"].items() if k.startswith("vectors/")}
    assert vec((run / "manifest.json").read_text()) == vec(manifest) and len(vec(manifest)) == 9


def test_hidden_size_mismatch_between_vectors_files(run_copy) -> None:
    run, params = run_copy
    f = run / "vectors" / "step-000040" / "fr.safetensors"
    tensors, meta = load_tensors(f)
    narrow = {k: (v[:, :32].contiguous() if k.startswith("layer_") else v) for k, v in tensors.items()}
    save_tensors(narrow, f, {**meta, "hidden_size": 32})
    parts = {p: p.stat().st_mtime_ns for p in (run / "probing").rglob("*.parquet")}
    # edited behind the manifest's back: probing will not read it
    with pytest.raises(StaleUpstream, match=r"^extraction is not current for these params \(step-000040/fr: "
                                            r"changed on disk\): run extraction first \(notebook 02_extraction\)$"):
        runs.run_probing(params())

    def recorded() -> None:  # as if another model's extraction had written it
        m = Manifest.open(run)
        e = m.artefacts["vectors/step-000040/fr.safetensors"]
        m.record(f, e["stage"], e["identity"], e["config"], e["inputs"], unit=e["unit"], code=e["code"],
                 notes=e["notes"])

    recorded()
    with pytest.raises(ArtefactError) as e:
        runs.run_probing(params())
    assert str(e.value) == (f"{f}: hidden size 32 differs from 64 in the same checkpoint's other vectors "
                            "(artefacts of different models; re-run extraction)")
    save_tensors(narrow, f, meta)  # layers 32 wide, metadata says 64
    recorded()
    with pytest.raises(ArtefactError, match=r"fr.safetensors: layer_\d has shape \(\d+, 32\), but the file's "
                                            r"hidden_size is 64"):
        runs.run_probing(params())
    # nothing written: neither fr's part nor the stage's tables
    assert {p: p.stat().st_mtime_ns for p in (run / "probing").rglob("*.parquet")} == parts


def test_sweep_attributes_are_probed_at_the_last_checkpoints_sweep_only(run_copy) -> None:
    """probe.sweep_attributes (Figure 2 and Appendix B: the paper's eleven) add probes at the
    sweep layers of the last checkpoint only; the series, Table 1 and Figures 1/3/4 keep
    probe.attributes, and the series' probing units keep their identity (reused)."""
    run, params = run_copy
    P0 = params()
    before = pd.read_parquet(run / "probing" / "selections.parquet")
    last = "step-000040"
    n_series = before[before.checkpoint != last][["checkpoint", "language"]].drop_duplicates().shape[0]  # units
    # sweep layers 1 and 3 of the 3 hidden states; the series' layers are 2 and 3
    P = params(**{"probe.sweep_attributes": ["Gender", "Number"], "extraction.sweep_layers": [1, 3]})
    s = runs.run_extraction(P)
    assert s.computed == 3 and s.reused == 7  # the last checkpoint's vectors only (new sweep)
    s = runs.run_probing(P)
    # the series' parts are reused, and so is en's at the last checkpoint: en keeps no Gender
    # dataset, and its vectors ([2, 3] + sweep [1, 3] = all 3 layers, as before) are byte-identical
    assert s.reused == n_series + 1 and s.computed == 3  # es, fr at the last checkpoint + the tables
    sel = s.tables["selections"]
    series, at_last = sel[sel.checkpoint != last], sel[sel.checkpoint == last]
    assert set(series.attribute) == {"Number", "POS"} and set(series.layer) == {2, 3}
    gender = at_last[at_last.attribute == "Gender"]
    assert len(gender) and set(gender.layer) == {1, 3}  # sweep layers only, not layer 2
    assert set(gender.language) <= {"es", "fr", "en"} and {"es", "fr"} <= set(gender.language)
    for attr in ("Number", "POS"):  # probe.attributes: every extracted layer of the last checkpoint
        assert set(at_last[at_last.attribute == attr].layer) == {1, 2, 3}

    runs.run_overlap(P)
    table = runs.run_correlation(P).tables["table1"]
    assert set(table.attribute) <= {"Number", "POS", "mean"} and "Gender" not in set(table.attribute)
    figs = set(runs.run_figures(P).tables["figures"].figure)
    assert f"heatmap_Gender_L3_{last}" in figs and f"heatmap_Gender_L2_{last}" not in figs
    assert not any("Gender" in f for f in figs if f.startswith("fig4_"))
    assert (P.figure_dir() / "fig2_overlap_vs_layer.png").is_file()

    # back to no sweep attributes: the series is still reused, the last checkpoint redone
    assert runs.run_extraction(P0).computed == 3
    s = runs.run_probing(P0)
    assert s.reused == n_series + 1 and "Gender" not in set(s.tables["selections"].attribute)  # + en, as above


@pytest.mark.parametrize("task, key, source, rel, step", [
    ("pos", "pos_train", "xtreme", "udpos/en-ud-train.conllu", "udpos"),
    ("xnli", "xnli_train", "mnli", "xnli/train-en.tsv", "mnli")])
def test_missing_paper_training_file_is_one_line_with_the_fetch_command(tmp_path, task, key, source, rel, step):
    """The paper's English training sets are fetched, never shipped: the stage stops at once."""
    from xalign.params import resolve_data_root

    shared = resolve_data_root(None)
    root = tmp_path / "data"
    (root / "xnli").mkdir(parents=True)
    (root / "ud").symlink_to(shared / "ud")
    for f in (shared / "xnli").glob("*-*.tsv"):
        if not f.name.startswith("train-"):
            (root / "xnli" / f.name).symlink_to(f)
    P = load_params(REPO / "params" / "minimal.yaml",
                    overrides={"runs_dir": str(tmp_path / "runs"), "figures_dir": str(tmp_path / "figures"),
                               "data_root": str(root), "transfer.tasks": [task], f"transfer.{key}": source})
    with pytest.raises(FileNotFoundError) as e:
        runs.run_transfer(P)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(root / rel))
    assert f"transfer.{key}: {source}" in msg
    assert f"python -m xalign.data fetch --only {step} --root {root}" in msg
    assert not (P.run_dir() / "transfer").exists()


def test_outputs_the_params_no_longer_produce_are_removed(run_copy) -> None:
    """transfer.tasks: [] after a full run: Table 1 and the transfer figures go, listed in the
    summary, instead of staying beside the new outputs."""
    run, params = run_copy
    P = params(**{"transfer.tasks": []})
    fig_dir = P.figure_dir()
    assert (run / "correlation" / "table1.csv").is_file() and (fig_dir / "fig5_transfer_vs_step.png").is_file()
    s = runs.run_correlation(P)
    assert (s.computed, s.reused) == (0, 0) and s.tables == {}
    assert not list((run / "correlation").glob("table1*")) and len(s.removed) == 6
    s = runs.run_figures(P)
    assert s.computed == 1 and not list(fig_dir.glob("fig[345]_*")) and (fig_dir / "fig1_overlap_vs_step.png").is_file()
    assert sorted(n for n in s.removed if "fig5" in n) == ["../../figures/minimal/fig5_transfer_vs_step.png"]
    names = set(s.tables["figures"].figure)
    assert {p.stem for p in fig_dir.glob("*.png")} == names
    manifest = json.loads((run / "manifest.json").read_text())["artefacts"]
    assert not [k for k in manifest if "table1" in k or "fig3_" in k or "fig4_" in k]
    again = runs.run_figures(P)
    assert (again.computed, again.reused) == (0, 1) and set(again.tables["figures"].figure) == names


def test_dropped_checkpoint_steps_leave_no_trace_in_any_output(run_copy) -> None:
    """pretrain.checkpoint_steps [5, 15, 40] -> [5, 15]: the series is retrained (the
    schedule ends at step 15), step-000040 disappears from the checkpoints, checkpoints.json,
    the vectors, the selections, the pairs, the transfer results and Table 1."""
    run, params = run_copy
    n_before = pd.read_parquet(run / "correlation" / "table1.parquet").n.max()
    P = params(**{"pretrain.checkpoint_steps": [5, 15]})
    with pytest.raises(StaleUpstream, match=r"^pretrain is not current for these params \(step-000005: "
                                            r"checkpoint_steps was \[5, 15, 40\], params say \[5, 15\]\): "
                                            r"run pretrain first \(notebook 00_pretrain\)$"):
        runs.run_extraction(P)
    s = runs.run_pretrain(P)
    assert (s.computed, s.reused) == (2, 0) and s.removed == ["checkpoints/step-000040"]
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-000005", "step-000015"]
    for stage in STAGES[1:]:
        getattr(runs, f"run_{stage}")(P)
    assert [c["name"] for c in json.loads((run / "checkpoints.json").read_text())] == ["step-000005", "step-000015"]
    assert not (run / "vectors" / "step-000040").exists() and not (run / "probing" / "parts" / "step-000040").exists()
    for rel in ("probing/selections.parquet", "overlap/pairs.parquet", "transfer/results.parquet"):
        assert set(pd.read_parquet(run / rel).checkpoint) == {"step-000005", "step-000015"}, rel
    manifest = json.loads((run / "manifest.json").read_text())["artefacts"]
    assert not [k for k in manifest if "step-000040" in k]
    n_after = pd.read_parquet(run / "correlation" / "table1.parquet").n.max()
    assert n_after * 3 == n_before * 2  # points per cell: 2 checkpoints of 3


def test_relabelled_data_is_not_probed_on_stale_labels(run_copy) -> None:
    """data.min_count 5 -> 200, then ONLY="03 04": probing stops with one line naming data
    prep instead of reusing probes built on the old labels."""
    run, params = run_copy
    P = params(**{"data.min_count": 200})
    before = (run / "probing" / "selections.parquet").stat().st_mtime_ns
    with pytest.raises(StaleUpstream, match=r"^data_prep is not current for these params \(labels: min_count "
                                            r"was 5, params say 200\): run data_prep first \(notebook 01_data_prep\)$"):
        runs.run_probing(P)
    with pytest.raises(StaleUpstream, match="run data_prep first"):
        runs.run_overlap(P)
    assert (run / "probing" / "selections.parquet").stat().st_mtime_ns == before
