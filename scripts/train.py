"""Train and evaluate one trial of an experiment config; prints its dev/test metrics as JSON.

    .venv/bin/python scripts/train.py --config=configs/finetune.py:bbc --workdir=runs/bbc \
        [--config.optimizer.learning_rate=3e-5 ...]

Running it again with the same --workdir resumes the run from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys

from adapt.core import cli, files
from adapt.experiment import configs


def main():
    spec, overrides, rest = configs.parse_argv(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(rest)
    files.output_folder(args.workdir, "--workdir")
    config = configs.load(spec, overrides)
    from adapt.experiment import run_trial  # after the config is known good: importing JAX takes seconds

    print(json.dumps(run_trial(config, args.workdir), indent=2))


if __name__ == "__main__":
    cli.run(main)
