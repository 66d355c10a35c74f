"""Training objectives: each turns model outputs and a batch into summable statistics, and summarises
accumulated statistics into metrics, so train logs, gradient accumulation and evaluation over a whole
split share one code path.

``loss(outputs, batch) -> (sums, predictions)``: ``sums`` is a dict of arrays that add up across
micro-batches, batches and devices; ``sums["loss_sum"] / sums["weight"]`` is the mean loss (so the
accumulated gradient of ``loss_sum`` divided by the total ``weight`` equals the big-batch gradient).
``predictions`` is None, or per-example predictions the host needs (token classification spans).
``summarize(sums, predictions)`` gives the metrics (loss, accuracy, perplexity, F1...).
``targets(batch) -> (targets, valid)``: what each position of the logits is scored against and whether it
counts (``labels`` and where they are not -100; causal LM: the next token within its document).
``outputs(model_outputs, batch)`` (evaluation only; the train step never calls it) is None, or a dict of
per-example arrays ``[B, ...]`` that the host writes out one line per example (``adapt/evaluation/predictions.py``):
sequence classification's ``probabilities [B, C]`` (float32) and ``prediction [B]``, token classification's
``prediction [B, T]``.

Batch keys: ``input_ids [B, T]``; ``attention_mask [B, T]`` (0 padding, else the document id);
``loss_mask [B, T]`` (causal LM: 1 where the token is a target, so SFT masks the prompt); ``labels``
(``[B]`` for sequence classification, ``[B, T]`` for token classification and masked LM; -100 = ignore).

Each objective's task kind (its data formats, model head, export names) is registered at the end of the
file (:mod:`adapt.training.tasks`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adapt.core.errors import ConfigError
from adapt.data.formats import IGNORE, spans
from adapt.models import vocab
from adapt.training import tasks


def argmax(logits):
    """``jnp.argmax(logits, -1)`` (the first index holding the maximum) as a max, then a min over the
    indices equal to it: two reductions that vectorise, 3x faster on XLA:CPU than its variadic
    (value, index) reduction over a [2048, 49152] LM head."""
    top = jnp.max(logits, -1, keepdims=True)
    index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.min(jnp.where(logits == top, index, logits.shape[-1]), -1)


def _token_sums(logits, targets, valid):
    """logits ``[..., V]``, targets/valid ``[...]`` -> summed cross-entropy, count and correct count."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, targets, 0))
    valid = valid.astype(jnp.float32)
    return {"loss_sum": jnp.sum(nll * valid), "weight": jnp.sum(valid),
            "correct": jnp.sum((argmax(logits) == targets) * valid)}


def _vocab_sums(outputs, targets, valid):
    """:func:`_token_sums` of a language model's head outputs: logits ``[B, T, V]``, or
    :class:`~adapt.models.vocab.HeadInputs` reduced chunk by chunk (``train.loss_chunks``)."""
    if isinstance(outputs, vocab.HeadInputs):
        return outputs.reduce(_token_sums, targets, valid)
    return _token_sums(outputs, targets, valid)


def _confusion(logits, labels, num_labels):  # -> [C, C] counts, rows gold, columns predicted
    valid = (labels != IGNORE).astype(jnp.float32).reshape(-1)
    pred = argmax(logits).reshape(-1)
    gold = jnp.where(labels == IGNORE, 0, labels).reshape(-1)
    return jnp.zeros((num_labels, num_labels), jnp.float32).at[gold, pred].add(valid)


def _mean_metrics(sums) -> dict:
    weight = max(float(sums["weight"]), 1.0)
    return {"loss": float(sums["loss_sum"]) / weight, "accuracy": float(sums["correct"]) / weight,
            "count": float(sums["weight"])}


class Objective:
    """Defaults: batches go to the model as they are; metrics are the mean loss and accuracy."""

    def prepare(self, batch, rng):
        return batch

    def targets(self, batch):
        """(targets, valid): what each position of the logits is scored against and whether it counts (the
        positions the loss averages over; distillation scores the same ones): ``labels``, valid where not -100."""
        labels = batch["labels"]
        return labels, labels != IGNORE

    def outputs(self, outputs, batch):
        return None

    def summarize(self, sums, predictions=None) -> dict:
        return _mean_metrics(sums)


def has_outputs(objective) -> bool:
    """Whether ``objective`` gives per-example outputs (:meth:`Objective.outputs` overridden)."""
    method = getattr(type(objective), "outputs", None)
    return method is not None and method is not Objective.outputs


class _LanguageModel(Objective):
    def summarize(self, sums, predictions=None) -> dict:
        out = _mean_metrics(sums)
        out["perplexity"] = float(np.exp(min(out["loss"], 80.0)))
        return out


@dataclasses.dataclass(frozen=True)
class CausalLM(_LanguageModel):
    """Next-token cross-entropy; a target counts when it is in the same document as its context and
    ``loss_mask`` (default all ones) marks it."""

    def targets(self, batch):  # -> [B, T] each
        # Position t predicts token t+1; the last position has no target. Targets and validity are shifted
        # (padded with an invalid column) rather than the logits sliced: slicing copies the [B, T-1, V]
        # logits forward and pads their gradient back, two full passes over the largest tensor of the step.
        ids = batch["input_ids"]
        seg = batch.get("attention_mask", jnp.ones_like(ids))
        valid = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
        if "loss_mask" in batch:
            valid &= batch["loss_mask"][:, 1:] != 0
        shift = ((0, 0), (0, 1))  # [B, T-1] -> [B, T]: a last column of target 0, not valid
        return jnp.pad(ids[:, 1:], shift), jnp.pad(valid, shift)

    def loss(self, logits, batch):  # logits [B, T, V] or HeadInputs
        return _vocab_sums(logits, *self.targets(batch)), None


@dataclasses.dataclass(frozen=True)
class MaskedLM(_LanguageModel):
    """BERT's masked LM: ``probability`` of the non-special tokens are targets, of which 80% become
    ``mask_token_id``, 10% a random token and 10% stay; drawn in the step from the step's RNG, so the
    masking is new every step and reproducible. A batch that already has ``labels`` is used as is."""
    mask_token_id: int
    vocab_size: int
    special_ids: tuple[int, ...] = ()
    probability: float = 0.15

    def prepare(self, batch, rng):
        if "labels" in batch:
            return batch
        ids = batch["input_ids"]
        eligible = batch.get("attention_mask", jnp.ones_like(ids)) != 0
        if self.special_ids:
            eligible &= ~jnp.isin(ids, jnp.asarray(self.special_ids))
        if "special_tokens_mask" in batch:
            eligible &= batch["special_tokens_mask"] == 0
        k_select, k_kind, k_random = jax.random.split(rng, 3)
        selected = eligible & jax.random.bernoulli(k_select, self.probability, ids.shape)
        u = jax.random.uniform(k_kind, ids.shape)
        random_ids = jax.random.randint(k_random, ids.shape, 0, self.vocab_size, ids.dtype)
        masked = jnp.where(selected & (u < 0.8), self.mask_token_id, ids)
        masked = jnp.where(selected & (u >= 0.8) & (u < 0.9), random_ids, masked)
        return {**batch, "input_ids": masked, "labels": jnp.where(selected, ids, IGNORE)}

    def loss(self, logits, batch):  # logits [B, T, V] or HeadInputs, labels [B, T]
        return _vocab_sums(logits, *self.targets(batch)), None


def _f1_from_confusion(conf: np.ndarray, label_ids=None) -> tuple[float, float]:
    """Micro- and macro-F1 over ``label_ids`` (default all labels seen in gold or predictions)."""
    tp = np.diag(conf)
    gold, pred = conf.sum(1), conf.sum(0)
    ids = np.asarray(label_ids if label_ids is not None else np.flatnonzero((gold + pred) > 0))
    if ids.size == 0:
        return 0.0, 0.0
    f1 = np.where(gold[ids] + pred[ids] > 0, 2 * tp[ids] / np.maximum(gold[ids] + pred[ids], 1), 0.0)
    micro = 2 * tp[ids].sum() / max(gold[ids].sum() + pred[ids].sum(), 1)
    return float(micro), float(f1.mean())


@dataclasses.dataclass(frozen=True)
class SequenceClassification(Objective):
    """Cross-entropy over ``num_labels`` classes; labels ``[B]``, -100 for padding rows. Reports accuracy,
    micro-F1 and macro-F1 (over the classes present in gold or predictions, as scikit-learn does);
    ``f1_ignore`` names label ids left out of the F1 averages (a "no relation" class, for instance)."""
    num_labels: int
    f1_ignore: tuple[int, ...] = ()

    def loss(self, logits, batch):  # logits [B, C], labels [B]
        sums = _token_sums(logits, *self.targets(batch))
        sums["confusion"] = _confusion(logits, batch["labels"], self.num_labels)
        return sums, None

    def outputs(self, logits, batch):  # the argmax too, so a written prediction is the one accuracy counted
        return {"probabilities": jax.nn.softmax(logits.astype(jnp.float32), -1), "prediction": argmax(logits)}

    def summarize(self, sums, predictions=None) -> dict:
        out = _mean_metrics(sums)
        conf = np.asarray(sums["confusion"])
        seen = np.flatnonzero(conf.sum(0) + conf.sum(1) > 0)
        out["micro_f1"], out["macro_f1"] = _f1_from_confusion(conf, [i for i in seen if i not in self.f1_ignore])
        return out


@dataclasses.dataclass(frozen=True)
class TokenClassification(Objective):
    """Per-token cross-entropy (labels ``[B, T]``, -100 on sub-word continuations, special tokens and
    padding). Evaluation adds entity-level precision/recall/F1 over BIO/IOBES spans, as conlleval and
    seqeval count them, from ``label_names`` (``B-Chemical``, ``I-Chemical``, ``O``, ...)."""
    label_names: tuple[str, ...]

    def loss(self, logits, batch):  # logits [B, T, C]
        return _token_sums(logits, *self.targets(batch)), argmax(logits)

    def outputs(self, logits, batch):
        return {"prediction": argmax(logits)}

    def summarize(self, sums, predictions=None) -> dict:
        out = _mean_metrics(sums)
        if predictions is not None:
            out.update(span_f1(predictions, self.label_names))
        return out


def span_f1(predictions: list[tuple[np.ndarray, np.ndarray]], label_names) -> dict:
    """``predictions``: ``(pred [B, T], labels [B, T])`` pairs; positions labelled -100 are skipped."""
    correct = n_pred = n_gold = 0
    for pred, gold in predictions:
        for p_row, g_row in zip(np.asarray(pred), np.asarray(gold)):
            keep = g_row != IGNORE
            p = spans([label_names[i] for i in p_row[keep]])
            g = spans([label_names[i] for i in g_row[keep]])
            correct, n_pred, n_gold = correct + len(p & g), n_pred + len(p), n_gold + len(g)
    precision, recall = correct / max(n_pred, 1), correct / max(n_gold, 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"span_precision": precision, "span_recall": recall, "span_f1": f1}


@dataclasses.dataclass(frozen=True)
class PerHead(Objective):
    """Several tasks' objectives over one model's outputs ``{task: logits}`` (:mod:`adapt.models.multihead`), each
    with its own labels, ``batch["labels"] = {task: [B] or [B, T]}`` (-100 where a row is not that task's). The
    sums hold each task's own under its name and their totals: ``loss_sum`` = sum over tasks of ``weight_k *``
    task k's summed loss, ``weight`` = the labels counted over all tasks. So a batch drawn from one task (as
    :mod:`adapt.features.multitask` draws them) steps on ``weight_k *`` that task's mean loss, exactly under gradient
    accumulation. ``summarize`` gives each task's metrics as ``<task>/<metric>`` (of tasks with labels in the
    sums), the total ``loss`` and ``mean_score``: the mean over those tasks of each one's ``scores`` metric."""
    tasks: tuple[tuple[str, Objective], ...]  # (name, objective) per task
    weights: tuple[float, ...]  # loss weight per task
    scores: tuple[str, ...]  # the metric per task that mean_score averages

    def loss(self, outputs, batch):  # outputs {task: logits}
        sums, predictions = {"loss_sum": 0.0, "weight": 0.0, "correct": 0.0}, {}
        for (name, objective), w in zip(self.tasks, self.weights):
            own, pred = objective.loss(outputs[name], {**batch, "labels": batch["labels"][name]})
            sums[name] = own
            sums["loss_sum"] += w * own["loss_sum"]
            sums["weight"] += own["weight"]
            sums["correct"] += own["correct"]
            if pred is not None:
                predictions[name] = pred
        return sums, predictions or None

    def summarize(self, sums, predictions=None) -> dict:
        out = _mean_metrics(sums)
        scores = []
        for (name, objective), score in zip(self.tasks, self.scores):
            if float(sums[name]["weight"]) == 0:  # no example of this task in what was summed
                continue
            own = [(p[name], labels[name]) for p, labels in predictions or () if name in p] or None
            metrics = objective.summarize(sums[name], own)
            out.update({f"{name}/{k}": v for k, v in metrics.items()})
            scores.append(metrics.get(score))
        if scores and None not in scores:  # (training logs have no span F1: it needs the predictions)
            out["mean_score"] = float(np.mean(scores))
        return out


# ---- the task kinds these objectives train (adapt.training.tasks): one registration each ----------------------------

def _masked_lm(inputs: tasks.TaskInputs) -> MaskedLM:
    tok = inputs.tokenizer
    if tok.mask_token_id is None:
        raise ConfigError(f"model.task='masked_lm': the tokenizer of {inputs.config.model.name} has no mask token")
    return MaskedLM(mask_token_id=tok.mask_token_id, vocab_size=len(tok), special_ids=tuple(tok.all_special_ids),
                    probability=inputs.config.objective.mlm_probability)


def _f1_ignore(inputs: tasks.TaskInputs) -> tuple[int, ...]:
    """The ids of the labels ``objective.f1_ignore`` names."""
    labels, ignore = inputs.labels, inputs.config.objective.f1_ignore
    unknown = set(ignore) - set(labels)
    if unknown:
        raise ConfigError(f"objective.f1_ignore has {sorted(unknown)}, not labels of the data; labels: {labels}")
    return tuple(labels.index(x) for x in ignore)


def _token_classification(inputs: tasks.TaskInputs) -> TokenClassification:
    _f1_ignore(inputs)  # names checked; span F1 counts every entity type
    return TokenClassification(label_names=tuple(inputs.labels))


tasks.register(tasks.Task("causal_lm", formats=("lm", "sft"), objective=lambda inputs: CausalLM()))
tasks.register(tasks.Task("masked_lm", formats=("lm",), objective=_masked_lm, head_args=lambda labels: {}))
tasks.register(tasks.Task(
    "sequence_classification", formats=("classification",),
    objective=lambda inputs: SequenceClassification(num_labels=len(inputs.labels), f1_ignore=_f1_ignore(inputs))))
tasks.register(tasks.Task("token_classification", formats=("conll",), objective=_token_classification))
