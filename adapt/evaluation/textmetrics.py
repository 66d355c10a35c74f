"""Metrics of generated text against references: ROUGE-1/2/L (``rouge-score``), BLEU and chrF (``sacrebleu``) and
exact match, each as per-example counts whose sum gives the corpus metric.

Like the classification metrics in :mod:`adapt.analysis.stats`, every metric here is a function of counts that add up
over examples, so the bootstrap intervals and paired tests there resample generated outputs the same way:

* ``rouge1``, ``rouge2``, ``rougeL``: the mean over examples of ROUGE's F-measure (Lin, 2004) as ``rouge-score``
  computes it, with Porter stemming (as the summarisation papers report it); counts ``[F, 1]``.
* ``bleu``: corpus BLEU (Papineni et al., 2002) with sacreBLEU's defaults (13a tokenisation, exponential
  smoothing); counts are sacreBLEU's sufficient statistics (lengths, matched and total n-grams), whose sum is
  what its ``corpus_score`` computes from, as its own paired bootstrap does.
* ``chrf``: corpus chrF (Popović, 2015; character 6-grams, beta 2) from sacreBLEU's summed statistics likewise.
* ``exact_match``: the share of outputs equal to the reference after stripping surrounding whitespace.

All are fractions in [0, 1], like accuracy (sacreBLEU's 0-100 scores divided by 100): tables show them x100.

    scores(["UK economy grows"], ["UK economy grows fast"])   # {"rouge1": 0.857, ..., "exact_match": 0.0}
    counts = example_counts("bleu", references, predictions)  # [n, K]
    metric_fn("bleu")(counts.sum(0))                           # == scores(...)["bleu"]
"""

from __future__ import annotations

import functools

import numpy as np

METRICS = ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match")
_ROUGE = ("rouge1", "rouge2", "rougeL")


@functools.cache
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(_ROUGE), use_stemmer=True)


@functools.cache
def _sacrebleu(name: str):
    import sacrebleu

    return sacrebleu.BLEU() if name == "bleu" else sacrebleu.CHRF()


def _check(name: str) -> None:
    if name not in METRICS:
        raise ValueError(f"generation metric {name!r} is not known; known: {', '.join(METRICS)}")


def example_counts(name: str, references: list[str], predictions: list[str]) -> np.ndarray:
    """``[n, K]`` per-example counts of metric ``name`` (module doc), in the examples' order."""
    _check(name)
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references for {len(predictions)} predictions")
    if name in _ROUGE:
        rows = [(_rouge().score(r, p)[name].fmeasure, 1.0) for r, p in zip(references, predictions)]
    elif name == "exact_match":
        rows = [(float(p.strip() == r.strip()), 1.0) for r, p in zip(references, predictions)]
    else:  # sacreBLEU's per-segment sufficient statistics (what its paired bootstrap resamples)
        rows = _sacrebleu(name)._extract_corpus_statistics(list(predictions), [list(references)])
    return np.asarray(rows, np.float64).reshape(len(references), -1)


def metric_fn(name: str):
    """``summed counts [..., K] -> metric [...]`` (in [0, 1]) for ``name``."""
    _check(name)
    if name in _ROUGE or name == "exact_match":
        return lambda s: s[..., 0] / np.maximum(s[..., 1], 1)
    metric = _sacrebleu(name)

    def corpus(s):
        s = np.asarray(s)
        flat = s.reshape(-1, s.shape[-1])
        out = [metric._compute_score_from_stats([int(round(x)) for x in row]).score / 100 for row in flat]
        return np.asarray(out, np.float64).reshape(s.shape[:-1])
    return corpus


def scores(references: list[str], predictions: list[str], names=METRICS) -> dict:
    """``{metric: value}`` of ``predictions`` against ``references`` (in [0, 1])."""
    return {n: float(metric_fn(n)(example_counts(n, references, predictions).sum(0))) for n in names}
