"""Headline generation: does supervised fine-tuning of a small instruction-tuned decoder beat prompting it, and
does LoRA match full fine-tuning? SmolLM2-135M-Instruct (bundled) writes the headline of a BBC News story from
its lead paragraph (the ``bbc_headlines`` benchmark: 1,684/210/211 stories, a story's first line is its title);
all on CPU (the time, as measured, in the README beside this file).

    .venv/bin/python scripts/study.py --config=experiments/bbc_headlines/config.py:cpu --workdir=runs/headlines

Rows. Prompted (the baselines to beat, no training: ``train.steps = 0``): zero-shot, the instruction and the lead
as one user turn; few-shot, the same after ``SHOTS`` (lead, headline) pairs of the train split as earlier chat
turns, drawn per seed. SFT: fine-tuned on ``train`` stories (``data.train_examples``, a seeded sample) with the
loss on the headline tokens only, fully and with LoRA (rank 16 on every attention and MLP projection), the
checkpoint of the best dev ROUGE-L kept (the first ``generation.examples.dev`` dev stories generated for at
each evaluation). Answers are greedy, at most ``MAX_NEW`` tokens. Metric: ROUGE-L F (rouge-score, stemmed), with
ROUGE-1/2, BLEU, chrF and exact match stored too; every row on all 211 test stories, intervals over test stories
and seeds. Floor: Lead-N, the story's first N words (N the median headline length of train). Comparisons: SFT
full vs. few-shot, SFT LoRA vs. SFT full, few-shot vs. zero-shot.

``:cpu`` is the budget 2 CPU cores run; ``:smoke`` a pipeline check (2 steps, 4 new tokens, 4 test stories); no
argument a larger run (a GPU's worth).
"""

from adapt.data import catalog
from adapt.experiment import base_config
from adapt.methods import method_config
from adapt.study.sweeps import grid, product, stage

SHOTS = 3
BUDGET = {
    None: dict(train=1684, steps=400, batch=16, seeds=[0, 1, 2], dev=100, new=24, eval_every=100,
               lr={"full": 5e-5, "lora": 1e-3}),
    "cpu": dict(train=256, steps=48, batch=8, seeds=[0, 1], dev=32, new=20, eval_every=16,
                lr={"full": 5e-5, "lora": 1e-3}),
    "smoke": dict(train=16, steps=2, batch=2, seeds=[0], dev=2, test=4, new=4, eval_every=2,
                  lr={"full": 5e-5, "lora": 1e-3}),
}
ZERO, FEW, FULL, LORA = "Prompted, zero-shot", f"Prompted, {SHOTS}-shot", "SFT / full", "SFT / LoRA"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def get_config(arg=None):
    b = BUDGET[arg]
    c = base_config()
    c.model.update(name="bundled:smollm2-135m", task="causal_lm")
    catalog.apply(c, "bbc_headlines")  # data (sft), and early stopping on dev/rougeL
    c.data.update(max_length=128, pack=False, train_examples=b["train"], train_seed=0)
    c.generation.update(max_new_tokens=b["new"], batch_size=16)
    c.generation.examples = {"dev": b["dev"], **({"test": b["test"]} if "test" in b else {})}
    c.eval.update(splits=("dev", "test"), batch_size=16)
    c.train.update(steps=b["steps"], epochs=0.0, batch_size=b["batch"], eval_every=b["eval_every"], log_every=8)
    c.train.early_stopping.update(mode="max", patience=0)
    c.optimizer.update(learning_rate=b["lr"]["full"], warmup_ratio=0.1, schedule="linear", weight_decay=0.0)
    return c


def get_sweep(arg=None):
    b = BUDGET[arg]
    seeds = grid("train.seed", b["seeds"])
    prompted = [{"meta.row": ZERO, "generation.shots": 0}, {"meta.row": FEW, "generation.shots": SHOTS}]
    none = {"train.steps": 0, "train.epochs": 0.0, "train.early_stopping.metric": ""}
    sft = [{"meta.row": FULL, "method": method_config("full").to_dict(), "optimizer.learning_rate": b["lr"]["full"]},
           {"meta.row": LORA, "method": method_config("lora", rank=16, alpha=32.0, targets=LORA_TARGETS).to_dict(),
            "optimizer.learning_rate": b["lr"]["lora"]}]
    return [stage("prompted", product(none, prompted, seeds)), stage("sft", product(sft, seeds))]


def get_table(arg=None):
    return dict(rows=("meta.row",), metric="rougeL", baselines=("lead",), curves=("train/loss", "dev/rougeL"),
                compare=[(FULL, FEW), (LORA, FULL), (FEW, ZERO)])
