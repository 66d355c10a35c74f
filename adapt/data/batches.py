"""Batches over examples already tokenised into equal-length numpy rows.

``ArrayBatches`` is the training stream: endless, reshuffled each epoch from the seed, and resumable
(its position is two integers saved with each checkpoint). In a multi-process run every process gets
the same global batch order and takes only its own contiguous slice of rows. ``eval_batches`` walks a
split once in order, padding the last batch with rows that count for nothing (label -100, no tokens).
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np

from adapt.errors import DataError
from adapt.training.objectives import IGNORE


def _check(arrays: dict[str, np.ndarray], where: str) -> int:
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise DataError(f"{where}: columns have different numbers of rows: {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise DataError(f"{where}: no examples")
    return n


def _local_rows(batch_size: int, process_index: int | None, process_count: int | None) -> slice:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if batch_size % count:
        raise DataError(f"batch size {batch_size} is not divisible by the {count} processes")
    per = batch_size // count
    return slice(index * per, (index + 1) * per)


class ArrayBatches:
    """Endless shuffled batches of ``batch_size`` rows of ``arrays`` (the remainder of each epoch is
    dropped, so every step sees a full batch)."""

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, *, seed: int, shuffle: bool = True,
                 name: str = "train", process_index: int | None = None, process_count: int | None = None):
        self.arrays, self.batch_size, self.seed, self.shuffle = arrays, batch_size, seed, shuffle
        self.num_examples = _check(arrays, name)
        self.steps_per_epoch = self.num_examples // batch_size
        if self.steps_per_epoch == 0:
            raise DataError(f"{name}: {self.num_examples} examples are fewer than one batch of {batch_size}")
        self.local = _local_rows(batch_size, process_index, process_count)
        self.epoch, self.index = 0, 0
        self._order = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None or self._order[0] != self.epoch:
            order = np.arange(self.num_examples)
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_examples)
            self._order = (self.epoch, order)
        return self._order[1]

    def next_batch(self) -> dict[str, np.ndarray]:
        if self.index == self.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        rows = self._epoch_order()[self.index * self.batch_size:(self.index + 1) * self.batch_size][self.local]
        self.index += 1
        return {k: v[rows] for k, v in self.arrays.items()}

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int, *, name: str = "eval",
                 process_index: int | None = None, process_count: int | None = None) -> Iterator[dict]:
    """Every row of ``arrays`` once, in order, in batches of ``batch_size``; the last is padded."""
    n = _check(arrays, name)
    local = _local_rows(batch_size, process_index, process_count)
    for start in range(0, n, batch_size):
        batch = {}
        for k, v in arrays.items():
            rows = v[start:start + batch_size]
            if len(rows) < batch_size:
                fill = IGNORE if k == "labels" else 0
                rows = np.concatenate([rows, np.full((batch_size - len(rows), *v.shape[1:]), fill, v.dtype)])
            batch[k] = rows[local]
        yield batch
