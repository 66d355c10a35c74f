"""Trials per hour: a sweep's trials trained one after another vs. packed as populations of N (one vmapped
program, :mod:`adapt.study.populations`), on the main job's trial shapes.

    .venv/bin/python benchmarks/populations.py [--method lora|full|both] [--sizes 1,4,8] [--repeats 1]

A trial is the main job's Baseline fine-tuning trial (experiments/bbc_tapt/config.py): MiniLM-L6, 80 labelled
BBC articles of 64 tokens, 24 steps of batch 8, then dev and test evaluation, predictions and results.json.
The N trials of a size differ in learning rate (the row's 3-point grid) and seed, as the main job's grid does.
Both ways run in this process with JAX's persistent compilation cache, as scripts/study.py does, after one
untimed pass of each that fills it (a study's later trials find their programs there). Prints one line per
(method, N): seconds and trials per hour each way, and the speed-up, with this machine's CPU and matmul peak.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), HERE]


def _configs(method: str, n: int):
    from adapt.experiment import configs
    from adapt.methods import method_config
    from adapt.study.sweeps import trial_config

    path = os.path.join(HERE, "..", "experiments", "bbc_tapt", "config.py")
    module = configs.load_module(path)
    base = configs.from_module(module, None, [])
    rates = module.LEARNING_RATES[None][method]
    grid = list(itertools.islice(((lr, seed) for seed in range(n) for lr in rates), n))
    return [trial_config(base, {"method": method_config(method, **({"rank": 8} if method == "lora" else {})).to_dict(),
                                "optimizer.learning_rate": lr, "train.seed": seed}) for lr, seed in grid]


def _time(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="both", choices=["lora", "full", "both"])
    parser.add_argument("--sizes", default="1,4,8")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per way (the best is reported)")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # the trials' progress bars

    from adapt.core import cli
    from adapt.core.host_memory import use_kept_heap

    use_kept_heap()
    root = tempfile.mkdtemp(prefix="populations-")
    cli.compile_cache(root)
    import jax.numpy as jnp
    from train_throughput import cpu_name, matmul_peak

    from adapt.experiment import run_trial
    from adapt.study.populations import run_population

    avx512 = "avx512f" in open("/proc/cpuinfo").read()
    print(f"CPU: {cpu_name()} ({'AVX-512' if avx512 else 'no AVX-512'}), "
          f"float32 matmul peak {matmul_peak(jnp.float32) / 1e9:.0f} GFLOP/s, "
          f"{os.cpu_count()} cores", flush=True)
    counter = itertools.count()

    def folders(n):
        i = next(counter)
        return [os.path.join(root, f"run{i}", str(j)) for j in range(n)]

    methods = ["lora", "full"] if args.method == "both" else [args.method]
    print("| method | N | one by one (s) | trials/h | population (s) | trials/h | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for method in methods:
        for n in map(int, args.sizes.split(",")):
            configs = _configs(method, n)

            def alone():
                for c, w in zip(configs, folders(n)):
                    run_trial(c, w)

            def together():
                out = run_population(configs, folders(n))
                bad = [r for r in out if isinstance(r, Exception)]
                assert not bad, bad

            alone(), together()  # fill the compilation cache
            seq = min(_time(alone) for _ in range(args.repeats))
            pop = min(_time(together) for _ in range(args.repeats))
            print(f"| {method} | {n} | {seq:.1f} | {n / seq * 3600:.0f} | {pop:.1f} | {n / pop * 3600:.0f} | "
                  f"{seq / pop:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
