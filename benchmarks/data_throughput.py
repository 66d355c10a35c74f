"""Input-pipeline throughput on the ChemProt train split (4,169 examples), from the data folder
(``scripts/fetch_data.py --benchmark=chemprot`` fills it).

    .venv/bin/python benchmarks/data_throughput.py [--data <a folder with train.jsonl>]

Times, on this machine: reading the JSONL; encoding it for classification (bundled MiniLM tokenizer,
length 128); encoding its text as LM documents and packing them into rows of 256 (bundled SmolLM2
tokenizer, causal; MiniLM, masked); the whole ``prepare`` with a cold and a warm cache; and drawing
batches of 32 from the bucketed classification stream.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from adapt.data import catalog, formats, sources
from adapt.data.batches import array_batches
from adapt.data.packing import pack
from adapt.data.pipeline import data_defaults, prepare
from adapt.models import load_tokenizer


def timed(fn, repeat: int = 3):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="a folder with train.jsonl (default: ChemProt's in the data folder)")
    args = p.parse_args()
    args.data = args.data or os.path.dirname(catalog.get("chemprot").locate()["files"]["train"])
    train = os.path.join(args.data, "train.jsonl")
    bert, smol = load_tokenizer("bundled:minilm-l6"), load_tokenizer("bundled:smollm2-135m")
    enc_bert, enc_smol = formats.Encoder(bert), formats.Encoder(smol)
    seconds, records = timed(lambda: sources.read_source(train))
    n = len(records)
    rows = [("read JSONL", seconds)]
    labels = formats.label_vocabulary(records, "label", train)
    rows.append(("classification encode (MiniLM, 128)", timed(lambda: formats.encode_classification(
        records, enc_bert, text="text", label="label", vocab=labels, max_length=128, where=train))[0]))
    texts = [r["text"] for r in records]
    for name, enc, causal in (("causal LM encode + pack 256 (SmolLM2)", enc_smol, True),
                              ("masked LM encode + pack 256 (MiniLM)", enc_bert, False)):
        rows.append((name, timed(lambda: pack({"input_ids": formats.encode_documents(texts, enc, causal=causal)},
                                              256))[0]))
    with tempfile.TemporaryDirectory() as cache:
        cfg = data_defaults()
        cfg.update(files={"train": train}, cache_dir=cache, max_length=128)
        t = time.perf_counter()
        splits, hit = prepare(cfg, bert)
        rows.append(("prepare, cold cache (read + encode + write)", time.perf_counter() - t))
        t = time.perf_counter()
        splits, hit = prepare(cfg, bert)
        assert hit
        # the file's SHA-256 is memoised per process (adapt.data.cache.file_digest): a new process hashes it once
        rows.append(("prepare, warm cache (load; the file's digest memoised)", time.perf_counter() - t))
    stream = array_batches(splits["train"], 32, seed=0)
    steps = stream.steps_per_epoch
    rows.append((f"batches of 32, bucketed ({steps} per epoch)",
                 timed(lambda: [stream.next_batch() for _ in range(steps)])[0]))
    print(f"ChemProt train: {n} examples, {os.cpu_count()} CPU threads\n")
    print("| stage | seconds | examples/s |\n|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.3f} | {n / s:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
