"""Paper tables and plots from a results database (:mod:`adapt.analysis.results`).

Only ``done`` trials are read: failed, interrupted and skipped ones, and the trials an adaptive search pruned
(:mod:`adapt.study.adaptive`), neither make a cell nor count among the values a cell tried. Rows are conditions, columns
benchmarks. A row is the values of the ``rows`` keys (default: the trial's
``condition``), a column the value of the ``column`` key (default ``meta.benchmark``; one column when trials have
none). Keys are a trial's columns (stage, condition, sweep), its overrides (``optimizer.learning_rate``,
``meta.benchmark``), its full config (``model.name``), ``init`` (the stage it started from, "external" for an
``init_from`` outside the sweep, "none") or a number it stored beside its metrics, which comes first (``privacy.delta``:
the ``privacy`` entry of its results.json, the delta spent, not the config's ``privacy.delta``; "–" where neither
has it). In each cell the trials are grouped by their hyperparameters (their
overrides less the seed keys, ``init_from``, ``meta.*`` and the row/column keys); the group with the best mean
dev metric over seeds is selected, and the cell is its test metric: mean ± sample std (ddof=1) over seeds. The
metric is one name, or one per column (``{"chemprot": "micro_f1", "*": "macro_f1"}``, as papers report).
"Avg." is the mean of a row's cell means (when it has them all; ``average=False`` leaves it out, for columns
that are not benchmarks to average, such as training-set sizes). The best of our rows per column is bold (ties
at the shown precision too); reference rows (numbers from a paper, as printed) are shown below ours, and so are
baseline rows (:mod:`adapt.analysis.baselines`: one number, no ±, with its interval over test examples). A cell whose
selected value of a swept numeric key is the smallest or largest tried is named in the caption (:func:`edges`):
the optimum may lie beyond the grid.

    table = build(ResultsDB("runs/x/results.db").trials(), metric="macro_f1")
    add_references(table, {"BioBERT (paper)": {"chemprot": 76.5}})
    open("x.md", "w").write(to_markdown(table))     # also to_latex, to_csv: the same numbers
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import json
import os
import re
import statistics

import numpy as np

from adapt.analysis.results import lower_is_better
from adapt.core.errors import AdaptError
from adapt.core.files import write_atomic

TRIAL_KEYS = ("id", "sweep", "stage", "condition", "status", "init")
AVG = "Avg."


def value(trial: dict, key: str):
    """A trial's value for ``key`` (see the module docstring); None when it has none."""
    if key == "init":
        if trial["depends"]:
            return str(trial["overrides"].get("init_from", "?")).split("/")[0]
        return "external" if trial["config"].get("init_from") else "none"
    if key in TRIAL_KEYS:
        return trial[key]
    split, _, name = key.partition(".")
    if name in trial.get("metrics", {}).get(split, {}):  # stored: results.json {"privacy": {"delta": ...}}
        return trial["metrics"][split][name]
    if key in trial["overrides"]:
        return trial["overrides"][key]
    node = trial["config"]
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def label(v) -> str:
    return "–" if v is None else f"{v:g}" if isinstance(v, float) else v if isinstance(v, str) else json.dumps(v)


def _known_keys(trials) -> list[str]:
    def walk(node, prefix):
        return [k for key, v in node.items() for k in ([prefix + key] + (walk(v, f"{prefix}{key}.")
                                                                         if isinstance(v, dict) else []))]
    keys = set(TRIAL_KEYS)
    for t in trials[:50]:
        keys |= set(t["overrides"]) | set(walk(t["config"], ""))
    return sorted(keys)


def _check_keys(trials, keys):
    for key in keys:
        if not any(value(t, key) is not None for t in trials):
            close = difflib.get_close_matches(key, _known_keys(trials), 3, 0.5)
            raise AdaptError(f"no finished trial has a value for key {key!r}"
                             + (f"; closest: {', '.join(close)}" if close else ""))


@dataclasses.dataclass
class Cell:
    mean: float | None
    std: float | None
    n: int
    dev: float
    selected: dict  # the hyperparameters that vary in the cell, as selected
    trials: list[str]
    tried: dict = dataclasses.field(default_factory=dict)  # selected key -> the sorted numeric values tried
    interval: tuple | None = None  # 95% interval of the mean (adapt.analysis.stats.add_intervals), unscaled


@dataclasses.dataclass
class Table:
    rows: list[str]
    columns: list[str]
    cells: dict  # (row, column) -> Cell
    row_keys: tuple
    column_key: str | None
    seed_keys: tuple
    metric: str | dict  # a metric name, or {column: name} with "*" for the other columns
    dev_split: str = "dev"
    test_split: str = "test"
    lower: bool | None = None  # None: from the metric's name
    scale: float = 100.0
    digits: int = 1
    average: bool = True  # an "Avg." column when there are several columns
    references: dict = dataclasses.field(default_factory=dict)  # name -> {column: (mean, std or None[, low, high])}
    baselines: list = dataclasses.field(default_factory=list)  # reference rows adapt.analysis.baselines computed

    def metric_of(self, column: str) -> str:
        return metric_of(self.metric, column)

    def lower_of(self, column: str) -> bool:
        return lower_is_better(self.metric_of(column)) if self.lower is None else self.lower

    def avg(self, row: str, source: str = "ours"):
        if not self.average:
            return None
        got = self.references.get(row, {}) if source == "reference" else \
            {c: (self.cells[row, c].mean, None) for c in self.columns if (row, c) in self.cells}
        if AVG in got:
            return got[AVG][0]
        means = [got[c][0] for c in self.columns if c in got and got[c][0] is not None]
        return statistics.fmean(means) if len(means) == len(self.columns) and means else None


def metric_of(metric: str | dict, column: str) -> str:
    if isinstance(metric, str):
        return metric
    if column not in metric and "*" not in metric:
        raise AdaptError(f"metric: no metric for column {column!r} (and no '*' entry); given: {metric}")
    return metric.get(column, metric.get("*"))


def _cell_metric(metric: str | dict, column: str, trials, dev_split: str) -> str | None:
    """The metric of ``column``; None for a column the per-column metrics leave out whose trials have none of
    them (a pretraining stage's, say)."""
    if isinstance(metric, dict) and column not in metric and "*" not in metric and not any(
            n in t["metrics"].get(dev_split, {}) for t in trials for n in metric.values()):
        return None
    return metric_of(metric, column)


def _hparams(t, exclude) -> dict:
    return {k: v for k, v in t["overrides"].items() if k not in exclude and not k.startswith("meta.")}


def select(trials, exclude, metric, dev_split="dev", lower=False):
    """(hyperparameters, their trials, mean dev metric) of the group with the best mean dev metric, or None."""
    groups: dict[str, list] = {}
    for t in trials:
        groups.setdefault(json.dumps(_hparams(t, exclude), sort_keys=True, default=repr), []).append(t)
    scored = []
    for key, ts in sorted(groups.items()):
        devs = [t["metrics"][dev_split][metric] for t in ts if metric in t["metrics"].get(dev_split, {})]
        if devs:
            scored.append(((statistics.fmean(devs) * (-1 if lower else 1), len(devs)), key, ts))
    if not scored:
        return None
    (score, _), key, ts = max(scored, key=lambda s: s[0])  # ties: more seeds, then the first in sorted order
    return json.loads(key), ts, score * (-1 if lower else 1)


def _cells(trials, row_keys, column_key, default_column) -> dict:
    out: dict[tuple, list] = {}
    for t in trials:
        row = " / ".join(label(value(t, k)) for k in row_keys)
        col = label(value(t, column_key)) if column_key else default_column
        out.setdefault((row, col), []).append(t)
    return out


def build(trials: list[dict], rows=("condition",), column: str | None = None, seed_keys=("train.seed",),
          metric: str = "accuracy", dev_split: str = "dev", test_split: str = "test", lower: bool | None = None,
          scale: float = 100.0, digits: int = 1, average: bool = True) -> Table:
    trials = [t for t in trials if t["status"] == "done"]
    if not trials:
        raise AdaptError("no finished trials in the results database (or none match the filters)")
    if column is None and any(value(t, "meta.benchmark") is not None for t in trials):
        column = "meta.benchmark"
    rows = (rows,) if isinstance(rows, str) else tuple(rows)
    _check_keys(trials, rows + ((column,) if column else ()))
    default_column = metric if isinstance(metric, str) else "result"
    cells = _cells(trials, rows, column, default_column)
    names = {col: _cell_metric(metric, col, ts, dev_split) for (_, col), ts in cells.items()}
    have = sorted({f"{s}/{m}" for t in trials for s, ms in t["metrics"].items() for m in ms})
    for name in sorted({n for n in names.values() if n is not None}):
        for split in (dev_split, test_split):
            if f"{split}/{name}" not in have:
                close = difflib.get_close_matches(f"{split}/{name}", have, 3, 0.5)
                raise AdaptError(f"no finished trial has the metric {split}/{name}; "
                                 + (f"closest: {', '.join(close)}" if close else f"there are: {', '.join(have)}"))
    exclude = set(seed_keys) | {"init_from", *rows, column}
    table = Table([], [], {}, rows, column, tuple(seed_keys), metric, dev_split, test_split, lower, scale, digits,
                  average)
    for (row, col), ts in cells.items():
        if (name := names[col]) is None:
            continue
        if (picked := select(ts, exclude, name, dev_split, table.lower_of(col))) is None:
            continue  # no trial here has the dev metric (a pretraining stage, say)
        table.rows += [row] if row not in table.rows else []
        table.columns += [col] if col not in table.columns else []
        hp, group, dev = picked
        tests = [t["metrics"][test_split][name] for t in group if name in t["metrics"].get(test_split, {})]
        varying = {k for t in ts for k, v in _hparams(t, exclude).items() if any(
            _hparams(u, exclude).get(k) != v for u in ts)}
        selected = {k: v for k, v in hp.items() if k in varying}
        tried = {k: sorted({v for t in ts if _number(v := _hparams(t, exclude).get(k))}) for k in selected}
        table.cells[row, col] = Cell(statistics.fmean(tests) if tests else None,
                                     statistics.stdev(tests) if len(tests) > 1 else None, len(tests), dev,
                                     selected, [t["id"] for t in group], tried)
    table.columns.sort()
    return table


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def edges(table: Table) -> list[str]:
    """A line for each cell whose dev-selected value of a swept numeric key is the smallest or largest tried
    (two values tried count too): the best may lie outside the grid."""
    out = []
    for row in table.rows:
        for col in table.columns:
            cell = table.cells.get((row, col))
            for key, v in sorted(cell.selected.items()) if cell else ():
                tried = cell.tried.get(key, [])
                if _number(v) and len(tried) > 1 and v in (tried[0], tried[-1]):
                    where = f"{row} on {col}" if len(table.columns) > 1 else row
                    out.append(f"Edge of grid: {where} selected {key}={label(v)}, the "
                               f"{'largest' if v == tried[-1] else 'smallest'} tried "
                               f"({', '.join(label(x) for x in tried)}): the optimum may lie beyond.")
    return out


def add_references(table: Table, refs) -> Table:
    """Adds rows of reference numbers (as printed: already scaled): a dict {name: {column: mean, (mean, std) or
    (mean, std, low, high) with std None for a number without a spread}},
    a JSON file of one, or a CSV file with a header ``name,<column>,...`` and cells like ``85.3`` or ``85.3 ± 0.4``."""
    if isinstance(refs, (str, os.PathLike)):
        if not os.path.isfile(refs):
            raise AdaptError(f"--reference: no such file {refs}")
        with open(refs) as f:
            if str(refs).endswith(".json"):
                refs = json.load(f)
            else:
                reader = csv.reader(f)
                header = next(reader)
                refs = {r[0]: dict(zip(header[1:], r[1:])) for r in reader if r}
    for name, vals in refs.items():
        row = {}
        for col, v in vals.items():
            if isinstance(v, str):
                nums = [float(x) for x in re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", v)]
                v = tuple(nums[:2]) if nums else None
            if v is not None and v != ():
                v = tuple(v) if isinstance(v, (list, tuple)) else (v,)
                v = v if len(v) == 4 else (v + (None,))[:2]  # (mean, std) or (mean, std, low, high)
                row[col] = tuple(None if x is None else float(x) for x in v)
        table.references[name] = row
    return table


def _fmt(mean, std, digits, low=None, high=None) -> str:
    if mean is None:
        return ""
    return (f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")
            + ("" if low is None else f" [{low:.{digits}f}, {high:.{digits}f}]"))


def entries(table: Table) -> list[dict]:
    """Every number of the table, as shown: row, column, source, mean, std (scaled), n, dev, bold, text."""
    out, s = [], table.scale
    for row in table.rows:
        for col in table.columns:
            c = table.cells.get((row, col))
            if c is not None:
                low, high = (None, None) if c.interval is None else (c.interval[0] * s, c.interval[1] * s)
                out.append(dict(row=row, column=col, source="ours", mean=None if c.mean is None else c.mean * s,
                                std=None if c.std is None else c.std * s, low=low, high=high, n=c.n, dev=c.dev * s,
                                selected=", ".join(f"{k}={label(v)}" for k, v in sorted(c.selected.items())),
                                trials=" ".join(c.trials)))
        if len(table.columns) > 1 and table.avg(row) is not None:
            out.append(dict(row=row, column=AVG, source="ours", mean=table.avg(row) * s, std=None))
    for name, vals in table.references.items():
        source = "baseline" if name in table.baselines else "reference"
        for col in table.columns:
            if col in vals:
                low, high = vals[col][2:] or (None, None)
                out.append(dict(row=name, column=col, source=source, mean=vals[col][0], std=vals[col][1],
                                low=low, high=high))
        if len(table.columns) > 1 and table.avg(name, "reference") is not None:
            out.append(dict(row=name, column=AVG, source=source, mean=table.avg(name, "reference"), std=None))
    for e in out:
        e["text"] = _fmt(e["mean"], e["std"], table.digits, e.get("low"), e.get("high"))
    for col in {e["column"] for e in out}:
        ours = [e for e in out if e["column"] == col and e["source"] == "ours" and e["mean"] is not None]
        if ours:
            lower = table.lower_of(col) if col != AVG else table.lower is True or (
                table.lower is None and all(table.lower_of(c) for c in table.columns))
            best = (min if lower else max)(round(e["mean"], table.digits) for e in ours)
            for e in ours:
                e["bold"] = round(e["mean"], table.digits) == best
    return out


def _grid(table: Table):
    cols = table.columns + ([AVG] if len(table.columns) > 1 and table.average else [])
    by = {(e["row"], e["column"]): e for e in entries(table)}
    return cols, [(r, [by.get((r, c)) for c in cols]) for r in table.rows + list(table.references)]


def caption(table: Table) -> str:
    scale = f" (x{table.scale:g})" if table.scale != 1 else ""
    names = {c: table.metric_of(c) for c in table.columns}
    if len(set(names.values())) == 1:
        metric = next(iter(names.values()))
    else:
        metric = ", ".join(f"{n} for {', '.join(c for c in table.columns if names[c] == n)}"
                           for n in dict.fromkeys(names.values()))
    bounded = any(len(v) > 2 for name in table.baselines for v in table.references.get(name, {}).values())
    baselines = (f" {', '.join(table.baselines)}: computed by the framework on the same splits and metric, "
                 f"deterministic (one value, no ±)" + ("; [low, high]: bootstrap over test examples alone."
                                                       if bounded else ".")) if table.baselines else ""
    intervals = (" [low, high]: 95% interval of the mean, percentile bootstrap over test examples and seeds "
                 "(adapt/analysis/stats.py)." if any(c.interval for c in table.cells.values()) else "")
    return "\n".join([f"Test metric ({metric}){scale}: mean ± std over seeds ({', '.join(table.seed_keys)}) of the "
                      f"hyperparameters with the best mean {table.dev_split} value of that metric; best per column "
                      f"in bold.{intervals}{baselines}", *edges(table)])


def to_markdown(table: Table) -> str:
    cols, grid = _grid(table)
    lines = ["| " + " | ".join([" / ".join(table.row_keys)] + cols) + " |", "|---" + "|---:" * len(cols) + "|"]
    for row, es in grid:
        cells = ["–" if e is None or not e["text"] else (f"**{e['text']}**" if e.get("bold") else e["text"])
                 for e in es]
        lines.append("| " + " | ".join([row] + cells) + " |")
    return "\n".join(lines) + f"\n\n{caption(table)}\n"


def _tex(s: str) -> str:
    return re.sub(r"([_%&#$])", r"\\\1", s)


def to_latex(table: Table) -> str:
    cols, grid = _grid(table)
    out = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule",
           " & ".join(_tex(x) for x in [" / ".join(table.row_keys)] + cols) + r" \\", r"\midrule"]
    for i, (row, es) in enumerate(grid):
        if i == len(table.rows) and table.references:
            out.append(r"\midrule")
        cells = ["--" if e is None or not e["text"] else e["text"].replace(" ± ", r" $\pm$ ") for e in es]
        cells = [rf"\textbf{{{c}}}" if e is not None and e.get("bold") else c for c, e in zip(cells, es)]
        out.append(" & ".join([_tex(row)] + cells) + r" \\")
    return "\n".join(out + [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex(caption(table))}}}".replace(
        "±", r"$\pm$"), r"\end{table}"]) + "\n"


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    fields = ["row", "column", "source", "mean", "std", "low", "high", "n", "dev", "bold", "selected", "trials", "text"]
    writer = csv.DictWriter(buf, fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for e in entries(table):
        writer.writerow({k: "" if e.get(k) is None else round(e[k], 6) if isinstance(e[k], float) else e[k]
                         for k in fields})
    return buf.getvalue()


# ---- plots
def _axes(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.5), squeeze=False)
    return plt, fig, axes[0]


def plot_curves(table: Table, db, metric: str, path: str) -> str:
    """Learning curves of each cell's selected trials: mean ± std over seeds of ``metric`` against the step."""
    if metric not in (known := db.curve_metrics()):
        close = difflib.get_close_matches(metric, known, 3, 0.5)
        raise AdaptError(f"no curve for metric {metric!r}; " + (f"closest: {', '.join(close)}" if close else
                                                                 f"there are: {', '.join(known) or 'none'}"))
    plt, fig, axes = _axes(len(table.columns))
    for ax, col in zip(axes, table.columns):
        for row in table.rows:
            if (row, col) not in table.cells:
                continue
            curves = [c for c in (db.curve(i, metric) for i in table.cells[row, col].trials) if c]
            if not curves:
                continue
            steps = np.array(sorted({s for c in curves for s, _ in c}), dtype=float)
            ys = np.array([np.interp(steps, *np.array(c, dtype=float).T, left=np.nan, right=np.nan) for c in curves])
            mean, std = np.nanmean(ys, 0), np.nan_to_num(np.nanstd(ys, 0))
            ax.plot(steps, mean, label=f"{row} (n={len(curves)})")
            ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
        ax.set(title=col, xlabel="step", ylabel=metric)
        ax.legend(fontsize="small")
    return _save(plt, fig, path)


def plot_sweep(table: Table, trials: list[dict], key: str, path: str, split: str | None = None) -> str:
    """``split``/metric (default: the dev split) against the swept ``key`` per row: at each value of the key, the
    mean ± std over seeds of the best hyperparameters (by mean dev metric) among those with that value."""
    split = split or table.dev_split
    trials = [t for t in trials if t["status"] == "done"]
    _check_keys(trials, [key])
    exclude = set(table.seed_keys) | {"init_from", *table.row_keys, table.column_key}
    cells = _cells(trials, table.row_keys, table.column_key,
                   table.metric if isinstance(table.metric, str) else "result")
    plt, fig, axes = _axes(len(table.columns))
    for ax, col in zip(axes, table.columns):
        metric = table.metric_of(col)
        for row in table.rows:
            xs = {}
            for t in cells.get((row, col), []):
                if isinstance(value(t, key), (int, float)):
                    xs.setdefault(value(t, key), []).append(t)
            pts = []
            for x, ts in sorted(xs.items()):
                if (picked := select(ts, exclude, metric, table.dev_split, table.lower_of(col))) is not None:
                    vals = [t["metrics"][split][metric] * table.scale for t in picked[1]
                            if metric in t["metrics"].get(split, {})]
                    if vals:
                        pts.append((x, statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0))
            if pts:
                x, y, e = zip(*pts)
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=row)
        xs_all = [value(t, key) for t in trials if isinstance(value(t, key), (int, float))]
        if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10:
            ax.set_xscale("log")
            ticks = sorted(set(xs_all))
            if len(ticks) <= 8:  # the swept values themselves (e.g. data.train_examples), not 2x10^1, 3x10^1, ...
                ax.minorticks_off()
                ax.set_xticks(ticks, [label(v) for v in ticks])
        ax.set(title=col, xlabel=key, ylabel=f"{split} {metric}")
        ax.legend(fontsize="small")
    return _save(plt, fig, path)


def _save(plt, fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(table: Table, db, trials: list[dict], out: str, curves=(), vs=()) -> list[str]:
    """``<out>.md/.tex/.csv``, plus learning curves of each metric in ``curves`` and the dev metric against each
    swept key in ``vs`` as ``<out>_*.png``; returns the paths written."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    written = []
    for ext, write in (("md", to_markdown), ("tex", to_latex), ("csv", to_csv)):
        write_atomic(f"{out}.{ext}", lambda f, text=write(table): f.write(text.encode()))
        written.append(f"{out}.{ext}")
    for metric in curves:
        written.append(plot_curves(table, db, metric, f"{out}_curves_{_slug(metric)}.png"))
    for key in vs:
        written.append(plot_sweep(table, trials, key, f"{out}_vs_{_slug(key)}.png"))
    return written


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", s)
