"""Continued pretraining of an encoder with masked LM on a benchmark's own text (task-adaptive
pretraining, TAPT) or on a domain corpus (DAPT): one trial, whose ``export/`` a fine-tuning run starts from.

    .venv/bin/python scripts/train.py --config=configs/pretrain.py:bbc --workdir=runs/tapt-bbc
    .venv/bin/python scripts/train.py --config=configs/finetune.py:bbc --workdir=runs/bbc-tapt \
        --config.init_from=runs/tapt-bbc/export

``arg``: a benchmark of :mod:`adapt.data.catalog`; its text (labels ignored) is the pretraining corpus. For DAPT,
point ``--config.data.files`` (or ``data.source``) at a domain text collection instead.
"""

from adapt.data import catalog
from adapt.experiment import base_config


def get_config(arg="bbc"):
    c = base_config()
    catalog.apply(c, arg)
    c.model.task = "masked_lm"
    c.data.update(format="lm", causal=False, pack=True, max_length=128)
    c.optimizer.update(learning_rate=1e-4, weight_decay=0.01, warmup_ratio=0.06, schedule="linear")
    c.train.update(batch_size=16, epochs=1.0, log_every=20, early_stopping=dict(metric="", mode="min", patience=0))
    c.eval.splits = ("dev",)
    c.export.model = True
    return c
