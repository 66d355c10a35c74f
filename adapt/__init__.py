"""adapt: domain adaptation of pretrained language models in JAX.

The public API, as the README uses it::

    import adapt

    model = adapt.from_pretrained("bundled:minilm-l6", task="sequence_classification", num_labels=5)
    method = adapt.methods.build(adapt.method_config("lora", rank=8))
    config = adapt.configs.load("configs/finetune.py:bbc", ["method.name=lora"])
    results = adapt.run_trial(config, "runs/bbc")
    sweep = adapt.product(adapt.grid("optimizer.learning_rate", [1e-5, 3e-5]), adapt.grid("train.seed", [0, 1]))
    table = adapt.tables.build(trials, rows=("meta.condition",))

Importing ``adapt`` loads neither JAX nor numpy: each name is imported from its module on first use. It adds one
import hook: the module paths of earlier layouts (``adapt.sweeps``, ``adapt.benchmarks``, ``adapt.study.packing``
... :data:`MOVED`) still import, as the module at its new path, with a ``DeprecationWarning`` naming that path.
:func:`use_kept_heap` is the one process-wide setting, and only the scripts and benchmarks make it (see
``adapt/core/host_memory.py``).

The layers, each importing only those below it (``docs/architecture.md``): ``core`` < ``models`` < ``data`` <
``methods`` < ``training`` < ``evaluation`` < ``features`` < ``experiment`` < ``analysis`` < ``study`` <
``integrations``.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

# public name -> the module that defines it (a module itself when the name is a submodule)
_EXPORTS = {
    "from_pretrained": "adapt.models.loading", "load_tokenizer": "adapt.models.loading",
    "save_pretrained": "adapt.models.export", "model_info": "adapt.models.registry",
    "make_mesh": "adapt.core.sharding",
    "GenerationConfig": "adapt.models.generate", "generate": "adapt.models.generate",
    "generate_ids": "adapt.models.generate",
    "data_defaults": "adapt.data.pipeline", "prepare": "adapt.data.pipeline", "train_stream": "adapt.data.pipeline",
    "array_batches": "adapt.data.batches", "eval_batches": "adapt.data.batches",
    "Trainer": "adapt.training.loop", "defaults": "adapt.training.config",
    "CausalLM": "adapt.training.objectives", "MaskedLM": "adapt.training.objectives",
    "SequenceClassification": "adapt.training.objectives", "TokenClassification": "adapt.training.objectives",
    "method_config": "adapt.methods",
    "base_config": "adapt.experiment.base", "run_trial": "adapt.experiment.trial",
    "evaluate_run": "adapt.experiment.trial", "export_run": "adapt.experiment.trial",
    "grid": "adapt.study.sweeps", "product": "adapt.study.sweeps", "zip_": "adapt.study.sweeps",
    "random": "adapt.study.sweeps", "uniform": "adapt.study.sweeps", "loguniform": "adapt.study.sweeps",
    "choice": "adapt.study.sweeps", "stage": "adapt.study.sweeps",
    "run_sweep": "adapt.study.runner", "run_population": "adapt.study.populations",
    "use_kept_heap": "adapt.core.host_memory",
}
#: the module paths of earlier layouts -> their paths now: the flat layout's, then the layered ones renamed since
MOVED = {f"adapt.{old}": f"adapt.{new}" for old, new in {
    "errors": "core.errors", "files": "core.files", "schema": "core.schema", "sharding": "core.sharding",
    "distributed": "core.distributed", "host_memory": "core.host_memory", "cli": "core.cli",
    "benchmarks": "data.catalog", "quality": "data.quality", "augment": "data.augment", "tasks": "training.tasks",
    "predictions": "evaluation.predictions", "evalsets": "evaluation.evalsets",
    "generation_eval": "evaluation.generation", "textmetrics": "evaluation.textmetrics",
    "multitask": "features.multitask", "distill": "features.distill", "privacy": "features.privacy",
    "configs": "experiment.configs", "results": "analysis.results", "tables": "analysis.tables",
    "stats": "analysis.stats", "baselines": "analysis.baselines", "forgetting": "analysis.forgetting",
    "sweeps": "study.sweeps", "runner": "study.runner", "search": "study.adaptive", "population": "study.populations",
    "active": "study.active", "harness": "integrations.lm_eval",
    "data.benchmarks": "data.catalog", "methods.peft": "methods.peft_io", "study.packing": "study.populations",
    "models.multitask": "models.multihead",
}.items()}

# public module name -> the module (adapt.methods.build, adapt.tables.build, ...)
_MODULES = {name: MOVED.get(f"adapt.{name}", f"adapt.{name}") for name in (
    "configs", "distill", "forgetting", "methods", "multitask", "privacy", "tables", "tasks")}
_MODULES["catalog"] = "adapt.data.catalog"

__all__ = sorted([*_EXPORTS, *_MODULES])


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if f"adapt.{name}" in MOVED:  # ``from adapt import sweeps``: the moved module, with its warning
        return importlib.import_module(f"adapt.{name}")
    raise AttributeError(f"module 'adapt' has no attribute {name!r}")


def __dir__():
    return __all__


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a path of :data:`MOVED` as the module at its new path (the same module object), warning once."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def __init__(self):
        self.specs = {}  # module name -> its own spec, which the import machinery overwrites with the old path's

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}; import it from there", DeprecationWarning,
                      stacklevel=2)
        module = importlib.import_module(MOVED[spec.name])
        self.specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.specs[module.__name__]


if not any(isinstance(f, _Moved) for f in sys.meta_path):
    sys.meta_path.insert(0, _Moved())  # before the path finders: a stale file at an old path is never read
