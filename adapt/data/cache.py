"""An on-disk cache of tokenised data, shared by every run of a sweep.

The key hashes what the result depends on: the content of the source files (SHA-256), the tokenizer's
fingerprint (its vocabulary, rules, special tokens and chat template), and the encoding's settings. A
changed file or tokenizer gives a new key, so stale entries are never read. Entries are ``.npz`` files
written atomically (``adapt.core.files.write_atomic``); ragged columns are stored flat with offsets. Its default
folder is ``adapt.core.files.user_cache("tokenized")`` (the ``data.cache_dir`` key).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable

import numpy as np

from adapt.core.files import write_atomic


def file_digest(path: str) -> str:
    """The SHA-256 of a file's bytes (a folder: of its files' relative paths and digests; a path that is not there,
    a Hub dataset's name: of the name). A file's digest is computed once per (size, modification time) in a process:
    the cache key and the record of the files a trial read (``results.json``) hash each file once."""
    if os.path.isdir(path):
        h = hashlib.sha256()
        for root, _, files in sorted(os.walk(path)):
            for name in sorted(files):
                h.update(os.path.relpath(os.path.join(root, name), path).encode())
                h.update(file_digest(os.path.join(root, name)).encode())
        return h.hexdigest()
    if not os.path.exists(path):  # a Hub dataset: its name (and revision) is the identity
        return hashlib.sha256(path.encode()).hexdigest()
    stat = os.stat(path)
    return _sha256(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and time: a changed file is hashed again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(files: list[str], tokenizer_fingerprint: str, settings: dict) -> str:
    parts = {"files": [file_digest(f) for f in files], "tokenizer": tokenizer_fingerprint, "settings": settings}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _save(path: str, data: dict) -> None:
    flat = {}
    for k, v in data.items():
        if isinstance(v, list):
            flat[f"{k}.flat"] = np.concatenate(v) if v else np.zeros(0, np.int32)
            flat[f"{k}.offsets"] = np.cumsum([0] + [len(x) for x in v])
        else:
            flat[k] = np.asarray(v)
    write_atomic(path, lambda f: np.savez(f, **flat))


def _load(path: str) -> dict:
    with np.load(path) as f:
        out = {}
        for k in f.files:
            if k.endswith(".flat"):
                name = k[:-5]
                flat, offsets = f[k], f[f"{name}.offsets"]
                out[name] = [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
            elif not k.endswith(".offsets"):
                out[k] = f[k]
    return out


def cached(key: str, build: Callable[[], dict], directory: str | None) -> tuple[dict, bool]:
    """``build()``'s result, from the cache when ``key`` is there; returns (data, was_cached).
    ``directory=None`` disables caching."""
    if directory is None:
        return build(), False
    path = os.path.join(directory, f"{key}.npz")
    if os.path.exists(path):
        return _load(path), True
    data = build()
    os.makedirs(directory, exist_ok=True)
    _save(path, data)
    return data, False
