"""Multi-task fine-tuning: one backbone, a head per task (classification and tagging mixed), batches drawn per task."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from adapt.core.errors import ConfigError
from adapt.experiment import base_config, configs, run_trial
from adapt.features import multitask
from adapt.training.objectives import IGNORE

WORDS = {"a": "market shares profit bank economy".split(), "b": "match goal season club player".split(),
         "c": "film actor award stage music".split()}


@pytest.fixture(scope="module")
def tasks_data(tmp_path_factory):
    """A 3-label classification task (jsonl) and a BIO tagging task (CoNLL columns): {name: {split: path}}."""
    d = tmp_path_factory.mktemp("mt_data")
    rng = np.random.default_rng(0)
    out = {"topic": {}, "ner": {}}
    for split, n in (("train", 40), ("dev", 12), ("test", 12)):
        rows = [{"text": " ".join(rng.choice(WORDS[y], rng.integers(3, 10))), "label": y}
                for y in rng.choice(list(WORDS), n)]
        (d / f"topic_{split}.jsonl").write_text("\n".join(map(json.dumps, rows)))
        out["topic"][split] = str(d / f"topic_{split}.jsonl")
        sents = []
        for _ in range(n // 2):
            words = list(rng.choice(WORDS["a"] + WORDS["b"], rng.integers(3, 9)))
            tags = ["B-Org" if w in ("bank", "club") else "O" for w in words]
            sents.append("\n".join(f"{w}\tX\tO\t{t}" for w, t in zip(words, tags)))
        (d / f"ner_{split}.txt").write_text("\n\n".join(sents) + "\n")
        out["ner"][split] = str(d / f"ner_{split}.txt")
    return out


def _config(model, data, **over):
    c = base_config()
    c.model.name = model
    c.multitask.tasks = {"topic": {"files": data["topic"]},
                         "ner": {"files": data["ner"], "format": "conll", "weight": 0.5}}
    c.data.update(max_length=32, cache_dir="")
    c.eval.update(splits=("dev", "test"), batch_size=8)
    c.optimizer.update(learning_rate=3e-3, warmup_steps=0)
    c.train.update(batch_size=8, steps=6, eval_every=3, log_every=1)
    c.train.early_stopping.update(metric="dev/mean_score", mode="max")
    c.mesh.shape = (-1, 1, 1)
    return configs.apply_overrides(c, over)


def test_sampling_proportions_match_the_temperature_formula(tasks_data, base_bert):
    sizes = {"x": 900, "y": 100, "z": 25}
    for sampling, t in (("proportional", 1.0), ("temperature", 2.0), ("temperature", 5.0), ("equal", 1.0)):
        p = multitask.sampling_probs(sizes, sampling, t)
        exponent = {"proportional": 1.0, "temperature": 1 / t, "equal": 0.0}[sampling]
        expected = np.array([n ** exponent for n in sizes.values()])
        np.testing.assert_allclose(list(p.values()), expected / expected.sum(), rtol=1e-12)
    # the stream draws each batch's task with those probabilities (T = 2 over two tasks of 20 and 20 x 4 rows)
    from adapt.data.batches import Mixture, RowStream

    arrays = {"input_ids": [np.arange(3)] * 20, "labels": np.zeros(20, np.int32)}
    big = {"input_ids": [np.arange(3)] * 80, "labels": np.zeros(80, np.int32)}
    probs = multitask.sampling_probs({"small": 20, "big": 80}, "temperature", 2.0)  # 1/3, 2/3
    streams = {n: RowStream({**a, "task": np.full(len(a["labels"]), j)}, seed=j, name=n)
               for j, (n, a) in enumerate((("small", arrays), ("big", big)))}
    mixture = Mixture(streams, probs, 4, seed=0, per_batch=True)
    tasks = np.array([np.unique(mixture.next_batch()["task"]) for _ in range(3000)])
    assert tasks.shape == (3000, 1)  # one task per batch
    share, p = float(np.mean(tasks == 1)), probs["big"]
    assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / 3000), (share, p)


def test_one_step_trains_heads_of_different_sizes_and_kinds(base_bert):
    """A batch holding rows of a 3-class sequence task and a 4-tag token task: one step's gradient is the loss
    weights' combination of each task's gradient alone (sums over rows, divided by the labels counted)."""
    from adapt.models import from_pretrained
    from adapt.models.multihead import MultiHead
    from adapt.training.objectives import SequenceClassification, TokenClassification
    from adapt.training.state import TrainState, split_model
    from adapt.training.steps import make_train_step

    off = dict(hidden_dropout=0.0, attention_dropout=0.0)  # each row's outputs then depend on that row alone
    rel = from_pretrained(base_bert, task="sequence_classification", labels=list("xyz"), **off)
    tag = from_pretrained(base_bert, task="token_classification", labels=["B-E", "I-E", "O", "B-F"], **off)
    multi = MultiHead.combine({"rel": rel, "tag": tag})
    assert {"tasks.rel.classifier", "tasks.tag.classifier", "bert.pooler"} == set(multi.head_prefixes())
    objective = multitask.objectives.PerHead(
        (("rel", SequenceClassification(3)), ("tag", TokenClassification(("B-E", "I-E", "O", "B-F")))),
        (1.0, 0.25), ("macro_f1", "span_f1"))
    static, params, frozen = split_model(multi)
    params, frozen = nnx.to_pure_dict(params), nnx.to_pure_dict(frozen)
    step = jax.jit(make_train_step(static, objective, optax.sgd(1.0)))
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 200, (4, 6)).astype(np.int32)
    rel = np.array([2, 0, IGNORE, IGNORE], np.int32)  # rows 0-1 are the sequence task's, rows 2-3 the tagger's
    tag = np.full((4, 6), IGNORE, np.int32)
    tag[2:, :5] = rng.integers(0, 4, (2, 5))

    def grads(rows):
        batch = {"input_ids": ids[rows], "attention_mask": np.ones_like(ids[rows]),
                 "labels": {"rel": rel[rows], "tag": tag[rows]}}
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen,
                           opt_state=optax.sgd(1.0).init(params), rng=jax.random.PRNGKey(0), anchors={})
        new, metrics = step(state, jax.tree.map(jnp.asarray, batch))
        return jax.tree.map(lambda a, b: np.asarray(a - b), params, new.params), metrics  # -grad

    both, m = grads([0, 1, 2, 3])
    first, m1 = grads([0, 1])
    second, m2 = grads([2, 3])
    assert float(m["weight"]) == 2 + 10 and float(m1["weight"]) == 2 and float(m2["weight"]) == 10
    np.testing.assert_allclose(float(m["loss_sum"]), float(m["rel"]["loss_sum"]) + 0.25 * float(m["tag"]["loss_sum"]),
                               rtol=1e-6)
    combined = jax.tree.map(lambda a, b: (2 * a + 10 * b) / 12, first, second)
    for got, want in zip(jax.tree.leaves(both), jax.tree.leaves(combined)):
        np.testing.assert_allclose(got, want, atol=2e-7)
    heads = both["tasks"]
    kernels = {name: heads[name]["classifier"]["kernel"] for name in ("rel", "tag")}
    assert all(np.abs(k).max() > 0 for k in kernels.values())
    assert kernels["tag"].shape == (32, 4) and kernels["rel"].shape == (32, 3)
    assert np.abs(first["tasks"]["tag"]["classifier"]["kernel"]).max() == 0  # a head sees no gradient from other tasks


@pytest.mark.slow
def test_per_task_metrics_equal_each_head_alone_and_export_fine_tunes_further(base_bert, tasks_data, tmp_path):
    out = run_trial(_config(base_bert, tasks_data, **{"export.model": True, "eval.splits": ("test",), "train.steps": 4,
                                                      "train.eval_every": 0, "train.early_stopping.metric": ""}),
                    str(tmp_path / "multi"))
    export = tmp_path / "multi" / "export"
    assert json.loads((export / multitask.LISTING).read_text()) == {"tasks": ["ner", "topic"]}
    for name, metric, task in (("topic", "macro_f1", "sequence_classification"),
                               ("ner", "span_f1", "token_classification")):
        assert 0.0 <= out["test"][f"{name}/{metric}"] <= 1.0
        files = tasks_data[name]
        # the task's exported model evaluated alone, as a later single-task trial starts from it (train.steps 0)
        alone = _config(base_bert, tasks_data, **{"init_from": str(export), "init_task": name, "train.steps": 0,
                                                   "train.epochs": 0.0, "model.task": task, "eval.splits": ("test",)})
        alone.multitask.tasks = {}
        alone.data.files = files
        alone.data.format = "conll" if name == "ner" else "classification"
        alone.train.early_stopping.metric = ""
        single = run_trial(alone, str(tmp_path / f"alone_{name}"))
        for key, value in single["test"].items():
            if isinstance(value, float) and key != "loss":
                assert out["test"][f"{name}/{key}"] == pytest.approx(value, abs=1e-6), (name, key)
    assert out["test"]["mean_score"] == pytest.approx((out["test"]["topic/macro_f1"] + out["test"]["ner/span_f1"]) / 2)
    metrics = [json.loads(line) for line in open(tmp_path / "multi" / "metrics.jsonl")]
    shares = [m for m in metrics if "train/share/topic" in m]
    assert shares and 0 < shares[-1]["train/share/topic"] < 1  # both tasks drew batches


def test_resumed_stream_draws_the_same_batches(base_bert, tasks_data):
    from adapt.models import load_tokenizer

    config = _config(base_bert, tasks_data, **{"multitask.sampling": "equal"})
    data = multitask.prepare_tasks(multitask.specs(config), load_tokenizer(base_bert))
    stream = data.train_stream(config)
    for _ in range(3):
        stream.next_batch()
    saved = json.loads(json.dumps(stream.state()))
    after = [stream.next_batch() for _ in range(4)]
    again = data.train_stream(config)
    again.restore(saved)
    for a, b in zip(after, [again.next_batch() for _ in range(4)]):
        assert jax.tree.all(jax.tree.map(np.array_equal, a, b))
    kinds = {k: v.ndim for k, v in after[0]["labels"].items()}
    assert kinds == {"topic": 1, "ner": 2}


@pytest.mark.parametrize("over, message", [
    ({"multitask.tasks": {"loss": {"benchmark": "bbc"}}}, r"multitask.tasks.loss: a task name must be a word"),
    ({"multitask.tasks": {"t": {"benchmark": "bbc", "wieght": 2}}},
     r"multitask.tasks.t.wieght: unknown key; did you mean multitask.tasks.t.weight\?"),
    ({"multitask.tasks": {"t": {"benchmark": "bbc", "weight": 0}}},
     r"multitask.tasks.t.weight=0: expected a number > 0"),
    ({"multitask.sampling": "uniform"}, r"multitask.sampling='uniform': expected one of proportional"),
    ({"multitask.tasks": {"t": {"benchmark": "bbc", "task": "causal_lm"}}}, r"multitask.tasks.t.task='causal_lm'"),
    ({"eval.sets": {"x": {"benchmark": "bbc"}}}, r"eval.sets with multitask.tasks"),
])
def test_bad_multitask_settings_are_one_line_errors(base_bert, tasks_data, tmp_path, over, message):
    with pytest.raises(ConfigError, match=message):
        run_trial(_config(base_bert, tasks_data, **over), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_init_task_must_name_a_task_of_the_export(tmp_path):
    (tmp_path / multitask.LISTING).write_text(json.dumps({"tasks": ["a", "b"]}))
    c = base_config()
    c.init_from = str(tmp_path)
    c.data.benchmark = "chemprot"
    with pytest.raises(ConfigError, match=r"init_task='chemprot': init_from=.* is a multi-task export of tasks a, b"):
        multitask.init_source(c)
    c.init_task = "b"
    assert multitask.init_source(c) == str(tmp_path / "b")
