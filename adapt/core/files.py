"""Writing files that something reads later, so that no reader ever sees half of one.

:func:`write_atomic` writes a file under a temporary name beside it and renames it into place when complete
(and flushed to disk); :func:`write_folder` does the same for a whole folder. An interrupted write (an
exception, Ctrl-C, a killed process) leaves the earlier file or folder as it was. :func:`output_folder`
and :func:`output_files` check a path the user named for output before anything is written there.
:func:`user_cache` is where the package keeps what it can make again (tokenised data, downloads, paraphrases).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable

from adapt.core.errors import ConfigError


def user_cache(*parts: str) -> str:
    """``$XDG_CACHE_HOME/adapt/<parts>`` (``~/.cache/adapt/<parts>`` when it is unset), read when called, so the
    environment a process sets before using it counts."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "adapt", *parts)


def write_atomic(path: str, write: Callable) -> None:
    """``write(f)`` into a temporary binary file beside ``path``, renamed to ``path`` when complete: readers
    see the earlier file or the whole new one, never part of it. A failed ``write`` leaves no temporary file."""
    tmp = f"{path}.tmp-{os.getpid()}"  # open(), unlike mkstemp, gives the file the umask's permissions
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str, value, indent: int = 2) -> None:
    """``value`` as JSON in ``path``, atomically (:func:`write_atomic`)."""
    write_atomic(path, lambda f: f.write(json.dumps(value, indent=indent).encode()))


def write_folder(folder: str, write: Callable[[str], None]) -> str:
    """Call ``write(tmp)`` on a temporary folder beside ``folder``, then put it in ``folder``'s place, so an
    interrupted write leaves any earlier ``folder`` intact. Returns the absolute folder."""
    folder = os.path.abspath(output_folder(folder, "folder"))
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(folder) + ".tmp-", dir=os.path.dirname(folder))
    try:
        write(tmp)
        old = None
        if os.path.exists(folder):
            old = tempfile.mkdtemp(prefix=os.path.basename(folder) + ".old-", dir=os.path.dirname(folder))
            os.replace(folder, os.path.join(old, "x"))
        os.replace(tmp, folder)
        if old:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def output_folder(path: str, name: str) -> str:
    """``path`` if it can be a folder to write into: an existing folder, or a new one whose nearest existing
    parent is a writable folder. Anything else is a one-line ConfigError naming ``name`` (the flag or config
    key) and the path. Creates nothing."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{name}={path}: is a file; expected a folder (an existing one, or one to create)")
    _writable(os.path.abspath(path), name, path)
    return path


def output_files(path: str, name: str) -> str:
    """``path`` if files named ``path`` or ``path`` + a suffix can be written: the folder they go in is one, or
    can be made (as :func:`output_folder`). Creates nothing."""
    _writable(os.path.dirname(os.path.abspath(path)), name, path)
    return path


def _writable(folder: str, name: str, path: str) -> None:
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ConfigError(f"{name}={path}: {folder} is a file; expected a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{name}={path}: {folder} is not writable")
