"""Shared layers: the hashed dropout bits are uniform, independent across positions and keys,
reproducible, and shard like the activations they mask; blocked causal attention equals the plain one, and
the attention's own backward equals autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adapt.core.sharding import make_mesh
from adapt.models.layers import (
    REMAT_POLICIES,
    Rate,
    attention_mask,
    dense_dot_general,
    dot_product_attention,
    dropout,
    dropout_rates,
    hashed_bits,
    keep_mask,
    rate_values,
)


def test_hashed_bits_are_uniform_and_independent():
    shape = (64, 8, 64, 64)  # 2M draws
    u = np.asarray(hashed_bits(jax.random.PRNGKey(0), shape), np.float64) / 2**32
    assert abs(u.mean() - 0.5) < 2e-3 and abs(u.var() - 1 / 12) < 1e-3
    hist = np.histogram(u, bins=16, range=(0, 1))[0] / u.size
    np.testing.assert_allclose(hist, 1 / 16, atol=1e-3)
    flat = u.reshape(-1)
    for lag in (1, 64, 4096):  # neighbours along every axis of the index
        assert abs(np.corrcoef(flat[:-lag], flat[lag:])[0, 1]) < 5e-3, lag
    v = np.asarray(hashed_bits(jax.random.PRNGKey(1), shape), np.float64) / 2**32
    assert abs(np.corrcoef(flat, v.reshape(-1))[0, 1]) < 5e-3  # another key: another stream
    np.testing.assert_array_equal(hashed_bits(jax.random.PRNGKey(0), shape), hashed_bits(jax.random.PRNGKey(0), shape))


def test_dropout_rate_scale_and_sharding():
    x = jnp.ones((16, 128, 256))
    y = np.asarray(dropout(x, 0.1, nnx.Rngs(dropout=0)))
    assert abs((y == 0).mean() - 0.1) < 2e-3
    np.testing.assert_allclose(y[y != 0], 1 / 0.9, rtol=1e-6)
    assert dropout(x, 0.1, None) is x and dropout(x, 0.0, nnx.Rngs(dropout=0)) is x
    mesh = make_mesh((2, 4, 1))
    sharded = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
    f = jax.jit(lambda a, key: dropout(a, 0.1, nnx.Rngs(dropout=key)))
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(np.asarray(f(sharded, key)), np.asarray(f(x, key)))


def test_blocked_causal_attention_equals_plain_attention():
    """T=200 splits into query blocks that skip later keys; with packed documents, padding and grouped
    heads the outputs and gradients on real tokens equal a plain masked softmax over all keys."""
    b, t, n, kv, h = 2, 200, 6, 2, 16
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, heads, h)), jnp.float32) for heads in (n, kv, kv))
    segments = np.ones((b, t), np.int32)
    segments[0, 70:150], segments[0, 150:] = 2, 0  # two documents then padding
    segments[1, 190:] = 0
    mask = attention_mask(jnp.asarray(segments), causal=True)

    def plain(q, k, v):
        kk, vv = (jnp.repeat(x, n // kv, axis=2) for x in (k, v))
        logits = jnp.einsum("btnh,bsnh->bnts", q, kk) * h ** -0.5
        probs = jax.nn.softmax(jnp.where(mask[:, None], logits, -1e30), axis=-1)
        return jnp.einsum("bnts,bsnh->btnh", probs, vv)

    def blocked(q, k, v):
        return dot_product_attention(q, k, v, mask, scale=h ** -0.5, dropout_rate=0.0, rngs=None, causal=True)

    real = jnp.asarray(segments != 0)[:, :, None, None]
    np.testing.assert_allclose(np.where(real, blocked(q, k, v), 0), np.where(real, plain(q, k, v), 0), atol=2e-6)
    grads = [jax.grad(lambda *a, f=f: jnp.sum(jnp.where(real, f(*a), 0) ** 2), argnums=(0, 1, 2))(q, k, v)
             for f in (blocked, plain)]
    for ours, ref in zip(*grads):
        np.testing.assert_allclose(ours, ref, atol=2e-5)


@pytest.mark.parametrize("softcap", [None, 1.5], ids=["plain", "softcap"])
def test_attention_backward_with_dropout_equals_autodiff(softcap):
    """The attention's own backward (rowsum(dO * O), the saved dropout mask, soft-capping's derivative) gives
    autodiff's gradients of the same masked, dropped-out softmax attention, grouped heads and padding included;
    soft-capped at 1.5 (Gemma 2's attention), so the cap bites."""
    b, t, n, kv, h, rate = 2, 48, 4, 2, 8, 0.25
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, heads, h)), jnp.float32) for heads in (n, kv, kv))
    segments = np.ones((b, t), np.int32)
    segments[1, 40:] = 0
    mask = attention_mask(jnp.asarray(segments), causal=False)
    key = nnx.Rngs(dropout=3).dropout()

    def plain(q, k, v):
        kk, vv = (jnp.repeat(x, n // kv, axis=2) for x in (k, v))
        logits = jnp.einsum("btnh,bsnh->bnts", q, kk) * h ** -0.5
        if softcap:
            logits = jnp.tanh(logits / softcap) * softcap
        probs = jax.nn.softmax(jnp.where(mask[:, None], logits, jnp.finfo(jnp.float32).min), axis=-1)
        # the kernel's mask is drawn over [B, K, G, T, S]: the same layout, heads n = k * G + g
        keep = keep_mask(key, (b, kv, n // kv, t, t), rate).reshape(b, n, t, t)
        return jnp.einsum("bnts,bsnh->btnh", jnp.where(keep, probs / (1 - rate), 0), vv)

    def ours(q, k, v):
        return dot_product_attention(q, k, v, mask, scale=h ** -0.5, dropout_rate=rate, rngs=nnx.Rngs(dropout=3),
                                     softcap=softcap)

    np.testing.assert_allclose(ours(q, k, v), plain(q, k, v), atol=2e-6)
    weights = jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)
    grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * weights), argnums=(0, 1, 2))(q, k, v) for f in (ours, plain)]
    for mine, ref in zip(*grads):
        np.testing.assert_allclose(mine, ref, atol=2e-5)


def test_a_rate_that_is_data_drops_exactly_as_the_constant_under_vmap():
    """A population's dropout rates are data (``Rate``): vmapped over members with rates 0.3 and 0, dropout and
    the attention give each member bitwise the constant rate's outputs (the same elements dropped, the same
    scale) and its gradients within float32 rounding (vmap batches the matmuls differently)."""
    b, t, n, h = 2, 16, 2, 8
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32) for _ in range(3))
    mask = attention_mask(jnp.ones((b, t), jnp.int32), causal=True)

    def f(q, k, v, rate):  # one stream: a rate of 0 draws no key, so the next dropout's key is the same
        rngs = nnx.Rngs(dropout=3)
        out = dot_product_attention(q, k, v, mask, scale=h ** -0.5, dropout_rate=rate, rngs=rngs)
        return dropout(dropout(out, rate, rngs), 0.2, rngs)

    def loss(q, k, v, rate):
        return jnp.sum(jnp.sin(f(q, k, v, rate)))

    def member(q, values):
        with dropout_rates({"p": values}):
            return f(q, k, v, Rate("p")), jax.grad(loss, argnums=(0, 1, 2))(q, k, v, Rate("p"))

    rates = [0.3, 0.0]
    values = tuple(np.array(x) for x in zip(*map(rate_values, rates)))
    outs, grads = jax.jit(jax.vmap(member, in_axes=(None, 0)))(q, values)
    for i, rate in enumerate(rates):
        np.testing.assert_array_equal(outs[i], jax.jit(f, static_argnums=3)(q, k, v, rate))
        for mine, ref in zip(grads, jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)(q, k, v, rate)):
            np.testing.assert_allclose(mine[i], ref, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(outs[0], outs[1])


def test_dense_backward_equals_autodiff():
    """nnx.Linear's contraction with our backward (the kernel's gradient as x^T dy over the flattened
    tokens) gives autodiff's gradients: float32 and bfloat16, with the tokens sharded over an 8-device mesh,
    and rematerialised under the `dots` policy."""
    rng = np.random.default_rng(0)
    dims = (((2,), (0,)), ((), ()))
    mesh = make_mesh((4, 2, 1))
    x = jax.device_put(jnp.asarray(rng.normal(size=(8, 6, 16)), jnp.float32), NamedSharding(mesh, P(("data", "fsdp"))))
    kernel = jnp.asarray(rng.normal(size=(16, 24)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(8, 6, 24)), jnp.float32)

    def loss(dot, dtype, policy):
        def f(x, k):
            return jnp.sum(dot(x.astype(dtype), k.astype(dtype), dims).astype(jnp.float32) * weights)

        return jax.jit(jax.grad(jax.checkpoint(f, policy=REMAT_POLICIES[policy]) if policy else f, argnums=(0, 1)))

    # bfloat16: a few ulp of the partial sums (the gradients reach 30) either way round
    for dtype, rtol, atol in ((jnp.float32, 1e-5, 1e-4), (jnp.bfloat16, 2e-2, 0.1)):
        ref = loss(jax.lax.dot_general, dtype, None)(x, kernel)
        for policy in (None, "dots", "full"):
            for ours, want in zip(loss(dense_dot_general, dtype, policy)(x, kernel), ref):
                assert ours.dtype == want.dtype
                np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(want, np.float32), rtol, atol)


def test_dots_remat_policy_keeps_the_dense_outputs(capsys):
    """The `dots` policy saves the output of the dense layers' matmul, which runs inside a custom VJP
    (dense_dot_general) where the primitive-based policy cannot see it; `full` saves only the inputs."""
    x, kernel = jnp.ones((2, 3, 4)), jnp.ones((4, 5))

    def f(x, k):
        return jnp.sum(jnp.tanh(dense_dot_general(jnp.sin(x), k, (((2,), (0,)), ((), ())))))

    for policy, saved in (("dots", True), ("full", False)):
        print_saved_residuals(jax.checkpoint(f, policy=REMAT_POLICIES[policy]), x, kernel)
        assert ("f32[2,3,5] named 'dense'" in capsys.readouterr().out) == saved, policy
