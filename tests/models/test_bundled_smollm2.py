"""The bundled SmolLM2-135M-Instruct (4-bit GGUF, dequantised on load) speaks English."""

import jax
import numpy as np
import pytest

from adapt.models import from_pretrained, load_tokenizer
from adapt.models.generate import GenerationConfig, generate
from adapt.models.gguf_io import _unpermute

PARAGRAPH = (
    "The sun rose slowly over the quiet village. Farmers walked to their fields, and children ran to school "
    "with their books under their arms. In the market square, the baker opened his shop and the smell of fresh "
    "bread filled the air. It was going to be a warm and beautiful day.")


@pytest.fixture(scope="module")
def smollm2():
    return from_pretrained("bundled:smollm2-135m"), load_tokenizer("bundled:smollm2-135m")


def test_llama_cpp_permutation_is_undone():
    def llama_cpp_permute(w, heads):  # convert_hf_to_gguf.py's LlamaModel.permute
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = np.random.RandomState(0).randn(3 * 8, 5)
    np.testing.assert_array_equal(_unpermute(llama_cpp_permute(w, 3), 3), w)


def test_gguf_tokenizer_matches_transformers_reader():
    """Our GGUF tokenizer (built without PyTorch) equals transformers' own GGUF path (which needs it)."""
    from transformers import AutoTokenizer

    from adapt.models.loading import locate

    source = locate("bundled:smollm2-135m")
    ours = load_tokenizer("bundled:smollm2-135m")
    ref = AutoTokenizer.from_pretrained(source.folder, gguf_file=source.gguf_file)
    text = "Domain adaptation: Ünïcödé, tabs\t and 123456 tokens. <|im_end|>"
    assert ours(text).input_ids == ref(text).input_ids
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    assert ours.apply_chat_template(chat, tokenize=False) == ref.apply_chat_template(chat, tokenize=False)
    assert ours.special_tokens_map == ref.special_tokens_map


@pytest.mark.slow
def test_smollm2_config_and_perplexity(smollm2):
    model, tok = smollm2
    cfg = model.cfg
    assert ((cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.tie_embeddings)
            == (30, 576, 9, 3, True))
    ids = np.array([tok(PARAGRAPH)["input_ids"]])
    logits = jax.jit(lambda x: model(x))(ids)[0, :-1]
    nll = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), ids[0, 1:, None], -1).mean()
    print(f"SmolLM2-135M perplexity on the paragraph: {np.exp(nll):.2f}")
    assert np.exp(nll) < 50


@pytest.mark.slow
def test_smollm2_greedy_answer_is_english(smollm2):
    model, tok = smollm2
    answer = generate(model, tok, ["What is the capital of France?"], GenerationConfig(max_new_tokens=12), chat=True)[0]
    print(f"SmolLM2 answer: {answer!r}")
    assert "Paris" in answer
    assert sum(c.isalpha() or c.isspace() for c in answer) / max(len(answer), 1) > 0.8
