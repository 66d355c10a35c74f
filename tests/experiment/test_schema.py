"""The declared config schema (adapt.core.schema): every key of a trial's config and every method's knobs declared, an
impossible value in any section (used by the trial or not, open dicts' entries included) one line naming the key,
config files that fail to import one line naming file:line, and sweeps checked before their first trial runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from adapt.core import schema
from adapt.core.errors import ConfigError
from adapt.core.schema import Choice, Either, Float, Int, Tuple, show, spec_at
from adapt.experiment import base, configs, load_run
from adapt.experiment.base import SCHEMA, base_config
from adapt.methods import METHODS, method_config
from adapt.study import active, runner, sweeps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Numeric keys that take any integer (a column index counts from the end when negative)
UNBOUNDED = {"data.conll_token_column", "data.conll_tag_column"}


def _full_config() -> dict:
    """base_config() with every optional section (active learning's) as a plain dict."""
    return active.with_section(base_config()).to_dict()


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _set(d: dict, key: str, value) -> dict:
    node, (*path, last) = d, key.split(".")
    for part in path:
        node = node[part]
    node[last] = value
    return d


def _raises(config, key: str, value) -> str:
    """The error ``config`` gets; it is one line and names ``key`` and ``value``."""
    with pytest.raises(ConfigError) as e:
        base.check(config)
    message = str(e.value)
    assert message.startswith(f"{key}={show(value)}: expected ") and "\n" not in message, message
    return message


def test_every_key_of_base_config_is_declared():
    keys = configs.keys(active.with_section(base_config()))
    assert len(keys) > 100
    undeclared = [k for k in keys if spec_at(SCHEMA, k) is None]
    assert not undeclared, f"keys without a declaration in their section's SCHEMA: {undeclared}"
    base.check(base_config())  # and the defaults pass
    base.check(_full_config())


def test_every_method_declares_its_knobs():
    assert len(METHODS) >= 10
    for name, cls in METHODS.items():
        assert set(cls.schema) == set(cls.defaults), name
        section = method_config(name)
        schema.check(SCHEMA["method"], section, "method")  # its defaults pass
        assert all(spec_at(SCHEMA, f"method.{k}") is not None for k in section)


def _is_number(spec) -> bool:
    return isinstance(spec, (Int, Float)) or (isinstance(spec, Either) and any(map(_is_number, spec.options)))


def _bad_values(spec) -> list:
    """Values just outside each bound of a numeric spec."""
    if isinstance(spec, Either):
        return [v for o in spec.options for v in _bad_values(o) if not spec.ok(v)]
    if isinstance(spec, Int):
        return [b for b in (None if spec.min is None else spec.min - 1, None if spec.max is None else spec.max + 1)
                if b is not None]
    if isinstance(spec, Float):
        return [float(b) for b in (spec.gt, None if spec.ge is None else spec.ge - 0.5, spec.lt,
                                   None if spec.le is None else spec.le + 0.5) if b is not None]
    return []


def _numeric_cases():
    """(config, key, bad value, the key the error names) for each numeric key of the trial config and of every
    method's knobs, one per bound; a numeric key without a bound must be listed in UNBOUNDED."""
    configs_ = [_full_config()] + [{**_full_config(), "method": method_config(n).to_dict()} for n in METHODS]
    cases, unbounded = {}, set()
    for config in configs_:
        for key, default in _leaves(config).items():
            spec = spec_at(SCHEMA, key)
            if isinstance(spec, Tuple) and _is_number(spec.of):  # a tuple of numbers: its first item
                items = list(default) or [0]
                for bad in _bad_values(spec.of):
                    cases[(key, bad)] = (config, key, tuple([bad] + items[1:]), f"{key}[0]", bad)
            elif _is_number(spec):
                bads = _bad_values(spec)
                unbounded |= {key} if not bads else set()
                for bad in bads:
                    cases[(key, bad)] = (config, key, bad, key, bad)
    assert unbounded == UNBOUNDED, "a numeric key without a range: declare one, or list it in UNBOUNDED"
    return list(cases.values())


NUMERIC = _numeric_cases()


@pytest.mark.parametrize("config, key, value, named, bad", NUMERIC, ids=[f"{c[1]}={c[2]}" for c in NUMERIC])
def test_an_out_of_range_number_is_one_line_naming_the_key(config, key, value, named, bad):
    _raises(_set(json.loads(json.dumps(config)), key, value), named, bad)


def test_the_numeric_table_covers_the_keys_the_issue_names():
    keys = {c[1] for c in NUMERIC}
    assert {"data.max_length", "train.batch_size", "optimizer.learning_rate", "eval.batch_size", "method.rank",
            "method.p", "data.augment.p", "distill.alpha", "privacy.delta", "multitask.temperature"} <= keys
    assert len(keys) > 60


def test_an_unknown_choice_is_one_line_naming_the_key():
    config = _full_config()
    choices = [k for k in _leaves(config) if isinstance(spec_at(SCHEMA, k), Choice)]
    assert {"optimizer.name", "data.format", "model.task", "data.quality.duplicates", "train.remat"} <= set(choices)
    for key in choices:
        message = _raises(_set(_full_config(), key, "nope"), key, "nope")
        assert "expected one of" in message or "expected" in message


def test_an_undeclared_key_and_a_wrong_type_are_one_line():
    with pytest.raises(ConfigError, match=r"^train.bach_size: unknown key; did you mean train.batch_size\? "
                                          r"\(keys of train: seed, batch_size, "):
        base.check(_set(_full_config(), "train.bach_size", 8))
    _raises(_set(_full_config(), "data.pack", "yes"), "data.pack", "yes")
    _raises(_set(_full_config(), "mesh.shape", (1, -1)), "mesh.shape", (1, -1))
    base.check({**_full_config(), "meta": {"anything": [1, "x"]}})  # a sweep's labels stay free


def test_a_section_the_trial_does_not_use_is_checked_too():
    # privacy is off and there are no tasks: their impossible values still stop the config as it loads
    with pytest.raises(ConfigError, match=r"^privacy.clip_norm=0.0: expected a number > 0$"):
        configs.load("configs/finetune.py:bbc", ["privacy.clip_norm=0.0"])
    with pytest.raises(ConfigError, match=r"^multitask.temperature=-1.0: expected a number > 0$"):
        configs.load("configs/finetune.py:bbc", ["multitask.temperature=-1.0"])
    with pytest.raises(ConfigError, match=r"^method.rank=0: expected an integer >= 1"):
        configs.load("configs/finetune.py:bbc,lora", ["method.rank=0"])


@pytest.mark.parametrize("key, value, message", [
    ("data.mixture", {"bio": {"weight": 1.0, "max_length": 0}}, "data.mixture.bio.max_length=0: expected an integer"),
    ("data.mixture", {"bio": {"weight": -1.0}}, "data.mixture.bio.weight=-1.0: expected a number >= 0"),
    ("data.files", {"train": 3}, "data.files.train=3: expected a path"),
    ("data.eval_examples", {"test": 0}, "data.eval_examples.test=0: expected an integer >= 1"),
    ("data.split_ratios", {"train": 1.5}, "data.split_ratios.train=1.5: expected a number in [0, 1]"),
    ("data.mixture_stages", [[0, {"bio": -1}]], "data.mixture_stages[0][1].bio=-1: expected a number >= 0"),
    ("eval.sets", {"general": {"benchmark": "bbc", "fles": {}}}, "eval.sets.general.fles: unknown key; did you "
                                                                  "mean eval.sets.general.files?"),
    ("eval.sets", {"general": {"split": "dev", "max_length": -5}}, "eval.sets.general.max_length=-5: expected"),
    ("eval.sets", {"general": 7}, "eval.sets.general=7: expected a non-empty string or "),
    ("multitask.tasks", {"t": {"benchmark": "bbc", "weight": 0}}, "multitask.tasks.t.weight=0: expected a number > 0"),
    ("multitask.tasks", {"t": {"benchmark": "bbc", "task": "causal_lm"}}, "multitask.tasks.t.task='causal_lm': "
                                                                         "expected one of"),
    ("distill.student.config", {"hidden_size": 0}, "distill.student.config.hidden_size=0: expected an integer >= 1"),
    ("distill.student.config", {"hidden_dropout_prob": 1.5}, "distill.student.config.hidden_dropout_prob=1.5: "),
    ("generation.examples", {"dev": -1}, "generation.examples.dev=-1: expected an integer >= 0 (0: all)"),
])
def test_the_entries_of_open_dicts_are_checked(key, value, message):
    with pytest.raises(ConfigError) as e:
        base.check(_set(_full_config(), key, value))
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_a_run_folder_reloaded_is_checked_before_anything_loads(tmp_path):
    config = base_config().to_dict()
    config["data"]["max_length"] = 0
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"^data.max_length=0: expected an integer >= 1$"):
        load_run(str(tmp_path))


def test_a_bad_grid_value_fails_at_expansion_before_any_trial(tmp_path):
    ran = []
    sweep = [sweeps.stage("a", sweeps.grid("train.seed", [0, 1])),
             sweeps.stage("b", sweeps.grid("data.max_length", [128, 0]), after="a")]
    with pytest.raises(ConfigError, match=r"^sweep trial b/\w+: data.max_length=0: expected an integer >= 1$"):
        runner.run_sweep(base_config(), sweep, str(tmp_path / "runs"), progress=False)
    assert not os.path.exists(tmp_path / "runs" / "results.db") and not ran


def _train(tmp_path, text: str) -> subprocess.CompletedProcess:
    (tmp_path / "bad.py").write_text(text)
    return subprocess.run([sys.executable, "scripts/train.py", f"--config={tmp_path / 'bad.py'}",
                           f"--workdir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})


@pytest.mark.parametrize("text, line, error", [
    ("from adapt.experiment import base_config\n\ndef get_config(arg=None)\n    return base_config()\n", 3,
     "SyntaxError: expected ':'"),
    ("import ml_collections\nx = {}['missing']\n", 2, "KeyError: 'missing'"),
    ("from adapt.experiment import base_config\n\ndef get_config(arg=None):\n    c = base_config()\n"
     "    c.train.batch_size = 'many'\n    return c\n", 5, "TypeError: "),
])
def test_a_config_file_that_fails_is_one_line_with_its_line_and_exit_code_2(tmp_path, text, line, error):
    proc = _train(tmp_path, text)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'bad.py'}:{line}: {error}"), proc.stderr


def test_a_config_file_with_an_impossible_value_is_one_line_and_exit_code_2(tmp_path):
    proc = _train(tmp_path, "from adapt.experiment import base_config\n\ndef get_config(arg=None):\n"
                            "    c = base_config()\n    c.train.batch_size = 0\n    return c\n")
    assert (proc.returncode, proc.stderr) == (2, "error: train.batch_size=0: expected an integer >= 1\n")
