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
  within each row). Its p-value (two-sided): approximate randomisation over examples (Noreen, 1989; the
  test Dror et al., 2018, recommend for F1-type metrics): each of R permutations swaps, example by example
  with probability 1/2, all of A's seeds' outputs with B's, and p = (1 + #{|d_perm| >= |d|}) / (1 + R).
  This needs the same number of seeds in both rows (seed i of A is paired with seed i of B). With at least
  5 seeds in each row, Welch's t-test on the per-seed metric values is reported too (a seed-level test).

Every metric here is a function of counts that add up over examples: a confusion matrix for classification
(``[C, C]``, rows gold), ``(correct, predicted, gold)`` entity counts for span F1. So a resample is a
weighted sum, ``counts_sum = W @ counts`` with ``W [B, n]`` the multiplicity of each example in each
replicate, and the metric is computed on those sums: the same F1 code as the trials'
(:mod:`adapt.training.objectives`), vectorised over replicates.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from adapt.errors import AdaptError


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
    from adapt.training.objectives import spans

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
    confusion counts) or span_f1 (K = 3, span counts)."""
    if name == "span_f1":
        def span_f1(s):
            s = s.astype(np.float64)
            p = s[..., 0] / np.maximum(s[..., 1], 1)
            r = s[..., 0] / np.maximum(s[..., 2], 1)
            return np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
        return span_f1
    if name not in ("accuracy", "micro_f1", "macro_f1"):
        raise AdaptError(f"no interval for metric {name!r}; known: accuracy, micro_f1, macro_f1, span_f1")
    c = num_labels

    def from_confusion(s):
        conf = s.reshape(*s.shape[:-1], c, c).astype(np.float64)  # integer counts: exact in float32
        if name == "accuracy":
            return np.trace(conf, axis1=-2, axis2=-1) / np.maximum(conf.sum((-2, -1)), 1)
        micro, macro = _f1s(conf, ignore)
        return micro if name == "micro_f1" else macro
    return from_confusion


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
    p_value: float  # approximate randomisation over examples, two-sided
    p_seeds: float | None  # Welch's t-test over per-seed values, with >= 5 seeds a row; else None


def compare(counts_a, counts_b, metric, *, replicates: int = 1000, permutations: int = 1000, level: float = 0.95,
            seed: int = 0) -> Comparison:
    """Paired comparison of two rows on one test set (module doc): the difference A - B with its paired
    bootstrap interval and the randomisation p-value. Draws, in order: ``example_weights``, A's seeds, B's
    seeds, then the permutations' swap masks ``[R, n]``."""
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
    p = float((1 + np.sum(np.abs(perm) >= abs(diff) - 1e-12)) / (1 + permutations))
    p_seeds = None
    if s >= 5:
        from scipy.stats import ttest_ind

        p_seeds = float(ttest_ind(values_a, values_b, equal_var=False).pvalue)
    tail = 100 * (1 - level) / 2
    return Comparison(diff, float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail)), p, p_seeds)
