"""Sweeps: lists of config overrides, in stages, run as trials that a results database keeps track of.

A sweep sits beside the config it varies: ``configs/x.py`` may define ``get_sweep(arg)`` returning a sweep, or
a dict {name: sweep} to pick from with ``--sweep=name``. A sweep is a list of override dicts ({dotted key:
value}), or a list of :class:`Stage` s. Building blocks (each returns a list of override dicts)::

    grid("optimizer.learning_rate", [1e-5, 3e-5])   # one dict per value
    product(a, b, ...)                              # every combination (a dict counts as a one-item list)
    zip_(a, b, ...)                                 # item by item (equal lengths)
    random("optimizer.learning_rate", loguniform(1e-5, 1e-3), n=8, seed=0)   # also uniform(lo, hi), choice(xs)
    a + b                                           # both lists

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
same in every run; it runs in ``<workdir>/<stage>/<id>``; :func:`run_sweep` runs the trials not yet done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import importlib
import itertools
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Callable

import ml_collections
import numpy as np

from adapt import configs, results
from adapt.errors import AdaptError, ConfigError

DEFAULT_TRIAL_FN = "adapt.experiment:run_trial"
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
    return Distribution("uniform", (lo, hi))


def loguniform(lo: float, hi: float) -> Distribution:
    if not 0 < lo < hi:
        raise ConfigError(f"loguniform({lo}, {hi}) needs 0 < lo < hi")
    return Distribution("loguniform", (lo, hi))


def choice(values) -> Distribution:
    return Distribution("choice", tuple(values))


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


def as_stages(sweep) -> list[Stage]:
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
                blob = json.dumps({"stage": st.name, "overrides": o}, sort_keys=True, default=repr)
                t = Trial(hashlib.sha1(blob.encode()).hexdigest()[:12], st.name, o, deps)
                if t.id in out:
                    raise ConfigError(f"stage {st.name!r} has the same trial twice: {o}")
                out[t.id] = t
        done[st.name] = list(out.values())
    return [t for ts in done.values() for t in ts]


# ---- configs
def apply_overrides(config: ml_collections.ConfigDict, overrides: dict, root: str = "") -> ml_collections.ConfigDict:
    """A copy of ``config`` with the overrides set (``meta.*`` labels left out; keys checked as on the command
    line, see :func:`adapt.configs.apply_overrides`); a relative ``init_from`` is joined to ``root`` (the
    sweep folder)."""
    overrides = {k: v for k, v in overrides.items() if not k.startswith("meta.")}
    if overrides.get("init_from") and root and not os.path.isabs(overrides["init_from"]):
        overrides["init_from"] = os.path.join(root, overrides["init_from"])
    return configs.apply_overrides(config, overrides, where="sweep override ")


# ---- running
def _trial_fn(fn) -> Callable:
    if callable(fn):
        return fn
    module, _, attr = (fn or DEFAULT_TRIAL_FN).partition(":")
    return getattr(importlib.import_module(module), attr)


def _error_text(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text if isinstance(e, AdaptError) else text + "\n" + "".join(traceback.format_exception(e))[-4000:]


def run_one(db, fn, trial_id_: str, job: tuple, root: str):
    """Runs one claimed trial and records how it ended (Ctrl-C: interrupted, then re-raised)."""
    stage_name, config = job
    workdir = os.path.join(root, stage_name, trial_id_)
    os.makedirs(workdir, exist_ok=True)
    try:
        metrics = fn(config, workdir)
        db.finish(trial_id_, metrics or {}, results.read_metrics_jsonl(os.path.join(workdir, "metrics.jsonl")))
    except KeyboardInterrupt:
        db.fail(trial_id_, "interrupted (Ctrl-C or SIGTERM)", "interrupted")
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001  (a failed trial is recorded; the sweep goes on)
        db.fail(trial_id_, _error_text(e))


def work(db_path: str, ids: list, jobs: dict, root: str, fn, heartbeat_s: float, on_done=None):
    """A worker: claims ready trials from the database and runs them until none is left."""
    db, fn, pid = results.ResultsDB(db_path), _trial_fn(fn), os.getpid()
    stop = threading.Event()

    def beat():
        hb = results.ResultsDB(db_path)
        while not stop.wait(heartbeat_s):
            hb.heartbeat(pid)

    threading.Thread(target=beat, daemon=True).start()
    try:
        while (t := db.claim(ids, pid)) is not None:
            if t == "wait":
                time.sleep(0.5)
            else:
                run_one(db, fn, t, jobs[t], root)
                if on_done:
                    on_done()
    finally:
        stop.set()


def _worker_main(*args):
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: record the trial as interrupted
    with contextlib.suppress(KeyboardInterrupt):
        return work(*args)
    sys.exit(130)


def _pool(db, n, ids, jobs, root, fn, heartbeat_s, tick):
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold JAX threads

    def start():
        p = ctx.Process(target=_worker_main, args=(db.path, ids, jobs, root, fn, heartbeat_s))
        p.start()
        return p

    procs = [start() for _ in range(n)]
    everyone = list(procs)
    try:
        while procs:
            time.sleep(0.3)
            for p in [p for p in procs if p.exitcode is not None]:
                procs.remove(p)
                if p.exitcode != 0:
                    code = p.exitcode
                    why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                    db.release_owner(p.pid, "failed", f"worker process died ({why})")
                    if db.claimed_by(p.pid) and db.counts(ids).get("pending"):
                        procs.append(start())
                        everyone.append(procs[-1])
            tick()
    except KeyboardInterrupt:
        for p in procs:  # each records its trial as interrupted (SIGTERM raises KeyboardInterrupt there)
            p.terminate()
        for p in procs:
            p.join(timeout=10)
            if p.exitcode is None:
                p.kill()
                p.join()
        raise
    finally:
        for p in everyone:
            db.release_owner(p.pid, "interrupted", "interrupted (its worker stopped)")


def _ray(db, n, ids, jobs, root, fn, address, gpus, tick):
    try:
        import ray
    except ImportError:
        raise AdaptError("--ray-address needs Ray: pip install 'ray[default]'") from None
    ray.init(address=None if address == "local" else address, ignore_reinit_error=True, log_to_driver=False)
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_ray_task)
    n = n or int(ray.cluster_resources().get("CPU", 1))
    running, pid = {}, os.getpid()
    try:
        while True:
            t = "wait"
            while len(running) < n and (t := db.claim(ids, pid)) not in (None, "wait"):
                running[task.remote(fn, jobs[t][1], os.path.join(root, jobs[t][0], t))] = t
            if not running:
                if t is None:
                    break
                time.sleep(1.0)  # waiting on a trial another process runs
            for ref in ray.wait(list(running), num_returns=1, timeout=1.0)[0]:
                t = running.pop(ref)
                try:
                    metrics, curves = ray.get(ref)
                    db.finish(t, metrics, curves)
                except Exception as e:  # noqa: BLE001
                    db.fail(t, _error_text(getattr(e, "cause", None) or e))
            db.heartbeat(pid)
            tick()
    finally:
        for ref in running:
            ray.cancel(ref, force=True)
        db.release_owner(pid, "interrupted", "interrupted (the Ray driver stopped)")
        if address == "local":
            ray.shutdown()


def _ray_task(fn, config, workdir):
    os.makedirs(workdir, exist_ok=True)
    metrics = _trial_fn(fn)(config, workdir)
    return metrics or {}, results.read_metrics_jsonl(os.path.join(workdir, "metrics.jsonl"))


def run_sweep(config: ml_collections.ConfigDict, sweep, workdir: str, *, db_path: str | None = None,
              workers: int = 0, trial_fn=None, name: str = "sweep", ray_address: str | None = None,
              ray_gpus: float = 0.0, progress: bool = True, heartbeat_s: float = 30.0,
              stale_after: float = 300.0) -> dict[str, int]:
    """Runs the sweep's unfinished trials (in this process when ``workers`` is 0, else in that many spawned
    worker processes, or as Ray tasks) and returns the number of trials per status.

    ``trial_fn(config, workdir) -> metrics`` (a callable importable by name, or "module:function") defaults to
    ``adapt.experiment.run_trial``. Every config is resolved before anything runs, so a bad key fails at once.
    """
    trials = expand(sweep)
    root = os.path.abspath(workdir)
    jobs = {t.id: (t.stage, apply_overrides(config, t.overrides, root)) for t in trials}
    db = results.ResultsDB(db_path or os.path.join(root, "results.db"))
    todo = db.register(name, trials, {i: j[1] for i, j in jobs.items()}, root, stale_after)
    ids = [t.id for t in trials]
    done0 = db.counts(ids).get("done", 0)
    from tqdm import tqdm

    bar = tqdm(total=todo, unit="trial", disable=not progress, dynamic_ncols=True)

    def tick():
        c = db.counts(ids)
        bar.update(sum(c.get(s, 0) for s in results.FINISHED) - done0 - bar.n)
        bar.set_postfix({k: c[k] for k in ("running", "failed", "skipped") if c.get(k)}, refresh=False)

    try:
        if todo and ray_address:
            _ray(db, workers, ids, jobs, root, trial_fn, ray_address, ray_gpus, tick)
        elif todo and workers > 0:
            _pool(db, min(workers, todo), ids, jobs, root, trial_fn, heartbeat_s, tick)
        elif todo:
            work(db.path, ids, jobs, root, trial_fn, heartbeat_s, tick)
        tick()
    finally:
        bar.close()
    counts = db.counts(ids)
    db.close()
    return counts
