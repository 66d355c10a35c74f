"""Multi-host runs through JAX's own runtime.

Launch the same command on every host (one process per host, or per GPU): under SLURM (``srun``),
Open MPI (``mpirun``), on a Cloud TPU VM slice (GKE's ``TPU_WORKER_HOSTNAMES``, or the TPU chips themselves on a
TPU VM), or anywhere by setting ``JAX_COORDINATOR_ADDRESS``
(``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. :func:`initialize` (which every
script calls first, through :func:`adapt.core.cli.run`) then calls ``jax.distributed.initialize()``, which reads
those environments; every process builds the same global mesh over all devices and feeds only its own slice of
each global batch. A single-process run never imports JAX here, so a script that needs none starts at once.

:func:`process_index` and :func:`process_count` say where this process stands without importing JAX when no
runtime was started; :func:`share` hands a string from process 0 to every process (the distributed runtime's
key-value store: no device computation, no collective that times out while process 0 waits).
"""

from __future__ import annotations

import glob
import importlib.util
import itertools
import logging
import os
import sys

from adapt.core.errors import ConfigError

log = logging.getLogger(__name__)

_CLUSTER_SIZE_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES")
_EXPLICIT_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
_SHARE_TIMEOUT_MS = 2**31 - 1  # ~25 days: process 0 may wait for a trial another sweep runs; a dead one ends the job
_shares = itertools.count()  # every process calls share() in the same order, so the n-th calls meet


def cluster_size(environ=os.environ) -> int:
    """How many processes the cluster environment says this job has (1 when it says nothing)."""
    for var in _CLUSTER_SIZE_VARS:
        if environ.get(var, "").isdigit():
            return int(environ[var])
    hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
    return len(hosts.split(",")) if hosts else 1


def cloud_tpu_vm(environ=os.environ) -> bool:
    """Whether this is a Cloud TPU VM that JAX will use (JAX's TPU runtime installed, TPU chips attached:
    ``/dev/accel*`` for v2-v4, ``/dev/vfio/<n>`` from v5 on; ``JAX_PLATFORMS``, if set, naming tpu), where the
    slice's hosts are known only to its metadata server, which ``jax.distributed.initialize()`` asks (a
    one-host slice gets a one-process runtime)."""
    if "tpu" not in environ.get("JAX_PLATFORMS", "tpu") or importlib.util.find_spec("libtpu") is None:
        return False
    return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def _explicit(environ) -> dict:
    """``jax.distributed.initialize``'s arguments from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` ({} when none is set); a partial or malformed set is a one-line ConfigError."""
    given = {v: environ[v] for v in _EXPLICIT_VARS if v in environ}
    if not given:
        return {}
    missing = [v for v in _EXPLICIT_VARS if v not in given]
    if missing:
        named = ["JAX_COORDINATOR_ADDRESS"] if "JAX_COORDINATOR_ADDRESS" in given else list(given)
        raise ConfigError(f"{' and '.join(named)} {'is' if len(named) == 1 else 'are'} set but "
                          f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: a multi-process run "
                          f"needs all three (process 0's host:port, the number of processes, this one's index)")
    address, count, index = (given[v].strip() for v in _EXPLICIT_VARS)
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"JAX_COORDINATOR_ADDRESS={address!r}: expected host:port of process 0")
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"JAX_NUM_PROCESSES={count!r}: expected the number of processes (an integer >= 1)")
    if not index.isdigit() or int(index) >= int(count):
        raise ConfigError(f"JAX_PROCESS_ID={index!r}: expected this process's index, an integer from 0 to "
                          f"{int(count) - 1} (JAX_NUM_PROCESSES={count})")
    return dict(coordinator_address=address, num_processes=int(count), process_id=int(index))


def initialize(environ=os.environ) -> None:
    """``jax.distributed.initialize()`` when the environment describes more than one process, or on a Cloud TPU
    VM (:func:`cloud_tpu_vm`); nothing (not even importing JAX) for one process elsewhere. On the CPU, the
    processes exchange data through gloo (``jax_cpu_collectives_implementation``, unless
    ``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` names another): without cross-process collectives a multi-process CPU
    run fails at its first gather."""
    kwargs = _explicit(environ)
    if not kwargs and cluster_size(environ) <= 1 and not cloud_tpu_vm(environ):
        return
    import jax

    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in environ:  # only the CPU backend reads it
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d, %d local and %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


def _runtime():
    """JAX when its distributed runtime is up (started by :func:`initialize` or by the caller), else None."""
    jax = sys.modules.get("jax")
    return jax if jax is not None and jax.distributed.is_initialized() else None


def process_index() -> int:
    """This process's index in the job: 0 unless the distributed runtime was started."""
    jax = _runtime()
    return jax.process_index() if jax else 0


def process_count() -> int:
    """How many processes the job has: 1 unless the distributed runtime was started."""
    jax = _runtime()
    return jax.process_count() if jax else 1


def share(value: str | None = None) -> str:
    """Process 0's ``value`` on every process. Like a collective, every process calls it, in the same order:
    process 0 passes ``value`` (and gets it back), the others wait for it (through the distributed runtime's
    key-value store, which process 0 hosts: if it dies, JAX's runtime ends the others). With one process,
    ``value`` itself."""
    if process_count() == 1:
        return value
    from jax._src import (
        distributed as runtime,  # the key-value store (orbax's multi-host barriers use it too)
    )

    client, key = runtime.global_state.client, f"adapt/share/{next(_shares)}"
    if process_index() == 0:
        client.key_value_set(key, value)
        return value
    return client.blocking_key_value_get(key, _SHARE_TIMEOUT_MS)
