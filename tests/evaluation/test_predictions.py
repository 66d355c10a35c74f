"""Per-example predictions: ``predictions/<split>.jsonl`` of every evaluated split (in order, the padding rows of
the last batch dropped), the per-class metrics and confusion matrix in ``results.json`` (checked against
scikit-learn on the written predictions), the results database, and ``scripts/report.py``."""

import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from adapt.core.errors import AdaptError
from adapt.evaluation import predictions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LABELS = ["animal", "colour", "number"]
WORDS = {"animal": ["cat", "dog", "horse", "cow"], "colour": ["red", "blue", "green", "black"],
         "number": ["one", "two", "three", "four"]}


def _sklearn(gold, pred, labels):
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
    return ({name: {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]} for i, name in enumerate(labels)},
            confusion_matrix(gold, pred, labels=labels).tolist())


def _check_against_sklearn(extra, recs, labels):
    gold, pred = predictions.pairs(recs)
    per_class, matrix = _sklearn(gold, pred, labels)
    assert extra["confusion"] == {"labels": labels, "matrix": matrix}
    assert extra["per_class"].keys() == per_class.keys()
    for name, m in per_class.items():
        assert extra["per_class"][name] == pytest.approx(m, abs=1e-12), name


def test_records_and_per_class_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c", "d"]  # "d": never gold, never predicted (0 by zero_division); "c" never predicted
    probs = rng.dirichlet(np.ones(4), 40).astype(np.float32)
    probs[:, 2:] *= 0.01
    rows = [{"labels": np.int32(rng.integers(0, 3)), "probabilities": p, "prediction": np.int32(p.argmax())}
            for p in probs]
    recs = predictions.records(rows, labels)
    assert [r["index"] for r in recs] == list(range(40))
    assert recs[3]["gold"] == labels[rows[3]["labels"]] and recs[3]["prediction"] == labels[probs[3].argmax()]
    assert recs[3]["probabilities"] == [round(float(p), 6) for p in probs[3]]
    _check_against_sklearn(predictions.per_class(recs, labels), recs, labels)

    # token classification: the labelled positions only, tag against tag
    tags = ["B-X", "I-X", "O"]
    gold = np.asarray([-100, 0, 1, -100, 2, -100], np.int32)
    token_rows = [{"labels": gold, "prediction": np.asarray([2, 0, 2, 1, 2, 0], np.int32)},
                  {"labels": np.asarray([-100, 2, 0, -100], np.int32),
                   "prediction": np.asarray([0, 0, 0, 0], np.int32)}]
    token_recs = predictions.records(token_rows, tags)
    assert token_recs == [{"index": 0, "gold": ["B-X", "I-X", "O"], "prediction": ["B-X", "O", "O"]},
                          {"index": 1, "gold": ["O", "B-X"], "prediction": ["B-X", "B-X"]}]
    _check_against_sklearn(predictions.per_class(token_recs, tags), token_recs, tags)

    # regression: numbers, no per-class metrics
    reg = predictions.records([{"labels": np.float32(2.5), "prediction": np.float32(1.75)}], None)
    assert reg == [{"index": 0, "gold": 2.5, "prediction": 1.75}] and not predictions.is_classification(reg)


def _split(folder, name, n, seed):
    rng = np.random.RandomState(seed)
    lines = []
    for _ in range(n):
        label = LABELS[rng.randint(3)]
        words = list(rng.choice(WORDS[label], 3)) + list(rng.choice(["the", "a", "and", "it"], 3))
        rng.shuffle(words)
        lines.append({"text": " ".join(words), "label": label})
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path), lines


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished sequence-classification trial of a tiny random BERT (the bundled MiniLM tokenizer): dev (13)
    and test (11) evaluated in batches of 8, so each last batch has padding rows."""
    import torch
    import transformers

    from adapt.experiment import base_config, run_trial
    from adapt.models import load_tokenizer

    tmp = tmp_path_factory.mktemp("predictions")
    tok = load_tokenizer("bundled:minilm-l6")
    model = tmp / "model"
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=32)).save_pretrained(model)
    tok.save_pretrained(model)
    files, data = {}, {}
    for name, n, seed in (("train", 32, 0), ("dev", 13, 1), ("test", 11, 2)):
        files[name], data[name] = _split(tmp, name, n, seed)
    c = base_config()
    c.model.name = str(model)
    c.data.files = files
    c.data.update(max_length=16, cache_dir="")
    c.optimizer.update(learning_rate=3e-3)
    c.train.update(batch_size=8, steps=2, eval_every=2, log_every=2)
    c.train.early_stopping.metric = "dev/accuracy"  # dev's metrics come from the fit's best evaluation
    c.eval.batch_size = 8
    c.mesh.shape = (-1, 1, 1)  # data parallel over the 8 test devices: compiles faster than FSDP
    workdir = tmp / "run"
    results = run_trial(c, str(workdir))
    return workdir, results, data


@pytest.mark.slow
def test_a_finished_trial_writes_predictions_and_per_class_metrics(finished_run, tmp_path):
    workdir, results, data = finished_run
    saved = json.loads((workdir / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for split in ("dev", "test"):
        recs = [json.loads(line) for line in (workdir / "predictions" / f"{split}.jsonl").read_text().splitlines()]
        assert len(recs) == len(data[split])  # the padding rows are dropped
        assert [r["index"] for r in recs] == list(range(len(recs)))
        assert [r["gold"] for r in recs] == [x["label"] for x in data[split]]  # in the split's order
        for r in recs:
            assert set(r) == {"index", "gold", "prediction", "probabilities"}
            assert len(r["probabilities"]) == 3 and sum(r["probabilities"]) == pytest.approx(1, abs=1e-5)
            # the argmax of the logits: of the rounded probabilities, one within rounding of the largest
            assert r["probabilities"][LABELS.index(r["prediction"])] >= max(r["probabilities"]) - 1e-6
        metrics = results[split]
        assert {"loss", "accuracy", "micro_f1", "macro_f1", "count"} <= set(metrics)  # the keys as before
        assert metrics["accuracy"] == pytest.approx(np.mean([r["gold"] == r["prediction"] for r in recs]), abs=1e-6)
        _check_against_sklearn(metrics, recs, LABELS)
        assert (workdir / "predictions" / f"{split}_confusion.png").stat().st_size > 0

    # the results database: the per-class numbers as metrics, the confusion matrix (lists) left out
    from adapt.analysis.results import ResultsDB

    db = ResultsDB(str(tmp_path / "results.db"))
    db.finish("t", results, {})
    rows = {(r["split"], r["metric"]): r["value"] for r in db.conn.execute("SELECT * FROM metrics")}
    assert rows[("test", "accuracy")] == results["test"]["accuracy"]
    assert rows[("test", "per_class/colour/f1")] == results["test"]["per_class"]["colour"]["f1"]
    assert not any("confusion" in m for _, m in rows)
    db.close()


@pytest.mark.slow
def test_report_on_a_run_folder_and_a_results_database(finished_run, tmp_path):
    workdir, results, data = finished_run
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "report.py"), str(workdir), "--top=3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "test, 11 examples" in text and "most confused" in text and "most confident mistakes" in text
    assert all(name in text for name in LABELS)
    wrong = [i for i, line in enumerate((workdir / "predictions" / "test.jsonl").read_text().splitlines())
             if json.loads(line)["gold"] != json.loads(line)["prediction"]]
    if wrong:  # a mistake is quoted with its text
        assert any(data["test"][i]["text"] in text for i in wrong)

    # in-process: a results database (the best trial per condition) and a folder without predictions
    script = runpy.run_path(os.path.join(ROOT, "scripts", "report.py"))
    from adapt.analysis.results import ResultsDB

    db = ResultsDB(str(tmp_path / "results.db"))
    db.conn.execute("INSERT INTO trials (id, sweep, stage, condition, overrides, workdir, status) "
                    "VALUES ('t1', 's', 'finetune', 'baseline', '{}', ?, 'done')", (str(workdir),))
    db.finish("t1", results, {})
    db.close()
    [(title, trial)] = script["best_trials"](str(tmp_path / "results.db"), "dev", "accuracy")
    assert title.startswith("baseline (trial t1") and trial["workdir"] == str(workdir)
    assert "dev, 13 examples" in script["report"](trial["workdir"], "dev", 3, {}, title)
    with pytest.raises(AdaptError, match="no finished trial has a dev/macro_f2"):
        script["best_trials"](str(tmp_path / "results.db"), "dev", "macro_f2")
    with pytest.raises(AdaptError, match=r"no predictions for split 'train'; there are: dev, test"):
        script["report"](str(workdir), "train", 3, {})
