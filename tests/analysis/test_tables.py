"""Paper tables from a results database the test builds: dev-selected hyperparameters and mean ± std equal a
hand computation; Markdown, LaTeX and CSV agree; reference rows; plots are PNG files; scripts/table.py."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from adapt.analysis import results, tables
from adapt.core.errors import AdaptError
from adapt.study import runner, sweeps
from adapt.study.sweeps import grid, product

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# (condition, benchmark, learning rate) -> (dev accuracy per seed 0..2, test accuracy per seed 0..2)
DATA = {
    ("A", "X", 1e-5): ([.80, .82, .81], [.75, .77, .76]),
    ("A", "X", 3e-5): ([.85, .84, .83], [.70, .74, .72]),  # dev mean .84 > .81: selected; test 72.0 ± 2.0
    ("A", "Y", 1e-5): ([.60, .62, .64], [.58, .60, .62]),  # dev .62 > .61: selected; test 60.0 ± 2.0
    ("A", "Y", 3e-5): ([.61, .61, .61], [.90, .90, .90]),  # the better test number is not the one selected
    ("B", "X", 1e-5): ([.86, .86, .86], [.80, .81, .82]),  # selected; 81.0 ± 1.0
    ("B", "X", 3e-5): ([.50, .50, .50], [.99, .99, .99]),
    ("B", "Y", 1e-5): ([.70, .70, .70], [.50, .52, .54]),
    ("B", "Y", 3e-5): ([.71, .71, .71], [.55, .56, .57]),  # selected; 56.0 ± 1.0
}
SWEEP = product(grid("meta.condition", ["A", "B"]), grid("meta.benchmark", ["X", "Y"]),
                grid("optimizer.learning_rate", [1e-5, 3e-5]), grid("train.seed", [0, 1, 2])) + [
    {"meta.condition": "A", "meta.benchmark": "X", "optimizer.learning_rate": 1e-4, "train.seed": 0}]  # fails
REFERENCE = "name,X,Y\nPaper (reported),75.0 ± 0.5,58.2\n"


def make_db(tmp_path, accuracies=DATA, sweep=SWEEP, **config):
    """A results database of ``sweep``'s trials, finished with the (dev, test) ``accuracies`` of each seed (by
    condition, benchmark and learning rate; one not there fails); ``config``: more of the trials' base config."""
    trials = sweeps.expand(sweep)
    base = ml_collections.ConfigDict(dict(optimizer=dict(learning_rate=1e-3), train=dict(seed=0), init_from="",
                                          method=dict(name="full"), **config))
    out = results.ResultsDB(str(tmp_path / "results.db"))
    out.register("paper", trials, {t.id: sweeps.trial_config(base, t.overrides) for t in trials}, str(tmp_path))
    by_id = {t.id: t.overrides for t in trials}
    while (tid := out.claim(list(by_id), os.getpid())) is not None:
        ov = by_id[tid]
        key = (ov["meta.condition"], ov["meta.benchmark"], ov["optimizer.learning_rate"])
        if key not in accuracies:
            out.fail(tid, "TrainingError: loss is nan at step 3")
            continue
        (devs, tests), seed = accuracies[key], ov["train.seed"]
        curve = [(0, 2.0 + seed), (10, 1.0), (20, 0.5)] if seed else [(0, 2.0), (15, 0.8)]
        out.finish(tid, {s: {"accuracy": v[seed], "error": 1 - v[seed]} for s, v in (("dev", devs), ("test", tests))},
                   {"train/loss": curve})
    return out


@pytest.fixture
def db(tmp_path):
    return make_db(tmp_path)


def test_dev_selection_and_mean_std_match_a_hand_computation(db):
    table = tables.build(db.trials())
    assert table.rows == ["A", "B"] and table.columns == ["X", "Y"] and table.column_key == "meta.benchmark"
    expected = {("A", "X"): (3e-5, 0.72, 0.02), ("A", "Y"): (1e-5, 0.60, 0.02),
                ("B", "X"): (1e-5, 0.81, 0.01), ("B", "Y"): (3e-5, 0.56, 0.01)}
    for cell, (lr, mean, std) in expected.items():
        c = table.cells[cell]
        assert c.selected == {"optimizer.learning_rate": lr} and c.n == 3 and len(c.trials) == 3
        assert c.mean == pytest.approx(mean) and c.std == pytest.approx(std)
    assert table.cells["A", "X"].dev == pytest.approx(0.84)
    assert table.avg("A") == pytest.approx((0.72 + 0.60) / 2) and table.avg("B") == pytest.approx((0.81 + 0.56) / 2)


def _markdown_cells(md: str) -> dict:
    lines = [line for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for col, text in zip(header[1:], cells[1:]):
            out[cells[0], col] = (text.strip("*"), text.startswith("**"))
    return out


def _latex_cells(tex: str, columns) -> dict:
    out = {}
    for line in tex.splitlines():
        if line.endswith(r"\\") and " & " in line and not line.startswith("condition"):
            cells = [c.strip() for c in line[:-2].split(" & ")]
            for col, text in zip(columns, cells[1:]):
                bold = text.startswith(r"\textbf{")
                text = text[len(r"\textbf{"):-1] if bold else text
                out[cells[0], col] = (text.replace(r" $\pm$ ", " ± "), bold)
    return out


def test_markdown_latex_and_csv_agree(db, tmp_path):
    (tmp_path / "ref.csv").write_text(REFERENCE)
    table = tables.add_references(tables.build(db.trials()), str(tmp_path / "ref.csv"))
    md, tex, rows = tables.to_markdown(table), tables.to_latex(table), list(csv.DictReader(io.StringIO(
        tables.to_csv(table))))
    assert "| A | 72.0 ± 2.0 | **60.0 ± 2.0** | 66.0 |" in md
    assert "| B | **81.0 ± 1.0** | 56.0 ± 1.0 | **68.5** |" in md
    assert "| Paper (reported) | 75.0 ± 0.5 | 58.2 | 66.6 |" in md
    assert r"A & 72.0 $\pm$ 2.0 & \textbf{60.0 $\pm$ 2.0} & 66.0 \\" in tex
    md_cells, tex_cells = _markdown_cells(md), _latex_cells(tex, ["X", "Y", "Avg."])
    assert len(rows) == len(md_cells) == len(tex_cells) == 9
    for r in rows:
        text = f"{float(r['mean']):.1f}" + (f" ± {float(r['std']):.1f}" if r["std"] else "")
        bold = r["bold"] == "True"
        assert md_cells[r["row"], r["column"]] == (text, bold) == tex_cells[r["row"], r["column"]], r
    sel = {(r["row"], r["column"]): r["selected"] for r in rows}
    assert sel["A", "X"] == "optimizer.learning_rate=3e-05" and sel["B", "X"] == "optimizer.learning_rate=1e-05"
    ref = next(r for r in rows if r["row"] == "Paper (reported)" and r["column"] == "X")
    assert (ref["source"], float(ref["mean"]), float(ref["std"])) == ("reference", 75.0, 0.5)
    json_ref = tables.add_references(tables.build(db.trials()), {"Paper": {"X": [75.0, 0.5], "Y": 58.2}})
    assert "| Paper | 75.0 ± 0.5 | 58.2 | 66.6 |" in tables.to_markdown(json_ref)


def test_a_selection_at_the_edge_of_its_grid_is_told(db, tmp_path):
    """Row A's dev metric rises to the largest learning rate tried: told in the caption; row B's peaks inside: not.
    A 2-value grid's selection is always at an edge: told too."""
    data = {("A", "X", lr): ([d, d], [.7, .7]) for lr, d in ((1e-5, .60), (3e-5, .70), (1e-4, .80))}
    data |= {("B", "X", lr): ([d, d], [.7, .7]) for lr, d in ((1e-5, .60), (3e-5, .80), (1e-4, .70))}
    sweep = product(grid("meta.condition", ["A", "B"]), grid("meta.benchmark", ["X"]),
                    grid("optimizer.learning_rate", [1e-5, 3e-5, 1e-4]), grid("train.seed", [0, 1]))
    (tmp_path / "three").mkdir()
    table = tables.build(make_db(tmp_path / "three", data, sweep).trials())
    line = ("Edge of grid: A selected optimizer.learning_rate=0.0001, the largest tried (1e-05, 3e-05, 0.0001): "
            "the optimum may lie beyond.")
    assert tables.edges(table) == [line] and table.cells["B", "X"].selected == {"optimizer.learning_rate": 3e-5}
    assert line in tables.to_markdown(table) and line.replace("_", r"\_") in tables.to_latex(table)
    two = tables.edges(tables.build(db.trials()))  # one line per cell, naming the column when there are several
    assert len(two) == 4 and "Edge of grid: A on Y selected optimizer.learning_rate=1e-05, the smallest tried " \
        "(1e-05, 3e-05): the optimum may lie beyond." in two


def test_other_rows_keys_and_lower_is_better(db):
    trials = db.trials()
    assert {tables.value(t, "init") for t in trials} == {"none"} and tables.value(trials[0], "stage") == "main"
    table = tables.build(trials, rows=("condition", "optimizer.learning_rate"), column="meta.benchmark")
    assert table.rows == ["A / 1e-05", "A / 3e-05", "B / 1e-05", "B / 3e-05"]
    assert table.cells["A / 3e-05", "Y"].mean == pytest.approx(0.90)
    low = tables.build(trials, lower=True)  # the lowest mean dev number is selected
    assert low.cells["A", "X"].selected == {"optimizer.learning_rate": 1e-5}
    with pytest.raises(AdaptError, match="closest: meta.benchmark"):
        tables.build(trials, column="meta.benchmrk")
    with pytest.raises(AdaptError, match="closest: dev/accuracy"):
        tables.build(trials, metric="acuracy")


def test_a_metric_per_column(db):
    """Column Y reports the error (lower is better): the same groups are selected, its best is the lowest."""
    table = tables.build(db.trials(), metric={"Y": "error", "*": "accuracy"})
    assert table.cells["A", "Y"].mean == pytest.approx(0.40) and table.cells["B", "Y"].mean == pytest.approx(0.44)
    assert table.cells["B", "Y"].selected == {"optimizer.learning_rate": 3e-5}
    assert table.cells["A", "X"].mean == pytest.approx(0.72)
    md = tables.to_markdown(table)
    assert "| A | 72.0 ± 2.0 | **40.0 ± 2.0** |" in md and "| B | **81.0 ± 1.0** | 44.0 ± 1.0 |" in md
    assert "accuracy for X, error for Y" in md
    with pytest.raises(AdaptError, match="no metric for column 'X'"):
        tables.build(db.trials(), metric={"Y": "error"})
    pretraining = {**db.trials()[0], "id": "p", "overrides": {"train.steps": 5}, "metrics": {"dev": {"loss": 2.0}}}
    with_it = tables.build(db.trials() + [pretraining], metric={"X": "accuracy", "Y": "error"})  # no column, no metric
    assert with_it.columns == ["X", "Y"] and with_it.cells == tables.build(db.trials(), metric={
        "X": "accuracy", "Y": "error"}).cells


def test_plots_are_png_files(db, tmp_path):
    table = tables.build(db.trials())
    curves = tables.plot_curves(table, db, "train/loss", str(tmp_path / "plots" / "curves.png"))
    vs = tables.plot_sweep(table, db.trials(), "optimizer.learning_rate", str(tmp_path / "plots" / "lr.png"))
    for path in (curves, vs):
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(AdaptError, match="closest: train/loss"):
        tables.plot_curves(table, db, "train/los", str(tmp_path / "x.png"))


def test_metrics_jsonl_is_read_like_a_resumed_run(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"step": 10, "train/loss": 2.0}, {"step": 20, "train/loss": 1.5, "dev/accuracy": 0.5},
        {"step": 20, "train/loss": 1.4}, {"step": 30, "train/loss": 1.6}]) + '\n{"step": 40, "train/lo')
    assert results.read_metrics_jsonl(str(path)) == {
        "train/loss": [(10, 2.0), (20, 1.4), (30, 1.6)], "dev/accuracy": [(20, 0.5)]}


def test_table_command_line(db, tmp_path):
    (tmp_path / "ref.csv").write_text(REFERENCE)
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "table.py"), f"--db={db.path}", "--out", str(tmp_path / "t"),
           "--reference", str(tmp_path / "ref.csv"), "--curves", "train/loss", "--vs", "optimizer.learning_rate"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "| B | **81.0 ± 1.0** | 56.0 ± 1.0 | **68.5** |" in out.stdout
    assert "warning: Edge of grid: A on X selected optimizer.learning_rate=3e-05, the largest tried" in out.stderr
    for name in ("t.md", "t.tex", "t.csv", "t_curves_train_loss.png", "t_vs_optimizer.learning_rate.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "t.md").read_text() == tables.to_markdown(
        tables.add_references(tables.build(db.trials()), str(tmp_path / "ref.csv")))
    out = subprocess.run(cmd[:3] + ["--metric", "accuracy,Y=error"], capture_output=True, text=True, check=False)
    assert "| A | 72.0 ± 2.0 | **40.0 ± 2.0** |" in out.stdout, out.stderr
    out = subprocess.run(cmd[:3] + ["--metric", "f1"], capture_output=True, text=True, check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and re.search(r"metric dev/f1", out.stderr)
    out = subprocess.run(cmd[:2] + ["--db", str(tmp_path / "nope.db")], capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "no results database" in out.stderr
    out = subprocess.run(cmd[:3] + ["--compare", "A"], capture_output=True, text=True, check=False)
    assert out.returncode == 2 and out.stderr == "error: --compare 'A': expected 'row A|row B'\n", out.stderr


def test_a_staged_sweep_end_to_end(tmp_path):
    """Pretraining per domain, fine-tuning from it and from scratch: rows by where a trial started from."""
    from test_sweeps import base_config, fake_trial

    domains = grid("meta.domain", ["bio", "cs"])
    tune = product(grid("optimizer.learning_rate", [1e-3, 2e-3]), grid("train.seed", [0, 1]))
    sweep = [sweeps.stage("pretrain", domains), sweeps.stage("finetune", tune, after="pretrain", match=["meta.domain"]),
             sweeps.stage("scratch", domains, tune)]
    assert runner.run_sweep(base_config(tmp_path), sweep, str(tmp_path / "runs"), trial_fn=fake_trial,
                            progress=False) == {"done": 18}
    db = results.ResultsDB(str(tmp_path / "runs" / "results.db"))
    trials = [t for t in db.trials() if t["stage"] != "pretrain"]
    table = tables.build(trials, rows=("init",), column="meta.domain")
    assert table.rows == ["pretrain", "none"] and table.columns == ["bio", "cs"]
    cell = table.cells["pretrain", "bio"]  # fake accuracy: 0.5 + 100 lr + 0.01 seed; test = dev - 0.05
    assert cell.selected == {"optimizer.learning_rate": 2e-3} and cell.mean == pytest.approx(0.7 + 0.005 - 0.05)
    assert cell.std == pytest.approx(0.01 / 2 ** 0.5)


def test_a_file_that_is_not_a_results_database_is_one_error_and_stays_as_it_was(tmp_path):
    path = tmp_path / "results.db"
    path.write_text("not a database\n" * 200)
    with pytest.raises(AdaptError, match=r"results.db: not a results database"):
        results.ResultsDB(str(path))
    assert path.read_text() == "not a database\n" * 200
