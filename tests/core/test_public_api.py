"""The curated API at the package root: every name resolves, and importing ``adapt`` loads neither JAX nor
numpy (each name is imported on first use), so a program that imports it is left as it was."""

import json
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


@pytest.fixture(scope="module")
def moved_imports():
    """Every module path of the flat layout imported in one fresh process, in turn (each checked to be not yet
    imported, so each import goes through its shim as a user's first ``import adapt.sweeps`` does): old path ->
    ``(imports as the module at its new path, the new module's name, the DeprecationWarnings it gave)``. One process
    for all of them: a process each cost 3 s of importing JAX apiece."""
    code = ("import importlib, json, sys, warnings\nimport adapt\nwarnings.simplefilter('always')\nfound = {}\n"
            "for old, new in sorted(adapt.MOVED.items()):\n"
            "    assert old not in sys.modules, f'{old} was imported before its turn'\n"
            "    with warnings.catch_warnings(record=True) as caught:\n"
            "        module = importlib.import_module(old)\n"
            "    target = importlib.import_module(new)\n"
            "    found[old] = [module is target, target.__spec__.name,\n"
            "                  [str(w.message) for w in caught if w.category is DeprecationWarning]]\n"
            "print(json.dumps(found))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.mark.parametrize("old", sorted(adapt.MOVED))
def test_a_moved_module_path_imports_the_module_at_its_new_path_with_a_warning(old, moved_imports):
    """Each module path of the flat layout imports as the very module at its new path, with one DeprecationWarning
    naming that path (a user's ``import adapt.sweeps`` keeps working)."""
    new = adapt.MOVED[old]
    assert moved_imports[old] == [True, new, [f"{old} moved to {new}; import it from there"]]
