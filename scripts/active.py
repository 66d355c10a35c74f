"""Pool-based active learning: every (strategy, seed) loop of a config's ``active`` section, then the test metric
against the label budget per strategy, with intervals over seeds, and the area under each curve.

    .venv/bin/python scripts/active.py --config=experiments/active_learning/config.py --workdir=runs/al \
        [--config.active.rounds=2 ...]

Loops run in ``WORKDIR/<strategy>/seed<seed>/`` (see :mod:`adapt.study.active`); the same command again resumes them
(finished rounds are read back from each loop's ``acquired.json``). Prints the tables and writes them with the plot
to ``WORKDIR/results/`` (``curves.md``, ``curves.png``, ``summary.json``). Bad input is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from adapt.core import cli, files
from adapt.experiment import configs


def main():
    spec, overrides, rest = configs.parse_argv(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(rest)
    files.output_folder(args.workdir, "--workdir")
    config = configs.load(spec, overrides)
    from adapt.study import active

    active.check(config)  # before any data is read or model loaded
    cli.compile_cache(args.workdir)  # every round of every loop has the same shapes and compiles once
    started = time.time()
    records = active.run(config, args.workdir)
    summary = active.summarize(records + active.floor_records(records, args.workdir, config.active.metric),
                               config.active.metric)
    text = active.to_markdown(summary)
    print("\n" + text)
    out = os.path.join(args.workdir, "results")
    os.makedirs(out, exist_ok=True)
    files.write_atomic(os.path.join(out, "curves.md"), lambda f: f.write(text.encode()))
    files.write_json(os.path.join(out, "summary.json"), json.loads(json.dumps(summary, default=dataclasses.asdict)))
    active.plot(summary, os.path.join(out, "curves.png"))
    print(f"{len(records)} loops in {(time.time() - started) / 60:.1f} min; wrote {os.path.relpath(out)}/curves.md, "
          f"curves.png, summary.json")


if __name__ == "__main__":
    cli.run(main)
