"""Reference baselines the framework computes itself, on the trials' own splits and metric: a floor beside every
number of a table.

    rows = compute(config["data"], f1_ignore=config["objective"]["f1_ignore"], select="macro_f1")
    # {"Majority class": {"dev": {"accuracy": ..., "micro_f1": ..., "macro_f1": ...}, "test": {...}},
    #  "TF-IDF + LR": {...}}

``majority``: scikit-learn's ``DummyClassifier(strategy="most_frequent")`` fit on train (a tie goes to the first
label in sorted order). ``tfidf``: ``TfidfVectorizer`` (word unigrams, sublinear tf) fit on train, then
``LogisticRegression`` with its ``C`` picked from ``C_GRID`` by the ``select`` metric on the dev split (a tie goes
to the smaller C; ``C=1`` when the data has no dev split). A text pair is one text: the two joined by a space.

The splits are those the trials read (:func:`adapt.data.pipeline.records`: the same files, or the same ``source``
carved by ``split_ratios`` and ``split_seed``), the labels their vocabulary (sorted train labels), and the
metrics come from the trials' own code path: the confusion counts of the predictions go to
:class:`adapt.training.objectives.SequenceClassification`'s ``summarize``, built by the task registry as a trial
builds it (``objective.f1_ignore`` included), so the numbers are comparable by construction. Both baselines are
deterministic: one value per split, no spread over seeds; in a table they carry the 95% bootstrap interval over
the test examples (:func:`intervals`), the part of the noise they share with the trials.

Generation (``data.format="sft"``) has ``lead``: the answer is the first words of the prompt's last paragraph
(Lead-N, the summarisation floor; for a headline, the story's opening words), N the median word count of the
train responses; scored by the trials' own metrics of generated text (:mod:`adapt.evaluation.textmetrics`).

Token classification (``data.format="conll"``) has ``majority`` as the tagging floor: each word gets the tag it
carries most often in train (a word train never saw, and a tie, the most frequent tag overall), scored by span F1
(:func:`adapt.training.objectives.span_f1`) on every word of each sentence (a trial scores the words its
``max_length`` keeps).

Only single-label classification (``data.format="classification"``, ``label_type="category"``), tagging and
generation have baselines; regression and language-model data have none (:func:`compute` returns ``{}``). A
training ``mixture`` is not what these are fit on: they train on the section's own train split.
"""

from __future__ import annotations

from collections import Counter

import ml_collections
import numpy as np

from adapt.analysis import stats, tables
from adapt.core.errors import ConfigError
from adapt.data import catalog, formats, pipeline
from adapt.evaluation import textmetrics
from adapt.training import tasks

BASELINES = ("majority", "tfidf")
NAMES = {"majority": "Majority class", "tfidf": "TF-IDF + LR", "lead": "Lead-N"}  # the table rows
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
TFIDF = dict(sublinear_tf=True)  # word unigrams: bigrams cost BBC 35 s for no dev gain
METRICS = ("accuracy", "micro_f1", "macro_f1")


def _section(data) -> ml_collections.ConfigDict:
    cfg = pipeline.data_defaults()
    cfg.update(data.to_dict() if isinstance(data, ml_collections.ConfigDict) else dict(data))
    return cfg


def applies(data) -> bool:
    """Whether ``data`` (a ``data`` section) is single-label classification, the data baselines are for."""
    cfg = _section(data)
    return cfg.format == "classification" and cfg.label_type == "category"


def _known(names) -> None:
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ConfigError(f"baselines: unknown {unknown}; known: {', '.join(NAMES)}")


def generative(data) -> bool:
    """Whether ``data`` is prompt/response data, which the ``lead`` baseline is for."""
    return _section(data).format == "sft"


def _lead(data, names, limits=None) -> tuple[dict, dict] | None:
    """``(references {split: [str]}, {row: {split: answers}})`` of the ``lead`` baseline on every split of
    ``data`` but train (``limits``: split -> N, only its first N examples, as the trials' ``generation.examples``
    has them); None when it does not apply."""
    _known(names)
    if "lead" not in names or not generative(data):
        return None
    cfg = catalog.locate(_section(data))  # the files read, for messages too
    splits = pipeline.records(cfg)
    if "train" not in splits:
        raise ConfigError("data has no 'train' split: the Lead-N baseline takes N from it")
    n = max(1, int(np.median([len(str(r[cfg.response_column]).split()) for r in splits["train"]])))
    rows = {s: recs[:dict(limits or {}).get(s) or None] for s, recs in splits.items() if s != "train"}
    refs = {s: [str(r[cfg.response_column]) for r in recs] for s, recs in rows.items()}
    answers = {s: [" ".join(str(r[cfg.prompt_column]).split("\n\n")[-1].split()[:n]) for r in recs]
               for s, recs in rows.items()}
    return refs, {NAMES["lead"]: answers}


def tagging(data) -> bool:
    """Whether ``data`` is CoNLL token classification, which the word-level ``majority`` baseline is for."""
    return _section(data).format == "conll"


def _majority_tags(data, names) -> tuple[dict, dict] | None:
    """``(gold {split: [tags]}, {row: {split: [tags]}})`` of the per-word majority tag on every split but train;
    None when it does not apply."""
    _known(names)
    if "majority" not in names or not tagging(data):
        return None
    cfg = catalog.locate(_section(data))  # the files read, for messages too
    splits = {s: formats.read_conll(p, token_column=cfg.conll_token_column, tag_column=cfg.conll_tag_column)
              for s, p in cfg.files.items()}
    if "train" not in splits:
        raise ConfigError("data.files has no 'train' split: the majority tags are counted on it")
    splits["train"] = pipeline.train_sentences(cfg, splits["train"])  # the trials' samples of train, dev, test
    splits = pipeline.eval_subsets(cfg, splits)
    counts, overall = {}, Counter()
    for words, tags in splits["train"]:
        overall.update(tags)
        for w, t in zip(words, tags):
            counts.setdefault(w, Counter())[t] += 1
    default = overall.most_common(1)[0][0]

    def tag(word):
        c = counts.get(word)
        if not c:
            return default
        top = max(c.values())
        best = [t for t, n in c.items() if n == top]
        return best[0] if len(best) == 1 else default

    gold = {s: [tags for _, tags in sents] for s, sents in splits.items() if s != "train"}
    predicted = {s: [[tag(w) for w in words] for words, _ in sents] for s, sents in splits.items() if s != "train"}
    return gold, {NAMES["majority"]: predicted}


def _texts(cfg, recs) -> list[str]:
    if cfg.text_pair_column:
        return [f"{r[cfg.text_column]} {r[cfg.text_pair_column]}" for r in recs]
    return [str(r[cfg.text_column]) for r in recs]


def _fit(data, names, f1_ignore, select: str, dev_split: str):
    """``(labels, gold {split: ids}, predicted {row: {split: ids}}, score(predicted, split) -> metrics)`` of the
    baselines in ``names`` on every split of ``data`` but train; ``None`` for data baselines are not for."""
    from sklearn.dummy import DummyClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    _known(names)
    if select not in METRICS:
        raise ConfigError(f"baselines: select={select!r}; they report {', '.join(METRICS)}")
    if not applies(data):
        return None
    cfg = catalog.locate(_section(data))  # the files read, for messages too
    splits = pipeline.records(cfg)
    if "train" not in splits:
        raise ConfigError("data has no 'train' split: the baselines are fit on it")
    where = lambda s: f"{cfg.files.get(s, cfg.source)} ({s})"  # noqa: E731
    vocab = formats.label_vocabulary(splits["train"], cfg.label_column, where("train"))
    setup = ml_collections.ConfigDict({"objective": {"f1_ignore": tuple(f1_ignore)}})
    objective = tasks.get("sequence_classification").objective(tasks.TaskInputs(None, vocab, setup))
    gold = {s: formats.label_ids(recs, cfg.label_column, vocab, where(s)) for s, recs in splits.items()}

    def score(predicted, split) -> dict:
        conf = np.zeros((len(vocab), len(vocab)), np.float64)
        np.add.at(conf, (gold[split], np.asarray(predicted)), 1.0)
        n = float(len(gold[split]))
        out = objective.summarize({"loss_sum": 0.0, "weight": n, "correct": float(np.trace(conf)),
                                   "confusion": conf})
        return {m: out[m] for m in METRICS}

    evals = [s for s in splits if s != "train"]
    out = {}
    if "majority" in names:
        model = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(gold["train"]), 1)), gold["train"])
        out[NAMES["majority"]] = {s: model.predict(np.zeros((len(gold[s]), 1))) for s in evals}
    if "tfidf" in names:
        vectorizer = TfidfVectorizer(**TFIDF)
        x_train = vectorizer.fit_transform(_texts(cfg, splits["train"]))
        x = {s: vectorizer.transform(_texts(cfg, splits[s])) for s in evals}
        fits = {}
        with threadpool_limits(1):  # one BLAS thread: ChemProt's 5 fits take 3 s on 2 cores, not 50
            for c in C_GRID if dev_split in evals else (1.0,):
                model = LogisticRegression(C=c, max_iter=1000).fit(x_train, gold["train"])
                fits[c] = (model, score(model.predict(x[dev_split]), dev_split)[select] if dev_split in evals else 0)
        best = max(fits, key=lambda c: fits[c][1])  # the first (smallest) C of the best dev score
        out[NAMES["tfidf"]] = {s: fits[best][0].predict(x[s]) for s in evals}
    return vocab, gold, out, score


def compute(data, names=BASELINES, f1_ignore=(), select: str = "accuracy", dev_split: str = "dev") -> dict:
    """``{row name: {split: {metric: value}}}`` (``METRICS``, as fractions) for each baseline in ``names``
    (``majority``, ``tfidf``) on every split of ``data`` but train; ``select`` (one of ``METRICS``) on
    ``dev_split`` picks TF-IDF's C; ``{}`` for data that is not single-label classification (see the module)."""
    if (lead := _lead(data, names)) is not None:
        refs, predicted = lead
        return {row: {s: textmetrics.scores(refs[s], answers) for s, answers in by_split.items()}
                for row, by_split in predicted.items()}
    if (tags := _majority_tags(data, names)) is not None:
        gold, predicted = tags
        f1 = stats.metric_fn("span_f1")
        return {row: {s: {"span_f1": float(f1(stats.span_counts(gold[s], p).sum(0)))} for s, p in by_split.items()}
                for row, by_split in predicted.items()}
    fitted = _fit(data, [n for n in names if n != "lead"], f1_ignore, select, dev_split)
    if fitted is None:
        return {}
    _, _, predicted, score = fitted
    return {row: {s: score(p, s) for s, p in by_split.items()} for row, by_split in predicted.items()}


def intervals(data, names=BASELINES, f1_ignore=(), metric: str = "accuracy", dev_split: str = "dev",
              test_split: str = "test", limits=None) -> dict:
    """``{row name: stats.Interval}``: each baseline's ``metric`` on ``test_split`` with its 95% percentile
    bootstrap interval over the test examples (:func:`adapt.analysis.stats.interval` with one seed: a deterministic
    baseline has no seed spread, but its number is still one draw of a test set)."""
    if (lead := _lead(data, names, limits)) is not None:
        refs, predicted = lead
        fn = textmetrics.metric_fn(metric)
        return {row: stats.interval([textmetrics.example_counts(metric, refs[test_split], by_split[test_split])], fn)
                for row, by_split in predicted.items() if test_split in by_split}
    if (tags := _majority_tags(data, names)) is not None:
        gold, predicted = tags
        return {row: stats.interval([stats.span_counts(gold[test_split], by_split[test_split])],
                                    stats.metric_fn("span_f1")) for row, by_split in predicted.items()
                if test_split in by_split}
    fitted = _fit(data, [n for n in names if n != "lead"], f1_ignore, metric, dev_split)
    if fitted is None:
        return {}
    vocab, gold, predicted, _ = fitted
    ignore = tuple(vocab.index(x) for x in f1_ignore if x in vocab)
    fn = stats.metric_fn(metric, len(vocab), ignore)
    return {row: stats.interval([stats.confusion_counts(gold[test_split], by_split[test_split], range(len(vocab)))],
                                fn) for row, by_split in predicted.items() if test_split in by_split}


def add_to_table(table, trials: list[dict], names=BASELINES):
    """Adds a row per baseline in ``names`` to ``table`` (:mod:`adapt.analysis.tables`), below ours as reference rows
    are (``table.baselines`` names them; the CSV's source is "baseline"): in each column, the baselines on the data
    section (and ``objective.f1_ignore``) of the resolved config of one of the column's selected fine-tuning
    trials in ``trials``, C picked by the column's metric on the dev split, the column's metric on the test split
    with its interval over test examples (:func:`intervals`), scaled as the table. No ±: one fit, no seeds.
    A column whose data is not single-label classification gets none."""
    by_id = {t["id"]: t for t in trials}
    rows = {NAMES[n]: {} for n in names}
    for col in table.columns:
        configs = [by_id[i]["config"] for row in table.rows if (row, col) in table.cells
                   for i in table.cells[row, col].trials if i in by_id]
        config = next((c for c in configs if "data" in c and (applies(c["data"]) or generative(c["data"])
                                                               or tagging(c["data"]))), None)
        if config is None:
            continue
        got = intervals(config["data"], names, config.get("objective", {}).get("f1_ignore", ()),
                        table.metric_of(col), table.dev_split, table.test_split,
                        config.get("generation", {}).get("examples"))
        s = table.scale
        for name, i in got.items():
            rows[name][col] = (i.value * s, None, i.low * s, i.high * s)
    tables.add_references(table, rows)
    table.baselines += [n for n in rows if n not in table.baselines]
    return table
