"""``save_pretrained``: an NNX model -> an HF folder (``config.json`` + safetensors) that
``transformers.AutoModel*.from_pretrained`` loads with the same logits."""

from __future__ import annotations

import copy
import importlib

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from adapt.errors import CheckpointError
from adapt.files import write_folder
from adapt.models.checkpoint_io import save_safetensors
from adapt.models.layers import Adapter
from adapt.models.registry import family_for, hf_key, param_paths, to_hf

_AUTO_NAMES = {"base": "MODEL_MAPPING_NAMES", "causal_lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
               "masked_lm": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
               "sequence_classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
               "token_classification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"}


def architecture_name(model_type: str, task: str) -> str:
    """transformers' class name for ``model_type`` and ``task`` (``LlamaForCausalLM``). The name tables are
    read from the module itself: the ``transformers.models.auto`` package refuses them without PyTorch."""
    names = importlib.import_module("transformers.models.auto.modeling_auto")
    return getattr(names, _AUTO_NAMES[task])[model_type]


def model_task(model: nnx.Module) -> str:
    family = family_for(model.cfg.hf.model_type)
    return next(task for task, cls in family.models.items() if type(model) is cls)


def hf_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's parameters as host arrays under their HF names and layouts."""
    family = family_for(model.cfg.hf.model_type)
    tensors, params = {}, param_paths(nnx.state(model, nnx.Param))
    added = [".".join(map(str, path)) for path, var in params if isinstance(var, Adapter)]
    if added:
        raise CheckpointError(f"the model holds {len(added)} parameters an adaptation method added ({added[0]}, ...): "
                              f"merge them into the base weights first (method.merge(model)), or save a LoRA as a "
                              f"PEFT adapter (adapt.methods.peft.save_peft)")
    for path, var in params:
        value = var.get_value()
        if not value.is_fully_addressable:
            value = multihost_utils.process_allgather(value, tiled=True)
        key, transpose = hf_key(family, path)
        tensors[key] = np.ascontiguousarray(to_hf(np.asarray(jax.device_get(value)), transpose))
    return tensors


def save_pretrained(model: nnx.Module, folder: str, *, tokenizer=None, max_shard_bytes: int = 5 * 2**30) -> str:
    """Write ``model`` (and ``tokenizer``) to ``folder`` in HF layout; returns the folder.

    The files are written to a temporary folder beside it that replaces ``folder`` only when complete,
    so an interrupted export leaves any earlier export intact. In a multi-process run every process
    must call this (the gather is collective); process 0 writes.
    """
    hf = copy.deepcopy(model.cfg.hf)
    hf.architectures = [architecture_name(hf.model_type, model_task(model))]
    tensors = hf_state_dict(model)
    if jax.process_index() != 0:
        return folder

    def write(tmp):
        hf.save_pretrained(tmp)
        save_safetensors(tensors, tmp, max_shard_bytes)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return write_folder(folder, write)
