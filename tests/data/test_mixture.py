"""Data-mix sweeps: a swept mixture weight gives its token share, staged mixtures switch weights at their steps
and resume exactly (in process here; a SIGKILLed run of a staged mixture: test_resume.py), and every bad mixture
key is a one-line error naming it before anything is read."""

import json

import ml_collections
import numpy as np
import pytest

from adapt.core.errors import ConfigError
from adapt.data.batches import Mixture, RowStream
from adapt.data.pipeline import check_mixture, data_defaults, section, train_stream
from adapt.study import sweeps

DOMAIN = "the enzyme binds the receptor in the cell\n"
GENERAL = "stocks fell as the market closed lower today\n"


def _write(path, text):
    path.write_text(text)
    return str(path)


def _packed(tag, n, width=8):
    """``n`` packed rows of token ``tag`` (the last two positions of every third row padding)."""
    mask = np.ones((n, width), np.int32)
    mask[::3, -2:] = 0
    return {"input_ids": np.full((n, width), tag, np.int32), "attention_mask": mask}


def _within(share, weight, rows):
    """``share`` within 4 binomial standard errors of ``weight`` over ``rows`` draws (exactly 0 for weight 0)."""
    return share == 0 if weight == 0 else abs(share - weight) <= 4 * np.sqrt(weight * (1 - weight) / rows)


def test_a_swept_mixture_weight_gives_its_token_share(tmp_path):
    from adapt.models import load_tokenizer

    data = data_defaults()
    data.update(format="lm", causal=False, max_length=16, cache_dir=str(tmp_path / "cache"))
    data.files = {"train": _write(tmp_path / "domain.txt", DOMAIN * 300)}
    data.mixture = {"domain": {"weight": 1.0, "files": {"train": data.files.train}},
                    "general": {"weight": 0.0, "files": {"train": _write(tmp_path / "general.txt", GENERAL * 300)}}}
    base = ml_collections.ConfigDict({"data": data})
    base.lock()
    sweep = sweeps.zip_(sweeps.grid("data.mixture.general.weight", [0.0, 0.05, 0.25]),
                        sweeps.grid("data.mixture.domain.weight", [1.0, 0.95, 0.75]))
    tokenizer = load_tokenizer("bundled:minilm-l6")
    steps, batch = 300, 16
    for trial in sweeps.expand(sweep):
        cfg = sweeps.trial_config(base, trial.overrides).data
        stream = train_stream(cfg, tokenizer, batch, seed=0)
        for _ in range(steps):
            stream.next_batch()
        shares = stream.token_shares()
        for name in ("domain", "general"):
            assert _within(shares[name], cfg.mixture[name].weight, steps * batch), (trial.overrides, shares)
        assert stream.state()["tokens"] == stream.tokens and sum(stream.tokens.values()) > 0.9 * steps * batch * 16
    assert stream.tokens["general"] > 0 and cfg.mixture.general.weight == 0.25


STAGES = [(0, {"a": 0.8, "b": 0.2}), (100, {"a": 0.1, "b": 0.6, "c": 0.3}), (200, {"c": 1.0})]


def _staged(**process):
    return Mixture({"a": RowStream(_packed(1, 50), seed=0), "b": RowStream(_packed(2, 70), seed=1),
                    "c": RowStream(_packed(3, 30), seed=2)}, STAGES, 16, seed=4, **process)


def test_staged_mixture_shares_per_stage_and_exact_resume():
    mix = _staged()
    assert mix.steps_per_epoch == 3  # one pass over a, the first stage's most-weighted source: 50 / (16 * 0.8)
    batches = [mix.next_batch() for _ in range(300)]
    rows = np.stack([b["input_ids"][:, 0] for b in batches])  # [step, row]: the source's tag
    for (start, weights), end in zip(STAGES, [100, 200, 300]):
        tags = rows[start:end]
        for tag, name in enumerate("abc", 1):
            assert _within((tags == tag).mean(), weights.get(name, 0.0), tags.size), (start, name)
    ids, mask = (np.stack([b[k] for b in batches]) for k in ("input_ids", "attention_mask"))
    assert mix.tokens == {n: int(((ids == t) & (mask != 0)).sum()) for t, n in enumerate("abc", 1)}
    assert mix.token_shares() == pytest.approx({n: t / (mask != 0).sum() for n, t in mix.tokens.items()})

    a = _staged()
    for _ in range(150):  # mid-stage 1 (steps 100-199)
        a.next_batch()
    saved = json.loads(json.dumps(a.state()))  # through JSON, as in a checkpoint
    after = [a.next_batch() for _ in range(80)]  # on into stage 2
    b = _staged()
    b.restore(saved)
    assert b.tokens == saved["tokens"] and b.token_shares() == pytest.approx(saved["token_shares"])
    for want in after:
        got = b.next_batch()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    assert b.state() == a.state()
    halves = [_staged(process_index=i, process_count=2) for i in (0, 1)]  # each process counts the global batch
    for _ in range(5):
        [h.next_batch() for h in halves]
    assert halves[0].tokens == halves[1].tokens


@pytest.mark.parametrize("arrays, tokens", [
    (_packed(1, 6), 44),  # packed rows: the mask's non-zero entries (6 x 8, less 2 padding in rows 0 and 3)
    ({"input_ids": [np.ones(n, np.int32) for n in (3, 5, 7)], "labels": np.zeros(3, np.int32)}, 15),  # ragged
    ({"input_ids": np.ones((4, 6), np.int32)}, 24),  # fixed width, no mask: the width
])
def test_tokens_count_the_mask_else_the_ragged_lengths_else_the_width(arrays, tokens):
    from adapt.data.batches import array_batches

    n = len(arrays["input_ids"])
    stream = array_batches(arrays, n, seed=0)
    stream.next_batch()
    assert stream.tokens == {"train": tokens} and stream.token_shares() == {"train": 1.0}


def test_section_expands_a_benchmark_under_the_specs_own_keys(tmp_path):
    from adapt.data import catalog

    data = data_defaults()
    data.files = {"train": "a.txt", "dev": "b.txt"}
    data.mixture = {"domain": {"weight": 1.0}}
    data.mixture_stages = [[0, {"domain": 1.0}]]
    sub = section(data, {"benchmark": "bbc", "encoding": "utf-8"}, "eval.sets.general")
    # the benchmark's data keys, its files found only when read (catalog.locate)
    assert (sub.benchmark, sub.source, sub.split_ratios.to_dict(), sub.sample_by) == (
        "bbc", "", {"train": 0.8, "dev": 0.1, "test": 0.1}, "document")
    assert (sub.encoding, sub.files.to_dict(), sub.mixture.to_dict(), sub.mixture_stages) == ("utf-8", {}, {}, [])
    assert catalog.locate(sub).source == catalog.bbc_folder() and catalog.locate(sub).benchmark == ""
    other = section(data, {"files": {"dev": "c.txt"}}, "eval.sets.general")  # replaced whole, not merged
    assert (other.files.to_dict(), other.source, data.files.train) == ({"dev": "c.txt"}, "", "a.txt")
    mine = section(sub, {"files": {"dev": "c.txt"}}, "eval.sets.mine")  # own files replace an inherited benchmark
    assert (mine.benchmark, mine.files.to_dict()) == ("", {"dev": "c.txt"})
    with pytest.raises(ConfigError) as e:
        section(data, {"benchmark": "nope"}, "eval.sets.general")
    assert str(e.value) == "eval.sets.general.benchmark='nope': expected one of '', " + ", ".join(catalog.BENCHMARKS)
    with pytest.raises(ConfigError, match=r"^eval.sets.general.file: unknown key; did you mean "
                                          r"eval.sets.general.files\? \(keys of "):
        section(data, {"file": "c.txt"}, "eval.sets.general")


SOURCES = {"domain": {"files": {"train": "bio.txt"}}, "general": {"files": {"train": "news.txt"}}}


def _weighted(domain, general):
    return {"domain": {**SOURCES["domain"], "weight": domain}, "general": {**SOURCES["general"], "weight": general}}


@pytest.mark.parametrize("mixture, stages, error", [
    ({**SOURCES, "general": {**SOURCES["general"], "weight": 1.0}}, [], "data.mixture.domain has no weight; "),
    (_weighted(0.5, -0.1), [], "data.mixture.general.weight=-0.1: expected a number >= 0"),
    (_weighted(0.5, "0.5"), [], "data.mixture.general.weight='0.5': expected a number >= 0"),
    (_weighted(0.0, 0.0), [], "data.mixture: every weight is 0 (domain=0.0, general=0.0); "),
    ({"domain": 0.5}, [], "data.mixture.domain=0.5; expected the source's keys"),
    ({"domain": {"weight": 1.0, "file": "bio.txt"}}, [],
     "data.mixture.domain.file: unknown key; did you mean data.mixture.domain.files?"),
    ({"domain": {"weight": 1.0, "benchmark": "nope"}}, [], "data.mixture.domain.benchmark='nope': expected one of"),
    (_weighted(0.5, 0.5), [[0, {"domain": 1.0}]],
     "data.mixture.domain.weight and data.mixture_stages are both set; use one"),
    ({}, [[0, {"domain": 1.0}]], "data.mixture_stages weighs the sources of data.mixture, which names none"),
    (SOURCES, {"0": {"domain": 1.0}}, "data.mixture_stages={'0': {'domain': 1.0}}; expected a list of"),
    (SOURCES, [[0, {"domain": 1.0}], [5]], "data.mixture_stages[1]=[5]; expected a [step, {source: weight}] pair"),
    (SOURCES, [[0, 0.5]], "data.mixture_stages[0]=[0, 0.5]; expected a [step, {source: weight}] pair"),
    (SOURCES, [[2, {"domain": 1.0}]], "data.mixture_stages[0] starts at step 2; the first stage starts at step 0"),
    (SOURCES, [[0, {"domain": 1.0}], [5, {"general": 1.0}], [5, {"domain": 1.0}]],
     "data.mixture_stages[2] starts at step 5, not after data.mixture_stages[1]'s step 5; the steps must increase"),
    (SOURCES, [[0, {"domain": 1.0, "news": 1.0}]],
     "data.mixture_stages[0] weighs 'news', not a source of data.mixture; its sources: domain, general"),
    (SOURCES, [[0, {"domain": 1.0}], [4, {"general": -0.5}]],
     "data.mixture_stages[1]: general=-0.5; expected a finite number >= 0"),
    (SOURCES, [[0, {"domain": 1.0}], [4, {"domain": 0, "general": 0.0}]],
     "data.mixture_stages[1]: every weight is 0 (domain=0, general=0.0); "),
])
def test_a_bad_mixture_is_a_one_line_error_naming_the_key(mixture, stages, error):
    data = ml_collections.ConfigDict({**data_defaults().to_dict(), "mixture": mixture, "mixture_stages": stages})
    with pytest.raises(ConfigError) as e:
        check_mixture(data)
    assert str(e.value).startswith(error) and "\n" not in str(e.value), str(e.value)
    with pytest.raises(ConfigError) as e:  # before anything is read: there is no tokenizer to read with
        train_stream(data, None, 8, seed=0)
    assert str(e.value).startswith(error)
