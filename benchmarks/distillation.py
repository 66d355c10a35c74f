"""What a distillation study's models cost and, for language models, their perplexity with an interval.

    .venv/bin/python benchmarks/distillation.py --workdir=runs/distill_bbc
    .venv/bin/python benchmarks/distillation.py --workdir=runs/distill_lm --perplexity

For each row (``meta.condition``) of the study in ``--workdir`` (``experiments/distillation/config.py``): the
trained model's parameters (the student's alone: its teacher's weights are not parameters) and its inference
throughput on this machine, tokens/s of the jitted forward pass (the evaluation step's) on full
``[batch, length]`` rows (the median of ``--repeats`` timed calls after a warm-up call). With ``--perplexity``
(causal LMs, one document per row), the test perplexity exp(sum of NLL / target tokens) with a 95% interval:
percentile bootstrap over test documents and the row's seeds (:func:`adapt.stats.interval` on per-document
(NLL, token) counts). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from adapt.data.batches import eval_batches
from adapt.experiment import load_run
from adapt.host_memory import use_kept_heap
from adapt.results import ResultsDB
from adapt.stats import interval
from adapt.training.objectives import CausalLM
from adapt.training.state import global_batch


def parameters(model) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def tokens_per_second(trial, state, batch: int, length: int, repeats: int) -> float:
    """Tokens/s of the evaluation forward pass on ``[batch, length]`` rows of ordinary token ids."""
    ids = np.random.default_rng(0).integers(1000, 2000, (batch, length)).astype(np.int32)
    rows = global_batch({"input_ids": ids, "attention_mask": np.ones_like(ids)}, trial.trainer.batch_sharding)
    forward = jax.jit(lambda s, b: trial.trainer.static(s.params, s.frozen, b, None))
    jax.block_until_ready(forward(state, rows))  # compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(forward(state, rows))
        times.append(time.perf_counter() - start)
    return batch * length / float(np.median(times))


def document_counts(trial, state) -> np.ndarray:
    """``[n, 2]``: each test document's summed next-token NLL and its number of target tokens."""
    targets = CausalLM().targets

    @jax.jit
    def counts(s, b):  # -> [B, 2]
        logits = trial.trainer.static(s.params, s.frozen, b, None)  # [B, T, V]
        ids, valid = targets(b)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, ids, 0)) * valid
        return jnp.stack([nll.sum(1), valid.sum(1).astype(jnp.float32)], 1)

    out = []
    for local in eval_batches(trial.splits["test"], trial.config.eval.batch_size, name="test"):
        real = local["attention_mask"].any(1)  # the last batch's padding rows have no token
        out.append(np.asarray(counts(state, global_batch(local, trial.trainer.batch_sharding)))[real])
    return np.concatenate(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the study's --workdir")
    parser.add_argument("--batch", type=int, default=0, help="rows per forward pass (default: the trials' eval)")
    parser.add_argument("--length", type=int, default=0, help="tokens per row (default: the trials' max_length)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--perplexity", action="store_true", help="causal LMs: test perplexity per row")
    args = parser.parse_args()
    use_kept_heap()
    done = [t for t in ResultsDB(os.path.join(args.workdir, "results.db")).trials(status="done")]
    rows: dict[str, list] = {}
    for t in done:
        rows.setdefault(t["overrides"].get("meta.condition", t["stage"]), []).append(t)
    header = "| row | seeds | parameters | inference tokens/s |" + (" test perplexity [95% interval] |"
                                                                   if args.perplexity else "")
    lines = [header, "|---|---:|---:|---:|" + ("---:|" if args.perplexity else "")]
    for name, trials in rows.items():
        counts, speed, params = [], None, None
        for t in sorted(trials, key=lambda t: t["overrides"].get("train.seed", 0)):
            trial, state = load_run(t["workdir"])
            if speed is None:  # the seeds' models have the same shapes: time the first
                model = trial.trainer.best_model(state)
                params = parameters(model)
                c = trial.config
                speed = tokens_per_second(trial, state, args.batch or c.eval.batch_size,
                                          args.length or c.data.max_length, args.repeats)
            if args.perplexity:
                counts.append(document_counts(trial, state))
        cell = ""
        if args.perplexity:
            ci = interval(counts, lambda s: np.exp(s[..., 0] / s[..., 1]))
            cell = f" {ci.value:.2f} [{ci.low:.2f}, {ci.high:.2f}] |"
        lines.append(f"| {name} | {len(trials)} | {params / 1e6:.1f}M | {speed:,.0f} |{cell}")
    print("\n".join(lines))
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
          f"({jax.devices()[0].platform}); load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
