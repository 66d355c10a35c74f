"""Checkpoints with orbax: the latest K every N steps (``checkpoints/``) plus the best by the early-stopping
metric (``best/``, parameters only).

A checkpoint holds the train state (trainable parameters, optimizer state, step, RNG) and a JSON ``extra``
(the data iterator's position, the early-stopping record), so a resumed run continues exactly. Frozen
parameters (the base model under LoRA and the like) and a method's anchors never change in a run: they
come from the model the run starts from, so checkpoints stay the size of what trains. Orbax writes
each checkpoint into a temporary folder and renames it when complete; a save cut short (a crash, SIGKILL)
leaves only a temporary folder, which :meth:`Checkpointer.latest_step` never returns. A checkpoint saved with the
transformer layers held the other way (``model.scan_layers``: stacked ``[L, ...]`` or one per layer) restores into
this run's layout (:func:`relayout`).
"""

from __future__ import annotations

import hashlib
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from adapt.core.errors import CheckpointError
from adapt.training.state import TrainState

_FIELDS = ("step", "params", "opt_state", "rng")


def _as_dict(state: TrainState, fields=_FIELDS) -> dict:
    return {f: getattr(state, f) for f in fields}


def _abstract(state: TrainState, shardings: TrainState, fields=_FIELDS) -> dict:
    return {f: jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            getattr(state, f), getattr(shardings, f)) for f in fields}


def _key(entry) -> str:
    return str(getattr(entry, "key", getattr(entry, "idx", getattr(entry, "name", entry))))


def relayout(abstract, saved):
    """``saved`` (a checkpoint's tree as restored without a target) in the layout of ``abstract`` (the tree
    expected, ``ShapeDtypeStruct`` leaves with their shardings), where the two differ only in how the transformer
    layers are held (``model.scan_layers``): a leaf ``[L, ...]`` of stacked layers is the stack of the saved
    leaves at its path with a layer number 0..L-1 inserted, a numbered leaf is a slice of the saved stacked one at
    its path without the number, and a leaf every layer shares (saved once, under layer 0's path when unrolled) is
    the saved one. None when some leaf is found none of these ways or its shape differs."""
    found = {tuple(map(_key, path)): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]}
    wanted, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    out = []
    for path, want in wanted:
        path = tuple(map(_key, path))
        value = found.get(path)
        for k in range(len(path) + 1) if value is None and want.ndim else ():  # stacked from numbered layers
            layers = [path[:k] + (str(i),) + path[k:] for i in range(want.shape[0])]
            if all(p in found for p in layers):
                value = np.stack([np.asarray(found[p]) for p in layers])
                break
        for k in range(len(path)) if value is None else ():  # a numbered layer sliced from stacked ones
            stacked = found.get(path[:k] + path[k + 1:])
            if path[k].isdigit() and stacked is not None and tuple(np.shape(stacked)[1:]) == tuple(want.shape) \
                    and int(path[k]) < stacked.shape[0]:
                value = np.asarray(stacked)[int(path[k])]
                break
        for k in range(len(path) + 1) if value is None else ():  # a leaf every layer shares (prefix tuning's
            # encoder): under layer 0's path unrolled, under the stack's without a number
            for other in (path[:k] + ("0",) + path[k:], path[:k] + path[k + 1:] if path[k:k + 1] == ("0",) else ()):
                if other in found and tuple(np.shape(found[other])) == tuple(want.shape):
                    value = found[other]
            if value is not None:
                break
        if value is None or tuple(np.shape(value)) != tuple(want.shape):
            return None
        out.append(jax.device_put(np.asarray(value, want.dtype), want.sharding))
    return jax.tree_util.tree_unflatten(treedef, out)


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
            error = CheckpointError(f"{where}: does not match this model and optimizer "
                                    f"({str(e).splitlines()[0][:300]})")
        try:  # saved with the layers stacked and restored unrolled, or the other way round?
            raw = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                extra=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError):
            raise error from None
        state = relayout(abstract, raw["state"])
        if state is None:
            raise error from None
        return {"state": state, "extra": raw["extra"]}

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
