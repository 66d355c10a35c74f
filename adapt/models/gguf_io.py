"""GGUF files (llama.cpp) as HF tensors: names mapped to the HF layout, quantised blocks dequantised to
float32 with the ``gguf`` package, and llama.cpp's Q/K row permutation undone.

llama.cpp's converter reorders the rows of ``q_proj``/``k_proj`` of Llama-architecture models so that
its RoPE pairs adjacent dimensions; HF pairs dimension i with i + H/2 (rotate-half). Undoing it:
see ``_unpermute``.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from adapt.core.errors import CheckpointError
from adapt.models.checkpoint_io import TensorRef

_NAMES = (  # GGUF name -> HF name
    (r"^token_embd\.(\w+)$", r"model.embed_tokens.\1"),
    (r"^output_norm\.(\w+)$", r"model.norm.\1"),
    (r"^output\.(\w+)$", r"lm_head.\1"),
    (r"^blk\.(\d+)\.attn_norm\.(\w+)$", r"model.layers.\1.input_layernorm.\2"),
    (r"^blk\.(\d+)\.ffn_norm\.(\w+)$", r"model.layers.\1.post_attention_layernorm.\2"),
    (r"^blk\.(\d+)\.attn_(q|k|v)\.(\w+)$", r"model.layers.\1.self_attn.\2_proj.\3"),
    (r"^blk\.(\d+)\.attn_output\.(\w+)$", r"model.layers.\1.self_attn.o_proj.\2"),
    (r"^blk\.(\d+)\.attn_(q|k)_norm\.(\w+)$", r"model.layers.\1.self_attn.\2_norm.\3"),
    (r"^blk\.(\d+)\.ffn_(gate|up|down)\.(\w+)$", r"model.layers.\1.mlp.\2_proj.\3"),
)
_SKIP = (r"^rope_freqs\.weight$",)  # llama3 frequency factors: the config's rope_parameters carry them


@functools.lru_cache(maxsize=2)
def _reader(path: str):
    import gguf
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError/struct.error/... on damage
        raise CheckpointError(f"{path}: cannot read GGUF file ({type(e).__name__}: {e})") from None


def _field(reader, key, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_config(path: str):
    """The HF config of a GGUF file, from its metadata (Llama-architecture files)."""
    from transformers import AutoConfig

    r = _reader(path)
    arch = _field(r, "general.architecture")
    if arch not in ("llama", "qwen2", "qwen3"):
        raise CheckpointError(f"{path}: unsupported GGUF architecture {arch!r}; supported: llama, qwen2, qwen3")
    heads = _field(r, f"{arch}.attention.head_count")
    width = _field(r, f"{arch}.embedding_length")
    names = {t.name for t in r.tensors}
    vocab = _field(r, f"{arch}.vocab_size") or len(_field(r, "tokenizer.ggml.tokens"))
    rope = {"rope_type": "default", "rope_theta": float(_field(r, f"{arch}.rope.freq_base", 10000.0))}
    return AutoConfig.for_model(
        arch, architectures=["ForCausalLM"], vocab_size=vocab, hidden_size=width,
        intermediate_size=_field(r, f"{arch}.feed_forward_length"),
        num_hidden_layers=_field(r, f"{arch}.block_count"), num_attention_heads=heads,
        num_key_value_heads=_field(r, f"{arch}.attention.head_count_kv", heads),
        head_dim=_field(r, f"{arch}.attention.key_length", width // heads),
        max_position_embeddings=_field(r, f"{arch}.context_length", 2048),
        rms_norm_eps=float(_field(r, f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_parameters=rope, tie_word_embeddings="output.weight" not in names,
        bos_token_id=_field(r, "tokenizer.ggml.bos_token_id"), eos_token_id=_field(r, "tokenizer.ggml.eos_token_id"),
        pad_token_id=_field(r, "tokenizer.ggml.padding_token_id"))


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's ``w.reshape(heads, 2, H/2, D).swapaxes(1, 2)`` on the rows of ``w [heads*H, D]``."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_refs(path: str, config) -> dict[str, TensorRef]:
    """The tensors of a GGUF file under HF names, each dequantised to float32 when read."""
    from gguf.quants import dequantize

    r = _reader(path)
    permute = _field(r, "general.architecture") == "llama"
    refs = {}
    for t in r.tensors:
        if any(re.match(p, t.name) for p in _SKIP):
            continue
        for pattern, repl in _NAMES:
            if re.match(pattern, t.name):
                name = re.sub(pattern, repl, t.name)
                break
        else:
            raise CheckpointError(f"{path}: unknown GGUF tensor {t.name!r}")
        heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
        proj = name.split(".")[-2]

        def read(t=t, heads=heads.get(proj) if permute else None):
            w = dequantize(t.data, t.tensor_type).astype(np.float32)
            return _unpermute(w, heads) if heads else w

        shape = tuple(int(s) for s in reversed(t.shape.tolist()))
        refs[name] = TensorRef(path, shape, np.dtype(np.float32), read)
    return refs


def gguf_tokenizer(path: str):
    """The tokenizer embedded in a GGUF file, built as transformers' GGUF loader builds it, but from
    metadata read here: transformers' own GGUF reader needs PyTorch, which adapt's runtime lacks."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import gguf_tokenizer_mapping as tm

    r = _reader(path)
    grouped = {group: {name: _field(r, f"tokenizer.{key}") for key, name in renames.items()
                       if f"tokenizer.{key}" in r.fields}
               for group, renames in tm.GGUF_TOKENIZER_MAPPING.items()}
    tokens, config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tokens.get("tokenizer_type") == "llama":
        config.setdefault("add_bos_token", True)
    for name, key in tm._SPECIAL_TOKENS.items():
        token_id = _field(r, f"tokenizer.ggml.{key}")
        config[name] = tokens["tokens"][token_id] if token_id is not None else None
    backend, extra = tm.convert_gguf_tokenizer(_field(r, "general.architecture"), tokens)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)
