"""Stage 0, the tiny-model lab: a small BLOOM trained from scratch on the bundle's text.

The paper (Wang, Minervini & Ponti 2024, Sec. 3) probes the public intermediate
checkpoints of BLOOM-560m/1b1 (``bigscience/bloom-*-intermediate``). Those need the
Hugging Face Hub, so this stage builds a stand-in checkpoint series offline: a
BLOOM-architecture causal LM (ALiBi, ``BloomConfig``/``BloomForCausalLM``, random
init) trained on the multilingual text of the data bundle (Tatoeba, PAN-X and the UD
sentences the caller passes), with a byte-level BPE tokenizer trained on the same text
(BLOOM's tokenizer is byte-level BPE too, Scao et al. 2022, Sec. 3.3).

Functions:

* :func:`build_corpus` - seeded, deterministic sample of lines per (source, language).
* :func:`train_tokenizer` - byte-level BPE (``tokenizers``) wrapped as a transformers
  fast tokenizer that round-trips through ``save_pretrained``/``AutoTokenizer``.
* :func:`pretrain` - packs the text into ``seq_len`` blocks, trains with AdamW, linear
  warmup and cosine decay, and saves ``step-NNNNNN/`` checkpoints that
  :mod:`xalign.checkpoints` lists as the ``lab`` source.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from xalign.errors import InputError
from xalign.inputs import TEXT_EMPTY, TextLines
from xalign.progress import progress
from xalign.store import atomic_path, file_sha256

#: Text sources read from ``<data_root>/text/<source>/<lang>.txt``.
TEXT_SOURCES = ("tatoeba", "panx")
#: Special tokens of the lab tokenizer, in id order (``<unk>`` = 0, ``<s>`` = 1, ...).
SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
#: Name of the per-checkpoint JSON with step, losses, tokens seen and seed.
TRAINING_STATE = "training_state.json"
#: Optimiser, schedule, data-order and RNG state of the latest checkpoint, for resuming
#: (``<out_dir>/.resume.pt``; removed when the series is complete).
RESUME_STATE = ".resume.pt"

log = logging.getLogger("xalign.lab")



def checkpoint_name(step: int) -> str:
    """``step-000025`` for step 25: the folder name of a lab checkpoint."""
    return f"step-{step:06d}"


# ---------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------

def detokenize_panx_zh(line: str) -> str:
    """Undo the character tokenisation of Chinese PAN-X (XTREME's WikiANN ``zh``).

    Every character of a ``text/panx/zh.txt`` line is a token and tokens are joined by
    single spaces (``"2 0 0 9 年 ： 李 民 基 《 E t e r n a l # S u m m e r 》"``).
    Whole lines are character-tokenised, so *all* single spaces are removed, not only
    those between CJK characters (otherwise Latin words would stay spelt out letter by
    letter). ``#`` is kept as it is: it looks like the original space
    (``Tam#Siu#Wai``) but upstream does not document it (see the data README).

    Args:
        line: one line of ``text/panx/zh.txt``.

    Returns:
        The line without the separator spaces (natural Chinese running text).
    """
    return line.replace(" ", "")


def _read_lines(path: Path) -> list[str]:
    """The non-blank lines of a text file, stripped.

    Raises:
        InputError: not UTF-8, a byte-order mark, a NUL byte (file and line named, see
            :mod:`xalign.inputs`), or no non-blank line.
    """
    with TextLines(path) as f:
        lines = [s for s in (ln.strip() for ln in f) if s]
    if not lines:
        raise InputError(path, TEXT_EMPTY)
    return lines


def text_files(data_root: str | Path, languages: Sequence[str],
               sources: Sequence[str] = TEXT_SOURCES) -> dict[tuple[str, str], Path]:
    """The text files :func:`build_corpus` reads: ``{(source, lang): <data_root>/text/<source>/<lang>.txt}``
    for the files that exist, in its order (language, then source); a missing file is not
    an error (PAN-X has no Catalan). ``"ud"`` in ``sources`` is ignored (no file).

    Raises:
        FileNotFoundError: ``<data_root>/text`` does not exist.
        ValueError: an unknown source.
    """
    text_dir = Path(data_root) / "text"
    if not text_dir.is_dir():
        raise FileNotFoundError(f"{text_dir}: no text/ folder in the data root")
    bad = sorted(set(sources) - set(TEXT_SOURCES) - {"ud"})
    if bad:
        raise ValueError(f"sources: unknown text source(s) {bad}; known: {[*TEXT_SOURCES, 'ud']}")
    found = {}
    for lang in languages:
        for source in (s for s in TEXT_SOURCES if s in sources):
            path = text_dir / source / f"{lang}.txt"
            if path.is_file():
                found[source, lang] = path
    return found


def build_corpus(
    data_root: str | Path,
    languages: Sequence[str],
    sources: Sequence[str] = TEXT_SOURCES,
    max_lines_per_source: int | None = None,
    seed: int = 0,
    extra_texts: dict[str, list[str]] | None = None,
) -> list[str]:
    """Collect pretraining text: a seeded sample per (source, language), shuffled.

    Reads ``<data_root>/text/tatoeba/<lang>.txt`` and ``<data_root>/text/panx/<lang>.txt``
    (one line = one text; PAN-X has no Catalan, which is skipped; Chinese PAN-X is
    de-tokenised by :func:`detokenize_panx_zh`), and ``extra_texts[lang]`` (e.g. UD
    sentences from :mod:`xalign.data`) as one more source. From each (source, language)
    at most ``max_lines_per_source`` lines are drawn without replacement with a
    ``random.Random`` seeded by ``(seed, source, language)``; the union is shuffled with
    ``seed``. The result depends only on the files and the arguments.

    Args:
        data_root: the data bundle (the folder holding ``text/``).
        languages: ISO 639-1 codes, e.g. ``["en", "zh"]``.
        sources: subset of ``("tatoeba", "panx", "ud")``; ``"ud"`` means "the UD
            sentences in ``extra_texts``" and requires them.
        max_lines_per_source: cap per (source, language); ``None`` = all lines.
        seed: sampling and shuffling seed.
        extra_texts: ``{lang: [text, ...]}``, sampled as the source ``"ud"``; included
            whenever given (whether or not ``"ud"`` is in ``sources``).

    Returns:
        List of non-empty text lines.

    Raises:
        FileNotFoundError: ``<data_root>/text`` does not exist.
        ValueError: unknown source, ``"ud"`` without ``extra_texts``, bad cap, or a
            language with no text in any requested source (message names it).
        InputError: a text file that is not UTF-8, starts with a byte-order mark or has
            no text (``<file>: line <n>: <problem>``, :mod:`xalign.inputs`).
    """
    text_dir = Path(data_root) / "text"
    files = text_files(data_root, languages, sources)
    if "ud" in sources and extra_texts is None:
        raise ValueError("sources: 'ud' requested but no extra_texts (UD sentences) were given")
    if max_lines_per_source is not None and max_lines_per_source < 1:
        raise ValueError(f"max_lines_per_source: must be >= 1 or None, got {max_lines_per_source}")
    extra = dict(extra_texts or {})
    unknown = sorted(set(extra) - set(languages))
    if unknown:
        raise ValueError(f"extra_texts: languages {unknown} are not in languages={list(languages)}")

    out: list[str] = []
    for lang in languages:
        n_lang = 0
        for source in [s for s in TEXT_SOURCES if s in sources] + ["ud"]:
            if source == "ud":
                lines = [s for s in (t.strip() for t in extra.get(lang, [])) if s]
            else:
                path = files.get((source, lang))
                if path is None:
                    continue  # e.g. text/panx/ca.txt: PAN-X has no Catalan
                lines = _read_lines(path)
                if source == "panx" and lang == "zh":
                    lines = [s for s in map(detokenize_panx_zh, lines) if s]
            if max_lines_per_source is not None and len(lines) > max_lines_per_source:
                rng = random.Random(f"{seed}/{source}/{lang}")
                idx = sorted(rng.sample(range(len(lines)), max_lines_per_source))
                lines = [lines[i] for i in idx]
            out.extend(lines)
            n_lang += len(lines)
        if n_lang == 0:
            raise ValueError(f"languages: no text for '{lang}' in sources {list(sources)} under {text_dir}")
    random.Random(seed).shuffle(out)
    return out


# ---------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------

def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None,
                    min_frequency: int = 2):
    """Train a byte-level BPE tokenizer (as BLOOM's) with the ``tokenizers`` library.

    Byte-level pre-tokenisation (GPT-2 style, no prefix space), all 256 byte symbols in
    the initial alphabet (so no input is ever unknown), and the special tokens
    ``<unk>, <s>, </s>, <pad>`` (ids 0-3). Like BLOOM's tokenizer it adds no special
    tokens to the encoded text; offsets are trimmed so a leading space is not part of a
    piece's character span (``return_offsets_mapping`` works).

    Args:
        texts: training text, one string per line.
        vocab_size: target vocabulary size including the special tokens and the 256
            bytes; the result can be smaller if the text has fewer merges.
        out_dir: if given, ``save_pretrained`` the tokenizer there.
        min_frequency: minimum pair frequency for a merge.

    Returns:
        A transformers fast tokenizer (``TokenizersBackend`` in transformers 5) with
        bos/eos/pad/unk set; ``AutoTokenizer.from_pretrained(out_dir)`` loads it offline.

    Raises:
        ValueError: ``vocab_size`` too small for the byte alphabet and special tokens,
            or no text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    n_min = 256 + len(SPECIAL_TOKENS)
    if vocab_size < n_min:
        raise ValueError(f"vocab_size: {vocab_size} is below the byte alphabet + special tokens ({n_min})")
    texts = [t for t in texts if t and not t.isspace()]
    if not texts:
        raise ValueError("texts: no non-empty text to train the tokenizer on")
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


# ---------------------------------------------------------------------------------------
# pretraining
# ---------------------------------------------------------------------------------------

def pack_blocks(texts: Sequence[str], tokenizer, seq_len: int) -> torch.Tensor:
    """Tokenise ``texts``, join them with ``eos`` after each text, cut into blocks.

    Args:
        texts: the corpus (one text per line).
        tokenizer: a transformers tokenizer with an ``eos_token_id``.
        seq_len: block length in tokens.

    Returns:
        ``(n_blocks, seq_len)`` int64 token ids; the incomplete last block is dropped.

    Raises:
        ValueError: the text yields less than one block.
    """
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for chunk in range(0, len(texts), 10_000):
        for seq in tokenizer(list(texts[chunk:chunk + 10_000]), add_special_tokens=False)["input_ids"]:
            ids.extend(seq)
            if eos is not None:
                ids.append(eos)
    n_blocks = len(ids) // seq_len
    if n_blocks < 1:
        raise ValueError(f"texts: {len(ids)} tokens are fewer than one block of seq_len={seq_len}")
    return torch.tensor(ids[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


class _Batches:
    """Endless stream of index batches: a fresh random permutation per epoch (the last
    incomplete batch of an epoch is dropped). Its position can be saved and restored."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator) -> None:
        self.n, self.batch_size, self.gen = n, batch_size, gen
        self.perm: torch.Tensor | None = None
        self.i = 0

    def __next__(self) -> torch.Tensor:
        if self.perm is None or self.i + self.batch_size > self.n:
            self.perm, self.i = torch.randperm(self.n, generator=self.gen), 0
        batch = self.perm[self.i:self.i + self.batch_size]
        self.i += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {"perm": self.perm, "i": self.i, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.perm, self.i = state["perm"], state["i"]
        self.gen.set_state(state["gen"])


def _fingerprint(texts: Sequence[str], tokenizer, args: dict) -> str:
    """SHA-256 of everything the trained weights depend on: text, tokenizer, arguments."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\n")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True))
             .encode("utf-8"))
    h.update(json.dumps(args, sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()


def _weights_sha256(folder: Path) -> str:
    return file_sha256(folder / "model.safetensors")


def _save_resume_state(out_dir: Path, state: dict) -> None:
    with atomic_path(out_dir / RESUME_STATE) as tmp:
        torch.save(state, tmp)


def _load_resume_state(out_dir: Path, fingerprint: str, steps: Sequence[int]) -> dict | None:
    """The saved resume state if it belongs to this very training run and its checkpoint
    folder is intact; else None (with a log line saying why)."""
    f = out_dir / RESUME_STATE
    if not f.is_file():
        return None
    try:
        state = torch.load(f, map_location="cpu", weights_only=False)
        step = int(state["step"])
        folder = out_dir / checkpoint_name(step)
        if state["fingerprint"] != fingerprint:
            log.info("pretrain: %s is from other text/tokenizer/arguments; training from step 0", f)
            return None
        if step not in steps or step == steps[-1] or _weights_sha256(folder) != state["weights_sha256"]:
            log.info("pretrain: %s does not match %s; training from step 0", f, folder.name)
            return None
        return state
    except Exception as e:  # corrupt or truncated: start over
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        log.warning("pretrain: cannot read %s (%s); training from step 0", f, why)
        return None


@torch.no_grad()
def _mean_loss(model, blocks: torch.Tensor, batch_size: int, device: torch.device) -> float:
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        x = blocks[i:i + batch_size].to(device)
        total += float(model(input_ids=x, labels=x).loss) * len(x)
        n += len(x)
    model.train(was_training)
    return total / max(n, 1)


def _save_checkpoint(model, tokenizer, dest: Path, state: dict) -> Path:
    """Save into a temporary sibling folder and rename it into place (atomic)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / TRAINING_STATE).write_text(json.dumps(state, indent=2), encoding="utf-8")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def _check_pretrain_args(tokenizer, steps: list[int], vocab_size: int, hidden_size: int, n_head: int) -> None:
    """Reject arguments :func:`pretrain` cannot train with, before any work is done.

    Raises:
        ValueError: ``steps`` not strictly increasing positive ints, ``hidden_size % n_head
            != 0``, a tokenizer larger than ``vocab_size``, or one without eos/pad tokens.
    """
    if not steps or steps[0] < 1 or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"checkpoint_steps: must be strictly increasing positive ints, got {steps}")
    if hidden_size % n_head:
        raise ValueError(f"hidden_size: {hidden_size} is not divisible by n_head={n_head}")
    if len(tokenizer) > vocab_size:
        raise ValueError(f"vocab_size: tokenizer has {len(tokenizer)} tokens, more than vocab_size={vocab_size}")
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("tokenizer: needs eos and pad tokens (use lab.train_tokenizer)")


def _split_blocks(texts: Sequence[str], tokenizer, seq_len: int, batch_size: int, n_eval_blocks: int,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pack the text (:func:`pack_blocks`), shuffle the blocks with ``gen`` and hold some out.

    Returns:
        ``(eval_blocks, train_blocks, n_eval)``: ``(n_eval, seq_len)`` and ``(n_train,
        seq_len)`` int64 token ids, ``n_eval = min(n_eval_blocks, n_blocks // 10)``.

    Raises:
        ValueError: fewer training blocks than ``batch_size`` (or less than one block).
    """
    blocks = pack_blocks(texts, tokenizer, seq_len)
    blocks = blocks[torch.randperm(len(blocks), generator=gen)]
    n_eval = min(n_eval_blocks, len(blocks) // 10)
    eval_blocks, train_blocks = blocks[:n_eval], blocks[n_eval:]
    if len(train_blocks) < batch_size:
        raise ValueError(f"texts: {len(train_blocks)} training blocks of {seq_len} tokens, "
                         f"fewer than batch_size={batch_size}")
    return eval_blocks, train_blocks, n_eval


def _new_model(tokenizer, hidden_size: int, n_layer: int, n_head: int, dev: torch.device):
    """A randomly initialised BLOOM causal LM (``BloomConfig``, eager ALiBi attention, tied
    embeddings, dropout 0 as BLOOM's default) in training mode on ``dev``; the init draws
    from the global torch RNG."""
    from transformers import AutoModelForCausalLM, BloomConfig

    config = BloomConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, n_layer=n_layer, n_head=n_head,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, use_cache=False, tie_word_embeddings=True,
        hidden_dropout=0.0, attention_dropout=0.0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").to(dev)
    model.train()
    return model


def _new_optimizer(model, lr: float, warmup_steps: int, last_step: int):
    """AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.01 on matrices, none on biases and
    norms) with linear warmup over ``warmup_steps`` and cosine decay to 10% of ``lr`` at
    ``last_step`` (transformers' ``get_cosine_with_min_lr_schedule_with_warmup``).

    Returns:
        ``(optimizer, scheduler)``.
    """
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8)
    sched = get_cosine_with_min_lr_schedule_with_warmup(
        opt, num_warmup_steps=warmup_steps, num_training_steps=last_step, min_lr_rate=0.1)
    return opt, sched


@dataclass
class _Training:
    """What one :func:`pretrain` call trains and updates step by step.

    Attributes:
        model, opt, sched, batches: the model, its optimiser and schedule, the data order.
        train_blocks, eval_blocks: ``(n_train, seq_len)`` / ``(n_eval, seq_len)`` int64 ids.
        seq_len, n_eval: block length (tokens) and number of held-out blocks, as given.
        dev: where the model runs. n_params: its parameter count.
        t0: ``time.perf_counter()`` when the training was set up (s).
        tokens_seen: training tokens so far; loss_sum, loss_n: sum (nats/token) and count
            of the step losses since the last checkpoint.
    """

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    batches: _Batches
    train_blocks: torch.Tensor
    eval_blocks: torch.Tensor
    seq_len: int
    n_eval: int
    dev: torch.device
    n_params: int
    t0: float
    tokens_seen: int = 0
    loss_sum: float = 0.0
    loss_n: int = 0


def _set_up(texts, tokenizer, dev: torch.device, seed: int, *, hidden_size: int, n_layer: int, n_head: int,
            seq_len: int, batch_size: int, lr: float, warmup_steps: int, last_step: int,
            n_eval_blocks: int) -> _Training:
    """Blocks, held-out split, model, optimiser and data order of a run from step 0.

    Call after ``torch.manual_seed(seed)`` in a forked RNG: the model init draws from the
    global RNG, the block shuffle and the data order from a generator seeded with ``seed``.

    Raises:
        ValueError: too little text for the held-out split plus one batch.
    """
    gen = torch.Generator().manual_seed(seed)
    eval_blocks, train_blocks, n_eval = _split_blocks(texts, tokenizer, seq_len, batch_size, n_eval_blocks, gen)
    model = _new_model(tokenizer, hidden_size, n_layer, n_head, dev)
    n_params = sum(p.numel() for p in model.parameters())
    opt, sched = _new_optimizer(model, lr, warmup_steps, last_step)
    batches = _Batches(len(train_blocks), batch_size, gen)
    return _Training(model, opt, sched, batches, train_blocks, eval_blocks, seq_len, n_eval, dev, n_params,
                     time.perf_counter())


def _resume_training(tr: _Training, resumed: dict, out_dir: Path) -> int:
    """Load the resumed checkpoint's weights and the optimiser, schedule, data-order and RNG
    state of ``resumed`` (from :func:`_load_resume_state`) into ``tr``.

    Returns:
        The step of that checkpoint (training continues after it).

    Raises:
        RuntimeError: its weights do not fit the model.
    """
    from safetensors.torch import load_file

    done = resumed["step"]
    weights = load_file(str(out_dir / checkpoint_name(done) / "model.safetensors"))
    missing, unexpected = tr.model.load_state_dict(weights, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:  # lm_head is tied
        raise RuntimeError(f"pretrain: {checkpoint_name(done)} does not fit the model "
                           f"(missing {missing}, unexpected {unexpected})")
    tr.opt.load_state_dict(resumed["optimizer"])
    tr.sched.load_state_dict(resumed["scheduler"])
    tr.batches.load_state_dict(resumed["batches"])
    torch.set_rng_state(resumed["rng"])
    tr.tokens_seen = resumed["tokens_seen"]
    log.info("pretrain: resuming after %s", checkpoint_name(done))
    return done


def _train_step(tr: _Training, step: int) -> float:
    """One optimiser step on the next batch: next-token cross-entropy, backward, gradient
    norm clipped to 1.0, AdamW and schedule step.

    Returns:
        The batch's loss (nats/token), also added to ``tr.loss_sum``.

    Raises:
        FloatingPointError: the loss is NaN/inf (names the step).
    """
    x = tr.train_blocks[next(tr.batches)].to(tr.dev)
    loss = tr.model(input_ids=x, labels=x).loss
    if not torch.isfinite(loss.detach()):
        raise FloatingPointError(f"pretrain: loss is {loss.item()} at step {step} (lower lr?)")
    tr.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(tr.model.parameters(), 1.0)
    tr.opt.step()
    tr.sched.step()
    loss_val = loss.detach().item()
    tr.tokens_seen += x.numel()
    tr.loss_sum += loss_val
    tr.loss_n += 1
    return loss_val


def _training_state(tr: _Training, step: int, loss_val: float, seed: int) -> dict:
    """The ``training_state.json`` of the checkpoint at ``step`` (losses in nats/token,
    ``eval_loss`` over the held-out blocks or None without any, ``elapsed_s`` in s)."""
    state = {
        "step": step, "loss": tr.loss_sum / tr.loss_n, "last_step_loss": loss_val,
        "eval_loss": _mean_loss(tr.model, tr.eval_blocks, tr.batches.batch_size, tr.dev) if tr.n_eval else None,
        "lr": tr.sched.get_last_lr()[0], "tokens_seen": tr.tokens_seen, "seed": seed,
        "n_params": tr.n_params, "n_train_blocks": len(tr.train_blocks),
        "n_eval_blocks": tr.n_eval, "seq_len": tr.seq_len, "batch_size": tr.batches.batch_size,
        "elapsed_s": round(time.perf_counter() - tr.t0, 2),
        "threads": torch.get_num_threads(), "device": str(tr.dev)}
    if math.isfinite(state["loss"]):
        state["loss"] = round(state["loss"], 6)
    return state


def _save_step(tr: _Training, tokenizer, out_dir: Path, state: dict, fingerprint: str, last_step: int) -> Path:
    """Save the checkpoint of ``state["step"]`` (:func:`_save_checkpoint`), restart the loss
    average, and write the resume state (or remove it after the last step).

    Returns:
        The checkpoint folder.
    """
    step = state["step"]
    folder = _save_checkpoint(tr.model, tokenizer, out_dir / checkpoint_name(step), state)
    tr.loss_sum, tr.loss_n = 0.0, 0
    if step < last_step:
        _save_resume_state(out_dir, {
            "step": step, "fingerprint": fingerprint, "weights_sha256": _weights_sha256(folder),
            "optimizer": tr.opt.state_dict(), "scheduler": tr.sched.state_dict(),
            "batches": tr.batches.state_dict(), "rng": torch.get_rng_state(),
            "tokens_seen": tr.tokens_seen})
    else:
        (out_dir / RESUME_STATE).unlink(missing_ok=True)
    return folder


def pretrain(
    texts: Sequence[str],
    tokenizer,
    out_dir: str | Path,
    *,
    vocab_size: int,
    hidden_size: int,
    n_layer: int,
    n_head: int,
    seq_len: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    checkpoint_steps: Sequence[int],
    seed: int = 0,
    threads: int | None = None,
    n_eval_blocks: int = 32,
    device: str | None = None,
    resume: bool = True,
    on_checkpoint: Callable[[Path], None] | None = None,
    until: int | None = None,
) -> list[Path]:
    """Pretrain a BLOOM-architecture causal LM from scratch and save a checkpoint series.

    The text is packed into ``seq_len``-token blocks (:func:`pack_blocks`); the first
    ``n_eval_blocks`` of a seeded shuffle are held out for an evaluation loss, the rest
    are sampled without replacement per epoch. Objective: next-token cross-entropy
    (nats/token). Optimiser: AdamW (betas 0.9/0.95, weight decay 0.01, gradient-norm
    clip 1.0), linear warmup over ``warmup_steps`` then cosine decay to 10% of ``lr`` at
    the last checkpoint step. Dropout is 0 (BLOOM's default). Model init, block order
    and held-out split all derive from ``seed`` inside a forked RNG, so two runs with
    the same arguments and ``threads`` on the same device give identical weights.

    At each step in ``checkpoint_steps``, ``<out_dir>/step-NNNNNN/`` receives the model
    and tokenizer (``save_pretrained``, safetensors) and ``training_state.json`` with
    ``step``, ``loss`` (mean training loss since the previous checkpoint),
    ``eval_loss`` (held-out blocks), ``lr``, ``tokens_seen``, ``seed``, ``n_params``
    and ``elapsed_s``. Each folder is written under a temporary name and renamed, so a
    crash never leaves a half-written checkpoint.

    Resuming: with each checkpoint, ``<out_dir>/.resume.pt`` receives the optimiser,
    schedule, data-order and RNG state and a fingerprint (SHA-256 of the text, the
    tokenizer and every argument but ``threads``/``device``). A later call with the same
    fingerprint continues after that checkpoint, if its weights are intact (SHA-256),
    instead of starting from step 0: the earlier folders are kept, and the weights are
    bit-identical to an uninterrupted run's. The file is removed when the last
    checkpoint is saved.

    Args:
        texts: corpus lines (see :func:`build_corpus`).
        tokenizer: from :func:`train_tokenizer`; its length is the model vocabulary.
        out_dir: folder for the ``step-*`` subfolders (``<run_dir>/checkpoints``).
        vocab_size: the requested vocabulary size (an upper bound on ``len(tokenizer)``).
        hidden_size, n_layer, n_head: model shape (``BloomConfig``).
        seq_len: block length in tokens; batch_size: blocks per step.
        lr: peak learning rate; warmup_steps: linear warmup steps.
        checkpoint_steps: strictly increasing steps to save at; the last is the final step.
        seed: seed of init, data order and held-out split.
        threads: ``torch.set_num_threads`` during training (restored afterwards).
        n_eval_blocks: held-out blocks for ``eval_loss``.
        device: ``"cpu"``, ``"cuda"`` ...; default CUDA if available, else CPU.
        resume: continue from ``.resume.pt`` when it matches (default); False trains from
            step 0.
        on_checkpoint: called with each checkpoint folder this call saves (not those kept
            from an interrupted call), right after it is saved.
        until: stop after saving this checkpoint step (one of ``checkpoint_steps``; default
            the last), keeping ``.resume.pt``, so a later call with a larger ``until``
            continues from it. The schedule is still that of the whole series: training
            one checkpoint at a time gives the same weights as one call.

    Returns:
        The checkpoint folders up to ``until``, in step order (including those kept from an
        interrupted or an earlier ``until`` call).

    Raises:
        ValueError: bad checkpoint steps, ``until`` not one of them, ``hidden_size % n_head != 0``, a tokenizer larger
            than ``vocab_size`` or without eos/pad, or too little text for the held-out
            split plus one batch.
    """
    steps = list(checkpoint_steps)
    _check_pretrain_args(tokenizer, steps, vocab_size, hidden_size, n_head)
    until = steps[-1] if until is None else until
    if until not in steps:
        raise ValueError(f"pretrain: until={until} is not one of checkpoint_steps {steps}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fingerprint = _fingerprint(texts, tokenizer, dict(
        vocab_size=vocab_size, hidden_size=hidden_size, n_layer=n_layer, n_head=n_head, seq_len=seq_len,
        batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, checkpoint_steps=steps, seed=seed,
        n_eval_blocks=n_eval_blocks))
    resumed = _load_resume_state(out_dir, fingerprint, steps) if resume else None
    if resumed is not None and resumed["step"] >= until:  # saved already (by an earlier call)
        return [out_dir / checkpoint_name(x) for x in steps if x <= until]

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            tr = _set_up(texts, tokenizer, dev, seed, hidden_size=hidden_size, n_layer=n_layer, n_head=n_head,
                         seq_len=seq_len, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                         last_step=steps[-1], n_eval_blocks=n_eval_blocks)
            saved: list[Path] = []
            first = 1
            if resumed is not None:
                done = _resume_training(tr, resumed, out_dir)
                first = done + 1
                saved = [out_dir / checkpoint_name(x) for x in steps if x <= done]
            bar = progress(range(first, until + 1), desc="pretrain", total=until - first + 1)
            for step in bar:
                loss_val = _train_step(tr, step)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{loss_val:.3f}", refresh=False)
                if step in steps:
                    state = _training_state(tr, step, loss_val, seed)
                    folder = _save_step(tr, tokenizer, out_dir, state, fingerprint, steps[-1])
                    saved.append(folder)
                    if on_checkpoint is not None:
                        on_checkpoint(folder)
            return saved
    finally:
        torch.set_num_threads(old_threads)


def read_training_state(checkpoint_dir: str | Path) -> dict:
    """The ``training_state.json`` of a lab checkpoint folder.

    Raises:
        FileNotFoundError: the folder has no ``training_state.json`` (one line, naming it).
    """
    p = Path(checkpoint_dir) / TRAINING_STATE
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no training state (not a lab checkpoint?)")
    return json.loads(p.read_text(encoding="utf-8"))
