"""Scanned layers (``model.scan_layers``, :mod:`adapt.models.scan`): the Llama and BERT families with their layers
stacked ``[L, ...]`` and scanned give the unrolled model's logits and gradients (float32, dropout on or off, with
and without remat) and transformers' logits, load and export the same HF tensors byte for byte, shard the stacked
axis by its rule, and everything that does not handle them yet refuses in one
line. Training stacked: ``tests/training/test_scan_training.py``."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import TINY_LLAMA
from flax import nnx
from jax.sharding import PartitionSpec as P
from stacked_trees import assert_trees_close, stacked

from adapt import methods
from adapt.core.errors import ConfigError
from adapt.core.sharding import DEFAULT_RULES, make_mesh
from adapt.features.base import FEATURES, Feature
from adapt.methods.peft_io import save_peft
from adapt.models import from_pretrained, save_pretrained
from adapt.models import layers as L
from adapt.models.registry import hf_keys, model_info

TINY_DECODER = {**TINY_LLAMA, "num_hidden_layers": 3}
DECODERS = {
    "llama": lambda: transformers.LlamaConfig(**TINY_DECODER),
    "smollm-tied": lambda: transformers.LlamaConfig(**TINY_DECODER, tie_word_embeddings=True),
    "qwen3": lambda: transformers.Qwen3Config(**TINY_DECODER, head_dim=24),
    "qwen2-mixed-windows": lambda: transformers.Qwen2Config(  # layers 0 and 2 slide, 1 does not: two masks scanned
        **TINY_DECODER, use_sliding_window=True, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
}
TINY_ENCODER = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                    max_position_embeddings=40)
ENCODERS = {  # name -> (transformers auto class, config, our task)
    "bert-sequence": (transformers.AutoModelForSequenceClassification,
                      lambda: transformers.BertConfig(**TINY_ENCODER, num_labels=3), "sequence_classification"),
    "bert-mlm": (transformers.AutoModelForMaskedLM, lambda: transformers.BertConfig(**TINY_ENCODER), "masked_lm"),
    "roberta-tokens": (transformers.AutoModelForTokenClassification,
                       lambda: transformers.RobertaConfig(**TINY_ENCODER, type_vocab_size=1, num_labels=5),
                       "token_classification"),
}


def _batch(vocab, pad=0, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab, (3, 12))
    mask = np.ones_like(ids)
    mask[1, 9:] = mask[2, 5:] = 0  # right padding
    ids[mask == 0] = pad
    return ids, mask


@nnx.jit
def _logits_and_grads(model, ids, mask, step_key=None):
    """The logits, and the gradient of a fixed functional of them (every output matters) with respect to every
    parameter: one compiled program (eagerly, op by op, it took most of each test's time). ``step_key``: a train
    step's key, which the dropout of the layers a method injects draws from (None: no dropout)."""

    def functional(m):
        with L.step_key(step_key):
            logits = m(ids, mask)
        return jnp.sum(jnp.tanh(logits) * jax.random.normal(jax.random.key(1), logits.shape)), logits

    (_, logits), grads = nnx.value_and_grad(functional, has_aux=True)(model)
    return logits, grads


def _check_scanned(scanned, unrolled, ids, mask, step_key=None):
    """The scanned model's logits and gradients equal the unrolled model's; returns its logits."""
    ours, grads = _logits_and_grads(scanned, ids, mask, step_key)
    logits, expected = _logits_and_grads(unrolled, ids, mask, step_key)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(logits), atol=1e-6, rtol=0)
    assert_trees_close(nnx.to_pure_dict(grads), stacked(nnx.to_pure_dict(expected)), tol=1e-6)
    return np.asarray(ours)


def _same_export(unrolled, scanned, tmp_path):
    save_pretrained(unrolled, str(tmp_path / "unrolled"))
    save_pretrained(scanned, str(tmp_path / "scanned"))
    for name in ("model.safetensors", "config.json"):
        with open(tmp_path / "unrolled" / name, "rb") as a, open(tmp_path / "scanned" / name, "rb") as b:
            assert a.read() == b.read(), name


@pytest.mark.parametrize("variant", sorted(DECODERS))
def test_decoder_scanned_equals_unrolled_and_transformers(variant, tmp_path):
    torch.manual_seed(0)
    config = DECODERS[variant]()
    reference = transformers.AutoModelForCausalLM.from_config(config).eval()
    reference.save_pretrained(tmp_path / "hf")
    ids, mask = _batch(config.vocab_size)
    keep = mask.astype(bool)
    with torch.no_grad():
        expected = reference(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()

    unrolled = from_pretrained(str(tmp_path / "hf"))
    scanned = from_pretrained(str(tmp_path / "hf"), scan_layers=True)
    assert model_info(scanned).stacked and not model_info(unrolled).stacked
    kernel = scanned.model.layers.self_attn.q_proj.kernel
    assert kernel.shape == (3, *unrolled.model.layers[0].self_attn.q_proj.kernel.shape)
    assert kernel.get_metadata()["logical_axes"] == ("layers", "embed", "heads")
    ours = _check_scanned(scanned, unrolled, ids, mask)
    np.testing.assert_allclose(ours[keep], expected[keep], atol=1e-4, rtol=0)
    _same_export(unrolled, scanned, tmp_path)


@pytest.mark.parametrize("case", sorted(ENCODERS))
def test_encoder_scanned_equals_unrolled_and_transformers(case, tmp_path):
    auto, make_config, task = ENCODERS[case]
    torch.manual_seed(0)
    reference = auto.from_config(make_config()).eval()
    with torch.no_grad():  # biases and norms perturbed too, so every tensor matters
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reference.save_pretrained(tmp_path / "hf")
    ids, mask = _batch(reference.config.vocab_size, reference.config.pad_token_id)
    with torch.no_grad():
        expected = reference(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()

    unrolled = from_pretrained(str(tmp_path / "hf"), task=task)
    scanned = from_pretrained(str(tmp_path / "hf"), task=task, scan_layers=True)
    ours = _check_scanned(scanned, unrolled, ids, mask)
    keep = mask.astype(bool) if ours.ndim == 3 else slice(None)
    np.testing.assert_allclose(ours[keep], expected[keep], atol=1e-4, rtol=0)
    _same_export(unrolled, scanned, tmp_path)


def test_dropout_and_remat_give_the_unrolled_numbers(tiny_llama):
    """Dropout's rngs carried through the scan draw the unrolled keys; remat per scanned layer changes nothing."""
    ids, mask = _batch(128)
    models = {scan: from_pretrained(tiny_llama, hidden_dropout=0.1, attention_dropout=0.1, scan_layers=scan)
              for scan in (False, True)}

    def grads(model):  # a program traced anew at each call: remat's policy is read when the layers are traced
        def loss(m):
            return jnp.sum(jnp.tanh(m(ids, mask, rngs=nnx.Rngs(dropout=3))))
        return nnx.to_pure_dict(nnx.jit(nnx.grad(loss))(model))

    forward = nnx.jit(lambda m, dropout: m(ids, mask, rngs=nnx.Rngs(dropout=3)) if dropout else m(ids, mask),
                      static_argnums=1)
    logits = {s: np.asarray(forward(m, True)) for s, m in models.items()}
    assert not np.allclose(logits[True], np.asarray(forward(models[True], False)))  # dropout is on
    np.testing.assert_allclose(logits[True], logits[False], atol=1e-6, rtol=0)
    expected = stacked(grads(models[False]))
    for policy in ("none", "full", "dots"):
        with L.remat(policy):
            assert_trees_close(grads(models[True]), expected, tol=1e-6)


def _set_params(model, pure):
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


@pytest.mark.parametrize("method, case", [("lora", "llama"),
                                          pytest.param("dora", "bert-sequence", marks=pytest.mark.slow),
                                          pytest.param("qlora", "llama", marks=pytest.mark.slow)])
def test_lora_on_stacked_layers_equals_lora_unrolled(method, case, tmp_path):
    """LoRA, DoRA and QLoRA (dropout on; QLoRA's base quantised layer by layer) on stacked layers are stacked
    factors A [L, in, r], B [L, r, out]: drawn as the unrolled model draws them, the same logits and gradients once
    B is non-zero, and the same PEFT adapter and merged checkpoint, byte for byte."""
    torch.manual_seed(0)
    if case in DECODERS:
        reference, task = transformers.AutoModelForCausalLM.from_config(DECODERS[case]()), None
    else:
        auto, make_config, task = ENCODERS[case]
        reference = auto.from_config(make_config())
    reference.save_pretrained(tmp_path / "hf")
    models = {}
    for scan in (False, True):
        model = from_pretrained(str(tmp_path / "hf"), task=task, scan_layers=scan)
        spec = methods.build({"name": method, "rank": 4, "dropout": 0.1})
        models[scan] = spec.apply(model, nnx.Rngs(params=7)), spec
    (unrolled, spec), (scanned, _) = models[False], models[True]
    params = nnx.to_pure_dict(nnx.state(unrolled, nnx.Param))
    assert_trees_close(nnx.to_pure_dict(nnx.state(scanned, nnx.Param)), stacked(params), tol=0)
    rng = np.random.RandomState(0)  # B away from zero, so that A's gradient and the update matter
    params = methods.base.map_with_path(
        lambda path, x: rng.standard_normal(x.shape).astype(np.float32) * 0.1 if path[-1] == "lora_b" else x, params)
    _set_params(unrolled, params)
    _set_params(scanned, stacked(params))
    ids, mask = _batch(reference.config.vocab_size, reference.config.pad_token_id or 0)
    logits = _check_scanned(scanned, unrolled, ids, mask, step_key=jax.random.key(3))
    assert not np.allclose(logits, np.asarray(_logits_and_grads(scanned, ids, mask)[0]))  # LoRA's dropout is on
    x = jnp.ones((4, 32))  # the layer's number is folded into the key: each layer draws its own mask
    with L.step_key(jax.random.key(0)):
        masks = []
        for i in (0, 1, jnp.int32(1)):  # layer 1 in a Python loop (unrolled) and in a scan (an int32 array)
            with L.layer_number(i):
                masks.append(np.asarray(L.module_dropout(x, 0.5, "model.layers.self_attn.q_proj") == 0))
    assert not np.array_equal(masks[0], masks[1]) and np.array_equal(masks[1], masks[2])
    for model, name in ((unrolled, "unrolled"), (scanned, "scanned")):
        save_peft(model, spec, str(tmp_path / name / "peft"))
        save_pretrained(spec.merge(model), str(tmp_path / name / "merged"))
    for name in ("peft/adapter_model.safetensors", "peft/adapter_config.json", "merged/model.safetensors"):
        assert (tmp_path / "unrolled" / name).read_bytes() == (tmp_path / "scanned" / name).read_bytes(), name


def test_fresh_heads_and_random_init_draw_the_unrolled_numbers(base_bert, tiny_llama):
    """The stack is built from the layers made in turn, so what is initialised fresh (a classifier and pooler the
    checkpoint lacks; a whole random-init model) is the same scanned or not."""
    for name, kwargs in ((base_bert, dict(task="sequence_classification", num_labels=3)),
                         (tiny_llama, dict(random_init=True, config_overrides={"num_hidden_layers": 3}))):
        models = [from_pretrained(name, seed=5, scan_layers=scan, **kwargs) for scan in (False, True)]
        unrolled, scanned = (nnx.to_pure_dict(nnx.state(m, nnx.Param)) for m in models)
        assert_trees_close(scanned, stacked(unrolled), tol=0)


def test_stacked_parameters_shard_by_the_layers_rule(tiny_llama):
    ids = np.random.RandomState(0).randint(0, 128, (8, 16))
    expected = np.asarray(from_pretrained(tiny_llama)(ids))
    mesh = make_mesh((2, 2, 2))
    for rule, lead in ((None, None), ("data", "data")):  # replicated by default; a rule can shard the layers
        rules = DEFAULT_RULES if rule is None else tuple((k, rule if k == "layers" else v) for k, v in DEFAULT_RULES)
        model = from_pretrained(tiny_llama, mesh=mesh, rules=rules, scan_layers=True)
        layers = model.model.layers
        assert layers.self_attn.q_proj.kernel.get_value().sharding.spec == P(lead, "fsdp", "tensor")
        assert layers.mlp.down_proj.kernel.get_value().sharding.spec == P(lead, "tensor", "fsdp")
        assert layers.input_layernorm.scale.get_value().sharding.spec == P(lead, None)
        graphdef, state = nnx.split(model)
        with jax.set_mesh(mesh):
            logits = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, ids)
        np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5)


def test_hf_names_of_a_stacked_parameter(tiny_llama):
    info = model_info(from_pretrained(tiny_llama, scan_layers=True))
    keys, transpose, stacked = hf_keys(info.family, ("model", "layers", "self_attn", "q_proj", "kernel"), 2)
    assert (keys, transpose, stacked) == (["model.layers.0.self_attn.q_proj.weight",
                                           "model.layers.1.self_attn.q_proj.weight"], True, True)
    assert hf_keys(info.family, ("model", "layers", 1, "mlp", "up_proj", "bias"), 2) == (
        ["model.layers.1.mlp.up_proj.bias"], False, False)
    assert hf_keys(info.family, ("layers", "input_layernorm", "scale"), 2)[0][1] == "layers.1.input_layernorm.weight"


def test_what_does_not_stack_yet_refuses(tiny_gpt2, monkeypatch):
    """A family that does not declare ``stack_layers`` (every family of adapt does: here GPT-2's declaration is
    taken away) refuses before its weights are read."""
    from adapt.models import registry

    monkeypatch.setitem(registry._FAMILIES, "gpt2", dataclasses.replace(registry.family_for("gpt2"),
                                                                        stack_layers=False))
    with pytest.raises(ConfigError, match=r"^model.scan_layers=True: gpt2 does not stack its layers yet$"):
        from_pretrained(tiny_gpt2, scan_layers=True)
    """A family that does not declare ``stack_layers`` (every family of adapt does: here GPT-2's declaration is
    taken away) refuses before its weights are read."""

class Unstacking(Feature):
    """A trial feature registered from outside adapt that does not declare ``stacked_layers_ok``."""
    name, key = "unstacking", "meta.unstacking"

    def enabled(self, config) -> bool:
        return bool(config.get("meta", {}).get("unstacking"))


class Unstacked(methods.base.Method):
    """A method registered from outside adapt that does not declare ``stacked_layers_ok``."""
    name = "unstacked"


def test_a_trial_refuses_what_does_not_stack_before_reading_anything(small_bert, tmp_path, monkeypatch):
    from adapt.experiment import base
    from adapt.experiment.trial import build_trial
    from adapt.methods import method_config, registry

    monkeypatch.setitem(registry.METHODS, Unstacked.name, Unstacked)
    monkeypatch.setitem(registry.SCHEMA.sections, Unstacked.name, {})
    config = base.base_config()
    config.model.name, config.model.scan_layers = small_bert, True
    config.data.files = {"train": str(tmp_path / "absent.jsonl")}  # never read: each refusal comes first
    config.method = method_config("unstacked")
    every = ", ".join(sorted(set(registry.METHODS) - {"unstacked"}))  # adapt's own methods all stack
    with pytest.raises(ConfigError, match=rf"^model.scan_layers=True: method.name='unstacked' does not handle "
                                          rf"stacked layers yet \(methods that do: {every}\)$"):
        build_trial(config, str(tmp_path / "run"))
    config.method = method_config("full")
    monkeypatch.setitem(FEATURES, Unstacking.name, Unstacking())
    config.unlock()
    config.meta = {"unstacking": True}
    with pytest.raises(ConfigError, match=r"^model.scan_layers=True: meta.unstacking \(unstacking\) does not "
                                          r"handle stacked layers yet$"):
        build_trial(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_the_config_key_reaches_the_trial_model(benchmark_data, base_bert, tmp_path):
    from adapt.experiment import configs
    from adapt.experiment.trial import build_trial

    config = configs.load("configs/finetune.py:bc5cdr", [f"model.name={base_bert}", "data.max_length=32",
                                                         f"data.cache_dir={tmp_path / 'cache'}",
                                                         "model.scan_layers=True"])
    model = build_trial(config, str(tmp_path / "run")).trainer.model
    assert model_info(model).stacked and model.bert.encoder.layer.output.dense.kernel.shape == (2, 64, 32)


@pytest.mark.slow
def test_the_bundled_gguf_loads_scanned():
    """The bundled SmolLM2-135M (4-bit GGUF, dequantised, llama.cpp's Q/K permutation undone: gguf_io's names feed
    the same mapping) loads stacked and gives the unrolled logits."""
    ids = np.random.RandomState(0).randint(0, 1000, (1, 8))
    unrolled = np.asarray(from_pretrained("bundled:smollm2-135m")(ids))
    scanned = from_pretrained("bundled:smollm2-135m", scan_layers=True)
    assert scanned.model.layers.mlp.up_proj.kernel.shape == (30, 576, 1536)
    np.testing.assert_allclose(np.asarray(scanned(ids)), unrolled, atol=1e-4, rtol=0)
