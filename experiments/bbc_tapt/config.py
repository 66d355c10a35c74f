"""The main job: with a few labelled articles per class and the rest of the training articles as unlabelled
in-domain text, does task-adaptive pretraining help, and does LoRA match full fine-tuning? MiniLM-L6 (bundled)
on BBC News topic classification (bundled, 5 classes), all on CPU (the time, as measured, in the README beside
this file).

    .venv/bin/python scripts/study.py --config=experiments/bbc_tapt/config.py --workdir=runs/bbc_tapt

Column "16 per class": 80 labelled training articles (``data.train_examples``, a stratified sample seeded by
``data.train_seed``). Rows: Baseline (fine-tune the pretrained encoder on them) vs. TAPT (first continue
masked-LM pretraining on the other 1,700 training articles, ``data.train_subset="pool"``, no labels; Gururangan
et al., 2020, "Don't Stop Pretraining", arXiv:2004.10964, their low-resource "curated TAPT" setting), each
fine-tuned fully and with LoRA (rank 8 on query/value, classifier trained). Each over a 3-point learning-rate
grid, selected by mean dev accuracy over the seeds, whose middle is where earlier runs of this budget peaked.
Column "all": the ceiling, full fine-tuning on all 1,780 training articles for one epoch, one seed. Floors:
majority class and TF-IDF + logistic regression, fit on the same labelled articles of each column. Comparisons:
TAPT against Baseline per method, LoRA against full. Inputs are the first 64 tokens of an article.
``:smoke`` shrinks it to a pipeline check (2 steps, LoRA only at one learning rate, a 2-step ceiling).

``--sweep=search`` (scripts/sweep.py, not study.py, which runs the sweep called "default"): an adaptive search
instead of the grid, for the Baseline LoRA row: Optuna's TPE picks the learning rate, weight decay and rank of
16 trials (3 with ``:smoke``) by dev accuracy, pruning a trial whose dev accuracy at an evaluation is below the
median of the earlier trials' there.
"""

import os

from adapt.experiment import configs
from adapt.methods import method_config
from adapt.study.sweeps import choice, grid, loguniform, product, search, stage, uniform

HERE = os.path.dirname(os.path.abspath(__file__))
LABELS = 80  # 16 per class: the 5 BBC classes are near balanced and the sample is stratified
FEW, ALL = "16 per class", "all"  # the table's columns (meta.labels)
SEEDS = {None: [0, 1], "smoke": [0, 1]}
LEARNING_RATES = {None: {"full": [1e-4, 3e-4, 1e-3], "lora": [1e-3, 3e-3, 1e-2]}, "smoke": {"lora": [1e-3]}}
STEPS = {None: {"tapt": 64, "finetune": 24, "ceiling": 0}, "smoke": {"tapt": 2, "finetune": 2, "ceiling": 2}}
SEARCH = {None: {"n": 16, "eval_every": 8}, "smoke": {"n": 3, "eval_every": 1}}  # trials; steps between evaluations


def get_config(arg=None):
    c = configs.load(os.path.join(HERE, "..", "..", "configs", "finetune.py:bbc"))
    c.data.update(max_length=64, train_examples=LABELS, train_seed=0)
    c.train.update(steps=STEPS[arg]["finetune"], epochs=0.0, batch_size=8, log_every=8 if arg is None else 1)
    c.train.early_stopping.metric = ""  # a fixed budget: the model after the last step is evaluated
    c.optimizer.update(warmup_ratio=0.1, schedule="linear")
    c.eval.batch_size = 128
    return c


def _methods(arg):
    return [{"method": method_config(name, **({"rank": 8} if name == "lora" else {})).to_dict(),
             "meta.method": name, **g}
            for name in LEARNING_RATES[arg] for g in grid("optimizer.learning_rate", LEARNING_RATES[arg][name])]


def get_sweep(arg=None):
    few = {"meta.labels": FEW}
    tapt = stage("tapt", {"model.task": "masked_lm", "data.format": "lm", "data.causal": False, "data.pack": True,
                          "data.train_subset": "pool", "train.steps": STEPS[arg]["tapt"], "train.batch_size": 16,
                          "optimizer.learning_rate": 1e-4, "eval.splits": (), "export.model": True,
                          "meta.condition": "TAPT"})
    seeds = grid("train.seed", SEEDS[arg])
    baseline = stage("baseline", product({"meta.condition": "Baseline", **few}, _methods(arg), seeds))
    adapted = stage("tapt_finetune", product({"meta.condition": "TAPT", **few}, _methods(arg), seeds),
                    after="tapt", match=["meta.condition"])
    ceiling = stage("ceiling", {"meta.condition": "Baseline", "meta.method": "full", "meta.labels": ALL,
                                "method": method_config("full").to_dict(), "data.train_examples": 0,
                                "train.steps": STEPS[arg]["ceiling"], "train.epochs": 1.0, "train.batch_size": 16,
                                "optimizer.learning_rate": 1e-4, "train.seed": 0})
    lora = search({"optimizer.learning_rate": loguniform(3e-4, 3e-2), "optimizer.weight_decay": uniform(0.0, 0.1),
                   "method.rank": choice([4, 8, 16])}, n=SEARCH[arg]["n"], metric="dev/accuracy", mode="max",
                  pruner="median", seed=0,
                  fixed={"method": method_config("lora").to_dict(), "train.eval_every": SEARCH[arg]["eval_every"],
                         "meta.condition": "Baseline", "meta.method": "lora", **few})
    return {"default": [tapt, baseline, adapted, ceiling], "search": lora}


def get_table(arg=None):
    pairs = [(f"TAPT / {m}", f"Baseline / {m}") for m in LEARNING_RATES[arg]]
    return dict(rows=("meta.condition", "meta.method"), column="meta.labels", metric="accuracy", average=False,
                curves=("train/loss",), vs=("optimizer.learning_rate",), baselines=("majority", "tfidf"),
                compare=pairs + ([("Baseline / lora", "Baseline / full")] if len(LEARNING_RATES[arg]) > 1 else []))
