"""Data quality checks (adapt/data/quality.py): planted exact duplicates, near duplicates (a few words changed) and
train->dev/test leaks are found with exact counts; "drop" removes them from train only; cleanlab finds a flipped
label on a separable set; bad settings are one-line errors; a trial stores its counts."""

import json
import os

import numpy as np
import pytest

from adapt.core.errors import ConfigError
from adapt.data import quality
from adapt.data.pipeline import data_defaults, prepare, raw_records, records

VOCAB = [f"w{i}" for i in range(3000)]


def _text(rng, n=150) -> list[str]:
    return list(rng.choice(VOCAB, n))


def _changed(words: list[str], rng) -> str:
    """``words`` with 3 words (far apart) replaced: Jaccard of 3-shingles 139/157 = 0.885 >= 0.8."""
    words = list(words)
    for i in (20, 70, 120):
        words[i] = f"new{rng.integers(10**6)}"
    return " ".join(words)


def _planted():
    """Train: 40 distinct examples, then 3 exact copies (one re-spaced, one relabelled), 2 near copies; dev: 10
    fresh, a copy of train 5, a near copy of train 6; test: 10 fresh, a near copy of train 7."""
    rng = np.random.default_rng(0)
    base = [_text(rng) for _ in range(40)]
    train = [{"text": " ".join(w), "label": "ab"[i % 2]} for i, w in enumerate(base)]
    train += [dict(train[0]), {"text": "  ".join(base[1]) + " ", "label": train[1]["label"]},
              {"text": train[2]["text"], "label": "b"}]  # train 2 is "a": a conflicting copy
    train += [{"text": _changed(base[3], rng), "label": "b"}, {"text": _changed(base[4], rng), "label": "a"}]
    dev = [{"text": " ".join(_text(rng)), "label": "a"} for _ in range(10)]
    dev += [dict(train[5]), {"text": _changed(base[6], rng), "label": "a"}]
    test = [{"text": " ".join(_text(rng)), "label": "b"} for _ in range(10)]
    test += [{"text": _changed(base[7], rng), "label": "b"}]
    return {"train": train, "dev": dev, "test": test}


def _cfg(tmp_path, splits, **checks):
    cfg = data_defaults()
    files = {}
    for s, rows in splits.items():
        files[s] = str(tmp_path / f"{s}.jsonl")
        with open(files[s], "w") as f:
            f.write("\n".join(map(json.dumps, rows)))
    cfg.files = files
    cfg.cache_dir = str(tmp_path / "cache")
    cfg.quality.update(**checks)
    return cfg


def test_planted_duplicates_near_duplicates_and_leaks_are_counted_exactly(tmp_path):
    splits = _planted()
    cfg = _cfg(tmp_path, splits, duplicates="report", near_duplicates="report", leakage="report", labels="report")
    report, _ = quality.check(cfg, raw_records(cfg))
    assert report["found"] == {"duplicates": 3, "near_duplicates": 2, "leakage": 3}
    assert report["by_split"]["leakage"] == {"dev": 2, "test": 1}
    assert report["duplicate_conflicts"] == 1
    assert report["dropped"] == {"total": 0} and report["train"] == {"before": 45, "after": 45}
    assert report["labels"]["train"] == {"a": 22, "b": 23} and report["labels"]["test"] == {"b": 11}
    text = quality.to_markdown(report, "planted")
    assert "| near_duplicates | report | 2 |  |" in text and "leakage per split: dev 2, test 1" in text


def test_drop_removes_from_train_only(tmp_path):
    splits = _planted()
    cfg = _cfg(tmp_path, splits, duplicates="drop", near_duplicates="drop", leakage="drop")
    out = records(cfg)
    removed = {40, 41, 42, 43, 44, 5, 6, 7}  # the copies, the near copies, the train side of each leak
    assert out["train"] == [r for i, r in enumerate(splits["train"]) if i not in removed]
    assert out["dev"] == splits["dev"] and out["test"] == splits["test"]
    report, _ = quality.check(cfg, raw_records(cfg))
    assert report["dropped"] == {"duplicates": 3, "near_duplicates": 2, "leakage": 3, "total": 8}
    # leakage "report": the train side stays; the other checks still drop theirs
    cfg.quality.leakage = "report"
    assert len(records(cfg)["train"]) == 40


def test_empty_and_over_long_in_characters_and_tokens(tmp_path):
    from adapt.data.formats import Encoder
    from adapt.models import load_tokenizer

    rows = [{"text": "short one", "label": "a"}, {"text": "  ", "label": "b"},
            {"text": "word " * 40, "label": "a"}, {"text": "another short", "label": "b"}]
    cfg = _cfg(tmp_path, {"train": rows, "dev": rows[:2]}, empty="drop", too_long="report", max_chars=100)
    report, _ = quality.check(cfg, raw_records(cfg))
    assert report["found"] == {"empty": 1, "too_long": 1} and report["by_split"]["empty"] == {"train": 1, "dev": 1}
    assert [r["text"] for r in records(cfg)["train"]] == ["short one", "word " * 40, "another short"]
    cfg.quality.max_chars, cfg.max_length = 0, 39  # "word " * 40: 40 tokens of the MiniLM tokenizer
    report, _ = quality.check(cfg, raw_records(cfg), Encoder(load_tokenizer("bundled:minilm-l6")))
    assert report["found"]["too_long"] == 1 and report["too_long_limit"] == "39 tokens"


def test_cleanlab_finds_a_flipped_label_on_a_separable_set(tmp_path):
    rng = np.random.default_rng(1)
    words = {"a": [f"alpha{i}" for i in range(30)], "b": [f"beta{i}" for i in range(30)]}
    rows = [{"text": " ".join(rng.choice(words[y], 12)), "label": y} for y in "ab" * 20]
    rows[6]["label"] = "b"  # its words are all "a" words
    cfg = _cfg(tmp_path, {"train": rows}, label_errors="drop")
    report, drops = quality.check(cfg, raw_records(cfg))
    assert drops == {"label_errors": {6}} and report["found"] == {"label_errors": 1}
    assert report["samples"]["label_errors"][0][0].startswith("[b] alpha")


@pytest.mark.parametrize("key, value, error", [
    ("threshold", 1.5, "data.quality.threshold=1.5: expected a number in [0, 1] (a Jaccard similarity)"),
    ("duplicates", "remove", "data.quality.duplicates='remove': expected one of off, report, drop"),
    ("labels", "drop", "data.quality.labels='drop': expected one of off, report"),
    ("num_perm", 1, "data.quality.num_perm=1: expected an integer >= 2"),
])
def test_bad_settings_are_one_line_errors(tmp_path, key, value, error):
    cfg = _cfg(tmp_path, {"train": [{"text": "x", "label": "a"}]})
    cfg.quality[key] = value
    with pytest.raises(ConfigError) as e:
        prepare(cfg, None)
    assert str(e.value) == error


def test_the_cache_key_holds_the_settings_and_the_report(tmp_path):
    from adapt.models import load_tokenizer

    tok = load_tokenizer("bundled:minilm-l6")
    cfg = _cfg(tmp_path, _planted())
    plain, _ = prepare(cfg, tok)
    cfg.quality.duplicates = "drop"
    dropped, hit = prepare(cfg, tok)
    assert not hit and "quality" not in plain and len(dropped["train"]["input_ids"]) == 42
    again, hit = prepare(cfg, tok)
    assert hit and again["quality"] == dropped["quality"] and again["quality"]["dropped"]["duplicates"] == 3


@pytest.mark.slow
def test_a_trial_stores_its_counts(tmp_path):
    from adapt.analysis.results import _flat_metrics
    from adapt.experiment import base_config, run_trial

    c = base_config()
    c.model.name = "bundled:minilm-l6"  # no step is trained: its size costs only the loading
    c.data = _cfg(tmp_path, _planted(), duplicates="drop", near_duplicates="drop", leakage="report")
    c.data.update(max_length=32, cache_dir="")
    c.eval.update(splits=(), batch_size=8)  # no evaluation, no training step: the data and the results alone
    c.train.update(batch_size=8, epochs=0.0, log_every=1)
    c.mesh.shape = (-1, 1, 1)
    workdir = str(tmp_path / "run")
    results = run_trial(c, workdir)
    expected = {"found": {"duplicates": 3, "near_duplicates": 2, "leakage": 3},
                "dropped": {"duplicates": 3, "near_duplicates": 2, "total": 5}, "train": {"before": 45, "after": 40}}
    assert results["quality"] == expected
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["quality"] == expected
    with open(os.path.join(workdir, "quality.json")) as f:
        assert quality.counts(json.load(f)) == expected
    assert _flat_metrics(results)["quality/dropped/near_duplicates"] == 2.0  # as the results database stores it


def _script(monkeypatch, capsys, *argv):
    """scripts/quality.py run in this process: (exit code, stdout, stderr)."""
    import runpy

    monkeypatch.setattr("sys.argv", ["scripts/quality.py", *argv])
    monkeypatch.setattr("adapt.core.cli.use_kept_heap", lambda: False)  # a setting for a whole process: not the tests'
    try:
        script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "quality.py")
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_script_reports_every_check_and_rejects_bad_settings(tmp_path, monkeypatch, capsys):
    cfg = _cfg(tmp_path, _planted())
    files = f"--config.data.files={dict(cfg.files)!r}"
    code, out, _ = _script(monkeypatch, capsys, files, "--config.data.quality.max_chars=5000",
                           "--config.data.quality.label_errors=off", f"--json={tmp_path / 'report.json'}")
    assert code == 0 and "| duplicates | report | 3 |  |" in out and "| near_duplicates | report | 2 |  |" in out
    assert "label_errors" not in out and "labels train (2): b 23 (51.1%), a 22 (48.9%)" in out
    with open(tmp_path / "report.json") as f:
        assert json.load(f)["found"]["leakage"] == 3
    code, out, err = _script(monkeypatch, capsys, files, "--config.data.quality.threshold=1.5")
    assert (code, out, err) == (2, "", "error: data.quality.threshold=1.5: expected a number in [0, 1] (a Jaccard "
                                       "similarity)\n")


def test_conll_sentences_are_checked_and_dropped_before_tagging(tmp_path):
    from adapt.models import load_tokenizer

    sentence = lambda words, tags: "\n".join(f"{w}\t{t}" for w, t in zip(words.split(), tags.split()))  # noqa: E731
    a, b = sentence("aspirin inhibits cox", "B-Chem O B-Gene"), sentence("the cat sat", "O O O")
    c = sentence("naloxone reverses it", "B-Chem O O")
    (tmp_path / "train.txt").write_text("\n\n".join([a, b, a, c]) + "\n")
    (tmp_path / "dev.txt").write_text(c + "\n")
    cfg = data_defaults()
    cfg.update(format="conll", files={s: str(tmp_path / f"{s}.txt") for s in ("train", "dev")}, cache_dir="")
    cfg.quality.update(duplicates="drop", leakage="report", labels="report")
    splits, _ = prepare(cfg, load_tokenizer("bundled:minilm-l6"))
    assert len(splits["train"]["input_ids"]) == 3 and len(splits["dev"]["input_ids"]) == 1
    q = splits["quality"]
    assert q["found"] == {"duplicates": 1, "leakage": 1} and q["by_split"]["leakage"] == {"dev": 1}
    assert q["labels"]["train"] == {"O": 7, "B-Chem": 3, "B-Gene": 2}
