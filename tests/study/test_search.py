"""Adaptive search (adapt/study/adaptive.py): TPE trials recorded in the results database, pruning and tables, resuming
after a kill, bad input. A fake trial function stands in for training (no JAX) except in the last test."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import runpy
import signal
import sqlite3
import subprocess
import sys
import time

import ml_collections
import optuna
import pytest

from adapt.analysis import results, tables
from adapt.core import cli
from adapt.core.errors import ConfigError
from adapt.study import adaptive, sweeps
from adapt.study.sweeps import choice, loguniform, search, uniform

HERE = os.path.dirname(os.path.abspath(__file__))  # a subprocess imports this file's trial function
ROOT = os.path.dirname(os.path.dirname(HERE))
STEPS = (10, 20, 30, 40)


def base_config(folder) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(
        optimizer=dict(learning_rate=1e-3, weight_decay=0.0), method=dict(name="lora", rank=8), init_from="",
        train=dict(seed=0, steps=40, eval_every=10, early_stopping=dict(metric="")),
        fake=dict(dir=str(folder), hang_at=0)))
    c.lock()
    return c


def accuracy(config, step: int) -> float:
    """Peaks at learning rate 10^-3.5; grows with the step."""
    return (1 - abs(math.log10(config.optimizer.learning_rate) + 3.5) / 3) * step / 40


def fake_trial(config, workdir, on_eval=None):
    """Evaluates at steps 0 and 10, 20, 30, 40 (metrics.jsonl and ``on_eval``, whose exception ends it). With a
    ``hang`` file in config.fake.dir, its call number ``config.fake.hang_at`` writes ``started`` and hangs."""
    d = config.fake.dir
    with open(os.path.join(d, "calls.log"), "a") as f:
        f.write(f"{os.path.basename(workdir)} {os.getpid()}\n")
    if os.path.exists(os.path.join(d, "hang")) and len(calls(d)) == config.fake.hang_at:
        open(os.path.join(d, "started"), "w").close()
        time.sleep(120)
    for step in (0,) + STEPS:
        metrics = {"dev/accuracy": accuracy(config, step), "dev/loss": 1 - accuracy(config, step)}
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if on_eval:
            on_eval(step, metrics)
    final = accuracy(config, STEPS[-1])
    return {"dev": {"accuracy": final, "loss": 1 - final}, "test": {"accuracy": final - 0.05}}


def calls(folder) -> list[str]:
    path = os.path.join(folder, "calls.log")
    return [line.split()[0] for line in open(path)] if os.path.exists(path) else []


SPACE = {"optimizer.learning_rate": loguniform(1e-5, 1e-2), "optimizer.weight_decay": uniform(0.0, 0.1),
         "method.rank": choice([4, 8])}


def run(folder, s, name="s", **kw):
    return adaptive.run_search(base_config(folder), s, os.path.join(folder, "runs"), trial_fn=fake_trial, name=name,
                               progress=False, **kw)


def study(folder, name="s"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{os.path.join(folder, 'runs', 'optuna.db')}")


def states(folder, name="s") -> list[str]:
    return sorted(t.state.name for t in study(folder, name).trials)


# ---- the description
def test_search_rejects_bad_input_in_one_line():
    for kw, message in ((dict(n=0), "n=0; expected the number of trials"),
                        (dict(pruner="hyperband"), "pruner='hyperband'; expected one of 'median', 'asha' or None"),
                        (dict(metric="accuracy"), "metric='accuracy'; expected a dev metric such as 'dev/accuracy'"),
                        (dict(mode="maximize"), "mode='maximize'; expected 'max' or 'min'"),
                        (dict(fixed={"method.rank": 4}), "method.rank both fixed and searched"),
                        (dict(space={}), "space must be a non-empty dict"),
                        (dict(space={"optimizer.learning_rate": [1e-3]}), "space must be a non-empty dict")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as e:
            search(**{"space": SPACE, "n": 4, "metric": "dev/accuracy", **kw})
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="uniform"):
        uniform(0.1, 0.0)
    with pytest.raises(ConfigError, match="no values"):
        choice([])
    with pytest.raises(ConfigError, match="an adaptive search is not a grid"):
        sweeps.expand(search(SPACE, n=2, metric="dev/accuracy"))


# ---- running
def test_tpe_search_records_its_trials_and_resumes_to_a_larger_budget(tmp_path):
    s = search(SPACE, n=6, metric="dev/accuracy", seed=3, fixed={"meta.condition": "tpe", "train.steps": 40})
    out = run(tmp_path, s)
    assert (out.finished, out.counts) == (6, {"done": 6})
    db = results.ResultsDB(str(tmp_path / "runs" / "results.db"))
    trials = db.trials(sweep="s")
    assert len(trials) == 6 and calls(tmp_path) == [t["id"] for t in trials]
    for t in trials:  # fixed + sampled overrides, the id hashed from them, the resolved config
        ov = t["overrides"]
        assert set(ov) == {"meta.condition", "train.steps", *SPACE} and t["condition"] == "tpe"
        assert t["id"] == sweeps.trial_id("search", ov) and t["stage"] == "search"
        assert t["workdir"] == str(tmp_path / "runs" / "search" / t["id"])
        assert 1e-5 <= ov["optimizer.learning_rate"] <= 1e-2 and ov["method.rank"] in (4, 8)
        assert t["config"]["optimizer"]["learning_rate"] == ov["optimizer.learning_rate"]
        assert t["config"]["method"]["rank"] == ov["method.rank"]
        assert [p[0] for p in db.curve(t["id"], "dev/accuracy")] == [0, *STEPS]
    frozen = study(tmp_path).trials
    assert [t.state.name for t in frozen] == ["COMPLETE"] * 6
    assert all(list(t.intermediate_values) == list(STEPS) for t in frozen)  # step 0 is not reported
    best = max(trials, key=lambda t: t["metrics"]["dev"]["accuracy"])
    assert out.best == {"id": best["id"], "value": best["metrics"]["dev"]["accuracy"], "overrides": best["overrides"]}
    # the same seed draws the same trials; the same command again runs nothing; a larger n runs the difference
    assert run(tmp_path / "again", s).finished == 6
    again = results.ResultsDB(str(tmp_path / "again" / "runs" / "results.db")).trials()
    assert [t["overrides"] for t in again] == [t["overrides"] for t in trials]
    assert run(tmp_path, s).finished == 6 and len(calls(tmp_path)) == 6
    bigger = search(SPACE, n=8, metric="dev/accuracy", seed=3, fixed={"meta.condition": "tpe", "train.steps": 40})
    out = run(tmp_path, bigger)
    assert (out.finished, out.counts) == (8, {"done": 8}) and len(calls(tmp_path)) == len(set(calls(tmp_path))) == 8


def test_values_drawn_again_reuse_the_trial_that_ran_them(tmp_path):
    out = run(tmp_path, search({"method.rank": choice([4, 8])}, n=5, metric="dev/accuracy"))
    assert out.finished == 5 and out.counts == {"done": 2}  # two values: two folders, each run once
    assert sorted(calls(tmp_path)) == sorted(t["id"] for t in results.ResultsDB(
        str(tmp_path / "runs" / "results.db")).trials()) and len(calls(tmp_path)) == 2
    assert [t.value for t in study(tmp_path).trials] == [accuracy(base_config(tmp_path), 40)] * 5


def test_pruned_trials_are_recorded_and_left_out_of_tables(tmp_path):
    s = search({"optimizer.learning_rate": loguniform(1e-5, 1e-2)}, n=14, metric="dev/accuracy", pruner="median",
               seed=0, fixed={"meta.condition": "tpe"})
    out = run(tmp_path, s)
    db = results.ResultsDB(str(tmp_path / "runs" / "results.db"))
    trials = db.trials(sweep="s")
    pruned = [t for t in trials if t["status"] == "pruned"]
    done = [t for t in trials if t["status"] == "done"]
    assert out.finished == 14 and out.counts == {"done": len(done), "pruned": len(pruned)}
    assert len(pruned) >= 2 and len(done) >= 5  # MedianPruner prunes nothing before 5 trials are complete
    assert sorted(states(tmp_path)) == sorted(["COMPLETE"] * len(done) + ["PRUNED"] * len(pruned))
    for t in pruned:
        step, value = t["error"].removeprefix("pruned at step ").split(": dev/accuracy=")
        curve = db.curve(t["id"], "dev/accuracy")
        assert curve[-1] == (int(step), pytest.approx(float(value), rel=1e-5)) and int(step) < STEPS[-1]
        assert t["metrics"] == {} and t["end_time"] >= t["start_time"]
    # the table reads done trials only: cells, and the values tried that edge-of-grid notices name
    table = tables.build(trials, metric="accuracy")
    cell = table.cells["tpe", "accuracy"]
    assert set(cell.trials) <= {t["id"] for t in done}
    assert cell.tried["optimizer.learning_rate"] == sorted(t["overrides"]["optimizer.learning_rate"] for t in done)
    assert not {t["overrides"]["optimizer.learning_rate"] for t in pruned} & set(cell.tried["optimizer.learning_rate"])
    assert run(tmp_path, s).finished == 14 and len(calls(tmp_path)) == 14  # pruned trials do not run again


def test_a_failed_trial_is_replaced_by_the_next_run_and_a_missing_metric_stops_the_search(tmp_path):
    flaky = base_config(tmp_path)

    def fail_once(config, workdir, on_eval=None):
        if not os.path.exists(tmp_path / "failed"):
            open(tmp_path / "failed", "w").close()
            raise RuntimeError("out of memory")
        return fake_trial(config, workdir, on_eval)

    s = search(SPACE, n=3, metric="dev/accuracy")
    out = adaptive.run_search(flaky, s, str(tmp_path / "runs"), trial_fn=fail_once, name="s", progress=False)
    assert (out.finished, out.counts) == (2, {"done": 2, "failed": 1})
    out = adaptive.run_search(flaky, s, str(tmp_path / "runs"), trial_fn=fail_once, name="s", progress=False)
    assert (out.finished, out.counts) == (3, {"done": 3, "failed": 1}) and len(set(calls(tmp_path))) == 3
    assert states(tmp_path) == ["COMPLETE"] * 3 + ["FAIL"]
    with pytest.raises(ConfigError, match=r"search metric 'dev/acc': trial \w+'s evaluation at step 10 has no such "
                                          r"metric; it has dev/accuracy, dev/loss"):
        run(tmp_path, search(SPACE, n=3, metric="dev/acc", pruner="asha"), name="typo")
    with pytest.raises(ConfigError, match=r"search metric 'dev/acc': trial \w+ finished without it; its dev metrics: "
                                          r"accuracy, loss"):
        adaptive.run_search(flaky, search(SPACE, n=3, metric="dev/acc"), str(tmp_path / "runs"), name="typo2",
                            trial_fn=lambda config, workdir, on_eval: fake_trial(config, workdir), progress=False)
    with pytest.raises(ConfigError, match="mode='min', but its study .* was started to maximize"):
        run(tmp_path, search(SPACE, n=3, metric="dev/accuracy", mode="min"))


def _finish_then_die(folder):
    """Runs a search whose process is SIGKILLed right after its second trial is recorded done, before Optuna
    hears of it."""
    finish = results.ResultsDB.finish

    def finish_and_die(self, trial, metrics, curves):
        finish(self, trial, metrics, curves)
        if len(calls(folder)) == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    results.ResultsDB.finish = finish_and_die
    run(folder, search(SPACE, n=4, metric="dev/accuracy"))


def test_a_trial_recorded_done_by_a_killed_run_is_told_not_rerun(tmp_path):
    proc = multiprocessing.get_context("spawn").Process(target=_finish_then_die, args=(str(tmp_path),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    assert states(tmp_path) == ["COMPLETE", "RUNNING"]
    assert run(tmp_path, search(SPACE, n=4, metric="dev/accuracy")).counts == {"done": 4}
    assert len(calls(tmp_path)) == len(set(calls(tmp_path))) == 4  # the second trial did not run again
    assert states(tmp_path) == ["COMPLETE"] * 4


# ---- the command line
CONFIG = """
import ml_collections
from adapt.study.sweeps import choice, loguniform, search, uniform

def get_config(arg):
    c = ml_collections.ConfigDict(dict(
        optimizer=dict(learning_rate=1e-3, weight_decay=0.0), method=dict(name="lora", rank=8), init_from="",
        train=dict(seed=0, steps=40, eval_every=10, early_stopping=dict(metric="")), fake=dict(dir=arg, hang_at=0)))
    c.lock()
    return c

def get_sweep(arg):
    space = {"optimizer.learning_rate": loguniform(1e-5, 1e-2), "optimizer.weight_decay": uniform(0.0, 0.1)}
    return {"tpe": search(space, n=5, metric="dev/accuracy", pruner="median"),
            "typo": search({"optimizer.learning_rat": loguniform(1e-5, 1e-2)}, n=2, metric="dev/accuracy"),
            "fixed_typo": search(space, n=2, metric="dev/accuracy", fixed={"train.stpes": 3})}
"""


def sweep_argv(tmp_path, *args, config="cfg.py") -> list[str]:
    return ["--no-progress", f"--config={tmp_path}/{config}:{tmp_path}", f"--workdir={tmp_path}/runs",
            "--trial-fn=test_search:fake_trial", *args]


def sweep_cli(tmp_path, *args, wait=True, config="cfg.py"):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, ROOT, os.environ["PYTHONPATH"]])}
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "sweep.py"), *sweep_argv(tmp_path, *args, config=config)]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)


def test_a_search_killed_mid_trial_resumes_to_exactly_n_trials(tmp_path):
    (tmp_path / "cfg.py").write_text(CONFIG)
    open(tmp_path / "hang", "w").close()
    proc = sweep_cli(tmp_path, "--sweep=tpe", "--config.fake.hang_at=3", wait=False)
    deadline = time.time() + 60
    while not os.path.exists(tmp_path / "started") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert os.path.exists(tmp_path / "started"), "the third trial never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    hung = calls(tmp_path)[2]
    with sqlite3.connect(tmp_path / "runs" / "results.db") as c:
        assert dict(c.execute("SELECT id, status FROM trials")) == {**{i: "done" for i in calls(tmp_path)[:2]},
                                                                     hung: "running"}
    assert states(tmp_path, "cfg.py:" + str(tmp_path) + "#tpe") == ["COMPLETE", "COMPLETE", "RUNNING"]
    os.remove(tmp_path / "hang")
    out = sweep_cli(tmp_path, "--sweep=tpe", "--config.fake.hang_at=3")
    assert out.returncode == 0, out.stderr
    assert f"#tpe: 5 of 5 search trials finished; 5 done ({tmp_path}/runs/results.db)" in out.stdout
    assert "best dev/accuracy=" in out.stdout
    ran = calls(tmp_path)
    assert len(ran) == 6 and ran[3] == hung and len(set(ran)) == 5  # the killed trial ran again first, alone
    db = results.ResultsDB(str(tmp_path / "runs" / "results.db"))
    assert sorted(t["status"] for t in db.trials()) == ["done"] * 5
    assert states(tmp_path, "cfg.py:" + str(tmp_path) + "#tpe") == ["COMPLETE"] * 5 + ["FAIL"]
    out = sweep_cli(tmp_path, "--sweep=tpe")
    assert out.returncode == 0 and "5 of 5 search trials finished" in out.stdout and len(calls(tmp_path)) == 6


def test_bad_search_input_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    (tmp_path / "cfg.py").write_text(CONFIG)
    (tmp_path / "bad.py").write_text(CONFIG.replace('n=5, metric="dev/accuracy", pruner="median"',
                                                    "n=0, metric='dev/accuracy'"))
    out = sweep_cli(tmp_path, "--sweep=tpe", config="bad.py")
    assert out.returncode == 2 and out.stderr == ("error: search: n=0; expected the number of trials, "
                                                  "an integer of at least 1\n")
    # the others run the script's main in this process (a subprocess above: each one costs an import of the package)
    monkeypatch.setenv("ADAPT_SYSTEM_MALLOC", "1")  # cli.run leaves this process's malloc as it is
    script = runpy.run_path(os.path.join(ROOT, "scripts", "sweep.py"))
    for args, message in (
            (["--sweep=typo"], "optimizer.learning_rat: no such config key; did you mean optimizer.learning_rate"),
            (["--sweep=fixed_typo"], "train.stpes: no such config key; did you mean train.steps"),
            (["--sweep=tpe", "--config.train.eval_every=0"], "search pruner='median': the trials never evaluate"),
            (["--sweep=tpe", "--workers=2"], "--workers: an adaptive search runs its trials one at a time")):
        monkeypatch.setattr(sys, "argv", ["sweep.py", *sweep_argv(tmp_path, *args)])
        with pytest.raises(SystemExit) as exit_:
            cli.run(script["main"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.strip().count("\n") == 0, (args, err)
        assert message in err, (args, err)
    assert not calls(tmp_path) and not os.path.exists(tmp_path / "runs" / "optuna.db")


# ---- a real trial
@pytest.mark.slow
def test_run_trial_reports_evaluations_and_stops_when_pruned(tmp_path, tiny_bert, monkeypatch):
    """Two trials of a tiny BERT through adapt.experiment.trial.run_trial; Optuna is made to prune the second at its
    first evaluation: it ends there, recorded pruned with its curve up to step 2."""
    from adapt.experiment import base_config as trial_config

    rows = [{"text": f"w{i % 7} w{(i * 3) % 5} w{i % 3}", "label": ["a", "b", "c"][i % 3]} for i in range(24)]
    files = {}
    for split in ("train", "dev", "test"):
        files[split] = str(tmp_path / f"{split}.jsonl")
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = trial_config()
    c.model.name = tiny_bert
    c.data.files = files
    c.data.update(max_length=16, cache_dir="")
    c.train.update(batch_size=8, steps=4, eval_every=2, log_every=2)
    c.eval.batch_size = 8
    c.mesh.shape = (-1, 1, 1)
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number == 1)
    s = search({"optimizer.learning_rate": loguniform(1e-4, 1e-2)}, n=2, metric="dev/accuracy", pruner="median")
    out = adaptive.run_search(c, s, str(tmp_path / "runs"), name="s", progress=False)
    assert (out.finished, out.counts) == (2, {"done": 1, "pruned": 1})
    first, second = study(tmp_path).trials
    assert list(first.intermediate_values) == [2, 4] and list(second.intermediate_values) == [2]
    db = results.ResultsDB(str(tmp_path / "runs" / "results.db"))
    done, pruned = sorted(db.trials(sweep="s"), key=lambda t: t["status"])
    assert done["metrics"]["dev"]["accuracy"] == first.value and done["metrics"]["test"]
    assert pruned["error"].startswith("pruned at step 2: dev/accuracy=")
    assert [p[0] for p in db.curve(pruned["id"], "dev/accuracy")] == [2]
