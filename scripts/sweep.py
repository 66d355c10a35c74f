"""Run a sweep: the trials a config's get_sweep describes, each in its own folder, results in one SQLite file.

    python scripts/sweep.py --config=configs/x.py:arg [--config.key=value ...] [--sweep=name] --workdir=runs/x
                            [--workers N] [--ray-address local|ADDR] [--db runs/x/results.db] [--pack N]

``--config.key=value`` overrides a key of the config every trial starts from, as in scripts/train.py (a misspelt
key or method knob stops the command before any trial runs).
Trials run in this process (``--workers 0``), in N worker processes, or as Ray tasks; stages run in dependency
order. ``--pack N`` trains up to N ready trials together as one compiled program when they differ only in learning
rate, weight decay, seed or mixture weights (:mod:`adapt.study.populations`; each is still its own trial and folder).
A failed trial is recorded with its error and the others go on (trials that start from it are skipped).
Running the same command again runs only what is not done: failed, skipped, interrupted or never started trials.
Ctrl-C marks the running trials interrupted. Exit code: 0 when every trial is done, 1 when some are not, 2 on bad
input. ``python scripts/table.py --db runs/x/results.db`` turns the results into tables.

When the selected sweep is an adaptive search (:func:`adapt.study.sweeps.search`), its trials run one at a time in this
process (no ``--workers`` or ``--ray-address``), Optuna's TPE sampler picking each one's values
(:mod:`adapt.study.adaptive`); the study is kept in ``optuna.db`` beside the results database. It prints the trials per
status and the best trial; running the same command again goes on until ``n`` trials are finished (done or
pruned). Exit code: 0 when ``n`` are, 1 when fewer are, 2 on bad input. Its ``--trial-fn`` also takes ``on_eval``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from adapt.analysis import results
from adapt.core import cli, distributed, files
from adapt.core.errors import ConfigError
from adapt.experiment import configs
from adapt.study.runner import DEFAULT_TRIAL_FN, run_sweep
from adapt.study.sweeps import Search, check_trial, expand, load_sweep, sweep_label, trial_config


def main():
    spec, overrides, rest = configs.parse_argv(sys.argv[1:])  # --config=path.py[:arg], --config.key=value
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default=None, help="which of get_sweep's named sweeps (default: 'default')")
    parser.add_argument("--workdir", required=True, help="trials run in WORKDIR/<stage>/<trial id>")
    parser.add_argument("--db", default=None, help="results database (default: WORKDIR/results.db)")
    parser.add_argument("--workers", type=int, default=0, help="worker processes; 0 runs trials in this process")
    parser.add_argument("--ray-address", default=None, help="run trials as Ray tasks: 'local' or a cluster address")
    parser.add_argument("--ray-gpus", type=float, default=0.0, help="GPUs per Ray task")
    parser.add_argument("--trial-fn", default=DEFAULT_TRIAL_FN, help="module:function(config, workdir) -> metrics")
    parser.add_argument("--pack", type=int, default=1, help="train up to N trials of one program together")
    parser.add_argument("--dry-run", action="store_true", help="list the trials and exit")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(rest)
    if args.workers < 0:
        raise ConfigError(f"--workers={args.workers}: must be 0 (this process) or more")
    files.output_folder(args.workdir, "--workdir")
    if args.db:
        files.output_files(args.db, "--db")

    path, arg = configs.split_spec(spec)
    module = configs.load_module(path)
    config = configs.from_module(module, arg, overrides, checked=args.trial_fn == DEFAULT_TRIAL_FN)
    sweep, name = load_sweep(module, arg, args.sweep)
    label = sweep_label(path, arg, name)
    if isinstance(sweep, Search):
        return main_search(args, config, sweep, label)
    if args.dry_run:
        for t in expand(sweep):
            resolved = trial_config(config, t.overrides)  # a bad key fails here too
            if args.trial_fn == DEFAULT_TRIAL_FN:  # and a bad value (run_sweep checks the same before any trial)
                check_trial(t, resolved)
            print(t.id, t.stage, t.overrides, f"after {','.join(t.depends)}" if t.depends else "")
        return
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        counts = run_sweep(config, sweep, args.workdir, db_path=args.db, workers=args.workers,
                           trial_fn=args.trial_fn, name=label, ray_address=args.ray_address,
                           ray_gpus=args.ray_gpus, progress=not args.no_progress, pack=args.pack)
    except KeyboardInterrupt:
        print("interrupted: running trials are marked interrupted; run the same command again to go on",
              file=sys.stderr)
        sys.exit(130)
    db_path = args.db or os.path.join(args.workdir, "results.db")
    print(f"{label}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f" ({db_path})")
    if distributed.process_index() == 0:  # in a multi-process job the database is process 0's alone
        db = results.ResultsDB(db_path)
        for t in db.trials(sweep=label):
            if t["status"] in ("failed", "interrupted"):
                print(f"  {t['stage']}/{t['id']} {t['status']}: {(t['error'] or '').splitlines()[0]}")
    if set(counts) != {"done"}:
        sys.exit(1)


def main_search(args, config, search: Search, label: str) -> None:
    """The adaptive-search path of :func:`main`: runs ``search``, prints the trials per status and the best."""
    from adapt.study.adaptive import check, run_search

    if args.workers or args.ray_address:
        raise ConfigError(f"--{'workers' if args.workers else 'ray-address'}: an adaptive search runs its trials one "
                          f"at a time in this process; leave it out")
    if distributed.process_count() > 1:  # its Optuna study and pruning decisions live in one process
        raise ConfigError(f"an adaptive search runs in one process, not over this job's {distributed.process_count()} "
                          f"JAX processes; run it as one process, or make the sweep a grid")
    if args.dry_run:
        check(config, search, checked=args.trial_fn == DEFAULT_TRIAL_FN)
        print(f"{label}: search of {search.n} trials, {search.mode} {search.metric}, pruner {search.pruner}, over "
              + ", ".join(f"{k}: {d.kind}{d.args}" for k, d in search.space.items()) + f"; fixed {search.fixed}")
        return
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        outcome = run_search(config, search, args.workdir, db_path=args.db, trial_fn=args.trial_fn, name=label,
                             progress=not args.no_progress)
    except KeyboardInterrupt:
        print("interrupted: the running trial is marked interrupted; run the same command again to go on",
              file=sys.stderr)
        sys.exit(130)
    db_path = args.db or os.path.join(args.workdir, "results.db")
    print(f"{label}: {outcome.finished} of {search.n} search trials finished; "
          + ", ".join(f"{n} {s}" for s, n in outcome.counts.items()) + f" ({db_path})")
    if outcome.best:
        print(f"  best {search.metric}={outcome.best['value']:.6g}: trial {outcome.best['id']} "
              f"{json.dumps(outcome.best['overrides'], sort_keys=True, default=repr)}")
    for t in results.ResultsDB(db_path).trials(sweep=label):
        if t["status"] in ("failed", "interrupted"):
            print(f"  {t['stage']}/{t['id']} {t['status']}: {(t['error'] or '').splitlines()[0]}")
    if outcome.finished < search.n:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
