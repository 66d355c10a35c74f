"""The fastest predicted train step that fits a slice, over the ways to run one config's step there.

    result = search(config, "v5p:2x2x1")      # every variant's prediction, best first
    result.best, result.markdown()

A variant is a mesh (``mesh.shape``: data x fsdp x tensor, every factorisation of the chips whose tensor ways divide
the attention heads, the key/value heads and the MLP width), a remat policy (``train.remat``) and a micro-batching
(``train.grad_accum``, powers of two) of the same global batch; those the plan's own checks refuse (a batch the
data axes do not divide) are left out. Compiling is the cost, so:

- **pruned**: a variant whose quick memory estimate per chip is over ``PRUNE`` (1.5) x the usable HBM is not compiled.
  The estimate is the state's exact bytes per chip (its shardings, abstractly: no compile), gradients as large as the
  trained parameters, the activations of one micro-batch (Korthikanti et al. 2022, arXiv:2205.05198, section 4:
  s b h (34 + 5 a s / h) bytes per layer kept for the backward pass, the second term the attention scores, which
  TPU's splash kernel does not keep (``train.attention``); 2 s b h under full remat, about half of the first under
  ``dots``; over the tensor ways) and its float32 logits and their gradient (one chunk's of
  ``train.loss_chunks``);
- **compiled**: the rest, each at 1 and 2 layers unrolled (small programs), their costs and memory extrapolated to
  the model's depth (:func:`adapt.plan.planner.layer_costs`), and ranked by predicted step time;
- the best whose extrapolated memory fits is then **planned at its real depth** (:func:`adapt.plan.plan`: its memory
  is XLA's for the real program); if that does not fit, the next.

``budget`` caps the variants compiled (in the order: less remat, fewer micro-batches, fewer tensor ways first); the
rest are reported as not compiled. Times are cost-model predictions, not measurements.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time

import ml_collections

from adapt.core.errors import ConfigError
from adapt.core.sharding import make_mesh
from adapt.models.layers import REMAT_POLICIES
from adapt.plan.build import build, check
from adapt.plan.chips import GiB, parse
from adapt.plan.planner import (
    Plan,
    devices_for,
    kernel_flops,
    layer_costs,
    matmul_weights,
    model_flops,
    per_chip_bytes,
    plan,
    predict,
)

PRUNE = 1.5  # the quick estimate is rough: prune only what it puts well over the chip
ACTIVATION_SHARE = {"none": 1.0, "dots": 0.5}  # of the per-layer activations kept for the backward pass
TOP = 5


@dataclasses.dataclass
class Variant:
    mesh: tuple[int, int, int]  # data, fsdp, tensor
    remat: str
    grad_accum: int
    estimate: float = 0.0  # quick memory estimate per chip, bytes
    status: str = "not compiled"  # "pruned" | "compiled" | "not compiled" (over the budget)
    memory: float = 0.0  # extrapolated, per chip, bytes
    predicted: dict = dataclasses.field(default_factory=dict)
    compile_s: float = 0.0  # its two small programs'

    @property
    def overrides(self) -> dict:
        return {"mesh.shape": self.mesh, "train.remat": self.remat, "train.grad_accum": self.grad_accum}

    @property
    def label(self) -> str:
        return f"mesh {'x'.join(map(str, self.mesh))}, remat {self.remat}, grad_accum {self.grad_accum}"


@dataclasses.dataclass
class SearchResult:
    topology: str
    usable: float
    variants: list[Variant]  # the compiled ones by predicted step, then the rest
    best: Variant | None
    plan: Plan | None  # the best's, at its real depth
    wall_s: float

    def markdown(self) -> str:
        compiled = [v for v in self.variants if v.status == "compiled"]
        counts = {s: sum(v.status == s for v in self.variants) for s in ("compiled", "pruned", "not compiled")}
        lines = [f"## Search on {self.topology}: {len(self.variants)} variants; "
                 + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; {self.wall_s:.0f} s", "",
                 "Predicted step times are a cost-model prediction, not a measurement; memory per chip is "
                 "extrapolated from 1- and 2-layer programs (the best is then planned at its real depth, below).", "",
                 "| rank | mesh (data x fsdp x tensor) | remat | grad_accum | GiB per chip (estimate) | fits | "
                 "predicted step, ms | MFU | compile, s |", "|---|---|---|---|---|---|---|---|---|"]
        for i, v in enumerate(compiled[:TOP], 1):
            fits = "yes" if v.memory <= self.usable else "no"
            lines.append(f"| {i} | {'x'.join(map(str, v.mesh))} | {v.remat} | {v.grad_accum} | "
                         f"{v.memory / GiB:.1f} ({v.estimate / GiB:.1f}) | {fits} | {v.predicted['step_s'] * 1e3:,.1f}"
                         f" | {v.predicted['mfu']:.1%} | {v.compile_s:.0f} |")
        pruned = [v for v in self.variants if v.status == "pruned"]
        if pruned:
            lines += ["", f"pruned (quick estimate over {PRUNE} x {self.usable / GiB:.1f} GiB usable): "
                      + "; ".join(f"{v.label} ({v.estimate / GiB:.0f} GiB)" for v in pruned)]
        lines += ["", f"best: {self.best.label}" if self.best else "best: **none fits**"]
        if self.plan is not None:
            lines += ["", self.plan.markdown()]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"topology": self.topology, "wall_s": self.wall_s, "best": self.best and self.best.overrides,
                "prediction_is": "a cost-model prediction, not a measurement",
                "variants": [dict(v.overrides, status=v.status, estimate_bytes=v.estimate, memory_bytes=v.memory,
                                  predicted=v.predicted, compile_s=v.compile_s) for v in self.variants],
                "plan": self.plan.to_json() if self.plan else None}


def _divides(n: int, hf, names) -> bool:
    return all(getattr(hf, name, None) is None or getattr(hf, name) % n == 0 for name in names)


def variants(config: ml_collections.ConfigDict, chips: int, hf) -> list[Variant]:
    """Every variant of ``config`` on ``chips`` that :func:`adapt.plan.build.check` accepts, in compile order."""
    out = []
    heads = ("num_attention_heads", "num_key_value_heads", "intermediate_size", "hidden_size")
    batch = int(config.train.batch_size)
    for data, fsdp in itertools.product(range(1, chips + 1), repeat=2):
        if chips % (data * fsdp) or not _divides(tensor := chips // (data * fsdp), hf, heads):
            continue
        for remat, accum in itertools.product(REMAT_POLICIES, (2**k for k in range(int(math.log2(batch)) + 1))):
            v = Variant((data, fsdp, tensor), remat, accum)
            try:
                check(_with(config, v), chips)
            except ConfigError:
                continue
            out.append(v)
    order = {p: i for i, p in enumerate(("none", "dots", "full"))}
    return sorted(out, key=lambda v: (order.get(v.remat, 3), v.grad_accum, v.mesh[2], -v.mesh[0]))


def _with(config: ml_collections.ConfigDict, v: Variant) -> ml_collections.ConfigDict:
    c = config.copy_and_resolve_references()
    c.mesh.shape, c.train.remat, c.train.grad_accum = v.mesh, v.remat, v.grad_accum
    c.eval.batch_size = int(c.train.batch_size) // v.grad_accum  # evaluation's rows: one micro-batch's
    return c


def estimate(config: ml_collections.ConfigDict, v: Variant, built) -> float:
    """The quick memory estimate per chip of ``v`` (see the module doc), from its abstract ``built`` trial."""
    state, hf = built.state, built.blueprint.hf
    exact = sum(per_chip_bytes(getattr(state, k)) for k in ("params", "opt_state", "frozen", "anchors"))
    grads = per_chip_bytes(state.params) * (2 if v.grad_accum > 1 else 1)  # the accumulator beside them
    data, fsdp, tensor = v.mesh
    s, b = int(config.data.max_length), int(config.train.batch_size) // v.grad_accum / (data * fsdp)
    h, a, layers = hf.hidden_size, hf.num_attention_heads, hf.num_hidden_layers
    scores = 0 if built.trainer.steps.splash else 5 * a * s / h  # the splash kernel keeps no scores
    per_layer = (2 * s * b * h if v.remat == "full" else ACTIVATION_SHARE[v.remat] * s * b * h * (34 + scores) / tensor)
    logits = 2 * 4 * s * b * hf.vocab_size / tensor / int(config.train.loss_chunks)  # one chunk's (train.loss_chunks)
    return exact + grads + layers * per_layer + logits


def search(config: ml_collections.ConfigDict, topology: str, *, labels: int = 2, budget: int | None = None,
           name: str = "") -> SearchResult:
    """Search ``config``'s variants on ``topology`` (see the module doc)."""
    start = time.perf_counter()
    top = parse(topology)
    if top.chip is None:
        raise ConfigError(f"--topology={topology}: a search predicts step times, which needs a TPU topology")
    shape = check(config, top.chips)  # the config itself: one line before anything starts
    devices = devices_for(top)
    probe = build(config, make_mesh(shape, devices=devices), labels=labels, scan=True)
    hf = probe.blueprint.hf
    flops = model_flops(probe, *matmul_weights(probe.model, probe.trainer.method, probe.blueprint))
    candidates = variants(config, top.chips, hf)
    tokens, usable = int(config.train.batch_size) * int(config.data.max_length), top.chip.usable_hbm
    compiled = 0
    for v in candidates:
        c = _with(config, v)
        mesh = make_mesh(v.mesh, devices=devices)
        built = build(c, mesh, labels=labels, scan=True)  # abstract: no compile
        v.estimate = estimate(c, v, built)
        if v.estimate > PRUNE * usable:
            v.status = "pruned"
            continue
        if budget is not None and compiled >= budget:
            continue
        costs = layer_costs(c, mesh, top, hf.num_hidden_layers, labels=labels)
        costs["kernel_flops"] = kernel_flops(built, costs) / top.chips
        compiled += 1
        v.status, v.memory, v.compile_s = "compiled", costs["memory"], costs["compile_s"]
        v.predicted = predict(costs, top, tokens, flops)
    ranked = sorted((v for v in candidates if v.status == "compiled"), key=lambda v: v.predicted["step_s"])
    best, result = None, None
    for v in (v for v in ranked if v.memory <= usable):
        result = plan(_with(config, v), topology, labels=labels, name=name)
        if result.fits:
            best = v
            break
    rest = [v for v in candidates if v.status != "compiled"]
    return SearchResult(top.name, usable, ranked + rest, best, result, time.perf_counter() - start)
