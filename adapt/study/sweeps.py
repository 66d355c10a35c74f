"""Sweeps: lists of config overrides, in stages, that expand to trials (:mod:`adapt.study.runner` runs them).

A sweep sits beside the config it varies: ``configs/x.py`` may define ``get_sweep(arg)`` returning a sweep, or
a dict {name: sweep} to pick from with ``--sweep=name``. A sweep is a list of override dicts ({dotted key:
value}), or a list of :class:`Stage` s. Building blocks (each returns a list of override dicts)::

    grid("optimizer.learning_rate", [1e-5, 3e-5])   # one dict per value
    product(a, b, ...)                              # every combination (a dict counts as a one-item list)
    zip_(a, b, ...)                                 # item by item (equal lengths)
    random("optimizer.learning_rate", loguniform(1e-5, 1e-3), n=8, seed=0)   # also uniform(lo, hi), choice(xs)
    a + b                                           # both lists

A sweep may instead be an adaptive search (:func:`search`; :mod:`adapt.study.adaptive` runs it): Optuna's TPE sampler
picks each trial's values of the ``space`` keys from the results so far, and a pruner may stop trials early::

    search(space={"optimizer.learning_rate": loguniform(1e-5, 1e-3), "method.rank": choice([4, 8])}, n=16,
           metric="dev/accuracy", mode="max", pruner="median", fixed={"train.eval_every": 50})

Keys must exist in the config (a misspelt key is a one-line error naming the closest ones), except below a
section that is empty in the config (``data.mixture.bio.weight`` when ``mixture={}``) or one the same trial
replaces whole (``{"method": {...}, "method.rank": 8}``). Keys starting with ``meta.`` are not config keys: they
label trials for tables (``meta.benchmark``, ``meta.condition``: the table row; the stage name by default).

    def get_sweep(arg):  # continued pretraining per domain, then fine-tuning from each (2 x 2 x 3 = 12 trials)
        pretrain = stage("pretrain", {"data.format": "lm", "train.steps": 2000},
                         zip_(grid("meta.domain", ["bio", "cs"]), grid("data.source", ["bio.txt", "cs.txt"])))
        finetune = stage("finetune", grid("optimizer.learning_rate", [1e-5, 3e-5]), grid("train.seed", [0, 1, 2]),
                         after="pretrain", match=["meta.domain"])
        return {"default": [pretrain, finetune], "lr": grid("optimizer.learning_rate", [1e-5, 3e-5, 1e-4])}

``after``: each trial of the stage is paired with the trials of that earlier stage that agree with it on the
``match`` keys it has, inherits the match keys it lacks, depends on that trial and gets ``init_from =
"<stage>/<id>/export"`` (relative to the sweep folder). A trial's id hashes its stage and overrides, so it is the
same in every run; it runs in ``<workdir>/<stage>/<id>``; :func:`adapt.study.runner.run_sweep` runs the trials not
yet done.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
import zlib

import ml_collections
import numpy as np

from adapt.core.errors import ConfigError
from adapt.experiment import base, configs

_MAPS = (dict, ml_collections.ConfigDict)


# ---- the description language
def _as_list(part) -> list[dict]:
    part = [part] if isinstance(part, _MAPS) else list(part)
    if not all(isinstance(d, _MAPS) for d in part):
        raise ConfigError(f"a sweep part must be a dict or a list of dicts of overrides, got {part!r:.120}")
    return [dict(d) for d in part]


def grid(key: str, values) -> list[dict]:
    if not (values := list(values)):
        raise ConfigError(f"grid({key!r}, ...) has no values")
    return [{key: v} for v in values]


def _merge(dicts) -> dict:
    return {k: v for d in dicts for k, v in d.items()}


def product(*parts) -> list[dict]:
    return [_merge(combo) for combo in itertools.product(*map(_as_list, parts))]


def zip_(*parts) -> list[dict]:
    lists = [_as_list(p) for p in parts]
    if len({len(x) for x in lists}) > 1:
        raise ConfigError(f"zip_ needs parts of equal length, got lengths {[len(x) for x in lists]}")
    return [_merge(combo) for combo in zip(*lists)]


@dataclasses.dataclass(frozen=True)
class Distribution:
    kind: str  # uniform | loguniform | choice
    args: tuple


def uniform(lo: float, hi: float) -> Distribution:
    if not lo < hi:
        raise ConfigError(f"uniform({lo}, {hi}) needs lo < hi")
    return Distribution("uniform", (lo, hi))


def loguniform(lo: float, hi: float) -> Distribution:
    if not 0 < lo < hi:
        raise ConfigError(f"loguniform({lo}, {hi}) needs 0 < lo < hi")
    return Distribution("loguniform", (lo, hi))


def choice(values) -> Distribution:
    if not (values := tuple(values)):
        raise ConfigError("choice([...]) has no values")
    return Distribution("choice", values)


def random(key: str, distribution: Distribution, n: int, seed: int = 0) -> list[dict]:
    """``n`` values of ``key`` drawn from ``distribution``; the same (key, seed) always draws the same values.
    Continuous draws are rounded to 4 significant digits (readable, and stable in trial ids)."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    kind, args = distribution.kind, distribution.args
    if kind == "choice":
        return [{key: args[int(i)]} for i in rng.integers(0, len(args), n)]
    lo, hi = (math.log(args[0]), math.log(args[1])) if kind == "loguniform" else args
    draws = rng.uniform(lo, hi, n)
    return [{key: float(f"{math.exp(x) if kind == 'loguniform' else x:.4g}")} for x in draws]


@dataclasses.dataclass
class Stage:
    name: str
    trials: list[dict]
    after: str | None = None
    match: tuple[str, ...] = ()


def stage(name: str, *parts, after: str | None = None, match=()) -> Stage:
    """A stage: the product of ``parts`` (override lists); see the module docstring for ``after``/``match``."""
    return Stage(name, product(*parts) if parts else [{}], after, tuple(match))


@dataclasses.dataclass(frozen=True)
class Trial:
    id: str
    stage: str
    overrides: dict
    depends: tuple[str, ...] = ()

    @property
    def condition(self) -> str:
        return str(self.overrides.get("meta.condition", self.stage))


@dataclasses.dataclass(frozen=True)
class Search:
    """An adaptive search (see :func:`search`); its trials run in ``<workdir>/search/<trial id>``."""
    space: dict  # {config key: Distribution}
    n: int
    metric: str  # "dev/<metric>": a key of the trial's evaluations and of its final metrics
    mode: str  # "max" or "min"
    pruner: str | None  # "median", "asha" or None
    seed: int
    fixed: dict  # the overrides every trial has


PRUNERS = ("median", "asha")


def search(space: dict, n: int, metric: str, mode: str = "max", pruner: str | None = None, seed: int = 0,
           fixed: dict | None = None) -> Search:
    """An adaptive search of ``n`` trials: each trial's overrides are ``fixed`` plus a value of each ``space`` key
    (a :class:`Distribution`: ``uniform``, ``loguniform``, ``choice``) that Optuna's TPE sampler (seeded by
    ``seed``) picks to maximise (``mode="max"``) or minimise the final ``metric`` ("dev/accuracy": the trial's
    dev metric). ``pruner``: "median" (Optuna's MedianPruner) or "asha" (its SuccessiveHalvingPruner) stops a
    trial whose dev ``metric`` at an evaluation during training falls behind the other trials' at that step;
    None runs every trial to the end."""
    where = "search"
    if not isinstance(space, _MAPS) or not space or not all(isinstance(d, Distribution) for d in space.values()):
        raise ConfigError(f"{where}: space must be a non-empty dict {{config key: uniform/loguniform/choice(...)}}, "
                          f"got {space!r:.120}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{where}: n={n!r}; expected the number of trials, an integer of at least 1")
    if not isinstance(metric, str) or not metric.startswith("dev/") or metric == "dev/":
        raise ConfigError(f"{where}: metric={metric!r}; expected a dev metric such as 'dev/accuracy'")
    if mode not in ("min", "max"):
        raise ConfigError(f"{where}: mode={mode!r}; expected 'max' or 'min'")
    if pruner is not None and pruner not in PRUNERS:
        raise ConfigError(f"{where}: pruner={pruner!r}; expected one of {', '.join(map(repr, PRUNERS))} or None")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{where}: seed={seed!r}; expected an integer")
    fixed = dict(fixed or {})
    if both := sorted(set(fixed) & set(space)):
        raise ConfigError(f"{where}: {', '.join(both)} both fixed and searched; give each key in one of them")
    return Search(dict(space), n, metric, mode, pruner, seed, fixed)


def as_stages(sweep) -> list[Stage]:
    if isinstance(sweep, Search):
        raise ConfigError("an adaptive search is not a grid of trials: run it with scripts/sweep.py "
                          "(adapt.study.adaptive.run_search)")
    items = [sweep] if isinstance(sweep, Stage) else list(sweep) if isinstance(sweep, (list, tuple)) else None
    if items and all(isinstance(s, Stage) for s in items):
        return items
    if items is not None and all(isinstance(d, _MAPS) for d in items):
        return [Stage("main", _as_list(items))]
    raise ConfigError(f"a sweep is a list of override dicts or a list of Stages, got {sweep!r:.120}")


def load_sweep(module, arg: str, name: str | None):
    """The sweep ``get_sweep(arg)`` returns; when it returns a dict of named sweeps, the one called ``name``
    (by default the one called "default", or the only one)."""
    where = os.path.relpath(module.__file__)
    if not hasattr(module, "get_sweep"):
        raise ConfigError(f"{where} defines no get_sweep(arg)")
    sweep = configs.call(module, "get_sweep", arg)
    if not isinstance(sweep, dict):
        if name:
            raise ConfigError(f"--sweep={name}: get_sweep in {where} returns one sweep, not a dict of named ones")
        return sweep, "default"
    if name is None:
        if len(sweep) != 1 and "default" not in sweep:
            raise ConfigError(f"{where} defines several sweeps; pick one with --sweep: {', '.join(sweep)}")
        name = "default" if "default" in sweep else next(iter(sweep))
    if name not in sweep:
        close = difflib.get_close_matches(name, list(sweep), 3, 0.5)
        raise ConfigError(f"unknown sweep {name!r} in {where}" + (
            f" (did you mean {', '.join(map(repr, close))}?)" if close else "") + f"; known: {', '.join(sweep)}")
    return sweep[name], name


def trial_id(stage_name: str, overrides: dict) -> str:
    """A trial's id: a hash of its stage and overrides, the same in every run."""
    blob = json.dumps({"stage": stage_name, "overrides": overrides}, sort_keys=True, default=repr)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def expand(sweep) -> list[Trial]:
    """The trials of a sweep, stage by stage (so a trial comes after the trials it depends on)."""
    done: dict[str, list[Trial]] = {}
    for st in as_stages(sweep):
        if st.name in done:
            raise ConfigError(f"two stages are named {st.name!r}")
        if st.after is not None and st.after not in done:
            close = difflib.get_close_matches(st.after, list(done), 3, 0.5)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else f"; earlier: {list(done)}"
            raise ConfigError(f"stage {st.name!r}: after={st.after!r} names no earlier stage{hint}")
        out: dict[str, Trial] = {}
        for ov in st.trials:
            ov = {str(k): v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v for k, v in ov.items()}
            pairs = [(ov, ())]
            if st.after is not None:
                parents = [p for p in done[st.after] if all(p.overrides.get(k) == ov[k] for k in st.match if k in ov)]
                if not parents:
                    raise ConfigError(f"stage {st.name!r}: trial {ov} matches no trial of stage {st.after!r} "
                                      f"on {list(st.match)}")
                pairs = [({**{k: p.overrides[k] for k in st.match if k not in ov and k in p.overrides}, **ov,
                           "init_from": f"{p.stage}/{p.id}/export"}, (p.id,)) for p in parents]
            for o, deps in pairs:
                t = Trial(trial_id(st.name, o), st.name, o, deps)
                if t.id in out:
                    raise ConfigError(f"stage {st.name!r} has the same trial twice: {o}")
                out[t.id] = t
        done[st.name] = list(out.values())
    return [t for ts in done.values() for t in ts]


#: ---- a trial's config, a sweep's label
#: Overrides naming a folder that, given as a relative path, lies in the sweep folder: a previous stage's export, a
#: teacher trained by an earlier stage (``f"teacher/{trial_id('teacher', overrides)}"``, adapt.features.distill).
IN_SWEEP = ("init_from", "distill.teacher")


def trial_config(config: ml_collections.ConfigDict, overrides: dict, root: str = "") -> ml_collections.ConfigDict:
    """A copy of ``config`` with a trial's overrides set (``meta.*`` labels left out; keys checked as on the
    command line, see :func:`adapt.experiment.configs.apply_overrides`); a relative path in :data:`IN_SWEEP` is joined
    to ``root`` (the sweep folder)."""
    overrides = {k: v for k, v in overrides.items() if not k.startswith("meta.")}
    for key in IN_SWEEP:
        if overrides.get(key) and root and not os.path.isabs(overrides[key]):
            overrides[key] = os.path.join(root, overrides[key])
    return configs.apply_overrides(config, overrides, where="sweep override ")


def check_trial(trial: Trial, config: ml_collections.ConfigDict) -> None:
    """A trial's resolved config held to the trial schema (:func:`adapt.experiment.base.check`), an error naming the
    trial: a bad grid value fails when the sweep expands, before its first trial runs."""
    try:
        base.check(config)
    except ConfigError as e:
        raise ConfigError(f"sweep trial {trial.stage}/{trial.id}: {e}") from None


def sweep_label(path: str, arg: str | None, name: str | None = None) -> str:
    """The label a sweep's trials get in the results database (its ``sweep`` column, which tables filter on):
    ``"x.py:arg#name"`` for config file ``path``, its ``arg`` and the sweep's ``name``; ``"x.py:arg"`` without a
    name (scripts/study.py's label for a config's one study sweep)."""
    return os.path.basename(path) + (f":{arg}" if arg else "") + (f"#{name}" if name else "")
