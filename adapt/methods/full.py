"""Full fine-tuning (Howard & Ruder, 2018, "Universal Language Model Fine-tuning for Text Classification",
arXiv:1801.06146; Devlin et al., 2019, "BERT", arXiv:1810.04805): every parameter trains at the optimizer's
learning rate. The base :class:`~adapt.methods.base.Method` already behaves so; this file names it."""

from adapt.methods.base import Method
from adapt.methods.registry import register


@register
class FullFineTuning(Method):
    name = "full"
    stacked_layers_ok = True  # every parameter alike, stacked or not
