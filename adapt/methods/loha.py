"""LoHa (Hyeon-Woo, Ye-Bin & Oh, 2022, "FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated
Learning", arXiv:2108.06098; LyCORIS's LoHa): the weight's update is the Hadamard product of two rank-r products,
``dW = s (W1a W1b) * (W2a W2b)`` (PyTorch's ``[out, in]``: ``W1a, W2a [out, r]``, ``W1b, W2b [r, in]``), ``s = alpha /
r``, so its rank reaches r^2 for 2r(in + out) parameters. As PEFT's ``LoHaConfig`` (``hada_w1_a`` ... ``hada_w2_b``):
three factors Kaiming-uniform, ``W2b`` zero (the model is unchanged at step 0); its rank and module dropout are not
here (0 only).
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from adapt.core.schema import Bool, Float, Int
from adapt.methods.base import (
    Adapter,
    Injection,
    compute_dtype,
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
from adapt.methods.lora import TARGETS
from adapt.methods.registry import register
from adapt.models.registry import model_info

FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")  # PEFT's names, [out, r], [r, in], [out, r], [r, in]


class LoHaLinear(nnx.Module):
    """A linear layer with LoHa's update; the factors in PEFT's orientation (``[(L,) out, r]`` and ``[(L,) r, in]``)."""

    def __init__(self, base: nnx.Linear, *, rank: int, scaling: float, keys: list[jax.Array]):
        self.kernel, self.bias, self.dtype = base.kernel, base.bias, base.dtype
        *stack, d_in, d_out = base.kernel.shape
        *lead, ax_in, ax_out = linear_axes(base)

        def kaiming(key, shape):  # PyTorch's kaiming_uniform_(a=sqrt(5)) on [rows, fan_in]: within 1 / sqrt(fan_in)
            return jax.random.uniform(key, shape, jnp.float32, -1, 1) / math.sqrt(shape[-1])

        draws = [[kaiming(k, (d_out, rank)), kaiming(k2, (rank, d_in)), kaiming(k3, (d_out, rank))]
                 for k, k2, k3 in (jax.random.split(key, 3) for key in keys)]
        outer, inner = (*lead, ax_out, "adapter"), (*lead, "adapter", ax_in)
        for name, i, axes in (("hada_w1_a", 0, outer), ("hada_w1_b", 1, inner), ("hada_w2_a", 2, outer)):
            setattr(self, name, Adapter(jnp.stack([d[i] for d in draws]).reshape(*stack, *draws[0][i].shape),
                                        logical_axes=axes))
        self.hada_w2_b = Adapter(jnp.zeros((*stack, rank, d_in), jnp.float32), logical_axes=inner)
        self.scaling = scaling

    def delta(self) -> jax.Array:  # ours, [(L,) in, out]
        w1 = self.hada_w1_a[...] @ self.hada_w1_b[...]
        w2 = self.hada_w2_a[...] @ self.hada_w2_b[...]
        return (self.scaling * w1 * w2).swapaxes(-1, -2)

    def __call__(self, x):  # [..., in] -> [..., out]
        dt = compute_dtype(self.dtype, x)
        y = x.astype(dt) @ (self.kernel[...].astype(jnp.float32) + self.delta()).astype(dt)
        return y if self.bias is None else y + self.bias[...].astype(dt)

    def merged(self) -> nnx.Linear:
        kernel = self.kernel[...].astype(jnp.float32) + self.delta()
        return plain_linear(self, kernel.astype(self.kernel.dtype), None if self.bias is None else self.bias[...],
                            self.dtype)


@register
class LoHa(Injection):
    name = "loha"
    defaults = dict(rank=8, alpha=8.0, targets=(), train_head=True)
    schema = dict(rank=Int(min=1, doc="r, the rank of each of the two products"),
                  alpha=Float(gt=0, doc="the update's scale s = alpha / r"), targets=TARGETS,
                  train_head=Bool(doc="the task head trains too"))
    stacked_layers_ok = True

    def apply(self, model, rngs):
        family = model_info(model).family
        found = linear_modules(model, self.targets or family.targets.lora)
        for (path, layer), keys in zip(found, draws_per_layer(model, [p for p, _ in found], rngs.params)):
            replace_module(model, path, LoHaLinear(layer, rank=self.rank, scaling=self.alpha / self.rank, keys=keys))
        return model


    peft_type = "LOHA"
    injected = LoHaLinear

    def peft_tensors(self, layer):
        return {name: host(getattr(layer, name)[...]) for name in FACTORS}

    def set_peft_tensors(self, layer, tensors):
        if set(tensors) != set(FACTORS):
            raise ValueError(f"tensors {sorted(tensors)}; expected {list(FACTORS)} (no CP decomposition)")
        for name in FACTORS:
            set_value(getattr(layer, name), tensors[name], name)

    def peft_config(self, layers):
        return {"r": self.rank, "alpha": self.alpha, "rank_dropout": 0.0, "module_dropout": 0.0,
                "use_effective_conv2d": False, "target_modules": sorted(layers), "init_weights": True}

    @classmethod
    def knobs_from_peft(cls, config):
        refuse_peft_options(config, ("rank_dropout", "module_dropout", "rank_pattern", "alpha_pattern",
                                     "layers_to_transform", "exclude_modules"), cls.name)
        return dict(rank=int(config["r"]), alpha=float(config["alpha"]), targets=peft_targets(config),
                    train_head=bool(config.get("modules_to_save")))
