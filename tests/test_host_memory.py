"""The kept heap of a CPU train loop (glibc only): a repeated jitted computation reuses its freed temporary
buffers instead of page-faulting fresh ones in every call, the heap is trimmed back when it outgrows the
slack, glibc's defaults come back on exit, and the trainer's loop runs inside it."""

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from adapt.data.batches import array_batches, eval_batches
from adapt.host_memory import KeptHeap, one_arena
from adapt.models import from_pretrained
from adapt.training import CausalLM, Trainer, defaults

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or os.environ.get("ADAPT_SYSTEM_MALLOC") == "1",
                           reason="the kept heap is glibc's mallopt and malloc_trim")

FAULTS = """
import resource, sys
import adapt, jax, jax.numpy as jnp
from adapt.host_memory import KeptHeap
f = jax.jit(lambda x: jnp.sum(jnp.tanh(x @ x) @ x))  # 64 MB temporaries, above glibc's largest mmap threshold
x = jnp.ones((4096, 4096), jnp.float32)
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
from adapt.host_memory import KeptHeap, resident_bytes
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


def _run(script: str, arg: str) -> list[float]:
    out = subprocess.run([sys.executable, "-c", script, arg], capture_output=True, text=True, check=True)
    return [float(v) for v in out.stdout.strip().splitlines()[-1].split()]


@glibc
def test_opt_outs():
    assert one_arena({"ADAPT_SYSTEM_MALLOC": "1"}) is False
    assert one_arena({}) is True
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
