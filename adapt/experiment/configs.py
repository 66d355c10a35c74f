"""Experiment configs: ``get_config(arg)`` files and dotted-key overrides, as ml_collections' config flags
spell them, with errors that name the key and the closest valid ones.

    config = load("configs/finetune.py:chemprot", ["optimizer.learning_rate=3e-5", "method.rank=8"])

A config file is a Python file with ``get_config(arg=None)`` returning a ``ConfigDict`` (the part after
``:`` is ``arg``); it may also define ``get_sweep(arg)`` (see :mod:`adapt.study.sweeps`). Override values are
Python literals (``3e-5``, ``(1, 8, 1)``, ``'lora'``, ``True``), anything else is taken as a string.
"""

from __future__ import annotations

import ast
import copy
import difflib
import importlib.util
import os
import traceback

import ml_collections

from adapt import methods
from adapt.core.errors import AdaptError, ConfigError
from adapt.experiment import base


def failure(path: str, e: Exception) -> ConfigError:
    """``e``, raised while the config file ``path`` was imported or called, as one line naming the file and the
    line of it where things went wrong (``path:line: <ExceptionType>: message``)."""
    line, message = None, str(e).strip()
    if isinstance(e, SyntaxError) and e.filename and os.path.abspath(e.filename) == os.path.abspath(path):
        line, message = e.lineno, e.msg
    else:
        for frame in traceback.extract_tb(e.__traceback__):  # the innermost frame inside the file
            if os.path.abspath(frame.filename) == os.path.abspath(path):
                line = frame.lineno
    first = message.splitlines()[0] if message else ""
    where = f"{path}:{line if line is not None else '?'}"
    return ConfigError(f"{where}: {type(e).__name__}" + (f": {first}" if first else ""))


def load_module(path: str):
    """The config file at ``path`` as a module; a file that does not parse or raises on import is a one-line
    ConfigError naming the file and the line (:func:`failure`)."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config={path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"adapt_config_{abs(hash(os.path.abspath(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except AdaptError:
        raise
    except Exception as e:  # noqa: BLE001  (any error of the file's own code: one line, not a traceback)
        raise failure(path, e) from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: a config file defines get_config(arg=None)")
    return module


def call(module, fn: str, arg: str | None):
    """``module.<fn>(arg)``, or ``<fn>()`` when no argument was given (``get_config``, ``get_sweep``, ...); an
    error it raises other than an :class:`~adapt.core.errors.AdaptError` is one line naming the file's line."""
    try:
        return getattr(module, fn)(arg) if arg is not None else getattr(module, fn)()
    except AdaptError:
        raise
    except Exception as e:  # noqa: BLE001  (as load_module)
        raise failure(module.__file__, e) from None


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


def from_module(module, arg: str | None, overrides: list[str] | dict = (),
                checked: bool = True) -> ml_collections.ConfigDict:
    """``module``'s config for ``arg`` with ``overrides``, held to the trial schema (every section, method knobs
    included: :func:`adapt.experiment.base.check`); ``checked=False`` for the config of another trial function than
    :func:`adapt.experiment.trial.run_trial` (``scripts/sweep.py --trial-fn``), whose method knobs alone are checked."""
    config = apply_overrides(call(module, "get_config", arg), as_dict(overrides))
    if checked:
        base.check(config)
    elif "method" in config:
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
