"""adapt: domain adaptation of pretrained language models in JAX.

The public API, as the README uses it::

    import adapt

    model = adapt.from_pretrained("bundled:minilm-l6", task="sequence_classification", num_labels=5)
    method = adapt.methods.build(adapt.method_config("lora", rank=8))
    config = adapt.configs.load("configs/finetune.py:bbc", ["method.name=lora"])
    results = adapt.run_trial(config, "runs/bbc")
    sweep = adapt.product(adapt.grid("optimizer.learning_rate", [1e-5, 3e-5]), adapt.grid("train.seed", [0, 1]))
    table = adapt.tables.build(trials, rows=("meta.condition",))

Importing ``adapt`` changes nothing in the process and loads neither JAX nor numpy: each name is imported
from its module on first use. :func:`use_kept_heap` is the one process-wide setting, and only the scripts
and benchmarks make it (see ``adapt/host_memory.py``).
"""

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it (a module itself when the name is a submodule)
_EXPORTS = {
    "from_pretrained": "adapt.models.loading", "load_tokenizer": "adapt.models.loading",
    "save_pretrained": "adapt.models.export", "model_info": "adapt.models.registry",
    "make_mesh": "adapt.sharding",
    "GenerationConfig": "adapt.models.generate", "generate": "adapt.models.generate",
    "generate_ids": "adapt.models.generate",
    "data_defaults": "adapt.data.pipeline", "prepare": "adapt.data.pipeline", "train_stream": "adapt.data.pipeline",
    "array_batches": "adapt.data.batches", "eval_batches": "adapt.data.batches",
    "Trainer": "adapt.training.loop", "defaults": "adapt.training.config",
    "CausalLM": "adapt.training.objectives", "MaskedLM": "adapt.training.objectives",
    "SequenceClassification": "adapt.training.objectives", "TokenClassification": "adapt.training.objectives",
    "method_config": "adapt.methods",
    "base_config": "adapt.experiment", "run_trial": "adapt.experiment", "evaluate_run": "adapt.experiment",
    "export_run": "adapt.experiment",
    "grid": "adapt.sweeps", "product": "adapt.sweeps", "zip_": "adapt.sweeps", "random": "adapt.sweeps",
    "uniform": "adapt.sweeps", "loguniform": "adapt.sweeps", "choice": "adapt.sweeps", "stage": "adapt.sweeps",
    "run_sweep": "adapt.runner", "run_population": "adapt.population",
    "use_kept_heap": "adapt.host_memory",
}
_MODULES = ("benchmarks", "configs", "distill", "forgetting", "methods", "multitask", "privacy", "tables",
            "tasks")  # adapt.methods.build, ...

__all__ = sorted([*_EXPORTS, *_MODULES])


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f"adapt.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'adapt' has no attribute {name!r}")


def __dir__():
    return __all__
