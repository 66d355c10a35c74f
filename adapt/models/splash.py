"""TPU's splash attention, a flash-attention kernel (Pallas) that ships with JAX, in place of our attention.

Our attention (:func:`adapt.models.layers.dot_product_attention`) makes the float32 scores of a block of queries
against every key, ``[B, N, R, S]``, in memory: at 2,048 tokens that is most of a Llama step's memory traffic
(``docs/guides/planning.md``). A flash kernel keeps its tiles on chip and never writes them out. Inside :func:`use`
(the train and eval steps enter it for ``train.attention``: ``auto`` on a TPU mesh, or ``splash``),
:func:`adapt.models.layers.attention_mask` gives a :class:`~adapt.models.layers.SegmentMask` (the segment ids, not
the ``[B, T, S]`` mask) and attention runs :func:`attend` where the kernel applies: self-attention over a length
that is a multiple of 128, without dropout, a sliding window, a prompt or a prefix, with the length unsharded (and
not bf16 under a float32 default matmul precision, which Mosaic cannot compile).
Elsewhere the mask is made whole and ours runs.

The kernel runs per device (``jax.shard_map`` over the batch and head axes that the sharding rules give
``[B, T, N, H]``), each example's documents kept apart by their segment ids, and causally in a decoder.
Off a TPU it runs in Pallas' interpret mode (slow: how its numbers are tested, ``tests/models/test_splash.py``).
Padding tokens (segment 0) attend to each other there, where ours gives them an average of the values: neither
reaches a real token or the loss. XLA counts the kernel as no FLOPs: the planner counts attention analytically.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from adapt.core.sharding import logical_to_spec

#: ``train.attention``'s values: ``auto`` (the kernel on a TPU mesh, ours elsewhere), ``xla`` (ours), ``splash``.
KERNELS = ("auto", "xla", "splash")
_INTERPRET: contextvars.ContextVar[bool | None] = contextvars.ContextVar("adapt_splash", default=None)


@contextlib.contextmanager
def use(interpret: bool):
    """Attention inside the block runs the splash kernel where it applies; ``interpret``: in Pallas' interpreter
    (off a TPU)."""
    token = _INTERPRET.set(interpret)
    try:
        yield
    finally:
        _INTERPRET.reset(token)


def active() -> bool:
    return _INTERPRET.get() is not None


def chosen(name: str, platform: str) -> bool:
    """Whether ``train.attention=name`` runs the kernel on devices of ``platform``."""
    if name not in KERNELS:
        raise ValueError(f"train.attention={name!r}; expected one of {', '.join(KERNELS)}")
    return name == "splash" or (name == "auto" and platform == "tpu")


def _block(length: int) -> int:
    return next(b for b in (512, 256, 128) if length % b == 0)


def _float32_dots() -> bool:
    """Whether ``jax_default_matmul_precision`` asks float32 of every matmul: Mosaic then refuses to compile the
    kernel's bf16 matmuls ("Bad lhs type"), read when the step is lowered, so ours runs instead."""
    return str(jax.config.jax_default_matmul_precision).lower() in ("highest", "float32")


def attend(q, k, v, segments, *, causal: bool, scale: float, softcap: float | None = None):
    """q ``[B, T, N, H]``, k/v ``[B, T, K, H]`` (N a multiple of K), ``segments [B, T]`` -> ``[B, T, N, H]``, or None
    where the kernel does not apply (no mesh set, a length not a multiple of 128, keys of another length, the length
    sharded, bf16 under float32 matmul precision). ``softcap``: the scores soft-capped as ours are."""
    t, s = q.shape[1], k.shape[1]
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or t != s or t % 128 or (q.dtype == jnp.bfloat16 and _float32_dots() and not _INTERPRET.get()):
        return None
    q_spec = logical_to_spec(("batch", "length", "heads", "head_dim"), q.shape, mesh)
    kv_spec = logical_to_spec(("batch", "length", "kv_heads", "head_dim"), k.shape, mesh)
    if any(spec[i] is not None for spec in (q_spec, kv_spec) for i in (1, 3)) or q_spec[2] != kv_spec[2]:
        return None  # (query heads split over other devices than their key heads: a device's would not be a group)
    # Pallas' TPU ops take half a second to import: only a step that runs the kernel pays it
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernels
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    interpret, block = bool(_INTERPRET.get()), _block(t)

    def local(q, k, v, segments):  # one device's [b, T, n, H], [b, T, k, H], [b, T]
        n = q.shape[2]
        mask = masks.MultiHeadMask([(masks.CausalMask if causal else masks.FullMask)((t, t))] * n)
        sizes = kernels.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                                   block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                                   block_kv_dq=block)
        kernel = kernels.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret,
                                         attn_logits_soft_cap=softcap)

        def one(q, k, v, ids):  # one example, heads first: [n, T, H], [k, T, H], [T]
            return kernel(q, k, v, segment_ids=kernels.SegmentIds(q=ids, kv=ids))

        heads_first = (x.swapaxes(1, 2) for x in ((q * scale).astype(q.dtype), k, v))
        return jax.vmap(one)(*heads_first, segments).swapaxes(1, 2)

    return jax.shard_map(local, in_specs=(q_spec, kv_spec, kv_spec, PartitionSpec(q_spec[0], None)),
                         out_specs=q_spec, check_vma=False)(q, k, v, segments)
