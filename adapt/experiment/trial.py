"""One trial of an experiment, end to end: the config -> tokenised data -> pretrained model -> adaptation
method -> training with evaluation and early stopping -> the best model's dev/test metrics -> an export
that a later stage can start from.

    results = run_trial(config, workdir)   # {"dev": {"accuracy": ...}, "test": {...}}
    evaluate_run(workdir, ["test"], {"data.files.test": "other.jsonl"})   # the best checkpoint, later
    export_run(workdir, "out/merged")                                     # or peft=True: a PEFT adapter

A run folder holds ``config.json`` (the resolved config), ``labels.json``, the trainer's ``checkpoints/``,
``best/``, ``metrics.jsonl`` and ``tb/``, ``export/`` (the trained model merged into plain weights, in HF
layout, when ``export.model`` is set; a method that cannot merge, prompt or prefix tuning or adapters, makes
that an error), ``predictions/`` (``<split>.jsonl``, one line per example of each evaluated split, and for
classification ``<split>_confusion.png``: :mod:`adapt.evaluation.predictions`) and ``results.json`` (written last: its
presence means the trial finished; ``data_files`` in it is every data file the trial read, with its SHA-256).
Running a trial again in the same folder resumes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import ml_collections
from flax import nnx

from adapt import methods
from adapt.core.errors import ConfigError
from adapt.core.files import output_folder, write_json
from adapt.core.sharding import make_mesh, normalize_rules
from adapt.data.batches import eval_batches
from adapt.data.pipeline import files_read, prepare, save_labels, train_stream
from adapt.evaluation import predictions
from adapt.experiment import base, configs
from adapt.features import base as registry  # the features, registered as adapt.features imports
from adapt.features.base import Build, Feature, model_source, provider
from adapt.methods.peft_io import save_peft
from adapt.models import from_pretrained, load_tokenizer, save_pretrained
from adapt.models.loading import check_stackable, fresh_paths
from adapt.models.registry import model_info
from adapt.training import Trainer, objectives, tasks
from adapt.training.state import batch_sharding


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


@dataclasses.dataclass
class TrialSetup:
    """What a trial is built from: its config, the tokenizer, the prepared splits, the adaptation method, the
    model (the method applied), the trainer over ``workdir``, the named evaluation sets, the enabled features
    (:mod:`adapt.features`) and what each built."""
    config: ml_collections.ConfigDict
    tokenizer: object
    splits: dict
    method: methods.Method
    trainer: Trainer
    sets: dict  # name -> adapt.evaluation.evalsets.EvalSet
    features: list[Feature] = dataclasses.field(default_factory=list)  # the enabled ones, in registration order
    parts: dict = dataclasses.field(default_factory=dict)  # feature name -> what it built
    source: str = ""  # where the model came from
    fresh_heads: list = dataclasses.field(default_factory=list)  # heads the checkpoint had no weights for

    def provider(self, phase: str) -> Feature | None:
        """The enabled feature that provides ``phase`` (:data:`adapt.features.base.PHASES`), or None."""
        return provider(self.features, phase)

    def eval_batches(self, split: str):
        if f := self.provider("eval_batches"):
            return f.eval_batches(self, split)
        return eval_batches(self.splits[split], self.config.eval.batch_size, name=split)

    def judge(self, split: str):
        """What judges ``split`` in place of its loss and per-example outputs (a feature's, e.g. generation's), or
        None."""
        f = self.provider("evaluation")
        return f.evaluation(self, split) if f else None

    def evaluate(self, state, split: str, known: dict | None = None) -> dict:
        """``state``'s metrics on ``split`` (``known``: already computed ones, kept) and, for an objective with
        per-example outputs, ``predictions/<split>.jsonl`` written (by process 0) and for classification
        ``per_class`` and ``confusion`` added (:func:`adapt.evaluation.predictions.save`)."""
        trainer = self.trainer
        if judge := self.judge(split):  # e.g. an sft trial judged by its answers: they are its predictions
            answers = []
            metrics = judge.evaluate(trainer, state, predictions=answers)
            if jax.process_index() == 0:
                predictions.write(trainer.workdir, split, judge.rows(answers))
            return {**metrics, **(known or {})}
        if not objectives.has_outputs(trainer.objective):
            return known or trainer.evaluate(state, trainer.steps, self.eval_batches(split))
        metrics, rows = trainer.evaluate(state, trainer.steps, self.eval_batches(split), examples=True)
        extra = predictions.save(trainer.workdir, split, rows, self.splits.get("labels"),
                                 write_files=jax.process_index() == 0)
        return {**(known or metrics), **extra}


def _under(metrics: dict, prefix: str) -> dict:
    """``{"dev/general/loss": x}``, "dev/general" -> ``{"loss": x}``."""
    return {k[len(prefix) + 1:]: v for k, v in metrics.items() if k.startswith(f"{prefix}/")}


def build_trial(config: ml_collections.ConfigDict, workdir: str) -> TrialSetup:
    """The trial of ``config``: every check first (nothing is read until they pass), then the data, the model, the
    objective, the train step's extension and the adaptation method, each phase the trial's own unless an enabled
    feature provides it, then each enabled feature's hook of that phase (:mod:`adapt.features.base`)."""
    base.check(config)  # every section, used or not: one line for the first bad key, before anything is read
    on = registry.check(config)  # pairs that do not combine, then each feature's values: one line each
    task = tasks.get(config.model.task)
    if not provider(on, "data"):  # a feature's own data (a multi-task trial's tasks) is checked by the feature
        check_format(config, task)
    mesh, rules = run_mesh(config), normalize_rules(config.mesh.rules)
    batch_sharding(mesh, rules, config.train.batch_size)  # a batch the data axes do not divide: one line, now
    source = model_source(config)
    check_scan_layers(config, on, source)
    tokenizer = load_tokenizer(source)
    method = methods.build(config.method)
    dropouts = {k: v for k in ("hidden_dropout", "attention_dropout") if (v := config.model[k]) >= 0}
    # Straight onto the mesh: each device receives only its shards, one tensor read at a time.
    load = dict(dtype=config.model.dtype, seed=config.train.seed, mesh=mesh, rules=rules, **dropouts)
    if config.model.get("scan_layers"):
        load["scan_layers"] = True
    b = Build(config, tokenizer, source, task, mesh, rules, dropouts, load, run_model=_run_model)
    b.splits = None if provider(on, "data") else prepare(config.data, tokenizer)[0]
    _each(on, "data", b)
    _each(on, "model", b)
    labels = b.splits.get("labels")
    if b.model is None:
        b.model = from_pretrained(source, task=task.head, **task.head_args(labels), **load)
    if not provider(on, "objective"):
        b.objective = task.objective(tasks.TaskInputs(tokenizer, labels, config))
    _each(on, "objective", b)
    _each(on, "step", b)
    fresh = fresh_paths(b.model)  # read before the method rewrites the model: train.head_warmup_steps trains them first
    fresh_heads = model_info(b.model).head_names(fresh)
    b.model = method.apply(b.model, nnx.Rngs(config.train.seed))
    _each(on, "after_method", b)
    trainer = Trainer(b.model, b.objective, config, workdir, method=method, mesh=mesh, fresh=fresh,
                      extension=b.extension)
    return TrialSetup(config, tokenizer, b.splits, method, trainer, b.sets, on, b.parts, source, fresh_heads)


def check_format(config: ml_collections.ConfigDict, task: tasks.Task) -> None:
    """``data.format`` fits ``task`` and the task trains: else a one-line error naming the key."""
    if config.data.format not in task.formats:
        raise ConfigError(f"data.format={config.data.format!r} does not fit model.task={task.name!r}; expected "
                          f"one of {task.formats}")
    if task.objective is None:
        raise ConfigError(f"model.task={task.name!r} has no training objective; pick a task with a head to train")


def check_scan_layers(config: ml_collections.ConfigDict, on: list[Feature], source: str) -> None:
    """With ``model.scan_layers`` (the layers stacked, :mod:`adapt.models.scan`): the method, each enabled feature
    and the checkpoint's family must work with stacked layers (``stacked_layers_ok``, ``Family.stack_layers``), else
    a one-line error naming the first that does not, before anything but the checkpoint's config is read."""
    if not config.model.get("scan_layers"):
        return
    method = methods.METHODS[config.method.name]
    if not method.stacked_layers_ok:
        ok = sorted(name for name, cls in methods.METHODS.items() if cls.stacked_layers_ok)
        raise ConfigError(f"model.scan_layers=True: method.name={method.name!r} does not handle stacked layers yet "
                          f"(methods that do: {', '.join(ok)})")
    for f in on:
        if not f.stacked_layers_ok:
            raise ConfigError(f"model.scan_layers=True: {f.key} ({f.name}) does not handle stacked layers yet")
    check_stackable(source)


def _each(on: list[Feature], phase: str, build: Build) -> None:
    """Each feature of ``on``'s hook of build ``phase``, in order."""
    for f in on:
        getattr(f, phase)(build)


def data_sections(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """Every data section a trial reads, by its config key: ``data`` (a multi-task trial: each task's instead),
    each source of ``data.mixture`` and each set of ``eval.sets``: the enabled features' sections. Nothing is read."""
    on = registry.enabled(config)
    out = {} if provider(on, "data") else {"data": config.data}
    for f in on:
        out.update(f.sections(config))
    return out


def run_mesh(config: ml_collections.ConfigDict):
    """The mesh ``mesh.shape`` asks for over every device of the job; a shape the devices do not fill is a
    one-line error naming the key."""
    try:
        return make_mesh(tuple(config.mesh.shape))
    except ValueError as e:
        raise ConfigError(f"mesh.shape={tuple(config.mesh.shape)}: {e} (devices: {jax.device_count()} "
                          f"{jax.devices()[0].platform})") from None


@dataclasses.dataclass
class StartedTrial:
    """A trial built and its run folder written, ready to train: the setup, its train stream, what is evaluated
    during training (name -> batches, or a named set), the splits evaluated at the end and the named sets."""
    trial: TrialSetup
    train: object  # adapt.data.batches.Mixture
    eval_data: dict
    eval_splits: list
    watched: dict  # "dev/<set>" -> adapt.evaluation.evalsets.EvalSet
    data_files: dict  # section key -> split -> {"path", "sha256"}: the files the trial read


def start_trial(config: ml_collections.ConfigDict, workdir: str, *, on_eval=None) -> StartedTrial:
    """The part of :func:`run_trial` before training: ``config.json`` and ``labels.json`` written, the trial built
    (:func:`build_trial`), its train stream and evaluations laid out."""
    os.makedirs(output_folder(workdir, "workdir"), exist_ok=True)
    write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
    trial = build_trial(config, workdir)
    trial.trainer.on_eval = on_eval
    splits = trial.splits
    if splits.get("labels"):
        save_labels(workdir, splits["labels"])
    for f in trial.features:  # their files (data quality's quality.json)
        f.start(trial)
    eval_splits = [s for s in config.eval.splits if s in splits]
    if f := trial.provider("train_stream"):
        train = f.train_stream(trial)
    else:
        train = train_stream(config.data, trial.tokenizer, config.train.batch_size, config.train.seed,
                             splits.get("train"))
    during = config.train.early_stopping.metric or config.train.eval_every  # else evaluate once, at the end
    watched = {f"dev/{name}": s for name, s in trial.sets.items()}  # at step 0 and at every evaluation
    first = {s: trial.judge(s) or (lambda s=s: trial.eval_batches(s))
             for s in eval_splits[:1] if during}  # the first is dev
    data_files = {where: files_read(section) for where, section in data_sections(config).items()}
    _log(workdir, [f"{where} {split}: {f['path']} (SHA-256 {f['sha256']})" for where, files in data_files.items()
                   for split, f in files.items()])
    if trial.fresh_heads:  # a fact of the checkpoint, said once per run
        warmup = config.train.get("head_warmup_steps", 0)
        how = f"alone for the first {warmup} steps (train.head_warmup_steps)" if warmup else "with the rest"
        _log(workdir, [f"initialised fresh (no pretrained weights from {trial.source}): "
                       f"{', '.join(trial.fresh_heads)}; trained {how}"])
    return StartedTrial(trial, train, {**first, **watched}, eval_splits, watched, data_files)


def _log(workdir: str, lines: list[str]) -> None:
    """Append ``lines`` to the run's log (``log.txt``: how the run was set up, for a reader; process 0 writes)."""
    if lines and jax.process_index() == 0:
        with open(os.path.join(workdir, "log.txt"), "a") as f:
            f.write("".join(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n" for line in lines))


def finish_trial(started: StartedTrial, fit) -> dict:
    """The part of :func:`run_trial` after training (``fit``: its :class:`~adapt.training.FitResult`): the best
    model evaluated, exported when asked, ``results.json`` written (by process 0); returns the results."""
    trial, watched, eval_splits = started.trial, started.watched, started.eval_splits
    trainer, config, workdir = trial.trainer, trial.config, trial.trainer.workdir
    best = trainer.best_state()
    known = {s: {k: v for k, v in _under(trainer.best_metrics, s).items() if k.split("/")[0] not in trial.sets}
             for s in eval_splits}  # the dev split was evaluated on the best parameters during fit
    # Metric keys as before; an objective with per-example outputs evaluates dev again for its predictions.
    results = {s: trial.evaluate(best, s, known[s]) for s in eval_splits}
    if watched:  # the sets after training: the best evaluation's, else the last one (at the last step)
        last = trainer.last_eval[1] if trainer.last_eval and trainer.last_eval[0] == fit.steps else {}
        after = {key[4:]: _under(trainer.best_metrics, key) or _under(last, key) or s.evaluate(trainer, best)
                 for key, s in watched.items()}
        results["dev"] = {**results.get("dev", {}), **after}
        results["start"] = {key[4:]: _under(trainer.start_metrics, key) for key in watched}
    for f in trial.features:  # their entries: numbers, so the results database keeps them
        results.update(f.results(started, fit))
    results["data_files"] = started.data_files
    if config.export.model:
        _export(trial, trainer.best_model(best), os.path.join(workdir, "export"))
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "results.json"), results)
    return results


def run_trial(config: ml_collections.ConfigDict, workdir: str, *, on_eval=None) -> dict:
    """Train and evaluate one trial in ``workdir``; returns ``{split: {metric: value}}`` of the best model (for
    classification also ``per_class`` and ``confusion``: :mod:`adapt.evaluation.predictions`), as ``results.json`` holds
    it. ``on_eval(step, metrics)``: called after each evaluation during training (see :class:`adapt.training.Trainer`).
    A sweep's trials can also train together: :func:`adapt.study.populations.run_population`.
    """
    started = start_trial(config, workdir, on_eval=on_eval)
    return finish_trial(started, started.trial.trainer.fit(started.train, started.eval_data))


def load_run(workdir: str, overrides: list[str] | dict = (), checkpoint: str = "best") -> tuple[TrialSetup, object]:
    """A finished (or interrupted) run folder as it was trained: (the trial rebuilt from its ``config.json``
    with ``overrides``, e.g. ``data.files.test=other.jsonl``; the train state of its ``checkpoint``,
    "best" or "latest")."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{workdir}: no config.json; expected a run folder (the --workdir of scripts/train.py)")
    raw = _read_json(path)
    raw.pop("benchmark", None)  # a run folder written when it was a top-level key (its data.files are resolved)
    config = ml_collections.ConfigDict(raw)
    config.lock()
    config = configs.apply_overrides(config, configs.as_dict(overrides))
    trial = build_trial(config, workdir)
    saved = os.path.join(workdir, "labels.json")
    if os.path.isfile(saved) and _read_json(saved) != trial.splits.get("labels"):
        raise ConfigError(f"{saved}: the run's labels differ from those of its data now ({trial.splits.get('labels')})")
    return trial, trial.trainer.load(checkpoint)


def _run_model(workdir: str):
    """A run folder's best model, its adaptation merged in, and its tokenizer (a distillation teacher)."""
    trial, state = load_run(workdir)
    return trial.method.merge(trial.trainer.best_model(state)), trial.tokenizer


def evaluate_run(workdir: str, splits=("test",), overrides=(), checkpoint: str = "best") -> dict:
    """``{split: metrics}`` of a run folder's ``checkpoint`` on ``splits`` of its data (see :func:`load_run`); writes
    (rewrites) ``predictions/<split>.jsonl`` of each (see :meth:`TrialSetup.evaluate`)."""
    trial, state = load_run(workdir, overrides, checkpoint)
    missing = [s for s in splits if s not in trial.splits or s == "labels"]
    if missing:
        raise ConfigError(f"{workdir}: the run's data has no split {', '.join(missing)}; it has "
                          f"{', '.join(s for s in trial.splits if s != 'labels')}")
    return {s: trial.evaluate(state, s) for s in splits}


def export_run(workdir: str, out: str, *, peft: bool = False, checkpoint: str = "best") -> str:
    """Write a run folder's trained model to ``out``: merged into plain weights in HF layout (with the
    tokenizer), or with ``peft`` as a PEFT adapter folder (the methods PEFT has: LoRA, DoRA, (IA)^3). Returns the
    folder."""
    trial, state = load_run(workdir, checkpoint=checkpoint)
    return _export(trial, trial.trainer.best_model(state), out, peft=peft)


def _export(trial: TrialSetup, model, out: str, peft: bool = False) -> str:
    """The trained model merged into plain weights in HF layout with the tokenizer, or a PEFT adapter (a feature
    providing the export writes its own, e.g. a multi-task model's folder per task)."""
    if f := trial.provider("export"):
        return f.export(trial, model, out, peft)
    if peft:
        return save_peft(model, trial.method, out, base_model=trial.source)
    return save_pretrained(trial.method.merge(model), out, tokenizer=trial.tokenizer)
