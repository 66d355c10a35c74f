"""Knowledge distillation (adapt.features.distill): the loss against a hand computation, alpha = 1 against plain
fine-tuning, a teacher that never moves, a student initialised from the teacher's layers, and the one-line refusals."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from adapt.core.errors import ConfigError
from adapt.experiment import base_config, configs
from adapt.experiment.trial import build_trial, start_trial
from adapt.features import distill
from adapt.training.objectives import IGNORE, CausalLM, SequenceClassification
from adapt.training.state import COMPANION

WORDS = {"business": "market shares profit bank economy".split(), "sport": "match goal season club player".split()}
LABELS = sorted(WORDS)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _hand_loss(student, teacher, targets, valid, alpha, t):
    """alpha * mean cross-entropy + (1 - alpha) * T^2 * mean KL(teacher_T || student_T), over the valid positions."""
    ce = -np.take_along_axis(_log_softmax(student), targets[..., None], -1)[..., 0]
    log_t, log_s = _log_softmax(teacher / t), _log_softmax(student / t)
    kl = (np.exp(log_t) * (log_t - log_s)).sum(-1)
    n = valid.sum()
    return alpha * ce[valid].sum() / n + (1 - alpha) * t ** 2 * kl[valid].sum() / n, kl[valid].sum() / n


def test_the_loss_equals_a_hand_computation():
    rng = np.random.default_rng(0)
    # classification: [B, C] logits, one padding row
    s, t = rng.normal(size=(5, 3)).astype(np.float32) * 3, rng.normal(size=(5, 3)).astype(np.float32) * 3
    labels = np.array([0, 2, 1, IGNORE, 2])
    obj = distill.Distillation(SequenceClassification(num_labels=3), alpha=0.3, temperature=2.5)
    sums, _ = obj.loss((s, t), {"labels": labels})
    want, want_kl = _hand_loss(s, t, np.maximum(labels, 0), labels != IGNORE, 0.3, 2.5)
    np.testing.assert_allclose(float(sums["loss_sum"] / sums["weight"]), want, rtol=1e-5)
    metrics = obj.summarize(jax.device_get(sums))
    np.testing.assert_allclose(metrics["kl"], want_kl, rtol=1e-5)
    assert metrics["loss"] == pytest.approx(float(obj.task.loss(s, {"labels": labels})[0]["loss_sum"]) / 4, rel=1e-6)
    # causal LM: [B, T, V]; a packed row (documents 1, 2) and a padded, loss-masked one; position t predicts t+1
    s, t = rng.normal(size=(2, 6, 7)).astype(np.float32), rng.normal(size=(2, 6, 7)).astype(np.float32)
    ids = rng.integers(0, 7, (2, 6))
    batch = {"input_ids": ids, "attention_mask": np.array([[1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 0, 0]]),
             "loss_mask": np.array([[1] * 6, [0, 0, 1, 1, 1, 1]])}
    valid = np.array([[1, 1, 0, 1, 1, 0], [0, 1, 1, 0, 0, 0]], bool)  # the next token is a target of the same doc
    targets = np.concatenate([ids[:, 1:], np.zeros((2, 1), int)], 1)
    obj = distill.Distillation(CausalLM(), alpha=0.5, temperature=2.0)
    sums, _ = obj.loss((s, t), batch)
    assert float(sums["weight"]) == valid.sum()
    np.testing.assert_allclose(float(sums["loss_sum"] / sums["weight"]), _hand_loss(s, t, targets, valid, 0.5, 2.0)[0],
                               rtol=1e-5)
    # evaluation gives the student's outputs alone: the task's loss
    assert obj.loss(s, batch)[0]["loss_sum"] == CausalLM().loss(s, batch)[0]["loss_sum"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("dev", 8)):
        rows = [{"text": " ".join(rng.choice(WORDS[y], rng.integers(3, 10))), "label": y}
                for y in rng.choice(LABELS, n)]
        (d / f"{split}.jsonl").write_text("\n".join(map(json.dumps, rows)))
    return {s: str(d / f"{s}.jsonl") for s in ("train", "dev")}


def _classifier(folder, tokenizer="bundled:minilm-l6", layers=3):
    """A random-init BERT classifier over the data's labels (a stand-in for a fine-tuned teacher)."""
    import torch
    import transformers

    from adapt.models import load_tokenizer

    tok = load_tokenizer(tokenizer)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
        max_position_embeddings=64, id2label=dict(enumerate(LABELS)))).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return _classifier(tmp_path_factory.mktemp("teacher"), layers=1)


@pytest.fixture(scope="module")
def deep_teacher(tmp_path_factory):
    return _classifier(tmp_path_factory.mktemp("deep_teacher"), layers=3)


def _config(model, data, **over):
    c = base_config()
    c.model.name = model
    c.data.files = dict(data)
    c.data.update(max_length=16, cache_dir="")
    c.eval.update(splits=("dev",), batch_size=8)
    c.optimizer.update(learning_rate=3e-3, warmup_steps=0)
    c.train.update(batch_size=8, steps=3, log_every=1)
    c.mesh.shape = (-1, 1, 1)
    return configs.apply_overrides(c, over)


def _host(tree):
    return jax.tree.map(np.asarray, tree)


def _train(config, workdir):
    """Train a trial as run_trial does (without its final evaluation); returns (its model's state before training,
    host copies, and the final train state)."""
    started = start_trial(config, workdir)
    before = _host(nnx.to_pure_dict(nnx.state(started.trial.trainer.model)))
    return before, started.trial.trainer.fit(started.train, started.eval_data).state


def _differ(a, b) -> bool:
    return any(jax.tree.leaves(jax.tree.map(lambda x, y: not np.array_equal(x, y), a, b)))


def test_alpha_one_trains_as_plain_fine_tuning_and_the_teacher_never_moves(teacher, data, tmp_path):
    _, plain = _train(_config(teacher, data), str(tmp_path / "plain"))
    # The student is model.name (here the teacher's checkpoint itself): with alpha = 1 only the task loss trains it.
    before, state = _train(_config(teacher, data, **{"distill.teacher": teacher, "distill.alpha": 1.0}),
                           str(tmp_path / "distilled"))
    assert set(state.params) == set(plain.params) and COMPANION in state.frozen  # the teacher rides in frozen
    assert _differ(_host(state.params), {k: before[k] for k in state.params})  # the student trained...
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), _host(state.params),
                 _host(plain.params))  # ...exactly as alone
    assert not _differ(_host(state.frozen[COMPANION]), before[COMPANION])  # bitwise: the teacher never moved
    logged = [json.loads(line) for line in (tmp_path / "distilled" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train/kl"] > 0 for r in logged if "train/kl" in r) and len(logged) == 3  # the teacher ran


def _equal(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and not _differ(_host(a), _host(b))


def test_a_student_keeps_the_chosen_teacher_layers_and_exports_alone(deep_teacher, data, tmp_path, tiny_llama):
    import torch
    import transformers

    from adapt.models import from_pretrained, save_pretrained

    config = _config(deep_teacher, data, **{"distill.teacher": deep_teacher, "distill.student.layers": (0, 2)})
    trial = build_trial(config, str(tmp_path / "run"))
    student = trial.trainer.model
    s = nnx.to_pure_dict(nnx.state(student, nnx.Param))
    t = nnx.to_pure_dict(nnx.state(getattr(student, COMPANION).model, distill.TeacherWeight))
    assert sorted(s["bert"]["encoder"]["layer"]) == [0, 1] and sorted(t["bert"]["encoder"]["layer"]) == [0, 1, 2]
    for kept, source in enumerate((0, 2)):
        assert _equal(s["bert"]["encoder"]["layer"][kept], t["bert"]["encoder"]["layer"][source])
    assert _equal(s["bert"]["embeddings"], t["bert"]["embeddings"]) and _equal(s["classifier"], t["classifier"])
    assert _equal(s["bert"]["pooler"], t["bert"]["pooler"])
    # The export is the student alone: a plain 2-layer HF classifier with the student's logits.
    folder = save_pretrained(trial.method.merge(student), str(tmp_path / "export"), tokenizer=trial.tokenizer)
    ref = transformers.BertForSequenceClassification.from_pretrained(folder).eval()
    assert ref.config.num_hidden_layers == 2 and ref.config.id2label == dict(enumerate(LABELS))
    ids = np.array([[101, 2000, 2001, 2002, 102]])
    with torch.no_grad():
        want = ref(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(student(input_ids=ids)), want, atol=1e-5)
    # A decoder too: the layers of the family's numbered stack, everything else as it is.
    llama = from_pretrained(tiny_llama, task="causal_lm")
    short = distill.keep_layers(llama, (1,))
    assert short.cfg.num_layers == 1
    s, t = nnx.to_pure_dict(nnx.state(short, nnx.Param)), nnx.to_pure_dict(nnx.state(llama, nnx.Param))
    assert _equal(s["model"]["layers"][0], t["model"]["layers"][1]) and _equal(s["lm_head"], t["lm_head"])
    assert _equal(s["model"]["embed_tokens"], t["model"]["embed_tokens"])
    assert _equal(s["model"]["norm"], t["model"]["norm"])
    # Stacked layers (model.scan_layers): the student is stacked too, its [1, ...] the teacher's slice 1.
    stacked = distill.keep_layers(from_pretrained(tiny_llama, task="causal_lm", scan_layers=True), (1,))
    assert stacked.cfg.scan_layers and stacked.model.layers.mlp.up_proj.kernel.shape[0] == 1
    kept = nnx.to_pure_dict(nnx.state(stacked, nnx.Param))["model"]["layers"]
    assert _equal(kept, jax.tree.map(lambda x: x[None], s["model"]["layers"][0]))


BAD = [({"distill.alpha": 1.5}, r"^distill.alpha=1.5: expected a number in \[0, 1\] \(1: the task loss alone\)"),
       ({"distill.temperature": 0.0}, r"^distill.temperature=0.0: expected a number > 0"),
       ({"distill.student.layers": (2, 1)}, r"^distill.student.layers=\(2, 1\); expected distinct teacher layer"),
       ({"distill.student.layers": (0,), "distill.student.config": {"hidden_size": 16}},
        r"^distill.student.layers and distill.student.config are both set"),
       ({"train.loss_chunks": 4}, r"^train.loss_chunks=4 with distill.teacher: distillation's KL reads every logit"),
       ({"distill.student.layers": (0, 5)}, r"^distill.student.layers=\(0, 5\): the teacher has 3 layers \(0..2\)"),
       ({"distill.student.config": {"vocab_size": 64, "num_hidden_layers": 1}},
        r"^the student's vocabulary has 64 entries, the teacher's 30522")]


@pytest.mark.parametrize("over,message", BAD, ids=["alpha", "temperature", "order", "both", "chunks", "range", "vocab"])
def test_bad_settings_are_one_line_errors(deep_teacher, data, tmp_path, over, message):
    with pytest.raises(ConfigError, match=message) as e:
        build_trial(_config(deep_teacher, data, **{"distill.teacher": deep_teacher, **over}), str(tmp_path))
    assert "\n" not in str(e.value)


def test_a_teacher_that_does_not_fit_the_task_is_refused(small_bert, data, tmp_path):
    from transformers import BertTokenizerFast

    with pytest.raises(ConfigError, match=r"^distill.student is set but distill.teacher is empty"):
        build_trial(_config(small_bert, data, **{"distill.student.layers": (0,)}), str(tmp_path))
    with pytest.raises(ConfigError, match=r"its labels \['LABEL_0', 'LABEL_1'\] differ from the data's "
                                          r"\['business', 'sport'\]$"):
        build_trial(_config(small_bert, data, **{"distill.teacher": small_bert}), str(tmp_path))
    with pytest.raises(ConfigError, match=r"has no trained sequence_classification head \(loading initialised "):
        build_trial(_config(small_bert, data, **{"distill.teacher": "bundled:minilm-l6"}), str(tmp_path))
    other = tmp_path / "other"  # a teacher whose tokenizer is not the student's
    other.mkdir()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (other / "vocab.txt").write_text("\n".join(specials + sum(WORDS.values(), [])))
    BertTokenizerFast(vocab_file=str(other / "vocab.txt")).save_pretrained(other)
    _classifier(other, tokenizer=str(other), layers=1)
    with pytest.raises(ConfigError, match=r"its tokenizer differs from the student's \(.*\); a student shares"):
        build_trial(_config(small_bert, data, **{"distill.teacher": str(other)}), str(tmp_path))


def test_a_relative_teacher_in_a_sweep_lies_in_the_sweep_folder(tmp_path):
    from adapt.study.sweeps import trial_config

    config = base_config()
    assert trial_config(config, {"distill.teacher": "teacher/abc"}, str(tmp_path)).distill.teacher == \
        str(tmp_path / "teacher" / "abc")
    assert trial_config(config, {"distill.teacher": "/elsewhere/run"}, str(tmp_path)).distill.teacher == \
        "/elsewhere/run"
