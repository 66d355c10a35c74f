"""The forgetting report from a results database of fabricated language-model trials: every number equals a hand
computation (means, gains, forgetting, Student-t intervals from scipy), the hyperparameter group is selected by
dev domain loss, the Pareto front holds the trials it should, the plot is a PNG; scripts/table.py --forgetting,
study.py's layout (report.show_layout) and a named set as a table metric."""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys

import ml_collections
import pytest
from scipy import stats as scipy_stats

from adapt.analysis import forgetting, report, results, tables
from adapt.core.errors import AdaptError, ConfigError
from adapt.study import sweeps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOMAIN_BEFORE, GENERAL_BEFORE = 20.0, 2.5  # the pretrained model's domain perplexity and general loss
# (condition, learning rate) -> (domain perplexity after, general loss after) per seed 0..2
DATA = {
    ("full", 1e-3): ([10.0, 11.0, 12.0], [2.9, 3.0, 3.4]),
    ("lora", 1e-3): ([14.0, 15.0, 16.5], [2.55, 2.6, 2.5]),  # dev domain loss lower than 1e-4's: selected
    ("lora", 1e-4): ([18.0, 18.5, 19.0], [2.5, 2.5, 2.5]),
    ("one", 1e-3): ([19.0], [3.5]),  # a single seed: no interval
}
# (forgetting, gain) per trial: full (0.4, 10) (0.5, 9) (0.9, 8); lora (0.05, 6) (0.1, 5) (0, 3.5); one (1, 1)
FRONT = [("lora", 2), ("lora", 0), ("full", 0)]


def _lm(ppl: float, loss: float) -> dict:
    return {"domain": {"loss": math.log(ppl), "perplexity": ppl, "count": 100},
            "general": {"loss": loss, "perplexity": math.exp(loss), "count": 100}}


def make_db(tmp_path):
    sweep = [{"meta.condition": c, "optimizer.learning_rate": lr, "train.seed": s}
             for (c, lr), (ppls, _) in DATA.items() for s in range(len(ppls))]
    sweep.append({"meta.condition": "classifier", "optimizer.learning_rate": 1e-3, "train.seed": 0})  # no sets
    trials = sweeps.expand(sweep)
    base = ml_collections.ConfigDict(dict(optimizer=dict(learning_rate=1e-3), train=dict(seed=0), init_from=""))
    db = results.ResultsDB(str(tmp_path / "results.db"))
    db.register("lm", trials, {t.id: sweeps.trial_config(base, t.overrides) for t in trials}, str(tmp_path))
    by_id = {t.id: t.overrides for t in trials}
    while (tid := db.claim(list(by_id), os.getpid())) is not None:
        ov = by_id[tid]
        if ov["meta.condition"] == "classifier":
            db.finish(tid, {"dev": {"accuracy": 0.5}, "test": {"accuracy": 0.5}}, {})
            continue
        ppls, losses = DATA[ov["meta.condition"], ov["optimizer.learning_rate"]]
        seed = ov["train.seed"]
        db.finish(tid, {"start": _lm(DOMAIN_BEFORE, GENERAL_BEFORE),
                        "dev": {"loss": 1.0, **_lm(ppls[seed], losses[seed])},
                        "mixture": {"domain_text": {"share": 0.5, "tokens": 1000}}},
                  {"dev/general/loss": [(0, GENERAL_BEFORE), (10, losses[seed])]})
    return db


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return make_db(tmp_path_factory.mktemp("forgetting"))


def _t_interval(xs):
    mean = sum(xs) / len(xs)
    return scipy_stats.t.interval(0.95, len(xs) - 1, loc=mean, scale=scipy_stats.sem(xs))


def test_every_number_matches_a_hand_computation(db):
    rep = forgetting.report(db.trials(), domain="domain", general="general")
    assert [r.name for r in rep.rows] == ["full", "lora", "one"] and rep.notes == []
    by = {r.name: r for r in rep.rows}
    assert by["lora"].selected == {"optimizer.learning_rate": 1e-3} and by["full"].selected == {}
    ids = {(t["condition"], t["overrides"]["optimizer.learning_rate"], t["overrides"]["train.seed"]): t["id"]
           for t in db.trials()}
    assert by["lora"].trials == [ids["lora", 1e-3, s] for s in range(3)]
    for name in ("full", "lora"):
        ppls, losses = DATA[name, 1e-3]
        expected = dict(domain_before=[DOMAIN_BEFORE] * 3, domain_after=ppls,
                        gain=[DOMAIN_BEFORE - p for p in ppls], relative_gain=[100 * (20 - p) / 20 for p in ppls],
                        general_before=[GENERAL_BEFORE] * 3, general_after=losses,
                        forgetting=[x - GENERAL_BEFORE for x in losses])
        for key, xs in expected.items():
            e = by[name].values[key]
            assert e.n == 3 and e.mean == pytest.approx(sum(xs) / 3), (name, key)
            low, high = _t_interval(xs) if max(xs) > min(xs) else (xs[0], xs[0])
            assert (e.low, e.high) == (pytest.approx(low), pytest.approx(high)), (name, key)
    assert by["full"].values["gain"].mean == pytest.approx(9.0)
    assert by["full"].values["forgetting"].mean == pytest.approx(0.6)
    assert by["lora"].values["relative_gain"].mean == pytest.approx(100 * (20 - (14 + 15 + 16.5) / 3) / 20)
    one = by["one"].values
    assert one["gain"].mean == pytest.approx(1.0) and one["forgetting"].mean == pytest.approx(1.0)
    assert one["gain"].low is None and one["gain"].n == 1


def test_markdown_latex_csv_and_caption(db):
    rep = forgetting.report(db.trials())
    md = forgetting.to_markdown(rep)
    assert md.startswith("| condition | n | domain ppl before | domain ppl after | gain | gain % | general loss before "
                         "| general loss after | forgetting |")
    gain = _t_interval([10.0, 9.0, 8.0])
    assert f"| full | 3 | 20.00 [20.00, 20.00] | 11.00 [{20 - gain[1]:.2f}, {20 - gain[0]:.2f}] | " \
           f"+9.00 [{gain[0]:+.2f}, {gain[1]:+.2f}] | +45.0 [" in md
    assert "| one | 1 | 20.00 [–] | 19.00 [–] | +1.00 [–] | +5.0 [–] | 2.500 [–] | 3.500 [–] | +1.000 [–] |" in md
    for text in ("95% Student-t interval over seeds", "[–]: one seed, no interval",
                 "gain = domain ppl before - after",
                 "forgetting = general loss after - before (> 0: the general-text loss rose",
                 "lora: selected optimizer.learning_rate=0.001 (of 0.0001, 0.001) by the lowest mean dev domain/loss"):
        assert text in md, text
    assert r"general loss before & general loss after & forgetting \\" in forgetting.to_latex(rep)
    rows = list(csv.DictReader(io.StringIO(forgetting.to_csv(rep))))
    full = {r["column"]: r for r in rows if r["row"] == "full" and r["source"] == "row"}
    assert float(full["gain"]["mean"]) == pytest.approx(9.0) and float(full["gain"]["low"]) == pytest.approx(gain[0])
    assert len([r for r in rows if r["source"] == "trial"]) == 7 * len(forgetting.COLUMNS)


def test_pareto_front_and_plot(db, tmp_path):
    rep = forgetting.report(db.trials())
    ids = {(t["condition"], t["overrides"]["train.seed"]): t["id"] for t in db.trials()
           if t["overrides"]["optimizer.learning_rate"] == 1e-3}
    front = forgetting.pareto_front([p for r in rep.rows for p in r.points])
    assert [p["id"] for p in front] == [ids[k] for k in FRONT]
    path = forgetting.pareto_plot(db.trials(), str(tmp_path / "plots" / "pareto.png"), domain="domain")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_unknown_sets_are_one_error_naming_those_there_are(db):
    with pytest.raises(AdaptError, match=r"'domian' and 'general'; evaluation sets there are: domain, general$"):
        forgetting.report(db.trials(), domain="domian")
    classifier = [t for t in db.trials() if t["condition"] == "classifier"]
    with pytest.raises(AdaptError, match="no trial has any"):
        forgetting.report(classifier)
    with pytest.raises(ConfigError, match="two evaluation set names"):
        forgetting.parse_sets("domain")


def test_a_named_set_is_a_table_metric(db):
    table = tables.build(db.trials(), metric="general/perplexity", dev_split="dev", test_split="dev", scale=1)
    assert table.rows == ["full", "lora", "one"]  # the classifier has no such metric: no row
    cell = table.cells["lora", "general/perplexity"]  # lowest mean dev general perplexity: lr 1e-4
    assert cell.selected == {"optimizer.learning_rate": 1e-4} and cell.mean == pytest.approx(math.exp(2.5))
    full = [math.exp(x) for x in DATA["full", 1e-3][1]]
    assert table.cells["full", "general/perplexity"].mean == pytest.approx(sum(full) / 3)
    assert "| lora | **12.2 ± 0.0** |" in tables.to_markdown(table)


def test_study_layouts(db, tmp_path, capsys):
    """get_table's layout: a table beside the forgetting report, or the report alone."""
    trials = db.trials()
    out = str(tmp_path / "both" / "table")
    written = report.show_layout(dict(metric="general/loss", test_split="dev", scale=1,
                                      forgetting=("domain", "general")),
                                 db, trials, out)
    assert [os.path.basename(w) for w in written] == [
        "table.md", "table.tex", "table.csv", "table_forgetting.md", "table_forgetting.tex", "table_forgetting.csv",
        "table_pareto.png"]
    shown = capsys.readouterr().out
    assert "| condition | general/loss |" in shown and "| condition | n | domain ppl before |" in shown
    alone = report.show_layout(dict(rows=("condition",), forgetting="domain,general"), db, trials,
                            str(tmp_path / "alone" / "table"))
    assert [os.path.basename(w) for w in alone] == ["table_forgetting.md", "table_forgetting.tex",
                                                    "table_forgetting.csv", "table_pareto.png"]
    assert open(alone[0]).read() == forgetting.to_markdown(forgetting.report(trials))
    with pytest.raises(ConfigError, match="get_table: curves need the main table"):
        report.show_layout(dict(forgetting=("domain", "general"), curves=("train/loss",)), db, trials, out)


def test_table_command_line(db, tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "table.py"), f"--db={db.path}"]
    out = subprocess.run(cmd + ["--forgetting", "domain,general", "--metric", "general/perplexity", "--test-split",
                                "dev", "--scale", "1", "--out", str(tmp_path / "t")],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "| lora | **12.2 ± 0.0** |" in out.stdout and "| one | 1 | 20.00 [–] |" in out.stdout
    for name in ("t.md", "t_forgetting.md", "t_forgetting.csv", "t_pareto.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "t_forgetting.md").read_text() == forgetting.to_markdown(forgetting.report(db.trials()))
    out = subprocess.run(cmd + ["--forgetting", "domain,wiki"], capture_output=True, text=True, check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "'wiki'" in out.stderr, out.stderr
    assert "evaluation sets there are: domain, general" in out.stderr and out.stdout == ""
