"""The accelerators a plan targets: each TPU generation's and GPU's specifications, and topology names parsed.

A topology is ``<generation>:<shape>`` as libtpu names it (``v5e:2x4``, ``v5p:2x2x1``, ``v4:2x2x2``, ``v6e:4x4``),
``h100:<n>`` for n H100 GPUs of one host (one NVSwitch domain), or ``cpu:<n>`` for n fake CPU devices (the suite's
mesh: nothing is predicted for it). Chips are counted as chips: for v4
and v5p Google's marketing count is TensorCores, so ``v5p-8`` is 4 chips (``v5p:2x2x1``);
:meth:`Topology.marketing_name` gives that name beside the chip count.

Sources, read 2026-12 (each value of ``CHIPS`` is one of these):

- Google Cloud TPU documentation, "System architecture" page per generation (https://cloud.google.com/tpu/docs/v4,
  .../v5e, .../v5p, .../v6e): peak bf16 FLOP/s per chip, HBM capacity and bandwidth per chip, bidirectional ICI
  bandwidth per chip and ICI ports per chip, interconnect topology.
- "How to Scale Your Model", Austin et al., Google DeepMind, 2025, part 2 "All about TPUs"
  (https://jax-ml.github.io/scaling-book/tpus/): one-way ICI bandwidth per link, that a ring on an axis with
  wraparound uses both directions of its links, and that v5e/v6e slices have wraparound only on an axis of the full
  pod's 16 (v4 and v5p: on every axis that is a multiple of 4, a cube's side).

The HBM a program may use is less than the HBM fitted: the runtime keeps some for itself. :data:`USABLE_HBM` is the
fraction a plan counts as usable; XLA's own limit on a TPU is close to it (95%, libtpu's
``--xla_tpu_memory_limit_fraction`` default is not documented, so this stays a stated assumption).
"""

from __future__ import annotations

import dataclasses
import math
import re

from adapt.core.errors import ConfigError

GiB = 2**30
#: The share of a chip's HBM a plan lets the program fill (the runtime and XLA's reserved buffers take the rest).
USABLE_HBM = 0.95


@dataclasses.dataclass(frozen=True)
class Chip:
    """One chip of a TPU generation (the values its sources give, :mod:`adapt.plan.chips`)."""
    name: str  # "v5p"
    peak_bf16_flops: float  # FLOP/s of one chip, dense bf16
    hbm_bytes: float  # HBM fitted per chip
    hbm_bandwidth: float  # bytes/s
    ici_link_bandwidth: float  # bytes/s, one direction of one ICI link
    ici_ports: int  # ICI links per chip
    cores_per_chip: int  # TensorCores: Google's marketing count of v4 and v5p slices is cores
    torus_every: int  # an axis of a slice this many chips long (or a multiple) wraps around; 0: only a full pod's
    pod_side: int  # the side of a full pod's 2D torus (v5e, v6e), where their axes wrap around
    platform: str = "tpu"  # "tpu" (libtpu compiles) or "gpu" (the CUDA plugin compiles, its GPUS target config)

    @property
    def usable_hbm(self) -> float:
        return self.hbm_bytes * USABLE_HBM


CHIPS = {
    # v4: 275 TFLOP/s, 32 GiB, 1200 GB/s (cloud.google.com/tpu/docs/v4); 6 ports, 4.5e10 B/s one way (scaling book).
    "v4": Chip("v4", 275e12, 32 * GiB, 1200e9, 4.5e10, 6, 2, 4, 0),
    # v5e: 197 TFLOP/s, 16 GiB, 819 GB/s, 400 GB/s bidirectional over 4 ports (cloud.google.com/tpu/docs/v5e).
    "v5e": Chip("v5e", 197e12, 16 * GiB, 819e9, 4.5e10, 4, 1, 0, 16),
    # v5p: 459 TFLOP/s, 95 GiB, 2765 GB/s, 1200 GB/s bidirectional (cloud.google.com/tpu/docs/v5p); 6 ports.
    "v5p": Chip("v5p", 459e12, 95 * GiB, 2765e9, 9e10, 6, 2, 4, 0),
    # v6e: 918 TFLOP/s, 32 GB, 1638 GB/s, 800 GB/s bidirectional over 4 ports (cloud.google.com/tpu/docs/v6e).
    "v6e": Chip("v6e", 918e12, 32 * GiB, 1638e9, 9e10, 4, 1, 0, 16),
    # H100 SXM: 989 TFLOP/s dense bf16, 3.35 TB/s HBM3 (nvidia.com/en-us/data-center/h100, datasheet), 79.1 GiB as
    # CUDA reports its 80 GB (GPUS["h100"]); NVLink 4: 900 GB/s bidirectional per GPU through NVSwitch, 450 one way.
    "h100": Chip("h100", 989e12, 84929347584, 3.35e12, 4.5e11, 1, 1, 0, 0, "gpu"),
}

#: What XLA's GPU compiler needs to compile for a GPU it does not see (its GpuTargetConfigProto, text format): the
#: values CUDA reports for an H100 SXM 80GB (compute capability 9.0), as jax-ml/jax issue #28376 lists them.
GPUS = {"h100": """gpu_device_info { threads_per_block_limit: 1024 threads_per_warp: 32
 shared_memory_per_block: 49152 shared_memory_per_core: 233472 threads_per_core_limit: 2048
 core_count: 132 fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
 block_dim_limit_z: 65535 memory_bandwidth: 3352320000000 l2_cache_size: 52428800
 clock_rate_ghz: 1.98 device_memory_size: 84929347584 shared_memory_per_block_optin: 232448
 cuda_compute_capability { major: 9 } registers_per_core_limit: 65536 registers_per_block_limit: 65536 }
platform_name: "CUDA" dnn_version_info { major: 9 minor: 7 } runtime_version { major: 12 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""}
GPUS_PER_HOST = 8  # one NVSwitch domain: a plan for GPUs stays inside one host


@dataclasses.dataclass(frozen=True)
class Topology:
    """A slice: its generation's chip (None for ``cpu:<n>``), its shape in chips, and its name."""
    name: str  # as given: "v5p:2x2x1"
    chip: Chip | None
    shape: tuple[int, ...]

    @property
    def chips(self) -> int:
        return math.prod(self.shape)

    @property
    def platform(self) -> str:
        """"tpu", "gpu" or "cpu"."""
        return self.chip.platform if self.chip else "cpu"

    def wraps(self, side: int) -> bool:
        """Whether an axis of the slice ``side`` chips long is a ring (wraparound links), not a line."""
        c = self.chip
        if c is None or side < 2 or c.platform != "tpu":
            return False
        return (c.torus_every and side % c.torus_every == 0) or (c.pod_side and side == c.pod_side)

    def marketing_name(self) -> str:
        """Google's name of the slice (``v5p-8`` for 4 chips: v4 and v5p count TensorCores)."""
        if self.chip is None:
            return f"{self.chips} CPU devices"
        if self.chip.platform == "gpu":
            return f"{self.chips}x {self.chip.name.upper()}"
        return f"{self.chip.name}-{self.chips * self.chip.cores_per_chip}"


SYNTAX = ("<generation>:<AxB[xC]> (generations: " + ", ".join(c for c in CHIPS if CHIPS[c].platform == "tpu")
          + "; e.g. v5e:2x4, v5p:2x2x1), <gpu>:<n> GPUs of one host (" + ", ".join(GPUS) + "; e.g. h100:8) "
          "or cpu:<n>")


def parse(name: str) -> Topology:
    """``name`` -> its :class:`Topology`; an unknown generation or a malformed shape is a one-line error naming the
    syntax and the known generations."""
    m = re.fullmatch(r"(\w+):(\d+(?:x\d+)*)", str(name).strip())
    if not m:
        raise ConfigError(f"--topology={name!r} is not a topology; expected {SYNTAX}")
    kind, dims = m.group(1), tuple(int(d) for d in m.group(2).split("x"))
    if kind == "cpu":
        if len(dims) != 1 or dims[0] < 1:
            raise ConfigError(f"--topology={name!r}: cpu takes a device count, cpu:<n>")
        return Topology(name, None, dims)
    if kind not in CHIPS:
        raise ConfigError(f"--topology={name!r}: unknown generation {kind!r}; expected {SYNTAX}")
    if CHIPS[kind].platform == "gpu":
        if len(dims) != 1 or not 1 <= dims[0] <= GPUS_PER_HOST:
            raise ConfigError(f"--topology={name!r}: {kind} takes the GPUs of one host, {kind}:<1-{GPUS_PER_HOST}>")
        return Topology(name, CHIPS[kind], dims)
    want = 3 if CHIPS[kind].torus_every else 2  # v4/v5p slices are 3D, v5e/v6e 2D
    if len(dims) != want or min(dims) < 1:
        raise ConfigError(f"--topology={name!r}: a {kind} slice has {want} dimensions (e.g. "
                          f"{kind}:{'x'.join(['2'] * want)})")
    return Topology(name, CHIPS[kind], dims)
