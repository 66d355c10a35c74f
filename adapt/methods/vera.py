"""VeRA (Kopiczko, Blankevoort & Asano, 2024, "VeRA: Vector-based Random Matrix Adaptation", arXiv:2310.11454): one
pair of frozen random matrices shared by every adapted layer, ``A [r, in_max]`` and ``B [out_max, r]`` (PyTorch's
layouts; each layer reads the slices ``A[:, :in]`` and ``B[:out, :]``), and per layer two trained vectors that scale
them, ``y = x W + b + lambda_b * (B (lambda_d * (A dropout(x))))``. ``lambda_b`` starts at zero (the model is unchanged
at step 0), ``lambda_d`` at ``d_initial``. As PEFT's ``VeraModel``: rank 256 by default, the projections drawn
Kaiming-uniform over the largest target shapes, and saved in the adapter (``save_projection``, ``base_model.vera_A``
and ``vera_B``), so that PEFT loads ours and we load PEFT's without its random generator.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adapt.core.errors import ConfigError
from adapt.core.schema import Bool, Float, Int
from adapt.methods.base import (
    Adapter,
    Injection,
    compute_dtype,
    dotted,
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
from adapt.models import layers as L
from adapt.models.registry import model_info, unnumbered


class VeRAProjection(nnx.Variable):
    """A layer's slice of VeRA's shared random matrices: never trained."""


class VeRALinear(nnx.Module):
    """A linear layer with VeRA's update: its slices ``vera_a [(L,) in, r]`` and ``vera_b [(L,) r, out]`` of the shared
    projections (ours are ``[in, out]``-ordered: PEFT's transposed) and the trained ``lambda_d [(L,) r]`` and
    ``lambda_b [(L,) out]``."""

    def __init__(self, base: nnx.Linear, name: str, a: jax.Array, b: jax.Array, *, d_initial: float, dropout: float):
        self.kernel, self.bias, self.dtype = base.kernel, base.bias, base.dtype
        *stack, d_in, d_out = base.kernel.shape  # stack: [] or [L]
        *lead, ax_in, ax_out = linear_axes(base)
        r = a.shape[-1]
        # copies: layers of one shape would share a buffer, which the train step, donating its state, frees twice
        self.vera_a = VeRAProjection(jnp.array(jnp.broadcast_to(a[:d_in], (*stack, d_in, r)), copy=True))
        self.vera_b = VeRAProjection(jnp.array(jnp.broadcast_to(b[:, :d_out], (*stack, r, d_out)), copy=True))
        self.lambda_d = Adapter(jnp.full((*stack, r), d_initial, jnp.float32), logical_axes=(*lead, "adapter"))
        self.lambda_b = Adapter(jnp.zeros((*stack, d_out), jnp.float32), logical_axes=(*lead, ax_out))
        self.name, self.dropout = name, dropout

    def __call__(self, x):  # [..., in] -> [..., out]
        dt = compute_dtype(self.dtype, x)
        x = x.astype(dt)
        y = x @ self.kernel[...].astype(dt)
        y = y if self.bias is None else y + self.bias[...].astype(dt)
        dropped = L.module_dropout(x, self.dropout, self.name)
        inner = (dropped @ self.vera_a[...].astype(dt)) * self.lambda_d[...].astype(dt)
        return y + (inner @ self.vera_b[...].astype(dt)) * self.lambda_b[...].astype(dt)  # [..., r], [..., out]

    def merged(self) -> nnx.Linear:
        scaled_a = self.vera_a[...] * self.lambda_d[...][..., None, :]  # [(L,) in, r]
        delta = scaled_a @ self.vera_b[...] * self.lambda_b[...][..., None, :]  # [(L,) in, out]
        kernel = self.kernel[...].astype(jnp.float32) + delta
        return plain_linear(self, kernel.astype(self.kernel.dtype), None if self.bias is None else self.bias[...],
                            self.dtype)


@register
class VeRA(Injection):
    name = "vera"
    defaults = dict(rank=256, d_initial=0.1, dropout=0.0, targets=(), train_head=True)
    schema = dict(rank=Int(min=1, doc="r, the shared projections' inner width"),
                  d_initial=Float(gt=0, doc="lambda_d's start (lambda_b starts at 0)"),
                  dropout=Float(ge=0, lt=1, doc="dropout on the update's input"), targets=TARGETS,
                  train_head=Bool(doc="the task head trains too"))
    stacked_layers_ok = True  # a stacked kernel gets stacked vectors (and the projections' slices, one per layer)

    def apply(self, model, rngs):
        family = model_info(model).family
        found = linear_modules(model, self.targets or family.targets.lora)
        d_in = max(layer.kernel.shape[-2] for _, layer in found)
        d_out = max(layer.kernel.shape[-1] for _, layer in found)
        # PEFT's _kaiming_init: uniform within sqrt(6 / fan_in) of PyTorch's [r, in_max] and [out_max, r]
        a = jax.random.uniform(rngs.params(), (d_in, self.rank), jnp.float32, -1, 1) * math.sqrt(6 / d_in)
        b = jax.random.uniform(rngs.params(), (self.rank, d_out), jnp.float32, -1, 1) * math.sqrt(6 / self.rank)
        for path, layer in found:
            replace_module(model, path, VeRALinear(layer, dotted(unnumbered(family, path)), a, b,
                                                   d_initial=self.d_initial, dropout=self.dropout))
        return model


    # PEFT's VeraConfig: vera_lambda_b [out], vera_lambda_d [r] per layer; the shared vera_A, vera_B
    peft_type = "VERA"
    injected = VeRALinear

    def peft_tensors(self, layer):
        return {"vera_lambda_b": host(layer.lambda_b[...]), "vera_lambda_d": host(layer.lambda_d[...])}

    def set_peft_tensors(self, layer, tensors):
        if set(tensors) != {"vera_lambda_b", "vera_lambda_d"}:
            raise ValueError(f"tensors {sorted(tensors)}; expected ['vera_lambda_b', 'vera_lambda_d']")
        set_value(layer.lambda_b, tensors["vera_lambda_b"], "vera_lambda_b")
        set_value(layer.lambda_d, tensors["vera_lambda_d"], "vera_lambda_d")

    def peft_shared(self, layers):
        def first(x):  # a stacked layer's slices are alike: layer 0's
            return host(x)[(0,) * (x.ndim - 2)]

        widest_in = max(layers, key=lambda layer: layer.vera_a.shape[-2])
        widest_out = max(layers, key=lambda layer: layer.vera_b.shape[-1])
        return {"vera_A": first(widest_in.vera_a[...]).T, "vera_B": first(widest_out.vera_b[...]).T}

    def set_peft_shared(self, layers, tensors):
        if set(tensors) != {"vera_A", "vera_B"}:
            raise ValueError(f"shared tensors {sorted(tensors)}; expected ['vera_A', 'vera_B'] (save_projection)")
        a, b = tensors["vera_A"].T, tensors["vera_B"].T  # [in_max, r], [r, out_max]
        for layer in layers:
            d_in, d_out = layer.vera_a.shape[-2], layer.vera_b.shape[-1]
            set_value(layer.vera_a, np.broadcast_to(a[:d_in], layer.vera_a.shape), "vera_A")
            set_value(layer.vera_b, np.broadcast_to(b[:, :d_out], layer.vera_b.shape), "vera_B")

    def peft_config(self, layers):
        return {"r": self.rank, "d_initial": self.d_initial, "vera_dropout": self.dropout, "bias": "none",
                "target_modules": sorted(layers), "projection_prng_key": 0, "save_projection": True,
                "init_weights": True}

    @classmethod
    def knobs_from_peft(cls, config):
        if config.get("save_projection") is False:
            raise ConfigError("save_projection=False: the shared projections are not in the file (PEFT draws them "
                             "from its own generator)")
        refuse_peft_options(config, ("layers_to_transform", "bias", "exclude_modules"), cls.name)
        return dict(rank=int(config["r"]), d_initial=float(config.get("d_initial", 0.1)),
                    dropout=float(config.get("vera_dropout") or 0.0), targets=peft_targets(config),
                    train_head=bool(config.get("modules_to_save")))
