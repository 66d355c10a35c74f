"""Compile time of the train step with the layers unrolled against scanned (``model.scan_layers``,
:mod:`adapt.models.scan`), and the step time of each, on this machine.

    .venv/bin/python benchmarks/compile_time.py [--case minilm|smollm2|deep32|all] [--steps N] [--warmup N]
        [--batch B --length T] [--json FILE] [--topology v5e:2x2 --dtype bfloat16]

Cases: the bundled MiniLM (6 BERT layers) as a 5-class sequence classifier, batch 32, length 128; the bundled
SmolLM2-135M (30 Llama layers) as a causal LM, batch 8, length 256; ``deep32``, a random-init 32-layer Llama of
SmolLM2's family at a small width (D 256, F 512, 4 heads of 64, 2 key/value heads), batch 8, length 128. Each
is loaded twice, unrolled and scanned (the same weights), and its jitted train step (AdamW, full fine-tuning) is
lowered and compiled ahead under the run's mesh and rules (``jax.jit(...).lower(...)`` then ``.compile()``, timed
apart: tracing and lowering to StableHLO, then XLA's compilation); then the step's time, running that executable, is
the median of ``--steps`` timed steps after ``--warmup`` untimed ones (train_throughput.py's measure). With
``--topology`` the step is compiled for a TPU topology instead, by libtpu's compiler on this CPU (libtpu importable:
the version ``jax[tpu]`` pins for this jax; no TPU is needed or used), FSDP over its chips, and nothing runs.
Prints the machine (CPU, its vector extensions, the measured float32 matmul peak) and a Markdown table. Not a test:
run it by hand on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from train_throughput import batch_for, cpu_name, matmul_peak, median_seconds

from adapt.core.host_memory import use_kept_heap
from adapt.core.sharding import DEFAULT_RULES, make_mesh
from adapt.models import from_pretrained
from adapt.training import CausalLM, SequenceClassification, defaults, optim
from adapt.training.state import batch_sharding, create_state, global_batch
from adapt.training.steps import Steps

DEEP32 = dict(num_hidden_layers=32, hidden_size=256, intermediate_size=512, num_attention_heads=4,
              num_key_value_heads=2, head_dim=64)
CASES = {
    "minilm": dict(name="bundled:minilm-l6", task="sequence_classification", batch=32, length=128, labels=5),
    "smollm2": dict(name="bundled:smollm2-135m", task="causal_lm", batch=8, length=256),
    "deep32": dict(name="bundled:smollm2-135m", task="causal_lm", batch=8, length=128, overrides=DEEP32),
}
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # the extensions XLA:CPU's kernels use


def cpu_flags() -> list[str]:
    """Which of :data:`FLAGS` this CPU has (``/proc/cpuinfo``; empty where it is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            have = set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return []
    return [flag for flag in FLAGS if flag in have]


def on_topology(tree, mesh: Mesh):
    """``tree`` (arrays or shardings placed by the run's rules on a CPU mesh) as abstract arrays or shardings with
    the same partition specs on ``mesh`` (a topology's devices, which this machine does not own)."""
    def one(x):
        if isinstance(x, NamedSharding):
            return NamedSharding(mesh, x.spec)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, x.sharding.spec))
    return jax.tree.map(one, tree)


def measure(case: dict, scan: bool, steps: int, warmup: int, topology: str = "", dtype: str = "float32") -> dict:
    """Load the case's model (``scan``: its layers stacked), compile its train step ahead (timed), then time steps;
    with ``topology`` (e.g. ``v5e:2x2``) compile it for that TPU topology through libtpu instead (FSDP over its
    chips, the CPU run's partition specs), and run nothing."""
    mesh = make_mesh((1, -1, 1))
    # For a TPU, dropout off: libtpu 0.0.42's compiler overflows its stack on the dropout masks' hash (MiniLM)
    dropout = 0.0 if topology else None
    model = from_pretrained(case["name"], task=case["task"], num_labels=case.get("labels"), mesh=mesh,
                            config_overrides=case.get("overrides"), random_init="overrides" in case,
                            scan_layers=scan, dtype=dtype, hidden_dropout=dropout, attention_dropout=dropout)
    objective = SequenceClassification(case["labels"]) if "labels" in case else CausalLM()
    cfg = defaults()
    cfg.optimizer.update(learning_rate=1e-5, schedule="constant")
    tx, _ = optim.make_optimizer(cfg.optimizer, 1000, optim.param_kinds(nnx.state(model, nnx.Param)))
    static, state, shardings = create_state(model, tx, mesh=mesh, rules=DEFAULT_RULES, seed=0)
    bsh = batch_sharding(mesh, DEFAULT_RULES, case["batch"])
    batch = global_batch(batch_for(case, min(model.cfg.vocab_size, 1000), np.random.RandomState(0)), bsh)
    if topology:
        from jax.experimental import topologies  # libtpu's compiler (the tpu extra), not a TPU

        devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
        tpu = make_mesh((1, -1, 1), devices=devices)
        shardings, bsh, state, batch = (on_topology(t, tpu) for t in (shardings, bsh, state, batch))
    run = Steps(static, objective, tx, shardings, bsh, rules=DEFAULT_RULES)
    with run.context():
        start = time.perf_counter()
        lowered = run._train.lower(state, batch)
        lowered_s = time.perf_counter() - start
        start = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
    if topology:
        memory = compiled.memory_analysis()
        return {"layers": model.cfg.num_layers, "scan": scan, "lower_s": lowered_s, "compile_s": compile_s,
                "step_s": None, "temp_gib": memory.temp_size_in_bytes / 2**30}

    def step():  # the executable compiled above (jit's own cache would compile the step again)
        nonlocal state
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)

    with run.heap:
        seconds = median_seconds(step, steps, warmup)
    return {"layers": model.cfg.num_layers, "scan": scan, "lower_s": lowered_s, "compile_s": compile_s,
            "step_s": seconds}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=[*CASES, "all"], default="all")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, help="batch size instead of the case's")
    p.add_argument("--length", type=int, help="sequence length instead of the case's")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--topology", default="", help="compile for this TPU topology (e.g. v5e:2x2; libtpu installed) "
                                                  "instead of this CPU, and time no step")
    p.add_argument("--dtype", default="float32", help="the compute dtype (bfloat16 for a TPU)")
    args = p.parse_args()
    use_kept_heap()  # as the scripts do (adapt.core.cli.run): before JAX starts its threads
    peak, cpu, flags = matmul_peak(jnp.float32), cpu_name(), cpu_flags()
    print(f"{jax.default_backend()} x{jax.device_count()} ({jax.devices()[0].device_kind}), {cpu}, "
          f"{os.cpu_count()} CPU threads, flags {' '.join(flags) or 'none of ' + ' '.join(FLAGS)}; "
          f"measured float32 matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    for key in CASES if args.case == "all" else [args.case]:
        case = {**CASES[key], **{k: getattr(args, k) for k in ("batch", "length") if getattr(args, k)}}
        for scan in (False, True):
            row = {"case": key, "batch": case["batch"], "length": case["length"],
                   **measure(case, scan, args.steps, args.warmup, args.topology, args.dtype)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    target = f"TPU {args.topology} (libtpu)" if args.topology else "this CPU"
    print(f"\ncompiled for {target}, compute {args.dtype}")
    print("| case | layers | batch x length | stacking | lower s | compile s | lower + compile s | step s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        how = "scanned" if r["scan"] else "unrolled"
        step = f"{r['step_s']:.3f}" if r["step_s"] is not None else f"- ({r['temp_gib']:.2f} GiB temporaries/chip)"
        print(f"| {r['case']} | {r['layers']} | {r['batch']} x {r['length']} | {how} | {r['lower_s']:.2f} | "
              f"{r['compile_s']:.2f} | {r['lower_s'] + r['compile_s']:.2f} | {step} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": args.topology or jax.default_backend(), "dtype": args.dtype, "cpu": cpu,
                       "cpu_flags": flags, "matmul_peak_flops": peak, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
