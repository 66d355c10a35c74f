"""Our planner's estimator applied to MaxText's compiled train step and to ours, side by side, for the same model, batch
and slice: memory per chip, XLA's FLOPs and bytes, collectives, predicted step time and MFU.

    .venv/bin/python benchmarks/maxtext_side_by_side.py --maxtext=runs/maxtext --plan=plan.json [--topology=v5p:2x2x1]

``--maxtext``: the folder ``benchmarks/maxtext_compile.py`` wrote, with ``scanned/`` (MaxText's step as it runs:
layers scanned; its memory) and ``layers1/``, ``layers2/`` (the step with 1 and 2 layers unrolled, whose costs are
extrapolated to ``--layers``, as :func:`adapt.plan.planner.layer_costs` does for ours). ``--plan``: our plan's JSON
(``scripts/plan.py --json``) of the same model and shape. The model FLOPs behind both MFUs are our plan's count for
the model (both train every weight of the same model on the same tokens). MaxText's attention is TPU's splash kernel,
a custom call XLA counts as no FLOPs: its FLOPs are counted as the planner counts ours (``--maxtext-remat``: full
remat recomputes its forward, :func:`adapt.plan.planner.kernel_flops`). Everything predicted is a cost model's
prediction, not a measurement. Not a test: run it by hand.
"""

from __future__ import annotations

import argparse
import json
import os

from adapt.plan import hlo
from adapt.plan.chips import GiB, parse
from adapt.plan.planner import devices_for, extrapolate, predict


def program_costs(folder: str, topology, coords) -> dict:
    """The costs of the program MaxText's compile saved in ``folder``, as the planner counts its own."""
    with open(os.path.join(folder, "cost_analysis.json")) as f:
        cost = json.load(f)
    with open(os.path.join(folder, "memory_analysis.json")) as f:
        m = json.load(f)
    with open(os.path.join(folder, "train_step.hlo.txt")) as f:
        found = hlo.collectives(f.read(), topology.chips)
    memory = (m["argument_size_in_bytes"] + m["output_size_in_bytes"] - m["alias_size_in_bytes"]
              + m["temp_size_in_bytes"])
    return {"flops": cost["flops"], "bytes_accessed": cost["bytes accessed"],
            "collective_s": sum(hlo.seconds(c, topology, coords) for c in found),
            "collectives": hlo.summary(found), "memory": memory, "compile_s": 0.0,
            "temporaries": m["temp_size_in_bytes"], "arguments": m["argument_size_in_bytes"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--maxtext", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--topology", default="v5p:2x2x1")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--maxtext-remat", default="full", help="the remat policy MaxText's step was compiled with")
    args = p.parse_args()
    with open(args.plan) as f:
        ours = json.load(f)
    if "plan" in ours:  # a benchmarks/plan_table.py row
        ours = ours["plan"]
    top = parse(args.topology)
    coords = [tuple(d.coords) for d in devices_for(top)]  # MaxText's mesh: the devices in id order
    scanned = program_costs(os.path.join(args.maxtext, "scanned"), top, coords)
    theirs = extrapolate(*(program_costs(os.path.join(args.maxtext, f"layers{n}"), top, coords) for n in (1, 2)),
                          args.layers)
    tokens, model_flops = ours["tokens_per_step"], ours["model_flops"]
    theirs["kernel_flops"] = ours["attention_flops"] * (1.0 if args.maxtext_remat == "none" else 4 / 3) / top.chips
    rows = {"MaxText": (scanned["arguments"], scanned["temporaries"], scanned["memory"], theirs),
            "adapt": (ours["memory_per_chip_bytes"]["params"] + ours["memory_per_chip_bytes"]["opt_state"],
                      ours["memory_per_chip_bytes"]["temporaries"], ours["memory_per_chip_bytes"]["total"],
                      ours["costs_per_chip"])}
    print(f"{ours['model']} on {top.name} ({top.chips} chips), {tokens:,} tokens per step; predictions of a cost "
          "model, not measurements\n")
    print("| | arguments, GiB | temporaries, GiB | total, GiB | TFLOP per chip (XLA's + kernels') | XLA GB accessed "
          "| collectives "
          "(count, GiB) | predicted step, s | MFU |\n|" + "---|" * 9)
    for name, (arguments, temporaries, total, costs) in rows.items():
        pred = predict(costs, top, tokens, model_flops)
        coll = ", ".join(f"{k} {v['count']:.0f} ({v['bytes'] / GiB:.1f})" for k, v in costs["collectives"].items())
        print(f"| {name} | {arguments / GiB:.1f} | {temporaries / GiB:.1f} | {total / GiB:.1f} | "
              f"{(costs['flops'] + costs.get('kernel_flops', 0)) / 1e12:,.0f} | {costs['bytes_accessed'] / 1e9:,.0f} | "
              f"{coll} | {pred['step_s']:.2f} "
              f"| {pred['mfu']:.1%} |")


if __name__ == "__main__":
    main()
