"""Experiment configs: every config resolves; overrides and misspelt keys. (One trial end to end, TAPT and then a
LoRA fine-tune from its export, runs in test_study.py.)"""

import os

import pytest
from config_cases import CASES, IDS, resolve

from adapt.core.errors import ConfigError
from adapt.experiment import configs


@pytest.mark.parametrize("path,arg", CASES, ids=IDS)
def test_every_config_resolves(path, arg):
    resolve(path, arg)


def test_overrides_and_misspelt_keys():
    c = configs.load("configs/finetune.py:chemprot,lora",
                     ["optimizer.learning_rate=3e-5", "method.rank=4", "mesh.shape=(1, 8, 1)", "train.epochs=2"])
    assert (c.optimizer.learning_rate, c.method.rank, c.mesh.shape, c.train.epochs) == (3e-5, 4, (1, 8, 1), 2.0)
    assert c.data.benchmark == "chemprot" and c.train.early_stopping.metric == "dev/micro_f1"
    with pytest.raises(ConfigError,
                       match=r"optimizer.lerning_rate: no such config key; did you mean optimizer.learning_rate"):
        configs.load("configs/finetune.py:bbc", ["optimizer.lerning_rate=1e-3"])
    with pytest.raises(ConfigError, match=r"method.rnak: unknown key; did you mean method.rank\? "
                                          r"\(keys of method 'lora': name, rank, "):
        configs.load("configs/finetune.py:bbc,lora", ["method.rnak=4"])
    with pytest.raises(ConfigError,
                       match="'bcc' is not a benchmark with a classification or tagging head; expected one"):
        configs.load("configs/finetune.py:bcc")
    with pytest.raises(ConfigError, match="no such config file"):
        configs.load("configs/nope.py:bbc")


def test_finetune_bc5cdr_builds_a_token_classification_trial(benchmark_data, base_bert, tmp_path):
    """configs/finetune.py accepts the tagging benchmark: the trial reads BC5CDR's CoNLL files (the synthetic
    stand-ins) into a token-classification model whose labels are the BIO tags, and records the files it read."""
    from adapt.data.pipeline import files_read
    from adapt.experiment import data_sections
    from adapt.experiment.trial import build_trial

    config = configs.load("configs/finetune.py:bc5cdr", [f"model.name={base_bert}", "data.max_length=32",
                                                         f"data.cache_dir={tmp_path / 'cache'}"])
    assert (config.model.task, config.data.format, config.train.early_stopping.metric) == (
        "token_classification", "conll", "dev/span_f1")
    trial = build_trial(config, str(tmp_path / "run"))
    assert trial.splits["labels"] == ["B-Entity", "I-Entity", "O"]
    assert type(trial.trainer.model).__name__ == "BertForTokenClassification"
    assert max(len(row) for row in trial.splits["train"]["labels"]) <= 32
    read = files_read(data_sections(config)["data"])
    assert sorted(read) == ["dev", "test", "train"]
    assert read["train"]["path"] == os.path.join(benchmark_data, "scibert", "ner", "bc5cdr", "train.txt")
