"""DeBERTa-v2 and -v3 (He et al. 2021, arXiv:2006.03654 and arXiv:2111.09543), as transformers' ``deberta-v2``
``DebertaV2Model`` and its heads compute it.

A BERT-like post-norm encoder whose attention is disentangled: besides content-to-content scores ``q . k``, each
query scores the keys' relative positions (content-to-position, ``q . Kr[d]``) and each key the query's
(position-to-content, ``k . Qr[d]``), ``d`` the query's position minus the key's, log-bucketed beyond
``position_buckets / 2`` (v3: 256 buckets) and clipped to the span; the three terms share the scale
``sqrt(H * (1 + len(pos_att_type)))``. ``Kr``/``Qr`` are the LayerNormed relative embeddings
(``encoder.rel_embeddings``, ``norm_rel_ebd``) through the attention's own key and query projections
(``share_att_key``, v3) or through ``pos_key_proj``/``pos_query_proj`` (v2). The bucket of every (query, key) pair
is a static numpy table, so the gathers are constants of the trace. v3 has no absolute position embeddings
(``position_biased_input=False``) and no token types; both are read when a config has them. Heads: masked LM
(``legacy``: ``cls.predictions`` with a transform of width ``embedding_size`` and the tied decoder; else
``lm_predictions.lm_head``), sequence classification (``ContextPooler``: the first token through ``pooler.dense``
and ``pooler_hidden_act``) and token classification. DeBERTa-v3 checkpoints were pretrained by replaced-token
detection and ship no MLM head: masked-LM training starts that head fresh (the trial says so in its log).

Refused in one line: DeBERTa-v2-xlarge's convolution layer (``conv_kernel_size``) and prefix tuning (the prefix keys
have no relative position; PEFT's prefix tuning has no DeBERTa-v2 either; prompt tuning works).

Submodules carry the HF names (``deberta.encoder.layer.N.attention.self.query_proj``), so loading needs no renames.
Shapes: B batch, T length, D model width, E embedding width, N heads, H head width, R relative positions kept.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adapt.core.errors import CheckpointError
from adapt.core.sharding import shard
from adapt.models import layers as L
from adapt.models import scan, vocab
from adapt.models.registry import Dims, Family, MethodTargets, register


@dataclasses.dataclass(frozen=True)
class DebertaConfig:
    vocab_size: int
    hidden_size: int
    embedding_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    max_positions: int
    type_vocab_size: int
    position_biased_input: bool
    relative_attention: bool
    pos_att_type: tuple  # of "c2p", "p2c"
    share_att_key: bool
    position_buckets: int  # 0: distances not bucketed
    max_relative_positions: int
    norm_rel_ebd: bool  # the relative embeddings LayerNormed
    layer_norm_eps: float
    act: str
    pooler_act: str
    init_std: float
    hidden_dropout: float
    attention_dropout: float
    pooler_dropout: float
    classifier_dropout: float
    num_labels: int
    legacy: bool
    tie_embeddings: bool
    dtype: str = "float32"
    scan_layers: bool = False  # the layers stacked [L, ...] and scanned (adapt.models.scan)
    hf: object = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    @property
    def span(self) -> int:
        """Relative positions kept either side: the rows of ``rel_embeddings`` are ``2 * span``."""
        return self.position_buckets or self.max_relative_positions


def config_from_hf(hf, dtype: str = "float32") -> DebertaConfig:
    if getattr(hf, "conv_kernel_size", 0) > 0:
        raise CheckpointError(f"{hf.model_type}: conv_kernel_size={hf.conv_kernel_size} (DeBERTa-v2's convolution "
                              f"layer) is not supported; DeBERTa-v3 has none")
    pos_att_type = tuple(hf.pos_att_type or ())
    if unknown := set(pos_att_type) - {"c2p", "p2c"}:
        raise CheckpointError(f"{hf.model_type}: pos_att_type {sorted(unknown)} is not supported (c2p, p2c)")
    max_rel = hf.max_relative_positions if hf.max_relative_positions >= 1 else hf.max_position_embeddings
    cls_dropout = getattr(hf, "cls_dropout", None)
    return DebertaConfig(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size,
        embedding_size=getattr(hf, "embedding_size", None) or hf.hidden_size,
        intermediate_size=hf.intermediate_size, num_layers=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
        head_dim=getattr(hf, "attention_head_size", None) or hf.hidden_size // hf.num_attention_heads,
        max_positions=hf.max_position_embeddings, type_vocab_size=hf.type_vocab_size,
        position_biased_input=bool(hf.position_biased_input), relative_attention=bool(hf.relative_attention),
        pos_att_type=pos_att_type, share_att_key=bool(getattr(hf, "share_att_key", False)),
        position_buckets=max(getattr(hf, "position_buckets", -1), 0), max_relative_positions=max_rel,
        norm_rel_ebd="layer_norm" in getattr(hf, "norm_rel_ebd", "none").lower(),
        layer_norm_eps=hf.layer_norm_eps, act=hf.hidden_act, pooler_act=hf.pooler_hidden_act,
        init_std=hf.initializer_range, hidden_dropout=hf.hidden_dropout_prob,
        attention_dropout=hf.attention_probs_dropout_prob, pooler_dropout=hf.pooler_dropout,
        classifier_dropout=hf.hidden_dropout_prob if cls_dropout is None else cls_dropout, num_labels=hf.num_labels,
        legacy=bool(hf.legacy), tie_embeddings=bool(getattr(hf, "tie_word_embeddings", True)), dtype=dtype, hf=hf)


def log_buckets(relative: np.ndarray, buckets: int, max_position: int) -> np.ndarray:
    """transformers' ``make_log_bucket_position``: distances within ``buckets / 2`` as they are, farther ones
    log-spaced up to ``max_position``, in float32 as it computes them."""
    mid = buckets // 2
    far = np.where((relative < mid) & (relative > -mid), mid - 1, np.abs(relative))
    log_pos = np.ceil(np.log((far / mid).astype(np.float32)) / np.log(np.float32((max_position - 1) / mid))
                      * np.float32(mid - 1)) + mid
    return np.where(far <= mid, relative, log_pos * np.sign(relative)).astype(np.int64)


def relative_index(cfg: DebertaConfig, t: int) -> tuple[np.ndarray, int, int]:
    """``[T, T]``: the row of the relative embeddings that query i and key j read (their bucketed distance
    ``i - j`` plus the span, clipped), as rows ``lo..hi`` of the table (``index - lo``): only those are projected."""
    positions = np.arange(t)
    distance = positions[:, None] - positions[None, :]
    if cfg.position_buckets:
        distance = log_buckets(distance, cfg.position_buckets, cfg.max_relative_positions)
    index = np.clip(distance + cfg.span, 0, 2 * cfg.span - 1)
    lo, hi = int(index.min()), int(index.max())
    return index - lo, lo, hi + 1


def _dense(cfg: DebertaConfig, d_in: int, d_out: int, axes, rngs: nnx.Rngs, bias: bool = True):
    return L.linear(d_in, d_out, axes, bias=bias, std=cfg.init_std, dtype=cfg.dtype, rngs=rngs)


def _norm(cfg: DebertaConfig, features: int, rngs: nnx.Rngs):
    return L.layer_norm(features, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs)


class DebertaV2Embeddings(nnx.Module):
    def __init__(self, cfg: DebertaConfig, *, rngs: nnx.Rngs):
        e, dt, std = cfg.embedding_size, cfg.dtype, cfg.init_std
        self.cfg = cfg
        self.word_embeddings = L.embed(cfg.vocab_size, e, ("vocab", "embed"), std=std, dtype=dt, rngs=rngs)
        if cfg.position_biased_input:
            self.position_embeddings = L.embed(cfg.max_positions, e, ("position", "embed"), std=std, dtype=dt,
                                               rngs=rngs)
        if cfg.type_vocab_size > 0:
            self.token_type_embeddings = L.embed(cfg.type_vocab_size, e, (None, "embed"), std=std, dtype=dt, rngs=rngs)
        if e != cfg.hidden_size:
            self.embed_proj = _dense(cfg, e, cfg.hidden_size, (None, "embed"), rngs, bias=False)
        self.LayerNorm = _norm(cfg, cfg.hidden_size, rngs)

    def __call__(self, input_ids, token_type_ids, segments, rngs):  # each [B, T] -> [B, T, D]
        x = self.word_embeddings(input_ids)
        if hasattr(self, "position_embeddings"):  # positions restart at each document of a packed row
            x = x + self.position_embeddings(L.default_positions(segments))
        if hasattr(self, "token_type_embeddings"):
            x = x + self.token_type_embeddings(token_type_ids)
        if hasattr(self, "embed_proj"):
            x = self.embed_proj(x)
        x = self.LayerNorm(x) * (segments != 0)[..., None].astype(x.dtype)  # padding's embeddings are zeros
        return L.dropout(x, self.cfg.hidden_dropout, rngs)


class DisentangledSelfAttention(nnx.Module):
    def __init__(self, cfg: DebertaConfig, *, rngs: nnx.Rngs):
        d, inner = cfg.hidden_size, cfg.num_heads * cfg.head_dim
        self.cfg = cfg
        self.query_proj = _dense(cfg, d, inner, ("embed", "heads"), rngs)
        self.key_proj = _dense(cfg, d, inner, ("embed", "heads"), rngs)
        self.value_proj = _dense(cfg, d, inner, ("embed", "heads"), rngs)
        if cfg.relative_attention and not cfg.share_att_key:
            if "c2p" in cfg.pos_att_type:
                self.pos_key_proj = _dense(cfg, d, inner, ("embed", "heads"), rngs)
            if "p2c" in cfg.pos_att_type:
                self.pos_query_proj = _dense(cfg, d, inner, ("embed", "heads"), rngs)

    def _heads(self, proj, x):  # [..., D] -> [..., N, H]
        return proj(x).reshape(*x.shape[:-1], self.cfg.num_heads, self.cfg.head_dim)

    def __call__(self, x, mask, rel, rngs):  # x [B, T, D], mask [B, T, T], rel [2 * span, D] -> [B, T, N * H]
        cfg = self.cfg
        b, t, _ = x.shape
        q, k, v = (shard(self._heads(p, x), ("batch", "length", "heads", "head_dim"))
                   for p in (self.query_proj, self.key_proj, self.value_proj))
        k, v, mask = L.prepend_prefix(self, k, v, mask)  # the identity: the family refuses prefix tuning
        scale = np.float32(np.sqrt(cfg.head_dim * (1 + len(cfg.pos_att_type))))
        f32 = dict(preferred_element_type=jnp.float32)
        scores = jnp.einsum("btnh,bsnh->bnts", q, k, **f32)  # [B, N, T, T]
        if cfg.relative_attention:
            index, lo, hi = relative_index(cfg, t)
            rel = L.dropout(rel[lo:hi], cfg.hidden_dropout, rngs)  # [R, D]
            if "c2p" in cfg.pos_att_type:  # query i . key projection of the relative position i - j
                pos_key = self._heads(self.key_proj if cfg.share_att_key else self.pos_key_proj, rel)  # [R, N, H]
                c2p = jnp.einsum("btnh,rnh->bntr", q, pos_key, **f32)
                scores = scores + jnp.take_along_axis(c2p, jnp.broadcast_to(index, (*c2p.shape[:3], t)), axis=-1)
            if "p2c" in cfg.pos_att_type:  # key j . query projection of the same relative position
                pos_query = self._heads(self.query_proj if cfg.share_att_key else self.pos_query_proj, rel)
                p2c = jnp.einsum("bsnh,rnh->bnsr", k, pos_query, **f32)  # [B, N, T(keys), R]
                p2c = jnp.take_along_axis(p2c, jnp.broadcast_to(index.T, (*p2c.shape[:3], t)), axis=-1)
                scores = scores + p2c.swapaxes(-1, -2)
        scores = jnp.where(L.dense(mask)[:, None], scores / scale, jnp.finfo(jnp.float32).min)
        probs = L.dropout(jax.nn.softmax(scores, axis=-1), cfg.attention_dropout, rngs)
        out = jnp.einsum("bnts,bsnh->btnh", probs.astype(v.dtype), v)
        return shard(out, ("batch", "length", "heads", "head_dim")).reshape(b, t, -1)


class DebertaV2Output(nnx.Module):
    """``LayerNorm(x + dropout(dense(h)))``: HF's ``DebertaV2SelfOutput`` (``h`` the attention output) and
    ``DebertaV2Output`` (``h [B, T, F]``, the intermediate activations)."""

    def __init__(self, cfg: DebertaConfig, d_in: int, axis: str, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dense = _dense(cfg, d_in, cfg.hidden_size, (axis, "embed"), rngs)
        self.LayerNorm = _norm(cfg, cfg.hidden_size, rngs)

    def __call__(self, h, x, rngs):  # -> [B, T, D]
        return self.LayerNorm(x + L.dropout(self.dense(h), self.cfg.hidden_dropout, rngs))


class DebertaV2Attention(nnx.Module):
    def __init__(self, cfg: DebertaConfig, *, rngs: nnx.Rngs):
        self.self = DisentangledSelfAttention(cfg, rngs=rngs)
        self.output = DebertaV2Output(cfg, cfg.num_heads * cfg.head_dim, "heads", rngs=rngs)

    def __call__(self, x, mask, rel, rngs):
        return self.output(self.self(x, mask, rel, rngs), x, rngs)


class DebertaV2Intermediate(nnx.Module):
    def __init__(self, cfg: DebertaConfig, *, rngs: nnx.Rngs):
        self.dense = _dense(cfg, cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), rngs)
        self.act = L.activation(cfg.act)

    def __call__(self, x):  # [B, T, D] -> [B, T, F]
        return shard(self.act(self.dense(x)), ("batch", "length", "mlp"))


class DebertaV2Layer(nnx.Module):
    def __init__(self, cfg: DebertaConfig, *, rngs: nnx.Rngs):
        self.attention = DebertaV2Attention(cfg, rngs=rngs)
        self.intermediate = DebertaV2Intermediate(cfg, rngs=rngs)
        self.output = DebertaV2Output(cfg, cfg.intermediate_size, "mlp", rngs=rngs)

    def __call__(self, x, mask, rel, rngs):  # [B, T, D]
        x = self.attention(x, mask, rel, rngs)
        return shard(self.output(self.intermediate(x), x, rngs), ("batch", "length", "embed"))


class DebertaV2Encoder(nnx.Module):
    def __init__(self, cfg: DebertaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.layer = scan.layers(lambda rngs: DebertaV2Layer(cfg, rngs=rngs), cfg.num_layers, rngs,
                                 stacked=cfg.scan_layers)
        if cfg.relative_attention:
            self.rel_embeddings = L.embed(2 * cfg.span, cfg.hidden_size, (None, "embed"), std=cfg.init_std,
                                          dtype=cfg.dtype, rngs=rngs)
            if cfg.norm_rel_ebd:
                self.LayerNorm = _norm(cfg, cfg.hidden_size, rngs)

    def __call__(self, x, mask, rngs):  # [B, T, D], mask [B, T, T]
        rel = None
        if self.cfg.relative_attention:  # [2 * span, D], every layer's
            rel = self.rel_embeddings.embedding[...].astype(x.dtype)
            rel = self.LayerNorm(rel) if hasattr(self, "LayerNorm") else rel
        return scan.apply(self.layer, lambda layer, x, rngs, _: L.run_layer(layer, x, mask, rel, rngs), x, rngs)


class DebertaV2Model(nnx.Module):
    """The encoder: ``input_ids [B, T]`` -> final hidden states ``[B, T, D]``; ``attention_mask [B, T]``: 0 for
    padding, else a document id (packed documents do not attend to each other; relative positions need no
    restart); ``token_type_ids`` (when the config has token types) default to 0."""

    def __init__(self, cfg: DebertaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = DebertaV2Embeddings(cfg, rngs=rngs)
        self.encoder = DebertaV2Encoder(cfg, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None):
        segments = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
        types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = shard(self.embeddings(input_ids, types, segments, rngs), ("batch", "length", "embed"))
        x, segments, _, virtual = L.prepend_prompt(self, x, segments)  # prompt tuning
        x = self.encoder(x, L.attention_mask(segments, causal=False, virtual=virtual), rngs)
        return L.drop_prompt(x, virtual)


class _Transform(nnx.Module):
    """The MLM head's ``dense``, activation and ``LayerNorm`` (width ``features``)."""

    def __init__(self, cfg: DebertaConfig, features: int, *, rngs: nnx.Rngs):
        self.dense = _dense(cfg, cfg.hidden_size, features, ("embed", None), rngs)
        self.act = L.activation(cfg.act)
        self.LayerNorm = _norm(cfg, features, rngs)

    def __call__(self, x):  # [B, T, D] -> [B, T, features]
        return self.LayerNorm(self.act(self.dense(x)))


class LegacyDebertaV2LMPredictionHead(nnx.Module):
    """``cls.predictions``: ``transform`` to the embedding width, then the word embeddings plus ``bias`` (tied), or
    the checkpoint's own ``decoder`` (untied)."""

    def __init__(self, cfg: DebertaConfig, *, rngs: nnx.Rngs):
        self.transform = _Transform(cfg, cfg.embedding_size, rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32), logical_axes=("vocab",))
        if not cfg.tie_embeddings:
            self.decoder = _dense(cfg, cfg.embedding_size, cfg.vocab_size, ("embed", "vocab"), rngs)

    def __call__(self, x, embeddings: nnx.Embed):  # [B, T, D] -> float32 [B, T, V]
        if hasattr(self, "decoder"):
            return self.decoder(x).astype(jnp.float32)
        return embeddings.attend(x).astype(jnp.float32) + self.bias[...]


class _LegacyMLMHead(nnx.Module):
    def __init__(self, cfg: DebertaConfig, *, rngs: nnx.Rngs):
        self.predictions = LegacyDebertaV2LMPredictionHead(cfg, rngs=rngs)


class DebertaV2LMPredictionHead(_Transform):
    """``lm_predictions.lm_head`` (``legacy=False``): ``dense``, activation, ``LayerNorm``, then the word embeddings
    plus ``bias``."""

    def __init__(self, cfg: DebertaConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, cfg.hidden_size, rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32), logical_axes=("vocab",))

    def project(self, x, embeddings: nnx.Embed):  # [B, T, D] (transformed) -> float32 [B, T, V]
        return embeddings.attend(x).astype(jnp.float32) + self.bias[...]


class _MLMHead(nnx.Module):
    def __init__(self, cfg: DebertaConfig, *, rngs: nnx.Rngs):
        self.lm_head = DebertaV2LMPredictionHead(cfg, rngs=rngs)


class DebertaV2ForMaskedLM(nnx.Module):
    """``input_ids [B, T]`` -> token logits ``[B, T, V]`` (float32; in a step with ``train.loss_chunks`` > 1,
    :class:`adapt.models.vocab.HeadInputs`)."""

    def __init__(self, cfg: DebertaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.deberta = DebertaV2Model(cfg, rngs=rngs)
        if cfg.legacy:
            self.cls = _LegacyMLMHead(cfg, rngs=rngs)
        else:
            self.lm_predictions = _MLMHead(cfg, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None):
        x = self.deberta(input_ids, attention_mask, token_type_ids, rngs=rngs)
        embeddings = self.deberta.embeddings.word_embeddings
        if self.cfg.legacy:
            head = self.cls.predictions
            x, project = head.transform(x), head
        else:
            head = self.lm_predictions.lm_head
            x, project = head(x), head.project
        return vocab.logits(x, lambda x: shard(project(x, embeddings), ("batch", "length", "vocab")))


class ContextPooler(nnx.Module):
    def __init__(self, cfg: DebertaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dense = _dense(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", None), rngs)
        self.act = L.activation(cfg.pooler_act)

    def __call__(self, x, rngs):  # [B, T, D] -> [B, D]: act(dense(dropout(first token)))
        return self.act(self.dense(L.dropout(x[:, 0], self.cfg.pooler_dropout, rngs)))


class DebertaV2ForSequenceClassification(nnx.Module):
    """``input_ids [B, T]`` -> class logits ``[B, C]`` (float32) from the pooled first token."""

    def __init__(self, cfg: DebertaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.deberta = DebertaV2Model(cfg, rngs=rngs)
        self.pooler = ContextPooler(cfg, rngs=rngs)
        self.classifier = _dense(cfg, cfg.hidden_size, cfg.num_labels, ("embed", "labels"), rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None):
        return self.head(self.deberta(input_ids, attention_mask, token_type_ids, rngs=rngs), self.deberta, rngs)

    def head(self, x, backbone: DebertaV2Model, rngs):  # [B, T, D] -> [B, C]
        logits = self.classifier(L.dropout(self.pooler(x, rngs), self.cfg.classifier_dropout, rngs))
        return shard(logits.astype(jnp.float32), ("batch", "labels"))


class DebertaV2ForTokenClassification(nnx.Module):
    """``input_ids [B, T]`` -> per-token class logits ``[B, T, C]`` (float32)."""

    def __init__(self, cfg: DebertaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.deberta = DebertaV2Model(cfg, rngs=rngs)
        self.classifier = _dense(cfg, cfg.hidden_size, cfg.num_labels, ("embed", "labels"), rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None):
        return self.head(self.deberta(input_ids, attention_mask, token_type_ids, rngs=rngs), self.deberta, rngs)

    def head(self, x, backbone: DebertaV2Model, rngs):  # [B, T, D] -> [B, T, C]
        logits = self.classifier(L.dropout(x, self.cfg.hidden_dropout, rngs))
        return shard(logits.astype(jnp.float32), ("batch", "length", "labels"))


def input_states(backbone: DebertaV2Model, ids):  # [B, T] -> [B, T, D]: the embeddings, LayerNormed
    return backbone.embeddings(ids, jnp.zeros_like(ids), jnp.ones_like(ids), None)


FAMILY = register(Family(
    name="deberta-v2",
    model_types=("deberta-v2",),
    config_from_hf=config_from_hf,
    heads={"base": DebertaV2Model, "masked_lm": DebertaV2ForMaskedLM,
           "sequence_classification": DebertaV2ForSequenceClassification,
           "token_classification": DebertaV2ForTokenClassification},
    base_prefix="deberta",
    dropout_keys={"hidden": ("hidden_dropout_prob",), "attention": ("attention_probs_dropout_prob",)},
    dims=lambda c: Dims(c.num_layers, c.hidden_size, c.vocab_size),
    # PEFT's defaults; "output.dense" is the attention's output and the feed-forward's (directly under a layer)
    targets=MethodTargets(lora=("query_proj", "value_proj"), ia3=("key_proj", "value_proj", "output.dense"),
                          ia3_feedforward=("output.dense",), after_attention=("attention.output.dense",),
                          after_mlp=r".*\.layer\.\d+\.output\.dense"),
    attention=DisentangledSelfAttention,
    kv_shape=lambda c: (c.num_heads, c.head_dim),
    input_states=input_states,
    layers="encoder.layer",
    embeddings=("embeddings",),
    stack_layers=True,
    no_prefix="its disentangled attention scores every key by its relative position, which prefix keys lack "
              "(prompt_tuning works)",
    head_paths={"sequence_classification": ("classifier", "pooler"), "token_classification": ("classifier",)},
    may_lack=("cls", "lm_predictions"),  # v3 checkpoints: pretrained by replaced-token detection, no MLM head
    # tied copies (decoder.* is read when untied); a buffer, and the unused position table v3 checkpoints hold
    ignore=(r"^cls\.predictions\.decoder\.(weight|bias)$",
            r"(^|\.)embeddings\.(position_ids|position_embeddings\.weight)$"),
))
