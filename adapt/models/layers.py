"""Building blocks shared by the model families: layers that carry logical axis names, attention masks,
rotary embeddings and the attention kernel.

Shapes: B batch, T query length, S key length, D model width, N query heads, K key/value heads,
H head width, V vocabulary.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import zlib
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.ad_checkpoint import checkpoint_name

from adapt.core.sharding import shard
from adapt.models import splash

if TYPE_CHECKING:  # the name is for the annotation only: kv_cache needs nothing from here
    from adapt.models import kv_cache

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
}


class Adapter(nnx.Param):
    """A parameter an adaptation method added to a pretrained model (LoRA factors, adapters, prompts):
    an ``nnx.Param`` kind, so it trains and shards like any parameter, but export refuses it unmerged."""


class SharedAdapter(Adapter):
    """An :class:`Adapter` that every layer of a stack reads whole (prefix tuning's projection encoder): a scan
    over stacked layers (:mod:`adapt.models.scan`) hands it to each step as it is, not sliced."""


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each layer's input
    "dots": jax.checkpoint_policies.save_from_both_policies(  # keep matmul outputs, redo the rest
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names("dense")),  # see dense_dot_general
}
_REMAT: contextvars.ContextVar[str] = contextvars.ContextVar("adapt_remat", default="none")


@contextlib.contextmanager
def remat(policy: str):
    """Rematerialise every transformer layer called inside the block (in the backward pass, recompute
    what ``policy`` does not save instead of keeping it in memory)."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat policy {policy!r}; expected one of {', '.join(REMAT_POLICIES)}")
    token = _REMAT.set(policy)
    try:
        yield
    finally:
        _REMAT.reset(token)


def run_layer(layer: nnx.Module, *args):
    """``layer(*args)``, rematerialised when a :func:`remat` policy is active."""
    policy = _REMAT.get()
    if policy == "none":
        return layer(*args)
    return nnx.remat(lambda module, *a: module(*a), policy=REMAT_POLICIES[policy])(layer, *args)


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def dense_dot_general(x, kernel, dimension_numbers, precision=None, preferred_element_type=None,
                      out_sharding=None):
    """``nnx.Linear``'s contraction, ``x [..., in]`` with ``kernel [in, out]``, whose backward takes the
    kernel's gradient as one matrix product over the flattened tokens, ``x [M, in]^T @ dy [M, out]``.
    Autodiff's transpose of the batched contraction came out as ``dy^T x`` with ``dy`` copied to
    ``[out, M]`` first: on XLA:CPU those copies and that layout cost a sixth of a MiniLM train step
    (1.25 -> 1.05 s, ``benchmarks/train_throughput.py``). The output is named ``dense`` for the remat
    policies, which do not see the matmul inside the custom VJP."""
    return checkpoint_name(_dense(x, kernel, dimension_numbers, precision, preferred_element_type, out_sharding),
                           "dense")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _dense(x, kernel, dimension_numbers, precision, preferred_element_type, out_sharding):
    return jax.lax.dot_general(x, kernel, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, out_sharding=out_sharding)


def _dense_fwd(x, kernel, dimension_numbers, precision, preferred_element_type, out_sharding):
    return _dense(x, kernel, dimension_numbers, precision, preferred_element_type, out_sharding), (x, kernel)


def _dense_bwd(dimension_numbers, precision, preferred_element_type, out_sharding, residuals, dy):
    x, kernel = residuals  # [..., in], [in, out]; dy [..., out]
    d_x = jnp.matmul(dy, kernel.T, precision=precision)
    d_kernel = jnp.matmul(x.reshape(-1, x.shape[-1]).T, dy.reshape(-1, dy.shape[-1]), precision=precision)
    return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


def linear(d_in: int, d_out: int, axes: tuple[str, str], *, bias: bool, std: float, dtype, rngs: nnx.Rngs):
    """A dense layer (kernel ``[d_in, d_out]``) whose parameters carry logical ``axes``."""
    return nnx.Linear(
        d_in, d_out, use_bias=bias, dtype=dtype, param_dtype=jnp.float32, dot_general=dense_dot_general,
        kernel_init=nnx.initializers.normal(std), kernel_metadata={"logical_axes": axes},
        bias_metadata={"logical_axes": axes[1:]}, rngs=rngs)


def embed(num: int, features: int, axes: tuple[str, str], *, std: float, dtype, rngs: nnx.Rngs):
    return nnx.Embed(num, features, dtype=dtype, param_dtype=jnp.float32,
                     embedding_init=nnx.initializers.normal(std),
                     embedding_metadata={"logical_axes": axes}, rngs=rngs)


def layer_norm(features: int, eps: float, *, dtype, rngs: nnx.Rngs, bias: bool = True):
    # use_fast_variance=False: E[(x-mean)^2], as PyTorch computes it, keeps float32 parity at 1e-6.
    return nnx.LayerNorm(features, epsilon=eps, dtype=dtype, use_fast_variance=False, use_bias=bias,
                         scale_metadata={"logical_axes": ("norm",)},
                         bias_metadata={"logical_axes": ("norm",)}, rngs=rngs)


def rms_norm(features: int, eps: float, *, dtype, rngs: nnx.Rngs):
    return nnx.RMSNorm(features, epsilon=eps, dtype=dtype, use_fast_variance=False,
                       scale_metadata={"logical_axes": ("norm",)}, rngs=rngs)


def _mix32(x: jax.Array) -> jax.Array:  # MurmurHash3's 32-bit finaliser: a bijection on uint32
    x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
    x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def hashed_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform ``uint32`` bits of ``shape``: two rounds of a bijective hash over each element's index,
    keyed by two words drawn from ``key``. Threefry-quality bits cost about 30x more on CPU, where they
    made dropout a fifth of a BERT train step; a dropout mask needs independence, not cryptography.
    Elementwise over broadcasted iotas, so it shards like ``x``."""
    seed = jax.random.bits(key, (2,), jnp.uint32)
    index, stride = jnp.zeros(shape, jnp.uint32), 1
    for dim in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, dim) * jnp.uint32(stride % 2**32)
        stride *= shape[dim]
    return _mix32(_mix32(index * jnp.uint32(0x9E3779B9) + seed[0]) ^ seed[1])


@dataclasses.dataclass(frozen=True)
class Rate:
    """A dropout rate that is data, not a constant of the traced model: where a population's members differ in a
    rate (``hidden_dropout`` of a family's config, a LoRA layer's ``dropout``), the population's model holds
    ``Rate(name)`` instead, and each member's value comes from :func:`dropout_rates` inside its step."""
    name: str


_RATES: contextvars.ContextVar[dict] = contextvars.ContextVar("adapt_rates", default={})


def rate_values(rate: float) -> tuple[np.uint32, np.float32]:
    """What dropout at ``rate`` computes with: the keep threshold on :func:`hashed_bits` and the divisor
    ``1 - rate``, both as a constant rate gives them (so a rate as data drops exactly the same elements)."""
    return np.uint32(round(rate * 2**32)), np.float32(1.0 - rate)


@contextlib.contextmanager
def dropout_rates(values: dict):
    """Inside the block, ``Rate(name)`` drops with ``values[name]``: a pair from :func:`rate_values` (arrays, a
    population member's, traced)."""
    token = _RATES.set(values)
    try:
        yield
    finally:
        _RATES.reset(token)


def _values(rate):
    """``rate``'s (threshold, divisor): traced for a :class:`Rate`, else constants."""
    if isinstance(rate, Rate):
        if rate.name not in _RATES.get():
            raise ValueError(f"dropout rate {rate.name!r} is data, but no value was given for it (dropout_rates)")
        return _RATES.get()[rate.name]
    return jnp.uint32(round(rate * 2**32)), 1.0 - rate


def keep_mask(key: jax.Array, shape: tuple[int, ...], rate) -> jax.Array:
    """Dropout's boolean mask: each element kept with probability ``1 - rate``."""
    return hashed_bits(key, shape) >= _values(rate)[0]


def _drop(x: jax.Array, keep: jax.Array | None, rate) -> jax.Array:
    """``x`` where ``keep``, scaled by ``1 / (1 - rate)``, else 0; ``x`` itself at a constant rate of 0."""
    if isinstance(rate, Rate):
        return jnp.where(keep, x / _values(rate)[1].astype(x.dtype), 0).astype(x.dtype)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype) if rate else x


def _draw(rngs: nnx.Rngs, rate) -> jax.Array:
    """The next dropout key of ``rngs``. A constant rate of 0 draws none; a :class:`Rate` always draws one, so
    where its member's value is 0 the stream's count is set back: the keys after it are those the member alone
    draws."""
    key = rngs.dropout()
    if isinstance(rate, Rate):
        count = rngs.dropout.count
        count[...] = count[...] - (_values(rate)[0] == 0).astype(count[...].dtype)
    return key


def dropout(x: jax.Array, rate, rngs: nnx.Rngs | None) -> jax.Array:
    """Inverted dropout at ``rate`` (a float or a :class:`Rate`); the identity when ``rngs`` is None
    (evaluation) or the rate is a constant 0."""
    if rngs is None or rate == 0.0:
        return x
    return _drop(x, keep_mask(_draw(rngs, rate), x.shape, rate), rate)


_STEP_KEY: contextvars.ContextVar = contextvars.ContextVar("adapt_step_key", default=None)


@contextlib.contextmanager
def step_key(key: jax.Array | None):
    """Inside the block, :func:`module_dropout` draws its masks from ``key`` (None: no dropout)."""
    token = _STEP_KEY.set(key)
    try:
        yield
    finally:
        _STEP_KEY.reset(token)


_LAYER: contextvars.ContextVar = contextvars.ContextVar("adapt_layer", default=None)


@contextlib.contextmanager
def layer_number(i: int | jax.Array):
    """Inside the block, the code runs transformer layer ``i`` (a traced int32 inside a scan over stacked layers):
    :func:`module_dropout` folds it into its key. :func:`adapt.models.scan.apply` sets it."""
    token = _LAYER.set(i)
    try:
        yield
    finally:
        _LAYER.reset(token)


def current_layer() -> int | jax.Array | None:
    """The number of the transformer layer running (:func:`layer_number`): an int, a traced int32 inside a scan
    over stacked layers, None outside the layers."""
    return _LAYER.get()


def module_dropout(x: jax.Array, rate: float, name: str) -> jax.Array:
    """Dropout for layers that are not handed ``rngs`` (those an adaptation method injects into a model):
    the mask comes from the train step's :func:`step_key` folded with a hash of the layer's ``name`` (its module
    path without the layer number, :func:`adapt.models.registry.unnumbered`) and, inside a transformer layer, with
    the layer's number, so that a layer draws the same mask in the unrolled and the scanned model; the identity
    outside a train step."""
    key = _STEP_KEY.get()
    if key is None or rate == 0.0:
        return x
    key = jax.random.fold_in(key, zlib.crc32(name.encode()))
    if (i := current_layer()) is not None:
        key = jax.random.fold_in(key, i)
    return dropout(x, rate, nnx.Rngs(dropout=key))


@struct.dataclass
class SegmentMask:
    """The mask :func:`attention_mask` stands for, as its segment ids: what the splash kernel reads
    (:mod:`adapt.models.splash`); :func:`dense` makes the ``[B, T, T]`` mask of it."""
    segments: jax.Array  # [B, T]
    causal: bool = struct.field(pytree_node=False)


def dense(mask) -> jax.Array:
    """``[B, T, S]``: a :class:`SegmentMask` made whole, any other mask as it is."""
    return _mask(mask.segments, causal=mask.causal) if isinstance(mask, SegmentMask) else mask


def attention_mask(segment_ids: jax.Array, *, causal: bool, window: int | None = None,
                   virtual: int = 0) -> jax.Array | SegmentMask:
    """``[B, T]`` segment ids (0 = padding, equal ids = same document) -> ``[B, T, T]`` boolean mask (inside
    :func:`adapt.models.splash.use`, without a window or virtual tokens: a :class:`SegmentMask`).

    A 0/1 padding mask is the one-document case, so the HF ``attention_mask`` is accepted as is; packed
    rows number their documents 1, 2, ... so documents never attend to each other. ``virtual``: the rows
    start with that many virtual tokens (prompt tuning, segment id -1, see :func:`prepend_prompt`), which
    every real token sees whatever its document and window, and which see each other (causally in a
    decoder) and, in an encoder, every real token.
    """
    if splash.active() and window is None and not virtual:
        return SegmentMask(segment_ids, causal)
    return _mask(segment_ids, causal=causal, window=window, virtual=virtual)


def _mask(segment_ids, *, causal: bool, window: int | None = None, virtual: int = 0) -> jax.Array:
    seg_q, seg_k = segment_ids[:, :, None], segment_ids[:, None, :]
    mask = (seg_q == seg_k) & (seg_k != 0)
    t = segment_ids.shape[1]
    q_idx, k_idx = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
    if causal:
        mask &= (k_idx <= q_idx)[None]
    if window is not None:  # a decoder's last `window` keys; an encoder's keys within `window` either side
        mask &= ((q_idx - k_idx < window) if causal else (jnp.abs(q_idx - k_idx) <= window))[None]
    if virtual:
        seen = (seg_k < 0) & (seg_q != 0)  # every token but padding sees the prompt...
        if causal:
            seen &= (k_idx <= q_idx)[None]  # ...the prompt itself causally (real tokens come after it)
        else:
            seen |= (seg_q < 0) & (seg_k > 0)  # in an encoder the prompt sees every real token
        mask |= seen
    return mask


# ---- prompt and prefix tuning (adapt.methods.prefix): the identity unless a method installed a module ----

def prepend_prompt(backbone: nnx.Module, x: jax.Array, segments: jax.Array, positions: jax.Array | None = None,
                   cache: kv_cache.KVCache | None = None):
    """Prompt tuning's hook, called on the first layer's input. With a ``backbone.prompt`` module (whose
    call gives the virtual tokens ``[P, D]``): ``x [B, T, D]`` -> ``[B, P+T, D]`` with the prompt in front
    of every row, ``segments`` -> ``[B, P+T]`` (-1 for the prompt) and ``positions`` -> ``[B, P+T]`` (-P..-1
    for the prompt: real tokens keep theirs). Returns those and P, for :func:`attention_mask` and
    :func:`drop_prompt`; without a prompt, the inputs unchanged and 0. A ``cache`` that is no longer fresh
    holds the prompt already (a decoding step after the first call): the inputs unchanged and 0 too."""
    prompt = getattr(backbone, "prompt", None)
    if prompt is None or (cache is not None and not cache.fresh):
        return x, segments, positions, 0
    virtual = prompt()  # [P, D]
    b, n = x.shape[0], virtual.shape[0]
    x = jnp.concatenate([jnp.broadcast_to(virtual.astype(x.dtype), (b, *virtual.shape)), x], axis=1)
    segments = jnp.concatenate([jnp.full((b, n), -1, jnp.int32), segments.astype(jnp.int32)], axis=1)
    if positions is not None:
        positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(-n, 0, dtype=positions.dtype), (b, n)), positions], 1)
    return shard(x, ("batch", "length", "embed")), segments, positions, n


def drop_prompt(x: jax.Array, n: int) -> jax.Array:
    """``[B, P+T, D]`` -> ``[B, T, D]``: the hidden states of the real tokens (``n`` = P from
    :func:`prepend_prompt`)."""
    return x[:, n:] if n else x


def prepend_prefix(attn: nnx.Module, k: jax.Array, v: jax.Array, mask: jax.Array):
    """Prefix tuning's hook, called on an attention's keys and values (after RoPE). With an
    ``attn.prefix`` module (whose call gives the layer's keys and values ``[P, K, H]``): k/v
    ``[B, S, K, H]`` -> ``[B, P+S, K, H]`` and mask ``[B, T, S]`` -> ``[B, T, P+S]``, every query seeing
    the prefix; without one, the inputs unchanged."""
    prefix = getattr(attn, "prefix", None)
    if prefix is None:
        return k, v, mask
    mask = dense(mask)
    pk, pv = prefix()  # [P, K, H] each
    b, n = k.shape[0], pk.shape[0]
    k, v = (shard(jnp.concatenate([jnp.broadcast_to(p.astype(y.dtype), (b, *p.shape)), y], axis=1),
                  ("batch", "length", "kv_heads", "head_dim")) for p, y in ((pk, k), (pv, v)))
    return k, v, jnp.concatenate([jnp.ones((*mask.shape[:2], n), bool), mask], axis=-1)


# ---- the KV cache of generation (adapt.models.generate): only used when a model call is given one ----


def _query_blocks(t: int, s: int, causal: bool) -> list[tuple[int, int]]:
    """Query row ranges: one block, or (causal self-attention) up to 8 blocks of at least 64 rows, so that
    block ``[a, b)`` reads keys ``[0, s - t + b)`` only and the masked upper triangle is mostly never computed."""
    if not causal or t > s or t <= 64:
        return [(0, t)]
    size = max(64, -(-t // 8))
    return [(a, min(a + size, t)) for a in range(0, t, size)]


def dot_product_attention(q, k, v, mask, *, scale: float, dropout_rate: float, rngs: nnx.Rngs | None,
                          causal: bool = False, softcap: float | None = None):
    """q ``[B, T, N, H]``, k/v ``[B, S, K, H]`` (N a multiple of K: grouped-query attention), mask
    ``[B, T, S]`` (or a :class:`SegmentMask`: see :mod:`adapt.models.splash`) -> ``[B, T, N, H]``. Softmax in
    float32. ``causal`` says the mask is (at least) causal,
    query i seeing no key after ``S - T + i`` (any extra keys sit in front: a prefix), which lets query
    blocks skip the keys after them; the result is the same. ``softcap``: the scaled scores become
    ``softcap * tanh(scores / softcap)`` before the mask (Gemma 2's soft-capping).

    Heads are laid out ``[B*K, G*T, H]``: dots with one batch dimension run about twice as fast on
    XLA:CPU as the ``[B, K]``-batched einsum, and the G query heads sharing a key head form one matrix."""
    b, t, n, h = q.shape
    s, kv = k.shape[1], k.shape[2]
    g = n // kv
    rate = dropout_rate if rngs is not None else 0.0
    if isinstance(mask, SegmentMask):  # inside splash.use: the kernel, where it applies
        out = None if rate else splash.attend(q, k, v, mask.segments, causal=mask.causal, scale=scale,
                                              softcap=softcap)
        if out is not None:
            return shard(out, ("batch", "length", "heads", "head_dim"))
        mask = dense(mask)
    drop = _values(rate) if isinstance(rate, Rate) else None  # a rate that is data enters as an operand
    q = q.reshape(b, t, kv, g, h).transpose(0, 2, 3, 1, 4).reshape(b * kv, g, t, h)
    k = k.transpose(0, 2, 1, 3).reshape(b * kv, s, h)
    v = v.transpose(0, 2, 1, 3).reshape(b * kv, s, h)
    outs = []
    for start, stop in _query_blocks(t, s, causal):
        rows, keys = stop - start, (stop + s - t if causal and t <= s else s)
        block = q[:, :, start:stop].reshape(b * kv, g * rows, h)
        key = _draw(rngs, rate) if rate else None
        out = _attend(block, k[:, :keys], v[:, :keys], mask[:, start:stop, :keys], key, drop, scale, rate, (b, kv, g),
                      softcap)
        outs.append(out.reshape(b, kv, g, rows, h))  # out [B*K, G*rows, H]
    out = jnp.concatenate(outs, axis=3).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
    return shard(out, ("batch", "length", "heads", "head_dim"))


def _given(rate, drop):
    """Inside the custom VJP a :class:`Rate`'s values are its operand ``drop``, never a traced value from outside."""
    return dropout_rates({rate.name: drop}) if isinstance(rate, Rate) else contextlib.nullcontext()


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _attend(q, k, v, mask, key, drop, scale: float, rate, heads: tuple[int, int, int], softcap: float | None):
    """One query block: q ``[B*K, G*R, H]``, k/v ``[B*K, S, H]``, mask ``[B, R, S]``, ``heads`` = (B, K, G)
    -> ``[B*K, G*R, H]``; attention dropout at ``rate`` with masks drawn from ``key`` (``drop``: a
    :class:`Rate`'s values, else None); scores soft-capped at ``softcap`` (None: not)."""
    return _attend_fwd(q, k, v, mask, key, drop, scale, rate, heads, softcap)[0]


def _attend_fwd(q, k, v, mask, key, drop, scale, rate, heads, softcap):
    b, kv, g = heads
    logits = jnp.matmul(q, k.swapaxes(1, 2), preferred_element_type=jnp.float32)
    logits = logits.reshape(b, kv, g, -1, k.shape[1]) * scale  # [B, K, G, R, S]
    capped = None
    if softcap:
        capped = jnp.tanh(logits / softcap)  # kept: the backward pass scales by its derivative, 1 - tanh^2
        logits = capped * softcap
    probs = jax.nn.softmax(jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min), axis=-1)
    with _given(rate, drop):
        keep = keep_mask(key, probs.shape, rate) if rate else None
        out = jnp.matmul(_drop(probs, keep, rate).reshape(*q.shape[:2], -1).astype(v.dtype), v)
    return out, (q, k, v, mask, keep, probs, out, drop, capped)


def _attend_bwd(scale, rate, heads, softcap, residuals, d_out):
    """FlashAttention's backward: d_logits = P * (dP - rowsum(dO * O)), which skips the softmax's own
    autodiff graph (its max, exp and normalisation) and reuses the saved dropout mask."""
    q, k, v, mask, keep, probs, out, drop, capped = residuals
    flat = (*q.shape[:2], k.shape[1])  # [B*K, G*R, S]
    d_dropped = jnp.matmul(d_out, v.swapaxes(1, 2), preferred_element_type=jnp.float32).reshape(probs.shape)
    with _given(rate, drop):
        d_v = jnp.matmul(_drop(probs, keep, rate).reshape(flat).swapaxes(1, 2).astype(d_out.dtype), d_out)
        d_probs = _drop(d_dropped, keep, rate)
    row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1).reshape(*probs.shape[:-1], 1)
    d_scores = probs * (d_probs - row) * (scale if capped is None else scale * (1 - capped * capped))
    d_logits = jnp.where(mask[:, None, None], d_scores, 0).reshape(flat).astype(q.dtype)
    return jnp.matmul(d_logits, k), jnp.matmul(d_logits.swapaxes(1, 2), q), d_v, None, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def rope_inverse_frequencies(head_dim: int, rope: dict) -> np.ndarray:
    """Inverse frequencies ``[H/2]`` for the HF ``rope_parameters`` dict (default, linear, llama3)."""
    base = rope["rope_theta"]
    inv = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return inv.astype(np.float32)
    if kind == "linear":
        return (inv / rope["factor"]).astype(np.float32)
    if kind == "llama3":
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old_len = rope["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"unsupported rope_type {kind!r}; supported: default, linear, llama3")


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotate ``x [B, T, N, H]`` by ``positions [B, T]`` in HF's rotate-half layout."""
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [B, T, H/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated * sin).astype(x.dtype)


def default_positions(segment_ids: jax.Array) -> jax.Array:
    """``[B, T]`` positions that restart at 0 at each new document of a packed row."""
    t = segment_ids.shape[1]
    idx = jnp.broadcast_to(jnp.arange(t), segment_ids.shape)
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return idx - start_idx
