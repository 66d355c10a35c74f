"""DP-SGD's part of the train step (the rest, its config section, accounting and planning, is the privacy
feature, :mod:`adapt.features.privacy`): each example's gradient clipped to global L2 norm <= C, the clipped
gradients summed over the logical batch's real rows, Gaussian noise N(0, (sigma C)^2) added once per logical batch
and the sum divided by the expected batch size. A :class:`DPSGD` is the train step's extension
(:class:`adapt.training.steps.StepExtension`): its micro-batches are :func:`real_first`, its gradient
:func:`clipped_sum` and its step's gradient :func:`noisy_mean`."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from adapt.data.batches import REAL

NOISE = 0x4E015E  # folded into the step's key for the noise (micro-batches fold in 0 .. accum - 1)


@dataclasses.dataclass(frozen=True)
class DPSGD:
    """A run's DP-SGD: what the step uses (clip_norm, noise_multiplier, expected_batch_size) and what the accountant
    reads (examples n, max_batch_size, steps, delta, accountant)."""
    clip_norm: float
    noise_multiplier: float
    expected_batch_size: int
    max_batch_size: int
    examples: int
    steps: int
    delta: float
    accountant: str = "pld"

    @property
    def sampling_rate(self) -> float:
        return self.expected_batch_size / self.examples

    def arrange(self, batch: dict, accum: int) -> dict:  # the step's extension (StepExtension)
        return real_first(batch, accum)

    def grad_fn(self, loss_fn):
        return clipped_sum(loss_fn, self.clip_norm)

    def combine(self, grads, sums: dict, key: jax.Array):
        return noisy_mean(grads, jax.random.fold_in(key, NOISE), self)


def clip(grads, clip_norm: float):
    """One example's gradients scaled to global L2 norm <= ``clip_norm`` (unchanged when already within)."""
    norm = optax.tree.norm(grads)
    scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny))
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)


def per_example_grads(loss_fn):
    """``loss_fn(params, frozen, anchors, batch, key) -> (loss_sum, sums)`` -> ``fn(params, frozen, anchors, batch,
    keys [B]) -> (grads [B, ...], sums [B, ...])``: each row's gradient of its loss (its ``loss_sum`` over its
    ``weight``), alone (a batch of one), with its own key."""
    def example_loss(params, frozen, anchors, row, key):
        loss_sum, sums = loss_fn(params, frozen, anchors, jax.tree.map(lambda x: x[None], row), key)
        return loss_sum / jnp.maximum(sums["weight"], 1.0), sums

    return jax.vmap(jax.grad(example_loss, has_aux=True), in_axes=(None, None, None, 0, 0))


def clipped_sum(loss_fn, clip_norm: float):
    """``loss_fn`` as above -> ``fn(params, frozen, anchors, batch, key) -> (grads, sums)``: the sum over the batch's
    real rows (``batch["real"]``) of their clipped gradients, and of their objective sums; a batch with no real row
    computes nothing (zeros)."""
    per_example = per_example_grads(loss_fn)

    def compute(params, frozen, anchors, batch, key):
        batch = dict(batch)
        real = batch.pop(REAL).astype(jnp.float32)  # [B]
        grads, sums = per_example(params, frozen, anchors, batch, jax.random.split(key, real.shape[0]))
        clipped = jax.vmap(clip, in_axes=(0, None))(grads, clip_norm)  # [B, ...]
        add = functools.partial(jnp.tensordot, real, axes=1)
        return jax.tree.map(add, clipped), jax.tree.map(add, sums)

    def fn(params, frozen, anchors, batch, key):
        args = (params, frozen, anchors, batch, key)
        zeros = lambda *a: jax.tree.map(jnp.zeros_like, jax.eval_shape(compute, *a))  # noqa: E731
        return jax.lax.cond(jnp.any(batch[REAL] != 0), compute, zeros, *args)

    return fn


def real_first(batch: dict, accum: int) -> dict:
    """``batch`` with its real rows moved so that they fill micro-batches 0, 1, ... in turn (micro-batch i takes
    rows i, i + A, ...: ``adapt.training.steps._micro_batches``), so the micro-batches after them are all
    padding and compute nothing (jax_privacy's padding at the end). The rows' order does not change the sum."""
    rows = batch[REAL].shape[0]
    per = rows // accum
    order = jnp.argsort(batch[REAL] == 0, stable=True)  # real rows first, in order
    slots = [(j // per) + accum * (j % per) for j in range(rows)]  # the row the j-th real row goes to
    take = order[jnp.asarray(sorted(range(rows), key=slots.__getitem__))]
    return jax.tree.map(lambda x: x[take], batch)


def noisy_mean(grad_sum, key, dp: DPSGD):
    """(``grad_sum`` + N(0, (sigma C)^2) on every coordinate) / the expected batch size: one draw per logical batch."""
    leaves, tree = jax.tree.flatten(grad_sum)
    std = dp.noise_multiplier * dp.clip_norm
    return tree.unflatten([(g + std * jax.random.normal(k, g.shape, g.dtype)) / dp.expected_batch_size
                           for g, k in zip(leaves, jax.random.split(key, len(leaves)))])
