"""The RoBERTa encoder (RoBERTa, XLM-RoBERTa): BERT's config, layers and stack from ``bert.py`` with
RoBERTa's position ids (counted from ``pad_token_id + 1``) and its heads (``lm_head``; a
``classifier.dense``/``classifier.out_proj`` head on ``<s>``, no pooler).

Shapes: B batch, T length, D model width, V vocabulary, C labels.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from adapt.core.sharding import shard
from adapt.models import layers as L
from adapt.models.bert import (
    BUFFERS,
    ENCODER,
    BertConfig,
    BertForTokenClassification,
    BertModel,
    VocabProjection,
    bert_dense,
    bert_norm,
    config_from_hf,
)
from adapt.models.registry import Family, register


class RobertaModel(BertModel):
    """BERT's encoder with HF's ``create_position_ids_from_input_ids`` positions."""

    def positions(self, input_ids, attention_mask):  # [B, T] each -> [B, T]
        """Tokens count from ``pad_token_id + 1`` (restarting at each document of a packed row); padding
        (``input_ids == pad_token_id`` when no mask is given) sits at ``pad_token_id``."""
        pad = self.cfg.pad_token_id
        segments = input_ids != pad if attention_mask is None else attention_mask
        return jnp.where(segments != 0, L.default_positions(segments) + pad + 1, pad)


class RobertaLMHead(VocabProjection):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.dense = bert_dense(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", None), rngs)
        self.layer_norm = bert_norm(cfg, rngs)
        self.act = L.activation("gelu")  # fixed in HF, whatever hidden_act says

    def __call__(self, x, embeddings):  # [B, T, D] -> [B, T, V]
        return self.project(self.layer_norm(self.act(self.dense(x))), embeddings)


class RobertaClassificationHead(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dense = bert_dense(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", None), rngs)
        self.out_proj = bert_dense(cfg, cfg.hidden_size, cfg.num_labels, ("embed", "labels"), rngs)

    def __call__(self, x, rngs):  # [B, T, D] -> [B, C], from the first token (<s>)
        p = self.cfg.classifier_dropout
        h = jnp.tanh(self.dense(L.dropout(x[:, 0], p, rngs)))
        return self.out_proj(L.dropout(h, p, rngs))


class RobertaForMaskedLM(nnx.Module):
    """``input_ids [B, T]`` -> token logits ``[B, T, V]`` (float32)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.roberta = RobertaModel(cfg, pooler=False, rngs=rngs)
        self.lm_head = RobertaLMHead(cfg, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None):
        x = self.roberta(input_ids, attention_mask, token_type_ids, rngs=rngs)
        return self.lm_head(x, self.roberta.embeddings.word_embeddings)


class RobertaForSequenceClassification(nnx.Module):
    """``input_ids [B, T]`` -> class logits ``[B, C]`` (float32)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.roberta = RobertaModel(cfg, pooler=False, rngs=rngs)
        self.classifier = RobertaClassificationHead(cfg, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None):
        return self.head(self.roberta(input_ids, attention_mask, token_type_ids, rngs=rngs), self.roberta, rngs)

    def head(self, x, backbone, rngs):  # [B, T, D] -> [B, C]
        return shard(self.classifier(x, rngs).astype(jnp.float32), ("batch", "labels"))


class RobertaForTokenClassification(BertForTokenClassification):
    prefix, backbone = "roberta", RobertaModel


FAMILY = register(Family(
    name="roberta",
    model_types=("roberta", "xlm-roberta"),
    config_from_hf=config_from_hf,
    heads={"base": RobertaModel, "masked_lm": RobertaForMaskedLM,
            "sequence_classification": RobertaForSequenceClassification,
            "token_classification": RobertaForTokenClassification},
    base_prefix="roberta",
    **ENCODER,
    head_paths={"base": ("pooler",), "sequence_classification": ("classifier",),
                "token_classification": ("classifier",)},
    may_lack=("lm_head",),
    ignore=(BUFFERS, r"^lm_head\.decoder\.(weight|bias)$"),  # tied copies (decoder.weight is read when untied)
))
