"""Fine-tune an encoder on a classification benchmark: one trial.

    .venv/bin/python scripts/train.py --config=configs/finetune.py:bbc --workdir=runs/bbc
    .venv/bin/python scripts/train.py --config=configs/finetune.py:chemprot,lora --workdir=runs/chemprot-lora \
        --config.optimizer.learning_rate=3e-4 --config.method.rank=16

``arg``: a benchmark of :mod:`adapt.data.catalog` with a classification head to train: a sequence-classification one
(bbc, chemprot, citation_intent, sciie) or the tagging one (bc5cdr, token classification, span F1), optionally
followed by ``,<method>`` (an adaptation method of :mod:`adapt.methods`; full fine-tuning by default). Start from a
continued-pretraining run's export with ``--config.init_from=<that run>/export``.

Its sweeps (``get_sweep``; pick one with ``--sweep``) run with scripts/sweep.py and tabulate with scripts/table.py:

    .venv/bin/python scripts/sweep.py --config=configs/finetune.py:chemprot --workdir=runs/chemprot --workers=2
    .venv/bin/python scripts/sweep.py --config=configs/finetune.py:chemprot,lora --sweep=random --workdir=runs/cl
    .venv/bin/python scripts/table.py --db=runs/chemprot/results.db --metric=micro_f1 --vs=optimizer.learning_rate
"""

from adapt import methods
from adapt.core.errors import ConfigError
from adapt.data import catalog
from adapt.experiment import base_config
from adapt.methods import method_config
from adapt.study.sweeps import grid, loguniform, product, random, uniform

# Learning rates per kind of method: those that train every pretrained weight, and those that train a few
# added or selected parameters (LoRA, adapters, prompts, BitFit), which take rates 10x higher.
LEARNING_RATES = {"every": [1e-5, 2e-5, 3e-5, 5e-5], "few": [1e-4, 3e-4, 1e-3]}
NAMES = [n for n, b in catalog.BENCHMARKS.items() if b.task in ("sequence_classification", "token_classification")]


def get_config(arg="bbc"):
    benchmark, _, method = arg.partition(",")
    if benchmark not in NAMES:
        raise ConfigError(f"configs/finetune.py:{arg}: {benchmark!r} is not a benchmark with a classification or "
                          f"tagging head; expected one of {', '.join(NAMES)}")
    c = base_config()
    catalog.apply(c, benchmark)  # its data, its task (a tagging one: token classification) and metric
    c.data.update(max_length=256, truncation="head")
    c.method = method_config(method or "full")
    c.optimizer.update(learning_rate=2e-5, weight_decay=0.01, warmup_ratio=0.06, schedule="linear")
    c.train.update(batch_size=16, epochs=3.0, log_every=20, early_stopping=dict(mode="max", patience=0))
    return c


def get_sweep(arg="bbc"):
    """default: learning rate x weight decay x 3 seeds; dropout: hidden x attention dropout x 3 seeds at the
    config's rate; random: 16 (learning rate, weight decay) draws, log-uniform around the grid, x 3 seeds."""
    method = arg.partition(",")[2] or "full"
    rates = LEARNING_RATES["every" if methods.METHODS[method].trains_every_weight else "few"]
    seeds = grid("train.seed", [0, 1, 2])
    draws = [{**lr, **wd} for lr, wd in zip(random("optimizer.learning_rate", loguniform(rates[0], rates[-1]), 16),
                                            random("optimizer.weight_decay", uniform(0.0, 0.1), 16))]
    return {
        "default": product(grid("optimizer.learning_rate", rates), grid("optimizer.weight_decay", [0.0, 0.01]), seeds),
        "dropout": product(grid("model.hidden_dropout", [0.0, 0.1, 0.2]), grid("model.attention_dropout", [0.0, 0.1]),
                           seeds),
        "random": product(draws, seeds),
    }
