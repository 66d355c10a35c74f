"""Active learning: each strategy's scores equal a direct computation, the loop acquires disjoint growing sets and
resumes to the same acquisitions after a kill, and bad settings are one line before anything runs."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from adapt.core.errors import ConfigError
from adapt.experiment import base_config
from adapt.models import load_tokenizer
from adapt.study import active

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = {"0": "market shares profit bank economy".split(), "1": "match goal season club player".split()}


def _probabilities(n=30, c=4, seed=0):
    return np.random.default_rng(seed).dirichlet(np.ones(c) * 0.7, n)  # [N, C]


def test_uncertainty_scores_equal_a_direct_computation():
    p = _probabilities()
    direct = {"least_confidence": [1 - max(row) for row in p],
              "margin": [-(sorted(row)[-1] - sorted(row)[-2]) for row in p],
              "entropy": scipy.stats.entropy(p.T)}  # scipy's own: -sum p log p per column
    rng = np.random.default_rng(0)
    for name, want in direct.items():
        got = active.scores(name, probabilities=p)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        picks = active.choose(name, 5, {"size": len(p), "probabilities": p}, rng)
        assert picks.tolist() == sorted(range(len(p)), key=lambda i: -want[i])[:5]


def test_bald_is_the_entropy_of_the_mean_minus_the_mean_entropy():
    mc = np.stack([_probabilities(seed=t) for t in range(6)])  # [T, N, C]
    want = scipy.stats.entropy(mc.mean(0).T) - np.mean([scipy.stats.entropy(m.T) for m in mc], 0)
    np.testing.assert_allclose(active.scores("bald", mc=mc), want, rtol=1e-12, atol=1e-12)
    assert (want >= -1e-12).all()  # mutual information
    same = np.repeat(mc[:1], 4, 0)  # no disagreement between passes: no information
    np.testing.assert_allclose(active.scores("bald", mc=same), 0.0, atol=1e-12)


def test_margin_ties_go_to_the_earlier_pool_example():
    p = np.array([[0.6, 0.3, 0.1], [0.45, 0.45, 0.1], [0.3, 0.1, 0.6], [0.1, 0.6, 0.3], [0.9, 0.05, 0.05]])
    # margins 0.3, 0, 0.3, 0.3, 0.85 (rows 0, 2, 3 hold the same numbers, so their margins are equal exactly)
    assert active.choose("margin", 4, {"size": 5, "probabilities": p}, None).tolist() == [1, 0, 2, 3]
    assert active.top(np.zeros(4), 3).tolist() == [0, 1, 2]


def test_k_center_greedy_equals_a_direct_computation():
    rng = np.random.default_rng(1)
    labelled, pool = rng.normal(size=(4, 6)), rng.normal(size=(25, 6))
    unit = [x / np.linalg.norm(x) for x in labelled], [x / np.linalg.norm(x) for x in pool]
    centres, picks = list(unit[0]), []
    for _ in range(7):  # the farthest candidate from its nearest centre, in plain loops
        far = [(min(np.linalg.norm(x - c) for c in centres), -i) for i, x in enumerate(unit[1]) if i not in picks]
        i = -max(far)[1]
        picks.append(i)
        centres.append(unit[1][i])
    got = active.choose("coreset", 7, {"size": 25, "labelled_embeddings": labelled, "embeddings": pool}, None)
    assert got.tolist() == picks


def test_area_under_the_curve_and_the_summary():
    import sklearn.metrics

    budgets, values = [10, 20, 40], [0.5, 0.7, 0.8]
    assert active.auc(budgets, values) == pytest.approx(sklearn.metrics.auc(budgets, values) / 30)
    recs = [{"strategy": s, "seed": seed, "rounds": [{"budget": b, "test": {"accuracy": v + d + seed / 100}}
                                                     for b, v in zip(budgets, values)]}
            for s, d in (("random", 0.0), ("margin", 0.05)) for seed in (0, 1, 2)]
    summary = active.summarize(recs)
    margin = summary["rows"]["margin"]
    assert summary["budgets"] == budgets and margin["curve"][20].n == 3
    assert margin["curve"][20].mean == pytest.approx(0.76)
    assert margin["vs_random"].mean == pytest.approx(0.05) and margin["auc"].low < margin["auc"].mean
    assert "| margin |" in active.to_markdown(summary)


def _config(**over):
    c = active.with_section(base_config())
    c.active.update(**over)
    return c


@pytest.mark.parametrize("over, error", [
    ({"strategies": ("margin", "uncertainty")}, "'uncertainty': expected one of random, least_confidence, margin"),
    ({"acquire": 0}, "active.acquire=0: expected an integer >= 1"),
    ({"rounds": -1}, "active.rounds=-1: expected an integer >= 0"),
])
def test_bad_settings_are_one_line(over, error):
    with pytest.raises(ConfigError, match=error.replace("(", r"\(").replace(")", r"\)")):
        active.check(_config(**over))


def test_a_budget_beyond_the_pool_is_one_line():
    with pytest.raises(ConfigError, match=r"active.acquire=10 x active.rounds=4 after active.initial=10 needs 50 "
                                          r"train examples; the pool has 40"):
        active.check_pool(_config(acquire=10, rounds=4, initial=10), 40)
    with pytest.raises(ConfigError, match="active.pool_size=100 is larger than the train split"):
        active.check_pool(_config(pool_size=100), 40)


def test_the_script_exits_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/active.py", "--config=experiments/active_learning/config.py",
                           "--config.active.strategies=('random', 'badge')", f"--workdir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: active.strategies[1]='badge': expected one of random, least_confidence, margin, entropy, bald, "
        "coreset; did you mean bald?"]


# ----- the loop, end to end on a tiny random-init BERT -----

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 8)):
        rows = [{"text": " ".join(rng.choice(WORDS[y], rng.integers(3, 12))), "label": y}
                for y in rng.choice(["0", "1"], n)]
        (d / f"{split}.jsonl").write_text("\n".join(map(json.dumps, rows)))
    return {s: str(d / f"{s}.jsonl") for s in ("train", "test")}


def _loop_config(model, data, **over):
    """Rounds of train.steps=0 (the checkpoint as it is): the loop's bookkeeping, not the training, is tested."""
    c = _config(initial=4, acquire=3, rounds=2, mc_samples=2, **over)
    c.model.name = model
    c.data.files = dict(data)
    c.data.update(max_length=32, cache_dir="")
    c.eval.update(batch_size=64, splits=("test",))
    c.train.update(batch_size=8, steps=0, epochs=0.0)
    c.train.early_stopping.metric = ""
    c.mesh.shape = (-1, 1, 1)
    return c


class Killed(Exception):
    """Stands for a kill inside a round: its model trained, its acquisitions not yet saved."""


@pytest.mark.slow
def test_the_loop_grows_disjoint_sets_and_resumes_to_the_same_acquisitions(small_bert, data, tmp_path, monkeypatch,
                                                                          compile_cache):
    config = _loop_config(small_bert, data, warm_start=True)
    whole = active.run_loop(config, str(tmp_path / "whole"), "bald", 0)
    started_from = json.loads((tmp_path / "whole" / "round2" / "config.json").read_text())["init_from"]
    assert started_from == str(tmp_path / "whole" / "round1" / "export")  # warm start: the last round's model
    initial = whole["initial"]
    acquired = [e["acquired"] for e in whole["rounds"]]
    assert [e["budget"] for e in whole["rounds"]] == [4, 7, 10] and acquired[-1] == []
    everything = initial + acquired[0] + acquired[1]
    assert len(set(everything)) == 10 and set(everything) <= set(range(40))  # disjoint, from the train split
    labels = [json.loads(line)["label"] for line in open(data["train"])]
    assert {labels[i] for i in initial} == {"0", "1"}  # stratified: both classes from the start
    assert all(0 <= e["test"]["accuracy"] <= 1 for e in whole["rounds"])

    # Killed between rounds 0 and 1: round 0 recorded (atomically), nothing of round 1 yet.
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "whole", killed, ignore=shutil.ignore_patterns("round1", "round2"))
    record = json.loads((killed / active.RECORD).read_text())
    (killed / active.RECORD).write_text(json.dumps({**record, "rounds": record["rounds"][:1]}))
    real = active.pool_outputs

    def killed_inside_the_round(*args):  # round 1's model trained and evaluated, its acquisitions not saved
        raise Killed

    monkeypatch.setattr(active, "pool_outputs", killed_inside_the_round)
    with pytest.raises(Killed):
        active.run_loop(config, str(killed), "bald", 0)
    assert len(json.loads((killed / active.RECORD).read_text())["rounds"]) == 1
    monkeypatch.setattr(active, "pool_outputs", real)
    resumed = active.run_loop(config, str(killed), "bald", 0)
    assert [e["acquired"] for e in resumed["rounds"]] == acquired
    for a, b in zip(whole["rounds"], resumed["rounds"]):
        assert a["test"] == pytest.approx(b["test"], abs=1e-6)

    # The curves' floors, fit at each budget on that round's labelled set (the loop read as random's)
    os.makedirs(tmp_path / "floors" / "random")
    os.symlink(tmp_path / "whole", tmp_path / "floors" / "random" / "seed0")
    floors = {r["strategy"]: r
              for r in active.floor_records([{**whole, "strategy": "random"}], str(tmp_path / "floors"))}
    assert set(floors) == {"Majority class (random's labels)", "TF-IDF + LR (random's labels)"}
    assert [e["budget"] for e in floors["TF-IDF + LR (random's labels)"]["rounds"]] == [4, 7, 10]
    test = [json.loads(line)["label"] for line in open(data["test"])]
    for entry in floors["Majority class (random's labels)"]["rounds"]:  # the labelled set's most common label
        train = [json.loads(line)["label"] for line in open(tmp_path / "whole" / f"round{entry['round']}" / "data" /
                                                          "train.jsonl")]
        assert len(train) == entry["budget"]
        top = min(set(train), key=lambda y: (-train.count(y), y))  # a tie goes to the first label, sorted
        assert entry["test"]["accuracy"] == pytest.approx(test.count(top) / len(test))


@pytest.mark.slow
def test_pool_outputs_equal_transformers(small_bert, data, tmp_path, compile_cache):
    """Without dropout the MC passes are the eval probabilities; both and the [CLS] embeddings equal the
    transformers model's on the pool (train.steps=0: the checkpoint as it is)."""
    import jax
    import torch
    import transformers

    from adapt.experiment.trial import start_trial

    config = _loop_config(small_bert, data)
    config.model.update(hidden_dropout=0.0, attention_dropout=0.0)
    rec = [json.loads(line) for line in open(data["train"])]
    trial_config = active.round_config(config, str(tmp_path), {"train": rec}, [0, 1, 2, 3], list(range(4, 40)), 0,
                                       None, {"test": data["test"]})
    started = start_trial(trial_config, str(tmp_path))
    started.trial.trainer.fit(started.train, started.eval_data)
    state = started.trial.trainer.best_state()
    key = jax.random.PRNGKey(0)
    probs = active.pool_outputs(started.trial, state, "margin", key)["probabilities"]
    mc = active.pool_outputs(started.trial, state, "bald", key)["mc"]
    emb = active.pool_outputs(started.trial, state, "coreset", key)

    tok = load_tokenizer(small_bert)
    ref = transformers.BertForSequenceClassification.from_pretrained(small_bert).eval()
    texts = [r["text"] for r in rec]
    with torch.no_grad():
        enc = tok(texts, padding=True, return_tensors="pt")
        out = ref(**enc, output_hidden_states=True)
    want = torch.softmax(out.logits, -1).numpy()
    # the label vocabulary is sorted ("0", "1"): the model's classes in the same order
    np.testing.assert_allclose(probs, want[4:], atol=1e-5)
    np.testing.assert_allclose(mc, np.stack([want[4:]] * 2), atol=1e-5)
    cls = out.hidden_states[-1][:, 0].numpy()
    np.testing.assert_allclose(emb["embeddings"], cls[4:], atol=1e-4)
    np.testing.assert_allclose(emb["labelled_embeddings"], cls[:4], atol=1e-4)
