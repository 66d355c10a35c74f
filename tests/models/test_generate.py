"""Generation with a KV cache (adapt.models.generate): greedy tokens equal transformers' ``generate`` on each decoder
family with left-padded prompts of different lengths (stop token included; stacked layers too), prefix/prompt-tuned
models decode as their full forward does, sampling is reproducible from its seed, top-k/top-p equal numpy, stop
strings and chat templates, one-line errors, and a sharded model (8-device mesh) gives the unsharded tokens without
recompiling for new parameter values."""

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import GEMMA, GEMMA3_ROPE
from conftest import TINY_LLAMA as TINY
from flax import nnx

from adapt.core.errors import ConfigError
from adapt.core.sharding import make_mesh
from adapt.methods import build
from adapt.models import from_pretrained, load_tokenizer
from adapt.models import generate as G
from adapt.models.generate import GenerationConfig, filter_logits, generate, generate_ids

VARIANTS = {
    "gpt2": lambda: transformers.GPT2Config(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                            initializer_range=0.2),  # tied head: a larger init keeps tokens varied
    "gpt2-scale-by-layer": lambda: transformers.GPT2Config(vocab_size=128, n_positions=64, n_embd=64, n_layer=3,
                                                           n_head=4, initializer_range=0.2,
                                                           scale_attn_by_inverse_layer_idx=True),
    # (Gemma's embeddings scaled by sqrt(D) feed its tied head: the default init keeps tokens varied)
    "gemma2": lambda: transformers.Gemma2Config(**GEMMA, num_hidden_layers=3, attn_logit_softcapping=2.0,
                                                final_logit_softcapping=3.0),
    "gemma3": lambda: transformers.Gemma3TextConfig(**GEMMA, num_hidden_layers=7, rope_parameters=GEMMA3_ROPE),
    "llama": lambda: transformers.LlamaConfig(**TINY),
    "mistral-sliding": lambda: transformers.MistralConfig(**TINY, sliding_window=4, head_dim=16),
    "qwen2": lambda: transformers.Qwen2Config(**TINY, tie_word_embeddings=False),
    "qwen3": lambda: transformers.Qwen3Config(**TINY, head_dim=24),
    # the mixtures of experts: routing per token in every decoding step
    "mixtral-sliding": lambda: transformers.MixtralConfig(**TINY, sliding_window=4, num_local_experts=4,
                                                          num_experts_per_tok=2),
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(**TINY, head_dim=24, num_experts=4, num_experts_per_tok=2,
                                                     moe_intermediate_size=40),
}
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22], [30, 31, 32, 33, 34]]  # left-padded to 7 by both sides
NEW = 10  # > the sliding window, so Mistral's and Gemma's windows cut off the prompt's first tokens


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny reference models need no threads; PyTorch's OpenMP threads waiting on a core that the other
    test worker holds made one transformers ``generate`` take seconds instead of milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _hf_generate(reference, eos=None) -> list[list[int]]:
    """transformers' greedy new tokens for the left-padded PROMPTS, cut before ``eos``."""
    length = max(map(len, PROMPTS))
    ids, mask = np.zeros((len(PROMPTS), length), np.int64), np.zeros((len(PROMPTS), length), np.int64)
    for r, p in enumerate(PROMPTS):
        ids[r, length - len(p):], mask[r, length - len(p):] = p, 1
    with torch.no_grad():
        out = reference.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                                 max_new_tokens=NEW, pad_token_id=0, eos_token_id=eos)
    rows = out[:, length:].numpy().tolist()
    return [row[:row.index(eos)] if eos in row else row for row in rows]


@pytest.mark.slow
@pytest.mark.parametrize("variant, scan", [pytest.param(v, scan, id=v + ("-scanned" if scan else ""),
                                                        marks=pytest.mark.ci if v == "gemma3" and not scan else ())
                                           for v in sorted(VARIANTS) for scan in (False, True)])  # model.scan_layers
def test_greedy_matches_transformers_with_left_padding(variant, scan, tmp_path):
    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(VARIANTS[variant]()).eval()
    reference.save_pretrained(tmp_path)
    model = from_pretrained(str(tmp_path), scan_layers=scan)
    expected = _hf_generate(reference)
    assert generate_ids(model, PROMPTS, GenerationConfig(max_new_tokens=NEW)) == expected
    assert len({t for row in expected for t in row}) > 6  # varied tokens: a wrong position or mask shows
    eos = expected[0][4]  # a token row 0 generates: it stops there (or earlier), other rows where they meet it
    with_eos = _hf_generate(reference, eos)
    assert len(with_eos[0]) <= 4
    assert generate_ids(model, PROMPTS, GenerationConfig(max_new_tokens=NEW), eos_ids=(eos,)) == with_eos


def _full_forward_greedy(model, prompt, n, size=16) -> list[int]:
    """Greedy tokens from the model's plain forward over the whole sequence (no cache), the sequence in a
    right-padded buffer of ``size`` (causal: padding after a token changes nothing before it)."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask))
    ids, mask = np.zeros((1, size), np.int32), np.zeros((1, size), np.int32)
    ids[0, :len(prompt)], mask[0, :len(prompt)] = prompt, 1
    for t in range(len(prompt), len(prompt) + n):
        ids[0, t], mask[0, t] = np.argmax(np.asarray(forward(state, ids, mask))[0, t - 1]), 1
    return ids[0, len(prompt):len(prompt) + n].tolist()


@pytest.mark.parametrize("method, scan", [("prefix_tuning", False), ("prompt_tuning", False), ("prefix_tuning", True),
                                          ("prefix_projection", True)],
                         ids=["prefix_tuning", "prompt_tuning", "prefix_tuning-scanned", "prefix_projection-scanned"])
def test_prefix_and_prompt_tuning_decode_as_the_full_forward(tiny_llama, method, scan):
    """Prefix keys stay visible to every step (stacked prefixes [L, P, K, H] too, and the projection's shared
    encoder read by the scanned layer's number); prompt tuning's virtual tokens sit in the cache's first slots."""
    knobs = {"name": "prefix_tuning", "projection": True, "projection_dim": 16} if method == "prefix_projection" \
        else {"name": method}
    model = build({**knobs, "num_virtual_tokens": 3}).apply(from_pretrained(tiny_llama, scan_layers=scan),
                                                            nnx.Rngs(0))
    prompts = PROMPTS[:2]
    got = generate_ids(model, prompts, GenerationConfig(max_new_tokens=5))
    assert got == [_full_forward_greedy(model, p, 5) for p in prompts]


def test_filter_logits_equals_numpy():
    """transformers' TopKLogitsWarper then TopPLogitsWarper, in numpy, on fixed logits."""
    logits = np.random.RandomState(0).randn(4, 50).astype(np.float32) * 2

    def reference(x, k, p):
        x = x.copy()
        if k:
            x[x < np.sort(x, axis=-1)[:, -k][:, None]] = -np.inf
        if p < 1:
            order = np.argsort(x, axis=-1)  # ascending
            ranked = np.take_along_axis(x, order, -1)
            probs = np.exp(ranked - ranked.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            remove = np.cumsum(probs, -1) <= 1 - p
            remove[:, -1] = False  # the top token always stays
            np.put_along_axis(x, order, np.where(remove, -np.inf, ranked), -1)
        return x

    for k, p in [(0, 1.0), (5, 1.0), (0, 0.3), (0, 0.9), (10, 0.5), (1, 0.9)]:
        got = np.asarray(filter_logits(logits, k, p))
        expected = reference(logits, k, p)
        np.testing.assert_array_equal(np.isinf(got), np.isinf(expected), err_msg=f"top_k={k} top_p={p}")
        np.testing.assert_array_equal(got[~np.isinf(got)], expected[~np.isinf(expected)])
        assert 0 < (~np.isinf(got)).sum(-1).min() and (k == 0 and p == 1 or np.isinf(got).any())


@pytest.mark.slow
def test_sampling_is_reproducible_from_its_seed(tiny_llama):
    model = from_pretrained(tiny_llama)
    prompts = PROMPTS * 2

    def sample(seed, batch_size=8, **knobs):
        config = GenerationConfig(max_new_tokens=12, temperature=1.0, top_k=40, top_p=0.95, seed=seed, **knobs)
        return generate_ids(model, prompts, config, batch_size=batch_size)

    first = sample(1)
    assert sample(1) == first
    assert sample(2) != first
    assert sample(1, batch_size=4) == first  # a prompt's draws do not depend on the batching
    assert first[0] != first[3]  # the same prompt at another index draws its own tokens
    greedy = generate_ids(model, prompts, GenerationConfig(max_new_tokens=12))
    assert generate_ids(model, prompts, GenerationConfig(max_new_tokens=12, temperature=1.0, top_k=1)) == greedy


@pytest.fixture(scope="module")
def smollm2_vocab_llama(tmp_path_factory):
    """A tiny random Llama over the bundled SmolLM2 tokenizer's vocabulary, and that tokenizer."""
    tok = load_tokenizer("bundled:smollm2-135m")
    folder = tmp_path_factory.mktemp("vocab_llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{**TINY, "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 48},
                                      initializer_range=0.5)  # peaked logits: varied, printable tokens
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return from_pretrained(str(folder)), tok


@pytest.mark.slow
def test_stop_tokens_strings_max_new_tokens_and_chat(smollm2_vocab_llama):
    model, tok = smollm2_vocab_llama
    prompts = ["The weather today", "Once upon a time there was"]
    ids = [tok(p)["input_ids"] for p in prompts]
    full = generate_ids(model, ids, GenerationConfig(max_new_tokens=12))
    assert [len(row) for row in full] == [12, 12]
    stop_id = full[1][5]
    cut = generate_ids(model, ids, GenerationConfig(max_new_tokens=12, stop=(stop_id,)))
    assert cut == [row[:row.index(stop_id)] if stop_id in row else row for row in full]
    assert len(cut[1]) <= 5
    assert generate_ids(model, ids, GenerationConfig(max_new_tokens=3)) == [row[:3] for row in full]

    texts = [tok.decode(row, skip_special_tokens=True) for row in full]
    stop = texts[0][len(texts[0]) // 2:][:2]  # a piece of row 0's text
    got = generate(model, tok, prompts, GenerationConfig(max_new_tokens=12, stop=(stop, "\x00")))
    assert got[0] == texts[0][:texts[0].index(stop)] and len(got[0]) < len(texts[0])
    assert got[1] == (texts[1][:texts[1].index(stop)] if stop in texts[1] else texts[1])

    chat_ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                        tokenize=True)["input_ids"] for p in prompts]
    config = GenerationConfig(max_new_tokens=6)
    expected = [tok.decode(row, skip_special_tokens=True)
                for row in generate_ids(model, chat_ids, config, eos_ids=(tok.eos_token_id,))]
    assert generate(model, tok, prompts, config, chat=True) == expected


def test_bad_inputs_are_one_line_errors(tiny_gpt2, tiny_bert):
    cases = [(dict(top_p=1.5), r"^generation\.top_p=1\.5: expected a value in \(0, 1\]$"),
             (dict(top_p=0), r"^generation\.top_p=0: expected a value in \(0, 1\]$"),
             (dict(temperature=-0.1), r"^generation\.temperature=-0\.1: expected a number >= 0"),
             (dict(top_k=-1), r"^generation\.top_k=-1: expected an integer >= 0"),
             (dict(max_new_tokens=0), r"^generation\.max_new_tokens=0: expected an integer >= 1$"),
             (dict(stop=("ok", 2.5)), r"^generation\.stop=\('ok', 2\.5\): expected a list of stop strings"),
             (dict(seed="1"), r"^generation\.seed='1': expected an integer$")]
    for knobs, message in cases:
        with pytest.raises(ConfigError, match=message):
            GenerationConfig(**knobs)
    assert GenerationConfig(stop=["\n", 7]).stop == ("\n", 7)

    gpt2 = from_pretrained(tiny_gpt2)  # n_positions 64
    with pytest.raises(ConfigError, match=r"^prompts\[1\] has 60 tokens: with generation\.max_new_tokens=8 that "
                                          r"exceeds the model's maximum positions \(64\)$"):
        generate_ids(gpt2, [[1, 2], [3] * 60], GenerationConfig(max_new_tokens=8))
    with pytest.raises(ConfigError, match=r"^prompts\[0\] has 10 tokens: .* exceeds max_length=16 \(16\)$"):
        generate_ids(gpt2, [[1] * 10], GenerationConfig(max_new_tokens=8), max_length=16)
    with pytest.raises(ConfigError, match=r"^prompts\[2\] is empty"):
        generate_ids(gpt2, [[1], [2], []], GenerationConfig(max_new_tokens=4))
    with pytest.raises(ConfigError, match=r"^batch_size=0: expected an integer >= 1$"):
        generate_ids(gpt2, [[1]], GenerationConfig(), batch_size=0)
    with pytest.raises(ConfigError, match=r"^generation needs a causal LM \(task='causal_lm'\); this model is "
                                          r"'sequence_classification'$"):
        generate_ids(from_pretrained(tiny_bert), [[1]], GenerationConfig())


@pytest.mark.slow
def test_sharded_model_gives_the_unsharded_tokens_and_reuses_its_program(tiny_llama):
    prompts = [list(range(1 + i, 4 + 2 * i)) for i in range(8)]  # 8 rows: the batch shards over data x fsdp
    config = GenerationConfig(max_new_tokens=8, temperature=0.8, top_k=20, seed=3)
    expected = generate_ids(from_pretrained(tiny_llama), prompts, config)
    mesh = make_mesh((2, 2, 2))
    sharded = from_pretrained(tiny_llama, mesh=mesh)
    assert generate_ids(sharded, prompts, config) == expected
    compiled = G._program._cache_size()
    nnx.update(sharded, jax.tree.map(lambda x: x * 1.5, nnx.state(sharded, nnx.Param)))  # new parameter values
    changed = generate_ids(sharded, prompts, config)
    assert G._program._cache_size() == compiled  # same structure and shapes: no new program
    assert changed != expected
