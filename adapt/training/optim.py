"""Optimizers and learning-rate schedules from the ``optimizer`` section of an experiment config.

AdamW (the default), Adafactor and SGD, each with weight decay masked off the parameter kinds listed in
``decay_exclude`` (``bias``, ``norm``, ``embedding``: BERT and the HF Trainer exclude biases and norms;
some recipes exclude embeddings too), global-norm clipping, and a warmup + constant/linear/cosine schedule.
Gradient accumulation lives in the train step, so one optimizer update is one train step.
"""

from __future__ import annotations

import jax
import optax
from flax import nnx

from adapt.errors import ConfigError
from adapt.models.registry import param_paths
from adapt.sharding import variable_axes

OPTIMIZERS = ("adamw", "adafactor", "sgd")
SCHEDULES = ("constant", "linear", "cosine")
DECAY_KINDS = ("bias", "norm", "embedding")


def warmup_steps(cfg, total_steps: int) -> int:
    """``warmup_steps``, or ``warmup_ratio`` of the run when that is set instead."""
    if cfg.warmup_steps and cfg.warmup_ratio:
        raise ConfigError("optimizer.warmup_steps and optimizer.warmup_ratio are both set; set one of them")
    return int(cfg.warmup_steps or round(cfg.warmup_ratio * total_steps))


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate``, then constant, linear decay or cosine decay to
    ``end_lr_ratio * learning_rate`` at ``total_steps``."""
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"optimizer.schedule={cfg.schedule!r}; expected one of {', '.join(SCHEDULES)}")
    lr, warm = cfg.learning_rate, warmup_steps(cfg, total_steps)
    decay_steps = max(total_steps - warm, 1)
    end = cfg.end_lr_ratio * lr
    after = {"constant": optax.constant_schedule(lr),
             "linear": optax.linear_schedule(lr, end, decay_steps),
             "cosine": optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg.end_lr_ratio)}[cfg.schedule]
    if not warm:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])


def param_kinds(state: nnx.State) -> dict:
    """A pure-dict tree like ``state`` naming each parameter's kind: ``norm`` (scale and bias of a
    normalisation layer, found by their ``norm`` logical axis), ``bias``, ``embedding`` or ``weight``."""
    def kind(path, var):
        if "norm" in variable_axes(var):
            return "norm"
        return {"bias": "bias", "embedding": "embedding"}.get(str(path[-1]), "weight")

    return nnx.to_pure_dict(nnx.from_flat_state([(p, kind(p, v)) for p, v in param_paths(state)]))


def make_optimizer(cfg, total_steps: int, kinds: dict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax transformation for ``cfg`` (the ``optimizer`` config section) and its schedule.

    ``kinds``: a tree like the trainable parameters naming each one's kind (see :func:`param_kinds`).
    """
    unknown = set(cfg.decay_exclude) - set(DECAY_KINDS)
    if unknown:
        raise ConfigError(f"optimizer.decay_exclude has {sorted(unknown)}; expected a subset of {list(DECAY_KINDS)}")
    mask = jax.tree.map(lambda kind: kind not in cfg.decay_exclude, kinds)
    schedule = make_schedule(cfg, total_steps)
    wd = cfg.weight_decay
    if cfg.name == "adamw":
        tx = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd, mask=mask)
    elif cfg.name == "adafactor":
        tx = optax.adafactor(schedule, weight_decay_rate=wd or None, weight_decay_mask=mask,
                             multiply_by_parameter_scale=False)
    elif cfg.name == "sgd":
        tx = optax.chain(optax.add_decayed_weights(wd, mask), optax.sgd(schedule, momentum=cfg.momentum or None))
    else:
        raise ConfigError(f"optimizer.name={cfg.name!r}; expected one of {', '.join(OPTIMIZERS)}")
    if cfg.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    return tx, schedule
