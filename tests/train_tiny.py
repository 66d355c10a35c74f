"""A small causal-LM fine-tune run as its own process by the resume tests:

    python tests/train_tiny.py CHECKPOINT WORKDIR OUT.npz [--slow] [--poison-step K]

Trains the tiny Llama at CHECKPOINT for 16 steps on a (2, 2, 2) mesh of 8 fake CPU devices,
checkpointing every 2 steps, with dropout on (so the step RNG matters) and a mixed packed batch drawn from a
staged mixture of two sources (weights change at step 4); writes the final parameters and the tokens each
source gave to OUT.npz. ``--slow`` sleeps in the data iterator so a test can kill the process
mid-run; ``--poison-step K`` makes the loss of step K non-finite.
"""

import os
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from adapt.core.cli import run  # noqa: E402
from adapt.data.batches import Mixture, RowStream, array_batches  # noqa: E402
from adapt.models import from_pretrained  # noqa: E402
from adapt.training import CausalLM, Trainer, defaults  # noqa: E402


class Poisoned(CausalLM):
    """The loss is NaN for a batch whose first token is 127."""

    def loss(self, logits, batch):
        sums, pred = super().loss(logits, batch)
        bad = jnp.any(batch["input_ids"][:, 0] == 127)
        return {**sums, "loss_sum": jnp.where(bad, jnp.nan, sums["loss_sum"])}, pred


class Slow:
    """A batch source that takes its time, so the test can kill the run between steps."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def next_batch(self):
        time.sleep(0.3)
        return self.inner.next_batch()


def data(poison_step=None):
    rng = np.random.RandomState(0)
    ids = rng.randint(0, 120, (64, 24)).astype(np.int32)
    segments = np.where(np.arange(24) < 10, 1, 2)[None].repeat(64, 0).astype(np.int32)  # two packed documents
    segments[::3, -4:] = 0  # and some padding
    if poison_step is not None:  # batch order is seeded: put token 127 first in every row of that batch
        order = np.random.default_rng([0, 0]).permutation(64)
        ids[order[(poison_step - 1) * 8:poison_step * 8], 0] = 127
    return {"input_ids": ids, "attention_mask": segments}


def staged(arrays):
    """The rows as two sources in a staged mixture whose weights change at step 4 (data.mixture_stages)."""
    halves = {name: {k: v[i * 32:(i + 1) * 32] for k, v in arrays.items()} for i, name in enumerate(("a", "b"))}
    streams = {name: RowStream(rows, seed=i, name=name) for i, (name, rows) in enumerate(halves.items())}
    return Mixture(streams, [(0, {"a": 0.8, "b": 0.2}), (4, {"a": 0.2, "b": 0.8})], 8, seed=0)


def main():
    checkpoint, workdir, out = sys.argv[1:4]
    poison = int(sys.argv[sys.argv.index("--poison-step") + 1]) if "--poison-step" in sys.argv else None
    cfg = defaults()
    cfg.mesh.shape = (2, 2, 2)
    cfg.train.update(batch_size=8, steps=16, checkpoint_every=2, log_every=2, seed=3)
    cfg.optimizer.update(learning_rate=1e-3, warmup_steps=2)
    model = from_pretrained(checkpoint, task="causal_lm", hidden_dropout=0.1, attention_dropout=0.1)
    source = array_batches(data(poison), 8, seed=0) if poison else staged(data())
    source = Slow(source) if "--slow" in sys.argv else source
    trainer = Trainer(model, Poisoned() if poison else CausalLM(), cfg, workdir)
    result = trainer.fit(source)
    flat = jax.tree_util.tree_flatten_with_path(result.state.params)[0]
    tokens = {f"tokens/{n}": np.asarray(t) for n, t in getattr(source, "tokens", {}).items()}  # the data drawn
    np.savez(out, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}, **tokens)


if __name__ == "__main__":
    run(main)
