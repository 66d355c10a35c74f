"""A trial's config: every section at its defaults (:func:`base_config`), each key declared (:data:`SCHEMA`, from
the section modules' own schemas and the registered trial features' sections, :mod:`adapt.features`) and
:func:`check`, which holds a config to it before anything is read. A layer above that adds a section of its own to
the configs it runs (active learning's ``active``) registers it with :func:`add_section`."""

from __future__ import annotations

import ml_collections

from adapt import features  # noqa: F401  (registers the built-in features)
from adapt.core import schema
from adapt.core.schema import Bool, Choice, Either, Float, Int, Map, Path, Str, Tuple
from adapt.data import pipeline
from adapt.data.pipeline import data_defaults
from adapt.evaluation import evalsets
from adapt.features.base import FEATURES
from adapt.training import config as training_config
from adapt.training import defaults, tasks


def base_config() -> ml_collections.ConfigDict:
    """Every section a trial reads, at its defaults; experiment configs override what differs."""
    c = defaults()
    c.unlock()
    c.model = ml_collections.ConfigDict(dict(
        name="bundled:minilm-l6",  # a Hub id, a local folder, a .gguf file or a bundled name
        task="sequence_classification",  # a task kind of adapt.training.tasks: causal_lm, masked_lm, ..._classification
        dtype="float32",  # compute dtype (parameters stay float32)
        hidden_dropout=-1.0,  # -1: the checkpoint's own
        attention_dropout=-1.0,
        scan_layers=False,  # the layers stacked [L, ...] and scanned (adapt.models.scan): compile time flat with depth
    ))
    c.data = data_defaults()
    c.objective = ml_collections.ConfigDict(dict(
        mlm_probability=0.15,  # masked LM
        f1_ignore=(),  # label names left out of the F1 averages (e.g. a "no relation" class)
    ))
    # sets: named evaluation sets (adapt.evaluation.evalsets), name -> data keys (or a benchmark name or a dev file),
    # evaluated at step 0 and with every evaluation; e.g. {"general": {"benchmark": "bbc"}}
    c.eval = ml_collections.ConfigDict(dict(splits=("dev", "test"), batch_size=64, sets={}))
    c.export = ml_collections.ConfigDict(dict(model=False))  # write export/ (a later stage starts from it)
    c.init_from = ""  # a previous stage's export folder: the model (and tokenizer) to start from
    c.init_task = ""  # init_from a multi-task export: the task whose model to start from (default: data.benchmark)
    for f in FEATURES.values():  # each feature's section, off: privacy, multitask, distill, generation ...
        if f.section:
            c[f.section] = f.defaults()
    c.lock()
    c.method.unlock()
    return c


_DROPOUT = Either(Choice(-1.0), Float(ge=0, lt=1), hint="-1: the checkpoint's own", doc="a dropout rate")
#: Every section of base_config(), declared (adapt.core.schema): schema.check(config) holds a trial's config to it.
SCHEMA = dict(
    training_config.SCHEMA,  # mesh, optimizer, train, method
    model=dict(
        name=Str(empty=False, doc="a Hub id, a local folder, a .gguf file or a bundled name"),
        task=Choice(tasks.names, doc="a task kind of adapt.training.tasks"),
        dtype=Choice("float32", "bfloat16", "float16", doc="compute dtype (parameters stay float32)"),
        hidden_dropout=_DROPOUT, attention_dropout=_DROPOUT,
        scan_layers=Bool(doc="stack the transformer layers [L, ...] and apply them with a scan, so compile time stays "
                             "flat with depth (adapt.models.scan; Llama and BERT families, full and bitfit only)"),
    ),
    data=pipeline.SCHEMA,
    objective=dict(
        mlm_probability=Float(gt=0, lt=1, doc="masked LM: the share of tokens masked"),
        f1_ignore=Tuple(of=Str(), doc="label names left out of the F1 averages"),
    ),
    eval=dict(
        splits=Tuple(of=Str(empty=False), doc="the splits evaluated at the end (the first, dev, during training)"),
        batch_size=Int(min=1, doc="rows per evaluation batch"),
        sets=Map(evalsets.SET_SCHEMA, doc="named evaluation sets (adapt.evaluation.evalsets)"),
    ),
    export=dict(model=Bool(doc="write export/, the trained model merged into plain weights")),
    init_from=Path(doc="a previous stage's export folder: the model (and tokenizer) to start from"),
    init_task=Str(doc="init_from a multi-task export: the task whose model to start from"),
    meta=Map(doc="a sweep's labels of the trial (free-form)"),
    **{f.section: f.schema for f in FEATURES.values() if f.section},  # the features' own sections
)


def add_section(name: str, section_schema: dict) -> None:
    """Declare section ``name`` of the configs that a layer above adds it to (it is checked as the others)."""
    if name in SCHEMA and SCHEMA[name] is not section_schema:
        raise ValueError(f"config section {name!r} is declared already")
    SCHEMA[name] = section_schema


def check(config) -> None:
    """``config`` (a trial's, or a plain dict of one) held to :data:`SCHEMA` and the sections of features registered
    since: one line for its first bad key."""
    schema.check({**SCHEMA, **{f.section: f.schema for f in FEATURES.values() if f.section}}, config)
