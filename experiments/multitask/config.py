"""Multi-task fine-tuning on the SciBERT tasks: does one encoder trained on ChemProt, ACL-ARC, SciERC and BC5CDR at
once (one head per task) match or beat four single-task fine-tunes, and does fine-tuning each task further from the
multi-task model (MT-DNN's recipe, Liu et al., ACL 2019) help?

    .venv/bin/python scripts/study.py --config=experiments/multitask/config.py:cpu --workdir=runs/multitask

Each task trains on a seeded, stratified quarter of its train split (``data.train_examples``: 1,042 ChemProt, 422
ACL-ARC, 805 SciERC, 986 BC5CDR sentences), the low-resource regime multi-task learning is meant for and a budget
2 CPU cores run. For the same reason each evaluation split is a seeded sample of at most 500 (dev) and 1,000 (test)
examples (``data.eval_examples``: ChemProt and BC5CDR are cut, ACL-ARC and SciERC's test are whole); the floors read
the same samples, and the intervals are those of these test sets.

Rows. Single-task: each task alone, for a fixed number of epochs (:data:`EPOCHS`). Multi-task: one run on all four,
batches drawn per task with temperature T = 2 (p_k ~ n_k ** 0.5: ACL-ARC, the smallest, is drawn more often than its
size), for as many steps as the four single-task runs together, every task's loss weighted 1; each task's head is
then evaluated alone from the run's per-task export (``train.steps = 0``, so its numbers come with per-example
predictions). Multi-task -> single-task: each task fine-tuned further from that export for half its single-task
epochs. Single-task, 3 epochs: the control for multi -> single's extra training (about the passes over its own data
each task gets there: 1.8-2.8 epochs' worth of batches in the multi-task run at T = 2, then one more). No early
stopping anywhere: every row reports its final model. Metrics as the papers: micro-F1 (ChemProt),
macro-F1 (ACL-ARC, SciERC), span F1 (BC5CDR); intervals over test examples and seeds. Floors: the majority class
(for BC5CDR each word's majority tag) and TF-IDF + logistic regression.

The encoder is the bundled MiniLM-L6 (SciBERT is not on this machine:
``--config.model.name=allenai/scibert_scivocab_uncased`` where the Hub is reachable). ``:cpu`` is the budget 2 CPU
cores run (the README beside this file has its table and wall time); ``:smoke`` a pipeline check.
"""

from adapt.data import catalog
from adapt.experiment import base_config
from adapt.study.sweeps import grid, product, stage

METRICS = {"chemprot": "micro_f1", "citation_intent": "macro_f1", "sciie": "macro_f1", "bc5cdr": "span_f1"}
EPOCHS = {"chemprot": 2.0, "citation_intent": 2.0, "sciie": 2.0, "bc5cdr": 2.0}  # single-task fine-tuning
BUDGET = {  # train: the share of each task's train split kept (a seeded, stratified sample: data.train_examples)
    "cpu": dict(max_length=64, batch=16, seeds=[0, 1], scale=1.0, lr=1e-4, train=0.25,
                eval={"dev": 500, "test": 1000}),
    "smoke": dict(max_length=32, batch=8, seeds=[0], scale=0.01, lr=1e-4, train=0.25, eval={"dev": 50, "test": 100}),
}
SINGLE, MULTI, MULTI_SINGLE = "Single-task", "Multi-task (T=2)", "Multi-task -> single-task"
SINGLE_LONG = "Single-task, 3 epochs"  # about the passes over its data a task gets in multi -> single


def _budget(arg):
    return BUDGET[arg or "cpu"]


def get_config(arg=None):
    b = _budget(arg)
    c = base_config()
    c.model.name = "bundled:minilm-l6"
    c.data.update(max_length=b["max_length"], truncation="head", train_examples=b["train"])
    c.data.eval_examples = dict(b["eval"])
    c.optimizer.update(learning_rate=b["lr"], weight_decay=0.01, warmup_ratio=0.06, schedule="linear")
    c.train.update(batch_size=b["batch"], epochs=1.0, log_every=20)
    c.eval.batch_size = 128
    return c


def _task(name: str) -> dict:
    """Overrides of a single-task trial on benchmark ``name`` (its data, task kind and metric)."""
    return {**catalog.overrides(name), "meta.benchmark": name}


def _steps(b) -> int:
    """The multi-task run's steps: the single-task runs' together (from the benchmarks' train sizes: nothing is
    read)."""
    total = sum(int(epochs * round(catalog.get(name).train_size * b["train"]) / b["batch"])
                for name, epochs in EPOCHS.items())
    return max(2, int(total * b["scale"]))


def get_sweep(arg=None):
    b = _budget(arg)
    seeds = grid("train.seed", b["seeds"])
    epochs = lambda name, share=1.0: max(EPOCHS[name] * b["scale"] * share, 0.01)  # noqa: E731
    single = [{**_task(t), "train.epochs": epochs(t)} for t in METRICS]
    multi = {"multitask.tasks": {t: {"benchmark": t} for t in METRICS}, "multitask.sampling": "temperature",
             "multitask.temperature": 2.0, "train.steps": _steps(b), "export.model": True, "eval.splits": (),
             "meta.condition": MULTI}  # evaluated per task from its export (multi_heads), with predictions
    heads = [{**_task(t), "train.steps": 0, "train.epochs": 0.0, "meta.condition": MULTI} for t in METRICS]
    further = [{**_task(t), "train.epochs": epochs(t, 0.5), "meta.condition": MULTI_SINGLE} for t in METRICS]
    longer = [{**_task(t), "train.epochs": epochs(t, 1.5), "meta.condition": SINGLE_LONG} for t in METRICS]
    return [stage("single", product([{**s, "meta.condition": SINGLE} for s in single], seeds)),
            stage("single_long", product(longer, seeds)),
            stage("multi", product(multi, seeds)),
            stage("multi_heads", product(heads, seeds), after="multi", match=["train.seed"]),
            stage("multi_single", product(further, seeds), after="multi", match=["train.seed"])]


def get_table(arg=None):
    return dict(rows=("meta.condition",), column="meta.benchmark", metric=METRICS, baselines=("majority", "tfidf"),
                compare=[(MULTI, SINGLE), (MULTI_SINGLE, SINGLE), (MULTI_SINGLE, SINGLE_LONG), (MULTI_SINGLE, MULTI)])
