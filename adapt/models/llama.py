"""The Llama family of decoders: Llama 2/3.x (llama3 RoPE scaling), Mistral (sliding window), Qwen2/2.5
(QKV bias), Qwen3 (q/k RMSNorm), SmolLM; grouped-query attention; tied or untied embeddings.

Submodules carry the HF names (``model.layers.N.self_attn.q_proj``), so loading needs no renames.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from adapt.core.sharding import shard
from adapt.models import kv_cache, scan, vocab
from adapt.models import layers as L
from adapt.models.registry import Dims, Family, MethodTargets, register


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float
    rope: tuple  # the HF rope_parameters dict as sorted items (hashable)
    tie_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    windows: tuple  # per layer: sliding-window length or None
    act: str
    init_std: float
    hidden_dropout: float
    attention_dropout: float
    dtype: str = "float32"
    scan_layers: bool = False  # the layers stacked [L, ...] and scanned (adapt.models.scan)
    hf: object = dataclasses.field(default=None, compare=False, hash=False, repr=False)


def config_from_hf(hf, dtype: str = "float32") -> LlamaConfig:
    kind = hf.model_type
    heads = hf.num_attention_heads
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
    bias = getattr(hf, "attention_bias", False)
    layer_types = getattr(hf, "layer_types", None)
    window = getattr(hf, "sliding_window", None)
    if layer_types:
        windows = tuple(window if t == "sliding_attention" else None for t in layer_types)
    else:  # Mistral: every layer slides when a window is set
        windows = (window if kind == "mistral" else None,) * hf.num_hidden_layers
    rope = dict(hf.rope_parameters)
    return LlamaConfig(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers, num_heads=heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or heads, head_dim=head_dim,
        rms_eps=hf.rms_norm_eps, rope=tuple(sorted(rope.items())),
        tie_embeddings=bool(hf.tie_word_embeddings),
        qkv_bias=True if kind == "qwen2" else bias, o_bias=False if kind == "qwen2" else bias,
        mlp_bias=getattr(hf, "mlp_bias", False), qk_norm=kind == "qwen3", windows=windows,
        act=hf.hidden_act, init_std=getattr(hf, "initializer_range", 0.02),
        hidden_dropout=getattr(hf, "hidden_dropout", 0.0), attention_dropout=hf.attention_dropout,
        dtype=dtype, hf=hf)


class LlamaAttention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        d, n, k, h, dt = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.dtype
        self.cfg = cfg
        self.q_proj = L.linear(d, n * h, ("embed", "heads"), bias=cfg.qkv_bias, std=cfg.init_std, dtype=dt, rngs=rngs)
        self.k_proj = L.linear(d, k * h, ("embed", "kv_heads"), bias=cfg.qkv_bias, std=cfg.init_std, dtype=dt,
                               rngs=rngs)
        self.v_proj = L.linear(d, k * h, ("embed", "kv_heads"), bias=cfg.qkv_bias, std=cfg.init_std, dtype=dt,
                               rngs=rngs)
        self.o_proj = L.linear(n * h, d, ("heads", "embed"), bias=cfg.o_bias, std=cfg.init_std, dtype=dt, rngs=rngs)
        if cfg.qk_norm:
            self.q_norm = L.rms_norm(h, cfg.rms_eps, dtype=dt, rngs=rngs)
            self.k_norm = L.rms_norm(h, cfg.rms_eps, dtype=dt, rngs=rngs)

    def __call__(self, x, mask, positions, inv_freq, rngs, cache: kv_cache.LayerCache | None = None):  # x [B, T, D]
        """``mask [B, T, T]``; with a ``cache``, ``[B, T, S]`` over its slots (whose keys and values it reads)."""
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
            out = cache.attention(self, q, k, v, mask, scale=cfg.head_dim ** -0.5)
        else:
            k, v, mask = L.prepend_prefix(self, k, v, mask)  # prefix tuning; else unchanged
            out = L.dot_product_attention(q, k, v, mask, scale=cfg.head_dim ** -0.5,
                                          dropout_rate=cfg.attention_dropout, rngs=rngs, causal=True)
        return self.o_proj(out.reshape(b, t, -1))


class LlamaMLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        d, f, dt, std = cfg.hidden_size, cfg.intermediate_size, cfg.dtype, cfg.init_std
        self.gate_proj = L.linear(d, f, ("embed", "mlp"), bias=cfg.mlp_bias, std=std, dtype=dt, rngs=rngs)
        self.up_proj = L.linear(d, f, ("embed", "mlp"), bias=cfg.mlp_bias, std=std, dtype=dt, rngs=rngs)
        self.down_proj = L.linear(f, d, ("mlp", "embed"), bias=cfg.mlp_bias, std=std, dtype=dt, rngs=rngs)
        self.act = L.activation(cfg.act)

    def __call__(self, x):  # [B, T, D]
        h = shard(self.act(self.gate_proj(x)) * self.up_proj(x), ("batch", "length", "mlp"))
        return self.down_proj(h)


class LlamaDecoderLayer(nnx.Module):
    feed_forward = LlamaMLP  # its mlp's class (a mixture of experts in adapt.models.mixtral)

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.input_layernorm = L.rms_norm(cfg.hidden_size, cfg.rms_eps, dtype=cfg.dtype, rngs=rngs)
        self.self_attn = LlamaAttention(cfg, rngs=rngs)
        self.post_attention_layernorm = L.rms_norm(cfg.hidden_size, cfg.rms_eps, dtype=cfg.dtype, rngs=rngs)
        self.mlp = self.feed_forward(cfg, rngs=rngs)

    def __call__(self, x, mask, positions, inv_freq, rngs, cache: kv_cache.LayerCache | None = None):
        p = self.cfg.hidden_dropout
        x = x + L.dropout(self.self_attn(self.input_layernorm(x), mask, positions, inv_freq, rngs, cache), p, rngs)
        x = x + L.dropout(self.mlp(self.post_attention_layernorm(x)), p, rngs)
        return shard(x, ("batch", "length", "embed"))


class LlamaModel(nnx.Module):
    """The decoder stack: ``input_ids [B, T]`` -> final hidden states ``[B, T, D]``. What the layers pass each other
    is :meth:`carry` of the hidden states (``[B, T, D]`` itself here; a mixture of experts adds its routing counts)."""

    layer = LlamaDecoderLayer

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = L.embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), std=cfg.init_std,
                                    dtype=cfg.dtype, rngs=rngs)
        self.layers = scan.layers(lambda rngs: self.layer(cfg, rngs=rngs), cfg.num_layers, rngs,
                                  stacked=cfg.scan_layers)
        self.norm = L.rms_norm(cfg.hidden_size, cfg.rms_eps, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, positions=None, *, rngs: nnx.Rngs | None = None,
                 cache: kv_cache.KVCache | None = None):
        """``attention_mask [B, T]``: 0 for padding, else a document id (a packed row numbers its
        documents 1, 2, ...); ``positions [B, T]`` default to restarting at 0 per document. With a ``cache``
        (generation) the tokens follow those it holds: give their ``positions``."""
        segments = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
        if positions is None:
            positions = L.default_positions(segments)
        inv_freq = L.rope_inverse_frequencies(self.cfg.head_dim, dict(self.cfg.rope))
        x = shard(self.embed_tokens(input_ids), ("batch", "length", "embed"))
        x, segments, positions, virtual = L.prepend_prompt(self, x, segments, positions, cache)  # prompt tuning
        x = self.carry(x, segments)
        windows = set(self.cfg.windows)
        if cache is None:
            masks = {w: L.attention_mask(segments, causal=True, window=w, virtual=virtual) for w in windows}
            x = scan.apply(self.layers, lambda layer, x, rngs, mask: L.run_layer(layer, x, mask, positions, inv_freq,
                                                                                 rngs),
                           x, rngs, [masks[w] for w in self.cfg.windows])  # masks [B, T, T]
        else:  # generation (never rematerialised): each layer writes its keys and values into the cache
            masks = cache.attend(segments, windows)  # [B, T, S] each
            x = scan.apply_cached(self.layers, lambda layer, x, mask, view: layer(x, mask, positions, inv_freq, rngs,
                                                                                   view),
                                  x, [masks[w] for w in self.cfg.windows], cache)
        return self.norm(L.drop_prompt(self.hidden(x), virtual))

    def carry(self, x, segments):  # x [B, T, D], segments [B, T] -> what the first layer takes
        return x

    def hidden(self, carry):  # what the last layer gives -> its hidden states [B, T, D]
        return carry


class LlamaForCausalLM(nnx.Module):
    """``input_ids [B, T]`` -> next-token logits ``[B, T, V]`` (float32; in a step with ``train.loss_chunks`` > 1,
    :class:`adapt.models.vocab.HeadInputs`); with a ``cache`` (generation, see ``LlamaModel``) those after the last
    token only, ``[B, 1, V]``."""

    backbone = LlamaModel

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.model = self.backbone(cfg, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = L.linear(cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), bias=False,
                                    std=cfg.init_std, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, positions=None, *, rngs: nnx.Rngs | None = None,
                 cache: kv_cache.KVCache | None = None):
        x = self.model(input_ids, attention_mask, positions, rngs=rngs, cache=cache)
        if cache is not None:
            x = x[:, -1:]  # generation reads the next token only (left padding puts every row's last token here)
        head = self.model.embed_tokens.attend if self.cfg.tie_embeddings else self.lm_head
        return vocab.logits(x, lambda x: shard(head(x).astype(jnp.float32), ("batch", "length", "vocab")))


FAMILY = register(Family(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    config_from_hf=config_from_hf,
    heads={"base": LlamaModel, "causal_lm": LlamaForCausalLM},
    base_prefix="model",
    dropout_keys={"hidden": ("hidden_dropout",), "attention": ("attention_dropout",)},
    dims=lambda c: Dims(c.num_layers, c.hidden_size, c.vocab_size),
    targets=MethodTargets(lora=("q_proj", "v_proj"), ia3=("k_proj", "v_proj", "down_proj"),
                          ia3_feedforward=("down_proj",), after_attention=("o_proj",), after_mlp=("down_proj",)),
    attention=LlamaAttention,
    kv_shape=lambda c: (c.num_kv_heads, c.head_dim),
    kv_cache=True,
    stack_layers=True,
    input_states=lambda backbone, ids: backbone.embed_tokens(ids),
    layers="layers",
    embeddings=("embed_tokens",),
    ignore=(r"(^|\.)rotary_emb\.inv_freq$", r"^lm_head\.weight$"),  # the latter only reached when tied
))
