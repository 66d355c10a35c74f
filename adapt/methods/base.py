"""The adaptation-method interface.

A method is a :class:`Method` subclass in its own file, registered under a name with
:func:`adapt.methods.registry.register`. Each hook has a do-nothing default (full fine-tuning), so a method
overrides only what it changes:

(a) ``apply(model, rngs)`` rewrites the model once, before training (inject LoRA, adapters, prompts);
(b) ``trainable(model)`` is the NNX filter of what trains; everything else is frozen: closed over by the
    step, not differentiated, and given no optimizer state;
(c) ``lr_scale(path, depth, top)`` and ``decays(path, kind)`` give per-parameter learning-rate multipliers and
    weight-decay switches;
(d) ``penalty(params, anchors)`` adds a regularisation term to the loss (once per step, not per token);
(e) ``perturb(params, anchors, key)`` changes the parameters the forward pass sees at each train step
    (Mixout), and ``unfreeze_step(path, depth, top)`` the step from which a parameter starts to update
    (gradual unfreezing). ``depth`` is 0 for embeddings, i+1 for transformer layer i and ``top`` (the
    number of layers + 1) for what sits above them (:meth:`adapt.models.registry.ModelInfo.depth`).

``anchors(model)`` gives constants a penalty or perturbation needs (the pretrained weights); they travel in
the train state. ``merge(model)`` folds what the method added into plain layers for export.

(f) A method PEFT has declares its PEFT form next to it (:mod:`adapt.methods.peft_io` reads it, for every such method
alike): ``peft_type`` and the ``injected`` layer class, ``peft_tensors(layer)`` and ``set_peft_tensors(layer,
tensors)`` (one injected layer's tensors in PEFT's names and layouts, both ways; ``peft_shared`` and
``set_peft_shared`` for what the layers share), ``peft_config(layers)`` (its entries
of ``adapter_config.json``) and ``knobs_from_peft(config)`` (its knobs from one, or None where the file is another
method's).

Methods know a model only through what its family declares (:func:`adapt.models.registry.model_info`:
default targets, attention modules, depths, heads); no method imports a family.

Parameters a method adds are :class:`~adapt.models.layers.Adapter` variables (an ``nnx.Param`` kind): they
carry logical axes like every parameter, so the mesh rules shard them.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adapt.core import schema
from adapt.core.errors import CheckpointError, ConfigError
from adapt.models import scan
from adapt.models.layers import Adapter, dense_dot_general
from adapt.models.registry import model_info, per_layer_paths


class Method:
    """Full fine-tuning: every parameter trains at the optimizer's learning rate. Subclasses override hooks."""

    name = "full"
    defaults: dict = {}  # the method's knobs and their default values
    schema: dict = {}  # each knob's declaration (adapt.core.schema): its type, range and doc
    # The pretrained weights train (so full fine-tuning's learning rates suit it); False for methods that
    # train a few added or selected parameters (LoRA, adapters, prompts, BitFit), which take higher rates.
    trains_every_weight = True
    # It works on stacked layers (model.scan_layers: one parameter [L, ...] per kind, adapt.models.scan): True only
    # for a method that reads no layer by its number or module path inside the layers; the others are refused.
    stacked_layers_ok = False

    def __init__(self, **knobs):
        schema.Section(self.schema, what=f"method {self.name!r}").check(knobs, "method")  # as the method section's
        self.knobs = {**self.defaults, **knobs}
        for key, value in self.knobs.items():
            setattr(self, key, value)

    def apply(self, model: nnx.Module, rngs: nnx.Rngs) -> nnx.Module:  # (a)
        return model

    def trainable(self, model: nnx.Module):  # (b) an NNX filter
        return nnx.Param

    def lr_scale(self, path: tuple, depth: int, top: int) -> float:  # (c)
        return 1.0

    def decays(self, path: tuple, kind: str) -> bool | None:  # (c) None: as optimizer.decay_exclude says
        return None

    def anchors(self, model: nnx.Module, params: dict) -> dict:  # constants for (d) and (e)
        return {}

    def penalty(self, params: dict, anchors: dict) -> jax.Array | None:  # (d) None: no penalty
        return None

    def perturb(self, params: dict, anchors: dict, key: jax.Array) -> dict:  # (e) per train step
        return params

    def unfreeze_step(self, path: tuple, depth: int, top: int) -> int:  # (e) first step it updates
        return 0

    def merge(self, model: nnx.Module) -> nnx.Module:
        """The model with what the method added folded into plain layers (in place; returned)."""
        return model

    # (f) PEFT's form of the method: None where PEFT has none
    peft_type: str | None = None  # PEFT's peft_type ("LORA", "IA3")
    injected: type | None = None  # the module the method puts in place of each target linear layer

    def peft_tensors(self, layer: nnx.Module) -> dict[str, np.ndarray]:
        """One injected ``layer``'s tensors by PEFT's suffix (``lora_A.weight``), in PEFT's layout, float32 on the host;
        in stacked layers each with a leading ``[L]``."""
        raise NotImplementedError

    def set_peft_tensors(self, layer: nnx.Module, tensors: dict[str, np.ndarray]) -> None:
        """Set one injected ``layer``'s values from PEFT's ``tensors`` (:meth:`peft_tensors`' inverse)."""
        raise NotImplementedError

    def peft_shared(self, layers: list[nnx.Module]) -> dict[str, np.ndarray]:
        """Tensors the injected ``layers`` share (VeRA's projections), by their name under ``base_model.``."""
        return {}

    def set_peft_shared(self, layers: list[nnx.Module], tensors: dict[str, np.ndarray]) -> None:
        """Set what the injected ``layers`` share from PEFT's ``tensors`` (:meth:`peft_shared`'s inverse)."""
        if tensors:
            raise ValueError(f"tensors {sorted(tensors)} that {self.name} does not take")

    def peft_config(self, layers: dict[str, nnx.Module]) -> dict:
        """The method's entries of ``adapter_config.json``; ``layers``: the injected layers by HF module name."""
        raise NotImplementedError

    @classmethod
    def knobs_from_peft(cls, config: dict) -> dict | None:
        """The method's knobs for PEFT's ``adapter_config.json`` of its ``peft_type``, or None where it is another
        method's (DoRA's file is LoRA's with ``use_dora``); an option the method does not have is a ConfigError."""
        raise NotImplementedError


class Injection(Method):
    """A method that puts its ``injected`` layers in place of target linear layers (LoRA, (IA)^3, VeRA, LoHa): what
    they add trains with the task head (``train_head``), and merging folds each back into a plain layer (its
    ``merged()``)."""

    trains_every_weight = False

    def trainable(self, model):
        return adapters_and_head(model, self.train_head)

    def merge(self, model):
        return merge_injected(model, self.injected)


# ---- helpers the method files share -------------------------------------------------------------------

def dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def head_prefixes(model: nnx.Module) -> tuple[str, ...]:
    """Dotted NNX path prefixes of the model's task head: what a checkpoint of the base model lacks and
    loading initialises fresh (the classifier), so methods that freeze the backbone still train it."""
    return model_info(model).heads


def under(path: tuple, prefixes) -> bool:
    name = dotted(path)
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def path_filter(predicate) -> nnx.filterlib.Filter:
    """An NNX filter of the ``nnx.Param`` variables whose path satisfies ``predicate(path)``."""
    return nnx.All(nnx.Param, lambda path, _: predicate(tuple(path)))


def matches_target(module_path: tuple, targets) -> bool:
    """PEFT's ``target_modules`` rule: a string is a regex matched against the whole dotted module path;
    a list names modules by suffix (``q_proj`` matches ``model.layers.0.self_attn.q_proj``)."""
    name = dotted(module_path)
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def linear_modules(model: nnx.Module, targets) -> list[tuple[tuple, nnx.Linear]]:
    """The ``nnx.Linear`` modules whose path matches ``targets``; an error when none does. A module of stacked
    layers (``model.scan_layers``) matches when every layer's path does (a target naming some layers only is a
    one-line error: the stack holds them all)."""
    found = [(tuple(path), m) for path, m in nnx.iter_modules(model)
             if isinstance(m, nnx.Linear) and selects(model, tuple(path), targets)]
    if not found:
        names = sorted({str(p[-1]) for p, m in nnx.iter_modules(model) if isinstance(m, nnx.Linear) and p})
        raise ConfigError(f"method.targets={targets!r} matches no linear layer of {type(model).__name__}; "
                          f"its linear layers are named {', '.join(names)}")
    return found


def draws_per_layer(model: nnx.Module, paths: list[tuple], draw) -> list[list]:
    """For each module path of ``paths`` (in the model's order), the values ``draw()`` gives it in the order the
    unrolled model draws them: one for a module, one per layer for a module of stacked layers (``model.scan_layers``),
    drawn layer by layer and each layer's modules in turn, so that what a method initialises from ``rngs`` is the
    same stacked or not."""
    info = model_info(model)
    stacked = [p for p in paths if per_layer_paths(info.family, p, info.dims.num_layers)]
    drawn = {path: [] for path in paths}
    for path in paths:
        if path not in stacked:
            drawn[path].append(draw())
        elif path == stacked[0]:  # the stacked modules lie together, under the layers: drawn there, layer by layer
            for _ in range(info.dims.num_layers):
                for p in stacked:
                    drawn[p].append(draw())
    return [drawn[path] for path in paths]


def per_layer_module(model: nnx.Module, path: tuple, make) -> nnx.Module:
    """What a method adds at the module ``path``: ``make()``, or in stacked layers (``model.scan_layers``) one
    ``make()`` per layer, made in layer order as the unrolled model makes them, stacked ``[L, ...]``
    (:func:`adapt.models.scan.stack`)."""
    info = model_info(model)
    if per_layer_paths(info.family, path, info.dims.num_layers) is None:
        return make()
    return scan.stack([make() for _ in range(info.dims.num_layers)])


def selects(model: nnx.Module, path: tuple, targets, key: str = "method.targets") -> bool:
    """Whether ``targets`` (:func:`matches_target`'s) select the module ``path``; in stacked layers, whether they
    select it in every layer (in some only: a one-line error, the stack holds them all)."""
    info = model_info(model)
    hits = [matches_target(p, targets) for p in per_layer_paths(info.family, path, info.dims.num_layers) or [path]]
    if any(hits) and not all(hits):
        raise ConfigError(f"{key}={targets!r} selects {dotted(path)} in some layers only; with "
                          f"model.scan_layers=True the layers are stacked: select every layer or none")
    return all(hits)


def replace_module(model: nnx.Module, path: tuple, new: nnx.Module) -> None:
    parent = model
    for p in path[:-1]:
        parent = parent[p] if isinstance(p, int) else getattr(parent, p)
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)


def linear_axes(layer: nnx.Linear) -> tuple:
    return tuple(layer.kernel.get_metadata().get("logical_axes") or (None, None))


def plain_linear(template: nnx.Module, kernel: jax.Array, bias: jax.Array | None, dtype) -> nnx.Linear:
    """An ``nnx.Linear`` holding ``kernel`` [(L,) in, out] and ``bias`` (with the template's parameter metadata;
    stacked layers' ``[L, ...]``): what a merged adapter layer turns back into."""
    d_in, d_out = kernel.shape[-2:]
    layer = nnx.eval_shape(lambda: nnx.Linear(d_in, d_out, use_bias=bias is not None, dtype=dtype,
                                              param_dtype=kernel.dtype, dot_general=dense_dot_general,
                                              rngs=nnx.Rngs(0)))
    layer.kernel = template.kernel.replace(kernel)
    if bias is not None:
        layer.bias = template.bias.replace(bias)
    return layer


def compute_dtype(dtype, x: jax.Array):
    return jnp.dtype(dtype) if dtype is not None else x.dtype


def leaf_paths(tree) -> list[tuple[tuple, object]]:
    """``(path, leaf)`` of a pure-dict pytree, the path as the tuple of dict keys (``('model', 'layers', 0,
    'mlp', 'up_proj', 'kernel')``), as :func:`adapt.models.registry.param_paths` gives for an ``nnx.State``."""
    return [(tuple(getattr(k, "key", getattr(k, "idx", k)) for k in key), leaf)
            for key, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def map_with_path(fn, tree):
    """``tree`` with each leaf replaced by ``fn(path, leaf)`` (paths as in :func:`leaf_paths`)."""
    leaves = [fn(path, leaf) for path, leaf in leaf_paths(tree)]
    return jax.tree.unflatten(jax.tree.structure(tree), leaves)


def adapters_and_head(model: nnx.Module, train_head: bool):
    """The filter of methods that add parameters: those, plus the task head when ``train_head``."""
    heads = head_prefixes(model) if train_head else ()
    return nnx.Any(Adapter, path_filter(lambda path: under(path, heads)))


def merge_injected(model: nnx.Module, cls: type) -> nnx.Module:
    """Replace every ``cls`` layer of ``model`` by its ``merged()`` plain layer (in place; returned)."""
    for path, layer in list(nnx.iter_modules(model)):
        if isinstance(layer, cls):
            replace_module(model, tuple(path), layer.merged())
    return model


def host(x) -> np.ndarray:
    """``x`` as a float32 numpy array on the host (a tensor of a PEFT folder)."""
    return np.ascontiguousarray(np.asarray(jax.device_get(x), np.float32))


def set_value(var: nnx.Variable, array: np.ndarray, name: str) -> None:
    """``var`` set to ``array`` (PEFT's tensor ``name``) on its sharding; another shape is a one-line
    CheckpointError."""
    if tuple(array.shape) != tuple(var.shape):
        raise CheckpointError(f"{name} has shape {list(array.shape)}; expected {list(var.shape)}")
    old = var[...]
    var.set_value(jax.device_put(np.asarray(array).astype(old.dtype), old.sharding))


def peft_targets(config: dict, key: str = "target_modules"):
    """PEFT's module list (names matched as suffixes, or one regex) as the methods' ``targets`` knob: () for None."""
    value = config.get(key)
    return value if isinstance(value, str) else tuple(value or ())


def refuse_peft_options(config: dict, options: tuple[str, ...], method: str) -> None:
    """A one-line ConfigError for the first of PEFT's ``options`` that ``config`` sets (not None, empty or false;
    ``bias`` not "none") and method ``method`` does not have."""
    for option in options:
        value = config.get(option)
        if value not in (None, False, {}, [], "", "none"):
            raise ConfigError(f"{option}={value!r}: adapt's {method} has no such option")
