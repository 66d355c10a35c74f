"""The hermetic guards (tests/hermetic/hermetic_guard.py): each test runs with an empty data folder, home and caches
of its own; a socket outside loopback, a DNS lookup of another host and a file opened outside the repository, the
installed packages and the temp folder are refused and logged, in the pytest process and in those it starts."""

import os
import socket
import subprocess
import sys
import tempfile

import pytest
from hermetic_guard import REPO, HermeticError, take_violations

from adapt.data import catalog
from adapt.data.pipeline import data_defaults

OUTSIDE = os.path.join(os.path.dirname(REPO), "no-such-file")  # beside the repository, where a developer keeps data
# TEST-NET-1 (RFC 5737): never routed, so a broken guard fails the test by timing out, not by reaching a host
REMOTE = ("192.0.2.1", 80)


def test_the_run_has_an_empty_data_folder_home_and_caches():
    root = os.environ["ADAPT_HERMETIC_ROOT"]
    assert tempfile.gettempdir() == os.path.join(root, "tmp")  # a repository in the system's temp folder stays alone
    for name in ("ADAPT_DATA_DIR", "HOME", "XDG_CACHE_HOME", "HF_HOME"):
        assert os.environ[name].startswith(root + os.sep), name
    assert os.listdir(os.environ["ADAPT_DATA_DIR"]) == []
    assert os.path.expanduser("~") == os.environ["HOME"]
    assert data_defaults().cache_dir.startswith(root + os.sep) and catalog.data_dir().startswith(root + os.sep)


@pytest.mark.parametrize("reach", [
    lambda: socket.create_connection(REMOTE, timeout=5),
    lambda: socket.socket().connect_ex(REMOTE),
    lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", REMOTE),
    lambda: socket.getaddrinfo("example.com", 443),
    lambda: open(OUTSIDE),
], ids=["connect", "connect_ex", "sendto", "dns", "open"])
def test_reaching_outside_is_refused_and_logged(reach):
    with pytest.raises(HermeticError, match="hermetic tests: "):
        reach()
    assert len(take_violations()) == 1


@pytest.mark.slow
def test_a_caught_refusal_still_fails_the_test(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_swallows.py").write_text(f"""
def test_swallows():
    try:
        open({OUTSIDE!r})
    except Exception:
        pass
""")
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ["PYTHONPATH"]])}
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q",
                          f"--rootdir={tmp_path}", str(tmp_path / "test_swallows.py")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "not hermetic: " in out.stdout, out.stdout
    assert "no-such-file was opened" in out.stdout
    assert take_violations() == []  # the pytest it started had its own log


def test_cloud_metadata_probes_fail_as_offline_and_are_not_counted():
    with pytest.raises(OSError):
        socket.create_connection(("169.254.169.254", 80), timeout=5)
    with pytest.raises(OSError):
        socket.getaddrinfo("metadata.google.internal", 80)
    assert take_violations() == []


def test_loopback_and_unix_sockets_work(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname(), timeout=5):
            server.accept()[0].close()
    assert socket.getaddrinfo("localhost", 80)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "s"))
        server.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(tmp_path / "s"))
    assert take_violations() == []


def test_processes_a_test_starts_have_the_guards():
    code = f"import socket; socket.create_connection({REMOTE!r}, timeout=5)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "HermeticError" in out.stderr and "network access outside loopback" in out.stderr
    assert len(take_violations()) == 1
    out = subprocess.run([sys.executable, "-c", f"open({OUTSIDE!r})"], capture_output=True, text=True, timeout=60)
    assert "HermeticError" in out.stderr and len(take_violations()) == 1
