"""The planning table: large models' fine-tuning and continued-pretraining steps planned for TPU slices from this CPU
(``scripts/plan.py``, one process per row), as a Markdown table with each row's command and wall time.

    .venv/bin/python benchmarks/plan_table.py --out=runs/plan_table [--rows=0,1,5 | --rows=all] [--list]

Rows (``--list`` prints them with their numbers): Llama-3.1-8B full fine-tuning, LoRA r16 and QLoRA 4-bit r16,
Llama-3.1-70B LoRA and QLoRA, Qwen2.5-7B and 32B LoRA; SFT (64 x 2,048 tokens a step) and continued pretraining
(512 x 2,048, about 1M tokens, in 8 micro-batches) from ``configs/plan.py``; on v5e-8 (``v5e:2x4``), v5p-8
(``v5p:2x2x1``, 4 chips), v6e-8 (``v6e:2x4``) and v5p-128 (``v5p:4x4x4``, 64 chips). Every row remats each layer
(``train.remat=full``: none of these batches' activations fit without it), reduces the logits in 8 chunks
(``train.loss_chunks=8``), runs the splash kernel (the default on TPU) and shards by FSDP over every chip (the
config's mesh; ``scripts/plan.py --search`` looks for a better one, at the cost of its compiles); only the train step
is compiled (``--train-only``: what fits and how fast is the train step's). A row already in
``--out`` (its JSON) is read, not planned again, so the table fills in over several sittings.

Every time in it is a cost-model prediction, not a measurement; the wall time is this machine's, beside its CPU's
float32 matmul peak measured right after the row.
Not a test: run it by hand.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

import jax.numpy as jnp
from train_throughput import cpu_name, matmul_peak

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 2**30
MODELS = {  # architecture -> methods planned for it
    "llama-3.1-8b": ("full", "lora", "qlora"),
    "llama-3.1-70b": ("lora", "qlora"),
    "qwen2.5-7b": ("lora",),
    "qwen2.5-32b": ("lora",),
}
METHOD_ARGS = {"full": [], "lora": ["--config.method.name=lora", "--config.method.rank=16"],
               "qlora": ["--config.method.name=qlora", "--config.method.rank=16"]}
TOPOLOGIES = ("v5e:2x4", "v5p:2x2x1", "v6e:2x4", "v5p:4x4x4")
ROWS = [(arch, method, shape, topology) for (arch, methods), shape, topology
        in itertools.product(MODELS.items(), ("sft", "cpt"), TOPOLOGIES) for method in methods]


def command(row) -> list[str]:
    arch, method, shape, topology = row
    return ["scripts/plan.py", f"--config=configs/plan.py:{arch},{shape}", f"--topology={topology}",
            "--config.train.remat=full", "--config.train.loss_chunks=8", "--train-only", *METHOD_ARGS[method]]


def run(row, out: str) -> dict:
    """The row's plan (its JSON in ``out``, planned now when missing), with the command's wall time and exit code."""
    path = os.path.join(out, "-".join(row).replace(":", "_") + ".json")
    if not os.path.exists(path):
        start = time.perf_counter()
        args = command(row) + [f"--json={path}.plan"]
        r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if r.returncode not in (0, 1):
            sys.exit(f"{' '.join(args)}: exit {r.returncode}\n{r.stderr[-3000:]}")
        with open(path + ".plan") as f:
            plan = json.load(f)
        os.remove(path + ".plan")
        with open(path, "w") as f:
            json.dump({"plan": plan, "wall_s": wall, "exit": r.returncode, "cpu": cpu_name(),
                       "matmul_peak_gflops": matmul_peak(jnp.float32) / 1e9}, f, indent=1)  # right after the row
    with open(path) as f:
        return json.load(f)


def markdown(rows, results) -> str:
    lines = ["| model | method | shape | slice (chips) | fits | GiB per chip (train; eval; generate) | "
             "predicted step, s | tokens/s per chip | predicted MFU | mesh | command | wall, min (CPU peak) |",
             "|" + "---|" * 12]
    for row, r in zip(rows, results):
        p = r["plan"]
        totals = "; ".join(f"{q['total_bytes'] / GiB:.1f}" for q in p["programs"])
        pred = p["predicted"]
        step = f"{pred['step_s']:.2f}" if pred else "-"
        tps = f"{pred['tokens_per_s_per_chip']:,.0f}" if pred else "-"
        mfu = f"{pred['mfu']:.1%}" if pred else "-"
        mesh = "x".join(str(v) for v in p["mesh"].values())
        lines.append(f"| {row[0]} | {row[1]} | {row[2]} | {p['slice']} ({p['chips']}) | "
                     f"{'yes' if p['fits'] else '**no**'} | {totals} | {step} | {tps} | {mfu} | {mesh} | "
                     f"`{' '.join(command(row))}` | {r['wall_s'] / 60:.1f} "
                     f"({r.get('matmul_peak_gflops', float('nan')):.0f} GFLOP/s) |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "plan_table"))
    parser.add_argument("--rows", default="all", help="comma-separated row numbers (--list), or all")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        for i, row in enumerate(ROWS):
            print(i, " ".join(command(row)))
        return
    chosen = ROWS if args.rows == "all" else [ROWS[int(i)] for i in args.rows.split(",")]
    os.makedirs(args.out, exist_ok=True)
    results = []
    for row in chosen:
        results.append(run(row, args.out))
        print(f"{' '.join(command(row))}: {results[-1]['wall_s'] / 60:.1f} min", flush=True)
    print(f"\nCPU: {cpu_name()}; predicted times are a cost model's, not measurements\n")
    print(markdown(chosen, results))


if __name__ == "__main__":
    main()
