"""One trial of an experiment, end to end: the config -> tokenised data -> pretrained model -> adaptation
method -> training with evaluation and early stopping -> the best model's dev/test metrics -> an export
that a later stage can start from.

    results = run_trial(config, workdir)   # {"dev": {"accuracy": ...}, "test": {...}}

A run folder holds ``config.json`` (the resolved config), ``labels.json``, the trainer's ``checkpoints/``,
``best/``, ``metrics.jsonl`` and ``tb/``, ``export/`` (the trained model merged into plain weights, in HF
layout, when ``export.model`` is set and the method can merge) and ``results.json`` (written last: its
presence means the trial finished). Running a trial again in the same folder resumes it.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from flax import nnx

from adapt import methods
from adapt.data.batches import eval_batches
from adapt.data.pipeline import data_defaults, prepare, save_labels, train_stream
from adapt.errors import ConfigError
from adapt.models import from_pretrained, load_tokenizer, save_pretrained
from adapt.models.checkpoint_io import write_atomic
from adapt.training import CausalLM, MaskedLM, SequenceClassification, TokenClassification, Trainer, defaults

TASK_FORMATS = {"causal_lm": ("lm", "sft"), "masked_lm": ("lm",), "sequence_classification": ("classification",),
                "token_classification": ("conll",)}


def base_config() -> ml_collections.ConfigDict:
    """Every section a trial reads, at its defaults; experiment configs override what differs."""
    c = defaults()
    c.unlock()
    c.model = ml_collections.ConfigDict(dict(
        name="bundled:minilm-l6",  # a Hub id, a local folder, a .gguf file or a bundled name
        task="sequence_classification",  # causal_lm | masked_lm | sequence_classification | token_classification
        dtype="float32",  # compute dtype (parameters stay float32)
        hidden_dropout=-1.0,  # -1: the checkpoint's own
        attention_dropout=-1.0,
    ))
    c.data = data_defaults()
    c.objective = ml_collections.ConfigDict(dict(
        mlm_probability=0.15,  # masked LM
        f1_ignore=(),  # label names left out of the F1 averages (e.g. a "no relation" class)
    ))
    c.eval = ml_collections.ConfigDict(dict(splits=("dev", "test"), batch_size=64))
    c.export = ml_collections.ConfigDict(dict(model=False))  # write export/ (a later stage starts from it)
    c.init_from = ""  # a previous stage's export folder: the model (and tokenizer) to start from
    c.condition = ""  # labels for tables: the row (e.g. "TAPT + LoRA") and the column (e.g. "bbc")
    c.benchmark = ""
    c.lock()
    c.method.unlock()
    return c


def _objective(task: str, tokenizer, labels: list[str] | None, cfg):
    if task == "causal_lm":
        return CausalLM()
    if task == "masked_lm":
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"model.task='masked_lm': the tokenizer of {cfg.model.name} has no mask token")
        return MaskedLM(mask_token_id=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                        special_ids=tuple(tokenizer.all_special_ids), probability=cfg.objective.mlm_probability)
    unknown = set(cfg.objective.f1_ignore) - set(labels)
    if unknown:
        raise ConfigError(f"objective.f1_ignore has {sorted(unknown)}, not labels of the data; labels: {labels}")
    ignore = tuple(labels.index(x) for x in cfg.objective.f1_ignore)
    if task == "sequence_classification":
        return SequenceClassification(num_labels=len(labels), f1_ignore=ignore)
    return TokenClassification(label_names=tuple(labels))


def _write_json(path: str, value) -> None:
    write_atomic(path, lambda f: f.write(json.dumps(value, indent=2).encode()))


def run_trial(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train and evaluate one trial in ``workdir``; returns ``{split: {metric: value}}`` of the best model."""
    os.makedirs(workdir, exist_ok=True)
    _write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
    task = config.model.task
    if config.data.format not in TASK_FORMATS.get(task, ()):
        raise ConfigError(f"data.format={config.data.format!r} does not fit model.task={task!r}; expected one of "
                          f"{TASK_FORMATS.get(task, ())}")
    source = config.init_from or config.model.name
    tokenizer = load_tokenizer(source)
    splits, _ = prepare(config.data, tokenizer)
    labels = splits.get("labels")
    if labels:
        save_labels(workdir, labels)
    method = methods.build(config.method)
    dropouts = {k: v for k in ("hidden_dropout", "attention_dropout") if (v := config.model[k]) >= 0}
    model = from_pretrained(source, task=task, labels=labels if task != "masked_lm" else None,
                            dtype=config.model.dtype, seed=config.train.seed, **dropouts)
    model = method.apply(model, nnx.Rngs(config.train.seed))
    objective = _objective(task, tokenizer, labels, config)
    trainer = Trainer(model, objective, config, workdir, method=method)
    eval_splits = [s for s in config.eval.splits if s in splits]
    batches = {s: (lambda s=s: eval_batches(splits[s], config.eval.batch_size, name=s)) for s in eval_splits}
    train = train_stream(config.data, tokenizer, config.train.batch_size, config.train.seed, splits.get("train"))
    during = config.train.early_stopping.metric or config.train.eval_every  # else evaluate once, at the end
    trainer.fit(train, {s: batches[s] for s in eval_splits[:1]} if during else None)  # the first is dev
    best = trainer.best_state()
    known = {s: {k.split("/", 1)[1]: v for k, v in trainer.best_metrics.items() if k.startswith(f"{s}/")}
             for s in eval_splits}  # the dev split was evaluated on the best parameters during fit
    results = {s: known[s] or trainer.evaluate(best, trainer.steps, batches[s]()) for s in eval_splits}
    if config.export.model:
        model = trainer.best_model(best)
        save_pretrained(method.merge(model), os.path.join(workdir, "export"), tokenizer=tokenizer)
    if jax.process_index() == 0:
        _write_json(os.path.join(workdir, "results.json"), results)
    return results
