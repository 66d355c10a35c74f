"""Optimizers and learning-rate schedules from the ``optimizer`` section of an experiment config.

AdamW (the default), Adafactor and SGD, each with weight decay masked off the parameter kinds listed in
``decay_exclude`` (``bias``, ``norm``, ``embedding``: BERT and the HF Trainer exclude biases and norms;
some recipes exclude embeddings too), global-norm clipping, and a warmup + constant/linear/cosine schedule.
Gradient accumulation lives in the train step, so one optimizer update is one train step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from adapt.core.errors import ConfigError
from adapt.core.sharding import variable_axes
from adapt.models.registry import model_info, param_paths, per_layer_paths

OPTIMIZERS = ("adamw", "adafactor", "sgd")
SCHEDULES = ("constant", "linear", "cosine")
DECAY_KINDS = ("bias", "norm", "embedding")


def warmup_steps(cfg, total_steps: int) -> int:
    """``warmup_steps``, or ``warmup_ratio`` of the run when that is set instead."""
    if cfg.warmup_steps and cfg.warmup_ratio:
        raise ConfigError("optimizer.warmup_steps and optimizer.warmup_ratio are both set; set one of them")
    return int(cfg.warmup_steps or round(cfg.warmup_ratio * total_steps))


def make_schedule(cfg, total_steps: int, peak: float | None = None) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate`` (or ``peak``), then constant, linear decay or cosine decay
    to ``end_lr_ratio`` of it at ``total_steps``."""
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"optimizer.schedule={cfg.schedule!r}; expected one of {', '.join(SCHEDULES)}")
    lr, warm = cfg.learning_rate if peak is None else peak, warmup_steps(cfg, total_steps)
    decay_steps = max(total_steps - warm, 1)
    end = cfg.end_lr_ratio * lr
    after = {"constant": optax.constant_schedule(lr),
             "linear": optax.linear_schedule(lr, end, decay_steps),
             "cosine": optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg.end_lr_ratio)}[cfg.schedule]
    if not warm:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])


def param_paths_kinds(state: nnx.State) -> list[tuple[tuple, str]]:
    """``(path, kind)`` of each parameter: ``norm`` (scale and bias of a normalisation layer, found by
    their ``norm`` logical axis), ``bias``, ``embedding`` or ``weight``."""
    def kind(path, var):
        if "norm" in variable_axes(var):
            return "norm"
        return {"bias": "bias", "embedding": "embedding"}.get(str(path[-1]), "weight")

    return [(p, kind(p, v)) for p, v in param_paths(state)]


def param_kinds(state: nnx.State) -> dict:
    """A pure-dict tree like ``state`` naming each parameter's kind (see :func:`param_paths_kinds`)."""
    return nnx.to_pure_dict(nnx.from_flat_state(param_paths_kinds(state)))


def method_settings(method, model: nnx.Module, state: nnx.State, *, fresh=(), head_warmup_steps: int = 0) -> dict:
    """What an adaptation method says of each trainable parameter in ``state``, as trees like it:
    ``decay`` (True/False, or None to follow ``decay_exclude``), ``scale`` (learning-rate multiplier) and
    ``unfreeze`` (the first step it updates). Depth counts 0 for embeddings, i+1 for layer i, L+1 on top. A
    parameter of stacked layers (``model.scan_layers``) is asked about slice by slice, with layer i's path and depth
    for slice i, as the unrolled model's layer i: its scale and unfreeze step are arrays ``[L, 1, ...]`` that
    broadcast over it (its decay must be the same for every slice).

    Head warm-up (``train.head_warmup_steps``): with ``fresh`` (the paths loading initialised fresh,
    :func:`adapt.models.loading.fresh_paths`) and ``head_warmup_steps`` N, every other parameter unfreezes at
    max(the method's step, N), so the first N steps train only the fresh ones. When no trainable parameter is
    fresh there is nothing to warm up, and N is ignored."""
    info = model_info(model)
    top = info.dims.num_layers + 1
    kinds = dict(param_paths_kinds(state))
    ndims = {path: var.ndim for path, var in param_paths(state)}
    fresh = {tuple(p) for p in fresh}
    warm = int(head_warmup_steps) if fresh & set(kinds) else 0

    def each(fn, path, sliced):
        """``fn(path, depth, kind)``; for a parameter of stacked layers, ``fn`` of each layer's path and depth as an
        array ``[L, 1, ...]`` (one value when every layer's is the same)."""
        layers = per_layer_paths(info.family, path, info.dims.num_layers)
        if layers is None:
            return fn(path, info.depth(path), kinds[path])
        values = [fn(p, info.depth(p), kinds[path]) for p in layers]
        if all(v == values[0] for v in values):
            return values[0]
        if not sliced:
            raise ConfigError(f"method {method.name!r} decays {'.'.join(map(str, path))} in some layers only; with "
                              f"model.scan_layers=True it is one stacked parameter: decay it in every layer or none")
        return np.asarray(values).reshape((-1,) + (1,) * (ndims[path] - 1))

    def decays(path, depth, kind):
        return method.decays(path, kind)

    def unfreeze(path, depth, kind):
        step = int(method.unfreeze_step(path, depth, top))
        return step if path in fresh else max(step, warm)

    def scale(path, depth, kind):
        return float(method.lr_scale(path, depth, top))

    def tree(fn, sliced=True):
        return nnx.to_pure_dict(nnx.from_flat_state([(path, each(fn, path, sliced)) for path in kinds]))

    stacked = nnx.to_pure_dict(nnx.from_flat_state(
        [(path, per_layer_paths(info.family, path, info.dims.num_layers) is not None) for path in kinds]))
    return {"decay": tree(decays, sliced=False), "scale": tree(scale), "unfreeze": tree(unfreeze), "stacked": stacked}


def gate(unfreeze: dict, scale: dict | None = None) -> optax.GradientTransformation:
    """Zero each leaf until step ``unfreeze`` (a tree of ints like the parameters), and multiply it by
    ``scale`` (a tree of floats) when given."""
    def init(params):
        return optax.ScaleByScheduleState(count=jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        def one(u, start, factor=1.0):
            return jnp.where(state.count >= start, u * factor, jnp.zeros_like(u)).astype(u.dtype)
        out = (jax.tree.map(one, updates, unfreeze) if scale is None
               else jax.tree.map(one, updates, unfreeze, scale))
        return out, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg, total_steps: int, kinds: dict, settings: dict | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax transformation for ``cfg`` (the ``optimizer`` config section) and its schedule.

    ``kinds``: a tree like the trainable parameters naming each one's kind (see :func:`param_kinds`).
    ``settings``: an adaptation method's per-parameter decay, learning-rate scale and unfreeze step
    (see :func:`method_settings`). A parameter not yet unfrozen gets a zero gradient (so no moments) and
    a zero update (so no weight decay either).
    """
    unknown = set(cfg.decay_exclude) - set(DECAY_KINDS)
    if unknown:
        raise ConfigError(f"optimizer.decay_exclude has {sorted(unknown)}; expected a subset of {list(DECAY_KINDS)}")
    settings = settings or {}
    flat_kinds, treedef = jax.tree.flatten(kinds)
    decay = treedef.flatten_up_to(settings["decay"]) if settings.get("decay") else [None] * len(flat_kinds)
    mask = treedef.unflatten([k not in cfg.decay_exclude if d is None else d for k, d in zip(flat_kinds, decay)])
    # The peak learning rate and the weight decay live in the optimizer state (inject_hyperparams), and the
    # schedule's shape (peak 1) scales the updates: trials that differ only in them compile the same step.
    if cfg.name == "adamw":
        base = functools.partial(optax.adamw, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, mask=mask)
    elif cfg.name == "adafactor":
        base = functools.partial(_adafactor, mask=mask, stacked=settings.get("stacked"))
    elif cfg.name == "sgd":
        base = functools.partial(_sgd, momentum=cfg.momentum or None, mask=mask)
    else:
        raise ConfigError(f"optimizer.name={cfg.name!r}; expected one of {', '.join(OPTIMIZERS)}")
    tx = optax.chain(optax.inject_hyperparams(base)(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay),
                     optax.scale_by_schedule(make_schedule(cfg, total_steps, peak=1.0)))
    if cfg.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    scale, unfreeze = settings.get("scale"), settings.get("unfreeze")
    if scale is not None and all(np.all(v == 1.0) for v in jax.tree.leaves(scale)):
        scale = None
    if unfreeze is not None and any(np.any(v) for v in jax.tree.leaves(unfreeze)):
        tx = optax.chain(gate(unfreeze), tx, gate(unfreeze, scale))
    elif scale is not None:  # every unfreeze step is 0: a pure per-parameter scale
        tx = optax.chain(tx, gate(unfreeze, scale))
    return tx, make_schedule(cfg, total_steps)


def _adafactor(learning_rate, weight_decay, mask, stacked=None):
    """``optax.adafactor`` without parameter scaling, its update clipping (each update's RMS at most 1) done per layer
    of a parameter of stacked layers (``stacked``: a tree of bools like the parameters), as the unrolled model's
    parameters are clipped one by one; its factored moments are per layer already (over the last two axes)."""
    return optax.chain(optax.scale_by_factored_rms(), _clip_by_block_rms(1.0, stacked),
                       optax.scale_by_learning_rate(learning_rate, flip_sign=False),
                       optax.add_decayed_weights(weight_decay, mask), optax.scale(-1))


def _clip_by_block_rms(threshold: float, stacked) -> optax.GradientTransformation:
    """``optax.clip_by_block_rms``, the RMS taken per slice ``[i, ...]`` of a leaf ``stacked`` marks."""
    def clip(u, sliced=False):
        axes = tuple(range(1, u.ndim)) if sliced and u.ndim > 1 else None
        return u / jnp.maximum(1.0, jnp.sqrt(jnp.mean(jnp.square(jnp.abs(u)), axis=axes, keepdims=True)) / threshold)

    def update(updates, state, params=None):
        return (jax.tree.map(clip, updates) if stacked is None else jax.tree.map(clip, updates, stacked)), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def _sgd(learning_rate, weight_decay, momentum, mask):
    return optax.chain(optax.add_decayed_weights(weight_decay, mask), optax.sgd(learning_rate, momentum=momentum))
