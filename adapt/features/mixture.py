"""Data mixtures (``data.mixture``, ``data.mixture_stages``: :func:`adapt.data.pipeline.train_stream`) as a trial
feature: the mixture is checked before anything is read, its sources are data the trial reads, and the tokens each
source gave (and their shares) go into the results."""

from __future__ import annotations

from adapt.data.pipeline import check_mixture, component
from adapt.features.base import Feature, register, token_report


class Mixture(Feature):
    name, key = "mixture", "data.mixture"
    stacked_layers_ok = True  # it reads the data, never the model

    def enabled(self, config) -> bool:
        return bool(config.data.get("mixture") or config.data.get("mixture_stages"))

    def check(self, config) -> None:
        check_mixture(config.data)  # bad weights, stages or sources: one line each

    def sections(self, config) -> dict:
        return {f"data.mixture.{name}": component(config.data, name) for name in config.data.mixture}

    def results(self, started, fit) -> dict:
        return token_report(started.train)


register(Mixture())
