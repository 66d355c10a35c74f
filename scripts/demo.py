"""A first look at the bundled pretrained models, with no network.

    .venv/bin/python scripts/demo.py

Sentence embeddings from all-MiniLM-L6-v2 (mean-pooled, as sentence-transformers does) and their cosine
similarities, then a greedy answer and a perplexity from SmolLM2-135M-Instruct (4-bit GGUF).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from adapt.core import cli
from adapt.models import from_pretrained, load_tokenizer
from adapt.models.generate import GenerationConfig, generate

SENTENCES = ["A man is playing a guitar on stage.",
             "Someone performs music with a guitar in front of an audience.",
             "The stock market fell sharply after the interest rate decision."]
PARAGRAPH = ("The sun rose slowly over the quiet village. Farmers walked to their fields, and children ran to "
             "school with their books under their arms. In the market square, the baker opened his shop.")


def embeddings(name: str, sentences: list[str]) -> np.ndarray:
    model, tok = from_pretrained(name, task="base"), load_tokenizer(name)
    batch = tok(sentences, padding=True, return_tensors="np")
    hidden = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # [B, T, D]
    mask = jnp.asarray(batch["attention_mask"])[..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return np.asarray(pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="bundled:minilm-l6")
    parser.add_argument("--decoder", default="bundled:smollm2-135m")
    args = parser.parse_args()
    start = time.time()

    emb = embeddings(args.encoder, SENTENCES)
    print(f"{args.encoder}: cosine similarity of sentence embeddings")
    for i, j in ((0, 1), (0, 2), (1, 2)):
        print(f"  {emb[i] @ emb[j]:+.3f}  {SENTENCES[i]!r} ~ {SENTENCES[j]!r}")

    model, tok = from_pretrained(args.decoder, task="causal_lm"), load_tokenizer(args.decoder)
    answer = generate(model, tok, ["What is the capital of France?"], GenerationConfig(max_new_tokens=16), chat=True)[0]
    print(f"{args.decoder}: 'What is the capital of France?' -> {answer.strip()!r}")
    ids = np.array([tok(PARAGRAPH)["input_ids"]])
    logp = jax.nn.log_softmax(model(ids)[0, :-1])
    nll = -float(np.take_along_axis(np.asarray(logp), ids[0, 1:, None], -1).mean())
    print(f"{args.decoder}: perplexity {np.exp(nll):.1f} on a paragraph of plain English")
    print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    cli.run(main)
