"""Mixture-of-experts decoders: Mixtral (Jiang et al. 2024, arXiv:2401.04088) and Qwen3-MoE, as transformers' classes
compute them. Their attention is Llama's (Mistral's sliding window, Qwen3's q/k norms: :mod:`adapt.models.llama`);
every layer's feed-forward is a sparse block: a router (``mlp.gate.weight [E, D]``), top-k routing (the top-k weights
renormalised: Mixtral always, Qwen3-MoE by ``norm_topk_prob``) and E GLU experts stored fused as transformers 5
stores them (``mlp.experts.gate_up_proj [E, 2F, D]``, ``mlp.experts.down_proj [E, D, F]``), dispatched without
capacity limits (:mod:`adapt.models.moe`). The router's load-balancing loss, over every layer's real tokens, is added
to the training objective with the config's ``router_aux_loss_coef``.

Checkpoints on the Hub hold one tensor per expert (Mixtral's ``block_sparse_moe.experts.N.w1/w3/w2``, Qwen3-MoE's
``mlp.experts.N.gate_proj/up_proj/down_proj``), which transformers fuses when it loads them: :func:`fused` does the
same to the tensors read, so both layouts load; export writes the fused one.

Refused in one line: Mixtral's router jitter (``router_jitter_noise`` > 0) and Qwen3-MoE configs with dense layers
among the sparse ones (``mlp_only_layers``, ``decoder_sparse_step`` > 1), which no released checkpoint has.
Not covered: OLMoE (its q/k norms span every head at once, and it clips q/k/v), shared experts (Qwen2-MoE).

Shapes: B batch, T length, D model width, E experts, F expert width, k experts per token.
"""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from adapt.core.errors import CheckpointError
from adapt.core.sharding import shard
from adapt.models import layers as L
from adapt.models import llama, moe
from adapt.models.checkpoint_io import TensorRef
from adapt.models.registry import Dims, Family, MethodTargets, register


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixtralConfig(llama.LlamaConfig):
    num_experts: int
    experts_per_token: int
    normalize_top_k: bool
    router_loss_coefficient: float


def config_from_hf(hf, dtype: str = "float32") -> MixtralConfig:
    kind = hf.model_type
    if getattr(hf, "router_jitter_noise", 0.0):
        raise CheckpointError(f"{kind}: router_jitter_noise={hf.router_jitter_noise} is not supported (0 only)")
    if getattr(hf, "mlp_only_layers", None) or getattr(hf, "decoder_sparse_step", 1) != 1:
        raise CheckpointError(f"{kind}: dense layers among the sparse ones (mlp_only_layers={hf.mlp_only_layers}, "
                              f"decoder_sparse_step={hf.decoder_sparse_step}) are not supported")
    base = llama.config_from_hf(hf, dtype)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(llama.LlamaConfig)}
    return MixtralConfig(**{**fields, "qk_norm": kind == "qwen3_moe",
                            "windows": (getattr(hf, "sliding_window", None),) * hf.num_hidden_layers,
                            "intermediate_size": hf.moe_intermediate_size if kind == "qwen3_moe" else
                            hf.intermediate_size},
                         num_experts=hf.num_local_experts if kind == "mixtral" else hf.num_experts,
                         experts_per_token=hf.num_experts_per_tok,
                         normalize_top_k=kind == "mixtral" or bool(hf.norm_topk_prob),
                         router_loss_coefficient=float(hf.router_aux_loss_coef))


class MixtralRouter(nnx.Module):
    def __init__(self, cfg: MixtralConfig, *, rngs: nnx.Rngs):
        self.weight = nnx.Param(nnx.initializers.normal(cfg.init_std)(rngs.params(), (cfg.num_experts,
                                                                                      cfg.hidden_size)),
                                logical_axes=(None, "embed"))

    def __call__(self, x):  # [N, D] -> float32 logits [N, E]
        return jnp.matmul(x, self.weight[...].astype(x.dtype).T, preferred_element_type=jnp.float32)


class MixtralExperts(nnx.Module):
    def __init__(self, cfg: MixtralConfig, *, rngs: nnx.Rngs):
        e, f, d = cfg.num_experts, cfg.intermediate_size, cfg.hidden_size
        init = nnx.initializers.normal(cfg.init_std)
        self.gate_up_proj = nnx.Param(init(rngs.params(), (e, 2 * f, d)), logical_axes=("expert", "mlp", "embed"))
        self.down_proj = nnx.Param(init(rngs.params(), (e, d, f)), logical_axes=("expert", "embed", "mlp"))


class MixtralSparseMoeBlock(nnx.Module):
    def __init__(self, cfg: MixtralConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.gate = MixtralRouter(cfg, rngs=rngs)
        self.experts = MixtralExperts(cfg, rngs=rngs)
        self.act = L.activation(cfg.act)

    def __call__(self, x, real):  # x [B, T, D], real [B, T] -> [B, T, D] and the layer's moe.layer_stats
        cfg = self.cfg
        tokens = x.reshape(-1, x.shape[-1])  # [N, D]
        logits = self.gate(tokens)  # [N, E]
        weights, experts = moe.route(logits, cfg.experts_per_token, cfg.normalize_top_k)  # [N, k] each
        out = moe.experts_ffn(tokens, weights, experts, self.experts.gate_up_proj[...], self.experts.down_proj[...],
                              self.act)
        return out.reshape(x.shape), moe.layer_stats(logits, experts, real.reshape(-1))


class MixtralDecoderLayer(llama.LlamaDecoderLayer):
    """Llama's layer with a sparse feed-forward; it passes on the carry ``(x [B, T, D], counts [2E + 1], real
    [B, T])``, adding its routing counts (:func:`adapt.models.moe.layer_stats`)."""

    feed_forward = MixtralSparseMoeBlock

    def __call__(self, carry, mask, positions, inv_freq, rngs, cache=None):
        x, counts, real = carry
        p = self.cfg.hidden_dropout
        x = x + L.dropout(self.self_attn(self.input_layernorm(x), mask, positions, inv_freq, rngs, cache), p, rngs)
        out, stats = self.mlp(self.post_attention_layernorm(x), real)
        return shard(x + L.dropout(out, p, rngs), ("batch", "length", "embed")), counts + stats, real


class MixtralModel(llama.LlamaModel):
    """:class:`adapt.models.llama.LlamaModel` with sparse layers; the routing counts of every layer go to
    :func:`adapt.models.moe.record` (the train step's load-balancing loss)."""

    layer = MixtralDecoderLayer

    def carry(self, x, segments):
        return x, moe.no_stats(self.cfg.num_experts), segments != 0

    def hidden(self, carry):
        x, counts, _ = carry
        moe.record(counts, self.cfg.num_experts, self.cfg.router_loss_coefficient)
        return x


class MixtralForCausalLM(llama.LlamaForCausalLM):
    backbone = MixtralModel


_PER_EXPERT = {  # a Hub checkpoint's per-expert names: (block, gate, up, down)
    "mixtral": ("block_sparse_moe", "w1", "w3", "w2"),
    "qwen3_moe": ("mlp", "gate_proj", "up_proj", "down_proj"),
}


def fused(refs: dict[str, TensorRef]) -> dict[str, TensorRef]:
    """The checkpoint's tensors with per-expert ones fused as transformers 5 fuses them at load: layer N's
    ``experts.{e}.{gate, up}`` stacked over e and joined ``[E, 2F, D]``, its ``experts.{e}.down`` ``[E, D, F]``, under
    ``model.layers.N.mlp.experts.{gate_up_proj, down_proj}``; Mixtral's ``block_sparse_moe`` renamed ``mlp``. Tensors
    already fused pass as they are."""
    pattern = re.compile(r"^(.*layers\.\d+)\.(block_sparse_moe|mlp)\.(experts\.(\d+)\.(\w+)\.weight|gate\.weight)$")
    out, experts = {}, {}  # (layer prefix, part) -> {expert: ref}
    for name, ref in refs.items():
        m = pattern.match(name)
        if m is None:
            out[name] = ref
        elif m.group(4) is None:  # the router
            out[f"{m.group(1)}.mlp.gate.weight"] = ref
        else:
            experts.setdefault((m.group(1), m.group(5)), {})[int(m.group(4))] = ref
    layers = sorted({prefix for prefix, _ in experts})
    for prefix in layers:
        parts = {part: group for (p, part), group in experts.items() if p == prefix}
        kind = next((k for k, (_, g, u, d) in _PER_EXPERT.items() if {g, u, d} == set(parts)), None)
        if kind is None:
            raise CheckpointError(f"{prefix}: per-expert tensors {sorted(parts)}; expected w1/w2/w3 (Mixtral) or "
                                  f"gate_proj/up_proj/down_proj (Qwen3-MoE)")
        _, gate, up, down = _PER_EXPERT[kind]
        n = len(parts[gate])
        if any(sorted(group) != list(range(n)) for group in parts.values()):
            raise CheckpointError(f"{prefix}: the per-expert tensors do not number 0..{n - 1} alike")
        g, u, dn = ([parts[name][e] for e in range(n)] for name in (gate, up, down))
        out[f"{prefix}.mlp.experts.gate_up_proj"] = TensorRef(
            g[0].file, (n, g[0].shape[0] + u[0].shape[0], g[0].shape[1]), g[0].dtype,
            lambda g=g, u=u: np.stack([np.concatenate([a.read(), b.read()]) for a, b in zip(g, u)]))
        out[f"{prefix}.mlp.experts.down_proj"] = TensorRef(
            dn[0].file, (n, *dn[0].shape), dn[0].dtype, lambda dn=dn: np.stack([r.read() for r in dn]))
    return out


FAMILY = register(Family(
    name="mixtral",
    model_types=("mixtral", "qwen3_moe"),
    config_from_hf=config_from_hf,
    heads={"base": MixtralModel, "causal_lm": MixtralForCausalLM},
    base_prefix="model",
    dropout_keys={"hidden": ("hidden_dropout",), "attention": ("attention_dropout",)},
    dims=lambda c: Dims(c.num_layers, c.hidden_size, c.vocab_size),
    # PEFT's attention defaults; the experts are no linear layers (3-D weights): the feed-forward targets are empty
    targets=MethodTargets(lora=("q_proj", "v_proj"), ia3=("k_proj", "v_proj"), ia3_feedforward=(),
                          after_attention=("o_proj",), after_mlp=()),
    attention=llama.LlamaAttention,
    kv_shape=lambda c: (c.num_kv_heads, c.head_dim),
    kv_cache=True,
    stack_layers=True,
    input_states=lambda backbone, ids: backbone.embed_tokens(ids),
    layers="layers",
    embeddings=("embed_tokens",),
    stored_layout=fused,
    ignore=(r"(^|\.)rotary_emb\.inv_freq$", r"^lm_head\.weight$"),  # the latter only reached when tied
))
