"""Adaptation methods: one file each, behind a small registry.

    method = adapt.methods.build(config.method)  # {"name": "lora", "rank": 8, ...}
    model = method.apply(model, nnx.Rngs(0))
    Trainer(model, objective, config, workdir, method=method).fit(...)

``configs`` get a method section with :func:`method_config` (the name plus every knob at its default,
so command-line overrides of the knobs are checked). See ``docs/adding_a_method.md``.
"""

from __future__ import annotations

import difflib

import ml_collections

from adapt.core.errors import ConfigError
from adapt.core.schema import Tagged
from adapt.methods.base import Adapter, Method

#: Every registered method: its name -> its class (:func:`register` adds one).
METHODS: dict[str, type[Method]] = {}
#: The ``method`` section: ``name`` picks the method, whose class declares its knobs (``Method.schema``).
SCHEMA = Tagged("name", {}, default="full", doc="the adaptation method (name) and its knobs")


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    SCHEMA.sections[cls.name] = cls.schema
    return cls


def build(cfg) -> Method:
    """The method a config section (``name`` plus knobs; a dict or ConfigDict) describes."""
    knobs = dict(cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg)
    name = knobs.pop("name", "full")
    if name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=3)
        raise ConfigError(f"method.name={name!r} is not a method; "
                          + (f"did you mean {', '.join(close)}? " if close else "")
                          + f"methods: {', '.join(sorted(METHODS))}")
    return METHODS[name](**knobs)


def method_config(name: str = "full", **knobs) -> ml_collections.ConfigDict:
    """A config section for method ``name``: its name and all its knobs (defaults overridden by ``knobs``)."""
    method = build({"name": name, **knobs})
    return ml_collections.ConfigDict({"name": name, **method.knobs})


from adapt.methods import (  # noqa: E402, F401  (each file registers its methods)
    adapters,
    bitfit,
    freeze,
    full,
    ia3,
    l2sp,
    llrd,
    lora,
    mixout,
    prefix,
    qlora,
)

__all__ = ["METHODS", "Adapter", "Method", "build", "method_config", "register"]
