"""Neuron ablation at one layer ℓ: the kernel of a causal check of shared neurons.

Wang, Minervini & Ponti (2024) find neurons shared across languages and relate their
overlap to zero-shot cross-lingual transfer; the causal check asks whether the transfer
model's zero-shot score drops more when the shared neurons of layer ℓ are ablated than
when random neuron sets of the same size are (Antverg & Belinkov 2022, "On the Pitfalls
of Analyzing Individual Neurons in Language Models", argue for such interventions over
probing alone). This module holds only the kernel; the stage that runs it lives elsewhere:

- :func:`ablate`: a context manager setting dimensions of ``hidden_states[ℓ-1]`` to 0
  (``"zero"``) or to given values (``"mean"``, e.g. :func:`neuron_means` over English
  training words), at every token position, for every forward pass inside it;
- :func:`random_neuron_sets`: seeded control sets of the same size;
- :func:`empirical_p_value`: the one-sided empirical p-value of the observed drop, with
  the +1 correction of Phipson & Smyth (2010).

Zero-ablation sets the neurons to 0, mean-ablation to their means over the English
training words of that layer; which one, and how many random sets (≥ 20), the params
choose. No file I/O here.

Layer convention (as in :mod:`xalign.extraction`): ℓ = 1 is the embedding output and the
word vectors of layer ℓ are ``hidden_states[ℓ-1]`` of ``output_hidden_states=True``; the
last one, ℓ = num_hidden_layers + 1, is the output of the final norm (``ln_f`` for BLOOM,
``norm`` for Llama/Gemma; transformers 5 ties ``hidden_states[-1]`` to
``last_hidden_state``). The tensor that becomes ``hidden_states[ℓ-1]`` is replaced, so the
recorded hidden state and everything downstream see the ablated value:

- ℓ = 1: forward hook on the module whose output enters decoder block 0: BLOOM's
  ``word_embeddings_layernorm`` (its ``hidden_states[0]`` is after that norm), otherwise
  the input embeddings (``get_input_embeddings()``, Gemma's scaled embedding included);
- 2 ≤ ℓ ≤ L: forward hook on decoder block ℓ-2 (0-based, i.e. block ℓ-1 counting from 1; its output is a tensor or a
  tuple whose first item is the hidden state, depending on the transformers version);
- ℓ = L + 1: forward hook on the final norm (a child ``ln_f``, ``norm``,
  ``final_layernorm`` or ``final_layer_norm`` of the module holding the blocks); a model
  without one refuses this ℓ with a ValueError.

Hooks are registered with ``prepend=True`` so that transformers 5's output-capturing hooks
(``capture_outputs``, Llama/Gemma) record the ablated tensor. For ℓ ≤ L a forward pre-hook
on block ℓ-1 checks that the ablated values reached it (RuntimeError otherwise: an
architecture whose block input is not the hooked module's output). The blocks are found
generically (:func:`xalign.extraction.decoder_blocks`), also through a peft ``PeftModel``.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import numpy as np
import torch

from xalign.checkpoints import hidden_size, num_hidden_states

__all__ = ["ablate", "empirical_p_value", "neuron_means", "random_neuron_sets"]

_FINAL_NORMS = ("ln_f", "norm", "final_layernorm", "final_layer_norm")
_EMBED_NORMS = ("word_embeddings_layernorm",)
MODES = ("zero", "mean")


def neuron_means(X: torch.Tensor) -> torch.Tensor:
    """Per-neuron mean of word vectors: the ``values`` of :func:`ablate`'s ``"mean"`` mode.

    Args:
        X: ``(N, d)`` float word vectors of one layer ℓ (e.g. layer-ℓ vectors of the
            English training words, in the model's hidden-state units).

    Returns:
        ``(d,)`` the mean over the N rows, in ``X``'s dtype.

    Raises:
        ValueError: ``X`` not a 2-D floating tensor, no rows, or NaN/inf values.
    """
    if not isinstance(X, torch.Tensor) or X.dim() != 2 or not X.is_floating_point():
        raise ValueError(f"X: expected a 2-D float tensor (N, d), got {_describe(X)}")
    if X.shape[0] == 0:
        raise ValueError("X: no rows to average")
    if not bool(torch.isfinite(X).all()):
        raise ValueError("X: has NaN/inf values")
    return X.mean(dim=0)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def _blocks_and_parent(model):
    """``(blocks, parent)``: the decoder block stack and the module that holds it."""
    from xalign.extraction import decoder_blocks

    blocks = decoder_blocks(model)
    if blocks is None:
        raise ValueError(f"{type(model).__name__}: no decoder block stack of num_hidden_layers blocks found")
    base = getattr(model, "base_model", model)
    name = next(n for n, m in base.named_modules() if m is blocks)
    parent = base.get_submodule(name.rsplit(".", 1)[0]) if "." in name else base
    return blocks, parent


def _child(parent, names: Sequence[str]):
    for n in names:
        m = getattr(parent, n, None)
        if isinstance(m, torch.nn.Module):
            return m
    return None


def _target(model, layer: int):
    """``(module whose output is hidden_states[ℓ-1], block to check or None)``."""
    n_hs = num_hidden_states(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= n_hs:
        raise ValueError(f"layer: {layer!r} is out of range; this model has layers 1..{n_hs} "
                         f"(ℓ = 1 is the embedding output)")
    blocks, parent = _blocks_and_parent(model)
    if layer == n_hs:
        norm = _child(parent, _FINAL_NORMS)
        if norm is None:
            raise ValueError(f"layer: {layer} (the final norm output) is refused: {type(parent).__name__} "
                             f"has no final norm named one of {_FINAL_NORMS}")
        return norm, None
    if layer >= 2:
        return blocks[layer - 2], blocks[layer - 1]
    emb = _child(parent, _EMBED_NORMS)
    if emb is None:
        get = getattr(parent, "get_input_embeddings", None)
        emb = get() if callable(get) else None
    if not isinstance(emb, torch.nn.Module):
        raise ValueError(f"layer: 1 is refused: {type(parent).__name__} has no input embeddings module")
    return emb, blocks[0]


def _check_neurons(neurons, d: int) -> list[int]:
    if isinstance(neurons, torch.Tensor):
        neurons = neurons.tolist()
    out = []
    for n in neurons:
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"neurons: {n!r} is not an int index")
        if not 0 <= int(n) < d:
            raise ValueError(f"neurons: index {int(n)} is out of range [0, {d})")
        out.append(int(n))
    if not out:
        raise ValueError("neurons: no neuron given")
    if len(set(out)) != len(out):
        dup = sorted({n for n in out if out.count(n) > 1})
        raise ValueError(f"neurons: duplicate indices {dup}")
    return out


def _check_values(mode: str, values, d: int) -> torch.Tensor | None:
    if mode not in MODES:
        raise ValueError(f"mode: unknown mode {mode!r}; use one of {MODES}")
    if mode == "zero":
        if values is not None:
            raise ValueError("values: only for mode 'mean'; mode 'zero' sets the neurons to 0")
        return None
    if values is None:
        raise ValueError("values: mode 'mean' needs values, a (d,) tensor (e.g. neuron_means(X))")
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != (d,) or not values.is_floating_point():
        raise ValueError(f"values: expected a float tensor of shape ({d},), got {_describe(values)}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("values: has NaN/inf values")
    return values.detach()


def _hidden(x):
    """The hidden-state tensor of a module output (a tensor, or a tuple/list's first item)."""
    return x[0] if isinstance(x, (tuple, list)) else x


def _hooks(layer: int, target_name: str, d: int, idx: list[int], vals: torch.Tensor | None):
    """``(forward hook replacing neurons idx of the output, pre-hook checking block ℓ-1's input)``."""
    mask = torch.zeros(d, dtype=torch.bool)
    mask[idx] = True
    fill = torch.zeros(d) if vals is None else torch.zeros(d, dtype=vals.dtype).index_copy(
        0, torch.tensor(idx), vals[idx].cpu())
    index = torch.tensor(idx)

    def apply(h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] != d:
            raise RuntimeError(f"layer {layer}: hooked output has width {h.shape[-1]}, hidden_size is {d}")
        return torch.where(mask.to(h.device), fill.to(device=h.device, dtype=h.dtype), h)

    def hook(module, args, output):
        if isinstance(output, (tuple, list)):
            return type(output)((apply(output[0]), *output[1:]))
        return apply(output)

    def check(module, args, kwargs):
        h = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(h, torch.Tensor):
            raise RuntimeError(f"layer {layer}: decoder block {layer - 1} got no hidden_states tensor to check")
        want = fill[index].to(device=h.device, dtype=h.dtype)
        if not torch.equal(h.index_select(-1, index.to(h.device)), want.expand(*h.shape[:-1], len(idx))):
            raise RuntimeError(f"layer {layer}: the ablated neurons did not reach decoder block {layer - 1} (0-based); "
                               f"{target_name}'s output is transformed before it")

    return hook, check


@contextlib.contextmanager
def ablate(model, layer: int, neurons: Sequence[int], mode: str = "zero",
           values: torch.Tensor | None = None) -> Iterator[None]:
    """Ablate ``neurons`` of layer ℓ in every forward pass of ``model`` inside the ``with``.

    Sets ``hidden_states[ℓ-1][..., neurons]`` to 0 (``mode="zero"``) or to
    ``values[neurons]`` (``mode="mean"``) at every token position (padding included), by
    replacing the tensor that becomes ``hidden_states[ℓ-1]`` (module docstring), so the
    ablated value is what ``output_hidden_states`` records and what every later layer and
    the head see; all other neurons of layer ℓ keep their exact values. Out of place
    (``torch.where``), so autograd still works. The hooks are always removed on exit, also
    when the body raises, so the model's outputs are afterwards bit-identical to the
    unablated ones. The causal check of shared neurons (Wang et al. 2024's shared neurons;
    issue 15) compares the score drop under this ablation with the drops of
    :func:`random_neuron_sets` (:func:`empirical_p_value`).

    Caution (in the spirit of Antverg & Belinkov 2022): ablation removes the neurons'
    values, not necessarily their information. A later LayerNorm re-centres its input, so
    if the other neurons of ℓ still encode the ablated ones (e.g. after a norm they sum to
    minus them), the next norm can write the information back; a small drop then means
    "not needed in these neurons alone", not "not used".

    Args:
        model: a transformers model (base, ``*ForCausalLM``, ``*ForTokenClassification``,
            ``*ForSequenceClassification``; tested: BLOOM incl. the lab's, Llama, Gemma 3)
            or a peft ``PeftModel`` (LoRA/QLoRA) around one.
        layer: ℓ in ``1..num_hidden_layers + 1`` (ℓ = 1 the embedding output, the last
            the final norm's output).
        neurons: distinct hidden dimensions in ``[0, d)``, d = ``hidden_size`` (ints,
            numpy ints or an int tensor; order does not matter).
        mode: ``"zero"`` or ``"mean"``.
        values: ``(d,)`` float, for ``"mean"`` only, in the hidden-state units of layer ℓ
            (e.g. :func:`neuron_means` of English training word vectors); cast to the
            hidden state's dtype and device. Only ``values[neurons]`` is used.

    Raises:
        ValueError (one line, on entry): layer out of range or refused (no final norm /
            embeddings found), no decoder blocks, a neuron out of range, not an int or
            duplicated, no neuron, unknown mode, ``"mean"`` without ``values`` or with
            values not of shape ``(d,)``/non-finite, or ``values`` with ``"zero"``.
        RuntimeError (in a forward pass): the hooked output is not ``d`` wide, or the
            ablated values did not reach decoder block ℓ-1 (0-based; an architecture
            that transforms the hooked output first).

    Yields:
        None; run the model (any number of forward passes) inside the ``with``.
    """
    d = hidden_size(model)
    target, check_block = _target(model, layer)
    idx = _check_neurons(neurons, d)
    vals = _check_values(mode, values, d)
    hook, check = _hooks(layer, type(target).__name__, d, idx, vals)
    handles = [target.register_forward_hook(hook, prepend=True)]
    try:
        if check_block is not None:
            handles.append(check_block.register_forward_pre_hook(check, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def random_neuron_sets(d: int, size: int, n_sets: int, seed: int,
                       exclude: Sequence[int] | None = None) -> list[list[int]]:
    """Seeded random control neuron sets for :func:`ablate` (the null of the causal check).

    Each set is ``size`` distinct neurons drawn uniformly without replacement from
    ``[0, d)`` minus ``exclude`` (e.g. the shared neurons themselves), sorted; sets are
    drawn independently (two sets may overlap or repeat). Deterministic for a seed
    (``numpy.random.default_rng(seed)``), whatever the order of ``exclude``.

    Args:
        d: hidden size (number of neurons of the layer).
        size: neurons per set (the size of the set being tested).
        n_sets: number of sets (0 gives ``[]``).
        seed: non-negative int seed.
        exclude: neuron indices in ``[0, d)`` never drawn.

    Returns:
        ``n_sets`` lists of ``size`` sorted, distinct int neuron indices.

    Raises:
        ValueError: d < 1, size < 1, n_sets < 0, a non-int/negative seed, an excluded
            index out of range, or fewer than ``size`` neurons left after ``exclude``.
    """
    for name, v, lo in (("d", d, 1), ("size", size, 1), ("n_sets", n_sets, 0), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name}: expected an int ≥ {lo}, got {v!r}")
    excl = set()
    for n in exclude or ():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n < d:
            raise ValueError(f"exclude: index {n!r} is out of range [0, {d})")
        excl.add(int(n))
    pool = np.array(sorted(set(range(d)) - excl), dtype=np.int64)
    if len(pool) < size:
        raise ValueError(f"size: {size} neurons asked for, only {len(pool)} left after excluding {len(excl)} of {d}")
    rng = np.random.default_rng(int(seed))
    return [sorted(int(x) for x in rng.choice(pool, size=size, replace=False)) for _ in range(n_sets)]


def empirical_p_value(observed_drop: float, random_drops: Sequence[float]) -> float:
    """One-sided empirical p-value of an ablation's score drop against random controls.

    ``p = (1 + #{i : random_drops[i] ≥ observed_drop}) / (1 + n)``, n = ``len(random_drops)``
    (Phipson & Smyth 2010, "Permutation p-values should never be zero": the observed set
    counts as one of the draws, so p ≥ 1/(n+1) and ties count against the observed set).
    Small p: ablating the tested neurons hurts more than random sets of the same size
    (:func:`random_neuron_sets`). With no random drops p = 1.

    Args:
        observed_drop: score drop of the tested set (clean minus ablated score, any unit,
            e.g. accuracy points), the same unit as ``random_drops``.
        random_drops: drops of the random control sets.

    Returns:
        p in ``[1/(n+1), 1]``.

    Raises:
        ValueError: ``observed_drop`` or an item of ``random_drops`` non-numeric or NaN
            (±inf is allowed and compares as usual).
    """
    try:
        obs = float(observed_drop)
    except (TypeError, ValueError):
        raise ValueError(f"observed_drop: expected a number, got {type(observed_drop).__name__}") from None
    try:
        rnd = [float(x) for x in random_drops]
    except (TypeError, ValueError):
        raise ValueError("random_drops: expected a sequence of numbers") from None
    if math.isnan(obs):
        raise ValueError("observed_drop: is NaN")
    if any(math.isnan(x) for x in rnd):
        raise ValueError(f"random_drops: {sum(math.isnan(x) for x in rnd)} of {len(rnd)} are NaN")
    return (1 + sum(x >= obs for x in rnd)) / (1 + len(rnd))
