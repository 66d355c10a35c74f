"""The host allocator setting made when ``adapt`` is imported: a repeated jitted computation reuses its
freed temporary buffers instead of page-faulting fresh ones in every call (glibc only)."""

import os
import platform
import subprocess
import sys

import pytest

from adapt.host_memory import keep_freed_memory

PROBE = """
import resource
import adapt, jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.tanh(x @ x) @ x))  # 64 MB temporaries, above glibc's largest mmap threshold
x = jnp.ones((4096, 4096), jnp.float32)
for _ in range(3):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    f(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's mallopt")


def _faults_per_call(**env) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


@glibc
def test_opt_out_and_setting():
    assert keep_freed_memory({"ADAPT_SYSTEM_MALLOC": "1"}) is False
    assert keep_freed_memory({}) is True


@glibc
@pytest.mark.slow
def test_freed_buffers_are_reused_without_page_faults():
    kept = _faults_per_call()
    system = _faults_per_call(ADAPT_SYSTEM_MALLOC="1")
    assert system > 10_000, system  # glibc maps 64 MB blocks afresh on every call (16 k pages each)
    assert kept < system / 20, (kept, system)
