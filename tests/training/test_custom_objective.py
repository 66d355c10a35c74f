"""An objective defined here, a regression (mean-squared error, Pearson's r as STS-B reports it), runs
through ``run_trial`` from a config: its one registration (``adapt.training.tasks.register``) says its data format
and the model head it trains (a one-output sequence-classification head, as transformers does regression);
nothing outside this file changes."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from adapt.experiment import base_config, run_trial
from adapt.models import load_tokenizer
from adapt.training import tasks
from adapt.training.objectives import Objective


@dataclasses.dataclass(frozen=True)
class MeanSquaredError(Objective):
    """``outputs [B, 1]`` against float ``labels [B]``; padding rows (no real token) do not count."""

    def loss(self, outputs, batch):
        pred, gold = outputs[:, 0], batch["labels"].astype(jnp.float32)
        valid = (batch["attention_mask"] != 0).any(axis=1).astype(jnp.float32)
        moments = {name: jnp.sum(valid * x) for name, x in
                   (("pred", pred), ("gold", gold), ("pred2", pred * pred), ("gold2", gold * gold),
                    ("cross", pred * gold))}
        return {"loss_sum": jnp.sum(valid * (pred - gold) ** 2), "weight": jnp.sum(valid), **moments}, None

    def outputs(self, outputs, batch):  # per example, for predictions/<split>.jsonl (evaluation only)
        return {"prediction": outputs[:, 0]}

    def summarize(self, sums, predictions=None) -> dict:
        s = {k: float(v) for k, v in sums.items()}
        n = max(s["weight"], 1.0)
        cov = s["cross"] / n - s["pred"] * s["gold"] / n ** 2
        var_p, var_g = s["pred2"] / n - (s["pred"] / n) ** 2, s["gold2"] / n - (s["gold"] / n) ** 2
        return {"loss": s["loss_sum"] / n, "pearson": cov / max(np.sqrt(var_p * var_g), 1e-12), "count": s["weight"]}


tasks.register(tasks.Task("regression", formats=("classification",), objective=lambda inputs: MeanSquaredError(),
                          head="sequence_classification", head_args=lambda labels: {"num_labels": 1}))


def _data(folder, n, seed):
    """Sentences of 8 words; the target is how many of them are "good" (0 to 4)."""
    rng = np.random.RandomState(seed)
    words = ["good", "table", "river", "green", "seven", "music", "quiet", "stone"]
    lines = []
    for _ in range(n):
        k = int(rng.randint(0, 5))
        text = ["good"] * k + list(rng.choice(words[1:], 8 - k))
        rng.shuffle(text)
        lines.append({"text": " ".join(text), "score": float(k)})
    path = folder / f"{seed}.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path), np.asarray([x["score"] for x in lines])


@pytest.mark.slow  # the registry's extension point; the built-in task kinds take it in the fast tier
def test_a_regression_objective_defined_here_runs_through_run_trial(tmp_path):
    tok = load_tokenizer("bundled:minilm-l6")
    model = tmp_path / "model"
    transformers.BertModel(transformers.BertConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=64)).save_pretrained(model)
    tok.save_pretrained(model)
    (train, train_y), (dev, dev_y) = _data(tmp_path, 256, 0), _data(tmp_path, 64, 1)
    c = base_config()
    c.model.update(name=str(model), task="regression")
    c.data.files = {"train": train, "dev": dev}
    c.data.update(format="classification", label_type="number", label_column="score", max_length=16, cache_dir="")
    c.optimizer.update(learning_rate=3e-3, warmup_ratio=0.1)
    c.train.update(batch_size=32, steps=96, log_every=32)
    c.eval.splits = ("dev",)
    results = run_trial(c, str(tmp_path / "run"))
    floor = float(np.mean((dev_y - train_y.mean()) ** 2))  # predicting the train mean
    assert results["dev"]["count"] == 64
    assert results["dev"]["loss"] < 0.3 * floor, (results, floor)
    assert results["dev"]["pearson"] > 0.9, results
    lines = (tmp_path / "run" / "predictions" / "dev.jsonl").read_text().splitlines()
    written = [json.loads(line) for line in lines]
    assert [(r["index"], r["gold"]) for r in written] == list(enumerate(dev_y.tolist()))  # in order, no padding
    assert np.mean([(r["prediction"] - r["gold"]) ** 2 for r in written]) == pytest.approx(results["dev"]["loss"])
