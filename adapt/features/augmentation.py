"""Train-data augmentation (``data.augment``, :mod:`adapt.data.augment`) as a trial feature: the data pipeline
appends the copies as it reads; the feature checks the section before anything is read and declares it, so that
what refuses copies of an example (DP-SGD) says so."""

from __future__ import annotations

from adapt.data import augment
from adapt.features.base import Feature, register


class Augmentation(Feature):
    name, key = "augment", "data.augment.copies"
    stacked_layers_ok = True  # it reads the data, never the model

    def enabled(self, config) -> bool:
        return augment.enabled(config.data)

    def check(self, config) -> None:
        augment.check(config.data)


register(Augmentation())
