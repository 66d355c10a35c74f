"""The Don't Stop Pretraining task files: the local folder first, then the cache, then a checksummed download
(here from a local HTTP server standing in for the published location)."""

import functools
import hashlib
import http.server
import os
import socket
import threading

import pytest

from adapt import benchmarks
from adapt.errors import ConfigError

SPLITS = ("train", "dev", "test")


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves fake chemprot files; yields the list of requested paths. The data folder and cache are empty."""
    served = tmp_path / "served"
    table = {}
    for split in SPLITS:
        body = f'{{"text": "a {split} sentence", "label": "X", "metadata": []}}\n'.encode()
        (served / "chemprot").mkdir(parents=True, exist_ok=True)
        (served / "chemprot" / f"{split}.jsonl").write_bytes(body)
        table[split] = hashlib.sha256(body).hexdigest()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("ADAPT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(benchmarks, "CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(benchmarks, "URL", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setattr(benchmarks, "SHA256", {"chemprot": table})
    yield requests
    httpd.shutdown()
    httpd.server_close()


def cached_files(tmp_path):
    return sorted(os.path.relpath(os.path.join(r, f), tmp_path / "cache")
                  for r, _, fs in os.walk(tmp_path / "cache") for f in fs)


def test_downloads_into_the_cache_once(server, tmp_path):
    files = benchmarks.BENCHMARKS["chemprot"][0]()["files"]
    assert files == {s: str(tmp_path / "cache" / "chemprot" / f"{s}.jsonl") for s in SPLITS}
    assert b"a dev sentence" in open(files["dev"], "rb").read()
    assert sorted(server) == sorted(f"/chemprot/{s}.jsonl" for s in SPLITS)
    assert cached_files(tmp_path) == [f"chemprot/{s}.jsonl" for s in sorted(SPLITS)]  # no temporary files
    assert benchmarks.BENCHMARKS["chemprot"][0]()["files"] == files
    assert len(server) == 3  # the second resolution read the cache


def test_wrong_checksum_keeps_nothing(server, tmp_path, monkeypatch):
    monkeypatch.setitem(benchmarks.SHA256["chemprot"], "train", "0" * 64)
    with pytest.raises(ConfigError) as e:
        benchmarks.BENCHMARKS["chemprot"][0]()
    message = str(e.value)
    assert "\n" not in message and f"{benchmarks.URL}/chemprot/train.jsonl" in message and "0" * 64 in message
    assert cached_files(tmp_path) == []


def test_unreachable_server_names_task_and_folder(server, tmp_path, monkeypatch):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(benchmarks, "URL", f"http://127.0.0.1:{port}")
    with pytest.raises(ConfigError) as e:
        benchmarks.BENCHMARKS["chemprot"][0]()
    message = str(e.value)
    local = os.path.join(str(tmp_path / "data"), "scibert", "chemprot")
    assert "\n" not in message and "chemprot" in message and local in message and "ADAPT_DATA_DIR" in message
    assert cached_files(tmp_path) == [] and server == []


def test_local_folder_is_used_without_fetching(server, tmp_path):
    local = tmp_path / "data" / "scibert" / "sciie-relation-extraction"
    local.mkdir(parents=True)
    for split in SPLITS:
        (local / f"{split}.jsonl").write_text("my own copy\n")  # not checksummed
    files = benchmarks.BENCHMARKS["sciie"][0]()["files"]
    assert files == {s: str(local / f"{s}.jsonl") for s in SPLITS}
    assert server == [] and not os.path.exists(tmp_path / "cache")
