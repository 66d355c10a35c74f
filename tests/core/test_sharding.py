"""Logical-axis rules -> shardings, and models loaded straight onto an 8-device CPU mesh."""

import math

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from adapt.core.sharding import DEFAULT_RULES, axis_rules, logical_to_spec, make_mesh, variable_axes
from adapt.models import from_pretrained
from adapt.models.registry import param_paths


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


def _device_bytes(tree) -> dict:
    """Bytes of ``tree``'s arrays resident on each device (each shard counted where it lives)."""
    out = {}
    for leaf in jax.tree.leaves(tree):  # from the sharding alone: reading shard.data would make new arrays
        nbytes = math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
        for device in leaf.sharding.addressable_devices:
            out[device] = out.get(device, 0) + nbytes
    return out


def test_a_trial_loads_straight_onto_its_mesh(tmp_path):
    import json

    from adapt.core.errors import ConfigError
    from adapt.experiment import base_config
    from adapt.experiment.trial import build_trial

    rows = [{"text": f"article {i} about {'markets' if i % 2 else 'football'}", "label": str(i % 2)} for i in range(16)]
    (tmp_path / "train.jsonl").write_text("\n".join(map(json.dumps, rows)))
    c = base_config()
    c.data.files = {"train": str(tmp_path / "train.jsonl")}
    c.data.update(max_length=16, cache_dir="")
    c.mesh.shape = (1, 8, 1)  # fsdp over all 8 devices
    before = _device_bytes(jax.live_arrays())
    trial = build_trial(c, str(tmp_path / "run"))  # run_trial's own path: bundled MiniLM-L6, 22.7M parameters
    params = nnx.state(trial.trainer.model, nnx.Param)
    total = sum(x.nbytes for x in jax.tree.leaves(params))
    per_device = _device_bytes(params)
    assert total > 80e6 and len(per_device) == 8
    for device, n in per_device.items():  # 1/8 of the total, plus the replicated norms, biases and head (~1%)
        assert total / 8 <= n < 1.02 * total / 8, (device, n / total)
    # nothing else was left on a device: no unsharded copy of the model survived the loading
    after = _device_bytes(jax.live_arrays())
    assert after[jax.devices()[0]] - before.get(jax.devices()[0], 0) < 1.05 * total / 8
    # the train state keeps them where they are: optimizer moments sharded alike
    state, _ = trial.trainer._setup(1)
    assert _device_bytes(state.params) == per_device

    c.mesh.shape = (3, 1, 1)  # a mesh the 8 devices do not fill, a batch the data axis does not divide
    with pytest.raises(ConfigError, match=r"^mesh.shape=\(3, 1, 1\): mesh shape \(3, 1, 1\) needs 3 devices"):
        build_trial(c, str(tmp_path / "bad"))
    c.mesh.shape, c.train.batch_size = (8, 1, 1), 12
    with pytest.raises(ConfigError, match="train.batch_size=12 is not divisible by the 8 batch shards"):
        build_trial(c, str(tmp_path / "bad"))
