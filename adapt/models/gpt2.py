"""GPT-2 (Radford et al., 2019): learned positions, pre-LayerNorm blocks, fused QKV, tied LM head.

HF stores GPT-2's projections as ``Conv1D`` with ``[in, out]`` weights, which is already our kernel
layout: this family is the one that does not transpose.
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
class GPT2Config:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_inner: int
    eps: float
    act: str
    scale_attn_weights: bool
    scale_by_layer: bool  # scale_attn_by_inverse_layer_idx
    init_std: float
    embd_dropout: float
    resid_dropout: float
    attention_dropout: float
    dtype: str = "float32"
    scan_layers: bool = False  # the blocks stacked [L, ...] and scanned (adapt.models.scan)
    hf: object = dataclasses.field(default=None, compare=False, hash=False, repr=False)


def config_from_hf(hf, dtype: str = "float32") -> GPT2Config:
    return GPT2Config(
        vocab_size=hf.vocab_size, n_positions=hf.n_positions, n_embd=hf.n_embd, n_layer=hf.n_layer,
        n_head=hf.n_head, n_inner=hf.n_inner or 4 * hf.n_embd, eps=hf.layer_norm_epsilon,
        act=hf.activation_function, scale_attn_weights=hf.scale_attn_weights,
        scale_by_layer=hf.scale_attn_by_inverse_layer_idx, init_std=hf.initializer_range,
        embd_dropout=hf.embd_pdrop, resid_dropout=hf.resid_pdrop, attention_dropout=hf.attn_pdrop,
        dtype=dtype, hf=hf)


class GPT2Attention(nnx.Module):
    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        d = cfg.n_embd
        self.cfg = cfg
        self.c_attn = L.linear(d, 3 * d, ("embed", "heads"), bias=True, std=cfg.init_std, dtype=cfg.dtype, rngs=rngs)
        self.c_proj = L.linear(d, d, ("heads", "embed"), bias=True, std=cfg.init_std, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, x, mask, rngs, cache: kv_cache.LayerCache | None = None):  # x [B, T, D]
        """``mask [B, T, T]``; with a ``cache``, ``[B, T, S]`` over its slots (whose keys and values it reads)."""
        cfg = self.cfg
        b, t, d = x.shape
        h = d // cfg.n_head
        q, k, v = (y.reshape(b, t, cfg.n_head, h) for y in jnp.split(self.c_attn(x), 3, axis=-1))
        scale = h ** -0.5 if cfg.scale_attn_weights else 1.0
        if cfg.scale_by_layer:  # scale_attn_by_inverse_layer_idx: layer i's logits / (i + 1), through its queries
            q = q / (L.current_layer() + 1)  # i: an int, or in a scan over stacked layers a traced one
        if cache is not None:  # generation: over the cache's slots
            out = cache.attention(self, q, k, v, mask, scale=scale)
        else:
            k, v, mask = L.prepend_prefix(self, k, v, mask)  # prefix tuning; else unchanged
            out = L.dot_product_attention(q, k, v, mask, scale=scale, dropout_rate=cfg.attention_dropout,
                                          rngs=rngs, causal=True)
        return self.c_proj(out.reshape(b, t, d))


class GPT2MLP(nnx.Module):
    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        self.c_fc = L.linear(cfg.n_embd, cfg.n_inner, ("embed", "mlp"), bias=True, std=cfg.init_std,
                             dtype=cfg.dtype, rngs=rngs)
        self.c_proj = L.linear(cfg.n_inner, cfg.n_embd, ("mlp", "embed"), bias=True, std=cfg.init_std,
                               dtype=cfg.dtype, rngs=rngs)
        self.act = L.activation(cfg.act)

    def __call__(self, x):  # [B, T, D]
        return self.c_proj(shard(self.act(self.c_fc(x)), ("batch", "length", "mlp")))


class GPT2Block(nnx.Module):
    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.ln_1 = L.layer_norm(cfg.n_embd, cfg.eps, dtype=cfg.dtype, rngs=rngs)
        self.attn = GPT2Attention(cfg, rngs=rngs)
        self.ln_2 = L.layer_norm(cfg.n_embd, cfg.eps, dtype=cfg.dtype, rngs=rngs)
        self.mlp = GPT2MLP(cfg, rngs=rngs)

    def __call__(self, x, mask, rngs, cache: kv_cache.LayerCache | None = None):
        p = self.cfg.resid_dropout
        x = x + L.dropout(self.attn(self.ln_1(x), mask, rngs, cache), p, rngs)
        x = x + L.dropout(self.mlp(self.ln_2(x)), p, rngs)
        return shard(x, ("batch", "length", "embed"))


class GPT2Model(nnx.Module):
    """``input_ids [B, T]`` -> final hidden states ``[B, T, D]``; masks and ``cache`` as in ``LlamaModel``."""

    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.wte = L.embed(cfg.vocab_size, cfg.n_embd, ("vocab", "embed"), std=cfg.init_std, dtype=cfg.dtype, rngs=rngs)
        self.wpe = L.embed(cfg.n_positions, cfg.n_embd, ("position", "embed"), std=cfg.init_std,
                           dtype=cfg.dtype, rngs=rngs)
        self.h = scan.layers(lambda rngs: GPT2Block(cfg, rngs=rngs), cfg.n_layer, rngs, stacked=cfg.scan_layers)
        self.ln_f = L.layer_norm(cfg.n_embd, cfg.eps, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, positions=None, *, rngs: nnx.Rngs | None = None,
                 cache: kv_cache.KVCache | None = None):
        segments = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
        if positions is None:
            positions = L.default_positions(segments)
        x = L.dropout(self.wte(input_ids) + self.wpe(positions), self.cfg.embd_dropout, rngs)
        x = shard(x, ("batch", "length", "embed"))
        x, segments, _, virtual = L.prepend_prompt(self, x, segments, cache=cache)  # prompt tuning
        if cache is None:
            mask = L.attention_mask(segments, causal=True, virtual=virtual)  # [B, T, T]
            x = scan.apply(self.h, lambda block, x, rngs, mask: L.run_layer(block, x, mask, rngs), x, rngs,
                           [mask] * self.cfg.n_layer)
        else:  # generation (never rematerialised): each block writes its keys and values into the cache
            mask = cache.attend(segments, (None,))[None]  # [B, T, S]
            x = scan.apply_cached(self.h, lambda block, x, mask, view: block(x, mask, rngs, view), x,
                                  [mask] * self.cfg.n_layer, cache)
        return self.ln_f(L.drop_prompt(x, virtual))


class GPT2LMHeadModel(nnx.Module):
    """``input_ids [B, T]`` -> next-token logits ``[B, T, V]`` (float32; in a step with ``train.loss_chunks`` > 1,
    :class:`adapt.models.vocab.HeadInputs`), head tied to ``wte``; with a ``cache`` (generation) those after the
    last token only, ``[B, 1, V]``."""

    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.transformer = GPT2Model(cfg, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, positions=None, *, rngs: nnx.Rngs | None = None,
                 cache: kv_cache.KVCache | None = None):
        x = self.transformer(input_ids, attention_mask, positions, rngs=rngs, cache=cache)
        if cache is not None:
            x = x[:, -1:]  # generation reads the next token only (left padding puts every row's last token here)
        return vocab.logits(x, lambda x: shard(self.transformer.wte.attend(x).astype(jnp.float32),
                                               ("batch", "length", "vocab")))


FAMILY = register(Family(
    name="gpt2",
    model_types=("gpt2",),
    config_from_hf=config_from_hf,
    heads={"base": GPT2Model, "causal_lm": GPT2LMHeadModel},
    base_prefix="transformer",
    dropout_keys={"hidden": ("embd_pdrop", "resid_pdrop"), "attention": ("attn_pdrop",)},
    dims=lambda c: Dims(c.n_layer, c.n_embd, c.vocab_size),
    targets=MethodTargets(lora=("c_attn",), ia3=("c_attn", "mlp.c_proj"), ia3_feedforward=("mlp.c_proj",),
                          after_attention=("attn.c_proj",), after_mlp=("mlp.c_proj",)),
    attention=GPT2Attention,
    kv_shape=lambda c: (c.n_head, c.n_embd // c.n_head),
    kv_cache=True,
    max_positions=lambda c: c.n_positions,
    input_states=lambda backbone, ids: backbone.wte(ids) + backbone.wpe(jnp.arange(ids.shape[1])[None]),
    layers="h",
    stack_layers=True,
    embeddings=("wte", "wpe"),
    transpose_kernels=False,
    # Causal-mask buffers of old checkpoints, and the tied head.
    ignore=(r"\.attn\.(masked_)?bias$", r"^lm_head\.weight$"),
))
