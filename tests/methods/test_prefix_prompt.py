"""Prompt tuning and prefix tuning (adapt.methods.prefix) on a tiny Llama, GPT-2 and BERT classifier:
trainable counts in closed form, parity with transformers fed the same virtual tokens (prompt as
concatenated input embeddings, prefix as ``past_key_values``), one prefixed attention layer against
numpy, the prompted encoder against the base layers run by hand, the prompt's mask rules, and training
on FSDP and tensor-parallel meshes that moves exactly the added parameters (and the head)."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adapt.core.errors import ConfigError
from adapt.core.sharding import make_mesh
from adapt.data.batches import array_batches
from adapt.methods import build
from adapt.models import from_pretrained
from adapt.models import layers as L
from adapt.models.registry import param_paths
from adapt.training import CausalLM, Trainer, defaults
from adapt.training.objectives import SequenceClassification

P = 3


def _tuned(folder, task, name, mesh=None, **knobs):
    model = from_pretrained(folder, task=task, mesh=mesh)
    method = build({"name": name, "num_virtual_tokens": P, **knobs})
    return method.apply(model, nnx.Rngs(0)), method


def _ids(b=2, t=10, seed=0):
    ids = np.random.RandomState(seed).randint(1, 128, (b, t)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, -3:] = 0  # right padding on the second row
    return ids, mask


def _count(model, method) -> int:
    return sum(v.size for v in jax.tree.leaves(nnx.state(model, method.trainable(model))))


@pytest.mark.parametrize("name, knobs", [("prompt_tuning", {}), ("prefix_tuning", {}),
                                         ("prefix_tuning", {"projection": True, "projection_dim": 24})])
def test_trainable_counts_are_the_closed_form(tiny_llama, tiny_bert, name, knobs):
    d, layers, f = 64, 2, knobs.get("projection_dim")
    bert_head = d * 3 + 3 + d * d + d  # classifier and pooler (the head the base checkpoint lacks)
    for folder, task, (k, h), head in [(tiny_llama, "causal_lm", (2, 16), 0),
                                       (tiny_bert, "sequence_classification", (4, 16), bert_head)]:
        model, method = _tuned(folder, task, name, **knobs)
        kv = layers * 2 * k * h
        expected = {"prompt_tuning": P * d, "prefix_tuning": P * kv if f is None
                    else P * d + d * f + f + f * kv + kv}[name]
        assert _count(model, method) == expected + head, (task, name)
        no_head = build({"name": name, "num_virtual_tokens": P, "train_head": False, **knobs})
        assert _count(model, no_head) == expected


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_tuned_llama_is_transformers_with_the_prefix_as_past_key_values(tiny_llama, projection):
    import torch
    import transformers

    model, _ = _tuned(tiny_llama, "causal_lm", "prefix_tuning", projection=projection, projection_dim=24)
    ids, mask = _ids()
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert ours.shape == (2, 10, 128)
    cache = transformers.DynamicCache()
    for i, layer in enumerate(model.model.layers):  # keys stored unrotated, as HF caches keys after RoPE
        k, v = (torch.tensor(np.asarray(a)).permute(1, 0, 2)[None].repeat(2, 1, 1, 1) for a in layer.self_attn.prefix())
        cache.update(k, v, i)  # [B, K, P, H]
    hf = transformers.LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        ref = hf(torch.tensor(ids, dtype=torch.long), past_key_values=cache,
                 attention_mask=torch.tensor(np.concatenate([np.ones((2, P), int), mask], 1)),
                 position_ids=torch.arange(10)[None].repeat(2, 1)).logits.numpy()  # real tokens keep positions
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=2e-5)
    base = np.asarray(from_pretrained(tiny_llama, task="causal_lm")(jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(ours - base)[real].max() > 1e-2  # the prefix does change the model


def test_prompt_tuned_llama_is_transformers_on_concatenated_embeddings(tiny_llama):
    import torch
    import transformers

    model, _ = _tuned(tiny_llama, "causal_lm", "prompt_tuning")
    prompt = np.asarray(model.model.prompt())  # init="vocab": rows of the embedding table
    table = np.asarray(model.model.embed_tokens.embedding[...])
    assert all(np.isclose(table, row).all(1).any() for row in prompt)
    ids, mask = _ids()
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert ours.shape == (2, 10, 128)
    hf = transformers.LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        tokens = hf.model.embed_tokens(torch.tensor(ids).long())
        embeds = torch.cat([torch.tensor(prompt)[None].repeat(2, 1, 1), tokens], 1)
        # PEFT's layout: the prompt at positions 0..P-1, the text after it (RoPE sees the same distances as ours).
        ref = hf(inputs_embeds=embeds, attention_mask=torch.tensor(np.concatenate([np.ones((2, P), int), mask], 1)),
                 position_ids=torch.arange(P + 10)[None].repeat(2, 1)).logits.numpy()[:, P:]
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=2e-5)


def test_gpt2_prompt_and_prefix_are_transformers_fed_the_same_virtual_tokens(tiny_gpt2):
    import torch
    import transformers

    hf = transformers.GPT2LMHeadModel.from_pretrained(tiny_gpt2).eval()
    ids, mask = _ids()
    full = torch.tensor(np.concatenate([np.ones((2, P), int), mask], 1))
    real = mask.astype(bool)
    model, _ = _tuned(tiny_gpt2, "causal_lm", "prompt_tuning")
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    prompt = torch.tensor(np.asarray(model.transformer.prompt()))  # the first layer's input: wpe included
    with torch.no_grad():
        wte, wpe = hf.transformer.wte, hf.transformer.wpe
        embeds = torch.cat([(prompt - wpe(torch.arange(P)))[None].repeat(2, 1, 1), wte(torch.tensor(ids).long())], 1)
        positions = torch.cat([torch.arange(P), torch.arange(10)])[None].repeat(2, 1)  # HF adds wpe back
        ref = hf(inputs_embeds=embeds, attention_mask=full, position_ids=positions).logits.numpy()[:, P:]
    np.testing.assert_allclose(ours[real], ref[real], atol=2e-5)

    model, _ = _tuned(tiny_gpt2, "causal_lm", "prefix_tuning")
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    cache = transformers.DynamicCache()
    for i, block in enumerate(model.transformer.h):
        k, v = (torch.tensor(np.asarray(a)).permute(1, 0, 2)[None].repeat(2, 1, 1, 1) for a in block.attn.prefix())
        cache.update(k, v, i)  # [B, K, P, H]
    with torch.no_grad():
        ref = hf(torch.tensor(ids).long(), past_key_values=cache, attention_mask=full,
                 position_ids=torch.arange(10)[None].repeat(2, 1)).logits.numpy()
    np.testing.assert_allclose(ours[real], ref[real], atol=2e-5)


def _softmax_attention(q, k, v, mask, scale):  # numpy: q [B, T, N, H], k/v [B, S, K, H], mask [B, T, S]
    k, v = (np.repeat(a, q.shape[2] // a.shape[2], axis=2) for a in (k, v))
    logits = np.einsum("btnh,bsnh->bnts", q, k) * scale
    logits = np.where(mask[:, None], logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", probs, v)


def _rope(x, pos, theta):  # numpy rotate-half RoPE: x [B, T, N, H], pos [B, T]
    h = x.shape[-1]
    angles = pos[..., None] * (1.0 / theta ** (np.arange(0, h, 2) / h))  # [B, T, H/2]
    cos, sin = (np.concatenate([f(angles)] * 2, -1)[:, :, None] for f in (np.cos, np.sin))
    return x * cos + np.concatenate([-x[..., h // 2:], x[..., :h // 2]], -1) * sin


def test_one_prefixed_llama_attention_layer_is_attention_over_concatenated_keys(tiny_llama):
    """T = 80 > 64, so the causal query blocks run, reading keys [0, P + b) for block [a, b)."""
    model, _ = _tuned(tiny_llama, "causal_lm", "prefix_tuning")
    attn, cfg, t = model.model.layers[1].self_attn, model.cfg, 80
    x = np.random.RandomState(1).normal(size=(2, t, 64)).astype(np.float32)
    segments = np.ones((2, t), np.int32)
    segments[1, 40:] = 2  # a packed row: two documents, each seeing the prefix
    positions = np.asarray(L.default_positions(jnp.asarray(segments)))
    mask = np.asarray(L.attention_mask(jnp.asarray(segments), causal=True))
    inv_freq = L.rope_inverse_frequencies(cfg.head_dim, dict(cfg.rope))
    ours = np.asarray(attn(jnp.asarray(x), jnp.asarray(mask), jnp.asarray(positions), inv_freq, None))

    w = {name: np.asarray(getattr(attn, name).kernel[...]) for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
    theta = dict(cfg.rope)["rope_theta"]
    q = _rope((x @ w["q_proj"]).reshape(2, t, 4, 16), positions, theta)
    k = _rope((x @ w["k_proj"]).reshape(2, t, 2, 16), positions, theta)
    v = (x @ w["v_proj"]).reshape(2, t, 2, 16)
    pk, pv = (np.broadcast_to(np.asarray(a), (2, P, 2, 16)) for a in attn.prefix())  # not rotated
    full = np.concatenate([np.ones((2, t, P), bool), mask], -1)
    out = _softmax_attention(q, np.concatenate([pk, k], 1), np.concatenate([pv, v], 1), full, 16 ** -0.5)
    np.testing.assert_allclose(ours, out.reshape(2, t, 64) @ w["o_proj"], atol=2e-5)


def test_one_prefixed_bert_attention_layer_is_attention_over_concatenated_keys(tiny_bert):
    model, _ = _tuned(tiny_bert, "sequence_classification", "prefix_tuning")
    attn = model.bert.encoder.layer[0].attention.self
    x = np.random.RandomState(2).normal(size=(2, 10, 64)).astype(np.float32)
    _, padding = _ids()
    mask = np.asarray(L.attention_mask(jnp.asarray(padding), causal=False))
    ours = np.asarray(attn(jnp.asarray(x), jnp.asarray(mask), None))
    dense = {n: (np.asarray(getattr(attn, n).kernel[...]), np.asarray(getattr(attn, n).bias[...]))
             for n in ("query", "key", "value")}
    q, k, v = ((x @ w + b).reshape(2, 10, 4, 16) for w, b in dense.values())
    pk, pv = (np.broadcast_to(np.asarray(a), (2, P, 4, 16)) for a in attn.prefix())
    full = np.concatenate([np.ones((2, 10, P), bool), mask], -1)
    out = _softmax_attention(q, np.concatenate([pk, k], 1), np.concatenate([pv, v], 1), full, 16 ** -0.5)
    np.testing.assert_allclose(ours, out.reshape(2, 10, 64), atol=2e-5)  # padding rows: the prefix only


def test_prompt_tuned_bert_classifier_is_the_base_layers_on_a_prompt_prepended_by_hand(tiny_bert):
    model, _ = _tuned(tiny_bert, "sequence_classification", "prompt_tuning", init="random")
    ids, mask = _ids()
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert ours.shape == (2, 3)
    bert = model.bert
    x = bert.embeddings(jnp.asarray(ids), jnp.zeros_like(ids), bert.positions(ids, jnp.asarray(mask)), None)
    x = jnp.concatenate([jnp.broadcast_to(bert.prompt(), (2, P, 64)), x], 1)
    keys = np.concatenate([np.ones((2, P), bool), mask.astype(bool)], 1)  # prompt and real tokens, not padding
    by_hand = np.broadcast_to(keys[:, None, :], (2, P + 10, P + 10))  # one document: all see all
    h = bert.encoder(x, jnp.asarray(by_hand), None)[:, P:]  # drop the prompt: [CLS] is first again
    states = np.asarray(bert(jnp.asarray(ids), jnp.asarray(mask)))
    assert states.shape == (2, 10, 64)
    real = mask.astype(bool)  # padding rows attend to nothing in our mask (their states are never read)
    np.testing.assert_allclose(states[real], np.asarray(h)[real], atol=2e-5)
    np.testing.assert_allclose(ours, np.asarray(model.classifier(bert.pooler(h))), atol=2e-6)
    base = from_pretrained(tiny_bert, task="sequence_classification").bert(jnp.asarray(ids), jnp.asarray(mask))
    assert np.abs(states - np.asarray(base))[real].max() > 1e-2  # the prompt does change the encoding


def test_prompt_mask_packed_rows_windows_and_encoders():
    """A row [prompt, prompt, doc 1, doc 1, doc 2, doc 2, padding]: every real token sees the whole prompt
    (whatever its document or window), the prompt sees itself causally in a decoder, and the real tokens
    too in an encoder; padding sees nothing."""
    segments = jnp.asarray([[-1, -1, 1, 1, 2, 2, 0]])  # as prepend_prompt writes them
    decoder = np.asarray(L.attention_mask(segments, causal=True, window=1, virtual=2))[0].astype(int)
    np.testing.assert_array_equal(decoder, [[1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0],
                                            [1, 1, 0, 1, 0, 0, 0], [1, 1, 0, 0, 1, 0, 0], [1, 1, 0, 0, 0, 1, 0],
                                            [0, 0, 0, 0, 0, 0, 0]])
    encoder = np.asarray(L.attention_mask(segments, causal=False, virtual=2))[0].astype(int)
    np.testing.assert_array_equal(encoder, [[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0],
                                            [1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 1, 1, 0], [1, 1, 0, 0, 1, 1, 0],
                                            [0, 0, 0, 0, 0, 0, 0]])


def test_bad_knobs_and_merge_are_config_errors(tiny_llama):
    with pytest.raises(ConfigError, match="method.init='zeros': expected one of vocab, random"):
        build({"name": "prompt_tuning", "init": "zeros"})
    with pytest.raises(ConfigError, match="num_virtual_tokens=0"):
        build({"name": "prefix_tuning", "num_virtual_tokens": 0})
    model, method = _tuned(tiny_llama, "causal_lm", "prefix_tuning")
    with pytest.raises(ConfigError, match="cannot be merged"):
        method.merge(model)


# ---- training -------------------------------------------------------------------------------------------

def _cfg(shape, steps, lr):
    cfg = defaults()
    cfg.mesh.shape = shape
    cfg.optimizer.update(learning_rate=lr, warmup_steps=0, schedule="constant", weight_decay=0.0)
    cfg.train.update(batch_size=8, steps=steps, log_every=1)
    return cfg


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]


def _train(model, method, objective, data, shape, workdir, steps, lr):
    """Trains on ``shape``; asserts every frozen parameter is bit-identical and every trainable one moved."""
    trainable = method.trainable(model)
    before = {p: np.asarray(v.get_value()).copy() for p, v in param_paths(nnx.state(model, nnx.Param))}
    trains = {p for p, _ in param_paths(nnx.state(model, trainable))}
    mesh = make_mesh(shape)
    Trainer(model, objective, _cfg(shape, steps, lr), str(workdir), method=method, mesh=mesh).fit(
        array_batches(data, 8, seed=0))
    after = dict(param_paths(nnx.state(model, nnx.Param)))
    assert set(after) == set(before) and trains
    for path, old in before.items():
        new = np.asarray(after[path].get_value())
        if path in trains:
            assert not np.array_equal(new, old), f"{path} did not move"
        else:
            np.testing.assert_array_equal(new, old, err_msg=f"frozen {path} changed")
    return _losses(workdir)


@pytest.mark.parametrize("shape, name, knobs", [
    ((1, 8, 1), "prompt_tuning", {}),
    ((2, 1, 4), "prompt_tuning", {}),
    ((1, 8, 1), "prefix_tuning", {"projection": True, "projection_dim": 32}),
    ((2, 1, 4), "prefix_tuning", {}),
], ids=["fsdp-prompt", "tensor-prompt", "fsdp-prefix-projection", "tensor-prefix"])
def test_llama_loss_falls_through_its_virtual_tokens_alone(tiny_llama, tmp_path, shape, name, knobs):
    """One sequence in every row, the memorisable case. A random-init model (weights of std 0.02 behind
    RMSNorms) barely answers to any input, so its loss cannot fall far from ln(128) = 4.85: the test asks
    for a steady fall (prompt tuning ~0.1 in 12 steps, prefix tuning ~0.3), not memorisation."""
    model, method = _tuned(tiny_llama, "causal_lm", name, **knobs)
    ids = np.tile(np.random.RandomState(3).randint(0, 128, (1, 16)).astype(np.int32), (8, 1))
    data = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    losses = _train(model, method, CausalLM(), data, shape, tmp_path, steps=12, lr=5e-2)
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.05 and losses[-1] <= min(losses) + 1e-3, losses


@pytest.mark.parametrize("name, knobs", [("prompt_tuning", {}), ("prefix_tuning", {"projection": True,
                                                                                   "projection_dim": 32})])
def test_bert_classifier_trains_its_virtual_tokens_and_head_only(tiny_bert, tmp_path, name, knobs):
    model, method = _tuned(tiny_bert, "sequence_classification", name, **knobs)
    ids, _ = _ids(b=8, t=12, seed=4)
    mask = np.ones_like(ids)
    mask[::2, -4:] = 0
    data = {"input_ids": ids, "attention_mask": mask, "labels": np.arange(8, dtype=np.int32) % 3}
    losses = _train(model, method, SequenceClassification(num_labels=3), data, (1, 8, 1), tmp_path, steps=6,
                    lr=1e-2)
    assert losses[-1] < losses[0], losses
