"""A Sphinx extension for adapt's docstrings, written to be read as plain text first.

Code examples are indented blocks after a blank line, with no ``::`` before them: rendered as reStructuredText,
they would be block quotes, and one with a line indented deeper than its first a definition list that warns. An
indented block after a paragraph is made a literal block (as if the paragraph ended with ``::``).

A cross-reference in a docstring means what the name means in that module's code.

Docstrings name things as the module's own code does: ``:class:`ConfigError``` where the module imported it,
``:func:`adapt.models.from_pretrained``` by the public path a package re-exports it at, ``:meth:`fit``` inside
its class. Sphinx looks a target up only where it is documented (``adapt.core.errors.ConfigError``,
``adapt.models.loading.from_pretrained``); when that fails, this looks the name up in Python from the reference's
module and class (as the code would), and links to the place that documents the very same object. A name that
is not documented anywhere (a private helper, a typo, a moved path) still fails the build."""

import importlib
import re

from sphinx.util import logging

logger = logging.getLogger(__name__)


def _lookup(path: str):
    """The object at dotted ``path`` (a module, or attributes below one), or raise LookupError."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except Exception:
            continue
        try:
            for part in parts[i:]:
                obj = getattr(obj, part)
        except AttributeError:
            raise LookupError(path) from None
        return obj
    raise LookupError(path)


def _same(a, b) -> bool:
    return a is b or (getattr(a, "__func__", None) is not None and a.__func__ is getattr(b, "__func__", b))


def _missing_reference(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    module, cls = node.get("py:module"), node.get("py:class")
    candidates = [target]
    if module:
        candidates = ([f"{module}.{cls}.{target}"] if cls else []) + [f"{module}.{target}"] + candidates
    for path in candidates:
        try:
            obj = _lookup(path)
        except LookupError:
            continue
        last = target.rsplit(".", 1)[-1]
        domain = env.domains["py"]
        for name in domain.objects:
            if name.rsplit(".", 1)[-1] != last or name == path:
                continue
            try:
                found = _lookup(name)
            except LookupError:
                continue
            if _same(found, obj):
                return domain.resolve_xref(env, node["refdoc"], app.builder, "obj", name, node, contnode)
        return None  # the name exists but is not documented: Sphinx warns
    return None


def _literal_blocks(app, what, name, obj, options, lines):
    out, block = [], None  # block: the indentation of the literal block being copied
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if block is not None and line.strip() and indent < block:
            block = None
        if (block is None and line.strip() and i >= 2 and not lines[i - 1].strip() and lines[i - 2].strip()
                and not lines[i - 2].rstrip().endswith("::")
                and indent >= len(lines[i - 2]) - len(lines[i - 2].lstrip()) + 4):
            out += ["::", ""]
            block = indent
        out.append(line)
    lines[:] = out


def _signature(app, what, name, obj, options, signature, return_annotation):
    """A default that is not a Python expression (a dataclass field's ``<factory>``, a function's repr) makes Sphinx
    split the signature at every comma, inside ``tuple[str, ...]`` too: show a factory as ``...`` and a function
    by its name."""
    if signature:
        signature = re.sub(r"<function ([\w.]+)(?: at 0x[0-9a-f]+)?>", r"\1", signature.replace("<factory>", "..."))
    return signature, return_annotation


def setup(app):
    app.connect("autodoc-process-signature", _signature)
    app.connect("missing-reference", _missing_reference)
    app.connect("autodoc-process-docstring", _literal_blocks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
