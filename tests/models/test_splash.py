"""``train.attention=splash``: TPU's splash kernel (``adapt/models/splash.py``), run here in Pallas' interpreter, trains
to our attention's numbers; where it does not apply, ours runs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adapt.core.sharding import make_mesh
from adapt.data.batches import array_batches
from adapt.models import from_pretrained, layers, splash
from adapt.training import CausalLM, MaskedLM, Trainer, defaults
from adapt.training.state import merge_model


def _run(checkpoint, objective, attention, folder, task=None, remat="none"):
    """Two AdamW steps on a 2 x 2 x 2 mesh (batch over data x fsdp, heads over tensor) of 128-token rows: two
    documents and padding in each."""
    rng = np.random.RandomState(0)
    data = {"input_ids": rng.randint(5, 99, (8, 128)).astype(np.int32),
            "attention_mask": np.repeat([[1] * 50 + [2] * 60 + [0] * 18], 8, 0).astype(np.int32)}
    cfg = defaults()
    cfg.mesh.shape = (2, 2, 2)
    cfg.optimizer.update(learning_rate=1e-3, warmup_steps=1)
    cfg.train.update(batch_size=4, steps=2, log_every=1, attention=attention, remat=remat)
    mesh = make_mesh((2, 2, 2))
    trainer = Trainer(from_pretrained(checkpoint, task, mesh=mesh), objective, cfg, folder, mesh=mesh)
    state = trainer.fit(array_batches(data, 4, seed=0)).state
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        rows = [r for r in map(json.loads, f) if "train/loss" in r]
    params = nnx.to_pure_dict(nnx.state(merge_model(trainer.static, state.params, state.frozen), nnx.Param))
    return rows, jax.tree.map(np.asarray, params), trainer.steps.splash


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "bert"])
def test_splash_trains_as_our_attention(family, request, tmp_path):
    """Llama (causal, grouped-query heads) rematerialised, and BERT (bidirectional) as a masked LM: the same losses and
    the same parameters after two steps (to a hundredth of an AdamW step) as our attention's."""
    checkpoint = request.getfixturevalue(f"tiny_{family}")
    objective, task, remat = CausalLM(), None, "full"
    if family == "bert":
        objective, task, remat = MaskedLM(mask_token_id=4, vocab_size=128, probability=0.3), "masked_lm", "none"
    ours = _run(checkpoint, objective, "xla", str(tmp_path / "xla"), task, remat)
    kernel = _run(checkpoint, objective, "splash", str(tmp_path / "splash"), task, remat)
    assert not ours[2] and kernel[2]
    for a, b in zip(ours[0], kernel[0]):
        np.testing.assert_allclose(b["train/loss"], a["train/loss"], rtol=1e-5)
        assert b["train/accuracy"] == a["train/accuracy"]
    for a, b in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(kernel[1])):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_the_kernel_is_our_attention_where_it_applies():
    """On a 2 x 2 x 2 mesh, grouped-query heads over 128 tokens (two documents and padding): the kernel's outputs on
    real tokens and the gradients of a loss over them are ours. ``auto`` is the kernel on a TPU mesh only; inside the
    kernel's context a mask without a window or virtual tokens is its segment ids, and attention over a length that
    is not a multiple of 128 or without a mesh falls back to ours on the whole mask."""
    assert splash.chosen("auto", "tpu") and not splash.chosen("auto", "cpu") and not splash.chosen("auto", "gpu")
    assert splash.chosen("splash", "cpu") and not splash.chosen("xla", "tpu")
    with pytest.raises(ValueError, match="train.attention='flash'; expected one of auto, xla, splash"):
        splash.chosen("flash", "tpu")
    rng = np.random.RandomState(0)
    segments = np.asarray([[1] * 50 + [2] * 60 + [0] * 18] * 2, np.int32)  # [B, T]
    q, k, v = (rng.randn(2, 128, n, 16).astype(np.float32) for n in (4, 2, 2))
    real = (segments != 0)[:, :, None, None]

    def loss(q, k, v, mask):
        out = layers.dot_product_attention(q, k, v, mask, scale=0.25, dropout_rate=0.0, rngs=None, causal=True)
        return jnp.sum(jnp.where(real, out * np.cos(np.arange(16)), 0.0)), out

    with splash.use(interpret=True):
        mask = layers.attention_mask(segments, causal=True)
        assert isinstance(mask, layers.SegmentMask)
        assert not isinstance(layers.attention_mask(segments, causal=True, window=8), layers.SegmentMask)
        assert not isinstance(layers.attention_mask(segments, causal=True, virtual=2), layers.SegmentMask)
        assert splash.attend(q, k, v, segments, causal=True, scale=1.0) is None  # no mesh
        with jax.set_mesh(make_mesh((2, 2, 2))):
            assert splash.attend(q[:, :64], k[:, :64], v[:, :64], segments[:, :64], causal=True, scale=1.0) is None
            (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, mask)
    (_, want), want_grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, layers.dense(mask))
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, want, 0), atol=1e-5)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g, w, atol=1e-5)
