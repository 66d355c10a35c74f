"""Multi-host runs through JAX's own runtime.

Launch the same command on every host (one process per host, or per GPU): under SLURM (``srun``),
Open MPI (``mpirun``), on a Cloud TPU pod slice, or anywhere by setting ``JAX_COORDINATOR_ADDRESS``
(``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. :func:`initialize` then calls
``jax.distributed.initialize()``, which reads those environments; every process builds the same global
mesh over all devices and feeds only its own slice of each global batch.
"""

from __future__ import annotations

import logging
import os

import jax

from adapt.errors import ConfigError

log = logging.getLogger(__name__)

_CLUSTER_SIZE_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES")


def cluster_size(environ=os.environ) -> int:
    """How many processes the cluster environment says this job has (1 when it says nothing)."""
    for var in _CLUSTER_SIZE_VARS:
        if environ.get(var, "").isdigit():
            return int(environ[var])
    hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
    return len(hosts.split(",")) if hosts else 1


def initialize(environ=os.environ) -> None:
    """``jax.distributed.initialize()`` when the environment describes more than one process."""
    n = cluster_size(environ)
    if n <= 1 and "JAX_COORDINATOR_ADDRESS" not in environ:
        return
    kwargs = {}
    if "JAX_COORDINATOR_ADDRESS" in environ:
        missing = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not environ.get(v, "").isdigit()]
        if missing:
            raise ConfigError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} is not (expected integers: "
                              f"the number of processes and this one's index)")
        kwargs = dict(coordinator_address=environ["JAX_COORDINATOR_ADDRESS"], num_processes=n,
                      process_id=int(environ["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d, %d local and %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
