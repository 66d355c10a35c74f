"""Data quality checks (``data.quality``, :mod:`adapt.data.quality`) as a trial feature: the data pipeline runs the
checks as it reads (and drops what they are set to drop); the trial writes the report on its train data to
``quality.json`` before training and the counts found / dropped per check into the results."""

from __future__ import annotations

import os

from adapt.core.files import write_json
from adapt.data import quality
from adapt.features.base import Feature, register


class DataQuality(Feature):
    name, key = "quality", "data.quality"
    stacked_layers_ok = True  # it reads the data, never the model

    def enabled(self, config) -> bool:
        return quality.enabled(config.data)

    def start(self, trial) -> None:
        if "quality" in trial.splits:  # a multi-task trial's tasks keep none
            write_json(os.path.join(trial.trainer.workdir, "quality.json"), trial.splits["quality"])

    def results(self, started, fit) -> dict:
        splits = started.trial.splits
        return {"quality": quality.counts(splits["quality"])} if "quality" in splits else {}


register(DataQuality())
