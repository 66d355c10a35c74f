"""Paper tables (Markdown, LaTeX, CSV) and plots from a sweep's results database.

    python scripts/table.py --db runs/x/results.db [--rows condition] [--column meta.benchmark]
                            [--metric accuracy|macro_f1,chemprot=micro_f1] [--reference paper.csv] [--out tables/x]
                            [--curves train/loss] [--vs optimizer.learning_rate] [--baselines majority,tfidf]
                            [--compare "TAPT / lora|Baseline / lora"]
    python scripts/table.py --db runs/x/results.db --forgetting domain,general [--out tables/x]

Per row (condition) and column (benchmark): the hyperparameters with the best mean dev metric over seeds, and
their test metric as mean ± std over seeds and its 95% interval (from the trials' test predictions,
adapt.analysis.stats); best per column in bold, an "Avg." column; ``--compare A|B`` tests row A against row B. Prints
the Markdown table (and, on stderr, each row whose selected value of a swept key is the edge of its grid); with
``--out PREFIX`` writes PREFIX.md, PREFIX.tex, PREFIX.csv and the plots as PREFIX_*.png. ``--forgetting DOMAIN,GENERAL``
(two evaluation sets of language-model trials) prints the forgetting report of adapt.analysis.forgetting, per row:
domain perplexity before -> after and its gain, general-text loss before -> after and the forgetting, with t-intervals
over seeds (PREFIX_forgetting.md/.tex/.csv and PREFIX_pareto.png with --out); without --metric it is all that is
shown. A named set is a metric too: ``--metric general/perplexity --test-split dev --scale 1``.
"""

from __future__ import annotations

import argparse

from adapt.analysis import forgetting, report
from adapt.analysis.results import ResultsDB
from adapt.core import cli, files
from adapt.core.errors import ConfigError


def parse_metric(text: str):
    """'macro_f1' -> 'macro_f1'; 'macro_f1,chemprot=micro_f1' -> {'*': 'macro_f1', 'chemprot': 'micro_f1'}."""
    if "=" not in text:
        return text
    parts = [p.partition("=") for p in text.split(",")]
    return {(col if eq else "*"): (name if eq else col) for col, eq, name in parts}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="the results database (a sweep's WORKDIR/results.db)")
    parser.add_argument("--sweep", default=None,
                        help="only trials of this sweep label: x.py:arg#name (scripts/study.py's: x.py:arg)")
    parser.add_argument("--stage", action="append", default=None, help="only trials of this stage (repeatable)")
    parser.add_argument("--rows", default="condition", help="comma-separated keys whose values make a row")
    parser.add_argument("--column", default=None, help="key whose value makes a column (default: meta.benchmark)")
    parser.add_argument("--seed-keys", default="train.seed", help="comma-separated keys that are seeds")
    parser.add_argument("--metric", default=None,
                        help="the metric, or one per column: 'macro_f1,chemprot=micro_f1' (the bare name: the rest); "
                             "default accuracy, or none with --forgetting")
    parser.add_argument("--dev-split", default="dev", help="split that selects hyperparameters")
    parser.add_argument("--test-split", default="test", help="split that is reported")
    parser.add_argument("--lower-is-better", action="store_true", default=None)
    parser.add_argument("--scale", type=float, default=100.0, help="multiply metrics by this (100: percent)")
    parser.add_argument("--digits", type=int, default=1)
    parser.add_argument("--reference", action="append", default=[], help="CSV or JSON of reference numbers")
    parser.add_argument("--baselines", default="",
                        help="comma-separated reference rows computed on each column's data: majority,tfidf")
    parser.add_argument("--compare", action="append", default=[], help="'row A|row B': a paired test (repeatable)")
    parser.add_argument("--out", default=None, help="write OUT.md, OUT.tex, OUT.csv (and OUT_*.png plots)")
    parser.add_argument("--curves", action="append", default=[], help="plot learning curves of this metric")
    parser.add_argument("--vs", action="append", default=[], help="plot the dev metric against this swept key")
    parser.add_argument("--forgetting", default=None, metavar="DOMAIN,GENERAL",
                        help="the forgetting report of these two evaluation sets (language-model trials)")
    args = parser.parse_args()
    if args.out:
        files.output_files(args.out, "--out")

    pairs = [tuple(p.split("|", 1)) for p in args.compare]
    bad = [p[0] for p in pairs if len(p) != 2]
    if bad:
        raise ConfigError(f"--compare {bad[0]!r}: expected 'row A|row B'")
    sets = forgetting.parse_sets(args.forgetting) if args.forgetting else None
    if sets and args.metric is None and (args.curves or args.vs or args.compare or args.reference or args.baselines):
        raise ConfigError("--curves/--vs/--compare/--reference/--baselines need the main table: give --metric")
    if (args.curves or args.vs) and not args.out:
        raise ConfigError("--curves/--vs write plots: give --out")
    db = ResultsDB.open_existing(args.db)
    trials = [t for t in db.trials(sweep=args.sweep) if args.stage is None or t["stage"] in args.stage]
    layout = dict(rows=args.rows.split(","), seed_keys=args.seed_keys.split(","))
    if sets:
        layout["forgetting"] = sets
    if args.metric is not None or not sets:  # the main table; with --forgetting alone, the report alone
        layout.update(column=args.column, metric=parse_metric(args.metric or "accuracy"), dev_split=args.dev_split,
                      test_split=args.test_split, lower=args.lower_is_better, scale=args.scale, digits=args.digits,
                      curves=args.curves, vs=args.vs, reference=args.reference, compare=pairs,
                      baselines=args.baselines.split(",") if args.baselines else ())
    written = report.show_layout(layout, db, trials, args.out)
    if written:
        print("wrote " + ", ".join(written))

if __name__ == "__main__":
    cli.run(main)
