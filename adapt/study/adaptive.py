"""Adaptive search: an :class:`adapt.study.sweeps.Search` run as an Optuna study (TPE sampler, optional pruning) whose
trials are adapt trials, recorded in the results database a grid sweep writes (:mod:`adapt.analysis.results`).

    outcome = run_search(config, search(...), "runs/x", name="x.py#search")
    outcome.counts   # {"done": 11, "pruned": 5}: the search's trials per status in the results database
    outcome.best     # {"id": ..., "value": 0.87, "overrides": {...}}: the best trial that ran to the end

The study is kept in ``optuna.db`` beside the results database (SQLite, Optuna's RDBStorage) under the sweep's
label, so running the same search again goes on where it stopped; its sampler is seeded with the search's seed
plus the number of trials the study already has (a resumed search does not draw its first values again). Each
Optuna trial is one adapt trial: its overrides are the search's ``fixed`` ones plus the sampled values and its id
hashes them (:func:`adapt.study.sweeps.trial_id`, stage "search"), so the same values always map to the same folder,
``<workdir>/search/<id>``. The trial function is called as ``fn(config, workdir, on_eval=...)`` (default
:func:`adapt.experiment.trial.run_trial`); ``on_eval(step, metrics)`` reports the search's dev metric at each
evaluation after step 0 to Optuna and raises :class:`optuna.TrialPruned` when the pruner says so: the trial is
then recorded ``pruned``, with its curves up to there and ``pruned at step S: <metric>=<value>`` as its error.

The budget: a run starts trials until ``n`` are finished (done or pruned), at most ``n`` less those finished
before it. A trial that fails is recorded ``failed`` (in Optuna FAIL, which the sampler ignores) and the next run
samples another in its place. After a kill, a trial the dead run left running is settled from the results
database (done: its value is told to Optuna; pruned: it is told pruned) or, when it did not finish, queued
again with the same values (Optuna's enqueue_trial): it runs first, in its folder, so it resumes from its
checkpoints; so does a trial interrupted by Ctrl-C. A done or pruned trial never runs again. Change a search's
space or fixed overrides under a new sweep name (or workdir): the study's trials are read with the current ones.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading

from adapt.analysis import results
from adapt.core.errors import ConfigError
from adapt.study import runner, sweeps

STAGE = "search"
_PRIMITIVE = (type(None), bool, int, float, str)  # the values Optuna's categorical distribution stores


@dataclasses.dataclass
class Outcome:
    counts: dict[str, int]  # the search's trials per status in the results database
    finished: int  # the study's trials done or pruned: what the budget counts
    best: dict | None  # the best trial run to the end: {"id", "value", "overrides"}; None before any


class _NoMetric(ConfigError):
    """The search's metric is not among a trial's metrics: the search stops (every trial would lack it)."""


def check(config, search: sweeps.Search, checked: bool = True):
    """Resolves the search's overrides against ``config`` as grid keys are (a misspelt key: a one-line error
    naming the closest ones), each continuous key at both ends and each choice in turn, with ``checked`` each
    config held to the trial schema too (a bad value: one line naming it); returns the trial config of the first
    values. A pruner needs trials that evaluate dev during training, as
    :func:`adapt.experiment.trial.run_trial` does when ``train.eval_every`` or ``train.early_stopping.metric`` is set:
    otherwise a one-line error (the search does not set them for you)."""
    first = {**search.fixed, **{k: d.args[0] for k, d in search.space.items()}}
    points = [first] + [{**first, key: value} for key, d in search.space.items() for value in d.args[1:]]
    for overrides in points:
        resolved = sweeps.trial_config(config, overrides)
        if checked:
            sweeps.check_trial(sweeps.Trial(sweeps.trial_id(STAGE, overrides), STAGE, overrides), resolved)
    trial = sweeps.trial_config(config, first)
    train = trial.train
    if search.pruner and not (train.get("eval_every", 0) or train.get("early_stopping", {}).get("metric", "")):
        raise ConfigError(f"search pruner={search.pruner!r}: the trials never evaluate dev during training "
                          f"(train.eval_every=0 and no train.early_stopping.metric); set train.eval_every in the "
                          f"search's fixed overrides or the config, or use pruner=None")
    return trial


def _encoded(d: sweeps.Distribution) -> bool:
    """Whether a choice is sampled by index: its values are not all ones Optuna stores (a dict, a tuple)."""
    return d.kind == "choice" and not all(isinstance(v, _PRIMITIVE) for v in d.args)


def _distributions(search: sweeps.Search) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    return {k: CategoricalDistribution(list(range(len(d.args))) if _encoded(d) else d.args) if d.kind == "choice"
            else FloatDistribution(*d.args, log=d.kind == "loguniform") for k, d in search.space.items()}


def _trial(search: sweeps.Search, params: dict) -> sweeps.Trial | None:
    """The adapt trial of an Optuna trial's ``params``; None when they are not the search's keys (a trial killed
    while its values were drawn)."""
    if set(params) != set(search.space):
        return None
    sampled = {k: search.space[k].args[v] if _encoded(search.space[k]) else v for k, v in params.items()}
    overrides = {**search.fixed, **sampled}
    return sweeps.Trial(sweeps.trial_id(STAGE, overrides), STAGE, overrides)


def _study(search: sweeps.Search, name: str, folder: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = {"median": optuna.pruners.MedianPruner, "asha": optuna.pruners.SuccessiveHalvingPruner,
              None: optuna.pruners.NopPruner}[search.pruner]()
    direction = "maximize" if search.mode == "max" else "minimize"
    storage = optuna.storages.RDBStorage(f"sqlite:///{os.path.join(folder, 'optuna.db')}",
                                         engine_kwargs={"connect_args": {"timeout": 120}})
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, pruner=pruner,
                                load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"search {name!r}: mode={search.mode!r}, but its study in {folder}/optuna.db was "
                          f"started to {study.direction.name.lower()}; use another sweep name or workdir")
    study.sampler = optuna.samplers.TPESampler(seed=search.seed + len(study.get_trials(deepcopy=False)))
    return study


def _outcome(db: results.ResultsDB, trial_id: str, metric: str, status: str | None):
    """(Optuna state, value) of an adapt trial in the results database with ``status``."""
    from optuna.trial import TrialState

    value = db.metric(trial_id, metric) if status == "done" else None
    if value is not None:
        return TrialState.COMPLETE, value
    return (TrialState.PRUNED, None) if status == "pruned" else (TrialState.FAIL, None)


def _recover(study, search: sweeps.Search, db: results.ResultsDB, stale_after: float) -> None:
    """Settles the Optuna trials a dead run left running (see the module docstring) and queues again, once, each
    adapt trial that did not finish because its run was killed or interrupted."""
    from optuna.trial import TrialState as S

    trials = [(ft, _trial(search, ft.params)) for ft in study.get_trials(deepcopy=False)]
    status = db.statuses([t.id for _, t in trials if t], stale_after)
    queued = {t.id for ft, t in trials if t and (ft.state in (S.COMPLETE, S.PRUNED, S.WAITING) or (
        ft.state == S.RUNNING and status.get(t.id) == "running"))}  # a running one whose process is alive
    for ft, t in trials:
        s = status.get(t.id) if t else None
        if ft.state == S.RUNNING and s != "running":
            state, value = _outcome(db, t.id, search.metric, s) if t else (S.FAIL, None)
            study.tell(ft.number, value, state)
        elif ft.state != S.FAIL:
            continue
        if t and s in ("stale", "pending", "interrupted") and t.id not in queued:
            study.enqueue_trial(ft.params)
            queued.add(t.id)


def _run(trial, search: sweeps.Search, config, root: str, db: results.ResultsDB, fn, name: str,
         stale_after: float):
    """Runs the adapt trial of Optuna ``trial`` (or takes its result from the database when the same values ran
    before); returns (Optuna state, value)."""
    from optuna import TrialPruned
    from optuna.trial import TrialState

    t, metric = _trial(search, trial.params), search.metric
    cfg = sweeps.trial_config(config, t.overrides, root)
    db.register(name, [t], {t.id: cfg}, root, stale_after)
    reported: set[int] = set()

    def report(points):
        for step, value in points:
            if step > 0 and step not in reported:
                trial.report(value, step)
                reported.add(step)

    if db.claim([t.id], os.getpid()) != t.id:  # done or pruned before, or running in another process
        status = db.statuses([t.id], stale_after).get(t.id)
        if status == "pruned":
            report(db.curve(t.id, metric))
        return _outcome(db, t.id, metric, status)
    workdir = os.path.join(root, STAGE, t.id)
    os.makedirs(workdir, exist_ok=True)
    jsonl = os.path.join(workdir, "metrics.jsonl")
    report(results.read_metrics_jsonl(jsonl).get(metric, []))  # a resumed trial's evaluations before the kill

    def on_eval(step: int, metrics: dict):
        if step == 0:
            return
        if metric not in metrics:
            raise _NoMetric(f"search metric {metric!r}: trial {t.id}'s evaluation at step {step} has no such "
                            f"metric; it has {', '.join(sorted(metrics)) or 'none'}")
        report([(step, metrics[metric])])
        if trial.should_prune():
            raise TrialPruned(f"pruned at step {step}: {metric}={metrics[metric]:.6g}")

    try:
        metrics = fn(cfg, workdir, on_eval=on_eval) or {}
    except TrialPruned as e:
        db.prune(t.id, results.read_metrics_jsonl(jsonl), str(e))
        return TrialState.PRUNED, None
    except KeyboardInterrupt:
        db.fail(t.id, "interrupted (Ctrl-C or SIGTERM)", "interrupted")
        raise
    except _NoMetric as e:
        db.fail(t.id, f"{type(e).__name__}: {e}")
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001  (a failed trial is recorded; the search goes on)
        db.fail(t.id, runner.error_text(e))
        return TrialState.FAIL, None
    db.finish(t.id, metrics, results.read_metrics_jsonl(jsonl))
    if db.metric(t.id, metric) is None:
        raise _NoMetric(f"search metric {metric!r}: trial {t.id} finished without it; its dev metrics: "
                        f"{', '.join(sorted(metrics.get('dev', {}))) or 'none'}")
    return _outcome(db, t.id, metric, "done")


def _beat(path: str, pid: int, every: float, stop: threading.Event) -> None:
    """Marks this process's running trial alive every ``every`` seconds (as a sweep worker does)."""
    db = results.ResultsDB(path)
    while not stop.wait(every):
        db.heartbeat(pid)


def run_search(config, search: sweeps.Search, workdir: str, *, db_path: str | None = None, trial_fn=None,
               name: str = "search", progress: bool = True, heartbeat_s: float = 30.0,
               stale_after: float = 300.0) -> Outcome:
    """Runs ``search`` in this process until ``search.n`` of its trials are finished (see the module docstring):
    trials in ``<workdir>/search/<id>``, results in ``db_path`` (default ``<workdir>/results.db``) labelled
    ``name`` (:func:`adapt.study.sweeps.sweep_label`), which also names the Optuna study in ``optuna.db`` beside it.
    ``trial_fn(config, workdir, on_eval=...) -> metrics`` (a callable, or "module:function") defaults to
    :func:`adapt.experiment.trial.run_trial`. The keys are checked (:func:`check`) before anything runs."""
    from optuna.trial import TrialState
    from tqdm import tqdm

    check(config, search, checked=(trial_fn or runner.DEFAULT_TRIAL_FN) == runner.DEFAULT_TRIAL_FN)
    root = os.path.abspath(workdir)
    db = results.ResultsDB(db_path or os.path.join(root, "results.db"))
    study = _study(search, name, os.path.dirname(os.path.abspath(db.path)))
    _recover(study, search, db, stale_after)
    fn, distributions = runner.trial_function(trial_fn or runner.DEFAULT_TRIAL_FN), _distributions(search)
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    bar = tqdm(total=search.n, initial=finished, unit="trial", disable=not progress, dynamic_ncols=True)
    stop = threading.Event()
    threading.Thread(target=_beat, args=(db.path, os.getpid(), heartbeat_s, stop), daemon=True).start()
    try:
        for _ in range(search.n - finished):
            trial = study.ask(distributions)
            try:
                state, value = _run(trial, search, config, root, db, fn, name, stale_after)
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                raise
            study.tell(trial, value, state)
            bar.update(state != TrialState.FAIL)
    finally:
        stop.set()
        bar.close()
    ended = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    done = [(ft.value, t) for ft in ended if ft.state == TrialState.COMPLETE and (t := _trial(search, ft.params))]
    best = None
    if done:
        value, t = (max if search.mode == "max" else min)(done, key=lambda d: d[0])
        best = {"id": t.id, "value": value, "overrides": t.overrides}
    counts = collections.Counter(t["status"] for t in db.trials(sweep=name))
    db.close()
    return Outcome(dict(sorted(counts.items())), len(ended), best)
