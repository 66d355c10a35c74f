"""L2-SP (Li, Grandvalet & Davoine, 2018, "Explicit Inductive Bias for Transfer Learning with
Convolutional Networks", arXiv:1802.01483): weight decay toward the starting point instead of toward zero,

    penalty = alpha / 2 * sum ||w - w0||^2 (pretrained parameters) + beta / 2 * sum ||w||^2 (the fresh head),

added to the loss once per step. The optimizer's own weight decay is switched off for every parameter,
since the penalty replaces it. The starting point ``w0`` is the model as handed to the trainer (kept on
the parameters' shardings; one more copy of the trainable parameters in memory).
"""

import jax
import jax.numpy as jnp

from adapt.core.schema import Float
from adapt.methods.base import Method, head_prefixes, leaf_paths, under
from adapt.methods.registry import register


@register
class L2SP(Method):
    name = "l2sp"
    stacked_layers_ok = True  # sums over every parameter alike: a stacked one's sum is its layers' sums
    defaults = dict(alpha=0.01, beta=0.01)
    schema = dict(alpha=Float(ge=0, doc="weight of the pull towards the pretrained weights"),
                  beta=Float(ge=0, doc="weight of the L2 penalty on the task head"))

    def decays(self, path, kind):
        return False

    def anchors(self, model, params):
        self.heads = head_prefixes(model)
        return {"start": jax.tree.map(jnp.copy, params)}

    def penalty(self, params, anchors):
        total = jnp.zeros((), jnp.float32)
        for (path, w), (_, w0) in zip(leaf_paths(params), leaf_paths(anchors["start"])):
            if under(path, self.heads):
                total += 0.5 * self.beta * jnp.sum(jnp.square(w))
            else:
                total += 0.5 * self.alpha * jnp.sum(jnp.square(w - w0))
        return total
