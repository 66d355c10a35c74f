"""Named evaluation sets (``eval.sets``, :mod:`adapt.evaluation.evalsets`) as a trial feature: each set's data
section is checked before anything is read, and the sets are read (a probe loaded for another task's set) once the
adaptation method is applied; the trial evaluates them at step 0 and with every evaluation."""

from __future__ import annotations

from adapt.evaluation import evalsets
from adapt.features.base import Feature, register


class EvalSets(Feature):
    name, key = "eval_sets", "eval.sets"
    stacked_layers_ok = True  # a probe's head is loaded with the run's layout and takes the run's backbone

    def enabled(self, config) -> bool:
        return bool(evalsets.specs(config))

    def check(self, config) -> None:
        for name, spec in evalsets.specs(config).items():
            evalsets.data_section(config, name, spec)

    def sections(self, config) -> dict:
        return {f"eval.sets.{name}": evalsets.data_section(config, name, spec)[0]
                for name, spec in evalsets.specs(config).items()}

    def after_method(self, build) -> None:
        b = build
        b.sets.update(evalsets.build(b.config, b.tokenizer, b.model, b.source, mesh=b.mesh, rules=b.rules))


register(EvalSets())
