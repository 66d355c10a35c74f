"""Replay vs. forgetting: continued causal-LM pretraining of the bundled SmolLM2-135M-Instruct on biomedical text,
with general text replayed at 0, 1, 5 and 25% of the training rows, by full fine-tuning and by LoRA. How much
does the domain gain (perplexity on held-out domain text), how much general ability does it cost (loss on
held-out general text), and which replay ratio or method buys the better trade-off? (Ibrahim et al. 2024,
arXiv:2403.08763: re-warming, re-decaying and replay; Bethune et al. 2025, arXiv:2502.06042: about 1% replay;
Biderman et al. 2024, "LoRA Learns Less and Forgets Less".)

    .venv/bin/python scripts/study.py --config=experiments/replay_forgetting/config.py:cpu --workdir=runs/replay

Domain: the PubMed abstracts of the BC5CDR benchmark (``data.benchmark``, read as running text with
``sample_by="conll"``): its train abstracts are the training text, a seeded sample of its dev abstracts
(``data.eval_examples``) the domain set.
General: BBC News (bundled): its train articles are the replayed text, a sample of articles outside
the train split the general set. Both sets are evaluated before the first step and after the last
(``eval.sets``), so each trial has its own before -> after. Replay is the mixture weight of the BBC source
(``data.mixture``, rows of ``max_length`` packed tokens; the share of tokens each source gave is stored with the
trial). The learning rate warms up again for the first 10% of the steps and decays linearly to 0 (re-warming and
re-decaying). The table is the forgetting report (adapt/analysis/forgetting.py) and the Pareto plot of domain gain
against general-text cost. ``:cpu`` is the budget 2 CPU cores run (the README beside this file has the time and
the results); ``:smoke`` a pipeline check; no argument a small real run (a GPU's worth).
"""

from adapt.experiment import base_config
from adapt.methods import method_config
from adapt.study.sweeps import grid, product, zip_

REPLAY = [0.0, 0.01, 0.05, 0.25]  # the share of training rows drawn from general text
BUDGET = {  # steps of batch x max_length tokens; the sets: how many held-out documents each evaluates
    None: dict(steps=150, batch=16, max_length=256, seeds=[0, 1, 2], domain_docs=100, general_docs=100,
               replay=REPLAY, methods=("full", "lora")),
    "cpu": dict(steps=32, batch=8, max_length=128, seeds=[0, 1], domain_docs=12, general_docs=12,
                replay=REPLAY, methods=("full", "lora")),
    "smoke": dict(steps=2, batch=2, max_length=32, seeds=[0], domain_docs=2, general_docs=2,
                  replay=[0.25], methods=("full", "lora")),
}
LEARNING_RATE = {"full": 5e-5, "lora": 1e-3}
GENERAL_DOCS = 2225  # BBC News articles


def get_config(arg=None):
    b = BUDGET[arg]
    c = base_config()
    c.model.update(name="bundled:smollm2-135m", task="causal_lm")
    # BC5CDR's abstracts as text (its files are found when the trial reads them): train is the domain corpus
    c.data.update(benchmark="bc5cdr", format="lm", max_length=b["max_length"], pack=True, causal=True,
                  sample_by="conll")
    c.data.mixture = {"domain": {"weight": 1.0}, "general": {"weight": 0.0, "benchmark": "bbc"}}
    c.eval.update(splits=(), batch_size=8)
    general = b["general_docs"] / GENERAL_DOCS  # the train split's 80% stays first: the set is outside it
    c.eval.sets = {
        "domain": {"benchmark": "bc5cdr", "split": "dev", "eval_examples": {"dev": b["domain_docs"]}},
        "general": {"benchmark": "bbc", "split_ratios": {"train": 0.8, "dev": general, "rest": 0.2 - general}}}
    c.train.update(steps=b["steps"], epochs=0.0, batch_size=b["batch"], log_every=8, eval_every=b["steps"])
    c.optimizer.update(learning_rate=LEARNING_RATE["full"], warmup_ratio=0.1, schedule="linear", weight_decay=0.0)
    c.export.model = False
    return c


def get_sweep(arg=None):
    b = BUDGET[arg]
    replay = zip_(grid("data.mixture.general.weight", b["replay"]),
                  grid("data.mixture.domain.weight", [1.0 - r for r in b["replay"]]),
                  grid("meta.replay", [f"{r:.0%}" for r in b["replay"]]))
    methods = [{"method": method_config(m, **({"rank": 16} if m == "lora" else {})).to_dict(), "meta.method": m,
                "optimizer.learning_rate": LEARNING_RATE[m]} for m in b["methods"]]
    return product(methods, replay, grid("train.seed", b["seeds"]))


def get_table(arg=None):
    return dict(rows=("meta.method", "meta.replay"), forgetting=("domain", "general"))
