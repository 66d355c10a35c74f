"""(IA)^3 (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning", arXiv:2205.05638): learned vectors rescale the keys, the values and the inner
feed-forward activations. As in PEFT, a target layer's output is scaled, ``y = (x W + b) * l``, except the
feed-forward layers, whose input is scaled, ``y = (x * l) W + b``; every ``l`` starts at ones, so the
model is unchanged at initialisation, and merges exactly into ``W`` (and ``b``).
"""

import jax.numpy as jnp
from flax import nnx

from adapt.core.schema import Bool, Either, Str, Tuple
from adapt.methods.base import (
    Adapter,
    Injection,
    compute_dtype,
    host,
    linear_axes,
    linear_modules,
    peft_targets,
    plain_linear,
    refuse_peft_options,
    replace_module,
    selects,
    set_value,
)
from adapt.methods.lora import TARGETS
from adapt.methods.registry import register
from adapt.models.registry import model_info


class IA3Linear(nnx.Module):
    """A linear layer whose output (or, for a feed-forward layer, input) is scaled by ``ia3_l``."""

    def __init__(self, base: nnx.Linear, *, feedforward: bool):
        self.kernel, self.bias, self.dtype, self.feedforward = base.kernel, base.bias, base.dtype, feedforward
        *stack, d_in, d_out = base.kernel.shape  # stack: [] or, in stacked layers, [L]
        *lead, ax_in, ax_out = linear_axes(base)
        self.ia3_l = Adapter(jnp.ones((*stack, d_in if feedforward else d_out), jnp.float32),
                             logical_axes=(*lead, ax_in if feedforward else ax_out))  # [(L,) in | out]

    def __call__(self, x):  # [..., in] -> [..., out]
        dt = compute_dtype(self.dtype, x)
        scale = self.ia3_l[...].astype(dt)
        x = x.astype(dt) * scale if self.feedforward else x.astype(dt)
        y = x @ self.kernel[...].astype(dt)
        y = y if self.bias is None else y + self.bias[...].astype(dt)
        return y if self.feedforward else y * scale

    def merged(self) -> nnx.Linear:
        scale, kernel = self.ia3_l[...], self.kernel[...]
        bias = None if self.bias is None else self.bias[...]
        if self.feedforward:
            kernel = kernel * scale[..., :, None]
        else:
            kernel, bias = kernel * scale[..., None, :], None if bias is None else bias * scale
        return plain_linear(self, kernel.astype(self.kernel.dtype), bias, self.dtype)


@register
class IA3(Injection):
    name = "ia3"
    defaults = dict(targets=(), feedforward=(), train_head=True)
    schema = dict(targets=TARGETS, train_head=Bool(doc="the task head trains too"),
                  feedforward=Either(Str(), Tuple(of=Str(empty=False)),
                                     doc="which targets are feed-forward layers (their input is scaled); "
                                         "empty: the family's"))
    stacked_layers_ok = True  # a stacked kernel [L, in, out] gets stacked vectors [L, in | out]

    def apply(self, model, rngs):
        # The family's defaults are PEFT's (TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING, feed-forward table).
        family = model_info(model).family.targets
        targets = self.targets or family.ia3
        feedforward = self.feedforward or (() if self.targets else family.ia3_feedforward)
        for path, layer in linear_modules(model, targets):
            ff = selects(model, path, feedforward, "method.feedforward")
            replace_module(model, path, IA3Linear(layer, feedforward=ff))
        return model


    # PEFT's IA3Config: ia3_l [out, 1] scales an output, [1, in] a feed-forward layer's input
    peft_type = "IA3"
    injected = IA3Linear

    def peft_tensors(self, layer):
        scale = host(layer.ia3_l[...])  # [(L,) in | out]
        return {"ia3_l": scale[..., None, :] if layer.feedforward else scale[..., :, None]}

    def set_peft_tensors(self, layer, tensors):
        if set(tensors) != {"ia3_l"}:
            raise ValueError(f"tensors {sorted(tensors)}; expected ['ia3_l']")
        scale = tensors["ia3_l"]
        set_value(layer.ia3_l, scale[..., 0, :] if layer.feedforward else scale[..., :, 0], "ia3_l")

    def peft_config(self, layers):
        return {"target_modules": sorted(layers), "init_ia3_weights": True,
                "feedforward_modules": sorted(name for name, layer in layers.items() if layer.feedforward)}

    @classmethod
    def knobs_from_peft(cls, config):
        refuse_peft_options(config, ("exclude_modules",), cls.name)
        return dict(targets=peft_targets(config), feedforward=peft_targets(config, "feedforward_modules"),
                    train_head=bool(config.get("modules_to_save")))
