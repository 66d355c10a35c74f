"""One trial assembled from its config: its sections and their schema (:mod:`adapt.experiment.base`), config files
and overrides (:mod:`adapt.experiment.configs`) and the trial itself (:mod:`adapt.experiment.trial`: data, model,
method, features, training, evaluation, export). ``from adapt.experiment import base_config`` (what config files write)
imports the trial module on first use."""

import importlib

_EXPORTS = {"base_config": "base", "data_sections": "trial", "evaluate_run": "trial", "export_run": "trial",
            "load_run": "trial", "run_trial": "trial"}
__all__ = sorted([*_EXPORTS, "base", "configs", "trial"])


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"adapt.experiment.{_EXPORTS[name]}"), name)
    if name in ("base", "configs", "trial"):
        return importlib.import_module(f"adapt.experiment.{name}")
    raise AttributeError(f"module 'adapt.experiment' has no attribute {name!r}")
