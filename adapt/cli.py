"""What every entry point in ``scripts/`` shares: the kept heap for train loops on the CPU, JAX's distributed
runtime started when the environment describes a multi-process job (:mod:`adapt.distributed`), bad input
ending the run with one line and exit code 2, how a results table is completed and shown, and the forgetting
report of language-model trials (:mod:`adapt.forgetting`) beside it."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from adapt import distributed
from adapt.errors import AdaptError, ConfigError
from adapt.host_memory import use_kept_heap


def run(main: Callable[[], None]) -> None:
    """Runs a script's ``main``: a multi-process job's runtime started first (a partial cluster environment is
    a one-line error), an :class:`~adapt.errors.AdaptError` printed as one line with exit code 2."""
    use_kept_heap()  # before JAX's threads start: see adapt/host_memory.py
    try:
        distributed.initialize()  # imports JAX only for a multi-process job
        main()
    except AdaptError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def compile_cache(folder: str) -> None:
    """JAX's persistent compilation cache in ``folder/jax_cache``: a run's trials with the same shapes, and a rerun
    of the same command, compile each program once."""
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(folder), "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


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


def show_forgetting(report, out: str | None = None) -> list[str]:
    """Prints the forgetting report (:mod:`adapt.forgetting`, its notes on stderr too); with ``out`` writes it as
    ``out``_forgetting.md/.tex/.csv and its Pareto plot as ``out``_pareto.png. Returns the paths written."""
    from adapt import forgetting
    from adapt.files import write_atomic

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
    :func:`adapt.tables.build` plus ``curves``, ``vs``, ``reference``, ``baselines``, ``compare`` (see
    :func:`show_table`) and ``forgetting``: two evaluation set names, (domain, general), for the forgetting report
    (:func:`show_forgetting`) beside the table. A layout with ``forgetting`` and no ``metric`` (a language-model
    study, no classification metric) is the forgetting report alone, with its ``rows`` and ``seed_keys``.
    Prints it all and, with ``out``, writes ``out``.md/.tex/.csv, ``out``_*.png and the rest; returns the paths
    written."""
    from adapt import forgetting, tables

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
