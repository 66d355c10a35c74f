"""Supervised fine-tuning judged by generation: the headline experiment's smoke setting runs end to end through
scripts/study.py (prompted zero- and few-shot rows, SFT full and LoRA, on a stand-in for SmolLM2 with its
tokenizer) and ends with its table: ROUGE-L with intervals, the Lead-N floor, the comparisons, and each trial's
generated answers saved."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import XLA_TEST_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_headline_smoke_study_produces_its_table(tmp_path, smollm2_stand_in):
    command = [sys.executable, os.path.join(ROOT, "scripts", "study.py"),
               "--config=experiments/bbc_headlines/config.py:smoke", f"--workdir={tmp_path}",
               f"--config.model.name={smollm2_stand_in}", f"--config.data.cache_dir={tmp_path / 'cache'}"]
    out = subprocess.run(command, cwd=ROOT, env={**os.environ, "XLA_FLAGS": XLA_TEST_FLAGS},
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    table = (tmp_path / "results" / "table.md").read_text()
    cell = r"\d+\.\d( ± \d+\.\d)? \[\d+\.\d, \d+\.\d\]"
    for row in ("Prompted, zero-shot", "Prompted, 3-shot", "SFT / full", "SFT / LoRA", "Lead-N"):
        assert re.search(rf"^\| {re.escape(row)} \| \**{cell}\** \|$", table, re.M), (row, table)
    comparisons = (tmp_path / "results" / "table_comparisons.md").read_text()
    assert "| SFT / full | Prompted, 3-shot |" in comparisons and "| SFT / LoRA | SFT / full |" in comparisons
    for stage, n in (("prompted", 2), ("sft", 2)):
        runs = sorted((tmp_path / stage).iterdir())
        assert len(runs) == n
        for run in runs:
            result = json.loads((run / "results.json").read_text())
            assert {"rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match", "loss"} <= set(result["test"])
            rows = [json.loads(line) for line in (run / "predictions" / "test.jsonl").read_text().splitlines()]
            assert len(rows) == 4 and all(set(r) == {"index", "prompt", "gold", "prediction"} for r in rows)
            assert rows[0]["prompt"].startswith("Write a headline for this news story.")
    shots = sorted(json.loads((run / "config.json").read_text())["generation"]["shots"]
                   for run in (tmp_path / "prompted").iterdir())
    assert shots == [0, 3]


@pytest.mark.parametrize("key, value, message", [
    ("top_p", 1.5, "generation.top_p=1.5: expected a number in (0, 1]"),
    ("temperature", -1.0, "generation.temperature=-1.0: expected a number >= 0"),
    ("shots", -2, "generation.shots=-2: expected an integer >= 0"),
    ("examples", {"dev": -1}, "generation.examples.dev=-1: expected an integer >= 0 (0: all)"),
])
def test_bad_generation_settings_are_one_line_naming_the_key(key, value, message):
    from adapt.core.errors import ConfigError
    from adapt.evaluation.generation import generation_config
    from adapt.experiment import base_config

    c = base_config()
    c.generation.max_new_tokens = 8
    c.generation[key] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
        generation_config(c.generation)
