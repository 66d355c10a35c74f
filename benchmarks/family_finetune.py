"""A short fine-tune of a family that has no small checkpoint offline: a random-init model of the family (a small
config of its transformers class) trained on a benchmark's train sentences and evaluated on its dev sentences (packed
rows), to show the loss falling: decoders as causal LMs with the bundled SmolLM2 tokenizer, encoders as masked LMs
with the bundled MiniLM's. Not a test: run it by hand.

    ADAPT_DATA_DIR=../shared/data .venv/bin/python benchmarks/family_finetune.py --family=gemma3 [--steps 200]

``--family``: ``gemma2``, ``gemma3`` (text), ``mixtral``, ``qwen3_moe``, ``modernbert`` or ``deberta-v3``. The data:
ChemProt's sentences (``scibert/chemprot``), its relation markers left in. Prints the dev loss before training and
after, and the train loss every 20 steps (and a mixture's load-balancing loss: k, the experts per token, when the
experts share the tokens evenly).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a CPU run: libtpu, when installed, is not probed

CONFIGS = {  # a small model of each family, 256 wide, the family's own layer pattern
    "gemma2": ("Gemma2Config", dict(num_hidden_layers=4, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                    num_key_value_heads=2, head_dim=64, sliding_window=32)),
    "gemma3": ("Gemma3TextConfig", dict(num_hidden_layers=6, num_key_value_heads=2, head_dim=64,  # 5 local, 1 global
                                        sliding_window=32)),
    "modernbert": ("ModernBertConfig", dict(num_hidden_layers=6, local_attention=64)),  # global every third layer
    "mixtral": ("MixtralConfig", dict(num_hidden_layers=4, num_key_value_heads=2, num_local_experts=8,
                                      num_experts_per_tok=2, intermediate_size=384)),  # 8 experts of half width
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_hidden_layers=4, num_key_value_heads=2, head_dim=64, num_experts=16,
                                         num_experts_per_tok=4, moe_intermediate_size=192)),  # finer experts
    "deberta-v3": ("DebertaV2Config", dict(num_hidden_layers=6, relative_attention=True, position_buckets=64,
                                           pos_att_type="p2c|c2p", share_att_key=True, norm_rel_ebd="layer_norm",
                                           position_biased_input=False, type_vocab_size=0)),  # v3's layout
}


def sentences(split: str) -> list[str]:
    path = os.path.join(os.environ["ADAPT_DATA_DIR"], "scibert", "chemprot", f"{split}.jsonl")
    with open(path) as f:
        return [json.loads(line)["text"] for line in f]


def packed(tok, texts: list[str], length: int) -> np.ndarray:  # [N, length] rows of the concatenated documents
    ids = [t for text in texts for t in tok(text)["input_ids"] + ([tok.eos_token_id] if tok.eos_token_id is not None
                                                                   else [])]
    n = len(ids) // length
    return np.asarray(ids[:n * length], np.int32).reshape(n, length)


class Dev:
    """Dev batches, evaluated before the first step too (the trainer's ``at_start``)."""
    at_start = True

    def __init__(self, batches):
        self.batches = batches

    def __call__(self):
        return self.batches()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=sorted(CONFIGS), default="gemma3")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--out", default="/tmp/adapt-family-finetune")
    args = p.parse_args()
    import tempfile

    import jax
    import transformers
    from flax import nnx

    from adapt.data.batches import array_batches, eval_batches
    from adapt.models import from_pretrained, load_tokenizer
    from adapt.training import CausalLM, MaskedLM, Trainer, defaults

    encoder = args.family in ("modernbert", "deberta-v3")
    tok = load_tokenizer("bundled:minilm-l6" if encoder else "bundled:smollm2-135m")
    cls, extra = CONFIGS[args.family]
    config = getattr(transformers, cls)(**{**dict(vocab_size=len(tok), hidden_size=256, intermediate_size=768,
                                                  num_attention_heads=4, max_position_embeddings=args.length,
                                                  pad_token_id=tok.pad_token_id), **extra})
    folder = tempfile.mkdtemp()
    config.save_pretrained(folder)
    model = from_pretrained(folder, "masked_lm" if encoder else "causal_lm", random_init=True)
    objective = (MaskedLM(mask_token_id=tok.mask_token_id, vocab_size=len(tok), special_ids=tuple(tok.all_special_ids))
                 if encoder else CausalLM())
    train, dev = packed(tok, sentences("train"), args.length), packed(tok, sentences("dev"), args.length)
    cfg = defaults()
    cfg.optimizer.update(learning_rate=1e-3, warmup_steps=20, schedule="cosine")
    cfg.train.update(batch_size=16, steps=args.steps, log_every=20, eval_every=args.steps)
    trainer = Trainer(model, objective, cfg, args.out)
    start = time.perf_counter()
    batches = {"input_ids": train, "attention_mask": np.ones_like(train)}
    dev_batches = {"input_ids": dev, "attention_mask": np.ones_like(dev)}
    trainer.fit(array_batches(batches, 16, seed=0),
                {"dev": Dev(lambda: eval_batches(dev_batches, 16, name="dev"))})
    wall = time.perf_counter() - start
    with open(os.path.join(args.out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    dev_loss = [(r["step"], r["dev/loss"]) for r in rows if "dev/loss" in r]
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"{args.family}: random init, {params / 1e6:.1f}M "
          f"parameters, vocabulary {len(tok)} (ln V = {math.log(len(tok)):.2f}); ChemProt train {len(train)} rows, "
          f"dev {len(dev)} rows of {args.length} tokens; {args.steps} steps of 16 rows in {wall:.0f} s")
    print("train loss:", [(r["step"], round(r["train/loss"], 3)) for r in rows if "train/loss" in r])
    print("dev loss:", [(s, round(v, 3)) for s, v in dev_loss])
    if any("train/router_loss" in r for r in rows):
        print("router loss:", [(r["step"], round(r["train/router_loss"], 3)) for r in rows if "train/router_loss" in r])


if __name__ == "__main__":
    main()
