"""Pool-based active learning on BBC News with MiniLM-L6 (both bundled), on the CPU: does picking which articles to
label (by the model's uncertainty, BALD under MC dropout, or a k-center coreset of its [CLS] states) beat labelling
random ones, from 10 labelled articles up to 30? The design, command, wall time and tables are in the README beside
this file.

    .venv/bin/python scripts/active.py --config=experiments/active_learning/config.py --workdir=runs/active_learning

Each loop starts from 10 labelled articles (2 per class, stratified) of a seeded 400-article sample of the 1,780
training articles (the pool, so that scoring it stays cheap on 2 cores), acquires 10 per round for 2 rounds and
fine-tunes MiniLM afresh at each budget (10, 20, 30) for a fixed 16 steps (batch 8, full fine-tuning, learning
rate 3e-4, the rate the bbc_tapt study selected for 80 articles); the model after the last step is evaluated on the
fixed test split (223 articles; nothing is selected on dev, which is not evaluated) and scores the pool (BALD: 5
dropout passes). Inputs are an article's first 64 tokens. 3 seeds.
``:smoke`` is a pipeline check (2 strategies, 1 seed, 1 round of 2-step trials).
"""

import os

from adapt.experiment import configs
from adapt.study import active

HERE = os.path.dirname(os.path.abspath(__file__))
STRATEGIES = ("random", "least_confidence", "margin", "entropy", "bald", "coreset")


def get_config(arg=None):
    c = configs.load(os.path.join(HERE, "..", "..", "configs", "finetune.py:bbc"))
    c.data.update(max_length=64)
    c.train.update(steps=16 if arg is None else 2, epochs=0.0, batch_size=8, log_every=8)
    c.train.early_stopping.metric = ""  # a fixed budget: the model after the last step is evaluated
    c.optimizer.update(learning_rate=3e-4, warmup_ratio=0.1, schedule="linear")
    c.eval.update(batch_size=128, splits=("test",))  # no dev: nothing is selected on it, and time is short
    c = active.with_section(c)
    c.active.update(strategies=STRATEGIES, seeds=(0, 1, 2), initial=10, acquire=10, rounds=2, pool_size=400,
                    mc_samples=5)
    if arg == "smoke":
        c.active.update(strategies=("random", "bald"), seeds=(0,), rounds=1, mc_samples=2)
    return c
