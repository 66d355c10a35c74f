"""Training throughput of adapt's jitted train step against plain PyTorch + transformers, side by side.

    .venv/bin/python benchmarks/train_throughput.py [--case minilm|smollm2|all] [--steps N] [--dtype bfloat16]
        [--batch B --length T] [--model FOLDER] [--trace DIR]

Cases (from the issue): (a) the bundled MiniLM as a 5-class sequence classifier, batch 32, length 128,
float32; (b) the bundled SmolLM2-135M as a causal LM, batch 8, length 256. Both sides train the same
weights (SmolLM2 is exported to an HF folder for PyTorch), with the same batch, AdamW and number of
timed steps, on the same CPU threads, after untimed warm-up steps; a step's time is the median of the
timed steps. Reports tokens/s, time per step, peak memory (on a GPU the device's peak bytes, JAX's and the
CUDA allocator's; on CPU how far each side's peak RSS rose above the resident set before its train state
was built: optimizer state, gradients, activations and temporaries) and model-FLOPs utilisation against
this machine's measured float32 (or bf16) matmul peak.
Needs the test extra (PyTorch). On a GPU both sides run there (PyTorch under bf16 autocast with
``--dtype bfloat16``); ``--no-torch`` measures our side only. ``--model`` trains another checkpoint of the
case's task (a random-init SmolLM2 folder where the bundled package is missing); ``--batch``/``--length``
change the shape; ``--trace`` writes a ``jax.profiler`` trace of our timed steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adapt.core.host_memory import resident_bytes, use_kept_heap
from adapt.core.sharding import DEFAULT_RULES, make_mesh
from adapt.models import from_pretrained, save_pretrained
from adapt.training import CausalLM, SequenceClassification, defaults, optim
from adapt.training.state import batch_sharding, create_state, global_batch
from adapt.training.steps import Steps

CASES = {
    "minilm": dict(name="bundled:minilm-l6", task="sequence_classification", batch=32, length=128, labels=5),
    "smollm2": dict(name="bundled:smollm2-135m", task="causal_lm", batch=8, length=256),
}


def matmul_peak(dtype) -> float:
    """FLOP/s of the best of a few large square matmuls in JAX."""
    n = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def cpu_name() -> str:
    """The CPU's model name (MKL, which PyTorch uses, and XLA's kernels differ most between vendors)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def train_flops_per_token(matmul_params: int, layers: int, width: int, length: int) -> float:
    """6N for the N parameters that multiply activations (kernels and an LM head, not embedding lookups) plus 12 L T D
    for the attention scores and values (a dense kernel computes the causal mask's zeros too: we count what is computed,
    as PaLM's MFU does not)."""
    return 6 * matmul_params + 12 * layers * length * width


def rss_mark() -> int:
    """Start measuring a side's peak memory on CPU: reset the kernel's peak-RSS mark (Linux ``clear_refs``),
    so the peak that :func:`rss_growth` reads is this side's, not the process's earlier one."""
    if not os.path.exists("/proc/self/clear_refs"):  # not Linux: growth of the process's peak so far
        return _peak_rss()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return resident_bytes()


def rss_growth(mark: int) -> int:
    """Bytes by which the peak RSS since :func:`rss_mark` exceeded the mark."""
    return _peak_rss() - mark


def _peak_rss() -> int:
    if not os.path.exists("/proc/self/status"):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def median_seconds(step, steps: int, warmup: int) -> float:
    """The median time of ``steps`` calls of ``step`` after ``warmup`` untimed ones: one slow step (the
    allocator growing its heap to the step's peak, another process waking up) does not move it."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def batch_for(case, vocab: int, rng):
    ids = rng.randint(5, vocab, (case["batch"], case["length"])).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if case["task"] == "sequence_classification":
        batch["labels"] = rng.randint(0, case["labels"], case["batch"]).astype(np.int32)
    return batch


def ours(model, mesh, case, batch, steps: int, warmup: int, trace: str | None):
    objective = (SequenceClassification(case["labels"]) if case["task"] == "sequence_classification"
                 else CausalLM())
    cfg = defaults()
    cfg.optimizer.update(learning_rate=1e-5, schedule="constant")
    tx, schedule = optim.make_optimizer(cfg.optimizer, 1000, optim.param_kinds(nnx.state(model, nnx.Param)))
    mark = rss_mark()
    static, state, shardings = create_state(model, tx, mesh=mesh, rules=DEFAULT_RULES, seed=0)
    flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
    matmul_params = sum(x.size for path, x in flat if path[-1].key == "kernel")
    if case["task"] == "causal_lm" and "lm_head" not in state.params:  # tied: the embedding is the head
        matmul_params += model.cfg.vocab_size * model.cfg.hidden_size
    bsh = batch_sharding(mesh, DEFAULT_RULES, case["batch"])
    run = Steps(static, objective, tx, shardings, bsh, rules=DEFAULT_RULES)
    device_batch = global_batch(batch, bsh)

    def step():
        nonlocal state
        state, metrics = run.train(state, device_batch)
        jax.block_until_ready(metrics)

    with run.heap:
        if trace:
            for _ in range(warmup):  # compile outside the trace
                step()
            with jax.profiler.trace(trace):
                seconds = median_seconds(step, steps, 0)
        else:
            seconds = median_seconds(step, steps, warmup)
    stats = jax.devices()[0].memory_stats() or {}
    return seconds, stats.get("peak_bytes_in_use", rss_growth(mark)), matmul_params


def pytorch(case, batch, steps: int, warmup: int, folder: str, dtype: str):
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cls = (transformers.AutoModelForSequenceClassification if case["task"] == "sequence_classification"
           else transformers.AutoModelForCausalLM)
    kwargs = {"num_labels": case["labels"]} if "labels" in case else {}
    model = cls.from_pretrained(folder, dtype=torch.float32, **kwargs).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    inputs = {k: torch.from_numpy(v).long().to(device) for k, v in batch.items()}
    if case["task"] == "causal_lm":
        inputs["labels"] = inputs["input_ids"]
    mark = rss_mark()
    autocast = torch.autocast(device, torch.bfloat16, enabled=dtype == "bfloat16")

    def step():
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = median_seconds(step, steps, warmup)
    if device == "cuda":
        return seconds, torch.cuda.max_memory_allocated()
    return seconds, rss_growth(mark)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=[*CASES, "all"], default="all")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", default="float32", help="our compute dtype (parameters stay float32)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--batch", type=int, help="batch size instead of the case's")
    p.add_argument("--length", type=int, help="sequence length instead of the case's")
    p.add_argument("--model", help="a local checkpoint folder to train instead of the case's bundled model")
    p.add_argument("--trace", help="write a jax.profiler trace of our timed steps to this folder")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    use_kept_heap()  # as the scripts do (adapt.core.cli.run): before JAX starts its threads
    peak = matmul_peak(jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
    cpu = cpu_name()
    print(f"{jax.default_backend()} x{jax.device_count()} ({jax.devices()[0].device_kind}), {cpu}, "
          f"{os.cpu_count()} CPU threads; "
          f"measured {args.dtype} matmul peak {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for key in CASES if args.case == "all" else [args.case]:
        case = {**CASES[key], **{k: getattr(args, k) for k in ("batch", "length") if getattr(args, k)}}
        batch = batch_for(case, 1000, np.random.RandomState(0))
        mesh = make_mesh((1, -1, 1))
        model = from_pretrained(args.model or case["name"], task=case["task"], num_labels=case.get("labels"), mesh=mesh,
                                dtype=args.dtype)
        hf = model.cfg.hf
        with tempfile.TemporaryDirectory() as folder:
            if not args.no_torch:
                save_pretrained(model, folder)  # the same starting weights for PyTorch
            seconds, mem, matmul_params = ours(model, mesh, case, batch, args.steps, args.warmup, args.trace)
            del model
            tokens = case["batch"] * case["length"]
            flops = train_flops_per_token(matmul_params, hf.num_hidden_layers, hf.hidden_size, case["length"]) * tokens
            row = {"case": key, "batch": case["batch"], "length": case["length"], "tokens_per_step": tokens,
                   "matmul_params": matmul_params, "ours_s_per_step": seconds,
                   "ours_tokens_per_s": tokens / seconds, "ours_mfu": flops / seconds / peak, "ours_peak_bytes": mem}
            if not args.no_torch:
                t_seconds, t_mem = pytorch(case, batch, args.steps, args.warmup, folder, args.dtype)
                row.update({"torch_s_per_step": t_seconds, "torch_tokens_per_s": tokens / t_seconds,
                            "torch_mfu": flops / t_seconds / peak, "torch_peak_bytes": t_mem,
                            "ratio": t_seconds / seconds})
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| case | ours tok/s | ours s/step | ours MFU | ours peak GB | PyTorch tok/s | PyTorch s/step "
          "| PyTorch MFU | PyTorch peak GB | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    gb = lambda b: "-" if b is None else f"{b / 1e9:.2f}"  # noqa: E731
    for r in rows:
        print(f"| {r['case']} | {r['ours_tokens_per_s']:.0f} | {r['ours_s_per_step']:.3f} | {r['ours_mfu']:.1%} | "
              f"{gb(r['ours_peak_bytes'])} | "
              + (f"{r['torch_tokens_per_s']:.0f} | {r['torch_s_per_step']:.3f} | {r['torch_mfu']:.1%} | "
                 f"{gb(r['torch_peak_bytes'])} | {r['ratio']:.2f}x |" if "ratio" in r else "- | - | - | - | - |"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "cpu": cpu,
                       "dtype": args.dtype, "matmul_peak_flops": peak, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
