"""Sphinx configuration of adapt's documentation: MyST Markdown pages, autodoc of the package's module docstrings,
and the config reference generated from the schema (``_ext/config_reference.py``).

Built by ``scripts/check.sh`` with ``sphinx-build -n -W --keep-going``: every warning fails the build, and ``-n``
makes every cross-reference (``:func:``, ``:class:``, ...) that resolves to nothing a warning. The build reads
nothing from the network: there is no intersphinx (CI has no network); names from other packages that signatures
and docstrings mention are listed in ``nitpick_ignore_regex`` below, each with why.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # autodoc imports the modules, and so JAX: never look for a GPU
sys.path.insert(0, os.path.abspath(".."))  # this checkout's adapt, whatever the environment has installed
sys.path.insert(0, os.path.abspath("_ext"))

project = "adapt"
author = "the adapt authors"
copyright = "the adapt authors; Apache-2.0"

extensions = ["myst_parser", "sphinx.ext.autodoc", "api_pages", "config_reference", "docstrings"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # links to a guide's sections: [multi-host](training.md#multi-host)

html_theme = "alabaster"
html_theme_options = {"page_width": "1200px", "body_max_width": "none"}
html_static_path = []

autodoc_default_options = {"members": True, "undoc-members": True, "member-order": "bysource", "no-value": True}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # the defaults as written (DEFAULT_RULES, not the tuple it holds)
add_module_names = False
python_use_unqualified_type_names = True
nitpicky = True

# Names from other projects that Sphinx cannot resolve without their intersphinx inventories, which this offline
# build does not have (CI has no network, and no inventory of these is committed). All are types in signatures, as
# the annotations name them, plus one docstring reference (optuna.TrialPruned); none is adapt's, so a broken
# reference to adapt's own API still fails the build. Each is documented by its project:
nitpick_ignore_regex = [
    (r"py:.*", r"collections\.abc\..*"),  # Python's standard library: Callable, Sequence, Iterator (docs.python.org)
    (r"py:.*", r"numpy(\..*)?"),  # arrays, dtypes and random generators (numpy.org/doc)
    (r"py:.*", r"jax(\..*)?"),  # jax.Array (jax.jaxlib._jax.Array), Mesh, NamedSharding, jax.P (docs.jax.dev)
    (r"py:.*", r"(flax|nnx)(\..*)?"),  # flax.nnx's Module, Rngs, State, Variable, Param, layers (flax.readthedocs.io)
    (r"py:.*", r"optax(\..*)?"),  # GradientTransformation, OptState (optax.readthedocs.io)
    (r"py:.*", r"ml_collections(\..*)?"),  # ConfigDict, the configs' type (github.com/google/ml_collections)
    (r"py:.*", r"optuna(\..*)?"),  # TrialPruned, raised by the adaptive search's pruning (optuna.readthedocs.io)
]
