"""What a distillation study's models cost and, for language models, their perplexity with an interval.

    .venv/bin/python benchmarks/distillation.py --workdir=runs/distill_bbc
    .venv/bin/python benchmarks/distillation.py --workdir=runs/distill_lm --perplexity

For each row (``meta.condition``) of the study in ``--workdir`` (``experiments/distillation/config.py``): the
trained model's parameters (the student's alone: its teacher's weights are not parameters; a trial of no step is
the model as it ships) and its inference throughput on this machine, tokens/s of the model's jitted forward pass
as evaluation runs it (no dropout, no teacher) on full ``[batch, length]`` rows (the median of ``--repeats``
timed calls after a warm-up call). With ``--perplexity``
(causal LMs, one document per row), the test perplexity exp(sum of NLL / target tokens) with a 95% interval:
percentile bootstrap over test documents and the row's seeds (:func:`adapt.analysis.stats.interval` on per-document
(NLL, token) counts); ``--compare "A|B"`` adds row A against row B, paired (:func:`adapt.analysis.stats.compare`).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from adapt.analysis.results import ResultsDB
from adapt.analysis.stats import compare, interval
from adapt.core.host_memory import use_kept_heap
from adapt.data.batches import eval_batches
from adapt.experiment import load_run
from adapt.experiment.trial import build_trial
from adapt.training.objectives import CausalLM
from adapt.training.state import global_batch


def perplexity(sums):  # summed (NLL, tokens) counts [..., 2] -> [...]
    return np.exp(sums[..., 0] / sums[..., 1])


def parameters(model) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def trained_model(workdir: str):
    """(the trial of a run folder, its trained model: the best checkpoint's, or for a run of no step, the
    model as it ships, the model it starts from)."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.train.steps == 0 and config.train.epochs == 0:  # evaluated only: no checkpoint was written
        trial = build_trial(config, workdir)
        return trial, trial.trainer.model
    trial, state = load_run(workdir)
    return trial, trial.trainer.best_model(state)


def forward(model):
    """A jitted ``(state, batch) -> logits`` of ``model`` in evaluation (no dropout; a distilled student alone)."""
    graphdef, state = nnx.split(model)
    call = jax.jit(lambda s, b: nnx.merge(graphdef, s)(input_ids=b["input_ids"], attention_mask=b["attention_mask"]))
    return lambda batch: call(state, batch)


def tokens_per_second(model, sharding, batch: int, length: int, repeats: int) -> float:
    """Tokens/s of the forward pass on ``[batch, length]`` rows of ordinary token ids."""
    ids = np.random.default_rng(0).integers(1000, 2000, (batch, length)).astype(np.int32)
    rows = global_batch({"input_ids": ids, "attention_mask": np.ones_like(ids)}, sharding)
    run = forward(model)
    jax.block_until_ready(run(rows))  # compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(rows))
        times.append(time.perf_counter() - start)
    return batch * length / float(np.median(times))


def document_counts(trial, model) -> np.ndarray:
    """``[n, 2]``: each test document's summed next-token NLL and its number of target tokens."""
    run = forward(model)

    @jax.jit
    def counts(logits, b):  # [B, T, V] -> [B, 2]
        ids, valid = CausalLM().targets(b)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, ids, 0)) * valid
        return jnp.stack([nll.sum(1), valid.sum(1).astype(jnp.float32)], 1)

    out = []
    for local in eval_batches(trial.splits["test"], trial.config.eval.batch_size, name="test"):
        real = local["attention_mask"].any(1)  # the last batch's padding rows have no token
        batch = global_batch(local, trial.trainer.batch_sharding)
        out.append(np.asarray(counts(run(batch), batch))[real])
    return np.concatenate(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the study's --workdir")
    parser.add_argument("--batch", type=int, default=0, help="rows per forward pass (default: the trials' eval)")
    parser.add_argument("--length", type=int, default=0, help="tokens per row (default: the trials' max_length)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--perplexity", action="store_true", help="causal LMs: test perplexity per row")
    parser.add_argument("--compare", default="", help="with --perplexity, 'A|B': row A against row B, paired")
    args = parser.parse_args()
    use_kept_heap()
    done = [t for t in ResultsDB(os.path.join(args.workdir, "results.db")).trials(status="done")]
    rows: dict[str, list] = {}
    for t in done:
        rows.setdefault(t["overrides"].get("meta.condition", t["stage"]), []).append(t)
    header = "| row | seeds | parameters | inference tokens/s |" + (" test perplexity [95% interval] |"
                                                                   if args.perplexity else "")
    lines = [header, "|---|---:|---:|---:|" + ("---:|" if args.perplexity else "")]
    counts_of = {}
    for name, trials in rows.items():
        counts, speed, params = [], None, None
        for t in sorted(trials, key=lambda t: t["overrides"].get("train.seed", 0)):
            trial, model = trained_model(t["workdir"])
            if speed is None:  # the seeds' models have the same shapes: time the first
                params, c = parameters(model), trial.config
                speed = tokens_per_second(model, trial.trainer.batch_sharding, args.batch or c.eval.batch_size,
                                          args.length or c.data.max_length, args.repeats)
            if args.perplexity:
                counts.append(document_counts(trial, model))
        cell = ""
        if args.perplexity:
            ci = interval(counts, perplexity)
            counts_of[name] = counts
            cell = f" {ci.value:.2f} [{ci.low:.2f}, {ci.high:.2f}] |"
        lines.append(f"| {name} | {len(trials)} | {params / 1e6:.1f}M | {speed:,.0f} |{cell}")
    print("\n".join(lines))
    if args.compare:
        a, b = args.compare.split("|")
        d = compare(counts_of[a], counts_of[b], perplexity)
        print(f"\n{a} - {b}: {d.difference:+.2f} [{d.low:+.2f}, {d.high:+.2f}], p = {d.p_value:.3f} (paired bootstrap "
              f"over test documents and seeds), p (documents) = {d.p_examples:.3f} (approximate randomisation)")
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
          f"({jax.devices()[0].platform}); load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
