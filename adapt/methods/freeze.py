"""Freezing by pattern, and gradual unfreezing from the top (Howard & Ruder, 2018, "Universal Language Model
Fine-tuning for Text Classification", arXiv:1801.06146, section 3.3).

``freeze``: parameters whose dotted path matches one of the regexes in ``patterns`` (``re.search``) stay
frozen; the rest train.

``gradual_unfreezing``: all parameters are trainable, but layer groups start updating from the top down:
the task head and final norm (depth L+1) from step 0, transformer layer i (depth i+1) from step
``(L - i) * every``, the embeddings (depth 0) from step ``(L + 1) * every``. ULMFiT unfreezes one layer
per epoch: set ``every`` to the steps per epoch. Until its step a parameter gets neither gradient-driven
moments nor updates (weight decay included).
"""

import re

from adapt.core.errors import ConfigError
from adapt.core.schema import Int, Str, Tuple
from adapt.methods.base import Method, dotted, path_filter
from adapt.methods.registry import register


@register
class Freeze(Method):
    name = "freeze"
    defaults = dict(patterns=())
    schema = dict(patterns=Tuple(of=Str(empty=False), doc="regexes (re.search) of the dotted parameter paths frozen"))

    def trainable(self, model):
        if not self.patterns:
            raise ConfigError("method.patterns is empty: name the parameters to freeze with regexes, "
                              "e.g. method.patterns=('embed', r'layers\\.[0-5]\\.')")
        compiled = [re.compile(p) for p in self.patterns]
        return path_filter(lambda path: not any(c.search(dotted(path)) for c in compiled))


@register
class GradualUnfreezing(Method):
    name = "gradual_unfreezing"
    stacked_layers_ok = True  # a stacked parameter unfreezes slice by slice at each layer's step (method_settings)
    defaults = dict(every=100)
    schema = dict(every=Int(min=1, doc="steps between unfreezing one more layer group, from the top"))

    def unfreeze_step(self, path, depth, top):
        return (top - depth) * self.every
