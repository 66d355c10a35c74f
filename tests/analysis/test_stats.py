"""Intervals and paired tests (adapt.analysis.stats) against a direct computation: scikit-learn's metrics in plain
loops over the same random draws; a known difference is found, no difference is not."""

import numpy as np
import pytest
from scipy.stats import ttest_ind
from sklearn.metrics import accuracy_score, f1_score

from adapt.analysis import stats
from adapt.training.objectives import span_f1

LABELS = ["a", "b", "c", "none"]


def _system(rng, gold, accuracy):
    """Predictions right with probability ``accuracy``, else a random other label."""
    wrong = [LABELS[(LABELS.index(g) + rng.integers(1, 4)) % 4] for g in gold]
    return [g if rng.random() < accuracy else w for g, w in zip(gold, wrong)]


def _sklearn(name, gold, pred, ignore=()):
    if name == "accuracy":
        return accuracy_score(gold, pred)
    present = [x for x in LABELS if (x in gold or x in pred) and x not in ignore]
    return f1_score(gold, pred, labels=present, average=name.split("_")[0], zero_division=0)


@pytest.mark.parametrize("name", ["accuracy", "micro_f1", "macro_f1"])
def test_metrics_from_summed_counts_equal_scikit_learn(name):
    rng = np.random.default_rng(0)
    gold = list(rng.choice(LABELS, 200))
    pred = _system(rng, gold, 0.6)
    ignore = (3,) if name != "accuracy" else ()
    metric = stats.metric_fn(name, len(LABELS), ignore)
    value = metric(stats.confusion_counts(gold, pred, LABELS).sum(0))
    assert value == pytest.approx(_sklearn(name, gold, pred, [LABELS[i] for i in ignore]), abs=1e-12)


def test_span_f1_from_summed_counts_equals_the_objective():
    gold = [["B-X", "I-X", "O"], ["O", "B-Y"], ["B-X", "O", "B-Y"]]
    pred = [["B-X", "I-X", "O"], ["B-Y", "O"], ["B-X", "O", "O"]]
    names = ["B-X", "I-X", "B-Y", "O"]
    ids = [(np.asarray([[names.index(t) for t in p]]), np.asarray([[names.index(t) for t in g]]))
           for p, g in zip(pred, gold)]
    expected = span_f1(ids, names)["span_f1"]
    assert stats.metric_fn("span_f1")(stats.span_counts(gold, pred).sum(0)) == pytest.approx(expected)


def _seeds(rng, gold, accuracy, n_seeds):
    return [_system(rng, gold, accuracy) for _ in range(n_seeds)]


def test_interval_equals_a_direct_bootstrap():
    rng = np.random.default_rng(1)
    gold = list(rng.choice(LABELS, 120))
    preds = _seeds(rng, gold, 0.7, 3)
    counts = [stats.confusion_counts(gold, p, LABELS) for p in preds]
    got = stats.interval(counts, stats.metric_fn("macro_f1", 4), replicates=200, seed=5)
    # direct: the same draws (examples, then seeds), scikit-learn on each resampled test set
    draws = np.random.default_rng(5)
    index = draws.integers(0, 120, (200, 120))
    seeds = draws.integers(0, 3, (200, 3))
    g = np.asarray(gold)
    boot = [np.mean([_sklearn("macro_f1", list(g[index[b]]), list(np.asarray(preds[s])[index[b]])) for s in seeds[b]])
            for b in range(200)]
    assert got.value == pytest.approx(np.mean([_sklearn("macro_f1", gold, p) for p in preds]))
    assert (got.low, got.high) == pytest.approx((np.percentile(boot, 2.5), np.percentile(boot, 97.5)))
    assert got.low < got.value < got.high and (got.seeds, got.examples) == (3, 120)


def _direct_comparison(gold, preds_a, preds_b, replicates, permutations, seed):
    draws = np.random.default_rng(seed)
    n, s = len(gold), len(preds_a)
    index = draws.integers(0, n, (replicates, n))
    seeds_a, seeds_b = draws.integers(0, s, (replicates, s)), draws.integers(0, s, (replicates, s))
    swap = draws.random((permutations, n)) < 0.5
    g, pa, pb = np.asarray(gold), np.asarray(preds_a), np.asarray(preds_b)
    acc = lambda gold, pred: accuracy_score(gold, pred)  # noqa: E731
    diff = np.mean([acc(g, p) for p in pa]) - np.mean([acc(g, p) for p in pb])
    boot = [np.mean([acc(g[i], pa[k][i]) for k in seeds_a[b]]) - np.mean([acc(g[i], pb[k][i]) for k in seeds_b[b]])
            for b, i in enumerate(index)]
    perm = [np.mean([acc(g, np.where(m, pb[k], pa[k])) - acc(g, np.where(m, pa[k], pb[k])) for k in range(s)])
            for m in swap]
    p_examples = (1 + sum(abs(d) >= abs(diff) - 1e-12 for d in perm)) / (1 + permutations)
    far = sum(d <= 0 for d in boot) if diff > 0 else sum(d >= 0 for d in boot)
    p = min(1.0, 2 * (1 + far) / (1 + replicates))
    return diff, np.percentile(boot, 2.5), np.percentile(boot, 97.5), p, p_examples


@pytest.mark.parametrize("accuracy_b, significant", [(0.6, True), (0.8, False)])
def test_paired_comparison_equals_a_direct_computation(accuracy_b, significant):
    """A at 80% against B at 60% (a known difference) and against B at 80% (none), 5 seeds each."""
    rng = np.random.default_rng(2)
    gold = list(rng.choice(LABELS, 150))
    preds_a, preds_b = _seeds(rng, gold, 0.8, 5), _seeds(rng, gold, accuracy_b, 5)
    count = lambda ps: [stats.confusion_counts(gold, p, LABELS) for p in ps]  # noqa: E731
    got = stats.compare(count(preds_a), count(preds_b), stats.metric_fn("accuracy", 4), replicates=150,
                        permutations=150, seed=3)
    diff, low, high, p, p_examples = _direct_comparison(gold, preds_a, preds_b, 150, 150, 3)
    assert (got.difference, got.low, got.high, got.p_value, got.p_examples) == pytest.approx(
        (diff, low, high, p, p_examples))
    per_seed = lambda ps: [accuracy_score(gold, x) for x in ps]  # noqa: E731
    assert got.p_seeds == pytest.approx(ttest_ind(per_seed(preds_a), per_seed(preds_b), equal_var=False).pvalue)
    if significant:  # 150 replicates: the smallest bootstrap p is 2 / 151
        assert got.p_value < 0.02 and got.p_examples < 0.01 and got.low > 0 and got.p_seeds < 0.01
    else:
        assert got.p_value > 0.05 and got.p_examples > 0.05 and got.low < 0 < got.high


def test_unpaired_rows_are_refused():
    gold = ["a", "b"]
    one = [stats.confusion_counts(gold, gold, LABELS)]
    with pytest.raises(stats.AdaptError, match="same seeds in both rows"):
        stats.compare(one, one * 2, stats.metric_fn("accuracy", 4))
    with pytest.raises(stats.AdaptError, match="different test sets"):
        stats.compare(one, [stats.confusion_counts(["a"], ["a"], LABELS)], stats.metric_fn("accuracy", 4))


def test_a_table_gets_intervals_and_comparisons_from_its_trials_predictions(tmp_path):
    """A database of three conditions x 3 seeds on one test set: A right 85% of the time, B 60%, C like A; each
    trial's predictions in its folder. The cells' intervals are stats.interval of those predictions, A vs B is
    a difference (p < 0.01), A vs C is none (p > 0.05), and a trial without predictions is a note."""
    import json
    import os

    import ml_collections

    from adapt.analysis import results, tables
    from adapt.study import sweeps
    from adapt.study.sweeps import grid, product

    rng = np.random.default_rng(7)
    gold = list(rng.choice(LABELS, 200))
    accuracy = {"A": 0.85, "B": 0.6, "C": 0.85, "D": 0.7}
    sweep = product(grid("meta.condition", list(accuracy)), grid("train.seed", [0, 1, 2]))
    trials = sweeps.expand(sweep)
    db = results.ResultsDB(str(tmp_path / "results.db"))
    base = ml_collections.ConfigDict(dict(train=dict(seed=0), init_from="", objective=dict(f1_ignore=())))
    db.register("s", trials, {t.id: sweeps.trial_config(base, t.overrides) for t in trials}, str(tmp_path))
    by_id, preds = {t.id: t for t in trials}, {}
    while (tid := db.claim(list(by_id), os.getpid())) is not None:
        t = by_id[tid]
        cond = t.overrides["meta.condition"]
        pred = _system(rng, gold, accuracy[cond])
        preds[cond, t.overrides["train.seed"]] = pred
        workdir = tmp_path / t.stage / tid
        if cond != "D":  # D's trials were run before predictions were written
            (workdir / "predictions").mkdir(parents=True)
            (workdir / "labels.json").write_text(json.dumps(LABELS))
            (workdir / "predictions" / "test.jsonl").write_text("".join(
                json.dumps({"index": i, "gold": g, "prediction": p}) + "\n"
                for i, (g, p) in enumerate(zip(gold, pred))))
        acc = accuracy_score(gold, pred)
        db.finish(tid, {"dev": {"accuracy": acc}, "test": {"accuracy": acc}}, {})
    table = tables.build(db.trials(), rows=("meta.condition",))
    notes, rows = stats.annotate(table, db.trials(), [("A", "B"), ("A", "C")], str(tmp_path / "out"))
    counts = {c: [stats.confusion_counts(gold, preds[c, s], LABELS) for s in range(3)] for c in "ABC"}
    for c in "ABC":
        direct = stats.interval(counts[c], stats.metric_fn("accuracy", 4))
        assert table.cells[c, "accuracy"].interval == pytest.approx((direct.low, direct.high))
    assert table.cells["D", "accuracy"].interval is None and len(notes) == 1 and "D on accuracy" in notes[0]
    (ab,), (ac,) = [r for r in rows if r["b"] == "B"], [r for r in rows if r["b"] == "C"]
    assert ab["p"] < 0.01 and ab["p_examples"] < 0.01 and ab["low"] > 0
    assert ac["p"] > 0.05 and ac["p_examples"] > 0.05 and ac["low"] < 0 < ac["high"]
    assert ab["difference"] == pytest.approx(100 * (np.mean([accuracy_score(gold, preds["A", s]) for s in range(3)])
                                                    - np.mean([accuracy_score(gold, preds["B", s]) for s in range(3)])))
    md = tables.to_markdown(table)
    assert f"[{100 * direct.low:.1f}, {100 * direct.high:.1f}]" in md and "95% interval of the mean" in md
    assert "**" in (tmp_path / "out_comparisons.md").read_text().splitlines()[2]  # A - B marked p < 0.01
    assert (tmp_path / "out_comparisons.tex").exists()
