"""Training-data augmentation (adapt/data/augment.py): the token edits against direct computations and their
defining properties, seeded reproducibility, dev and test untouched, the tokenised-data cache key, paraphrases
cached by content, and the one-line errors."""

import collections
import json
import os

import numpy as np
import pytest

from adapt.core.errors import ConfigError
from adapt.data import augment
from adapt.data.pipeline import data_defaults, prepare, records

WORDS = "the bank raised its rates as the market fell and the economy slowed".split()


@pytest.fixture(scope="module")
def tok():
    """A word-level BERT-style tokenizer of WORDS (built in memory: loading a bundled one takes seconds)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *sorted(set(WORDS))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                                cls_token="[CLS]", sep_token="[SEP]")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("augment")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("dev", 5), ("test", 5)):
        rows = [{"text": " ".join(rng.choice(WORDS, rng.integers(4, 12))), "label": str(i % 3)} for i in range(n)]
        (d / f"{split}.jsonl").write_text("\n".join(map(json.dumps, rows)))
    return {s: str(d / f"{s}.jsonl") for s in ("train", "dev", "test")}


def _data(files, cache_dir="", **augment_keys):
    data = data_defaults()
    data.update(files=files, max_length=32, cache_dir=cache_dir)
    data.augment.update(augment_keys)
    return data


def test_delete_keeps_the_words_a_direct_draw_keeps():
    out = augment.delete(WORDS, 0.3, np.random.default_rng(5))
    keep = np.random.default_rng(5).random(len(WORDS)) >= 0.3
    assert out == [w for w, k in zip(WORDS, keep) if k]
    assert 0 < len(out) < len(WORDS)
    it = iter(WORDS)
    assert all(w in it for w in out)  # only removes: the rest is a subsequence, in order
    assert augment.delete(WORDS, 0.0, np.random.default_rng(0)) == WORDS
    assert len(augment.delete(WORDS, 1.0, np.random.default_rng(0))) == 1  # one word kept


def test_swap_equals_direct_swaps_and_keeps_the_multiset():
    out = augment.swap(WORDS, 0.25, np.random.default_rng(7))
    rng, expected = np.random.default_rng(7), list(WORDS)
    for _ in range(round(0.25 * len(WORDS))):  # 3 swaps
        i, j = rng.integers(len(WORDS), size=2)
        expected[i], expected[j] = expected[j], expected[i]
    assert out == expected != WORDS
    assert collections.Counter(out) == collections.Counter(WORDS)


def test_insert_adds_n_words_of_the_text_around_the_original():
    out = augment.insert(WORDS, 0.25, np.random.default_rng(3))
    added = collections.Counter(out) - collections.Counter(WORDS)
    assert len(out) == len(WORDS) + 3 and sum(added.values()) == 3
    assert set(added) <= set(WORDS)
    it = iter(out)
    assert all(w in it for w in WORDS)  # the original words stay, in order
    assert len(augment.insert(WORDS[:2], 0.0, np.random.default_rng(0))) == 3  # at least one


def test_augment_records_appends_seeded_copies_in_the_mix_order(files):
    recs = [json.loads(line) for line in open(files["train"])]
    data = _data(files, copies=3, method="delete,swap", p=0.2, seed=4)
    out = augment.augment_records(recs, data)
    assert out[:12] == recs and len(out) == 48
    for copy, method in enumerate(["delete", "swap", "delete"]):
        block = out[12 * (copy + 1):12 * (copy + 2)]
        assert [r["label"] for r in block] == [r["label"] for r in recs]
        assert [r["text"] for r in block] == [augment.edit(r["text"], method, 0.2, 4, copy) for r in recs]
    assert augment.augment_records(recs, data) == out  # same seed, same set
    other = augment.augment_records(recs, _data(files, copies=3, method="delete,swap", p=0.2, seed=5))
    assert other[12:] != out[12:]


def test_sft_copies_edit_the_prompt_and_keep_the_response(files):
    recs = [{"prompt": " ".join(WORDS[i:]), "response": f"answer {i}"} for i in range(4)]
    data = _data(files, copies=1, method="swap", seed=1)
    data.format = "sft"
    out = augment.augment_records(recs, data)
    assert [r["response"] for r in out] == [r["response"] for r in recs] * 2
    assert [r["prompt"] for r in out[4:]] == [augment.edit(r["prompt"], "swap", 0.1, 1, 0) for r in recs]
    assert len(records(_data(files, copies=2))["train"]) == 12  # what the floors and reports read: unaugmented


def test_prepare_augments_train_only_after_the_sample_and_keys_the_cache(files, tok, tmp_path):
    cache = str(tmp_path / "cache")
    plain, hit = prepare(_data(files, cache), tok)
    assert not hit
    aug, hit = prepare(_data(files, cache, copies=2, method="insert", p=0.3), tok)
    assert not hit  # the augmentation settings are part of the key
    assert prepare(_data(files, cache, copies=2, method="insert", p=0.3), tok)[1]
    assert not prepare(_data(files, cache, copies=2, method="insert", p=0.4), tok)[1]
    assert prepare(_data(files, cache, copies=0, method="insert", p=0.4), tok)[1]  # off: the plain entry
    for split in ("dev", "test"):  # byte for byte
        assert plain[split].keys() == aug[split].keys()
        for col in plain[split]:
            assert all(np.asarray(a).tobytes() == np.asarray(b).tobytes()
                       for a, b in zip(plain[split][col], aug[split][col]))
    assert len(aug["train"]["labels"]) == 3 * len(plain["train"]["labels"])
    assert np.array_equal(aug["train"]["labels"][:12], plain["train"]["labels"])
    # after data.train_examples: the 6 sampled, then their copies
    sampled = _data(files, copies=1, method="swap")
    sampled.update(train_examples=6, train_seed=1)
    one, _ = prepare(sampled, tok)
    sampled.augment.copies = 0
    base, _ = prepare(sampled, tok)
    assert len(one["train"]["labels"]) == 12
    assert all(np.array_equal(a, b) for a, b in zip(one["train"]["input_ids"][:6], base["train"]["input_ids"]))


def test_paraphrases_are_cached_by_content(files, tmp_path, monkeypatch):
    calls = []

    def fake(model_id, prompts, config, batch_size):  # the prompt's last line, upper-cased: the "paraphrase"
        calls.append((model_id, prompts, config.seed, config.temperature, config.top_p, config.max_new_tokens))
        return [p.splitlines()[-1].upper() for p in prompts]

    monkeypatch.setattr(augment, "_generate", fake)
    data = _data(files, copies=1, method="paraphrase", seed=2)
    data.augment.paraphrase.update(cache_dir=str(tmp_path / "para"), max_words=3)
    texts = ["one two three four five", "six seven", "one two three"]
    first, generated = augment.paraphrase(texts, data.augment.paraphrase, 2, 0)
    assert first == ["ONE TWO THREE four five", "SIX SEVEN", "ONE TWO THREE"]  # the first 3 words; the rest kept
    assert generated == 2 and len(calls) == 1 and len(calls[0][1]) == 2  # a repeated head is generated once
    assert calls[0][0] == "bundled:smollm2-135m" and calls[0][3:] == (0.7, 0.9, 64)
    assert all(p.endswith(h) and p.startswith("Paraphrase") for p, h in
               zip(sorted(calls[0][1]), sorted(["one two three", "six seven"])))
    again, generated = augment.paraphrase(texts, data.augment.paraphrase, 2, 0)
    assert again == first and generated == 0 and len(calls) == 1  # a cache hit
    _, generated = augment.paraphrase(texts, data.augment.paraphrase, 3, 0)  # another seed: another key
    assert generated == 2
    recs = [{"text": t, "label": "a"} for t in texts]
    assert [r["text"] for r in augment.augment_records(recs, data)[3:]] == first


@pytest.mark.parametrize("keys, fmt, message", [
    (dict(copies=1, p=1.5), "classification", "data.augment.p=1.5: expected a number in [0, 1]"),
    (dict(copies=1, split="dev"), "classification", "data.augment.split='dev': expected train (augmentation applies "
                                                    "to the train"),
    (dict(copies=1, method="delete,synonym"), "classification", "data.augment.method='delete,synonym': expected"),
    (dict(copies=-1), "classification", "data.augment.copies=-1: expected an integer >= 0"),
    (dict(copies=1), "lm", "data.augment.copies=1 augments the classification and sft formats; data.format='lm'"),
])
def test_bad_settings_are_one_line_errors(files, tok, keys, fmt, message):
    data = _data(files, **keys)
    data.format = fmt
    with pytest.raises(ConfigError) as e:
        prepare(data, tok)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("arg", [None, "smoke"])
def test_the_experiment_sweep_sets_valid_augmentation(arg):
    from adapt.experiment import configs
    from adapt.study import sweeps

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "experiments", "augmentation", "config.py")
    module, base = configs.load_module(path), configs.load(path + (f":{arg}" if arg else ""))
    trials = [t.overrides for part in module.get_sweep(arg)["default"] for t in sweeps.expand(part)]
    for t in trials:
        augment.check(sweeps.trial_config(base, t).data)
    rows = {(t["meta.augment"], t["data.augment.copies"], t["data.augment.method"]) for t in trials}
    assert ("none", 0, "delete") in rows and all(c == 2 and r == m for r, c, m in rows if r != "none")
