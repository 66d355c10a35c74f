"""The curated API at the package root: every name resolves, and importing ``adapt`` loads neither JAX nor
numpy (each name is imported on first use), so a program that imports it is left as it was."""

import subprocess
import sys

import pytest

import adapt


def test_every_public_name_resolves():
    import importlib.util

    for name in adapt.__all__:
        assert getattr(adapt, name) is not None, name
        if name in adapt._EXPORTS:  # a function named like a submodule would hide it: `from adapt import search`
            assert importlib.util.find_spec(f"adapt.{name}") is None, f"adapt.{name} is a module and an export"
    assert adapt.methods.build and adapt.configs.load and adapt.tables.build and adapt.tasks.get
    assert adapt.forgetting.report and adapt.catalog.apply


def test_importing_adapt_loads_nothing_heavy():
    code = "import sys, adapt; print(sorted(m for m in ('jax', 'numpy', 'flax', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("old", sorted(adapt.MOVED))
def test_a_moved_module_path_imports_the_module_at_its_new_path_with_a_warning(old):
    """Each module path of the flat layout imports in a fresh process as the very module at its new path, with one
    DeprecationWarning naming that path (a user's ``import adapt.sweeps`` keeps working)."""
    new = adapt.MOVED[old]
    code = (f"import importlib, warnings\nwarnings.simplefilter('always')\n"
            f"with warnings.catch_warnings(record=True) as caught:\n    old = importlib.import_module({old!r})\n"
            f"new = importlib.import_module({new!r})\n"
            f"print(old is new, new.__spec__.name, "
            f"[str(w.message) for w in caught if w.category is DeprecationWarning])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"True {new} ['{old} moved to {new}; import it from there']"
