"""Confidence intervals and paired tests for table cells, from per-example test outputs of every seed.

A cell of a paper table is one system (a row's selected hyperparameters) on one test set, trained with S
seeds. Its number is the mean over seeds of a metric (accuracy, micro-/macro-F1, span F1) of the whole test
set. Two things make it vary: which test examples happened to be drawn, and which seeds. Both are resampled:

* **Interval of a cell** (:func:`interval`): B bootstrap replicates; each draws n test examples with
  replacement (the same draw for every seed: the seeds were evaluated on one test set) and S seeds with
  replacement, and computes the mean over the drawn seeds of the metric on the drawn examples. The 95%
  interval is the 2.5th and 97.5th percentile of the replicates (percentile bootstrap; Efron & Tibshirani,
  1993). With one seed it is the test-set bootstrap alone.
* **Paired comparison of two rows** on the same test set (:func:`compare`): the difference of their cell
  values (A - B). Its interval: the paired bootstrap (one draw of examples shared by both rows, seeds drawn
  within each row). Its p-value (two-sided) from the same replicates: p = min(1, 2 (1 + #{d* on the far
  side of 0}) / (1 + B)), so p < 0.05 goes with a 95% interval that excludes 0; it counts both the test
  set's and the seeds' variance. Two more are reported. Approximate randomisation over examples (Noreen,
  1989; the test Dror et al., 2018, recommend for F1-type metrics): each of R permutations swaps, example by
  example with probability 1/2, all of A's seeds' outputs with B's, and ``p = (1 + #{|d_perm| >= |d|}) / (1 + R)``;
  it holds the trained models fixed, so it answers "do these models differ on this test set", not "does
  the method differ", and with a few noisy seeds it can be far smaller than the bootstrap's p. With at least
  5 seeds in each row, Welch's t-test on the per-seed metric values (a seed-level test). Pairing needs the
  same number of seeds in both rows (seed i of A with seed i of B).

Every metric here is a function of counts that add up over examples: a confusion matrix for classification
(``[C, C]``, rows gold), ``(correct, predicted, gold)`` entity counts for span F1. So a resample is a
weighted sum, ``counts_sum = W @ counts`` with ``W [B, n]`` the multiplicity of each example in each
replicate, and the metric is computed on those sums: the same F1 code as the trials'
(:mod:`adapt.training.objectives`), vectorised over replicates. Metrics of generated text (ROUGE, BLEU, chrF,
exact match) have such counts too (:mod:`adapt.evaluation.textmetrics`).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from adapt.core.errors import AdaptError
from adapt.core.files import write_atomic
from adapt.data.formats import spans
from adapt.evaluation import predictions, textmetrics

# ---- per-example counts and the metrics computed from their sums ---------------------------------------

def confusion_counts(gold, pred, labels) -> np.ndarray:
    """``[n, C*C]`` one-hot confusion cells (row gold, column predicted) of ``n`` examples."""
    index = {name: i for i, name in enumerate(labels)}
    c = len(labels)
    try:
        cells = np.asarray([index[g] * c + index[p] for g, p in zip(gold, pred, strict=True)], np.int64)
    except KeyError as e:
        raise AdaptError(f"label {e.args[0]!r} is not one of the labels {list(labels)}") from None
    out = np.zeros((len(cells), c * c), np.float32)
    out[np.arange(len(cells)), cells] = 1.0
    return out


def span_counts(gold_tags, pred_tags) -> np.ndarray:
    """``[n, 3]``: each example's (correct, predicted, gold) entity spans, as conlleval counts them."""

    rows = []
    for g, p in zip(gold_tags, pred_tags, strict=True):
        gs, ps = spans(list(g)), spans(list(p))
        rows.append((len(gs & ps), len(ps), len(gs)))
    return np.asarray(rows, np.float32).reshape(-1, 3)


def _f1s(conf: np.ndarray, ignore: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Micro- and macro-F1 of confusion matrices ``[..., C, C]`` over the classes present in gold or
    predictions, less ``ignore``: ``SequenceClassification.summarize``'s rule, vectorised."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    both = conf.sum(-1) + conf.sum(-2)  # gold + predicted per class
    keep = both > 0
    if ignore:
        keep[..., list(ignore)] = False
    f1 = np.where(keep, 2 * tp / np.maximum(both, 1), 0.0)
    macro = f1.sum(-1) / np.maximum(keep.sum(-1), 1)
    micro = 2 * (tp * keep).sum(-1) / np.maximum((both * keep).sum(-1), 1)
    return micro, macro


def metric_fn(name: str, num_labels: int = 0, ignore: tuple[int, ...] = ()):
    """``summed counts [..., K] -> metric [...]`` for ``name``: accuracy, micro_f1, macro_f1 (K = C*C,
    confusion counts), span_f1 (K = 3, span counts) or a metric of generated text
    (:mod:`adapt.evaluation.textmetrics`)."""
    if name in textmetrics.METRICS:
        return textmetrics.metric_fn(name)
    if name == "span_f1":
        def span_f1(s):
            s = s.astype(np.float64)
            p = s[..., 0] / np.maximum(s[..., 1], 1)
            r = s[..., 0] / np.maximum(s[..., 2], 1)
            return np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
        return span_f1
    if name not in ("accuracy", "micro_f1", "macro_f1"):
        raise AdaptError(f"no interval for metric {name!r}; known: accuracy, micro_f1, macro_f1, span_f1, "
                         f"{', '.join(textmetrics.METRICS)}")
    c = num_labels

    def from_confusion(s):
        conf = s.reshape(*s.shape[:-1], c, c).astype(np.float64)  # integer counts: exact in float32
        if name == "accuracy":
            return np.trace(conf, axis1=-2, axis2=-1) / np.maximum(conf.sum((-2, -1)), 1)
        micro, macro = _f1s(conf, ignore)
        return micro if name == "micro_f1" else macro
    return from_confusion


def read_counts(workdir: str, split: str, metric: str, f1_ignore=()) -> tuple[np.ndarray, object]:
    """A finished trial's per-example counts on ``split`` (from ``predictions/<split>.jsonl`` and its
    ``labels.json``) and the function of their sums that gives ``metric``; ``f1_ignore``: label names left
    out of the F1 averages, as the trial's ``objective.f1_ignore``."""
    rows = predictions.read(workdir, split)
    gold, pred = [r["gold"] for r in rows], [r["prediction"] for r in rows]
    if metric in textmetrics.METRICS:  # generated text against its reference
        return textmetrics.example_counts(metric, gold, pred), metric_fn(metric)
    if metric == "span_f1":
        return span_counts(gold, pred), metric_fn(metric)
    labels = predictions.label_order(workdir, rows)
    ignore = tuple(labels.index(x) for x in f1_ignore if x in labels)
    return confusion_counts(gold, pred, labels), metric_fn(metric, len(labels), ignore)


# ---- intervals and tests ---------------------------------------------------------------------------------

def _stack(counts) -> np.ndarray:
    """Seeds' per-example counts -> ``[S, n, K]``; every seed must cover the same n examples."""
    arrays = [np.asarray(c, np.float32) for c in counts]
    if not arrays:
        raise AdaptError("no seeds to compute an interval from")
    if len({a.shape for a in arrays}) != 1:
        raise AdaptError(f"the seeds were evaluated on different test sets (per-example shapes "
                         f"{sorted({a.shape for a in arrays})})")
    return np.stack(arrays)


def example_weights(rng: np.random.Generator, replicates: int, n: int) -> np.ndarray:
    """``[B, n]``: how often each example is drawn in each bootstrap replicate (n draws with replacement)."""
    draws = rng.integers(0, n, (replicates, n))
    return np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.float32)


def _replicates(metric, counts: np.ndarray, weights: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """``[B]``: each replicate's mean over its drawn ``seeds [B, S]`` of the metric on ``weights [B, n]``."""
    per_seed = np.stack([metric(weights @ counts[s]) for s in range(len(counts))], axis=1)  # [B, S]
    return np.take_along_axis(per_seed, seeds, axis=1).mean(1)


@dataclasses.dataclass(frozen=True)
class Interval:
    value: float  # the cell: mean over seeds of the metric on the whole test set
    low: float
    high: float
    seeds: int
    examples: int


def interval(counts, metric, *, replicates: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """The cell value and its ``level`` percentile-bootstrap interval over test examples and seeds (module
    doc); ``counts``: one ``[n, K]`` array per seed. Draws, in order: ``example_weights`` then the seeds."""
    counts = _stack(counts)
    s, n, _ = counts.shape
    rng = np.random.default_rng(seed)
    weights = example_weights(rng, replicates, n)
    seeds = rng.integers(0, s, (replicates, s))
    boot = _replicates(metric, counts, weights, seeds)
    value = float(np.mean([metric(c.sum(0)) for c in counts]))
    tail = 100 * (1 - level) / 2
    return Interval(value, float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail)), s, n)


@dataclasses.dataclass(frozen=True)
class Comparison:
    difference: float  # A - B
    low: float
    high: float
    p_value: float  # paired bootstrap over examples and seeds, two-sided (agrees with the interval)
    p_examples: float  # approximate randomisation over examples, the trained models held fixed
    p_seeds: float | None  # Welch's t-test over per-seed values, with >= 5 seeds a row; else None


def compare(counts_a, counts_b, metric, *, replicates: int = 1000, permutations: int = 1000, level: float = 0.95,
            seed: int = 0) -> Comparison:
    """Paired comparison of two rows on one test set (module doc): the difference A - B with its paired
    bootstrap interval and p-value, and the randomisation and seed-level p-values. Draws, in order:
    ``example_weights``, A's seeds, B's seeds, then the permutations' swap masks ``[R, n]``."""
    a, b = _stack(counts_a), _stack(counts_b)
    if a.shape[1:] != b.shape[1:]:
        raise AdaptError(f"the two rows were evaluated on different test sets ({a.shape[1]} and {b.shape[1]} "
                         f"examples)")
    if len(a) != len(b):
        raise AdaptError(f"a paired test needs the same seeds in both rows; they have {len(a)} and {len(b)}")
    s, n, _ = a.shape
    rng = np.random.default_rng(seed)
    weights = example_weights(rng, replicates, n)
    seeds_a, seeds_b = rng.integers(0, s, (replicates, s)), rng.integers(0, s, (replicates, s))
    boot = _replicates(metric, a, weights, seeds_a) - _replicates(metric, b, weights, seeds_b)
    values_a = np.asarray([metric(c.sum(0)) for c in a])
    values_b = np.asarray([metric(c.sum(0)) for c in b])
    diff = float(values_a.mean() - values_b.mean())
    swap = (rng.random((permutations, n)) < 0.5).astype(np.float32)  # [R, n]: 1 where A and B trade outputs
    keep = 1.0 - swap
    perm = np.zeros(permutations)
    for sa, sb in zip(a, b):  # seed i of A against seed i of B
        perm += metric(keep @ sa + swap @ sb) - metric(keep @ sb + swap @ sa)
    perm /= s
    p_examples = float((1 + np.sum(np.abs(perm) >= abs(diff) - 1e-12)) / (1 + permutations))
    far = np.sum(boot <= 0) if diff > 0 else np.sum(boot >= 0) if diff < 0 else replicates
    p_boot = min(1.0, 2 * (1 + float(far)) / (1 + replicates))
    p_seeds = None
    if s >= 5:
        from scipy.stats import ttest_ind

        p_seeds = float(ttest_ind(values_a, values_b, equal_var=False).pvalue)
    tail = 100 * (1 - level) / 2
    return Comparison(diff, float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail)), p_boot,
                      p_examples, p_seeds)


# ---- on a table (adapt.analysis.tables) ----------------------------------------------------------------------------

def _cell_counts(table, cell, column: str, by_id: dict):
    """The selected trials' per-example test counts of a cell and the metric of its column."""
    metric, counts, fn = table.metric_of(column), [], None
    for trial_id in cell.trials:
        trial = by_id[trial_id]
        ignore = trial["config"].get("objective", {}).get("f1_ignore", ())
        c, fn = read_counts(trial["workdir"], table.test_split, metric, ignore)
        counts.append(c)
    return counts, fn


def add_intervals(table, trials: list[dict], *, replicates: int = 1000, seed: int = 0) -> list[str]:
    """Sets each cell's 95% interval (``Cell.interval``) from its selected trials' test predictions; returns
    a note for each cell it could not (a trial without predictions, a metric with no interval)."""
    by_id, notes = {t["id"]: t for t in trials}, []
    for (row, col), cell in table.cells.items():
        try:
            counts, fn = _cell_counts(table, cell, col, by_id)
            got = interval(counts, fn, replicates=replicates, seed=seed)
        except AdaptError as e:
            notes.append(f"no interval for {row} on {col}: {e}")
            continue
        if cell.mean is not None and abs(got.value - cell.mean) > 1e-6:
            notes.append(f"no interval for {row} on {col}: its predictions give {got.value:.6f}, its results "
                         f"{cell.mean:.6f} (were the trials evaluated again on other data?)")
            continue
        cell.interval = (got.low, got.high)
    return notes


def compare_rows(table, trials: list[dict], pairs, *, replicates: int = 1000, permutations: int = 1000,
                 seed: int = 0) -> list[dict]:
    """For each ``(row A, row B)`` of ``pairs`` and each column where both have a cell: :func:`compare` of
    their selected trials (differences scaled as the table)."""
    by_id, out = {t["id"]: t for t in trials}, []
    for a, b in pairs:
        missing = [r for r in (a, b) if r not in table.rows]
        if missing:
            raise AdaptError(f"compare: no row {missing[0]!r} in the table; rows: {', '.join(table.rows)}")
        for col in table.columns:
            if (a, col) not in table.cells or (b, col) not in table.cells:
                continue
            counts_a, fn = _cell_counts(table, table.cells[a, col], col, by_id)
            counts_b, _ = _cell_counts(table, table.cells[b, col], col, by_id)
            got = compare(counts_a, counts_b, fn, replicates=replicates, permutations=permutations, seed=seed)
            s = table.scale
            out.append(dict(a=a, b=b, column=col, difference=got.difference * s, low=got.low * s,
                            high=got.high * s, p=got.p_value, p_examples=got.p_examples, p_seeds=got.p_seeds,
                            seeds=len(counts_a)))
    return out


def _stars(p: float) -> str:
    return "**" if p < 0.01 else "*" if p < 0.05 else ""


def comparisons_markdown(rows: list[dict], digits: int = 1) -> str:
    """The comparison table: difference A - B with its 95% interval and bootstrap p-value (``*`` p < 0.05,
    ``**`` p < 0.01), the randomisation p-value over examples and, with >= 5 seeds a row, Welch's p over seeds."""
    lines = ["| A | B | column | A - B | 95% interval | p | p (examples) | p (seeds) |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        seeds = "" if r["p_seeds"] is None else f"{r['p_seeds']:.3f}"
        lines.append(f"| {r['a']} | {r['b']} | {r['column']} | {r['difference']:+.{digits}f}{_stars(r['p'])} | "
                     f"[{r['low']:+.{digits}f}, {r['high']:+.{digits}f}] | {r['p']:.3f} | {r['p_examples']:.3f} | "
                     f"{seeds} |")
    return "\n".join(lines) + ("\n\nA - B: difference of the cells' means (same test set, seed i of A paired with "
                               "seed i of B); interval and p: paired bootstrap over test examples and seeds, "
                               "two-sided, * p < 0.05, ** p < 0.01; p (examples): approximate randomisation over "
                               "test examples with the trained models held fixed (all seeds' outputs swapped "
                               "together); p (seeds): Welch's t-test over the per-seed values, given 5 or more "
                               "seeds a row (adapt/analysis/stats.py).\n")


def comparisons_latex(rows: list[dict], digits: int = 1) -> str:
    out = [r"\begin{tabular}{lllrrrr}", r"\toprule",
           r"A & B & column & $A - B$ & 95\% interval & $p$ & $p$ (examples) \\", r"\midrule"]
    for r in rows:
        mark = {"*": "$^{*}$", "**": "$^{**}$", "": ""}[_stars(r["p"])]
        out.append(f"{r['a']} & {r['b']} & {r['column']} & {r['difference']:+.{digits}f}{mark} & "
                   f"[{r['low']:+.{digits}f}, {r['high']:+.{digits}f}] & {r['p']:.3f} & {r['p_examples']:.3f} \\\\"
                   .replace("_", r"\_"))
    return "\n".join(out + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def annotate(table, trials: list[dict], pairs=(), out: str | None = None) -> tuple[list[str], list[dict]]:
    """What the scripts do after building a table: its cells' intervals, then the comparisons of ``pairs``
    (written as ``<out>_comparisons.md/.tex`` when ``out`` is given and there are any). Returns the notes for
    cells without an interval, and the comparison rows."""
    notes = add_intervals(table, trials)
    rows = compare_rows(table, trials, pairs) if pairs else []
    if out and rows:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        for ext, render in (("md", comparisons_markdown), ("tex", comparisons_latex)):
            write_atomic(f"{out}_comparisons.{ext}", lambda f, text=render(rows, table.digits): f.write(text.encode()))
    return notes, rows
