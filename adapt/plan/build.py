"""A trial built abstractly on a slice's mesh, and its steps compiled for it.

Nothing is read but the model's config: the model is the family's module built under ``nnx.eval_shape`` from its HF
config (a named architecture, ``arch:...``, a Hub id, a folder or a bundled model) with the adaptation method
applied, so every parameter is a ``ShapeDtypeStruct``; the :class:`~adapt.training.loop.Trainer` of the config sets
up the optimizer, the state's shardings and the jitted steps over it (``Trainer.abstract_setup``), on a mesh of the
topology's devices (``config.mesh.shape``, its ``-1`` taking the chips left) by the config's own axis rules; the
batch is ``train.batch_size`` rows of ``data.max_length`` tokens, as the data format lays them out. Then the train
step and the eval step are lowered and compiled, for a TPU by libtpu's compiler on this CPU (the ``tpu`` extra).
A classifier's head has ``labels`` outputs (2 unless told; its size is negligible beside the model's).

XLA's cost analysis counts a loop's body once, so for stacked layers (``model.scan_layers``) the compute, memory
traffic and collectives of the step are XLA's counts for the same step with 1 and 2 layers (unrolled), extrapolated
linearly to the model's depth; memory is the real program's.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax._src import xla_bridge  # the CPU client, for XLA's HLO cost analysis of a GPU program
from jax._src.lib import _jax

from adapt import methods
from adapt.core.errors import ConfigError
from adapt.core.sharding import MESH_AXES, normalize_rules
from adapt.evaluation.generation import generation_config
from adapt.experiment import base
from adapt.experiment.trial import check_format
from adapt.features import base as registry  # the features, registered as adapt.features imports
from adapt.features.base import model_source
from adapt.models import generate
from adapt.models.loading import Blueprint, model_blueprint
from adapt.models.registry import model_info
from adapt.plan import hlo
from adapt.plan.chips import Topology
from adapt.training import Trainer, tasks
from adapt.training.state import batch_ways

#: What the rows of a batch hold, per data format: name -> (its shape's dimensions after the rows: "T" is the length)
BATCH_LAYOUT = {
    "lm": {"input_ids": ("T",), "attention_mask": ("T",)},
    "sft": {"input_ids": ("T",), "attention_mask": ("T",), "loss_mask": ("T",)},
    "classification": {"input_ids": ("T",), "attention_mask": ("T",), "token_type_ids": ("T",), "labels": ()},
    "conll": {"input_ids": ("T",), "attention_mask": ("T",), "labels": ("T",)},
}


_UNIT = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}  # XLA's memory figures are binary (GiB as "G")


class PlanTokenizer:
    """What an objective reads of a tokenizer, for a model planned without one (a named architecture has none):
    the masked-LM objective's mask token (the last id) and the vocabulary's size; it changes no shape."""

    def __init__(self, vocab_size: int):
        self.vocab_size, self.mask_token_id, self.all_special_ids = vocab_size, vocab_size - 1, []

    def __len__(self) -> int:
        return self.vocab_size


@dataclasses.dataclass
class Program:
    """One step compiled for the mesh: XLA's per-chip figures."""
    name: str  # "train" | "eval" | "generate"
    lower_s: float
    compile_s: float
    memory: object  # the executable's memory_analysis() (argument, output, alias, temporary bytes per chip); None
    flops: float  # XLA's count, per chip
    bytes_accessed: float  # per chip
    optimal_seconds: float | None  # XLA's cost-model time, when it gives a positive one
    collectives: list  # adapt.plan.hlo.Collective, each once
    out_of_memory: str = ""  # XLA's refusal when the program does not fit the chip (then memory is None)
    temporaries_needed: float = 0.0  # the temporaries' bytes per chip that refusal names
    kernels: int = 0  # the splash attention's Pallas (Mosaic) kernels in the compiled program: XLA counts them as 0

    @property
    def total_bytes(self) -> float:
        """Per chip: arguments + outputs - donated aliases + temporaries (what XLA refused: its temporaries)."""
        m = self.memory
        if m is None:
            return self.temporaries_needed
        return float(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


@dataclasses.dataclass
class Built:
    """The abstract trial: the blueprint, the abstract model (the method applied), the trainer and its state."""
    blueprint: Blueprint
    model: nnx.Module
    trainer: Trainer
    state: object  # TrainState of ShapeDtypeStructs
    batch: dict
    eval_batch: dict


def check(config: ml_collections.ConfigDict, chips: int) -> tuple[int, ...]:
    """Everything a plan can refuse before libtpu starts, each a one-line error: the config's sections, features,
    task and data format, ``mesh.shape`` against the chips, and the batches against the mesh's batch shards.
    Returns the mesh shape, its ``-1`` resolved."""
    base.check(config)
    if on := registry.check(config):
        raise ConfigError(f"plan: {', '.join(f.key for f in on)} on: planning a trial with a feature is not built "
                          "yet; plan it without")
    check_format(config, tasks.get(config.model.task))
    if config.data.format not in BATCH_LAYOUT:
        raise ConfigError(f"data.format={config.data.format!r}: plan knows the batches of {', '.join(BATCH_LAYOUT)}")
    shape = [int(n) for n in config.mesh.shape]
    fixed = math.prod(n for n in shape if n != -1)
    if shape.count(-1) > 1 or min(shape) < -1 or 0 in shape or chips % fixed or (-1 not in shape and fixed != chips):
        raise ConfigError(f"mesh.shape={tuple(config.mesh.shape)}: its product must be the topology's {chips} chips "
                          "(one -1 takes the chips left)")
    shape = tuple(chips // fixed if n == -1 else n for n in shape)
    mesh = jax.sharding.AbstractMesh(shape, MESH_AXES)
    ways = batch_ways(mesh, normalize_rules(config.mesh.rules))
    for key in ("train.batch_size", "eval.batch_size"):
        rows = int(config[key.split(".")[0]].batch_size)
        if rows % ways:
            raise ConfigError(f"{key}={rows} is not divisible by the {ways} batch shards of the mesh "
                              f"{dict(zip(MESH_AXES, shape))}")
    if config.train.batch_size % config.train.grad_accum:
        raise ConfigError(f"train.batch_size={config.train.batch_size} is not divisible by "
                          f"train.grad_accum={config.train.grad_accum}")
    return shape


def build(config: ml_collections.ConfigDict, mesh, *, labels: int = 2, layers: int | None = None,
          scan: bool | None = None) -> Built:
    """The trial of ``config`` (:func:`check` passed) built abstractly on ``mesh`` (see the module doc);
    ``layers``/``scan`` override the model's depth and ``model.scan_layers``."""
    task = tasks.get(config.model.task)
    names = [f"label_{i}" for i in range(labels)]
    dropouts = {k: v for k in ("hidden_dropout", "attention_dropout") if (v := config.model[k]) >= 0}
    stacked = bool(config.model.get("scan_layers")) if scan is None else scan
    blueprint = model_blueprint(model_source(config), task.head, **task.head_args(names), dtype=config.model.dtype,
                                scan_layers=stacked, config_overrides={"num_hidden_layers": layers} if layers else None,
                                **dropouts)
    method = methods.build(config.method)
    seed = config.train.seed
    model = nnx.eval_shape(lambda: method.apply(blueprint.construct(nnx.Rngs(seed)), nnx.Rngs(seed)))
    objective = task.objective(tasks.TaskInputs(PlanTokenizer(blueprint.hf.vocab_size), names, config))
    trainer = Trainer(model, objective, config, "", method=method, mesh=mesh, fresh=())
    state = trainer.abstract_setup(int(config.train.steps) or 1000)
    rows, length = config.train.batch_size, config.data.max_length
    return Built(blueprint, model, trainer, state, batch_of(config.data.format, rows, length, trainer),
                 batch_of(config.data.format, config.eval.batch_size, length, trainer))


def batch_of(fmt: str, rows: int, length: int, trainer: Trainer) -> dict:
    """``rows`` x ``length`` int32 batch of ``fmt`` (:data:`BATCH_LAYOUT`) on the trainer's batch sharding."""
    return {k: jax.ShapeDtypeStruct((rows, *(length for _ in dims)), jnp.int32, sharding=trainer.batch_sharding)
            for k, dims in BATCH_LAYOUT[fmt].items()}


def generates(built: Built) -> bool:
    """Whether the trial's model generates (a causal LM of a family with a KV-cache path)."""
    info = model_info(built.model)
    return info.head == "causal_lm" and bool(info.family.kv_cache)


def _generation_section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    section = config.generation.copy_and_resolve_references()
    with section.unlocked():
        section.max_new_tokens = section.max_new_tokens or generate.GenerationConfig.max_new_tokens
    return section


def generation_shape(config: ml_collections.ConfigDict) -> str:
    """What :func:`lower_generation` plans, in words."""
    section = _generation_section(config)
    return (f"{section.batch_size} prompts of {config.data.max_length:,} tokens + {section.max_new_tokens} new "
            "(generation.batch_size, data.max_length, generation.max_new_tokens)")


def lower_generation(built: Built) -> jax.stages.Lowered:
    """Generation's program (the prefill, then a loop of one-token decode steps over the KV cache;
    :mod:`adapt.models.generate`) for ``generation.batch_size`` prompts of ``data.max_length`` tokens and
    ``generation.max_new_tokens`` new ones (the generation default when the section's 0 leaves it off), with the
    trial's sampler, on the trial's mesh and rules."""
    trainer = built.trainer
    config, section = trainer.cfg, _generation_section(trainer.cfg)
    with trainer.steps.context():
        return generate.lower(trainer.best_model(built.state), section.batch_size, config.data.max_length,
                              generation_config(section))


def _cost_analysis(compiled) -> dict:
    """XLA's cost analysis of ``compiled`` (per chip); XLA:GPU compiling for a GPU it does not see gives none, so its
    optimized HLO module is analysed by XLA's HLO cost analysis on the CPU client (a cuBLAS call counts no FLOPs
    there: :func:`adapt.plan.planner.predict` never counts fewer than the model's)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    if cost is None:
        cost = _jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"),
                                             compiled.runtime_executable().hlo_modules()[0])
    return cost


def splash_kernels(text: str) -> int:
    """The calls of the splash attention's Mosaic kernels (named ``splash_...``) in a compiled TPU program's text; other
    Mosaic kernels (the grouped matmuls XLA makes of ``jax.lax.ragged_dot``, with XLA's own cost) are not counted."""
    return sum(1 for line in text.splitlines() if '"tpu_custom_call"' in line and "splash_" in line)


def compile_steps(built: Built, topology: Topology, which: tuple[str, ...] = ("train", "eval")) -> list[Program]:
    """The programs ``which`` of ``built`` (``"train"``, ``"eval"``: its steps; ``"generate"``:
    :func:`lower_generation`) lowered and compiled (timed), with XLA's per-chip figures. XLA counts a loop's body
    once: generation's cost is its prefill and one decode step."""
    steps, out = built.trainer.steps, []
    lowerers = {"train": lambda: steps.lower("train", built.state, built.batch),
                "eval": lambda: steps.lower("eval", built.state, built.eval_batch, jax.ShapeDtypeStruct((), jnp.int32)),
                "generate": lambda: lower_generation(built)}
    for name in which:
        start = time.perf_counter()
        lowered = lowerers[name]()
        lowered_s = time.perf_counter() - start
        start = time.perf_counter()
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:  # a TPU compile refuses a program over the chip's HBM
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            needed = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\)", str(e))
            temporaries = float(needed.group(1)) * _UNIT[needed.group(2)] if needed else 0.0
            out.append(Program(name, lowered_s, time.perf_counter() - start, None, 0.0, 0.0, None, [],
                               str(e).splitlines()[0], temporaries))
            continue
        compile_s = time.perf_counter() - start
        cost = _cost_analysis(compiled)
        optimal = cost.get("optimal_seconds")
        text = compiled.as_text()
        out.append(Program(name, lowered_s, compile_s, compiled.memory_analysis(), float(cost.get("flops", 0.0)),
                           float(cost.get("bytes accessed", 0.0)), optimal if optimal and optimal > 0 else None,
                           hlo.collectives(text, topology.chips), kernels=splash_kernels(text)))
    return out
