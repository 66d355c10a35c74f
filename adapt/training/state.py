"""The train state and where each part of it lives on the mesh.

The model is split into its trainable parameters (``params``, what the optimizer sees) and the rest
(``frozen``: the base weights under LoRA and the like, empty for full fine-tuning); both are pure dicts
shaped like the model's ``nnx.State``, so optax, orbax and ``jax.jit`` see plain pytrees and the NNX
module is rebuilt inside the step from a static ``graphdef``. Optimizer state is created already sharded:
its shapes are evaluated first, each leaf that mirrors a parameter gets that parameter's sharding (others,
like Adafactor's factored moments and step counts, are replicated), and one jitted ``init`` writes it there.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from adapt.core.errors import ConfigError
from adapt.core.sharding import Rules, logical_to_spec, state_shardings
from adapt.methods.base import Method
from adapt.models import layers

MODEL_INPUTS = ("input_ids", "attention_mask", "positions", "token_type_ids")
#: A model's attribute holding a frozen module called on the same inputs in training (adapt.features.distill's teacher).
COMPANION = "companion"


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 [], optimizer updates done
    params: dict  # trainable parameters
    frozen: dict  # the model's other parameters
    opt_state: optax.OptState
    rng: jax.Array  # uint32 [2]; the step's key is fold_in(rng, step)
    anchors: dict  # constants of the adaptation method (L2-SP's starting point); not checkpointed


@struct.dataclass
class Model:
    """What the steps need to rebuild and call the NNX module (static: hashed by jit)."""
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)

    def __call__(self, params: dict, frozen: dict, batch: dict, key: jax.Array | None):
        """The model's outputs on ``batch``; ``key`` (None in evaluation) seeds dropout. In training, a model
        with a :data:`COMPANION` gives (its outputs, the companion's outputs on the same inputs)."""
        module = merge_model(self, params, frozen)
        rngs = None if key is None else nnx.Rngs(dropout=key)
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        with layers.step_key(None if key is None else jax.random.fold_in(key, 0x5EED)):
            outputs = module(**inputs, rngs=rngs)
        companion = getattr(module, COMPANION, None)
        return outputs if key is None or companion is None else (outputs, companion(**inputs))


def split_model(model: nnx.Module, trainable=nnx.Param) -> tuple[Model, nnx.State, nnx.State]:
    """``model`` -> (static model, trainable ``nnx.State``, the rest). ``trainable`` is an NNX filter."""
    graphdef, params, frozen = nnx.split(model, trainable, ...)
    return Model(graphdef), params, frozen


def merge_model(model: Model, params: dict, frozen: dict) -> nnx.Module:
    return nnx.merge(model.graphdef, nnx.State(params), nnx.State(frozen))


def _pure_shardings(state: nnx.State, mesh: Mesh, rules: Rules) -> dict:
    return nnx.to_pure_dict(state_shardings(state, mesh, rules))


def mirror_shardings(abstract, params: dict, param_sh: dict, mesh: Mesh):
    """Shardings for a tree that mirrors the parameters (optimizer moments, a copy of the starting point):
    each leaf whose key path ends with a parameter's path and has its shape takes that parameter's
    sharding; every other leaf (step counts, factored moments) is replicated."""
    by_path = {tuple(path): (leaf.shape, sh) for (path, leaf), sh in
               zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(param_sh))}
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        for i in range(len(path)):
            shape, sh = by_path.get(tuple(path[i:]), (None, None))
            if shape is not None and shape == leaf.shape:
                return sh
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract)


def _layout(model: nnx.Module, tx: optax.GradientTransformation, mesh: Mesh, rules: Rules, method: Method,
            abstract: bool = False):
    """(static model, params, frozen, anchors, shardings) of ``model``; ``abstract``: ``model`` is
    ``nnx.eval_shape``'s, and params, frozen and anchors are ``ShapeDtypeStruct`` trees."""
    static, params_state, frozen_state = split_model(model, method.trainable(model))
    params, frozen = nnx.to_pure_dict(params_state), nnx.to_pure_dict(frozen_state)
    p_sh = _pure_shardings(params_state, mesh, rules)
    o_sh = mirror_shardings(jax.eval_shape(tx.init, params), params, p_sh, mesh)
    anchors = (jax.eval_shape(lambda p: method.anchors(model, p), params) if abstract
               else method.anchors(model, params))
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = TrainState(step=replicated, params=p_sh, frozen=_pure_shardings(frozen_state, mesh, rules),
                           opt_state=o_sh, rng=replicated, anchors=mirror_shardings(anchors, params, p_sh, mesh))
    return static, params, frozen, anchors, shardings


def create_state(model: nnx.Module, tx: optax.GradientTransformation, *, mesh: Mesh, rules: Rules, seed: int,
                 method: Method | None = None) -> tuple[Model, TrainState, TrainState]:
    """Split ``model`` into what ``method`` trains and the rest, place its parameters on their shardings,
    create the optimizer state sharded. Returns (static model, state, the state's shardings)."""
    static, params, frozen, anchors, sh = _layout(model, tx, mesh, rules, method or Method())
    params = jax.device_put(params, sh.params)
    state = TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), sh.step), params=params, frozen=jax.device_put(frozen, sh.frozen),
        opt_state=jax.jit(tx.init, out_shardings=sh.opt_state)(params),
        rng=jax.device_put(jax.random.PRNGKey(seed), sh.rng), anchors=jax.device_put(anchors, sh.anchors))
    return static, state, sh


def abstract_state(model: nnx.Module, tx: optax.GradientTransformation, *, mesh: Mesh, rules: Rules,
                   method: Method | None = None) -> tuple[Model, TrainState, TrainState]:
    """:func:`create_state` of an abstract ``model`` (``nnx.eval_shape``'s): the state as ``ShapeDtypeStruct``s on
    the shardings ``create_state`` would place it on (nothing allocated: what a step is lowered with to compile it
    for a mesh of devices this machine does not own, :mod:`adapt.plan`). ``mesh`` may be such a mesh."""
    static, params, frozen, anchors, sh = _layout(model, tx, mesh, rules, method or Method(), abstract=True)
    shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, frozen=frozen,
                        opt_state=jax.eval_shape(tx.init, params), rng=jax.eval_shape(jax.random.PRNGKey, 0),
                        anchors=anchors)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, sh)
    return static, state, sh


STACKED = ("step", "params", "opt_state", "rng", "anchors")  #: a population's per-member fields: all but frozen


def _axes(entry) -> tuple:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def trial_axes(mesh: Mesh, rules: Rules, members: int) -> tuple:
    """The mesh axes a population's trial axis is split over (the ``trial`` rule); ``members`` must divide."""
    axes = _axes(logical_to_spec(("trial",), None, mesh, rules)[0])
    ways = math.prod(mesh.shape[a] for a in axes)
    if members % ways:
        raise ConfigError(f"a population of {members} trials does not divide over the {ways} shards of mesh axes "
                          f"{axes} (rule trial -> {axes}); pack a multiple of {ways}")
    return axes


def stacked_shardings(shardings: TrainState, mesh: Mesh, rules: Rules, members: int, frozen_axes) -> TrainState:
    """The shardings of a population's state: each field of :data:`STACKED`, and each leaf of ``frozen`` whose
    ``frozen_axes`` entry is 0 (one that differs between members), gains a leading trial axis on the ``trial``
    rule's mesh axes (those its leaf does not already use); the other frozen leaves stay as they are, shared."""
    axes = trial_axes(mesh, rules, members)

    def add(sh: NamedSharding) -> NamedSharding:
        used = {a for entry in sh.spec for a in _axes(entry)}
        free = tuple(a for a in axes if a not in used)
        return NamedSharding(mesh, PartitionSpec(free if len(free) > 1 else free[0] if free else None, *sh.spec))

    frozen = jax.tree.map(lambda sh, axis: sh if axis is None else add(sh), shardings.frozen, frozen_axes,
                          is_leaf=lambda x: x is None)
    return shardings.replace(frozen=frozen, **{f: jax.tree.map(add, getattr(shardings, f)) for f in STACKED})


def batch_ways(mesh: Mesh, rules: Rules) -> int:
    """The shards a batch's rows are split into (the ``batch`` rule's mesh axes)."""
    return math.prod(mesh.shape[a] for a in _axes(logical_to_spec(("batch",), None, mesh, rules)[0]))


def batch_sharding(mesh: Mesh, rules: Rules, global_batch: int) -> NamedSharding:
    """Batches are split along their first dimension by the ``batch`` rule (``data`` x ``fsdp``)."""
    spec = logical_to_spec(("batch",), None, mesh, rules)
    ways = batch_ways(mesh, rules)
    if global_batch % ways:
        raise ConfigError(f"train.batch_size={global_batch} is not divisible by the {ways} batch shards of the "
                          f"mesh {dict(mesh.shape)} (rule batch -> {spec[0]})")
    return NamedSharding(mesh, spec)


def population_batch_sharding(mesh: Mesh, rules: Rules, members: int, global_batch: int) -> NamedSharding:
    """A population's batches ``[members, batch, ...]``: the trial axis by the ``trial`` rule, each member's rows
    by the ``batch`` rule over the mesh axes left."""
    trial_axes(mesh, rules, members)
    spec = logical_to_spec(("trial", "batch"), None, mesh, rules)
    ways = math.prod(mesh.shape[a] for a in _axes(spec[1]))
    if global_batch % ways:
        raise ConfigError(f"train.batch_size={global_batch} is not divisible by the {ways} batch shards left beside a "
                          f"population's trial axis on the mesh {dict(mesh.shape)}")
    return NamedSharding(mesh, spec)


def global_batch(local: dict, sharding: NamedSharding) -> dict:
    """This process's rows of a batch (numpy) -> global arrays on ``sharding``."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
