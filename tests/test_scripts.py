"""The entry points run as a user runs them: bad input exits non-zero with one line."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_demo_with_a_missing_model_exits_with_one_line():
    result = _run("scripts/demo.py", "--encoder", "/nonexistent/encoder")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: /nonexistent/encoder: no such model folder (expected a folder with config.json and weights, "
        "a .gguf file, a Hub id or one of bundled:minilm-l6, bundled:smollm2-135m)"]


# The main job's venv has no PyTorch (it is a test extra): hide it, as that venv would.
WITHOUT_TORCH = "import sys, runpy; sys.modules['torch'] = None; sys.argv = {argv!r}; runpy.run_path({argv[0]!r}, run_name='__main__')"


@pytest.mark.slow
def test_demo_runs_on_the_bundled_models_without_torch():
    result = _run("-c", WITHOUT_TORCH.format(argv=["scripts/demo.py"]))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    sims = [float(line.split()[0]) for line in lines if line.startswith("  ")]
    assert sims[0] > 0.5 and max(sims[1:]) < 0.2  # related pair close, unrelated pair far
    assert "Paris" in result.stdout
