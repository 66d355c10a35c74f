"""QLoRA: int8 and NF4 blockwise quantisation within their error bounds (and exact on the codebook, sharded
under jit too), frozen storage about 1/4 and 1/8 of the float32 kernels, the model unchanged at
initialisation but for the quantisation, merge exact, the closed-form trainable count, and training on
FSDP and tensor-parallel meshes that moves only the LoRA factors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from conftest import random_hf_model
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adapt.core.errors import ConfigError
from adapt.core.sharding import make_mesh
from adapt.data.batches import array_batches
from adapt.methods import build
from adapt.methods.qlora import NF4, QLoRALinear, Quantized, dequantize, quantize
from adapt.models import from_pretrained
from adapt.training import CausalLM, Trainer, defaults

LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NF4_MEAN_ABS_ERROR = 0.08  # on N(0, 1) weights, block 64 (measured 0.0727)


def _block_absmax(w, block_size):  # [in, out] -> [in, out]: the absmax of each element's block
    d_in = w.shape[0]
    pad = -d_in % block_size
    blocks = np.abs(np.pad(w, ((0, pad), (0, 0)))).reshape(-1, block_size, w.shape[1]).max(axis=1)
    return np.repeat(blocks, block_size, axis=0)[:d_in]


@pytest.mark.parametrize("shape", [(512, 96), (161, 24)])  # whole blocks; a short last block and odd rows
def test_dequantisation_error_within_half_a_step(shape):
    w = np.asarray(jax.random.normal(jax.random.PRNGKey(0), shape))
    absmax = _block_absmax(w, 64)
    codes, scales = quantize(w, 8, 64)
    assert codes.dtype == jnp.int8 and codes.shape == shape and scales.shape == (-(-shape[0] // 64), shape[1])
    err = np.abs(np.asarray(dequantize(codes, scales, shape, 8, 64)) - w)
    assert np.all(err <= absmax / 254 * (1 + 1e-5))

    codes, scales = quantize(w, 4, 64)
    assert codes.dtype == jnp.uint8 and codes.shape == ((shape[0] + 1) // 2, shape[1])
    err = np.abs(np.asarray(dequantize(codes, scales, shape, 4, 64)) - w)
    half_gap = np.diff(NF4).max() / 2  # 0.1519, between -1 and -0.696
    assert np.all(err <= half_gap * absmax * (1 + 1e-5))
    if shape[0] == 512:
        assert err.mean() < NF4_MEAN_ABS_ERROR


def test_codebook_values_round_trip_exactly_and_sharded_under_jit():
    powers = 2.0 ** np.arange(-3, 5)  # [8]: one block per column, absmax 2^k
    nf4 = np.tile(NF4, 4)[np.random.RandomState(0).permutation(64)]  # [64]: each level 4 times
    int8 = np.arange(-127, 128, dtype=np.int8)[:, None].repeat(8, 1)  # [255, 8]: every code once
    cases = {4: (jnp.asarray(nf4[:, None] * powers, jnp.float32), 64),
             8: (dequantize(jnp.asarray(int8), jnp.asarray(powers[None], jnp.float32), (255, 8), 8, 255), 255)}
    np.testing.assert_allclose(np.asarray(cases[8][0]), int8 / 127 * powers, rtol=1e-7)
    mesh = make_mesh((1, 8, 1))
    for bits, (w, block) in cases.items():
        codes, scales = quantize(w, bits, block)
        np.testing.assert_array_equal(np.asarray(scales), powers[None])
        if bits == 8:
            np.testing.assert_array_equal(np.asarray(codes), int8)
        np.testing.assert_array_equal(np.asarray(dequantize(codes, scales, w.shape, bits, block)), np.asarray(w))
        sharded = [jax.device_put(x, NamedSharding(mesh, P(None, "fsdp"))) for x in (w, codes, scales)]
        jq = jax.jit(quantize, static_argnums=(1, 2))(sharded[0], bits, block)
        np.testing.assert_array_equal(np.asarray(jq[0]), np.asarray(codes))
        out = jax.jit(dequantize, static_argnums=(2, 3, 4))(*sharded[1:], w.shape, bits, block)
        assert out.sharding.spec == P(None, "fsdp")
        np.testing.assert_array_equal(np.asarray(out), np.asarray(w))
    byte = int(quantize(jnp.asarray(NF4[[0, 15], None]), 4, 64)[0][0, 0])  # levels 0 and 15 in rows 0 and 1
    assert (byte & 0xF, byte >> 4) == (0, 15)  # row 2i in the low nibble, 2i+1 in the high one


def _qlora(tiny_llama, bits=4, **knobs):
    model = from_pretrained(tiny_llama, task="causal_lm")
    method = build({"name": "qlora", "bits": bits, **knobs})
    return method.apply(model, nnx.Rngs(0)), method


def _ids():
    return jnp.asarray(np.random.RandomState(1).randint(0, 128, (2, 12)), jnp.int32)


@pytest.mark.parametrize("bits,bound", [(8, 0.27), (4, 0.145)])
def test_frozen_storage_is_a_quarter_or_an_eighth_of_the_kernels(tiny_llama, bits, bound):
    kernels = {tuple(p): m.kernel.nbytes for p, m in nnx.iter_modules(from_pretrained(tiny_llama, task="causal_lm"))
               if isinstance(m, nnx.Linear)}
    model, _ = _qlora(tiny_llama, bits)
    layers = {tuple(p): m for p, m in nnx.iter_modules(model) if isinstance(m, QLoRALinear)}
    assert sorted({p[-1] for p in layers}) == sorted(LLAMA_LINEARS) and len(layers) == 7 * 2
    assert type(model.lm_head) is nnx.Linear and type(model.model.embed_tokens) is nnx.Embed
    q_proj = nnx.state(model)["model"]["layers"][0]["self_attn"]["q_proj"]
    assert "kernel" not in q_proj and isinstance(q_proj["codes"], Quantized)  # no float copy kept
    assert not any(isinstance(v, Quantized) for v in jax.tree.leaves(nnx.state(model, nnx.Param),
                                                                     is_leaf=lambda x: isinstance(x, nnx.Variable)))
    stored = sum(v.nbytes for v in jax.tree.leaves(nnx.state(model, Quantized)))
    float32 = sum(kernels[p] for p in layers)
    # codes: 1 byte (int8) or 1/2 byte (NF4) an element; scales: 4 bytes a block of 64 inputs (down_proj's 96
    # inputs take two blocks, the second of 32); the float32 kernel: 4 bytes an element
    expected = sum(i * o * bits / 8 + 4 * -(-i // 64) * o for i, o in (m.shape for m in layers.values())) / float32
    assert stored / float32 == pytest.approx(expected, rel=1e-12) and expected <= bound
    assert expected == pytest.approx({8: 1 / 4, 4: 1 / 8}[bits] + 1 / 64, abs=0.002)  # 0.2667 and 0.1417


@pytest.mark.parametrize("bits", [4, 8])
def test_identity_at_initialisation_and_exact_merge(tiny_llama, bits):
    model, method = _qlora(tiny_llama, bits)
    reference = from_pretrained(tiny_llama, task="causal_lm")  # the dequantised kernels as plain ones
    for path, layer in nnx.iter_modules(model):
        if isinstance(layer, QLoRALinear):
            target = reference
            for p in path:
                target = target[p] if isinstance(p, int) else getattr(target, p)
            target.kernel[...] = layer.kernel[...]
    ids = _ids()
    np.testing.assert_allclose(np.asarray(model(ids)), np.asarray(reference(ids)), atol=1e-5)

    for i, (path, layer) in enumerate(nnx.iter_modules(model)):
        if isinstance(layer, QLoRALinear):
            layer.lora_b[...] = 0.1 * jax.random.normal(jax.random.PRNGKey(i), layer.lora_b.shape)
    before = np.asarray(model(ids))
    assert np.abs(before - np.asarray(reference(ids))).max() > 1e-3  # the update shows
    merged = method.merge(model)
    assert not any(isinstance(m, QLoRALinear) for _, m in nnx.iter_modules(merged))
    assert not jax.tree.leaves(nnx.state(merged, Quantized))
    np.testing.assert_allclose(np.asarray(merged(ids)), before, atol=1e-5)


def test_trainable_count_is_the_closed_form(tiny_llama):
    model, method = _qlora(tiny_llama, rank=4)
    trainable = nnx.state(model, method.trainable(model))
    count = sum(x.size for x in jax.tree.leaves(trainable))
    d, f, kv = 64, 96, 2 * 16  # hidden, intermediate, kv heads * head_dim
    per_layer = [(d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d)]  # q k v o gate up down: (in, out)
    assert count == 2 * sum(4 * (i + o) for i, o in per_layer) == 2 * 4 * 928
    with pytest.raises(ConfigError, match="method.bits=3"):
        build({"name": "qlora", "bits": 3})


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_default_targets_are_the_block_linears(tmp_path, family):
    """Every linear layer of the transformer blocks; never the embeddings, the pooler or the task head."""
    if family == "bert":
        folder = random_hf_model(tmp_path, transformers.BertForSequenceClassification, transformers.BertConfig,
                                 vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_labels=3)
        names = {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "intermediate.dense", "output.dense"}
    else:
        folder = random_hf_model(tmp_path, transformers.GPT2LMHeadModel, transformers.GPT2Config,
                                 vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4)
        names = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    model = from_pretrained(folder)
    build({"name": "qlora"}).apply(model, nnx.Rngs(0))
    targeted = {".".join(map(str, p)) for p, m in nnx.iter_modules(model) if isinstance(m, QLoRALinear)}
    prefix = "bert.encoder.layer" if family == "bert" else "transformer.h"
    assert targeted == {f"{prefix}.{i}.{n}" for i in range(2) for n in names}


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]


# q_proj's codes: NF4 [32, 64] split over 8 fsdp shards of the input; int8 [64, 64] over 4 tensor shards of heads
@pytest.mark.parametrize("shape,bits,shard", [((1, 8, 1), 4, (4, 64)), ((2, 1, 4), 8, (64, 16))])
def test_training_on_fsdp_and_tensor_parallel_meshes(tiny_llama, tmp_path, shape, bits, shard):
    model, method = _qlora(tiny_llama, bits)
    frozen = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, Quantized))}
    lora = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, method.trainable(model)))}
    cfg = defaults()
    cfg.mesh.shape = shape
    cfg.optimizer.update(learning_rate=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.0)
    cfg.train.update(batch_size=8, steps=6, log_every=1)
    ids = np.random.RandomState(0).randint(0, 128, (8, 16)).astype(np.int32)
    trainer = Trainer(model, CausalLM(), cfg, str(tmp_path), method=method)
    result = trainer.fit(array_batches({"input_ids": ids, "attention_mask": np.ones_like(ids)}, 8, seed=0))
    losses = _losses(tmp_path)
    assert np.all(np.diff(losses) < 0) and losses[-1] < losses[0] - 0.1, losses
    codes = result.state.frozen["model"]["layers"][0]["self_attn"]["q_proj"]["codes"]  # [embed, heads]
    assert codes.sharding.spec == P("fsdp", "tensor") and codes.addressable_shards[0].data.shape == shard
    for k, v in nnx.to_flat_state(nnx.state(model, Quantized)):
        np.testing.assert_array_equal(np.asarray(v), frozen[k], err_msg=str(k))
    moved = {k: not np.array_equal(np.asarray(v), lora[k])
             for k, v in nnx.to_flat_state(nnx.state(model, method.trainable(model)))}
    assert all(moved.values()), [k for k, m in moved.items() if not m]
