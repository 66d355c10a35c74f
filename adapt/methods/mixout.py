"""Mixout (Lee, Cho & Kang, 2020, "Mixout: Effective Regularization to Finetune Large-scale Pretrained
Language Models", arXiv:1909.11299): at every train step each weight element is swapped for its value at
the start of fine-tuning with probability ``p``, and the mix is rescaled so its expectation is the
current weight:

    w' = (M * w0 + (1 - M) * w - p * w0) / (1 - p),   M ~ Bernoulli(p) per element,

applied to the kernels of the linear layers (the paper's ``MixLinear``); evaluation uses ``w``. The start
point of the randomly initialised head is its initial value, as in the paper.
"""

import jax
import jax.numpy as jnp

from adapt.core.schema import Float
from adapt.methods.base import Method, leaf_paths, map_with_path
from adapt.methods.registry import register
from adapt.models.layers import keep_mask


@register
class Mixout(Method):
    name = "mixout"
    defaults = dict(p=0.1)
    schema = dict(p=Float(ge=0, lt=1, doc="probability of mixing out each weight to its pretrained value"))

    def anchors(self, model, params):
        return {"start": jax.tree.map(jnp.copy, params)}

    def perturb(self, params, anchors, key):
        if self.p == 0.0:
            return params
        start = dict(leaf_paths(anchors["start"]))
        index = {path: i for i, (path, _) in enumerate(leaf_paths(params))}

        def mix(path, w):
            if str(path[-1]) != "kernel":
                return w
            w0 = start[path]
            swap = ~keep_mask(jax.random.fold_in(key, index[path]), w.shape, self.p)
            return ((jnp.where(swap, w0, w) - self.p * w0) / (1.0 - self.p)).astype(w.dtype)

        return map_with_path(mix, params)
