"""From the ``data`` section of an experiment config to tokenised splits, through the on-disk cache.

    splits = prepare(cfg.data, tokenizer)   # {"train": columns, "dev": ..., "test": ..., "labels": [...]}

``format``: ``lm`` (raw text, packed into rows of ``max_length``, or with ``pack=False`` one document a row, its
first ``max_length`` tokens; ``causal`` adds EOS, else the encoder's CLS/SEP), ``classification`` (text or text
pair + label: a category of the label vocabulary built from train, or with ``label_type="number"`` a float target),
``conll`` (token classification) or ``sft`` (prompt/response, packed or padded). Splits come from ``files`` (split
name -> path), from one ``source`` carved by ``split_ratios`` with ``split_seed``, or from a named ``benchmark``
(:mod:`adapt.data.catalog`), whose files are found (downloaded if missing) only when the data is read: by
:func:`prepare` and :func:`records`.

Training-set size: ``train_examples`` (a number >= 1: that many train examples; in (0, 1): that fraction,
rounded; 0: all) keeps a seeded (``train_seed``) sample of the train split, and ``train_subset="pool"`` keeps
the train examples that sample leaves out instead (e.g. the unlabelled text of a TAPT stage). The sample is
drawn from the raw train records before any formatting (:func:`split_train`), stratified by label whenever
every train record has a label in ``label_column`` (and ``label_type`` is "category"): a classification stage
and an ``lm`` stage over the same source, seed and size agree on it exactly, because the ``lm`` stage reads the
same records, labels included. Dev and test are never touched.

Training on a mixture: ``mixture`` names sources, each this section with its own keys (:func:`section`; a
``benchmark`` key stands for that benchmark's data keys), weighted by their ``weight`` or, for weights that
change with the training step, by ``mixture_stages``. Weights are shares of rows (sequences), not tokens; the
:class:`~adapt.data.batches.Mixture` counts the tokens. :func:`check_mixture` checks both keys before anything is
read; :func:`train_stream` builds the mixture.
"""

from __future__ import annotations

import json
import math
import numbers
import os

import ml_collections
import numpy as np

from adapt.core import schema
from adapt.core.errors import ConfigError
from adapt.core.files import write_json
from adapt.data import augment, catalog, formats, quality, sources
from adapt.data.batches import Mixture, RowStream, array_batches
from adapt.data.cache import cache_key, cached, file_digest
from adapt.data.packing import pack
from adapt.data.section import SCHEMA, SOURCE_SCHEMA, TRAIN_SUBSETS, data_defaults  # noqa: F401  (its home too)

_MAPS = (dict, ml_collections.ConfigDict)


def _fields(cfg) -> dict[str, str]:
    """The columns every example of ``cfg.format`` needs, and their kinds: the readers check them."""
    if cfg.format == "classification":
        pair = {cfg.text_pair_column: sources.TEXT} if cfg.text_pair_column else {}
        return {cfg.text_column: sources.TEXT, **pair, cfg.label_column: sources.LABEL}
    if cfg.format == "sft":
        return {cfg.prompt_column: sources.TEXT, cfg.response_column: sources.TEXT}
    return {cfg.text_column: sources.TEXT}


def _records(cfg) -> dict[str, list[dict]]:
    if cfg.source:
        return sources.carve_splits(sources.read_source(cfg.source, sample_by=cfg.sample_by, encoding=cfg.encoding,
                                                        text_column=cfg.text_column, label_column=cfg.label_column,
                                                        fields=_fields(cfg)),
                                    dict(cfg.split_ratios), cfg.split_seed)
    return {split: sources.read_source(path, split=split, sample_by=cfg.sample_by, text_column=cfg.text_column,
                                       label_column=cfg.label_column, encoding=cfg.encoding, fields=_fields(cfg))
            for split, path in cfg.files.items()}


def _check_sources(cfg) -> None:
    if bool(cfg.files) == bool(cfg.source):
        raise ConfigError("set exactly one of data.benchmark, data.files (split -> path) and data.source "
                          "(+ data.split_ratios)")
    _check_subset(cfg)


def records(cfg, encoder: formats.Encoder | None = None) -> dict[str, list[dict]]:
    """The raw examples of each split of ``cfg`` (the ``data`` section), as the trials read them: the same files,
    or the same ``source`` carved by ``split_ratios`` and ``split_seed``, the same ``quality`` drops from train
    (``encoder``: for its token limit) and the same ``train_examples`` sample of train (the trials' text formats,
    the reference baselines and scripts/report.py use it)."""
    return _checked_records(cfg, encoder)[0]


def raw_records(cfg) -> dict[str, list]:
    """The splits of ``cfg`` (the data section) as the quality checks see them in a trial (:mod:`adapt.data.quality`):
    the records of each split (CoNLL: its (tokens, tags) sentences), before any check drops one and before
    ``data.train_examples`` samples train."""
    cfg = catalog.locate(cfg)
    if cfg.format == "conll":
        return {s: formats.read_conll(p, token_column=cfg.conll_token_column, tag_column=cfg.conll_tag_column)
                for s, p in cfg.files.items()}
    _check_sources(cfg)
    return eval_subsets(cfg, _records(cfg))


def _checked_records(cfg, encoder=None) -> tuple[dict[str, list[dict]], dict | None]:
    """:func:`records` and the quality report (None when every check is off)."""
    cfg = catalog.locate(cfg)
    _check_sources(cfg)
    out, report = quality.clean(cfg, _records(cfg), encoder)
    if _sampled(cfg) and "train" in out:
        out["train"] = _train_subset(cfg, out["train"])
    return eval_subsets(cfg, out), report


def eval_subsets(cfg, splits: dict[str, list]) -> dict[str, list]:
    """``splits`` with each split that ``cfg.eval_examples`` caps cut to its seeded sample (``split_seed``; the
    examples kept stay in file order)."""
    caps = dict(cfg.get("eval_examples", {}) or {})
    for split, n in caps.items():
        if split == "train" or split not in splits:
            raise ConfigError(f"data.eval_examples.{split}: expected an evaluation split of the data "
                              f"({', '.join(s for s in splits if s != 'train')}); train's size is data.train_examples")
        if not (isinstance(n, int) and n >= 1):
            raise ConfigError(f"data.eval_examples.{split}={n!r}; expected a whole number of examples >= 1")
    out = dict(splits)
    for split, n in caps.items():
        if n < len(splits[split]):
            keep = np.sort(np.random.default_rng([cfg.get("split_seed", 0), 1]).permutation(len(splits[split]))[:n])
            out[split] = [splits[split][i] for i in keep]
    return out


def _encode(cfg, tokenizer, encoder: formats.Encoder) -> dict:
    def where(split):
        return f"{cfg.files.get(split, cfg.source)} ({split})"

    out = {}
    if cfg.format == "conll":
        sents = {s: formats.read_conll(p, token_column=cfg.conll_token_column, tag_column=cfg.conll_tag_column)
                 for s, p in cfg.files.items()}
        if "train" not in sents:
            raise ConfigError("data.files has no 'train' split: the tag vocabulary is built from it")
        sents, out["quality"] = quality.clean(cfg, sents, encoder)
        sents["train"] = train_sentences(cfg, sents["train"])
        sents = eval_subsets(cfg, sents)
        labels = sorted({tag for _, tags in sents["train"] for tag in tags})
        for s, sentences in sents.items():
            out[s] = formats.encode_token_classification(sentences, encoder, vocab=labels,
                                                         max_length=cfg.max_length, where=where(s))
        out["labels"] = labels
        return out
    splits, out["quality"] = _checked_records(cfg, encoder)
    if augment.enabled(cfg) and "train" in splits:  # train only: dev and test are never augmented
        splits["train"] = augment.augment_records(splits["train"], cfg)
    if _sampled(cfg) and "train" not in splits:
        raise ConfigError(f"data.train_examples={cfg.train_examples:g} needs a 'train' split; the data has "
                          f"{', '.join(splits) or 'none'}")
    if cfg.format == "classification":
        labels = None
        if cfg.label_type == "category":
            if "train" not in splits:
                raise ConfigError("data has no 'train' split: the label vocabulary is built from it")
            labels = formats.label_vocabulary(splits["train"], cfg.label_column, where("train"))
            out["labels"] = labels
        for s, recs in splits.items():
            out[s] = formats.encode_classification(recs, encoder, text=cfg.text_column, label=cfg.label_column,
                                                   vocab=labels, max_length=cfg.max_length, where=where(s),
                                                   pair=cfg.text_pair_column or None, truncation=cfg.truncation)
        return out
    for s, recs in splits.items():
        if cfg.format == "lm":
            sources.require_columns(recs, {cfg.text_column: sources.TEXT}, where(s))
            docs = formats.encode_documents([str(r[cfg.text_column]) for r in recs], encoder, causal=cfg.causal)
            cols = {"input_ids": docs if cfg.pack else [d[:cfg.max_length] for d in docs]}
        else:
            cols = formats.encode_sft(recs, tokenizer, prompt=cfg.prompt_column, response=cfg.response_column,
                                      max_length=cfg.max_length, where=where(s))
        out[s] = pack(cols, cfg.max_length) if cfg.pack else cols
    return out


def prepare(cfg, tokenizer) -> tuple[dict, bool]:
    """The tokenised splits for ``cfg`` (the ``data`` section) and whether they came from the cache."""
    schema.check(SCHEMA, cfg, "data")
    augment.check(cfg)
    quality.settings(cfg)  # a bad mode or threshold: one line, before anything is read
    cfg = catalog.locate(cfg)
    _check_sources(cfg)
    files = list(cfg.files.values()) if cfg.files else [cfg.source]
    encoder = formats.Encoder(tokenizer)
    # the stages only weigh the training mixture's batches; a benchmark is located (its files are hashed)
    skip = {"cache_dir", "mixture_stages", "benchmark"}
    skip |= {"train_examples", "train_seed", "train_subset"} if not _sampled(cfg) else set()
    skip |= {"eval_examples"} if not cfg.get("eval_examples") else set()
    skip |= {"augment"} if not augment.enabled(cfg) else set()
    skip |= {"quality"} if not quality.enabled(cfg) else set()
    settings = {k: v for k, v in cfg.to_dict().items() if k not in skip}  # all data: old cache entries stay valid
    if "augment" in settings:  # where paraphrases are cached does not change them
        settings["augment"]["paraphrase"].pop("cache_dir", None)
    key = cache_key(files, encoder.fingerprint(), settings)
    data, hit = cached(key, lambda: _flatten(_encode(cfg, tokenizer, encoder)), cfg.cache_dir or None)
    return _unflatten(data), hit


def files_read(cfg) -> dict[str, dict]:
    """The files the data section ``cfg`` reads (its benchmark located): split (or "source") -> ``{"path",
    "sha256"}`` (a folder's digest covers its files; :func:`adapt.data.cache.file_digest`)."""
    cfg = catalog.locate(cfg)
    files = dict(cfg.files) if cfg.files else {"source": cfg.source}
    return {split: {"path": os.path.abspath(path), "sha256": file_digest(path)} for split, path in files.items()}


def _sampled(cfg) -> bool:
    return bool(cfg.get("train_examples", 0))


def _check_subset(cfg) -> None:
    n, subset = cfg.get("train_examples", 0), cfg.get("train_subset", "sample")
    if subset not in TRAIN_SUBSETS:
        raise ConfigError(f"data.train_subset={subset!r}; expected one of {', '.join(TRAIN_SUBSETS)}")
    if n < 0 or (n > 1 and n != int(n)):
        raise ConfigError(f"data.train_examples={n:g}; expected a count of examples (a whole number >= 1), a "
                          f"fraction in (0, 1), or 0 for all")
    if subset == "pool" and not n:
        raise ConfigError("data.train_subset='pool' is the train examples that data.train_examples leaves out; "
                          "set data.train_examples")


def sample_size(train_examples: float, total: int) -> int:
    """How many of ``total`` train examples ``data.train_examples`` keeps (a count, or a fraction rounded)."""
    n = int(round(train_examples * total)) if 0 < train_examples < 1 else int(train_examples)
    if not 1 <= n <= total:
        raise ConfigError(f"data.train_examples={train_examples:g} keeps {n} of the {total} train examples; expected "
                          f"between 1 and {total}")
    return n


def _allocate(counts: list[int], n: int) -> list[int]:
    """``n`` split over strata of ``counts`` in proportion (largest remainders), at least one each."""
    quotas = [n * c / sum(counts) for c in counts]
    take = [min(c, max(1, int(q))) for c, q in zip(counts, quotas)]
    while sum(take) < n:  # the largest remainders first (ties: the first stratum)
        take[max((i for i, c in enumerate(counts) if take[i] < c), key=lambda i: (quotas[i] - take[i], -i))] += 1
    while sum(take) > n:  # the one-each minimum went over: take back from the most over-allocated
        take[max((i for i in range(len(counts)) if take[i] > 1), key=lambda i: (take[i] - quotas[i], -i))] -= 1
    return take


def split_train(n_or_fraction: float, strata: list | None, seed: int, total: int) -> np.ndarray:
    """The sorted indices of the train sample of ``data.train_examples=n_or_fraction`` out of ``total`` records:
    with ``strata`` (each record's label) every stratum keeps its share (rounded by largest remainders) and at
    least one; without, a plain sample. Each stratum is shuffled by ``seed`` (all together when unstratified)
    and its first records taken, so a smaller sample of the same seed lies inside a larger one (up to rounding)."""
    n = sample_size(n_or_fraction, total)
    rng = np.random.default_rng(seed)
    if strata is None:
        return np.sort(rng.permutation(total)[:n])
    names = sorted(set(strata))
    members = {s: [] for s in names}
    for i, s in enumerate(strata):
        members[s].append(i)
    if n < len(names):
        raise ConfigError(f"data.train_examples={n_or_fraction:g} keeps {n} train examples, fewer than the "
                          f"{len(names)} labels; the stratified sample keeps at least one of each")
    take = _allocate([len(members[s]) for s in names], n)
    orders = [rng.permutation(members[s]) for s in names]  # drawn for every stratum, whatever n is
    return np.sort(np.concatenate([order[:k] for order, k in zip(orders, take)]))


def _strata(cfg, records: list[dict]) -> list[str] | None:
    """Each train record's label, when every record has one and labels are categories; else None."""
    col = cfg.label_column
    if cfg.label_type != "category" or not all(isinstance(r, dict) and r.get(col) is not None for r in records):
        return None
    return [str(r[col]) for r in records]


def _train_subset(cfg, records: list, stratify: bool = True) -> list:
    """The train records ``cfg.train_subset`` names: the sample of ``split_train``, or the pool (the rest)."""
    if not _sampled(cfg):
        return records
    keep = split_train(cfg.train_examples, _strata(cfg, records) if stratify else None, cfg.get("train_seed", 0),
                       len(records))
    if cfg.get("train_subset", "sample") == "pool":
        keep = np.setdiff1d(np.arange(len(records)), keep)
        if not len(keep):
            raise ConfigError(f"data.train_subset='pool' is empty: data.train_examples={cfg.train_examples:g} keeps "
                              f"all {len(records)} train examples")
    return [records[i] for i in keep]


def train_sentences(cfg, sentences: list) -> list:
    """The train sentences of a CoNLL split that ``data.train_examples`` keeps (unstratified: a sentence has many
    tags)."""
    return _train_subset(cfg, sentences, stratify=False)


def _flatten(splits: dict) -> dict:  # {"train": {"input_ids": ...}} -> {"train/input_ids": ...} for the cache
    flat = {f"{s}/{k}": v for s, cols in splits.items() if s not in ("labels", "quality") for k, v in cols.items()}
    if "labels" in splits:
        flat["labels"] = np.asarray(splits["labels"])
    if splits.get("quality"):  # the quality report, as JSON text
        flat["quality"] = np.asarray(json.dumps(splits["quality"]))
    return flat


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for key, v in flat.items():
        if key == "labels":
            out["labels"] = [str(x) for x in v]
        elif key == "quality":
            out["quality"] = json.loads(str(v))
        else:
            split, col = key.split("/", 1)
            out.setdefault(split, {})[col] = v
    return out


def save_labels(workdir: str, labels: list[str]) -> None:
    """The label vocabulary beside the run's checkpoints (``labels.json``), in id order, written atomically."""
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "labels.json"), labels, indent=1)


def section(cfg, spec: dict, where: str) -> ml_collections.ConfigDict:
    """The data section ``cfg`` with ``spec``'s keys set: the data of one mixture source or one named evaluation
    set (``where``: its config key, for errors). A ``benchmark`` key sets that benchmark's data keys first
    (:meth:`adapt.data.catalog.Benchmark.data_keys`; nothing is read), the spec's other keys then override them;
    each key replaces the section's value whole, and ``files`` clears ``source`` and the other way round (and,
    without a ``benchmark`` of the spec's own, the section's benchmark). The result has no ``mixture`` or
    ``mixture_stages``."""
    spec = dict(spec)
    schema.check(SOURCE_SCHEMA, spec, where)
    sub = ml_collections.ConfigDict(cfg.to_dict())
    sub.mixture, sub.mixture_stages = {}, []
    benchmark = spec.pop("benchmark", None)
    if not benchmark and ("files" in spec or "source" in spec):
        sub.benchmark = ""
    for keys in ([catalog.get(benchmark).data_keys()] if benchmark else []) + [spec]:
        if "source" in keys:
            sub.files = {}
        if "files" in keys:
            sub.source = ""
        for k, v in keys.items():
            try:
                sub[k] = v
            except (TypeError, ValueError) as e:  # the type of this section's value
                raise ConfigError(f"{where}.{k}={schema.show(v)}: {e}") from None
    return sub


def component(cfg, name: str) -> ml_collections.ConfigDict:
    """The ``data`` section for mixture source ``name``: this section with the source's own keys (see
    :func:`section`)."""
    return section(cfg, {k: v for k, v in cfg.mixture[name].items() if k != "weight"}, f"data.mixture.{name}")


def _check_weights(weights: dict, where: str, key) -> None:
    """Each weight a finite number >= 0 (``key(source)``: its name in errors), not all 0."""
    for n, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not (w >= 0 and math.isfinite(w)):
            raise ConfigError(f"{key(n)}={schema.show(w)}; expected a finite number >= 0")
    if not sum(weights.values()) > 0:
        raise ConfigError(f"{where}: every weight is 0 ({', '.join(f'{n}={w}' for n, w in weights.items())}); "
                          f"at least one source needs a positive weight")


def _check_stages(stages, names: list[str]) -> None:
    pair = "[step, {source: weight}]"
    if not isinstance(stages, (list, tuple)):
        raise ConfigError(f"data.mixture_stages={schema.show(stages)}; expected a list of {pair} pairs")
    for i, stage in enumerate(stages):
        where = f"data.mixture_stages[{i}]"
        if not (isinstance(stage, (list, tuple)) and len(stage) == 2 and isinstance(stage[0], int)
                and not isinstance(stage[0], bool) and isinstance(stage[1], _MAPS)):
            raise ConfigError(f"{where}={schema.show(stage)}; expected a {pair} pair")
        step, weights = stage
        if i == 0 and step != 0:
            raise ConfigError(f"{where} starts at step {step}; the first stage starts at step 0")
        if i and step <= stages[i - 1][0]:
            raise ConfigError(f"{where} starts at step {step}, not after data.mixture_stages[{i - 1}]'s step "
                              f"{stages[i - 1][0]}; the steps must increase")
        unknown = [n for n in weights if n not in names]
        if unknown:
            raise ConfigError(f"{where} weighs {', '.join(map(repr, unknown))}, not a source of data.mixture; its "
                              f"sources: {', '.join(names)}")
        _check_weights(dict(weights), where, lambda n, where=where: f"{where}: {n}")


def check_mixture(cfg) -> None:
    """Check the training mixture of ``cfg`` (the ``data`` section) before anything is read: each source's keys,
    and either every source's weight or ``mixture_stages``. Raises a one-line ConfigError naming the key."""
    mixture, stages = cfg.get("mixture", {}), cfg.get("mixture_stages", [])
    if stages and not mixture:
        raise ConfigError("data.mixture_stages weighs the sources of data.mixture, which names none")
    for name, spec in mixture.items():
        where = f"data.mixture.{name}"
        if not isinstance(spec, _MAPS):
            raise ConfigError(f"{where}={schema.show(spec)}; expected the source's keys (weight, files or source, ...)")
        schema.check(SCHEMA["mixture"].values, spec, where)
        if stages and "weight" in spec:
            raise ConfigError(f"{where}.weight and data.mixture_stages are both set; use one (a weight per source, "
                              f"or weights per stage)")
        if not stages and "weight" not in spec:
            raise ConfigError(f"{where} has no weight; give each source of data.mixture one, or weigh them per "
                              f"stage in data.mixture_stages")
    if stages:
        _check_stages(stages, list(mixture))
    elif mixture:
        _check_weights({n: spec["weight"] for n, spec in mixture.items()}, "data.mixture",
                       lambda n: f"data.mixture.{n}.weight")


def train_stream(cfg, tokenizer, batch_size: int, seed: int, train: dict | None = None):
    """The training batches: the mixture of ``cfg.mixture``'s sources (each one's train split), weighted by
    their weights or by ``cfg.mixture_stages`` (checked first: :func:`check_mixture`), or ``train`` (this
    section's prepared train split)."""
    check_mixture(cfg)
    if not cfg.mixture:
        return array_batches(train, batch_size, seed=seed)
    streams = {}
    for i, name in enumerate(cfg.mixture):
        splits, _ = prepare(component(cfg, name), tokenizer)
        if "train" not in splits:
            raise ConfigError(f"data.mixture.{name} has no train split")
        streams[name] = RowStream(splits["train"], seed=seed + 1000 * i, name=name)
    stages = cfg.get("mixture_stages", [])
    weights = ([(step, {n: float(w) for n, w in ws.items()}) for step, ws in stages] if stages
               else {n: float(spec["weight"]) for n, spec in cfg.mixture.items()})
    return Mixture(streams, weights, batch_size, seed=seed)
