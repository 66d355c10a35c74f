"""Download and verify the benchmark files an experiment needs, so a machine can run it offline afterwards.

    .venv/bin/python scripts/fetch_data.py --config=experiments/dont_stop_pretraining/config.py:cpu
    .venv/bin/python scripts/fetch_data.py --benchmark=chemprot,bc5cdr
    .venv/bin/python scripts/fetch_data.py --all

With ``--config``, the benchmarks are those its config and every trial of every sweep beside it read (the main
data, mixture sources, evaluation sets, multi-task tasks). Each published file goes into the data folder
(``$ADAPT_DATA_DIR``, else ``~/.cache/adapt/data``): downloaded when missing, its SHA-256 checked either way. One
line per file; a file that differs from the published one is left as it is, and the script exits with code 2.
"""

from __future__ import annotations

import argparse
import sys

from adapt.core import cli
from adapt.core.errors import ConfigError
from adapt.experiment import configs


def needed(spec: str, overrides: list[str]) -> list[str]:
    """The benchmarks that config ``spec`` and the trials of its sweeps read."""
    from adapt.data import catalog
    from adapt.experiment import data_sections
    from adapt.study import adaptive, sweeps

    path, arg = configs.split_spec(spec)
    module = configs.load_module(path)
    config = configs.from_module(module, arg, overrides)
    trials = [config]
    if hasattr(module, "get_sweep"):
        sweep = configs.call(module, "get_sweep", arg)
        for part in sweep.values() if isinstance(sweep, dict) else [sweep]:
            if isinstance(part, sweeps.Search):
                trials.append(adaptive.check(config, part))
            else:
                trials += [sweeps.trial_config(config, t.overrides) for t in sweeps.expand(part)]
    return catalog.used(s for t in trials for s in data_sections(t).values())


def main():
    spec, overrides, rest = configs.parse_argv(sys.argv[1:], spec_required=False)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", help="comma-separated benchmark names, instead of --config")
    parser.add_argument("--all", action="store_true", help="every benchmark of adapt.data.catalog")
    args = parser.parse_args(rest)
    from adapt.data import catalog

    if sum(map(bool, (spec, args.benchmark, args.all))) != 1:
        raise ConfigError("give one of --config=<file.py[:arg]>, --benchmark=<names> and --all")
    names = (list(catalog.BENCHMARKS) if args.all else args.benchmark.split(",") if args.benchmark
             else needed(spec, overrides))
    print(f"data folder: {catalog.data_dir()}")
    differ = 0
    for name in names:
        for path, done in catalog.fetch(name):
            print(f"{name}: {path}: {done}")
            differ += done.startswith("differs")
    if differ:
        raise ConfigError(f"{differ} file(s) in the data folder differ from the published ones (left as they are); "
                          f"move them away and run this again to download the published files")


if __name__ == "__main__":
    cli.run(main)
