"""Mixture-of-experts feed-forward blocks: top-k routing, dropless dispatch to the experts, and the router's
load-balancing loss, for the families whose layers have them (:mod:`adapt.models.mixtral`).

Routing: a linear router gives each token ``E`` logits; their float32 softmax's top ``k`` are the token's experts and
weights (renormalised to sum to 1 where the family says so: Mixtral always, Qwen3-MoE by ``norm_topk_prob``). Every
token reaches its k experts (no capacity, nothing dropped) by one of two exact dispatches (``DISPATCH``):

* ``sorted``: the N*k (token, expert) pairs sorted by expert, the tokens gathered into that order, each expert's
  contiguous group multiplied by its weights with ``jax.lax.ragged_dot`` (N*k rows of work), the results weighted and
  added back to their tokens;
* ``dense``: every expert on every token ``[N, E, F]``, the outputs of the unchosen ones weighted by 0 (E/k times the
  FLOPs, no gather, no sort).

The train and eval steps choose by ``train.moe_dispatch`` (:func:`dispatching`).

The load-balancing loss is Switch Transformer's (Fedus et al. 2022, eq. 4-6) as transformers computes it with
``output_router_logits=True``: over every layer's real tokens together, ``E * sum_e f_e * P_e`` with ``f_e`` the share
of top-k assignments that went to expert e and ``P_e`` its mean router probability. Each layer adds its counts to
:func:`no_stats`' vector ``[2E + 1]`` (carried through the layers), the backbone hands the total to :func:`record`,
and the train step, inside :func:`collect`, adds ``coefficient * loss`` to the objective (``router_aux_loss_coef`` of
the HF config). Outside :func:`collect` (evaluation, generation, export) nothing is recorded.

Shapes: N tokens, D model width, E experts, F expert width, k experts per token.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses

import jax
import jax.numpy as jnp

#: The dispatches (``train.moe_dispatch``): tokens sorted by expert and ragged matmuls, or every expert on every token.
DISPATCH = ("sorted", "dense")
_DISPATCH: contextvars.ContextVar[str] = contextvars.ContextVar("adapt_moe_dispatch", default="sorted")


@contextlib.contextmanager
def dispatching(name: str):
    """Sparse blocks called inside the block dispatch by ``name`` (:data:`DISPATCH`; outside: ``sorted``); the steps
    enter it for ``train.moe_dispatch``."""
    if name not in DISPATCH:
        raise ValueError(f"dispatch {name!r}; expected one of {', '.join(DISPATCH)}")
    token = _DISPATCH.set(name)
    try:
        yield
    finally:
        _DISPATCH.reset(token)


@dataclasses.dataclass
class Balance:
    """What one forward pass recorded: the load-balancing loss (float32 scalar) and its coefficient."""
    loss: jax.Array
    coefficient: float


_RECORDED: contextvars.ContextVar[list | None] = contextvars.ContextVar("adapt_moe_balance", default=None)


@contextlib.contextmanager
def collect():
    """Inside the block, a mixture-of-experts model's forward pass appends its :class:`Balance` to the yielded list."""
    recorded: list[Balance] = []
    token = _RECORDED.set(recorded)
    try:
        yield recorded
    finally:
        _RECORDED.reset(token)


def record(stats: jax.Array, num_experts: int, coefficient: float) -> None:
    """The backbone's summed :func:`layer_stats` as a :class:`Balance`, kept when :func:`collect` is active."""
    recorded = _RECORDED.get()
    if recorded is not None:
        recorded.append(Balance(balance_loss(stats, num_experts), coefficient))


def route(logits: jax.Array, k: int, normalize: bool) -> tuple[jax.Array, jax.Array]:
    """Router logits ``[N, E]`` -> each token's top-``k`` weights (float32) and experts ``[N, k]``."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, k)
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, experts


def no_stats(num_experts: int) -> jax.Array:
    """The load-balancing counts before the first layer: ``[2E + 1]`` zeros (assignments, probabilities, tokens)."""
    return jnp.zeros((2 * num_experts + 1,), jnp.float32)


def layer_stats(logits: jax.Array, experts: jax.Array, real: jax.Array) -> jax.Array:
    """One layer's counts over its real tokens (``real [N]``, 1 or 0): top-k assignments per expert ``[E]``, router
    probabilities summed per expert ``[E]``, and the number of tokens, as one vector ``[2E + 1]``."""
    e = logits.shape[-1]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # [N, E]
    real = real.astype(jnp.float32)
    assigned = jnp.sum(jax.nn.one_hot(experts, e, dtype=jnp.float32) * real[:, None, None], axis=(0, 1))
    return jnp.concatenate([assigned, jnp.sum(probs * real[:, None], axis=0), jnp.sum(real)[None]])


def balance_loss(stats: jax.Array, num_experts: int) -> jax.Array:
    """``E * sum_e f_e P_e`` from the layers' summed :func:`layer_stats`."""
    rows = jnp.maximum(stats[-1], 1.0)
    return num_experts * jnp.sum((stats[:num_experts] / rows) * (stats[num_experts:2 * num_experts] / rows))


def experts_ffn(x: jax.Array, weights: jax.Array, experts: jax.Array, gate_up: jax.Array, down: jax.Array,
                act) -> jax.Array:
    """``x [N, D]`` through each token's experts (``weights``, ``experts [N, k]``), weighted and summed -> ``[N, D]``.
    The experts' weights in transformers' layout: ``gate_up [E, 2F, D]`` (gate rows, then up rows), ``down [E, D, F]``;
    each expert computes ``down @ (act(gate @ x) * (up @ x))``; dispatched as :func:`dispatching` says."""
    n, k = experts.shape
    e, f = gate_up.shape[0], gate_up.shape[1] // 2
    if _DISPATCH.get() == "dense":
        gate, up = jnp.split(jnp.einsum("nd,efd->nef", x, gate_up.astype(x.dtype)), 2, axis=-1)  # [N, E, F] each
        y = jnp.einsum("nef,edf->ned", act(gate) * up, down.astype(x.dtype))  # [N, E, D]
        combine = jnp.sum(jax.nn.one_hot(experts, e, dtype=jnp.float32) * weights[..., None], axis=1)  # [N, E]
        return jnp.einsum("ne,ned->nd", combine.astype(x.dtype), y)
    flat = experts.reshape(-1)  # [N*k], pair p is token p // k's (p % k)-th choice
    order = jnp.argsort(flat, stable=True)  # the pairs grouped by expert
    token = order // k
    sizes = jnp.bincount(flat, length=e).astype(jnp.int32)  # [E]
    # bf16 operands at the precision they have: TPU's grouped-matmul kernel (Mosaic) refuses bf16 under a float32
    # jax_default_matmul_precision ("Bad lhs type"); float32 ones at the default precision, whatever it is
    precision = jax.lax.Precision.DEFAULT if x.dtype == jnp.bfloat16 else None
    h = jax.lax.ragged_dot(x[token], gate_up.astype(x.dtype).swapaxes(1, 2), sizes, precision=precision)  # [N*k, 2F]
    y = jax.lax.ragged_dot(act(h[:, :f]) * h[:, f:], down.astype(x.dtype).swapaxes(1, 2), sizes,
                           precision=precision)  # [N*k, D]
    y = y * weights.reshape(-1)[order][:, None].astype(y.dtype)
    return jnp.zeros_like(x).at[token].add(y)
