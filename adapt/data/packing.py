"""Causal/masked-LM packing: documents laid end to end and cut into rows of a fixed length.

``attention_mask`` numbers the documents of each row 1, 2, ... (0 on the final row's padding), so the
models keep documents from attending to each other and restart their positions, and the causal-LM loss
never predicts across a boundary. A document longer than the rest of a row continues at the start of
the next. No token is dropped or repeated: the rows read back in order are the documents concatenated.
"""

from __future__ import annotations

import numpy as np

from adapt.core.errors import DataError


def pack(columns: dict[str, list[np.ndarray]], length: int) -> dict[str, np.ndarray]:
    """``columns``: ragged per-document arrays aligned with ``input_ids`` (e.g. ``loss_mask``) ->
    ``[R, length]`` arrays plus ``attention_mask``."""
    docs = [i for i, ids in enumerate(columns["input_ids"]) if len(ids)]
    if not docs:
        raise DataError("nothing to pack: every document is empty")
    lengths = np.asarray([len(columns["input_ids"][i]) for i in docs])
    flat = {k: np.concatenate([v[i] for i in docs]).astype(np.int32) for k, v in columns.items()}
    doc = np.repeat(np.arange(len(docs)), lengths)
    rows = -(-len(doc) // length)
    pad = rows * length - len(doc)
    doc = np.concatenate([doc, np.full(pad, -1)]).reshape(rows, length)
    out = {k: np.concatenate([v, np.zeros(pad, np.int32)]).reshape(rows, length) for k, v in flat.items()}
    out["attention_mask"] = np.where(doc >= 0, doc - doc[:, :1] + 1, 0).astype(np.int32)
    return out
