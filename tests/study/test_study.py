"""The main job's pipeline on a shrunken setting: TAPT on the unlabelled pool, then baseline and TAPT-initialised
LoRA fine-tunes on 80 labelled articles over seeds, and the full-data ceiling, run by scripts/study.py; the run
folders hold what a trial writes, the study ends with the table and the plot files, and a re-run skips every
trial."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
@pytest.mark.ci
def test_main_job_pipeline_produces_the_table_and_plots(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "scripts", "study.py"),
               "--config=experiments/bbc_tapt/config.py:smoke",
               f"--workdir={tmp_path}", f"--config.data.cache_dir={tmp_path / 'cache'}",
               "--pack=2"]  # each stage's two seeds train as one population (adapt.study.populations)
    # as the README's command runs: one CPU device, XLA's optimisations on (the suite's flags for compiling its tiny
    # programs fast cost this real model's evaluations more than they save); a Python warning is an error: the main
    # job prints none
    env = {k: v for k, v in os.environ.items() if k != "JAX_DISABLE_MOST_OPTIMIZATIONS"}
    env.update(XLA_FLAGS="", PYTHONWARNINGS="error")
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Warning" not in out.stderr and "Warning" not in out.stdout
    table = (tmp_path / "results" / "table.md").read_text()
    for row in ("Baseline", "TAPT"):
        assert row in table
    # columns: 16 labelled articles per class, and all of them (the 2-step ceiling row); no "Avg." of the two
    assert table.startswith("| meta.condition / meta.method | 16 per class | all |") and "Avg." not in table
    # the reference baselines fit on each column's labelled articles, with their interval over test examples
    # (TF-IDF + LR: 92.4% on 80 articles, 96.9% on all 1,780)
    number = r"\d+\.\d \[\d+\.\d, \d+\.\d\]"
    assert re.search(rf"^\| Majority class \| {number} \| {number} \|$", table, re.M), table
    assert re.search(r"^\| TF-IDF \+ LR \| 92\.4 \[\d+\.\d, \d+\.\d\] \| 96\.9 \[\d+\.\d, \d+\.\d\] \|$", table,
                     re.M), table
    # 95% intervals on our rows (from each trial's test predictions), and the TAPT-vs-Baseline comparison
    assert re.search(r"^\| TAPT / lora \| \d+\.\d ± \d+\.\d \[\d+\.\d, \d+\.\d\] \| – \|$", table, re.M), table
    assert re.search(rf"^\| Baseline / full \| – \| \*\*{number}\*\* \|$", table, re.M), table  # the ceiling
    assert ("| TAPT / lora | Baseline / lora | 16 per class |"
            in (tmp_path / "results" / "table_comparisons.md").read_text())
    for name in ("table.tex", "table.csv", "table_curves_train_loss.png", "table_vs_optimizer.learning_rate.png"):
        assert (tmp_path / "results" / name).stat().st_size > 0, name
    assert "6 trials (6 done)" in out.stdout
    assert len(glob.glob(str(tmp_path / "tapt" / "*" / "export" / "model.safetensors"))) == 1
    # MiniLM ships without its MLM head: said once, as a fact, in the TAPT run's log (not as a warning)
    (log,) = glob.glob(str(tmp_path / "tapt" / "*" / "log.txt"))
    assert ("initialised fresh (no pretrained weights from bundled:minilm-l6): cls; trained with the rest"
            in open(log).read())
    runs = sorted(glob.glob(str(tmp_path / "tapt_finetune" / "*")))
    assert len(runs) == 2  # two seeds, each from the TAPT export
    for run in runs:
        config = json.load(open(os.path.join(run, "config.json")))
        assert config["method"]["name"] == "lora"
        assert os.path.relpath(config["init_from"], tmp_path).startswith("tapt/")
        result = json.load(open(os.path.join(run, "results.json")))
        assert set(result) == {"dev", "test", "data_files"} and result["test"]["count"] == 223  # 10% of 2,225
        source = result["data_files"]["data"]["source"]  # the BBC folder the trial read, and its digest
        assert source["path"].endswith(os.path.join("bbcnews", "data")) and len(source["sha256"]) == 64
        assert json.load(open(os.path.join(run, "labels.json"))) == [
            "business", "entertainment", "politics", "sports", "tech"]

    # scripts/eval.py and scripts/export.py on a finished trial's run folder
    def script(name, *args):
        return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), f"--workdir={runs[0]}", *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    out = script("eval.py", "--split=test", "--config.eval.batch_size=32")
    assert out.returncode == 0, out.stderr[-2000:]
    evaluated = json.loads(out.stdout)
    assert list(evaluated) == ["test"]
    evaluated, saved = evaluated["test"], json.load(open(os.path.join(runs[0], "results.json")))["test"]
    assert evaluated.pop("confusion") == saved.pop("confusion")  # from predictions/test.jsonl
    per_class = evaluated.pop("per_class")
    assert all(per_class[c] == pytest.approx(m) for c, m in saved.pop("per_class").items())
    assert evaluated == pytest.approx(saved, abs=1e-6)  # other batches, same numbers
    out = script("export.py", f"--out={tmp_path / 'adapter'}", "--peft")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.load(open(tmp_path / "adapter" / "adapter_config.json"))["peft_type"] == "LORA"
    out = script("export.py", f"--out={tmp_path / 'merged'}")
    assert out.returncode == 0 and (tmp_path / "merged" / "model.safetensors").stat().st_size > 0, out.stderr[-2000:]
    out = script("eval.py", "--split=train2")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "no split train2" in out.stderr
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "eval.py"), f"--workdir={tmp_path}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "no config.json" in out.stderr
