"""Adapters as PEFT folders (``adapter_config.json`` + ``adapter_model.safetensors``), both ways: :func:`save_peft`
writes what ``peft.PeftModel.from_pretrained(transformers_model, folder)`` loads onto the transformers model with the
same logits, and :func:`load_peft` puts a folder PEFT saved onto our model of the same checkpoint, to train further or
evaluate. Each method PEFT has declares its form next to it (:class:`adapt.methods.base.Method`'s hooks (f): LoRA and
DoRA in ``lora.py``, (IA)^3 in ``ia3.py``); this module knows none of them.

PEFT's layout: ``base_model.model.<module>.<suffix>`` for each adapted module (``lora_A.weight [r, in]``,
``ia3_l [out, 1]``, ...), and the trained task head (``modules_to_save``) under its HF names.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import nnx

from adapt.core.errors import CheckpointError, ConfigError
from adapt.core.files import write_folder
from adapt.methods.base import Method, host, set_value, under
from adapt.methods.registry import METHODS
from adapt.models import heads
from adapt.models.checkpoint_io import safetensors_refs, save_safetensors
from adapt.models.registry import hf_key, model_info, param_paths, per_layer_paths, to_hf

PREFIX = "base_model.model."
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model"


def _injected(model: nnx.Module, method: Method) -> dict[str, tuple[nnx.Module, int | None]]:
    """HF module name -> (the injected layer, its slice in stacked layers or None), in the model's order."""
    info = model_info(model)
    out = {}
    for path, layer in nnx.iter_modules(model):
        if isinstance(layer, method.injected):
            layers = per_layer_paths(info.family, tuple(path), info.dims.num_layers)  # stacked: slice i is layer i's
            for i, one in enumerate(layers or [tuple(path)]):
                out[hf_key(info.family, one + ("kernel",))[0].removesuffix(".weight")] = (layer, i if layers else None)
    return out


def save_peft(model: nnx.Module, method: Method, folder: str, *, base_model: str | None = None) -> str:
    """Write the adapters ``method`` put in ``model`` (and its trained head) to ``folder`` as a PEFT adapter;
    ``base_model`` is recorded as ``base_model_name_or_path``. Returns the folder."""
    if method.peft_type is None:
        have = ", ".join(sorted(n for n, cls in METHODS.items() if cls.peft_type))
        raise ConfigError(f"method {method.name!r} has no PEFT form (methods that do: {have}); merge the method into "
                          f"the weights and save_pretrained instead")
    info = model_info(model)
    layers = _injected(model, method)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no {method.name} layers: apply the method before saving it")
    tensors, per_layer = {}, {}
    for name, (layer, i) in layers.items():
        if id(layer) not in per_layer:
            per_layer[id(layer)] = method.peft_tensors(layer)
        for suffix, array in per_layer[id(layer)].items():
            tensors[f"{PREFIX}{name}.{suffix}"] = np.ascontiguousarray(array if i is None else array[i])
    unique = list({id(layer): layer for layer, _ in layers.values()}.values())
    tensors.update({f"base_model.{name}": array for name, array in method.peft_shared(unique).items()})
    trained_heads = info.heads if getattr(method, "train_head", False) else ()
    for path, var in param_paths(nnx.state(model, nnx.Param)):
        if under(path, trained_heads):
            key, transpose = hf_key(info.family, path)
            tensors[PREFIX + key] = np.ascontiguousarray(to_hf(host(var[...]), transpose))
    config = {"peft_type": method.peft_type, "task_type": heads.get(info.head).peft_task_type,
              "base_model_name_or_path": base_model, "fan_in_fan_out": not info.family.transpose_kernels,
              "inference_mode": True, "modules_to_save": sorted({p.split(".")[-1] for p in trained_heads}) or None,
              **method.peft_config({name: layer for name, (layer, _) in layers.items()})}
    if jax.process_index() != 0:
        return folder

    def write(tmp):
        with open(os.path.join(tmp, CONFIG), "w") as f:
            json.dump(config, f, indent=2)
        save_safetensors(tensors, tmp, max_shard_bytes=2**62, name=WEIGHTS)

    return write_folder(folder, write)


def read_peft_config(folder: str) -> dict:
    """A PEFT folder's ``adapter_config.json``; a missing or malformed one is a one-line CheckpointError."""
    path = os.path.join(folder, CONFIG)
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found; expected a PEFT adapter folder (adapter_config.json and "
                              f"{WEIGHTS}.safetensors)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        raise CheckpointError(f"{path}: expected an object with a string 'peft_type'")
    return config


def peft_method(config: dict, where: str) -> Method:
    """The method (with its knobs) that PEFT's ``config`` describes: the first registered method of its
    ``peft_type`` that takes it."""
    for cls in METHODS.values():
        if cls.peft_type == config["peft_type"]:
            try:
                knobs = cls.knobs_from_peft(config)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
            if knobs is not None:
                return cls(**knobs)
    have = sorted({cls.peft_type for cls in METHODS.values() if cls.peft_type})
    raise ConfigError(f"{where}: peft_type {config['peft_type']!r} is not one adapt reads (it reads {', '.join(have)})")


def load_peft(model: nnx.Module, folder: str, *, seed: int = 0) -> tuple[nnx.Module, Method]:
    """``model`` (our model of the checkpoint the adapter was trained on, as :func:`adapt.models.from_pretrained` gives
    it) with the PEFT adapter in ``folder`` applied: the method built from its ``adapter_config.json``, its layers
    injected and set from ``adapter_model.safetensors``, its saved task head loaded. Returns (model, method); the
    method trains the adapter further as it trains its own. A tensor missing, left over or of another shape is a
    one-line CheckpointError naming the file."""
    where = os.path.join(folder, CONFIG)
    method = peft_method(read_peft_config(folder), where)
    model = method.apply(model, nnx.Rngs(seed))
    weights = os.path.join(folder, f"{WEIGHTS}.safetensors")
    if not os.path.exists(weights):
        raise CheckpointError(f"{weights}: not found (PEFT adapters here are safetensors)")
    # PEFT names a saved head by its module (older versions: inside modules_to_save.default)
    refs = {k.replace(".modules_to_save.default.", "."): v for k, v in safetensors_refs(weights).items()}
    layers = _injected(model, method)
    found: dict[str, dict[str, np.ndarray]] = {}  # module name -> suffix -> tensor
    for key in [k for k in refs if k.startswith(PREFIX)]:
        parts = key[len(PREFIX):].split(".")
        name = next((".".join(parts[:cut]) for cut in range(len(parts) - 1, 0, -1)
                     if ".".join(parts[:cut]) in layers), None)
        if name is not None:
            found.setdefault(name, {})[key[len(PREFIX + name) + 1:]] = refs.pop(key).read()
    shared = {k[len("base_model."):]: refs.pop(k).read() for k in list(refs)
              if k.startswith("base_model.") and not k.startswith(PREFIX)}
    if missing := [name for name in layers if name not in found]:
        raise CheckpointError(f"{weights}: no tensors of {len(missing)} modules the config's targets reach: "
                              f"{', '.join(missing[:3])}")
    slices: dict[int, list[str]] = {}  # an injected layer -> its modules' names, slice by slice
    for name, (layer, _) in layers.items():
        slices.setdefault(id(layer), []).append(name)
    for names in slices.values():
        layer, stacked = layers[names[0]][0], layers[names[0]][1] is not None
        tensors = {suffix: np.stack([found[n][suffix] for n in names]) if stacked else found[names[0]][suffix]
                   for suffix in found[names[0]]}
        try:
            method.set_peft_tensors(layer, tensors)
        except (ValueError, CheckpointError) as e:
            raise CheckpointError(f"{weights}: {names[0]}: {e}") from None
    try:
        method.set_peft_shared([layers[names[0]][0] for names in slices.values()], shared)
    except (ValueError, CheckpointError) as e:
        raise CheckpointError(f"{weights}: {e}") from None
    info = model_info(model)
    for path, var in param_paths(nnx.state(model, nnx.Param)):
        key, transpose = hf_key(info.family, path)
        if PREFIX + key in refs and under(path, info.heads):
            try:
                set_value(var, to_hf(np.asarray(refs.pop(PREFIX + key).read(), np.float32), transpose), key)
            except CheckpointError as e:
                raise CheckpointError(f"{weights}: {e}") from None
    if refs:
        raise CheckpointError(f"{weights}: {len(refs)} tensors {info.family.name} does not take: "
                              f"{', '.join(sorted(refs)[:3])}")
    return model, method
