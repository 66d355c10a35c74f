"""The one atomic writer: a write that fails half-way leaves the earlier file (or folder) as it was and no
temporary file behind; output folders the user names are checked before anything is written."""

import json
import os

import pytest

from adapt.core.errors import ConfigError
from adapt.core.files import output_files, output_folder, write_atomic, write_folder, write_json


class Crash(Exception):
    pass


def _half_then_crash(f):
    f.write(b"half of the new")
    raise Crash


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "weights.bin"
    write_atomic(str(path), lambda f: f.write(b"old contents"))
    with pytest.raises(Crash):
        write_atomic(str(path), _half_then_crash)
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["weights.bin"]  # no temporary file left behind
    write_json(str(path), {"a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    assert os.listdir(tmp_path) == ["weights.bin"]


def test_write_atomic_gives_the_umask_permissions(tmp_path):
    path = tmp_path / "config.json"
    write_json(str(path), {})
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_write_folder_replaces_whole_or_not_at_all(tmp_path):
    def two_files(folder):
        for name in ("a.txt", "b.txt"):
            with open(os.path.join(folder, name), "w") as f:
                f.write(name)

    def one_file_then_crash(folder):
        with open(os.path.join(folder, "a.txt"), "w") as f:
            f.write("new")
        raise Crash

    target = tmp_path / "export"
    assert write_folder(str(target), two_files) == str(target)
    with pytest.raises(Crash):
        write_folder(str(target), one_file_then_crash)
    assert sorted(os.listdir(target)) == ["a.txt", "b.txt"] and (target / "a.txt").read_text() == "a.txt"
    assert os.listdir(tmp_path) == ["export"]  # no temporary folder left behind


def test_write_folder_never_replaces_a_file(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("the user's notes")
    with pytest.raises(ConfigError, match=r"folder=.*notes.txt: is a file; expected a folder"):
        write_folder(str(target), lambda folder: None)
    assert target.read_text() == "the user's notes" and os.listdir(tmp_path) == ["notes.txt"]


def test_output_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    assert output_folder(str(tmp_path), "--workdir") == str(tmp_path)
    assert output_folder(str(tmp_path / "new" / "run"), "--workdir") == str(tmp_path / "new" / "run")
    with pytest.raises(ConfigError, match=r"^--workdir=.*/file: is a file; expected a folder"):
        output_folder(str(tmp_path / "file"), "--workdir")
    with pytest.raises(ConfigError, match=r"^--out=.*/file/run: .*/file is a file; expected a folder$"):
        output_folder(str(tmp_path / "file" / "run"), "--out")
    assert output_files(str(tmp_path / "new" / "table"), "--out") == str(tmp_path / "new" / "table")
    with pytest.raises(ConfigError, match=r"^--out=.*/file/table: .*/file is a file; expected a folder$"):
        output_files(str(tmp_path / "file" / "table"), "--out")
    assert sorted(os.listdir(tmp_path)) == ["file"]  # nothing created


def test_a_trial_in_a_workdir_that_is_a_file_is_a_config_error(tmp_path):
    from adapt.experiment import base_config, run_trial

    file = tmp_path / "notes.txt"
    file.write_text("the user's notes")
    with pytest.raises(ConfigError, match=r"^workdir=.*notes.txt: is a file; expected a folder"):
        run_trial(base_config(), str(file))
    assert file.read_text() == "the user's notes" and os.listdir(tmp_path) == ["notes.txt"]
