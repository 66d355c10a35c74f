"""Parity of DeBERTa-v2/v3 with transformers (float32) for every head, with right padding and rows longer than the
exact-distance range (log-bucketed and clipped relative positions), unrolled and scanned, before and after a round
trip through our export; the log buckets themselves; packed documents; prefix tuning refused in one line."""

import numpy as np
import pytest
import torch
import transformers
from conftest import perturbed_reference
from flax import nnx
from test_bert import _max_err  # the encoders' parity measure: non-pad positions
from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

from adapt.core.errors import ConfigError
from adapt.methods import build, method_config
from adapt.models import deberta, from_pretrained, save_pretrained
from adapt.models.loading import fresh_paths

# v3's layout (shared attention keys, LayerNormed relative embeddings, no absolute positions, no token types) at a
# width of 32: 8 buckets over distances up to 16, so 20-token rows have bucketed and clipped distances
TINY = dict(vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, relative_attention=True, position_buckets=8, max_relative_positions=16,
            pos_att_type="p2c|c2p", share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
            type_vocab_size=0)
AUTO = {  # case -> (transformers auto class, config overrides)
    "base": (transformers.AutoModel, {}),
    "masked_lm": (transformers.AutoModelForMaskedLM, {}),
    "masked_lm-new_head": (transformers.AutoModelForMaskedLM, {"legacy": False}),
    "sequence_classification": (transformers.AutoModelForSequenceClassification, {"num_labels": 3}),
    "token_classification": (transformers.AutoModelForTokenClassification, {"num_labels": 5}),
    # DeBERTa-v2's layout: its own positional projections, absolute positions and token types, a narrower embedding
    # projected up, distances not bucketed (clipped at 16)
    "masked_lm-v2": (transformers.AutoModelForMaskedLM, {"share_att_key": False, "position_biased_input": True,
                                                         "type_vocab_size": 2, "embedding_size": 24,
                                                         "position_buckets": -1}),
}
FAST = ("masked_lm", "sequence_classification", "token_classification")  # every head; the variants in the slow tier


def _reference(case, folder):
    """A random HF DeBERTa-v2 (every tensor perturbed, so each one matters), saved to ``folder``."""
    auto, overrides = AUTO[case]
    return perturbed_reference(lambda: auto.from_config(transformers.DebertaV2Config(**{**TINY, **overrides})), folder)


def _batch():
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 99, (3, 20))
    mask = np.ones_like(ids)
    mask[1, 14:] = mask[2, 6:] = 0
    ids[mask == 0] = 0
    return ids, mask


def _out(model, ids, mask):
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask))
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


def test_log_buckets_are_transformers():
    distances = np.arange(-600, 601)
    for buckets, most in ((256, 512), (8, 16), (32, 100)):  # v3's, the tests', one more
        np.testing.assert_array_equal(deberta.log_buckets(distances, buckets, most),
                                      make_log_bucket_position(torch.tensor(distances), buckets, most).numpy())


@pytest.mark.parametrize("case", [c if c in FAST else pytest.param(c, marks=pytest.mark.slow) for c in sorted(AUTO)])
def test_parity_and_export(case, tmp_path):
    reference = _reference(case, tmp_path / "hf")
    ids, mask = _batch()
    expected = _out(reference, ids, mask)
    for stacked in (False, True):
        model = from_pretrained(str(tmp_path / "hf"), scan_layers=stacked)  # the head from config.architectures
        assert _max_err(model(ids, mask), expected, mask) < 1e-4, stacked
    save_pretrained(model, str(tmp_path / "export"))  # the stacked one: slice i is layer i's tensors
    reloaded = AUTO[case][0].from_pretrained(tmp_path / "export").eval()
    assert type(reloaded) is type(reference)
    assert _max_err(_out(reloaded, ids, mask), expected, mask) < 1e-4


def test_packed_documents_and_prefix_tuning(tmp_path):
    """Two documents packed in a row (segment ids 1, 2) give what each gives alone (their relative positions need no
    restart); prefix tuning is refused in one line, prompt tuning applies; a checkpoint without an MLM head (v3's)
    gets a fresh one. (Every call is [1, 16]: eager ops are compiled once per shape.)"""
    _reference("base", tmp_path / "hf")
    model = from_pretrained(str(tmp_path / "hf"))
    a, b = np.arange(3, 12), np.arange(20, 27)
    packed = np.asarray(model(np.concatenate([a, b])[None], np.array([[1] * 9 + [2] * 7])))
    for doc, where in ((a, slice(0, 9)), (b, slice(9, 16))):
        alone = np.asarray(model(np.pad(doc, (0, 16 - len(doc)))[None], (np.arange(16) < len(doc))[None] * 1))
        np.testing.assert_allclose(packed[0, where], alone[0, :len(doc)], atol=1e-5)
    with pytest.raises(ConfigError, match="method.name=prefix_tuning: the deberta-v2 family refuses it") as e:
        build(method_config("prefix_tuning")).apply(model, nnx.Rngs(0))
    assert "\n" not in str(e.value)
    prompted = build(method_config("prompt_tuning", num_virtual_tokens=3)).apply(model, nnx.Rngs(0))
    assert np.isfinite(np.asarray(prompted(np.pad(a, (0, 4))[None]))).all()
    mlm = from_pretrained(str(tmp_path / "hf"), task="masked_lm")  # v3 ships no MLM head: a fresh one
    assert {p[0] for p in fresh_paths(mlm)} == {"cls"} and np.asarray(mlm(np.full((1, 16), 5))).shape == (1, 16, 99)
