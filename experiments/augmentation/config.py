"""Augmentation for small labelled sets: do EDA-style token edits (random deletion, swap, insertion; Wei & Zou,
2019, arXiv:1901.11196) or language-model paraphrases of the training articles help a fine-tuned encoder when
labels are few? MiniLM-L6 (bundled) on BBC News topic classification (bundled, 5 classes), all on CPU (the time,
as measured, in the README beside this file).

    .venv/bin/python scripts/study.py --config=experiments/augmentation/config.py --workdir=runs/augmentation

Columns: 10, 20 and 40 labelled articles per class (``data.train_examples`` 50, 100, 200, a stratified sample
seeded by ``data.train_seed``). Rows: no augmentation, and ``COPIES`` augmented copies of each labelled article
(``data.augment``, adapt/data/augment.py) by each token edit (``p = 0.1``, EDA's alpha) and, in the 10-per-class
column only (generation is slow on CPU), by paraphrase (the bundled SmolLM2-135M-Instruct rewrites the first 40
words, sampled at temperature 0.7, top-p 0.9; generated once, cached by content).
Every trial takes the same number of steps (``STEPS`` of 8 articles, full fine-tuning at the
learning rate experiments/bbc_tapt selected, 3e-4, linear decay after 10% warm-up): augmentation changes what
the steps see, not how many there are. Seeds: 3, each drawing the labelled sample, the augmentation and the
training order anew (``train.seed``, ``data.train_seed`` and ``data.augment.seed`` together), so the intervals
count the sample's variation too. Floors: majority class and TF-IDF + logistic regression on the same labelled
articles (unaugmented). Comparisons: each augmenter against none, per column. Inputs: the first 64 tokens.
``:smoke``: a pipeline check (2 steps, one seed, 10 per class, two rows).
"""

import os

from adapt.experiment import configs
from adapt.study.sweeps import grid, product, stage, zip_

HERE = os.path.dirname(os.path.abspath(__file__))
PER_CLASS = {None: [10, 20, 40], "smoke": [10]}
CLASSES = 5
SEEDS = {None: [0, 1, 2], "smoke": [0]}
STEPS = {None: 40, "smoke": 2}
COPIES = 2
ROWS = {None: ["none", "delete", "swap", "insert", "paraphrase"], "smoke": ["none", "delete"]}
PARAPHRASE = dict(max_words=40, max_new_tokens=64, temperature=0.7, top_p=0.9, batch_size=16)


def get_config(arg=None):
    c = configs.load(os.path.join(HERE, "..", "..", "configs", "finetune.py:bbc"))
    c.data.update(max_length=64, train_examples=PER_CLASS[arg][0] * CLASSES, train_seed=0)
    c.data.augment.update(p=0.1, seed=0)
    c.data.augment.paraphrase.update(PARAPHRASE)
    c.train.update(steps=STEPS[arg], epochs=0.0, batch_size=8, log_every=8 if arg is None else 1)
    c.train.early_stopping.metric = ""  # a fixed budget: the model after the last step is evaluated
    c.optimizer.update(learning_rate=3e-4, warmup_ratio=0.1, schedule="linear")
    c.eval.batch_size = 128
    return c


def _row(name):
    copies = 0 if name == "none" else COPIES
    return {"meta.augment": name, "data.augment.copies": copies, "data.augment.method": name if copies else "delete"}


def get_sweep(arg=None):
    sizes = [{"meta.labels": f"{n} per class", "data.train_examples": n * CLASSES} for n in PER_CLASS[arg]]
    seeds = zip_(grid("train.seed", SEEDS[arg]), grid("data.train_seed", SEEDS[arg]),
                 grid("data.augment.seed", SEEDS[arg]))
    # the paraphrases last: the token edits' numbers come first should the slow stage be cut short
    token = stage("token_edits", product([_row(r) for r in ROWS[arg] if r != "paraphrase"], sizes, seeds))
    stages = [token]
    if "paraphrase" in ROWS[arg]:
        stages.append(stage("paraphrase", product(_row("paraphrase"), sizes[:1], seeds)))  # slow on CPU: 10/class
    return {"default": stages}


def get_table(arg=None):
    rows = ROWS[arg]
    return dict(rows=("meta.augment",), column="meta.labels", metric="accuracy", average=False,
                seed_keys=("train.seed", "data.train_seed", "data.augment.seed"),
                baselines=("majority", "tfidf"), compare=[(r, "none") for r in rows if r != "none"])
