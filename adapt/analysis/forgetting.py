"""Forgetting, reported: what a language-model trial learned on its domain against what it lost on general text.

A trial with named evaluation sets (``eval.sets``: held-out text evaluated by the language-model objective) has,
per set S, split "start" (the pretrained model, before the first training step) and split "dev" (the trained
model) metrics "S/loss" (mean token cross-entropy, nats) and "S/perplexity" (exp of the loss). Per row (the
values of the ``rows`` keys, as :mod:`adapt.analysis.tables` makes them) :func:`report` gives, as the mean over seeds
with a Student-t interval over seeds (none with one seed):

* the domain set's perplexity before and after, its **gain** = before - after (> 0: training lowered the domain
  perplexity) and the relative gain 100 (before - after) / before;
* the general set's loss before and after and the **forgetting** = after - before (> 0: the general-text loss
  rose; < 0: it fell), as PEFT's method comparison reports it.

A row whose trials differ in hyperparameters other than seeds is the group with the lowest mean dev domain loss
(:func:`adapt.analysis.tables.select`). :func:`pareto_plot` draws each trial's (forgetting, gain), the rows' means with
their intervals and the Pareto front (the learning/forgetting trade-off of Biderman et al., 2024).

    rep = report(ResultsDB("runs/x/results.db").trials(), domain="domain", general="general")
    print(to_markdown(rep)); pareto_plot(rep, "x_pareto.png")
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics

from adapt.analysis import tables
from adapt.core.errors import AdaptError, ConfigError

# key, header ({d}: the domain set, {g}: the general set), decimals, signed (a difference)
COLUMNS = (("domain_before", "{d} ppl before", 2, False), ("domain_after", "{d} ppl after", 2, False),
           ("gain", "gain", 2, True), ("relative_gain", "gain %", 1, True),
           ("general_before", "{g} loss before", 3, False), ("general_after", "{g} loss after", 3, False),
           ("forgetting", "forgetting", 3, True))


@dataclasses.dataclass
class Estimate:
    mean: float
    low: float | None  # None: one seed, no interval
    high: float | None
    n: int


@dataclasses.dataclass
class Row:
    name: str
    trials: list[str]  # the selected trials' ids, one per seed
    points: list[dict]  # per trial: id and each column's value
    values: dict  # column key -> Estimate
    selected: dict  # the hyperparameters that vary in the row, as selected
    tried: dict  # selected key -> the values tried


@dataclasses.dataclass
class Report:
    domain: str
    general: str
    rows: list[Row]
    row_keys: tuple
    seed_keys: tuple
    level: float
    notes: list[str] = dataclasses.field(default_factory=list)


def parse_sets(sets) -> tuple[str, str]:
    """'domain,general' or ("domain", "general") -> ("domain", "general")."""
    names = [s.strip() for s in (sets.split(",") if isinstance(sets, str) else sets)]
    if len(names) != 2 or not all(names):
        raise ConfigError(f"forgetting {sets!r}: expected two evaluation set names, 'DOMAIN,GENERAL'")
    return names[0], names[1]


def _values(t: dict, domain: str, general: str) -> dict | None:
    """A trial's before/after numbers, or None when it lacks one."""
    def get(split, name, metric):
        got = t["metrics"].get(split, {})
        if f"{name}/{metric}" in got:
            return got[f"{name}/{metric}"]
        if metric == "perplexity" and f"{name}/loss" in got:
            return math.exp(got[f"{name}/loss"])
        return None

    v = dict(domain_before=get("start", domain, "perplexity"), domain_after=get("dev", domain, "perplexity"),
             general_before=get("start", general, "loss"), general_after=get("dev", general, "loss"))
    if None in v.values() or f"{domain}/loss" not in t["metrics"].get("dev", {}):
        return None
    v["gain"] = v["domain_before"] - v["domain_after"]
    v["relative_gain"] = 100 * v["gain"] / v["domain_before"]
    v["forgetting"] = v["general_after"] - v["general_before"]
    return v


def estimate(xs: list[float], level: float = 0.95) -> Estimate:
    """Mean of ``xs`` with its two-sided Student-t interval (n - 1 degrees of freedom); none for one value."""
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Estimate(mean, None, None, len(xs))
    from scipy import stats

    half = stats.t.ppf((1 + level) / 2, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return Estimate(mean, mean - half, mean + half, len(xs))


def _missing(trials, domain: str, general: str) -> str:
    have = sorted({m[:-5] for t in trials for m in t["metrics"].get("start", {}) if m.endswith("/loss")})
    where = (f"evaluation sets there are: {', '.join(have)}" if have else
             "no trial has any (metrics 'S/loss' in split 'start': a trial's eval.sets names them)")
    return (f"no finished trial has 'start' and 'dev' values (S/loss, S/perplexity) of both evaluation sets "
            f"{domain!r} and {general!r}; {where}")


def _sorted_labels(values) -> list[str]:
    """Distinct values as labels, numbers first in numeric order."""
    by = {tables.label(v): v for v in values}
    return sorted(by, key=lambda s: (not tables._number(by[s]), by[s] if tables._number(by[s]) else 0, s))


def report(trials: list[dict], *, domain: str = "domain", general: str = "general", rows=("condition",),
           seed_keys=("train.seed",), level: float = 0.95) -> Report:
    """The forgetting report (module docstring) of the finished ``trials`` that have both sets' values."""
    rows = (rows,) if isinstance(rows, str) else tuple(rows)
    done = [t for t in trials if t["status"] == "done"]
    usable = [t for t in done if _values(t, domain, general) is not None]
    if not usable:
        raise AdaptError(_missing(done, domain, general))
    tables._check_keys(usable, rows)
    out = Report(domain, general, [], rows, tuple(seed_keys), level)
    exclude = set(seed_keys) | {"init_from", *rows}
    for (name, _), ts in tables._cells(usable, rows, None, "").items():
        hp, group, _ = tables.select(ts, exclude, f"{domain}/loss", "dev", lower=True)
        varying = {k for t in ts for k, v in tables._hparams(t, exclude).items()
                   if any(tables._hparams(u, exclude).get(k) != v for u in ts)}
        tried = {k: _sorted_labels([tables._hparams(t, exclude).get(k) for t in ts]) for k in varying}
        points = [{"id": t["id"], **_values(t, domain, general)} for t in group]
        values = {key: estimate([p[key] for p in points], level) for key, *_ in COLUMNS}
        out.rows.append(Row(name, [t["id"] for t in group], points, values,
                            {k: v for k, v in hp.items() if k in varying}, tried))
        for key in ("domain_before", "general_before"):
            spread = max(p[key] for p in points) - min(p[key] for p in points)
            if spread > 1e-6 * abs(points[0][key]):
                out.notes.append(f"{name}: the 'before' values ({key}) differ across its trials by {spread:.3g}: "
                                 f"were they started from different models?")
    return out


def header(rep: Report) -> list[str]:
    return [" / ".join(rep.row_keys), "n"] + [h.format(d=rep.domain, g=rep.general) for _, h, *_ in COLUMNS]


def _fmt(e: Estimate, digits: int, signed: bool) -> str:
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f.format(e.mean) + (" [–]" if e.low is None else f" [{f.format(e.low)}, {f.format(e.high)}]")


def _grid(rep: Report) -> list[list[str]]:
    return [[r.name, str(len(r.trials))] + [_fmt(r.values[k], d, s) for k, _, d, s in COLUMNS] for r in rep.rows]


def caption(rep: Report) -> str:
    d, g, n = rep.domain, rep.general, sorted({len(r.trials) for r in rep.rows})
    lines = [
        f"Forgetting: per row, the mean over seeds ({', '.join(rep.seed_keys)}; n seeds: {', '.join(map(str, n))}) "
        f"and [low, high], its {100 * rep.level:g}% Student-t interval over seeds (n - 1 degrees of freedom); "
        f"[–]: one seed, no interval. Before: the pretrained model, evaluated before the first training step "
        f"(split start); after: the trained model (split dev: the trial's final or best model). {d} ppl: "
        f"perplexity, exp(mean token cross-entropy), on the evaluation set {d!r}; gain = {d} ppl before - after "
        f"(> 0: training lowered the domain perplexity); gain % = 100 gain / before. {g} loss: mean token "
        f"cross-entropy (nats) on the evaluation set {g!r}; forgetting = {g} loss after - before (> 0: the "
        f"general-text loss rose, the model forgot; < 0: it improved)."]
    for r in rep.rows:
        if r.selected:
            lines.append(f"{r.name}: selected " + ", ".join(
                f"{k}={tables.label(v)} (of {', '.join(r.tried[k])})" for k, v in sorted(r.selected.items()))
                + f" by the lowest mean dev {d}/loss over seeds.")
    return "\n".join(lines + rep.notes)


def to_markdown(rep: Report) -> str:
    lines = ["| " + " | ".join(header(rep)) + " |", "|---" + "|---:" * (len(COLUMNS) + 1) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in _grid(rep)]
    return "\n".join(lines) + f"\n\n{caption(rep)}\n"


def to_latex(rep: Report) -> str:
    tex = tables._tex
    out = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{lr" + "r" * len(COLUMNS) + "}", r"\toprule",
           " & ".join(tex(h) for h in header(rep)) + r" \\", r"\midrule"]
    out += [" & ".join(tex(c).replace("–", "--") for c in cells) + r" \\" for cells in _grid(rep)]
    return "\n".join(out + [r"\bottomrule", r"\end{tabular}", rf"\caption{{{tex(caption(rep))}}}".replace(
        "–", "--"), r"\end{table}"]) + "\n"


def to_csv(rep: Report) -> str:
    """One line per row and column (source "row": mean, low, high over seeds) and per trial and column (source
    "trial": its value in mean)."""
    buf = io.StringIO()
    fields = ["row", "column", "source", "mean", "low", "high", "n", "level", "selected", "trials"]
    writer = csv.DictWriter(buf, fields, lineterminator="\n")
    writer.writeheader()
    for r in rep.rows:
        selected = ", ".join(f"{k}={tables.label(v)}" for k, v in sorted(r.selected.items()))
        for key, *_ in COLUMNS:
            e = r.values[key]
            writer.writerow(dict(row=r.name, column=key, source="row", mean=e.mean, low=e.low, high=e.high, n=e.n,
                                 level=rep.level, selected=selected, trials=" ".join(r.trials)))
        for p in r.points:
            for key, *_ in COLUMNS:
                writer.writerow(dict(row=r.name, column=key, source="trial", mean=p[key], n=1, trials=p["id"]))
    return buf.getvalue()


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point dominates (forgetting <= and gain >= theirs, one of them strictly), by forgetting."""
    def dominates(q, p):
        return (q["forgetting"] <= p["forgetting"] and q["gain"] >= p["gain"]
                and (q["forgetting"] < p["forgetting"] or q["gain"] > p["gain"]))
    front = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: (p["forgetting"], p["gain"]))


def _err(e: Estimate):
    return None if e.low is None else [[e.mean - e.low], [e.high - e.mean]]


def pareto_plot(rep, path: str, **kwargs) -> str:
    """Domain gain (perplexity before - after) against general-text cost (forgetting, nats) of each trial of the
    report (``rep``: a :class:`Report`, or trials and :func:`report`'s keyword arguments), coloured by row, the
    rows' means with their intervals as error bars, and the Pareto front over the trials as a step line."""
    rep = rep if isinstance(rep, Report) else report(rep, **kwargs)
    plt, fig, axes = tables._axes(1)
    ax = axes[0]
    fig.set_size_inches(6, 4.5)
    for i, r in enumerate(rep.rows):
        colour = f"C{i % 10}"
        ax.scatter([p["forgetting"] for p in r.points], [p["gain"] for p in r.points], color=colour, alpha=0.6,
                   s=25, zorder=3, label=f"{r.name} (n={len(r.trials)})")
        f, g = r.values["forgetting"], r.values["gain"]
        ax.errorbar([f.mean], [g.mean], xerr=_err(f), yerr=_err(g), color=colour, marker="s", markersize=7,
                    markeredgecolor="black", capsize=3)
    front = pareto_front([p for r in rep.rows for p in r.points])
    ax.step([p["forgetting"] for p in front], [p["gain"] for p in front], where="post", color="black",
            linestyle="--", linewidth=1, label="Pareto front (trials)")
    ax.axvline(0, color="grey", linewidth=0.5)
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set(xlabel=f"forgetting: {rep.general} loss after - before (nats)",
           ylabel=f"gain: {rep.domain} perplexity before - after",
           title=f"squares: row means, {100 * rep.level:g}% t-interval over seeds")
    ax.title.set_fontsize("small")
    ax.legend(fontsize="small")
    return tables._save(plt, fig, path)
