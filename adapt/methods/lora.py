"""LoRA and DoRA.

LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685): a frozen
linear layer ``y = x W + b`` gains a trainable low-rank update, ``y = x W + b + s * dropout(x) A B`` with
``A [in, r]`` (Kaiming-uniform, as PEFT) and ``B [r, out]`` (zeros, so the model is unchanged at
initialisation), ``s = alpha / r`` or, with rsLoRA (Kalajdzievski, 2023, arXiv:2312.03732),
``alpha / sqrt(r)``.

DoRA (Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", arXiv:2402.09353): the updated
weight is split into a direction and a trained magnitude per output unit,
``W' = m * (W + s A B) / ||W + s A B||`` (norm over the input dimension; treated as a constant in the
backward pass, section 4.3), with ``m`` initialised to ``||W||`` so that ``W' = W`` at first.

Targets follow PEFT's ``target_modules``: names matched as suffixes of the module path, or one regex
matched against the whole path; empty means the family's default (``MethodTargets.lora``, PEFT's:
attention query and value).
The task head (a classifier the base checkpoint lacks) trains fully, as PEFT's ``modules_to_save``.
:func:`~adapt.methods.peft_io.save_peft` writes the adapter as a PEFT folder and
:func:`~adapt.methods.peft_io.load_peft` reads one (the hooks below declare PEFT's names and layouts).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from adapt.core.errors import ConfigError
from adapt.core.schema import Bool, Either, Float, Int, Str, Tuple
from adapt.methods.base import (
    Adapter,
    Injection,
    compute_dtype,
    dotted,
    draws_per_layer,
    host,
    linear_axes,
    linear_modules,
    peft_targets,
    plain_linear,
    refuse_peft_options,
    replace_module,
    set_value,
)
from adapt.methods.registry import register
from adapt.models import layers as L
from adapt.models.registry import model_info, unnumbered

# PEFT's target_modules: a regex matched against the whole dotted module path, or module names matched as suffixes
TARGETS = Either(Str(), Tuple(of=Str(empty=False)), doc="the linear layers adapted: a regex of the whole dotted "
                 "path, or names matched as path suffixes; empty: the family's default")


class LoRAScale(nnx.Variable):
    """LoRA's ``s`` (alpha / r, or alpha / sqrt(r)): never trained, not a parameter of the checkpoint."""


class LoRALinear(nnx.Module):
    """A linear layer with a low-rank update; ``kernel`` and ``bias`` keep the base layer's names, so the
    checkpoint mapping and the sharding rules see the same parameters as before.

    ``name``: the module's path without a layer number (:func:`adapt.models.layers.module_dropout`'s); ``keys``:
    the keys of ``A``'s draw, one, or in stacked layers (``model.scan_layers``: the base kernel ``[L, in, out]``)
    one per layer, as the unrolled model draws them. Stacked, every variable here has the leading ``[L]`` too and
    the scan hands each layer its slice, so the forward pass is the same code."""

    def __init__(self, base: nnx.Linear, name: str, *, rank: int, scaling: float, dropout: float, dora: bool,
                 keys: list[jax.Array]):
        self.kernel, self.bias, self.dtype = base.kernel, base.bias, base.dtype
        *stack, d_in, d_out = base.kernel.shape  # stack: [] or [L]
        *lead, ax_in, ax_out = linear_axes(base)
        bound = 1.0 / math.sqrt(d_in)  # PEFT: kaiming_uniform_(a=sqrt(5)) on the [r, in] weight
        a = jnp.stack([jax.random.uniform(key, (d_in, rank), jnp.float32, -bound, bound) for key in keys])
        self.lora_a = Adapter(a.reshape(*stack, d_in, rank), logical_axes=(*lead, ax_in, "adapter"))
        self.lora_b = Adapter(jnp.zeros((*stack, rank, d_out), jnp.float32), logical_axes=(*lead, "adapter", ax_out))
        if dora:
            self.magnitude = Adapter(jnp.linalg.norm(base.kernel[...].astype(jnp.float32), axis=-2),
                                     logical_axes=(*lead, ax_out))
        # A frozen variable, not a constant of the traced program: trials differing only in alpha share a program
        # (a population stacks it per member, adapt.study.populations).
        self.scaling = LoRAScale(jnp.full(stack, scaling, jnp.float32))
        self.name, self.dropout, self.dora = name, dropout, dora

    def delta(self) -> jax.Array:  # [(L,) in, out]
        return self.scaling[...][..., None, None] * (self.lora_a[...] @ self.lora_b[...])

    def direction_scale(self) -> jax.Array:  # DoRA: m / ||W + s A B|| per output unit, [(L,) out]
        norm = jnp.linalg.norm(self.kernel[...].astype(jnp.float32) + self.delta(), axis=-2)
        return self.magnitude[...] / jax.lax.stop_gradient(norm)

    def __call__(self, x):  # [..., in] -> [..., out]
        dt = compute_dtype(self.dtype, x)
        x = x.astype(dt)
        y = x @ self.kernel[...].astype(dt)
        dropped = L.module_dropout(x, self.dropout, self.name)
        low_rank = (dropped @ self.lora_a[...].astype(dt)) @ self.lora_b[...].astype(dt)  # [..., out]
        y = y + self.scaling[...].astype(dt) * low_rank
        if self.dora:
            y = y * self.direction_scale().astype(dt)
        return y if self.bias is None else y + self.bias[...].astype(dt)

    def merged(self) -> nnx.Linear:
        kernel = self.kernel[...].astype(jnp.float32) + self.delta()
        if self.dora:
            kernel = kernel * self.direction_scale()[..., None, :]
        return plain_linear(self, kernel.astype(self.kernel.dtype), None if self.bias is None else self.bias[...],
                            self.dtype)


@register
class LoRA(Injection):
    name = "lora"
    defaults = dict(rank=8, alpha=16.0, dropout=0.0, targets=(), rslora=False, train_head=True)
    schema = dict(rank=Int(min=1, doc="r, the rank of the update A [in, r] B [r, out]"),
                  alpha=Float(gt=0, doc="the update's scale s = alpha / r (rslora: alpha / sqrt(r))"),
                  dropout=Float(ge=0, lt=1, doc="dropout on the update's input"),
                  targets=TARGETS, rslora=Bool(doc="scale by alpha / sqrt(r) (rsLoRA)"),
                  train_head=Bool(doc="the task head trains too"))
    stacked_layers_ok = True  # a LoRA on a stacked kernel [L, in, out] is a stacked LoRA: A [L, in, r], B [L, r, out]
    dora = False

    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def targets_of(self, model) -> tuple | str:
        return self.targets or model_info(model).family.targets.lora

    def wrap(self, layer: nnx.Linear, name: str, keys: list[jax.Array]) -> LoRALinear:
        return LoRALinear(layer, name, rank=self.rank, scaling=self.scaling(), dropout=self.dropout, dora=self.dora,
                          keys=keys)

    def apply(self, model, rngs):
        found = linear_modules(model, self.targets_of(model))
        family = model_info(model).family
        for (path, layer), keys in zip(found, draws_per_layer(model, [p for p, _ in found], rngs.params)):
            replace_module(model, path, self.wrap(layer, dotted(unnumbered(family, path)), keys))
        return model


    # PEFT's LoraConfig: lora_A.weight [r, in], lora_B.weight [out, r], DoRA's lora_magnitude_vector [out]
    peft_type = "LORA"
    injected = LoRALinear

    def peft_tensors(self, layer):
        out = {"lora_A.weight": host(layer.lora_a[...]).swapaxes(-1, -2),  # [(L,) r, in]
               "lora_B.weight": host(layer.lora_b[...]).swapaxes(-1, -2)}  # [(L,) out, r]
        if layer.dora:
            out["lora_magnitude_vector"] = host(layer.magnitude[...])  # [(L,) out]
        return out

    def set_peft_tensors(self, layer, tensors):
        expected = {"lora_A.weight", "lora_B.weight"} | ({"lora_magnitude_vector"} if layer.dora else set())
        if set(tensors) != expected:
            raise ValueError(f"tensors {sorted(tensors)}; expected {sorted(expected)}")
        set_value(layer.lora_a, tensors["lora_A.weight"].swapaxes(-1, -2), "lora_A.weight")
        set_value(layer.lora_b, tensors["lora_B.weight"].swapaxes(-1, -2), "lora_B.weight")
        if layer.dora:
            set_value(layer.magnitude, tensors["lora_magnitude_vector"], "lora_magnitude_vector")

    def peft_config(self, layers):
        return {"r": self.rank, "lora_alpha": self.alpha, "lora_dropout": self.dropout, "use_rslora": self.rslora,
                "use_dora": self.dora, "target_modules": sorted(layers), "bias": "none"}

    @classmethod
    def knobs_from_peft(cls, config):
        if bool(config.get("use_dora")) != cls.dora:
            return None
        init = config.get("init_lora_weights", True)
        if init not in (True, False, "gaussian"):  # PiSSA, OLoRA, LoftQ, ...: factors of a changed base weight
            raise ConfigError(f"init_lora_weights={init!r}: the adapter applies to PEFT's residual base weight, not "
                              f"the checkpoint's; save it with PEFT's path_initial_model_for_weight_conversion")
        refuse_peft_options(config, ("rank_pattern", "alpha_pattern", "layers_to_transform", "bias", "lora_bias",
                                     "target_parameters", "exclude_modules", "layer_replication", "use_qalora",
                                     "trainable_token_indices"), cls.name)
        return dict(rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                    dropout=float(config.get("lora_dropout") or 0.0), rslora=bool(config.get("use_rslora")),
                    targets=peft_targets(config), train_head=bool(config.get("modules_to_save")))


@register
class DoRA(LoRA):
    name = "dora"
    dora = True
