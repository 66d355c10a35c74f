"""ModernBERT (Warner et al. 2024, arXiv:2412.13663), as transformers' ``ModernBertModel`` and its heads compute it.

A bidirectional encoder: token embeddings and a LayerNorm (no position embeddings), then layers of attention over a
fused ``Wqkv`` with RoPE and a GeGLU MLP (``Wi`` gives the input and the gate), pre-norm (layer 0's attention reads
the embeddings' norm directly: it has no ``attn_norm``), LayerNorms without biases (``norm_bias``), and a final norm.
``layer_types`` (from ``global_attn_every_n_layers``) makes every third layer global and the others local: a local
layer's queries see the keys within ``local_attention / 2`` tokens either side, and each kind has its own RoPE base
(``rope_parameters``: 160k global, 10k local). Heads: masked LM (a dense, activation and norm ``head``, then the tied
``decoder`` with its bias), sequence classification (the first token or the mean, as ``classifier_pooling`` says,
through ``head``, then ``classifier``) and token classification. Transformers' unpadding is an implementation detail
left out: padded rows give the same numbers on their tokens. Its layer 0 differs from the others (no ``attn_norm``),
so the layers are not stacked (``model.scan_layers`` is refused in one line).

Submodules carry the HF names (``model.layers.N.attn.Wqkv``), so loading needs no renames.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from adapt.core.sharding import shard
from adapt.models import layers as L
from adapt.models import scan, vocab
from adapt.models.registry import Dims, Family, MethodTargets, register


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    norm_eps: float
    norm_bias: bool
    attention_bias: bool
    mlp_bias: bool
    classifier_bias: bool
    decoder_bias: bool
    tie_embeddings: bool
    ropes: tuple  # per layer: its RoPE parameters as sorted items (hashable)
    windows: tuple  # per layer: keys seen either side (local_attention // 2), or None (global)
    act: str
    classifier_act: str
    pooling: str  # cls | mean
    num_labels: int
    init_std: float
    embedding_dropout: float
    hidden_dropout: float  # the MLP's dropout (mlp_dropout) and the attention output's (attention_dropout in HF)
    attention_dropout: float
    classifier_dropout: float
    dtype: str = "float32"
    hf: object = dataclasses.field(default=None, compare=False, hash=False, repr=False)


def config_from_hf(hf, dtype: str = "float32") -> ModernBertConfig:
    rope = dict(hf.rope_parameters)
    heads = hf.num_attention_heads
    return ModernBertConfig(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers, num_heads=heads, head_dim=hf.hidden_size // heads, norm_eps=hf.norm_eps,
        norm_bias=bool(hf.norm_bias), attention_bias=bool(hf.attention_bias), mlp_bias=bool(hf.mlp_bias),
        classifier_bias=bool(hf.classifier_bias), decoder_bias=bool(hf.decoder_bias),
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", True)),
        ropes=tuple(tuple(sorted(rope[t].items())) for t in hf.layer_types),
        windows=tuple(hf.local_attention // 2 if t == "sliding_attention" else None for t in hf.layer_types),
        act=hf.hidden_activation, classifier_act=hf.classifier_activation, pooling=hf.classifier_pooling,
        num_labels=hf.num_labels, init_std=hf.initializer_range, embedding_dropout=hf.embedding_dropout,
        hidden_dropout=hf.mlp_dropout, attention_dropout=hf.attention_dropout,
        classifier_dropout=hf.classifier_dropout, dtype=dtype, hf=hf)


def _dense(cfg: ModernBertConfig, d_in: int, d_out: int, axes, bias: bool, rngs: nnx.Rngs):
    return L.linear(d_in, d_out, axes, bias=bias, std=cfg.init_std, dtype=cfg.dtype, rngs=rngs)


def _norm(cfg: ModernBertConfig, rngs: nnx.Rngs):
    return L.layer_norm(cfg.hidden_size, cfg.norm_eps, dtype=cfg.dtype, bias=cfg.norm_bias, rngs=rngs)


class ModernBertEmbeddings(nnx.Module):
    def __init__(self, cfg: ModernBertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.tok_embeddings = L.embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), std=cfg.init_std,
                                      dtype=cfg.dtype, rngs=rngs)
        self.norm = _norm(cfg, rngs)

    def __call__(self, input_ids, rngs):  # [B, T] -> [B, T, D]
        return L.dropout(self.norm(self.tok_embeddings(input_ids)), self.cfg.embedding_dropout, rngs)


class ModernBertAttention(nnx.Module):
    def __init__(self, cfg: ModernBertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.hidden_size
        self.Wqkv = _dense(cfg, d, 3 * d, ("embed", "heads"), cfg.attention_bias, rngs)
        self.Wo = _dense(cfg, d, d, ("heads", "embed"), cfg.attention_bias, rngs)

    def __call__(self, x, mask, positions, inv_freq, rngs):  # x [B, T, D], mask [B, T, T]
        cfg = self.cfg
        b, t, _ = x.shape
        q, k, v = jnp.split(self.Wqkv(x).reshape(b, t, 3, cfg.num_heads, cfg.head_dim), 3, axis=2)
        q, k, v = (y[:, :, 0] for y in (q, k, v))  # [B, T, N, H] each
        q = shard(L.apply_rope(q, positions, inv_freq), ("batch", "length", "heads", "head_dim"))
        k = shard(L.apply_rope(k, positions, inv_freq), ("batch", "length", "heads", "head_dim"))
        k, v, mask = L.prepend_prefix(self, k, v, mask)  # prefix tuning; else unchanged
        out = L.dot_product_attention(q, k, v, mask, scale=cfg.head_dim ** -0.5, dropout_rate=cfg.attention_dropout,
                                      rngs=rngs)
        return L.dropout(self.Wo(out.reshape(b, t, -1)), cfg.attention_dropout, rngs)


class ModernBertMLP(nnx.Module):
    def __init__(self, cfg: ModernBertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.Wi = _dense(cfg, cfg.hidden_size, 2 * cfg.intermediate_size, ("embed", "mlp"), cfg.mlp_bias, rngs)
        self.Wo = _dense(cfg, cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), cfg.mlp_bias, rngs)
        self.act = L.activation(cfg.act)

    def __call__(self, x, rngs):  # [B, T, D]
        inputs, gate = jnp.split(self.Wi(x), 2, axis=-1)  # [B, T, F] each
        h = shard(self.act(inputs) * gate, ("batch", "length", "mlp"))
        return self.Wo(L.dropout(h, self.cfg.hidden_dropout, rngs))


class ModernBertEncoderLayer(nnx.Module):
    def __init__(self, cfg: ModernBertConfig, first: bool, *, rngs: nnx.Rngs):
        if not first:  # layer 0 reads the embeddings' norm as it is
            self.attn_norm = _norm(cfg, rngs)
        self.attn = ModernBertAttention(cfg, rngs=rngs)
        self.mlp_norm = _norm(cfg, rngs)
        self.mlp = ModernBertMLP(cfg, rngs=rngs)

    def __call__(self, x, mask, positions, inv_freq, rngs):  # [B, T, D]
        h = self.attn_norm(x) if hasattr(self, "attn_norm") else x
        x = x + self.attn(h, mask, positions, inv_freq, rngs)
        x = x + self.mlp(self.mlp_norm(x), rngs)
        return shard(x, ("batch", "length", "embed"))


class ModernBertModel(nnx.Module):
    """``input_ids [B, T]`` -> final hidden states ``[B, T, D]``; ``attention_mask [B, T]``: 0 for padding, else a
    document id (packed documents do not attend to each other; positions restart per document). ``token_type_ids``
    (what classification batches hold for every encoder) are taken and unused: ModernBERT has no token types."""

    def __init__(self, cfg: ModernBertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = ModernBertEmbeddings(cfg, rngs=rngs)
        self.layers = nnx.List([ModernBertEncoderLayer(cfg, i == 0, rngs=rngs) for i in range(cfg.num_layers)])
        self.final_norm = _norm(cfg, rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None):
        cfg = self.cfg
        segments = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
        positions = L.default_positions(segments)
        x = shard(self.embeddings(input_ids, rngs), ("batch", "length", "embed"))
        x, segments, positions, virtual = L.prepend_prompt(self, x, segments, positions)  # prompt tuning
        masks = {w: L.attention_mask(segments, causal=False, window=w, virtual=virtual) for w in set(cfg.windows)}
        ropes = {r: L.rope_inverse_frequencies(cfg.head_dim, dict(r)) for r in set(cfg.ropes)}
        x = scan.apply(self.layers, lambda layer, x, rngs, extra: L.run_layer(layer, x, extra[0], positions, extra[1],
                                                                              rngs),
                       x, rngs, [(masks[w], ropes[r]) for w, r in zip(cfg.windows, cfg.ropes)])
        return self.final_norm(L.drop_prompt(x, virtual))


class ModernBertPredictionHead(nnx.Module):
    def __init__(self, cfg: ModernBertConfig, *, rngs: nnx.Rngs):
        self.dense = _dense(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", None), cfg.classifier_bias, rngs)
        self.act = L.activation(cfg.classifier_act)
        self.norm = _norm(cfg, rngs)

    def __call__(self, x):  # [..., D]
        return self.norm(self.act(self.dense(x)))


class ModernBertDecoder(nnx.Module):
    """The MLM head's projection onto the vocabulary: the word embeddings (tied) or its own ``weight``, plus
    ``bias``."""

    def __init__(self, cfg: ModernBertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        if cfg.decoder_bias:
            self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32), logical_axes=("vocab",))
        if not cfg.tie_embeddings:
            self.kernel = nnx.Param(nnx.initializers.normal(cfg.init_std)(rngs.params(), (cfg.hidden_size,
                                                                                         cfg.vocab_size)),
                                    logical_axes=("embed", "vocab"))

    def __call__(self, x, embeddings: nnx.Embed):  # [B, T, D] -> float32 [B, T, V]
        if hasattr(self, "kernel"):
            logits = jnp.matmul(x, self.kernel[...].astype(x.dtype)).astype(jnp.float32)
        else:
            logits = embeddings.attend(x).astype(jnp.float32)
        if hasattr(self, "bias"):
            logits = logits + self.bias[...]
        return shard(logits, ("batch", "length", "vocab"))


class ModernBertForMaskedLM(nnx.Module):
    """``input_ids [B, T]`` -> token logits ``[B, T, V]`` (float32; in a step with ``train.loss_chunks`` > 1,
    :class:`adapt.models.vocab.HeadInputs`)."""

    def __init__(self, cfg: ModernBertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.model = ModernBertModel(cfg, rngs=rngs)
        self.head = ModernBertPredictionHead(cfg, rngs=rngs)
        self.decoder = ModernBertDecoder(cfg, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None):
        x = self.head(self.model(input_ids, attention_mask, rngs=rngs))
        return vocab.logits(x, lambda x: self.decoder(x, self.model.embeddings.tok_embeddings))


class _Classifier(nnx.Module):
    """The backbone, ``head`` and ``classifier`` that the classification heads share."""

    def __init__(self, cfg: ModernBertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.model = ModernBertModel(cfg, rngs=rngs)
        self.head = ModernBertPredictionHead(cfg, rngs=rngs)
        self.classifier = _dense(cfg, cfg.hidden_size, cfg.num_labels, ("embed", "labels"), True, rngs)


class ModernBertForSequenceClassification(_Classifier):
    """``input_ids [B, T]`` -> class logits ``[B, C]`` (float32) from the first token or the mean of the real tokens
    (``classifier_pooling``), through ``head``."""

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None):
        x = self.model(input_ids, attention_mask, rngs=rngs)
        real = jnp.ones(input_ids.shape, x.dtype) if attention_mask is None else (attention_mask != 0).astype(x.dtype)
        if self.cfg.pooling == "cls":
            pooled = x[:, 0]
        else:  # mean over the real tokens
            pooled = jnp.sum(x * real[..., None], axis=1) / jnp.sum(real, axis=1, keepdims=True)
        logits = self.classifier(L.dropout(self.head(pooled), self.cfg.classifier_dropout, rngs))
        return shard(logits.astype(jnp.float32), ("batch", "labels"))


class ModernBertForTokenClassification(_Classifier):
    """``input_ids [B, T]`` -> per-token class logits ``[B, T, C]`` (float32), through ``head``."""

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None):
        x = self.head(self.model(input_ids, attention_mask, rngs=rngs))
        logits = self.classifier(L.dropout(x, self.cfg.classifier_dropout, rngs))
        return shard(logits.astype(jnp.float32), ("batch", "length", "labels"))


FAMILY = register(Family(
    name="modernbert",
    model_types=("modernbert",),
    config_from_hf=config_from_hf,
    heads={"base": ModernBertModel, "masked_lm": ModernBertForMaskedLM,
           "sequence_classification": ModernBertForSequenceClassification,
           "token_classification": ModernBertForTokenClassification},
    base_prefix="model",
    dropout_keys={"hidden": ("mlp_dropout", "embedding_dropout"), "attention": ("attention_dropout",)},
    dims=lambda c: Dims(c.num_layers, c.hidden_size, c.vocab_size),
    # PEFT has no default for ModernBERT: the fused Wqkv (queries, keys and values), as its authors' LoRA runs
    targets=MethodTargets(lora=("Wqkv",), ia3=("Wqkv", "mlp.Wo"), ia3_feedforward=("mlp.Wo",),
                          after_attention=("attn.Wo",), after_mlp=("mlp.Wo",)),
    attention=ModernBertAttention,
    kv_shape=lambda c: (c.num_heads, c.head_dim),
    input_states=lambda backbone, ids: backbone.embeddings(ids, None),
    layers="layers",
    embeddings=("embeddings",),
    head_paths={"sequence_classification": ("classifier", "head"), "token_classification": ("classifier", "head")},
    may_lack=("head", "decoder"),
    ignore=(r"^decoder\.weight$",),  # the tied copy of the word embeddings (reached only when tied)
))
