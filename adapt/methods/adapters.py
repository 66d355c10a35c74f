"""Bottleneck adapters.

Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP", arXiv:1902.00751: a small
bottleneck ``h + up(act(down(h)))`` after the attention output projection and after the feed-forward
output projection of every layer (before the residual add), trained with the layer norms and the task head.
Pfeiffer et al., 2021, "AdapterFusion: Non-Destructive Task Composition for Transfer Learning",
arXiv:2005.00247: one adapter per layer, after the feed-forward block only.

``down [D, m]`` starts normal(0, ``init_std``) and ``up [m, D]`` at zero, so the model is unchanged at
initialisation. An adapter is not linear, so it cannot be merged into the base weights.
"""

from flax import nnx

from adapt.core.schema import Bool, Choice, Float, Int
from adapt.core.sharding import variable_axes
from adapt.methods.base import (
    Adapter,
    Method,
    adapters_and_head,
    compute_dtype,
    linear_axes,
    linear_modules,
    per_layer_module,
    replace_module,
)
from adapt.methods.registry import register
from adapt.models import layers as L
from adapt.models.registry import model_info


def _adapter_linear(d_in, d_out, axes, std, rngs) -> nnx.Linear:
    layer = L.linear(d_in, d_out, axes, bias=True, std=std, dtype=None, rngs=rngs)
    layer.kernel = Adapter(layer.kernel[...], logical_axes=axes)
    layer.bias = Adapter(layer.bias[...], logical_axes=axes[1:])
    return layer


class Bottleneck(nnx.Module):
    def __init__(self, d: int, size: int, axis: str, act: str, init_std: float, rngs: nnx.Rngs):
        self.down = _adapter_linear(d, size, (axis, "adapter"), init_std, rngs)
        self.up = _adapter_linear(size, d, ("adapter", axis), 0.0, rngs)
        self.act = L.activation(act)

    def __call__(self, h):  # [..., D] -> [..., D]
        return h + self.up(self.act(self.down(h))).astype(h.dtype)


class AdaptedLinear(nnx.Module):
    """A linear layer followed by a bottleneck adapter; ``kernel`` and ``bias`` keep their names."""

    def __init__(self, base: nnx.Linear, adapter: Bottleneck):
        self.kernel, self.bias, self.dtype, self.adapter = base.kernel, base.bias, base.dtype, adapter

    def __call__(self, x):  # [..., in] -> [..., out]
        dt = compute_dtype(self.dtype, x)
        y = x.astype(dt) @ self.kernel[...].astype(dt)
        return self.adapter(y if self.bias is None else y + self.bias[...].astype(dt))


@register
class Houlsby(Method):
    name = "houlsby"
    defaults = dict(size=64, act="gelu", init_std=1e-2, train_norms=True, train_head=True)
    schema = dict(size=Int(min=1, doc="the bottleneck's width"),
                  act=Choice(*L.ACTIVATIONS, doc="the bottleneck's activation"),
                  init_std=Float(gt=0, doc="std of the bottleneck's initial weights (near-identity adapters)"),
                  train_norms=Bool(doc="the normalisation layers train too"),
                  train_head=Bool(doc="the task head trains too"))
    trains_every_weight = False
    places = ("after_attention", "after_mlp")  # fields of the family's MethodTargets
    stacked_layers_ok = True  # in stacked layers the bottlenecks are stacked, drawn layer by layer

    def apply(self, model, rngs):
        targets = model_info(model).family.targets
        for place in self.places:
            for path, layer in linear_modules(model, getattr(targets, place)):
                d_out, axis = layer.kernel.shape[-1], linear_axes(layer)[-1]
                adapter = per_layer_module(model, path, lambda: Bottleneck(d_out, self.size, axis, self.act,
                                                                           self.init_std, rngs))  # [(L,) ...]
                replace_module(model, path, AdaptedLinear(layer, adapter))
        return model

    def trainable(self, model):
        base = adapters_and_head(model, self.train_head)
        if not self.train_norms:
            return base
        return nnx.Any(base, nnx.All(nnx.Param, lambda path, var: "norm" in variable_axes(var)))


@register
class Pfeiffer(Houlsby):
    name = "pfeiffer"
    defaults = dict(size=64, act="relu", init_std=1e-2, train_norms=False, train_head=True)
    places = ("after_mlp",)
