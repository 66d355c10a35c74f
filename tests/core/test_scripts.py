"""The entry points run as a user runs them: bad input exits non-zero with one line."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def _tree(folder) -> dict:
    """Every file under ``folder`` with its bytes."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


@pytest.mark.parametrize("argv, flag", [
    (["scripts/train.py", "--config=configs/finetune.py:bbc", "--workdir={file}"], "--workdir"),
    (["scripts/sweep.py", "--config=configs/finetune.py:bbc", "--workdir={file}"], "--workdir"),
    (["scripts/sweep.py", "--config=configs/finetune.py:bbc", "--workdir={tmp}/runs", "--db={file}/results.db"],
     "--db"),
    (["scripts/study.py", "--config=experiments/bbc_tapt/config.py", "--workdir={file}"], "--workdir"),
    (["scripts/export.py", "--workdir={tmp}/run", "--out={file}"], "--out"),
    (["scripts/table.py", "--db={tmp}/results.db", "--out={file}/table"], "--out"),
])
def test_an_output_path_that_is_a_file_exits_with_one_line(tmp_path, argv, flag):
    file = tmp_path / "notes.txt"
    file.write_text("the user's notes")
    result = _run(*(a.format(file=file, tmp=tmp_path) for a in argv))
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {flag}=") and str(file) in line and "is a file; expected a folder" in line, line
    assert _tree(tmp_path) == {"notes.txt": b"the user's notes"}  # nothing written, nothing moved


def test_eval_of_a_workdir_that_is_a_file_exits_with_one_line(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("the user's notes")
    result = _run("scripts/eval.py", f"--workdir={file}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {file}: no config.json; expected a run folder (the --workdir of scripts/train.py)"]
    assert _tree(tmp_path) == {"notes.txt": b"the user's notes"}


CONFIG = """
from adapt.experiment import base_config


def get_config(arg=None):
    c = base_config()
    c.data.files = {{"train": {train!r}}}
    c.data.update(format="classification", cache_dir="", max_length=16)
    c.train.update(batch_size=8, steps=1)  # the 8 test devices divide it (checked before the data is read)
    return c
"""


# One reader through the script as a user runs it; test_data.py checks every reader's errors in-process.
@pytest.mark.parametrize("name, text, error", [
    ("train.jsonl", '{{"text": "fine", "label": "A"}}\n\n{{"text": null, "label": "B"}}\n',
     "{path}: line 3: field 'text' is null; expected a string"),
])
def test_train_on_a_row_without_text_exits_with_one_line(tmp_path, name, text, error):
    data = tmp_path / name
    data.write_text(text.format())
    config = tmp_path / "config.py"
    config.write_text(CONFIG.format(train=str(data)))
    workdir = tmp_path / "run"
    result = _run("scripts/train.py", f"--config={config}", f"--workdir={workdir}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1:] == ["error: " + error.format(path=data)], result.stderr
    assert ([line for line in result.stderr.splitlines() if line.startswith("error")]
            == ["error: " + error.format(path=data)])
    # The run folder holds the resolved config (written before the data is read) and nothing else.
    assert list(_tree(workdir)) == ["config.json"] and json.loads((workdir / "config.json").read_text())["data"]


def test_demo_with_a_missing_model_exits_with_one_line():
    result = _run("scripts/demo.py", "--encoder", "/nonexistent/encoder")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: /nonexistent/encoder: no such model folder (expected a folder with config.json and weights, "
        "a .gguf file, a Hub id or one of bundled:minilm-l6, bundled:smollm2-135m)"]


# The main job's venv has no PyTorch (it is a test extra): hide it, as that venv would.
WITHOUT_TORCH = ("import sys, runpy; sys.modules['torch'] = None; sys.argv = {argv!r}; "
                 "runpy.run_path({argv[0]!r}, run_name='__main__')")


@pytest.mark.slow
def test_demo_runs_on_the_bundled_models_without_torch():
    result = _run("-c", WITHOUT_TORCH.format(argv=["scripts/demo.py"]))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    sims = [float(line.split()[0]) for line in lines if line.startswith("  ")]
    assert sims[0] > 0.5 and max(sims[1:]) < 0.2  # related pair close, unrelated pair far
    assert "Paris" in result.stdout
