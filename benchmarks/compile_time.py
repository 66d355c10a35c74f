"""Compile time of the train step with the layers unrolled against scanned (``model.scan_layers``,
:mod:`adapt.models.scan`), and the step time of each, on this machine.

    .venv/bin/python benchmarks/compile_time.py [--case minilm|smollm2|deep32|all] [--steps N] [--warmup N]
        [--batch B --length T] [--json FILE]

Cases: the bundled MiniLM (6 BERT layers) as a 5-class sequence classifier, batch 32, length 128; the bundled
SmolLM2-135M (30 Llama layers) as a causal LM, batch 8, length 256; ``deep32``, a random-init 32-layer Llama of
SmolLM2's family at a small width (D 256, F 512, 4 heads of 64, 2 key/value heads), batch 8, length 128. Each
is loaded twice, unrolled and scanned (the same weights), and its jitted train step (AdamW, full fine-tuning) is
lowered and compiled ahead under the run's mesh and rules (``jax.jit(...).lower(...)`` then ``.compile()``, timed
apart: tracing and lowering to StableHLO, then XLA's compilation); then the step's time, running that executable, is
the median of ``--steps`` timed steps after ``--warmup`` untimed ones (train_throughput.py's measure). Prints the
machine (CPU, its vector extensions, the measured float32 matmul peak) and a Markdown table. Not a test: run it by
hand on an idle machine.
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


def measure(case: dict, scan: bool, steps: int, warmup: int) -> dict:
    """Load the case's model (``scan``: its layers stacked), compile its train step ahead (timed), then time steps."""
    mesh = make_mesh((1, -1, 1))
    model = from_pretrained(case["name"], task=case["task"], num_labels=case.get("labels"), mesh=mesh,
                            config_overrides=case.get("overrides"), random_init="overrides" in case,
                            scan_layers=scan)
    objective = SequenceClassification(case["labels"]) if "labels" in case else CausalLM()
    cfg = defaults()
    cfg.optimizer.update(learning_rate=1e-5, schedule="constant")
    tx, _ = optim.make_optimizer(cfg.optimizer, 1000, optim.param_kinds(nnx.state(model, nnx.Param)))
    static, state, shardings = create_state(model, tx, mesh=mesh, rules=DEFAULT_RULES, seed=0)
    bsh = batch_sharding(mesh, DEFAULT_RULES, case["batch"])
    run = Steps(static, objective, tx, shardings, bsh, rules=DEFAULT_RULES)
    batch = global_batch(batch_for(case, min(model.cfg.vocab_size, 1000), np.random.RandomState(0)), bsh)
    with run.context():
        start = time.perf_counter()
        lowered = run._train.lower(state, batch)
        lowered_s = time.perf_counter() - start
        start = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start

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
                   **measure(case, scan, args.steps, args.warmup)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| case | layers | batch x length | stacking | lower s | compile s | lower + compile s | step s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        how = "scanned" if r["scan"] else "unrolled"
        print(f"| {r['case']} | {r['layers']} | {r['batch']} x {r['length']} | {how} | {r['lower_s']:.2f} | "
              f"{r['compile_s']:.2f} | {r['lower_s'] + r['compile_s']:.2f} | {r['step_s']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": jax.default_backend(), "cpu": cpu, "cpu_flags": flags, "matmul_peak_flops": peak,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
