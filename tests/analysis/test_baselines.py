"""The reference baselines (adapt/analysis/baselines.py) equal scikit-learn run directly on the same splits (C picked on
dev the same way, metrics from sklearn.metrics), f1_ignore included; carved sources give the trials' splits;
the rows land in a table built from a results database, with a bootstrap interval over test examples that equals
one computed by hand."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from test_tables import DATA, make_db

from adapt.analysis import baselines, stats, tables
from adapt.core.errors import ConfigError
from adapt.data import pipeline, sources
from adapt.models import load_tokenizer

WORDS = {"sport": "goal match team win", "tech": "chip code phone data", "film": "actor scene award star"}
SHARED = "the a today said new year people".split()


def _examples(n: int, seed: int) -> list[dict]:
    """Texts of a label's words mixed with shared ones (and a third of them with another label's words), so the
    classes overlap and C matters; labels unbalanced (sport the most frequent)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = ["sport", "sport", "tech", "film"][i % 4]
        words = WORDS[label].split() + (WORDS[rng.choice(list(WORDS))].split() if i % 3 == 0 else [])
        out.append({"text": " ".join(rng.choice(words + SHARED, size=8)), "label": label})
    return out


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _sklearn(splits: dict, select: str, ignore=(), predictions: bool = False) -> dict:
    """The two baselines with scikit-learn alone: {row: {split: {metric: value}}} (or, with ``predictions``,
    {row: {split: predicted labels}})."""
    x_of = lambda s: [r["text"] for r in splits[s]]  # noqa: E731
    y_of = lambda s: [r["label"] for r in splits[s]]  # noqa: E731

    def metrics(y, pred):
        labels = sorted((set(y) | set(pred)) - set(ignore))
        return {"accuracy": accuracy_score(y, pred), "micro_f1": f1_score(y, pred, labels=labels, average="micro"),
                "macro_f1": f1_score(y, pred, labels=labels, average="macro")}

    evals = [s for s in splits if s != "train"]
    dummy = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(splits["train"]), 1)), y_of("train"))
    preds = {"Majority class": {s: dummy.predict(np.zeros((len(splits[s]), 1))) for s in evals}}
    vectorizer = TfidfVectorizer(sublinear_tf=True)
    x_train = vectorizer.fit_transform(x_of("train"))
    best = None
    for c in (0.01, 0.1, 1.0, 10.0, 100.0):  # the first C of the best dev score
        model = LogisticRegression(C=c, max_iter=1000).fit(x_train, y_of("train"))
        score = metrics(y_of("dev"), model.predict(vectorizer.transform(x_of("dev"))))[select]
        if best is None or score > best[0]:
            best = (score, model)
    preds["TF-IDF + LR"] = {s: best[1].predict(vectorizer.transform(x_of(s))) for s in evals}
    if predictions:
        return preds
    return {row: {s: metrics(y_of(s), p) for s, p in by_split.items()} for row, by_split in preds.items()}


def _assert_equal(got: dict, expected: dict):
    assert got.keys() == expected.keys()
    for row in expected:
        assert got[row].keys() == expected[row].keys(), row
        for split in expected[row]:
            assert got[row][split] == pytest.approx(expected[row][split], abs=1e-9), (row, split)


def test_baselines_equal_scikit_learn_on_the_same_splits(tmp_path):
    splits = {"train": _examples(80, 0), "dev": _examples(40, 1), "test": _examples(40, 2)}
    data = {"format": "classification", "files": {s: _write(tmp_path / f"{s}.jsonl", r) for s, r in splits.items()}}
    for select, ignore in (("accuracy", ()), ("macro_f1", ("sport",))):
        got = baselines.compute(data, f1_ignore=ignore, select=select)
        _assert_equal(got, _sklearn(splits, select, ignore))
    assert got["Majority class"]["test"]["accuracy"] == pytest.approx(0.5)  # sport: every other example
    assert 0.5 < got["TF-IDF + LR"]["test"]["accuracy"] < 1.0

    # One source carved by split_ratios (as the BBC benchmark is): the splits the trials train and test on (a
    # config's dict iterates its keys sorted, so they carve dev, test, then train), and the same numbers.
    source = _write(tmp_path / "all.jsonl", splits["train"] + splits["dev"] + splits["test"])
    carved = {"format": "classification", "source": source, "split_ratios": {"train": 0.5, "dev": 0.25, "test": 0.25},
              "split_seed": 3, "cache_dir": ""}
    mine = sources.carve_splits(sources.read_jsonl(source), {"dev": 0.25, "test": 0.25, "train": 0.5}, 3)
    trials, _ = pipeline.prepare(baselines._section(carved), load_tokenizer("bundled:minilm-l6"))
    for split, recs in mine.items():
        assert [trials["labels"][i] for i in trials[split]["labels"]] == [r["label"] for r in recs], split
    expected = _sklearn(mine, "accuracy")
    _assert_equal(baselines.compute(carved, names=("tfidf",)), {"TF-IDF + LR": expected["TF-IDF + LR"]})
    assert baselines.compute({**data, "format": "lm"}) == {}  # no baselines for language-model data


def test_baseline_rows_in_a_table(tmp_path):
    splits = {"train": _examples(40, 0), "dev": _examples(20, 1), "test": _examples(20, 2)}
    data = {"format": "classification", "files": {s: _write(tmp_path / f"{s}.jsonl", r) for s, r in splits.items()}}
    db = make_db(tmp_path, DATA, objective={"f1_ignore": []}, data=data)
    table = baselines.add_to_table(tables.build(db.trials()), db.trials())
    expected = baselines.compute(data)
    md = tables.to_markdown(table)
    gold = np.asarray([r["label"] for r in splits["test"]])
    for row, by_split in expected.items():
        # the interval: a percentile bootstrap of the test examples, done here by hand on scikit-learn's own
        # predictions, with the draws stats.interval makes (1000 replicates, seed 0)
        correct = (_sklearn(splits, "accuracy", predictions=True)[row]["test"] == gold).astype(np.float64)
        weights = stats.example_weights(np.random.default_rng(0), 1000, len(gold))
        low, high = 100 * np.percentile(weights @ correct / len(gold), [2.5, 97.5])
        v = f"{100 * by_split['test']['accuracy']:.1f}"
        cell = f"{v} [{low:.1f}, {high:.1f}]"
        assert f"| {row} | {cell} | {cell} | {v} |" in md  # the same data in both columns: no ±, not bold
    assert "Majority class, TF-IDF + LR: computed by the framework" in md
    assert "[low, high]: bootstrap over test examples alone" in md
    rows = [r for r in csv.DictReader(io.StringIO(tables.to_csv(table))) if r["source"] == "baseline"]
    assert len(rows) == 6 and all(r["std"] == "" for r in rows)  # two columns and the average, per baseline
    assert all(float(r["low"]) <= float(r["mean"]) <= float(r["high"]) for r in rows if r["column"] != tables.AVG)


def test_tagging_floor_is_each_words_majority_train_tag(tmp_path):
    def write(name, sentences):
        text = "\n\n".join("\n".join(f"{w}\tX\t{t}" for w, t in s) for s in sentences) + "\n"
        (tmp_path / name).write_text(text)
        return str(tmp_path / name)

    # "aspirin" is B-Chem twice and O once (majority B-Chem); "cold" ties (B-Dis, O): the overall majority, O
    train = write("train.txt", [[("aspirin", "B-Chem"), ("helps", "O")], [("aspirin", "B-Chem"), ("cold", "B-Dis")],
                                [("no", "O"), ("aspirin", "O"), ("cold", "O")]])
    test = write("test.txt", [[("aspirin", "B-Chem"), ("cold", "B-Dis")], [("unseen", "B-Dis"), ("aspirin", "O")]])
    data = {"format": "conll", "files": {"train": train, "test": test}}
    # predicted: [B-Chem O], [O B-Chem]; gold spans: Chem@0, Dis@1, Dis@0 -> 1 correct of 2 predicted, 3 gold
    p, r = 1 / 2, 1 / 3
    assert baselines.compute(data)["Majority class"]["test"]["span_f1"] == pytest.approx(2 * p * r / (p + r))
    got = baselines.intervals(data, metric="span_f1")["Majority class"]
    assert got.value == pytest.approx(2 * p * r / (p + r)) and got.low <= got.value <= got.high


def test_eval_examples_cap_a_split_alike_for_trials_and_floors(tmp_path):
    rows = [{"text": f"word{i % 7} other{i % 3}", "label": "ab"[i % 2]} for i in range(40)]
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    files = {s: str(tmp_path / f"{s}.jsonl") for s in ("train", "dev", "test")}
    cfg = pipeline.data_defaults()
    cfg.files, cfg.eval_examples = files, {"test": 10}
    got = pipeline.records(cfg)
    assert len(got["test"]) == 10 and len(got["dev"]) == 40 and len(got["train"]) == 40
    assert [rows.index(r) for r in got["test"]] == sorted(rows.index(r) for r in got["test"])  # file order
    assert got["test"] == pipeline.records(cfg)["test"]  # seeded
    floor = baselines.intervals({"files": files, "eval_examples": {"test": 10}}, ("majority",))["Majority class"]
    assert floor.examples == 10
    for bad, message in (({"train": 5}, "train's size is data.train_examples"), ({"test": 0}, "whole number")):
        cfg.eval_examples = bad
        with pytest.raises(ConfigError, match=message):
            pipeline.records(cfg)
