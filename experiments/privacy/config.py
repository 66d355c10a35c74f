"""What differential privacy costs: MiniLM-L6 (bundled) fine-tuned on BBC News topics without privacy and with
DP-SGD at epsilon 1, 3 and 8 (delta = 1/n, n the 1,780 training articles), fully and with LoRA, 3 seeds each; the
results and the time taken, as measured, in the README beside this file.

    .venv/bin/python scripts/study.py --config=experiments/privacy/config.py --workdir=runs/privacy

Every trial runs the same number of steps of the same expected batch (DP: Poisson sampling, q = B / n, the rows
padded to a fixed ``privacy.max_batch_size``); sigma is calibrated by the PLD accountant for each epsilon
(``privacy.target_epsilon``) and the epsilon the run spent is stored with it (``results.json`` "privacy"). The model
after the last step is evaluated (early stopping on dev would be non-private model selection: refused under DP).
One learning rate per method and privacy setting, not tuned here (DP-SGD takes larger rates: its mean gradient is
the clipped one, of norm <= C, plus noise). ``:smoke`` is a pipeline check (2 steps, 2 seeds, epsilon 8 only).
"""

from adapt.data import catalog
from adapt.experiment import base_config
from adapt.methods import method_config
from adapt.study.sweeps import grid, product

BUDGET = {
    None: dict(steps=25, batch=32, max_length=32, seeds=[0, 1, 2], epsilons=[1.0, 3.0, 8.0]),
    "smoke": dict(steps=2, batch=8, max_length=16, seeds=[0, 1], epsilons=[8.0]),
}
NON_PRIVATE = "non-private"
# "full": every parameter but the word embeddings (11.7M of MiniLM's 22.7M): DP-SGD forms a gradient per example,
# and a 30,522 x 384 table each is what made full DP steps 1.7x slower here; frozen in every row alike.
FULL = "full (word emb. frozen)"
METHODS = {FULL: method_config("freeze", patterns=("word_embeddings",)), "lora": method_config("lora", rank=8)}
LR = {FULL: {NON_PRIVATE: 3e-4, "dp": 5e-4}, "lora": {NON_PRIVATE: 3e-3, "dp": 1e-2}}
CLIP = 1.0  # C, privacy.clip_norm
MICRO = 8  # rows per micro-batch of a DP step (grad_accum = rows / MICRO): a micro-batch of padding is skipped


def _privacy(eps: float | None) -> str:
    return NON_PRIVATE if eps is None else f"eps={eps:g}"


def get_config(arg=None):
    b = BUDGET[arg]
    c = base_config()
    c.model.name = "bundled:minilm-l6"
    catalog.apply(c, "bbc")
    c.data.max_length = b["max_length"]
    c.train.update(steps=b["steps"], epochs=0.0, batch_size=b["batch"], log_every=5 if arg is None else 1)
    c.train.early_stopping.metric = ""  # a fixed budget: the model after the last step, private or not
    c.optimizer.update(warmup_ratio=0.1, schedule="linear", weight_decay=0.0)
    c.privacy.update(clip_norm=CLIP, accountant="pld")  # delta 0: 1 / n
    c.eval.batch_size = 128
    return c


def get_sweep(arg=None):
    b = BUDGET[arg]
    conditions = []
    for name, method in METHODS.items():
        common = {"method": method.to_dict(), "meta.method": name}
        conditions.append({**common, "meta.privacy": NON_PRIVATE, "optimizer.learning_rate": LR[name][NON_PRIVATE]})
        conditions += [{**common, "meta.privacy": _privacy(eps), "optimizer.learning_rate": LR[name]["dp"],
                        "privacy.enabled": True, "privacy.target_epsilon": eps, "optimizer.clip_norm": 0.0,
                        "train.grad_accum": 2 * b["batch"] // MICRO} for eps in b["epsilons"]]
    return product(conditions, grid("train.seed", b["seeds"]))


def get_table(arg=None):
    eps = BUDGET[arg]["epsilons"]
    cost = [(f"{m} / {_privacy(e)}", f"{m} / {NON_PRIVATE}") for m in METHODS for e in eps]
    lora = [(f"lora / {p}", f"{FULL} / {p}") for p in [NON_PRIVATE] + [_privacy(e) for e in eps]]
    return dict(rows=("meta.method", "meta.privacy"), metric="accuracy", average=False, curves=("train/loss",),
                baselines=("majority", "tfidf"), compare=cost + lora)
