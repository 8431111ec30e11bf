"""Stage runners: what each numbered notebook calls, one function per stage.

Each runner takes validated :class:`~xalign.params.RunParams`, reads the artefacts of the
stages before it from ``runs/<run_name>/`` and writes its own there (atomically, via
:mod:`xalign.store`). It returns a small :class:`StageSummary` with the tables a notebook
shows, and prints its one-line summary (computed / reused / skipped with reasons).

**Caching and resume.** Each stage (:mod:`xalign.stages`) declares its units of work, and
one scheduler (:func:`xalign.pipeline.run_stage`) runs them. A unit's identity covers its
stage, key, the params it depends on, the SHA-256 of its inputs and the version of its code
(:func:`xalign.pipeline.code_version`); ``manifest.json`` records each artefact with its
identity, inputs, params, SHA-256, the notes its unit returned and the provenance of the
run (seed, git commit, package versions). A unit is reused only when the manifest holds
its outputs with the identity it would have now and their bytes are unchanged, so a
parameter or code change recomputes only what depends on it, and a killed run (every
write is atomic, each unit recorded as it finishes) resumes where it stopped. Outputs the
params no longer produce are removed; a stage never runs on stale upstream outputs
(:class:`xalign.pipeline.StaleUpstream` names the stage to run first). The units: one
checkpoint (pretraining), one language (data prep), one (checkpoint, language)
(extraction, probing), one (checkpoint, task) (transfer), one table or figure set after.

Layout of a run directory::

    manifest.json                     every artefact: identity, inputs, params, SHA-256; provenance
    params.json                       resolved params of the last stage run
    checkpoints/step-NNNNNN/          tiny-model lab checkpoints (stage 0)
    checkpoints.json                  the series analysed: location, revision, weights hash
    data/words/<lang>.parquet         every UD word with UPOS, FEATS, UniMorph (stage 1)
    data/labels.parquet               (language, attribute, word, value, split) rows
    data/summary.csv                  kept / skipped datasets with reasons
    skipped/<stage>.csv               a stage's skip reasons (the summary line counts them)
    vectors/<checkpoint>/<lang>.safetensors   layer_<l>: (n_words, d), word_index (stage 2)
    probing/parts/<checkpoint>/<lang>.{selections,paths,methods}.parquet   one unit of stage 3
    probing/selections.parquet        one row per probe: selected neurons, MI, accuracy (stage 3)
    probing/paths.parquet             MI / accuracy at every greedy step
    probing/methods.parquet           probe.compare_methods' selections, agreement with greedy
    overlap/pairs.parquet|csv         pairwise overlap rates, p-values (stage 4)
    overlap/average.csv               mean overlap per (checkpoint, layer, attribute)
    transfer/parts/<checkpoint>/<task>.seed-<seed>{,.history}.parquet   one unit of stage 5: scores, English-dev curve
    transfer/parts/<checkpoint>/<task>.seed-<seed>.adapter/   its kept LoRA adapter + head (transfer.load_finetuned)
    transfer/results.parquet|csv      zero-shot transfer per (checkpoint, task, language) (stage 5)
    transfer/results_by_seed.parquet  the same per fine-tuning seed
    transfer/dev_history.parquet      every unit's English-dev score per evaluation
    correlation/table1.csv|md         Pearson r between overlap and transfer, correlation.recipe (stage 6)
    correlation/table1_<recipe>.*     the other recipe (per_layer | paper)
"""

from __future__ import annotations

from .params import RunParams
from .pipeline import StageSummary, run_stage
from .stages import STAGES
from .stages._common import checkpoint_rows

__all__ = ["StageSummary", "resolve_checkpoints", "run_correlation", "run_data_prep", "run_extraction",
           "run_figures", "run_overlap", "run_pretrain", "run_probing", "run_transfer"]


# ----------------------------------------------------------------------------- stage 0
def run_pretrain(P: RunParams) -> StageSummary:
    """Stage 0: train the tiny BLOOM lab on the bundle's text, one unit per checkpoint of
    ``pretrain.checkpoint_steps`` (a killed pretraining resumes after its last one, with the
    weights of an uninterrupted run); :mod:`xalign.stages.pretrain`."""
    return run_stage(P, "pretrain", STAGES)


# ----------------------------------------------------------------------------- stage 1
def run_data_prep(P: RunParams) -> StageSummary:
    """Stage 1: UD treebanks -> UniMorph -> one dataset per (language, attribute), split by
    lemma; :mod:`xalign.stages.data_prep`."""
    return run_stage(P, "data_prep", STAGES)


# ----------------------------------------------------------------------------- checkpoints
def resolve_checkpoints(P: RunParams) -> list:
    """List the run's checkpoint series, record provenance, drop duplicate weights.

    Writes ``checkpoints.json`` (:func:`xalign.stages.extraction.write_series`: name, step,
    source, location, revision, the Hub commit it resolved to, weights hash, download size,
    duplicates). Checkpoints whose weights hash equals another's are all excluded with a
    warning, as the paper did for BLOOM's identical released checkpoints (Wang et al. 2024,
    Sec. 4). In a run, stage 2 does this as its first unit.

    Returns:
        The :class:`~xalign.checkpoints.Checkpoint` objects kept, in series order.
    """
    from . import checkpoints as ck
    from .stages.extraction import write_series

    write_series(P)
    return [ck.checkpoint_from_row(r) for r in checkpoint_rows(P.run_dir())]


# ----------------------------------------------------------------------------- stage 2
def run_extraction(P: RunParams) -> StageSummary:
    """Stage 2: word vectors (mean of subword hidden states) for every labelled word;
    :mod:`xalign.stages.extraction`.

    Raises:
        ValueError: a layer out of range (naming ``extraction.layers`` or
            ``extraction.sweep_layers`` and the valid range), or ``extraction.device``
            asks for CUDA where there is none.
    """
    return run_stage(P, "extraction", STAGES)


# ----------------------------------------------------------------------------- stage 3
def run_probing(P: RunParams) -> StageSummary:
    """Stage 3: one latent-variable probe per (checkpoint, layer, attribute, language), then
    greedy selection of the k most informative neurons on dev (Wang et al. 2024, Eq. 1-4);
    :mod:`xalign.stages.probing`.

    Raises:
        ValueError: ``probe.k`` larger than a checkpoint's hidden size.
        ArtefactError: a vectors file whose hidden size disagrees with its metadata or with
            the checkpoint's other files.
    """
    return run_stage(P, "probing", STAGES)


# ----------------------------------------------------------------------------- stage 4
def run_overlap(P: RunParams) -> StageSummary:
    """Stage 4: pairwise overlap rates |A cap B|/k with hypergeometric p-values (Holm);
    :mod:`xalign.stages.overlap`."""
    return run_stage(P, "overlap", STAGES)


# ----------------------------------------------------------------------------- stage 5
def run_transfer(P: RunParams) -> StageSummary:
    """Stage 5: (Q)LoRA fine-tuning on English, zero-shot evaluation on every target language,
    one unit per (checkpoint, task); :mod:`xalign.stages.transfer`.

    Raises:
        FileNotFoundError: a training file the params name is absent (one line with the
            fetch command), before any training.
    """
    return run_stage(P, "transfer", STAGES)


# ----------------------------------------------------------------------------- stage 6
def run_correlation(P: RunParams) -> StageSummary:
    """Stage 6: Pearson r between overlap and zero-shot transfer (the paper's Table 1), by
    both recipes; :mod:`xalign.stages.correlation`."""
    return run_stage(P, "correlation", STAGES)


# ----------------------------------------------------------------------------- stage 7
def run_figures(P: RunParams) -> StageSummary:
    """Stage 7: Figures 1-5 and the Appendix B.1 heatmaps, PNG and PDF, in ``figures/<run>/``;
    :mod:`xalign.stages.figures`."""
    return run_stage(P, "figures", STAGES)


