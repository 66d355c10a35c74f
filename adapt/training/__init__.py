"""The training engine: optimizers and schedules, objectives, the sharded train state, the jitted steps,
orbax checkpoints and the loop. ``Trainer(model, objective, cfg, workdir).fit(train_data, eval_data)``."""

from adapt.training.config import defaults
from adapt.training.loop import EarlyStopping, FitResult, Trainer
from adapt.training.objectives import CausalLM, MaskedLM, SequenceClassification, TokenClassification

__all__ = ["CausalLM", "EarlyStopping", "FitResult", "MaskedLM", "SequenceClassification",
           "TokenClassification", "Trainer", "defaults"]
