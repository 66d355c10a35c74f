"""Per adaptation method: trainable parameters, memory and step time for the bundled SmolLM2-135M causal-LM
fine-tune (batch 8, length 256, float32, AdamW), each method in its own process.

    .venv/bin/python benchmarks/methods.py [--methods lora,dora,...] [--steps 3] [--json out.json]

Memory is reported two ways: the compiled train step's footprint from XLA's memory analysis (arguments +
temporaries: parameters, frozen weights, optimizer state, batch and activations; what a GPU would need)
and the process's peak resident memory (RSS, which also holds the loaded checkpoint and XLA's own use).
Step time is the mean over the steps after the first (which compiles).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

DEFAULT = ["full", "lora", "lora_plus", "pissa", "olora", "vera", "loha", "dora", "qlora", "ia3", "houlsby", "pfeiffer",
           "prompt_tuning", "prefix_tuning", "bitfit", "freeze", "llrd", "gradual_unfreezing", "l2sp", "mixout"]
KNOBS = {"freeze": {"patterns": (r"embed_tokens", r"layers\.([0-9]|1[0-9])\.")},  # bottom 20 of 30 layers
         "gradual_unfreezing": {"every": 1}, "qlora": {"bits": 4}}


def one(name: str, steps: int) -> dict:
    from adapt.core.host_memory import use_kept_heap

    use_kept_heap()  # as the scripts do (adapt.core.cli.run): before JAX starts its threads
    import jax
    import numpy as np
    from flax import nnx

    from adapt import methods
    from adapt.core.errors import ConfigError
    from adapt.data.batches import array_batches
    from adapt.models import from_pretrained
    from adapt.training import CausalLM, Trainer, defaults

    method = methods.build({"name": name, **KNOBS.get(name, {})})
    model = from_pretrained("bundled:smollm2-135m", task="causal_lm")
    try:
        model = method.apply(model, nnx.Rngs(0))
    except ConfigError as e:
        return {"method": name, "error": str(e)}
    trainable = sum(x.size for x in jax.tree.leaves(nnx.state(model, method.trainable(model))))
    total = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    ids = np.random.RandomState(0).randint(0, model.cfg.vocab_size, (8, 256)).astype(np.int32)
    cfg = defaults()
    cfg.mesh.shape = (1, 1, 1)
    cfg.optimizer.update(learning_rate=1e-4, schedule="constant")
    cfg.train.update(batch_size=8, steps=steps, log_every=1)
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(model, CausalLM(), cfg, workdir, method=method, mesh=None)
        trainer.fit(array_batches({"input_ids": ids}, 8, seed=0))
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rates = [r["train/steps_per_second"] for r in map(json.loads, f) if r.get("train/steps_per_second")]
    batch = {"input_ids": jax.numpy.asarray(ids)}
    memory = trainer.steps._train.lower(trainer.state, batch).compile().memory_analysis()
    compiled = memory.argument_size_in_bytes + memory.temp_size_in_bytes if memory is not None else None
    return {"method": name, "trainable": int(trainable), "total": int(total),
            "step_s": float(np.mean([1 / r for r in rates])),
            "compiled_bytes": compiled, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default=",".join(DEFAULT))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.steps)), flush=True)
        return
    rows = []
    for name in args.methods.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps)],
                             capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        row = json.loads(line[-1][7:]) if line else {"method": name, "error": out.stderr.strip().splitlines()[-1:]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| method | trainable params | % of model | step memory (XLA) | peak RSS | s/step |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | n/a: {r['error']} | | | | |")
            continue
        mem = f"{r['compiled_bytes'] / 2**30:.2f} GiB" if r["compiled_bytes"] else "-"
        print(f"| {r['method']} | {r['trainable']:,} | {100 * r['trainable'] / r['total']:.2f}% | {mem} | "
              f"{r['peak_rss_bytes'] / 2**30:.2f} GiB | {r['step_s']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
