"""Adaptation methods: one file each, behind a small registry.

    method = adapt.methods.build(config.method)  # {"name": "lora", "rank": 8, ...}
    model = method.apply(model, nnx.Rngs(0))
    Trainer(model, objective, config, workdir, method=method).fit(...)

``configs`` get a method section with :func:`method_config` (the name plus every knob at its default,
so command-line overrides of the knobs are checked). See ``docs/adding_a_method.md``.
"""

# Each method file registers its methods with adapt.methods.registry on import.
from adapt.methods import (  # noqa: F401
    adapters,
    bitfit,
    freeze,
    full,
    ia3,
    l2sp,
    llrd,
    loha,
    lora,
    lora_plus,
    mixout,
    pissa,
    prefix,
    qlora,
    vera,
)
from adapt.methods.base import Adapter, Method
from adapt.methods.registry import METHODS, SCHEMA, build, method_config, register

__all__ = ["METHODS", "SCHEMA", "Adapter", "Method", "build", "method_config", "register"]
