"""Sweeps: expansion, stages and init_from, the results database under failures, killed workers, Ctrl-C and
concurrent workers, the scripts/sweep.py command line. A fake trial function stands in for training (no JAX)."""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time

import ml_collections
import pytest

from adapt.analysis import results
from adapt.core.errors import AdaptError, ConfigError, TrainingError
from adapt.study import runner, sweeps
from adapt.study.sweeps import grid, loguniform, product, random, stage, zip_

HERE = os.path.dirname(os.path.abspath(__file__))  # a subprocess imports this file's trial function
ROOT = os.path.dirname(os.path.dirname(HERE))


def base_config(folder) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(
        optimizer=dict(learning_rate=1e-3, weight_decay=0.0), train=dict(seed=0, steps=5),
        method=dict(name="full"), data=dict(source="", mixture={}), init_from="",
        fake=dict(dir=str(folder), barrier=0)))
    c.lock()
    return c


def fake_trial(config, workdir):
    """Writes a metrics.jsonl and an export folder; flag files ``<name>_<trial id>`` in config.fake.dir make it
    fail, kill its own process, hang or raise KeyboardInterrupt."""
    d, tid = config.fake.dir, os.path.basename(workdir)
    with open(os.path.join(d, "calls.log"), "a") as f:
        f.write(f"{tid} {os.getpid()}\n")

    def flag(name):
        return os.path.exists(os.path.join(d, f"{name}_{tid}"))

    if config.init_from and not os.path.isfile(os.path.join(config.init_from, "model.txt")):
        raise AdaptError(f"init_from {config.init_from} holds no model")
    if flag("hang"):
        open(os.path.join(d, f"started_{tid}"), "w").close()
        time.sleep(120)
    if flag("kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    if flag("interrupt"):
        raise KeyboardInterrupt
    if flag("fail"):
        raise TrainingError("loss is nan at step 3")
    if config.fake.barrier:  # wait until that many trials run at once
        open(os.path.join(d, f"running_{tid}"), "w").close()
        deadline = time.time() + 60
        while len(glob.glob(os.path.join(d, "running_*"))) < config.fake.barrier and time.time() < deadline:
            time.sleep(0.05)
    lr, seed = config.optimizer.learning_rate, config.train.seed
    acc = 0.5 + 100 * lr + 0.01 * seed
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for step in range(0, 50, 10):
            f.write(json.dumps({"step": step, "train/loss": 1 / (1 + step) + 0.01 * seed}) + "\n")
        f.write(json.dumps({"step": 40, "dev/accuracy": acc}) + "\n")
    os.makedirs(os.path.join(workdir, "export"), exist_ok=True)
    with open(os.path.join(workdir, "export", "model.txt"), "w") as f:
        f.write(tid)
    return {"dev": {"accuracy": acc}, "test": {"accuracy": acc - 0.05}}


def calls(folder) -> list[str]:
    path = os.path.join(folder, "calls.log")
    return [line.split()[0] for line in open(path)] if os.path.exists(path) else []


def flag(folder, name, tid):
    open(os.path.join(folder, f"{name}_{tid}"), "w").close()


def statuses(db_path) -> dict[str, str]:
    with sqlite3.connect(db_path) as c:
        return dict(c.execute("SELECT id, status FROM trials"))


def run(folder, sweep, **kw):
    kw = {"trial_fn": fake_trial, "progress": False, **kw}
    return runner.run_sweep(base_config(folder), sweep, os.path.join(folder, "runs"), **kw)


LR_SEEDS = product(grid("optimizer.learning_rate", [1e-3, 2e-3]), grid("train.seed", [0, 1]))


# ---- the description language
def test_grid_product_zip_counts():
    assert len(product(grid("optimizer.learning_rate", [1e-5, 3e-5, 1e-4]), grid("train.seed", [0, 1, 2]))) == 9
    assert product({"method.name": "lora"}, grid("train.seed", [0, 1])) == [
        {"method.name": "lora", "train.seed": 0}, {"method.name": "lora", "train.seed": 1}]
    assert zip_(grid("a", [1, 2]), grid("b", [3, 4])) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    assert len(grid("a", [1]) + grid("a", [2, 3])) == 3
    with pytest.raises(ConfigError, match="equal length"):
        zip_(grid("a", [1, 2]), grid("b", [3]))
    trials = sweeps.expand(LR_SEEDS)
    assert len(trials) == 4 and {t.stage for t in trials} == {"main"} and len({t.id for t in trials}) == 4
    assert [t.id for t in sweeps.expand(LR_SEEDS)] == [t.id for t in trials]  # ids are stable
    with pytest.raises(ConfigError, match="same trial twice"):
        sweeps.expand(grid("a", [1, 1]))


def test_random_is_reproducible_by_seed():
    a = random("optimizer.learning_rate", loguniform(1e-5, 1e-3), n=8, seed=0)
    assert a == random("optimizer.learning_rate", loguniform(1e-5, 1e-3), n=8, seed=0)
    assert a != random("optimizer.learning_rate", loguniform(1e-5, 1e-3), n=8, seed=1)
    assert all(1e-5 <= d["optimizer.learning_rate"] <= 1e-3 for d in a) and len({str(d) for d in a}) == 8
    assert {d["m"] for d in random("m", sweeps.choice(["lora", "full"]), n=20, seed=3)} == {"lora", "full"}
    u = random("optimizer.weight_decay", sweeps.uniform(0.0, 0.1), n=5, seed=2)
    assert all(0 <= d["optimizer.weight_decay"] <= 0.1 for d in u)


def test_stages_depend_and_set_init_from(tmp_path):
    pretrain = stage("pretrain", {"train.steps": 3},
                     zip_(grid("meta.domain", ["bio", "cs"]), grid("data.source", ["bio.txt", "cs.txt"])))
    finetune = stage("finetune", LR_SEEDS, after="pretrain", match=["meta.domain"])
    trials = sweeps.expand([pretrain, finetune])
    pre = {t.overrides["meta.domain"]: t for t in trials if t.stage == "pretrain"}
    fine = [t for t in trials if t.stage == "finetune"]
    assert len(pre) == 2 and len(fine) == 2 * 4
    for t in fine:
        parent = pre[t.overrides["meta.domain"]]
        assert t.depends == (parent.id,) and t.overrides["init_from"] == f"pretrain/{parent.id}/export"
        cfg = sweeps.trial_config(base_config(tmp_path), t.overrides, str(tmp_path))
        assert cfg.init_from == str(tmp_path / "pretrain" / parent.id / "export")
    # a child that names a match key pairs with that parent only; no match key crosses with every parent
    assert len(sweeps.expand([pretrain, stage("ft", {"meta.domain": "cs"}, after="pretrain",
                                              match=["meta.domain"])])) == 3
    assert len(sweeps.expand([pretrain, stage("ft", grid("train.seed", [0, 1]), after="pretrain")])) == 6
    with pytest.raises(ConfigError, match="matches no trial"):
        sweeps.expand([pretrain, stage("ft", {"meta.domain": "law"}, after="pretrain", match=["meta.domain"])])
    with pytest.raises(ConfigError, match="did you mean 'pretrain'"):
        sweeps.expand([pretrain, stage("ft", after="pretrian")])


def test_bad_keys_are_one_line_errors(tmp_path):
    cfg = base_config(tmp_path)
    with pytest.raises(ConfigError,
                       match=r"optimizer.learning_rat: no such config key; did you mean optimizer.learning_rate"):
        sweeps.trial_config(cfg, {"optimizer.learning_rat": 1e-4})
    with pytest.raises(ConfigError, match="optimizer.learning_rate is a value"):
        sweeps.trial_config(cfg, {"optimizer.learning_rate.x": 1})
    with pytest.raises(ConfigError, match="could not|cannot|Could not"):
        sweeps.trial_config(cfg, {"train.steps": "many"})
    # below an empty section, and below a section the trial replaces whole, new keys are fine
    out = sweeps.trial_config(cfg, {"data.mixture.bio.weight": 0.7, "method": {"name": "lora", "rank": 4},
                                    "method.rank": 8, "meta.benchmark": "x"})
    assert out.data.mixture.bio.weight == 0.7 and out.method.rank == 8 and "meta" not in out
    with pytest.raises(ConfigError, match="optimizer.learning_rat: no such config key"):
        run(tmp_path, grid("optimizer.learning_rat", [1e-4]))
    assert not calls(tmp_path)  # every config is checked before anything runs


# ---- running
def test_failed_trial_is_recorded_and_rerun_alone(tmp_path):
    ids = [t.id for t in sweeps.expand(LR_SEEDS)]
    flag(tmp_path, "fail", ids[1])
    assert run(tmp_path, LR_SEEDS) == {"done": 3, "failed": 1}
    db = results.ResultsDB(str(tmp_path / "runs" / "results.db"))
    bad = next(t for t in db.trials() if t["id"] == ids[1])
    assert bad["status"] == "failed" and bad["error"] == "TrainingError: loss is nan at step 3"
    assert bad["attempts"] == 1 and bad["pid"] == os.getpid() and bad["wall_s"] >= 0
    good = next(t for t in db.trials() if t["id"] == ids[0])
    assert good["metrics"] == {"dev": {"accuracy": pytest.approx(0.6)}, "test": {"accuracy": pytest.approx(0.55)}}
    assert good["config"]["optimizer"]["learning_rate"] == 1e-3 and good["workdir"].endswith(f"main/{ids[0]}")
    summary = db.conn.execute("SELECT * FROM curve_summary WHERE trial = ? AND metric = 'train/loss'",
                              (ids[0],)).fetchone()
    assert (summary["n"], summary["first"], summary["last"], summary["best"]) == (5, 1.0, 1 / 41, 1 / 41)
    assert len(db.curve(ids[0], "train/loss")) == 5

    os.remove(tmp_path / f"fail_{ids[1]}")
    assert calls(tmp_path) == ids
    assert run(tmp_path, LR_SEEDS) == {"done": 4}
    assert calls(tmp_path) == ids + [ids[1]]  # only the failed one ran again
    assert next(t for t in db.trials() if t["id"] == ids[1])["attempts"] == 2
    assert run(tmp_path, LR_SEEDS) == {"done": 4} and len(calls(tmp_path)) == 5


def test_trials_after_a_failed_one_are_skipped(tmp_path):
    pretrain = stage("pretrain", grid("meta.domain", ["bio", "cs"]))
    sweep = [pretrain, stage("finetune", grid("train.seed", [0, 1]), after="pretrain", match=["meta.domain"])]
    trials = sweeps.expand(sweep)
    bio = trials[0].id
    flag(tmp_path, "fail", bio)
    assert run(tmp_path, sweep) == {"done": 3, "failed": 1, "skipped": 2}
    db = results.ResultsDB(str(tmp_path / "runs" / "results.db"))
    skipped = [t for t in db.trials() if t["status"] == "skipped"]
    assert all(t["depends"] == [bio] and f"depends on trial {bio}, which is failed" in t["error"] for t in skipped)
    os.remove(tmp_path / f"fail_{bio}")
    assert run(tmp_path, sweep) == {"done": 6}
    assert sorted(calls(tmp_path)[4:]) == sorted([bio] + [t["id"] for t in skipped])


def test_ctrl_c_marks_the_trial_interrupted(tmp_path):
    ids = [t.id for t in sweeps.expand(LR_SEEDS)]
    flag(tmp_path, "interrupt", ids[1])
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, LR_SEEDS)
    db_path = str(tmp_path / "runs" / "results.db")
    assert statuses(db_path) == {ids[0]: "done", ids[1]: "interrupted", ids[2]: "pending", ids[3]: "pending"}
    os.remove(tmp_path / f"interrupt_{ids[1]}")
    assert run(tmp_path, LR_SEEDS) == {"done": 4} and calls(tmp_path) == ids[:2] + ids[1:]


def test_stale_running_trials_are_reset(tmp_path):
    trials = sweeps.expand(LR_SEEDS)[:2]
    configs = {t.id: base_config(tmp_path) for t in trials}
    db = results.ResultsDB(str(tmp_path / "r.db"))
    db.register("s", trials, configs, str(tmp_path))
    ids = [t.id for t in trials]
    assert db.claim(ids, pid=os.getpid(), host="elsewhere") == ids[0]
    assert db.claim(ids, pid=os.getpid(), host="elsewhere") == ids[1]
    db.conn.execute("UPDATE trials SET heartbeat = heartbeat - 1000 WHERE id = ?", (ids[0],))
    assert db.register("s", trials, configs, str(tmp_path), stale_after=300) == 2
    assert statuses(db.path) == {ids[0]: "pending", ids[1]: "running"}  # a live heartbeat elsewhere is left alone
    assert db.claim(ids, pid=1) == ids[0] and db.claim(ids, pid=1) is None


def test_killed_sweep_process_leaves_a_consistent_db(tmp_path):
    ids = [t.id for t in sweeps.expand(LR_SEEDS)]
    flag(tmp_path, "hang", ids[2])
    proc = multiprocessing.get_context("spawn").Process(
        target=runner.run_sweep, args=(base_config(tmp_path), LR_SEEDS, str(tmp_path / "runs")),
        kwargs=dict(trial_fn=fake_trial, progress=False))
    proc.start()
    deadline = time.time() + 60
    while not os.path.exists(tmp_path / f"started_{ids[2]}") and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    db_path = str(tmp_path / "runs" / "results.db")
    with sqlite3.connect(db_path) as c:
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert c.execute("SELECT pid FROM trials WHERE id = ?", (ids[2],)).fetchone() == (proc.pid,)
    assert statuses(db_path) == {ids[0]: "done", ids[1]: "done", ids[2]: "running", ids[3]: "pending"}
    os.remove(tmp_path / f"hang_{ids[2]}")
    assert run(tmp_path, LR_SEEDS) == {"done": 4}
    assert calls(tmp_path) == ids[:3] + ids[2:]


def test_two_worker_processes(tmp_path):
    """Two spawned workers share the database; a trial that kills its worker is recorded, the rest go on."""
    sweep = product(grid("optimizer.learning_rate", [1e-3, 2e-3, 3e-3]), grid("train.seed", [0, 1]))
    ids = [t.id for t in sweeps.expand(sweep)]
    flag(tmp_path, "kill", ids[3])
    cfg = base_config(tmp_path)
    cfg.fake.barrier = 2  # each trial waits until two run at once: both workers really work in parallel
    counts = runner.run_sweep(cfg, sweep, str(tmp_path / "runs"), workers=2, trial_fn=fake_trial, progress=False)
    assert counts == {"done": 5, "failed": 1}
    db = results.ResultsDB(str(tmp_path / "runs" / "results.db"))
    killed = next(t for t in db.trials() if t["id"] == ids[3])
    assert killed["error"] == "worker process died (killed by SIGKILL)"
    assert len({t["pid"] for t in db.trials()}) >= 2 and os.getpid() not in {t["pid"] for t in db.trials()}
    assert db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    os.remove(tmp_path / f"kill_{ids[3]}")
    assert runner.run_sweep(cfg, sweep, str(tmp_path / "runs"), workers=2, trial_fn=fake_trial,
                            progress=False) == {"done": 6}
    assert sorted(calls(tmp_path)) == sorted(ids + [ids[3]])


# ---- the command line
CONFIG = """
import ml_collections
from adapt.study.sweeps import grid, product

def get_config(arg):
    c = ml_collections.ConfigDict(dict(optimizer=dict(learning_rate=1e-3), train=dict(seed=0, steps=5), init_from="",
                                       fake=dict(dir=arg, barrier=0)))
    c.lock()
    return c

def get_sweep(arg):
    return {"default": product(grid("optimizer.learning_rate", [1e-3, 2e-3]), grid("train.seed", [0, 1])),
            "typo": grid("optimizer.learning_rat", [1e-3])}
"""


def sweep_cli(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, ROOT, os.environ["PYTHONPATH"]])}
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "sweep.py"), "--no-progress",
                           f"--config={tmp_path}/cfg.py:{tmp_path}", f"--workdir={tmp_path}/runs",
                           "--trial-fn=test_sweeps:fake_trial", *args],
                          capture_output=True, text=True, check=False, env=env)


@pytest.mark.slow  # the command line's bad-input test below runs scripts/sweep.py in the fast tier
def test_sweep_command_line(tmp_path):
    (tmp_path / "cfg.py").write_text(CONFIG)
    out = sweep_cli(tmp_path, "--config.train.steps=7")
    assert out.returncode == 0, out.stderr
    assert "#default: 4 done" in out.stdout and len(calls(tmp_path)) == 4
    db = results.ResultsDB(str(tmp_path / "runs" / "results.db"))
    assert {t["config"]["train"]["steps"] for t in db.trials()} == {7}  # the override reached every trial
    out = sweep_cli(tmp_path, "--config.train.stpes=7")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "--config.train.stpes: no such config key; did you mean train.steps" in out.stderr
    out = sweep_cli(tmp_path, "--sweep=defualt")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "unknown sweep 'defualt'" in out.stderr and "did you mean 'default'" in out.stderr
    out = sweep_cli(tmp_path, "--sweep=typo")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "optimizer.learning_rate" in out.stderr


@pytest.mark.slow
def test_ray_backend(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([HERE, ROOT, os.environ["PYTHONPATH"]]))
    sweep = grid("train.seed", [0, 1])
    ids = [t.id for t in sweeps.expand(sweep)]
    flag(tmp_path, "fail", ids[1])
    assert run(tmp_path, sweep, ray_address="local", trial_fn="test_sweeps:fake_trial") == {"done": 1, "failed": 1}
    db = results.ResultsDB(str(tmp_path / "runs" / "results.db"))
    assert "loss is nan at step 3" in next(t for t in db.trials() if t["id"] == ids[1])["error"]
    assert db.curve(ids[0], "train/loss")
