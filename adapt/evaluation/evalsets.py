"""Named evaluation sets (``eval.sets``): held-out data a run watches besides its own dev split, such as
domain text and general text during continued pretraining (how much the domain gained, how much general
ability it cost).

    c.eval.sets = {"domain": {"files": {"dev": "bio_dev.txt"}},       # data-section keys, as a mixture source
                   "general": {"benchmark": "bbc", "split": "dev"},      # or a benchmark's data
                   "mlm": {"benchmark": "bbc", "task": "masked_lm"}}     # another head watches it (below)

A set is the run's ``data`` section with the set's own keys (:func:`adapt.data.pipeline.section`): files, a
source, a ``benchmark`` and any reading keys (``text_column``, ``max_length``, ...), plus ``split`` (the split
of that data to evaluate, default "dev") and ``task`` (the task kind whose objective evaluates it; default the
run's ``model.task``). A set's format defaults to the run's (to its task's first format, ``lm``, for another
task), so a causal-LM run reads a classification benchmark's text as language-model rows. A string names a
benchmark, or else a file of the dev split.

Every set is evaluated before the first step (step 0) and with the run's evaluations (every
``train.eval_every`` steps, at least at the end), logged as ``dev/<name>/loss``, ``dev/<name>/perplexity``, ...;
early stopping may name one (``train.early_stopping.metric="dev/general/loss"``). A trial's results hold
them under "start" (step 0) and "dev" (the final or best model) by set name.

Another task than the run's: a classification run can watch masked-LM (or causal-LM) loss on general text.
The set is then evaluated by a *probe*: the checkpoint's own head for that task, loaded once and frozen, on
top of the run's current backbone (as the adaptation method changed it). The checkpoint must have trained
that head: a head that loading would initialise at random is refused, since its loss would say nothing.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from adapt.core.errors import ConfigError
from adapt.core.schema import Choice, Either, Str
from adapt.core.sharding import state_shardings
from adapt.data import augment, catalog
from adapt.data.batches import eval_batches
from adapt.data.pipeline import SOURCE_SCHEMA, prepare, section
from adapt.models import from_pretrained
from adapt.models.loading import fresh_paths
from adapt.models.registry import model_info
from adapt.training import tasks
from adapt.training.state import MODEL_INPUTS, global_batch, merge_model

LM_TASKS = ("causal_lm", "masked_lm")
OWN_KEYS = ("split", "task")  # a set's keys that are not data-section keys
# One entry of eval.sets: a benchmark name or a dev file, or data keys with split and task
SET_SCHEMA = Either(Str(empty=False), dict(SOURCE_SCHEMA, split=Str(empty=False, doc="the split evaluated"),
                                           task=Choice(tasks.names, doc="the task whose objective evaluates it")),
                    doc="a benchmark name, a dev file, or data keys (+ split, task)")


def specs(config) -> dict[str, dict]:
    """``eval.sets`` as {name: spec dict}; a string spec is a benchmark name, or else a dev file."""
    out = {}
    for name, spec in dict(config.eval.get("sets", {}) or {}).items():
        if isinstance(spec, str):
            spec = {"benchmark": spec} if spec in catalog.BENCHMARKS else {"files": {"dev": spec}}
        elif hasattr(spec, "to_dict"):
            spec = spec.to_dict()
        if not isinstance(spec, dict):
            raise ConfigError(f"eval.sets.{name}={spec!r}; expected a dict of data keys, a benchmark name or a file")
        if "/" in name or not name:
            raise ConfigError(f"eval.sets has the name {name!r}; expected a name without '/' (it becomes "
                              f"dev/<name>/loss)")
        out[name] = dict(spec)
    return out


def data_section(config, name: str, spec: dict):
    """The ``data`` section set ``name`` is read with, and its task kind; a format that does not fit that task
    is an error naming the set."""
    where = f"eval.sets.{name}"
    task = tasks.get(spec.get("task", config.model.task), where=f"{where}.task")
    if task.name not in LM_TASKS:
        raise ConfigError(f"{where}.task={task.name!r}: a named set is text a language-model objective evaluates "
                          f"({', '.join(LM_TASKS)}; a classification run watches it through the checkpoint's LM "
                          f"head); another split of the run's own data goes in eval.splits")
    same = task.name == config.model.task
    defaults = {"format": config.data.format if same else task.formats[0] if task.formats else "",
                "train_examples": 0.0, "train_subset": "sample", "augment": augment.defaults()}  # nothing trains on it
    if defaults["format"] == "lm" and not same:
        defaults["causal"] = task.name != "masked_lm"
    data = section(config.data, {**defaults, **{k: v for k, v in spec.items() if k not in OWN_KEYS}}, where)
    if data.format not in task.formats:
        raise ConfigError(f"{where}.format={data.format!r} does not fit its task {task.name!r}; expected one of "
                          f"{task.formats}")
    return data, task


@dataclasses.dataclass
class EvalSet:
    """One named set: its rows and, for another task than the run's, the probe that evaluates it."""
    name: str
    arrays: dict  # the split's columns (input_ids [N, T], ...)
    batch_size: int
    probe: Probe | None = None
    at_start: bool = True  # evaluated before the first step too (read by the training loop)

    def batches(self):
        return eval_batches(self.arrays, self.batch_size, name=f"eval.sets.{self.name}")

    def evaluate(self, trainer, state) -> dict:
        if self.probe is None:
            return trainer.evaluate(state, trainer.steps, self.batches())
        return self.probe.evaluate(trainer, state, self.batches())


class Probe:
    """The checkpoint's frozen head for another task, evaluated on the run's current backbone."""

    def __init__(self, head_model: nnx.Module, objective, backbone_path: str):
        self.model, self.objective, self.path = head_model, objective, backbone_path
        self._step = jax.jit(self._eval, static_argnums=0)
        self._placed = False

    def _eval(self, graphdef, state, batch, index):
        module = nnx.merge(graphdef, state)
        batch = self.objective.prepare(batch, jax.random.fold_in(jax.random.PRNGKey(0), index))
        outputs = module(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, rngs=None)
        return self.objective.loss(outputs, batch)[0]

    def evaluate(self, trainer, state, batches) -> dict:
        trained = merge_model(trainer.static, state.params, state.frozen)
        setattr(self.model, self.path, getattr(trained, self.path))  # shares the arrays: nothing is copied
        graphdef, params = nnx.split(self.model)
        if not self._placed:  # the head's own parameters onto the run's mesh, once (a no-op when loaded there)
            params = jax.device_put(params, state_shardings(params, trainer.mesh, trainer.rules))
            nnx.update(self.model, params)
            self._placed = True
        sums = None
        with trainer.steps.context():
            for i, local in enumerate(batches):
                out = self._step(graphdef, params, global_batch(local, trainer.batch_sharding), jnp.int32(i))
                sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        return self.objective.summarize(jax.device_get(sums))


def build(config, tokenizer, model: nnx.Module, source: str, *, mesh=None, rules=None) -> dict[str, EvalSet]:
    """The run's named sets, read and tokenised; a probe is loaded for a set of another task (onto ``mesh``,
    sharded by ``rules``, as the run's model). Every problem
    (a format or task that does not fit, a missing split, a head the checkpoint lacks) is a one-line error
    naming the set, raised before anything trains."""
    out = {}
    for name, spec in specs(config).items():
        where = f"eval.sets.{name}"
        data, task = data_section(config, name, spec)
        split = spec.get("split", "dev")
        splits, _ = prepare(data, tokenizer)
        if split not in splits or split == "labels":
            raise ConfigError(f"{where}: its data has no {split!r} split; it has "
                              f"{', '.join(s for s in splits if s != 'labels') or 'none'} (set {where}.split)")
        probe = None
        if task.name != config.model.task:
            info = model_info(model)
            if task.head not in info.family.heads or not info.backbone_path:
                raise ConfigError(f"{where}.task={task.name!r}: the {info.family.name} family has no {task.name} "
                                  f"head on a backbone")
            head = from_pretrained(source, task=task.head, dtype=config.model.dtype, mesh=mesh, rules=rules,
                                   scan_layers=info.stacked)
            if fresh := fresh_paths(head):
                raise ConfigError(f"{where}.task={task.name!r}: {source} has no trained {task.name} head ("
                                  f"{'.'.join(map(str, fresh[0]))} and {len(fresh) - 1} more would be random); "
                                  f"expected a checkpoint with one, or task={config.model.task!r}")
            objective = task.objective(tasks.TaskInputs(tokenizer, None, config))
            setattr(head, info.backbone_path, getattr(model, info.backbone_path))  # its own backbone is dropped
            probe = Probe(head, objective, info.backbone_path)
        out[name] = EvalSet(name, splits[split], config.eval.batch_size, probe)
    return out
