"""xalign.ablation on tiny randomly initialised BLOOM (the lab's architecture, also as the lab
builds it and wrapped in peft LoRA as the transfer stage does) and Llama models."""
from __future__ import annotations

import warnings

import pytest
import torch

from xalign.ablation import _target, ablate, empirical_p_value, neuron_means, random_neuron_sets

D, N_LAYER, VOCAB = 16, 2, 64
LAYERS = range(1, N_LAYER + 2)  # ℓ = 1 (embedding output) .. L + 1 (final norm output)


def _bloom(seed: int = 0, num_labels: int = 3):
    from transformers import BloomConfig, BloomForTokenClassification

    torch.manual_seed(seed)
    cfg = BloomConfig(n_layer=N_LAYER, hidden_size=D, n_head=2, vocab_size=VOCAB, num_labels=num_labels,
                      hidden_dropout=0.0, attention_dropout=0.0, use_cache=False)
    return BloomForTokenClassification(cfg).eval()


def _llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForTokenClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(num_hidden_layers=N_LAYER, hidden_size=D, intermediate_size=32, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=VOCAB, num_labels=3, use_cache=False)
    return LlamaForTokenClassification(cfg).eval()


class _Tok:
    """The few tokenizer attributes :func:`xalign.lab._new_model` reads."""
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __len__(self) -> int:
        return VOCAB


def _gemma3(seed: int = 0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(num_hidden_layers=N_LAYER, hidden_size=D, intermediate_size=32, num_attention_heads=2,
                           num_key_value_heads=1, head_dim=8, vocab_size=VOCAB, sliding_window=4, use_cache=False)
    return Gemma3ForCausalLM(cfg).eval()  # ℓ = 1 is its scaled embedding's output


def _lab(seed: int = 0):
    """The lab's own tiny model: BLOOM causal LM, eager ALiBi attention, tied embeddings."""
    from xalign import lab

    torch.manual_seed(seed)
    return lab._new_model(_Tok(), hidden_size=D, n_layer=N_LAYER, n_head=2, dev=torch.device("cpu")).eval()


def _peft(task: str = "TOKEN_CLS"):
    """A LoRA-wrapped BLOOM classifier as xalign.transfer builds it, with a non-zero adapter."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import BloomConfig, BloomForSequenceClassification

    if task == "TOKEN_CLS":
        model, head = _bloom(), "classifier"
    else:
        torch.manual_seed(0)
        cfg = BloomConfig(n_layer=N_LAYER, hidden_size=D, n_head=2, vocab_size=VOCAB, num_labels=3,
                          pad_token_id=0, hidden_dropout=0.0, attention_dropout=0.0, use_cache=False)
        model, head = BloomForSequenceClassification(cfg).eval(), "score"
    lora = LoraConfig(task_type=getattr(TaskType, task), r=4, lora_alpha=8, lora_dropout=0.0,
                      target_modules=["query_key_value"], modules_to_save=[head])
    with warnings.catch_warnings():  # peft 0.21 calls a transformers-5-deprecated property (as in transfer)
        warnings.simplefilter("ignore", FutureWarning)
        pm = get_peft_model(model, lora).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in pm.named_parameters():  # LoRA B starts at 0: make the adapter matter
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return pm


def _peft_token():
    return _peft("TOKEN_CLS")


def _peft_seq():
    return _peft("SEQ_CLS")


def _ids(seed: int = 1, b: int = 3, t: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (b, t), generator=g)  # no pad id: every position is a token


def _hook_state(model):
    return {n: (list(m._forward_hooks), list(m._forward_pre_hooks)) for n, m in model.named_modules()}


def _run(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)


ARCHS = [pytest.param(_bloom, id="bloom"), pytest.param(_llama, id="llama"), pytest.param(_gemma3, id="gemma3"),
         pytest.param(_lab, id="lab"),
         pytest.param(_peft_token, id="peft-token"), pytest.param(_peft_seq, id="peft-seq")]


@pytest.mark.parametrize("make", ARCHS)
def test_target_output_is_hidden_state(make):
    """The hooked module's output, recorded by a plain hook, IS hidden_states[ℓ-1], for every ℓ."""
    model, ids = make(), _ids()
    _run(model, ids)  # installs transformers 5's capturing hooks (Llama) first, as in real use
    seen = {}
    handles = [_target(model, layer)[0].register_forward_hook(
        lambda m, a, out, layer=layer: seen.__setitem__(layer, out[0] if isinstance(out, tuple) else out))
        for layer in LAYERS]
    try:
        hs = _run(model, ids).hidden_states
    finally:
        for h in handles:
            h.remove()
    assert len(hs) == N_LAYER + 1 == len(seen)
    for layer in LAYERS:
        assert seen[layer] is hs[layer - 1] or torch.equal(seen[layer], hs[layer - 1]), layer


@pytest.mark.parametrize("make", ARCHS)
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablate_sets_hidden_state_and_changes_downstream(make, layer, mode):
    model, ids = make(), _ids()
    clean = _run(model, ids)  # also installs transformers 5's capturing hooks (Llama) before ours
    before = _hook_state(model)
    neurons = [3, 0, 11]
    values = torch.linspace(-2.0, 2.0, D) if mode == "mean" else None
    with ablate(model, layer, neurons, mode, values):
        out = _run(model, ids)
        assert _hook_state(model) != before
    hs = out.hidden_states
    assert len(hs) == N_LAYER + 1
    want = torch.zeros(len(neurons)) if values is None else values[neurons]
    assert torch.equal(hs[layer - 1][..., neurons], want.expand(*hs[layer - 1].shape[:-1], -1))
    for i in range(layer - 1):  # upstream untouched
        assert torch.equal(hs[i], clean.hidden_states[i])
    others = [j for j in range(D) if j not in neurons]  # the other neurons of ℓ: the ablation is exact
    assert torch.equal(hs[layer - 1][..., others], clean.hidden_states[layer - 1][..., others])
    for i in range(layer, N_LAYER + 1):  # downstream sees the ablated value
        assert not torch.allclose(hs[i], clean.hidden_states[i])
    assert not torch.allclose(out.logits, clean.logits)
    after = _run(model, ids)  # hooks gone: byte-for-byte the unablated outputs
    assert _hook_state(model) == before
    assert torch.equal(after.logits, clean.logits)
    assert len(after.hidden_states) == len(clean.hidden_states)
    assert all(torch.equal(a, c) for a, c in zip(after.hidden_states, clean.hidden_states))


def test_hooks_removed_after_exception():
    model, ids = _bloom(), _ids()
    clean = _run(model, ids)
    with pytest.raises(KeyError, match="boom"):
        with ablate(model, 2, [1, 2], "zero"):
            _run(model, ids)
            raise KeyError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(_run(model, ids).logits, clean.logits)


def _planted(j: int, seed: int = 0, sink: int | None = 9):
    """BLOOM token classifier whose label is carried by hidden dimension j only.

    Token v has label v % 2 (sign s = ±1); its embedding is 3s in dim j and N(0, 1)
    elsewhere. The blocks' output projections are zeroed (each block is the identity on the
    residual stream), the head reads dim j of the final norm's output and its bias prefers
    label 0 when dim j says nothing.

    A LayerNorm centres its output, so after BLOOM's embedding norm the other dims sum to
    minus dim j: the label would survive the ablation of dim j and the final norm would
    write it back into dim j (``sink=None`` builds that model, see
    :func:`test_layernorm_recreates_a_lone_neuron`). With a ``sink`` dim, the embedding is
    -3s there, the other dims are centred per token and the embedding norm's weight is 0
    at the sink, so from ``hidden_states[0]`` on the other dims sum to 0 and only dim j
    knows the label."""
    model = _bloom(seed, num_labels=2)
    g = torch.Generator().manual_seed(seed + 100)
    labels = torch.arange(VOCAB) % 2
    sign = 2.0 * labels - 1
    with torch.no_grad():
        emb = torch.randn(VOCAB, D, generator=g)
        if sink is not None:
            rest = [i for i in range(D) if i not in (j, sink)]
            emb[:, rest] -= emb[:, rest].mean(dim=1, keepdim=True)
            emb[:, sink] = -3.0 * sign
            model.transformer.word_embeddings_layernorm.weight[sink] = 0.0
        emb[:, j] = 3.0 * sign
        model.transformer.word_embeddings.weight.copy_(emb)
        for block in model.transformer.h:
            for lin in (block.self_attention.dense, block.mlp.dense_4h_to_h):
                lin.weight.zero_()
                lin.bias.zero_()
        model.classifier.weight.zero_()
        model.classifier.weight[1, j], model.classifier.weight[0, j] = 5.0, -5.0
        model.classifier.bias.zero_()
        model.classifier.bias[0] = 2.0
    return model, labels


def _accuracy(model, ids, labels) -> float:
    with torch.no_grad():
        pred = model(input_ids=ids).logits.argmax(-1)
    return (pred == labels[ids]).float().mean().item()


def _layer_means(model, ids, layer):
    with torch.no_grad():
        X = model.transformer(input_ids=ids, output_hidden_states=True).hidden_states[layer - 1].reshape(-1, D)
    return neuron_means(X)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_planted_dimension_is_causal(layer, mode):
    j = 6
    model, labels = _planted(j)
    ids = _ids(seed=2, b=16, t=16)
    frac1 = labels[ids].float().mean().item()
    chance = max(frac1, 1 - frac1)
    values = _layer_means(model, ids, layer) if mode == "mean" else None
    clean = _accuracy(model, ids, labels)
    assert clean == 1.0
    with ablate(model, layer, [j], mode, values):
        hit = _accuracy(model, ids, labels)
    assert hit <= chance + 0.05, (hit, chance)
    drops = []
    for s in random_neuron_sets(D, 1, 19, seed=layer, exclude=[j]):
        with ablate(model, layer, s, mode, values):
            drops.append(clean - _accuracy(model, ids, labels))
    assert max(drops) <= 0.05, drops
    p = empirical_p_value(clean - hit, drops)
    assert p == 1 / 20
    # larger random sets (a quarter of the neurons) still leave the planted label readable
    for s in random_neuron_sets(D, 4, 5, seed=7, exclude=[j]):
        with ablate(model, layer, s, mode, values):
            assert _accuracy(model, ids, labels) >= 0.9
    assert _accuracy(model, ids, labels) == 1.0  # hooks gone


def test_layernorm_recreates_a_lone_neuron():
    """The caution behind the planted model's sink: zeroing dim j before a LayerNorm removes
    its value, not the information, when the other dims still sum to minus it."""
    j = 6
    model, labels = _planted(j, sink=None)
    with torch.no_grad():
        model.classifier.bias.zero_()  # no tie-breaking preference: the head reads dim j's sign
    ids = _ids(seed=2, b=16, t=16)
    assert _accuracy(model, ids, labels) == 1.0
    for layer in range(1, N_LAYER + 1):
        with ablate(model, layer, [j]):
            assert _accuracy(model, ids, labels) == 1.0
    with ablate(model, N_LAYER + 1, [j]):  # after the last norm the head reads dim j alone
        assert _accuracy(model, ids, labels) < 0.6


def test_random_neuron_sets():
    a = random_neuron_sets(50, 5, 10, seed=3, exclude=[1, 2, 3])
    assert a == random_neuron_sets(50, 5, 10, seed=3, exclude=[3, 2, 1])
    assert a != random_neuron_sets(50, 5, 10, seed=4, exclude=[1, 2, 3])
    assert len(a) == 10 and all(len(s) == 5 == len(set(s)) and s == sorted(s) for s in a)
    assert all(0 <= n < 50 and n not in (1, 2, 3) for s in a for n in s)
    assert random_neuron_sets(4, 2, 30, seed=0, exclude=[0, 1]) == [[2, 3]] * 30
    assert random_neuron_sets(8, 3, 0, seed=0) == []
    drawn = {n for s in random_neuron_sets(20, 2, 200, seed=1) for n in s}
    assert drawn == set(range(20))


@pytest.mark.parametrize("kw, msg", [
    (dict(d=0, size=1, n_sets=1, seed=0), "d:"),
    (dict(d=5, size=0, n_sets=1, seed=0), "size:"),
    (dict(d=5, size=1, n_sets=-1, seed=0), "n_sets:"),
    (dict(d=5, size=1, n_sets=1, seed=-1), "seed:"),
    (dict(d=5, size=1, n_sets=1, seed=0, exclude=[5]), "exclude:"),
    (dict(d=5, size=4, n_sets=1, seed=0, exclude=[0, 1]), "only 3 left"),
])
def test_random_neuron_sets_errors(kw, msg):
    with pytest.raises(ValueError, match=msg) as e:
        random_neuron_sets(**kw)
    assert "\n" not in str(e.value)


def test_empirical_p_value():
    assert empirical_p_value(0.5, [0.1, 0.2, 0.3]) == 1 / 4
    assert empirical_p_value(0.2, [0.1, 0.2, 0.3]) == 3 / 4  # ties count against the observed set
    assert empirical_p_value(-1.0, [0.0, 0.0]) == 1.0
    assert empirical_p_value(0.3, []) == 1.0
    assert empirical_p_value(1.0, torch.zeros(99)) == 0.01
    assert empirical_p_value(float("inf"), [1.0, float("inf")]) == 2 / 3
    for args, msg in (((float("nan"), [0.1]), "observed_drop: is NaN"),
                      ((0.1, [0.2, float("nan")]), "random_drops: 1 of 2 are NaN"),
                      (("x", [0.1]), "observed_drop:"), ((0.1, 0.2), "random_drops:"),
                      ((0.1, [None]), "random_drops:")):
        with pytest.raises(ValueError, match=msg) as e:
            empirical_p_value(*args)
        assert "\n" not in str(e.value)


def test_neuron_means():
    X = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(neuron_means(X), torch.tensor([4.0, 5.0, 6.0, 7.0]))
    for bad in (torch.zeros(4), torch.zeros(0, 4), torch.zeros(2, 4, dtype=torch.long),
                torch.tensor([[float("inf"), 0.0]])):
        with pytest.raises(ValueError, match="X:"):
            neuron_means(bad)


@pytest.mark.parametrize("args, msg", [
    ((0, [1], "zero"), "layer: 0 is out of range; this model has layers 1..3"),
    ((N_LAYER + 2, [1], "zero"), "out of range"),
    ((True, [1], "zero"), "layer:"),
    ((1, [D], "zero"), r"index 16 is out of range \[0, 16\)"),
    ((1, [-1], "zero"), "out of range"),
    ((1, [2, 2], "zero"), r"duplicate indices \[2\]"),
    ((1, [], "zero"), "no neuron"),
    ((1, [1.0], "zero"), "not an int"),
    ((1, [1], "max"), "unknown mode 'max'"),
    ((1, [1], "mean"), "needs values"),
    ((1, [1], "mean", torch.zeros(D + 1)), r"shape \(16,\)"),
    ((1, [1], "mean", torch.zeros(1, D)), r"shape \(16,\)"),
    ((1, [1], "mean", torch.full((D,), float("nan"))), "NaN"),
    ((1, [1], "zero", torch.zeros(D)), "only for mode 'mean'"),
])
def test_ablate_errors(args, msg):
    model = _bloom()
    with pytest.raises(ValueError, match=msg) as e:
        with ablate(model, *args):
            pass
    assert "\n" not in str(e.value)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_refuses_last_layer_without_final_norm():
    model = _bloom()
    del model.transformer.ln_f
    with pytest.raises(ValueError, match="final norm output\\) is refused"):
        with ablate(model, N_LAYER + 1, [1]):
            pass


def test_unreached_ablation_raises():
    """A module between the hooked output and block ℓ-1 that changes the value is caught."""
    model, ids = _bloom(), _ids()
    model.transformer.h[0].register_forward_hook(lambda m, a, out: (out[0] + 1.0, *out[1:]))
    with ablate(model, 2, [1], "zero"):  # our hook is prepended: the +1 runs after it
        with pytest.raises(RuntimeError, match="did not reach decoder block 1"):
            _run(model, ids)


def test_neuron_index_types_and_order():
    """numpy ints, an int tensor and any order ablate the same neurons."""
    import numpy as np

    model, ids = _bloom(), _ids()
    with ablate(model, 2, [11, 3]):
        ref = _run(model, ids).logits
    for neurons in (np.array([3, 11]), torch.tensor([11, 3]), (np.int64(3), 11)):
        with ablate(model, 2, neurons):
            assert torch.equal(_run(model, ids).logits, ref)
    with pytest.raises(ValueError, match="neurons: 1.0 is not an int"):
        with ablate(model, 2, torch.tensor([1.0])):
            pass
