"""Run params: strict schema, one-line errors naming the file and dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from xalign.params import ParamsError, load_params, main, resolve_data_root

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, body: dict) -> Path:
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(body), encoding="utf-8")
    return f


def test_default_file_loads_and_derives_paths():
    P = load_params(REPO / "params" / "tiny-lab.yaml")
    assert P.run_name == "tiny-lab"
    assert P.run_dir(REPO) == REPO / "runs" / "tiny-lab"
    assert P.figure_dir(REPO) == REPO / "figures" / "tiny-lab"
    # the lab's k/d stays near the paper's 50/1024
    assert abs(P.probe.k / P.pretrain.hidden_size - 50 / 1024) < 0.01


def test_dict_form_equals_file_form(tmp_path):
    body = {"params": {"run_name": "x", "probe": {"k": 7}}}
    assert load_params(_write(tmp_path, body)) == load_params(body["params"])


@pytest.mark.parametrize("body, needle", [
    ({"run_name": "x", "probe": {"kk": 3}}, "params.probe.kk: unknown key"),
    ({"run_name": "x", "probe": {"k": "many"}}, "params.probe.k: Input should be a valid integer"),
    ({"run_name": "x", "extraction": {"tokenization": "bpe"}}, "params.extraction.tokenization"),
    ({"run_name": "x", "extraction": {"device": "gpu"}}, "params.extraction.device"),
    ({"run_name": "x", "data": {"attributes": ["Colour"]}}, "params.data.attributes: unknown attribute(s) ['Colour']"),
    ({"run_name": "x", "data": {"split_fractions": [0.5, 0.2, 0.2]}}, "params.data.split_fractions: [0.5, 0.2, 0.2] must sum to 1"),
    ({"run_name": "x", "pretrain": {"checkpoint_steps": [10, 5]}}, "strictly increasing"),
    ({"run_name": "x", "data": {"languages": ["en", "xx"]}}, "params.data.languages: unknown language code(s) ['xx']"),
    ({"run_name": "x", "data": {"attributes": ["POS", "Number"]},
      "probe": {"attributes": ["POS"], "sweep_attributes": ["Case", "POS"]}},
     "params.probe.sweep_attributes: ['Case'] not in data.attributes ['POS', 'Number']"),
    ({"run_name": "x", "probe": {"seeds": []}}, "params.probe.seeds: is empty"),
    ({"run_name": "x", "probe": {"seeds": [1, 1]}}, "params.probe.seeds: [1, 1] must be distinct integers >= 0"),
    ({"run_name": "x", "data": {"split_seeds": [0, -2]}}, "params.data.split_seeds: [0, -2] must be"),
    ({"run_name": "x", "transfer": {"max_eval_examples": {"pos": 10}}},
     "params.transfer.max_eval_examples: no value for task(s) ['xnli']"),
    ({"run_name": "x", "transfer": {"max_eval_examples": 0}}, "params.transfer.max_eval_examples: 0 must be >= 1"),
    ({"run_name": "bad name"}, "params.run_name"),
    ({}, "params.run_name: Field required"),
])
def test_bad_params_give_one_line_error_naming_file_and_key(tmp_path, body, needle):
    f = _write(tmp_path, {"params": body})
    with pytest.raises(ParamsError) as e:
        load_params(f)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(f)) and needle in msg


def test_file_shape_errors(tmp_path):
    f = _write(tmp_path, {"params": {"run_name": "x"}, "parms": {}})
    with pytest.raises(ParamsError, match="exactly one top-level key 'params'"):
        load_params(f)
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: [unclosed\n", encoding="utf-8")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_overrides_apply_dotted_keys_and_are_validated():
    P = load_params({"run_name": "x"}, overrides={"probe.k": 20, "overlap.alpha": 0.01})
    assert P.probe.k == 20 and P.overlap.alpha == 0.01
    with pytest.raises(ParamsError, match="params.probe.kay"):
        load_params({"run_name": "x"}, overrides={"probe.kay": 1})


def test_data_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("XALIGN_DATA", str(tmp_path))
    assert resolve_data_root(None, REPO) == tmp_path
    explicit = tmp_path / "d"
    explicit.mkdir()
    assert resolve_data_root(str(explicit), REPO) == explicit  # params beats the environment
    with pytest.raises(FileNotFoundError) as e:
        resolve_data_root(str(tmp_path / "missing"), REPO)
    assert "params data_root" in str(e.value) and "\n" not in str(e.value)


def test_cli_validates(tmp_path, capsys):
    assert main([str(REPO / "params" / "minimal.yaml")]) == 0
    assert capsys.readouterr().out.strip() == "minimal"
    f = _write(tmp_path, {"params": {"run_name": "x", "seeed": 1}})
    assert main([str(f)]) == 1
    assert "params.seeed: unknown key" in capsys.readouterr().err
