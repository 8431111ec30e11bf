"""Every bad-input case of docs/errors.md: the table's ids are this file's cases, and each
case's message contains the one the table documents (one line, naming the file or key)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest
import yaml

from xalign import check

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "errors.md"


def documented() -> dict[str, str]:
    """``{case id: documented message}`` from the tables of docs/errors.md."""
    out: dict[str, str] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| ([A-Z]\d\d) \|.*\| `([^`]+)` \|$", line)
        if m:
            assert m.group(1) not in out, f"case {m.group(1)} documented twice"
            out[m.group(1)] = m.group(2)
    return out


DOC_CASES = documented()


def assert_documented(case: str, msg: str) -> None:
    """``msg`` is one line and contains the documented message (each part around ``…``)."""
    assert "\n" not in msg, f"{case}: not one line: {msg!r}"
    for part in (p for p in DOC_CASES[case].split("…") if p):
        assert part in msg, f"{case}: documented {part!r} not in {msg!r}"


# ---------------------------------------------------------------------------------------
# params: merged into a valid run, checked by python -m xalign.check (run_problems)
# ---------------------------------------------------------------------------------------
PARAMS: dict[str, dict] = {
    "P01": {"probe": {"kk": 3}},
    "P02": {"probe": {"k": "many"}},
    "P03": {"extraction": {"tokenization": "bpe"}},
    "P04": {"extraction": {"device": "gpu"}},
    "P05": {"data": {"attributes": ["Colour"]}},
    "P06": {"probe": {"attributes": ["Numbr", "POS"]}},
    "P07": {"data": {"attributes": ["POS", "Number"]}, "probe": {"attributes": ["Case"]}},
    "P08": {"data": {"attributes": ["POS", "Number"]}, "probe": {"attributes": ["POS"], "sweep_attributes": ["Case", "POS"]}},
    "P09": {"data": {"split_fractions": [0.5, 0.2, 0.2]}},
    "P10": {"data": {"split_fractions": [1.2, -0.1, -0.1]}},
    "P11": {"data": {"split_fractions": [1, 0, 0]}},
    "P12": {"pretrain": {"checkpoint_steps": [10, 5]}},
    "P13": {"data": {"languages": ["en", "xx"]}},
    "P14": {"data": {"languages": []}},
    "P15": {"extraction": {"layers": []}},
    "P16": {"extraction": {"layers": [0, 1]}},
    "P17": {"extraction": {"layers": [3, 9]}},
    "P18": {"probe": {"k": 500}},
    "P19": {"seed": -1},
    "P20": {"probe": {"seeds": []}},
    "P21": {"probe": {"seeds": [1, 1]}},
    "P22": {"data": {"split_seeds": [0, -2]}},
    "P23": {"transfer": {"max_eval_examples": {"pos": 10, "xnli": None}}},
    "P24": {"transfer": {"max_eval_examples": 0}},
    "P25": {"transfer": {"xnli_languages": ["en", "xx"]}},
    "P26": {"data": {"languages": ["es", "fr"]}},
    "P27": {"transfer": {"xnli_languages": ["en", "bg"]}},
    "P28": {"data": {"attributes": ["POS", "POS"]}},
    "P29": {"transfer": {"tasks": ["pos", "pos"]}},
    "P30": {"data": {"treebanks": {"de": "UD_German-GSD"}}},
    "P31": {"checkpoints": {"source": "hub"}},
    "P32": {"checkpoints": {"source": "local"}},
    "P33": {"checkpoints": {"source": "lab", "final_repo": "x/y"}},
    "P34": {"probe": {"lr": 0}},
    "P35": {"overlap": {"alpha": 1.5}},
    "P36": {"transfer": {"epochs": {"pos": 0, "xnli": 1}}},
    "P37": {"probe": {"batch_size": 256}},
    "P38": {"pretrain": {"hidden_size": 190, "n_head": 4}},
    "P39": {"figures": {"formats": []}},
    "P40": {"run_name": "bad name"},
    "P41": {"run_name": None},
    "P42": {"threads": 0},
    "P43": {"extraction": {"layers": [3, 3]}},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return {k: v for k, v in out.items() if v is not None}


def _params_file(tmp_path: Path, body: dict) -> Path:
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({"params": body}), encoding="utf-8")
    return f


@pytest.mark.parametrize("case", sorted(PARAMS))
def test_params_case(tmp_path, case):
    base = yaml.safe_load((REPO / "params" / "tiny-lab.yaml").read_text(encoding="utf-8"))["params"]
    f = _params_file(tmp_path, _merge(base, PARAMS[case]))
    problems = check.run_problems(str(f))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{f}: params."), problems[0]
    assert_documented(case, problems[0])


# ---------------------------------------------------------------------------------------
# the params file itself
# ---------------------------------------------------------------------------------------
def _write(text: str | bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        f = tmp / "run.yaml"
        f.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return f
    return make


FILES: dict[str, Callable[[Path], Path]] = {
    "F01": lambda tmp: tmp / "missing.yaml",
    "F02": lambda tmp: tmp,
    "F03": _write(b"params:\n  run_name: caf\xe9\n"),
    "F04": _write("params:\n  run_name: x\n  probe:\n    k: 3\n   lr: 2\n"),
    "F05": _write("params:\n  run_name: x\n  probe:\n    k: 3\n    k: 4\n"),
    "F06": _write(""),
    "F07": _write("params:\n  run_name: x\nparms: {}\n"),
    "F08": _write("params: [unclosed\n"),
    "F09": _write("params: [a, b]\n"),
}


@pytest.mark.parametrize("case", sorted(FILES))
def test_params_file_case(tmp_path, case):
    f = FILES[case](tmp_path)
    problems = check.run_problems(str(f))
    assert len(problems) == 1 and problems[0].startswith(f"{f}: "), problems
    assert_documented(case, problems[0])


# ---------------------------------------------------------------------------------------
# at run time: what the inputs cannot show before a stage runs
# ---------------------------------------------------------------------------------------
SMALL = {"run_name": "bad-run", "data": {"languages": ["en", "es", "fr"], "attributes": ["POS", "Number"],
                                         "max_sentences_per_language": 300},
         "probe": {"attributes": ["POS"]}, "transfer": {"xnli_languages": ["en", "es", "fr"]},
         "pretrain": {"text_sources": ["tatoeba"]}}


def _small(tmp: Path, **over: dict) -> Path:
    body = _merge({**SMALL, "runs_dir": str(tmp / "runs"), "figures_dir": str(tmp / "figures")}, over)
    return _params_file(tmp, body)


# ---------------------------------------------------------------------------------------
# data files: planted in a mirror of the real bundle, found by the preflight scan
# ---------------------------------------------------------------------------------------
UD = "ud/UD_French-GSD/fr-ud-dev.conllu"


def _replace(root: Path, rel: str, edit: Callable[[bytes], bytes]) -> None:
    f = root / rel
    new = edit(f.read_bytes())
    f.unlink()  # a symlink to the bundle: replaced, the bundle is untouched
    f.write_bytes(new)


def _lines(edit: Callable[[list[str]], list[str]]) -> Callable[[bytes], bytes]:
    return lambda b: "\n".join(edit(b.decode("utf-8").split("\n"))).encode("utf-8")


def _set_line(i: int, fn: Callable[[str], str]) -> Callable[[list[str]], list[str]]:
    return lambda ls: [fn(x) if k == i else x for k, x in enumerate(ls)]


def _first_word_line(b: bytes) -> int:
    return next(k for k, x in enumerate(b.decode("utf-8").split("\n")) if x and not x.startswith("#"))


DATA: dict[str, Callable[[Path], None]] = {
    "D01": lambda r: _replace(r, UD, lambda b: b.decode("utf-8").encode("latin-1", errors="replace")),
    "D02": lambda r: _replace(r, "ud/UD_Spanish-AnCora/es_ancora-ud-test.conllu", lambda b: b"\xef\xbb\xbf" + b),
    "D03": lambda r: _replace(r, "ud/UD_French-GSD/fr-ud-test.conllu", lambda b: b""),
    "D04": lambda r: _replace(r, UD, lambda b: _lines(_set_line(_first_word_line(b), lambda x: x.rsplit("\t", 1)[0]))(b)),
    "D05": lambda r: _replace(r, UD, lambda b: b[: b.index(b"\t", len(b) // 2) + 3]),
    "D06": lambda r: _replace(r, UD, lambda b: _lines(_set_line(_first_word_line(b), lambda x: "one" + x[1:]))(b)),
    "D07": lambda r: _replace(r, "xnli/test-es.tsv", _lines(_set_line(1233, lambda x: "\t".join(x.split("\t")[:2])))),
    "D08": lambda r: _replace(r, "xnli/test-fr.tsv", _lines(_set_line(9, lambda x: x.rsplit("\t", 1)[0] + "\tentails"))),
    "D09": lambda r: _replace(r, "xnli/dev-en.tsv", _lines(_set_line(0, lambda x: "sentence1\tsentence2\tgold_label"))),
    "D10": lambda r: _replace(r, "xnli/test-es.tsv", lambda b: b.decode("utf-8").encode("utf-16")),
    "D11": lambda r: _replace(r, "xnli/test-fr.tsv", lambda b: b.split(b"\n")[0] + b"\n"),
    "D12": lambda r: (r / "xnli" / "test-fr.tsv").unlink(),
    "D13": lambda r: [f.unlink() for f in (r / "ud" / "UD_Spanish-AnCora").iterdir()] and
    (r / "ud" / "UD_Spanish-AnCora").rmdir(),
    "D14": lambda r: _replace(r, "text/tatoeba/es.txt", lambda b: b"\n\n"),
    "D15": lambda r: _replace(r, "text/tatoeba/fr.txt", lambda b: b.decode("utf-8").encode("utf-16-le")),
}


@pytest.mark.parametrize("case", sorted(DATA))
def test_data_case(mirrored_data, tmp_path, case):
    f = _small(tmp_path, data_root=str(mirrored_data))
    assert check.run_problems(str(f)) == []  # the mirror is clean
    DATA[case](mirrored_data)
    problems = check.run_problems(str(f))
    assert len(problems) == 1, problems
    assert problems[0].startswith(str(mirrored_data)), problems[0]
    assert_documented(case, problems[0])


def _run_all(tmp: Path, pfile: Path, only: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "ONLY": only, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(REPO / "run_all.sh"), str(pfile)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def case_stale_upstream(tmp: Path) -> str:
    """R01: ``ONLY=03`` on a fresh run, through run_all.sh: the last line is the error,
    the traceback is in the log and the notebook, not on the terminal."""
    proc = _run_all(tmp, _small(tmp), "03")
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    log = tmp / "runs" / "bad-run" / "logs" / "03_probing.papermill.log"
    assert f"(traceback: {log}; notebook: {tmp / 'runs' / 'bad-run' / 'notebooks' / '03_probing.ipynb'})" in last
    assert "Traceback" not in proc.stderr and "Traceback" in log.read_text(encoding="utf-8")
    return last


def case_no_dataset_kept(tmp: Path) -> str:
    """R02: data prep keeps nothing (min_count above every count): raised before labels are
    written; the words units that finished stay recorded, no temporary file is left."""
    from xalign import runs
    from xalign.errors import XalignError
    from xalign.params import load_params

    P = load_params(_small(tmp, data={"min_count": 100000}))
    with pytest.raises(XalignError) as e:
        runs.run_data_prep(P)
    d = P.run_dir()
    assert not (d / "data" / "labels.parquet").exists()
    assert sorted(p.name for p in (d / "data" / "words").iterdir()) == ["en.parquet", "es.parquet", "fr.parquet"]
    assert not [p for p in d.rglob("*") if ".tmp" in p.name]
    s = runs.run_data_prep(load_params(_small(tmp, data={"min_count": 5})))  # fixed: the words tables are reused
    assert (s.reused, s.computed) == (3, 1)
    return str(e.value)


def _numpy_fails(seed: int) -> None:
    import numpy as np

    np.random.default_rng(seed)


def case_library_error(tmp: Path) -> str:
    """R03: numpy raising inside a unit is wrapped with the stage, unit and library; xalign's
    own errors pass unchanged."""
    from xalign.errors import UnitFailed
    from xalign.pipeline.units import Unit, run_unit

    u = Unit("transfer", "step-000025/pos/seed-0", {}, {}, (tmp / "x",), _numpy_fails, {"seed": -1}, "c")
    with pytest.raises(UnitFailed) as e:
        run_unit(u)
    assert isinstance(e.value.__cause__, ValueError)
    from xalign.data import _check_fractions

    own = Unit("data_prep", "labels", {}, {}, (tmp / "y",), _check_fractions, {"fractions": [2, 0]}, "c")
    with pytest.raises(ValueError, match=r"^fractions must be three non-negative numbers summing to 1"):
        run_unit(own)
    return str(e.value)


def case_attribute_without_dataset(tmp: Path) -> str:
    """R04: a probe attribute no language has a dataset for (Gender in Chinese GSD), from
    the real treebank: an error at probing's plan, not a stage that probes nothing."""
    from xalign import data
    from xalign.params import resolve_data_root
    from xalign.stages.probing import _require_datasets
    from xalign.errors import XalignError

    words = data.load_words(resolve_data_root(None, REPO), ["zh"], max_sentences_per_language=200)
    _, summary = data.build_datasets(words, ["Gender"], min_count=5)
    with pytest.raises(XalignError) as e:
        _require_datasets(["Gender"], summary[summary.status == "kept"], summary)
    return str(e.value)


def case_run_locked(tmp: Path) -> str:
    """R05: a second driver on a run folder in use."""
    import subprocess
    import sys
    import time

    from xalign.pipeline.lock import RunLocked, run_lock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from xalign.pipeline.lock import run_lock\n"
                               "with run_lock(Path(sys.argv[1]), 'probing'):\n    time.sleep(60)", str(tmp)])
    try:
        for _ in range(200):
            if (tmp / ".xalign.lock.json").is_file():
                break
            time.sleep(0.05)
        with pytest.raises(RunLocked) as e:
            with run_lock(tmp, "overlap"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert f"pid {holder.pid}" in str(e.value) and "stage probing" in str(e.value)
    return str(e.value)


def case_local_layers(tmp: Path) -> str:
    """R06: a local series' config.json has fewer layers than extraction.layers asks for."""
    from transformers import BloomConfig

    BloomConfig(n_layer=2, hidden_size=16, n_head=2, vocab_size=64).save_pretrained(tmp / "ckpts" / "step-10")
    f = _small(tmp, checkpoints={"source": "local", "local_dir": str(tmp / "ckpts")},
               extraction={"layers": [2, 5]}, probe={"k": 3})
    problems = check.run_problems(str(f))
    assert len(problems) == 1 and problems[0].startswith(f"{f}: "), problems
    return problems[0]


def case_wrong_recorded_hash(tmp: Path) -> str:
    """R07: a manifest whose recorded SHA-256 is wrong: unnoticed by size and mtime, found by
    ``python -m xalign.check --verify``."""
    import io
    import json

    from xalign.pipeline.manifest import Manifest, verify_run

    (tmp / "a.txt").write_text("x", encoding="utf-8")
    m = Manifest(tmp)
    m.record(tmp / "a.txt", "s", "id")
    obj = json.loads((tmp / "manifest.json").read_text(encoding="utf-8"))
    obj["artefacts"]["a.txt"]["sha256"] = "0" * 64
    (tmp / "manifest.json").write_text(json.dumps(obj), encoding="utf-8")
    assert Manifest.open(tmp, verify=False).is_current(tmp / "a.txt", "id")
    out = io.StringIO()
    assert verify_run(tmp, out) == 1
    assert check.main(["--verify", str(tmp)]) == 1
    return out.getvalue().splitlines()[0]


def case_missing_data_root(tmp: Path) -> str:
    """R08: data_root that does not exist."""
    problems = check.run_problems(str(_small(tmp, data_root=str(tmp / "nowhere"))))
    assert len(problems) == 1, problems
    return problems[0]


RUNS: dict[str, Callable[[Path], str]] = {
    "R01": case_stale_upstream, "R02": case_no_dataset_kept, "R03": case_library_error,
    "R04": case_attribute_without_dataset, "R05": case_run_locked, "R06": case_local_layers,
    "R07": case_wrong_recorded_hash, "R08": case_missing_data_root,
}


@pytest.mark.parametrize("case", sorted(RUNS))
def test_run_case(tmp_path, case):
    assert_documented(case, RUNS[case](tmp_path))


def test_every_documented_case_is_tested_and_every_case_documented():
    tested = {*PARAMS, *FILES, *DATA, *RUNS}
    assert set(DOC_CASES) == tested, (sorted(set(DOC_CASES) - tested), sorted(tested - set(DOC_CASES)))
    assert len(DOC_CASES) >= 25
