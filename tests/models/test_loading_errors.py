"""Bad checkpoints fail with one line naming the file and what was expected, and build nothing."""

import json
import os
import shutil

import numpy as np
import pytest
import safetensors.numpy
import torch

from adapt.core.errors import CheckpointError
from adapt.models import from_pretrained


@pytest.fixture
def copy(tiny_llama, tmp_path):
    shutil.copytree(tiny_llama, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _fails(folder, match, **kwargs):
    with pytest.raises(CheckpointError, match=match) as info:
        from_pretrained(str(folder), **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_folder():
    _fails("/nonexistent/model", "/nonexistent/model: no such model folder")
    _fails("./not/here", "no such model folder")


def test_hub_id_offline_names_the_id_and_suggests_a_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fails("some-org/some-model", "some-org/some-model: cannot fetch .*local folder")


def test_unknown_bundled_name():
    _fails("bundled:nope", "unknown bundled model 'bundled:nope'; bundled: bundled:minilm-l6")


def test_unsupported_architecture_lists_the_supported(copy):
    (copy / "config.json").write_text(json.dumps({"model_type": "t5"}))
    message = _fails(copy, "config.json: unsupported architecture model_type='t5'")
    for name in ("bert", "gpt2", "llama", "mistral", "qwen2", "qwen3", "roberta"):
        assert name in message


def test_missing_and_malformed_config(copy):
    (copy / "config.json").write_text("{not json")
    _fails(copy, "config.json: not valid JSON")
    os.remove(copy / "config.json")
    _fails(copy, "config.json: missing")


def test_every_mismatch_is_reported_at_once(copy):
    tensors = safetensors.numpy.load_file(copy / "model.safetensors")
    tensors["model.layers.1.mlp.upp.weight"] = tensors.pop("model.layers.1.mlp.up_proj.weight")
    tensors["model.layers.0.self_attn.q_proj.weight"] = np.zeros((64, 63), np.float32)
    safetensors.numpy.save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    message = _fails(copy, "does not match LlamaForCausalLM")
    assert "1 missing: model.layers.1.mlp.up_proj.weight [64, 96]" in message
    assert "1 unexpected: model.layers.1.mlp.upp.weight" in message
    assert "1 mis-shaped: model.layers.0.self_attn.q_proj.weight [64, 63] (expected [64, 64])" in message


def test_config_that_does_not_match_the_weights(copy):
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "intermediate_size": 80}))
    assert "6 mis-shaped" in _fails(copy, "mlp.gate_proj.weight")


def test_truncated_and_corrupt_weights(copy):
    path = copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    _fails(copy, r"model.safetensors: truncated: tensor .* the file has")
    path.write_bytes(b"\xff" * 16 + data[16:])
    _fails(copy, "model.safetensors: corrupt safetensors header")
    path.write_bytes(b"")
    _fails(copy, "model.safetensors: not a safetensors file")
    os.remove(path)
    _fails(copy, "no weights found")


def test_pickle_weights_need_an_explicit_opt_in(copy, tiny_llama):
    state = {k: torch.from_numpy(v.copy()) for k, v in safetensors.numpy.load_file(copy / "model.safetensors").items()}
    os.remove(copy / "model.safetensors")
    torch.save(state, copy / "pytorch_model.bin")
    _fails(copy, "pytorch_model.bin: PyTorch pickle weights can execute code.*allow_pickle=True")
    ids = np.arange(10)[None]
    np.testing.assert_array_equal(np.asarray(from_pretrained(str(copy), allow_pickle=True)(ids)),
                                  np.asarray(from_pretrained(tiny_llama)(ids)))


def test_unknown_task(tiny_llama):
    _fails(tiny_llama, "task 'masked_lm' is not available for llama; available: base, causal_lm", task="masked_lm")


def test_a_multimodal_gemma_3_is_refused_in_one_line(tmp_path):
    """Gemma 3 of 4B and up is a vision tower beside its text model (model_type gemma3): refused, naming the folder."""
    import transformers

    config = transformers.Gemma3Config()
    config.architectures = ["Gemma3ForConditionalGeneration"]
    config.save_pretrained(tmp_path)
    message = _fails(tmp_path, r"model_type 'gemma3' is a multimodal Gemma 3 .* only Gemma 3's text models load")
    assert message.startswith(str(tmp_path))
