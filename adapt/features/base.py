"""The trial's one extension point: a :class:`Feature` (multi-task heads, distillation, DP-SGD, named evaluation
sets, generation, data quality, augmentation, mixtures ...) and the registry the trial assembly loops over
(``docs/adding_a_feature.md``).

    register(MyFeature())          # at the end of the feature's own file; adapt/features/__init__.py imports it
    on = check(config)             # the pair rule, then every feature's own checks: the enabled features, in order

A feature declares its config section (:attr:`Feature.section`, its defaults and schema), the key that turns it on
(:attr:`Feature.key`), the phases it takes over from the trial (:attr:`Feature.provides`), what it refuses to
combine with (:attr:`Feature.refuses`, :class:`Refusal`) and whether its trials can train in a population
(:attr:`Feature.solo`); its hooks run at the trial's phases, in registration order:

1. ``check(config)``: its config values, before anything is read (every registered feature, enabled or not, after
   the pair rule);
2. ``data(build)``, ``model(build)``, ``objective(build)``, ``step(build)``, ``after_method(build)``: it reads and
   sets the fields of the :class:`Build` as :func:`adapt.experiment.trial.build_trial` fills them in;
3. ``start(trial)``, ``train_stream(trial)``, ``eval_batches(trial, split)``, ``evaluation(trial, split)``: the run
   laid out (:func:`adapt.experiment.trial.start_trial`);
4. ``results(started, fit)``, ``export(trial, model, out, peft)``: after training
   (:func:`adapt.experiment.trial.finish_trial`).

Two enabled features that one of them refuses are a one-line :class:`~adapt.core.errors.ConfigError` naming both
("distill.teacher with multitask.tasks: ..."), before anything is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from adapt.core.errors import ConfigError

#: The phases a feature can take over from the trial (Feature.provides): the trial then runs the feature's hook
#: instead of its own default, and no two enabled features may provide the same one.
PHASES = ("data", "objective", "step", "train_stream", "eval_batches", "evaluation", "export")


@dataclasses.dataclass(frozen=True)
class Refusal:
    """The declaring feature does not combine with feature ``other``: ``why`` ends the one-line error. ``when``:
    only in some settings of the other, ``when(config)`` giving the setting refused ("" when it is not); by default
    whenever both are on (the setting is the other's key)."""
    other: str
    why: str
    when: Callable[[object], str] | None = None


@dataclasses.dataclass
class Build:
    """A trial as :func:`adapt.experiment.trial.build_trial` builds it, phase by phase; a feature's hooks read its
    fields and set their part."""
    config: object  # ml_collections.ConfigDict: the trial's config
    tokenizer: object
    source: str  # where the model comes from (model.name or init_from)
    task: object  # adapt.training.tasks.Task of model.task
    mesh: object
    rules: tuple
    dropouts: dict  # the model's dropout rates that the config sets
    load: dict  # adapt.models.from_pretrained's keywords (dtype, seed, mesh, rules, dropouts)
    run_model: Callable  # a run folder -> (its trained model, its tokenizer)
    splits: dict | None = None  # split -> columns, "labels" -> label names (data)
    model: object = None  # the model (model; after_method: the adaptation method applied)
    objective: object = None  # (objective)
    extension: object = None  # the train step's adapt.training.steps.StepExtension (step)
    sets: dict = dataclasses.field(default_factory=dict)  # name -> adapt.evaluation.evalsets.EvalSet
    parts: dict = dataclasses.field(default_factory=dict)  # feature name -> what it built (read by its later hooks)


class Feature:
    """One extension of the trial; subclasses set the attributes and override the hooks they need (each does
    nothing by default). The hooks of phases 2-4 run only for an enabled feature."""

    name: str = ""  # its registry name
    key: str = ""  # the config key that turns it on, as its errors name it (e.g. "multitask.tasks")
    section: str = ""  # the top-level config section it declares ("": none, or one of a lower layer's)
    schema: dict | None = None  # that section's schema (adapt.core.schema)
    provides: tuple[str, ...] = ()  # the PHASES it takes over from the trial
    refuses: tuple[Refusal, ...] = ()
    solo: str = ""  # why its trials cannot train in a population ("": they can)
    # It works with model.scan_layers (the layers stacked, adapt.models.scan); the others are refused in one line.
    stacked_layers_ok: bool = False

    def defaults(self):
        """Its config section at its defaults (an ``ml_collections.ConfigDict``; a feature with a section)."""
        raise NotImplementedError

    def enabled(self, config) -> bool:
        raise NotImplementedError

    def check(self, config) -> None:
        """Its config values, one line for the first bad one; nothing is read yet."""

    def source(self, config, source: str) -> str:
        """Where the trial's model comes from, given ``source`` (every registered feature, enabled or not)."""
        return source

    def sections(self, config) -> dict:
        """The data sections it reads beside the trial's ``data`` (with ``data`` provided: instead), by config key."""
        return {}

    def data(self, build: Build) -> None:
        """Set ``build.splits`` (a feature providing "data")."""

    def model(self, build: Build) -> None:
        """Set ``build.model``, or leave it None for the trial's (``model.name`` with ``model.task``'s head)."""

    def objective(self, build: Build) -> None:
        """Set or wrap ``build.objective`` (the trial's, model.task's, unless a feature provides "objective")."""

    def step(self, build: Build) -> None:
        """Set ``build.extension``, the train step's (a feature providing "step")."""

    def after_method(self, build: Build) -> None:
        """Read or change ``build.model`` (the adaptation method applied) and ``build.sets``."""

    def start(self, trial) -> None:
        """Write its files into the run folder (``trial.trainer.workdir``) before training."""

    def train_stream(self, trial):
        """The training batches (a feature providing "train_stream")."""

    def eval_batches(self, trial, split: str):
        """The batches evaluating ``split`` (a feature providing "eval_batches")."""

    def evaluation(self, trial, split: str):
        """What judges ``split`` instead of its loss and per-example outputs (a feature providing "evaluation"):
        ``evaluate(trainer, state, predictions=list) -> metrics``, ``rows(predictions)`` (its predictions' lines)."""

    def results(self, started, fit) -> dict:
        """Its entries of ``results.json`` (numbers, so the results database keeps them)."""
        return {}

    def export(self, trial, model, out: str, peft: bool) -> str:
        """Write the trained ``model`` (not merged) to ``out`` (a feature providing "export"); returns the folder."""


FEATURES: dict[str, Feature] = {}


def register(feature: Feature) -> Feature:
    """Add ``feature`` to the registry (a name once); returns it."""
    if feature.name in FEATURES:
        raise ValueError(f"feature {feature.name!r} is registered already")
    if unknown := set(feature.provides) - set(PHASES):
        raise ValueError(f"feature {feature.name!r} provides {sorted(unknown)}; the phases are {PHASES}")
    FEATURES[feature.name] = feature
    return feature


def enabled(config) -> list[Feature]:
    """The registered features ``config`` turns on, in registration order."""
    return [f for f in FEATURES.values() if f.enabled(config)]


def refusal(a: Feature, b: Feature, config) -> str:
    """The one-line reason ``a`` and ``b`` (both on in ``config``) do not combine, whichever declared it; "" when
    they do."""
    for declarer, other in ((a, b), (b, a)):
        for r in declarer.refuses:
            if r.other == other.name:
                setting = r.when(config) if r.when else other.key
                if setting:
                    return f"{setting} with {declarer.key}: {r.why}"
    return ""


def check(config) -> list[Feature]:
    """The pair rule (:func:`refusal`), then every registered feature's :meth:`~Feature.check`; returns the enabled
    features. Nothing is read."""
    on = enabled(config)
    for i, a in enumerate(on):
        for b in on[i + 1:]:
            if why := refusal(a, b, config):
                raise ConfigError(why)
    for f in FEATURES.values():
        f.check(config)
    return on


def provider(on: list[Feature], phase: str) -> Feature | None:
    """The feature of ``on`` that provides ``phase`` (at most one: the pair rule refuses two), or None."""
    return next((f for f in on if phase in f.provides), None)


def model_source(config) -> str:
    """Where a trial's model comes from: ``init_from``, else ``model.name``, as the registered features resolve it
    (:meth:`Feature.source`)."""
    source = config.init_from or config.model.name
    for f in FEATURES.values():
        source = f.source(config, source)
    return source


def token_report(train) -> dict:
    """The tokens each source of a train stream of several gave, and its share: results.json's ``mixture``."""
    if len(train.tokens) < 2:
        return {}
    return {"mixture": {n: {"tokens": train.tokens[n], "share": share} for n, share in train.token_shares().items()}}
