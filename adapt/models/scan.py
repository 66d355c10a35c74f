"""Scanned layers (``model.scan_layers``): a family's numbered transformer layers as one module whose parameters
are stacked on a leading ``layers`` axis, applied with a scan, so that XLA compiles one layer's body instead of
every layer unrolled (compile time that stays flat with depth).

A family that can stack its layers (:attr:`adapt.models.registry.Family.stack_layers`) builds them with
:func:`layers` and runs them with :func:`apply`; both take the unrolled path (an ``nnx.List``, a Python loop)
unless its config says ``scan_layers``::

    self.layers = scan.layers(lambda rngs: LlamaDecoderLayer(cfg, rngs=rngs), cfg.num_layers, rngs,
                              stacked=cfg.scan_layers)
    x = scan.apply(self.layers, lambda layer, x, rngs, mask: L.run_layer(layer, x, mask, ...), x, rngs, masks)

The stacked module is the layer module itself, its parameters ``[L, ...]`` under the path of the list
(``model.layers.self_attn.q_proj.kernel [L, D, N*H]`` where the list has ``model.layers.3.self_attn...``), their
logical axes led by :data:`adapt.core.sharding.LAYERS` (a rule of :data:`~adapt.core.sharding.DEFAULT_RULES`,
replicated by default).
Checkpoint loading and export map slice i to layer i's HF name (:func:`adapt.models.registry.hf_keys`).

The stack is built from L layers constructed one after another and stacked, not with ``nnx.vmap`` over split
keys: the random draws are then those of the unrolled model, so a random initialisation (a fresh task head after
the layers, ``random_init``) gives the same numbers scanned or not. Each scanned step runs its layer through
:func:`adapt.models.layers.run_layer` (the remat policy per layer), and dropout's ``rngs`` is carried through the
scan, so layer i draws the keys it draws unrolled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adapt.core.sharding import LAYERS, variable_axes
from adapt.models import layers as L

#: How a scan takes the stacked module: its variables sliced along the leading axis, a shared adapter's whole.
STACK_AXES = nnx.StateAxes({L.SharedAdapter: None, ...: 0})


def layers(make: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs, *, stacked: bool) -> nnx.Module:
    """``num_layers`` layers ``make(rngs)``: an ``nnx.List``, or (``stacked``) one module of the same class whose
    parameters are the layers' stacked ``[L, ...]`` (see the module doc)."""
    built = [make(rngs) for _ in range(num_layers)]
    return stack(built) if stacked else nnx.List(built)


def stack(built: Sequence[nnx.Module]) -> nnx.Module:
    """One module of the class of ``built`` (L modules alike, one per layer, in layer order) whose variables are
    theirs stacked ``[L, ...]``, their logical axes led by :data:`~adapt.core.sharding.LAYERS`: what a method adds
    to stacked layers."""
    graphdef, first = nnx.split(built[0])
    states = [first] + [nnx.state(layer) for layer in built[1:]]
    module = nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))  # every leaf [L, ...]
    axes = {path: variable_axes(v) for path, v in nnx.iter_graph(built[0]) if isinstance(v, nnx.Variable)}
    for path, var in nnx.iter_graph(module):
        if isinstance(var, nnx.Variable):
            var.set_metadata(logical_axes=(LAYERS, *axes[path]))
    return module


def is_stacked(module) -> bool:
    """Whether a family's layers ``module`` is stacked (built by :func:`layers` with ``stacked``)."""
    return not isinstance(module, nnx.List)


def apply(stack: nnx.Module, call: Callable, x: jax.Array, rngs: nnx.Rngs | None, per_layer: Sequence | None = None):
    """``x`` through every layer in order: ``x = call(layer, x, rngs, extra)``, ``extra`` being ``per_layer[i]``
    for layer i (an array, e.g. its attention mask, or None). On an ``nnx.List``, a Python loop; on a stacked
    module, an ``nnx.scan`` over its leading axis with ``x`` and ``rngs`` carried, the distinct arrays of
    ``per_layer`` stacked ``[W, ...]`` and each layer's index into them scanned ``[L]``."""
    if not is_stacked(stack):
        for i, layer in enumerate(stack):
            with L.layer_number(i):
                x = call(layer, x, rngs, None if per_layer is None else per_layer[i])
        return x
    extra, order = _per_layer(stack, per_layer)

    def body(carry, layer, i, w):
        x, rngs = carry
        with L.layer_number(i):
            return call(layer, x, rngs, extra(w)), rngs

    scanned = nnx.scan(body, in_axes=(nnx.Carry, STACK_AXES, 0, 0), out_axes=nnx.Carry)
    return scanned((x, rngs), stack, jnp.arange(len(order), dtype=jnp.int32), order)[0]


def apply_cached(stack: nnx.Module, call: Callable, x: jax.Array, per_layer: Sequence, cache):
    """Generation's pass (no dropout): ``x = call(layer, x, per_layer[i], view)`` through every layer (its number
    set, :func:`adapt.models.layers.layer_number`), ``view`` layer i's part of ``cache`` (a
    :class:`adapt.models.kv_cache.KVCache`), into which its attention writes. On a stacked module the cache's
    stacked buffers ``[L, B, K, S, H]`` are scanned with the layers: each step's slices go in, the written slices
    come out, stacked back into the cache."""
    if not is_stacked(stack):
        for i, layer in enumerate(stack):
            with L.layer_number(i):
                x = call(layer, x, per_layer[i], cache.layer(i))
        return x
    extra, order = _per_layer(stack, per_layer)

    def body(x, layer, i, w, keys, values):  # keys, values: this layer's [B, K, S, H]
        view = cache.one_layer(keys, values)
        with L.layer_number(i):
            x = call(layer, x, extra(w), view)
        return x, (view.cache.keys[0], view.cache.values[0])

    scanned = nnx.scan(body, in_axes=(nnx.Carry, STACK_AXES, 0, 0, 0, 0), out_axes=(nnx.Carry, 0))
    x, (cache.keys, cache.values) = scanned(x, stack, jnp.arange(len(order), dtype=jnp.int32), order, cache.keys,
                                            cache.values)
    return x


def _per_layer(stack: nnx.Module, per_layer: Sequence | None):
    """For a scan over ``stack``'s L layers: ``(extra, order)``, ``order [L]`` each layer's index among the
    distinct entries of ``per_layer`` (arrays or tuples of them, by identity) and ``extra(w)`` the entry of index w:
    with one entry (or none), closed over; with W, a row of their stack ``[W, ...]`` (masks made whole)."""
    num_layers = jax.tree.leaves(nnx.state(stack, nnx.Not(L.SharedAdapter)))[0].shape[0]  # [L, ...]
    distinct, index = [], []
    for extra in per_layer or [None] * num_layers:
        match = next((j for j, seen in enumerate(distinct) if seen is extra), None)
        if match is None:
            distinct.append(extra)
            match = len(distinct) - 1
        index.append(match)
    order = jnp.asarray(np.asarray(index, np.int32))  # [L]
    if len(distinct) == 1:
        return (lambda w: distinct[0]), order
    whole = [jax.tree.map(L.dense, d, is_leaf=lambda x: isinstance(x, L.SegmentMask)) for d in distinct]
    table = jax.tree.map(lambda *xs: jnp.stack(xs), *whole)  # [W, ...] (a sliding window's mask beside a whole one)
    return (lambda w: jax.tree.map(lambda x: x[w], table)), order
