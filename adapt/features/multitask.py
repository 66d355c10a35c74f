"""Multi-task fine-tuning: one run trains a shared backbone with one head per task.

    c.multitask.tasks = {"chemprot": {"benchmark": "chemprot"},
                         "bc5cdr": {"benchmark": "bc5cdr", "weight": 0.5}}
    c.multitask.sampling = "temperature"; c.multitask.temperature = 2.0

A task is a data section (the trial's ``data`` section with the task's keys, as a mixture source's:
:func:`adapt.data.pipeline.section`; ``benchmark`` stands for a benchmark's data keys) plus ``task`` (its task
kind; by default the one its format trains: ``classification`` -> sequence classification, ``conll`` -> token
classification), ``weight`` (its loss weight, default 1), ``metric`` (the metric ``mean_score`` averages; by
default the benchmark's, else macro-F1 or span F1) and ``f1_ignore`` (label names left out of its F1 averages).
Each has its own label set and head; kinds mix freely (:class:`adapt.models.multihead.MultiHead`).

Training draws each batch from one task (MT-DNN, Liu et al., 2019): task k with probability p_k proportional to
n_k ** (1 / T), n_k its train examples: ``sampling="proportional"`` is T = 1, ``"temperature"`` takes T from
``multitask.temperature`` (T = 2 in MT-DNN's follow-ups, "temperature-scaled mixing" of Arivazhagan et al., 2019),
``"equal"`` is T = infinity. The step's loss is ``weight_k`` times the task's mean loss
(:class:`adapt.training.objectives.PerHead`); the data position (one row stream per task) is checkpointed and
resumes exactly. Evaluation runs every task's split and reports ``<task>/<metric>`` and ``mean_score`` (early
stopping may watch ``dev/mean_score`` or one task's metric). ``export.model`` writes ``export/<task>/``, each a
plain model of the family (the shared backbone with that task's head), and ``export/multitask.json``; a later
trial with ``init_from`` at that export starts from the task named by ``init_task`` (default its
``benchmark``): multi-task then single-task fine-tuning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import ml_collections
import numpy as np

from adapt.core import schema
from adapt.core.errors import ConfigError
from adapt.core.files import write_json
from adapt.core.schema import Choice, Float, Map, Str, Tuple
from adapt.data import catalog
from adapt.data.batches import Mixture, RowStream, eval_batches
from adapt.data.formats import IGNORE
from adapt.data.pipeline import SOURCE_SCHEMA, prepare, section
from adapt.features.base import Feature, Refusal, register, token_report
from adapt.models import from_pretrained, save_pretrained
from adapt.models.multihead import MultiHead
from adapt.training import objectives, tasks

SAMPLING = ("proportional", "temperature", "equal")
TASK_KEYS = ("task", "weight", "metric", "f1_ignore")  # a task's keys beside its data keys
RESERVED = ("loss", "accuracy", "count", "perplexity", "mean_score", "labels")  # top-level metric and batch names
LISTING = "multitask.json"  # beside the per-task exports: {"tasks": [...]}
_DEFAULT_SCORE = {"sequence_classification": "macro_f1", "token_classification": "span_f1"}


def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        tasks={},  # name -> {"benchmark": ... or data keys, "task", "weight", "metric", "f1_ignore"}; {}: single task
        sampling="proportional",  # proportional | temperature | equal: which task each batch is drawn from
        temperature=2.0,  # T of sampling="temperature": p_k ~ n_k ** (1 / T)
    ))


SCHEMA = dict(  # of defaults()
    tasks=Map(dict(SOURCE_SCHEMA,
                   task=Choice("", *_DEFAULT_SCORE, doc="the task's head; '': the one its data format trains"),
                   weight=Float(gt=0, doc="the task's loss weight"),
                   metric=Str(doc="the metric mean_score averages; '': the benchmark's, else macro-F1 or span F1"),
                   f1_ignore=Tuple(of=Str(), doc="label names left out of its F1 averages")),
              doc="name -> a task's data keys (or benchmark), task, weight, metric, f1_ignore; {}: single task"),
    sampling=Choice(*SAMPLING, doc="which task each batch is drawn from"),
    temperature=Float(gt=0, doc='T of sampling="temperature": p_k ~ n_k ** (1 / T)'),
)


def enabled(config) -> bool:
    return bool(config.get("multitask", {}).get("tasks"))


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    data: ml_collections.ConfigDict  # its data section
    kind: str  # its task kind (adapt.training.tasks)
    weight: float
    metric: str
    f1_ignore: tuple[str, ...]


def specs(config) -> list[TaskSpec]:
    """The tasks of ``config.multitask``, checked (one line naming the key) before anything is read."""
    mt = config.multitask
    schema.check(SCHEMA, mt, "multitask")
    out = []
    for name, entry in mt.tasks.items():
        where = f"multitask.tasks.{name}"
        if not re.fullmatch(r"[A-Za-z_][\w-]*", name) or name in RESERVED:
            raise ConfigError(f"{where}: a task name must be a word (letters, digits, _ or -) other than "
                              f"{', '.join(RESERVED)}: its metrics are logged as <split>/{name}/<metric>")
        if not isinstance(entry, (dict, ml_collections.ConfigDict)):
            raise ConfigError(f"{where}={entry!r}; expected the task's keys (benchmark or data keys, task, weight)")
        entry = dict(entry)
        own = {k: entry.pop(k) for k in TASK_KEYS if k in entry}
        data = section(config.data, entry, where)
        kind = own.get("task") or next((t for t in _DEFAULT_SCORE if data.format in tasks.get(t).formats), "")
        if not kind:
            raise ConfigError(f"{where}: data.format={data.format!r} has no classification head; expected a "
                              f"classification or conll task")
        if data.format not in tasks.get(kind).formats:
            raise ConfigError(f"{where}: data.format={data.format!r} does not fit task {kind!r}")
        if data.label_type != "category":
            raise ConfigError(f"{where}: data.label_type={data.label_type!r}; a multi-task head classifies "
                              f"(label_type='category')")
        weight = own.get("weight", 1.0)
        benchmark = entry.get("benchmark")
        metric = own.get("metric") or (catalog.get(benchmark).metric if benchmark else _DEFAULT_SCORE[kind])
        out.append(TaskSpec(name, data, kind, float(weight), metric, tuple(own.get("f1_ignore", ()))))
    return out


def sampling_probs(sizes: dict[str, int], sampling: str, temperature: float = 1.0) -> dict[str, float]:
    """Each task's chance of giving a batch: ``n_k ** (1 / T)`` normalised (T = 1 proportional, infinity equal)."""
    exponent = {"proportional": 1.0, "temperature": 1.0 / temperature, "equal": 0.0}[sampling]
    raw = {k: float(n) ** exponent for k, n in sizes.items()}
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


def labels_by_task(batch: dict, task: int, names: list[str], token_level: list[bool]) -> dict:
    """A batch of task ``names[task]``'s rows with its ``labels`` as every task's: ``{name: [B] or [B, T]}``, -100
    for the tasks it is not."""
    labels, (b, t) = batch["labels"], batch["input_ids"].shape
    out = {}
    for j, (name, tokens) in enumerate(zip(names, token_level)):
        out[name] = np.asarray(labels, np.int32) if j == task else np.full((b, t) if tokens else (b,), IGNORE, np.int32)
    return {**batch, "labels": out}


class MultiTaskBatches:
    """The training stream: a per-batch :class:`~adapt.data.batches.Mixture` of the tasks' train splits (its
    position, ``state()``/``restore()``, and the tokens each task gave), each batch's labels laid out per task."""

    def __init__(self, data: MultiTaskData, batch_size: int, seed: int, probs: dict[str, float]):
        self.data = data
        streams = {n: RowStream({**data.splits["train"][n], "task": np.full(data.sizes[n], j, np.int32)},
                                seed=seed + 1000 * j, name=n) for j, n in enumerate(data.names)}
        self.mixture = Mixture(streams, probs, batch_size, seed=seed, per_batch=True)

    @property
    def steps_per_epoch(self) -> int:
        return self.mixture.steps_per_epoch

    @property
    def tokens(self) -> dict[str, int]:  # the mixture's own (restore replaces it)
        return self.mixture.tokens

    def next_batch(self) -> dict:
        batch = self.mixture.next_batch()
        task = int(batch.pop("task")[0])
        return labels_by_task(batch, task, self.data.names, self.data.token_level)

    def token_shares(self) -> dict[str, float]:
        return self.mixture.token_shares()

    def state(self) -> dict:
        return self.mixture.state()

    def restore(self, state: dict) -> None:
        self.mixture.restore(state)


@dataclasses.dataclass
class MultiTaskData:
    """The tasks' tokenised splits: ``splits[split][task]`` (columns), ``splits["labels"][task]`` (label names)."""
    specs: list[TaskSpec]
    splits: dict

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def token_level(self) -> list[bool]:
        return [s.kind == "token_classification" for s in self.specs]

    @property
    def sizes(self) -> dict[str, int]:
        return {n: len(self.splits["train"][n]["input_ids"]) for n in self.names}

    def eval_batches(self, split: str, batch_size: int):
        """Every task's ``split`` once, task after task, its labels laid out per task."""
        for j, name in enumerate(self.names):
            if name in self.splits.get(split, {}):
                for batch in eval_batches(self.splits[split][name], batch_size, name=f"{name} {split}"):
                    yield labels_by_task(batch, j, self.names, self.token_level)

    def objective(self, tokenizer, config) -> objectives.PerHead:
        built = []
        for s in self.specs:
            cfg = ml_collections.ConfigDict(config.to_dict())
            cfg.objective.f1_ignore = s.f1_ignore
            built.append((s.name, tasks.get(s.kind).objective(tasks.TaskInputs(tokenizer, self.splits["labels"][s.name],
                                                                                cfg))))
        return objectives.PerHead(tuple(built), tuple(s.weight for s in self.specs),
                                    tuple(s.metric for s in self.specs))

    def train_stream(self, config) -> MultiTaskBatches:
        mt = config.multitask
        return MultiTaskBatches(self, config.train.batch_size, config.train.seed,
                                sampling_probs(self.sizes, mt.sampling, mt.temperature))


def prepare_tasks(task_specs: list[TaskSpec], tokenizer) -> MultiTaskData:
    """Each task's splits (``task_specs``: :func:`specs`), tokenised through the data cache; every task needs a
    train split with labels."""
    out = {"labels": {}}
    for s in task_specs:
        splits, _ = prepare(s.data, tokenizer)
        if "train" not in splits or not splits.get("labels"):
            raise ConfigError(f"multitask.tasks.{s.name}: no labelled train split")
        out["labels"][s.name] = splits["labels"]
        for split, arrays in splits.items():
            if split not in ("labels", "quality"):
                out.setdefault(split, {})[s.name] = arrays
    return MultiTaskData(task_specs, out)


def build_model(data: MultiTaskData, source: str, **load):
    """The tasks' heads on one backbone from ``source`` (``load``: :func:`adapt.models.from_pretrained`'s keywords)."""
    return MultiHead.combine({s.name: from_pretrained(source, task=s.kind, **tasks.get(s.kind).head_args(
        data.splits["labels"][s.name]), **load) for s in data.specs})


def export(model, out: str, tokenizer) -> str:
    """``out/<task>/`` per task (:meth:`~adapt.models.multihead.MultiHead.task_model`, in HF layout with the
    tokenizer) and ``out/multitask.json``."""
    names = list(model.tasks)
    for name in names:
        save_pretrained(model.task_model(name), os.path.join(out, name), tokenizer=tokenizer)
    write_json(os.path.join(out, LISTING), {"tasks": names})
    return out


def init_source(config) -> str:
    """Where the trial's model comes from: ``init_from`` (a multi-task export: its ``init_task`` subfolder, by
    default the trial's ``data.benchmark``), else ``model.name``."""
    if not config.init_from:
        return config.model.name
    listing = os.path.join(config.init_from, LISTING)
    if not os.path.isfile(listing):
        return config.init_from
    with open(listing) as f:
        names = json.load(f)["tasks"]
    name = config.init_task or config.data.get("benchmark", "")
    if name not in names:
        raise ConfigError(f"init_task={name!r}: init_from={config.init_from} is a multi-task export of tasks "
                          f"{', '.join(names)}; set init_task to one of them")
    return os.path.join(config.init_from, name)


class MultiTask(Feature):
    """The ``multitask`` section as a trial feature: the tasks' data, heads, objective, batches, evaluation and
    export replace the trial's single task."""

    name, key, section, schema = "multitask", "multitask.tasks", "multitask", SCHEMA
    provides = ("data", "objective", "train_stream", "eval_batches", "export")
    stacked_layers_ok = True  # the heads sit on the backbone's output, outside the stacked layers
    refuses = (
        Refusal("distill", "distil a task's model (a per-task export) in a single-task trial instead"),
        Refusal("eval_sets", "a named set is evaluated by one task's head; evaluate the tasks' own splits (or a "
                             "per-task export) instead"),
        Refusal("mixture", "a multi-task trial draws its batches per task and reads no data.mixture; give each task "
                           "its data"),
        Refusal("generation", "a multi-task trial's tasks classify; nothing is generated"),
    )
    solo = "multi-task trials train one at a time, not as a population (--pack=1)"  # each task's batches' shapes

    def defaults(self):
        return defaults()

    def enabled(self, config) -> bool:
        return enabled(config)

    def check(self, config) -> None:
        if enabled(config):
            specs(config)

    def source(self, config, source: str) -> str:
        return init_source(config) if config.init_from else source

    def sections(self, config) -> dict:
        return {f"multitask.tasks.{s.name}": s.data for s in specs(config)}

    def data(self, build) -> None:
        build.parts[self.name] = prepare_tasks(specs(build.config), build.tokenizer)
        build.splits = build.parts[self.name].splits

    def model(self, build) -> None:
        build.model = build_model(build.parts[self.name], build.source, **build.load)

    def objective(self, build) -> None:
        build.objective = build.parts[self.name].objective(build.tokenizer, build.config)

    def train_stream(self, trial):
        return trial.parts[self.name].train_stream(trial.config)

    def eval_batches(self, trial, split: str):
        return trial.parts[self.name].eval_batches(split, trial.config.eval.batch_size)

    def results(self, started, fit) -> dict:
        return token_report(started.train)  # the tokens each task gave

    def export(self, trial, model, out: str, peft: bool) -> str:
        if peft:
            raise ConfigError(f"{trial.trainer.workdir}: a multi-task run exports merged models per task, not a PEFT "
                              f"adapter")
        return export(trial.method.merge(model), out, trial.tokenizer)


register(MultiTask())
