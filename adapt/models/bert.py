"""The BERT encoder (BERT, MiniLM, all-MiniLM sentence encoders): the shared config, embeddings, encoder
stack and pooler, plus the BERT task heads (masked LM, sequence and token classification).

Submodules carry the HF names (``bert.encoder.layer.N.attention.self.query``), so loading needs no
renames. ``roberta.py`` reuses everything here but the heads and the position ids.

Shapes: B batch, T length, D model width, N heads, H head width, F intermediate width, V vocabulary,
C labels.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from adapt.core.errors import CheckpointError
from adapt.core.sharding import shard
from adapt.models import layers as L
from adapt.models import scan, vocab
from adapt.models.registry import Dims, Family, MethodTargets, register


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    act: str
    init_std: float
    hidden_dropout: float
    attention_dropout: float
    classifier_dropout: float
    num_labels: int
    pad_token_id: int
    tie_embeddings: bool
    dtype: str = "float32"
    scan_layers: bool = False  # the layers stacked [L, ...] and scanned (adapt.models.scan)
    hf: object = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def config_from_hf(hf, dtype: str = "float32") -> BertConfig:
    kind = getattr(hf, "position_embedding_type", "absolute")
    if kind != "absolute":
        raise CheckpointError(f"{hf.model_type}: position_embedding_type={kind!r} is not supported (only 'absolute')")
    if hf.hidden_size % hf.num_attention_heads:
        raise CheckpointError(f"{hf.model_type}: hidden_size {hf.hidden_size} is not a multiple of "
                              f"num_attention_heads {hf.num_attention_heads}")
    classifier_dropout = getattr(hf, "classifier_dropout", None)
    return BertConfig(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
        max_positions=hf.max_position_embeddings, type_vocab_size=hf.type_vocab_size,
        layer_norm_eps=hf.layer_norm_eps, act=hf.hidden_act, init_std=hf.initializer_range,
        hidden_dropout=hf.hidden_dropout_prob, attention_dropout=hf.attention_probs_dropout_prob,
        classifier_dropout=hf.hidden_dropout_prob if classifier_dropout is None else classifier_dropout,
        num_labels=hf.num_labels, pad_token_id=0 if hf.pad_token_id is None else hf.pad_token_id,
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", True)), dtype=dtype, hf=hf)


def bert_dense(cfg: BertConfig, d_in: int, d_out: int, axes: tuple, rngs: nnx.Rngs) -> nnx.Linear:
    return L.linear(d_in, d_out, axes, bias=True, std=cfg.init_std, dtype=cfg.dtype, rngs=rngs)


def bert_norm(cfg: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return L.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs)


class BertEmbeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        d, dt, std = cfg.hidden_size, cfg.dtype, cfg.init_std
        self.cfg = cfg
        self.word_embeddings = L.embed(cfg.vocab_size, d, ("vocab", "embed"), std=std, dtype=dt, rngs=rngs)
        self.position_embeddings = L.embed(cfg.max_positions, d, ("position", "embed"), std=std, dtype=dt, rngs=rngs)
        self.token_type_embeddings = L.embed(cfg.type_vocab_size, d, (None, "embed"), std=std, dtype=dt, rngs=rngs)
        self.LayerNorm = bert_norm(cfg, rngs)

    def __call__(self, input_ids, token_type_ids, positions, rngs):  # each [B, T] -> [B, T, D]
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)
        return L.dropout(self.LayerNorm(x), self.cfg.hidden_dropout, rngs)


class BertSelfAttention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.cfg = cfg
        self.query = bert_dense(cfg, d, d, ("embed", "heads"), rngs)
        self.key = bert_dense(cfg, d, d, ("embed", "heads"), rngs)
        self.value = bert_dense(cfg, d, d, ("embed", "heads"), rngs)

    def __call__(self, x, mask, rngs):  # x [B, T, D], mask [B, T, T] -> [B, T, D]
        cfg = self.cfg
        b, t, _ = x.shape
        q, k, v = (shard(proj(x).reshape(b, t, cfg.num_heads, cfg.head_dim), ("batch", "length", "heads", "head_dim"))
                   for proj in (self.query, self.key, self.value))
        k, v, mask = L.prepend_prefix(self, k, v, mask)  # prefix tuning; else unchanged
        out = L.dot_product_attention(q, k, v, mask, scale=cfg.head_dim ** -0.5,
                                      dropout_rate=cfg.attention_dropout, rngs=rngs)  # [B, T, N, H]
        return out.reshape(b, t, -1)


class BertOutput(nnx.Module):
    """``LayerNorm(x + dropout(dense(h)))``: HF's ``BertSelfOutput`` (``h`` [B, T, D], the attention
    output) and ``BertOutput`` (``h`` [B, T, F], the intermediate activations)."""

    def __init__(self, cfg: BertConfig, d_in: int, axis: str, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dense = bert_dense(cfg, d_in, cfg.hidden_size, (axis, "embed"), rngs)
        self.LayerNorm = bert_norm(cfg, rngs)

    def __call__(self, h, x, rngs):  # -> [B, T, D]
        return self.LayerNorm(x + L.dropout(self.dense(h), self.cfg.hidden_dropout, rngs))


class BertAttention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.self = BertSelfAttention(cfg, rngs=rngs)  # the HF name: attention.self.query
        self.output = BertOutput(cfg, cfg.hidden_size, "heads", rngs=rngs)

    def __call__(self, x, mask, rngs):  # [B, T, D]
        return self.output(self.self(x, mask, rngs), x, rngs)


class BertIntermediate(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.dense = bert_dense(cfg, cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), rngs)
        self.act = L.activation(cfg.act)

    def __call__(self, x):  # [B, T, D] -> [B, T, F]
        return shard(self.act(self.dense(x)), ("batch", "length", "mlp"))


class BertLayer(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.attention = BertAttention(cfg, rngs=rngs)
        self.intermediate = BertIntermediate(cfg, rngs=rngs)
        self.output = BertOutput(cfg, cfg.intermediate_size, "mlp", rngs=rngs)

    def __call__(self, x, mask, rngs):  # [B, T, D]
        x = self.attention(x, mask, rngs)
        return shard(self.output(self.intermediate(x), x, rngs), ("batch", "length", "embed"))


class BertEncoder(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.layer = scan.layers(lambda rngs: BertLayer(cfg, rngs=rngs), cfg.num_layers, rngs, stacked=cfg.scan_layers)

    def __call__(self, x, mask, rngs):  # [B, T, D], mask [B, T, T]
        return scan.apply(self.layer, lambda layer, x, rngs, _: L.run_layer(layer, x, mask, rngs), x, rngs)


class BertPooler(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.dense = bert_dense(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", None), rngs)

    def __call__(self, x):  # [B, T, D] -> [B, D]: tanh(dense(first token))
        return jnp.tanh(self.dense(x[:, 0]))


class BertModel(nnx.Module):
    """The encoder: ``input_ids [B, T]`` -> final hidden states ``[B, T, D]``. The pooler (HF's
    ``add_pooling_layer``) is built unless ``pooler=False``; only sequence classification calls it."""

    def __init__(self, cfg: BertConfig, *, pooler: bool = True, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.encoder = BertEncoder(cfg, rngs=rngs)
        if pooler:
            self.pooler = BertPooler(cfg, rngs=rngs)

    def positions(self, input_ids, attention_mask):  # [B, T] each -> [B, T]
        """0, 1, ... from the start of each document: HF's ``arange`` for a right-padded 0/1 mask (with
        left padding HF counts the padding, we do not)."""
        return L.default_positions(jnp.ones_like(input_ids) if attention_mask is None else attention_mask)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None):
        """``attention_mask [B, T]``: 0 for padding, else a document id (a packed row numbers its
        documents 1, 2, ...; they do not attend to each other and their positions restart);
        ``token_type_ids [B, T]`` default to 0."""
        segments = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids, self.positions(input_ids, attention_mask), rngs)
        x = shard(x, ("batch", "length", "embed"))
        x, segments, _, virtual = L.prepend_prompt(self, x, segments)  # prompt tuning
        x = self.encoder(x, L.attention_mask(segments, causal=False, virtual=virtual), rngs)
        return L.drop_prompt(x, virtual)


class BertPredictionHeadTransform(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.dense = bert_dense(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", None), rngs)
        self.act = L.activation(cfg.act)
        self.LayerNorm = bert_norm(cfg, rngs)

    def __call__(self, x):  # [B, T, D]
        return self.LayerNorm(self.act(self.dense(x)))


class VocabProjection(nnx.Module):
    """Base of the MLM heads: projects onto the vocabulary with the word embeddings plus ``bias [V]``,
    or, for a checkpoint with untied embeddings, with its own ``decoder`` (weight and bias: HF ties
    ``decoder.bias`` to ``bias`` only when the embeddings are tied, and then ``bias`` goes unused)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32), logical_axes=("vocab",))
        if not cfg.tie_embeddings:
            self.decoder = bert_dense(cfg, cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), rngs)

    def project(self, x, embeddings: nnx.Embed):  # [B, T, D] -> float32 [B, T, V] (adapt.models.vocab.logits)
        def head(x):
            if hasattr(self, "decoder"):
                return shard(self.decoder(x).astype(jnp.float32), ("batch", "length", "vocab"))
            return shard(embeddings.attend(x).astype(jnp.float32) + self.bias[...], ("batch", "length", "vocab"))

        return vocab.logits(x, head)


class BertLMPredictionHead(VocabProjection):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.transform = BertPredictionHeadTransform(cfg, rngs=rngs)

    def __call__(self, x, embeddings):  # [B, T, D] -> [B, T, V]
        return self.project(self.transform(x), embeddings)


class BertOnlyMLMHead(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.predictions = BertLMPredictionHead(cfg, rngs=rngs)


class BertForMaskedLM(nnx.Module):
    """``input_ids [B, T]`` -> token logits ``[B, T, V]`` (float32; in a step with ``train.loss_chunks`` > 1,
    :class:`adapt.models.vocab.HeadInputs`)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.bert = BertModel(cfg, pooler=False, rngs=rngs)
        self.cls = BertOnlyMLMHead(cfg, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None):
        x = self.bert(input_ids, attention_mask, token_type_ids, rngs=rngs)
        return self.cls.predictions(x, self.bert.embeddings.word_embeddings)


class BertForSequenceClassification(nnx.Module):
    """``input_ids [B, T]`` -> class logits ``[B, C]`` (float32) from the pooled first token."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.bert = BertModel(cfg, rngs=rngs)
        self.classifier = bert_dense(cfg, cfg.hidden_size, cfg.num_labels, ("embed", "labels"), rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None):
        return self.head(self.bert(input_ids, attention_mask, token_type_ids, rngs=rngs), self.bert, rngs)

    def head(self, x, backbone: BertModel, rngs):  # [B, T, D] -> [B, C]
        logits = self.classifier(L.dropout(backbone.pooler(x), self.cfg.classifier_dropout, rngs))
        return shard(logits.astype(jnp.float32), ("batch", "labels"))


class BertForTokenClassification(nnx.Module):
    """``input_ids [B, T]`` -> per-token class logits ``[B, T, C]`` (float32). Subclasses set the
    backbone's attribute name (its HF prefix) and class."""

    prefix, backbone = "bert", BertModel

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        setattr(self, self.prefix, self.backbone(cfg, pooler=False, rngs=rngs))
        self.classifier = bert_dense(cfg, cfg.hidden_size, cfg.num_labels, ("embed", "labels"), rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None):
        backbone = getattr(self, self.prefix)
        return self.head(backbone(input_ids, attention_mask, token_type_ids, rngs=rngs), backbone, rngs)

    def head(self, x, backbone, rngs):  # [B, T, D] -> [B, T, C]
        logits = self.classifier(L.dropout(x, self.cfg.classifier_dropout, rngs))
        return shard(logits.astype(jnp.float32), ("batch", "length", "labels"))


def input_states(backbone: BertModel, ids):  # [B, T] -> [B, T, D]: word + position + type embeddings, LayerNorm
    ones = jnp.ones_like(ids)
    return backbone.embeddings(ids, 0 * ids, backbone.positions(ids, ones), None)


# What BERT and RoBERTa declare alike (roberta.py reuses it).
ENCODER = dict(
    dropout_keys={"hidden": ("hidden_dropout_prob",), "attention": ("attention_probs_dropout_prob",)},
    dims=lambda c: Dims(c.num_layers, c.hidden_size, c.vocab_size),
    # PEFT's defaults; the feed-forward output is "output.dense" directly under a layer (not attention.output).
    targets=MethodTargets(lora=("query", "value"), ia3=("key", "value", "output.dense"),
                          ia3_feedforward=("output.dense",), after_attention=("attention.output.dense",),
                          after_mlp=r".*\.layer\.\d+\.output\.dense"),
    attention=BertSelfAttention,
    kv_shape=lambda c: (c.num_heads, c.head_dim),
    input_states=input_states,
    layers="encoder.layer",
    embeddings=("embeddings",),
    stack_layers=True,
)
# Non-persistent buffers that older checkpoints saved.
BUFFERS = r"(^|\.)embeddings\.(position_ids|token_type_ids)$"

FAMILY = register(Family(
    name="bert",
    model_types=("bert",),
    config_from_hf=config_from_hf,
    heads={"base": BertModel, "masked_lm": BertForMaskedLM,
            "sequence_classification": BertForSequenceClassification,
            "token_classification": BertForTokenClassification},
    base_prefix="bert",
    **ENCODER,
    head_paths={"base": ("pooler",), "sequence_classification": ("classifier", "bert.pooler"),
                "token_classification": ("classifier",)},
    may_lack=("cls",),
    # decoder.*: tied copies (decoder.weight is read when untied); seq_relationship: BertForPreTraining's NSP head.
    ignore=(BUFFERS, r"^cls\.predictions\.decoder\.(weight|bias)$", r"^cls\.seq_relationship\."),
))
