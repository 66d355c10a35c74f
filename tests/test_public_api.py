"""The curated API at the package root: every name resolves, and importing ``adapt`` loads neither JAX nor
numpy (each name is imported on first use), so a program that imports it is left as it was."""

import subprocess
import sys

import adapt


def test_every_public_name_resolves():
    import importlib.util

    for name in adapt.__all__:
        assert getattr(adapt, name) is not None, name
        if name in adapt._EXPORTS:  # a function named like a submodule would hide it: `from adapt import search`
            assert importlib.util.find_spec(f"adapt.{name}") is None, f"adapt.{name} is a module and an export"
    assert adapt.methods.build and adapt.configs.load and adapt.tables.build and adapt.tasks.get
    assert adapt.forgetting.report


def test_importing_adapt_loads_nothing_heavy():
    code = "import sys, adapt; print(sorted(m for m in ('jax', 'numpy', 'flax', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
