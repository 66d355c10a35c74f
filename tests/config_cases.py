"""Every experiment config and sweep in the repository, with the settings each documents, and what resolving one
checks; tests/experiment/test_experiment.py runs them in the suite, tests/test_fresh_clone.py in a copy with no data."""

import glob
import json
import os

from adapt.experiment import configs
from adapt.features import base as features
from adapt.study import adaptive, sweeps

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
IDS = [os.path.relpath(p, ROOT) + (f":{a}" if a else "") for p, a in CASES]


def resolve(path: str, arg: str | None) -> None:
    """The config at ``path`` (with ``arg``) resolves, and every trial of every sweep and the table layout beside
    it."""
    config = configs.load(path + (f":{arg}" if arg else ""))
    assert config.model.name and config.data.format and config.method.name
    json.loads(config.to_json_best_effort())  # what run folders save
    module = configs.load_module(path)
    if hasattr(module, "get_sweep"):  # every trial of every sweep beside it sets known keys
        sweep = configs.call(module, "get_sweep", arg)
        for part in sweep.values() if isinstance(sweep, dict) else [sweep]:
            if isinstance(part, sweeps.Search):  # an adaptive search: its values' ends (and its pruner's needs)
                resolved = [adaptive.check(config, part)]
            else:  # every trial's values held to the trial schema, as run_sweep holds them
                trials = sweeps.expand(part)
                resolved = [sweeps.trial_config(config, t.overrides) for t in trials]
                for t, trial in zip(trials, resolved):
                    sweeps.check_trial(t, trial)
            assert resolved
            for trial in resolved:  # and its features pass the checks run_trial makes before it loads
                features.check(trial)
    if hasattr(module, "get_table"):  # the layout scripts/study.py reads
        assert isinstance(dict(configs.call(module, "get_table", arg)), dict)
