"""Task formats: raw examples -> token ids, with a tokenizer's own special-token layout.

- :func:`encode_documents`: text for causal or masked LM (each document ends with EOS when the
  tokenizer does not add one; an encoder's documents are wrapped in its CLS/SEP).
- :func:`encode_classification`: text (or a text pair) + label, with head / tail / head+tail truncation.
- :func:`read_conll` + :func:`encode_token_classification`: CoNLL columns, the tag on each word's first
  sub-token and -100 on the rest.
- :func:`encode_sft`: instruction/response pairs through the tokenizer's chat template (when it has one),
  with ``loss_mask`` 1 on exactly the response tokens.

Sequences come back as lists of int32 arrays (ragged); packing and padding happen later.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json

import numpy as np

from adapt.core.errors import DataError
from adapt.data.sources import LABEL, TEXT, read_file_text, require_columns

IGNORE = -100  # a label no loss counts: padding, a prompt's tokens, a word's later pieces

TRUNCATIONS = ("head", "tail", "head+tail")


@dataclasses.dataclass
class Template:
    """Where a tokenizer puts its special tokens around one text or a pair (learnt from the tokenizer's
    own post-processor): ``prefix A middle B suffix``."""
    prefix: list
    middle: list
    suffix: list

    @property
    def single_extra(self) -> int:
        return len(self.prefix) + len(self.suffix)


class Encoder:
    """A HF tokenizer for batch encoding without special tokens, padding or truncation, plus its
    special-token templates and a fingerprint (for the cache)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.backend = copy.deepcopy(tokenizer.backend_tokenizer)
        self.backend.no_padding()
        self.backend.no_truncation()
        a, b = (self.backend.encode(s, add_special_tokens=False) for s in ("a", "b"))
        single = self.backend.post_process(a, None, True).ids
        pair = self.backend.post_process(a, b, True).ids
        i, ia, ib = single.index(a.ids[0]), pair.index(a.ids[0]), pair.index(b.ids[0])
        self.single = Template(single[:i], [], single[i + 1:])
        self.pair = Template(pair[:ia], pair[ia + 1:ib], pair[ib + 1:])

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def fingerprint(self) -> str:
        t = self.tokenizer
        parts = [type(t).__name__, self.backend.to_str(), json.dumps(t.special_tokens_map, sort_keys=True),
                 str(getattr(t, "chat_template", None))]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def truncate(ids: list[int], budget: int, policy: str) -> list[int]:
    """Keep ``budget`` tokens: the first (head), the last (tail), or the first quarter of the budget and
    the rest from the end (head+tail, Sun et al. 2019's best for long texts)."""
    if len(ids) <= budget:
        return ids
    if policy == "head":
        return ids[:budget]
    if policy == "tail":
        return ids[len(ids) - budget:]
    if policy == "head+tail":
        head = budget // 4
        return ids[:head] + ids[len(ids) - (budget - head):]
    raise DataError(f"truncation={policy!r}; expected one of {', '.join(TRUNCATIONS)}")


def encode_documents(texts: list[str], encoder: Encoder, *, causal: bool) -> list[np.ndarray]:
    eos = encoder.tokenizer.eos_token_id
    out = []
    for ids in encoder.encode(texts):
        if causal:
            ids = ids + ([eos] if eos is not None and (not ids or ids[-1] != eos) else [])
        else:
            ids = encoder.single.prefix + ids + encoder.single.suffix
        out.append(np.asarray(ids, np.int32))
    return out


def label_vocabulary(records: list[dict], column: str, where: str) -> list[str]:
    """The sorted labels of the training split."""
    require_columns(records, {column: LABEL}, where)
    return sorted({str(r[column]) for r in records})


def label_ids(records: list[dict], column: str, vocab: list[str], where: str) -> np.ndarray:
    index = {v: i for i, v in enumerate(vocab)}
    unknown = sorted({str(r[column]) for r in records} - set(index))
    if unknown:
        raise DataError(f"{where}: label(s) {', '.join(map(repr, unknown[:5]))} never seen in train; train labels: "
                        f"{', '.join(vocab)}")
    return np.asarray([index[str(r[column])] for r in records], np.int32)


def label_values(records: list[dict], column: str, where: str) -> np.ndarray:
    """``[N]`` float32 targets (``data.label_type="number"``: regression)."""
    values = []
    for n, r in enumerate(records, 1):
        value = r[column]
        try:
            values.append(float(value))
        except ValueError:
            raise DataError(f"{where}: example {n}: field {column!r} is {value!r}; expected a number "
                            f"(data.label_type='number')") from None
    return np.asarray(values, np.float32)


def encode_classification(records: list[dict], encoder: Encoder, *, text: str, label: str,
                          vocab: list[str] | None, max_length: int, where: str, pair: str | None = None,
                          truncation: str = "head") -> dict:
    """-> ``input_ids``, ``token_type_ids`` (ragged) and ``labels [N]``: ids into ``vocab`` (int32), or the
    labels as numbers (float32) when ``vocab`` is None."""
    require_columns(records, {text: TEXT, label: LABEL, **({pair: TEXT} if pair else {})}, where)
    firsts = encoder.encode([str(r[text]) for r in records])
    labels = label_values(records, label, where) if vocab is None else label_ids(records, label, vocab, where)
    ids_out, types_out = [], []
    if pair:
        t = encoder.pair
        seconds = encoder.encode([str(r[pair]) for r in records])
        budget = max_length - len(t.prefix) - len(t.middle) - len(t.suffix)
        for a, b in zip(firsts, seconds):
            keep_a, keep_b = len(a), len(b)
            while keep_a + keep_b > budget:  # longest first, as HF's default pair truncation
                if keep_a >= keep_b:
                    keep_a -= 1
                else:
                    keep_b -= 1
            a, b = truncate(a, keep_a, truncation), truncate(b, keep_b, truncation)
            first = t.prefix + a + t.middle
            ids_out.append(np.asarray(first + b + t.suffix, np.int32))
            types_out.append(np.asarray([0] * len(first) + [1] * (len(b) + len(t.suffix)), np.int32))
    else:
        t = encoder.single
        for a in firsts:
            ids = t.prefix + truncate(a, max_length - t.single_extra, truncation) + t.suffix
            ids_out.append(np.asarray(ids, np.int32))
            types_out.append(np.zeros(len(ids), np.int32))
    return {"input_ids": ids_out, "token_type_ids": types_out, "labels": labels}


def read_conll(path: str, *, token_column: int = 0, tag_column: int = -1) -> list[tuple[list[str], list[str]]]:
    """Sentences of a CoNLL-style file: one ``token ... tag`` line per token (tab or space separated), a
    blank line between sentences, ``-DOCSTART-`` lines skipped. Every line has the same column count, and a
    token and a tag (a tab-separated line can have empty cells)."""
    sentences, tokens, tags, width = [], [], [], None
    for n, line in enumerate(read_file_text(path).splitlines(), 1):
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
            continue
        if line.startswith("-DOCSTART-"):
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        width = width or len(cols)
        if len(cols) != width:
            raise DataError(f"{path}: line {n}: {len(cols)} columns, expected {width} like the lines before")
        for what, i in (("token", token_column), ("tag", tag_column)):
            if not cols[i].strip():
                raise DataError(f"{path}: line {n}: column {i % width + 1} (the {what}) is empty; expected a {what}")
        tokens.append(cols[token_column])
        tags.append(cols[tag_column])
    if tokens:
        sentences.append((tokens, tags))
    if not sentences:
        raise DataError(f"{path}: no sentences")
    return sentences


def encode_token_classification(sentences, encoder: Encoder, *, vocab: list[str], max_length: int,
                                where: str) -> dict:
    """-> ``input_ids`` and ``labels`` (ragged): each word's tag on its first sub-token, -100 elsewhere;
    sentences longer than ``max_length`` keep their head."""
    index = {v: i for i, v in enumerate(vocab)}
    unknown = sorted({tag for _, tags in sentences for tag in tags} - set(index))
    if unknown:
        raise DataError(f"{where}: tag(s) {', '.join(map(repr, unknown[:5]))} never seen in train; train tags: "
                        f"{', '.join(vocab)}")
    t = encoder.single
    ids_out, labels_out = [], []
    encodings = encoder.backend.encode_batch([words for words, _ in sentences], is_pretokenized=True,
                                             add_special_tokens=False)
    for (words, tags), enc in zip(sentences, encodings):
        ids = list(enc.ids)
        word = enc.word_ids
        labels = [IGNORE if w is None or (i and word[i - 1] == w) else index[tags[w]] for i, w in enumerate(word)]
        budget = max_length - t.single_extra
        ids_out.append(np.asarray(t.prefix + ids[:budget] + t.suffix, np.int32))
        labels_out.append(np.asarray([IGNORE] * len(t.prefix) + labels[:budget] + [IGNORE] * len(t.suffix), np.int32))
    return {"input_ids": ids_out, "labels": labels_out}


def spans(tags: list[str]) -> set[tuple[int, int, str]]:
    """Entity spans ``(start, end, type)`` of a BIO/IOBES tag sequence, conlleval's way: an ``I-`` that
    does not continue a span of its type starts one."""
    found, start, kind, prev = set(), None, None, "O"
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, typ = tag.partition("-") if tag != "O" else ("O", "", "")
        ends = start is not None and (prefix in ("O", "B", "S") or typ != kind or prev in ("E", "S"))
        if ends:
            found.add((start, i - 1, kind))
            start = None
        if prefix in ("B", "S") or (prefix in ("I", "E") and start is None):
            start, kind = i, typ
        prev = prefix
    return found


def sft_prompt(tokenizer, prompt: str, shots: list[tuple[str, str]] = ()) -> list[int]:
    """The token ids a model answers ``prompt`` after, as supervised fine-tuning formats it (:func:`encode_sft`):
    with a chat template, a user turn and the assistant's generation prompt; without one, ``prompt\\n``.
    ``shots``: (prompt, response) examples put before it, as earlier turns (few-shot prompting)."""
    if getattr(tokenizer, "chat_template", None):
        turns = [t for p, r in shots for t in ({"role": "user", "content": p}, {"role": "assistant", "content": r})]
        return list(tokenizer.apply_chat_template(turns + [{"role": "user", "content": prompt}],
                                                  add_generation_prompt=True, tokenize=True, return_dict=False))
    text = "".join(f"{p}\n{r}\n\n" for p, r in shots) + prompt + "\n"
    return tokenizer(text, add_special_tokens=True).input_ids


def encode_sft(records: list[dict], tokenizer, *, prompt: str, response: str, max_length: int, where: str) -> dict:
    """-> ``input_ids`` and ``loss_mask`` (ragged), 1 on the response tokens only. With a chat template the
    prompt is a user turn and the response the assistant's; without one, ``prompt\\n response EOS``."""
    require_columns(records, {prompt: TEXT, response: TEXT}, where)
    ids_out, mask_out = [], []
    for n, r in enumerate(records, 1):
        head = sft_prompt(tokenizer, str(r[prompt]))
        if getattr(tokenizer, "chat_template", None):
            user = [{"role": "user", "content": str(r[prompt])}]
            full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": str(r[response])}],
                                                 tokenize=True, return_dict=False)
            if full[:len(head)] != head:
                raise DataError(f"{where}: example {n}: the chat template does not render the prompt as a prefix "
                                f"of prompt + response, so the response tokens cannot be told apart")
        else:
            full = head + tokenizer(str(r[response]), add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        full = full[:max_length]
        ids_out.append(np.asarray(full, np.int32))
        mask_out.append(np.asarray([0] * min(len(head), len(full)) + [1] * max(len(full) - len(head), 0), np.int32))
    return {"input_ids": ids_out, "loss_mask": mask_out}
