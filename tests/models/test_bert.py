"""Parity of the BERT and RoBERTa encoders with transformers (float32) for every task, with right padding
and token types in the batch, before and after a round trip through our export, the layers unrolled and scanned;
the bundled MiniLM; fresh heads and checkpoint errors."""

import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from adapt.core.errors import CheckpointError
from adapt.models import from_pretrained, load_tokenizer, save_pretrained
from adapt.models.bundled import bundled_path

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=40)
CONFIGS = {
    "bert": lambda **kw: transformers.BertConfig(**TINY, **kw),
    "roberta": lambda **kw: transformers.RobertaConfig(**TINY, type_vocab_size=1, **kw),
    "xlm-roberta": lambda **kw: transformers.XLMRobertaConfig(**TINY, type_vocab_size=1, **kw),
    "bert-untied": lambda **kw: transformers.BertConfig(**TINY, tie_word_embeddings=False, **kw),
}
AUTO = {  # task -> (transformers auto class, config overrides)
    "base": (transformers.AutoModel, {}),
    "masked_lm": (transformers.AutoModelForMaskedLM, {}),
    "sequence_classification": (transformers.AutoModelForSequenceClassification, {"num_labels": 3}),
    "token_classification": (transformers.AutoModelForTokenClassification, {"num_labels": 5}),
}
CASES = [(family, task) for family in ("bert", "roberta") for task in AUTO] + [
    ("xlm-roberta", "masked_lm"), ("bert-untied", "masked_lm")]


def _reference(family, task, folder, seed=0):
    """A random HF model (biases and norms perturbed too, so every tensor matters), saved to ``folder``."""
    torch.manual_seed(seed)
    auto, overrides = AUTO[task]
    model = auto.from_config(CONFIGS[family](**overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model


def _batch(config, seed=0):
    """ids, mask, token types [3, 10]: rows 1 and 2 right-padded with the pad id; BERT gets a second segment."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, config.vocab_size, (3, 10))
    mask = np.ones_like(ids)
    mask[1, 7:] = mask[2, 4:] = 0
    ids[mask == 0] = config.pad_token_id
    types = np.zeros_like(ids)
    if config.type_vocab_size > 1:
        types[:, 5:] = 1
    return ids, mask, types


def _torch_out(model, ids, mask, types):
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


def _max_err(ours, expected, mask):
    """Max abs difference on non-pad positions (all of them for per-sequence outputs)."""
    ours = np.asarray(ours)
    assert ours.shape == expected.shape
    keep = mask.astype(bool) if ours.ndim == 3 else slice(None)
    return float(np.abs(ours[keep] - expected[keep]).max())


# model.scan_layers: the scanned cases in the slow tier (test_scan.py's parity tests run BERT and RoBERTa scanned fast)
@pytest.mark.parametrize("scan", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["unrolled", "scanned"])
@pytest.mark.parametrize("family, task", CASES)
def test_parity_and_export(family, task, scan, tmp_path):
    reference = _reference(family, task, tmp_path / "hf")
    ids, mask, types = _batch(reference.config)
    expected = _torch_out(reference, ids, mask, types)

    model = from_pretrained(str(tmp_path / "hf"), scan_layers=scan)  # the task comes from config.architectures
    assert _max_err(model(ids, mask, types), expected, mask) < 1e-4

    save_pretrained(model, str(tmp_path / "export"))
    reloaded = AUTO[task][0].from_pretrained(tmp_path / "export").eval()
    assert type(reloaded) is type(reference)
    assert _max_err(_torch_out(reloaded, ids, mask, types), expected, mask) < 1e-4


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_classifier_is_fresh_on_a_base_checkpoint(family, tmp_path):
    """The encoder (and BERT's pooler) load from a base checkpoint; only the classifier is new."""
    reference = _reference(family, "base", tmp_path)
    ids, mask, types = _batch(reference.config)
    model = from_pretrained(str(tmp_path), task="sequence_classification", num_labels=4)
    assert np.asarray(model(ids, mask, types)).shape == (3, 4)
    backbone = getattr(model, family)
    assert _max_err(backbone(ids, mask, types), _torch_out(reference, ids, mask, types), mask) < 1e-4
    if family == "bert":
        np.testing.assert_array_equal(np.asarray(backbone.pooler.dense.kernel[...]),
                                      reference.pooler.dense.weight.detach().numpy().T)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_packed_documents_and_dropout(family, tmp_path):
    """Two documents packed in one row (ids 1, 2) give what each gets alone; dropout only with rngs."""
    _reference(family, "base", tmp_path)
    model = from_pretrained(str(tmp_path), hidden_dropout=0.2)
    a, b = np.arange(3, 7), np.arange(20, 26)  # [3, 10] rows, the shape of _batch: packed, a alone, b alone
    ids = np.stack([np.concatenate([a, b]), np.pad(a, (0, 6), constant_values=model.cfg.pad_token_id),
                    np.pad(b, (0, 4), constant_values=model.cfg.pad_token_id)])
    mask = np.array([[1] * 4 + [2] * 6, [1] * 4 + [0] * 6, [1] * 6 + [0] * 4])
    out = np.asarray(model(ids, mask))
    np.testing.assert_allclose(out[0, :4], out[1, :4], atol=1e-5)
    np.testing.assert_allclose(out[0, 4:], out[2, :6], atol=1e-5)
    assert model.cfg.hidden_dropout == model.cfg.classifier_dropout == 0.2
    assert not np.allclose(np.asarray(model(ids, mask, rngs=nnx.Rngs(dropout=0))), out)


def test_misshaped_tensor_is_named(tmp_path):
    _reference("bert", "base", tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    name = "encoder.layer.1.intermediate.dense.weight"
    tensors[name] = np.zeros((36, 32), np.float32)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"mis-shaped: {name} \[36, 32\] \(expected \[37, 32\]\)"):
        from_pretrained(str(tmp_path))


def test_bundled_minilm_matches_transformers():
    tokenizer = load_tokenizer("bundled:minilm-l6")
    batch = tokenizer(["A man is eating food.", "The quick brown fox jumps over the lazy dog by the river."],
                      padding=True, return_tensors="np")
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    assert mask[0].sum() < mask[1].sum()  # the first row is padded
    reference = transformers.BertModel.from_pretrained(bundled_path("bundled:minilm-l6")).eval()
    hidden = from_pretrained("bundled:minilm-l6", task="base")(ids, mask, types)
    assert _max_err(hidden, _torch_out(reference, ids, mask, types), mask) < 1e-4


@pytest.mark.slow
def test_bundled_minilm_masked_lm_head_is_fresh():
    from adapt.models import model_info
    from adapt.models.loading import fresh_paths

    model = from_pretrained("bundled:minilm-l6", task="masked_lm")
    assert model_info(model).head_names(fresh_paths(model)) == ["cls"]
    assert np.asarray(model(np.array([[101, 2023, 102]]))).shape == (1, 3, 30522)
