"""Evaluate a run's checkpoint on splits of its data (or on other files), or on lm-evaluation-harness tasks;
prints the metrics as JSON.

    .venv/bin/python scripts/eval.py --workdir=runs/bbc [--split test] [--split dev] [--checkpoint best|latest] \
        [--config.data.files.test=other_test.jsonl]
    .venv/bin/python scripts/eval.py --workdir=runs/tapt-lm --lm-eval-tasks=hellaswag,arc_easy [--limit 100] \
        [--num-fewshot 5] [--batch-size 16] [--lm-eval-include=my_tasks/]

``--workdir`` is a run folder (``scripts/train.py``'s, or a sweep trial's). The model is rebuilt from the run's
saved ``config.json`` (with any ``--config.KEY=VALUE`` overrides, e.g. another test file with the same labels)
and given the parameters of its best checkpoint (the latest when it kept no best) or its latest one.
``--lm-eval-tasks`` (a causal LM run; the extra ``[eval]`` installs lm-eval) runs lm-eval's tasks, or those
defined by the YAML files in ``--lm-eval-include``, on that model (:mod:`adapt.integrations.lm_eval`) instead of the
splits, prints the metrics per task and writes lm-eval's whole result to ``WORKDIR/lm_eval.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from adapt.core import cli
from adapt.core.errors import ConfigError
from adapt.experiment import configs

LM_EVAL_ONLY = ("lm_eval_include", "limit", "num_fewshot", "batch_size")


def main():
    _, overrides, rest = configs.parse_argv(sys.argv[1:], spec_required=False)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the run folder")
    parser.add_argument("--split", action="append", default=None, help="split to evaluate (repeatable; default test)")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    parser.add_argument("--lm-eval-tasks", help="comma-separated lm-eval task (or group) names, instead of splits")
    parser.add_argument("--lm-eval-include", help="a folder of task YAML files that --lm-eval-tasks may name")
    parser.add_argument("--limit", type=float, help="lm-eval: at most this many examples per task (< 1: a fraction)")
    parser.add_argument("--num-fewshot", type=int, help="lm-eval: few-shot examples (default: each task's own)")
    parser.add_argument("--batch-size", type=int, help="lm-eval: rows per forward (default 8)")
    args = parser.parse_args(rest)
    overrides = configs.as_dict(overrides)
    if args.lm_eval_tasks is not None:
        results = lm_eval_run(args, overrides)
    else:
        given = [f"--{k.replace('_', '-')}" for k in LM_EVAL_ONLY if getattr(args, k) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: only with --lm-eval-tasks")
        from adapt.experiment import evaluate_run  # after the arguments are known good: importing JAX takes seconds

        results = evaluate_run(args.workdir, args.split or ["test"], overrides, args.checkpoint)
    print(json.dumps(results, indent=2))


def lm_eval_run(args, overrides: dict) -> dict:
    """The run's model on ``--lm-eval-tasks``: task names checked before the model is loaded; lm-eval's result
    written to ``WORKDIR/lm_eval.json`` (atomically); returns the metrics per task (and per group)."""
    names = [name.strip() for name in args.lm_eval_tasks.split(",") if name.strip()]
    if not names:
        raise ConfigError("--lm-eval-tasks: expected comma-separated task names")
    if args.split:
        raise ConfigError("--split and --lm-eval-tasks: give one or the other")
    if not os.path.isfile(os.path.join(args.workdir, "config.json")):
        raise ConfigError(f"{args.workdir}: no config.json; expected a run folder (the --workdir of scripts/train.py)")
    from adapt.core.files import write_atomic
    from adapt.integrations import lm_eval as harness  # a one-line error when lm-eval is not installed

    manager = harness.task_manager(names, args.lm_eval_include)
    lm = harness.AdaptLM(run=args.workdir, checkpoint=args.checkpoint, overrides=overrides,
                         batch_size=args.batch_size or harness.DEFAULT_BATCH_SIZE)
    limit = args.limit
    if limit is not None and not (0 < limit < 1 or (limit >= 1 and limit == int(limit))):
        raise ConfigError(f"--limit={limit:g}: expected a whole number of examples, or a fraction in (0, 1)")
    limit = int(limit) if limit is not None and limit >= 1 else limit
    results = harness.evaluate(lm, names, manager=manager, limit=limit, num_fewshot=args.num_fewshot)
    text = harness.to_json(results)
    write_atomic(os.path.join(args.workdir, "lm_eval.json"), lambda f: f.write(text.encode()))
    saved = json.loads(text)
    return {"results": saved["results"], **({"groups": saved["groups"]} if saved.get("groups") else {})}


if __name__ == "__main__":
    cli.run(main)
