"""The training engine: optimizers and schedules, task kinds and their objectives, the sharded train state, the
jitted steps, orbax checkpoints and the loop. ``Trainer(model, objective, cfg, workdir).fit(train_data, eval_data)``.
Names are imported from their modules on first use: importing the package loads the objectives (which
register the built-in task kinds), not the loop, checkpoints or orbax."""

import importlib

# The built-in task kinds register with adapt.training.tasks beside their objectives (tasks never imports
# objectives); importing any module of this package runs this first, so the registry is full before anything reads it.
from adapt.training import objectives  # noqa: F401

_EXPORTS = {"defaults": "config", "EarlyStopping": "loop", "FitResult": "loop", "Trainer": "loop",
            "CausalLM": "objectives", "MaskedLM": "objectives", "SequenceClassification": "objectives",
            "TokenClassification": "objectives"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"adapt.training.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'adapt.training' has no attribute {name!r}")
