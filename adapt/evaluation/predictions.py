"""Per-example predictions of a run's evaluated splits, and what is computed from them.

``<workdir>/predictions/<split>.jsonl`` holds one JSON object per example, in the split's order:

- sequence classification: ``{"index": i, "gold": "<label>", "prediction": "<label>", "probabilities": [p_0, ...]}``
  (the probabilities in ``labels.json`` order, rounded to 6 decimals; the prediction is the argmax of the logits);
- regression (``data.label_type="number"``, an objective whose ``outputs`` give ``prediction [B]``):
  ``{"index": i, "gold": float, "prediction": float}``;
- token classification: ``{"index": i, "gold": [tag, ...], "prediction": [tag, ...]}`` over the labelled
  positions (each word's first sub-token).

Causal and masked LMs write none. For classification the split's ``results.json`` entry gains ``per_class``
(``{label: {"precision", "recall", "f1", "support"}}``, 0 where undefined, as scikit-learn's ``zero_division=0``)
and ``confusion`` (``{"labels": [...], "matrix": [[...]]}``, rows gold, columns predicted; token classification
counts tags over the labelled positions), and ``predictions/<split>_confusion.png`` plots the confusion matrix
(each row normalised to sum to 1 as the colour, the counts written in the cells).
"""

from __future__ import annotations

import json
import os

import numpy as np

from adapt.core.errors import AdaptError
from adapt.core.files import write_atomic
from adapt.data.formats import IGNORE

FOLDER = "predictions"


def path(workdir: str, split: str) -> str:
    return os.path.join(workdir, FOLDER, f"{split}.jsonl")


def records(rows: list[dict], labels: list[str] | None) -> list[dict]:
    """The JSON records of ``rows`` (:meth:`adapt.training.Trainer.evaluate` with ``examples``: each row's
    ``labels`` and the objective's outputs); ``labels`` is the label vocabulary (None for regression)."""
    out = []
    for i, row in enumerate(rows):
        gold, pred = np.asarray(row["labels"]), np.asarray(row.get("prediction"))
        if "probabilities" in row:  # sequence classification
            probs = np.asarray(row["probabilities"], np.float32)
            pred = pred if "prediction" in row else probs.argmax()
            out.append({"index": i, "gold": labels[int(gold)], "prediction": labels[int(pred)],
                        "probabilities": [round(float(p), 6) for p in probs]})
        elif gold.ndim == 1 and labels is not None:  # token classification
            keep = gold != IGNORE
            out.append({"index": i, "gold": [labels[int(t)] for t in gold[keep]],
                        "prediction": [labels[int(t)] for t in pred[keep]]})
        elif gold.ndim == 0 and labels is None and pred.size == 1:  # regression
            out.append({"index": i, "gold": float(gold), "prediction": float(pred.reshape(()))})
        else:
            raise AdaptError(f"per-example outputs {sorted(row)} of labels shape {gold.shape} fit no predictions "
                             f"format (sequence or token classification, regression)")
    return out


def pairs(recs: list[dict]) -> tuple[list[str], list[str]]:
    """(gold, predicted) label names of classification records: one pair per example, or per tagged token."""
    gold, pred = [], []
    for r in recs:
        if isinstance(r["gold"], list):
            gold += r["gold"]
            pred += r["prediction"]
        else:
            gold.append(r["gold"])
            pred.append(r["prediction"])
    return gold, pred


def is_classification(recs: list[dict]) -> bool:
    return bool(recs) and isinstance(recs[0]["gold"], (str, list))


def per_class(recs: list[dict], labels: list[str]) -> dict:
    """``{"per_class": {label: {"precision", "recall", "f1", "support"}}, "confusion": {"labels", "matrix"}}`` of
    classification records, over every label of ``labels`` in its order."""
    index = {name: i for i, name in enumerate(labels)}
    gold, pred = pairs(recs)
    matrix = np.zeros((len(labels), len(labels)), np.int64)
    np.add.at(matrix, ([index[g] for g in gold], [index[p] for p in pred]), 1)
    tp, support, predicted = np.diag(matrix), matrix.sum(1), matrix.sum(0)
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    return {"per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                                 "support": int(support[i])} for i, name in enumerate(labels)},
            "confusion": {"labels": list(labels), "matrix": matrix.tolist()}}


def write(workdir: str, split: str, recs: list[dict]) -> str:
    """``predictions/<split>.jsonl`` (atomically); returns its path."""
    out = path(workdir, split)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_atomic(out, lambda f: f.write("".join(json.dumps(r) + "\n" for r in recs).encode()))
    return out


def read(workdir: str, split: str) -> list[dict]:
    """The records of ``predictions/<split>.jsonl``; a missing file is one AdaptError naming what exists."""
    p = path(workdir, split)
    if not os.path.isfile(p):
        folder = os.path.join(workdir, FOLDER)
        have = sorted(f[:-6] for f in os.listdir(folder) if f.endswith(".jsonl")) if os.path.isdir(folder) else []
        raise AdaptError(f"{p}: no predictions for split {split!r}; "
                         + (f"there are: {', '.join(have)}" if have else
                            "the run has none (a run finished before predictions were written, a language-model "
                            "task, or one not finished: scripts/eval.py --split=... writes them)"))
    with open(p) as f:
        return [json.loads(line) for line in f if line.strip()]


def label_order(workdir: str, recs: list[dict]) -> list[str]:
    """The run's ``labels.json`` (the label ids' order), or, without one, the labels the records name, sorted."""
    p = os.path.join(workdir, "labels.json")
    if os.path.isfile(p):
        with open(p) as f:
            return json.load(f)
    gold, pred = pairs(recs)
    return sorted(set(gold) | set(pred))


def plot_confusion(out: str, confusion: dict, title: str = "") -> str:
    """The confusion matrix as a heat map (each row normalised to 1) with the counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, matrix = confusion["labels"], np.asarray(confusion["matrix"], np.float64)
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = 1.5 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    if title:
        ax.set_title(title)
    if len(labels) <= 30:
        for (g, p), n in np.ndenumerate(matrix):
            ax.text(p, g, f"{int(n)}", ha="center", va="center", fontsize=8,
                    color="white" if rates[g, p] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the gold row")
    fig.tight_layout()
    write_atomic(out, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return out


def save(workdir: str, split: str, rows: list[dict], labels: list[str] | None, *, write_files: bool = True) -> dict:
    """Write ``rows`` (see :func:`records`) as ``predictions/<split>.jsonl`` and, for classification, its
    confusion plot (only with ``write_files``: process 0). Returns what goes beside the split's metrics in
    ``results.json``: ``per_class`` and ``confusion`` for classification, else {}."""
    if not rows:
        return {}
    recs = records(rows, labels)
    extra = per_class(recs, labels) if is_classification(recs) else {}
    if write_files:
        write(workdir, split, recs)
        if extra:
            plot_confusion(os.path.join(workdir, FOLDER, f"{split}_confusion.png"), extra["confusion"], split)
    return extra
