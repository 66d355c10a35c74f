"""The synthetic benchmark files in tests/fixtures/data: the package finds them where it looks for each benchmark,
its own readers parse them, every label (tag) is in train, and they are what tests/fixtures/make_data.py writes."""

import collections
import filecmp
import importlib.util
import os

import pytest
from conftest import FIXTURE_DATA

from adapt.data import catalog
from adapt.data.formats import read_conll
from adapt.data.sources import LABEL, TEXT, read_source

spec = importlib.util.spec_from_file_location("make_data", os.path.join(os.path.dirname(FIXTURE_DATA),
                                                                        "make_data.py"))
make_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_data)

LABELS = {"chemprot": make_data.CHEMPROT, "citation_intent": make_data.CITATION_INTENT, "sciie": make_data.SCIIE}


def files_under(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)


def test_the_fixtures_are_the_generators_output(tmp_path):
    make_data.main(str(tmp_path))
    assert files_under(FIXTURE_DATA) == files_under(tmp_path) and len(files_under(tmp_path)) == 12
    for name in files_under(tmp_path):
        assert filecmp.cmp(os.path.join(FIXTURE_DATA, name), tmp_path / name, shallow=False), name
    assert sum(os.path.getsize(os.path.join(FIXTURE_DATA, n)) for n in files_under(FIXTURE_DATA)) < 200_000  # small


@pytest.mark.parametrize("task", sorted(LABELS))
def test_classification_fixtures_parse_with_every_label_in_train(task, benchmark_data):
    files = catalog.get(task).locate()["files"]
    assert all(path.startswith(FIXTURE_DATA) for path in files.values())  # found locally, nothing downloaded
    rows = {s: read_source(p, fields={"text": TEXT, "label": LABEL}) for s, p in files.items()}
    counts = collections.Counter(r["label"] for r in rows["train"])
    assert set(counts) == set(LABELS[task])  # the benchmark's label names, all of them in train
    assert counts.most_common(1)[0][0] == next(iter(LABELS[task]))  # skewed toward the real most common label
    for split, examples in rows.items():
        assert len(examples) == make_data.ROWS[split]
        assert {r["label"] for r in examples} <= set(counts)
        for r in examples:
            assert r["text"].count("<<") == r["text"].count(">>") == (task != "citation_intent")
            if task == "sciie":  # metadata: the [[ ]] then << >> arguments' inclusive token spans, unmarked text
                words = [w for w in r["text"].split() if w not in ("[[", "]]", "<<", ">>")]
                first = r["text"].split("[[ ")[1].split(" ]]")[0]
                second = r["text"].split("<< ")[1].split(" >>")[0]
                a0, a1, b0, b1 = r["metadata"]
                assert (" ".join(words[a0:a1 + 1]), " ".join(words[b0:b1 + 1])) == (first, second)


def test_bc5cdr_fixture_parses_as_conll(benchmark_data):
    data = catalog.get("bc5cdr").locate()
    assert (catalog.get("bc5cdr").keys["format"] == "conll"
            and all(p.startswith(FIXTURE_DATA) for p in data["files"].values()))
    sentences = {s: read_conll(p) for s, p in data["files"].items()}
    train_tags = {t for _, tags in sentences["train"] for t in tags}
    assert train_tags == {"B-Entity", "I-Entity", "O"}
    for split, sents in sentences.items():
        assert len(sents) == make_data.ROWS[split]
        assert {t for _, tags in sents for t in tags} <= train_tags
        with open(data["files"][split], encoding="utf-8") as f:
            lines = f.read().splitlines()
        assert lines[0].startswith("-DOCSTART- (") and lines[1] == ""
        columns = [line.split("\t") for line in lines if line and not line.startswith("-DOCSTART-")]
        assert all(len(c) == 4 and c[2] == "O" for c in columns)  # token, POS, chunk (always O), tag
