"""The Gemma family of decoders: Gemma 2 and Gemma 3 (text), as transformers' ``Gemma2ForCausalLM`` and
``Gemma3ForCausalLM`` compute them.

Both: a GeGLU MLP, RMSNorm scaling by ``1 + w`` (in float32), a norm before and after attention and before and after
the MLP, embeddings scaled by sqrt(hidden), tied embeddings, queries scaled by ``query_pre_attn_scalar ** -0.5``,
grouped-query attention, and local (sliding-window) and global layers as the config's ``layer_types`` say. Gemma 2
soft-caps attention scores and final logits (``attn_logit_softcapping``, ``final_logit_softcapping``); Gemma 3
normalises queries and keys and gives local and global layers their own RoPE (``rope_parameters`` per layer type:
base 10k local, 1M global, linear scaling on the larger models). Every number is read from the HF config.
The multimodal Gemma 3 checkpoints (4B and up, ``model_type`` ``gemma3``) and EmbeddingGemma's bidirectional
attention are refused in one line.

Submodules carry the HF names (``model.layers.N.pre_feedforward_layernorm``), so loading needs no renames.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from adapt.core.errors import CheckpointError
from adapt.core.sharding import shard
from adapt.models import kv_cache, scan, vocab
from adapt.models import layers as L
from adapt.models.registry import Dims, Family, MethodTargets, register


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float
    ropes: tuple  # per layer: its RoPE parameters as sorted items (hashable)
    windows: tuple  # per layer: sliding-window length or None
    scale: float  # the queries' scale, query_pre_attn_scalar ** -0.5
    attn_softcap: float | None
    final_softcap: float | None
    qk_norm: bool
    attention_bias: bool
    tie_embeddings: bool
    act: str
    init_std: float
    hidden_dropout: float
    attention_dropout: float
    dtype: str = "float32"
    scan_layers: bool = False  # the layers stacked [L, ...] and scanned (adapt.models.scan)
    hf: object = dataclasses.field(default=None, compare=False, hash=False, repr=False)


def config_from_hf(hf, dtype: str = "float32") -> GemmaConfig:
    if hf.model_type == "gemma3":
        raise CheckpointError("model_type 'gemma3' is a multimodal Gemma 3 (4B and up: a vision tower beside the text "
                          "model); only Gemma 3's text models load (model_type 'gemma3_text': 270M, 1B)")
    if getattr(hf, "use_bidirectional_attention", False):
        raise CheckpointError(f"{hf.model_type}: use_bidirectional_attention=True (EmbeddingGemma) is not supported; "
                          "the Gemma family is causal")
    types, rope = hf.layer_types, dict(hf.rope_parameters)
    per_type = set(rope) <= {"sliding_attention", "full_attention"}  # Gemma 3: one RoPE per layer type
    return GemmaConfig(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers, num_heads=hf.num_attention_heads, num_kv_heads=hf.num_key_value_heads,
        head_dim=hf.head_dim, rms_eps=hf.rms_norm_eps,
        ropes=tuple(tuple(sorted((rope[t] if per_type else rope).items())) for t in types),
        windows=tuple(hf.sliding_window if t == "sliding_attention" else None for t in types),
        scale=hf.query_pre_attn_scalar ** -0.5, attn_softcap=getattr(hf, "attn_logit_softcapping", None),
        final_softcap=getattr(hf, "final_logit_softcapping", None), qk_norm=hf.model_type == "gemma3_text",
        attention_bias=bool(getattr(hf, "attention_bias", False)), tie_embeddings=bool(hf.tie_word_embeddings),
        act=hf.hidden_activation, init_std=getattr(hf, "initializer_range", 0.02),
        hidden_dropout=getattr(hf, "hidden_dropout", 0.0), attention_dropout=hf.attention_dropout, dtype=dtype, hf=hf)


class GemmaRMSNorm(nnx.Module):
    """``x / rms(x) * (1 + w)`` in float32, cast back to ``x``'s dtype; ``w`` starts at 0 (HF stores ``w``)."""

    def __init__(self, features: int, eps: float):
        self.eps = eps
        self.scale = nnx.Param(jnp.zeros((features,), jnp.float32), logical_axes=("norm",))

    def __call__(self, x):  # [..., F]
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * (1.0 + self.scale[...])).astype(x.dtype)


class GemmaAttention(nnx.Module):
    def __init__(self, cfg: GemmaConfig, *, rngs: nnx.Rngs):
        d, n, k, h, dt = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.dtype
        b = cfg.attention_bias
        self.cfg = cfg
        self.q_proj = L.linear(d, n * h, ("embed", "heads"), bias=b, std=cfg.init_std, dtype=dt, rngs=rngs)
        self.k_proj = L.linear(d, k * h, ("embed", "kv_heads"), bias=b, std=cfg.init_std, dtype=dt, rngs=rngs)
        self.v_proj = L.linear(d, k * h, ("embed", "kv_heads"), bias=b, std=cfg.init_std, dtype=dt, rngs=rngs)
        self.o_proj = L.linear(n * h, d, ("heads", "embed"), bias=b, std=cfg.init_std, dtype=dt, rngs=rngs)
        if cfg.qk_norm:
            self.q_norm = GemmaRMSNorm(h, cfg.rms_eps)
            self.k_norm = GemmaRMSNorm(h, cfg.rms_eps)

    def __call__(self, x, mask, positions, inv_freq, rngs, cache: kv_cache.LayerCache | None = None):  # x [B, T, D]
        """``mask [B, T, T]``; with a ``cache``, ``[B, T, S]`` over its slots (whose keys and values it reads).
        ``inv_freq [H/2]``: this layer's RoPE."""
        cfg = self.cfg
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, cfg.num_heads, cfg.head_dim)
        k = self.k_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        v = self.v_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = shard(L.apply_rope(q, positions, inv_freq), ("batch", "length", "heads", "head_dim"))
        k = shard(L.apply_rope(k, positions, inv_freq), ("batch", "length", "kv_heads", "head_dim"))
        if cache is not None:  # generation: over the cache's slots
            out = cache.attention(self, q, k, v, mask, scale=cfg.scale, softcap=cfg.attn_softcap)
        else:
            k, v, mask = L.prepend_prefix(self, k, v, mask)  # prefix tuning; else unchanged
            out = L.dot_product_attention(q, k, v, mask, scale=cfg.scale, dropout_rate=cfg.attention_dropout,
                                          rngs=rngs, causal=True, softcap=cfg.attn_softcap)
        return self.o_proj(out.reshape(b, t, -1))


class GemmaMLP(nnx.Module):
    def __init__(self, cfg: GemmaConfig, *, rngs: nnx.Rngs):
        d, f, dt, std = cfg.hidden_size, cfg.intermediate_size, cfg.dtype, cfg.init_std
        self.gate_proj = L.linear(d, f, ("embed", "mlp"), bias=False, std=std, dtype=dt, rngs=rngs)
        self.up_proj = L.linear(d, f, ("embed", "mlp"), bias=False, std=std, dtype=dt, rngs=rngs)
        self.down_proj = L.linear(f, d, ("mlp", "embed"), bias=False, std=std, dtype=dt, rngs=rngs)
        self.act = L.activation(cfg.act)

    def __call__(self, x):  # [B, T, D]
        h = shard(self.act(self.gate_proj(x)) * self.up_proj(x), ("batch", "length", "mlp"))
        return self.down_proj(h)


class GemmaDecoderLayer(nnx.Module):
    def __init__(self, cfg: GemmaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, eps = cfg.hidden_size, cfg.rms_eps
        self.input_layernorm = GemmaRMSNorm(d, eps)
        self.self_attn = GemmaAttention(cfg, rngs=rngs)
        self.post_attention_layernorm = GemmaRMSNorm(d, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(d, eps)
        self.mlp = GemmaMLP(cfg, rngs=rngs)
        self.post_feedforward_layernorm = GemmaRMSNorm(d, eps)

    def __call__(self, x, mask, positions, inv_freq, rngs, cache: kv_cache.LayerCache | None = None):
        p = self.cfg.hidden_dropout
        h = self.self_attn(self.input_layernorm(x), mask, positions, inv_freq, rngs, cache)
        x = x + L.dropout(self.post_attention_layernorm(h), p, rngs)
        x = x + L.dropout(self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x))), p, rngs)
        return shard(x, ("batch", "length", "embed"))


class GemmaModel(nnx.Module):
    """The decoder stack: ``input_ids [B, T]`` -> final hidden states ``[B, T, D]``."""

    def __init__(self, cfg: GemmaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = L.embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), std=cfg.init_std,
                                    dtype=cfg.dtype, rngs=rngs)
        self.layers = scan.layers(lambda rngs: GemmaDecoderLayer(cfg, rngs=rngs), cfg.num_layers, rngs,
                                  stacked=cfg.scan_layers)
        self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_eps)

    def embed(self, input_ids):  # [B, T] -> [B, T, D], scaled by sqrt(D) in the compute dtype, as HF does
        x = self.embed_tokens(input_ids)
        return x * jnp.asarray(self.cfg.hidden_size ** 0.5, x.dtype)

    def __call__(self, input_ids, attention_mask=None, positions=None, *, rngs: nnx.Rngs | None = None,
                 cache: kv_cache.KVCache | None = None):
        """``attention_mask [B, T]``: 0 for padding, else a document id (a packed row numbers its documents 1, 2,
        ...); ``positions [B, T]`` default to restarting at 0 per document. With a ``cache`` (generation) the
        tokens follow those it holds: give their ``positions``."""
        cfg = self.cfg
        segments = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
        if positions is None:
            positions = L.default_positions(segments)
        x = shard(self.embed(input_ids), ("batch", "length", "embed"))
        x, segments, positions, virtual = L.prepend_prompt(self, x, segments, positions, cache)  # prompt tuning
        windows = set(cfg.windows)
        if cache is None:
            masks = {w: L.attention_mask(segments, causal=True, window=w, virtual=virtual) for w in windows}
        else:  # generation (never rematerialised): each layer writes its keys and values into the cache
            masks = cache.attend(segments, windows)  # [B, T, S] each
        ropes = {r: jnp.asarray(L.rope_inverse_frequencies(cfg.head_dim, dict(r))) for r in set(cfg.ropes)}
        kinds = {(w, r): (masks[w], ropes[r]) for w, r in zip(cfg.windows, cfg.ropes)}  # one object per kind of layer
        per_layer = [kinds[w, r] for w, r in zip(cfg.windows, cfg.ropes)]  # (mask, inv_freq [H/2]) of each layer
        if cache is None:
            x = scan.apply(self.layers, lambda layer, x, rngs, extra: L.run_layer(layer, x, extra[0], positions,
                                                                                  extra[1], rngs),
                           x, rngs, per_layer)
        else:
            x = scan.apply_cached(self.layers, lambda layer, x, extra, view: layer(x, extra[0], positions, extra[1],
                                                                                   rngs, view),
                                  x, per_layer, cache)
        return self.norm(L.drop_prompt(x, virtual))


class GemmaForCausalLM(nnx.Module):
    """``input_ids [B, T]`` -> next-token logits ``[B, T, V]`` (float32, soft-capped where the config says; in a step
    with ``train.loss_chunks`` > 1, :class:`adapt.models.vocab.HeadInputs`); with a ``cache`` (generation, see
    ``GemmaModel``) those after the last token only, ``[B, 1, V]``."""

    def __init__(self, cfg: GemmaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.model = GemmaModel(cfg, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = L.linear(cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), bias=False,
                                    std=cfg.init_std, dtype=cfg.dtype, rngs=rngs)

    def head(self, x):  # [B, T, D] -> float32 [B, T, V]
        logits = (self.model.embed_tokens.attend(x) if self.cfg.tie_embeddings else self.lm_head(x)).astype(jnp.float32)
        if self.cfg.final_softcap:
            logits = jnp.tanh(logits / self.cfg.final_softcap) * self.cfg.final_softcap
        return shard(logits, ("batch", "length", "vocab"))

    def __call__(self, input_ids, attention_mask=None, positions=None, *, rngs: nnx.Rngs | None = None,
                 cache: kv_cache.KVCache | None = None):
        x = self.model(input_ids, attention_mask, positions, rngs=rngs, cache=cache)
        if cache is not None:
            x = x[:, -1:]  # generation reads the next token only (left padding puts every row's last token here)
        return vocab.logits(x, self.head)


FAMILY = register(Family(
    name="gemma",
    model_types=("gemma2", "gemma3_text", "gemma3"),
    config_from_hf=config_from_hf,
    heads={"base": GemmaModel, "causal_lm": GemmaForCausalLM},
    base_prefix="model",
    dropout_keys={"hidden": ("hidden_dropout",), "attention": ("attention_dropout",)},
    dims=lambda c: Dims(c.num_layers, c.hidden_size, c.vocab_size),
    targets=MethodTargets(lora=("q_proj", "v_proj"), ia3=("k_proj", "v_proj", "down_proj"),
                          ia3_feedforward=("down_proj",), after_attention=("o_proj",), after_mlp=("down_proj",)),
    attention=GemmaAttention,
    kv_shape=lambda c: (c.num_kv_heads, c.head_dim),
    kv_cache=True,
    stack_layers=True,
    input_states=lambda backbone, ids: backbone.embed(ids),
    layers="layers",
    embeddings=("embed_tokens",),
    ignore=(r"^lm_head\.weight$",),  # the tied copy (reached only when tied)
))
