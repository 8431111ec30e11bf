"""Stage 5: (Q)LoRA fine-tuning on English, zero-shot transfer to the other languages.

Wang, Minervini & Ponti (2024, arXiv 2406.13229) fine-tune every checkpoint on an English
task and evaluate it *zero-shot* on the other languages, for POS tagging (UD UPOS, token
classification, F1 per target treebank) and XNLI (premise/hypothesis sequence
classification, accuracy per language), then correlate the transfer score with the
cross-lingual neuron overlap. This module does that with peft LoRA (Hu et al. 2022) or
QLoRA (Dettmers et al. 2023: nf4 weights, double quantisation, ``prepare_model_for_kbit_training``):

* the adapters sit on ``TransferConfig.target_modules`` (BLOOM: ``query_key_value``) and
  the classification head (BLOOM: ``classifier`` for tokens, ``score`` for sequences) is
  trained in full through peft's ``modules_to_save``; the head is never quantised;
* model selection on English dev, scored every ``eval_every`` optimiser steps (or per
  epoch); the adapter + head weights of the best evaluation are restored before the targets
  are evaluated (the paper: every 100 steps for POS, 500 for XNLI);
* a plain seeded torch loop: AdamW (weight decay 0), linear decay to 0 without warm-up,
  gradient clipping at 1.0, ``grad_accum`` micro-batches per optimiser step (the Hugging
  Face Trainer's defaults, which the paper used; batch 8 x 4); the global torch RNG is
  forked, so calling these functions leaves it as it was;
* a :class:`ResumeFile` saves the training state at every evaluation, so a killed run
  (an XNLI fine-tuning on MultiNLI is hours on a GPU) continues where it was;
* POS is scored with word accuracy, seqeval's span F1 (what XTREME and the paper report)
  and macro F1 (:func:`pos_scores`);
* the kept model (adapter + head) can be saved (``adapter_dir``, :func:`save_finetuned`),
  reloaded as training loaded it (:func:`load_finetuned`) and scored with neurons of one
  layer ablated (:func:`score_with_ablation`, :func:`xalign.ablation.ablate`): the groundwork
  of the causal check of shared neurons (issue 15);
* every score gets a 95% percentile bootstrap interval over the evaluation examples
  (``ci_low``, ``ci_high``): whole sentences for POS (:func:`pos_bootstrap_ci`, from
  per-sentence counts, :func:`pos_sentence_stats`), pairs for XNLI
  (:func:`accuracy_bootstrap_ci`); 1000 resamples with a fixed seed.

English training data: XNLI is trained on MultiNLI train (``xnli/train-en.tsv``, 392k
pairs, streamed by :class:`XnliTsvStream`), or, when a data root has no MultiNLI (the
bundle), on English XNLI dev minus a seeded held-out fraction (:func:`split_xnli_dev`) used
for model selection; POS on XTREME's English UD-POS train (``udpos/en-ud-train.conllu``) or
the English treebank's train split. The stage (:func:`xalign.runs.run_transfer`) chooses.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from xalign.data import XNLI_EMPTY, XNLI_NO_ROWS, xnli_problem
from xalign.errors import InputError
from xalign.inputs import check_bom, decode_line
from xalign.progress import progress

if TYPE_CHECKING:  # pragma: no cover
    from xalign.params import TransferParams

#: The 17 Universal Dependencies v2 UPOS tags (https://universaldependencies.org/u/pos/).
POS_LABELS: list[str] = [
    "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM",
    "PART", "PRON", "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X",
]
#: XNLI labels (Conneau et al. 2018), in the order of the classifier's outputs.
XNLI_LABELS: list[str] = ["entailment", "neutral", "contradiction"]

#: QLoRA compute dtypes (TransferConfig.compute_dtype).
_COMPUTE_DTYPES = ("auto", "bfloat16", "float32")
#: Language key of the English dev rows in the returned tables.
DEV_LANGUAGE = "en-dev"
#: Names peft itself treats as classification heads (``PeftModelFor*Classification``).
_HEAD_NAMES = ("classifier", "score")

PosSentence = tuple[list[str], list[str]]


@dataclass(frozen=True)
class TransferConfig:
    """Hyper-parameters of one (Q)LoRA fine-tuning run.

    Attributes:
        qlora: load the base model in 4-bit nf4 with double quantisation (bitsandbytes)
            and prepare it with ``peft.prepare_model_for_kbit_training``.
        compute_dtype: QLoRA's ``bnb_4bit_compute_dtype``: ``"bfloat16"`` (the paper),
            ``"float32"``, or ``"auto"`` (bf16 on CUDA, float32 on CPU, where bf16 matmuls
            are slow without AMX). Ignored without ``qlora``.
        lora_r, lora_alpha, lora_dropout: LoRA rank r, scale alpha (update = alpha/r * B A)
            and dropout on the adapter input.
        target_modules: module names that get adapters (BLOOM: ``query_key_value``).
        epochs: passes over the English train set.
        lr: peak AdamW learning rate (linear decay to 0 over all optimiser steps, no warm-up,
            weight decay 0, gradients clipped at norm 1.0: the Hugging Face Trainer defaults).
        batch_size: examples per micro-batch; one optimiser step every ``grad_accum``
            micro-batches (effective batch ``batch_size * grad_accum``; the paper: 8 x 4).
            The loss of each micro-batch is divided by ``grad_accum``; the last group of
            an epoch may be shorter.
        grad_accum: gradient accumulation steps (>= 1).
        eval_every: English dev is scored every ``eval_every`` optimiser steps and after
            the last one (the paper: 100 for POS, 500 for XNLI); None scores after every
            epoch. The best-scoring parameters (ties keep the earlier) are restored.
        max_length: maximum tokens per example, special tokens included.
        seed: seeds the head initialisation, LoRA init, dropout and shuffling.
        eval_batch_size: batch size for dev and target evaluation (on CPU small batches
            are faster: 16 took ~10 ms per 55-token sentence vs ~19 ms at 64, hidden 256).
        gradient_checkpointing: passed to ``prepare_model_for_kbit_training`` (QLoRA only);
            off by default because it only costs time for small models.
    """

    qlora: bool = False
    compute_dtype: str = "auto"
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("query_key_value",)
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 16
    grad_accum: int = 1
    eval_every: int | None = None
    max_length: int = 128
    seed: int = 0
    eval_batch_size: int = 16
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ValueError("TransferConfig.target_modules: must be a non-empty tuple of module names")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        for name in ("lora_r", "lora_alpha", "epochs", "batch_size", "eval_batch_size", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TransferConfig.{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"TransferConfig.lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        if not self.lr > 0:
            raise ValueError(f"TransferConfig.lr: must be > 0, got {self.lr}")
        if self.max_length < 4:
            raise ValueError(f"TransferConfig.max_length: must be >= 4, got {self.max_length}")
        if self.eval_every is not None and int(self.eval_every) < 1:
            raise ValueError(f"TransferConfig.eval_every: must be >= 1 or None, got {self.eval_every}")
        if self.compute_dtype not in _COMPUTE_DTYPES:
            raise ValueError(f"TransferConfig.compute_dtype: must be one of {_COMPUTE_DTYPES}, "
                             f"got {self.compute_dtype!r}")

    @classmethod
    def from_params(cls, params: "TransferParams", seed: int = 0, task: str | None = None) -> "TransferConfig":
        """Build from the run's ``transfer`` params section (fields with the same names).

        ``epochs`` and ``eval_every`` may be given per task in params (``{pos: 10, xnli: 5}``);
        ``task`` picks the value (required then).

        Raises:
            ValueError: a per-task value without ``task``, or without an entry for it.
        """
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in params.model_dump().items() if k in names}
        for name in ("epochs", "eval_every"):
            if isinstance(kw.get(name), dict):
                if task not in kw[name]:
                    raise ValueError(f"transfer.{name}: no value for task {task!r} in {kw[name]}")
                kw[name] = kw[name][task]
        kw["target_modules"] = tuple(kw.get("target_modules", cls.target_modules))
        return cls(seed=seed, **kw)


# ---------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------
def split_xnli_dev(df: pd.DataFrame, dev_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded split of English XNLI dev into (train, held-out dev for model selection).

    For data roots without MultiNLI train (the bundle), the paper's English training set is replaced
    by XNLI dev minus ``round(dev_fraction * len(df))`` held-out rows (at least 1 each side).
    Rows sharing a premise are kept on one side so the held-out score is not inflated.

    Raises:
        ValueError: ``dev_fraction`` outside (0, 1) or fewer than 2 premises.
    """
    if not 0 < dev_fraction < 1:
        raise ValueError(f"split_xnli_dev: dev_fraction must be in (0, 1), got {dev_fraction}")
    _check_xnli_frame(df, "split_xnli_dev")
    premises = df["premise"].drop_duplicates().to_numpy()
    if len(premises) < 2:
        raise ValueError("split_xnli_dev: need at least 2 distinct premises to split")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(premises))
    target = dev_fraction * len(df)
    held, count = set(), 0
    sizes = df.groupby("premise", sort=False).size()
    for j in order:
        if count >= target and held:
            break
        held.add(premises[j])
        count += int(sizes[premises[j]])
    if len(held) == len(premises):
        held.discard(premises[order[-1]])
    mask = df["premise"].isin(held).to_numpy()
    return df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True)


def _check_xnli_frame(df: pd.DataFrame, where: str) -> None:
    missing = [c for c in ("premise", "hypothesis", "label") if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: XNLI table lacks column(s) {missing}; has {list(df.columns)}")
    bad = sorted(set(df["label"]) - set(XNLI_LABELS))
    if bad:
        raise ValueError(f"{where}: XNLI labels {bad[:5]} are not in {XNLI_LABELS}")


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------
def pos_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """POS tagging scores of one evaluation set.

    * ``accuracy``: the fraction of words whose predicted UPOS equals the gold tag (every
      word has exactly one gold and one predicted tag, so this is also micro F1 over words).
    * ``f1``: ``seqeval.metrics.f1_score(gold, pred)``, the score XTREME reports for UD-POS
      (Hu et al. 2020, ``third_party/run_tag.py``), which the paper follows. seqeval reads
      tags as IOB chunks: the first letter of a UPOS tag is taken as its chunk prefix and
      the rest as the type (``NOUN`` -> ``N`` + ``OUN``), and a run of equal tags is one
      span, so it is a span F1 over runs of tags, lower than accuracy when runs are long.
    * ``macro_f1``: the unweighted mean over the tags present in ``gold`` of per-tag
      F1 = 2 TP / (2 TP + FP + FN).

    Args:
        gold, pred: one list of tags per sentence, same shapes.

    Returns:
        ``{"accuracy", "f1", "macro_f1"}``, each in [0, 1].

    Raises:
        ValueError: different numbers of sentences or of words in a sentence, or no words.
    """
    from seqeval.metrics import f1_score

    if len(gold) != len(pred):
        raise ValueError(f"pos_scores: {len(gold)} gold sentences but {len(pred)} predicted")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"pos_scores: sentence {i} has {len(g)} gold tags but {len(p)} predicted")
    g = np.asarray([t for s in gold for t in s], dtype=object)
    p = np.asarray([t for s in pred for t in s], dtype=object)
    if g.size == 0:
        raise ValueError("pos_scores: no words to score")
    per_tag = []
    for tag in sorted(set(g.tolist())):
        is_g, is_p = g == tag, p == tag
        tp = int(np.sum(is_g & is_p))
        fp = int(np.sum(is_p & ~is_g))
        fn = int(np.sum(is_g & ~is_p))
        per_tag.append(2 * tp / (2 * tp + fp + fn))
    with warnings.catch_warnings():  # "NOUN seems not to be NE tag", once per tag
        warnings.simplefilter("ignore", UserWarning)
        span_f1 = float(f1_score([list(s) for s in gold], [list(s) for s in pred]))
    return {"accuracy": float((g == p).mean()), "f1": span_f1, "macro_f1": float(np.mean(per_tag))}


def mean_over_seeds(results: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Transfer scores averaged over fine-tuning seeds, with an interval over them.

    One row per (checkpoint, step, task, language, metric) of ``results`` (rows of every
    seed, with a ``seed`` column): ``value`` and ``ci_low, ci_high`` (each seed's bootstrap
    interval over evaluation examples) are means over seeds; ``n_seeds``; ``seed_lo,
    seed_hi`` the Student-t ``confidence`` interval of the mean over seeds, clipped to
    [0, 1] (NaN with one seed); ``best_epoch``, ``best_step`` and the other bookkeeping
    columns are the first seed's. With one seed the values are that seed's, unchanged.

    Args:
        results: per-seed rows (``transfer/results_by_seed.parquet``).
        confidence: of the interval over seeds, in (0, 1).

    Raises:
        ValueError: a ``seed`` column is missing or a (row key, seed) appears twice.
    """
    from scipy.stats import t

    keys = ["checkpoint", "step", "task", "language", "metric"]
    if "seed" not in results.columns:
        raise ValueError("transfer results: no 'seed' column to average over")
    if results.duplicated(keys + ["seed"]).any():
        r = results[results.duplicated(keys + ["seed"])].iloc[0]
        raise ValueError(f"transfer results: two rows for {dict(r[keys + ['seed']])}")
    g = results.groupby(keys, sort=False, dropna=False)
    first = g.first().drop(columns=["seed", "value", "ci_low", "ci_high"], errors="ignore")
    out = g.agg(value=("value", "mean"), ci_low=("ci_low", "mean"), ci_high=("ci_high", "mean"),
                n_seeds=("seed", "size"), sd=("value", "std")).join(first).reset_index()
    half = t.ppf((1 + confidence) / 2, (out["n_seeds"] - 1).clip(lower=1)) * out["sd"] / np.sqrt(out["n_seeds"])
    multi = out["n_seeds"] > 1
    out["seed_lo"] = (out["value"] - half).clip(lower=0).where(multi)
    out["seed_hi"] = (out["value"] + half).clip(upper=1).where(multi)
    cols = [c for c in results.columns if c != "seed"] + ["n_seeds", "seed_lo", "seed_hi"]
    return out[cols]


#: Metrics of a POS evaluation (:func:`pos_scores`), in the order of the result rows.
POS_METRICS: tuple[str, ...] = ("accuracy", "f1", "macro_f1")


def _accuracy(gold: Sequence[int], pred: Sequence[int]) -> float:
    return float(np.mean(np.asarray(gold) == np.asarray(pred)))


# ---------------------------------------------------------------------------------------
# Bootstrap intervals over evaluation examples
# ---------------------------------------------------------------------------------------
#: Bootstrap resamples per interval, the interval's confidence and the fixed seed of the
#: resampling generator (``numpy.random.default_rng``): reruns give bitwise-equal bounds.
BOOT_N, BOOT_CONFIDENCE, BOOT_SEED = 1000, 0.95, 0
#: Largest resample-count matrix built at once (entries of the (rows, n) chunk).
_BOOT_CHUNK = 1 << 22


@dataclass(frozen=True)
class PosSentenceStats:
    """Per-sentence sufficient statistics of the three POS metrics (:func:`pos_scores`).

    Summing any selection of sentences (with repetition) and applying
    :func:`pos_stats_scores`'s formulas gives that selection's scores, so a bootstrap sums
    rows instead of re-running seqeval. Built by :func:`pos_sentence_stats`; n sentences,
    T = the tags present in the gold tags (sorted).

    Attributes:
        tags: the T gold tags, sorted (the columns of ``tag_tp/tag_fp/tag_fn``).
        words, correct: (n,) words and correctly tagged words per sentence.
        span_correct, span_pred, span_gold: (n,) seqeval spans per sentence: predicted spans
            equal to a gold span (type, start, end), predicted spans, gold spans. A span is
            counted in the sentence holding its last word.
        tag_tp, tag_fp, tag_fn: (n, T) per-tag word counts: gold t predicted t; predicted t,
            gold not t; gold t, predicted not t.
    """

    tags: tuple[str, ...]
    words: np.ndarray
    correct: np.ndarray
    span_correct: np.ndarray
    span_pred: np.ndarray
    span_gold: np.ndarray
    tag_tp: np.ndarray
    tag_fp: np.ndarray
    tag_fn: np.ndarray

    def __len__(self) -> int:
        return len(self.words)

    def matrix(self) -> np.ndarray:
        """(n, 5 + 3 T) float64: words, correct, span correct/pred/gold, then tp, fp, fn per tag
        (integers, exact in float64 up to 2**53)."""
        return np.column_stack([self.words, self.correct, self.span_correct, self.span_pred, self.span_gold,
                                self.tag_tp, self.tag_fp, self.tag_fn]).astype(np.float64)


def _span_ends_per_sentence(spans: set, starts: np.ndarray, n: int) -> np.ndarray:
    """(n,) number of ``(type, start, end)`` spans whose end offset falls in each sentence."""
    ends = np.fromiter((e for _, _, e in spans), dtype=np.int64, count=len(spans))
    return np.bincount(np.searchsorted(starts, ends, side="right") - 1, minlength=n).astype(np.int64)


def pos_sentence_stats(gold: list[list[str]], pred: list[list[str]]) -> PosSentenceStats:
    """Per-sentence counts behind :func:`pos_scores`, for a bootstrap over sentences.

    Span counts use seqeval's own span extraction
    (``seqeval.metrics.sequence_labeling.get_entities``, what ``f1_score`` calls in its
    default mode), on the same nested input: seqeval joins the sentences with an ``"O"``
    after each, so offsets are positions in that joined sequence. A span is counted in the
    sentence holding its end. seqeval can open a span in one sentence and close it in a
    later one (a tag ``X`` reads as chunk type ``"_"``, the type of the ``"O"`` separator, so a
    run of ``X`` across a sentence break is one chunk); such a span is counted whole in its
    last sentence. The sums over all sentences are seqeval's counts exactly, so
    :func:`pos_stats_scores` reproduces ``f1_score`` bit for bit.

    Args:
        gold, pred: one list of tags per sentence, same shapes (as :func:`pos_scores`).

    Returns:
        :class:`PosSentenceStats` with n = ``len(gold)`` rows.

    Raises:
        ValueError: different numbers of sentences or of words in a sentence, or no words.
    """
    from seqeval.metrics.sequence_labeling import get_entities

    if len(gold) != len(pred):
        raise ValueError(f"pos_sentence_stats: {len(gold)} gold sentences but {len(pred)} predicted")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"pos_sentence_stats: sentence {i} has {len(g)} gold tags but {len(p)} predicted")
    n = len(gold)
    lengths = np.fromiter((len(s) for s in gold), dtype=np.int64, count=n)
    if lengths.sum() == 0:
        raise ValueError("pos_sentence_stats: no words to score")
    # joined-sequence offset of each sentence's first word (each sentence is followed by "O")
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
    with warnings.catch_warnings():  # "NOUN seems not to be NE tag", once per tag
        warnings.simplefilter("ignore", UserWarning)
        g_spans = set(get_entities([list(s) for s in gold]))
        p_spans = set(get_entities([list(s) for s in pred]))
    g = np.asarray([t for s in gold for t in s], dtype=object)
    p = np.asarray([t for s in pred for t in s], dtype=object)
    sent = np.repeat(np.arange(n), lengths)
    tags = tuple(sorted(set(g.tolist())))
    code = {t: k for k, t in enumerate(tags)}
    T = len(tags)
    gc = np.fromiter((code[t] for t in g), dtype=np.int64, count=g.size)
    pc = np.fromiter((code.get(t, -1) for t in p), dtype=np.int64, count=p.size)
    hit = g == p

    def per_sentence_tag(mask: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.bincount(sent[mask] * T + c[mask], minlength=n * T).reshape(n, T)

    tp = per_sentence_tag(hit, gc)
    n_gold = per_sentence_tag(np.ones(g.size, bool), gc)
    n_pred = per_sentence_tag(pc >= 0, pc)
    return PosSentenceStats(
        tags=tags, words=lengths, correct=np.bincount(sent[hit], minlength=n).astype(np.int64),
        span_correct=_span_ends_per_sentence(g_spans & p_spans, starts, n),
        span_pred=_span_ends_per_sentence(p_spans, starts, n),
        span_gold=_span_ends_per_sentence(g_spans, starts, n),
        tag_tp=tp, tag_fp=n_pred - tp, tag_fn=n_gold - tp)


def _pos_metrics_from_sums(sums: np.ndarray, n_tags: int) -> dict[str, np.ndarray]:
    """(B,) accuracy, span F1 and macro F1 from (B, 5 + 3 T) summed :meth:`PosSentenceStats.matrix`
    rows. Span F1 follows seqeval's micro average operation for operation (P = tp/pred and
    R = tp/gold, 0 when the denominator is 0; F1 = 2 P R / (P + R), 0 when P + R = 0). Macro F1
    averages per-tag 2 TP / (2 TP + FP + FN) over the tags with gold words in that row.
    Accuracy and macro F1 are NaN in a row without words."""
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(sums[:, 0] > 0, sums[:, 1] / sums[:, 0], np.nan)
        tp, pr, gd = sums[:, 2], sums[:, 3], sums[:, 4]
        p = np.where(pr > 0, tp / np.where(pr > 0, pr, 1), 0.0)
        r = np.where(gd > 0, tp / np.where(gd > 0, gd, 1), 0.0)
        denom = p + r
        denom[denom == 0.0] = 1
        f1 = 2 * p * r / denom
        ttp, tfp, tfn = (sums[:, 5 + k * n_tags: 5 + (k + 1) * n_tags] for k in range(3))
        present = (ttp + tfn) > 0
        per_tag = np.where(present, 2 * ttp / np.where(present, 2 * ttp + tfp + tfn, 1), 0.0)
        k = present.sum(axis=1)
        macro = np.where(k > 0, per_tag.sum(axis=1) / np.maximum(k, 1), np.nan)
    return {"accuracy": acc, "f1": f1, "macro_f1": macro}


def pos_stats_scores(stats: PosSentenceStats) -> dict[str, float]:
    """:func:`pos_scores` from the summed per-sentence counts of all sentences.

    ``accuracy`` and ``f1`` equal :func:`pos_scores`'s bit for bit; ``macro_f1`` to rounding
    (the per-tag mean is summed in another order).

    Args:
        stats: :func:`pos_sentence_stats` of the evaluation set.

    Returns:
        ``{"accuracy", "f1", "macro_f1"}``, each in [0, 1].
    """
    m = _pos_metrics_from_sums(stats.matrix().sum(axis=0, keepdims=True), len(stats.tags))
    return {k: float(v[0]) for k, v in m.items()}


def bootstrap_sums(stats: np.ndarray, n_boot: int = BOOT_N, seed: int = BOOT_SEED) -> np.ndarray:
    """Column sums of ``n_boot`` bootstrap resamples of the rows of ``stats``.

    Each resample draws n row indices uniformly with replacement (seeded
    ``numpy.random.default_rng(seed).integers``); its per-row counts (``numpy.bincount``
    over the flattened, row-offset indices: a (b, n) count matrix, built in chunks of at
    most 2**22 entries) times ``stats`` give its column sums, one matrix product per chunk.

    Args:
        stats: (n,) or (n, k) per-example statistics (n >= 1), e.g. correct/total counts.
        n_boot: number of resamples B (>= 1).
        seed: generator seed; the same seed, n and B give the same resamples.

    Returns:
        (B, k) float64 sums ((B, 1) for 1-D ``stats``).

    Raises:
        ValueError: no rows, or n_boot < 1.
    """
    s = np.asarray(stats, dtype=np.float64)
    s = s[:, None] if s.ndim == 1 else s
    n = s.shape[0]
    if n == 0:
        raise ValueError("bootstrap_sums: no examples to resample")
    if n_boot < 1:
        raise ValueError(f"bootstrap_sums: n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, s.shape[1]))
    step = max(1, _BOOT_CHUNK // n)
    for lo in range(0, n_boot, step):
        b = min(step, n_boot - lo)
        idx = rng.integers(n, size=(b, n)) + n * np.arange(b)[:, None]
        counts = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n)
        out[lo:lo + b] = counts.astype(np.float64) @ s
    return out


def percentile_interval(replicates: np.ndarray, confidence: float = BOOT_CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani 1993, *An Introduction to the
    Bootstrap*, ch. 13): the (1 - c)/2 and (1 + c)/2 quantiles (``numpy.quantile``, linear)
    of the replicates of a statistic.

    Args:
        replicates: (B,) bootstrap replicates; NaN ones (statistic undefined in that
            resample) are dropped.
        confidence: c, in (0, 1).

    Returns:
        ``(low, high)``; ``(nan, nan)`` when no replicate is finite.

    Raises:
        ValueError: confidence outside (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"percentile_interval: confidence must be in (0, 1), got {confidence}")
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if not r.size:
        return math.nan, math.nan
    lo, hi = np.quantile(r, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def pos_bootstrap_ci(stats: PosSentenceStats, n_boot: int = BOOT_N, confidence: float = BOOT_CONFIDENCE,
                     seed: int = BOOT_SEED) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the POS metrics, resampling whole sentences.

    Words of one sentence are not independent (one wrong analysis often mis-tags several
    of them, and a span covers several words), so the resampling unit is the sentence, as
    in the bootstrap tests of MT/NLP evaluation (Koehn 2004, "Statistical significance
    tests for machine translation evaluation", EMNLP; Berg-Kirkpatrick, Burkett & Klein
    2012, "An empirical investigation of statistical significance in NLP", EMNLP-CoNLL),
    here for one system's score: n sentences are drawn with replacement B times
    (:func:`bootstrap_sums` of the per-sentence counts, no seqeval call per resample), each
    metric is recomputed from the resample's summed counts (macro F1 over the tags present
    in the resample's gold words) and the interval is :func:`percentile_interval`
    (Efron & Tibshirani 1993). The percentile interval need not contain the full-sample
    score when the statistic is biased under resampling (a ratio, or macro F1 losing rare
    tags), though it does in practice for hundreds of sentences.

    Args:
        stats: :func:`pos_sentence_stats` of the evaluation set (n >= 1 sentences).
        n_boot, seed: resamples B and generator seed (:func:`bootstrap_sums`).
        confidence: interval coverage in (0, 1) (default 0.95).

    Returns:
        ``{metric: (low, high)}`` for ``"accuracy"``, ``"f1"``, ``"macro_f1"``, bounds in [0, 1].

    Raises:
        ValueError: no sentences, n_boot < 1 or confidence outside (0, 1).
    """
    reps = _pos_metrics_from_sums(bootstrap_sums(stats.matrix(), n_boot, seed), len(stats.tags))
    return {m: percentile_interval(reps[m], confidence) for m in POS_METRICS}


def accuracy_bootstrap_ci(correct: Sequence[bool], n_boot: int = BOOT_N, confidence: float = BOOT_CONFIDENCE,
                          seed: int = BOOT_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of an accuracy over independent examples (XNLI pairs).

    The n examples are drawn with replacement B times (:func:`bootstrap_sums`); each
    resample's accuracy is its number correct / n, and the interval is
    :func:`percentile_interval` (Efron & Tibshirani 1993, ch. 13).

    Args:
        correct: (n,) whether each example was classified correctly (n >= 1).
        n_boot, seed: resamples B and generator seed.
        confidence: interval coverage in (0, 1) (default 0.95).

    Returns:
        ``(low, high)`` in [0, 1].

    Raises:
        ValueError: no examples, n_boot < 1 or confidence outside (0, 1).
    """
    c = np.asarray(correct, dtype=bool)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"accuracy_bootstrap_ci: need a non-empty 1-D vector, got shape {c.shape}")
    return percentile_interval(bootstrap_sums(c, n_boot, seed)[:, 0] / c.size, confidence)


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------
@dataclass
class _Encoded:
    """Token ids per example plus labels (POS: one per token, -100 off first subwords)."""

    input_ids: list[list[int]]
    labels: list  # POS: list[list[int]]; XNLI: list[int]
    n_cut: int = 0  # POS: words beyond max_length; XNLI: pairs truncated
    gold_tags: list[list[str]] | None = None  # POS: gold tags of the words kept


def _special_affixes(tok) -> tuple[list[int], list[int]]:
    """Special tokens the tokenizer adds before and after a single sequence (e.g. BOS)."""
    probe = "hello"
    bare = tok(probe, add_special_tokens=False)["input_ids"]
    full = tok(probe)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare):])
    return [], []


def _encode_pos(tok, sents: list[PosSentence], max_length: int, where: str) -> _Encoded:
    """Tokenise each word separately (leading space for all but the first word).

    The first subword of each word gets the UPOS label id, the others -100. A sentence is
    cut at the last word whose subwords all fit in ``max_length`` (special tokens included);
    cut words are counted in ``n_cut`` and not evaluated.
    """
    label2id = {t: i for i, t in enumerate(POS_LABELS)}
    pre, suf = _special_affixes(tok)
    budget = max_length - len(pre) - len(suf)
    cache: dict[tuple[str, bool], list[int]] = {}
    ids_all, labels_all, gold_all, n_cut = [], [], [], 0
    for k, (forms, tags) in enumerate(sents):
        if len(forms) != len(tags):
            raise ValueError(f"{where}: sentence {k} has {len(forms)} words but {len(tags)} UPOS tags")
        ids, labels, kept = [], [], []
        for j, (w, t) in enumerate(zip(forms, tags)):
            if t not in label2id:
                raise ValueError(f"{where}: sentence {k}: UPOS {t!r} is not a UD UPOS tag")
            key = (w, j == 0)
            if key not in cache:
                cache[key] = tok(w if j == 0 else " " + w, add_special_tokens=False)["input_ids"]
            sub = cache[key]
            if not sub:
                sub = [tok.unk_token_id] if tok.unk_token_id is not None else []
            if not sub or len(ids) + len(sub) > budget:
                n_cut += len(forms) - j
                break
            ids.extend(sub)
            labels.extend([label2id[t]] + [-100] * (len(sub) - 1))
            kept.append(t)
        ids_all.append(pre + ids + suf)
        labels_all.append([-100] * len(pre) + labels + [-100] * len(suf))
        gold_all.append(kept)
    return _Encoded(ids_all, labels_all, n_cut, gold_all)


def _encode_xnli(tok, df: pd.DataFrame, max_length: int, where: str) -> _Encoded:
    """Encode ``premise <sep> hypothesis``; <sep> is the EOS token (a space if there is none).

    Pairs longer than ``max_length`` are truncated longest-first from the end (counted in
    ``n_cut``).
    """
    _check_xnli_frame(df, where)
    label2id = {t: i for i, t in enumerate(XNLI_LABELS)}
    pre, suf = _special_affixes(tok)
    sep = [tok.eos_token_id] if tok.eos_token_id is not None else []
    hyp_prefix = "" if sep else " "
    budget = max_length - len(pre) - len(suf) - len(sep)
    p_ids = tok(df["premise"].tolist(), add_special_tokens=False)["input_ids"]
    h_ids = tok([hyp_prefix + h for h in df["hypothesis"].tolist()], add_special_tokens=False)["input_ids"]
    ids_all, n_cut = [], 0
    for p, h in zip(p_ids, h_ids):
        p, h = list(p), list(h)
        if len(p) + len(h) > budget:
            n_cut += 1
            while len(p) + len(h) > budget:
                if len(p) >= len(h):
                    p.pop()
                else:
                    h.pop()
        ids_all.append(pre + p + sep + h + suf)
    return _Encoded(ids_all, [label2id[x] for x in df["label"]], n_cut)


def _collate(enc: _Encoded, idx: Sequence[int], pad_id: int, token_level: bool,
             device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad a batch; shapes ``input_ids, attention_mask: (B, T)``, ``labels: (B, T)`` or ``(B,)``."""
    T = max(len(enc.input_ids[i]) for i in idx)
    ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), T), dtype=torch.long)
    labels = torch.full((len(idx), T), -100, dtype=torch.long) if token_level else None
    for r, i in enumerate(idx):
        n = len(enc.input_ids[i])
        ids[r, :n] = torch.tensor(enc.input_ids[i])
        mask[r, :n] = 1
        if token_level:
            labels[r, :n] = torch.tensor(enc.labels[i])
    if not token_level:
        labels = torch.tensor([enc.labels[i] for i in idx], dtype=torch.long)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


# ---------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and weight-loading bars (the bar as
    :func:`xalign.checkpoints._no_loading_bar`), restoring them after."""
    from transformers.utils import logging as hf_logging

    from .checkpoints import _no_loading_bar

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with _no_loading_bar():
            yield
    finally:
        hf_logging.set_verbosity(level)


def _load_base(model_path: str, task: str, labels: list[str], config: TransferConfig,
               revision: str | None, tokenizer_path: str | None):
    """Tokenizer + classification model as fine-tuning loads it (float32, or QLoRA's nf4 and
    ``prepare_model_for_kbit_training``), before any adapter; returns (model, tok, device, head name)."""
    from peft import prepare_model_for_kbit_training
    from transformers import (AutoModelForSequenceClassification, AutoModelForTokenClassification,
                              AutoTokenizer, BitsAndBytesConfig)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with _quiet_transformers():
        if tokenizer_path is not None:
            tok = AutoTokenizer.from_pretrained(tokenizer_path)
        else:
            tok = AutoTokenizer.from_pretrained(model_path, revision=revision)
        if tok.pad_token_id is None:
            fallback = tok.eos_token if tok.eos_token is not None else tok.unk_token
            if fallback is None:
                raise ValueError(f"{tokenizer_path or model_path}: tokenizer has no pad, eos or unk token to pad with")
            tok.pad_token = fallback
        kw: dict = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                        label2id={t: i for i, t in enumerate(labels)}, pad_token_id=tok.pad_token_id,
                        revision=revision, dtype=torch.float32)
        if config.qlora:
            compute = {"bfloat16": torch.bfloat16, "float32": torch.float32}.get(
                config.compute_dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
            kw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=list(_HEAD_NAMES))
            kw["device_map"] = {"": torch.cuda.current_device()} if device.type == "cuda" else "cpu"
        cls = AutoModelForTokenClassification if task == "pos" else AutoModelForSequenceClassification
        model = cls.from_pretrained(model_path, **kw)
    model.config.pad_token_id = tok.pad_token_id
    head = [n for n, _ in model.named_children() if n in _HEAD_NAMES]
    if len(head) != 1 or not isinstance(getattr(model, head[0]), torch.nn.Linear):
        raise ValueError(f"{model_path}: {type(model).__name__} has no plain Linear head named one of {_HEAD_NAMES}")
    if config.qlora:
        _keep_4bit_trainable(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    else:
        model = model.to(device)
    return model, tok, device, head[0]


def _load(model_path: str, task: str, labels: list[str], config: TransferConfig,
          revision: str | None, tokenizer_path: str | None):
    """Load tokenizer + classification model, wrap it in peft LoRA; returns (model, tok, device)."""
    from peft import LoraConfig, TaskType, get_peft_model

    model, tok, device, head = _load_base(model_path, task, labels, config, revision, tokenizer_path)
    lora = LoraConfig(task_type=TaskType.TOKEN_CLS if task == "pos" else TaskType.SEQ_CLS,
                      r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), modules_to_save=[head])
    try:
        with warnings.catch_warnings():  # peft 0.21 calls a transformers-5-deprecated property
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, lora)
    except ValueError as e:  # e.g. target modules not found in this architecture
        raise ValueError(f"{model_path}: peft LoRA setup failed: {str(e).splitlines()[0]}") from None
    head_params = [n for n, p in model.named_parameters() if p.requires_grad and f"{head}.modules_to_save" in n]
    if not head_params:  # pragma: no cover - guards a peft behaviour change
        raise RuntimeError(f"{model_path}: classification head {head!r} is not trainable after peft wrapping")
    return model, tok, device


def _keep_4bit_trainable(model) -> int:
    """Keep every bitsandbytes ``Linear4bit`` on its differentiable path; returns how many.

    bitsandbytes 0.50 repacks a ``Linear4bit``'s weights for an AVX512-BF16 CPU kernel the
    first time the layer runs in eval mode on an input without grad (our dev evaluation),
    and keeps that layout when training resumes. The packed kernel (``gemv_4bit``) has no
    backward and adds the bias in place, so the next training step either raises
    "a view of a leaf Variable that requires grad is being used in an in-place operation"
    (layers with a bias, as BLOOM's) or, without a bias, silently passes no gradient to
    the input, so LoRA weights below that layer stop learning. Turning the repacking off
    makes evaluation use the same dequantise-and-matmul path as training (GPUs never repack).
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def _restore(model, state: dict[str, torch.Tensor]) -> None:
    for n, p in model.named_parameters():
        if n in state:
            p.copy_(state[n])


@torch.inference_mode()
def _predict(model, enc: _Encoded, token_level: bool, pad_id: int, device, batch_size: int,
             desc: str) -> list:
    """Predictions per example: POS -> predicted label ids at labelled positions; XNLI -> label id."""
    model.eval()
    out: list = [[] if token_level else None for _ in enc.input_ids]
    order = [i for i in range(len(enc.input_ids))
             if not token_level or any(lab != -100 for lab in enc.labels[i])]
    order.sort(key=lambda i: -len(enc.input_ids[i]))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    for idx in progress(batches, desc=desc, total=len(batches)):
        b = _collate(enc, idx, pad_id, token_level, device)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        pred = logits.argmax(-1).cpu()
        if token_level:
            keep = b["labels"].cpu() != -100
            for r, i in enumerate(idx):
                out[i] = pred[r][keep[r]].tolist()
        else:
            for r, i in enumerate(idx):
                out[i] = int(pred[r])
    return out


def _score_pos(model, enc: _Encoded, pad_id: int, device, config: TransferConfig,
               desc: str) -> tuple[dict[str, float], int, PosSentenceStats]:
    """POS scores of one encoded set: (:func:`pos_scores` dict, sentences scored, per-sentence stats).

    Raises:
        ValueError: no word of the set fits in ``config.max_length``.
    """
    pred_ids = _predict(model, enc, True, pad_id, device, config.eval_batch_size, desc)
    gold = [g for g in enc.gold_tags if g]
    pred = [[POS_LABELS[i] for i in p] for p, g in zip(pred_ids, enc.gold_tags) if g]
    if not gold:
        raise ValueError(f"pos: {desc}: no word fits in max_length={config.max_length}")
    return pos_scores(gold, pred), len(gold), pos_sentence_stats(gold, pred)


def _score_xnli(model, enc: _Encoded, pad_id: int, device, config: TransferConfig,
                desc: str) -> tuple[float, np.ndarray]:
    """XNLI accuracy of one encoded set and the (n,) bool vector of correct pairs."""
    pred = _predict(model, enc, False, pad_id, device, config.eval_batch_size, desc)
    return _accuracy(enc.labels, pred), np.asarray(enc.labels) == np.asarray(pred)


def _length_bucketed_batches(sizes: Sequence[int], keep: list[int], batch_size: int, gen: torch.Generator,
                             bucket_batches: int = 32) -> list[list[int]]:
    """Seeded shuffle, then sort within buckets of ``bucket_batches`` batches by ``sizes`` (less padding)."""
    perm = [keep[j] for j in torch.randperm(len(keep), generator=gen).tolist()]
    size = batch_size * bucket_batches
    batches = []
    for s in range(0, len(perm), size):
        bucket = sorted(perm[s:s + size], key=lambda i: sizes[i])
        batches += [bucket[k:k + batch_size] for k in range(0, len(bucket), batch_size)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[j] for j in order]


class _EncodedTrain:
    """A training set held in memory as token ids (:class:`_Encoded`)."""

    def __init__(self, enc: _Encoded, token_level: bool, sizes: Sequence[int] | None = None) -> None:
        self.enc, self.token_level = enc, token_level
        self.sizes = [len(x) for x in enc.input_ids] if sizes is None else list(sizes)
        self.keep = [i for i in range(len(enc.input_ids))
                     if not token_level or any(lab != -100 for lab in enc.labels[i])]

    def batch(self, idx: Sequence[int], pad_id: int, device) -> dict[str, torch.Tensor]:
        return _collate(self.enc, idx, pad_id, self.token_level, device)


class XnliTsvStream:
    """English NLI training pairs read from a TSV file batch by batch (MultiNLI: 392k pairs).

    One pass over the file records each row's byte offset, byte length (the bucketing size)
    and label; a batch seeks to its rows and tokenises only them, so no tokenised copy of the
    file is held (memory ~17 bytes a row). Same encoding as in-memory XNLI tables.

    Args:
        path: ``premise<TAB>hypothesis<TAB>label`` TSV with that header (``xnli/train-en.tsv``).
        rows: optional row numbers (0-based, after the header) to train on; default all.

    Raises:
        InputError (a ValueError): ``<file>: line <n>: <problem>``: not UTF-8, a byte-order
            mark (:mod:`xalign.inputs`), or a line :func:`xalign.data.xnli_problem` rejects
            (wrong header, not 3 fields, unknown label); an empty file or one with only the header.
        ValueError: ``rows`` out of range.
    """

    def __init__(self, path: str | Path, rows: Sequence[int] | None = None) -> None:
        self.path = Path(path)
        label2id = {t: i for i, t in enumerate(XNLI_LABELS)}
        offsets, sizes, labels = [], [], []
        header = False
        with open(self.path, "rb") as f:
            check_bom(self.path, f.read(4))
            f.seek(0)
            pos = 0
            for lineno, line in enumerate(f, 1):
                parts = decode_line(self.path, line, lineno, pos).rstrip("\r\n").split("\t")
                if parts != [""]:  # blank lines are skipped (as read_xnli does)
                    problem = xnli_problem(parts, header=not header)
                    if problem:
                        raise InputError(self.path, problem, line=lineno)
                    if header:
                        offsets.append(pos)
                        sizes.append(len(line))
                        labels.append(label2id[parts[2]])
                    header = True
                pos += len(line)
        if not header:
            raise InputError(self.path, XNLI_EMPTY)
        if not offsets:
            raise InputError(self.path, XNLI_NO_ROWS)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int32)
        self.labels = np.asarray(labels, dtype=np.int8)
        self.keep = list(range(len(offsets))) if rows is None else [int(r) for r in rows]
        if self.keep and not 0 <= min(self.keep) <= max(self.keep) < len(offsets):
            raise ValueError(f"{self.path}: rows must be in [0, {len(offsets)}), got {min(self.keep)}..{max(self.keep)}")
        self.tok, self.max_length = None, None

    def bind(self, tok, max_length: int) -> "XnliTsvStream":
        """Set the tokenizer and length budget that batches are encoded with."""
        self.tok, self.max_length = tok, max_length
        return self

    def __len__(self) -> int:
        return len(self.keep)

    def read(self, idx: Sequence[int]) -> pd.DataFrame:
        """Rows ``idx`` as a premise/hypothesis/label table."""
        out = []
        with open(self.path, "rb") as f:
            for i in idx:
                f.seek(int(self.offsets[i]))
                out.append(f.readline().decode("utf-8").rstrip("\r\n").split("\t"))
        return pd.DataFrame(out, columns=["premise", "hypothesis", "label"])

    def batch(self, idx: Sequence[int], pad_id: int, device) -> dict[str, torch.Tensor]:
        enc = _encode_xnli(self.tok, self.read(idx), self.max_length, f"xnli train {self.path.name}")
        return _collate(enc, list(range(len(idx))), pad_id, False, device)


@dataclass
class _Progress:
    """Where training stands; saved at every evaluation so a killed run resumes there."""

    epoch: int = 1
    group: int = 0  # optimiser steps done in this epoch
    step: int = 0  # optimiser steps done in all
    epoch_gen_state: torch.Tensor | None = None
    best_score: float = -math.inf
    best_step: int = 0
    best_epoch: int = 0
    best_state: dict | None = None
    best_result: object = None
    history: list = None  # (step, epoch, score) per evaluation

    def __post_init__(self) -> None:
        self.history = [] if self.history is None else self.history


class ResumeFile:
    """Training state saved at each English-dev evaluation, for :func:`finetune_pos`/``_xnli``.

    The file (``torch.save``, written atomically) holds the trainable weights, AdamW and
    schedule state, the torch RNG states, the shuffling generator at the epoch's start, the
    position and the best weights so far, and ``key``. A later run with the same ``key``
    (the caller's fingerprint of model, data and config) continues after the last
    evaluation and gives the same result as an uninterrupted run (same device and threads);
    a file with another key, or unreadable, is ignored. Deleted when training completes.
    """

    def __init__(self, path: str | Path, key: str) -> None:
        self.path, self.key = Path(path), key

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - a corrupt or foreign file is not resumed from
            return None
        return state if isinstance(state, dict) and state.get("key") == self.key else None

    def save(self, state: dict) -> None:
        from .store import atomic_path

        with atomic_path(self.path) as tmp:  # marked with its writer: never removed under it
            torch.save({**state, "key": self.key}, tmp)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _rng_states() -> dict:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["cpu"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def _train(model, train, dev_eval, config: TransferConfig, pad_id: int, device, task: str,
           resume: ResumeFile | None = None) -> _Progress:
    """Seeded AdamW loop with gradient accumulation and English-dev model selection.

    ``train`` is an :class:`_EncodedTrain` or :class:`XnliTsvStream`; ``dev_eval()`` returns
    ``(selection score, dev result)``. Dev is scored every ``config.eval_every`` optimiser
    steps and after the last (per epoch when None); the best parameters (ties keep the
    earlier) are restored at the end. With ``resume``, the state is saved at every
    evaluation and a matching saved state is continued from.

    Returns:
        The final :class:`_Progress` (best step, epoch, result; evaluation history).

    Raises:
        ValueError: no training example fits in ``max_length``.
        FloatingPointError: a non-finite training loss.
    """
    if not train.keep:
        raise ValueError(f"{task}: no English training example fits in max_length={config.max_length}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    n_groups = math.ceil(math.ceil(len(train.keep) / config.batch_size) / config.grad_accum)
    total = n_groups * config.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
    gen = torch.Generator().manual_seed(config.seed)
    pr = _resume_into(resume, model, opt, sched) if resume else None
    pr = pr or _Progress()
    while pr.epoch <= config.epochs:
        if pr.group == 0:
            pr.epoch_gen_state = gen.get_state()
        gen.set_state(pr.epoch_gen_state)
        batches = _length_bucketed_batches(train.sizes, train.keep, config.batch_size, gen)
        groups = [batches[g:g + config.grad_accum] for g in range(0, len(batches), config.grad_accum)]
        model.train()
        bar = progress(groups[pr.group:], desc=f"{task} train epoch {pr.epoch}/{config.epochs}",
                       total=len(groups) - pr.group)
        for group in bar:
            _optimizer_step(model, train, group, opt, sched, params, config, pad_id, device, task, pr.epoch)
            pr.group, pr.step = pr.group + 1, pr.step + 1
            due = pr.group == len(groups) if config.eval_every is None else pr.step % config.eval_every == 0
            if due or pr.step == total:
                _evaluate(model, dev_eval, pr)
                if resume:
                    resume.save(_snapshot(model, opt, sched, pr))
        pr.epoch, pr.group = pr.epoch + 1, 0
    _restore(model, pr.best_state)
    return pr


def _optimizer_step(model, train, group, opt, sched, params, config, pad_id, device, task, epoch) -> None:
    """One optimiser step over ``group`` (a list of micro-batches): sum of losses / grad_accum."""
    opt.zero_grad(set_to_none=True)
    for idx in group:
        loss = model(**train.batch(idx, pad_id, device)).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{task}: non-finite training loss at epoch {epoch}")
        (loss / config.grad_accum).backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()


def _evaluate(model, dev_eval, pr: _Progress) -> None:
    score, result = dev_eval()
    model.train()
    pr.history.append((pr.step, pr.epoch, float(score)))
    if score > pr.best_score:
        pr.best_score, pr.best_step, pr.best_epoch = float(score), pr.step, pr.epoch
        pr.best_state, pr.best_result = _trainable_state(model), result


def _snapshot(model, opt, sched, pr: _Progress) -> dict:
    return {"trainable": _trainable_state(model), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": _rng_states(), "progress": dict(vars(pr))}


def _resume_into(resume: ResumeFile, model, opt, sched) -> _Progress | None:
    """Load a matching saved state into model/optimizer/schedule/RNG; None when there is none."""
    state = resume.load()
    if state is None:
        return None
    _restore(model, state["trainable"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    _set_rng_states(state["rng"])
    return _Progress(**state["progress"])


def _check_eval_sets(eval_sets: dict, task: str) -> None:
    if not isinstance(eval_sets, dict):
        raise ValueError(f"{task}: eval_sets must be a dict language -> examples, got {type(eval_sets).__name__}")
    for lang, data in eval_sets.items():
        if data is None or len(data) == 0:
            raise ValueError(f"{task}: eval set for language {lang!r} is empty")
        if lang == DEV_LANGUAGE:
            raise ValueError(f"{task}: eval set name {DEV_LANGUAGE!r} is reserved for the English dev scores")


# ---------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------
def finetune_pos(model_path: str, train: list[PosSentence], dev: list[PosSentence],
                 eval_sets: dict[str, list[PosSentence]], config: TransferConfig, *,
                 revision: str | None = None, tokenizer_path: str | None = None,
                 resume: ResumeFile | None = None, history: list | None = None,
                 adapter_dir: str | Path | None = None) -> pd.DataFrame:
    """(Q)LoRA-fine-tune a checkpoint for UPOS tagging on English, evaluate zero-shot per treebank.

    Paper: Wang et al. (2024), zero-shot POS transfer (train on English UD, F1 on each
    target treebank). Each word is tokenised separately (a leading space for all but the first);
    the first subword carries the UPOS label. Words past ``config.max_length`` tokens are not
    evaluated and are counted in ``n_words_cut``.

    Args:
        model_path: local folder or hub id of a causal-LM checkpoint (e.g. BLOOM).
        train, dev: English sentences as ``(word forms, UPOS tags)``; dev (seqeval F1)
            picks the parameters kept.
        eval_sets: language (or treebank) -> sentences; include English test ("en") for
            the source language's own score (the paper's Table 1 averages it in).
        config: :class:`TransferConfig`.
        revision: checkpoint revision (hub branch/tag); also used for the tokenizer when
            ``tokenizer_path`` is None.
        tokenizer_path: tokenizer folder/id if not the model's.
        resume: save the training state at each evaluation there, and continue from it.
        history: a list to receive the English-dev evaluation history (appended to, after
            training): one dict per evaluation, in order, ``{"step": optimiser steps done
            (1-based, counted over all epochs), "epoch": 1-based epoch, "dev_score": the
            selection score on English dev}`` (seqeval F1 in [0, 1] for POS, accuracy for
            XNLI). Evaluations before a resume are included (they are saved in ``resume``).
            The kept parameters are those of the first evaluation with the maximum score.
        adapter_dir: if given, the kept adapter + classification head are saved there
            (:func:`save_finetuned`, written atomically) for :func:`load_finetuned`.

    Returns:
        DataFrame with one row per (language, metric in :data:`POS_METRICS`: "accuracy",
        "f1" (seqeval), "macro_f1") and columns ``task`` ("pos"), ``language`` (``"en-dev"``
        for the English dev scores of the kept parameters), ``metric``, ``value`` in [0, 1],
        ``ci_low``, ``ci_high`` (95% percentile bootstrap interval of ``value`` over the
        evaluated sentences, :func:`pos_bootstrap_ci`; B = 1000, seed 0), ``n`` (sentences
        evaluated), ``n_words`` (words scored), ``n_words_cut`` (words beyond max_length),
        ``best_epoch`` (1-based), ``best_step`` (optimiser step of the kept
        parameters), ``n_steps``, ``n_evals`` (English-dev evaluations).

    Raises:
        ValueError: empty train/dev or an empty eval set (named; raised before training),
            an unknown UPOS tag, or a model without a ``classifier``/``score`` head.
    """
    _check_eval_sets(eval_sets, "pos")
    if not train:
        raise ValueError("pos: English train set is empty")
    if not dev:
        raise ValueError("pos: English dev set is empty")
    with _seeded(config):
        model, tok, device = _load(model_path, "pos", POS_LABELS, config, revision, tokenizer_path)
        L = config.max_length
        tr = _encode_pos(tok, train, L, "pos train")
        dv = _encode_pos(tok, dev, L, "pos dev")
        evs = {lang: _encode_pos(tok, s, L, f"pos eval {lang}") for lang, s in eval_sets.items()}
        pad = tok.pad_token_id

        def score(enc: _Encoded, desc: str) -> tuple[dict[str, float], int, PosSentenceStats]:
            return _score_pos(model, enc, pad, device, config, desc)

        def dev_eval() -> tuple[float, tuple[dict[str, float], int, PosSentenceStats]]:
            res = score(dv, "pos en-dev")
            return res[0]["f1"], res

        pr = _train(model, _EncodedTrain(tr, True), dev_eval, config, pad, device, "pos", resume)
        _report_history(pr, history)
        if adapter_dir is not None:
            save_finetuned(model, adapter_dir, "pos", config)
        rows = []
        for lang, enc in [(DEV_LANGUAGE, dv), *evs.items()]:
            res = pr.best_result if lang == DEV_LANGUAGE else score(enc, f"pos eval {lang}")
            m, n = res[0], res[1]
            # a dev result resumed from a state saved before the intervals existed has no counts
            ci = pos_bootstrap_ci(res[2]) if len(res) > 2 else dict.fromkeys(POS_METRICS, (math.nan, math.nan))
            n_words = sum(len(g) for g in enc.gold_tags)
            for metric in POS_METRICS:
                rows.append(dict(task="pos", language=lang, metric=metric, value=m[metric],
                                 ci_low=ci[metric][0], ci_high=ci[metric][1], n=n,
                                 n_words=n_words, n_words_cut=enc.n_cut, **_selection_columns(pr)))
    if resume:
        resume.remove()
    return pd.DataFrame(rows)


def finetune_xnli(model_path: str, train: "pd.DataFrame | XnliTsvStream", dev: pd.DataFrame,
                  eval_sets: dict[str, pd.DataFrame], config: TransferConfig, *, revision: str | None = None,
                  tokenizer_path: str | None = None, resume: ResumeFile | None = None,
                  history: list | None = None, adapter_dir: str | Path | None = None) -> pd.DataFrame:
    """(Q)LoRA-fine-tune a checkpoint for XNLI on English, evaluate zero-shot accuracy per language.

    Paper: Wang et al. (2024), zero-shot XNLI transfer. Input is ``premise <eos> hypothesis``
    (longest-first truncation to ``config.max_length``); the sequence-classification head
    reads the last non-pad token.

    Args:
        model_path, revision, tokenizer_path, resume: as in :func:`finetune_pos`.
        history: as in :func:`finetune_pos`; ``dev_score`` is English-dev accuracy in [0, 1].
        adapter_dir: as in :func:`finetune_pos`.
        train: English training pairs: a table, or an :class:`XnliTsvStream` over MultiNLI
            (read batch by batch).
        dev: English table with columns premise, hypothesis, label (a string of
            :data:`XNLI_LABELS`); its accuracy picks the parameters kept.
        eval_sets: language -> table of the same shape (XNLI test).
        config: :class:`TransferConfig`.

    Returns:
        DataFrame with one row per language (``"en-dev"`` first) and columns ``task``
        ("xnli"), ``language``, ``metric`` ("accuracy"), ``value`` in [0, 1], ``ci_low``,
        ``ci_high`` (95% percentile bootstrap interval over the pairs, :func:`accuracy_bootstrap_ci`;
        B = 1000, seed 0), ``n`` (pairs),
        ``n_truncated`` (pairs cut to max_length), ``best_epoch``, ``best_step``, ``n_steps``,
        ``n_evals`` (as in :func:`finetune_pos`).

    Raises:
        ValueError: empty train/dev or an empty eval set (named; raised before training),
            missing columns or unknown labels, or a model without a ``score``/``classifier`` head.
    """
    _check_eval_sets(eval_sets, "xnli")
    named = [("English dev", dev), *((f"eval {k}", v) for k, v in eval_sets.items())]
    if not isinstance(train, XnliTsvStream):
        named.insert(0, ("English train", train))
    elif not len(train):
        raise ValueError(f"xnli: English train set {train.path} has no rows selected")
    for name, df in named:
        if df is None or len(df) == 0:
            raise ValueError(f"xnli: {name} set is empty")
        _check_xnli_frame(df, f"xnli {name}")
    with _seeded(config):
        model, tok, device = _load(model_path, "xnli", XNLI_LABELS, config, revision, tokenizer_path)
        L = config.max_length
        tr = train.bind(tok, L) if isinstance(train, XnliTsvStream) else \
            _EncodedTrain(_encode_xnli(tok, train, L, "xnli train"), False, _tsv_line_bytes(train))
        dv = _encode_xnli(tok, dev, L, "xnli dev")
        evs = {lang: _encode_xnli(tok, df, L, f"xnli eval {lang}") for lang, df in eval_sets.items()}
        pad = tok.pad_token_id

        def score(enc: _Encoded, desc: str) -> tuple[float, np.ndarray]:
            return _score_xnli(model, enc, pad, device, config, desc)

        def dev_eval() -> tuple[float, tuple[float, np.ndarray]]:
            res = score(dv, "xnli en-dev")
            return res[0], res

        pr = _train(model, tr, dev_eval, config, pad, device, "xnli", resume)
        _report_history(pr, history)
        if adapter_dir is not None:
            save_finetuned(model, adapter_dir, "xnli", config)
        rows = []
        for lang, enc in [(DEV_LANGUAGE, dv), *evs.items()]:
            res = pr.best_result if lang == DEV_LANGUAGE else score(enc, f"xnli eval {lang}")
            # a dev result resumed from a state saved before the intervals existed is the accuracy alone
            acc, ci = (res[0], accuracy_bootstrap_ci(res[1])) if isinstance(res, tuple) else (res, (math.nan, math.nan))
            rows.append(dict(task="xnli", language=lang, metric="accuracy", value=acc, ci_low=ci[0], ci_high=ci[1],
                             n=len(enc.labels), n_truncated=enc.n_cut, **_selection_columns(pr)))
    if resume:
        resume.remove()
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------
# The kept model: saved adapters, reloading, evaluation under ablation (issue 15)
# ---------------------------------------------------------------------------------------
#: File beside peft's ``adapter_config.json`` naming the task, labels and loading settings.
ADAPTER_INFO = "xalign_transfer.json"
#: Labels of each task, in the order of the classifier's outputs.
TASK_LABELS: dict[str, list[str]] = {"pos": POS_LABELS, "xnli": XNLI_LABELS}


def _check_task(task: str) -> list[str]:
    if task not in TASK_LABELS:
        raise ValueError(f"task: {task!r} is not one of {sorted(TASK_LABELS)}")
    return TASK_LABELS[task]


def save_finetuned(model, adapter_dir: str | Path, task: str, config: TransferConfig) -> Path:
    """Save a fine-tuned ``PeftModel`` (its LoRA adapter and, through peft's
    ``modules_to_save``, the full classification head) to the folder ``adapter_dir``.

    peft's ``save_pretrained`` (``adapter_config.json``, ``adapter_model.safetensors``; its
    ``README.md`` model card is dropped) plus :data:`ADAPTER_INFO` (task, labels, ``qlora``, ``compute_dtype``,
    ``max_length``, ``seed``). Atomic: written into a temporary sibling folder
    (``.<name>.~<host>~<pid>~<random>.tmp``) that is renamed into place; an existing folder is
    replaced, and on any error ``adapter_dir`` is left as it was. Temporary folders of dead
    writers on this host for the same name are removed first.

    Raises:
        ValueError: unknown ``task``.
    """
    import json
    import os
    import shutil
    import tempfile

    from .store import _OWNER_RE, _owner, _pid_alive

    labels = _check_task(task)
    dest = Path(adapter_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    host = _OWNER_RE.search(_owner()).group(1)
    for old in dest.parent.glob(f".{dest.name}.~*.tmp"):
        m = _OWNER_RE.search(old.name)
        if old.is_dir() and m and m.group(1) == host and not _pid_alive(int(m.group(2))):
            shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{_owner()}.", suffix=".tmp", dir=dest.parent))
    aside = dest.with_name(f".{dest.name}.{_owner()}.old.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save_pretrained(str(tmp))
        info = {"task": task, "labels": labels, "qlora": config.qlora, "compute_dtype": config.compute_dtype,
                "max_length": config.max_length, "seed": config.seed}
        (tmp / ADAPTER_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
        (tmp / "README.md").unlink(missing_ok=True)  # peft's model card: not needed to load, names local paths
        mask = _umask()
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~mask)  # safetensors writes 0600
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp creates 0700
        if dest.exists():
            os.replace(dest, aside)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(aside, ignore_errors=True)
    return dest


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def _read_adapter_info(adapter_dir: Path, task: str, config: TransferConfig) -> dict:
    """The :data:`ADAPTER_INFO` of a saved adapter, checked against ``task`` and ``config``."""
    import json

    f = adapter_dir / ADAPTER_INFO
    if not (adapter_dir / "adapter_config.json").is_file() or not f.is_file():
        raise FileNotFoundError(f"{adapter_dir}: not a saved transfer adapter (no adapter_config.json "
                                f"or {ADAPTER_INFO}); stage 5 writes <task>.seed-<seed>.adapter/")
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{f}: unreadable ({type(e).__name__})") from None
    for field, want in (("task", task), ("labels", TASK_LABELS[task]), ("qlora", config.qlora)):
        if not isinstance(info, dict) or info.get(field) != want:
            got = info.get(field) if isinstance(info, dict) else None
            raise ValueError(f"{f}: field {field!r} is {got!r}, expected {want!r}")
    return info


def load_finetuned(model_path: str, adapter_dir: str | Path, task: str, config: TransferConfig, *,
                   tokenizer_path: str | None = None, revision: str | None = None):
    """Reload a model saved by :func:`finetune_pos` / :func:`finetune_xnli` (``adapter_dir``).

    The base checkpoint is loaded as fine-tuning loaded it (float32, or with ``config.qlora``
    nf4 weights, double quantisation and ``config.compute_dtype``; the head never quantised),
    then peft's ``PeftModel.from_pretrained`` puts the saved LoRA adapter and head on it.
    The model is in eval mode and not trainable; its zero-shot scores (:func:`score_with_ablation`
    with no neurons) equal the ones the fine-tuning run reported (same device and threads).
    Wang et al. 2024, Sec. 4.2 (the transfer model); reused by the causal check of issue 15.

    Args:
        model_path: the checkpoint fine-tuned (folder or hub id), as given to fine-tuning.
        adapter_dir: the saved folder (stage 5: ``transfer/parts/<ckpt>/<task>.seed-<seed>.adapter``).
        task: ``"pos"`` or ``"xnli"``.
        config: the run's :class:`TransferConfig` (``qlora``, ``compute_dtype``, ``seed`` are used).
        tokenizer_path, revision: as in :func:`finetune_pos`.

    Returns:
        ``(model, tokenizer)``: a peft ``PeftModelFor{Token,Sequence}Classification`` on the
        training device, and the tokenizer with its pad token set as in training.

    Raises:
        ValueError: unknown task, or :data:`ADAPTER_INFO` unreadable or naming another
            task / label set / ``qlora`` (one line naming the file and field).
        FileNotFoundError: ``adapter_dir`` holds no saved adapter.
    """
    from peft import PeftModel

    labels = _check_task(task)
    adapter_dir = Path(adapter_dir)
    _read_adapter_info(adapter_dir, task, config)
    with _seeded(config):
        base, tok, _, _ = _load_base(model_path, task, labels, config, revision, tokenizer_path)
        with _quiet_transformers(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    model.eval()
    return model, tok


def score_with_ablation(model, tokenizer, task: str, eval_set, layer: int, neurons: Sequence[int],
                        mode: str = "zero", values: torch.Tensor | None = None, *,
                        config: TransferConfig) -> dict[str, float]:
    """Zero-shot score of a fine-tuned model on one evaluation set with neurons of layer ℓ ablated.

    The evaluation is fine-tuning's own (same encoding, batching and metrics): POS
    :func:`pos_scores` (``accuracy``, seqeval span ``f1``, ``macro_f1``), XNLI ``accuracy``,
    here computed inside :func:`xalign.ablation.ablate` (``hidden_states[ℓ-1][..., neurons]``
    set to 0 or to ``values[neurons]`` in every forward pass). With no neurons nothing is
    ablated (``layer``, ``mode`` and ``values`` are still checked) and the score is the
    unablated one, i.e. the unit's. The hooks are removed on return, also on error.
    Source: the causal check of shared neurons (issue 15) on the transfer model of
    Wang et al. 2024, Sec. 4.2.

    Args:
        model, tokenizer: from :func:`load_finetuned` (or fine-tuning's own model).
        task: ``"pos"`` or ``"xnli"``.
        eval_set: POS: ``[(word forms, UPOS tags)]`` per sentence; XNLI: a table with
            premise, hypothesis, label (as :func:`finetune_pos` / :func:`finetune_xnli`).
        layer: ℓ in ``1..num_hidden_layers + 1`` (:func:`xalign.ablation.ablate`).
        neurons: distinct hidden dimensions in ``[0, d)``; may be empty.
        mode, values: ``"zero"``, or ``"mean"`` with ``(d,)`` values (e.g.
            :func:`xalign.ablation.neuron_means` of English training word vectors of layer ℓ).
        config: the run's :class:`TransferConfig` (``max_length``, ``eval_batch_size``).

    Returns:
        ``{metric: value}`` in [0, 1]: POS ``accuracy``, ``f1``, ``macro_f1``; XNLI ``accuracy``.

    Raises:
        ValueError: unknown task, an empty ``eval_set`` or one with bad labels, no word
            within ``max_length``, or an argument :func:`~xalign.ablation.ablate` refuses.
    """
    from .ablation import _check_values, _target, ablate
    from .checkpoints import hidden_size

    _check_task(task)
    if eval_set is None or len(eval_set) == 0:
        raise ValueError(f"{task}: eval_set is empty")
    neurons = neurons.tolist() if isinstance(neurons, torch.Tensor) else list(neurons)
    if neurons:
        ctx = ablate(model, layer, neurons, mode, values)
    else:
        _target(model, layer)
        _check_values(mode, values, hidden_size(model))
        ctx = contextlib.nullcontext()
    device = next(model.parameters()).device
    pad, desc = tokenizer.pad_token_id, f"{task} ablation layer {layer} ({len(neurons)} neurons)"
    if task == "pos":
        enc = _encode_pos(tokenizer, eval_set, config.max_length, f"pos {desc}")
        with ctx:
            return dict(_score_pos(model, enc, pad, device, config, desc)[0])
    enc = _encode_xnli(tokenizer, eval_set, config.max_length, f"xnli {desc}")
    with ctx:
        return {"accuracy": _score_xnli(model, enc, pad, device, config, desc)[0]}


def _tsv_line_bytes(df: pd.DataFrame) -> list[int]:
    """Bytes of each row as a TSV line: the bucketing size :class:`XnliTsvStream` uses, so a
    table and a file of the same rows train identically."""
    return [len(f"{p}\t{h}\t{l}\n".encode("utf-8")) for p, h, l in
            zip(df["premise"], df["hypothesis"], df["label"])]


def _report_history(pr: _Progress, history: list | None) -> None:
    """Append ``pr``'s English-dev evaluations to ``history`` as dicts (see :func:`finetune_pos`)."""
    if history is not None:
        history.extend({"step": int(st), "epoch": int(ep), "dev_score": float(sc)} for st, ep, sc in pr.history)


def _selection_columns(pr: _Progress) -> dict[str, int]:
    """Result columns that say which parameters were kept: best epoch/step, steps, evaluations."""
    return {"best_epoch": pr.best_epoch, "best_step": pr.best_step, "n_steps": pr.step, "n_evals": len(pr.history)}


@contextlib.contextmanager
def _seeded(config: TransferConfig) -> Iterator[None]:
    """Fork the torch RNG (CPU, and the current CUDA device) and seed it with ``config.seed``."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        yield
