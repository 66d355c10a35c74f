"""Configs to plan (scripts/plan.py) the runs people adapt large models with, on named architectures (no weights):

    .venv/bin/python scripts/plan.py --config=configs/plan.py:llama-3.1-8b --topology=v5p:2x2x1
    .venv/bin/python scripts/plan.py --config=configs/plan.py:llama-3.1-70b,cpt --topology=v5p:4x4x4 \
        --config.method.name=lora --config.method.rank=16

``arg``: a named architecture (adapt/models/architectures/: llama-3.1-8b, llama-3.1-70b, qwen2.5-7b, qwen2.5-32b,
mistral-7b-v0.3, smollm2-1.7b, roberta-large, gemma-3-12b: the language model of the multimodal checkpoint;
the mixtures of experts mixtral-8x7b and qwen3-30b-a3b), then
``,sft`` (the default: supervised fine-tuning, 64 sequences of 2,048 tokens a step) or ``,cpt`` (continued
pretraining: 512 packed rows of 2,048 tokens, about 1M tokens a step, in 8 micro-batches). Decoders train as causal
LMs, encoders (RoBERTa) with masked LM on 512-token rows. Full fine-tuning, bf16 compute, the layers scanned, FSDP
over every chip, no dropout; the method and anything else by override.
"""

from adapt.core.errors import ConfigError
from adapt.experiment import base_config
from adapt.models.bundled import ARCH_PREFIX, ARCHITECTURES

SHAPES = {"sft": dict(batch_size=64, grad_accum=1, length=2048), "cpt": dict(batch_size=512, grad_accum=8, length=2048)}


def get_config(arg="llama-3.1-8b"):
    name, _, shape = str(arg).partition(",")
    if name not in ARCHITECTURES or shape not in ("", *SHAPES):
        raise ConfigError(f"configs/plan.py:{arg}: expected <architecture>[,sft|,cpt]; architectures: "
                          f"{', '.join(ARCHITECTURES)}")
    encoder = name.startswith("roberta")
    s = SHAPES[shape or "sft"]
    c = base_config()
    c.model.update(name=ARCH_PREFIX + name, task="masked_lm" if encoder else "causal_lm", dtype="bfloat16",
                   scan_layers=True, hidden_dropout=0.0, attention_dropout=0.0)
    fmt = "lm" if encoder or shape == "cpt" else "sft"
    c.data.update(format=fmt, max_length=512 if encoder else s["length"])
    if fmt == "lm":
        c.data.update(causal=not encoder, pack=True)
    c.train.update(batch_size=s["batch_size"], grad_accum=s["grad_accum"], steps=1000)
    c.eval.batch_size = s["batch_size"] // s["grad_accum"]
    c.mesh.shape = (1, -1, 1)
    return c
