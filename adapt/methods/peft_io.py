"""LoRA and DoRA written as a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``),
which ``peft.PeftModel.from_pretrained(transformers_model, folder)`` loads onto the transformers model with
the same logits.

PEFT's layout: ``base_model.model.<module>.lora_A.weight [r, in]``, ``lora_B.weight [out, r]``, DoRA's
``lora_magnitude_vector [out]``; the trained task head (``modules_to_save``) under its HF names.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import nnx

from adapt.core.errors import ConfigError
from adapt.core.files import write_folder
from adapt.methods.base import under
from adapt.methods.lora import LoRA, LoRALinear
from adapt.models import heads
from adapt.models.checkpoint_io import save_safetensors
from adapt.models.registry import hf_key, model_info, param_paths, per_layer_paths, to_hf


def _host(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(jax.device_get(x), np.float32))


def save_peft(model: nnx.Module, method: LoRA, folder: str, *, base_model: str | None = None) -> str:
    """Write the LoRA/DoRA layers of ``model`` (and its trained head) to ``folder`` as a PEFT adapter;
    ``base_model`` is recorded as ``base_model_name_or_path``. Returns the folder."""
    if not isinstance(method, LoRA):
        raise ConfigError(f"method {method.name!r}: only LoRA and DoRA adapters can be saved in PEFT format; "
                          f"merge the method into the weights and save_pretrained instead")
    info = model_info(model)
    family = info.family
    tensors, modules = {}, []
    for path, layer in nnx.iter_modules(model):
        if not isinstance(layer, LoRALinear):
            continue
        factors = {"lora_A.weight": _host(layer.lora_a[...]).swapaxes(-1, -2),  # [(L,) r, in]
                   "lora_B.weight": _host(layer.lora_b[...]).swapaxes(-1, -2)}  # [(L,) out, r]
        if layer.dora:
            factors["lora_magnitude_vector"] = _host(layer.magnitude[...])  # [(L,) out]
        layers = per_layer_paths(family, tuple(path), info.dims.num_layers)  # stacked layers: slice i is layer i's
        for i, one in enumerate(layers or [tuple(path)]):
            name = hf_key(family, one + ("kernel",))[0].removesuffix(".weight")
            modules.append(name)
            for suffix, array in factors.items():
                tensors[f"base_model.model.{name}.{suffix}"] = np.ascontiguousarray(array[i] if layers else array)
    if not modules:
        raise ConfigError(f"{type(model).__name__} has no LoRA layers: apply the method before saving it")
    trained_heads = info.heads if method.train_head else ()
    for path, var in param_paths(nnx.state(model, nnx.Param)):
        if under(path, trained_heads):
            key, transpose = hf_key(family, path)
            tensors[f"base_model.model.{key}"] = np.ascontiguousarray(to_hf(_host(var[...]), transpose))
    config = {
        "peft_type": "LORA", "task_type": heads.get(info.head).peft_task_type, "base_model_name_or_path": base_model,
        "r": method.rank, "lora_alpha": method.alpha, "lora_dropout": method.dropout, "use_rslora": method.rslora,
        "use_dora": method.dora, "target_modules": sorted(modules), "bias": "none",
        "fan_in_fan_out": not family.transpose_kernels, "inference_mode": True,
        "modules_to_save": sorted({p.split(".")[-1] for p in trained_heads}) or None,
    }
    if jax.process_index() != 0:
        return folder

    def write(tmp):
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            json.dump(config, f, indent=2)
        save_safetensors(tensors, tmp, max_shard_bytes=2**62, name="adapter_model")

    return write_folder(folder, write)
