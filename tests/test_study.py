"""The main job's pipeline on a shrunken setting: TAPT, then baseline and TAPT fine-tunes (full and LoRA) over
seeds, run by scripts/study.py; ends with the table and the plot files, and a re-run skips every trial."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_main_job_pipeline_produces_the_table_and_plots(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "scripts", "study.py"), "--config=experiments/bbc_tapt/config.py:smoke",
               f"--workdir={tmp_path}", f"--config.data.cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device, as the README's command runs
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    table = (tmp_path / "results" / "table.md").read_text()
    for row in ("Baseline", "TAPT"):
        assert row in table
    assert "±" in table and "**" in table  # one benchmark column: no "Avg." column
    for name in ("table.tex", "table.csv", "table_curves_train_loss.png", "table_vs_optimizer.learning_rate.png"):
        assert (tmp_path / "results" / name).stat().st_size > 0, name
    assert "9 trials (9 done)" in out.stdout
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "9 trials (9 done)" in again.stdout
