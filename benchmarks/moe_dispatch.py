"""The two dispatches of a mixture-of-experts block (``train.moe_dispatch``, adapt/models/moe.py) side by side: the
forward and backward of one sparse feed-forward (router, top-k, experts), timed on this CPU at the test sizes and at a
medium size, and compiled for a TPU (libtpu, no chip needed) for XLA's cost model: FLOPs, bytes accessed and the
roofline time per chip (adapt/plan's chip table). Not a test: run it by hand.

    .venv/bin/python benchmarks/moe_dispatch.py [--topology=v5e:2x2] [--repeats=20]

Sizes (N tokens, D width, E experts, k per token, F expert width): the tests' (24, 64, 4, 2, 96), a medium one
(2048, 512, 8, 2, 1024) and a fine-grained one like Qwen3-30B-A3B's experts (2048, 512, 64, 8, 192). The TPU times are
cost-model predictions, not measurements.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the CPU timings; the TPU program is compiled, never run

import jax
import jax.numpy as jnp
import numpy as np

from adapt.models import moe

SIZES = {"tests": (24, 64, 4, 2, 96), "medium": (2048, 512, 8, 2, 1024), "fine-grained": (2048, 512, 64, 8, 192)}


def block(x, router, gate_up, down, k):  # x [N, D] -> a scalar: the sparse block's output, summed
    weights, experts = moe.route(x @ router.T, k, True)
    return jnp.sum(moe.experts_ffn(x, weights, experts, gate_up, down, jax.nn.silu) ** 2)


def arrays(n, d, e, k, f, dtype=jnp.float32):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    return (jax.random.normal(keys[0], (n, d), dtype), jax.random.normal(keys[1], (e, d), dtype) * 0.1,
            jax.random.normal(keys[2], (e, 2 * f, d), dtype) * d ** -0.5,
            jax.random.normal(keys[3], (e, d, f), dtype) * f ** -0.5)


def step_fn(k):
    return jax.jit(jax.value_and_grad(lambda *a: block(*a, k), argnums=(0, 2, 3)))


def cpu_time(size, dispatch, repeats) -> float:
    n, d, e, k, f = size
    args = arrays(n, d, e, k, f)
    with moe.dispatching(dispatch):
        fn = step_fn(k)
        jax.block_until_ready(fn(*args))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def tpu_costs(size, dispatch, topology: str) -> dict:
    from adapt.plan.chips import parse
    from adapt.plan.planner import devices_for

    top = parse(topology)
    device = devices_for(top)[0]
    n, d, e, k, f = size
    sharding = jax.sharding.SingleDeviceSharding(device)
    specs = [jax.ShapeDtypeStruct(a.shape, jnp.bfloat16, sharding=sharding) for a in arrays(n, d, e, k, f)]
    with moe.dispatching(dispatch):
        compiled = step_fn(k).lower(*specs).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops, accessed = float(cost.get("flops", 0)), float(cost.get("bytes accessed", 0))
    chip = top.chip
    return {"flops": flops, "bytes": accessed,
            "seconds": max(flops / chip.peak_bf16_flops, accessed / chip.hbm_bandwidth)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--topology", default="v5e:2x2")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    from train_throughput import cpu_name, matmul_peak

    print(f"CPU: {cpu_name()}, float32 matmul peak {matmul_peak(jnp.float32) / 1e9:.0f} GFLOP/s; TPU: {args.topology} "
          "(cost model)\n")
    print("| size (N, D, E, k, F) | dispatch | CPU fwd+bwd, ms (median) | TPU GFLOP | TPU MB accessed | "
          "TPU predicted, us |")
    print("|---|---|---|---|---|---|")
    for name, size in SIZES.items():
        for dispatch in moe.DISPATCH:
            t = cpu_time(size, dispatch, args.repeats)
            c = tpu_costs(size, dispatch, args.topology)
            print(f"| {name} {size} | {dispatch} | {t * 1e3:.2f} | {c['flops'] / 1e9:.2f} | {c['bytes'] / 1e6:.1f} | "
                  f"{c['seconds'] * 1e6:.1f} |")


if __name__ == "__main__":
    main()
