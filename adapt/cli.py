"""What every entry point in ``scripts/`` shares: the kept heap for train loops on the CPU, bad input
ending the run with one line and exit code 2, and how a results table is completed and shown."""

from __future__ import annotations

import sys
from collections.abc import Callable

from adapt.errors import AdaptError
from adapt.host_memory import use_kept_heap


def run(main: Callable[[], None]) -> None:
    use_kept_heap()  # before main starts JAX's threads: see adapt/host_memory.py
    try:
        main()
    except AdaptError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def show_table(table, trials: list[dict], *, references=(), baselines=(), pairs=(), out: str | None = None) -> list:
    """Completes ``table`` (:mod:`adapt.tables`) as scripts/table.py and scripts/study.py present it: reference rows
    (files or dicts), the reference baselines named in ``baselines``, each cell's interval and the comparisons of
    ``pairs`` (written as ``out``_comparisons.md/.tex with ``out``); prints the table and the comparisons, and on
    stderr the edge-of-grid notices and the cells left without an interval. Returns the comparison rows."""
    from adapt import stats, tables
    from adapt import baselines as floors

    for ref in references:
        tables.add_references(table, ref)
    if baselines:
        floors.add_to_table(table, trials, baselines)
    notes, comparisons = stats.annotate(table, trials, pairs, out)
    print(tables.to_markdown(table))
    if comparisons:
        print(stats.comparisons_markdown(comparisons, table.digits))
    for line in tables.edges(table) + notes:
        print(f"warning: {line}", file=sys.stderr)
    return comparisons
