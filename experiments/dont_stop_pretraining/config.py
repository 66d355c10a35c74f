"""Don't Stop Pretraining (Gururangan et al., ACL 2020, arXiv:2004.10964), its design on the SciBERT task splits:
baseline vs. domain-adaptive (DAPT), task-adaptive (TAPT) and DAPT+TAPT continued masked-LM pretraining, each
then fine-tuned on ChemProt (biomedical), ACL-ARC citation intent and SciERC (computer science).

    .venv/bin/python scripts/study.py --config=experiments/dont_stop_pretraining/config.py --workdir=runs/dsp
    .venv/bin/python scripts/study.py --config=experiments/dont_stop_pretraining/config.py:cpu --workdir=runs/dsp-cpu
    .venv/bin/python scripts/study.py --config=experiments/dont_stop_pretraining/config.py:reduced \
        --workdir=runs/dsp-reduced --config.model.name=roberta-base   # any HF encoder; MiniLM by default
    .venv/bin/python scripts/study.py --config=experiments/dont_stop_pretraining/config.py:cpu,mix --workdir=runs/mix

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

``mix`` (beside a budget: ``:cpu,mix``) is the data-mix study: DAPT on the computer-science tasks' text with
general text (BBC News) mixed in at 0, 25 and 50% of the rows (``data.mixture``), each watching masked-LM loss on
held-out domain and general text from step 0 (``eval.sets``), then fine-tuned on ACL-ARC and SciERC beside the
Baseline; its table is the fine-tuning table plus the forgetting report of the DAPT runs (what the domain gained
in perplexity, what general text lost).
"""

import os

from adapt.core.errors import ConfigError
from adapt.data import catalog
from adapt.experiment import configs
from adapt.study.sweeps import grid, product, stage

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


MIX = [0.0, 0.25, 0.5]  # the `mix` study: the share of DAPT's rows drawn from general text (BBC News)
MIX_DOMAIN = "cs"  # ... for the computer-science tasks (one DAPT corpus, two benchmarks)


def _parse(arg) -> tuple:
    """"cpu,mix" -> ("cpu", True): the budget (None, "cpu" or "reduced") and whether it is the mix study."""
    parts = [p for p in (arg or "").split(",") if p]
    budgets = [p for p in parts if p != "mix"]
    if len(budgets) > 1 or (budgets and budgets[0] not in BUDGET):
        raise ConfigError(f"{arg!r}: expected a budget ({', '.join(b for b in BUDGET if b)}) and/or 'mix'")
    return (budgets[0] if budgets else None), "mix" in parts


def get_config(arg=None):
    budget = BUDGET[_parse(arg)[0]]
    c = configs.load(os.path.join(HERE, "..", "..", "configs", "finetune.py:chemprot"))
    c.data.max_length = budget["max_length"]
    c.train.update(steps=budget["finetune"], batch_size=16)
    c.train.early_stopping.update(patience=3 if arg is None else 0)
    c.eval.batch_size = 128
    return c


def _benchmark_text(name: str) -> dict:
    """Overrides that make a run read benchmark ``name``'s text for masked-LM pretraining (its files are found
    when the trial reads them)."""
    return {"data.benchmark": name, "data.files": {}, "data.source": ""}


def _domain_text(domain: str, general: float = 0.0) -> dict:
    """The DAPT corpus of ``domain``: here the training texts of its benchmarks, mixed in equal parts; with
    ``general``, that share of the rows is BBC News (its train split) instead."""
    names = [t for t, d in DOMAIN_OF.items() if d == domain]
    mixture = {t: {"weight": (1.0 - general) / len(names), "benchmark": t} for t in names}
    if general:
        mixture["general"] = {"weight": general, "benchmark": "bbc"}
    return {**_benchmark_text(names[0]), "data.mixture": mixture}


def _mlm(steps: int, b: dict) -> dict:
    return {"model.task": "masked_lm", "data.format": "lm", "data.causal": False, "data.pack": True,
            "train.steps": steps, "optimizer.learning_rate": 1e-4, "eval.splits": ("dev",) if b["mlm_eval"] else (),
            "export.model": True, "train.early_stopping.metric": "", "train.head_warmup_steps": b["head_warmup"]}


def _finetune(name: str, b: dict) -> dict:
    """One epoch or a fixed step budget: the model after the last step; more epochs: the best epoch on dev."""
    epochs = b["epochs"][name]
    return {**catalog.overrides(name), "meta.benchmark": name, "meta.domain": DOMAIN_OF[name],
            "train.epochs": epochs, "train.early_stopping.metric": f"dev/{METRICS[name]}" if epochs > 1 else ""}


def _mix_sweep(b: dict) -> list:
    """DAPT on the domain's text with general text mixed in at each share of :data:`MIX`, watching masked-LM loss
    on held-out domain text (SciERC's dev sentences) and general text (BBC articles outside its train split),
    then fine-tuning on each of the domain's tasks; beside the Baseline fine-tunes."""
    names = [t for t, d in DOMAIN_OF.items() if d == MIX_DOMAIN]
    sets = {"domain": {"benchmark": "sciie", "split": "dev"},
            "general": {"benchmark": "bbc", "split_ratios": {"train": 0.8, "dev": 0.02, "rest": 0.18}}}
    dapt = stage("dapt_mix", [{**_mlm(b["dapt"], b), **_domain_text(MIX_DOMAIN, g), "eval.sets": sets,
                               "meta.domain": MIX_DOMAIN, "meta.condition": _mixed(g)} for g in MIX])
    grid_ = product(grid("optimizer.learning_rate", b["learning_rates"]), grid("train.seed", b["seeds"]))
    tasks = [{**_finetune(t, b), "meta.condition": "Baseline"} for t in names]
    return [dapt, stage("mix_baseline", product(tasks, grid_)),
            stage("dapt_mix_ft", product([_finetune(t, b) for t in names], grid_), after="dapt_mix",
                  match=["meta.domain", "meta.condition"])]


def _mixed(general: float) -> str:
    return f"DAPT ({general:.0%} general)"


def get_sweep(arg=None):
    budget, mix = _parse(arg)
    b = BUDGET[budget]
    if mix:
        return _mix_sweep(b)
    dapt_mlm, tapt_mlm = _mlm(b["dapt"], b), _mlm(b["tapt"], b)
    dapt = stage("dapt", [{**dapt_mlm, **_domain_text(d), "meta.domain": d} for d in sorted(set(DOMAIN_OF.values()))])
    tapt = stage("tapt", [{**tapt_mlm, **_benchmark_text(t), "meta.benchmark": t} for t in DOMAIN_OF])
    dapt_tapt = stage("dapt_tapt", [{**tapt_mlm, **_benchmark_text(t), "meta.benchmark": t,
                                     "meta.domain": DOMAIN_OF[t]} for t in DOMAIN_OF],
                      after="dapt", match=["meta.domain"])
    grid_ = product(grid("optimizer.learning_rate", b["learning_rates"]), grid("train.seed", b["seeds"]))
    runs = lambda cond: product([{**_finetune(t, b), "meta.condition": cond} for t in DOMAIN_OF], grid_)  # noqa: E731
    return [dapt, tapt, dapt_tapt,
            stage("baseline", runs("Baseline")),
            stage("dapt_ft", runs("DAPT"), after="dapt", match=["meta.domain"]),
            stage("tapt_ft", runs("TAPT"), after="tapt", match=["meta.benchmark"]),
            stage("dapt_tapt_ft", runs("DAPT+TAPT"), after="dapt_tapt", match=["meta.benchmark"])]


def get_table(arg=None):
    if _parse(arg)[1]:
        names = [t for t, d in DOMAIN_OF.items() if d == MIX_DOMAIN]
        return dict(rows=("meta.condition",), column="meta.benchmark", metric={t: METRICS[t] for t in names},
                    baselines=("majority", "tfidf"), compare=[(_mixed(g), "Baseline") for g in MIX],
                    forgetting=("domain", "general"))
    return dict(rows=("meta.condition",), column="meta.benchmark", metric=METRICS, reference=(PAPER,),
                curves=("train/loss",), vs=("optimizer.learning_rate",), baselines=("majority", "tfidf"),
                compare=[(c, "Baseline") for c in ("DAPT", "TAPT", "DAPT+TAPT")])
