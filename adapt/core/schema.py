"""Declared config schemas: each section of a trial's config states, beside its defaults, every key's type and range,
and :func:`check` holds a config to them before anything is read.

    SCHEMA = {"max_length": Int(min=1, doc="tokens per row"), "truncation": Choice("head", "tail", "head+tail"),
              "files": Map(Path(empty=False), doc="split -> file or folder"), ...}   # beside data_defaults()
    check(SCHEMA, section, "data")      # one section (or one entry of an open dict) against its schema

A schema is a dict {key: spec}; a dict inside it is a nested section. A config may leave keys out (a run folder
written before a key existed), but every key it has must be declared. A bad value is a one-line
:class:`~adapt.core.errors.ConfigError` naming the full dotted key, the value and what was expected:
``data.max_length=0: expected an integer >= 1``. Each spec carries a short ``doc``, for a config reference.

ml_collections' own type locking and ``FieldReference`` stay: a schema adds what they lack (ranges, enums, the
entries of open dicts) and applies to plain dicts too (a sweep's override values, a reloaded ``config.json``,
where tuples arrive as lists).
"""

from __future__ import annotations

import builtins
import difflib
import math
import numbers
import re
from collections.abc import Mapping

from adapt.core.errors import ConfigError


def show(value) -> str:
    """``value`` on one line, a section as the dict it holds."""
    return " ".join(repr(value.to_dict() if hasattr(value, "to_dict") else value).split())


def _closest(name, known, prefix: str = "") -> str:
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=3, cutoff=0.6)
    return f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""


class Spec:
    """What one key holds. ``kind`` says whether a value is of this spec's type, ``ok`` whether it is also in range;
    ``check`` raises the one-line error. ``hint`` (e.g. "0: off") ends the error's "expected ..." text."""

    composite = False  # a spec of sections, tuples or maps: its errors name the part inside that is wrong

    def __init__(self, doc: str = "", hint: str = ""):
        self.doc, self.hint = doc, hint

    def kind(self, value) -> bool:
        raise NotImplementedError

    def ok(self, value) -> bool:
        return self.kind(value)

    def expected(self) -> str:
        raise NotImplementedError

    def fail(self, value, key: str, expected: str | None = None, extra: str = ""):
        expected = expected or self.expected()
        raise ConfigError(f"{key}={show(value)}: expected {expected}" + (f" ({self.hint})" if self.hint else "")
                          + extra)

    def check(self, value, key: str) -> None:
        if not self.ok(value):
            self.fail(value, key)


class Anything(Spec):
    """Any value (free-form labels such as a sweep's ``meta.*``)."""

    def kind(self, value) -> bool:
        return True

    def expected(self) -> str:
        return "anything"


class Bool(Spec):
    def kind(self, value) -> bool:
        return isinstance(value, bool)

    def expected(self) -> str:
        return "True or False"


def _bounds(lo, lo_open, hi, hi_open) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    return f" {'<' if hi_open else '<='} {hi:g}" if hi is not None else ""


class Int(Spec):
    """An integer (not a bool) in ``[min, max]``."""

    def __init__(self, min: int | None = None, max: int | None = None, **kw):
        super().__init__(**kw)
        self.min, self.max = min, max

    def kind(self, value) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    def ok(self, value) -> bool:
        return self.kind(value) and (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def expected(self) -> str:
        return "an integer" + _bounds(self.min, False, self.max, False)


class Float(Spec):
    """A finite real number (an int is fine, a bool is not) with bounds: ``gt``/``ge`` below, ``lt``/``le`` above."""

    def __init__(self, gt: float | None = None, ge: float | None = None, lt: float | None = None,
                 le: float | None = None, **kw):
        super().__init__(**kw)
        self.gt, self.ge, self.lt, self.le = gt, ge, lt, le

    def kind(self, value) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)

    def ok(self, value) -> bool:
        return (self.kind(value) and math.isfinite(value) and (self.gt is None or value > self.gt)
                and (self.ge is None or value >= self.ge) and (self.lt is None or value < self.lt)
                and (self.le is None or value <= self.le))

    def expected(self) -> str:
        lo, hi = (self.gt, True) if self.gt is not None else (self.ge, False), \
            (self.lt, True) if self.lt is not None else (self.le, False)
        return "a number" + _bounds(lo[0], lo[1], hi[0], hi[1])

    def check(self, value, key: str) -> None:
        if not self.ok(value):  # an infinity or a NaN may sit within the bounds: say that it must be finite
            self.fail(value, key, "a finite " + self.expected()[2:] if self.kind(value) and not math.isfinite(value)
                      else None)


class Str(Spec):
    """A string; ``empty=False`` refuses "", ``pattern`` is a regex it must match whole (``what`` says it in words)."""

    def __init__(self, empty: bool = True, pattern: str | None = None, what: str = "", **kw):
        super().__init__(**kw)
        self.empty, self.pattern, self.what = empty, pattern, what

    def kind(self, value) -> bool:
        return isinstance(value, str)

    def ok(self, value) -> bool:
        return (self.kind(value) and (self.empty or value != "")
                and (self.pattern is None or re.fullmatch(self.pattern, value) is not None))

    def expected(self) -> str:
        return self.what or ("a string" if self.empty else "a non-empty string")


class Path(Str):
    """A file or folder path (not read here: checking stays cheap); ``empty`` as :class:`Str` ("" often means none)."""

    def expected(self) -> str:
        return "a path (a string)" if self.empty else "a path (a non-empty string)"


class Choice(Spec):
    """One of ``values``; or of ``values()``, a function, for a registry that grows (tasks, benchmarks, methods)."""

    def __init__(self, *values, **kw):
        super().__init__(**kw)
        self._values = values

    @property
    def values(self) -> tuple:
        return tuple(self._values[0]()) if len(self._values) == 1 and callable(self._values[0]) else self._values

    def kind(self, value) -> bool:
        return any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in self.values)

    def expected(self) -> str:
        names = [v if isinstance(v, str) and v else repr(v) for v in self.values]
        return names[0] if len(names) == 1 else "one of " + ", ".join(names)

    def check(self, value, key: str) -> None:
        if not self.ok(value):
            self.fail(value, key, extra=_closest(value, [v for v in self.values if isinstance(v, str) and v])
                      if isinstance(value, str) else "")


class Either(Spec):
    """One of ``options``: the first whose type the value has judges it (a section's error names its bad key)."""

    def __init__(self, *options, **kw):
        super().__init__(**kw)
        self.options = tuple(as_spec(o) for o in options)

    def kind(self, value) -> bool:
        return any(o.kind(value) for o in self.options)

    def ok(self, value) -> bool:
        return any(o.ok(value) for o in self.options)

    def expected(self) -> str:
        return " or ".join(o.expected() for o in self.options)

    def check(self, value, key: str) -> None:
        if self.ok(value):
            return
        chosen = next((o for o in self.options if o.kind(value) and o.composite), None)
        if chosen is not None:
            chosen.check(value, key)
        self.fail(value, key)


class Tuple(Spec):
    """A tuple (or a list: JSON's tuple) of items each ``of``, or of the positional ``items``; ``len`` fixes the
    length."""

    composite = True

    def __init__(self, of=None, items=None, len: int | None = None, **kw):
        super().__init__(**kw)
        self.of = as_spec(of) if of is not None else Anything()
        self.items = tuple(as_spec(i) for i in items) if items is not None else None
        self.len = builtins.len(self.items) if self.items is not None else len

    def kind(self, value) -> bool:
        return isinstance(value, (tuple, list))

    def _item(self, i):
        return self.items[i] if self.items is not None else self.of

    def ok(self, value) -> bool:
        return (self.kind(value) and (self.len is None or len(value) == self.len)
                and all(self._item(i).ok(v) for i, v in enumerate(value)))

    def expected(self) -> str:
        if self.items is not None:
            return f"a tuple ({', '.join(i.expected() for i in self.items)})"
        return f"a tuple of {self.len or 'any number of'} items, each {self.of.expected()}"

    def check(self, value, key: str) -> None:
        if not self.kind(value) or (self.len is not None and len(value) != self.len):
            self.fail(value, key)
        for i, v in enumerate(value):
            self._item(i).check(v, f"{key}[{i}]")



def _is_map(value) -> bool:
    return isinstance(value, Mapping) or hasattr(value, "to_dict")


class Map(Spec):
    """An open dict: any names (each a non-empty string, or ``keys``), each value ``values``; a name in ``known``
    is held to its own spec instead."""

    composite = True

    def __init__(self, values=None, keys: Spec | None = None, known: dict | None = None, **kw):
        super().__init__(**kw)
        self.values = as_spec(values) if values is not None else Anything()
        self.keys = keys or Str(empty=False)
        self.known = {k: as_spec(v) for k, v in (known or {}).items()}

    def kind(self, value) -> bool:
        return _is_map(value)

    def expected(self) -> str:
        return f"a dict of name -> {self.values.expected()}"

    def check(self, value, key: str) -> None:
        if not self.kind(value):
            self.fail(value, key)
        for name, v in value.items():
            self.keys.check(name, f"{key} key")
            self.known.get(name, self.values).check(v, f"{key}.{name}")

    def ok(self, value) -> bool:
        try:
            self.check(value, "")
        except ConfigError:
            return False
        return True


class Section(Spec):
    """A section of declared keys (a dict in a schema is one): keys may be missing, never undeclared. ``what``
    names it in an unknown key's error (default: its dotted key)."""

    composite = True

    def __init__(self, keys: dict, what: str = "", **kw):
        super().__init__(**kw)
        self.keys, self.what = {k: as_spec(v) for k, v in keys.items()}, what

    def kind(self, value) -> bool:
        return _is_map(value)

    def expected(self) -> str:
        return f"a section of keys {', '.join(self.keys)}"

    def check(self, value, key: str) -> None:
        if not self.kind(value):
            self.fail(value, key)
        where = f"{key}." if key else ""
        for name, v in value.items():
            if name not in self.keys:
                raise ConfigError(f"{where}{name}: unknown key{_closest(name, self.keys, where)} (keys of "
                                  f"{self.what or key or 'a config'}: {', '.join(self.keys)})")
            self.keys[name].check(v, f"{where}{name}")

    ok = Map.ok


class Tagged(Spec):
    """A section whose keys depend on its ``tag`` key's value: ``sections[value]`` (``tag`` missing: ``default``),
    e.g. the ``method`` section, whose ``name`` picks the method's knobs."""

    composite = True

    def __init__(self, tag: str, sections: dict[str, dict], default: str, **kw):
        super().__init__(**kw)
        self.tag, self.sections, self.default = tag, sections, default

    def kind(self, value) -> bool:
        return _is_map(value)

    def expected(self) -> str:
        return f"a section with {self.tag} (one of {', '.join(self.sections)}) and its keys"

    def check(self, value, key: str) -> None:
        if not self.kind(value):
            self.fail(value, key)
        name = value.get(self.tag, self.default)
        Choice(*self.sections).check(name, f"{key}.{self.tag}")
        Section({self.tag: Choice(name), **self.sections[name]}, what=f"{key} {name!r}").check(value, key)

    ok = Map.ok


def as_spec(x) -> Spec:
    """A spec; a dict stands for a :class:`Section` of its keys."""
    return Section(x) if isinstance(x, dict) else x


def check(schema: dict | Spec, config, key: str = "") -> None:
    """``config`` held to ``schema`` (``key``: its dotted name, for errors; a whole trial config:
    :func:`adapt.experiment.base.check`). Raises a one-line ConfigError at the first bad key."""
    as_spec(schema).check(config, key)


def spec_at(schema: dict | Spec, dotted: str) -> Spec | None:
    """The spec of the dotted key ``dotted`` below ``schema`` (a map's entries, a tagged section's union of
    keys), or None where none is declared."""
    spec = as_spec(schema)
    for part in dotted.split("."):
        if isinstance(spec, Section):
            spec = spec.keys.get(part)
        elif isinstance(spec, Map):
            spec = spec.known.get(part, spec.values)
        elif isinstance(spec, Tagged):
            spec = as_spec(next((s[part] for s in spec.sections.values() if part in s),
                                Str() if part == spec.tag else None))
        else:
            return None
        if spec is None:
            return None
    return spec



class Entry:
    """One key of a schema, as :func:`entries` lists it: its dotted ``key`` (an open dict's names shown as
    ``<name>``), its ``spec``, and ``variant``, the tag value that declares it below a :class:`Tagged` section (a
    method's knobs: ``"lora"``), else ""."""

    def __init__(self, key: str, spec: Spec, variant: str = ""):
        self.key, self.spec, self.variant = key, spec, variant

    def __repr__(self) -> str:
        return f"Entry({self.key!r}{', ' + repr(self.variant) if self.variant else ''})"


def _sections_in(spec: Spec) -> list[Section]:
    """The sections a key's value may be (an :class:`Either`'s options included)."""
    if isinstance(spec, Section):
        return [spec]
    if isinstance(spec, Either):
        return [s for o in spec.options for s in _sections_in(o)]
    return []


def entries(schema: dict | Spec, prefix: str = "", variant: str = "") -> list[Entry]:
    """Every key declared below ``schema``, in declaration order: what a config reference lists. A plain section
    is a heading (its keys follow, not itself); a key whose value may be a section (a map of sections, an
    :class:`Either` with a section) is listed and so are the section's keys, an open dict's name as ``<name>``;
    a :class:`Tagged` section lists its tag, then each variant's keys with ``variant`` set. Every entry but a
    plain section's carries a ``doc`` (``tests/core/test_config_reference.py`` holds the trial config to it)."""
    out = []
    for name, spec in as_spec(schema).keys.items():
        key = f"{prefix}{name}"
        if isinstance(spec, Section):
            out += entries(spec, key + ".", variant)
        elif isinstance(spec, Tagged):
            out.append(Entry(f"{key}.{spec.tag}", Choice(*spec.sections, doc=spec.doc), variant))
            for tag, section in spec.sections.items():
                out += entries(section, key + ".", tag)
        else:
            out.append(Entry(key, spec, variant))
            inner = spec.values if isinstance(spec, Map) else spec
            for section in _sections_in(inner):
                out += entries(section, f"{key}.<name>." if isinstance(spec, Map) else key + ".", variant)
    return out


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def reference(schema: dict | Spec, default=None, heading: str = "##", intro: dict | None = None) -> str:
    """``schema`` as a Markdown config reference: one table per top-level section (the variants of a tagged
    section one each), a row per :func:`entries` key: key, what it holds, default, doc. ``default(entry)`` gives
    an entry's default value (raise ``KeyError`` for none); ``intro`` maps a section's name to a line above its
    table."""
    intro = intro or {}
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in entries(schema):
        groups.setdefault((e.key.split(".")[0], e.variant), []).append(e)
    lines = []
    for (section, variant), rows in groups.items():
        title = f"`{section}`" + (f": `{variant}`" if variant else "")
        lines += [f"{heading} {title}", ""]
        if (section, variant) in intro or (not variant and section in intro):
            lines += [intro.get((section, variant), intro.get(section)), ""]
        lines += ["| key | expected | default | |", "|---|---|---|---|"]
        for e in rows:
            try:
                shown = f"`{show(default(e))}`" if default is not None else ""
            except KeyError:
                shown = ""
            hint = f" ({e.spec.hint})" if e.spec.hint else ""
            lines.append(f"| `{e.key}` | {_cell(e.spec.expected() + hint)} | {_cell(shown)} | {_cell(e.spec.doc)} |")
        lines.append("")
    return "\n".join(lines)
