"""The method registry: each method file registers its class here (:func:`register`); a config's ``method``
section names one (:func:`build`). ``adapt/methods/__init__.py`` imports every method file, so importing any module
of the package fills it; the registry never imports a method."""

from __future__ import annotations

import difflib

import ml_collections

from adapt.core.errors import ConfigError
from adapt.core.schema import Tagged
from adapt.methods.base import Method

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
