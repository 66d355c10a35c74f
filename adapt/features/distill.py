"""Knowledge distillation (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network",
arXiv:1503.02531): a smaller student trains on the task loss and on a frozen teacher's softened outputs,

    loss = alpha * task loss + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)),

both averaged over the positions the task loss counts (:meth:`adapt.training.objectives.Objective.targets`:
each example of a classifier, each target token of a causal LM). The ``distill`` config section:

    distill.teacher = "runs/bbc/teacher"   # a run folder (its best checkpoint) or any checkpoint (HF folder, .gguf...)
    distill.alpha, distill.temperature     # 0.5, 2.0 by default
    distill.student.layers = (0, 2, 4)     # the student is the teacher with only these layers (DistilBERT's init)
    distill.student.config = {"hidden_size": 128, "num_hidden_layers": 2}   # or: model.name's family, random init

With neither ``student`` key the student is ``model.name`` (or ``init_from``) as in any trial: another checkpoint
that shares the teacher's tokenizer. In a sweep, a relative ``distill.teacher`` lies in the sweep folder (a trial of
an earlier stage: :data:`adapt.study.sweeps.IN_SWEEP`). The student must share the teacher's tokenizer and the teacher's
head must be the task's (same labels, in the same order); each mismatch is a one-line
:class:`~adapt.core.errors.ConfigError`.

The teacher rides in the train state: its weights become :class:`TeacherWeight` variables (not ``nnx.Param``, so
no adaptation method trains them, the step's gradient never reaches them, checkpoints and exports leave them out)
held by a :class:`Teacher` module under the student's :data:`~adapt.training.state.COMPANION` attribute; the train
step's forward pass then gives both models' logits (:class:`adapt.training.state.Model`), the teacher's under
``stop_gradient`` and without dropout. Evaluation, generation and export see the student alone.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from adapt.core import schema
from adapt.core.errors import ConfigError
from adapt.core.schema import Bool, Either, Float, Int, Map, Path, Str, Tuple
from adapt.features.base import Feature, register
from adapt.models import from_pretrained, load_tokenizer
from adapt.models.loading import fresh_paths, set_dropouts
from adapt.models.registry import model_info, param_paths
from adapt.training import tasks
from adapt.training.objectives import Objective
from adapt.training.state import COMPANION


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(
        teacher="",  # "" = no distillation; a run folder (its best checkpoint) or a checkpoint the loader reads
        alpha=0.5,  # the task loss's weight; the distillation term gets 1 - alpha
        temperature=2.0,  # softens both distributions; the term is scaled by T^2 (Hinton et al.)
        student=ml_collections.ConfigDict(dict(
            layers=(),  # indices of the teacher's layers the student keeps, in order; () = the student is model.name
            config={},  # HF config overrides of a random-init student of model.name's family
        )),
    ))
    c.lock()
    c.student.config.unlock()  # its keys are the family's HF config keys: the loader checks them
    return c


_SIZE = Int(min=1, doc="a size of the random-init student")
SCHEMA = dict(  # of defaults()
    teacher=Path(doc='a run folder (its best checkpoint) or a checkpoint the loader reads; "": no distillation'),
    alpha=Float(ge=0, le=1, hint="1: the task loss alone", doc="the task loss's weight; the KL term gets 1 - alpha"),
    temperature=Float(gt=0, doc="T: softens both distributions; the KL term is scaled by T^2"),
    student=dict(
        layers=Tuple(of=Int(min=0), doc="the teacher's layers the student keeps, in increasing order"),
        # HF config keys of model.name's family (the loader checks the names); the sizes and rates declared here
        config=Map(Either(Bool(), Int(), Float(), Str()),
                   known={k: _SIZE for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                             "num_attention_heads", "num_key_value_heads", "head_dim")}
                   | {k: Float(ge=0, lt=1, doc="a dropout rate") for k in (
                       "hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "resid_pdrop",
                       "embd_pdrop", "attn_pdrop")},
                   doc="HF config overrides of a random-init student of model.name's family"),
    ),
)


def enabled(config) -> bool:
    return bool(config.get("distill") and config.distill.teacher)  # a run folder written before the section: off


def check(config) -> None:
    """The ``distill`` section's values, before anything loads: one line for the first bad one."""
    if not config.get("distill"):
        return
    d = config.distill
    schema.check(SCHEMA, d, "distill")
    layers, overrides = tuple(d.student.layers), dict(d.student.config)
    if not d.teacher:
        if layers or overrides:
            raise ConfigError("distill.student is set but distill.teacher is empty; name the teacher to distil from")
        return
    if config.train.loss_chunks > 1:
        raise ConfigError(f"train.loss_chunks={config.train.loss_chunks} with distill.teacher: distillation's KL reads "
                          f"every logit at once; set train.loss_chunks=1")
    if layers and overrides:
        raise ConfigError("distill.student.layers and distill.student.config are both set; a student is the "
                          "teacher's layers or a random-init model, not both")
    if list(layers) != sorted(set(layers)):
        raise ConfigError(f"distill.student.layers={layers}; expected distinct teacher layer indices in increasing "
                          f"order, e.g. (0, 2, 4)")


def _is_run(path: str) -> bool:
    """A run folder of :func:`adapt.experiment.trial.run_trial` (its ``config.json`` is a trial's, not a model's)."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config) as f:
        return "train" in json.load(f)


def load_teacher(config, tokenizer, labels, *, mesh, rules, run_model) -> nnx.Module:
    """The teacher ``distill.teacher`` names, as a plain model of its family (a run's adaptation merged in:
    ``run_model(folder)`` gives a run folder's trained model and its tokenizer, the trial builder's to say);
    refused when its tokenizer differs from ``tokenizer`` (the trial's) or its head from the task's ``labels``."""
    source, task = config.distill.teacher, tasks.get(config.model.task)
    if _is_run(source):
        model, teacher_tokenizer = run_model(source)
        if hasattr(model, COMPANION):  # a distilled run's own teacher plays no part here
            delattr(model, COMPANION)
    else:
        model = from_pretrained(source, task=task.head, dtype=config.model.dtype, mesh=mesh, rules=rules,
                                scan_layers=bool(config.model.get("scan_layers")))  # as the student's
        teacher_tokenizer = load_tokenizer(source)
        if fresh := fresh_paths(model):
            raise ConfigError(f"distill.teacher={source}: has no trained {task.name} head (loading initialised "
                              f"{'.'.join(map(str, fresh[0]))}, ... fresh); a teacher is a model trained for the task")
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"distill.teacher={source}: its tokenizer differs from the student's "
                          f"({config.init_from or config.model.name}); a student shares the teacher's tokenizer")
    head = model_info(model).head
    if head != task.head:
        raise ConfigError(f"distill.teacher={source}: its head is {head}, the task's is {task.head} (model.task)")
    if labels:
        hf = model.cfg.hf
        own = [hf.id2label[i] for i in range(hf.num_labels)]
        if own != list(labels):
            raise ConfigError(f"distill.teacher={source}: its labels {own} differ from the data's {list(labels)}")
    return model


def keep_layers(teacher: nnx.Module, layers, **dropouts) -> nnx.Module:
    """A copy of ``teacher`` with only its transformer layers ``layers`` (in that order); every other parameter
    (embeddings, final norm, pooler, head) copied as it is. ``dropouts``: ``hidden_dropout``/``attention_dropout``
    rates to set, as :func:`~adapt.models.from_pretrained` takes them."""
    info = model_info(teacher)
    family, n = info.family, info.dims.num_layers
    if outside := [i for i in layers if i >= n]:
        raise ConfigError(f"distill.student.layers={tuple(layers)}: the teacher has {n} layers (0..{n - 1}); "
                          f"{outside} are not among them")
    hf = copy.deepcopy(teacher.cfg.hf)
    hf.num_hidden_layers = len(layers)
    if getattr(hf, "layer_types", None):  # per-layer attention kinds (sliding windows) follow their layers
        hf.layer_types = [hf.layer_types[i] for i in layers]
    set_dropouts(family, hf, **dropouts)
    cfg = dataclasses.replace(family.config_from_hf(hf, teacher.cfg.dtype), scan_layers=info.stacked)
    skeleton = nnx.eval_shape(lambda: family.heads[info.head](cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(skeleton)
    source = dict(param_paths(nnx.state(teacher, nnx.Param)))
    stack = tuple(f"{info.backbone_path}.{family.layers}".strip(".").split("."))  # ("bert", "encoder", "layer")
    for path, var in param_paths(state):
        if tuple(map(str, path[:len(stack)])) != stack:
            value = source[path].get_value()
        elif info.stacked:  # stacked layers [L, ...] (model.scan_layers): the kept slices
            value = source[path].get_value()[np.asarray(layers)]
        else:
            value = source[(*path[:len(stack)], layers[path[len(stack)]], *path[len(stack) + 1:])].get_value()
        var.set_value(jnp.copy(value))  # a copy: the student's buffers are donated each step
    return nnx.merge(graphdef, state)


def build_student(config, teacher: nnx.Module, task, labels, *, mesh, rules, dropouts: dict) -> nnx.Module | None:
    """The student ``distill.student`` describes, or None when it is ``model.name`` (loaded as in any trial)."""
    student = config.distill.student
    if student.layers:
        return keep_layers(teacher, tuple(student.layers), **dropouts)
    if student.config:
        return from_pretrained(config.init_from or config.model.name, task=task.head, dtype=config.model.dtype,
                               seed=config.train.seed, mesh=mesh, rules=rules, config_overrides=dict(student.config),
                               random_init=True, scan_layers=bool(config.model.get("scan_layers")),
                               **task.head_args(labels), **dropouts)
    return None


class TeacherWeight(nnx.Variable):
    """A teacher's parameter: frozen. Not an ``nnx.Param``, so no adaptation method's filter selects it (it lands in
    the train state's ``frozen``), and parameter counts, checkpoints and exports leave it out."""


class Teacher(nnx.Module):
    """A frozen model: called, it gives its outputs under ``stop_gradient`` and without dropout."""

    def __init__(self, model: nnx.Module):
        for _, module in nnx.iter_modules(model):
            for name, var in list(vars(module).items()):
                if isinstance(var, nnx.Param):
                    setattr(module, name, TeacherWeight(var.get_value(), **var.get_metadata()))
        self.model = model

    def __call__(self, **inputs):
        return jax.lax.stop_gradient(self.model(**inputs, rngs=None))


def attach(student: nnx.Module, teacher: nnx.Module) -> nnx.Module:
    """``student`` (the adaptation method applied) with ``teacher`` as its companion (in place; returned);
    refused when their vocabularies or outputs differ in size."""
    s, t = model_info(student), model_info(teacher)
    if s.dims.vocab_size != t.dims.vocab_size:
        raise ConfigError(f"the student's vocabulary has {s.dims.vocab_size} entries, the teacher's "
                          f"{t.dims.vocab_size}; a student shares the teacher's tokenizer and embeddings' size")
    if s.head != t.head or getattr(student.cfg, "num_labels", None) != getattr(teacher.cfg, "num_labels", None):
        raise ConfigError(f"the student's head ({s.head}, {getattr(student.cfg, 'num_labels', '-')} labels) differs "
                          f"from the teacher's ({t.head}, {getattr(teacher.cfg, 'num_labels', '-')} labels)")
    setattr(student, COMPANION, Teacher(teacher))
    return student


def kl_divergence(teacher, student, temperature: float):
    """KL(softmax(teacher / T) || softmax(student / T)) over the last axis: logits ``[..., C]`` -> ``[...]``
    (float32)."""
    log_t = jax.nn.log_softmax(teacher.astype(jnp.float32) / temperature, -1)
    log_s = jax.nn.log_softmax(student.astype(jnp.float32) / temperature, -1)
    return jnp.sum(jnp.exp(log_t) * (log_t - log_s), -1)


@dataclasses.dataclass(frozen=True)
class Distillation(Objective):
    """The task's objective with the distillation term added in training (outputs ``(student, teacher)``
    logits); in evaluation (the student's outputs alone) it is the task's. Its sums add ``task_loss_sum`` and
    ``kl_sum`` (at temperature T, over the task's valid positions); ``loss_sum`` is the combined loss that trains.
    Metrics: the task's, with ``loss`` the task loss, plus ``distill_loss`` (the combined) and ``kl``."""
    task: Objective
    alpha: float
    temperature: float

    def prepare(self, batch, rng):
        return self.task.prepare(batch, rng)

    def targets(self, batch):
        return self.task.targets(batch)

    def outputs(self, outputs, batch):
        return self.task.outputs(outputs, batch)

    def loss(self, outputs, batch):
        if not isinstance(outputs, tuple):
            return self.task.loss(outputs, batch)
        student, teacher = outputs  # [B, C] or [B, T, V] each
        sums, predictions = self.task.loss(student, batch)
        _, valid = self.task.targets(batch)  # [B] or [B, T]
        kl = jnp.sum(jnp.where(valid, kl_divergence(teacher, student, self.temperature), 0.0))
        combined = self.alpha * sums["loss_sum"] + (1.0 - self.alpha) * self.temperature ** 2 * kl
        return {**sums, "loss_sum": combined, "task_loss_sum": sums["loss_sum"], "kl_sum": kl}, predictions

    def summarize(self, sums, predictions=None) -> dict:
        if "kl_sum" not in sums:
            return self.task.summarize(sums, predictions)
        out = self.task.summarize({**sums, "loss_sum": sums["task_loss_sum"]}, predictions)
        weight = max(float(sums["weight"]), 1.0)
        return {**out, "distill_loss": float(sums["loss_sum"]) / weight, "kl": float(sums["kl_sum"]) / weight}


def objective(config, task_objective: Objective) -> Objective:
    """``task_objective`` with distillation when ``distill.teacher`` is set."""
    if not enabled(config):
        return task_objective
    return Distillation(task_objective, float(config.distill.alpha), float(config.distill.temperature))


class Distill(Feature):
    """The ``distill`` section as a trial feature: the teacher loaded (and the student it describes), the
    objective's distillation term, the teacher attached to the student after the adaptation method."""

    name, key, section, schema = "distill", "distill.teacher", "distill", SCHEMA
    stacked_layers_ok = True  # the teacher loads stacked as the student; kept layers are slices of its stack

    def defaults(self):
        return defaults()

    def enabled(self, config) -> bool:
        return enabled(config)

    def check(self, config) -> None:
        check(config)

    def model(self, build) -> None:
        b = build
        labels = b.splits.get("labels")
        teacher = load_teacher(b.config, b.tokenizer, labels, mesh=b.mesh, rules=b.rules, run_model=b.run_model)
        b.parts[self.name] = teacher
        b.model = build_student(b.config, teacher, b.task, labels, mesh=b.mesh, rules=b.rules, dropouts=b.dropouts)

    def objective(self, build) -> None:
        build.objective = objective(build.config, build.objective)

    def after_method(self, build) -> None:
        build.model = attach(build.model, build.parts[self.name])


register(Distill())
