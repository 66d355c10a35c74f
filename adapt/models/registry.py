"""The model-family registry: which NNX model serves which HF ``model_type`` and model head, how its
parameter paths map to HF tensor names, and the facts about its structure that the adaptation methods and
the engine read (:class:`Family`; ``docs/adding_a_family.md`` walks through one).

A family file (``llama.py``, ``gpt2.py``, ``bert.py``) ends with one :class:`Family` registration, and
``adapt/models/__init__.py`` imports it (so any import of ``adapt.models`` fills the registry). The
default name mapping joins the NNX path with dots and renames the leaf (``kernel``/``embedding``/``scale``
-> ``weight``, kernels transposed from ``[in, out]`` to PyTorch's ``[out, in]``); a family lists only the
exceptions to that rule.

The contract a family's modules keep, besides what :class:`Family` declares:

* Parameters carry logical axis names (``adapt.core.sharding``); the scale and bias of every normalisation
  layer carry the ``norm`` axis, biases are leaves named ``bias`` and embedding tables leaves named
  ``embedding`` (the kinds weight decay and BitFit read).
* Linear layers are ``nnx.Linear`` (built with :func:`adapt.models.layers.linear`), so LoRA, (IA)^3 and
  the adapters can wrap them by path.
* The backbone calls :func:`adapt.models.layers.prepend_prompt` on the first layer's input and
  :func:`adapt.models.layers.drop_prompt` after the last layer (prompt tuning), and every attention module
  (:attr:`Family.attention`) calls :func:`adapt.models.layers.prepend_prefix` on its keys and values
  (prefix tuning). Both are the identity until a method installs a ``prompt``/``prefix`` module.
* Transformer layers sit in a numbered list (:attr:`Family.layers`), each run through
  :func:`adapt.models.layers.run_layer` (rematerialisation). A family that declares :attr:`Family.stack_layers`
  builds and runs them with :mod:`adapt.models.scan` (``model.scan_layers``: one module of parameters stacked
  ``[L, ...]``, applied with a scan); its config has a ``scan_layers`` field that says which.
* Every model class has ``cfg``, the family config, whose ``hf`` is the HF config (export writes it).
* A classification head class that multi-task training can put on a shared backbone
  (:class:`adapt.models.multihead.MultiHead`) splits its call as ``head(x [B, T, D], backbone, rngs)``: the
  logits from the backbone's output, reading nothing of the backbone but through ``backbone`` (BERT's pooler).
* A family that declares ``kv_cache`` (generation) takes ``cache=`` (:class:`adapt.models.kv_cache.KVCache`) in its
  causal-LM head and backbone: the backbone passes it to ``prepend_prompt``, masks with ``cache.attend`` and
  hands layer i ``cache.layer(i)``, whose ``attention`` each attention module calls with its queries, keys and
  values (after RoPE) instead of ``prepend_prefix`` and ``dot_product_attention``; the head then gives the
  last position's logits only. Without a cache nothing of this runs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np
from flax import nnx

from adapt.core.errors import CheckpointError, ConfigError

Targets = tuple[str, ...] | str  # PEFT's target_modules: module-name suffixes, or one regex of the whole path


@dataclasses.dataclass(frozen=True)
class Dims:
    num_layers: int
    hidden_size: int
    vocab_size: int


@dataclasses.dataclass(frozen=True)
class MethodTargets:
    """The family's linear layers the adaptation methods wrap by default (PEFT's defaults)."""
    lora: Targets  # LoRA/DoRA: the attention query and value projections
    ia3: Targets  # (IA)^3: keys, values and the feed-forward output projection...
    ia3_feedforward: Targets  # ...of which these scale their input, not their output
    after_attention: Targets  # Houlsby adapters: after the attention output projection...
    after_mlp: Targets  # ...and after the feed-forward output projection (Pfeiffer: only there)


@dataclasses.dataclass(frozen=True)
class Family:
    # ---- identity and checkpoint mapping
    name: str
    model_types: tuple[str, ...]
    config_from_hf: Callable  # (hf_config, dtype) -> the family's frozen config dataclass
    heads: dict[str, type]  # model head ("base", "causal_lm", ..., see adapt.training.tasks) -> class(config, *, rngs)
    base_prefix: str  # attribute (and HF prefix) of the backbone under a head ("model", "transformer", "bert")
    # HF config keys the generic dropout overrides set: {"hidden": (...), "attention": (...)}.
    dropout_keys: dict[str, tuple[str, ...]]
    # ---- what the adaptation methods and the engine read
    dims: Callable  # family config -> Dims
    targets: MethodTargets
    attention: type  # the attention module class: prefix tuning gives each instance a ``prefix``
    kv_shape: Callable  # family config -> (K, H): key/value heads and head width of every attention
    input_states: Callable  # (backbone, ids [B, T]) -> [B, T, D]: the first layer's input at positions 0..T-1
    layers: str  # dotted path of the numbered transformer layers under the backbone ("layers", "encoder.layer")
    embeddings: tuple[str, ...]  # dotted paths of the input embeddings under the backbone ("embed_tokens")
    no_prefix: str = ""  # why prefix tuning cannot give this family's attentions keys ("": it can)
    # ---- what generation (adapt.models.generate) reads
    # The causal-LM head takes ``cache=`` (an adapt.models.kv_cache.KVCache of kv_shape per layer) and fills it.
    kv_cache: bool = False
    max_positions: Callable | None = None  # family config -> the most positions a sequence may have (None: no limit)
    # ---- scanned layers (model.scan_layers, adapt.models.scan)
    # The config has a ``scan_layers`` field, and the backbone builds its layers with scan.layers and runs them with
    # scan.apply: then from_pretrained(scan_layers=True) stacks them; False: it refuses.
    stack_layers: bool = False
    # ---- checkpoint mapping details
    # (regex, replacement) applied in order to the dotted NNX path, after the leaf rename.
    renames: tuple[tuple[str, str], ...] = ()
    transpose_kernels: bool = True  # False for GPT-2, whose Conv1D already stores [in, out]
    # NNX path prefixes per head that a checkpoint may lack: initialised fresh, and trained by the methods
    # that freeze the backbone (a classifier).
    head_paths: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # NNX path prefixes of heads a checkpoint may lack besides the task's (an encoder saved without its MLM
    # head): initialised fresh, like a missing task head.
    may_lack: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()  # regexes of HF keys that are not parameters (buffers, tied copies)
    # the checkpoint's tensors as they are stored -> as the modules name them (per-expert tensors fused), or None
    stored_layout: Callable | None = None


_FAMILIES: dict[str, Family] = {}
_CLASSES: dict[type, tuple[Family, str]] = {}  # model class -> (its family, its head)


def register(family: Family) -> Family:
    for model_type in family.model_types:
        _FAMILIES[model_type] = family
    for head, cls in family.heads.items():
        _CLASSES[cls] = (family, head)
    return family


def supported_model_types() -> list[str]:
    return sorted(_FAMILIES)


def family_for(model_type: str, where: str = "") -> Family:
    if model_type not in _FAMILIES:
        raise CheckpointError(f"{where}unsupported architecture model_type={model_type!r}; "
                              f"supported: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[model_type]


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a family declares, read for one model instance (see :func:`model_info`)."""
    family: Family
    head: str  # the model head it was built as ("causal_lm", "sequence_classification", ...)
    dims: Dims
    backbone_path: str  # "" for a bare backbone, else the family's base prefix
    heads: tuple[str, ...]  # dotted path prefixes of the task head(s) (what a base checkpoint lacks: the classifier)
    stacked: bool = False  # the layers are stacked (model.scan_layers): one parameter [L, ...] per kind

    def head_names(self, paths) -> list[str]:
        """The heads parameter ``paths`` lie under: a task head of ``heads``, else the module a path starts with
        (inside the backbone, the backbone's module: ``bert.pooler``)."""
        out = set()
        for path in paths:
            dotted = ".".join(map(str, path))
            head = next((h for h in self.heads if _under(dotted, (h,))), None)
            if head is None:
                parts = dotted.split(".")
                head = ".".join(parts[:2 if parts[0] == self.backbone_path else 1])
            out.add(head)
        return sorted(out)

    def backbone(self, model: nnx.Module) -> nnx.Module:
        return getattr(model, self.backbone_path) if self.backbone_path else model

    def _inner(self, name: str) -> str | None:
        """``name`` relative to the backbone, or None when it lies outside it."""
        if not self.backbone_path:
            return name
        return name[len(self.backbone_path) + 1:] if name.startswith(self.backbone_path + ".") else None

    def depth(self, path: tuple) -> int:
        """0 for the input embeddings (and a prompt), i+1 for transformer layer i, ``num_layers + 1`` for what
        sits on top (final norm, pooler, task heads): what layer-wise learning rates and gradual unfreezing
        count from. A stacked parameter's path (``model.scan_layers``, no layer number) gets ``num_layers + 1``: the
        methods' per-parameter settings ask for each layer's path instead
        (:func:`adapt.training.optim.method_settings`)."""
        inner = self._inner(".".join(str(p) for p in path))
        if inner is not None:
            match = re.match(re.escape(self.family.layers) + r"\.(\d+)(\.|$)", inner)
            if match:
                return int(match.group(1)) + 1
            if _under(inner, (*self.family.embeddings, "prompt")):
                return 0
        return self.dims.num_layers + 1

    def layer_linears(self) -> str:
        """A regex of the linear layers inside the numbered transformer layers (never embeddings or heads)."""
        return rf"(.*\.)?{re.escape(self.family.layers)}\.\d+\..+"

    def attentions(self, model: nnx.Module) -> list[nnx.Module]:
        """Every layer's attention module, in layer order."""
        return [m for _, m in nnx.iter_modules(model) if isinstance(m, self.family.attention)]


def head_of(cls: type) -> tuple[Family, str]:
    """The family and the head (``"sequence_classification"``, ...) a model class is registered as."""
    if cls not in _CLASSES:
        raise ConfigError(f"{cls.__name__} is not a model head of a registered family (adapt.models.registry.register)")
    return _CLASSES[cls]


def model_info(model: nnx.Module) -> ModelInfo:
    """The family facts of a model built by a registered family (``from_pretrained`` or the class itself)."""
    if hasattr(model, "model_info"):  # a model of models (adapt.models.multihead.MultiHead) says its own
        return model.model_info()
    family, head = head_of(type(model))
    has_backbone = isinstance(getattr(model, family.base_prefix, None), nnx.Module)
    return ModelInfo(family, head, family.dims(model.cfg), family.base_prefix if has_backbone else "",
                     family.head_paths.get(head, ()), bool(getattr(model.cfg, "scan_layers", False)))


_LEAF = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}


def hf_key(family: Family, path: tuple) -> tuple[str, bool]:
    """The HF tensor name of the NNX parameter at ``path`` and whether the tensor is transposed."""
    *parents, leaf = (str(p) for p in path)
    key = ".".join([*parents, _LEAF.get(leaf, leaf)])
    for pattern, repl in family.renames:
        key = re.sub(pattern, repl, key)
    return key, leaf == "kernel" and family.transpose_kernels


def _after_layers(family: Family, path: tuple) -> int | None:
    """The index in ``path`` just after :attr:`Family.layers` (from the model or from its backbone), if it has one
    and something follows."""
    names, parts = family.layers.split("."), [str(p) for p in path]
    for start in (0, 1) if parts[:1] == [family.base_prefix] else (0,):
        end = start + len(names)
        if parts[start:end] == names and len(path) > end:
            return end
    return None


def per_layer_paths(family: Family, path: tuple, num_layers: int) -> list[tuple] | None:
    """For a parameter or module of stacked layers (its path runs ``<layers>.<rest>``, no layer number after
    :attr:`Family.layers`), layer i's path for each i < ``num_layers`` (``model.layers.self_attn`` ->
    ``model.layers.0.self_attn``, ...); None for every other path (a numbered layer's included)."""
    end = _after_layers(family, path)
    if end is None or isinstance(path[end], int):
        return None
    return [(*path[:end], i, *path[end:]) for i in range(num_layers)]


def unnumbered(family: Family, path: tuple) -> tuple:
    """``path`` without a layer number after :attr:`Family.layers` (``model.layers.3.mlp`` -> ``model.layers.mlp``,
    the path the module has in stacked layers); any other path as it is."""
    end = _after_layers(family, path)
    return (*path[:end], *path[end + 1:]) if end is not None and isinstance(path[end], int) else path


def hf_keys(family: Family, path: tuple, num_layers: int) -> tuple[list[str], bool, bool]:
    """The HF tensor names of the NNX parameter at ``path``, whether each is transposed, and whether the parameter is
    stacked: one name, or for a stacked parameter ``[L, ...]`` layer i's name for slice i, i < ``num_layers``
    (``model.layers.self_attn.q_proj.kernel`` -> ``model.layers.0.self_attn.q_proj.weight``, ...)."""
    layers = per_layer_paths(family, path, num_layers)
    if layers is None:
        key, transpose = hf_key(family, path)
        return [key], transpose, False
    keyed = [hf_key(family, p) for p in layers]
    return [k for k, _ in keyed], keyed[0][1], True


def to_hf(array: np.ndarray, transpose: bool) -> np.ndarray:
    return array.T if transpose else array


def param_paths(state: nnx.State) -> list[tuple[tuple, nnx.Variable]]:
    return [(tuple(path), var) for path, var in nnx.to_flat_state(state)]
