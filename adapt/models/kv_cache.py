"""The KV cache generation decodes with (:mod:`adapt.models.generate`): every layer's keys and values of the prompt
and the tokens drawn so far, in a fixed-size buffer, read by the families' attention when a ``cache=`` is given.

Shapes: B batch, T query length, S cache length, K key/value heads, H head width.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from adapt.core.sharding import LAYERS, shard


@functools.partial(jax.tree_util.register_dataclass, data_fields=("keys", "values", "segments", "index"),
                   meta_fields=("fresh",))
@dataclasses.dataclass
class KVCache:
    """Every attention layer's keys and values, for decoding one token at a time. Slot ``s`` of the buffers
    (``keys``/``values``: one ``[B, K, S, H]`` per layer, heads before slots so that a step's attention reads
    them without a transpose) holds the token a call wrote there; ``segments [B, S]`` what each slot holds, as
    :func:`~adapt.models.layers.attention_mask` reads segment ids (0: nothing or padding, never attended; 1: a
    token; -1: a virtual token of prompt tuning); ``index`` is the first slot the next call writes. For stacked
    layers (``model.scan_layers``) ``keys``/``values`` are one ``[L, B, K, S, H]`` each, scanned with the layers
    (:func:`adapt.models.scan.apply_cached`).

    A model call given the cache (``model(ids, mask, positions, cache=cache)``) writes its T tokens at slots
    ``index..index+T-1`` and attends over every slot, so T = 1 decodes one token after the earlier ones. The
    call updates the cache object in place (its arrays are replaced by the written ones): a jitted step returns
    the object it passed in. ``fresh`` (static): nothing written yet, so the call starts the sequence (prompt
    tuning's virtual tokens go in front of it)."""
    keys: list | jax.Array  # a [B, K, S, H] per layer; stacked layers': one [L, B, K, S, H]
    values: list | jax.Array
    segments: jax.Array  # [B, S] int32
    index: jax.Array  # [] int32
    fresh: bool = True

    @classmethod
    def create(cls, layers: int, batch: int, length: int, kv_shape: tuple[int, int], dtype, *,
               stacked: bool = False) -> KVCache:
        """An empty cache of ``length`` slots for ``layers`` attention layers of ``kv_shape`` (K, H); ``stacked``:
        for stacked layers, the buffers ``[L, ...]``."""
        k, h = kv_shape
        if stacked:
            def buffer():
                return shard(jnp.zeros((layers, batch, k, length, h), dtype), (LAYERS, *_CACHE_AXES))

            keys, values = buffer(), buffer()
        else:
            def buffer():
                return shard(jnp.zeros((batch, k, length, h), dtype), _CACHE_AXES)

            keys, values = [buffer() for _ in range(layers)], [buffer() for _ in range(layers)]
        return cls(keys, values, jnp.zeros((batch, length), jnp.int32), jnp.zeros((), jnp.int32))

    def attend(self, segments: jax.Array, windows) -> dict:
        """Reserve the slots of this call's tokens (``segments [B, T]``, after
        :func:`~adapt.models.layers.prepend_prompt`) and return, for each sliding ``window`` in ``windows`` (None:
        none), the mask ``[B, T, S]`` over the slots that :func:`~adapt.models.layers.attention_mask` gives the
        whole sequence's rows of these tokens. The attention layers then write their keys and values into the
        reserved slots (:meth:`LayerCache.attention`)."""
        t, s = segments.shape[1], self.segments.shape[1]
        self.segments = jax.lax.dynamic_update_slice(self.segments, segments.astype(jnp.int32), (0, self.index))
        q_idx, k_idx = self.index + jnp.arange(t)[:, None], jnp.arange(s)[None, :]  # [T, 1], [1, S] slots
        seg_q, seg_k = segments[:, :, None], self.segments[:, None, :]
        causal = (k_idx <= q_idx)[None] & (seg_k != 0)
        seen = causal & (seg_k < 0) & (seg_q != 0)  # the virtual tokens, whatever the window
        masks = {w: (causal & (seg_q == seg_k) & ((q_idx - k_idx < w)[None] if w is not None else True)) | seen
                 for w in windows}
        self.index, self.fresh = self.index + t, False
        return masks

    def layer(self, i: int) -> LayerCache:
        return LayerCache(self, i)

    def one_layer(self, keys: jax.Array, values: jax.Array) -> LayerCache:
        """A layer's view of this cache's slots, given its buffers ``[B, K, S, H]`` (a slice of stacked ones): the
        attention writes into the view's, which the caller stacks back."""
        return LayerCache(KVCache([keys], [values], self.segments, self.index, fresh=False), 0)


_CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")


@dataclasses.dataclass
class LayerCache:
    """Layer ``i``'s view of a :class:`KVCache`, handed to its attention module."""
    cache: KVCache
    i: int

    def attention(self, attn: nnx.Module, q, k, v, mask, *, scale: float, softcap: float | None = None):
        """The cache path of an attention module ``attn``: this call's keys and values ``[B, T, K, H]`` (after
        RoPE) go into the slots :meth:`KVCache.attend` reserved, then q ``[B, T, N, H]`` attends over every slot
        (``mask [B, T, S]``) and over ``attn``'s prefix (prefix tuning, as
        :func:`~adapt.models.layers.prepend_prefix`: seen by every query) -> ``[B, T, N, H]``.
        :func:`~adapt.models.layers.dot_product_attention` without dropout (``softcap`` as there), on the cache's
        layout."""
        c, start = self.cache, (0, 0, self.cache.index - k.shape[1], 0)
        for buffers, new in ((c.keys, k), (c.values, v)):
            update = new.transpose(0, 2, 1, 3).astype(buffers[self.i].dtype)  # [B, K, T, H]
            buffers[self.i] = shard(jax.lax.dynamic_update_slice(buffers[self.i], update, start), _CACHE_AXES)
        k, v = c.keys[self.i], c.values[self.i]  # [B, K, S, H]
        prefix = getattr(attn, "prefix", None)
        if prefix is not None:
            pk, pv = (jnp.broadcast_to(p.transpose(1, 0, 2).astype(k.dtype), (k.shape[0], p.shape[1], *p.shape[::2]))
                      for p in prefix())  # [P, K, H] -> [B, K, P, H]
            k, v = jnp.concatenate([pk, k], axis=2), jnp.concatenate([pv, v], axis=2)
            mask = jnp.concatenate([jnp.ones((*mask.shape[:2], pk.shape[2]), bool), mask], axis=-1)
        b, t, n, h = q.shape
        kv, s = k.shape[1], k.shape[2]
        q = q.reshape(b, t, kv, n // kv, h).transpose(0, 2, 3, 1, 4).reshape(b, kv, -1, h)  # [B, K, G*T, H]
        logits = jnp.matmul(q, k.swapaxes(2, 3), preferred_element_type=jnp.float32).reshape(b, kv, -1, t, s)
        logits = logits * scale
        if softcap:
            logits = jnp.tanh(logits / softcap) * softcap
        probs = jax.nn.softmax(jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min), axis=-1)
        out = jnp.matmul(probs.reshape(b, kv, -1, s).astype(v.dtype), v)  # [B, K, G*T, H]
        out = out.reshape(b, kv, n // kv, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
        return shard(out, ("batch", "length", "heads", "head_dim"))
