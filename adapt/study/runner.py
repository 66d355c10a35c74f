"""Running a sweep: its trials (described by :mod:`adapt.study.sweeps`) claimed from one results database
(:mod:`adapt.analysis.results`) and run in this process, in spawned worker processes, or as Ray tasks.

    counts = run_sweep(config, get_sweep(arg), "runs/x", workers=2)   # {"done": 11, "failed": 1}

A trial runs in ``<workdir>/<stage>/<trial id>``; a failed trial is recorded with its error and the rest go on;
running the same sweep again runs only the trials not yet done.

In a multi-process JAX job (:mod:`adapt.core.distributed`: every process runs the same sweep command) each trial runs
over all processes at once: process 0 alone opens the database, claims each trial and hands its id to the others
(:func:`adapt.core.distributed.share`), runs it with them and records how it ended; the others only run the trials
they are handed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable

import ml_collections

from adapt.analysis import results
from adapt.core import distributed
from adapt.core.errors import AdaptError, ConfigError
from adapt.study import populations, sweeps

DEFAULT_TRIAL_FN = "adapt.experiment.trial:run_trial"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What every worker of one sweep needs; picklable, so a spawned worker process gets it whole."""

    db_path: str  # the results database
    ids: tuple[str, ...]  # the sweep's trial ids, each after the trials it depends on
    jobs: dict  # {trial id: (stage name, its resolved ConfigDict)}
    root: str  # the sweep folder (absolute)
    trial_fn: str | Callable = DEFAULT_TRIAL_FN  # fn(config, workdir) -> metrics, or "module:function"
    heartbeat_s: float = 30.0  # how often a worker marks its running trials alive
    pack: int = 1  # trials trained together at most (adapt.study.populations), those of one program
    programs: dict = dataclasses.field(default_factory=dict)  # {trial id: its program key}, with pack > 1

    def workdir(self, trial_id: str) -> str:
        return os.path.join(self.root, self.jobs[trial_id][0], trial_id)

    def claim(self, db: results.ResultsDB, pid: int):
        """The ids claimed: the next ready trial's and, with ``pack`` > 1, those of more ready trials of its
        program (up to ``pack``); or "wait" (the ready trials wait on others) or None (nothing is left)."""
        t = db.claim(self.ids, pid)
        if t in (None, "wait"):
            return t
        group, same = [t], [i for i in self.ids if i != t and self.programs.get(i) == self.programs.get(t)]
        while self.pack > 1 and len(group) < self.pack and (u := db.claim(same, pid)) not in (None, "wait"):
            group.append(u)
        return group


def trial_function(fn: str | Callable) -> Callable:
    """``fn``, or the function "module:function" names."""
    if callable(fn):
        return fn
    module, _, attr = fn.partition(":")
    return getattr(importlib.import_module(module), attr)


def error_text(e: BaseException) -> str:
    """How a trial's error is recorded: the one-line message of bad input, else with the traceback's end."""
    text = f"{type(e).__name__}: {e}".strip()
    return text if isinstance(e, AdaptError) else text + "\n" + "".join(traceback.format_exception(e))[-4000:]


def _run(plan: Plan, group: list[str], fn: Callable) -> list:
    """Runs claimed trials: alone with ``fn``, or more than one as a population (:mod:`adapt.study.populations`);
    returns each one's metrics or the error that ended it."""
    workdirs = [plan.workdir(t) for t in group]
    for w in workdirs:
        os.makedirs(w, exist_ok=True)
    if len(group) == 1:
        try:
            return [fn(plan.jobs[group[0]][1], workdirs[0])]
        except (Exception, SystemExit) as e:  # noqa: BLE001  (a failed trial is recorded; the sweep goes on)
            return [e]

    try:
        return populations.run_population([plan.jobs[t][1] for t in group], workdirs)
    except (Exception, SystemExit) as e:  # noqa: BLE001  (the population as a whole failed: each trial records it)
        return [e] * len(group)


def run_group(plan: Plan, group: list[str], *, db: results.ResultsDB, fn: Callable) -> None:
    """Runs claimed trials (one, or a population) and records how each ended (Ctrl-C: interrupted, re-raised)."""
    try:
        outcomes = _run(plan, group, fn)
    except KeyboardInterrupt:
        for t in group:
            db.fail(t, "interrupted (Ctrl-C or SIGTERM)", "interrupted")
        raise
    for t, out in zip(group, outcomes):
        if isinstance(out, BaseException):
            db.fail(t, error_text(out))
        else:
            db.finish(t, out or {}, results.read_metrics_jsonl(os.path.join(plan.workdir(t), "metrics.jsonl")))


def work(plan: Plan, *, on_done: Callable[[], None] | None = None) -> None:
    """A worker: claims ready trials from the database and runs them until none is left (``on_done`` after each);
    a thread marks its running trial alive every ``plan.heartbeat_s`` seconds. In a multi-process job (process 0)
    the ids of each claimed trial (or packed group), then "" for the end, go to the other processes
    (:func:`follow`)."""
    db, fn, pid = results.ResultsDB(plan.db_path), trial_function(plan.trial_fn), os.getpid()
    stop = threading.Event()

    def beat():
        hb = results.ResultsDB(plan.db_path)
        while not stop.wait(plan.heartbeat_s):
            hb.heartbeat(pid)

    threading.Thread(target=beat, daemon=True).start()
    try:
        while (group := plan.claim(db, pid)) is not None:
            if group == "wait":
                time.sleep(0.5)
            else:
                distributed.share(",".join(group))
                run_group(plan, group, db=db, fn=fn)
                if on_done:
                    on_done()
        distributed.share("")
    finally:
        stop.set()


def follow(plan: Plan) -> None:
    """A process other than 0 of a multi-process job: runs each trial (or packed group) process 0 hands it
    (:func:`work`), with process 0 and the rest, until it is handed ""; never opens the database (process 0
    records every trial)."""
    fn = trial_function(plan.trial_fn)
    while shared := distributed.share():
        group = shared.split(",")
        for t, out in zip(group, _run(plan, group, fn)):  # process 0 records the trials; the sweep goes on
            if isinstance(out, BaseException):
                print(f"trial {t} failed on process {distributed.process_index()}: {error_text(out)}",
                      file=sys.stderr)


def _worker_main(plan: Plan) -> None:
    """A spawned worker process's entry point (found by module path, so it stays at module level)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: record the trial as interrupted
    with contextlib.suppress(KeyboardInterrupt):
        return work(plan)
    sys.exit(130)


def _pool(plan: Plan, *, db: results.ResultsDB, workers: int, tick: Callable[[], None]) -> None:
    """Runs the trials in ``workers`` spawned processes; a worker that dies is recorded against its trial and
    replaced while trials are pending."""
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold JAX threads

    def start():
        p = ctx.Process(target=_worker_main, args=(plan,))
        p.start()
        everyone.append(p)
        return p

    everyone: list = []
    procs = [start() for _ in range(workers)]
    try:
        while procs:
            time.sleep(0.3)
            for p in [p for p in procs if p.exitcode is not None]:
                procs.remove(p)
                if p.exitcode != 0:
                    code = p.exitcode
                    why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                    db.release_owner(p.pid, "failed", f"worker process died ({why})")
                    if db.claimed_by(p.pid) and db.counts(plan.ids).get("pending"):
                        procs.append(start())
            tick()
    except KeyboardInterrupt:
        _stop(procs)
        raise
    finally:
        for p in everyone:
            db.release_owner(p.pid, "interrupted", "interrupted (its worker stopped)")


def _stop(procs: list) -> None:
    """SIGTERM to each worker (each records its trial as interrupted), SIGKILL to any still alive 10 s later."""
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(timeout=10)
        if p.exitcode is None:
            p.kill()
            p.join()


def _ray(plan: Plan, *, db: results.ResultsDB, workers: int, address: str, gpus: float,
         tick: Callable[[], None]) -> None:
    """Runs the trials as Ray tasks (``workers`` at once; 0: one per CPU of the cluster), claimed by this
    process, which records each task's result."""
    try:
        import ray
    except ImportError:
        raise AdaptError("--ray-address needs Ray: pip install 'ray[default]'") from None
    ray.init(address=None if address == "local" else address, ignore_reinit_error=True, log_to_driver=False)
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_ray_task)
    n = workers or int(ray.cluster_resources().get("CPU", 1))
    running, pid = {}, os.getpid()
    try:
        while True:
            t = "wait"
            while len(running) < n and (t := db.claim(plan.ids, pid)) not in (None, "wait"):
                running[task.remote(plan.trial_fn, plan.jobs[t][1], plan.workdir(t))] = t
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
                    db.fail(t, error_text(getattr(e, "cause", None) or e))
            db.heartbeat(pid)
            tick()
    finally:
        for ref in running:
            ray.cancel(ref, force=True)
        db.release_owner(pid, "interrupted", "interrupted (the Ray driver stopped)")
        if address == "local":
            ray.shutdown()


def _ray_task(trial_fn: str | Callable, config: ml_collections.ConfigDict, workdir: str):
    """One trial on a Ray worker (found by module path): (its metrics, its metrics.jsonl curves)."""
    os.makedirs(workdir, exist_ok=True)
    metrics = trial_function(trial_fn)(config, workdir)
    return metrics or {}, results.read_metrics_jsonl(os.path.join(workdir, "metrics.jsonl"))


def run_sweep(config: ml_collections.ConfigDict, sweep, workdir: str, *, db_path: str | None = None,
              workers: int = 0, trial_fn: str | Callable | None = None, name: str = "sweep",
              ray_address: str | None = None, ray_gpus: float = 0.0, progress: bool = True,
              heartbeat_s: float = 30.0, stale_after: float = 300.0, pack: int = 1) -> dict[str, int]:
    """Runs the sweep's unfinished trials (in this process when ``workers`` is 0, else in that many spawned
    worker processes, or as Ray tasks) and returns the number of trials per status; ``name`` labels them in the
    database (:func:`adapt.study.sweeps.sweep_label`).

    ``trial_fn(config, workdir) -> metrics`` (a callable importable by name, or "module:function") defaults to
    ``adapt.experiment.trial.run_trial``. Every config is resolved before anything runs, so a bad key fails at once.
    In a multi-process JAX job every process calls this and gets the same counts; trials run in this process.
    ``pack`` > 1 trains up to that many ready trials of one program together (:mod:`adapt.study.populations`: those
    differing only in learning rate, weight decay, seed or mixture weights), each still its own trial here.
    """
    processes = distributed.process_count()
    if processes > 1 and (workers or ray_address):
        flags = " and ".join(f for f, on in ((f"--workers={workers}", workers), ("--ray-address", ray_address)) if on)
        raise ConfigError(f"{flags} with {processes} JAX processes: a multi-process job runs each trial over all "
                          f"its processes, one trial at a time; leave {'it' if ' and ' not in flags else 'them'} out")
    if pack > 1 and (ray_address or (trial_fn or DEFAULT_TRIAL_FN) != DEFAULT_TRIAL_FN):
        raise ConfigError(f"--pack={pack} trains trials together with adapt.study.populations; it runs in this "
                          f"process or --workers, with the default trial function, not --ray-address or --trial-fn")
    if pack < 1:
        raise ConfigError(f"--pack={pack}: expected 1 (trials one by one) or more")
    trials = sweeps.expand(sweep)
    root = os.path.abspath(workdir)
    jobs = {t.id: (t.stage, sweeps.trial_config(config, t.overrides, root)) for t in trials}
    if (trial_fn or DEFAULT_TRIAL_FN) == DEFAULT_TRIAL_FN:  # the trial schema is run_trial's (another function's
        for t in trials:                                     # config is that function's to check)
            sweeps.check_trial(t, jobs[t.id][1])
    programs = {}
    if pack > 1:
        programs = {i: populations.program_key(c) for i, (_, c) in jobs.items()}
    db_path = db_path or os.path.join(root, "results.db")
    if distributed.process_index() > 0:
        follow(Plan(db_path, tuple(t.id for t in trials), jobs, root, trial_fn or DEFAULT_TRIAL_FN, heartbeat_s,
                    pack, programs))
        return json.loads(distributed.share())
    db = results.ResultsDB(db_path)
    todo = db.register(name, trials, {i: j[1] for i, j in jobs.items()}, root, stale_after)
    plan = Plan(db.path, tuple(t.id for t in trials), jobs, root, trial_fn or DEFAULT_TRIAL_FN, heartbeat_s, pack,
                programs)
    done0 = db.counts(plan.ids).get("done", 0)
    from tqdm import tqdm

    bar = tqdm(total=todo, unit="trial", disable=not progress, dynamic_ncols=True)

    def tick():
        c = db.counts(plan.ids)
        bar.update(sum(c.get(s, 0) for s in results.FINISHED) - done0 - bar.n)
        bar.set_postfix({k: c[k] for k in ("running", "failed", "skipped") if c.get(k)}, refresh=False)

    try:
        if todo and ray_address:
            _ray(plan, db=db, workers=workers, address=ray_address, gpus=ray_gpus, tick=tick)
        elif todo and workers > 0:
            _pool(plan, db=db, workers=min(workers, todo), tick=tick)
        elif todo or processes > 1:  # the other processes wait for work()'s word, even when nothing is left
            work(plan, on_done=tick)
        tick()
    finally:
        bar.close()
    counts = db.counts(plan.ids)
    db.close()
    return json.loads(distributed.share(json.dumps(counts)))
