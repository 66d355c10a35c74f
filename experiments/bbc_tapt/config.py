"""The main job: does task-adaptive pretraining help, with full fine-tuning and with LoRA? MiniLM-L6 (bundled)
on BBC News topic classification (bundled), all on CPU: 5 minutes on 2 AVX-512 cores, 13 on 2 AVX2-only ones
(the README beside this file).

    .venv/bin/python scripts/study.py --config=experiments/bbc_tapt/config.py --workdir=runs/bbc_tapt

Conditions (rows): Baseline (fine-tune the pretrained encoder) vs. TAPT (first continue masked-LM pretraining
on the task's own training text, Gururangan et al., 2020, "Don't Stop Pretraining", arXiv:2004.10964), each
fine-tuned fully and with LoRA (rank 8, on query/value, classifier trained). For each: a small learning-rate
grid (selected by dev accuracy, as papers do) x 3 seeds; the table gives test accuracy mean ± std over the
seeds of the selected learning rate. Shrunk to fit the budget: inputs cut to 48 tokens, 20 fine-tuning steps
of 16 articles, 32 TAPT steps of 16 rows of 48 tokens. ``:smoke`` shrinks it to a pipeline check (2 steps,
2 seeds, LoRA only at one learning rate).
"""

import os

from adapt import configs
from adapt.methods import method_config
from adapt.sweeps import grid, product, stage

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = {None: [0, 1, 2], "smoke": [0, 1]}
LEARNING_RATES = {None: {"full": [1e-4, 3e-4], "lora": [1e-3, 3e-3]}, "smoke": {"lora": [1e-3]}}
STEPS = {None: {"tapt": 32, "finetune": 20}, "smoke": {"tapt": 2, "finetune": 2}}


def get_config(arg=None):
    c = configs.load(os.path.join(HERE, "..", "..", "configs", "finetune.py:bbc"))
    c.data.max_length = 48
    c.train.update(steps=STEPS[arg]["finetune"], batch_size=16, log_every=4 if arg is None else 1)
    c.train.early_stopping.metric = ""  # a fixed budget: the model after the last step is evaluated
    c.optimizer.update(warmup_ratio=0.1, schedule="linear")
    c.eval.batch_size = 128
    return c


def _methods(arg):
    return [{"method": method_config(name, **({"rank": 8} if name == "lora" else {})).to_dict(),
             "meta.method": name, **g}
            for name in LEARNING_RATES[arg] for g in grid("optimizer.learning_rate", LEARNING_RATES[arg][name])]


def get_sweep(arg=None):
    tapt = stage("tapt", {"model.task": "masked_lm", "data.format": "lm", "data.causal": False, "data.pack": True,
                          "train.steps": STEPS[arg]["tapt"], "optimizer.learning_rate": 1e-4, "eval.splits": (),
                          "export.model": True, "meta.condition": "TAPT"})
    seeds = grid("train.seed", SEEDS[arg])
    baseline = stage("baseline", product({"meta.condition": "Baseline"}, _methods(arg), seeds))
    adapted = stage("tapt_finetune", product({"meta.condition": "TAPT"}, _methods(arg), seeds),
                    after="tapt", match=["meta.condition"])
    return [tapt, baseline, adapted]


def get_table(arg=None):
    return dict(rows=("meta.condition", "meta.method"), column="benchmark", metric="accuracy",
                curves=("train/loss",), vs=("optimizer.learning_rate",), baselines=("majority", "tfidf"),
                compare=[(f"TAPT / {m}", f"Baseline / {m}") for m in LEARNING_RATES[arg]]
                + ([("Baseline / lora", "Baseline / full")] if len(LEARNING_RATES[arg]) > 1 else []))
