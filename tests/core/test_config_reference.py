"""The config reference (docs/reference/config.md, generated from the schema when the docs are built) has an entry
with a description for every key a trial's config can hold: every section's keys, nested ones, the keys of a
mixture source, a named evaluation set and a multi-task task, the active-learning section, and every method's
knobs."""

import sys
from pathlib import Path

import pytest

import adapt.study.active as active
from adapt import methods
from adapt.core import schema
from adapt.core.schema import Map, Section
from adapt.experiment import base

DOCS = Path(__file__).resolve().parents[2] / "docs"


def leaves(value, prefix=""):
    """The dotted keys of a config's values (a section's keys, not the section)."""
    for name, v in value.items():
        if isinstance(v, dict) and v:
            yield from leaves(v, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_every_entry_has_a_description():
    entries = schema.entries(base.SCHEMA)
    missing = [f"{e.key} ({e.variant})" if e.variant else e.key for e in entries if not e.spec.doc.strip()]
    assert not missing, f"config keys without a doc in their schema: {missing}"


def test_every_key_of_the_defaults_has_an_entry():
    keys = {e.key for e in schema.entries(base.SCHEMA) if not e.variant}
    config = active.with_section(base.base_config()).to_dict()
    config.pop("method")  # its keys depend on its name: below
    assert sorted(set(leaves(config)) - keys) == []


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_every_method_knob_has_an_entry(name):
    documented = {e.key for e in schema.entries(base.SCHEMA) if e.variant == name}
    knobs = {f"method.{k}" for k in methods.method_config(name).to_dict() if k != "name"}
    assert knobs <= documented, sorted(knobs - documented)
    assert set(methods.METHODS[name].defaults) == set(methods.METHODS[name].schema), "a knob without a default"


def test_open_dicts_list_their_entries_keys():
    keys = {e.key for e in schema.entries(base.SCHEMA)}
    for key in ("data.mixture.<name>.weight", "data.mixture.<name>.files", "eval.sets.<name>.split",
                "eval.sets.<name>.max_length", "multitask.tasks.<name>.weight", "data.quality.threshold",
                "train.early_stopping.metric", "method.name", "active.strategies"):
        assert key in keys


def test_a_key_without_a_doc_fails():
    bad = {"train": {"seed": schema.Int(doc="the seed"), "steps": schema.Int()},
           "data": {"mixture": Map(Section({"weight": schema.Float()}), doc="sources")}}
    assert [e.key for e in schema.entries(bad) if not e.spec.doc] == ["train.steps", "data.mixture.<name>.weight"]


def test_the_page_holds_every_entry():
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import config_reference
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    page = config_reference.tables()
    assert config_reference.MARKER in (DOCS / "reference" / "config.md").read_text()
    for e in schema.entries(base.SCHEMA):
        assert f"| `{e.key}` |" in page
    for name, method in methods.METHODS.items():
        assert (f"## `method`: `{name}`" in page) == bool(method.schema)
        assert f"`{name}`" in page
