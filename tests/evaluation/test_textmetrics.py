"""Metrics of generated text equal the libraries' own, and their per-example counts resample like the others."""

import json
import os

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from adapt.analysis import stats
from adapt.evaluation import textmetrics

REFS = ["Economy grows faster than expected", "Club signs striker for record fee", "Minister resigns",
        "New phone sales rise in Europe", "Film wins top award at festival"]
PREDS = ["Economy grows faster than expected", "Club buys striker for a record fee", "The minister quits today",
         "Phone sales rise", ""]


def test_scores_equal_rouge_score_and_sacrebleu_on_fixed_strings():
    got = textmetrics.scores(REFS, PREDS)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for name in ("rouge1", "rouge2", "rougeL"):
        want = np.mean([scorer.score(r, p)[name].fmeasure for r, p in zip(REFS, PREDS)])
        assert got[name] == pytest.approx(want, abs=1e-9)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score / 100, abs=1e-12)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDS, [REFS]).score / 100, abs=1e-12)
    assert got["exact_match"] == 0.2
    # a subset's counts summed give the subset's corpus score: what a bootstrap replicate computes
    counts = textmetrics.example_counts("bleu", REFS, PREDS)
    weights = np.array([2, 0, 1, 1, 0], np.float64)  # example 0 drawn twice, 1 and 4 not at all
    drawn = [i for i, w in enumerate(weights) for _ in range(int(w))]
    want = sacrebleu.corpus_bleu([PREDS[i] for i in drawn], [[REFS[i] for i in drawn]]).score
    assert textmetrics.metric_fn("bleu")(weights @ counts) == pytest.approx(want / 100, abs=1e-12)
    with pytest.raises(ValueError, match="generation metric 'meteor' is not known"):
        textmetrics.example_counts("meteor", REFS, PREDS)


def test_intervals_of_generated_outputs_come_from_their_predictions(tmp_path):
    os.makedirs(tmp_path / "predictions")
    rows = [{"index": i, "gold": r, "prediction": p} for i, (r, p) in enumerate(zip(REFS * 4, PREDS * 4))]
    (tmp_path / "predictions" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts, fn = stats.read_counts(str(tmp_path), "test", "rougeL")
    got = stats.interval([counts], fn, replicates=200)
    assert got.value == pytest.approx(textmetrics.scores(REFS, PREDS, ["rougeL"])["rougeL"])
    assert got.low < got.value < got.high and got.examples == 20
