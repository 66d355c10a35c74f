"""Run a study end to end: its sweep (every stage, resumable), then its paper table and plots.

    .venv/bin/python scripts/study.py --config=experiments/bbc_tapt/config.py --workdir=runs/bbc_tapt

The config file defines ``get_config(arg)``, ``get_sweep(arg)`` and ``get_table(arg)`` (the keyword
arguments of :func:`adapt.analysis.tables.build`, plus ``curves``, ``vs``, ``reference`` and ``baselines``: e.g.
``("majority", "tfidf")``, reference rows :mod:`adapt.analysis.baselines` computes on each column's data;
``forgetting``: ``("domain", "general")``, two evaluation sets of language-model trials, adds the forgetting report of
:mod:`adapt.analysis.forgetting`, and a layout with it and no ``metric`` is that report alone: see
:func:`adapt.analysis.report.show_layout`). Prints the table and writes it (Markdown, LaTeX, CSV) and the plots to
``WORKDIR/results/`` (``table_forgetting.md`` and ``table_pareto.png`` for the forgetting report). Running the
same command again skips finished trials. Trials run in this process, so trials with the same shapes reuse the
compiled steps (JAX's persistent compilation cache in ``WORKDIR/jax_cache`` keeps them across runs too);
``--pack N`` trains up to N trials of one program together (:mod:`adapt.study.populations`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from adapt.analysis import report, results
from adapt.core import cli, files
from adapt.experiment import configs
from adapt.study.runner import run_sweep
from adapt.study.sweeps import load_sweep, sweep_label


def main():
    spec, overrides, rest = configs.parse_argv(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--workers", type=int, default=0, help="worker processes; 0 runs trials in this process")
    parser.add_argument("--pack", type=int, default=1, help="train up to N trials of one program together "
                                                            "(adapt.study.populations)")
    args = parser.parse_args(rest)
    files.output_folder(args.workdir, "--workdir")
    path, arg = configs.split_spec(spec)
    module = configs.load_module(path)
    config = configs.from_module(module, arg, overrides)
    sweep, _ = load_sweep(module, arg, None)
    layout = dict(configs.call(module, "get_table", arg))

    cli.compile_cache(args.workdir)

    started = time.time()
    name = sweep_label(path, arg)  # no "#<sweep name>": trials of earlier runs/ folders keep this label
    counts = run_sweep(config, sweep, args.workdir, workers=args.workers, name=name, pack=args.pack)
    db = results.ResultsDB(os.path.join(args.workdir, "results.db"))
    trials = db.trials(sweep=name)
    print()
    written = report.show_layout(layout, db, trials, os.path.join(args.workdir, "results", "table"))
    print(f"\n{sum(counts.values())} trials ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}) in "
          f"{(time.time() - started) / 60:.1f} min; wrote {', '.join(os.path.relpath(w) for w in written)}")
    if set(counts) != {"done"}:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
