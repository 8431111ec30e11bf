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
* model selection on English dev: after every epoch the English dev score is computed
  and the adapter + head weights of the best epoch are restored before the targets are
  evaluated;
* a plain seeded torch loop (AdamW, linear decay, gradient clipping at 1.0); the global
  torch RNG is forked, so calling these functions leaves it as it was.

The data bundle has no English XNLI train split (MultiNLI), so the caller trains on the
English XNLI *dev* set minus a seeded held-out fraction (:func:`split_xnli_dev`) used for
model selection.
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
        lora_r, lora_alpha, lora_dropout: LoRA rank r, scale alpha (update = alpha/r * B A)
            and dropout on the adapter input.
        target_modules: module names that get adapters (BLOOM: ``query_key_value``).
        epochs: training epochs over the English train set; the best by English dev is kept.
        lr: peak AdamW learning rate (linear decay to 0, no warm-up).
        batch_size: training batch size (examples); evaluation uses ``eval_batch_size``.
        max_length: maximum tokens per example, special tokens included.
        seed: seeds the head initialisation, LoRA init, dropout and shuffling.
        eval_batch_size: batch size for dev and target evaluation (on CPU small batches
            are faster: 16 took ~10 ms per 55-token sentence vs ~19 ms at 64, hidden 256).
        gradient_checkpointing: passed to ``prepare_model_for_kbit_training`` (QLoRA only);
            off by default because it only costs time for small models.
    """

    qlora: bool = False
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("query_key_value",)
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 16
    max_length: int = 128
    seed: int = 0
    eval_batch_size: int = 16
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ValueError("TransferConfig.target_modules: must be a non-empty tuple of module names")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        for name in ("lora_r", "lora_alpha", "epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TransferConfig.{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"TransferConfig.lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        if not self.lr > 0:
            raise ValueError(f"TransferConfig.lr: must be > 0, got {self.lr}")
        if self.max_length < 4:
            raise ValueError(f"TransferConfig.max_length: must be >= 4, got {self.max_length}")

    @classmethod
    def from_params(cls, params: "TransferParams", seed: int = 0) -> "TransferConfig":
        """Build from the run's ``transfer`` params section (fields with the same names)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in params.model_dump().items() if k in names}
        kw["target_modules"] = tuple(kw.get("target_modules", cls.target_modules))
        return cls(seed=seed, **kw)


# ---------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------
def split_xnli_dev(df: pd.DataFrame, dev_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded split of English XNLI dev into (train, held-out dev for model selection).

    The bundle has no MultiNLI train split, so the paper's English training set is replaced
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
def pos_f1(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Word-level POS F1 scores.

    ``f1`` is micro F1 over words; since every word has exactly one gold and one predicted
    tag, micro precision = micro recall = accuracy. ``macro_f1`` is the unweighted mean over
    the tags present in ``gold`` of per-tag F1 = 2 TP / (2 TP + FP + FN); predicted tags absent
    from gold only lower the precision of no averaged tag, but count as errors in ``f1``.

    Args:
        gold, pred: one list of tags per sentence, same shapes.

    Returns:
        ``{"f1": float, "macro_f1": float}``, both in [0, 1].

    Raises:
        ValueError: different numbers of sentences or of words in a sentence, or no words.
    """
    if len(gold) != len(pred):
        raise ValueError(f"pos_f1: {len(gold)} gold sentences but {len(pred)} predicted")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"pos_f1: sentence {i} has {len(g)} gold tags but {len(p)} predicted")
    g = np.asarray([t for s in gold for t in s], dtype=object)
    p = np.asarray([t for s in pred for t in s], dtype=object)
    if g.size == 0:
        raise ValueError("pos_f1: no words to score")
    hit = g == p
    per_tag = []
    for tag in sorted(set(g.tolist())):
        is_g, is_p = g == tag, p == tag
        tp = int(np.sum(is_g & is_p))
        fp = int(np.sum(is_p & ~is_g))
        fn = int(np.sum(is_g & ~is_p))
        per_tag.append(2 * tp / (2 * tp + fp + fn))
    return {"f1": float(hit.mean()), "macro_f1": float(np.mean(per_tag))}


def _accuracy(gold: Sequence[int], pred: Sequence[int]) -> float:
    return float(np.mean(np.asarray(gold) == np.asarray(pred)))


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
    """Silence transformers' load reports and weight-loading bars, restoring them after."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load(model_path: str, task: str, labels: list[str], config: TransferConfig,
          revision: str | None, tokenizer_path: str | None):
    """Load tokenizer + classification model, wrap it in peft LoRA; returns (model, tok, device)."""
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
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
            compute = torch.bfloat16 if device.type == "cuda" else torch.float32
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
    lora = LoraConfig(task_type=TaskType.TOKEN_CLS if task == "pos" else TaskType.SEQ_CLS,
                      r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), modules_to_save=[head[0]])
    try:
        with warnings.catch_warnings():  # peft 0.21 calls a transformers-5-deprecated property
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, lora)
    except ValueError as e:  # e.g. target modules not found in this architecture
        raise ValueError(f"{model_path}: peft LoRA setup failed: {str(e).splitlines()[0]}") from None
    head_params = [n for n, p in model.named_parameters() if p.requires_grad and f"{head[0]}.modules_to_save" in n]
    if not head_params:  # pragma: no cover - guards a peft behaviour change
        raise RuntimeError(f"{model_path}: classification head {head[0]!r} is not trainable after peft wrapping")
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


def _length_bucketed_batches(enc: _Encoded, keep: list[int], batch_size: int, gen: torch.Generator,
                             bucket_batches: int = 32) -> list[list[int]]:
    """Seeded shuffle, then sort within buckets of ``bucket_batches`` batches by length (less padding)."""
    perm = [keep[j] for j in torch.randperm(len(keep), generator=gen).tolist()]
    size = batch_size * bucket_batches
    batches = []
    for s in range(0, len(perm), size):
        bucket = sorted(perm[s:s + size], key=lambda i: len(enc.input_ids[i]))
        batches += [bucket[k:k + batch_size] for k in range(0, len(bucket), batch_size)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[j] for j in order]


def _train(model, train: _Encoded, dev_eval, config: TransferConfig, token_level: bool, pad_id: int,
           device, task: str) -> tuple[int, object]:
    """Seeded AdamW loop; after each epoch scores English dev and keeps the best epoch's weights.

    ``dev_eval()`` returns ``(selection score, dev result)``; ties keep the earlier epoch.
    Returns (best epoch, 1-based; its dev result). The model is left with the best weights.
    """
    keep = [i for i in range(len(train.input_ids))
            if (any(l != -100 for l in train.labels[i]) if token_level else True)]
    if not keep:
        raise ValueError(f"{task}: no English training example fits in max_length={config.max_length}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(keep) / config.batch_size)
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
    gen = torch.Generator().manual_seed(config.seed)
    best_epoch, best_score, best_state, best_result = 0, -math.inf, None, None
    for epoch in range(1, config.epochs + 1):
        model.train()
        batches = _length_bucketed_batches(train, keep, config.batch_size, gen)
        for idx in progress(batches, desc=f"{task} train epoch {epoch}/{config.epochs}", total=len(batches)):
            b = _collate(train, idx, pad_id, token_level, device)
            loss = model(**b).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{task}: non-finite training loss at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
        score, result = dev_eval()
        if score > best_score:
            best_epoch, best_score, best_state, best_result = epoch, score, _trainable_state(model), result
    _restore(model, best_state)
    return best_epoch, best_result


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
                 revision: str | None = None, tokenizer_path: str | None = None) -> pd.DataFrame:
    """(Q)LoRA-fine-tune a checkpoint for UPOS tagging on English, evaluate zero-shot per treebank.

    Paper: Wang et al. (2024), zero-shot POS transfer (train on English UD, F1 on each
    target treebank). Each word is tokenised separately (a leading space for all but the first);
    the first subword carries the UPOS label. Words past ``config.max_length`` tokens are not
    evaluated and are counted in ``n_words_cut``.

    Args:
        model_path: local folder or hub id of a causal-LM checkpoint (e.g. BLOOM).
        train, dev: English sentences as ``(word forms, UPOS tags)``; dev picks the epoch.
        eval_sets: target language (or treebank) -> sentences.
        config: :class:`TransferConfig`.
        revision: checkpoint revision (hub branch/tag); also used for the tokenizer when
            ``tokenizer_path`` is None.
        tokenizer_path: tokenizer folder/id if not the model's.

    Returns:
        DataFrame with one row per (language, metric in {"f1", "macro_f1"}) and columns
        ``task`` ("pos"), ``language`` (``"en-dev"`` for the English dev scores at the chosen
        epoch), ``metric``, ``value`` in [0, 1], ``n`` (sentences evaluated), ``n_words``
        (words scored), ``n_words_cut`` (words beyond max_length), ``best_epoch`` (1-based).

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

        def score(enc: _Encoded, desc: str) -> tuple[dict[str, float], int]:
            pred_ids = _predict(model, enc, True, pad, device, config.eval_batch_size, desc)
            gold = [g for g in enc.gold_tags if g]
            pred = [[POS_LABELS[i] for i in p] for p, g in zip(pred_ids, enc.gold_tags) if g]
            if not gold:
                raise ValueError(f"pos: {desc}: no word fits in max_length={L}")
            return pos_f1(gold, pred), len(gold)

        def dev_eval() -> tuple[float, tuple[dict[str, float], int]]:
            res = score(dv, "pos en-dev")
            return res[0]["f1"], res

        best_epoch, dev_res = _train(model, tr, dev_eval, config, True, pad, device, "pos")
        rows = []
        for lang, enc in [(DEV_LANGUAGE, dv), *evs.items()]:
            m, n = dev_res if lang == DEV_LANGUAGE else score(enc, f"pos eval {lang}")
            n_words = sum(len(g) for g in enc.gold_tags)
            for metric in ("f1", "macro_f1"):
                rows.append(dict(task="pos", language=lang, metric=metric, value=m[metric], n=n,
                                 n_words=n_words, n_words_cut=enc.n_cut, best_epoch=best_epoch))
    return pd.DataFrame(rows)


def finetune_xnli(model_path: str, train: pd.DataFrame, dev: pd.DataFrame, eval_sets: dict[str, pd.DataFrame],
                  config: TransferConfig, *, revision: str | None = None,
                  tokenizer_path: str | None = None) -> pd.DataFrame:
    """(Q)LoRA-fine-tune a checkpoint for XNLI on English, evaluate zero-shot accuracy per language.

    Paper: Wang et al. (2024), zero-shot XNLI transfer. Input is ``premise <eos> hypothesis``
    (longest-first truncation to ``config.max_length``); the sequence-classification head
    reads the last non-pad token. Train/dev come from :func:`split_xnli_dev` of English XNLI
    dev (the bundle has no MultiNLI).

    Args:
        model_path, revision, tokenizer_path: as in :func:`finetune_pos`.
        train, dev: English tables with columns premise, hypothesis, label (a string of
            :data:`XNLI_LABELS`); dev picks the epoch.
        eval_sets: language -> table of the same shape (XNLI test).
        config: :class:`TransferConfig`.

    Returns:
        DataFrame with one row per language (``"en-dev"`` first) and columns ``task``
        ("xnli"), ``language``, ``metric`` ("accuracy"), ``value`` in [0, 1], ``n`` (pairs),
        ``n_truncated`` (pairs cut to max_length), ``best_epoch`` (1-based).

    Raises:
        ValueError: empty train/dev or an empty eval set (named; raised before training),
            missing columns or unknown labels, or a model without a ``score``/``classifier`` head.
    """
    _check_eval_sets(eval_sets, "xnli")
    for name, df in [("English train", train), ("English dev", dev), *((f"eval {k}", v) for k, v in eval_sets.items())]:
        if df is None or len(df) == 0:
            raise ValueError(f"xnli: {name} set is empty")
        _check_xnli_frame(df, f"xnli {name}")
    with _seeded(config):
        model, tok, device = _load(model_path, "xnli", XNLI_LABELS, config, revision, tokenizer_path)
        L = config.max_length
        tr = _encode_xnli(tok, train, L, "xnli train")
        dv = _encode_xnli(tok, dev, L, "xnli dev")
        evs = {lang: _encode_xnli(tok, df, L, f"xnli eval {lang}") for lang, df in eval_sets.items()}
        pad = tok.pad_token_id

        def score(enc: _Encoded, desc: str) -> float:
            return _accuracy(enc.labels, _predict(model, enc, False, pad, device, config.eval_batch_size, desc))

        def dev_eval() -> tuple[float, float]:
            acc = score(dv, "xnli en-dev")
            return acc, acc

        best_epoch, dev_acc = _train(model, tr, dev_eval, config, False, pad, device, "xnli")
        rows = [dict(task="xnli", language=lang, metric="accuracy",
                     value=dev_acc if lang == DEV_LANGUAGE else score(enc, f"xnli eval {lang}"),
                     n=len(enc.labels), n_truncated=enc.n_cut, best_epoch=best_epoch)
                for lang, enc in [(DEV_LANGUAGE, dv), *evs.items()]]
    return pd.DataFrame(rows)


@contextlib.contextmanager
def _seeded(config: TransferConfig) -> Iterator[None]:
    """Fork the torch RNG (CPU, and the current CUDA device) and seed it with ``config.seed``."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        yield
