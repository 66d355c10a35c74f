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

extensions = ["myst_parser", "sphinx.ext.autodoc", "config_reference", "docstrings"]
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

# Names Sphinx cannot resolve without other projects' inventories, which the offline build does not have. Each is
# another package's (or the standard library's) and is documented there; none is adapt's own, so a broken reference
# to adapt's own API still fails the build.
_EXTERNAL = [
    # the standard library: types in signatures (pathlib.Path, collections.abc.Iterator, typing.Any, ...)
    "abc", "builtins", "collections", "concurrent", "contextlib", "dataclasses", "enum", "io", "json", "logging",
    "multiprocessing", "os", "pathlib", "queue", "random", "re", "sqlite3", "subprocess", "threading", "types",
    "typing", "argparse",
    # the numeric stack and the JAX ecosystem: arrays, modules, optimizer transforms, meshes
    "numpy", "np", "jax", "jnp", "jaxlib", "flax", "nnx", "optax", "orbax", "ml_dtypes", "ml_collections",
    # file formats, tokenizers and the data and search libraries adapt uses
    "transformers", "tokenizers", "datasets", "safetensors", "huggingface_hub", "gguf", "optuna", "ray",
    "lm_eval", "sklearn", "scipy", "datasketch", "cleanlab", "dp_accounting", "matplotlib", "tensorboardX",
    "torch", "peft", "tqdm", "jinja2",
]
nitpick_ignore_regex = [
    (r"py:.*", rf"({'|'.join(_EXTERNAL)})(\..*)?"),
    # builtins named bare in signatures (int, str, Path, Array, Callable, ...): Python's and JAX's
    (r"py:(class|obj|data)", r"(int|float|str|bool|bytes|dict|list|tuple|set|object|type|None|Ellipsis|"
                             r"Any|Callable|Iterator|Iterable|Mapping|Sequence|Generator|Path|Array|ArrayLike|"
                             r"Module|ConfigDict|Mesh|NamedSharding|PartitionSpec|PRNGKey|KeyArray|DTypeLike)"),
]
