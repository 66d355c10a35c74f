"""A sweep's trials trained together: which trials can share one compiled program, and running them as one
population (:mod:`adapt.training.population`).

Two trials share a program when their configs differ only in :data:`PACKABLE` keys: values that reach the train
step as data, never as its shape or structure. Everything else (the model, method and its other knobs, batch
size, steps, schedule shape) must be equal.

    program_key(a) == program_key(b)             # one program: they can train together (run_sweep(pack=N))
    results = run_population(configs, workdirs)  # one run_trial result (or the member's error) per trial

Each member is still its own trial: its own folder with ``config.json``, checkpoints, ``metrics.jsonl``, best
checkpoint, predictions, export and ``results.json``, equal to running it alone within float32 rounding.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import ml_collections
from flax import nnx

from adapt.core.errors import AdaptError, ConfigError
from adapt.experiment import run_trial
from adapt.experiment.trial import finish_trial, start_trial
from adapt.features.base import FEATURES
from adapt.models.registry import param_paths
from adapt.training.population import fit_population

#: Keys whose values are data to the train step: the optimizer's peak rate and decay live in its state, the seed
#: draws initial values, dropout masks and the data order, mixture weights draw the data, LoRA's alpha sets its
#: scale, a frozen variable (adapt.methods.lora.LoRAScale) that a population stacks per member, and dropout rates
#: (the model's, LoRA's) become data where members differ in them (adapt.models.layers.Rate).
PACKABLE = ("optimizer.learning_rate", "optimizer.weight_decay", "train.seed", "data.mixture.*.weight",
            "data.mixture_stages", "method.alpha", "model.hidden_dropout", "model.attention_dropout",
            "method.dropout")


def _flat(config) -> dict:
    """``{dotted key: value}`` of a config's leaves."""
    d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict) and v:
                yield from walk(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    return dict(walk(d, ""))


def _packable(key: str) -> bool:
    parts = key.split(".")
    return any(len(p) == len(parts) and all(a in ("*", b) for a, b in zip(p, parts))
               for p in (q.split(".") for q in PACKABLE))


def program_key(config) -> str:
    """What decides a trial's compiled program: its config without the :data:`PACKABLE` keys."""
    return json.dumps({k: v for k, v in _flat(config).items() if not _packable(k)}, sort_keys=True, default=repr)


def check_packable(configs: list) -> None:
    """One-line error naming the first key (not in :data:`PACKABLE`) in which the configs differ."""
    flats = [_flat(c) for c in configs]
    for i, flat in enumerate(flats[1:], 1):
        for key in sorted(set(flat) | set(flats[0])):
            if not _packable(key) and flat.get(key) != flats[0].get(key):
                raise ConfigError(f"trials 0 and {i} of the population differ in {key} ({flats[0].get(key)!r} vs "
                                  f"{flat.get(key)!r}), which needs its own compiled program; only "
                                  f"{', '.join(PACKABLE)} may differ")


def _share_parameters(model: nnx.Module, base: nnx.Module) -> None:
    """Point ``model``'s parameters that equal ``base``'s at ``base``'s arrays, so a population holds its frozen
    pretrained weights once (the members' own, trained or freshly initialised ones, differ and stay)."""
    theirs = dict(param_paths(nnx.state(base, nnx.Param)))
    same = [(path, theirs[path].get_value()) for path, var in param_paths(nnx.state(model, nnx.Param))
            if path in theirs and var.shape == theirs[path].shape and var.dtype == theirs[path].dtype
            and bool(jnp.array_equal(var.get_value(), theirs[path].get_value()))]
    if same:
        nnx.update(model, nnx.from_flat_state(same))


def run_population(configs: list, workdirs: list[str]) -> list:
    """Train and evaluate the trials ``configs`` (in ``workdirs``) as one population; returns what
    :func:`~adapt.experiment.trial.run_trial` returns for each, or the :class:`~adapt.core.errors.AdaptError` that ended
    that trial (a failed member does not stop the others). A population of one is that trial run alone."""
    if len(configs) != len(workdirs) or not configs:
        raise ConfigError(f"run_population: {len(configs)} configs for {len(workdirs)} run folders")
    if len(configs) == 1:
        return [run_trial(configs[0], workdirs[0])]
    for f in FEATURES.values():  # a feature whose trials train alone (Feature.solo): DP-SGD, multi-task ...
        if f.solo and any(f.enabled(c) for c in configs):
            raise ConfigError(f"{f.key}: {f.solo}")
    check_packable(configs)
    started = []
    for config, workdir in zip(configs, workdirs):
        started.append(start_trial(config, workdir))
        if len(started) > 1:
            _share_parameters(started[-1].trial.trainer.model, started[0].trial.trainer.model)
    fits = fit_population([s.trial.trainer for s in started], [s.train for s in started],
                          [s.eval_data for s in started])
    out = []
    for s, fit in zip(started, fits):
        try:
            out.append(fit if isinstance(fit, AdaptError) else finish_trial(s, fit))
        except AdaptError as e:
            out.append(e)
    return out
