"""Logit parity of the decoder families with transformers (float32), with padding in the batch, before
and after a round trip through our export, with the layers unrolled and scanned."""

import numpy as np
import pytest
import torch
import transformers
from conftest import GEMMA, GEMMA3_ROPE
from conftest import TINY_LLAMA as TINY
from flax import nnx

from adapt.models import from_pretrained, save_pretrained

VARIANTS = {
    "llama": lambda: transformers.LlamaConfig(**TINY),
    "llama3-rope": lambda: transformers.LlamaConfig(**TINY, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
    "llama-linear-rope": lambda: transformers.LlamaConfig(**TINY, rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    "llama-bias": lambda: transformers.LlamaConfig(**TINY, attention_bias=True, mlp_bias=True),
    "smollm": lambda: transformers.LlamaConfig(**{**TINY, "num_attention_heads": 6, "num_key_value_heads": 2,
                                                  "hidden_size": 48}, tie_word_embeddings=True),
    "mistral-sliding": lambda: transformers.MistralConfig(**TINY, sliding_window=4, head_dim=16),
    "qwen2": lambda: transformers.Qwen2Config(**TINY, tie_word_embeddings=True),
    "qwen3": lambda: transformers.Qwen3Config(**TINY, head_dim=24),
    # Gemma 2: local and global layers alternating, scores and logits soft-capped (low caps, so they bite); Gemma 3:
    # five local layers to one global, q/k norms, its own RoPE per layer type (linear scaling on the global ones)
    "gemma2": lambda: transformers.Gemma2Config(**GEMMA, num_hidden_layers=3, query_pre_attn_scalar=12,
                                                attn_logit_softcapping=2.0, final_logit_softcapping=3.0),
    "gemma3": lambda: transformers.Gemma3TextConfig(**GEMMA, num_hidden_layers=7, query_pre_attn_scalar=24,
                                                    rope_parameters=GEMMA3_ROPE),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=4),
    "gpt2-scale-by-layer": lambda: transformers.GPT2Config(vocab_size=128, n_positions=64, n_embd=64, n_layer=3,
                                                           n_head=4, scale_attn_by_inverse_layer_idx=True),
}


def _batch(vocab, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, vocab, (3, 12))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    mask[2, 5:] = 0
    return ids, mask


def _torch_logits(model, ids, mask):
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.float().numpy()


# each variant with its layers unrolled, and stacked and scanned (model.scan_layers); scanned in the slow tier but
# GPT-2's layer-scaled attention (test_scan.py's parity tests run the Llama family's variants scanned fast)
MODES = [pytest.param(v, scan, id=v + ("-scanned" if scan else ""),
                      marks=pytest.mark.slow if scan and v != "gpt2-scale-by-layer" else ())
         for v in sorted(VARIANTS) for scan in (False, True)]


@pytest.mark.parametrize("variant, scan", MODES)
def test_causal_lm_parity_and_export(variant, scan, tmp_path):
    torch.manual_seed(0)
    config = VARIANTS[variant]()
    reference = transformers.AutoModelForCausalLM.from_config(config).eval()
    reference.save_pretrained(tmp_path / "hf")
    ids, mask = _batch(config.vocab_size)
    keep = mask.astype(bool)
    expected = _torch_logits(reference, ids, mask)

    model = from_pretrained(str(tmp_path / "hf"), scan_layers=scan)
    ours = np.asarray(model(ids, mask))
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours[keep], expected[keep], atol=1e-4, rtol=0)

    save_pretrained(model, str(tmp_path / "export"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert type(reloaded) is type(reference)
    np.testing.assert_allclose(_torch_logits(reloaded, ids, mask)[keep], expected[keep], atol=1e-4, rtol=0)


def test_base_model_loads_from_causal_lm_checkpoint(tmp_path):
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(VARIANTS["llama"]()).eval()
    reference.save_pretrained(tmp_path)
    ids, mask = _batch(128)
    with torch.no_grad():
        expected = reference.model(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    hidden = np.asarray(from_pretrained(str(tmp_path), task="base")(ids, mask))
    keep = mask.astype(bool)
    np.testing.assert_allclose(hidden[keep], expected[keep], atol=1e-4, rtol=0)


def test_packed_documents_do_not_attend_to_each_other(tmp_path):
    """Two documents packed in one row (segment ids 1, 2; positions restart) give the logits each
    document gets alone."""
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(VARIANTS["llama"]()).save_pretrained(tmp_path)
    model = from_pretrained(str(tmp_path))
    a, b = np.arange(1, 6), np.arange(20, 27)
    packed = np.asarray(model(np.concatenate([a, b])[None], np.array([[1] * 5 + [2] * 7])))
    np.testing.assert_allclose(packed[0, :5], np.asarray(model(a[None]))[0], atol=1e-5)
    np.testing.assert_allclose(packed[0, 5:], np.asarray(model(b[None]))[0], atol=1e-5)


def test_dropout_overrides_reach_the_config(tmp_path):
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(VARIANTS["gpt2"]()).save_pretrained(tmp_path)
    model = from_pretrained(str(tmp_path), hidden_dropout=0.3, attention_dropout=0.2)
    assert (model.cfg.resid_dropout, model.cfg.embd_dropout, model.cfg.attention_dropout) == (0.3, 0.3, 0.2)
    ids = np.arange(8)[None]
    a = np.asarray(model(ids, rngs=nnx.Rngs(dropout=0)))
    b = np.asarray(model(ids, rngs=nnx.Rngs(dropout=1)))
    assert not np.allclose(a, b)  # dropout active with rngs ...
    np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(model(ids)))  # ... and off without
