"""The kept heap of a CPU train loop (glibc only): a repeated jitted computation reuses its freed temporary
buffers instead of page-faulting fresh ones in every call, the heap is trimmed back when it outgrows the
slack, glibc's defaults come back on exit, and the trainer's loop runs inside it. Importing adapt leaves
glibc alone; ``adapt.use_kept_heap()`` (which the scripts call) puts every thread on one arena."""

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from adapt.core import cli
from adapt.core.host_memory import KeptHeap, use_kept_heap
from adapt.data.batches import array_batches, eval_batches
from adapt.models import from_pretrained
from adapt.training import CausalLM, Trainer, defaults

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or os.environ.get("ADAPT_SYSTEM_MALLOC") == "1",
                           reason="the kept heap is glibc's mallopt and malloc_trim")

FAULTS = """
import resource, sys
import adapt, jax, jax.numpy as jnp
from adapt.core.host_memory import KeptHeap
adapt.use_kept_heap()
f = jax.jit(lambda x: jnp.sum(jnp.tanh(x @ x.T) @ x))  # [4096, 4096]: 64 MB temporaries, above glibc's largest
x = jnp.ones((4096, 64), jnp.float32)                   # mmap threshold, for 4 GFLOP a call
with KeptHeap(enabled=sys.argv[1] == "kept") as heap:
    for _ in range(3):
        f(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        f(x).block_until_ready()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""

# Freed blocks stay resident in a kept heap: one block's worth (within the slack) is kept for reuse,
# ten blocks' worth is trimmed back by check().
HELD = """
import ctypes
import adapt
from adapt.core.host_memory import KeptHeap, resident_bytes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
BLOCK = 64 << 20


def churn(n):
    blocks = [libc.malloc(BLOCK) for _ in range(n)]
    for b in blocks:
        ctypes.memset(b, 1, BLOCK)
        libc.free(b)
    heap.check()
    return resident_bytes() - start


with KeptHeap() as heap:
    heap.allow(BLOCK)
    start = resident_bytes()
    print(churn(1), heap.trims, churn(10), heap.trims)
"""


# Eight threads hold a block each at once (so none takes over another's arena); malloc_stats() then lists
# glibc's arenas on stderr, one "Arena N:" line each.
ARENAS = """
import ctypes, sys, threading
{setup}
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
barrier = threading.Barrier(9)


def work():
    block = libc.malloc(1024)  # the thread's first block: glibc gives the thread its arena
    barrier.wait()
    barrier.wait()
    libc.free(block)


def main():
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    barrier.wait()
    libc.malloc_stats()
    barrier.wait()
    for t in threads:
        t.join()
{run}
"""


def _run(script: str, arg: str) -> list[float]:
    out = subprocess.run([sys.executable, "-c", script, arg], capture_output=True, text=True, check=True)
    return [float(v) for v in out.stdout.strip().splitlines()[-1].split()]


def _arenas(setup: str, run: str = "main()", **environ) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")} | environ
    out = subprocess.run([sys.executable, "-c", ARENAS.format(setup=setup, run=run)], capture_output=True,
                         text=True, check=True, env=env)
    return sum(line.startswith("Arena ") for line in out.stderr.splitlines())


@glibc
def test_importing_adapt_leaves_the_arenas_alone_and_use_kept_heap_makes_one():
    assert _arenas("import adapt") > 1  # glibc's default: a thread that finds every arena busy gets its own
    assert _arenas("import adapt; adapt.use_kept_heap()") == 1
    assert _arenas("import adapt; adapt.use_kept_heap()", ADAPT_SYSTEM_MALLOC="1") > 1


@glibc
def test_the_scripts_run_main_with_one_arena(monkeypatch):
    assert _arenas("from adapt import cli", run="cli.run(main)") == 1  # threads started in main share one
    calls = []
    monkeypatch.setattr(cli, "use_kept_heap", lambda: calls.append("use_kept_heap"))
    cli.run(lambda: calls.append("main"))
    assert calls == ["use_kept_heap", "main"]


@glibc
def test_opt_outs():
    assert use_kept_heap({"ADAPT_SYSTEM_MALLOC": "1"}) is False
    assert use_kept_heap({}) is True
    for heap in (KeptHeap(enabled=False), KeptHeap(environ={"ADAPT_SYSTEM_MALLOC": "1"})):
        with heap:
            heap.check()
        assert not heap.active and heap.trims == 0


@glibc
@pytest.mark.slow
def test_freed_buffers_are_reused_without_page_faults():
    [kept], [system] = _run(FAULTS, "kept"), _run(FAULTS, "system")
    assert system > 10_000, system  # glibc maps 64 MB blocks afresh on every call (16 k pages each)
    assert kept < system / 20, (kept, system)


@glibc
def test_the_heap_keeps_one_steps_worth_and_trims_the_rest():
    block = 64 << 20
    one, trims, ten, more_trims = _run(HELD, "")
    assert one > 0.9 * block and trims == 2, (one, trims)  # entry and allow(): the freed block stayed
    assert ten < 0.5 * block and more_trims == 3, (ten, more_trims)  # ten blocks' worth went back


@glibc
@pytest.mark.slow
def test_the_train_loop_runs_in_the_kept_heap(tiny_llama, tmp_path, monkeypatch):
    cfg = defaults()
    cfg.train.update(batch_size=8, steps=3, eval_every=2)
    rng = np.random.RandomState(0)
    data = {"input_ids": rng.randint(0, 128, (32, 16)).astype(np.int32)}
    dev = {"input_ids": rng.randint(0, 128, (24, 16)).astype(np.int32)}
    trainer = Trainer(from_pretrained(tiny_llama, task="causal_lm"), CausalLM(), cfg, str(tmp_path))
    checks = []
    monkeypatch.setattr(KeptHeap, "check", lambda heap: checks.append(heap.active))
    trainer.fit(array_batches(data, 8, seed=0), {"dev": lambda: eval_batches(dev, 8)})
    heap = trainer.steps.heap
    # Trimmed on entry and after compiling the train and the eval step, whose temporaries set the slack;
    # glibc's defaults after.
    assert heap.trims >= 3 and heap.slack > 0 and not heap.active
    # Checked before each of the 3 train steps and each of the 2 evaluations' 3 batches.
    assert checks == [True] * (3 + 2 * 3)


TRAIN = """
import atexit, ctypes, runpy, sys
atexit.register(ctypes.CDLL("libc.so.6").malloc_stats)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

CONFIG = """
from adapt.experiment import base_config


def get_config(arg=None):
    c = base_config()
    c.model.name = {model!r}
    c.data.files = {{"train": {data!r}, "dev": {data!r}}}
    c.data.update(format="classification", cache_dir="", max_length=16)
    c.train.update(batch_size=8, steps=2)
    c.eval.update(splits=("dev",))
    return c
"""


@glibc
@pytest.mark.slow
def test_the_scripts_train_loop_runs_on_one_arena(small_bert, tmp_path):
    data, config = tmp_path / "train.jsonl", tmp_path / "config.py"
    data.write_text("".join(json.dumps({"text": f"document {i} on {'AB'[i % 2]}", "label": "AB"[i % 2]}) + "\n"
                            for i in range(16)))
    config.write_text(CONFIG.format(model=small_bert, data=str(data)))
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", TRAIN, os.path.join(ROOT, "scripts", "train.py"), f"--config={config}",
                          f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "dev" in json.loads(out.stdout)  # trained and evaluated
    assert sum(line.startswith("Arena ") for line in out.stderr.splitlines()) == 1
