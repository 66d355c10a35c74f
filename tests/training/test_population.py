"""Populations: trials trained as one vmapped program equal the same trials trained alone."""

import json
import os
import types

import numpy as np
import pytest

from adapt.analysis.results import read_metrics_jsonl
from adapt.core.errors import ConfigError
from adapt.experiment import base_config, run_trial
from adapt.study.populations import check_packable, program_key, run_population

WORDS = {"0": "market shares profit bank economy".split(), "1": "match goal season club player".split()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("dev", 16)):
        rows = [{"text": " ".join(rng.choice(WORDS[y], rng.integers(3, 12))), "label": y}
                for y in rng.choice(["0", "1"], n)]
        (d / f"{split}.jsonl").write_text("\n".join(map(json.dumps, rows)))
    return {s: str(d / f"{s}.jsonl") for s in ("train", "dev")}


def _config(model, data, **over):
    c = base_config()
    c.model.name = model
    c.data.files = dict(data)
    c.data.update(max_length=32, cache_dir="")
    c.eval.update(splits=("dev",), batch_size=8)
    c.optimizer.update(learning_rate=3e-3, warmup_steps=0)
    c.train.update(batch_size=8, steps=4, eval_every=2, log_every=1, checkpoint_every=2, keep_checkpoints=3)
    c.train.early_stopping.update(metric="dev/accuracy", mode="max", patience=0)
    c.mesh.shape = (-1, 1, 1)
    for k, v in over.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


def _losses(workdir):
    return [v for _, v in read_metrics_jsonl(os.path.join(workdir, "metrics.jsonl"))["train/loss"]]


# member 1 differs in dropout rates too (the checkpoint's are 0.1): they become data in the population's model
MEMBERS = [{"optimizer.learning_rate": 3e-3, "train.seed": 0},
           {"optimizer.learning_rate": 1e-3, "train.seed": 1, "optimizer.weight_decay": 0.1,
            "model.hidden_dropout": 0.3, "model.attention_dropout": 0.0}]


class Killed(Exception):
    """Stands for a kill between two members' checkpoint saves of one step."""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_population_equals_its_members_trained_alone(small_bert, data, tmp_path, method, monkeypatch):
    import adapt.study.populations
    from adapt.analysis.results import ResultsDB
    from adapt.study import runner
    from adapt.training import loop, population

    def config(**over):
        lora = {"name": "lora", "rank": 4, "alpha": over.pop("method.alpha", 8.0),
                "dropout": over.pop("method.dropout", 0.0)}
        c = _config(small_bert, data, **over)
        c.method = {"name": method} if method == "full" else lora
        if method == "full":  # the trial axis split over the mesh's data axis, each member's rows over fsdp
            c.mesh.shape, c.mesh.rules = (2, 4, 1), tuple(c.mesh.rules) + (("trial", "data"),)
        return c

    # LoRA's members differ in alpha (its scale is a frozen variable that the population stacks per member) and in
    # LoRA's own dropout rate too
    members = MEMBERS if method == "full" else [MEMBERS[0], {**MEMBERS[1], "method.alpha": 16.0, "method.dropout": 0.2}]
    configs = [config(**m) for m in members]
    folders = [str(tmp_path / f"pop{i}") for i in range(len(members))]
    if method == "full":  # killed between the two members' saves of step 4: the population resumes from step 2
        save, saved = loop._Run.save, []

        def save_or_die(run, state):
            if int(state.step) == 4 and saved.count(4) == 1:
                raise Killed
            saved.append(int(state.step))
            save(run, state)

        monkeypatch.setattr(loop._Run, "save", save_or_die)
        with pytest.raises(Killed):
            run_population(configs, folders)
        monkeypatch.undo()
        trainers = [types.SimpleNamespace(workdir=f, cfg=c) for c, f in zip(configs, folders)]
        assert population.common_start(trainers) == 2
        together = run_population(configs, folders)
    else:  # through the sweep runner: the three trials of one program packed (one diverges), another alone
        calls, real = [], adapt.study.populations.run_population
        monkeypatch.setattr(adapt.study.populations, "run_population",
                            lambda cs, ws: calls.append(len(cs)) or real(cs, ws))
        sweep = members + [{"optimizer.learning_rate": 1e30}, {"train.batch_size": 16}]
        counts = runner.run_sweep(config(), sweep, str(tmp_path / "sweep"), pack=4, progress=False)
        assert counts == {"done": 3, "failed": 1} and calls == [3]
        trials = ResultsDB(str(tmp_path / "sweep" / "results.db")).trials()
        diverged = next(t for t in trials if t["overrides"].get("optimizer.learning_rate") == 1e30)
        assert diverged["status"] == "failed" and "non-finite loss" in diverged["error"]  # it alone failed
        folders = [next(t["workdir"] for t in trials if t["overrides"] == m) for m in members]
        together = [json.load(open(os.path.join(f, "results.json"))) for f in folders]
        assert [next(t["metrics"]["dev"]["loss"] for t in trials if t["overrides"] == m) for m in members] == \
            [r["dev"]["loss"] for r in together]  # recorded in the database as each member's own
    for i in [1]:  # the member differing from the defaults in every packable key (member 0 differs in none)
        alone = run_trial(configs[i], str(tmp_path / f"alone{i}"))
        assert together[i]["dev"]["accuracy"] == alone["dev"]["accuracy"]
        assert together[i]["dev"]["loss"] == pytest.approx(alone["dev"]["loss"], rel=1e-5)
        np.testing.assert_allclose(_losses(folders[i]), _losses(tmp_path / f"alone{i}"), rtol=1e-5)
        assert json.load(open(os.path.join(folders[i], "results.json"))) == together[i]
    assert together[0]["dev"]["loss"] != together[1]["dev"]["loss"]  # the members did differ


@pytest.mark.slow
def test_a_population_of_stacked_layers_equals_its_member_alone_and_unrolled(small_bert, data, tmp_path):
    """``model.scan_layers``: the trial axis stacked over the layers' axis ([trial, L, ...]), the dropout rates data."""
    configs = [_config(small_bert, data, **m, **{"model.scan_layers": True}) for m in MEMBERS]
    folders = [str(tmp_path / f"pop{i}") for i in range(len(configs))]
    together = run_population(configs, folders)
    alone = run_trial(configs[1], str(tmp_path / "alone"))
    configs[1].model.scan_layers = False
    unrolled = run_trial(configs[1], str(tmp_path / "unrolled"))
    for other, folder in ((alone, "alone"), (unrolled, "unrolled")):
        assert together[1]["dev"]["loss"] == pytest.approx(other["dev"]["loss"], rel=1e-5)
        np.testing.assert_allclose(_losses(folders[1]), _losses(tmp_path / folder), rtol=1e-5)


def test_packing_groups_trials_by_program_and_refuses_the_rest(small_bert, data):
    a, b = _config(small_bert, data), _config(small_bert, data, **{"optimizer.learning_rate": 1e-4, "train.seed": 3})
    c = _config(small_bert, data, **{"train.batch_size": 16})
    assert program_key(a) == program_key(b) != program_key(c)  # the runner packs trials by this key
    check_packable([a, b])
    with pytest.raises(ConfigError, match=r"differ in train.batch_size \(8 vs 16\), which needs its own compiled"):
        check_packable([a, c])
