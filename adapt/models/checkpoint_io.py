"""Reading and writing HF weight files as numpy, lazily: safetensors (single or sharded), GGUF
(dequantised to float32), and PyTorch pickles only when the caller opts in.

Every reader returns ``{hf_name: TensorRef}``; a ref knows its file, shape and dtype, and reads its
bytes only when asked (safetensors are memory-mapped, so a sharded load reads just the slices each
device needs). Damage is reported with the file name: a truncated file, a corrupt header, a missing
shard.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Callable

import ml_dtypes
import numpy as np

from adapt.core.errors import CheckpointError
from adapt.core.files import write_atomic, write_json

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


@dataclasses.dataclass(frozen=True)
class TensorRef:
    file: str
    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[], np.ndarray]


def safetensors_refs(path: str) -> dict[str, TensorRef]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise CheckpointError(f"{path}: corrupt safetensors header (says {n} header bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    header.pop("__metadata__", None)
    base, refs = 8 + n, {}
    for name, info in header.items():
        if info.get("dtype") not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        start, end = info["data_offsets"]
        shape, dtype = tuple(info["shape"]), np.dtype(_ST_DTYPES[info["dtype"]])
        if end - start != int(np.prod(shape)) * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name!r} has {end - start} bytes, shape {shape} needs "
                                  f"{int(np.prod(shape)) * dtype.itemsize}")
        if base + end > size:
            raise CheckpointError(f"{path}: truncated: tensor {name!r} ends at byte {base + end}, "
                                  f"the file has {size} bytes")

        def read(path=path, offset=base + start, shape=shape, dtype=dtype):
            if not shape or 0 in shape:
                return np.zeros(shape, dtype)
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)

        refs[name] = TensorRef(path, shape, dtype, read)
    return refs


def _pickle_refs(path: str) -> dict[str, TensorRef]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path}: reading PyTorch pickles needs torch installed") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds on a damaged file
        raise CheckpointError(f"{path}: cannot read PyTorch checkpoint ({type(e).__name__}: {e})") from None
    refs = {}
    for name, t in state.items():
        t = t.float() if t.dtype.is_floating_point else t
        refs[name] = TensorRef(path, tuple(t.shape), np.dtype(str(t.numpy().dtype)),
                               lambda t=t: t.numpy())
    return refs


def weight_refs(folder: str, allow_pickle: bool = False) -> dict[str, TensorRef]:
    """All tensors of the HF checkpoint in ``folder`` (sharded or not), by HF name."""
    index = os.path.join(folder, "model.safetensors.index.json")
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: corrupt index ({e})") from None
        refs = {}
        for shard in sorted(set(weight_map.values())):
            path = os.path.join(folder, shard)
            if not os.path.exists(path):
                raise CheckpointError(f"{index}: lists shard {shard!r}, which is missing from {folder}")
            refs.update(safetensors_refs(path))
        return refs
    if os.path.exists(single):
        return safetensors_refs(single)
    for name in ("pytorch_model.bin.index.json", "pytorch_model.bin"):
        if os.path.exists(os.path.join(folder, name)):
            if not allow_pickle:
                raise CheckpointError(
                    f"{os.path.join(folder, name)}: PyTorch pickle weights can execute code when read; pass "
                    f"allow_pickle=True if you trust them (or convert them to safetensors)")
            if name.endswith(".json"):
                with open(os.path.join(folder, name)) as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            else:
                shards = [name]
            refs = {}
            for shard in shards:
                refs.update(_pickle_refs(os.path.join(folder, shard)))
            return refs
    raise CheckpointError(f"{folder}: no weights found (expected model.safetensors, "
                          f"model.safetensors.index.json or, with allow_pickle, pytorch_model.bin)")


def save_safetensors(tensors: dict[str, np.ndarray], folder: str, max_shard_bytes: int = 5 * 2**30,
                     name: str = "model"):
    """Write ``tensors`` as HF safetensors (``{name}.safetensors``), sharded with an index past
    ``max_shard_bytes``.

    Each file is written atomically (:func:`adapt.core.files.write_atomic`), so an interrupted export never
    leaves a file that looks complete.
    """
    shards, current, size = [], {}, 0
    for key in sorted(tensors):
        nbytes = tensors[key].nbytes
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = tensors[key]
        size += nbytes
    shards.append(current)
    names = ([f"{name}.safetensors"] if len(shards) == 1 else
             [f"{name}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for shard, fname in zip(shards, names):
        write_atomic(os.path.join(folder, fname), lambda f, shard=shard: _write_safetensors(f, shard))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                 "weight_map": {k: fname for shard, fname in zip(shards, names) for k in shard}}
        write_json(os.path.join(folder, f"{name}.safetensors.index.json"), index)


def _write_safetensors(f, tensors: dict[str, np.ndarray]):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, t in tensors.items():
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data to 8 bytes, as the reference writer does
    f.write(struct.pack("<Q", len(blob)) + blob)
    for t in tensors.values():
        f.write(np.ascontiguousarray(t).tobytes())
