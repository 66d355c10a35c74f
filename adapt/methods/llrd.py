"""Layer-wise learning-rate decay, the discriminative fine-tuning rates of Howard & Ruder (2018,
"Universal Language Model Fine-tuning for Text Classification", arXiv:1801.06146, section 3.2) in the form
ELECTRA (Clark et al., 2020, arXiv:2003.10555) and most BERT recipes use: a parameter at depth d (0 for the
embeddings, i+1 for transformer layer i, L+1 for the final norm and the task head) trains at
``learning_rate * decay ** (L + 1 - d)``."""

from adapt.core.schema import Float
from adapt.methods.base import Method
from adapt.methods.registry import register


@register
class LayerwiseLRDecay(Method):
    name = "llrd"
    stacked_layers_ok = True  # a stacked parameter trains at each layer's rate, slice by slice (optim.method_settings)
    defaults = dict(decay=0.9)
    schema = dict(decay=Float(gt=0, le=1, doc="learning-rate factor per layer below the top"))

    def lr_scale(self, path, depth, top):
        return self.decay ** (top - depth)
