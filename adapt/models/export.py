"""``save_pretrained``: an NNX model -> an HF folder (``config.json`` + safetensors) that
``transformers.AutoModel*.from_pretrained`` loads with the same logits."""

from __future__ import annotations

import copy
import importlib

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from adapt.core.errors import CheckpointError
from adapt.core.files import write_folder
from adapt.models import heads
from adapt.models.checkpoint_io import save_safetensors
from adapt.models.layers import Adapter
from adapt.models.registry import hf_keys, model_info, param_paths, to_hf


def architecture_name(model_type: str, head: str) -> str:
    """transformers' class name for ``model_type`` and model ``head`` (``LlamaForCausalLM``), from the head
    task's auto-class table. The name tables are read from the module itself: the
    ``transformers.models.auto`` package refuses them without PyTorch."""
    names = importlib.import_module("transformers.models.auto.modeling_auto")
    return getattr(names, heads.get(head).auto_mapping)[model_type]


def hf_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's parameters as host arrays under their HF names and layouts."""
    info = model_info(model)
    family = info.family
    tensors, params = {}, param_paths(nnx.state(model, nnx.Param))
    added = [".".join(map(str, path)) for path, var in params if isinstance(var, Adapter)]
    if added:
        raise CheckpointError(f"the model holds {len(added)} parameters an adaptation method added ({added[0]}, ...): "
                              f"merge them into the base weights first (method.merge(model)), or save a LoRA as a "
                              f"PEFT adapter (adapt.methods.peft_io.save_peft)")
    for path, var in params:
        value = var.get_value()
        if not value.is_fully_addressable:
            value = multihost_utils.process_allgather(value, tiled=True)
        keys, transpose, stacked = hf_keys(family, path, info.dims.num_layers)
        array = np.asarray(jax.device_get(value))
        for key, one in zip(keys, array if stacked else [array]):  # a stacked [L, ...]: slice i is layer i's
            tensors[key] = np.ascontiguousarray(to_hf(one, transpose))
    return tensors


def save_pretrained(model: nnx.Module, folder: str, *, tokenizer=None, max_shard_bytes: int = 5 * 2**30) -> str:
    """Write ``model`` (and ``tokenizer``) to ``folder`` in HF layout; returns the folder.

    The files are written to a temporary folder beside it that replaces ``folder`` only when complete,
    so an interrupted export leaves any earlier export intact. In a multi-process run every process
    must call this (the gather is collective); process 0 writes.
    """
    hf = copy.deepcopy(model.cfg.hf)
    hf.architectures = [architecture_name(hf.model_type, model_info(model).head)]
    tensors = hf_state_dict(model)
    if jax.process_index() != 0:
        return folder

    def write(tmp):
        hf.save_pretrained(tmp)
        save_safetensors(tensors, tmp, max_shard_bytes)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return write_folder(folder, write)

