"""A plan: does a config's trial fit a slice, how is it sharded, and how fast should its train step run there.

    p = plan(config, "v5p:2x2x1")     # compiles the train and eval steps for 4 v5p chips, from this CPU
    p.fits, p.markdown(), p.to_json()

Memory per chip is XLA's for the compiled train step (arguments + outputs - donated aliases + temporaries), with the
arguments split into what they are (trained parameters, optimizer state, frozen weights, anchors, the batch) from the
state's shardings, against the chip's usable HBM (:data:`adapt.plan.chips.USABLE_HBM`). The step's time is a
**cost-model prediction, not a measurement**: per chip, max(XLA's FLOPs / the chip's peak bf16 FLOP/s, XLA's bytes
accessed / HBM bandwidth), plus every collective's ring time over the ICI or NVLink (:mod:`adapt.plan.hlo`) counted
as exposed
(none overlapped with compute: an upper bound where XLA overlaps them); XLA's own ``optimal_seconds`` beside it only
when positive. Model FLOPs count what the step must compute: 6 per trained matmul weight and token, 4 per frozen one
(its forward pass and its input's gradient, under LoRA and adapters), plus attention, 12 L H d_h T per token (PaLM's
appendix B count, Chowdhery et al. 2022, arXiv:2204.02311, causal masking not discounted); the predicted MFU is those
over the slice's peak for the predicted time. XLA counts a custom call (a Pallas kernel, a cuBLAS matmul) as about
no FLOPs, so the compute time never counts fewer FLOPs than the model's share of each chip, and TPU's splash
attention kernel (``train.attention``) is counted analytically beside XLA's count: attention's model FLOPs, and the
forward's third again under remat (:func:`kernel_flops`).

For GPUs (``h100:<n>``, JAX's CUDA plugin) the program is compiled without the GPU and without autotuning: XLA picks
its kernels' tiles blind, so the memory and collectives are the program's, and its speed on a real H100 may be below
the prediction.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os

import jax
import ml_collections
from flax import nnx

from adapt.core.errors import ConfigError
from adapt.core.sharding import LAYERS, make_mesh
from adapt.models.registry import model_info
from adapt.plan import hlo
from adapt.plan.build import Program, build, check, compile_steps, generates, generation_shape
from adapt.plan.chips import GPUS, GiB, Topology, parse
from adapt.training.state import split_model

EMBEDDING_LEAVES = ("embedding",)  # lookups, not matmuls (a tied head's matmul is added apart)


def cuda_plugin() -> bool:
    """Whether JAX's CUDA plugin (``jax[cuda12]``) is installed."""
    find = importlib.util.find_spec
    return find("jax_plugins") is not None and find("jax_plugins.xla_cuda12") is not None


def devices_for(topology: Topology) -> list:
    """The devices of ``topology``: a TPU slice's from libtpu's topology description, GPUs' from the CUDA plugin's
    (with their target config: no TPU or GPU needed), or this process's CPU devices (``cpu:<n>`` needs n of them:
    ``scripts/plan.py`` starts JAX with them)."""
    if topology.platform == "cpu":
        cpus = jax.devices("cpu")
        if len(cpus) != topology.chips:
            raise ConfigError(f"--topology={topology.name}: this process has {len(cpus)} CPU devices; start it with "
                              f"XLA_FLAGS=--xla_force_host_platform_device_count={topology.chips} "
                              "(scripts/plan.py does)")
        return cpus
    from jax.experimental import topologies  # the compilers' topology descriptions: only for an accelerator plan

    if topology.platform == "gpu":
        if not cuda_plugin():
            raise ConfigError(f"--topology={topology.name}: compiling for a GPU needs JAX's CUDA plugin (about 5.5 GB "
                              "with CUDA's libraries; not in the test extra): pip install 'jax[cuda12]'")
        # XLA's GPU compiler for a target it does not see: its config, and the shape partitions x hosts x devices
        return list(topologies.get_topology_desc(platform="cuda", target_config=GPUS[topology.chip.name],
                                                 topology=f"1x1x{topology.chips}").devices)
    if importlib.util.find_spec("libtpu") is None:
        raise ConfigError(f"--topology={topology.name}: compiling for a TPU needs libtpu, the tpu extra: "
                          "pip install -e '.[tpu]'")
    # libtpu locks a file so that one process at a time drives a TPU; a plan only compiles, so several may load it
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    name = f"{topology.chip.name}:{'x'.join(map(str, topology.shape))}"
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)


def per_chip_bytes(tree) -> float:
    """Bytes per chip of a tree of ``ShapeDtypeStruct`` values with shardings (the largest shard of each leaf)."""
    return float(sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def matmul_weights(model: nnx.Module, method, blueprint) -> tuple[int, int]:
    """(trained, frozen) weights that multiply every token: the parameters with 2 or more dimensions per layer but
    the embeddings' lookups, a quantised kernel (QLoRA's codes and scales) by its shape, a tied output head by the
    embedding's size; of a mixture's experts (logical axis ``expert``), the k of E that each token reaches."""
    _, trained_state, frozen_state = split_model(model, method.trainable(model))
    per_token = getattr(model.cfg, "experts_per_token", None)  # a mixture of experts' k

    def count(state) -> int:
        total = 0
        for path, var in nnx.to_flat_state(state):
            axes = var.get_metadata().get("logical_axes") or ()
            per_layer = var.shape[1:] if axes[:1] == (LAYERS,) else var.shape
            if len(per_layer) >= 2 and str(path[-1]) not in EMBEDDING_LEAVES:
                share = per_token / var.shape[axes.index("expert")] if "expert" in axes else 1
                total += math.prod(var.shape) * share
        return round(total)

    trained, frozen = count(trained_state), count(frozen_state)
    for _, module in nnx.iter_modules(model):
        if hasattr(module, "codes") and hasattr(module, "shape"):  # QLoRA: the kernel its codes and scales stand for
            codes, scales = module.codes, module.scales
            layers = codes.shape[0] if len(codes.shape) == 3 else 1
            frozen += layers * math.prod(module.shape) - math.prod(codes.shape) - math.prod(scales.shape)
    hf = blueprint.hf
    if getattr(hf, "tie_word_embeddings", False) and blueprint.head == "causal_lm":
        tied = hf.vocab_size * hf.hidden_size
        embedding_trained = any(str(p[-1]) in EMBEDDING_LEAVES for p, _ in nnx.to_flat_state(trained_state))
        trained, frozen = (trained + tied, frozen) if embedding_trained else (trained, frozen + tied)
    return trained, frozen


def attention_flops(built) -> float:
    """Attention's FLOPs in ``built``'s train step, forward and backward, the whole slice's: PaLM's 12 L N H T per
    token (its score and value matmuls, every key counted: a causal kernel's skipped blocks are not credited)."""
    config, hf = built.trainer.cfg, built.blueprint.hf
    length = int(config.data.max_length)
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    per_token = 12.0 * hf.num_hidden_layers * hf.num_attention_heads * head_dim * length
    return int(config.train.batch_size) * length * per_token


def kernel_flops(built, costs: dict) -> float:
    """The FLOPs of the step's custom calls, which XLA counts as none, the whole slice's: where TPU's splash kernel
    ran (``train.attention``; ``costs["kernels"]``: the compiled programs' Mosaic kernels), :func:`attention_flops`,
    plus the forward's third again when remat recomputes it. (A step whose kernel runs in some layers only, global
    layers beside windowed ones unrolled, is counted as if it ran in every layer.)"""
    if not built.trainer.steps.splash or not costs.get("kernels"):
        return 0.0
    return attention_flops(built) * (1.0 if built.trainer.cfg.train.remat == "none" else 4.0 / 3.0)


def model_flops(built, trained: int, frozen: int) -> float:
    """The model FLOPs of ``built``'s train step, the whole slice's (see the module doc), from its
    :func:`matmul_weights`."""
    config = built.trainer.cfg
    tokens = int(config.train.batch_size) * int(config.data.max_length)
    return tokens * (6.0 * trained + 4.0 * frozen) + attention_flops(built)


@dataclasses.dataclass
class Plan:
    """A trial's plan on a topology (see the module doc); ``programs``: the real depth's compiled steps."""
    config: str
    topology: Topology
    mesh: dict
    model: str
    method: str
    scan_layers: bool
    layers: int
    tokens: int  # per train step, the whole slice's
    trained_params: int
    frozen_params: int
    memory: dict  # per chip, bytes: params, opt_state, frozen, anchors, batch, temporaries, total, usable
    programs: list
    costs: dict | None  # the train step per chip: flops, bytes_accessed, collective_s, collectives ({kind: count,
    #                     bytes}); None when it does not fit
    model_flops: float  # the train step's, the whole slice's
    generation: str = ""  # the generation program's shape, when the model generates
    step: str = ""  # how the train step runs: remat, micro-batches, attention kernel, logits whole or in chunks
    attention_flops: float = 0.0  # attention's share of model_flops (attention_flops)

    @property
    def fits(self) -> bool | None:
        usable = self.memory.get("usable")
        if any(p.out_of_memory for p in self.programs):
            return False
        return None if usable is None else max(p.total_bytes for p in self.programs) <= usable

    def predicted(self) -> dict:
        """compute_s, memory_s, collective_s, step_s, xla_optimal_s, tokens_per_s_per_chip, mfu (empty on a CPU)."""
        if self.topology.chip is None or self.costs is None:
            return {}
        optimal = None if self.scan_layers else self.programs[0].optimal_seconds  # XLA: a loop's body once
        return dict(predict(self.costs, self.topology, self.tokens, self.model_flops), xla_optimal_s=optimal)

    def to_json(self) -> dict:
        return {"config": self.config, "topology": self.topology.name, "slice": self.topology.marketing_name(),
                "chips": self.topology.chips, "mesh": self.mesh, "model": self.model, "method": self.method,
                "scan_layers": self.scan_layers, "layers": self.layers, "tokens_per_step": self.tokens,
                "step": self.step, "trained_params": self.trained_params, "frozen_params": self.frozen_params,
                "fits": self.fits,
                "memory_per_chip_bytes": self.memory, "costs_per_chip": self.costs, "model_flops": self.model_flops,
                "attention_flops": self.attention_flops,
                "predicted": self.predicted(), "prediction_is": "a cost-model prediction, not a measurement",
                "programs": [{"name": p.name, "lower_s": p.lower_s, "compile_s": p.compile_s,
                              "temp_bytes": p.memory.temp_size_in_bytes if p.memory else p.temporaries_needed,
                              "total_bytes": p.total_bytes, "out_of_memory": p.out_of_memory}
                             for p in self.programs]}

    def markdown(self) -> str:
        t, m = self.topology, self.memory
        gib = {k: f"{v / GiB:.2f}" for k, v in m.items()}
        lines = [f"## Plan: {self.model}, {self.method}, on {t.name} ({t.chips} chips, {t.marketing_name()})", "",
                 f"config {self.config}; mesh {self.mesh}; {self.layers} layers "
                 f"{'scanned' if self.scan_layers else 'unrolled'}; {self.tokens:,} tokens per step; "
                 f"{self.trained_params / 1e6:,.1f}M trained and {self.frozen_params / 1e6:,.1f}M frozen matmul "
                 f"weights; {self.step}",
                 "", "| per chip, GiB | params | optimizer | frozen | anchors | batch | temporaries | total | usable |",
                 "|---|---|---|---|---|---|---|---|---|",
                 "| train step | " + " | ".join(gib.get(k, "-") for k in ("params", "opt_state", "frozen", "anchors",
                                                                           "batch", "temporaries", "total", "usable"))
                 + " |", ""]
        lines += [f"{p.name} {'step' if p.name != 'generate' else 'program'}: {p.total_bytes / GiB:.2f} GiB per "
                  f"chip ({p.temporaries_needed / GiB if p.memory is None else p.memory.temp_size_in_bytes / GiB:.2f}"
                  " temporaries)" + (f", {self.generation}" if p.name == "generate" else "")
                  for p in self.programs[1:]]
        fits = self.fits
        over = max(self.programs, key=lambda p: p.total_bytes)
        lines.append("fits: " + ("n/a (CPU)" if fits is None else "yes" if fits else
                                 f"**no**: the {over.name} program needs {over.total_bytes / GiB:.2f} GiB per chip, "
                                 f"over {m['usable'] / GiB:.2f} usable"))
        if p := self.predicted():
            lines += ["", "Predicted (a cost-model prediction, not a measurement): step "
                      f"{p['step_s'] * 1e3:.1f} ms = max(compute {p['compute_s'] * 1e3:.1f}, HBM "
                      f"{p['memory_s'] * 1e3:.1f}) + collectives {p['collective_s'] * 1e3:.1f} ms; "
                      f"{p['tokens_per_s_per_chip']:,.0f} tokens/s per chip; MFU {p['mfu']:.1%}"
                      + (f"; XLA's optimal_seconds {p['xla_optimal_s'] * 1e3:.1f} ms" if p["xla_optimal_s"] else "")]
        coll = self.costs["collectives"] if self.costs else {}
        lines += ["", "collectives per train step: " + (", ".join(
            f"{k} {v['count']:.0f} ({v['bytes'] / 2**20:,.1f} MiB)" for k, v in coll.items()) or "-"),
            *(f"{p.name} step: XLA: {p.out_of_memory}" for p in self.programs if p.out_of_memory),
            "compile: " + ", ".join(f"{p.name} {p.lower_s:.1f} s lower + {p.compile_s:.1f} s compile"
                                    for p in self.programs)
            + (f"; the costs' 1- and 2-layer programs {self.costs['compile_s']:.1f} s"
               if self.scan_layers and self.costs else "")]
        return "\n".join(lines)


def predict(costs: dict, topology: Topology, tokens: int, model_flops: float) -> dict:
    """The step's predicted time per chip from its ``costs`` (see the module doc), tokens/s per chip and MFU."""
    chip = topology.chip
    counted = costs["flops"] + costs.get("kernel_flops", 0.0)  # XLA's, and its custom calls' (none to XLA)
    compute = max(counted, model_flops / topology.chips) / chip.peak_bf16_flops
    traffic = costs["bytes_accessed"] / chip.hbm_bandwidth
    step = max(compute, traffic) + costs["collective_s"]
    return {"compute_s": compute, "memory_s": traffic, "collective_s": costs["collective_s"], "step_s": step,
            "tokens_per_s_per_chip": tokens / step / topology.chips,
            "mfu": model_flops / (step * topology.chips * chip.peak_bf16_flops)}


def _coords(mesh) -> list[tuple[int, ...]]:
    """The chips' physical coordinates in the order of the SPMD program's partitions (its collectives' replica
    groups number them so): the mesh's devices, flattened."""
    return [tuple(getattr(d, "coords", (i,))) for i, d in enumerate(mesh.devices.flat)]


def _costs(program: Program, topology: Topology, coords) -> dict:
    return {"flops": program.flops, "bytes_accessed": program.bytes_accessed,
            "collective_s": sum(hlo.seconds(c, topology, coords) for c in program.collectives),
            "collectives": hlo.summary(program.collectives), "memory": program.total_bytes,
            "compile_s": program.lower_s + program.compile_s, "kernels": program.kernels}


def extrapolate(one: dict, two: dict, layers: int) -> dict:
    """Costs (and memory per chip) at ``layers`` from those at 1 and 2 layers: the first layer's, plus each further
    one's; ``compile_s``: the two compiles'."""
    def line(a, b):
        return a + (layers - 1) * (b - a)

    kinds = set(one["collectives"]) | set(two["collectives"])
    empty = {"count": 0, "bytes": 0.0}
    return {**{k: line(one[k], two[k]) for k in ("flops", "bytes_accessed", "collective_s", "memory")},
            "collectives": {k: {f: line(one["collectives"].get(k, empty)[f], two["collectives"].get(k, empty)[f])
                                for f in ("count", "bytes")} for k in hlo.KINDS if k in kinds},
            "compile_s": one["compile_s"] + two["compile_s"], "kernels": one.get("kernels", 0) + two.get("kernels", 0)}


_LAYER_COSTS: dict = {}  # (config, mesh, topology, layers, labels) -> layer_costs: a search plans its best again


def layer_costs(config: ml_collections.ConfigDict, mesh, topology: Topology, layers: int, *, labels: int = 2) -> dict:
    """The train step's costs per chip at ``layers`` deep, extrapolated from its programs at 1 and 2 layers
    (unrolled): XLA counts a loop's body once, so a scanned program's own counts are one layer's. Its memory is an
    estimate too (the real program's is XLA's: :func:`plan`). Computed once per process for the same arguments."""
    key = (config.to_json(), tuple(mesh.shape.items()), topology.name, layers, labels)
    if key not in _LAYER_COSTS:
        _LAYER_COSTS[key] = _layer_costs(config, mesh, topology, layers, labels)
    return dict(_LAYER_COSTS[key])


def _layer_costs(config, mesh, topology: Topology, layers: int, labels: int) -> dict:
    one, two = (_costs(compile_steps(build(config, mesh, labels=labels, layers=n, scan=False), topology,
                                     ("train",))[0], topology, _coords(mesh)) for n in (1, 2))
    return extrapolate(one, two, layers)


def plan(config: ml_collections.ConfigDict, topology: str, *, labels: int = 2, name: str = "",
         scan: bool | None = None, train_only: bool = False) -> Plan:
    """Plan ``config``'s trial on ``topology`` (see the module doc); ``scan`` overrides ``model.scan_layers``;
    ``train_only``: the train step's program alone (eval's and generation's not compiled)."""
    top = parse(topology)
    shape = check(config, top.chips)  # bad input: one line, before libtpu starts
    devices = devices_for(top)
    mesh = make_mesh(shape, devices=devices)
    built = build(config, mesh, labels=labels, scan=scan)
    generating = generates(built)
    steps = ("train",) if train_only else ("train", "eval", "generate") if generating else ("train", "eval")
    programs = compile_steps(built, top, steps)
    info = model_info(built.model)
    layers, stacked = info.dims.num_layers, info.stacked
    state, train = built.state, programs[0]
    memory = {k: per_chip_bytes(getattr(state, k)) for k in ("params", "opt_state", "frozen", "anchors")}
    memory["batch"] = per_chip_bytes(built.batch)
    if train.memory is None:  # XLA refused it: over the chip's HBM by its temporaries alone
        memory["temporaries"] = train.temporaries_needed
        memory["total"] = sum(memory.values())
        costs = None
    else:
        memory["temporaries"] = float(train.memory.temp_size_in_bytes)
        memory["total"] = train.total_bytes
        if stacked and layers > 1:
            costs = layer_costs(config, mesh, top, layers, labels=labels)
            costs["memory"] = train.total_bytes
        else:
            costs = _costs(train, top, _coords(mesh))
        costs["kernel_flops"] = kernel_flops(built, {"kernels": train.kernels}) / top.chips  # the real program's
    if top.chip is not None:
        memory["usable"] = top.chip.usable_hbm
    trained, frozen = matmul_weights(built.model, built.trainer.method, built.blueprint)
    tokens = int(config.train.batch_size) * int(config.data.max_length)
    generation = generation_shape(config) if "generate" in steps else ""
    chunks = int(config.train.loss_chunks)
    attention = ("the splash kernel" if train.kernels else "ours (the splash kernel does not apply)"
                 if built.trainer.steps.splash else "ours")
    step = (f"remat {config.train.remat}, grad_accum {config.train.grad_accum}; attention: {attention}; logits "
            f"{'whole' if chunks == 1 else f'in {chunks} chunks'}")
    return Plan(name, top, dict(mesh.shape), str(built.blueprint.source.name), config.method.name, stacked, layers,
                tokens, trained, frozen, memory, programs, costs, model_flops(built, trained, frozen), generation, step,
                attention_flops(built))
