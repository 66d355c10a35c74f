"""Data quality checks on the raw examples of a data section, before they are tokenised.

    splits, report = clean(cfg, splits, encoder)   # cfg: the data section; report None when every check is off
    print(to_markdown(report))

``cfg.quality`` (:func:`defaults`) sets each check to "off", "report" (count what it finds) or "drop" (remove
what it finds from TRAIN; dev and test are never touched):

- ``duplicates``: train examples whose text (whitespace collapsed) repeats an earlier train example's; the
  first stays. Copies whose labels differ from the first's are counted too (``duplicate_conflicts``).
- ``near_duplicates``: train examples that are not exact copies but whose Jaccard similarity to an earlier
  kept train example is at least ``threshold``, over their sets of ``shingle``-token shingles (lowercased words
  and punctuation runs). Candidates come from datasketch's MinHash LSH (``num_perm`` permutations; a pair at
  the threshold may be missed: with probability 0.05 at the defaults), and are kept by their exact similarity. Greedy
  in file order: an example is compared with those kept before it, so the count is what "drop" removes.
- ``leakage``: dev/test examples whose text equals (whitespace collapsed) or nearly duplicates (as above) a
  train example's. Found counts the dev/test examples; "drop" removes every train example they match, never
  the dev/test one.
- ``empty``: an example with a blank text the format reads (text or pair, prompt or response).
- ``too_long``: more than ``max_chars`` characters when that is > 0, else more tokens (the tokenizer's, no
  special tokens) than ``data.max_length``; without a tokenizer (:func:`adapt.data.pipeline.records` as the
  reference baselines call it) only a character limit is checked.
- ``labels``: the label distribution of each split (CoNLL: of the tags); "report" only.
- ``label_errors``: likely label errors of train, ``cleanlab.filter.find_label_issues`` on out-of-fold
  predicted probabilities of TF-IDF (words in 2+ examples, sublinear tf) + logistic regression (C=1) from
  scikit-learn, ``folds``-fold stratified cross-validation seeded by ``seed`` (on one BLAS thread: several
  oversubscribe a small machine: 7x slower on BBC here). Needs category labels on every train example. A bag of
  words is a weak model of a relation between marked entities (ChemProt, SciERC): its flags are many there,
  and are candidates to read, not verdicts.

Every check sees the whole train split as read (before ``data.train_examples`` samples it), independently of
the others; an example two dropping checks find is removed once (``dropped.total``). The report is a dict of
plain values (:func:`counts` is its numbers: what a trial stores in ``results.json``).
"""

from __future__ import annotations

import re
import warnings

import ml_collections
import numpy as np

from adapt.core import schema
from adapt.core.schema import Choice, Float, Int

CHECKS = ("duplicates", "near_duplicates", "leakage", "empty", "too_long", "labels", "label_errors")
MODES = ("off", "report", "drop")
SAMPLES = 3  # examples of each finding kept in the report
WIDTH = 100  # characters of an example's text in the report


def defaults() -> ml_collections.ConfigDict:
    """The ``data.quality`` section: every check off."""
    return ml_collections.ConfigDict(dict(
        **{check: "off" for check in CHECKS},  # "off" | "report" | "drop" (labels: off | report)
        threshold=0.8,  # near duplicates and leakage: Jaccard similarity of shingle sets, in [0, 1]
        num_perm=128,  # MinHash permutations
        shingle=3,  # tokens per shingle
        max_chars=0,  # too_long: a character limit instead of data.max_length tokens (0: tokens)
        folds=5,  # label_errors: cross-validation folds
        seed=0,  # label_errors: fold assignment; MinHash permutations
    ))


#: The ``data.quality`` section's keys declared (:mod:`adapt.core.schema`), of :func:`defaults`.
SCHEMA = dict(  # of defaults()
    **{check: Choice(*(MODES[:2] if check == "labels" else MODES), doc=f"the {check} check's mode ('drop': from "
                     f"train)") for check in CHECKS},
    threshold=Float(ge=0, le=1, hint="a Jaccard similarity",
                    doc="near duplicates and leakage: the least Jaccard similarity of shingle sets found"),
    num_perm=Int(min=2, doc="MinHash permutations"),
    shingle=Int(min=1, doc="tokens per shingle"),
    max_chars=Int(min=0, hint="0: data.max_length tokens", doc="too_long: a character limit"),
    folds=Int(min=2, doc="label_errors: cross-validation folds"),
    seed=Int(min=0, doc="label_errors: fold assignment; MinHash permutations"),
)


def settings(cfg) -> ml_collections.ConfigDict:
    """``cfg.quality`` over :func:`defaults` (a config written before the section existed has none), checked
    against :data:`SCHEMA`: a bad key, mode or value is a one-line ConfigError naming the key."""
    out = defaults()
    given = dict(cfg.get("quality") or {})
    schema.check(SCHEMA, given, "data.quality")
    for k, v in given.items():  # the types are the schema's: an int where a float goes is the only conversion
        out[k] = float(v) if isinstance(out[k], float) else v
    return out


def enabled(cfg) -> bool:
    """Whether any check of ``cfg.quality`` is on."""
    return any(settings(cfg)[c] != "off" for c in CHECKS)


def _is_sentence(item) -> bool:
    return isinstance(item, tuple)  # CoNLL: (tokens, tags)


def _parts(cfg, item) -> list[str]:
    """The texts of one example that its format reads."""
    if _is_sentence(item):
        return [" ".join(item[0])]
    if cfg.format == "sft":
        return [str(item[cfg.prompt_column]), str(item[cfg.response_column])]
    pair = cfg.text_pair_column if cfg.format == "classification" else ""
    return [str(item[cfg.text_column])] + ([str(item[pair])] if pair else [])


def _text(cfg, item) -> str:
    return "\n".join(_parts(cfg, item))


def _key(text: str) -> str:  # what "exact" compares: the text with its whitespace collapsed
    return " ".join(text.split())


def _labels(cfg, items: list) -> list[str] | None:
    """Each example's label, when every one has a category label; else None."""
    col = cfg.label_column
    if (not items or cfg.label_type != "category" or _is_sentence(items[0])
            or not all(r.get(col) is not None for r in items)):
        return None
    return [str(r[col]) for r in items]


def _distribution(cfg, items: list) -> dict[str, int]:
    if items and _is_sentence(items[0]):
        names = [tag for _, tags in items for tag in tags]
    else:
        names = _labels(cfg, items) or []
    values, counts = np.unique(np.asarray(names, dtype=str), return_counts=True)
    return {str(v): int(n) for v, n in sorted(zip(values, counts), key=lambda p: (-p[1], p[0]))}


def _shingles(text: str, k: int) -> set[bytes]:
    tokens = re.findall(r"\w+|[^\w\s]+", text.lower())
    if len(tokens) <= k:
        return {" ".join(tokens).encode()}
    return {" ".join(tokens[i:i + k]).encode() for i in range(len(tokens) - k + 1)}


def _sketches(texts: list[str], q) -> list[tuple[set, object]]:
    """Each text's (shingle set, MinHash of it)."""
    from datasketch import MinHash

    out = []
    for text in texts:
        shingles = _shingles(text, q.shingle)
        m = MinHash(num_perm=q.num_perm, seed=q.seed)
        m.update_batch(list(shingles))
        out.append((shingles, m))
    return out


def _lsh(q):
    from datasketch import MinHashLSH

    # The threshold only tunes the bands (a similarity of exactly 0 or 1 is a valid setting of ours), weighted
    # towards recall: a pair at the threshold of 0.8 is a candidate with probability 0.95, one at 0.85 0.994
    # (16 bands of 8 rows); candidates are then kept by their exact similarity.
    return MinHashLSH(threshold=min(max(q.threshold, 0.01), 0.99), num_perm=q.num_perm, weights=(0.05, 0.95))


def _near(sketch, lsh, sketches, threshold: float) -> list[int]:
    """The indexed examples whose shingle sets' Jaccard similarity to ``sketch``'s is at least ``threshold``."""
    shingles, m = sketch
    return sorted(j for j in lsh.query(m)
                  if len(shingles & sketches[j][0]) >= threshold * len(shingles | sketches[j][0]))


def _near_copies(keys: list[str], sketches: list, copies: set[int], q) -> list[tuple[int, int]]:
    """(example, the earlier kept example it nearly duplicates) of train, in order: greedy, each compared with
    the non-blank examples kept before it (exact ``copies`` and blank ones are left to their own checks)."""
    lsh, out = _lsh(q), []
    for i, sketch in enumerate(sketches):
        if not keys[i] or i in copies:
            continue
        match = _near(sketch, lsh, sketches, q.threshold)
        if match:
            out.append((i, match[0]))
        else:
            lsh.insert(i, sketch[1])
    return out


def _leaks(texts: dict[str, list[str]], keys: list[str], where: dict, sketches: list, q):
    """({split: its examples that equal or nearly duplicate a train one}, [((index, split), a train match)],
    every train example matched) over the splits other than train."""
    lsh, per, leaks, matched = _lsh(q), {}, [], set()
    for j, (_, m) in enumerate(sketches):
        if keys[j]:
            lsh.insert(j, m)
    for s in (s for s in texts if s != "train"):
        per[s] = 0
        for i, (text, sketch) in enumerate(zip(texts[s], _sketches(texts[s], q))):
            k = _key(text)
            match = sorted(set(where.get(k, [])) | set(_near(sketch, lsh, sketches, q.threshold))) if k else []
            if match:
                per[s] += 1
                matched |= set(match)
                leaks.append(((i, s), match[0]))
    return per, leaks, matched


def _label_issues(texts: list[str], labels: list[str], q) -> tuple[np.ndarray, float]:
    """Indices of likely label errors (cleanlab on out-of-fold TF-IDF + logistic regression probabilities) and
    the out-of-fold accuracy of that model."""
    from cleanlab.filter import find_label_issues
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from threadpoolctl import threadpool_limits

    names = sorted(set(labels))
    y = np.asarray([names.index(label) for label in labels])  # [N]
    if len(names) < 2:
        return np.zeros(0, np.int64), 1.0
    model = make_pipeline(TfidfVectorizer(sublinear_tf=True, min_df=2), LogisticRegression(max_iter=1000))
    folds = StratifiedKFold(n_splits=min(q.folds, len(y)), shuffle=True, random_state=q.seed)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # a class with fewer examples than folds: its column is 0 in some folds
        probs = cross_val_predict(model, texts, y, cv=folds, method="predict_proba")  # [N, classes]
        return np.flatnonzero(find_label_issues(y, probs)), float(np.mean(probs.argmax(1) == y))


def _sample(cfg, items, pairs) -> list[list[str]]:
    """Up to SAMPLES findings, each the texts involved, shortened."""
    def short(i, split="train"):
        text = " ".join(_text(cfg, items[split][i]).split())
        return text if len(text) <= WIDTH else text[:WIDTH - 3] + "..."
    return [[short(*a) if isinstance(a, tuple) else short(a) for a in p] for p in pairs[:SAMPLES]]


def check(cfg, splits: dict[str, list], encoder=None) -> tuple[dict, dict[str, set[int]]]:
    """The report on ``splits`` (split -> records, or CoNLL (tokens, tags) sentences) under ``cfg.quality``,
    and for each check the train indices it found (what "drop" removes). ``encoder``: an
    :class:`adapt.data.formats.Encoder` for the token limit of ``too_long``."""
    q = settings(cfg)
    on = {c: q[c] for c in CHECKS if q[c] != "off"}
    texts = {s: [_text(cfg, x) for x in items] for s, items in splits.items()}
    train = texts.get("train", [])
    keys = [_key(t) for t in train]
    blank = {s: [any(not p.strip() for p in _parts(cfg, x)) for x in items] for s, items in splits.items()}
    found: dict[str, set[int]] = {}
    report = {"modes": on, "settings": {k: q[k] for k in q.keys() if k not in CHECKS}, "examples":
              {s: len(items) for s, items in splits.items()}, "by_split": {}, "samples": {}}
    if "empty" in on:
        report["by_split"]["empty"] = {s: int(sum(b)) for s, b in blank.items()}
        found["empty"] = {i for i, b in enumerate(blank.get("train", [])) if b}
    if "too_long" in on and (q.max_chars or encoder is not None):
        if q.max_chars:
            sizes = {s: [len(t) for t in ts] for s, ts in texts.items()}
        else:
            sizes = {s: [len(ids) for ids in encoder.encode(ts)] if ts else [] for s, ts in texts.items()}
        limit = q.max_chars or cfg.max_length
        report["too_long_limit"] = f"{limit} {'characters' if q.max_chars else 'tokens'}"
        report["by_split"]["too_long"] = {s: int(sum(n > limit for n in ns)) for s, ns in sizes.items()}
        found["too_long"] = {i for i, n in enumerate(sizes.get("train", [])) if n > limit}
    elif "too_long" in on:
        report["too_long_limit"] = "not checked (no tokenizer, data.quality.max_chars 0)"
    labels = _labels(cfg, splits.get("train", []))
    where: dict[str, list[int]] = {}  # text -> the train examples with it
    for i, k in enumerate(keys):
        if k:
            where.setdefault(k, []).append(i)
    copies = sorted((i, ids[0]) for ids in where.values() for i in ids[1:])  # (copy, its first occurrence)
    if "duplicates" in on:
        found["duplicates"] = {i for i, _ in copies}
        report["duplicate_conflicts"] = sum(labels[i] != labels[j] for i, j in copies) if labels else 0
        report["samples"]["duplicates"] = _sample(cfg, splits, copies)
    sketches = _sketches(train, q) if {"near_duplicates", "leakage"} & set(on) else []
    if "near_duplicates" in on:
        near = _near_copies(keys, sketches, {i for i, _ in copies}, q)
        found["near_duplicates"] = {i for i, _ in near}
        report["samples"]["near_duplicates"] = _sample(cfg, splits, near)
    if "leakage" in on:
        report["by_split"]["leakage"], leaks, matched = _leaks(texts, keys, where, sketches, q)
        found["leakage"] = matched
        report["leaked"] = sum(report["by_split"]["leakage"].values())
        report["samples"]["leakage"] = _sample(cfg, splits, leaks)
    if "labels" in on:
        report["labels"] = {s: _distribution(cfg, items) for s, items in splits.items()}
    if "label_errors" in on and not labels:
        report["label_errors_model"] = "not checked (no category label on every train example)"
    elif "label_errors" in on:
        issues, accuracy = _label_issues(train, labels, q)
        report["label_errors_model"] = ("TF-IDF (words in 2+ examples) + logistic regression, "
                                        f"{q.folds}-fold out-of-fold probabilities (accuracy {accuracy:.3f}); "
                                        "cleanlab find_label_issues")
        found["label_errors"] = {int(i) for i in issues}
        report["samples"]["label_errors"] = [[f"[{labels[i]}] {s[0]}"] for i, s in
                                             zip(issues, _sample(cfg, splits, [(int(i),) for i in issues]))]
    drop = set().union(*[found[c] for c in found if on[c] == "drop"])
    # found: train examples, but leakage counts the dev/test examples (its train matches are what drop removes)
    report["found"] = {c: (report["leaked"] if c == "leakage" else len(ids)) for c, ids in found.items()}
    report["dropped"] = {**{c: len(ids) for c, ids in found.items() if on[c] == "drop"}, "total": len(drop)}
    report["train"] = {"before": len(train), "after": len(train) - len(drop)}
    return report, {c: ids for c, ids in found.items() if on[c] == "drop"}


def clean(cfg, splits: dict[str, list], encoder=None) -> tuple[dict[str, list], dict | None]:
    """``splits`` with what the dropping checks of ``cfg.quality`` found removed from train (order kept), and
    the report (:func:`check`); ``(splits, None)`` unchanged when every check is off."""
    if not enabled(cfg):
        return splits, None
    report, drops = check(cfg, splits, encoder)
    drop = set().union(*drops.values())
    if not drop:
        return splits, report
    return {s: [x for i, x in enumerate(items) if i not in drop] if s == "train" else items
            for s, items in splits.items()}, report


def counts(report: dict) -> dict:
    """The numbers a trial stores (``results.json`` "quality"): ``{"found": {check: n}, "dropped": {check: n,
    "total": n}, "train": {"before": n, "after": n}}``."""
    return {k: dict(report[k]) for k in ("found", "dropped", "train")}


def to_markdown(report: dict, title: str = "") -> str:
    """The report as Markdown: the checks' counts, per-split counts, label distributions and a few examples."""
    lines = [f"## {title}", ""] if title else []
    lines += [f"examples: {', '.join(f'{s} {n}' for s, n in report['examples'].items())}; train kept "
              f"{report['train']['after']} of {report['train']['before']}", "",
              "| check | mode | found | dropped from train |", "|---|---|---:|---:|"]
    for c, mode in report["modes"].items():
        if c in report["found"]:
            lines.append(f"| {c} | {mode} | {report['found'][c]} | {report['dropped'].get(c, '')} |")
    notes = []
    if "duplicate_conflicts" in report:
        notes.append(f"exact duplicates with a label differing from the first copy's: {report['duplicate_conflicts']}")
    for c, per in report["by_split"].items():
        notes.append(f"{c} per split: {', '.join(f'{s} {n}' for s, n in per.items())}")
    for k in ("too_long_limit", "label_errors_model"):
        if k in report:
            notes.append(f"{k.replace('_', ' ')}: {report[k]}")
    notes.append("settings: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items()))
    lines += [""] + [f"- {n}" for n in notes]
    for s, dist in report.get("labels", {}).items():
        total = sum(dist.values()) or 1
        lines.append(f"- labels {s} ({len(dist)}): " + (", ".join(f"{k} {n} ({100 * n / total:.1f}%)"
                                                                   for k, n in dist.items()) or "none"))
    for c, samples in report["samples"].items():
        if samples:
            lines += ["", f"{c}, e.g.:"] + ["- " + " <-> ".join(f'"{t}"' for t in pair) for pair in samples]
    return "\n".join(lines)
