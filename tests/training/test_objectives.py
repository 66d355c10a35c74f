"""Each objective's statistics against a hand computation, span F1 against hand-counted spans, and the
optimizer's schedules and weight-decay mask."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from adapt.core.errors import ConfigError
from adapt.data.formats import spans
from adapt.training import CausalLM, MaskedLM, SequenceClassification, TokenClassification, defaults, optim
from adapt.training.objectives import IGNORE, argmax


def _nll(logits, target):
    logits = np.asarray(logits, np.float64)
    return np.log(np.exp(logits).sum()) - logits[target]


def test_causal_lm_respects_documents_padding_and_loss_mask():
    rng = np.random.RandomState(0)
    logits = rng.randn(1, 6, 5).astype(np.float32)
    batch = {"input_ids": jnp.array([[1, 2, 3, 4, 0, 0]]),
             "attention_mask": jnp.array([[1, 1, 2, 2, 2, 0]]),  # documents 1 and 2, then padding
             "loss_mask": jnp.array([[1, 1, 1, 0, 1, 1]])}  # token 3 (a prompt token) is not a target
    sums, _ = CausalLM().loss(jnp.asarray(logits), batch)
    # targets: position 0 -> token 2 (same doc); 1 -> 3 crosses documents; 2 -> 4 masked; 3 -> 0 counts
    # (doc 2, unmasked); 4 -> pad: no. So targets (0, 2) and (3, 0).
    want = _nll(logits[0, 0], 2) + _nll(logits[0, 3], 0)
    assert float(sums["weight"]) == 2
    np.testing.assert_allclose(float(sums["loss_sum"]), want, rtol=1e-6)
    correct = int(logits[0, 0].argmax() == 2) + int(logits[0, 3].argmax() == 0)
    assert float(sums["correct"]) == correct
    metrics = CausalLM().summarize(jax.device_get(sums))
    np.testing.assert_allclose(metrics["perplexity"], np.exp(want / 2), rtol=1e-6)


def test_argmax_is_jnp_argmax_ties_included():
    rng = np.random.RandomState(0)
    x = rng.randint(-3, 3, (4, 7, 50)).astype(np.float32)  # small integers: many tied maxima per row
    x[0, 0] = 1.0  # a row that is all one value: index 0
    np.testing.assert_array_equal(np.asarray(argmax(jnp.asarray(x))), np.asarray(jnp.argmax(jnp.asarray(x), -1)))


def test_sequence_classification_loss_and_f1():
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [5.0, 0.0, 0.0]])
    labels = jnp.array([0, 1, 0, 2, IGNORE])  # the last row is padding
    obj = SequenceClassification(num_labels=3)
    sums, _ = obj.loss(logits, {"labels": labels})
    want = sum(_nll(np.asarray(logits[i]), int(labels[i])) for i in range(4))
    np.testing.assert_allclose(float(sums["loss_sum"]), want, rtol=1e-6)
    m = obj.summarize(jax.device_get(sums))
    assert m["accuracy"] == 0.75 and m["micro_f1"] == 0.75
    # per class F1: class 0: tp 1, gold 2, pred 1 -> 2/3; class 1: tp 1, gold 1, pred 2 -> 2/3; class 2: 1.
    np.testing.assert_allclose(m["macro_f1"], (2 / 3 + 2 / 3 + 1) / 3)
    m = SequenceClassification(num_labels=3, f1_ignore=(2,)).summarize(jax.device_get(sums))
    np.testing.assert_allclose([m["micro_f1"], m["macro_f1"]], [2 * 2 / (3 + 3), 2 / 3])


def test_token_classification_tokens_and_spans():
    names = ("O", "B-Chem", "I-Chem", "B-Dis", "I-Dis")
    gold = np.array([[1, 2, 0, 3, 4, IGNORE], [0, 1, IGNORE, 0, 3, 0]])
    pred = np.array([[1, 2, 0, 3, 0, 0], [0, 1, 2, 0, 4, 0]])
    logits = jax.nn.one_hot(pred, 5) * 3.0
    obj = TokenClassification(label_names=names)
    sums, predictions = obj.loss(logits, {"labels": jnp.asarray(gold)})
    assert float(sums["weight"]) == 10 and float(sums["correct"]) == 8
    m = obj.summarize(jax.device_get(sums), [(np.asarray(predictions), gold)])
    # gold spans: Chem(0-1), Dis(3-4) | Chem(1), Dis(3) (ignored positions removed). predicted: Chem(0-1),
    # Dis(3) | Chem(1), Dis(3) (an I- after O starts a span, conlleval-style): 3 of 4 predicted are right.
    assert (m["span_precision"], m["span_recall"]) == (0.75, 0.75)
    assert spans(["B-X", "I-X", "I-Y", "O", "I-X"]) == {(0, 1, "X"), (2, 2, "Y"), (4, 4, "X")}
    assert spans(["S-X", "B-Y", "E-Y", "S-Y"]) == {(0, 0, "X"), (1, 2, "Y"), (3, 3, "Y")}


def test_masked_lm_masks_15_percent_80_10_10_and_never_special_tokens():
    ids = jnp.tile(jnp.arange(5, 105), (400, 1)).astype(jnp.int32)  # 40,000 tokens, ids 5..104
    ids = ids.at[:, 0].set(1)  # [CLS]-like special token
    mask = jnp.ones_like(ids).at[:, -10:].set(0)  # padding
    obj = MaskedLM(mask_token_id=4, vocab_size=105, special_ids=(1,))
    out = obj.prepare({"input_ids": ids, "attention_mask": mask}, jax.random.PRNGKey(0))
    labels, new = np.asarray(out["labels"]), np.asarray(out["input_ids"])
    selected = labels != IGNORE
    eligible = 400 * 89
    assert abs(selected.sum() / eligible - 0.15) < 0.01
    assert not selected[:, 0].any() and not selected[:, -10:].any()
    np.testing.assert_array_equal(labels[selected], np.asarray(ids)[selected])
    frac_mask = (new[selected] == 4).mean()
    frac_same = (new[selected] == np.asarray(ids)[selected]).mean()
    assert abs(frac_mask - 0.8) < 0.02 and abs(frac_same - 0.1) < 0.02  # (random ids rarely hit the same one)
    np.testing.assert_array_equal(new[~selected], np.asarray(ids)[~selected])
    again = obj.prepare({"input_ids": ids, "attention_mask": mask}, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(again["labels"]), labels)  # same key, same masking
    logits = jax.nn.one_hot(jnp.asarray(labels).clip(0), 105) * 10.0
    sums, _ = obj.loss(logits, out)
    assert float(sums["weight"]) == selected.sum() and float(sums["correct"]) == selected.sum()


def _opt(**kw):
    cfg = defaults().optimizer
    cfg.unlock()
    cfg.update(kw)
    return cfg


def test_schedules_warmup_and_decay():
    s = optim.make_schedule(_opt(learning_rate=1.0, schedule="linear", warmup_steps=10), 110)
    np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)], [0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
    s = optim.make_schedule(_opt(learning_rate=1.0, schedule="cosine", warmup_ratio=0.1, end_lr_ratio=0.1), 100)
    np.testing.assert_allclose([s(10), s(55), s(100)], [1.0, 0.55, 0.1], atol=1e-6)
    s = optim.make_schedule(_opt(learning_rate=0.5, schedule="constant"), 100)
    assert float(s(0)) == float(s(99)) == 0.5
    with pytest.raises(ConfigError, match="warmup_steps and optimizer.warmup_ratio"):
        optim.make_schedule(_opt(warmup_steps=3, warmup_ratio=0.1), 100)
    with pytest.raises(ConfigError, match="optimizer.schedule='cosin'"):
        optim.make_schedule(_opt(schedule="cosin"), 100)


@pytest.mark.parametrize("name", ["adamw", "adafactor", "sgd"])
def test_weight_decay_skips_excluded_kinds(name):
    params = {"w": jnp.ones((4, 4)), "b": jnp.ones(4), "scale": jnp.ones(4), "emb": jnp.ones((8, 4))}
    kinds = {"w": "weight", "b": "bias", "scale": "norm", "emb": "embedding"}
    cfg = _opt(name=name, learning_rate=0.1, weight_decay=0.5, decay_exclude=("bias", "norm", "embedding"),
               schedule="constant", clip_norm=0.0)
    tx, _ = optim.make_optimizer(cfg, 10, kinds)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(updates["w"]).max()) > 0  # decayed with zero gradient
    for k in ("b", "scale", "emb"):
        assert float(jnp.abs(updates[k]).max()) == 0, k
    with pytest.raises(ConfigError, match="decay_exclude"):
        optim.make_optimizer(_opt(decay_exclude=("biases",)), 10, kinds)
    with pytest.raises(ConfigError, match="optimizer.name='adam'"):
        optim.make_optimizer(_opt(name="adam"), 10, kinds)
    assert isinstance(cfg, ml_collections.ConfigDict)


def test_adafactor_is_optax_s_and_clips_a_stacked_parameter_layer_by_layer():
    """Adafactor (no parameter scaling) equals ``optax.adafactor``, and on a parameter of stacked layers
    (``model.scan_layers``, marked in the settings) each layer's slice moves as that layer would alone, though the
    layers' gradients differ 100x in scale (optax would clip the whole stack's RMS at once)."""
    import optax

    cfg = _opt(name="adafactor", learning_rate=0.1, weight_decay=0.1, schedule="constant", clip_norm=0.0,
               decay_exclude=())
    rng = np.random.RandomState(0)
    params = {"w": jnp.asarray(rng.randn(3, 160, 130), jnp.float32), "b": jnp.ones(5)}  # w factored: [L, 160, 130]
    settings = {"stacked": {"w": True, "b": False}}
    tx, _ = optim.make_optimizer(cfg, 10, {"w": "weight", "b": "bias"}, settings)
    alone = [optax.adafactor(0.1, weight_decay_rate=0.1, multiply_by_parameter_scale=False) for _ in range(4)]
    state, states = tx.init(params), [a.init(p) for a, p in zip(alone, [params["w"][i] for i in range(3)] +
                                                                  [params["b"]])]
    for step in range(4):
        grads = {"w": jnp.asarray(rng.randn(3, 160, 130) * np.array([0.01, 1.0, 1.0])[:, None, None] * (step + 1)
                                  ** 3, jnp.float32), "b": jnp.asarray(rng.randn(5), jnp.float32)}
        updates, state = tx.update(grads, state, params)
        for i, g in enumerate([grads["w"][i] for i in range(3)] + [grads["b"]]):
            p = params["w"][i] if i < 3 else params["b"]
            want, states[i] = alone[i].update(g, states[i], p)
            np.testing.assert_allclose(updates["w"][i] if i < 3 else updates["b"], want, rtol=1e-5, atol=1e-7)
        params = optax.apply_updates(params, updates)
    whole = optax.adafactor(0.1, weight_decay_rate=0.1, multiply_by_parameter_scale=False)  # the stack at once
    u, _ = whole.update(grads["w"], whole.init(params["w"]), params["w"])
    ours, _ = optim.make_optimizer(cfg, 10, {"w": "weight", "b": "bias"}, {"stacked": {"w": False, "b": False}})
    np.testing.assert_allclose(ours.update(grads, ours.init(params), params)[0]["w"], u, rtol=1e-6)  # unmarked
