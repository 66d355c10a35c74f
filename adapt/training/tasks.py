"""Task kinds: one registry entry per kind of training (causal LM, masked LM, sequence classification,
token classification, ...), holding everything the rest of the library looks up about it.

    task = adapt.training.tasks.get("sequence_classification")
    task.formats                     # ("classification",): the data formats it trains on
    task.objective(TaskInputs(...))  # its training objective and metrics (adapt.training.objectives)
    task.head                        # the model head each family declares for it (Family.heads)

A task registers itself beside its objective (the built-in ones at the end of
``adapt/training/objectives.py``, which ``adapt/training/__init__.py`` imports; see
``docs/adding_an_objective.md``). Named datasets (BBC News,
ChemProt, ...) are *benchmarks*, in :mod:`adapt.data.catalog`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable

from adapt.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TaskInputs:
    """What a task's objective is built from."""
    tokenizer: object
    labels: list[str] | None  # the data's label vocabulary (classification formats), else None
    config: object  # the trial's config (its ``objective`` section holds the objectives' knobs)


def label_names(labels: list[str] | None) -> dict:
    """The model head's arguments for a classifier: one output per label of the data."""
    return {"labels": labels} if labels else {}


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    formats: tuple[str, ...]  # data formats (``data.format``) whose rows it trains on
    objective: Callable | None  # TaskInputs -> Objective; None: nothing to train (a bare backbone)
    head: str = ""  # the model head it trains (adapt.models.heads; ``Family.heads``); default: its own name
    # from_pretrained's head arguments given the data's label vocabulary (``labels``/``num_labels``)
    head_args: Callable = label_names

    def __post_init__(self):
        if not self.head:
            object.__setattr__(self, "head", self.name)


_TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    _TASKS[task.name] = task
    return task


def names() -> list[str]:
    return list(_TASKS)


def get(name: str, where: str = "model.task") -> Task:
    if name not in _TASKS:
        close = difflib.get_close_matches(str(name), list(_TASKS), n=3)
        raise ConfigError(f"{where}={name!r} is not a task; " + (f"did you mean {', '.join(close)}? " if close else "")
                          + f"tasks: {', '.join(_TASKS)}")
    return _TASKS[name]


register(Task("base", formats=(), objective=None))
