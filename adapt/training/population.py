"""Populations: several trials trained as one compiled program, the train step mapped (``vmap``) over a trial axis.

Trials that differ only in values the program does not depend on (the learning rate and weight decay, which
live in the optimizer state; seeds, hence initial values, dropout masks and data order; mixture weights,
hence data; LoRA's alpha, a frozen variable) train as *members* of one population. Each member's
:class:`~adapt.training.Trainer` begins as for :meth:`~adapt.training.Trainer.fit` (its own optimizer state,
checkpoints, metrics, early stopping and data); then every field of their train states but ``frozen`` is
stacked on a leading trial axis ``[N, ...]`` (sharded by the ``trial`` rule of the mesh rules), the frozen
parameters (the base model under LoRA and the like) are one shared copy (a frozen leaf that differs between
members, like LoRA's scale, is stacked too), and one step (:func:`adapt.training.steps.make_population_step`)
trains them all. After each step every member logs, evaluates, stops early and saves its checkpoints as it would
alone (its slice of the state); a member that stops (early stopping, a non-finite loss) is held where it was
while the others go on. The result equals training each member alone within float32 rounding: the step is the
same function, batched.

    fits = fit_population(trainers, train_streams, eval_data)   # one FitResult (or the member's error) each

A killed population resumes from the last step that every member kept a checkpoint of.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from adapt.core.errors import AdaptError, ConfigError
from adapt.data.formats import IGNORE
from adapt.models import layers
from adapt.training.checkpoints import Checkpointer
from adapt.training.loop import Trainer
from adapt.training.state import (
    STACKED,
    Model,
    TrainState,
    global_batch,
    population_batch_sharding,
    stacked_shardings,
)
from adapt.training.steps import Steps


def stack_batches(batches: list[dict]) -> dict:
    """Members' batches (numpy ``[B, ...]``) as one ``[N, B, ...]``; sequence columns of different bucket widths
    are padded to the widest (0, or -100 for labels), which the attention mask and the loss ignore."""
    out = {}
    for k in batches[0]:
        arrays = [b[k] for b in batches]
        width = max(a.shape[1] for a in arrays) if arrays[0].ndim > 1 else None
        if width is not None:
            pad = IGNORE if k == "labels" else 0
            arrays = [np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=pad)
                      for a in arrays]
        out[k] = np.stack(arrays)
    return out


def common_start(trainers: list[Trainer]) -> int | None:
    """The last step every member kept a checkpoint of (None: none, the population starts from step 0)."""
    kept = []
    for t in trainers:
        ckpt = Checkpointer(t.workdir, keep=t.cfg.train.keep_checkpoints)
        kept.append(set(ckpt.all_steps()))
        ckpt.close()
    both = set.intersection(*kept)
    return max(both) if both else None


def _frozen(states: list[TrainState]) -> tuple[dict, dict]:
    """The population's frozen parameters and their vmap axes: a leaf every member has alike (the pretrained
    weights) is member 0's, shared (axis None); one that differs (LoRA's scale under different alphas) is stacked
    (axis 0)."""
    leaves = [jax.tree.leaves(s.frozen) for s in states]
    treedef = jax.tree.structure(states[0].frozen)
    out, axes = [], []
    for column in zip(*leaves):
        same = all(x is column[0] or bool(jnp.array_equal(x, column[0])) for x in column[1:])
        out.append(column[0] if same else jnp.stack(column))
        axes.append(None if same else 0)
    return jax.tree.unflatten(treedef, out), jax.tree.unflatten(treedef, axes)


def _statics(module: nnx.Module) -> dict:
    """``{(module path, attribute, field): value}``: the float constants of each module (a float attribute, a
    float field of a dataclass attribute such as a family's config), which may be dropout rates."""
    out = {}
    for path, node in nnx.iter_graph(module):
        if not isinstance(node, nnx.Module):
            continue
        for attr, value in vars(node).items():
            if isinstance(value, float):
                out[path, attr, None] = value
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                out.update(((path, attr, f.name), getattr(value, f.name)) for f in dataclasses.fields(value)
                           if f.compare and isinstance(getattr(value, f.name), float))
    return out


def _rates_as_data(trainers: list[Trainer]) -> tuple[Model, dict]:
    """The population's model and the values of its dropout rates that are data. Member 0's model, where every
    float constant in which the members differ (a dropout rate: nothing else may differ, :func:`check_packable`)
    is a :class:`~adapt.models.layers.Rate` named by its class and field (``BertConfig.hidden_dropout``,
    ``LoRALinear.dropout``), and ``{name: (threshold [N], divisor [N])}``, each member's values."""
    constants = [_statics(t.model) for t in trainers]
    differ = {k for k, v in constants[0].items() if any(c.get(k) != v for c in constants[1:])}
    if not differ:
        return trainers[0].static, {}
    model = nnx.merge(*nnx.split(trainers[0].model))  # new modules, the same arrays
    modules = dict(nnx.iter_graph(model))
    names, replaced = {}, {}
    for path, attr, field in differ:
        owner = getattr(modules[path], attr)
        name = f"{type(modules[path] if field is None else owner).__name__}.{field or attr}"
        names.setdefault(name, set()).add((path, attr, field))
        if field is None:
            setattr(modules[path], attr, layers.Rate(name))
        else:  # one new config per config object: the modules sharing it share the new one
            new = replaced.setdefault(id(owner), dataclasses.replace(owner))
            object.__setattr__(new, field, layers.Rate(name))
    for path, node in modules.items():
        for attr, value in list(vars(node).items()) if isinstance(node, nnx.Module) else ():
            if id(value) in replaced:
                setattr(node, attr, replaced[id(value)])
    rates = {}
    for name, keys in names.items():
        per_member = [{c[k] for k in keys} for c in constants]
        if any(len(v) > 1 for v in per_member):
            raise ConfigError(f"the population's members set {name} to different values within one model "
                              f"({sorted(per_member[0])}); a rate that is data must be one value per member")
        values = [layers.rate_values(v.pop()) for v in per_member]
        rates[name] = (np.array([t for t, _ in values]), np.array([d for _, d in values]))
    return Model(nnx.graphdef(model)), rates


def fit_population(trainers: list[Trainer], train_data: list, eval_data: list[dict]) -> list:
    """Train the members ``trainers`` (each with its ``train_data`` stream and ``eval_data``, as for
    :meth:`Trainer.fit`) as one population; returns each member's :class:`~adapt.training.FitResult`, or the
    :class:`~adapt.core.errors.AdaptError` that ended that member (the others go on)."""
    n, first = len(trainers), trainers[0]
    totals = [t.total_steps(d) for t, d in zip(trainers, train_data)]
    if len(set(totals)) > 1:
        raise ConfigError(f"the members of a population run {sorted(set(totals))} steps; they train in lockstep, so "
                          f"they must run the same number")
    members_batch = population_batch_sharding(first.mesh, first.rules, n, first.cfg.train.batch_size)
    start = common_start(trainers)
    runs, states = [], []
    for t, data, evals in zip(trainers, train_data, eval_data):
        run, state = t.begin(data, evals, start)
        runs.append(run)
        states.append(state)
    frozen, frozen_axes = _frozen(states)
    model, rates = _rates_as_data(trainers)
    t = first.cfg.train
    steps = Steps(model, first.objective, first.tx, first.shardings, first.batch_sharding, rules=first.rules,
                  accum=t.grad_accum, remat=t.remat, method=first.method, loss_chunks=t.loss_chunks,
                  attention=t.attention,
                  population=(n, members_batch, frozen_axes, rates))
    for trainer, run in zip(trainers, runs):  # one compiled program for all: member 0's (evaluation included)
        trainer.steps = run.steps = steps
    sharding = stacked_shardings(first.shardings, first.mesh, first.rules, n, frozen_axes)
    state = TrainState(frozen=jax.device_put(frozen, sharding.frozen),
                       **{f: jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *[getattr(s, f) for s in states]),
                                            getattr(sharding, f)) for f in STACKED})
    del states  # the members' own copies: only the stacked state stays
    take = jax.jit(lambda fields, i: jax.tree.map(lambda x: x[i], fields),
                   out_shardings={f: getattr(first.shardings, f) for f in STACKED})

    def member(i: int) -> TrainState:  # member i's train state now (its slice; the shared frozen leaves as they are)
        own = take({f: getattr(state, f) for f in STACKED}, jnp.int32(i))
        frozen_i = jax.tree.map(lambda x, a, sh: x if a is None else jax.device_put(x[i], sh), state.frozen,
                                frozen_axes, first.shardings.frozen)
        return TrainState(frozen=frozen_i, **own)

    active, errors = [not run.stopper.should_stop for run in runs], [None] * n  # resumed: some may have stopped

    def guarded(i: int, call) -> None:  # a member's own bad input or non-finite loss ends that member alone
        try:
            call()
        except AdaptError as e:
            errors[i], active[i] = e, False

    step = start or 0
    bar = tqdm(total=totals[0], initial=step, disable=jax.process_index() != 0, unit="step", dynamic_ncols=True)
    try:
        for i, run in enumerate(runs):
            guarded(i, lambda: run.evaluate_at_start(member(i)))
        with bar, steps.heap:
            while step < totals[0] and any(active):
                local = [run.train_data.next_batch() if on else None for run, on in zip(runs, active)]
                filler = next(b for b in local if b is not None)  # a stopped member's slot: computed, not kept
                batch = global_batch(stack_batches([b if b is not None else filler for b in local]), members_batch)
                state, metrics = steps.train(state, batch, jnp.asarray(active))
                step += 1
                bar.update(1)
                for i, run in enumerate(runs):
                    if active[i]:
                        mine = jax.tree.map(lambda x: x[i], metrics)
                        guarded(i, lambda: run.record(step, mine, lambda: member(i), bar))
                        active[i] = active[i] and not run.stopper.should_stop
        for i, run in enumerate(runs):
            if errors[i] is None:
                guarded(i, run.check)
    finally:
        for run in runs:
            run.close()
    return [errors[i] or trainers[i].end(runs[i], member(i)) for i in range(n)]

