"""Greedy decoding for quick looks at a causal LM (sanity checks, demos); not a serving engine.

The row is a fixed-size buffer, so the whole loop compiles once; there is no KV cache, each step
re-reads the prefix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def greedy_generate(model: nnx.Module, input_ids: list[int], max_new_tokens: int,
                    eos_token_id: int | None = None) -> list[int]:
    """``input_ids`` followed by up to ``max_new_tokens`` greedily chosen tokens (stops after EOS)."""
    graphdef, state = nnx.split(model)
    n = len(input_ids)
    buffer = np.zeros((1, n + max_new_tokens), np.int32)  # [1, T]
    buffer[0, :n] = input_ids

    @jax.jit
    def next_token(state, buffer, length):
        mask = (jnp.arange(buffer.shape[1]) < length)[None].astype(jnp.int32)
        logits = nnx.merge(graphdef, state)(buffer, mask)  # [1, T, V]
        return jnp.argmax(logits[0, length - 1])

    for length in range(n, n + max_new_tokens):
        token = int(next_token(state, buffer, length))
        buffer[0, length] = token
        if token == eos_token_id:
            return buffer[0, :length + 1].tolist()
    return buffer[0].tolist()
