"""Experiment configs and one trial end to end: every config resolves, overrides and misspelt keys, and
continued MLM pretraining (TAPT) whose export a LoRA fine-tune starts from, on the BBC News corpus."""

import glob
import json
import os

import numpy as np
import pytest

from adapt import configs
from adapt.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")) +
                      glob.glob(os.path.join(ROOT, "experiments", "*", "*.py")))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_resolves(path):
    config = configs.load(path)
    assert config.model.name and config.data.format and config.method.name
    json.loads(config.to_json_best_effort())  # what run folders save


def test_overrides_and_misspelt_keys():
    c = configs.load("configs/finetune.py:chemprot,lora",
                     ["optimizer.learning_rate=3e-5", "method.rank=4", "mesh.shape=(1, 8, 1)", "train.epochs=2"])
    assert (c.optimizer.learning_rate, c.method.rank, c.mesh.shape, c.train.epochs) == (3e-5, 4, (1, 8, 1), 2.0)
    assert c.benchmark == "chemprot" and c.train.early_stopping.metric == "dev/micro_f1"
    with pytest.raises(ConfigError, match=r"optimizer.lerning_rate: no such config key; did you mean optimizer.learning_rate"):
        configs.load("configs/finetune.py:bbc", ["optimizer.lerning_rate=1e-3"])
    with pytest.raises(ConfigError, match=r"method.rnak is not a knob of method 'lora'"):
        configs.load("configs/finetune.py:bbc,lora", ["method.rnak=4"])
    with pytest.raises(ConfigError, match="benchmark 'bcc' is not known"):
        configs.load("configs/finetune.py:bcc")
    with pytest.raises(ConfigError, match="no such config file"):
        configs.load("configs/nope.py:bbc")


@pytest.mark.slow
def test_tapt_then_lora_fine_tune_on_bbc(tmp_path):
    from adapt.experiment import run_trial

    shrink = {"train.steps": 3, "data.max_length": 32, "train.log_every": 1, "eval.batch_size": 128,
              "data.cache_dir": str(tmp_path / "cache")}
    tapt = configs.load("configs/pretrain.py:bbc", shrink)
    result = run_trial(tapt, str(tmp_path / "tapt"))
    assert np.isfinite(result["dev"]["perplexity"])
    assert os.path.exists(tmp_path / "tapt" / "export" / "model.safetensors")
    ft = configs.load("configs/finetune.py:bbc,lora", {**shrink, "init_from": str(tmp_path / "tapt" / "export")})
    result = run_trial(ft, str(tmp_path / "ft"))
    assert set(result) == {"dev", "test"} and result["test"]["count"] == 223  # 10% of 2,225 articles
    saved = json.load(open(tmp_path / "ft" / "results.json"))
    assert saved == json.loads(json.dumps(result))
    assert json.load(open(tmp_path / "ft" / "config.json"))["method"]["name"] == "lora"
    assert json.load(open(tmp_path / "ft" / "labels.json")) == ["business", "entertainment", "politics", "sports", "tech"]
