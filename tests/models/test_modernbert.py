"""Parity of ModernBERT with transformers (float32) for every head, with right padding, global and local layers (a
window shorter than the rows) and both poolings, before and after a round trip through our export; packed documents."""

import numpy as np
import pytest
import torch
import transformers
from conftest import perturbed_reference
from test_bert import _max_err  # the encoders' parity measure: non-pad positions

from adapt.core.errors import ConfigError
from adapt.models import from_pretrained, save_pretrained

# 4 layers: global, local, local, global (global_attn_every_n_layers=3); local layers see 2 tokens either side
TINY = dict(vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=4, num_attention_heads=4,
            max_position_embeddings=64, local_attention=4, pad_token_id=0)
AUTO = {  # task -> (transformers auto class, config overrides)
    "base": (transformers.AutoModel, {}),
    "masked_lm": (transformers.AutoModelForMaskedLM, {}),
    "sequence_classification": (transformers.AutoModelForSequenceClassification, {"num_labels": 3}),
    "sequence_classification-mean": (transformers.AutoModelForSequenceClassification,
                                     {"num_labels": 3, "classifier_pooling": "mean"}),
    "token_classification": (transformers.AutoModelForTokenClassification, {"num_labels": 5}),
    "masked_lm-biases": (transformers.AutoModelForMaskedLM, {"norm_bias": True, "attention_bias": True,
                                                             "mlp_bias": True}),
}


def _reference(task, folder):
    """A random HF ModernBERT (every tensor perturbed, so each one matters), saved to ``folder``."""
    auto, overrides = AUTO[task]
    return perturbed_reference(lambda: auto.from_config(transformers.ModernBertConfig(**TINY, **overrides)), folder)


def _batch():
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 99, (3, 12))
    mask = np.ones_like(ids)
    mask[1, 9:] = mask[2, 5:] = 0
    ids[mask == 0] = 0
    return ids, mask


def _out(model, ids, mask):
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask))
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


# the bare backbone and the biased variant in the slow tier: every head's case runs the backbone already
@pytest.mark.parametrize("task", [pytest.param(t, marks=pytest.mark.slow) if t in ("base", "masked_lm-biases") else t
                                  for t in sorted(AUTO)])
def test_parity_and_export(task, tmp_path):
    reference = _reference(task, tmp_path / "hf")
    ids, mask = _batch()
    expected = _out(reference, ids, mask)
    model = from_pretrained(str(tmp_path / "hf"))  # the head from config.architectures
    assert _max_err(model(ids, mask), expected, mask) < 1e-4
    # classification batches hold token types for every encoder: taken, unused (ModernBERT has none)
    assert _max_err(model(ids, mask, np.zeros_like(ids)), expected, mask) < 1e-4
    save_pretrained(model, str(tmp_path / "export"))
    reloaded = AUTO[task][0].from_pretrained(tmp_path / "export").eval()
    assert type(reloaded) is type(reference)
    assert _max_err(_out(reloaded, ids, mask), expected, mask) < 1e-4


def test_packed_documents_and_stacking(tmp_path):
    """Two documents packed in a row (segment ids 1, 2) give what each gives alone; layer 0 has no attn_norm, so
    stacked layers are refused in one line."""
    _reference("base", tmp_path / "hf")
    model = from_pretrained(str(tmp_path / "hf"))
    a, b = np.arange(3, 10), np.arange(20, 26)
    packed = np.asarray(model(np.concatenate([a, b])[None], np.array([[1] * 7 + [2] * 6])))
    np.testing.assert_allclose(packed[0, :7], np.asarray(model(a[None]))[0], atol=1e-5)
    np.testing.assert_allclose(packed[0, 7:], np.asarray(model(b[None]))[0], atol=1e-5)
    with pytest.raises(ConfigError, match="model.scan_layers=True: modernbert does not stack its layers") as e:
        from_pretrained(str(tmp_path / "hf"), scan_layers=True)
    assert "\n" not in str(e.value)
