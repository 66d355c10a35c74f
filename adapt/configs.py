"""Experiment configs: ``get_config(arg)`` files and dotted-key overrides, as ml_collections' config flags
spell them, with errors that name the key and the closest valid ones.

    config = load("configs/finetune.py:chemprot", ["optimizer.learning_rate=3e-5", "method.rank=8"])

A config file is a Python file with ``get_config(arg=None)`` returning a ``ConfigDict`` (the part after
``:`` is ``arg``); it may also define ``get_sweep(arg)`` (see :mod:`adapt.sweeps`). Override values are
Python literals (``3e-5``, ``(1, 8, 1)``, ``'lora'``, ``True``), anything else is taken as a string.
"""

from __future__ import annotations

import ast
import copy
import difflib
import importlib.util
import os

import ml_collections

from adapt.errors import ConfigError


def load_module(path: str):
    """The config file at ``path`` as a module."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config={path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"adapt_config_{abs(hash(os.path.abspath(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: a config file defines get_config(arg=None)")
    return module


def call(module, fn: str, arg: str | None):
    """``module.<fn>(arg)``, or ``<fn>()`` when no argument was given (``get_config``, ``get_sweep``, ...)."""
    return getattr(module, fn)(arg) if arg is not None else getattr(module, fn)()


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"configs/x.py:arg"`` -> ``("configs/x.py", "arg")``."""
    path, sep, arg = spec.partition(".py:")
    return (path + ".py", arg) if sep else (spec, None)


def keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted key of ``config`` (sections and leaves)."""
    out = []
    for k, v in config.items():
        out.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            out += keys(v, f"{prefix}{k}.")
    return out


def parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_key(base: ml_collections.ConfigDict, key: str, overrides=(), where: str = "--config.") -> None:
    """``key`` must exist in ``base``, or lie below a section that takes new keys: an unlocked one (like
    ``method``), one that is empty in ``base`` (like ``data.mixture``), or one the same ``overrides`` set."""
    node, parts = base, key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, ml_collections.ConfigDict) and part in node:
            node = node[part]
            continue
        if i and isinstance(node, ml_collections.ConfigDict) and (not node.is_locked or not len(node)):
            return
        if any(key.startswith(k + ".") for k in overrides):
            return
        if i and not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(f"{where}{key}: {'.'.join(parts[:i])} is a value, not a section")
        close = difflib.get_close_matches(key, keys(base), n=3, cutoff=0.6)
        raise ConfigError(f"{where}{key}: no such config key" + (f"; did you mean {', '.join(close)}?" if close else "")
                          + (f" (keys of {'.'.join(parts[:i])}: {', '.join(sorted(node.keys()))})" if i else ""))


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict,
                    where: str = "--config.") -> ml_collections.ConfigDict:
    """A copy of ``config`` with each dotted ``key: value`` of ``overrides`` set (checked by
    :func:`check_key`; a section set whole first, then keys below it)."""
    out = copy.deepcopy(config)
    for key in sorted(overrides, key=lambda k: k.count(".")):
        check_key(config, key, overrides, where)
        value, (*path, last) = overrides[key], key.split(".")
        node = out
        for part in path:
            if part not in node:
                with node.unlocked():
                    node[part] = ml_collections.ConfigDict()
            node = node[part]
        current = node[last] if last in node else None
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        try:
            if last in node:
                node[last] = value  # type-checked against the default
            else:
                with node.unlocked():
                    node[last] = value
        except (TypeError, ValueError, KeyError) as e:
            raise ConfigError(f"{where}{key}={value!r}: {e}") from None
    return out


def load(spec: str, overrides: list[str] | dict = ()) -> ml_collections.ConfigDict:
    """The config of ``spec`` (``path.py[:arg]``) with ``overrides`` (``"key=value"`` strings or a dict)."""
    path, arg = split_spec(spec)
    return from_module(load_module(path), arg, overrides)


def from_module(module, arg: str | None, overrides: list[str] | dict = ()) -> ml_collections.ConfigDict:
    """``module``'s config for ``arg`` with ``overrides``, checked (method knobs included)."""
    config = apply_overrides(call(module, "get_config", arg), as_dict(overrides))
    if "method" in config:  # its knobs are checked by the method itself, before anything runs
        from adapt import methods
        methods.build(config.method)
    return config


def as_dict(overrides: list[str] | dict) -> dict:
    """``["key=value", ...]`` (or a dict) -> ``{key: parsed value}``."""
    return dict(overrides) if isinstance(overrides, dict) else dict(map(_split, overrides))


def _split(override: str) -> tuple[str, object]:
    key, sep, value = override.partition("=")
    if not sep:
        raise ConfigError(f"--config.{override}: expected --config.<key>=<value>")
    return key, parse_value(value)


def parse_argv(argv: list[str], spec_required: bool = True) -> tuple[str | None, list[str], list[str]]:
    """Split ``--config=spec`` and ``--config.key=value`` out of ``argv``; returns (spec, overrides, rest)."""
    spec, overrides, rest = None, [], []
    for a in argv:
        if a.startswith("--config="):
            spec = a[len("--config="):]
        elif a.startswith("--config."):
            overrides.append(a[len("--config."):])
        else:
            rest.append(a)
    if spec is None and spec_required:
        raise ConfigError("no --config=<file.py[:arg]> given")
    return spec, overrides, rest
