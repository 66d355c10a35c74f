"""Generation throughput of adapt's ``generate_ids`` (KV cache, jitted decode loop) against transformers'
``model.generate`` in PyTorch, same weights, same prompts, greedy.

    .venv/bin/python benchmarks/generation.py [--model bundled:smollm2-135m] [--batch 8] [--new 128] [--repeats 3]
        [--no-torch] [--json FILE]

A batch of ``--batch`` chat-templated questions of different lengths (left-padded by both sides), ``--new`` new
tokens each, with no stop token, so both sides generate the same number of tokens. The model is loaded by adapt
(SmolLM2-135M-Instruct's 4-bit GGUF is dequantised to float32) and exported to an HF folder that PyTorch loads,
so both run the same float32 weights on the same CPU threads. Reports new tokens/s as the best of ``--repeats``
timed calls after one untimed call; our first call compiles, and compile time is that call's time less the
best timed one. Also how many of the greedy tokens both sides agree on (float rounding may let a near-tie go
either way, after which a row's tokens differ). Needs the test extra (PyTorch). Time it on an otherwise idle
machine: PyTorch's OpenMP threads wait on busy cores (a step took seconds beside another job on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax

from adapt.models import from_pretrained, load_tokenizer, save_pretrained
from adapt.models.generate import GenerationConfig, generate_ids

QUESTIONS = ["What is the capital of France?", "Name three colours.", "Write a haiku about rain.",
             "Explain in one paragraph why the sky is blue, for a ten-year-old who likes science.",
             "List the planets of the solar system.", "What is 17 times 23?",
             "Give me a short recipe for pancakes with the ingredients and the steps.",
             "Translate 'good morning' into Spanish, German and Italian."]


def cpu_line() -> str:
    """The CPU's model name and its widest vector extension (what XLA's and PyTorch's kernels use)."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    vector = next((f for f in ("avx512f", "avx2", "avx") if f in flags), "no AVX")
    return f"{name} ({vector}{', avx512_bf16' if 'avx512_bf16' in flags else ''}), {os.cpu_count()} threads"


def best_of(call, repeats: int) -> tuple[float, float, object]:
    """(first call's seconds, best of ``repeats`` further calls, the last result)."""
    start = time.perf_counter()
    result = call()
    first, best = time.perf_counter() - start, float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - start)
    return first, best, result


def pytorch(folder: str, prompts: list[list[int]], new: int, pad: int, repeats: int):
    """transformers' greedy ``generate`` on the left-padded batch: (first s, best s, new tokens [B, new])."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    length = max(map(len, prompts))
    ids = torch.full((len(prompts), length), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, length - len(p):], mask[r, length - len(p):] = torch.tensor(p), 1

    def call():
        with torch.inference_mode():
            return model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new, min_new_tokens=new,
                                  pad_token_id=pad, eos_token_id=None)[:, length:].numpy()

    return best_of(call, repeats)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled:smollm2-135m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new", type=int, default=128, help="new tokens per prompt")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    cpu = cpu_line()
    print(f"{jax.default_backend()} x{jax.device_count()}, {cpu}")
    model, tok = from_pretrained(args.model, task="causal_lm"), load_tokenizer(args.model)
    questions = (QUESTIONS * (args.batch // len(QUESTIONS) + 1))[:args.batch]
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                           tokenize=False), add_special_tokens=False)["input_ids"] for q in questions]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    config = GenerationConfig(max_new_tokens=args.new)
    tokens = args.batch * args.new
    first, best, ours = best_of(lambda: generate_ids(model, prompts, config, pad_id=pad, batch_size=args.batch),
                                args.repeats)
    row = {"model": args.model, "batch": args.batch, "new_tokens": args.new,
           "prompt_tokens": [len(q) for q in prompts], "cpu": cpu, "ours_s": best, "ours_tokens_per_s": tokens / best,
           "ours_compile_s": first - best}
    if not args.no_torch:
        with tempfile.TemporaryDirectory() as folder:
            save_pretrained(model, folder)  # the same float32 weights for PyTorch
            _, t_best, theirs = pytorch(folder, prompts, args.new, pad, args.repeats)
        agree = [next((n for n, (a, b) in enumerate(zip(o, t)) if a != b), args.new) for o, t in zip(ours, theirs)]
        row.update({"torch_s": t_best, "torch_tokens_per_s": tokens / t_best, "speedup": t_best / best,
                    "tokens_agreeing_before_first_difference": agree})
    print(json.dumps(row), flush=True)
    print(f"\nadapt generate_ids: {row['ours_tokens_per_s']:.0f} new tokens/s ({best:.2f} s for {args.batch} x "
          f"{args.new}; compile {row['ours_compile_s']:.1f} s)")
    if not args.no_torch:
        print(f"transformers generate (PyTorch CPU): {row['torch_tokens_per_s']:.0f} new tokens/s ({t_best:.2f} s); "
              f"adapt is {row['speedup']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
