"""The errors to look at first, from a run's per-example predictions (``predictions/<split>.jsonl``).

    .venv/bin/python scripts/report.py RUN_OR_DB [--split test] [--top 10] [--metric accuracy] \
        [--config.data.files.test=other_test.jsonl]

RUN_OR_DB is a run folder (``scripts/train.py``'s ``--workdir``, or a sweep trial's) or a results database
(``results.db`` of ``scripts/sweep.py`` / ``scripts/study.py``): for a database, the report covers the best
finished trial of each condition (per benchmark, when the trials name one), the one with the highest dev
``--metric`` (the lowest for a loss-like one), among those that wrote predictions for ``--split``.

Classification (sequence or token): the per-class precision/recall/F1 table, the most confused pairs
(gold -> predicted, count), and the most confident mistakes with their text (token classification: the
sentences with the most wrong tags). Regression: the largest errors with their text. The text of example i
is read from the run's data as its ``config.json`` names it (with any ``--config.KEY=VALUE`` overrides, e.g.
the other test file ``scripts/eval.py`` was given), without tokenising; truncated to 200 characters.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

from adapt.core import cli
from adapt.core.errors import AdaptError
from adapt.experiment import configs

WIDTH = 200


def _short(text: str, width: int = WIDTH) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 3] + "..."


def texts(workdir: str, split: str, overrides: dict) -> tuple[list[str] | None, str]:
    """The raw text of each example of ``split`` as the run read it, or (None, why not)."""
    import ml_collections

    from adapt.data import formats, pipeline

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        return None, f"{path}: no such file"
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    data = configs.apply_overrides(config, overrides).data
    try:
        if data.format == "conll":
            if split not in data.files:
                return None, f"the run's data has no file for split {split!r}"
            sentences = formats.read_conll(data.files[split], token_column=data.conll_token_column,
                                           tag_column=data.conll_tag_column)
            return [" ".join(tokens) for tokens, _ in sentences], ""
        if data.files:  # read only this split's file
            if split not in data.files:
                return None, f"the run's data has no file for split {split!r}"
            data = ml_collections.ConfigDict(data.to_dict())
            data.files = {split: data.files[split]}
        records = pipeline.records(data).get(split)
    except AdaptError as e:
        return None, str(e)
    if records is None:
        return None, f"the run's data has no split {split!r}"
    pair = data.text_pair_column
    return [str(r.get(data.text_column, "")) + (f" || {r.get(pair, '')}" if pair else "") for r in records], ""


def _table(per_class: dict) -> list[str]:
    width = max([len("macro avg"), *map(len, per_class)])
    lines = [f"{'label':<{width}}  precision  recall      f1  support"]
    for name, m in per_class.items():
        lines.append(f"{name:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:6.3f}  {m['support']:7d}")
    support = sum(m["support"] for m in per_class.values())
    macro = [sum(m[k] for m in per_class.values()) / max(len(per_class), 1) for k in ("precision", "recall", "f1")]
    lines.append(f"{'macro avg':<{width}}  {macro[0]:9.3f}  {macro[1]:6.3f}  {macro[2]:6.3f}  {support:7d}")
    return lines


def report(workdir: str, split: str, top: int, overrides: dict, title: str = "") -> str:
    from adapt.evaluation import predictions

    recs = predictions.read(workdir, split)
    lines = [f"== {title or workdir}: {split}, {len(recs)} examples"]
    text, why = texts(workdir, split, overrides)
    if text is not None and len(text) != len(recs):
        text, why = None, (f"the run's {split} data has {len(text)} examples, the predictions {len(recs)} (written by "
                           f"scripts/eval.py with other data? give it the same --config.KEY=VALUE overrides)")
    if text is None:
        lines.append(f"(no texts: {why})")

    def quote(i):
        return f'  "{_short(text[i])}"' if text is not None else ""

    if not recs:
        return "\n".join(lines)
    if not predictions.is_classification(recs):  # regression: the largest errors
        errors = sorted(recs, key=lambda r: -abs(r["prediction"] - r["gold"]))
        mae = sum(abs(r["prediction"] - r["gold"]) for r in recs) / len(recs)
        lines += [f"mean absolute error {mae:.4f}", "", f"largest errors (top {top})"]
        lines += [f"  #{r['index']}  gold {r['gold']:.4g}, predicted {r['prediction']:.4g}{quote(r['index'])}"
                  for r in errors[:top]]
        return "\n".join(lines)
    labels = predictions.label_order(workdir, recs)
    stats = predictions.per_class(recs, labels)
    gold, pred = predictions.pairs(recs)
    accuracy = sum(g == p for g, p in zip(gold, pred)) / max(len(gold), 1)
    lines += [f"accuracy {accuracy:.4f}" + (f" over {len(gold)} tagged tokens" if len(gold) != len(recs) else ""), ""]
    lines += _table(stats["per_class"])
    confused = collections.Counter((g, p) for g, p in zip(gold, pred) if g != p)
    lines += ["", f"most confused (gold -> predicted, top {top})"]
    lines += [f"  {g} -> {p}  {n}" for (g, p), n in confused.most_common(top)] or ["  (none)"]
    if "probabilities" in recs[0]:
        index = {name: i for i, name in enumerate(labels)}
        wrong = sorted((r for r in recs if r["gold"] != r["prediction"]),
                       key=lambda r: -r["probabilities"][index[r["prediction"]]])
        lines += ["", f"most confident mistakes (top {top})"]
        lines += [f"  #{r['index']}  gold {r['gold']}, predicted {r['prediction']} "
                  f"(p={r['probabilities'][index[r['prediction']]]:.3f}, "
                  f"gold p={r['probabilities'][index[r['gold']]]:.3f}){quote(r['index'])}" for r in wrong[:top]] \
            or ["  (none)"]
    else:  # token classification: the sentences with the most wrong tags
        counted = [(sum(g != p for g, p in zip(r["gold"], r["prediction"])), r) for r in recs]
        worst = sorted((c for c in counted if c[0]), key=lambda c: -c[0])
        lines += ["", f"sentences with the most wrong tags (top {top})"]
        for n, r in worst[:top]:
            tags = " ".join(f"{i}:{g}->{p}" for i, (g, p) in enumerate(zip(r["gold"], r["prediction"])) if g != p)
            lines.append(f"  #{r['index']}  {n} of {len(r['gold'])} tags wrong ({_short(tags, 120)})"
                         f"{quote(r['index'])}")
        if not worst:
            lines.append("  (none)")
    return "\n".join(lines)


def best_trials(db_path: str, split: str, metric: str, dev_split: str = "dev") -> list[tuple[str, dict]]:
    """(title, trial) of the best finished trial per condition (and benchmark) with predictions for ``split``."""
    from adapt.analysis.results import ResultsDB, lower_is_better
    from adapt.evaluation import predictions

    db = ResultsDB.open_existing(db_path)
    try:
        trials = db.trials(status="done")
    finally:
        db.close()
    groups: dict[str, list] = {}
    for t in trials:
        benchmark = t["overrides"].get("meta.benchmark")
        groups.setdefault(t["condition"] + (f" / {benchmark}" if benchmark else ""), []).append(t)
    out = []
    for name, ts in groups.items():
        scored = [t for t in ts if metric in t["metrics"].get(dev_split, {}) and t["workdir"]
                  and os.path.isfile(predictions.path(t["workdir"], split))]
        if scored:
            sign = 1 if lower_is_better(metric) else -1
            best = min(scored, key=lambda t: sign * t["metrics"][dev_split][metric])
            out.append((f"{name} (trial {best['id']}, {dev_split}/{metric} {best['metrics'][dev_split][metric]:.4f}, "
                        f"{best['workdir']})", best))
    if not out:
        raise AdaptError(f"{db_path}: no finished trial has a {dev_split}/{metric} metric and "
                         f"predictions/{split}.jsonl ({len(trials)} finished trials)")
    return out


def main():
    _, overrides, rest = configs.parse_argv(sys.argv[1:], spec_required=False)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_or_db", help="a run folder, or a results database (results.db)")
    parser.add_argument("--split", default="test", help="the evaluated split (default test)")
    parser.add_argument("--top", type=int, default=10, help="how many pairs and mistakes to list (default 10)")
    parser.add_argument("--metric", default="accuracy",
                        help="a database: the dev metric that picks each condition's best trial (default accuracy)")
    args = parser.parse_args(rest)
    overrides = configs.as_dict(overrides)
    target = args.run_or_db
    if os.path.isdir(target):
        print(report(target, args.split, args.top, overrides))
    elif os.path.isfile(target):
        print("\n\n".join(report(t["workdir"], args.split, args.top, overrides, title)
                          for title, t in best_trials(target, args.split, args.metric)))
    else:
        raise AdaptError(f"{target}: no such folder or file; expected a run folder or a results database")


if __name__ == "__main__":
    cli.run(main)
