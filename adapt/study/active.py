"""Pool-based active learning: from a few labelled train examples, train, score the unlabelled pool, ask for the
labels of the examples a strategy picks, and train again; the test metric against the label budget, per strategy.

    config = active.with_section(base_config())   # + config.active: strategies, seeds, initial, acquire, rounds
    records = active.run(config, "runs/al")        # every (strategy, seed) loop, resumable
    summary = active.summarize(records, metric="accuracy")   # active.to_markdown(summary), active.plot(...)

A loop (``WORKDIR/<strategy>/seed<seed>/``) starts from ``active.initial`` train examples (a stratified sample,
:func:`adapt.data.pipeline.split_train`, seeded by the loop's seed, of the train split, or of a seeded sample of
``active.pool_size`` of it). Each round is one trial of :mod:`adapt.experiment.trial` in ``round<r>/``: its train split
is the labelled set (written, with the pool, to ``round<r>/data/*.jsonl``; dev and test are the config's own,
fixed), trained from ``model.name`` (or, with ``active.warm_start``, from the last round's ``export/``) with
``train.seed`` the loop's seed, then evaluated on dev and test. The best model then scores the pool and the
strategy picks ``active.acquire`` more; after ``active.rounds`` acquisitions the last set is trained and evaluated.
Every round's metrics and acquired train indices go to ``acquired.json`` (atomically) when the round is complete,
so a loop killed anywhere resumes where it was: finished rounds are read back, the round in progress resumes its
trial from its checkpoints, and the acquisitions come out the same (each is a function of the round's trained
model and of (seed, round)). A recorded round's checkpoints are deleted (a MiniLM trial's are ~270 MB); its
``results.json``, ``predictions/`` and, with ``warm_start``, ``export/`` stay.

Strategies (higher score first; ties go to the earlier pool example, i.e. the smaller train index), as defined by
small-text (Schröder et al., 2023, ``small_text.query_strategies``) and modAL (Danka and Horvath, 2018,
``modAL.uncertainty``):

- ``random``: a seeded uniform draw (small-text ``RandomSampling``);
- ``least_confidence``: 1 - max_c p(c|x) (modAL ``classifier_uncertainty``, small-text ``LeastConfidence``);
- ``margin``: the smallest p(top-1) - p(top-2) first (modAL ``margin_sampling``, small-text ``BreakingTies``);
- ``entropy``: -sum_c p log p (modAL ``entropy_sampling``, small-text ``PredictionEntropy``);
- ``bald``: mutual information between the prediction and the parameters under MC dropout (Houlsby et al., 2011;
  Gal et al., 2017): H(mean_t p_t) - mean_t H(p_t) over ``active.mc_samples`` forward passes with dropout on
  (small-text ``BALD``);
- ``coreset``: k-center greedy (Sener and Savarese, 2018) on the encoder's final [CLS] states, L2-normalised and
  compared by Euclidean distance (small-text ``GreedyCoreset``, whose default normalises): each pick is the pool
  example farthest from its nearest labelled or already picked example.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adapt.analysis import baselines
from adapt.analysis.forgetting import estimate
from adapt.core import schema
from adapt.core.errors import ConfigError
from adapt.core.files import write_atomic, write_json
from adapt.core.schema import Bool, Choice, Int, Str, Tuple
from adapt.data import pipeline
from adapt.experiment import base
from adapt.experiment.trial import finish_trial, start_trial
from adapt.training.loop import to_host
from adapt.training.state import global_batch, merge_model

STRATEGIES = ("random", "least_confidence", "margin", "entropy", "bald", "coreset")
RECORD = "acquired.json"


def defaults() -> ml_collections.ConfigDict:
    """The ``active`` section of a config (:func:`with_section`)."""
    return ml_collections.ConfigDict(dict(
        strategies=("random", "margin"),  # each a name of STRATEGIES
        seeds=(0, 1),  # a loop per seed: its initial sample, train.seed, random draws and dropout masks
        initial=10,  # labelled train examples to start from (stratified by label)
        acquire=10,  # examples acquired per round
        rounds=4,  # acquisition rounds: models are trained at initial, initial + acquire, ..., + rounds * acquire
        pool_size=0,  # 0: the whole train split is the pool; n: a seeded sample of n train examples
        mc_samples=10,  # bald: stochastic forward passes with dropout on
        warm_start=False,  # True: a round starts from the last round's model (its export/); False: from model.name
        metric="accuracy",  # the test metric of the curves and the area under them
    ))


SCHEMA = dict(  # of defaults()
    strategies=Tuple(of=Choice(*STRATEGIES), doc="the acquisition strategies compared"),
    seeds=Tuple(of=Int(min=0), doc="a loop per seed"),
    initial=Int(min=1, doc="labelled train examples to start from"),
    acquire=Int(min=1, doc="examples acquired per round"),
    rounds=Int(min=0, doc="acquisition rounds"),
    pool_size=Int(min=0, hint="0: the whole train split", doc="a seeded sample of the train split as the pool"),
    mc_samples=Int(min=1, doc="bald: stochastic forward passes with dropout on"),
    warm_start=Bool(doc="a round starts from the last round's model"),
    metric=Str(empty=False, doc="the test metric of the curves and the area under them"),
)
base.add_section("active", SCHEMA)  # the section with_section adds: checked with the trial's others


def with_section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` (an experiment config, :func:`adapt.experiment.base.base_config`) with the ``active`` section."""
    config.unlock()
    config.active = defaults()
    config.lock()
    return config


def check(config: ml_collections.ConfigDict) -> None:
    """One-line ConfigErrors for a bad ``active`` section, before anything is read."""
    if "active" not in config:
        raise ConfigError("the config has no 'active' section; expected one (adapt.study.active.with_section(config))")
    a, d = config.active, config.data
    schema.check(SCHEMA, a, "active")
    if not a.strategies or not a.seeds:
        raise ConfigError("active.strategies and active.seeds: expected at least one each")
    if d.format != "classification" or d.label_type != "category":
        raise ConfigError(f"active learning needs data.format='classification' with data.label_type='category'; "
                          f"the config has {d.format!r} / {d.label_type!r}")
    if d.mixture or d.get("train_examples", 0):
        raise ConfigError("active learning draws its own labelled set: leave data.mixture and data.train_examples "
                          "unset")
    if config.model.task != "sequence_classification":
        raise ConfigError(f"model.task={config.model.task!r}; active learning needs 'sequence_classification'")


def check_pool(config: ml_collections.ConfigDict, n_train: int) -> int:
    """The number of train examples a loop draws from (``active.pool_size`` or all ``n_train``); a budget larger
    than that is a one-line ConfigError."""
    a = config.active
    if a.pool_size > n_train:
        raise ConfigError(f"active.pool_size={a.pool_size} is larger than the train split ({n_train} examples)")
    size = a.pool_size or n_train
    need = a.initial + a.rounds * a.acquire
    if need > size:
        raise ConfigError(f"active.acquire={a.acquire} x active.rounds={a.rounds} after active.initial={a.initial} "
                          f"needs {need} train examples; the pool has {size}")
    return size


# ----- strategies on the model's outputs (numpy) -----

def entropy(p: np.ndarray) -> np.ndarray:
    """-sum_c p log p over the last axis (0 log 0 = 0): ``[..., C] -> [...]``."""
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def scores(strategy: str, probabilities: np.ndarray | None = None, mc: np.ndarray | None = None) -> np.ndarray:
    """Each pool example's acquisition score, higher first: ``probabilities [N, C]`` for least_confidence,
    margin and entropy; ``mc [T, N, C]``, the class probabilities of T dropout passes, for bald."""
    if strategy == "least_confidence":
        return 1.0 - probabilities.max(1)
    if strategy == "margin":
        top = np.sort(probabilities, 1)
        return -(top[:, -1] - top[:, -2])
    if strategy == "entropy":
        return entropy(probabilities)
    if strategy == "bald":
        return entropy(mc.mean(0)) - entropy(mc).mean(0)
    raise ConfigError(f"active.strategies: {strategy!r} has no scores; expected one of least_confidence, margin, "
                      f"entropy, bald")


def top(score: np.ndarray, n: int) -> np.ndarray:
    """The positions of the ``n`` highest scores, highest first; ties go to the smaller position."""
    return np.argsort(-score, kind="stable")[:n]


def k_center_greedy(labelled: np.ndarray, pool: np.ndarray, n: int) -> np.ndarray:
    """Positions in ``pool [P, D]`` of ``n`` picks: each the pool example farthest (Euclidean, after L2
    normalisation) from its nearest centre, the centres being ``labelled [L, D]`` and the picks so far; ties go
    to the smaller position."""
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def dist(a, b):  # [A, D], [B, D] -> [A, B]
        return np.sqrt(np.maximum((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None], 0.0))

    labelled, pool = unit(np.asarray(labelled, np.float64)), unit(np.asarray(pool, np.float64))
    nearest = dist(pool, labelled).min(1) if len(labelled) else np.full(len(pool), np.inf)  # [P]
    picks = []
    for _ in range(n):
        i = int(np.argmax(nearest))
        picks.append(i)
        nearest = np.minimum(nearest, dist(pool, pool[i:i + 1])[:, 0])
        nearest[i] = -np.inf  # picked: never again
    return np.asarray(picks, np.int64)


def choose(strategy: str, n: int, outputs: dict, rng: np.random.Generator) -> np.ndarray:
    """Positions in the pool of the ``n`` examples ``strategy`` acquires; ``outputs``: what :func:`pool_outputs`
    computed (``probabilities``, ``mc``, ``labelled_embeddings`` and ``embeddings``, as the strategy needs)."""
    if n > outputs["size"]:
        raise ConfigError(f"active.acquire={n} is larger than the pool ({outputs['size']} examples)")
    if strategy == "random":
        return rng.choice(outputs["size"], n, replace=False)
    if strategy == "coreset":
        return k_center_greedy(outputs["labelled_embeddings"], outputs["embeddings"], n)
    return top(scores(strategy, outputs.get("probabilities"), outputs.get("mc")), n)


# ----- the model's outputs on the pool (jitted, batched) -----

def _batches(trial, split: str):
    """(global batch, its real rows' positions) of ``split``, in order (eval batches pad the last one)."""
    for local in trial.eval_batches(split):
        batch = global_batch(local, trial.trainer.batch_sharding)
        yield batch, np.flatnonzero(to_host(batch["attention_mask"]).any(1))


def pool_outputs(trial, state, strategy: str, key) -> dict:
    """What ``strategy`` scores the ``pool`` split by, from the train ``state`` of the round's ``trial``
    (:class:`adapt.experiment.trial.TrialSetup`): ``probabilities [P, C]`` (the eval step's,
    :meth:`~adapt.training.Trainer.evaluate`);
    for bald ``mc [T, P, C]``, T passes with dropout on (pass t, batch i: masks from ``fold_in(fold_in(key, t), i)``);
    for coreset the final [CLS] states of the pool and of the labelled set, ``embeddings [P, D]`` and
    ``labelled_embeddings``."""
    trainer, model = trial.trainer, trial.trainer.static
    out = {"size": len(trial.splits["pool"]["input_ids"])}
    if strategy in ("least_confidence", "margin", "entropy"):
        _, rows = trainer.evaluate(state, trainer.steps, trial.eval_batches("pool"), examples=True)
        out["probabilities"] = np.stack([r["probabilities"] for r in rows]).astype(np.float64)
    elif strategy == "bald":
        def probs(params, frozen, batch, k):  # [B, C], dropout on
            return jax.nn.softmax(model(params, frozen, batch, k).astype(jnp.float32), -1)

        step, passes = jax.jit(probs), []
        with trainer.steps.context():
            for t in range(trial.config.active.mc_samples):
                kt = jax.random.fold_in(key, t)
                passes.append(np.concatenate([to_host(step(state.params, state.frozen, b, jax.random.fold_in(kt, i)))[r]
                                              for i, (b, r) in enumerate(_batches(trial, "pool"))]))
        out["mc"] = np.stack(passes).astype(np.float64)
    elif strategy == "coreset":
        def cls(params, frozen, batch):  # [B, D]: the encoder's final state of the first token
            module = merge_model(model, params, frozen)
            encoder = next((getattr(module, a) for a in ("bert", "roberta") if hasattr(module, a)), None)
            return encoder(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))[:, 0]

        if not any(hasattr(trainer.model, a) for a in ("bert", "roberta")):
            raise ConfigError(f"active.strategies: 'coreset' needs a BERT or RoBERTa encoder; model.name="
                              f"{trial.config.model.name!r} is a {type(trainer.model).__name__}")
        step = jax.jit(cls)
        with trainer.steps.context():
            for split, name in (("pool", "embeddings"), ("train", "labelled_embeddings")):
                out[name] = np.concatenate([to_host(step(state.params, state.frozen, b))[r]
                                            for b, r in _batches(trial, split)]).astype(np.float64)
    return out


# ----- the loop -----

def _write_jsonl(path: str, records: list[dict]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in records).encode()))
    return path


def read_data(config: ml_collections.ConfigDict) -> dict:
    """The raw records of each split of ``config.data`` (:func:`adapt.data.pipeline.records`)."""
    return pipeline.records(config.data)


def initial_set(config: ml_collections.ConfigDict, labels: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(the train indices a loop of ``seed`` may draw from, sorted; its initial labelled ones, sorted): a plain
    seeded sample of ``active.pool_size`` (all when 0), then the stratified ``active.initial`` of those."""
    size = check_pool(config, len(labels))
    universe = np.arange(len(labels)) if size == len(labels) else np.sort(
        np.random.default_rng([seed, 1]).permutation(len(labels))[:size])
    n_labels = len(set(labels[i] for i in universe))
    if config.active.initial < n_labels:
        raise ConfigError(f"active.initial={config.active.initial} is fewer than the {n_labels} labels; the initial "
                          f"sample holds at least one of each (the label vocabulary comes from it)")
    keep = pipeline.split_train(config.active.initial, [labels[i] for i in universe], seed, len(universe))
    return universe, universe[keep]


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def round_config(config, workdir: str, data: dict, labelled, pool, seed: int, previous: str | None,
                 fixed: dict) -> ml_collections.ConfigDict:
    """The trial config of one round in ``workdir``: ``data.files`` the labelled set as train and the pool (written
    to ``workdir/data``) and ``fixed`` (split -> file: dev and test), ``train.seed`` the loop's seed, and with
    ``active.warm_start`` the ``previous`` round's export as ``init_from``."""
    c = ml_collections.ConfigDict(config.to_dict())
    train = data["train"]
    files = {"train": _write_jsonl(os.path.join(workdir, "data", "train.jsonl"), [train[i] for i in labelled]),
             "pool": _write_jsonl(os.path.join(workdir, "data", "pool.jsonl"), [train[i] for i in pool]), **fixed}
    c.data.files, c.data.source, c.data.split_ratios, c.data.encoding = files, "", {}, "utf-8"  # replaced whole
    c.train.seed = seed
    if config.active.warm_start:
        c.export.model = True
        if previous:
            c.init_from = os.path.join(previous, "export")
    c.lock()
    return c


def run_loop(config: ml_collections.ConfigDict, workdir: str, strategy: str, seed: int,
             data: dict | None = None) -> dict:
    """One (strategy, seed) loop in ``workdir`` (resumed where its ``acquired.json`` left off); returns that record:
    ``{"strategy", "seed", "universe", "initial", "rounds": [{"round", "budget", "dev", "test", "acquired"}]}``
    (``acquired``: train indices, in the order picked; none after the last round)."""
    a = config.active
    data = data or read_data(config)
    labels = [str(r[config.data.label_column]) for r in data["train"]]
    path = os.path.join(workdir, RECORD)
    if os.path.isfile(path):
        with open(path) as f:
            record = json.load(f)
    else:
        universe, initial = initial_set(config, labels, seed)
        record = {"strategy": strategy, "seed": seed, "universe": universe.tolist(), "initial": initial.tolist(),
                  "rounds": []}
        os.makedirs(workdir, exist_ok=True)
        write_json(path, record)
    fixed = {s: _write_jsonl(os.path.join(workdir, "data", f"{s}.jsonl"), data[s])
             for s in ("dev", "test") if s in data}
    labelled = list(record["initial"]) + [i for r in record["rounds"] for i in r["acquired"]]
    for r in range(len(record["rounds"]), a.rounds + 1):
        pool = sorted(set(record["universe"]) - set(labelled))
        folder = os.path.join(workdir, f"round{r}")
        previous = os.path.join(workdir, f"round{r - 1}") if r else None
        started = start_trial(round_config(config, folder, data, sorted(labelled), pool, seed, previous, fixed), folder)
        results = finish_trial(started, started.trial.trainer.fit(started.train, started.eval_data))
        entry = {"round": r, "budget": len(labelled), **{s: _scalars(results[s]) for s in ("dev", "test")
                                                             if s in results}, "acquired": []}
        if r < a.rounds:
            rng = np.random.default_rng([seed, r])
            key = jax.random.fold_in(jax.random.PRNGKey(seed), r)
            outputs = pool_outputs(started.trial, started.trial.trainer.best_state(), strategy, key)
            entry["acquired"] = [pool[i] for i in choose(strategy, a.acquire, outputs, rng).tolist()]
            labelled += entry["acquired"]
        record["rounds"].append(entry)
        write_json(path, record)
        for kept in ("checkpoints", "best"):  # the round is recorded: its results.json and predictions/ stay
            shutil.rmtree(os.path.join(folder, kept), ignore_errors=True)
    return record


def loop_folder(workdir: str, strategy: str, seed: int) -> str:
    return os.path.join(workdir, strategy, f"seed{seed}")


def floor_records(records: list[dict], workdir: str, metric: str = "accuracy") -> list[dict]:
    """The floors of the curves, as records :func:`summarize` takes: majority class and TF-IDF + LR
    (:mod:`adapt.analysis.baselines`) fit, at each budget, on the labelled set random acquisition had there (each
    round's own ``data`` section, from its ``config.json``), scored on the same test split."""
    out = {}
    for rec in (r for r in records if r["strategy"] == "random"):
        folder = loop_folder(workdir, rec["strategy"], rec["seed"])
        for entry in rec["rounds"]:
            with open(os.path.join(folder, f"round{entry['round']}", "config.json")) as f:
                data = json.load(f)["data"]
            rows = baselines.compute(data, ("majority", "tfidf"), select=metric)
            for row, by_split in rows.items():
                floor = out.setdefault((row, rec["seed"]), {"strategy": f"{row} (random's labels)",
                                                            "seed": rec["seed"], "rounds": []})
                floor["rounds"].append({"round": entry["round"], "budget": entry["budget"],
                                        "test": {metric: by_split["test"][metric]}})
    return list(out.values())


def run(config: ml_collections.ConfigDict, workdir: str, log=print) -> list[dict]:
    """Every loop of ``config.active`` (seeds outer, strategies inner) in ``workdir``; returns their records."""
    check(config)
    data = read_data(config)
    if "test" not in data:
        raise ConfigError("active learning reports the test metric: the data needs a 'test' split")
    check_pool(config, len(data["train"]))
    out = []
    for seed in config.active.seeds:
        for strategy in config.active.strategies:
            out.append(run_loop(config, loop_folder(workdir, strategy, seed), strategy, seed, data))
            log(f"{strategy} seed {seed}: " + ", ".join(
                f"{e['budget']}: {e['test'].get(config.active.metric, float('nan')):.3f}" for e in out[-1]["rounds"]))
    return out


# ----- curves and the area under them -----

def auc(budgets, values) -> float:
    """The area under ``values`` over ``budgets`` (trapezoids) divided by the budget range: the curve's mean
    height, on the metric's scale (a single budget: its value)."""
    b, v = np.asarray(budgets, np.float64), np.asarray(values, np.float64)
    if len(b) < 2:
        return float(v[0])
    return float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(b)) / (b[-1] - b[0]))


def summarize(records: list[dict], metric: str = "accuracy") -> dict:
    """Per strategy, over its seeds: the test ``metric`` at each budget and the normalised area under each
    seed's curve (:func:`auc`; loops with every round only), and with random among the strategies the area's
    difference from random's, paired by seed; each an :class:`adapt.analysis.forgetting.Estimate` (mean, Student-t 95%
    interval over seeds). ``{"budgets": [...], "rows": {strategy: {"curve": {budget: Estimate}, "auc",
    "vs_random": Estimate or None}}}``."""
    by = {}
    for rec in records:
        by.setdefault(rec["strategy"], []).append(rec)
    full = max((len(r["rounds"]) for r in records), default=0)
    budgets = sorted({e["budget"] for r in records for e in r["rounds"]})

    def areas(recs):  # seed -> area, complete loops only
        return {r["seed"]: auc([e["budget"] for e in r["rounds"]], [e["test"][metric] for e in r["rounds"]])
                for r in recs if len(r["rounds"]) == full}

    base = areas(by.get("random", []))
    rows = {}
    for strategy, recs in by.items():
        curve = {}
        for b in budgets:
            values = [e["test"][metric] for r in recs for e in r["rounds"] if e["budget"] == b]
            if values:
                curve[b] = estimate(values)
        mine = areas(recs)
        paired = [mine[s] - base[s] for s in mine if s in base]
        rows[strategy] = {"curve": curve, "auc": estimate(list(mine.values())) if mine else None,
                          "vs_random": estimate(paired) if paired and strategy != "random" else None}
    return {"budgets": budgets, "metric": metric, "rows": rows}


def _cell(e, scale: float = 100.0, signed: bool = False) -> str:
    """An estimate as ``mean [low, high] (n=...)``; a metric's own interval (not a difference's) cut to its range,
    [0, 1] x ``scale``: a Student-t interval over three seeds can reach past it."""
    if e is None:
        return "-"
    sign = "+" if signed else ""
    text = f"{e.mean * scale:{sign}.1f}"
    if e.low is not None:
        low, high = (e.low, e.high) if signed else (max(e.low, 0.0), min(e.high, 1.0))
        text += f" [{low * scale:{sign}.1f}, {high * scale:{sign}.1f}]"
    return text + f" (n={e.n})"


def to_markdown(summary: dict) -> str:
    """The curves' table (test metric x 100 at each label budget) and the area-under-curve table, as Markdown."""
    budgets, rows, metric = summary["budgets"], summary["rows"], summary["metric"]
    lines = [f"Test {metric} (x100) by label budget: mean over seeds [95% Student-t interval, cut to 0-100] "
             "(n seeds)", "",
             "| strategy | " + " | ".join(str(b) for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(_cell(r["curve"].get(b)) for b in budgets) + " |" for s, r in rows.items()]
    span = f"{budgets[0]}-{budgets[-1]}" if budgets else "-"
    lines += ["", f"Area under the curve over budgets {span} (trapezoids, divided by the budget range; x100), and "
              f"its difference from random paired by seed", "",
              "| strategy | AUC | AUC - random |", "|---|---|---|"]
    lines += [f"| {s} | {_cell(r['auc'])} | {_cell(r['vs_random'], signed=True)} |" for s, r in rows.items()]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str) -> str:
    """The curves with their intervals (cut to the metric's range, 0-100) as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for s, r in summary["rows"].items():
        b = sorted(r["curve"])
        m = np.array([r["curve"][x].mean for x in b]) * 100
        low = np.array([r["curve"][x].low if r["curve"][x].low is not None else r["curve"][x].mean for x in b]) * 100
        high = np.array([r["curve"][x].high if r["curve"][x].high is not None else r["curve"][x].mean for x in b]) * 100
        ax.plot(b, m, marker="o", label=s)
        ax.fill_between(b, np.maximum(low, 0), np.minimum(high, 100), alpha=0.15)  # a metric lies in [0, 100]
    ax.set_xticks(summary["budgets"])
    ax.set_xlabel("labelled examples")
    ax.set_ylabel(f"test {summary['metric']} (x100)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return path
