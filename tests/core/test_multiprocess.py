"""Multi-process runs (adapt.core.distributed): two processes of scripts/train.py on localhost (4 CPU devices each,
one 8-device data-parallel mesh, gloo collectives) train, evaluate and keep the best checkpoint as one 1-process
8-device run of the same config does, each feeding only its own rows; both SIGKILLed mid-run and restarted, they
resume exactly; results.json is written by process 0 alone. Two processes of scripts/sweep.py run each trial
once, over both, the results database written by process 0 alone. A partial cluster environment is a one-line
error before anything runs, and a single-process run never imports JAX for it."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import XLA_TEST_FLAGS

from adapt.core import distributed
from adapt.core.errors import ConfigError
from adapt.data.batches import _local_rows, array_batches, eval_batches
from adapt.study import runner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LABELS = {"business": "market shares bank price trade money profit economy".split(),
          "sport": "football match goal team player season club game".split()}
NOISE = "river cloud window garden music paper table island".split()  # one WordPiece token each, like LABELS'
N_TRAIN, N_DEV, BATCH, EVAL_BATCH, STEPS, SEED = 64, 16, 8, 8, 8, 1
COMPILATION_CACHE = ""  # set by the job fixture
STARTED: list[subprocess.Popen] = []  # every process a test started (see _no_process_left)

CONFIG = f"""
from adapt.experiment import base_config
from adapt.study.sweeps import grid


def get_config(folder):
    c = base_config()
    c.model.update(name=f"{{folder}}/model", task="sequence_classification")
    c.data.files = {{"train": f"{{folder}}/train.jsonl", "dev": f"{{folder}}/dev.jsonl"}}
    c.data.update(format="classification", cache_dir="", max_length=16)
    c.eval.update(splits=("dev",), batch_size={EVAL_BATCH})
    c.optimizer.update(learning_rate=3e-2, warmup_steps=0)
    c.train.update(batch_size={BATCH}, steps={STEPS}, eval_every=4, log_every=1, checkpoint_every=2, seed={SEED})
    c.train.early_stopping.update(metric="dev/loss", mode="min")  # best/ kept by evaluation
    c.mesh.shape = (8, 1, 1)  # data parallel over every device of the job
    return c


def get_sweep(folder):
    return grid("optimizer.learning_rate", [3e-2, 1e-2])
"""


def _rows(rng, n: int) -> list[dict]:
    """``n`` examples, the labels alternating, each 4-11 words of its label's list."""
    out = []
    for i in range(n):
        label = sorted(LABELS)[i % 2]
        out.append({"text": " ".join(rng.choice(LABELS[label], rng.integers(4, 12))), "label": label})
    return out


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _scrambled(rows: list[dict], keep: set[int], rng) -> list[dict]:
    """``rows`` with the text of every row outside ``keep`` replaced by as many NOISE words (the same tokens
    per row, so the padded widths stay those of the real rows; labels kept, so the label set stays)."""
    return [r if i in keep else {**r, "text": " ".join(rng.choice(NOISE, len(r["text"].split())))}
            for i, r in enumerate(rows)]


def train_rows(process: int) -> set[int]:
    """The train rows ``process`` (of 2) feeds over the run, by the data stream every process runs."""
    stream = array_batches({"row": np.arange(N_TRAIN)[:, None]}, BATCH, seed=SEED, process_index=process,
                           process_count=2)
    return {int(r) for _ in range(STEPS) for r in stream.next_batch()["row"][:, 0]}


def dev_rows(process: int) -> set[int]:
    """The dev rows ``process`` (of 2) evaluates (N_DEV fills whole batches: no padding rows)."""
    batches = eval_batches({"row": np.arange(N_DEV)[:, None]}, EVAL_BATCH, process_index=process, process_count=2)
    return {int(r) for b in batches for r in b["row"][:, 0]}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A folder with a tiny random-init BERT classifier (and MiniLM's tokenizer), train/dev JSONL, config.py,
    and for each process p of 2 ``train.p<p>.jsonl``/``dev.p<p>.jsonl``: the real rows where p feeds them,
    NOISE text everywhere else."""
    import torch
    import transformers

    from adapt.models import load_tokenizer

    global COMPILATION_CACHE
    folder = tmp_path_factory.mktemp("multiprocess")
    COMPILATION_CACHE = str(folder / "jax_cache")
    tok = load_tokenizer("bundled:minilm-l6")
    assert all(len(tok.tokenize(w)) == 1 for w in NOISE + sum(LABELS.values(), []))
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=64, num_labels=2)).save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    rng = np.random.default_rng(0)
    train, dev = _rows(rng, N_TRAIN), _rows(rng, N_DEV)
    _write(folder / "train.jsonl", train)
    _write(folder / "dev.jsonl", dev)
    for p in range(2):
        _write(folder / f"train.p{p}.jsonl", _scrambled(train, train_rows(p), rng))
        _write(folder / f"dev.p{p}.jsonl", _scrambled(dev, dev_rows(p), rng))
    (folder / "config.py").write_text(CONFIG)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_process_left():
    """SIGKILLs whatever a failed test left running (a process of a multi-process job waits for the others)."""
    yield
    for p in STARTED:
        if p.poll() is None:
            p.kill()
            p.wait()
    STARTED.clear()


def _start(argv: list[str], log: str, devices: int, **env) -> subprocess.Popen:
    """``python argv`` in the repository with ``devices`` CPU devices, output to the file ``log``. Every run
    shares one compilation cache (JAX's persistent cache: each later run of the same program skips compiling;
    for CI time only)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env = {**base, "XLA_FLAGS": f"{XLA_TEST_FLAGS} --xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu",
           "JAX_COMPILATION_CACHE_DIR": COMPILATION_CACHE, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", **env}
    with open(log, "w") as out:
        STARTED.append(subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=out,
                                        stderr=subprocess.STDOUT))
    return STARTED[-1]


def _start_two(script: str, args: list[list[str]], logs: str) -> list[subprocess.Popen]:
    """Two processes of ``script`` on localhost, 4 CPU devices each (``JAX_COORDINATOR_ADDRESS`` etc.); process p
    gets ``args[p]`` and writes ``<logs>.<p>.log``."""
    port = _free_port()
    return [_start([os.path.join("scripts", script), *args[p]], f"{logs}.{p}.log", 4,
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(p))
            for p in range(2)]


def _wait(procs: list[subprocess.Popen], logs: str) -> None:
    for i, p in enumerate(procs):
        try:
            code = p.wait(timeout=300)
        except subprocess.TimeoutExpired:
            code = "nothing: it ran for 300 s"
        assert code == 0, f"process {i} exited {code}:\n{open(f'{logs}.{i}.log').read()[-3000:]}"


def _metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _params(workdir, step: int) -> dict:
    """The trainable parameters of ``workdir``'s checkpoint ``step`` as numpy arrays (whatever the job's layout)."""
    import jax
    import orbax.checkpoint as ocp

    path = os.path.join(workdir, "checkpoints", str(step), "state")
    reader = ocp.PyTreeCheckpointer()
    tree = reader.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(restore_type=np.ndarray), tree)
    restored = reader.restore(path, restore_args=as_numpy)
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(restored["params"])[0]}


def _close(got, want, what: str, atol: float = 1e-6) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol, err_msg=what)


@pytest.mark.slow
def test_two_processes_train_as_one_and_resume_exactly_after_both_are_killed(job, tmp_path):
    # Each process reads its own copy of the data (train.p<p>.jsonl, dev.p<p>.jsonl) whose rows are real only
    # where that process feeds them, NOISE elsewhere. The 2-process run can match the 1-process run on the real
    # data only if each process fed exactly its own rows of every global batch, at their places (dropout is on:
    # a row elsewhere in the batch draws another mask), and evaluated exactly its own dev rows: a process that
    # fed its whole batch or the other's half would train or evaluate on NOISE.
    assert _local_rows(BATCH, 0, 2) == slice(0, BATCH // 2) and _local_rows(BATCH, 1, 2) == slice(BATCH // 2, BATCH)
    assert train_rows(0).isdisjoint(train_rows(1)) and len(train_rows(0) | train_rows(1)) == STEPS * BATCH
    assert dev_rows(0).isdisjoint(dev_rows(1)) and dev_rows(0) | dev_rows(1) == set(range(N_DEV))
    ref = tmp_path / "reference"  # the 1-process, 8-device run on the real data, beside the 2-process ones
    config = f"--config={job}/config.py:{job}"
    reference = _start(["scripts/train.py", config, f"--workdir={ref}"], f"{ref}.0.log", 8)
    workdir = tmp_path / "run"
    args = [[config, f"--workdir={workdir}", f"--config.data.files.train={job}/train.p{p}.jsonl",
             f"--config.data.files.dev={job}/dev.p{p}.jsonl"] for p in range(2)]
    logs = str(tmp_path / "killed")
    procs = _start_two("train.py", args, logs)
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "2").exists() and time.time() < deadline and None in [p.poll() for p in procs]:
        time.sleep(0.05)
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait()
    saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert saved and max(saved) < STEPS and not (workdir / "results.json").exists(), \
        (saved, open(f"{logs}.0.log").read()[-3000:])  # killed mid-run, with a checkpoint to resume from
    logged = [line for line in open(workdir / "metrics.jsonl") if json.loads(line)["step"] <= max(saved)]

    # results.json goes through adapt.core.files.write_atomic: a temporary file named for the writer's pid, renamed
    # into place. A folder where process 1's temporary file would go makes any write of it by process 1 fail
    # that process (and the test); process 0's goes through.
    (tmp_path / f"probe.json.tmp-{os.getpid()}").mkdir()
    with pytest.raises(IsADirectoryError):  # the trap works
        from adapt.core.files import write_json
        write_json(str(tmp_path / "probe.json"), {})
    logs = str(tmp_path / "resumed")
    procs = _start_two("train.py", args, logs)
    (workdir / f"results.json.tmp-{procs[1].pid}").mkdir()
    _wait(procs, logs)
    _wait([reference], str(ref))

    # It resumed from the checkpoint: the lines the killed run logged up to it are kept as they were, throughput
    # included (a run started over would have logged other timings).
    assert open(workdir / "metrics.jsonl").readlines()[:len(logged)] == logged
    got, want = _metrics(workdir), _metrics(ref)
    # each step once (the killed run's lines after its checkpoint dropped, none from process 1), the same keys
    assert [(m["step"], sorted(m)) for m in got] == [(m["step"], sorted(m)) for m in want]
    for g, w in zip(got, want):
        for key in ("train/loss", "train/grad_norm", "dev/loss", "dev/accuracy"):
            if key in w:
                _close(g[key], w[key], f"step {w['step']} {key}")
    results, expected = (json.load(open(f / "results.json")) for f in (workdir, ref))
    assert results["dev"]["confusion"] == expected["dev"]["confusion"]
    _close(results["dev"]["loss"], expected["dev"]["loss"], "results.json dev/loss")
    # the dev predictions: each process's rows gathered to process 0, which alone writes them
    preds, expected = ([json.loads(line) for line in open(f / "predictions" / "dev.jsonl")] for f in (workdir, ref))
    assert [p["prediction"] for p in preds] == [p["prediction"] for p in expected] and len(preds) == N_DEV
    np.testing.assert_allclose([p["probabilities"] for p in preds], [p["probabilities"] for p in expected], atol=3e-6)
    assert os.listdir(workdir / "best") == os.listdir(ref / "best")  # the best evaluation's checkpoint, by both
    # The final parameters. The 1-process and 2-process runs sum gradients in other orders, and Adam turns those
    # rounding differences into ~1e-6 here (updates are ~1e-2 a step: a step off would show), and into whole
    # steps for the attention key biases, whose gradient is 0 but for rounding (the softmax over keys is blind
    # to them): those are left out.
    got, want = _params(workdir, STEPS), _params(ref, STEPS)
    assert got.keys() == want.keys()
    for k in want:
        if not k.endswith("['key']['bias']"):
            _close(got[k], want[k], k, atol=1e-5)


@pytest.mark.slow
def test_a_two_process_sweep_runs_each_trial_once_and_only_process_0_writes_the_database(job, tmp_path):
    workdir = tmp_path / "sweep"
    unused = tmp_path / "process1.db"  # process 1's own --db: had it opened a database, this file would exist
    # --pack=2: the two learning rates train as one population (adapt.study.populations) over both processes
    args = [f"--config={job}/config.py:{job}", f"--workdir={workdir}", "--no-progress", "--config.train.steps=2",
            "--pack=2"]
    logs = str(tmp_path / "sweep")
    procs = _start_two("sweep.py", [args, [*args, f"--db={unused}"]], logs)
    _wait(procs, logs)
    for i in range(2):
        assert f"config.py:{job}#default: 2 done" in open(f"{logs}.{i}.log").read()
    assert not list(tmp_path.glob("process1.db*"))
    with sqlite3.connect(workdir / "results.db") as c:
        rows = c.execute("SELECT status, attempts, pid, workdir FROM trials").fetchall()
        curves = c.execute("SELECT COUNT(*) FROM curves WHERE metric = 'train/loss'").fetchone()[0]
    assert sorted(r[:3] for r in rows) == [("done", 1, procs[0].pid)] * 2 and curves == 2 * 2, rows
    for *_, trial in rows:
        # each trial ran on both processes at once: each wrote its part of the trial's checkpoints (orbax), and
        # process 0 alone its results.json and metrics (one line per step)
        assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(f"{trial}/checkpoints/2/state"))
        assert os.path.isfile(f"{trial}/results.json") and [m["step"] for m in _metrics(trial)] == [1, 2, 2]


def test_a_multi_process_sweep_refuses_worker_processes_ray_and_adaptive_search(monkeypatch, tmp_path):
    import importlib.util

    import ml_collections

    from adapt.study.sweeps import grid

    monkeypatch.setattr(distributed, "process_count", lambda: 2)
    config = ml_collections.ConfigDict({"train": {"seed": 0}})
    for kw, flags in ((dict(workers=2), "--workers=2 with"), (dict(ray_address="local"), "--ray-address with")):
        with pytest.raises(ConfigError, match=f"^{flags} 2 JAX processes: a multi-process job runs each trial"):
            runner.run_sweep(config, grid("train.seed", [0, 1]), str(tmp_path / "runs"), **kw)
    (tmp_path / "search.py").write_text(CONFIG + """
from adapt.study.sweeps import loguniform, search


def get_sweep(folder):  # noqa: F811
    return search({"optimizer.learning_rate": loguniform(1e-4, 1e-2)}, n=2, metric="dev/accuracy")
""")
    spec = importlib.util.spec_from_file_location("sweep_script", os.path.join(ROOT, "scripts", "sweep.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "argv", ["sweep.py", f"--config={tmp_path}/search.py:{tmp_path}",
                                      f"--workdir={tmp_path}/runs"])
    with pytest.raises(ConfigError, match="^an adaptive search runs in one process, not over this job's 2 JAX"):
        script.main()
    # nothing written (Python's bytecode cache of the loaded config aside, which PYTHONDONTWRITEBYTECODE decides)
    assert sorted(set(os.listdir(tmp_path)) - {"__pycache__"}) == ["search.py"]


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"},
     "JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES and JAX_PROCESS_ID are not"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     "JAX_NUM_PROCESSES and JAX_PROCESS_ID are set but JAX_COORDINATOR_ADDRESS is not"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID='2': expected this process's index, an integer from 0 to 1 (JAX_NUM_PROCESSES=2)"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "-1"},
     "JAX_PROCESS_ID='-1': expected this process's index"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES='two': expected the number of processes (an integer >= 1)"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     "JAX_COORDINATOR_ADDRESS='10.0.0.1': expected host:port of process 0"),
])
def test_a_partial_cluster_environment_is_one_line(env, message):
    with pytest.raises(ConfigError) as e:
        distributed.initialize(env)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_scripts_start_the_runtime_first_and_import_jax_only_for_a_job(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    # a single process: table.py, which needs no JAX, never imports it (-X importtime lists every import)
    table = subprocess.run([sys.executable, "-X", "importtime", "scripts/table.py", f"--db={tmp_path}/none.db"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert table.returncode == 2 and "no results database" in table.stderr
    assert not [line for line in table.stderr.splitlines() if line.split("|")[-1].strip().startswith("jax")]
    # a partial cluster environment: one line, exit 2, before anything runs (the workdir is never made)
    train = subprocess.run([sys.executable, "scripts/train.py", "--config=configs/finetune.py:bbc",
                            f"--workdir={tmp_path}/run"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**env, "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"})
    assert train.returncode == 2 and not (tmp_path / "run").exists()
    assert train.stderr.strip().splitlines() == ["error: JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES and "
                                                 "JAX_PROCESS_ID are not: a multi-process run needs all three "
                                                 "(process 0's host:port, the number of processes, this one's index)"]


def test_a_cloud_tpu_vm_starts_the_runtime_for_jax_to_find_the_slice(monkeypatch):
    import jax

    assert not distributed.cloud_tpu_vm({"JAX_PLATFORMS": "cpu"}) and not distributed.cloud_tpu_vm({})  # no libtpu
    calls = []
    monkeypatch.setattr(distributed, "cloud_tpu_vm", lambda environ: True)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    distributed.initialize({"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"})
    assert calls == [{}]  # no arguments: JAX asks the TPU metadata for the hosts
