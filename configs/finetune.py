"""Fine-tune an encoder on a classification benchmark: one trial.

    .venv/bin/python scripts/train.py --config=configs/finetune.py:bbc --workdir=runs/bbc
    .venv/bin/python scripts/train.py --config=configs/finetune.py:chemprot,lora --workdir=runs/chemprot-lora \
        --config.optimizer.learning_rate=3e-4 --config.method.rank=16

``arg``: a benchmark of :mod:`adapt.tasks` (bbc, chemprot, citation_intent, sciie), optionally followed by
``,<method>`` (an adaptation method of :mod:`adapt.methods`; full fine-tuning by default). Start from a
continued-pretraining run's export with ``--config.init_from=<that run>/export``.
"""

from adapt import tasks
from adapt.experiment import base_config
from adapt.methods import method_config


def get_config(arg="bbc"):
    benchmark, _, method = arg.partition(",")
    c = base_config()
    tasks.apply(c, benchmark)
    c.data.update(format="classification", max_length=256, truncation="head")
    c.method = method_config(method or "full")
    c.optimizer.update(learning_rate=2e-5, weight_decay=0.01, warmup_ratio=0.06, schedule="linear")
    c.train.update(batch_size=16, epochs=3.0, log_every=20, early_stopping=dict(mode="max", patience=0))
    c.condition = f"{method or 'full'}"
    return c
