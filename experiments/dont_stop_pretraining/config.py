"""Don't Stop Pretraining (Gururangan et al., ACL 2020, arXiv:2004.10964), its design on the SciBERT task splits:
baseline vs. domain-adaptive (DAPT), task-adaptive (TAPT) and DAPT+TAPT continued masked-LM pretraining, each
then fine-tuned on ChemProt (biomedical), ACL-ARC citation intent and SciERC (computer science).

    .venv/bin/python scripts/study.py --config=experiments/dont_stop_pretraining/config.py --workdir=runs/dsp
    .venv/bin/python scripts/study.py --config=experiments/dont_stop_pretraining/config.py:cpu --workdir=runs/dsp-cpu
    .venv/bin/python scripts/study.py --config=experiments/dont_stop_pretraining/config.py:reduced \
        --workdir=runs/dsp-reduced --config.model.name=roberta-base   # any HF encoder; MiniLM by default

Stages: ``dapt`` (one MLM run per domain) -> ``dapt_tapt`` (MLM on each task's training text, from DAPT);
``tapt`` (from the pretrained model); fine-tuning from each of none / dapt / tapt / dapt_tapt, per task, over a
learning-rate grid and seeds; the table selects the learning rate by dev metric and reports the test metric
(micro-F1 for ChemProt, macro-F1 for the others, as the paper) with the paper's RoBERTa-base rows beside it.
The paper's DAPT corpora (2.7M biomedical / 2.2M computer-science papers) are not shipped here: the DAPT corpus
is the training texts of the domain's benchmarks (``_domain_text``); point that function (or the ``dapt`` stage's
``data`` overrides) at a real domain corpus for the real experiment. ``:cpu`` is the budget 2 CPU cores run in
about an hour, with a table that means something (the README beside this file has it); ``:reduced`` is a
quicker pipeline check. The learning-rate grid of ``:cpu`` is one rate (the paper, too, fine-tuned every
condition with the same hyperparameters); TAPT and DAPT train the checkpoint's missing masked-LM head alone for
their first steps (``head_warmup``). CI runs none of it.
"""

import os

from adapt import benchmarks, configs
from adapt.sweeps import grid, product, stage

HERE = os.path.dirname(os.path.abspath(__file__))
DOMAIN_OF = {"chemprot": "biomed", "citation_intent": "cs", "sciie": "cs"}
METRICS = {"chemprot": "micro_f1", "citation_intent": "macro_f1", "sciie": "macro_f1"}
BUDGET = {  # steps of 16 x max_length tokens; epochs: fine-tuning epochs per task (when finetune is 0);
    # mlm_eval: the dev masked-LM loss of each pretraining stage; head_warmup: steps that train only the MLM head
    # the checkpoint lacks before the whole model (train.head_warmup_steps)
    None: dict(dapt=12500, tapt=2000, finetune=0, epochs=dict.fromkeys(DOMAIN_OF, 10.0), max_length=256,
               seeds=[0, 1, 2, 3, 4], learning_rates=[1e-5, 2e-5, 3e-5], mlm_eval=True, head_warmup=100),
    # about an hour on 2 CPU cores (the README beside this file): every task well above its majority row
    "cpu": dict(dapt=200, tapt=100, finetune=0, epochs={"chemprot": 1.0, "citation_intent": 3.0, "sciie": 2.0},
                max_length=64, seeds=[0, 1], learning_rates=[1e-4], mlm_eval=True, head_warmup=16),
    # a pipeline check (32 trials): too short to leave the majority class on ChemProt and SciERC
    "reduced": dict(dapt=40, tapt=20, finetune=40, epochs=dict.fromkeys(DOMAIN_OF, 0.0), max_length=64,
                    seeds=[0, 1], learning_rates=[2e-4], mlm_eval=False, head_warmup=0),
}
PAPER = {  # Table 5 of the paper: RoBERTa-base, test, mean over 5 seeds
    "RoBERTa (paper) Baseline": {"chemprot": 81.9, "citation_intent": 63.0, "sciie": 77.3},
    "RoBERTa (paper) DAPT": {"chemprot": 84.2, "citation_intent": 75.4, "sciie": 80.8},
    "RoBERTa (paper) TAPT": {"chemprot": 82.6, "citation_intent": 67.4, "sciie": 79.3},
    "RoBERTa (paper) DAPT+TAPT": {"chemprot": 84.4, "citation_intent": 75.6, "sciie": 81.3},
}


def get_config(arg=None):
    budget = BUDGET[arg]
    c = configs.load(os.path.join(HERE, "..", "..", "configs", "finetune.py:chemprot"))
    c.data.max_length = budget["max_length"]
    c.train.update(steps=budget["finetune"], batch_size=16)
    c.train.early_stopping.update(patience=3 if arg is None else 0)
    c.eval.batch_size = 128
    return c


def _benchmark_text(name: str) -> dict:
    """Overrides that make a run read benchmark ``name``'s text for masked-LM pretraining."""
    files = benchmarks.BENCHMARKS[name][0]()["files"]
    return {"data.files": {"train": files["train"], "dev": files["dev"]}}


def _domain_text(domain: str) -> dict:
    """The DAPT corpus of ``domain``: here the training texts of its benchmarks, mixed in equal parts."""
    names = [t for t, d in DOMAIN_OF.items() if d == domain]
    mixture = {t: {"weight": 1.0 / len(names), "files": {"train": benchmarks.BENCHMARKS[t][0]()["files"]["train"]}}
               for t in names}
    return {**_benchmark_text(names[0]), "data.mixture": mixture}


def _mlm(steps: int, b: dict) -> dict:
    return {"model.task": "masked_lm", "data.format": "lm", "data.causal": False, "data.pack": True,
            "train.steps": steps, "optimizer.learning_rate": 1e-4, "eval.splits": ("dev",) if b["mlm_eval"] else (),
            "export.model": True, "train.early_stopping.metric": "", "train.head_warmup_steps": b["head_warmup"]}


def _finetune(name: str, b: dict) -> dict:
    """One epoch or a fixed step budget: the model after the last step; more epochs: the best epoch on dev."""
    epochs = b["epochs"][name]
    return {**{f"data.{k}": v for k, v in benchmarks.BENCHMARKS[name][0]().items()}, "benchmark": name,
            "meta.benchmark": name, "meta.domain": DOMAIN_OF[name], "train.epochs": epochs,
            "train.early_stopping.metric": f"dev/{METRICS[name]}" if epochs > 1 else ""}


def get_sweep(arg=None):
    b = BUDGET[arg]
    dapt_mlm, tapt_mlm = _mlm(b["dapt"], b), _mlm(b["tapt"], b)
    dapt = stage("dapt", [{**dapt_mlm, **_domain_text(d), "meta.domain": d} for d in sorted(set(DOMAIN_OF.values()))])
    tapt = stage("tapt", [{**tapt_mlm, **_benchmark_text(t), "meta.benchmark": t} for t in DOMAIN_OF])
    dapt_tapt = stage("dapt_tapt", [{**tapt_mlm, **_benchmark_text(t), "meta.benchmark": t,
                                     "meta.domain": DOMAIN_OF[t]} for t in DOMAIN_OF], after="dapt", match=["meta.domain"])
    grid_ = product(grid("optimizer.learning_rate", b["learning_rates"]), grid("train.seed", b["seeds"]))
    runs = lambda cond: product([{**_finetune(t, b), "meta.condition": cond} for t in DOMAIN_OF], grid_)  # noqa: E731
    return [dapt, tapt, dapt_tapt,
            stage("baseline", runs("Baseline")),
            stage("dapt_ft", runs("DAPT"), after="dapt", match=["meta.domain"]),
            stage("tapt_ft", runs("TAPT"), after="tapt", match=["meta.benchmark"]),
            stage("dapt_tapt_ft", runs("DAPT+TAPT"), after="dapt_tapt", match=["meta.benchmark"])]


def get_table(arg=None):
    return dict(rows=("meta.condition",), column="meta.benchmark", metric=METRICS, reference=(PAPER,),
                curves=("train/loss",), vs=("optimizer.learning_rate",), baselines=("majority", "tfidf"),
                compare=[(c, "Baseline") for c in ("DAPT", "TAPT", "DAPT+TAPT")])
