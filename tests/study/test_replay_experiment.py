"""The replay experiment's pipeline on its smoke setting (experiments/replay_forgetting): continued causal-LM
pretraining on BC5CDR's abstracts (the synthetic stand-ins in tests/fixtures/data) with BBC News replayed at 25%,
full and LoRA, run by scripts/study.py on a small random Llama with SmolLM2's tokenizer (the bundled model's own
run is the README's); every trial has its
sets before and after and its sources' token shares, and the study ends with the forgetting report and the Pareto
plot."""

import glob
import json
import os
import subprocess
import sys

import pytest
from conftest import XLA_TEST_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_replay_smoke_produces_the_forgetting_table_and_pareto_plot(tmp_path, smollm2_stand_in, benchmark_data):
    command = [sys.executable, os.path.join(ROOT, "scripts", "study.py"),
               "--config=experiments/replay_forgetting/config.py:smoke", f"--workdir={tmp_path / 'runs'}",
               f"--config.model.name={smollm2_stand_in}", f"--config.data.cache_dir={tmp_path / 'cache'}"]
    out = subprocess.run(command, cwd=ROOT, env={**os.environ, "XLA_FLAGS": XLA_TEST_FLAGS},
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 trials (2 done)" in out.stdout
    results = tmp_path / "runs" / "results"
    report = (results / "table_forgetting.md").read_text()
    for row in ("full / 25%", "lora / 25%"):
        assert f"| {row} |" in report, report
    assert "domain ppl before" in report and "forgetting" in report
    assert (results / "table_pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for run in glob.glob(str(tmp_path / "runs" / "*" / "*" / "results.json")):
        saved = json.load(open(run))
        config = json.load(open(os.path.join(os.path.dirname(run), "config.json")))
        for name in ("domain", "general"):
            assert saved["start"][name]["loss"] > 0 and saved["dev"][name]["loss"] > 0
        assert saved["start"]["domain"]["count"] == saved["dev"]["domain"]["count"] > 0  # the same held-out tokens
        shares = saved["mixture"]
        assert shares["domain"]["share"] + shares["general"]["share"] == pytest.approx(1.0)
        assert config["data"]["mixture"]["general"]["weight"] == 0.25  # (a weight of 0 gives 0 tokens: test_mixture)
        logged = [json.loads(line) for line in open(os.path.join(os.path.dirname(run), "metrics.jsonl"))]
        assert logged[-1]["dev/general/loss"] == saved["dev"]["general"]["loss"]
        last = [r for r in logged if "train/share/general" in r][-1]  # the shares, logged as they accrue
        assert last["train/share/general"] == pytest.approx(shares["general"]["share"])
