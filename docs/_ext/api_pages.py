"""A Sphinx extension: each ``api/<subpackage>.md`` page lists every module of its subpackage, found when the page is
read (``pkgutil``), so a module added, moved or renamed is documented without editing the page (and one that no
longer imports fails the build). The page holds its title, the subpackage's own docstring and the marker line
that the modules' ``automodule`` blocks replace."""

import importlib
import pkgutil

MARKER = "<!-- the modules: listed at build time -->"


def modules(package: str) -> list[str]:
    """The dotted names of ``package``'s modules (files and subpackages), sorted."""
    path = importlib.import_module(package).__path__
    return sorted(f"{package}.{m.name}" for m in pkgutil.iter_modules(path))


def blocks(package: str) -> str:
    return "\n".join(f"## `{name}`\n\n```{{eval-rst}}\n.. automodule:: {name}\n```\n" for name in modules(package))


def _fill(app, docname, source):
    if docname.startswith("api/") and MARKER in source[0]:
        source[0] = source[0].replace(MARKER, blocks("adapt." + docname.split("/", 1)[1]))


def setup(app):
    app.connect("source-read", _fill)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
