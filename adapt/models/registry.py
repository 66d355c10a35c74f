"""The model-family registry: which NNX model serves which HF ``model_type`` and task, and how its
parameter paths map to HF tensor names.

A family file (``llama.py``, ``gpt2.py``, ``bert.py``) ends with one :class:`Family` registration. The
default mapping joins the NNX path with dots and renames the leaf (``kernel``/``embedding``/``scale`` ->
``weight``, kernels transposed from ``[in, out]`` to PyTorch's ``[out, in]``); a family lists only the
exceptions to that rule.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np
from flax import nnx

from adapt.errors import CheckpointError

TASKS = ("base", "causal_lm", "masked_lm", "sequence_classification", "token_classification")


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    config_from_hf: Callable  # (hf_config, dtype) -> the family's frozen config dataclass
    models: dict[str, Callable]  # task -> class(config, *, rngs)
    base_prefix: str  # HF prefix of the backbone ("model", "transformer", "bert", ...)
    # HF config keys the generic dropout overrides set: {"hidden": (...), "attention": (...)}.
    dropout_keys: dict[str, tuple[str, ...]]
    # (regex, replacement) applied in order to the dotted NNX path, after the leaf rename.
    renames: tuple[tuple[str, str], ...] = ()
    transpose_kernels: bool = True  # False for GPT-2, whose Conv1D already stores [in, out]
    # NNX path prefixes per task that a checkpoint may lack: initialised fresh (task heads).
    head_paths: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # NNX path prefixes that are freshly initialised with a warning when missing (e.g. an MLM head).
    warn_if_fresh: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()  # regexes of HF keys that are not parameters (buffers, tied copies)


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    for model_type in family.model_types:
        _FAMILIES[model_type] = family
    return family


def supported_model_types() -> list[str]:
    _import_families()
    return sorted(_FAMILIES)


def family_for(model_type: str, where: str = "") -> Family:
    _import_families()
    if model_type not in _FAMILIES:
        raise CheckpointError(f"{where}unsupported architecture model_type={model_type!r}; "
                         f"supported: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[model_type]


def _import_families():
    from adapt.models import bert, gpt2, llama, roberta  # noqa: F401  (each registers itself)


_LEAF = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}


def hf_key(family: Family, path: tuple) -> tuple[str, bool]:
    """The HF tensor name of the NNX parameter at ``path`` and whether the tensor is transposed."""
    *parents, leaf = (str(p) for p in path)
    key = ".".join([*parents, _LEAF.get(leaf, leaf)])
    for pattern, repl in family.renames:
        key = re.sub(pattern, repl, key)
    return key, leaf == "kernel" and family.transpose_kernels


def to_hf(array: np.ndarray, transpose: bool) -> np.ndarray:
    return array.T if transpose else array


def param_paths(state: nnx.State) -> list[tuple[tuple, nnx.Variable]]:
    return [(tuple(path), var) for path, var in nnx.to_flat_state(state)]
