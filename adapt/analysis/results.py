"""The results database: one SQLite file (``<sweep workdir>/results.db`` by default) that sweep workers write
and tables read.

Schema (``PRAGMA user_version = 1``)::

    trials(id TEXT PRIMARY KEY,        -- hash of stage + resolved overrides (adapt.study.sweeps.Trial.id)
           sweep TEXT,                 -- adapt.study.sweeps.sweep_label: "x.py:arg#name" (sweep.py),
                                       -- "x.py:arg" (study.py)
           stage TEXT, condition TEXT, -- condition: the trial's meta.condition override, else its stage
           depends TEXT,               -- JSON list of trial ids this one starts from
           overrides TEXT,             -- JSON {dotted key: value}, meta.* keys included
           config TEXT,                -- JSON of the full resolved config the trial ran with
           status TEXT,                -- pending | running | done | failed | skipped | interrupted | pruned
           error TEXT,                 -- "Type: message" (plus the traceback for non-AdaptError bugs); for a
                                       -- pruned trial, where it stopped: "pruned at step 40: dev/accuracy=0.41"
           workdir TEXT, start_time REAL, end_time REAL, wall_s REAL, heartbeat REAL,  -- unix seconds
           pid INTEGER, host TEXT,     -- the worker that ran (or runs) it
           attempts INTEGER)           -- how many times it was started
    metrics(trial, split, metric, value REAL)       -- final metrics run_trial returned: ("dev", "accuracy", 0.91)
    curve_summary(trial, metric, n, first_step, last_step, first, last, min, max, best, best_step)
    curves(trial, metric, step, value)               -- metrics.jsonl points (at most MAX_POINTS per metric)

A ``pruned`` trial is one an adaptive search (:mod:`adapt.study.adaptive`) stopped early: its curves up to there are
recorded, it has no final metrics, and tables never use it (they read ``done`` trials only).

``best`` is the minimum for loss-like metrics (name contains loss, perplexity, ppl or error) and the maximum
otherwise. Every write is one ``BEGIN IMMEDIATE`` transaction (WAL journal, synchronous=FULL, a busy timeout), so
worker processes can share the file, a finished trial's metrics and its ``done`` status land together, and a
crash or Ctrl-C mid-write leaves the previous state. A ``running`` trial whose worker is gone (its pid no longer
exists on this host, or its heartbeat is older than ``stale_after`` seconds) is reset to ``pending`` by
:meth:`ResultsDB.register`, as are ``failed``, ``skipped`` and ``interrupted`` ones; ``done`` and ``pruned`` trials
are kept.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import sqlite3
import time

from adapt.core.errors import AdaptError

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
  id TEXT PRIMARY KEY, sweep TEXT NOT NULL, stage TEXT NOT NULL, condition TEXT NOT NULL,
  depends TEXT NOT NULL DEFAULT '[]', overrides TEXT NOT NULL, config TEXT NOT NULL DEFAULT '{}',
  status TEXT NOT NULL DEFAULT 'pending', error TEXT, workdir TEXT,
  start_time REAL, end_time REAL, wall_s REAL, heartbeat REAL, pid INTEGER, host TEXT,
  attempts INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS trials_status ON trials(status);
CREATE TABLE IF NOT EXISTS metrics (
  trial TEXT NOT NULL REFERENCES trials(id), split TEXT NOT NULL, metric TEXT NOT NULL, value REAL,
  PRIMARY KEY (trial, split, metric));
CREATE TABLE IF NOT EXISTS curve_summary (
  trial TEXT NOT NULL REFERENCES trials(id), metric TEXT NOT NULL, n INTEGER, first_step INTEGER,
  last_step INTEGER, first REAL, last REAL, min REAL, max REAL, best REAL, best_step INTEGER,
  PRIMARY KEY (trial, metric));
CREATE TABLE IF NOT EXISTS curves (
  trial TEXT NOT NULL REFERENCES trials(id), metric TEXT NOT NULL, step INTEGER NOT NULL, value REAL,
  PRIMARY KEY (trial, metric, step));
PRAGMA user_version = 1;
"""
FINISHED = ("done", "failed", "skipped", "interrupted", "pruned")
MAX_POINTS = 1000
HOST = socket.gethostname()


def lower_is_better(metric: str) -> bool:
    return re.search(r"loss|perplexity|ppl|error", metric) is not None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def read_metrics_jsonl(path: str) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(step, value)] sorted by step from a metrics.jsonl; a repeated step (a resumed run logs the
    steps after its last checkpoint again) keeps its last value, and a torn last line is ignored."""
    points: dict[str, dict[int, float]] = {}
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
                step = int(rec["step"])
            except (ValueError, KeyError, TypeError):
                continue
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    points.setdefault(k, {})[step] = float(v)
    return {k: sorted(v.items()) for k, v in points.items()}


def _flat_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, dict):
            out.update(_flat_metrics(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def _summary(metric: str, pts: list[tuple[int, float]]) -> tuple:
    vals = [v for _, v in pts if math.isfinite(v)] or [math.nan]
    best = min(vals) if lower_is_better(metric) else max(vals)
    best_step = next((s for s, v in pts if v == best), None)
    return (len(pts), pts[0][0], pts[-1][0], pts[0][1], pts[-1][1], min(vals), max(vals), best, best_step)


def _thin(pts: list, n: int = MAX_POINTS) -> list:
    if len(pts) <= n:
        return pts
    idx = sorted({round(i * (len(pts) - 1) / (n - 1)) for i in range(n)})
    return [pts[i] for i in idx]


class ResultsDB:
    def __init__(self, path: str, timeout_s: float = 120.0):
        self.path = str(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        try:
            self.conn.execute("PRAGMA journal_mode = WAL")  # the first statement that reads the file
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise AdaptError(f"{self.path}: not a results database ({e}); expected the SQLite file "
                             f"scripts/sweep.py writes, or a path where none exists yet") from None
        self.conn.execute("PRAGMA synchronous = FULL")
        with self.tx() as c:
            for stmt in SCHEMA.strip().split(";"):
                if stmt.strip() and not stmt.strip().startswith("PRAGMA"):
                    c.execute(stmt)
        self.conn.execute("PRAGMA user_version = 1")

    @classmethod
    def open_existing(cls, path: str) -> ResultsDB:
        if not os.path.isfile(path):
            raise AdaptError(f"no results database at {path} (scripts/sweep.py writes <workdir>/results.db)")
        return cls(path)

    @contextlib.contextmanager
    def tx(self):
        """One write transaction: taken at once (BEGIN IMMEDIATE), rolled back on any exception or Ctrl-C."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self):
        self.conn.close()

    # ---- the sweep side
    def register(self, sweep: str, trials, configs: dict, workdir: str, stale_after: float = 300.0) -> int:
        """Adds the trials (adapt.study.sweeps.Trial) that are new as pending, resets unfinished ones (failed, skipped,
        interrupted, or running with a dead worker) to pending; returns how many are neither done nor pruned."""
        now = time.time()
        with self.tx() as c:
            for t in trials:
                row = (json.dumps(list(t.depends)), json.dumps(t.overrides, sort_keys=True),
                       json.dumps(configs[t.id].to_dict(), sort_keys=True, default=repr),
                       os.path.join(workdir, t.stage, t.id))
                c.execute("INSERT OR IGNORE INTO trials (id, sweep, stage, condition, depends, overrides, config, "
                          "workdir) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (t.id, sweep, t.stage, t.condition, *row))
                c.execute("UPDATE trials SET depends = ?, overrides = ?, config = ?, workdir = ? "
                          "WHERE id = ? AND status NOT IN ('done', 'pruned')", (*row, t.id))
            ids = [t.id for t in trials]
            todo = 0
            for r in self._rows(c, ids):
                if r["status"] in ("failed", "skipped", "interrupted") or self._stale(r, now, stale_after):
                    c.execute("UPDATE trials SET status = 'pending' WHERE id = ?", (r["id"],))
                todo += r["status"] not in ("done", "pruned")
        return todo

    @staticmethod
    def _stale(r, now: float, stale_after: float) -> bool:
        """Whether row ``r`` is a running trial whose worker is gone (see the module docstring)."""
        return r["status"] == "running" and (
            (r["host"] == HOST and not pid_alive(r["pid"])) or now - (r["heartbeat"] or 0) > stale_after)

    def statuses(self, ids, stale_after: float = 300.0) -> dict[str, str]:
        """{trial id: status} of those of ``ids`` the database holds; a running trial whose worker is gone (as
        :meth:`register` judges it, and would reset it) reads "stale"."""
        now = time.time()
        return {r["id"]: "stale" if self._stale(r, now, stale_after) else r["status"]
                for r in self._rows(self.conn, ids)}

    @staticmethod
    def _rows(c, ids) -> list:
        wanted = set(ids)
        return [r for r in c.execute("SELECT id, status, depends, pid, host, heartbeat FROM trials ORDER BY rowid")
                if r["id"] in wanted]

    def claim(self, ids, pid: int, host: str = HOST):
        """The next pending trial among ``ids`` whose dependencies are all done, marked running for (pid, host);
        "wait" when pending trials wait on running ones; None when nothing is left. Trials whose dependency
        failed (or was skipped or interrupted) are marked skipped on the way."""
        with self.tx() as c:
            status = {r["id"]: r["status"] for r in c.execute("SELECT id, status FROM trials")}
            waiting = False
            for r in self._rows(c, ids):
                if r["status"] != "pending":
                    continue
                deps = json.loads(r["depends"])
                bad = [d for d in deps if status.get(d) in ("failed", "skipped", "interrupted", "pruned")]
                if bad:
                    c.execute("UPDATE trials SET status = 'skipped', error = ? WHERE id = ?",
                              (f"skipped: depends on trial {bad[0]}, which is {status[bad[0]]}", r["id"]))
                    status[r["id"]] = "skipped"
                elif all(status.get(d) == "done" for d in deps):
                    now = time.time()
                    c.execute("UPDATE trials SET status = 'running', error = NULL, pid = ?, host = ?, start_time = ?,"
                              " heartbeat = ?, end_time = NULL, wall_s = NULL, attempts = attempts + 1 WHERE id = ?",
                              (pid, host, now, now, r["id"]))
                    return r["id"]
                else:
                    waiting = True
        return "wait" if waiting else None

    def heartbeat(self, pid: int, host: str = HOST):
        with self.tx() as c:
            c.execute("UPDATE trials SET heartbeat = ? WHERE status = 'running' AND pid = ? AND host = ?",
                      (time.time(), pid, host))

    def finish(self, trial: str, metrics: dict, curves: dict[str, list[tuple[int, float]]]):
        """Records a finished trial: its final metrics, its curves and status done, all in one transaction."""
        self._record(trial, metrics, curves, "done", None)

    def prune(self, trial: str, curves: dict[str, list[tuple[int, float]]], note: str):
        """Records a trial an adaptive search stopped early: its curves up to there and status pruned, with
        ``note`` (where it stopped, the last value reported) as its error; it has no final metrics."""
        self._record(trial, {}, curves, "pruned", note)

    def _record(self, trial: str, metrics: dict, curves: dict, status: str, error: str | None):
        flat = _flat_metrics(metrics)
        with self.tx() as c:
            for table in ("metrics", "curve_summary", "curves"):
                c.execute(f"DELETE FROM {table} WHERE trial = ?", (trial,))
            for name, value in flat.items():
                split, metric = name.split("/", 1) if "/" in name else ("final", name)
                c.execute("INSERT INTO metrics VALUES (?, ?, ?, ?)", (trial, split, metric, value))
            for metric, pts in curves.items():
                if pts:
                    c.execute("INSERT INTO curve_summary VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              (trial, metric, *_summary(metric, pts)))
                    c.executemany("INSERT INTO curves VALUES (?, ?, ?, ?)",
                                  [(trial, metric, s, v) for s, v in _thin(pts)])
            self._end(c, trial, status, error)

    def fail(self, trial: str, error: str, status: str = "failed"):
        with self.tx() as c:
            self._end(c, trial, status, error)

    @staticmethod
    def _end(c, trial, status, error):
        now = time.time()
        c.execute("UPDATE trials SET status = ?, error = ?, end_time = ?, wall_s = ? - start_time WHERE id = ?",
                  (status, error, now, now, trial))

    def release_owner(self, pid: int, status: str, error: str, host: str = HOST) -> int:
        """Ends the running trials of worker (pid, host) with ``status`` (a dead or interrupted worker)."""
        with self.tx() as c:
            ids = [r[0] for r in c.execute("SELECT id FROM trials WHERE status = 'running' AND pid = ? AND host = ?",
                                           (pid, host))]
            for i in ids:
                self._end(c, i, status, error)
        return len(ids)

    def claimed_by(self, pid: int, host: str = HOST) -> bool:
        return self.conn.execute("SELECT 1 FROM trials WHERE pid = ? AND host = ?", (pid, host)).fetchone() is not None

    def counts(self, ids) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self._rows(self.conn, ids):
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    # ---- the table side
    def trials(self, sweep: str | None = None, status: str | None = None) -> list[dict]:
        """Trials as dicts (JSON columns decoded) with their final metrics under "metrics": {split: {metric: v}}."""
        q, args = "SELECT * FROM trials WHERE 1", []
        for col, val in (("sweep", sweep), ("status", status)):
            if val is not None:
                q, args = q + f" AND {col} = ?", args + [val]
        out = {}
        for r in self.conn.execute(q + " ORDER BY rowid", args):
            t = dict(r)
            for k in ("depends", "overrides", "config"):
                t[k] = json.loads(t[k])
            t["metrics"] = {}
            out[t["id"]] = t
        for r in self.conn.execute("SELECT * FROM metrics"):
            if r["trial"] in out:
                out[r["trial"]]["metrics"].setdefault(r["split"], {})[r["metric"]] = r["value"]
        return list(out.values())

    def metric(self, trial: str, name: str) -> float | None:
        """A trial's final metric ``name`` ("dev/accuracy", split as :meth:`finish` splits it); None if it has none."""
        split, metric = name.split("/", 1) if "/" in name else ("final", name)
        row = self.conn.execute("SELECT value FROM metrics WHERE trial = ? AND split = ? AND metric = ?",
                                (trial, split, metric)).fetchone()
        return None if row is None else row[0]

    def curve(self, trial: str, metric: str) -> list[tuple[int, float]]:
        return [(r[0], r[1]) for r in self.conn.execute(
            "SELECT step, value FROM curves WHERE trial = ? AND metric = ? ORDER BY step", (trial, metric))]

    def curve_metrics(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT metric FROM curves ORDER BY metric")]
