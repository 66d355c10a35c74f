"""The collectives of a compiled program, read from its HLO text, and how long the slice's ICI takes for them.

Each ``all-gather``, ``reduce-scatter``, ``all-reduce``, ``all-to-all`` and ``collective-permute`` instruction (or its
``-start`` half, when XLA made it asynchronous) is one collective: its bytes are those of its result (for
``reduce-scatter``, of its operand: the result times the group; libtpu writes most reduce-scatters as a fusion
``all-reduce-scatter`` of an all-reduce and each chip's slice of it, counted as the reduce-scatter it is), its group the
devices of its ``replica_groups`` (XLA writes them as explicit lists, as an iota ``[G,N]<=[...]``, or as the mesh axes
they run over). A collective in a loop's body is counted once, as XLA's own cost analysis counts it:
:func:`adapt.plan.planner.layer_costs` extrapolates the layers' share over depth.

The time of a collective of ``b`` bytes over a group of ``n`` chips is the ring algorithm's: an all-gather or a
reduce-scatter moves ``b (n-1)/n`` through each chip's links, an all-reduce twice that (a reduce-scatter, then an
all-gather), an all-to-all ``b (n-1)/n``, a collective-permute ``b``; over the ICI bandwidth the group has, the
one-way bandwidth of a link times the directions a ring uses (two on an axis that wraps around, one on a line) on
each physical axis the group spans ("How to Scale Your Model", part 3, "Sharded Matrices and How to Multiply Them":
https://jax-ml.github.io/scaling-book/sharding/). This is a model of the network, not a measurement.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

import numpy as np

from adapt.plan.chips import Topology

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
#: Bytes through each chip's links per byte of the collective, on a ring of n chips.
RING_FACTOR = {"all-gather": lambda n: (n - 1) / n, "reduce-scatter": lambda n: (n - 1) / n,
               "all-reduce": lambda n: 2 * (n - 1) / n, "all-to-all": lambda n: (n - 1) / n,
               "collective-permute": lambda n: 1.0}
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%\S+ = (.+?) (" + "|".join(KINDS) + r")(-start)?\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) \(")  # a computation's first line: its name and parameters
#: libtpu's reduce-scatter: a fusion computation of this name, an all-reduce whose result each chip slices its shard of
FUSED_REDUCE_SCATTER = "all-reduce-scatter"
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str  # one of KINDS
    bytes: float  # the collective's size (see the module doc)
    groups: tuple[tuple[int, ...], ...]  # device ids of each group; () when every device is one group


def _bytes(shapes: str) -> float:
    """The bytes of the arrays in an HLO result type (a tuple's members added up)."""
    return sum(_DTYPE_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d) for t, dims in _ARRAY.findall(shapes))


def _groups(attrs: str, devices: int) -> tuple[tuple[int, ...], ...]:
    """The device groups of an instruction's ``replica_groups`` (or ``source_target_pairs``)."""
    if m := re.search(r"replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}", attrs):
        return tuple(tuple(int(x) for x in g.split(",") if x) for g in re.findall(r"\{([\d,]*)\}", m.group(1)))
    if m := re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", attrs):
        g, n = int(m.group(1)), int(m.group(2))
        dims = [int(x) for x in m.group(3).split(",")]
        ids = np.arange(math.prod(dims)).reshape(dims)
        if m.group(4):
            ids = ids.transpose([int(x) for x in m.group(4).split(",")])
        return tuple(tuple(int(i) for i in row) for row in ids.reshape(g, n))
    if m := re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", attrs):
        axes = [(name, int(size)) for name, size in re.findall(r"'(\w+)'=(\d+)", m.group(1))]
        over = set(re.findall(r"'(\w+)'", m.group(2)))
        ids = np.arange(math.prod(s for _, s in axes)).reshape([s for _, s in axes])
        moved = [i for i, (name, _) in enumerate(axes) if name in over]
        kept = [i for i in range(len(axes)) if i not in moved]
        n = math.prod(axes[i][1] for i in moved)
        return tuple(tuple(int(i) for i in row) for row in ids.transpose(kept + moved).reshape(-1, n))
    if m := re.search(r"source_target_pairs=\{(.*?)\}\}", attrs):
        return tuple(tuple(int(x) for x in pair.split(",")) for pair in re.findall(r"\{(\d+,\d+)\}", m.group(1) + "}"))
    return ()


def collectives(hlo_text: str, devices: int) -> list[Collective]:
    """Every collective instruction of ``hlo_text`` (a compiled program's ``as_text()``) over ``devices`` devices."""
    out, computation = [], ""
    for line in hlo_text.splitlines():
        if head := _COMPUTATION.match(line):
            computation = head.group(1)
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        result, kind, start, attrs = m.groups()
        arrays = [f"{t}[{d}]" for t, d in _ARRAY.findall(result)]
        if start and kind == "all-gather":  # (operands..., results...): the results
            size = _bytes(" ".join(arrays[len(arrays) // 2:]))
        elif start and kind == "collective-permute":  # (operand, result, contexts...): one buffer
            size = _bytes(arrays[0])
        else:
            size = _bytes(result)
        groups = _groups(attrs, devices)
        if kind == "reduce-scatter":
            size *= len(groups[0]) if groups else devices
        elif kind == "all-reduce" and computation.startswith(FUSED_REDUCE_SCATTER):
            kind = "reduce-scatter"  # its all-reduce's result is the whole operand: the bytes a reduce-scatter counts
        out.append(Collective(kind, size, groups))
    return out


def summary(found: list[Collective]) -> dict:
    """kind -> {"count", "bytes"} of ``found``."""
    table = collections.defaultdict(lambda: {"count": 0, "bytes": 0.0})
    for c in found:
        table[c.kind]["count"] += 1
        table[c.kind]["bytes"] += c.bytes
    return {k: table[k] for k in KINDS if k in table}


def seconds(c: Collective, topology: Topology, coords: list[tuple[int, ...]]) -> float:
    """The ring time of ``c`` on ``topology`` (chip i at ``coords[i]``); 0 for a group of one chip or a CPU."""
    chip = topology.chip
    group = c.groups[0] if c.groups else tuple(range(len(coords)))
    n = 2 if c.kind == "collective-permute" else len(group)
    if chip is None or len(group) < 2:
        return 0.0
    if chip.platform == "gpu":  # NVSwitch: every GPU of the host reaches every other at its NVLink bandwidth
        return c.bytes * RING_FACTOR[c.kind](n) / chip.ici_link_bandwidth
    points = np.asarray([coords[i] for i in group])
    bandwidth = 0.0
    for axis in range(points.shape[1]):
        if len(set(points[:, axis])) > 1:  # the group spans this physical axis: its ring's links carry it
            bandwidth += chip.ici_link_bandwidth * (2 if topology.wraps(topology.shape[axis]) else 1)
    return c.bytes * RING_FACTOR[c.kind](n) / bandwidth
