"""Logical-axis rules -> shardings, and models loaded straight onto an 8-device CPU mesh."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from adapt.models import from_pretrained
from adapt.models.registry import param_paths
from adapt.sharding import DEFAULT_RULES, axis_rules, logical_to_spec, make_mesh, variable_axes


def test_make_mesh_fills_minus_one_and_checks_sizes():
    assert dict(make_mesh((2, -1, 2)).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(make_mesh((-1, 1, 1)).shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="needs 12 devices"):
        make_mesh((3, 2, 2))
    with pytest.raises(ValueError, match="at most one"):
        make_mesh((-1, -1, 2))


def test_logical_to_spec_uses_each_mesh_axis_once_and_only_when_it_divides():
    mesh = make_mesh((2, 2, 2))
    assert logical_to_spec(("batch", "length", "embed"), (8, 4, 16), mesh) == P(("data", "fsdp"), None, None)
    assert logical_to_spec(("embed", "mlp"), (16, 32), mesh) == P("fsdp", "tensor")
    assert logical_to_spec(("embed", "kv_heads"), (16, 3), mesh) == P("fsdp", None)  # 3 % 2 != 0
    assert logical_to_spec(("norm",), (16,), mesh) == P(None)
    with axis_rules((("embed", None), ("mlp", ("fsdp", "tensor")))):
        assert logical_to_spec(("embed", "mlp"), (16, 32), mesh) == P(None, ("fsdp", "tensor"))


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4)])
def test_loaded_parameters_follow_the_rules(tiny_llama, shape):
    mesh = make_mesh(shape)
    model = from_pretrained(tiny_llama, mesh=mesh)
    for path, var in param_paths(nnx.state(model, nnx.Param)):
        expected = logical_to_spec(variable_axes(var), var.shape, mesh, DEFAULT_RULES)
        assert var.get_value().sharding.spec == expected, path
        assert var.get_value().sharding.mesh == mesh
    layer = model.model.layers[0]
    if shape == (2, 2, 2):
        assert layer.self_attn.q_proj.kernel.get_value().sharding.spec == P("fsdp", "tensor")
        assert layer.mlp.down_proj.kernel.get_value().sharding.spec == P("tensor", "fsdp")
        assert model.model.embed_tokens.embedding.get_value().sharding.spec == P("tensor", "fsdp")
        assert model.model.norm.scale.get_value().sharding.spec == P(None)


def test_sharded_forward_matches_single_device(tiny_llama):
    ids = np.random.RandomState(0).randint(0, 128, (8, 16))
    expected = np.asarray(from_pretrained(tiny_llama)(ids))
    mesh = make_mesh((2, 2, 2))
    model = from_pretrained(tiny_llama, mesh=mesh)
    graphdef, state = nnx.split(model)
    with jax.set_mesh(mesh):
        logits = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, ids)
    assert logits.sharding.spec == P(("data", "fsdp"), None, "tensor")
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5)
