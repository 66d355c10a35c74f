"""How the scripts present a study: a results table completed with its reference rows, baselines, intervals and
comparisons; the forgetting report of language-model trials beside it; a config's ``get_table`` layout
(scripts/study.py, scripts/table.py, scripts/active.py)."""

from __future__ import annotations

import os
import sys

from adapt.analysis import forgetting, stats, tables
from adapt.core.errors import ConfigError
from adapt.core.files import write_atomic


def show_table(table, trials: list[dict], *, references=(), baselines=(), pairs=(), out: str | None = None) -> list:
    """Completes ``table`` (:mod:`adapt.analysis.tables`) as scripts/table.py and scripts/study.py present it: reference
    rows (files or dicts), the reference baselines named in ``baselines``, each cell's interval and the comparisons of
    ``pairs`` (written as ``<out>_comparisons.md/.tex`` with ``out``); prints the table and the comparisons, and on
    stderr the edge-of-grid notices and the cells left without an interval. Returns the comparison rows."""
    for ref in references:
        tables.add_references(table, ref)
    if baselines:  # they read data through the pipeline, which loads JAX: a table without them starts faster
        from adapt.analysis import baselines as floors

        floors.add_to_table(table, trials, baselines)
    notes, comparisons = stats.annotate(table, trials, pairs, out)
    print(tables.to_markdown(table))
    if comparisons:
        print(stats.comparisons_markdown(comparisons, table.digits))
    for line in tables.edges(table) + notes:
        print(f"warning: {line}", file=sys.stderr)
    return comparisons


def show_forgetting(report, out: str | None = None) -> list[str]:
    """Prints the forgetting report (:mod:`adapt.analysis.forgetting`, its notes on stderr too); with ``out`` writes it
    as ``<out>_forgetting.md/.tex/.csv`` and its Pareto plot as ``<out>_pareto.png``. Returns the paths written."""
    print(forgetting.to_markdown(report))
    for line in report.notes:
        print(f"warning: {line}", file=sys.stderr)
    if not out:
        return []
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    written = []
    for ext, render in (("md", forgetting.to_markdown), ("tex", forgetting.to_latex), ("csv", forgetting.to_csv)):
        write_atomic(f"{out}_forgetting.{ext}", lambda f, text=render(report): f.write(text.encode()))
        written.append(f"{out}_forgetting.{ext}")
    return written + [forgetting.pareto_plot(report, f"{out}_pareto.png")]


def show_layout(layout: dict, db, trials: list[dict], out: str | None) -> list[str]:
    """What scripts/study.py makes of its config's ``get_table(arg)``: the keyword arguments of
    :func:`adapt.analysis.tables.build` plus ``curves``, ``vs``, ``reference``, ``baselines``, ``compare`` (see
    :func:`show_table`) and ``forgetting``: two evaluation set names, (domain, general), for the forgetting report
    (:func:`show_forgetting`) beside the table. A layout with ``forgetting`` and no ``metric`` (a language-model
    study, no classification metric) is the forgetting report alone, with its ``rows`` and ``seed_keys``.
    Prints it all and, with ``out``, writes ``<out>.md/.tex/.csv``, ``<out>_*.png`` and the rest; returns the paths
    written."""
    layout = dict(layout)
    extras = {k: layout.pop(k, ()) for k in ("curves", "vs", "reference", "baselines", "compare")}
    sets = layout.pop("forgetting", None)
    report = None
    if sets:
        domain, general = forgetting.parse_sets(sets)
        report = forgetting.report(trials, domain=domain, general=general, rows=layout.get("rows", ("condition",)),
                                   seed_keys=layout.get("seed_keys", ("train.seed",)))
        if "metric" not in layout:
            unused = sorted(set(layout) - {"rows", "seed_keys"} | {k for k, v in extras.items() if v})
            if unused:
                raise ConfigError(f"get_table: {', '.join(unused)} need the main table: give a metric, or leave "
                                  f"them out of a forgetting-only layout (forgetting, rows, seed_keys)")
            return show_forgetting(report, out)
    table = tables.build(trials, **layout)
    comparisons = show_table(table, trials, references=extras["reference"], baselines=extras["baselines"],
                             pairs=extras["compare"], out=out)
    written = tables.write_outputs(table, db, trials, out, extras["curves"], extras["vs"]) if out else []
    written += [f"{out}_comparisons.{ext}" for ext in ("md", "tex") if comparisons and out]
    if report is not None:
        print()
        written += show_forgetting(report, out)
    return written
