"""The ``data`` section of a trial's config: its keys at their defaults (:func:`data_defaults`) and their declared
types and ranges (:data:`SCHEMA`; :data:`SOURCE_SCHEMA` for one set of data: a mixture source, a named evaluation
set, a multi-task task). What the keys mean in use is :mod:`adapt.data.pipeline`'s docstring."""

from __future__ import annotations

import ml_collections

from adapt.core.files import user_cache
from adapt.core.schema import Bool, Choice, Float, Int, Map, Path, Str, Tuple
from adapt.data import augment, catalog, quality

FORMATS = ("lm", "classification", "conll", "sft")
TRAIN_SUBSETS = ("sample", "pool")
LABEL_TYPES = ("category", "number")


def data_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        format="classification",
        # a name of adapt.data.catalog whose data this section reads (files found when read; files below replace
        # its splits); set with adapt.data.catalog.apply
        benchmark="",
        files={},  # split -> file or folder (train, dev, test)
        source="",  # or one source, carved into splits by split_ratios
        split_ratios={},
        split_seed=0,
        text_column="text", text_pair_column="", label_column="label",
        label_type="category",  # classification: category (a label vocabulary from train) | number (regression)
        prompt_column="prompt", response_column="response",
        sample_by="line",  # .txt sources: line | paragraph | document | conll (a CoNLL file's text per document)
        encoding="utf-8",  # of text files (the BBC News corpus is latin-1)
        max_length=128,
        truncation="head",  # head | tail | head+tail
        causal=True,  # lm: causal (EOS-terminated documents) or masked (CLS ... SEP)
        pack=True,  # lm/sft: pack into rows of max_length (lm unpacked: a document a row, cut at max_length)
        conll_token_column=0, conll_tag_column=-1,
        cache_dir=user_cache("tokenized"),  # "" disables the cache
        # Training mixture: name -> {"weight": w, plus any keys of this section for that source (each replaces
        # this section's value whole), e.g. "benchmark": a name of adapt.data.catalog, with its data keys};
        # e.g. {"domain": {"weight": 0.75, "files": {"train": "bio.txt"}}, "general": {"weight": 0.25,
        # "benchmark": "bbc"}}. Each row of a batch comes from a source drawn with these weights: shares of
        # rows (sequences), not of tokens (for packed lm rows the two coincide). Empty: train on this
        # section's own train split.
        mixture={},
        # Or weights that change during training, instead of the sources' own: [[step, {source: weight}], ...],
        # the first at step 0, steps increasing; a stage weighs the batches from its step (optimizer steps done
        # before the batch) until the next stage's, and a source it leaves out weighs 0 there.
        mixture_stages=[],
        # Training-set size (see the module docstring): a number >= 1 is a count of train examples, one in
        # (0, 1) a fraction of them, 0 all; the sample is seeded by train_seed (independent of train.seed) and
        # stratified by label when the train records have labels; train_subset "sample" trains on it, "pool"
        # on the rest of the train split.
        train_examples=0.0,
        train_seed=0,
        train_subset="sample",  # sample | pool
        # Evaluation-set size, for budgets that cannot evaluate a whole split: split -> N keeps a seeded random
        # sample (split_seed) of N of that split's examples, in file order; e.g. {"test": 1000}. Trials, baselines
        # and floors all read the same sample; {}: every example.
        eval_examples={},
        # Data quality checks on the raw examples, before the train_examples sample: duplicates, near duplicates,
        # train->dev/test leakage, empty and over-long examples, labels, likely label errors; each "off" |
        # "report" | "drop" (from train only). See adapt/data/quality.py.
        quality=quality.defaults(),
        # Augmented copies of the train examples (after the train_examples sample; classification and sft):
        # EDA-style token edits or language-model paraphrases, seeded; see adapt/data/augment.py. copies=0: off.
        augment=augment.defaults(),
    ))


_COLUMN = "a column (field) name of the records"
#: The keys of one set of data: this section's, a mixture source's, a named evaluation set's or a task's
#: (adapt.evaluation.evalsets, adapt.features.multitask), each checked against its declaration.
SOURCE_SCHEMA = dict(
    benchmark=Choice("", *catalog.BENCHMARKS, doc="a benchmark whose data the section reads (found when read)"),
    format=Choice(*FORMATS, doc="how records become rows: lm, classification, conll or sft"),
    files=Map(Path(empty=False), doc="split -> file or folder (train, dev, test)"),
    source=Path(doc="one source carved into splits by split_ratios (instead of files)"),
    split_ratios=Map(Float(ge=0, le=1), doc="split -> share of source's records (the shares add up to 1)"),
    split_seed=Int(min=0, doc="the carving's shuffle; the evaluation samples of eval_examples"),
    text_column=Str(empty=False, doc=_COLUMN), text_pair_column=Str(doc=_COLUMN + ' ("": no pair)'),
    label_column=Str(empty=False, doc=_COLUMN),
    label_type=Choice(*LABEL_TYPES, doc="classification: category (a vocabulary from train) or number (regression)"),
    prompt_column=Str(empty=False, doc=_COLUMN), response_column=Str(empty=False, doc=_COLUMN),
    sample_by=Choice("line", "paragraph", "document", "conll", doc=".txt sources: what one record is"),
    encoding=Str(empty=False, doc="of text files"),
    max_length=Int(min=1, doc="tokens per row"),
    truncation=Choice("head", "tail", "head+tail", doc="which tokens an over-long example keeps"),
    causal=Bool(doc="lm: causal (EOS-terminated documents) or masked (CLS ... SEP)"),
    pack=Bool(doc="lm/sft: pack documents into rows of max_length"),
    conll_token_column=Int(doc="CoNLL files: the token's column (negative: from the end)"),
    conll_tag_column=Int(doc="CoNLL files: the tag's column (negative: from the end)"),
    cache_dir=Path(doc='the tokenised-data cache; "": none'),
    train_examples=Float(ge=0, hint="a count >= 1, a fraction in (0, 1), or 0 for all",
                         doc="the train sample's size"),
    train_seed=Int(min=0, doc="the train sample's draw"),
    train_subset=Choice(*TRAIN_SUBSETS, doc="train on the sample or on the rest of train (the pool)"),
    eval_examples=Map(Int(min=1), doc="split -> N: a seeded sample of N of that split's examples"),
    quality=quality.SCHEMA,
    augment=augment.SCHEMA,
)
#: The ``data`` section's keys declared: :data:`SOURCE_SCHEMA`, a mixture's sources and its stages.
SCHEMA = dict(  # of data_defaults()
    SOURCE_SCHEMA,
    mixture=Map(dict(SOURCE_SCHEMA, weight=Float(ge=0, doc="the source's share of rows")),
                doc="name -> a source's data keys and weight; {}: this section's own train split"),
    mixture_stages=Tuple(of=Tuple(items=(Int(min=0), Map(Float(ge=0)))),
                         doc="[[step, {source: weight}], ...]: weights that change with the step"),
)
