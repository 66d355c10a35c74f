"""Experiment configs: every config resolves; overrides and misspelt keys. (One trial end to end, TAPT and then a
LoRA fine-tune from its export, runs in test_study.py.)"""

import glob
import json
import os

import pytest

from adapt import configs, evalsets, privacy, sweeps
from adapt import search as adaptive
from adapt.data.pipeline import check_mixture
from adapt.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")) +
                      glob.glob(os.path.join(ROOT, "experiments", "*", "*.py")))
SETTINGS = {"experiments/bbc_tapt/config.py": ["smoke"],  # the named settings of the experiments, beside the default
            "experiments/dont_stop_pretraining/config.py": ["cpu", "reduced", "cpu,mix"],
            "experiments/replay_forgetting/config.py": ["cpu", "smoke"],
            "experiments/bbc_headlines/config.py": ["cpu", "smoke"],
            "experiments/augmentation/config.py": ["smoke"],
            "experiments/active_learning/config.py": ["smoke"],
            "experiments/distillation/config.py": ["lm", "bbc,smoke", "lm,smoke"],
            "experiments/privacy/config.py": ["smoke"],
            "experiments/multitask/config.py": ["smoke"]}
CASES = [(p, None) for p in CONFIG_FILES] + [(os.path.join(ROOT, p), a) for p, args in SETTINGS.items() for a in args]


@pytest.mark.parametrize("path,arg", CASES, ids=[os.path.relpath(p, ROOT) + (f":{a}" if a else "") for p, a in CASES])
def test_every_config_resolves(path, arg):
    config = configs.load(path + (f":{arg}" if arg else ""))
    assert config.model.name and config.data.format and config.method.name
    json.loads(config.to_json_best_effort())  # what run folders save
    module = configs.load_module(path)
    if hasattr(module, "get_sweep"):  # every trial of every sweep beside it sets known keys
        sweep = module.get_sweep(arg) if arg else module.get_sweep()
        for part in sweep.values() if isinstance(sweep, dict) else [sweep]:
            if isinstance(part, sweeps.Search):  # an adaptive search: its values' ends (and its pruner's needs)
                resolved = [adaptive.check(config, part)]
            else:  # every trial's values held to the trial schema, as run_sweep holds them
                resolved = [sweeps.trial_config(config, t.overrides) for t in sweeps.expand(part)]
                for t, trial in zip(sweeps.expand(part), resolved):
                    sweeps.check_trial(t, trial)
            assert resolved
            for trial in resolved:  # and its mixture and named sets pass the checks run_trial makes before it loads
                check_mixture(trial.data)
                if trial.privacy.enabled:  # and DP-SGD's refusals
                    privacy.check(trial)
                for name, spec in evalsets.specs(trial).items():
                    evalsets.data_section(trial, name, spec)


def test_overrides_and_misspelt_keys():
    c = configs.load("configs/finetune.py:chemprot,lora",
                     ["optimizer.learning_rate=3e-5", "method.rank=4", "mesh.shape=(1, 8, 1)", "train.epochs=2"])
    assert (c.optimizer.learning_rate, c.method.rank, c.mesh.shape, c.train.epochs) == (3e-5, 4, (1, 8, 1), 2.0)
    assert c.data.benchmark == "chemprot" and c.train.early_stopping.metric == "dev/micro_f1"
    with pytest.raises(ConfigError, match=r"optimizer.lerning_rate: no such config key; did you mean optimizer.learning_rate"):
        configs.load("configs/finetune.py:bbc", ["optimizer.lerning_rate=1e-3"])
    with pytest.raises(ConfigError, match=r"method.rnak: unknown key; did you mean method.rank\? "
                                          r"\(keys of method 'lora': name, rank, "):
        configs.load("configs/finetune.py:bbc,lora", ["method.rnak=4"])
    with pytest.raises(ConfigError, match="'bcc' is not a benchmark with a classification or tagging head; expected one"):
        configs.load("configs/finetune.py:bcc")
    with pytest.raises(ConfigError, match="no such config file"):
        configs.load("configs/nope.py:bbc")
