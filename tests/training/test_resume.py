"""Runs that die: a SIGKILLed run resumed from its checkpoint ends bitwise equal to an uninterrupted one (its
staged data mixture killed in its second stage: the same rows drawn, the same tokens counted per source);
a non-finite loss stops the run with the step named and the last good checkpoint restorable."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/


def _cmd(checkpoint, workdir, out, *extra):
    return [sys.executable, os.path.join(HERE, "train_tiny.py"), checkpoint, str(workdir), str(out), *extra]


def _run(*args):
    return subprocess.run(_cmd(*args), capture_output=True, text=True, timeout=600)


def _params(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.slow
@pytest.mark.ci
def test_killed_run_resumes_to_bitwise_equal_parameters(tiny_llama, tmp_path):
    done = _run(tiny_llama, tmp_path / "straight", tmp_path / "straight.npz")
    assert done.returncode == 0, done.stderr[-3000:]

    workdir = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(tiny_llama, workdir, tmp_path / "killed.npz", "--slow"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "6").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
    assert 6 in saved and max(saved) < 16, saved  # killed mid-run (the second stage, from step 4), after step 6

    resumed = _run(tiny_llama, workdir, tmp_path / "killed.npz")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = _params(tmp_path / "straight.npz"), _params(tmp_path / "killed.npz")
    assert want.keys() == got.keys() and {"tokens/a", "tokens/b"} <= set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in open(workdir / "metrics.jsonl")]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # the killed run's extra logs were dropped


@pytest.mark.slow
@pytest.mark.ci
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_llama, tmp_path):
    import jax
    import orbax.checkpoint as ocp

    from adapt.training.checkpoints import Checkpointer

    result = _run(tiny_llama, tmp_path / "run", tmp_path / "out.npz", "--poison-step", "7")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: non-finite loss (nan)") and "at step 7;" in last, last
    assert "the last good checkpoint is step 6" in last, last
    assert not (tmp_path / "out.npz").exists()
    ckpt = Checkpointer(str(tmp_path / "run"), keep=2)
    assert ckpt.latest_step() == 6
    ckpt.close()
    state = ocp.StandardCheckpointer().restore(tmp_path / "run" / "checkpoints" / "6" / "state")
    assert int(state["step"]) == 6
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((state["params"], state["opt_state"])))
