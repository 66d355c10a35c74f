"""The training engine: optimizers and schedules, task kinds and their objectives, the sharded train state, the
jitted steps, orbax checkpoints and the loop. ``Trainer(model, objective, cfg, workdir).fit(train_data, eval_data)``.
Names are imported from their modules on first use, so ``adapt.training.tasks`` (the task registry the model
loaders read) imports without the engine."""

import importlib

_EXPORTS = {"defaults": "config", "EarlyStopping": "loop", "FitResult": "loop", "Trainer": "loop",
            "CausalLM": "objectives", "MaskedLM": "objectives", "SequenceClassification": "objectives",
            "TokenClassification": "objectives"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"adapt.training.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'adapt.training' has no attribute {name!r}")
