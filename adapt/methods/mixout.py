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
import numpy as np

from adapt.core.schema import Float
from adapt.methods.base import Method, leaf_paths, map_with_path
from adapt.methods.registry import register
from adapt.models.layers import keep_mask
from adapt.models.registry import model_info, per_layer_paths


@register
class Mixout(Method):
    name = "mixout"
    stacked_layers_ok = True  # slice i of a stacked kernel draws layer i's unrolled mask (anchors' "index")
    defaults = dict(p=0.1)
    schema = dict(p=Float(ge=0, lt=1, doc="probability of mixing out each weight to its pretrained value"))

    def anchors(self, model, params):
        """The start point, and each parameter's number among the unrolled model's parameters (in stacked
        layers, ``[L]``: layer i's for slice i), which its mask's key folds in."""
        info = model_info(model)
        layers = {path: per_layer_paths(info.family, path, info.dims.num_layers) for path, _ in leaf_paths(params)}
        number = {p: i for i, p in enumerate(sorted(p for path, ps in layers.items() for p in ps or [path]))}
        index = map_with_path(lambda path, _: np.asarray([number[p] for p in layers[path]] if layers[path] else
                                                         number[path], np.int32), params)
        return {"start": jax.tree.map(jnp.copy, params), "index": index}

    def perturb(self, params, anchors, key):
        if self.p == 0.0:
            return params
        start, index = dict(leaf_paths(anchors["start"])), dict(leaf_paths(anchors["index"]))

        def mix(path, w):
            if str(path[-1]) != "kernel":
                return w
            w0, i = start[path], index[path]
            if i.ndim:  # stacked [L, ...]: each slice's mask from its layer's key
                swap = ~jax.vmap(lambda k: keep_mask(k, w.shape[1:], self.p))(
                    jax.vmap(jax.random.fold_in, (None, 0))(key, i))
            else:
                swap = ~keep_mask(jax.random.fold_in(key, i), w.shape, self.p)
            return ((jnp.where(swap, w0, w) - self.p * w0) / (1.0 - self.p)).astype(w.dtype)

        return map_with_path(mix, params)
