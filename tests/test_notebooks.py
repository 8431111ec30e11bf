"""The notebooks as a user opens them: jupytext pairs in sync and without outputs, typed
papermill parameters, Colab badges and first cell, and one-line parameter errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import papermill as pm
import pytest

from xalign import colab, notebook
from xalign.params import ParamsError

REPO = Path(__file__).resolve().parents[1]
PY = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py"))


def _cells(nb) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("py", PY, ids=[p.stem for p in PY])
def test_pair_in_sync_and_without_outputs(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb.name} missing: run jupytext --sync {py.relative_to(REPO)}"
    assert _cells(jupytext.read(py)) == _cells(jupytext.read(ipynb)), \
        f"{py.name} and {ipynb.name} differ: run jupytext --sync notebooks/*.py"
    raw = json.loads(ipynb.read_text(encoding="utf-8"))
    code = [c for c in raw["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code), f"{ipynb.name} holds outputs"


@pytest.mark.parametrize("py", PY, ids=[p.stem for p in PY])
def test_parameters_badge_and_colab_cell(py):
    ipynb = py.with_suffix(".ipynb")
    params = pm.inspect_notebook(str(ipynb))
    assert list(params) == list(notebook.PARAMETERS)
    assert [params[p]["inferred_type_name"] for p in notebook.PARAMETERS] == ["str", "dict", "str"]
    assert all(params[p]["help"] for p in notebook.PARAMETERS)
    text = py.read_text(encoding="utf-8")
    badge = f"https://colab.research.google.com/github/{colab.REPO_URL.split('github.com/')[1]}/blob/main/notebooks/{ipynb.name}"
    assert badge in text
    first_code = next(c for c in jupytext.read(py).cells if c.cell_type == "code")
    assert colab.REPO_URL in first_code.source and colab.COLAB_DIR in first_code.source
    assert "bootstrap()" in first_code.source and 'if "google.colab" in sys.modules' in first_code.source
    stage = next(line for line in text.splitlines() if "notebook.setup(" in line)
    assert 'namespace=globals()' in stage


def test_overrides_and_undeclared_parameters():
    assert notebook.parse_overrides('{"probe.k": 20}') == {"probe.k": 20}
    assert notebook.parse_overrides("probe.k: 20") == {"probe.k": 20}
    assert notebook.parse_overrides(None) == {} and notebook.parse_overrides({}) == {}
    with pytest.raises(ParamsError, match="overrides: must map dotted params keys"):
        notebook.parse_overrides("[1, 2]")
    injected = {"In": ["", "# Parameters\nparams = {'run_name': 'x'}\nk = 20\n"], "params": {}, "k": 20}
    with pytest.raises(ParamsError, match=r"papermill parameter\(s\) \['k'\] are not parameters of this notebook"):
        notebook.check_injected(injected)
    # names a user defined interactively are not papermill's: no error on re-running setup
    notebook.check_injected({"In": ["", "cols = [1]"], "cols": [1], "params": "x"})
    notebook.check_injected({"In": ["", "# Parameters\nparams = {}\noverrides = {}\n"]})


def test_undeclared_papermill_parameter_is_one_line_error(tmp_path):
    """``papermill -p k 20`` used to be ignored: now the notebook stops at its setup cell."""
    src = REPO / "notebooks" / "06_correlation.ipynb"
    out = tmp_path / "out.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", str(src), str(out), "-k", "python3", "--cwd", str(REPO),
                           "-p", "k", "20"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode == 1
    err = next(o for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", [])
               if o["output_type"] == "error")
    assert err["ename"] == "ParamsError" and "['k'] are not parameters of this notebook" in err["evalue"]


def test_colab_helpers_outside_colab(monkeypatch):
    assert not colab.in_colab()
    colab.bootstrap()  # does nothing outside Colab (no pip, no clone)
    import numpy

    assert colab.changed_modules({"numpy": numpy.__version__}) == []
    assert colab.changed_modules({"numpy": "0.0.1"}) == [f"numpy 0.0.1 -> {numpy.__version__}"]
    assert colab.gpu_overrides() == {}  # no CUDA here


@pytest.mark.e2e
def test_each_notebook_runs_alone_in_a_fresh_kernel_in_any_order(tmp_path):
    """Every notebook, each in its own papermill run (a fresh kernel), last to first, on an
    empty runs folder: a notebook whose earlier stages are missing runs on the built-in
    slice (says so in one line) instead of failing at its runner cell."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MPLBACKEND": "Agg"}
    over = json.dumps({"runs_dir": str(tmp_path / "runs"), "figures_dir": str(tmp_path / "figures")})
    for py in reversed(PY):
        out = tmp_path / f"{py.stem}.ipynb"
        proc = subprocess.run([sys.executable, "-m", "papermill", str(py.with_suffix(".ipynb")), str(out),
                               "-k", "python3", "--cwd", str(REPO), "-p", "params", "params/minimal.yaml",
                               "-p", "overrides", over], capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, f"{py.name} alone: " + proc.stderr[-3000:]
        text = "".join("".join(o.get("text", "")) for c in json.loads(out.read_text())["cells"]
                       for o in c.get("outputs", []) if o["output_type"] == "stream")
        if py.stem.startswith("07"):  # first: nothing exists yet
            assert "runs on the built-in slice minimal-slice" in text
    assert (tmp_path / "runs" / "minimal-slice" / "correlation" / "table1.csv").is_file()


def test_readme_badges_open_each_notebook():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    repo = colab.REPO_URL.split("github.com/")[1]
    for py in PY:
        assert f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{py.stem}.ipynb" in readme
