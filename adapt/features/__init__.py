"""Trial features: what extends the one train step and the trial (multi-task heads, distillation, DP-SGD, named
evaluation sets, generation evaluation, data quality, augmentation, mixtures), each one file with one
:class:`~adapt.features.base.Feature` registered in :mod:`adapt.features.base` (``docs/adding_a_feature.md``). Each
uses the layers below (core ... evaluation), never the trial assembly above it. Importing this package registers
the built-in features; their hooks run in this (alphabetical) order."""

from adapt.features import (  # noqa: F401  (each registers its feature)
    augmentation,
    data_quality,
    distill,
    eval_sets,
    generation,
    mixture,
    multitask,
    privacy,
)
