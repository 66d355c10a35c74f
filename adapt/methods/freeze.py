"""Freezing by pattern, and gradual unfreezing from the top (Howard & Ruder, 2018, "Universal Language Model
Fine-tuning for Text Classification", arXiv:1801.06146, section 3.3).

``freeze``: parameters whose dotted path matches one of the regexes in ``patterns`` (``re.search``) stay
frozen; the rest train. In stacked layers (``model.scan_layers``) the patterns are matched against each layer's
path: a stacked parameter whose layers all match is frozen; one whose layers match in part (a pattern naming
layers 0-5 only) trains with the matching slices gated from the first step to the last (no gradient, moments or
weight decay reach them, so they stay as loaded, as the unrolled model's frozen layers do; their optimizer state
is kept, zero).

``gradual_unfreezing``: all parameters are trainable, but layer groups start updating from the top down:
the task head and final norm (depth L+1) from step 0, transformer layer i (depth i+1) from step
``(L - i) * every``, the embeddings (depth 0) from step ``(L + 1) * every``. ULMFiT unfreezes one layer
per epoch: set ``every`` to the steps per epoch. Until its step a parameter gets neither gradient-driven
moments nor updates (weight decay included).
"""

import re

import numpy as np

from adapt.core.errors import ConfigError
from adapt.core.schema import Int, Str, Tuple
from adapt.methods.base import Method, dotted, path_filter
from adapt.methods.registry import register
from adapt.models.registry import model_info, per_layer_paths

NEVER = int(np.iinfo(np.int32).max)  # an unfreeze step no run reaches


@register
class Freeze(Method):
    name = "freeze"
    stacked_layers_ok = True  # a stacked parameter whose layers match in part trains, its matching slices gated
    defaults = dict(patterns=())
    schema = dict(patterns=Tuple(of=Str(empty=False), doc="regexes (re.search) of the dotted parameter paths frozen"))

    def frozen(self, path: tuple) -> bool:
        if not self.patterns:
            raise ConfigError("method.patterns is empty: name the parameters to freeze with regexes, "
                              "e.g. method.patterns=('embed', r'layers\\.[0-5]\\.')")
        return any(re.search(p, dotted(path)) for p in self.patterns)

    def trainable(self, model):
        """What is not frozen; in stacked layers (``model.scan_layers``) a parameter is frozen when every layer's
        path matches (when some do, :meth:`unfreeze_step` keeps their slices still)."""
        info = model_info(model)

        def trains(path):
            return not all(self.frozen(p) for p in per_layer_paths(info.family, path, info.dims.num_layers) or [path])
        return path_filter(trains)

    def unfreeze_step(self, path, depth, top):  # asked about each layer's slice of a stacked parameter
        return NEVER if self.frozen(path) else 0


@register
class GradualUnfreezing(Method):
    name = "gradual_unfreezing"
    stacked_layers_ok = True  # a stacked parameter unfreezes slice by slice at each layer's step (method_settings)
    defaults = dict(every=100)
    schema = dict(every=Int(min=1, doc="steps between unfreezing one more layer group, from the top"))

    def unfreeze_step(self, path, depth, top):
        return (top - depth) * self.every
