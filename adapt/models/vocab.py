"""A language model's vocabulary head, over the whole sequence or in chunks of it.

The logits of a language model are the largest tensor of its train step: float32 ``[B, T, V]``, so Llama-3's
128,256 words over 64 x 2,048 tokens are 64 GiB, and their gradient as much again. Inside :func:`chunks` (the
train and eval steps enter it for ``train.loss_chunks`` > 1) a family's head gives :class:`HeadInputs`, the
hidden states and the head, in place of the logits, and the objective reduces them chunk by chunk
(:meth:`HeadInputs.reduce`): a chunk's logits ``[B, T/n, V]`` are made, scored and dropped, and made again in the
backward pass (a scan over the chunks, each rematerialised). One chunk's logits live at a time; the cost is the
head's forward matmul done twice. The statistics are the sums over the whole logits added in another order, so
they agree to float32 rounding (``tests/models/test_vocab.py``). Outside the steps (generation, lm-eval, export)
heads give logits as always.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from adapt.core.sharding import shard

_CHUNKS: contextvars.ContextVar[int] = contextvars.ContextVar("adapt_loss_chunks", default=1)


@contextlib.contextmanager
def chunks(n: int):
    """Heads called inside the block give :class:`HeadInputs` split into ``n`` chunks of the length (1: logits)."""
    if n < 1:
        raise ValueError(f"loss chunks {n}; expected at least 1")
    token = _CHUNKS.set(n)
    try:
        yield
    finally:
        _CHUNKS.reset(token)


@dataclasses.dataclass(frozen=True)
class HeadInputs:
    """A vocabulary head not yet applied: ``head(hidden)`` would be the logits."""
    hidden: jax.Array  # [B, T, D], what the head reads
    head: Callable[[jax.Array], jax.Array]  # [B, t, D] -> float32 logits [B, t, V]
    chunks: int

    def reduce(self, fn, *per_token: jax.Array) -> dict:
        """The sum over the length's chunks of ``fn(logits [B, t, V], *arrays [B, t])`` (a dict of arrays that add
        up), each chunk's logits rematerialised in the backward pass. ``per_token``: ``[B, T]`` arrays, cut as the
        logits are; the length is padded to a multiple of the chunks with zeros (so a validity mask pads False)."""
        b, length = self.hidden.shape[:2]
        t = -(-length // self.chunks)  # tokens per chunk

        def split(x):  # [B, T, ...] -> [n, B, t, ...]
            x = jnp.pad(x, [(0, 0), (0, self.chunks * t - length)] + [(0, 0)] * (x.ndim - 2))
            return x.reshape(b, self.chunks, t, *x.shape[2:]).swapaxes(0, 1)

        def one(h, *rest):  # h [B, t, D]
            return fn(self.head(shard(h, ("batch", "length", "embed"))), *rest)

        @jax.checkpoint
        def body(total, xs):
            return jax.tree.map(jnp.add, total, one(*xs)), None

        xs = tuple(split(x) for x in (self.hidden, *per_token))
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(one, *(x[0] for x in xs)))
        return jax.lax.scan(body, zeros, xs)[0]


def logits(hidden: jax.Array, head: Callable[[jax.Array], jax.Array]):
    """``head(hidden)``: float32 logits ``[B, T, V]``; inside :func:`chunks` (n > 1), :class:`HeadInputs` instead."""
    n = _CHUNKS.get()
    return head(hidden) if n == 1 else HeadInputs(hidden, head, n)

