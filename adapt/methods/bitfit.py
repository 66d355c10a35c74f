"""BitFit (Ben Zaken, Ravfogel & Goldberg, 2022, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", arXiv:2106.10199): only the bias terms train (those of the
linear layers and of the layer norms), plus the task head."""

from flax import nnx

from adapt.core.errors import ConfigError
from adapt.core.schema import Bool
from adapt.methods.base import Method, head_prefixes, path_filter, under
from adapt.methods.registry import register
from adapt.models.registry import param_paths


def _is_bias(path: tuple) -> bool:
    return str(path[-1]) == "bias"


@register
class BitFit(Method):
    name = "bitfit"
    defaults = dict(train_head=True)
    schema = dict(train_head=Bool(doc="the task head trains too"))
    trains_every_weight = False
    stacked_layers_ok = True  # it selects leaves by name (``bias``): a stacked bias [L, D] is every layer's

    def apply(self, model, rngs):
        if not any(_is_bias(path) for path, _ in param_paths(nnx.state(model, nnx.Param))):
            raise ConfigError(f"method.name='bitfit': {type(model).__name__} has no bias parameters to train")
        return model

    def trainable(self, model):
        heads = head_prefixes(model) if self.train_head else ()
        return path_filter(lambda path: _is_bias(path) or under(path, heads))
