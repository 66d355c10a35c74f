"""Distillation into smaller, faster models (issue 24): does a student trained on a fine-tuned teacher's softened
outputs beat the same student trained on the labels alone? (The numbers, as measured, in the README beside this
file, with the parameters and inference speed of each model from ``benchmarks/distillation.py``.)

    .venv/bin/python scripts/study.py --config=experiments/distillation/config.py:bbc --workdir=runs/distill_bbc
    .venv/bin/python scripts/study.py --config=experiments/distillation/config.py:lm --workdir=runs/distill_lm
    .venv/bin/python scripts/study.py --config=experiments/distillation/config.py:lm --workdir=runs/distill_lm_lr5e-4 \
        --config.optimizer.learning_rate=5e-4

``bbc``: MiniLM-L6 (bundled) fine-tuned on BBC News topics (the ``teacher`` stage: all 1,780 training articles,
one epoch, the first 64 tokens) is the teacher; the student keeps 3 of its 6 layers (``LAYERS``: embeddings,
pooler and classifier copied too, DistilBERT's initialisation) and trains one more epoch, either on the labels
alone (``alpha = 1``: the teacher is loaded but its term weighs 0) or distilled (``alpha = 0.5``, ``T = 2``);
3 seeds each. Floors: majority class and TF-IDF + logistic regression on the same training articles.

``lm``: SmolLM2-135M-Instruct (bundled GGUF, 30 layers) is the teacher as it ships (``train.steps = 0``: evaluated
only); the student keeps every other layer (15) and trains on BBC News articles as language-model text (one
document per row, its first 128 tokens), alone or distilled (``alpha = 0.5``, ``T = 1``: the teacher's
next-token distributions over the whole vocabulary). Metric: test perplexity, with an interval over documents
from ``benchmarks/distillation.py`` (tables bootstrap per-example counts, which causal LMs do not write).

``:smoke`` (beside either: ``bbc,smoke``) is a pipeline check of a few steps.
"""

from adapt.data import catalog
from adapt.experiment import base_config
from adapt.study.sweeps import grid, product, stage, trial_id

TEACHER, ALONE, DISTILLED = "Teacher", "Student alone", "Distilled"
LAYERS = {"bbc": (0, 2, 5), "lm": tuple(range(0, 30, 2))}
BUDGET = {  # steps of batch x max_length tokens; teacher_epochs: the bbc teacher's fine-tuning
    "bbc": dict(epochs=1.0, teacher_epochs=1.0, batch=16, seeds=[0, 1, 2], lr=1e-4),
    "lm": dict(steps=32, batch=8, seeds=[0], lr=1e-4),
    "smoke": dict(steps=2, batch=4, seeds=[0], lr=1e-4),
}


def _parts(arg):
    kind, _, budget = (arg or "bbc").partition(",")
    return kind, BUDGET[budget or kind]


def get_config(arg="bbc"):
    kind, b = _parts(arg)
    c = base_config()
    catalog.apply(c, "bbc")
    c.train.early_stopping.metric = ""  # a fixed budget: the model after the last step is evaluated
    c.train.update(batch_size=b["batch"], steps=b.get("steps", 0), epochs=b.get("epochs", 0.0), log_every=8)
    c.optimizer.update(learning_rate=b["lr"], warmup_ratio=0.1, schedule="linear")
    c.eval.batch_size = 32
    if kind == "bbc":
        c.data.update(max_length=64, truncation="head")
        c.distill.update(alpha=0.5, temperature=2.0)
    else:
        c.model.update(name="bundled:smollm2-135m", task="causal_lm")
        c.data.update(format="lm", causal=True, pack=False, max_length=128)
        c.eval.update(splits=("test",), batch_size=8)
        c.distill.update(teacher="bundled:smollm2-135m", alpha=0.5, temperature=1.0)
    c.distill.student.layers = LAYERS[kind]
    return c


def get_sweep(arg="bbc"):
    kind, b = _parts(arg)
    seeds = grid("train.seed", b["seeds"])
    rows = [{"meta.condition": ALONE, "distill.alpha": 1.0}, {"meta.condition": DISTILLED}]
    if kind == "lm":  # the teacher as it ships, evaluated; no teacher of its own
        teacher = {"meta.condition": TEACHER, "train.steps": 0, "train.epochs": 0.0, "distill.teacher": "",
                   "distill.student.layers": ()}
        return [stage("teacher", teacher), stage("student", product(rows, seeds))]
    teacher = {"meta.condition": TEACHER, "distill.teacher": "", "distill.student.layers": (), "train.seed": 0,
               **({"train.epochs": b["teacher_epochs"]} if "teacher_epochs" in b else {})}
    # The students' teacher is that trial's run folder (its last checkpoint), inside the sweep folder.
    students = stage("student", product(rows, seeds), {"distill.teacher": f"teacher/{trial_id('teacher', teacher)}"})
    return [stage("teacher", teacher), students]


def get_table(arg="bbc"):
    kind, _ = _parts(arg)
    if kind == "lm":
        # One setting a row, nothing to select: the test split stands in for dev (which these trials leave out).
        return dict(rows=("meta.condition",), metric="perplexity", dev_split="test", scale=1.0,
                    curves=("train/loss", "train/kl"))
    return dict(rows=("meta.condition",), metric="accuracy", baselines=("majority", "tfidf"),
                curves=("train/loss", "train/kl"), compare=[(DISTILLED, ALONE)])
