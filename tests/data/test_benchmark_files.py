"""Benchmark files: found in the data folder, else downloaded into it and checked against their SHA-256 (here from
a local HTTP server standing in for the published location); resolving a config reads none of them."""

import dataclasses
import functools
import hashlib
import http.server
import os
import socket
import threading

import pytest

from adapt.core.errors import ConfigError
from adapt.data import catalog
from adapt.experiment import configs

SPLITS = ("train", "dev", "test")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves fake chemprot files in place of the published ones; yields the list of requested paths. The data
    folder is empty."""
    served = tmp_path / "served"
    (served / "chemprot").mkdir(parents=True)
    remotes = {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), None)
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    for split in SPLITS:
        body = f'{{"text": "a {split} sentence", "label": "X", "metadata": []}}\n'.encode()
        (served / "chemprot" / f"{split}.jsonl").write_bytes(body)
        remotes[split] = catalog.Remote(f"scibert/chemprot/{split}.jsonl", f"{url}/chemprot/{split}.jsonl",
                                           hashlib.sha256(body).hexdigest())
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd.RequestHandlerClass = functools.partial(Handler, directory=str(served))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("ADAPT_DATA_DIR", str(tmp_path / "data"))
    chemprot = dataclasses.replace(catalog.BENCHMARKS["chemprot"], files=remotes)
    monkeypatch.setitem(catalog.BENCHMARKS, "chemprot", chemprot)
    yield requests
    httpd.shutdown()
    httpd.server_close()


def data_files(tmp_path):
    return sorted(os.path.relpath(os.path.join(r, f), tmp_path / "data")
                  for r, _, fs in os.walk(tmp_path / "data") for f in fs)


def test_downloads_into_the_data_folder_once(server, tmp_path):
    files = catalog.get("chemprot").locate()["files"]
    assert files == {s: str(tmp_path / "data" / "scibert" / "chemprot" / f"{s}.jsonl") for s in SPLITS}
    assert b"a dev sentence" in open(files["dev"], "rb").read()
    assert sorted(server) == sorted(f"/chemprot/{s}.jsonl" for s in SPLITS)
    assert data_files(tmp_path) == [f"scibert/chemprot/{s}.jsonl" for s in sorted(SPLITS)]  # no temporary files
    assert catalog.get("chemprot").locate()["files"] == files
    assert len(server) == 3  # the second resolution read the folder


def test_resolving_a_config_reads_no_file_and_a_trial_locates_them(server, tmp_path):
    config = configs.load("configs/finetune.py:chemprot")
    assert server == [] and data_files(tmp_path) == []
    assert (config.data.benchmark, config.data.files.to_dict(), config.model.task) == (
        "chemprot", {}, "sequence_classification")
    config.data.files = {"test": "mine.jsonl"}  # a split of one's own replaces the benchmark's
    located = catalog.locate(config.data)
    assert located.files.test == "mine.jsonl" and located.files.train.endswith("scibert/chemprot/train.jsonl")
    assert located.benchmark == "" and len(server) == 3


def test_wrong_checksum_keeps_nothing(server, tmp_path, monkeypatch):
    b = catalog.BENCHMARKS["chemprot"]
    wrong = {**b.files, "train": dataclasses.replace(b.files["train"], sha256="0" * 64)}
    monkeypatch.setitem(catalog.BENCHMARKS, "chemprot", dataclasses.replace(b, files=wrong))
    with pytest.raises(ConfigError) as e:
        catalog.get("chemprot").locate()
    message = str(e.value)
    assert "\n" not in message and wrong["train"].url in message and "0" * 64 in message
    assert "scibert/chemprot/train.jsonl" not in data_files(tmp_path)


def test_unreachable_server_names_benchmark_and_folder(server, tmp_path, monkeypatch):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = catalog.BENCHMARKS["chemprot"]
    gone = {k: dataclasses.replace(r, url=f"http://127.0.0.1:{port}/{r.path}") for k, r in b.files.items()}
    monkeypatch.setitem(catalog.BENCHMARKS, "chemprot", dataclasses.replace(b, files=gone))
    with pytest.raises(ConfigError) as e:
        catalog.get("chemprot").locate()
    message = str(e.value)
    local = os.path.join(str(tmp_path / "data"), "scibert", "chemprot", "train.jsonl")
    assert "\n" not in message and "benchmark chemprot" in message and local in message
    assert "ADAPT_DATA_DIR" in message and "scripts/fetch_data.py" in message
    assert data_files(tmp_path) == [] and server == []


def test_a_file_in_the_data_folder_is_used_without_fetching(server, tmp_path):
    local = tmp_path / "data" / "scibert" / "sciie-relation-extraction"
    local.mkdir(parents=True)
    for split in SPLITS:
        (local / f"{split}.jsonl").write_text("my own copy\n")  # not checksummed
    files = catalog.get("sciie").locate()["files"]
    assert files == {s: str(local / f"{s}.jsonl") for s in SPLITS}
    assert server == []


def test_every_published_file_is_pinned():
    for b in catalog.BENCHMARKS.values():
        assert bool(b.files) != (b.find is not None), b.name  # published files, or a package's data
        for remote in b.files.values():
            assert len(remote.sha256) == 64 and remote.url.startswith("https://") and not os.path.isabs(remote.path)
        assert (b.train_size is not None) == bool(b.files), b.name


def test_the_data_folder_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("ADAPT_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert catalog.data_dir() == str(tmp_path / "xdg" / "adapt" / "data")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert catalog.data_dir() == str(tmp_path / "home" / ".cache" / "adapt" / "data")


def test_fetch_downloads_then_verifies_and_reports_a_differing_copy(server, tmp_path):
    assert [done for _, done in catalog.fetch("chemprot")] == ["downloaded, SHA-256 verified"] * 3
    assert [done for _, done in catalog.fetch("chemprot")] == ["present, SHA-256 verified"] * 3
    (tmp_path / "data" / "scibert" / "chemprot" / "dev.jsonl").write_text("edited\n")
    done = dict(catalog.fetch("chemprot"))
    assert done[str(tmp_path / "data" / "scibert" / "chemprot" / "dev.jsonl")].startswith("differs: SHA-256 ")
    assert (tmp_path / "data" / "scibert" / "chemprot" / "dev.jsonl").read_text() == "edited\n"  # left as it is
    assert len(server) == 3


def test_fetch_data_finds_what_an_experiment_reads():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fetch_data", os.path.join(ROOT, "scripts", "fetch_data.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.needed(os.path.join(ROOT, "experiments/multitask/config.py:smoke"), []) == [
        "chemprot", "citation_intent", "sciie", "bc5cdr"]
    assert script.needed(os.path.join(ROOT, "experiments/replay_forgetting/config.py:smoke"), []) == ["bc5cdr", "bbc"]
    assert script.needed(os.path.join(ROOT, "experiments/dont_stop_pretraining/config.py:cpu,mix"), []) == [
        "chemprot", "citation_intent", "sciie", "bbc"]
