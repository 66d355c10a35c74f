"""Logical axis names -> mesh axes.

Parameters carry logical axis names in their metadata (``logical_axes``); activations are constrained
with :func:`shard`. One rules table (a tuple of ``(logical_name, mesh_axis | tuple | None)``), normally
taken from the experiment config, maps them onto the mesh axes ``data``, ``fsdp`` and ``tensor``, as in
flax's lm1b example and MaxText.

A mesh axis is used at most once per array: a later dimension that asks for an axis an earlier one
already took stays replicated (so ``[batch, length, embed]`` activations shard ``batch`` over
``data`` x ``fsdp`` while ``embed`` parameters shard over ``fsdp``). A dimension whose size the mesh
axes do not divide stays replicated too.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

#: The logical axis of stacked layers' ``[L, ...]`` (``model.scan_layers``: :mod:`adapt.models.scan`, the KV cache).
LAYERS = "layers"

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

#: The default rules: logical axis name -> mesh axes (None: replicated); a name the table does not list is replicated.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("position", None),
    ("labels", None),
    ("expert", None),  # a mixture's experts (adapt.models.moe): all on every chip unless a rule spreads them
    ("adapter", None),  # the small inner dimension of adaptation methods (LoRA rank, adapter bottleneck)
    (LAYERS, None),  # the stacked layers of a scanned model (model.scan_layers, adapt.models.scan)
    ("trial", None),  # a population's members (adapt.training.population); "data" spreads them over that axis
)

_RULES: contextvars.ContextVar[Rules] = contextvars.ContextVar("adapt_axis_rules", default=DEFAULT_RULES)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), axes: Sequence[str] = MESH_AXES, devices=None) -> Mesh:
    """A mesh over ``devices`` (all by default); one ``-1`` in ``shape`` takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != len(axes):
        raise ValueError(f"mesh shape {tuple(shape)} has {len(shape)} entries, expected one per axis {tuple(axes)}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)}: at most one axis may be -1")
    if -1 in shape:
        rest = math.prod(s for s in shape if s != -1)
        if len(devices) % rest:
            raise ValueError(f"mesh shape {tuple(shape)} does not divide the {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // rest
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, {len(devices)} are available")
    grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, tuple(axes), axis_types=(AxisType.Auto,) * len(axes))


def normalize_rules(rules) -> Rules:
    """``rules`` as a hashable tuple (a config may hold lists where the table has tuples)."""
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rules)


def without_axes(rules: Rules, axes: tuple[str, ...]) -> Rules:
    """``rules`` with the mesh ``axes`` taken out of every target but the ``trial`` rule's: what a population's
    member sees inside the ``vmap`` whose trial axis those mesh axes split."""
    def drop(target):
        kept = tuple(a for a in ((target,) if isinstance(target, str) else target or ()) if a not in axes)
        return None if not kept else kept[0] if len(kept) == 1 else kept

    return tuple((name, target if name == "trial" else drop(target)) for name, target in normalize_rules(rules))


@contextlib.contextmanager
def axis_rules(rules: Rules):
    """Use ``rules`` for :func:`shard` and :func:`logical_to_spec` inside the block."""
    token = _RULES.set(normalize_rules(rules))
    try:
        yield
    finally:
        _RULES.reset(token)


def current_rules() -> Rules:
    return _RULES.get()


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None, rules: Rules | None = None) -> PartitionSpec:
    """The PartitionSpec for an array whose dimensions carry ``names``.

    With ``shape`` and ``mesh`` given, a dimension the mesh axes do not divide stays replicated.
    """
    table = dict(current_rules() if rules is None else rules)
    used: set[str] = set()
    spec = []
    for i, name in enumerate(names):
        target = table.get(name) if name is not None else None
        axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        axes = tuple(a for a in axes if a not in used and (mesh is None or a in mesh.shape))
        if shape is not None and mesh is not None and axes:
            size = math.prod(mesh.shape[a] for a in axes)
            if shape[i] % size:
                axes = ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def shard(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain activation ``x`` to the sharding its logical ``names`` map to; a no-op with no mesh set."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))


def variable_axes(variable: nnx.Variable) -> tuple[str | None, ...]:
    """The logical axis names a parameter was declared with (replicated when it has none)."""
    axes = variable.get_metadata().get("logical_axes")
    return tuple(axes) if axes is not None else (None,) * len(variable.shape)


def variable_sharding(variable: nnx.Variable, mesh: Mesh | None, rules: Rules | None = None):
    """Where a parameter lives: a NamedSharding on ``mesh``, or the first local device with no mesh."""
    if mesh is None:
        return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return NamedSharding(mesh, logical_to_spec(variable_axes(variable), variable.shape, mesh, rules))


def state_shardings(state: nnx.State, mesh: Mesh | None, rules: Rules | None = None) -> nnx.State:
    """A tree like ``state`` holding each variable's sharding (see :func:`variable_sharding`)."""
    return jax.tree.map(lambda v: variable_sharding(v, mesh, rules), state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))
