"""Batches for the train and eval steps.

Examples are columns of equal-length rows (``np.ndarray [N, T]``, e.g. packed LM rows) or ragged lists of
1-D arrays (classification and tagging examples), which each batch pads to the smallest of ``buckets``
that fits its longest example (so the jitted step compiles once per bucket, not per length).

Training reads a :class:`Mixture` of endless, per-epoch reshuffled :class:`RowStream` s: each row of a
global batch comes from a source drawn from ``(seed, step)`` with the weights of the stage that step is in
(one stage, or a schedule of ``(first step, weights)`` stages), so the stream is deterministic. Weights are
shares of rows (sequences), not of tokens; for packed LM rows the two coincide, and the mixture counts the
tokens each source gave the global batches (``tokens``, ``token_shares()``). Its position (the step, each
source's row count and token count) is saved with each checkpoint and restored exactly; the stage is a
function of the step. Every process draws the same choices and reads only its own slice of rows.
``eval_batches`` walks a split once in order; the last batch is padded with rows that count for nothing
(labels -100, no tokens). Differentially private training reads :class:`PoissonBatches` instead (see
:mod:`adapt.features.privacy`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

import jax
import numpy as np

from adapt.core.errors import DataError
from adapt.data.formats import IGNORE

DEFAULT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)
REAL = "real"  #: PoissonBatches' column [B]: 1 for a row that is an example, 0 for padding


def _size(arrays: dict, where: str) -> int:
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise DataError(f"{where}: columns have different numbers of rows: {sizes}")
    n = next(iter(sizes.values()), 0)
    if n == 0:
        raise DataError(f"{where}: empty split (no examples)")
    return n


def _local_rows(batch_size: int, process_index: int | None = None, process_count: int | None = None) -> slice:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if batch_size % count:
        raise DataError(f"batch size {batch_size} is not divisible by the {count} processes")
    per = batch_size // count
    return slice(index * per, (index + 1) * per)


def _ragged(arrays: dict) -> list[str]:
    return [k for k, v in arrays.items() if isinstance(v, list)]


def bucket_width(lengths, buckets=DEFAULT_BUCKETS) -> int:
    longest = max(lengths, default=1)
    return next((b for b in buckets if b >= longest), longest)


def collate(arrays: dict, rows: np.ndarray, width: int | None = None) -> dict[str, np.ndarray]:
    """Rows ``rows`` of ``arrays`` as one batch; ragged columns padded to ``width`` (0, or -100 for
    labels), with an ``attention_mask`` of ones over the real tokens when the examples have none."""
    batch, ragged = {}, _ragged(arrays)
    for k, v in arrays.items():
        if k in ragged:
            out = np.full((len(rows), width), IGNORE if k == "labels" else 0, np.int32)
            for j, i in enumerate(rows):
                out[j, :len(v[i])] = v[i]
            batch[k] = out
        else:
            batch[k] = v[rows]
    if ragged and "attention_mask" not in arrays:
        lengths = np.asarray([len(arrays[ragged[0]][i]) for i in rows], np.int64)
        batch["attention_mask"] = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
    return batch


def _pad(batch: dict, size: int) -> dict:
    """``batch`` with rows that count for nothing (labels -100, no tokens) added up to ``size`` rows."""
    short = size - len(next(iter(batch.values())))
    return {k: np.concatenate([v, np.full((short, *v.shape[1:]), IGNORE if k == "labels" else 0, v.dtype)])
            for k, v in batch.items()} if short else batch


def epoch_steps(examples: int, batch_size: float) -> int:
    """Steps of one pass over ``examples`` at ``batch_size`` rows a step (at least one)."""
    return max(1, int(examples / batch_size))


class RowStream:
    """The rows of one source without end, in a fresh seeded order each epoch."""

    def __init__(self, arrays: dict, *, seed: int, shuffle: bool = True, name: str = "train"):
        self.arrays, self.seed, self.shuffle, self.name = arrays, seed, shuffle, name
        self.num_examples = _size(arrays, name)
        self.position = 0
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: (np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
                                    if self.shuffle else np.arange(self.num_examples))}
        return self._orders[epoch]

    def take(self, n: int) -> np.ndarray:
        """The indices of the next ``n`` rows."""
        positions = np.arange(self.position, self.position + n)
        self.position += n
        epochs, offsets = np.divmod(positions, self.num_examples)
        return np.asarray([self._order(e)[o] for e, o in zip(epochs, offsets)], np.int64)


def _tokens(arrays: dict, rows: np.ndarray) -> int:
    """The tokens in rows ``rows`` of ``arrays``: the non-zero ``attention_mask`` entries when there is one,
    else the lengths of the ragged ``input_ids`` rows, else the row width."""
    if "attention_mask" in arrays:
        mask = arrays["attention_mask"]
        return int(sum(np.count_nonzero(mask[i]) for i in rows) if isinstance(mask, list)
                   else np.count_nonzero(mask[rows]))
    ids = arrays["input_ids"] if "input_ids" in arrays else next(iter(arrays.values()))
    return int(sum(len(ids[i]) for i in rows)) if isinstance(ids, list) else len(rows) * int(np.prod(ids.shape[1:]))


Weights = dict[str, float]


class Mixture:
    """Global batches of ``batch_size`` rows drawn from ``streams``.

    ``weights``: ``{source: weight}`` (normalised), or stages ``[(step, {source: weight}), ...]`` whose steps
    start at 0 and increase: a stage weighs the batches from its step (the mixture's ``step``: batches drawn
    before) to the next stage's; a source it leaves out has weight 0 there. Weights are shares of rows
    (sequences), not of tokens; for packed LM rows, whose every position is a token, the two coincide.
    ``tokens``: the tokens each source gave the global batches so far (``_tokens``; every process counts
    the whole batch, so all agree), ``token_shares()`` their shares. ``steps_per_epoch``: one pass over the
    most-weighted source of the first stage. ``per_batch``: every row of a batch comes from one source, drawn per
    batch with the weights (multi-task training's batches of one task each); else each row draws its own."""

    def __init__(self, streams: dict[str, RowStream], weights: Weights | list[tuple[int, Weights]], batch_size: int,
                 *, seed: int, buckets=DEFAULT_BUCKETS, process_index: int | None = None,
                 process_count: int | None = None, per_batch: bool = False):
        self.streams, self.batch_size, self.seed, self.buckets = streams, batch_size, seed, buckets
        self.per_batch = per_batch
        self.names = list(streams)
        stages = [(0, weights)] if isinstance(weights, dict) else list(weights)
        self.starts = [int(step) for step, _ in stages]
        if not stages or self.starts[0] != 0 or any(a >= b for a, b in zip(self.starts, self.starts[1:])):
            raise DataError(f"mixture stages start at steps {self.starts}; expected 0 first, then increasing")
        self.probs = [self._probs(w) for _, w in stages]  # per stage: [sources], summing to 1
        self.local = _local_rows(batch_size, process_index, process_count)
        self.step = 0
        self.tokens = {n: 0 for n in self.names}
        first = self.probs[0]
        self.steps_per_epoch = max(1, int(streams[self.names[int(np.argmax(first))]].num_examples
                                          / (batch_size * first.max())))

    def _probs(self, weights: Weights) -> np.ndarray:
        if set(weights) - set(self.names) or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise DataError(f"mixture weights {weights} must be non-negative, not all 0, for sources among "
                            f"{', '.join(self.names)}")
        total = sum(weights.values())
        return np.asarray([weights.get(n, 0.0) / total for n in self.names])

    def next_batch(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.step, 7])
        probs = self.probs[bisect.bisect_right(self.starts, self.step) - 1]  # the stage this step is in
        if len(self.names) == 1:
            choice = np.zeros(self.batch_size, np.int64)
        else:
            choice = rng.choice(len(self.names), size=1 if self.per_batch else self.batch_size, p=probs)
            choice = np.broadcast_to(choice, (self.batch_size,))
        self.step += 1
        picked = []
        for s, name in enumerate(self.names):
            where = np.flatnonzero(choice == s)
            rows = self.streams[name].take(len(where))  # all processes advance alike
            self.tokens[name] += _tokens(self.streams[name].arrays, rows)
            picked.append((where, name, rows))
        lengths = [len(self.streams[n].arrays[k][i]) for _, n, rows in picked
                   for k in _ragged(self.streams[n].arrays)[:1] for i in rows]
        width = bucket_width(lengths, self.buckets) if lengths else None  # over the global batch
        parts = []
        for where, name, rows in picked:
            mine = (where >= self.local.start) & (where < self.local.stop)
            if mine.any():
                parts.append((where[mine], collate(self.streams[name].arrays, rows[mine], width)))
        order = np.argsort(np.concatenate([w for w, _ in parts]))
        return {k: np.concatenate([b[k] for _, b in parts])[order] for k in parts[0][1]}

    def token_shares(self) -> dict[str, float]:
        total = sum(self.tokens.values())
        return {n: t / total if total else 0.0 for n, t in self.tokens.items()}

    def state(self) -> dict:
        return {"step": self.step, "positions": {n: s.position for n, s in self.streams.items()},
                "tokens": dict(self.tokens), "token_shares": self.token_shares()}

    def restore(self, state: dict) -> None:
        self.step = int(state["step"])
        for n, p in state["positions"].items():
            if n not in self.streams:
                raise DataError(f"the checkpoint's data position names source {n!r}; this run's sources: "
                                f"{', '.join(self.streams)}")
            self.streams[n].position = int(p)
        saved = state.get("tokens", {})  # a checkpoint from before token counts: they restart at 0
        self.tokens = {n: int(saved.get(n, 0)) for n in self.names}  # the shares follow from them


class PoissonBatches:
    """Poisson-sampled batches of one source for DP-SGD, drawn as jax_privacy's ``CyclicPoissonSampling`` (one
    group, ``truncated_batch_size``) draws them: at step s each of the n examples is in the batch independently with
    probability ``expected / n`` (a binomial count, then that many distinct examples uniformly); a count above
    ``size`` is cut to ``size`` (truncation: a uniformly random ``size`` of the draw, which the accountant counts).
    Batches have ``size`` rows, padded with rows that count for nothing, and a column :data:`REAL` (1: an example).
    Step s's draw is seeded by (``seed``, s), so the position saved with a checkpoint is the step (and the tokens
    counted, as :class:`Mixture` counts them)."""

    def __init__(self, arrays: dict, expected: int, size: int, *, seed: int, buckets=DEFAULT_BUCKETS,
                 process_index: int | None = None, process_count: int | None = None):
        self.arrays, self.size, self.seed, self.buckets = arrays, size, seed, buckets
        self.num_examples = _size(arrays, "train")
        self.rate = expected / self.num_examples
        self.local = _local_rows(size, process_index, process_count)
        self.steps_per_epoch = epoch_steps(self.num_examples, expected)
        self.step, self.tokens = 0, {"train": 0}

    def draw(self, step: int) -> np.ndarray:
        """The indices of step ``step``'s examples."""
        rng = np.random.default_rng([self.seed, step, 11])
        count = min(int(rng.binomial(self.num_examples, self.rate)), self.size)
        return rng.choice(self.num_examples, size=count, replace=False).astype(np.int64)

    def next_batch(self) -> dict[str, np.ndarray]:
        rows = self.draw(self.step)
        self.step += 1
        self.tokens["train"] += _tokens(self.arrays, rows)
        ragged = _ragged(self.arrays)
        width = bucket_width([len(self.arrays[ragged[0]][i]) for i in rows], self.buckets) if ragged else None
        batch = _pad(collate(self.arrays, rows, width), self.size)
        batch[REAL] = (np.arange(self.size) < len(rows)).astype(np.int32)
        return {k: v[self.local] for k, v in batch.items()}

    def token_shares(self) -> dict[str, float]:
        return {"train": 1.0}

    def state(self) -> dict:
        return {"step": self.step, "tokens": dict(self.tokens)}

    def restore(self, state: dict) -> None:
        self.step, self.tokens = int(state["step"]), {"train": int(state["tokens"]["train"])}


def array_batches(arrays: dict, batch_size: int, *, seed: int, shuffle: bool = True, name: str = "train",
                  buckets=DEFAULT_BUCKETS, **process) -> Mixture:
    """Endless shuffled batches of one source."""
    return Mixture({name: RowStream(arrays, seed=seed, shuffle=shuffle, name=name)}, {name: 1.0}, batch_size,
                   seed=seed, buckets=buckets, **process)


def eval_batches(arrays: dict, batch_size: int, *, name: str = "eval", buckets=DEFAULT_BUCKETS,
                 process_index: int | None = None, process_count: int | None = None) -> Iterator[dict]:
    """Every row of ``arrays`` once, in order, in batches of ``batch_size``; the last is padded."""
    n = _size(arrays, name)
    local = _local_rows(batch_size, process_index, process_count)
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        ragged = _ragged(arrays)
        width = bucket_width([len(arrays[ragged[0]][i]) for i in rows], buckets) if ragged else None
        batch = _pad(collate(arrays, rows, width), batch_size)
        yield {k: v[local] for k, v in batch.items()}
