"""Evaluate a run's checkpoint on splits of its data (or on other files); prints the metrics as JSON.

    .venv/bin/python scripts/eval.py --workdir=runs/bbc [--split test] [--split dev] [--checkpoint best|latest] \
        [--config.data.files.test=other_test.jsonl]

``--workdir`` is a run folder (``scripts/train.py``'s, or a sweep trial's). The model is rebuilt from the run's
saved ``config.json`` (with any ``--config.KEY=VALUE`` overrides, e.g. another test file with the same labels)
and given the parameters of its best checkpoint (the latest when it kept no best) or its latest one.
"""

from __future__ import annotations

import argparse
import json
import sys

from adapt import cli, configs


def main():
    _, overrides, rest = configs.parse_argv(sys.argv[1:], spec_required=False)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the run folder")
    parser.add_argument("--split", action="append", default=None, help="split to evaluate (repeatable; default test)")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    args = parser.parse_args(rest)
    overrides = configs.as_dict(overrides)
    from adapt.experiment import evaluate_run  # after the arguments are known good: importing JAX takes seconds

    print(json.dumps(evaluate_run(args.workdir, args.split or ["test"], overrides, args.checkpoint), indent=2))


if __name__ == "__main__":
    cli.run(main)
