"""Checkpoints with orbax: the latest K every N steps (``checkpoints/``) plus the best by the early-stopping
metric (``best/``, parameters only).

A checkpoint holds the train state (trainable parameters, optimizer state, step, RNG) and a JSON ``extra``
(the data iterator's position, the early-stopping record), so a resumed run continues exactly. Frozen
parameters (the base model under LoRA and the like) and a method's anchors never change in a run: they
come from the model the run starts from, so checkpoints stay the size of what trains. Orbax writes
each checkpoint into a temporary folder and renames it when complete; a save cut short (a crash, SIGKILL)
leaves only a temporary folder, which :meth:`Checkpointer.latest_step` never returns.
"""

from __future__ import annotations

import hashlib
import os

import jax
import orbax.checkpoint as ocp

from adapt.core.errors import CheckpointError
from adapt.training.state import TrainState

_FIELDS = ("step", "params", "opt_state", "rng")


def _as_dict(state: TrainState, fields=_FIELDS) -> dict:
    return {f: getattr(state, f) for f in fields}


def _abstract(state: TrainState, shardings: TrainState, fields=_FIELDS) -> dict:
    return {f: jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            getattr(state, f), getattr(shardings, f)) for f in fields}


def _options(workdir: str, name: str, **kw) -> ocp.CheckpointManagerOptions:
    """Async saves; in a multi-process job the processes meet at barriers named by step, so each manager gets
    its own names (``latest`` and ``best`` save the same step at once, as do a population's members)."""
    prefix = hashlib.sha1(os.path.join(workdir, name).encode()).hexdigest()[:16]
    return ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=True, **kw,
                                        multiprocessing_options=ocp.options.MultiprocessingOptions(
                                            barrier_sync_key_prefix=prefix))


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int):
        self.workdir = os.path.abspath(workdir)
        self.latest = ocp.CheckpointManager(os.path.join(self.workdir, "checkpoints"),
                                            options=_options(self.workdir, "checkpoints", max_to_keep=keep))
        self.best = ocp.CheckpointManager(os.path.join(self.workdir, "best"),
                                          options=_options(self.workdir, "best", max_to_keep=1))

    def save(self, state: TrainState, extra: dict) -> None:
        step = int(state.step)
        if step in self.latest.all_steps():
            return
        self.latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_as_dict(state)),
                                                       extra=ocp.args.JsonSave(extra)))

    def save_best(self, state: TrainState, extra: dict) -> None:
        self.best.save(int(state.step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(_as_dict(state, ("params",))), extra=ocp.args.JsonSave(extra)),
            force=True)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def all_steps(self) -> list[int]:
        """The steps of the complete checkpoints kept."""
        return list(self.latest.all_steps())

    def best_step(self) -> int | None:
        return self.best.latest_step()

    def restore(self, template: TrainState, shardings: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
        """The checkpoint at ``step`` (default the latest), placed on ``shardings``; ``template`` gives the
        shapes the model and optimizer expect, and a checkpoint of another model is refused."""
        step = self.latest_step() if step is None else step
        restored = self._restore(self.latest, step, _abstract(template, shardings))
        return template.replace(**restored["state"]), restored["extra"]

    def restore_best(self, template: TrainState, shardings: TrainState) -> tuple[TrainState, dict]:
        fields = ("params",)
        restored = self._restore(self.best, self.best_step(), _abstract(template, shardings, fields))
        return template.replace(**restored["state"]), restored["extra"]

    def _restore(self, manager, step, abstract) -> dict:
        where = os.path.join(str(manager.directory), str(step))
        try:
            return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 extra=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{where}: does not match this model and optimizer "
                                  f"({str(e).splitlines()[0][:300]})") from None

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
