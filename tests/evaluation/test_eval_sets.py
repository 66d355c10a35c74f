"""Named evaluation sets (adapt/evaluation/evalsets.py): evaluated before the first step and every N steps, logged, kept
in results.json and the results database and tabulated; a classification run watching masked-LM loss through the
checkpoint's own head on its current backbone; sets that do not fit refused, naming the set, before training."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from adapt.analysis import tables
from adapt.analysis.results import ResultsDB
from adapt.core.errors import ConfigError
from adapt.data.batches import eval_batches
from adapt.evaluation import evalsets
from adapt.experiment import base_config, run_trial
from adapt.experiment.trial import build_trial
from adapt.models import from_pretrained, load_tokenizer
from adapt.study import runner
from adapt.study.sweeps import grid
from adapt.training import Trainer, defaults
from adapt.training.objectives import MaskedLM

DOMAIN = "kinase inhibitor binds receptor protein expression cell tumour dose assay patients".split()
GENERAL = "government minister football match election market shares film music club season".split()


def _text(path, words, n, seed):
    rng = np.random.default_rng(seed)
    path.write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(n)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    return {"domain_train": _text(d / "domain_train.txt", DOMAIN, 48, 0),
            "domain_dev": _text(d / "domain_dev.txt", DOMAIN, 8, 1),
            "general_dev": _text(d / "general_dev.txt", GENERAL, 8, 2)}


def _saved(folder, model_cls, config_cls, tok, **config) -> str:
    import torch

    torch.manual_seed(0)
    model_cls(config_cls(vocab_size=len(tok), **config)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory):
    import transformers

    return _saved(tmp_path_factory.mktemp("llama"), transformers.LlamaForCausalLM, transformers.LlamaConfig,
                  load_tokenizer("bundled:smollm2-135m"), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)


@pytest.fixture(scope="module")
def mlm_bert(tmp_path_factory):
    import transformers

    return _saved(tmp_path_factory.mktemp("bert_mlm"), transformers.BertForMaskedLM, transformers.BertConfig,
                  load_tokenizer("bundled:minilm-l6"), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, max_position_embeddings=64)


def _lm_config(model, corpus):
    c = base_config()
    c.model.update(name=model, task="causal_lm")
    c.data.update(format="lm", max_length=16, cache_dir="")
    c.data.files = {"train": corpus["domain_train"]}
    c.eval.update(splits=(), batch_size=8)
    c.eval.sets = {"domain": {"files": {"dev": corpus["domain_dev"]}}, "general": corpus["general_dev"]}  # a dev file
    c.optimizer.update(learning_rate=1e-2, warmup_steps=0)
    c.train.update(batch_size=8, steps=4, eval_every=2, log_every=2)
    c.mesh.shape = (-1, 1, 1)
    return c


@pytest.mark.slow
def test_sets_are_evaluated_at_step_0_and_every_n_steps_stored_and_tabulated(small_llama, corpus, tmp_path):
    config = _lm_config(small_llama, corpus)
    config.train.early_stopping.update(metric="dev/domain/loss", mode="min")  # early stopping names a set
    counts = runner.run_sweep(config, grid("train.seed", [0]), str(tmp_path / "runs"), name="sets", progress=False)
    assert counts == {"done": 1}
    db = ResultsDB.open_existing(str(tmp_path / "runs" / "results.db"))
    trials = db.trials()
    for t in trials:
        logged = [json.loads(line) for line in open(os.path.join(t["workdir"], "metrics.jsonl"))]
        evals = [r for r in logged if "dev/domain/loss" in r]
        best = min(evals, key=lambda r: r["dev/domain/loss"])["step"]  # the model results.json holds
        for name in ("domain", "general"):
            steps = [r["step"] for r in logged if f"dev/{name}/loss" in r]
            assert steps == [0, 2, 4]
            assert all(f"dev/{name}/perplexity" in r for r in logged if f"dev/{name}/loss" in r)
            saved = json.load(open(os.path.join(t["workdir"], "results.json")))
            assert saved["start"][name]["loss"] == next(r[f"dev/{name}/loss"] for r in logged
                                                        if r["step"] == 0 and f"dev/{name}/loss" in r)
            assert saved["dev"][name]["loss"] == next(r[f"dev/{name}/loss"] for r in evals if r["step"] == best)
            assert t["metrics"]["start"][f"{name}/loss"] == saved["start"][name]["loss"]  # in the database
            assert t["metrics"]["dev"][f"{name}/perplexity"] == pytest.approx(np.exp(saved["dev"][name]["loss"]))
        assert [p[0] for p in db.curve(t["id"], "dev/domain/loss")] == [0, 2, 4]
        # it trained on domain text: domain loss fell
        assert t["metrics"]["dev"]["domain/loss"] < t["metrics"]["start"]["domain/loss"]

    # step 0 is the pretrained model: what its own evaluation gives
    trial = build_trial(_lm_config(small_llama, corpus), str(tmp_path / "direct"))
    trial.trainer._setup(1)
    direct = trial.trainer.evaluate(trial.trainer.state, trial.trainer.steps, trial.sets["domain"].batches())
    assert trials[0]["metrics"]["start"]["domain/loss"] == pytest.approx(direct["loss"], rel=1e-6)

    table = tables.build(trials, metric="general/perplexity", test_split="dev", scale=1.0)  # a set as the column
    cell = table.cells[table.rows[0], "general/perplexity"]
    assert cell.n == 1 and cell.mean == pytest.approx(np.mean([t["metrics"]["dev"]["general/perplexity"]
                                                               for t in trials]))


@pytest.mark.slow
def test_a_classifier_watches_masked_lm_loss_through_the_checkpoints_head(mlm_bert, tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"text": " ".join(rng.choice(DOMAIN if y else GENERAL, 8)), "label": str(y)}
            for y in rng.integers(0, 2, 40)]
    files = {}
    for split, part in (("train", rows[:32]), ("dev", rows[32:])):
        files[split] = str(tmp_path / f"{split}.jsonl")
        with open(files[split], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    general = _text(tmp_path / "general.txt", GENERAL, 8, 3)
    c = base_config()
    c.model.update(name=mlm_bert, task="sequence_classification")
    c.data.update(max_length=16, cache_dir="")
    c.data.files = files
    c.eval.update(splits=("dev",), batch_size=8)
    c.eval.sets = {"general": {"files": {"dev": general}, "task": "masked_lm"}}
    c.optimizer.update(learning_rate=5e-2)
    c.train.update(batch_size=8, steps=2, eval_every=2, log_every=2)
    c.train.early_stopping.metric = "dev/accuracy"
    c.mesh.shape = (-1, 1, 1)
    results = run_trial(c, str(tmp_path / "run"))
    logged = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in logged if "dev/general/loss" in r] == [0, 2]
    assert "dev/accuracy" in logged[-1] and "dev/accuracy" not in logged[0]  # the run's own dev split: as before

    # step 0: exactly the masked-LM checkpoint's own loss on the set (the same masks: drawn from the batch index)
    tok = load_tokenizer(mlm_bert)
    trial = build_trial(c, str(tmp_path / "again"))
    cfg = defaults()
    cfg.mesh.shape = (-1, 1, 1)
    cfg.train.batch_size = 8
    mlm = Trainer(from_pretrained(mlm_bert, task="masked_lm"), MaskedLM(tok.mask_token_id, len(tok),
                                                                        tuple(tok.all_special_ids)), cfg,
                  str(tmp_path / "mlm"))
    mlm._setup(1)
    own = mlm.evaluate(mlm.state, mlm.steps, eval_batches(trial.sets["general"].arrays, 8))
    assert results["start"]["general"]["loss"] == pytest.approx(own["loss"], rel=1e-5)
    # after: the probe saw the trained backbone
    assert results["dev"]["general"]["loss"] != pytest.approx(own["loss"], rel=1e-3)
    assert trial.sets["general"].probe is not None


def test_sets_that_do_not_fit_are_refused_naming_the_set(small_llama, corpus, tiny_bert, tmp_path):
    c = _lm_config(small_llama, corpus)
    c.eval.sets = {"general": {"files": {"dev": corpus["general_dev"]}, "format": "classification"}}
    with pytest.raises(ConfigError, match=r"eval.sets.general.format='classification' does not fit its task"):
        evalsets.data_section(c, "general", evalsets.specs(c)["general"])
    with pytest.raises(ConfigError, match=r"eval.sets.g.task='sequence_classification': a named set is text"):
        evalsets.data_section(c, "g", {"task": "sequence_classification"})
    with pytest.raises(ConfigError, match=r"eval.sets.g.task='causal_llm' is not a task; did you mean causal_lm"):
        evalsets.data_section(c, "g", {"task": "causal_llm"})
    c.eval.sets = {"a/b": corpus["general_dev"]}
    with pytest.raises(ConfigError, match=r"eval.sets has the name 'a/b'"):
        evalsets.specs(c)
    c.eval.sets = {"general": {"files": {"dev": corpus["general_dev"]}, "split": "test"}}
    with pytest.raises(ConfigError, match=r"eval.sets.general: its data has no 'test' split; it has dev"):
        build_trial(c, str(tmp_path / "a"))
    c.eval.sets = {"general": {"files": {"dev": corpus["general_dev"]}, "colour": 1}}
    with pytest.raises(ConfigError, match=r"eval.sets.general.*colour"):
        build_trial(c, str(tmp_path / "b"))
    # a classifier whose checkpoint has no masked-LM head: its loss would be a random head's
    c = base_config()
    c.model.update(name=tiny_bert, task="sequence_classification")
    c.data.format = "lm"
    c.data.files = {"train": corpus["domain_train"]}
    c.eval.sets = {"general": {"files": {"dev": corpus["general_dev"]}, "task": "masked_lm"}}
    with pytest.raises(ConfigError, match=r"eval.sets.general.task='masked_lm': .* has no trained masked_lm head"):
        evalsets.build(c, load_tokenizer("bundled:minilm-l6"), from_pretrained(tiny_bert), tiny_bert)
