"""Generation evaluation (:mod:`adapt.evaluation.generation`) as a trial feature: an ``sft`` trial with
``generation.max_new_tokens`` > 0 judges each evaluated split by the model's answers to its prompts (its loss too);
the answers are the split's predictions. The ``generation`` section is this feature's."""

from __future__ import annotations

from adapt.data.pipeline import records
from adapt.evaluation import generation
from adapt.features.base import Feature, register


class Generation(Feature):
    name, key, section, schema = "generation", "generation.max_new_tokens", "generation", generation.SCHEMA
    provides = ("evaluation",)
    stacked_layers_ok = True  # the KV cache of stacked layers is stacked too (adapt.models.scan.apply_cached)

    def defaults(self):
        return generation.defaults()

    def enabled(self, config) -> bool:
        return generation.enabled(config)

    def check(self, config) -> None:
        if self.enabled(config):
            generation.generation_config(config.generation)  # bad sampling settings: one line

    def evaluation(self, trial, split: str) -> generation.GenerationEval:
        """``split`` judged by generation (built once per split; the raw examples are read once, at the first)."""
        built = trial.parts.setdefault(self.name, {})
        if split not in built:
            if "records" not in built:
                built["records"] = records(trial.config.data)
            built[split] = generation.GenerationEval(trial, split, built["records"])
        return built[split]


register(Generation())
