"""Python runs this at start-up when this folder is on ``PYTHONPATH``, as tests/conftest.py puts it for every
process a test starts: the hermetic guards (hermetic_guard.py) there too. A ``sitecustomize`` this one shadows
(a distribution's, later on ``sys.path``) still runs after it."""

import importlib.machinery
import importlib.util
import os
import sys

import hermetic_guard

hermetic_guard.install()

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or os.curdir) != _here])
if _spec is not None:
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
