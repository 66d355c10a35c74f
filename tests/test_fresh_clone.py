"""A fresh clone (issue 31): a copy of the repository's tracked files with no ``shared/`` beside it, an empty data
folder and an empty home resolves every experiment config, sweep and table layout (tests/config_cases.py), and
reads nothing outside the copy and the installed packages and downloads nothing while doing so (the hermetic
guards, which the copy's own tests/hermetic installs in that process)."""

import os
import shutil
import subprocess
import sys

import pytest
from hermetic_guard import LOG, environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESOLVE_ALL = """
import os
import adapt
from config_cases import CASES, IDS, resolve
assert adapt.__file__.startswith(os.getcwd() + os.sep), adapt.__file__  # the copy's package, not an installed one
failed = 0
for (path, arg), name in zip(CASES, IDS):
    try:
        resolve(path, arg)
    except Exception as e:
        failed += 1
        print(f"{name}: {type(e).__name__}: {e}")
print(f"{len(CASES) - failed} of {len(CASES)} resolved")
"""


def tracked_copy(folder) -> str:
    """The files ``git ls-files`` lists (what a clone has) as they are in the working tree, so edits not yet
    committed are tested too; untracked files are not copied (a clone would not have them)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = os.path.join(ROOT, name)
        if os.path.isfile(source):  # a tracked file deleted in the working tree is not there
            os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
            shutil.copy2(source, os.path.join(folder, name))
    return str(folder)


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, ".git")), reason="not a git checkout")
def test_a_fresh_clone_resolves_every_config_with_no_data_home_or_network(tmp_path):
    clone = tracked_copy(tmp_path / "clone")
    assert not os.path.exists(tmp_path / "shared")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPT_")}
    env.update(environment(str(tmp_path / "user")), PYTHONPATH=os.pathsep.join(
        os.path.join(clone, *p) for p in (("tests", "hermetic"), (), ("tests",))))
    env[LOG] = str(tmp_path / "violations.log")
    out = subprocess.run([sys.executable, "-c", RESOLVE_ALL], cwd=clone, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    failures = out.stdout.strip().splitlines()[:-1]
    refused = open(env[LOG]).read().splitlines() if os.path.exists(env[LOG]) else []  # caught ones too
    assert not failures and not refused, "\n".join(failures + ["refused: " + r for r in dict.fromkeys(refused)])
    assert os.listdir(env["ADAPT_DATA_DIR"]) == []
