"""The train and eval steps: pure functions of (state, batch), jitted once with explicit shardings.

The train step draws its key as ``fold_in(state.rng, state.step)`` (then one key per micro-batch), runs
the objective's ``prepare`` (masked-LM masking) and loss per micro-batch, adds up gradients and
statistics over ``accum`` micro-batches with ``lax.scan``, divides by the total weight (so accumulation
equals one big batch), adds the adaptation method's penalty (once per step) and applies one optimizer
update. The forward pass sees the parameters as the method perturbs them (Mixout); evaluation never
does. Micro-batch i takes rows i, i+A, i+2A, ... so every device holds its share of every micro-batch.
A :class:`StepExtension` changes how the rows are laid out over the micro-batches, what a micro-batch's gradient
is and how the summed gradients become the step's; DP-SGD is one (:class:`adapt.training.dp.DPSGD`: each
micro-batch gives the sum of its examples' clipped gradients, and noise is added once to their total). Without one
the step is :class:`PlainStep`'s.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from adapt.core.host_memory import KeptHeap
from adapt.core.sharding import Rules, axis_rules, without_axes
from adapt.methods.base import Method
from adapt.models import layers, moe, splash, vocab
from adapt.training.state import (
    STACKED,
    Model,
    TrainState,
    stacked_shardings,
    trial_axes,
)


def _micro_batches(batch: dict, accum: int) -> dict:  # [B, ...] -> [A, B/A, ...]
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1), batch)


class StepExtension(Protocol):
    """What a feature changes in the one train step (a trial's feature supplies it: DP-SGD's is
    :class:`adapt.training.dp.DPSGD`). ``loss_fn(params, frozen, anchors, batch, key) -> (loss_sum, sums)`` is a
    micro-batch's objective."""

    max_batch_size: int  # rows of every step's batch (0: train.batch_size)

    def arrange(self, batch: dict, accum: int) -> dict:
        """``batch`` [B, ...] with its rows in the order micro-batch i takes rows i, i + A, ... of."""

    def grad_fn(self, loss_fn):
        """``fn(params, frozen, anchors, batch, key) -> (grads, sums)``: a micro-batch's gradients and objective sums,
        both added up over the micro-batches."""

    def combine(self, grads, sums: dict, key: jax.Array):
        """The step's gradient from the micro-batches' summed ``grads`` and ``sums``; ``key``: the step's."""


class PlainStep:
    """The step without an extension: the gradient of the summed loss, divided by the total weight (so
    accumulation equals one big batch)."""

    max_batch_size = 0

    def arrange(self, batch: dict, accum: int) -> dict:
        return batch

    def grad_fn(self, loss_fn):
        return jax.grad(loss_fn, has_aux=True)

    def combine(self, grads, sums: dict, key: jax.Array):
        return jax.tree.map(lambda g: g / jnp.maximum(sums["weight"], 1.0), grads)


def make_train_step(model: Model, objective, tx: optax.GradientTransformation, accum: int = 1,
                    method: Method | None = None, extension: StepExtension | None = None, loss_chunks: int = 1):
    """``loss_chunks``: a language model's vocabulary head and loss run over that many chunks of the length
    (:mod:`adapt.models.vocab`)."""
    method = method or Method()
    extension = extension or PlainStep()

    def micro_loss(params, frozen, anchors, batch, key):
        batch = objective.prepare(batch, jax.random.fold_in(key, 1))
        seen = method.perturb(params, anchors, jax.random.fold_in(key, 2))
        with vocab.chunks(loss_chunks), moe.collect() as balance:
            outputs = model(seen, frozen, batch, key)
        sums, _ = objective.loss(outputs, batch)
        loss_sum = sums["loss_sum"]
        if balance:  # a mixture of experts' load-balancing loss: coefficient x loss on top of the objective's mean
            loss_sum = loss_sum + balance[0].coefficient * balance[0].loss * sums["weight"]
            sums = {**sums, "router_loss": balance[0].loss}
        return loss_sum, sums

    grad_fn = extension.grad_fn(micro_loss)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(state.rng, state.step)
        if accum == 1:
            grads, sums = grad_fn(state.params, state.frozen, state.anchors, batch, key)
        else:
            micro = _micro_batches(extension.arrange(batch, accum), accum)

            def body(carry, xs):
                i, mb = xs
                out = grad_fn(state.params, state.frozen, state.anchors, mb, jax.random.fold_in(key, i))
                return jax.tree.map(jnp.add, carry, out), None

            first = jax.tree.map(lambda x: x[0], micro)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                 jax.eval_shape(grad_fn, state.params, state.frozen, state.anchors, first, key))
            (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
        grads = extension.combine(grads, sums, key)
        extra = {"router_loss": sums.pop("router_loss") / accum} if "router_loss" in sums else {}
        if type(method).penalty is not Method.penalty:  # once per step, not per token
            extra["penalty"], penalty_grads = jax.value_and_grad(method.penalty)(state.params, state.anchors)
            grads = jax.tree.map(jnp.add, grads, penalty_grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**sums, **extra, "grad_norm": optax.tree.norm(grads),
                   "tokens": jnp.sum(batch.get("attention_mask", batch["input_ids"]) != 0)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_population_step(train_step, spmd_axes: tuple = (), frozen_axes=None, rates: dict | None = None):
    """``train_step`` over a population: every field of the state but ``frozen`` and the batch carry a leading
    trial axis ``[N, ...]``; of ``frozen``, the leaves whose ``frozen_axes`` entry is 0 do (those that differ
    between members, like LoRA's scale), the others are shared. ``rates`` gives the values of the dropout rates
    that are data (``{name: (threshold [N], divisor [N])}``, see :class:`adapt.models.layers.Rate`). ``active``
    (bool ``[N]``) keeps a member that has stopped (early stopping, a non-finite loss) exactly where it was. The
    members share one program: what differs between them (learning rate and weight decay in the optimizer state,
    seeds, initial values, data, dropout rates) is data."""
    axes = TrainState(step=0, params=0, frozen=frozen_axes, opt_state=0, rng=0, anchors=0)
    rates = rates or {}

    def member_step(state: TrainState, batch: dict, member_rates: dict):
        with layers.dropout_rates(member_rates):
            return train_step(state, batch)

    members = jax.vmap(member_step, in_axes=(axes, 0, 0), out_axes=(axes, 0), spmd_axis_name=spmd_axes or None)

    def population_step(state: TrainState, batch: dict, active: jax.Array) -> tuple[TrainState, dict]:
        new, metrics = members(state, batch, rates)

        def keep(n, o):  # [N, ...]
            return jnp.where(active.reshape(-1, *(1,) * (n.ndim - 1)), n, o)

        return new.replace(**{f: jax.tree.map(keep, getattr(new, f), getattr(state, f)) for f in STACKED}), metrics

    return population_step


def make_eval_step(model: Model, objective, loss_chunks: int = 1):
    """-> ``eval_step(state, batch, index) -> (sums, predictions, outputs)``: the objective's loss and its
    per-example ``outputs`` (None for an objective without them); only evaluation computes these."""
    per_example = getattr(objective, "outputs", None)

    def eval_step(state: TrainState, batch: dict, index: jax.Array):
        batch = objective.prepare(batch, jax.random.fold_in(jax.random.PRNGKey(0), index))
        with vocab.chunks(loss_chunks):
            outputs = model(state.params, state.frozen, batch, None)
        sums, predictions = objective.loss(outputs, batch)
        return sums, predictions, per_example(outputs, batch) if per_example else None

    return eval_step


class Steps:
    """The jitted train and eval steps for one model, objective, optimizer and mesh.

    Tracing happens under the mesh, the sharding rules and the remat policy, so activation constraints
    and rematerialisation are baked into the compiled steps. With ``population`` (the number of members, their
    batches' sharding, which frozen leaves they stack, and their dropout rates that are data) the train step is
    the population's (:func:`make_population_step`) over the stacked state; evaluation is always one member's.
    ``extension``: what changes the train step (:class:`StepExtension`, e.g. DP-SGD's). ``loss_chunks``: see
    :func:`make_train_step`. ``attention``: ``train.attention`` (:data:`adapt.models.splash.KERNELS`): whether the
    steps run TPU's splash kernel where it applies (``auto``: on a TPU mesh). ``moe_dispatch``: ``train.moe_dispatch``
    (:data:`adapt.models.moe.DISPATCH`), how a mixture of experts reaches its experts.
    """

    def __init__(self, model: Model, objective, tx, shardings: TrainState, batch_sharding: NamedSharding,
                 *, rules: Rules, accum: int = 1, remat: str = "none", method: Method | None = None,
                 population: tuple | None = None, extension: StepExtension | None = None, loss_chunks: int = 1,
                 attention: str = "auto", moe_dispatch: str = "sorted"):
        self.mesh, self.rules, self.remat, self.moe_dispatch = batch_sharding.mesh, rules, remat, moe_dispatch
        platform = self.mesh.devices.flat[0].platform
        self.splash = splash.chosen(attention, platform)
        self._interpret = platform != "tpu"
        replicated = NamedSharding(self.mesh, PartitionSpec())
        train_step = make_train_step(model, objective, tx, accum, method, extension, loss_chunks)
        self._train_rules = rules
        if population is None:
            self._train = jax.jit(train_step, in_shardings=(shardings, batch_sharding),
                                  out_shardings=(shardings, replicated), donate_argnums=0)
        else:  # (members, their batches' sharding, frozen_axes, rates): train(state, batch, active), stacked state
            members, members_batch, frozen_axes, rates = population
            stacked = stacked_shardings(shardings, self.mesh, rules, members, frozen_axes)
            axes = trial_axes(self.mesh, rules, members)
            self._train_rules = without_axes(rules, axes)  # inside vmap, a member's activations leave them out
            self._train = jax.jit(make_population_step(train_step, axes, frozen_axes, rates),
                                  in_shardings=(stacked, members_batch, replicated),
                                  out_shardings=(stacked, replicated), donate_argnums=0)
        self._eval = jax.jit(make_eval_step(model, objective, loss_chunks),
                             in_shardings=(shardings, batch_sharding, replicated))
        # Enter it around a loop of train steps on the CPU: see adapt/core/host_memory.py.
        self.heap, self._compiled = KeptHeap(self.mesh.devices.flat[0].platform == "cpu"), {}
        self._last_eval = None  # the last eval step's outputs, waited for before the next step in the heap

    def context(self, rules: Rules | None = None):
        """The mesh, sharding rules (default the run's), remat policy and attention kernel the steps are traced under
        (a probe evaluates in it too)."""
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(axis_rules(self.rules if rules is None else rules))
        stack.enter_context(layers.remat(self.remat))
        stack.enter_context(moe.dispatching(self.moe_dispatch))
        if self.splash:
            stack.enter_context(splash.use(interpret=self._interpret))
        return stack

    def lower(self, step: str, state: TrainState, batch: dict, *rest) -> jax.stages.Lowered:
        """The ``"train"`` or ``"eval"`` step lowered for ``state`` and ``batch`` (arrays, or ``ShapeDtypeStruct``s
        with shardings, e.g. on a mesh of devices this machine does not own: :mod:`adapt.plan`), under the context
        it runs in; ``rest``: the eval step's index, a population's ``active``."""
        if step not in ("train", "eval"):
            raise ValueError(f"step={step!r}; expected 'train' or 'eval'")
        with self.context(self._train_rules if step == "train" else None):
            return (self._train if step == "train" else self._eval).lower(state, batch, *rest)

    def train(self, state: TrainState, batch: dict, *active) -> tuple[TrainState, dict]:
        """One train step; a population's also takes ``active`` (bool ``[N]``, see :func:`make_population_step`)."""
        with self.context(self._train_rules):
            return self._between_steps(self._train, state, batch, *active)(state, batch, *active)

    def eval(self, state: TrainState, batch: dict, index: int):
        index = jnp.asarray(index, jnp.int32)
        with self.context():
            self._last_eval = self._between_steps(self._eval, state, batch, index)(state, batch, index)
            return self._last_eval

    def _between_steps(self, step, state: TrainState, batch: dict, *rest):
        """In the kept heap, one step's temporaries at a time: the last (train or eval) step's are freed
        before this one's are allocated, so their pages serve it, and the heap is measured (and trimmed)
        while no step runs. For a new batch shape the step is compiled ahead, to widen the heap's slack by the
        step's temporaries; returns what to call: that executable (calling the jitted step would trace and lower
        it again before finding it compiled), or ``step`` itself outside the kept heap."""
        if not self.heap.active:
            return step
        jax.block_until_ready((state, self._last_eval))
        self._last_eval = None
        key = (step is self._train, tuple((x.shape, x.dtype) for x in jax.tree.leaves(batch)))
        if key not in self._compiled:
            self._compiled[key] = step.lower(state, batch, *rest).compile()
            self.heap.allow(self._compiled[key].memory_analysis().temp_size_in_bytes)
        self.heap.check()
        return self._compiled[key]
