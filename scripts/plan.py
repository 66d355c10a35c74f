"""Plan an experiment config's trial on an accelerator slice, from this machine: compile its train and eval steps for
the slice, and print memory per chip against HBM, the collectives, and a cost-model prediction of the step's time.

    .venv/bin/python scripts/plan.py --config=configs/plan.py:llama-3.1-8b --topology=v5p:2x2x1 \
        [--config.method.name=lora ...] [--labels=N] [--scan | --no-scan] [--json=FILE] [--train-only]
        [--search [--search-budget=N]]

``--topology``: ``v4:AxBxC``, ``v5e:AxB``, ``v5p:AxBxC``, ``v6e:AxB`` (chips; compiled by libtpu, the tpu extra:
``pip install -e '.[tpu]'``), or ``cpu:N`` (N fake CPU devices: memory and collectives, no prediction).
``model.name`` may be a named architecture (``arch:llama-3.1-8b``, ...: adapt/models/architectures/). Exit 0 when the
train step fits in the chips' usable HBM, 1 when it does not, 2 for bad input. The times are predictions of a cost
model, not measurements (adapt/plan/planner.py says how they are made). ``--search``: over the mesh's factorisations,
remat policies and grad_accum for the same global batch, the fastest predicted step that fits (adapt/plan/variants.py);
exit 1 when none does.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from adapt.core import cli, files
from adapt.core.errors import ConfigError
from adapt.experiment import configs

CHILD = "ADAPT_PLAN_CHILD"  # set in the child that plans (see compile_in_child)


def compile_in_child(config, spec: str, topology: str):
    """Plan in a child process, this command again, and exit with its code: libtpu's compiler can crash outright
    (a segmentation fault) on some programs, which no Python handler survives; the parent turns that into one line."""
    r = subprocess.run([sys.executable, *sys.argv], env={**os.environ, CHILD: "1"})
    if r.returncode >= 0:
        sys.exit(r.returncode)
    dropout = [k for k in ("hidden_dropout", "attention_dropout") if config.model[k] != 0]
    hint = (f"; libtpu 0.0.42 is known to crash on some steps with dropout on (model.{dropout[0]}="
            f"{config.model[dropout[0]]}, -1 is the model's own): plan with --config.model.hidden_dropout=0 "
            "--config.model.attention_dropout=0 (docs/guides/planning.md)" if dropout else "")
    raise ConfigError(f"plan: libtpu's compiler crashed ({signal.Signals(-r.returncode).name}) compiling "
                      f"{spec} for {topology}{hint}")


def main():
    spec, overrides, rest = configs.parse_argv(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", required=True)
    parser.add_argument("--labels", type=int, default=2, help="a classifier's outputs (default 2)")
    parser.add_argument("--scan", action=argparse.BooleanOptionalAction, default=None,
                        help="stack the layers (model.scan_layers) or not; default: the config's")
    parser.add_argument("--json", help="also write the plan here, as JSON")
    parser.add_argument("--train-only", action="store_true",
                        help="compile the train step only (not eval and generation): what fits and how fast")
    parser.add_argument("--search", action="store_true",
                        help="the fastest predicted step that fits, over meshes, remat and grad_accum (top 5 printed)")
    parser.add_argument("--search-budget", type=int, default=None,
                        help="compile at most this many of the search's variants (default: all not pruned)")
    args = parser.parse_args(rest)
    if args.json:
        files.output_files(args.json, "--json")
    config = configs.load(spec, overrides)
    from adapt.plan import chips  # no JAX yet: a CPU topology sets the device count before JAX starts

    topology = chips.parse(args.topology)
    if topology.chip is not None:  # libtpu or the CUDA plugin compiles for the slice; nothing runs on it here
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    else:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={topology.chips}".strip()
        os.environ["JAX_PLATFORMS"] = "cpu"
    if args.labels < 1:
        raise ConfigError(f"--labels={args.labels}; expected a positive count")
    if args.search_budget is not None and args.search_budget < 1:
        raise ConfigError(f"--search-budget={args.search_budget}; expected a positive count")
    if args.search and topology.chip is None:
        raise ConfigError(f"--search --topology={args.topology}: a search ranks predicted step times, which needs a "
                          "TPU or GPU topology")
    from adapt.plan import plan, search  # imports JAX
    from adapt.plan.build import check

    check(config, topology.chips)  # bad input: one line, before a child or libtpu starts
    if topology.chip is not None and not os.environ.get(CHILD):
        compile_in_child(config, spec, args.topology)

    if args.search:
        if args.scan is not None:
            config.model.scan_layers = args.scan
        result = search(config, args.topology, labels=args.labels, budget=args.search_budget, name=spec)
        fits = result.best is not None
    else:
        result = plan(config, args.topology, labels=args.labels, name=spec, scan=args.scan,
                      train_only=args.train_only)
        fits = result.fits in (True, None)
    print(result.markdown())
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        files.write_json(args.json, result.to_json(), indent=1)
    sys.exit(0 if fits else 1)


if __name__ == "__main__":
    cli.run(main)
