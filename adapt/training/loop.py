"""The training loop: steps or epochs, evaluation every N steps, early stopping on a dev metric with the
best checkpoint kept, checkpoints that resume exactly, metrics as JSONL and TensorBoard events, and a
progress bar with loss and tokens/s.

A run's folder (``workdir``) holds ``checkpoints/`` (the latest K), ``best/``, ``metrics.jsonl`` and
``tb/``. Starting a run in a folder that has checkpoints resumes from the latest one.

Non-finite losses: each step's metrics are read back one step late (so the host never stalls the
device), and always before a checkpoint is written; a non-finite loss or gradient ends the run with a
:class:`~adapt.core.errors.TrainingError` naming the step, and no checkpoint after the last good step exists.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from adapt.core.errors import CheckpointError, ConfigError, TrainingError
from adapt.core.files import write_atomic
from adapt.core.sharding import make_mesh, normalize_rules
from adapt.data.formats import IGNORE
from adapt.methods.base import Method
from adapt.models.loading import fresh_paths
from adapt.training import optim
from adapt.training.checkpoints import Checkpointer
from adapt.training.state import (
    TrainState,
    abstract_state,
    batch_sharding,
    create_state,
    global_batch,
    merge_model,
)
from adapt.training.steps import Steps

_NOT_SUMS = ("grad_norm", "tokens", "penalty", "router_loss")  # step metrics that are not objective sums


class EarlyStopping:
    """Tracks the best value of ``metric``; ``should_stop`` after ``patience`` evaluations without
    improvement (never with patience 0)."""

    def __init__(self, metric: str, mode: str = "max", patience: int = 0):
        if mode not in ("max", "min"):
            raise ConfigError(f"train.early_stopping.mode={mode!r}; expected 'max' or 'min'")
        self.metric, self.mode, self.patience = metric, mode, patience
        self.best, self.best_step, self.bad = None, None, 0

    def update(self, step: int, metrics: dict) -> bool:
        """Record an evaluation; True when it is the best so far."""
        if self.metric not in metrics:
            raise ConfigError(f"train.early_stopping.metric={self.metric!r} is not an evaluation metric; "
                              f"available: {', '.join(sorted(metrics))}")
        value = metrics[self.metric]
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best, self.best_step, self.bad = value, step, 0
        else:
            self.bad += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad >= self.patience

    def state(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad}

    def restore(self, state: dict) -> None:
        self.best, self.best_step, self.bad = state["best"], state["best_step"], state["bad"]


class MetricsWriter:
    """``metrics.jsonl`` (one record per log/eval: ``{"step": ..., "train/loss": ...}``) and TensorBoard
    events under ``tb/``; only process 0 writes."""

    def __init__(self, workdir: str, resume_step: int | None):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if os.path.exists(self.path):  # drop what a killed run logged after the checkpoint it resumes
            with open(self.path) as f:
                keep = [line for line in f if resume_step is not None and json.loads(line)["step"] <= resume_step]
            write_atomic(self.path, lambda f: f.write("".join(keep).encode()))  # a kill here keeps the old log
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()


def to_host(x) -> np.ndarray:
    """A (possibly multi-process, batch-sharded) array as one numpy array on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _example_rows(batch: dict, outputs: dict) -> list[dict]:
    """The real rows of a (global) eval batch, each ``{"labels": ..., **outputs}`` of that row."""
    labels = to_host(batch["labels"])
    if "attention_mask" in batch:
        real = to_host(batch["attention_mask"]).reshape(len(labels), -1).any(1)
    else:
        real = (labels.reshape(len(labels), -1) != IGNORE).any(1)
    return [{"labels": labels[r], **{k: v[r] for k, v in outputs.items()}} for r in np.flatnonzero(real)]


@dataclasses.dataclass
class FitResult:
    state: TrainState
    steps: int  # optimizer steps done
    stopped_early: bool
    best: dict | None  # {"step": ..., "value": ...} of the best evaluation by the early-stopping metric


class Trainer:
    """Trains ``model`` (in place) with ``objective`` under ``cfg`` (the ``mesh``, ``optimizer`` and ``train``
    sections, see :mod:`adapt.training.config`).

    ``train_data``: ``next_batch()`` -> this process's rows of the next global batch (numpy), ``state()``
    / ``restore(state)`` for its position, ``steps_per_epoch`` (and ``token_shares()`` for a mixture: logged
    as ``train/share/<source>``). ``eval_data``: name -> a callable returning an iterable of batches (see
    :func:`adapt.data.batches.eval_batches`), evaluated by the run's objective, or an object with
    ``evaluate(trainer, state) -> metrics`` and ``at_start`` (a named set, :mod:`adapt.evaluation.evalsets`: with
    ``at_start`` also evaluated before the first step). After :meth:`fit`, ``start_metrics`` holds the step-0
    evaluation (kept in every checkpoint, so a resumed run has it) and ``last_eval`` the (step, metrics) of
    the last evaluation this process ran (None if none). ``on_eval`` (None by default): called as
    ``on_eval(step, metrics)`` after each evaluation, step 0's included (adaptive search's pruning raises from
    it, which ends :meth:`fit` after the checkpoints in flight are written). ``method``: the
    adaptation method (:mod:`adapt.methods`; full fine-tuning by default), already applied to ``model``.
    ``fresh``: the paths of the parameters loading initialised fresh (default: those recorded on ``model``,
    :func:`adapt.models.loading.fresh_paths`), which ``train.head_warmup_steps`` trains alone first. ``extension``:
    what a trial's feature changes in the train step (:class:`adapt.training.steps.StepExtension`, e.g. DP-SGD's);
    with a ``max_batch_size`` its train data's batches have that many rows.
    """

    def __init__(self, model: nnx.Module, objective, cfg, workdir: str, *, method: Method | None = None, mesh=None,
                 fresh=None, extension=None):
        self.objective, self.cfg, self.workdir, self.extension = objective, cfg, workdir, extension
        t = cfg.train
        self.mesh = mesh or make_mesh(cfg.mesh.shape)
        self.rules = normalize_rules(cfg.mesh.rules)
        if t.batch_size % t.grad_accum:
            raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by train.grad_accum={t.grad_accum}")
        self.batch_sharding = batch_sharding(self.mesh, self.rules,
                                             (extension.max_batch_size if extension else 0) or t.batch_size)
        self.model, self.method = model, method or Method()
        self.fresh = fresh_paths(model) if fresh is None else tuple(fresh)
        self.on_eval = None  # called as on_eval(step, metrics) after each evaluation; may raise to end the run

    def total_steps(self, train_data) -> int:
        t = self.cfg.train
        return int(t.steps or math.ceil(t.epochs * train_data.steps_per_epoch))

    def _setup(self, total: int, abstract: bool = False):
        """The optimizer for ``total`` steps, the sharded train state and the jitted steps; returns (state,
        the learning-rate schedule). ``abstract``: the model is ``nnx.eval_shape``'s and the state is its
        ``ShapeDtypeStruct``s on their shardings (:func:`adapt.training.state.abstract_state`), nothing allocated:
        the steps can be lowered and compiled for the mesh's devices without owning them (:mod:`adapt.plan`)."""
        t = self.cfg.train
        trainable = nnx.state(self.model, self.method.trainable(self.model))
        if not jax.tree.leaves(trainable):
            raise ConfigError(f"method {self.method.name!r} leaves no parameter of {type(self.model).__name__} "
                              f"trainable")
        settings = optim.method_settings(self.method, self.model, trainable, fresh=self.fresh,
                                         head_warmup_steps=t.get("head_warmup_steps", 0))
        tx, schedule = optim.make_optimizer(self.cfg.optimizer, total, optim.param_kinds(trainable), settings)
        self.tx = tx
        if abstract:
            self.static, state, self.shardings = abstract_state(self.model, tx, mesh=self.mesh, rules=self.rules,
                                                                method=self.method)
        else:
            self.static, state, self.shardings = create_state(self.model, tx, mesh=self.mesh, rules=self.rules,
                                                              seed=t.seed, method=self.method)
        self.steps = Steps(self.static, self.objective, tx, self.shardings, self.batch_sharding, rules=self.rules,
                           accum=t.grad_accum, remat=t.remat, method=self.method, extension=self.extension,
                           loss_chunks=t.loss_chunks, attention=t.attention, moe_dispatch=t.moe_dispatch)
        self.state = state
        return state, schedule

    def abstract_setup(self, total: int) -> TrainState:
        """What :meth:`fit` sets up for ``total`` steps (the optimizer, the state's shardings, ``self.steps``) for a
        model from ``nnx.eval_shape``: the state as ``ShapeDtypeStruct``s, nothing allocated (:mod:`adapt.plan`
        lowers and compiles ``self.steps`` with it for a mesh of devices this machine does not own)."""
        return self._setup(total, abstract=True)[0]

    def load(self, checkpoint: str = "best") -> TrainState:
        """The state saved in this run folder (``workdir``) by an earlier :meth:`fit`: the parameters of its best
        checkpoint ("best"; the latest when it kept no best) or its latest checkpoint ("latest"). Sets
        ``steps`` and ``best_metrics`` as :meth:`fit` and :meth:`best_state` do."""
        if checkpoint not in ("best", "latest"):
            raise ConfigError(f"checkpoint={checkpoint!r}; expected 'best' or 'latest'")
        self._setup(1)  # the schedule's length does not change the state's structure
        ckpt = Checkpointer(self.workdir, keep=self.cfg.train.keep_checkpoints)
        try:
            if checkpoint == "latest" or ckpt.best_step() is None:  # the best holds parameters only: read just it
                if ckpt.latest_step() is None:
                    raise CheckpointError(f"{os.path.join(self.workdir, 'checkpoints')}: no checkpoint to load")
                self.state = ckpt.restore(self.state, self.shardings)[0]
        finally:
            ckpt.close()
        return self.best_state() if checkpoint == "best" else self.state

    def fit(self, train_data, eval_data: dict | None = None) -> FitResult:
        run, state = self.begin(train_data, eval_data)
        try:
            state = run.loop(run.evaluate_at_start(state))
        finally:
            run.close()
        return self.end(run, state)

    def begin(self, train_data, eval_data: dict | None = None, start: int | None | str = "latest"):
        """What :meth:`fit` does before its loop: the optimizer, the sharded train state, restored from the
        checkpoint at ``start`` ("latest": the latest one, None: none, from step 0) with the data position, the
        early-stopping record and the step-0 evaluation. Returns (the run's loop, the state); a population
        (:mod:`adapt.training.population`) begins each member at a common step."""
        t, eval_data = self.cfg.train, eval_data or {}
        total = self.total_steps(train_data)
        if t.get("head_warmup_steps", 0) >= total > 0:
            raise ConfigError(f"train.head_warmup_steps={t.head_warmup_steps} is not below the run's {total} steps: "
                              f"only the fresh parameters would ever train (train.steps counts both phases)")
        state, schedule = self._setup(total)
        stopper = EarlyStopping(t.early_stopping.metric, t.early_stopping.mode, t.early_stopping.patience)
        ckpt = Checkpointer(self.workdir, keep=t.keep_checkpoints)
        start = ckpt.latest_step() if start == "latest" else start
        self.start_metrics, self.last_eval = {}, None
        if start is not None:
            state, extra = ckpt.restore(state, self.shardings, start)
            train_data.restore(extra["data"])
            stopper.restore(extra["early_stopping"])
            self.start_metrics = extra.get("start", {})
        writer = MetricsWriter(self.workdir, start)
        run = _Run(self, self.steps, ckpt, writer, stopper, train_data, eval_data, total, schedule, start,
                   t.eval_every or train_data.steps_per_epoch)
        return run, state

    def end(self, run, state: TrainState) -> FitResult:
        """After the loop: ``state`` is the trainer's (and the model's) and the fit's result is returned."""
        self.state = state
        # The step donated the model's own buffers: hand the trained ones back, so ``model`` is trained in place.
        nnx.update(self.model, nnx.State(state.params), nnx.State(state.frozen))
        stopper = run.stopper
        best = {"step": stopper.best_step, "value": stopper.best} if stopper.best_step is not None else None
        return FitResult(state, int(state.step), stopper.should_stop, best)

    def evaluate(self, state: TrainState, steps: Steps, batches, *, examples: bool = False):
        """The objective's metrics over one pass of ``batches``. With ``examples``: (the metrics, one dict per
        real example in order: its ``labels`` and the objective's per-example ``outputs``, numpy), padding rows
        (no token in the attention mask; without one, no label) dropped; [] when the objective has none."""
        sums, predictions, rows = None, [], []
        for i, local in enumerate(batches):
            batch = global_batch(local, self.batch_sharding)
            out, pred, per_example = steps.eval(state, batch, i)
            sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
            if pred is not None:
                predictions.append(jax.tree.map(to_host, (pred, batch["labels"])))
            if examples and per_example is not None:
                rows += _example_rows(batch, {k: to_host(v) for k, v in per_example.items()})
        if sums is None:
            raise ConfigError("an evaluation split has no batches")
        metrics = self.objective.summarize(jax.device_get(sums), predictions or None)
        return (metrics, rows) if examples else metrics

    def best_state(self) -> TrainState:
        """The final train state with the parameters of the best evaluation (the last ones with no
        early-stopping metric). Sets ``best_metrics``: that evaluation's metrics (``{"dev/accuracy": ...}``),
        or {} when there was none."""
        ckpt = Checkpointer(self.workdir, keep=self.cfg.train.keep_checkpoints)
        try:
            if ckpt.best_step() is None:
                self.best_metrics = {}
                return self.state
            state, extra = ckpt.restore_best(self.state, self.shardings)
            self.best_metrics = extra["metrics"]
            return state
        finally:
            ckpt.close()

    def best_model(self, state: TrainState | None = None) -> nnx.Module:
        """The model with the parameters of ``state`` (default :meth:`best_state`)."""
        state = state or self.best_state()
        return merge_model(self.static, state.params, state.frozen)


class _Run:
    """One call of :meth:`Trainer.fit`: the loop and its host-side bookkeeping."""

    def __init__(self, trainer, steps, ckpt, writer, stopper, train_data, eval_data, total, schedule, start,
                 eval_every):
        self.trainer, self.steps, self.ckpt, self.writer, self.stopper = trainer, steps, ckpt, writer, stopper
        self.schedule, self.start, self.eval_every = schedule, start, eval_every  # start: the step resumed (or None)
        self.train_data, self.eval_data, self.total = train_data, eval_data, total
        self.pending, self.window, self.since = None, None, None
        self.last_saved = ckpt.latest_step()

    def check(self) -> None:
        """Read back the pending step's metrics; stop on a non-finite loss."""
        if self.pending is None:
            return
        step, metrics = self.pending
        self.pending = None
        host = jax.device_get(metrics)
        loss = float(host["loss_sum"]) / max(float(host["weight"]), 1.0)
        if not (math.isfinite(loss) and math.isfinite(float(host["grad_norm"]))):
            where = (f"the last good checkpoint is step {self.last_saved} in {self.ckpt.latest.directory}"
                     if self.last_saved is not None else "no checkpoint was written")
            raise TrainingError(f"non-finite loss ({loss}) or gradient norm ({float(host['grad_norm'])}) at step "
                                f"{step}; the run stopped and {where}")
        w = self.window or {"sums": None, "grad_norm": 0.0, "steps": 0, "timed_steps": 0, "tokens": 0}
        sums = {k: host[k] for k in host if k not in _NOT_SUMS}
        w["sums"] = sums if w["sums"] is None else jax.tree.map(np.add, w["sums"], sums)
        w["grad_norm"] += float(host["grad_norm"])
        for name in ("penalty", "router_loss"):  # the method's regulariser, a mixture of experts' balance loss
            if name in host:
                w[name] = w.get(name, 0.0) + float(host[name])
        w["steps"] += 1
        if self.since is None:  # the run's first step compiled the step: its time does not count
            self.since = time.time()
        else:
            w["timed_steps"] += 1
            w["tokens"] += int(host["tokens"])
        self.window = w

    def log(self, step: int, bar) -> None:
        w, self.window = self.window, None
        if w is None:
            return
        now = time.time()
        elapsed, self.since = max(now - self.since, 1e-9), now
        metrics = {f"train/{k}": v for k, v in self.trainer.objective.summarize(w["sums"]).items()}
        metrics.update({f"train/{name}": w[name] / w["steps"] for name in ("penalty", "router_loss") if name in w})
        metrics.update({"train/grad_norm": w["grad_norm"] / w["steps"],
                        "train/learning_rate": float(self.schedule(step - 1)),  # the last step's rate
                        "train/tokens_per_second": w["tokens"] / elapsed,
                        "train/steps_per_second": w["timed_steps"] / elapsed})
        shares = self.train_data.token_shares() if hasattr(self.train_data, "token_shares") else {}
        if len(shares) > 1:  # a mixture: each source's share of the tokens trained on so far
            metrics.update({f"train/share/{name}": share for name, share in shares.items()})
        self.writer.write(step, metrics)
        bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", tok_s=f"{metrics['train/tokens_per_second']:.0f}")

    def evaluate_at_start(self, state):
        """A run from step 0 evaluates what is evaluated before the first step (``at_start``); returns ``state``."""
        if self.start is None and any(getattr(d, "at_start", False) for d in self.eval_data.values()):
            self.trainer.start_metrics = self.evaluate(state, 0, at_start=True)
        return state

    def close(self) -> None:
        """Waits for the checkpoints in flight and closes the files."""
        try:
            self.ckpt.wait()
            self.ckpt.close()
        finally:
            self.writer.close()

    def extra(self) -> dict:
        return {"data": self.train_data.state(), "early_stopping": self.stopper.state(),
                "start": self.trainer.start_metrics}

    def save(self, state) -> None:
        self.check()
        started = time.time()
        self.ckpt.save(state, self.extra())
        self.last_saved = int(state.step)
        self.pause(started)

    def pause(self, started: float) -> None:
        """Leave the time since ``started`` (evaluation, checkpointing) out of the training throughput."""
        if self.since is not None:
            self.since += time.time() - started

    def evaluate(self, state, step: int, at_start: bool = False) -> dict:
        """Evaluate ``eval_data`` (with ``at_start``: only what is evaluated before the first step), log it, keep
        the best for early stopping (when its metric is among them); returns the metrics."""
        self.check()
        started = time.time()
        metrics = {}
        for name, data in self.eval_data.items():
            if at_start and not getattr(data, "at_start", False):
                continue
            result = data.evaluate(self.trainer, state) if hasattr(data, "evaluate") else \
                self.trainer.evaluate(state, self.steps, data())
            metrics.update({f"{name}/{k}": v for k, v in result.items()})
        self.writer.write(step, metrics)
        self.trainer.last_eval = (step, metrics)
        if self.stopper.metric and (self.stopper.metric in metrics or not at_start) \
                and self.stopper.update(step, metrics):
            self.ckpt.save_best(state, {"step": step, "metrics": metrics})
        self.pause(started)
        if self.trainer.on_eval is not None:
            self.trainer.on_eval(step, metrics)
        return metrics

    def loop(self, state):
        from tqdm.auto import tqdm

        step = self.start or 0
        bar = tqdm(total=self.total, initial=step, disable=jax.process_index() != 0, unit="step", dynamic_ncols=True)
        with bar, self.steps.heap:
            while step < self.total and not self.stopper.should_stop:
                batch = global_batch(self.train_data.next_batch(), self.trainer.batch_sharding)
                state, metrics = self.steps.train(state, batch)
                step += 1
                bar.update(1)
                self.record(step, metrics, lambda: state, bar)
        self.check()
        return state

    def record(self, step: int, metrics: dict, state, bar) -> None:
        """After train step ``step`` was dispatched: check the previous step's metrics (while this one runs), then
        log, evaluate and save as the schedule says. ``state()`` gives the train state after the step."""
        t = self.trainer.cfg.train
        self.check()
        self.pending = (step, metrics)
        last = step == self.total
        if step % t.log_every == 0 or last:
            self.check()
            self.log(step, bar)
        if self.eval_data and (step % self.eval_every == 0 or last):
            self.evaluate(state(), step)
        if (t.checkpoint_every and step % t.checkpoint_every == 0) or last or self.stopper.should_stop:
            self.save(state())
