"""Adaptation methods on a tiny decoder (Llama, GQA) and a tiny encoder (BERT sequence classifier): trainable
counts equal the closed form, frozen parameters stay bit-identical while trainable ones move, identity at
initialisation, merges equal the unmerged model, PEFT export loads in ``peft``, the regularisers and
schedules equal a hand computation, and every method trains on an 8-device mesh with FSDP and tensor
parallelism."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import transformers
from conftest import TINY_BERT, TINY_GPT2, TINY_LLAMA
from flax import nnx
from jax.sharding import PartitionSpec as P

from adapt import methods
from adapt.core.errors import CheckpointError, ConfigError
from adapt.core.sharding import make_mesh
from adapt.data.batches import array_batches
from adapt.models import from_pretrained, model_info, save_pretrained
from adapt.training import CausalLM, SequenceClassification, Trainer, defaults, optim
from adapt.training.state import create_state


def _llama_counts(r=8, m=64):
    c = TINY_LLAMA
    v, d, f, n_layers = c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    h = d // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * h, c["num_key_value_heads"] * h
    layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d
    full = v * d + n_layers * layer + d + d * v
    adapter = 2 * d * m + m + d
    norms = 2 * n_layers * d + d
    return {"full": full, "lora": n_layers * r * ((d + q) + (d + kv)),
            "dora": n_layers * (r * (2 * d + q + kv) + q + kv),
            "ia3": n_layers * (2 * kv + f), "houlsby": 2 * n_layers * adapter + norms, "pfeiffer": n_layers * adapter,
            "freeze": full - v * d, "llrd": full, "l2sp": full, "mixout": full, "gradual_unfreezing": full,
            "qlora": n_layers * r * ((d + q) + 2 * (d + kv) + (q + d) + 2 * (d + f) + (f + d)),
            **dict.fromkeys(("lora_plus", "pissa", "olora"), n_layers * r * ((d + q) + (d + kv))),
            "vera": n_layers * (2 * r + q + kv), "loha": n_layers * 2 * r * ((d + q) + (d + kv))}


def _bert_counts(r=8, m=64):
    c = TINY_BERT
    v, d, f, n_layers, labels = c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], 3
    head = d * d + d + d * labels + labels  # pooler + classifier (fresh: they train under every method)
    layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d
    full = (v + c["max_position_embeddings"] + 2) * d + 2 * d + n_layers * layer + head
    adapter = 2 * d * m + m + d
    return {"full": full, "lora": n_layers * 2 * r * 2 * d + head, "dora": n_layers * 2 * (r * 2 * d + d) + head,
            # IA3 with PEFT's BERT targets: key, value (outputs) and both "output.dense" layers (inputs)
            "ia3": n_layers * (d + d + d + f) + head,
            "houlsby": n_layers * 2 * adapter + 2 * d + n_layers * 4 * d + head,
            "pfeiffer": n_layers * adapter + head, "bitfit": n_layers * (4 * d + f + d + 2 * d) + d + head,
            "freeze": full - v * d, "llrd": full, "l2sp": full, "mixout": full, "gradual_unfreezing": full,
            "qlora": n_layers * r * (4 * 2 * d + 2 * (d + f)) + head,  # query, key, value, dense; intermediate, output
            **dict.fromkeys(("lora_plus", "pissa", "olora"), n_layers * 2 * r * 2 * d + head),
            "vera": n_layers * 2 * (r + d) + head, "loha": n_layers * 2 * 2 * r * 2 * d + head}


KNOBS = {"freeze": {"patterns": ("word_embeddings|embed_tokens",)}, "gradual_unfreezing": {"every": 2},
         "vera": {"rank": 8}}
NEWER = ["lora_plus", "pissa", "olora", "vera", "loha"]  # their training runs in the slow tier (CI's 20 minutes);
# their own files test them against PEFT in the fast one
DECODER_METHODS = ["full", "lora", "dora", "qlora", "ia3", "houlsby", "pfeiffer", "freeze", "llrd", "l2sp",
                   "mixout", "gradual_unfreezing"] + NEWER
ENCODER_METHODS = DECODER_METHODS + ["bitfit"]


def _trained(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in NEWER else n for n in names]
IDENTITY_AT_INIT = ["lora", "dora", "ia3", "houlsby", "pfeiffer"]


def _build(name, folder, task, mesh=None):
    method = methods.build({"name": name, **KNOBS.get(name, {})})
    model = method.apply(from_pretrained(folder, task=task, mesh=mesh), nnx.Rngs(0))
    return model, method


def _count(model, method):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, method.trainable(model))))


@pytest.mark.parametrize("name", DECODER_METHODS)
def test_trainable_count_decoder(name, tiny_llama):
    assert _count(*_build(name, tiny_llama, "causal_lm")) == _llama_counts()[name]


def test_lora_trains_mixtral_on_fsdp_and_tensor_mesh(tiny_mixtral, tmp_path):
    """A mixture of experts (its router's balance loss in the objective): LoRA on the attention moves only its
    adapters (the router and the experts stay), and the loss falls."""
    _train("lora", tiny_mixtral, "causal_lm", (1, 2, 4), tmp_path)


def test_lora_trains_deberta_on_fsdp_and_tensor_mesh(tiny_deberta, tmp_path):
    """DeBERTa-v3 (disentangled attention: LoRA on query_proj also projects the relative embeddings, as in PEFT): the
    adapters and the fresh pooler and classifier move, nothing else, and the loss falls."""
    _train("lora", tiny_deberta, "sequence_classification", (1, 2, 4), tmp_path)


@pytest.mark.parametrize("name", ENCODER_METHODS)
def test_trainable_count_encoder(name, tiny_bert):
    assert _count(*_build(name, tiny_bert, "sequence_classification")) == _bert_counts()[name]


def _ids(vocab, shape=(2, 12)):
    return jnp.asarray(np.random.default_rng(0).integers(0, vocab, shape))


@pytest.mark.parametrize("name", IDENTITY_AT_INIT)
def test_identity_at_initialisation(name, tiny_llama, tiny_bert):
    for folder, task, vocab in [(tiny_llama, "causal_lm", 128), (tiny_bert, "sequence_classification", 64)]:
        ids = _ids(vocab)
        base = from_pretrained(folder, task=task)(ids)
        np.testing.assert_array_equal(_build(name, folder, task)[0](ids), base)


def _randomise_adapters(model, seed=1):
    """Give every added parameter a non-trivial value (LoRA's B starts at zero, IA3 at ones)."""
    state = nnx.state(model, methods.Adapter)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(jax.tree.leaves(state))))
    nnx.update(model, jax.tree.map(lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape), state))


@pytest.mark.parametrize("name", ["lora", "dora", "ia3"])
def test_merged_equals_unmerged(name, tiny_llama, tiny_bert):
    for folder, task, vocab in [(tiny_llama, "causal_lm", 128), (tiny_bert, "sequence_classification", 64)]:
        model, method = _build(name, folder, task)
        _randomise_adapters(model)
        ids = _ids(vocab)
        unmerged = model(ids)
        merged = method.merge(model)
        assert not jax.tree.leaves(nnx.state(merged, methods.Adapter))
        np.testing.assert_allclose(merged(ids), unmerged, atol=1e-5)
        change = np.abs(np.asarray(unmerged) - np.asarray(from_pretrained(folder, task=task)(ids))).max()
        assert change > 1e-4  # the adapters matter 10x beyond the tolerance


def test_merged_lora_exports_as_a_plain_hf_checkpoint(tiny_llama, tmp_path):
    import torch

    model, method = _build("lora", tiny_llama, "causal_lm")
    _randomise_adapters(model)
    with pytest.raises(CheckpointError, match="merge them into the base weights first"):
        save_pretrained(model, str(tmp_path / "unmerged"))
    ids = _ids(128)
    ours = np.asarray(model(ids))
    save_pretrained(method.merge(model), str(tmp_path / "merged"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    with torch.no_grad():
        theirs = hf(torch.as_tensor(np.asarray(ids))).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


@pytest.mark.parametrize("name,folder,task,vocab", [
    ("lora", "tiny_llama", "causal_lm", 128), ("dora", "tiny_llama", "causal_lm", 128),
    ("ia3", "tiny_llama", "causal_lm", 128),
    ("lora", "tiny_gemma", "causal_lm", 128), ("lora", "tiny_bert", "sequence_classification", 64),
    ("lora", "tiny_modernbert", "sequence_classification", 64),
    ("lora", "tiny_deberta", "sequence_classification", 64), ("lora", "tiny_mixtral", "causal_lm", 128)])
def test_peft_export_loads_in_peft_with_the_same_logits(name, folder, task, vocab, request, tmp_path):
    import peft
    import torch

    from adapt.methods.peft_io import save_peft

    folder = request.getfixturevalue(folder)
    model, method = _build(name, folder, task)
    _randomise_adapters(model)
    head = nnx.state(model, nnx.All(method.trainable(model), nnx.Not(methods.Adapter)))
    nnx.update(model, jax.tree.map(lambda x: x + 0.05, head))  # a trained head must travel in modules_to_save
    ids = _ids(vocab)
    ours = np.asarray(model(ids))
    save_peft(model, method, str(tmp_path / "adapter"), base_model=folder)
    auto = (transformers.AutoModelForCausalLM if task == "causal_lm"
            else transformers.AutoModelForSequenceClassification)
    hf = peft.PeftModel.from_pretrained(auto.from_pretrained(folder), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch.as_tensor(np.asarray(ids))).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_l2sp_penalty_and_gradient_equal_a_hand_computation(tiny_bert):
    model = from_pretrained(tiny_bert, task="sequence_classification")
    method = methods.build({"name": "l2sp", "alpha": 0.3, "beta": 0.7})
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    anchors = method.anchors(model, params)
    moved = jax.tree.map(lambda x: x + 0.01 * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) / x.size, params)
    value, grads = jax.value_and_grad(method.penalty)(moved, anchors)
    start = dict(methods.base.leaf_paths(params))
    expected, expected_grads = 0.0, {}
    for path, w in methods.base.leaf_paths(moved):  # the fresh head (pooler, classifier) decays toward 0
        w, w0 = np.asarray(w, np.float64), np.asarray(start[path], np.float64)
        if path[0] == "classifier" or path[:2] == ("bert", "pooler"):
            expected += 0.35 * np.sum(w ** 2)
            expected_grads[path] = 0.7 * w
        else:
            expected += 0.15 * np.sum((w - w0) ** 2)
            expected_grads[path] = 0.3 * (w - w0)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    for path, g in methods.base.leaf_paths(grads):
        np.testing.assert_allclose(np.asarray(g), expected_grads[path], rtol=1e-4, atol=1e-9)
    assert not method.decays(("bert", "pooler", "dense", "kernel"), "weight")


def _settings(name, folder, task, **knobs):
    method = methods.build({"name": name, **knobs})
    model = method.apply(from_pretrained(folder, task=task), nnx.Rngs(0))
    state = nnx.state(model, method.trainable(model))
    settings = optim.method_settings(method, model, state)
    return dict(methods.base.leaf_paths(settings["scale"])), settings, state


def test_layerwise_lr_decay_gives_each_layer_the_formula_rate(tiny_llama):
    scale, settings, state = _settings("llrd", tiny_llama, "causal_lm", decay=0.5)
    top = TINY_LLAMA["num_hidden_layers"] + 1  # 3: embeddings 0, layers 1..2, final norm and head 3
    assert scale[("model", "embed_tokens", "embedding")] == 0.5 ** 3
    assert scale[("model", "layers", 0, "self_attn", "q_proj", "kernel")] == 0.5 ** 2
    assert scale[("model", "layers", 1, "mlp", "down_proj", "kernel")] == 0.5 ** 1
    assert scale[("model", "norm", "scale")] == scale[("lm_head", "kernel")] == 1.0
    # the optimizer applies it: plain SGD moves each parameter by lr * scale * gradient
    cfg = defaults().optimizer
    cfg.update(name="sgd", learning_rate=0.1, weight_decay=0.0, clip_norm=0.0, schedule="constant")
    params = nnx.to_pure_dict(state)
    tx, _ = optim.make_optimizer(cfg, 10, optim.param_kinds(state), settings)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    info = model_info(from_pretrained(tiny_llama, task="causal_lm"))
    for path, u in methods.base.leaf_paths(updates):
        depth = info.depth(path)
        np.testing.assert_allclose(np.asarray(u), -0.1 * 0.5 ** (top - depth), rtol=1e-6)


def test_gradual_unfreezing_unfreezes_the_layers_on_schedule(tiny_llama):
    _, settings, state = _settings("gradual_unfreezing", tiny_llama, "causal_lm", every=2)
    cfg = defaults().optimizer
    cfg.update(name="adamw", learning_rate=0.1, schedule="constant")
    params = nnx.to_pure_dict(state)
    tx, _ = optim.make_optimizer(cfg, 10, optim.param_kinds(state), settings)
    opt_state, grads = tx.init(params), jax.tree.map(jnp.ones_like, params)
    groups = {"head": ("lm_head", "kernel"), "layer1": ("model", "layers", 1, "mlp", "up_proj", "kernel"),
              "layer0": ("model", "layers", 0, "mlp", "up_proj", "kernel"),
              "embeddings": ("model", "embed_tokens", "embedding")}
    first_update = {}
    for step in range(8):
        updates, opt_state = tx.update(grads, opt_state, params)
        moved = {k: bool(np.any(np.asarray(dict(methods.base.leaf_paths(updates))[p]) != 0)) for k, p in groups.items()}
        for k, m in moved.items():
            if m:
                first_update.setdefault(k, step)
            else:
                assert k not in first_update, f"{k} stopped updating at step {step}"
    # depth 3 (head) at 0, layer 1 (depth 2) at 2, layer 0 (depth 1) at 4, embeddings (depth 0) at 6
    assert first_update == {"head": 0, "layer1": 2, "layer0": 4, "embeddings": 6}


def test_mixout_swaps_a_fraction_p_and_keeps_the_expectation():
    method = methods.build({"name": "mixout", "p": 0.3})
    w0 = {"layer": {"kernel": jnp.zeros((200, 100)), "bias": jnp.zeros((100,))}}
    w = jax.tree.map(lambda x: x + 1.0, w0)
    anchors = {"start": w0, "index": {"layer": {"kernel": np.int32(1), "bias": np.int32(0)}}}  # as anchors() gives
    draws = [method.perturb(w, anchors, jax.random.PRNGKey(i))["layer"]["kernel"] for i in range(20)]
    first = np.asarray(draws[0])
    swapped = first == 0.0  # w0 = 0 -> (w0 - p w0) / (1 - p) = 0
    assert abs(swapped.mean() - 0.3) < 0.01
    np.testing.assert_allclose(first[~swapped], 1.0 / 0.7, rtol=1e-6)  # (w - p w0) / (1 - p)
    np.testing.assert_allclose(np.mean(draws), 1.0, atol=0.01)
    assert method.perturb(w, anchors, jax.random.PRNGKey(0))["layer"]["bias"] is w["layer"]["bias"]


def test_config_errors():
    with pytest.raises(ConfigError, match="did you mean lora"):
        methods.build({"name": "lroa"})
    with pytest.raises(ConfigError, match=r"method.rnak: unknown key; did you mean method.rank\? "
                                          r"\(keys of method 'lora': rank, "):
        methods.build({"name": "lora", "rnak": 4})
    assert methods.method_config("lora", rank=4).rank == 4


def test_bitfit_on_decoders(tiny_llama, tiny_gpt2, tmp_path):
    with pytest.raises(ConfigError, match="has no bias parameters"):
        _build("bitfit", tiny_llama, "causal_lm")
    d, n_layers = TINY_GPT2["n_embd"], TINY_GPT2["n_layer"]  # GPT-2: every linear layer and norm has a bias
    per_layer = d + 3 * d + d + d + 4 * d + d  # ln_1, c_attn, attn.c_proj, ln_2, c_fc, mlp.c_proj
    assert _count(*_build("bitfit", tiny_gpt2, "causal_lm")) == n_layers * per_layer + d  # + ln_f
    _train("bitfit", tiny_gpt2, "causal_lm", (1, 2, 4), tmp_path)


def test_lora_parameters_shard_by_the_rules(tiny_llama):
    mesh = make_mesh((1, 2, 4))
    model, method = _build("lora", tiny_llama, "causal_lm", mesh=mesh)
    tx = optax.adam(1e-3)
    _, state, _ = create_state(model, tx, mesh=mesh, rules=tuple(defaults().mesh.rules), seed=0, method=method)
    q = state.params["model"]["layers"][0]["self_attn"]["q_proj"]
    assert q["lora_a"].sharding.spec == P("fsdp", None)  # [embed, adapter]
    assert q["lora_b"].sharding.spec == P(None, "tensor")  # [adapter, heads]
    assert state.frozen["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert set(state.params) == {"model"} and "kernel" not in q  # frozen: no gradient, no optimizer state


# a memorisable batch in 8 steps: methods that train every weight need a smaller rate than added parameters
LEARNING_RATES = {
    "causal_lm": {"every": 3e-3, "added": 3e-2, "ia3": 3e-1, "bitfit": 3e-1, "qlora": 3e-2, "vera": 3e-1},
    "sequence_classification": {"every": 1e-2, "added": 3e-2, "ia3": 3e-1, "bitfit": 3e-2, "qlora": 1e-2,
                                "vera": 3e-1},  # (IA)^3's and VeRA's scaling vectors take large steps
}


def _train(name, folder, task, shape, tmp_path, steps=8):
    mesh = make_mesh(shape)
    model, method = _build(name, folder, task, mesh=mesh)
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    trainable = {p for p, _ in methods.base.leaf_paths(nnx.to_pure_dict(nnx.state(model, method.trainable(model))))}
    rng = np.random.RandomState(0)
    if task == "causal_lm":
        data, objective = {"input_ids": rng.randint(0, 128, (8, 12)).astype(np.int32)}, CausalLM()
    else:
        data = {"input_ids": rng.randint(0, 64, (8, 12)).astype(np.int32),
                "labels": np.arange(8, dtype=np.int32) % 3}
        objective = SequenceClassification(num_labels=3)
    cfg = defaults()
    cfg.mesh.shape = shape
    kind = ("every" if methods.METHODS[name].trains_every_weight
            else name if name in ("ia3", "bitfit", "qlora", "vera") else "added")
    lr = LEARNING_RATES[task][kind]
    cfg.optimizer.update(learning_rate=lr,
                         schedule="constant", weight_decay=0.0 if name == "l2sp" else 0.01)
    cfg.train.update(batch_size=8, steps=steps, log_every=1)
    trainer = Trainer(model, objective, cfg, str(tmp_path / f"{name}-{shape}"), method=method, mesh=mesh)
    trainer.fit(array_batches(data, 8, seed=0))
    with open(tmp_path / f"{name}-{shape}" / "metrics.jsonl") as f:
        losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
    after = dict(methods.base.leaf_paths(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    for path, old in methods.base.leaf_paths(before):
        if path in trainable:
            if name == "gradual_unfreezing" and path[:2] in (("model", "embed_tokens"), ("bert", "embeddings")):
                continue  # depth 0 unfreezes at step (L + 1) * every = 6 of 8: it moved, but little
            assert np.any(np.asarray(after[path]) != old), f"{name}: trainable {path} did not move"
        else:
            np.testing.assert_array_equal(np.asarray(after[path]), old, err_msg=f"{name}: frozen {path} moved")
    assert losses[-1] < 0.98 * losses[0] and np.mean(losses[-3:]) < np.mean(losses[:3]), (name, losses)


@pytest.mark.parametrize("name", _trained(DECODER_METHODS))
def test_every_method_trains_decoder_on_fsdp_and_tensor_mesh(name, tiny_llama, tmp_path):
    _train(name, tiny_llama, "causal_lm", (1, 2, 4), tmp_path)


def test_lora_trains_gemma_on_fsdp_and_tensor_mesh(tiny_gemma, tmp_path):
    """A family beside Llama's (Gemma 3: its own norms, q/k norms, local and global layers): LoRA moves only its
    adapters and the loss falls."""
    _train("lora", tiny_gemma, "causal_lm", (1, 2, 4), tmp_path)


def test_lora_trains_modernbert_on_fsdp_and_tensor_mesh(tiny_modernbert, tmp_path):
    """ModernBERT (a fused Wqkv, local and global layers, a pooled classifier behind its own head): LoRA on Wqkv and
    the fresh classifier move, nothing else, and the loss falls."""
    _train("lora", tiny_modernbert, "sequence_classification", (1, 2, 4), tmp_path)


@pytest.mark.parametrize("name", _trained(ENCODER_METHODS))
def test_every_method_trains_encoder_on_fsdp_and_tensor_mesh(name, tiny_bert, tmp_path):
    _train(name, tiny_bert, "sequence_classification", (1, 2, 4), tmp_path)
