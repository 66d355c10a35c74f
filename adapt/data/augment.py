"""Training-data augmentation for small labelled sets: EDA-style token edits and language-model paraphrases.

The ``data.augment`` section (defaults in :func:`defaults`) adds ``copies`` edited copies of every TRAIN example
(after the ``data.train_examples`` sample), for the ``classification`` and ``sft`` formats; dev and test are
never touched (``split`` may only name train). A copy keeps its example's label (or response) and changes its
text (classification: the text and, if set, the pair column; sft: the prompt):

- ``delete``: each word dropped with probability ``p`` (one random word kept if all would go);
- ``swap``: ``n`` times, two random positions swap their words;
- ``insert``: ``n`` times, a random word of the same text is inserted at a random position
  (Wei & Zou, 2019, "EDA", arXiv:1901.11196, insert synonyms; here the text's own words stand in for them);
- ``paraphrase``: a language model (``paraphrase.model``, the bundled SmolLM2-135M-Instruct) rewrites the first
  ``paraphrase.max_words`` words of the text (the cap per example; the rest is kept) from ``paraphrase.prompt``,
  sampled with ``temperature`` / ``top_p``, at most ``max_new_tokens`` new tokens.

``n = max(1, round(p * words))``, EDA's ``alpha`` (``p``) times the text's length. ``method`` is one name or a
comma-separated mix ("delete,swap,insert"); copy ``k`` (0-based) uses the ``k % len(mix)``-th. Words are the
whitespace-separated pieces of the text, joined by single spaces in a copy.

Seeds: a token edit draws from ``(seed, copy, SHA-256 of the text)``, so the same seed gives the same augmented
set, and a text is edited alike in any sample that holds it. Paraphrases are generated once and cached on disk
(``paraphrase.cache_dir``, one JSON file per key), keyed by the hash of the model id, the prompt template, the
sampling settings, the seed, the copy and the text: a rerun reads them back. A paraphrase's draw depends on the
seed, the copy and its place among the texts that missed the cache together (as ``adapt.generate`` draws), so
with a cold cache the same train set and seed give the same paraphrases; the cache keeps whatever was drawn first.
"""

from __future__ import annotations

import hashlib
import json
import os

import ml_collections
import numpy as np

from adapt.core import schema
from adapt.core.errors import ConfigError
from adapt.core.files import user_cache, write_json
from adapt.core.schema import Choice, Either, Float, Int, Path, Str, Tuple
from adapt.models import from_pretrained, load_tokenizer
from adapt.models.generate import GenerationConfig, generate

TOKEN_METHODS = ("delete", "swap", "insert")
METHODS = (*TOKEN_METHODS, "paraphrase")
FORMATS = ("classification", "sft")
PROMPT = ("Paraphrase the following text. Keep its meaning and its topic; reply with the paraphrase only.\n\n"
          "{text}")


def defaults() -> ml_collections.ConfigDict:
    """The ``data.augment`` section: off (``copies=0``)."""
    return ml_collections.ConfigDict(dict(
        copies=0,  # augmented copies per train example (0: none)
        method="delete",  # delete | swap | insert | paraphrase, or a comma-separated mix: copy k uses the k-th
        p=0.1,  # delete: each word's probability; swap / insert: max(1, round(p * words)) pairs / words
        seed=0,
        split="train",  # the split augmented: train only (dev and test are never augmented)
        paraphrase=dict(
            model="bundled:smollm2-135m",  # a causal LM that adapt.from_pretrained loads
            prompt=PROMPT,  # {text}: the words to paraphrase; sent as a user turn of the chat template
            temperature=0.7, top_p=0.9,
            max_new_tokens=64,
            max_words=48,  # the cap per example: the first max_words words are paraphrased, the rest kept
            batch_size=8,
            cache_dir=user_cache("paraphrase"),  # "" disables the cache
        ),
    ))


_MIX = rf"\s*({'|'.join(METHODS)})\s*(,\s*({'|'.join(METHODS)})\s*)*"
SCHEMA = dict(  # of defaults()
    copies=Int(min=0, hint="0: no augmentation", doc="augmented copies per train example"),
    method=Either(Str(pattern=_MIX, what=f"one of {', '.join(METHODS)} or a comma-separated mix of them"),
                  Tuple(of=Choice(*METHODS)), doc="the edit of each copy: copy k uses the k-th of the mix"),
    p=Float(ge=0, le=1, doc="delete: each word's probability; swap / insert: pairs / words per word"),
    seed=Int(min=0, doc="the edits' draws"),
    split=Choice("train", hint="augmentation applies to the train split only: dev and test are never augmented",
                 doc="the split augmented"),
    paraphrase=dict(
        model=Str(empty=False, doc="a causal LM that adapt.from_pretrained loads"),
        prompt=Str(pattern=r"(?s).*\{text\}.*", what="a template with {text}", doc="sent as a user turn"),
        temperature=Float(ge=0, doc="sampling temperature (0: greedy)"),
        top_p=Float(gt=0, le=1, doc="nucleus sampling's probability mass"),
        max_new_tokens=Int(min=1, doc="tokens generated per paraphrase at most"),
        max_words=Int(min=1, doc="words of each example paraphrased (the rest kept)"),
        batch_size=Int(min=1, doc="prompts generated for at once"),
        cache_dir=Path(doc='where paraphrases are kept; "": no cache'),
    ),
)


def enabled(cfg) -> bool:
    """Whether the data section ``cfg`` augments its train split."""
    return bool(cfg.get("augment", {}).get("copies", 0))


def methods(spec) -> list[str]:
    """The mix ``data.augment.method`` names: a name, a comma-separated string of names or a list of them."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    return [str(n).strip() for n in names]


def check(cfg) -> None:
    """One-line :class:`ConfigError` for a bad ``data.augment`` of the data section ``cfg``, before any reading."""
    a = cfg.get("augment")
    if a is None:
        return
    schema.check(SCHEMA, a, "data.augment")
    if enabled(cfg) and cfg.format not in FORMATS:
        raise ConfigError(f"data.augment.copies={a.copies} augments the {' and '.join(FORMATS)} formats; "
                          f"data.format={cfg.format!r}")


def _count(p: float, words: int) -> int:
    return max(1, int(round(p * words)))


def delete(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    """``words`` with each dropped with probability ``p``; one of them (drawn by ``rng``) if none is left."""
    if not words:
        return []
    keep = rng.random(len(words)) >= p  # [W]
    return [w for w, k in zip(words, keep) if k] or [words[rng.integers(len(words))]]


def swap(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    """``words`` after ``max(1, round(p * len))`` swaps of two positions drawn by ``rng`` (with replacement)."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(_count(p, len(out))):
        i, j = rng.integers(len(out), size=2)
        out[i], out[j] = out[j], out[i]
    return out


def insert(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    """``words`` with ``max(1, round(p * len))`` words of the original inserted, each drawn by ``rng`` and put at
    a position drawn by ``rng`` among the current ``len + 1`` gaps."""
    out = list(words)
    if not words:
        return out
    for _ in range(_count(p, len(words))):
        word = words[rng.integers(len(words))]
        out.insert(int(rng.integers(len(out) + 1)), word)
    return out


EDITS = {"delete": delete, "swap": swap, "insert": insert}


def text_rng(seed: int, copy: int, text: str) -> np.random.Generator:
    """The generator a token edit of ``text`` draws from, for ``seed`` and copy number ``copy``."""
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, copy, digest])


def edit(text: str, method: str, p: float, seed: int, copy: int) -> str:
    """``text`` after the token edit ``method`` (delete, swap or insert) of copy ``copy`` under ``seed``."""
    return " ".join(EDITS[method](text.split(), p, text_rng(seed, copy, text)))


def _key(settings: dict, copy: int, text: str) -> str:
    parts = {**settings, "copy": copy, "text": text}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _generate(model_id: str, prompts: list[str], config, batch_size: int) -> list[str]:
    """``prompts`` answered by ``model_id`` (loaded once per call) through its chat template, KV-cached."""
    model = from_pretrained(model_id, task="causal_lm")
    return generate(model, load_tokenizer(model_id), prompts, config, chat=True, batch_size=batch_size)


def paraphrase(texts: list[str], para, seed: int, copy: int) -> tuple[list[str], int]:
    """Each of ``texts`` with its first ``para.max_words`` words paraphrased (``para``: the section
    ``data.augment.paraphrase``), from the cache where it holds them; returns them and how many were generated.
    An empty answer keeps the text as it was."""
    settings = {"model": para.model, "prompt": para.prompt, "temperature": float(para.temperature),
                "top_p": float(para.top_p), "max_new_tokens": int(para.max_new_tokens),
                "max_words": int(para.max_words), "seed": int(seed)}
    heads = [" ".join(t.split()[:para.max_words]) for t in texts]
    tails = [" ".join(t.split()[para.max_words:]) for t in texts]
    keys = [_key(settings, copy, h) for h in heads]
    folder = para.cache_dir or None
    answers: dict[str, str] = {}
    for k in set(keys):
        path = os.path.join(folder, f"{k}.json") if folder else ""
        if folder and os.path.exists(path):
            with open(path) as f:
                answers[k] = json.load(f)["paraphrase"]
    missing = sorted({k: h for k, h in zip(keys, heads) if k not in answers}.items())  # by key: a fixed order
    if missing:
        config = GenerationConfig(max_new_tokens=int(para.max_new_tokens), temperature=float(para.temperature),
                                  top_p=float(para.top_p), seed=int(seed) * 1000 + copy)
        outs = _generate(para.model, [para.prompt.format(text=h) for _, h in missing], config, int(para.batch_size))
        for (k, h), out in zip(missing, outs):
            answers[k] = " ".join(out.split()) or h
            if folder:
                os.makedirs(folder, exist_ok=True)
                write_json(os.path.join(folder, f"{k}.json"), {**settings, "copy": copy, "text": h,
                                                               "paraphrase": answers[k]})
    return [" ".join(x for x in (answers[k], tail) if x) for k, tail in zip(keys, tails)], len(missing)


def augment_records(records: list[dict], cfg) -> list[dict]:
    """The train ``records`` of the data section ``cfg`` followed by ``cfg.augment.copies`` augmented copies of
    each (all of copy 0, then all of copy 1, ...): the text columns edited, every other field kept."""
    a = cfg.augment
    check(cfg)
    if not enabled(cfg):
        return records
    if cfg.format == "sft":
        columns = [cfg.prompt_column]
    else:
        columns = [cfg.text_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])
    mix = methods(a.method)
    out = list(records)
    for copy in range(a.copies):
        method = mix[copy % len(mix)]
        new = [dict(r) for r in records]
        for col in columns:
            texts = [str(r[col]) for r in records]
            if method == "paraphrase":
                texts, _ = paraphrase(texts, a.paraphrase, a.seed, copy)
            else:
                texts = [edit(t, method, a.p, a.seed, copy) for t in texts]
            for r, t in zip(new, texts):
                r[col] = t
        out += new
    return out
