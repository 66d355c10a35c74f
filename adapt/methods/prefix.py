"""Prompt tuning and prefix tuning: learned virtual tokens in front of every row.

Prompt tuning (Lester, Al-Rfou & Constant, 2021, "The Power of Scale for Parameter-Efficient Prompt
Tuning", arXiv:2104.08691): ``P`` learned vectors ``[P, D]`` are prepended to the input of the first
layer (after the family's embedding step: token embeddings for Llama, token + position embeddings for
GPT-2, and BERT's LayerNorm'd embeddings). ``init="vocab"`` starts them as that input for ``P`` tokens
drawn uniformly from the vocabulary (the paper's "sampled vocabulary", as PEFT's ``SAMPLE_VOCAB``),
read at positions 0..P-1; ``"random"`` draws them from a normal of the same scale.

Prefix tuning (Li & Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation",
arXiv:2101.00190): every attention layer gets learned keys and values ``[P, K, H]`` in front of its own,
which every query sees. Llama's prefix keys are not rotated (they sit in front of the RoPE'd keys, as
PEFT's ``past_key_values`` do). ``projection=True`` is the paper's reparameterisation (PEFT's
``prefix_projection``): an embedding ``[P, D]`` through ``tanh`` MLP ``D -> projection_dim -> L*2*K*H``
gives every layer's keys and values. Without it the keys and values start ``N(0, 1)``, with it the
embedding does and the MLP has PyTorch's ``nn.Linear`` initialisation, as PEFT.

Choices, for both methods:

* Real tokens keep their positions (the first real token is at 0), so the base model reads the text as
  it did in pretraining. For prompt tuning with RoPE the prompt sits at positions -P..-1: relative
  distances, the only thing RoPE attention sees, are then those of PEFT (which counts the prompt as
  positions 0..P-1 and shifts the text by P); GPT-2 and BERT learn absolute positions, so their prompt
  carries no position embedding (it is learned whole).
* The model's outputs keep their shapes: the prompt's hidden states are dropped after the last layer,
  so logits stay ``[B, T, V]`` and a classifier still reads the first real token ([CLS]).
* Every real token sees the prompt (or prefix), whatever its document in a packed row and whatever a
  sliding window says. Prompt tokens see each other (causally in a decoder); in an encoder they also
  see every real token of the row, as in PEFT: so an encoder's packed documents meet through the prompt
  from the second layer on (do not pack encoder rows for prompt tuning).
* Nothing here can be merged into the base weights (the virtual tokens are not a weight update):
  :meth:`VirtualTokens.merge` raises; keep the trained model with its method, or its checkpoint.
* With ``projection=True`` one MLP serves every layer; NNX names a module shared this way by its first
  path, so its parameters live under layer 0's attention (``...layers.0.self_attn.prefix.encoder``; in
  stacked layers, ``...layers.self_attn.prefix.encoder``, passed whole to every step of the scan), and each
  layer reads its keys and values by its number.

The hooks in the models are :func:`adapt.models.layers.prepend_prompt` (with ``drop_prompt`` and
``attention_mask(..., virtual=P)``) on a ``prompt`` attribute of the backbone, and
:func:`adapt.models.layers.prepend_prefix` on a ``prefix`` attribute of each attention module the family
declares (``Family.attention``, with its ``kv_shape``); both are the identity when the attribute is absent.
The vocabulary initialisation reads the family's ``input_states``. Part of the family contract
(:mod:`adapt.models.registry`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from adapt.core.errors import ConfigError
from adapt.core.schema import Bool, Choice, Int
from adapt.methods.base import Adapter, Method, adapters_and_head, per_layer_module
from adapt.methods.registry import register
from adapt.models.layers import SharedAdapter, current_layer
from adapt.models.registry import model_info


def draw(key, shape: tuple, *, fan_in: int | None = None) -> jax.Array:
    """``normal(0, 1)``, or with ``fan_in`` PyTorch's ``nn.Linear`` default (uniform in ``+-1/sqrt(fan_in)``),
    of ``shape``; drawn flat and reshaped, as a draw of rank 5 compiles several times slower on XLA:CPU."""
    n = math.prod(shape)
    if fan_in is None:
        return jax.random.normal(key, (n,), jnp.float32).reshape(shape)
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, (n,), jnp.float32, -bound, bound).reshape(shape)


class Prompt(nnx.Module):
    """The virtual tokens of prompt tuning: ``embedding [P, D]``."""

    def __init__(self, init: jax.Array):
        self.embedding = Adapter(init.astype(jnp.float32), logical_axes=(None, "embed"))

    def __call__(self) -> jax.Array:  # [P, D]
        return self.embedding[...]


class Prefix(nnx.Module):
    """One layer's prefix: ``key`` and ``value`` ``[P, K, H]``."""

    def __init__(self, p: int, k: int, h: int, rngs: nnx.Rngs):
        axes = (None, "kv_heads", "head_dim")
        self.key = Adapter(draw(rngs.params(), (p, k, h)), logical_axes=axes)
        self.value = Adapter(draw(rngs.params(), (p, k, h)), logical_axes=axes)

    def __call__(self) -> tuple[jax.Array, jax.Array]:  # [P, K, H] each
        return self.key[...], self.value[...]


class Dense(nnx.Module):
    """``kernel [in, *out]`` and ``bias [*out]`` with PyTorch's ``nn.Linear`` initialisation (shared adapters)."""

    def __init__(self, d_in: int, out: tuple, axes: tuple, rngs: nnx.Rngs):
        self.kernel = SharedAdapter(draw(rngs.params(), (d_in, *out), fan_in=d_in), logical_axes=axes)
        self.bias = SharedAdapter(draw(rngs.params(), out, fan_in=d_in), logical_axes=axes[1:])


class PrefixEncoder(nnx.Module):
    """The reparameterisation: ``embedding [P, D]`` -> ``tanh(E W1 + b1) W2 + b2`` with ``hidden``
    (``W1 [D, F]``, F = ``projection_dim``) and ``out`` (``W2 [F, L, 2, K, H]``): every layer's keys and
    values, in PEFT's layout. Its parameters are :class:`SharedAdapter`: a scan over stacked layers passes them
    whole to every layer."""

    def __init__(self, p: int, d: int, f: int, layers: int, k: int, h: int, rngs: nnx.Rngs):
        self.embedding = SharedAdapter(draw(rngs.params(), (p, d)), logical_axes=(None, "embed"))
        self.hidden = Dense(d, (f,), ("embed", "adapter"), rngs)
        self.out = Dense(f, (layers, 2, k, h), ("adapter", None, None, "kv_heads", "head_dim"), rngs)

    def __call__(self, layer: int | jax.Array) -> tuple[jax.Array, jax.Array]:  # [P, K, H] each
        hidden = jnp.tanh(self.embedding[...] @ self.hidden.kernel[...] + self.hidden.bias[...])  # [P, F]
        kv = jnp.einsum("pf,fckh->pckh", hidden, self.out.kernel[:, layer]) + self.out.bias[layer]  # [P, 2, K, H]
        return kv[:, 0], kv[:, 1]


class ProjectedPrefix(nnx.Module):
    """Layer ``layer``'s view of the shared :class:`PrefixEncoder`; in stacked layers (``layer`` None) the running
    layer's (:func:`adapt.models.layers.current_layer`, its number traced in the scan)."""

    def __init__(self, encoder: PrefixEncoder, layer: int | None):
        self.encoder, self.layer = encoder, layer

    def __call__(self) -> tuple[jax.Array, jax.Array]:  # [P, K, H] each
        return self.encoder(current_layer() if self.layer is None else self.layer)


VIRTUAL_TOKENS = Int(min=1, doc="P, the virtual tokens added")


class VirtualTokens(Method):
    """What both methods share: the trainable filter (the added parameters, plus the
    task head when ``train_head``) and a merge that refuses."""

    trains_every_weight = False

    def trainable(self, model):
        return adapters_and_head(model, self.train_head)

    def merge(self, model):
        raise ConfigError(f"method {self.name!r} adds virtual tokens, not a weight update: it cannot be merged "
                          f"into the base weights; keep the trained model (or its checkpoint) with the method")


@register
class PromptTuning(VirtualTokens):
    name = "prompt_tuning"
    stacked_layers_ok = True  # the prompt goes in front of the first layer, outside the stack
    defaults = dict(num_virtual_tokens=20, init="vocab", train_head=True)
    schema = dict(num_virtual_tokens=VIRTUAL_TOKENS, train_head=Bool(doc="the task head trains too"),
                  init=Choice("vocab", "random", doc="the prompt's start: embeddings of random vocabulary tokens, "
                                                     "or random vectors of their scale"))

    def apply(self, model, rngs):
        info = model_info(model)
        backbone, p = info.backbone(model), int(self.num_virtual_tokens)
        ids = jax.random.randint(rngs.params(), (1, p), 0, info.dims.vocab_size)  # [1, P]
        states = info.family.input_states(backbone, ids)[0]  # [P, D]
        if self.init == "random":
            states = jax.random.normal(rngs.params(), states.shape, jnp.float32) * jnp.std(states)
        backbone.prompt = Prompt(states)
        return model


@register
class PrefixTuning(VirtualTokens):
    name = "prefix_tuning"
    stacked_layers_ok = True  # stacked prefixes [L, P, K, H]; the projection's encoder is shared whole
    defaults = dict(num_virtual_tokens=20, projection=False, projection_dim=512, train_head=True)
    schema = dict(num_virtual_tokens=VIRTUAL_TOKENS, train_head=Bool(doc="the task head trains too"),
                  projection=Bool(doc="reparameterise the prefixes through a two-layer MLP"),
                  projection_dim=Int(min=1, doc="the MLP's hidden width"))

    def apply(self, model, rngs):
        info = model_info(model)
        if info.family.no_prefix:
            raise ConfigError(f"method.name=prefix_tuning: the {info.family.name} family refuses it: "
                              f"{info.family.no_prefix}")
        found, p, (k, h) = info.attentions(model), int(self.num_virtual_tokens), info.family.kv_shape(model.cfg)
        if not self.projection:  # in stacked layers: one stacked attention, its prefixes [L, P, K, H] drawn in turn
            for path, attn in list(nnx.iter_modules(model)):  # listed first: each gains a prefix module
                if isinstance(attn, info.family.attention):
                    attn.prefix = per_layer_module(model, tuple(path), lambda: Prefix(p, k, h, rngs))
            return model
        encoder = PrefixEncoder(p, info.dims.hidden_size, int(self.projection_dim), info.dims.num_layers, k, h, rngs)
        for i, attn in enumerate(found):  # every layer's, or the one stacked attention of stacked layers
            attn.prefix = ProjectedPrefix(encoder, None if info.stacked else i)
        return model
