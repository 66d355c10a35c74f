"""Shared layers: the hashed dropout bits are uniform, independent across positions and keys,
reproducible, and shard like the activations they mask."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adapt.models.layers import dropout, hashed_bits
from adapt.sharding import make_mesh


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
