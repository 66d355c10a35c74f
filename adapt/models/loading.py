"""``from_pretrained``: an HF checkpoint (local folder, Hub id, GGUF file or bundled name) -> an NNX model
whose parameters sit on their target shardings.

The model is first built as an ``nnx.eval_shape`` skeleton (no memory); each parameter's HF tensor is
found through the family's name mapping, its shape checked, and it is placed straight onto its
sharding with ``jax.make_array_from_callback`` (each device reads only its slice of the memory-mapped
file). Every missing, unexpected and mis-shaped tensor is reported together, before anything is
built. Task heads the checkpoint lacks are initialised fresh, inside one jit whose outputs are just
those heads; their parameter paths are recorded on the model (:func:`fresh_paths`, a static attribute, so
it survives ``nnx.split``/``merge``): a trial reports them in its run's log, and ``train.head_warmup_steps`` can
train them alone first.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re

import jax
import numpy as np
from flax import nnx

from adapt.core.errors import CheckpointError, ConfigError
from adapt.core.sharding import Rules, variable_sharding
from adapt.models import bundled, heads
from adapt.models.checkpoint_io import weight_refs
from adapt.models.gguf_io import gguf_config, gguf_refs, gguf_tokenizer
from adapt.models.registry import Family, family_for, hf_key, hf_keys, param_paths

log = logging.getLogger(__name__)
FRESH_ATTR = "fresh_params"  # the model attribute holding the paths of the parameters initialised fresh


def fresh_paths(model: nnx.Module) -> tuple[tuple, ...]:
    """The paths (as ``nnx.State`` paths, e.g. ``("cls", "predictions", "bias")``) of the parameters that
    :func:`from_pretrained` initialised fresh because the checkpoint lacks them; () for any other model."""
    return tuple(getattr(model, FRESH_ATTR, ()))

@dataclasses.dataclass(frozen=True)
class Source:
    name: str  # what the user asked for
    folder: str  # where config/tokenizer files live
    gguf_file: str | None = None  # for GGUF checkpoints: the file, inside ``folder``


def locate(name_or_path: str, *, revision: str | None = None, allow_pickle: bool = False) -> Source:
    """Find the files of a bundled name, named architecture, local folder, local ``.gguf`` file or Hub id."""
    name = str(name_or_path)
    if bundled.is_architecture(name):
        return Source(name, bundled.architecture_path(name))
    path = bundled.bundled_path(name) if bundled.is_bundled(name) else os.path.expanduser(name)
    if os.path.isdir(path):
        return Source(name, path)
    if os.path.isfile(path) and path.endswith(".gguf"):
        return Source(name, os.path.dirname(path), os.path.basename(path))
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.path.exists(path)
    if looks_local or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        raise CheckpointError(f"{name}: no such model folder (expected a folder with config.json and weights, "
                              "a .gguf file, a Hub id or one of "
                              f"{', '.join(bundled.PREFIX + k for k in bundled.BUNDLED)})")
    from huggingface_hub import snapshot_download
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"] + (["*.bin"] if allow_pickle else [])
    try:
        return Source(name, snapshot_download(name, revision=revision, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated repo...: all mean "not here"
        raise CheckpointError(f"{name}: cannot fetch this Hub id ({type(e).__name__}); with no network, download "
                              f"it elsewhere and pass its local folder instead") from None


def read_config(source: Source):
    """The checkpoint's HF config (``config.json``, or the GGUF metadata)."""
    from transformers import AutoConfig

    if source.gguf_file:
        return gguf_config(os.path.join(source.folder, source.gguf_file))
    path = os.path.join(source.folder, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: missing (every HF checkpoint folder has a config.json)")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if "model_type" not in raw:
        raise CheckpointError(f"{path}: no 'model_type' key")
    family_for(raw["model_type"], where=f"{path}: ")
    raw.pop("auto_map", None)  # never execute remote code
    return AutoConfig.for_model(**raw)


def from_pretrained(name_or_path: str, task: str | None = None, *, num_labels: int | None = None,
                    labels: list[str] | None = None, mesh: jax.sharding.Mesh | None = None,
                    rules: Rules | None = None, dtype: str = "float32", hidden_dropout: float | None = None,
                    attention_dropout: float | None = None, allow_pickle: bool = False, seed: int = 0,
                    revision: str | None = None, config_overrides: dict | None = None,
                    random_init: bool = False, scan_layers: bool = False) -> nnx.Module:
    """Load a pretrained model as an NNX module.

    ``task``: a task kind of :mod:`adapt.training.tasks` whose model head the family has; by default the
    checkpoint's own (``config.architectures``). Classification heads take ``num_labels`` (or ``labels``,
    their names).
    ``mesh``/``rules``: place parameters sharded (by default on the first device). ``dtype``: the
    compute dtype (parameters stay float32). The dropout rates override the checkpoint's config.
    Parameters the checkpoint lacks (a task head, or a head the family declares it may lack) are initialised
    fresh and listed by :func:`fresh_paths`.
    ``config_overrides``: HF config keys set before the model is built (``num_hidden_layers``, ``hidden_size``);
    with ``random_init`` no weight is read: every parameter is initialised fresh (a random-init model of the
    checkpoint's family, as its config and the overrides describe it).
    ``scan_layers``: the transformer layers stacked ``[L, ...]`` and applied with a scan (:mod:`adapt.models.scan`;
    a family that does not declare ``stack_layers`` refuses, before any weight is read); the same checkpoint and
    the same numbers.
    A named architecture (``arch:...``, :mod:`adapt.models.bundled`) has no weights: it is refused, in one line.
    """
    blueprint = model_blueprint(name_or_path, task, num_labels=num_labels, labels=labels, dtype=dtype,
                                hidden_dropout=hidden_dropout, attention_dropout=attention_dropout,
                                allow_pickle=allow_pickle, revision=revision, config_overrides=config_overrides,
                                scan_layers=scan_layers)
    source = blueprint.source
    _not_an_architecture(source.name)
    if random_init:
        refs = {}
    elif source.gguf_file:
        refs = gguf_refs(os.path.join(source.folder, source.gguf_file), blueprint.hf)
    else:
        refs = weight_refs(source.folder, allow_pickle=allow_pickle)
    return build(blueprint.family, blueprint.head, blueprint.cfg, refs, source.name, mesh=mesh, rules=rules,
                 seed=seed, all_fresh=random_init)


@dataclasses.dataclass(frozen=True)
class Blueprint:
    """What a model is built from, before any weight: where it comes from, its HF config (the arguments applied),
    its family, the head and the family's config. ``construct(rngs)`` builds it with fresh parameters."""
    source: Source
    hf: object
    family: Family
    head: str
    cfg: object

    def construct(self, rngs: nnx.Rngs) -> nnx.Module:
        return self.family.heads[self.head](self.cfg, rngs=rngs)


def model_blueprint(name_or_path: str, task: str | None = None, *, num_labels: int | None = None,
                    labels: list[str] | None = None, dtype: str = "float32", hidden_dropout: float | None = None,
                    attention_dropout: float | None = None, allow_pickle: bool = False,
                    revision: str | None = None, config_overrides: dict | None = None,
                    scan_layers: bool = False) -> Blueprint:
    """The :class:`Blueprint` :func:`from_pretrained` builds from (its arguments, the same checks); reads the
    config only, so a named architecture has one too: what :mod:`adapt.plan` builds abstractly."""
    source = locate(name_or_path, revision=revision, allow_pickle=allow_pickle)
    hf = read_config(source)
    family = family_for(hf.model_type)
    head = heads.get(task or heads.of_architecture(hf.architectures), where="task").name
    if head not in family.heads:
        raise CheckpointError(f"{source.name}: task {head!r} is not available for {hf.model_type}; "
                              f"available: {', '.join(h for h in heads.HEADS if h in family.heads)}")
    if labels is not None:
        hf.id2label = dict(enumerate(labels))
        hf.label2id = {v: k for k, v in hf.id2label.items()}
    elif num_labels is not None:
        hf.num_labels = num_labels
    set_dropouts(family, hf, hidden_dropout, attention_dropout)
    for key, value in (config_overrides or {}).items():
        if not hasattr(hf, key):
            raise CheckpointError(f"{source.name}: its {type(hf).__name__} has no key {key!r} to override")
        setattr(hf, key, value)
    hf.architectures = None
    try:
        cfg = family.config_from_hf(hf, dtype)
    except CheckpointError as e:  # a config the family refuses (a multimodal Gemma 3): say whose
        raise CheckpointError(f"{source.name}: {e}") from None
    if scan_layers:
        _check_stacks(family)
        cfg = dataclasses.replace(cfg, scan_layers=True)
    return Blueprint(source, hf, family, head, cfg)


def _not_an_architecture(name: str) -> None:
    if bundled.is_architecture(name):
        raise CheckpointError(f"{name} is an architecture without weights or tokenizer: plan a run of it "
                              "(scripts/plan.py), or train from its checkpoint (a Hub id or a local folder)")


def check_stackable(name_or_path: str, *, revision: str | None = None) -> None:
    """A one-line ConfigError when the checkpoint's family cannot stack its layers (``model.scan_layers``,
    :attr:`adapt.models.registry.Family.stack_layers`); reads its config only."""
    _check_stacks(family_for(read_config(locate(name_or_path, revision=revision)).model_type))


def _check_stacks(family: Family) -> None:
    if not family.stack_layers:
        raise ConfigError(f"model.scan_layers=True: {family.name} does not stack its layers yet")


def set_dropouts(family: Family, hf, hidden_dropout: float | None = None, attention_dropout: float | None = None):
    """Set the dropout rates that are not None on ``hf`` (an HF config of ``family``), under the family's keys."""
    for kind, rate in (("hidden", hidden_dropout), ("attention", attention_dropout)):
        for key in family.dropout_keys[kind] if rate is not None else ():
            setattr(hf, key, rate)


def build(family: Family, head: str, cfg, refs: dict, where: str, *, mesh=None, rules=None, seed: int = 0,
          all_fresh: bool = False):
    """Fill the skeleton of the family's ``head`` class from ``refs`` (HF name -> TensorRef); see the module doc.
    ``all_fresh``: every parameter is initialised fresh (``refs`` is empty)."""
    cls = family.heads[head]
    skeleton = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(seed)))
    graphdef, state = nnx.split(skeleton)
    leaves = param_paths(state)
    prefix = family.base_prefix + "."

    def canon(key):
        return key[len(prefix):] if key.startswith(prefix) else key

    available = {}
    for key, ref in (family.stored_layout(refs) if family.stored_layout else refs).items():
        available.setdefault(canon(key), (key, ref))
    fresh_ok = ("",) if all_fresh else family.head_paths.get(head, ()) + family.may_lack
    roots = {canon(hf_key(family, p)[0]).split(".")[0] for p, _ in leaves}
    missing, misshaped, fresh, found = [], [], [], {}
    num_layers = family.dims(cfg).num_layers
    for path, var in leaves:
        keys, transpose, stacked = hf_keys(family, path, num_layers)  # a stacked [L, ...]: layer i's name for slice i
        shape = var.shape[1:] if stacked else var.shape
        absent = [key for key in keys if canon(key) not in available]
        if absent:
            dotted = ".".join(map(str, path))
            if any(dotted.startswith(h) for h in fresh_ok):
                fresh.append(path)
            else:
                missing += [f"{key} {list(shape)}" for key in absent]
            continue
        refs_of = []
        for key in keys:
            name, ref = available.pop(canon(key))
            if tuple(ref.shape[::-1] if transpose else ref.shape) != tuple(shape):
                want = shape[::-1] if transpose else shape
                misshaped.append(f"{name} {list(ref.shape)} (expected {list(want)})")
            refs_of.append(ref)
        found[path] = (refs_of, transpose, stacked)
    unexpected = [key for c, (key, _) in sorted(available.items())
                  if c.split(".")[0] in roots and not any(re.search(p, key) for p in family.ignore)]
    unused = [key for c, (key, _) in available.items() if c.split(".")[0] not in roots]
    problems = [f"{len(items)} {what}: {_short(items)}" for what, items in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if items]
    if problems:
        files = sorted({r.file for r in refs.values()})
        raise CheckpointError(f"{where}: checkpoint ({_short(files, 2)}) does not match {cls.__name__}: "
                              + "; ".join(problems))
    if unused:
        log.info("%s: tensors not used by %s: %s", where, cls.__name__, _short(unused))
    arrays = {path: _place(*found[path], var, mesh, rules) for path, var in leaves if path in found}
    if fresh:
        arrays.update(_init_fresh(cls, cfg, seed, fresh, dict(leaves), mesh, rules))
    for path, var in leaves:
        var.set_value(arrays[path])
    model = nnx.merge(graphdef, state)
    setattr(model, FRESH_ATTR, tuple(fresh))  # static: part of the graphdef
    return model


def _place(refs: list, transpose: bool, stacked: bool, var, mesh, rules) -> jax.Array:
    """``var``'s value from its checkpoint tensor (``refs``: one; ``stacked``: layer i's for slice i of ``[L, ...]``),
    placed onto its sharding: each device's callback reads its slice (its layers' slices, stacked), and each
    tensor is read from the file once."""
    host = {}

    def tensor(i):
        if i not in host:
            array = refs[i].read()
            host[i] = array.T if transpose else array
        return host[i]

    def read(index):
        if not stacked:
            return np.asarray(tensor(0)[index], dtype=var.dtype)
        return np.stack([np.asarray(tensor(i)[index[1:]], dtype=var.dtype) for i in range(len(refs))[index[0]]])

    return jax.make_array_from_callback(tuple(var.shape), variable_sharding(var, mesh, rules), read)


_FRESH_INITS: dict = {}  # (class, config, paths, shardings) -> the jitted initialiser, traced once per process


def _init_fresh(cls, cfg, seed, paths, variables, mesh, rules) -> dict:
    """Initialise only ``paths`` of ``cls(cfg)``: one jit over the whole constructor, whose outputs are
    just those parameters, so XLA drops the rest of the initialisation. The seed is an argument, so trials
    of a sweep (seeds, learning rates) reuse one traced initialiser."""
    shardings = tuple(variable_sharding(variables[p], mesh, rules) for p in paths)
    key = (cls, cfg, tuple(paths), shardings)
    if key not in _FRESH_INITS:
        def init(key):  # nnx.Rngs(seed) is nnx.Rngs(jax.random.key(seed))
            flat = dict(param_paths(nnx.state(cls(cfg, rngs=nnx.Rngs(key)))))
            return [flat[p].get_value() for p in paths]

        _FRESH_INITS[key] = jax.jit(init, out_shardings=list(shardings))
    return dict(zip(paths, _FRESH_INITS[key](jax.random.key(seed))))


def _short(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f", ... and {len(items) - n} more" if len(items) > n else "")


def load_tokenizer(name_or_path: str, *, revision: str | None = None):
    """The tokenizer stored with a checkpoint (for GGUF files, the one embedded in the file)."""
    from transformers import AutoTokenizer

    _not_an_architecture(str(name_or_path))
    source = locate(name_or_path, revision=revision)
    try:
        if source.gguf_file:
            tok = gguf_tokenizer(os.path.join(source.folder, source.gguf_file))
        else:
            tok = AutoTokenizer.from_pretrained(source.folder, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{source.folder}: cannot load a tokenizer ({e})".splitlines()[0]) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
