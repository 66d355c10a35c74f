"""Weight files: sharded safetensors, bfloat16 tensors, prefix-less checkpoints, and exports that never
leave a half-written folder."""

import json
import os

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from conftest import random_hf_model

from adapt.core.errors import CheckpointError
from adapt.models import export, from_pretrained, save_pretrained
from adapt.models.checkpoint_io import save_safetensors, weight_refs

GPT2 = dict(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return random_hf_model(tmp_path_factory.mktemp("gpt2"), transformers.GPT2LMHeadModel, transformers.GPT2Config,
                           **GPT2)


def test_sharded_export_loads_in_transformers_and_back(gpt2, tmp_path):
    model = from_pretrained(gpt2)
    out = save_pretrained(model, str(tmp_path / "sharded"), max_shard_bytes=40_000)
    index = json.loads(open(os.path.join(out, "model.safetensors.index.json")).read())
    assert len(set(index["weight_map"].values())) > 2
    ids = np.arange(12)[None]
    again = from_pretrained(out)
    np.testing.assert_array_equal(np.asarray(again(ids)), np.asarray(model(ids)))
    with torch.no_grad():
        reference = transformers.GPT2LMHeadModel.from_pretrained(out).eval()(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(ids)), reference, atol=1e-4)
    os.remove(os.path.join(out, sorted(set(index["weight_map"].values()))[1]))
    with pytest.raises(CheckpointError, match="lists shard .* which is missing"):
        from_pretrained(out)


def test_bfloat16_tensors_are_read_and_upcast(tmp_path):
    values = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    save_safetensors({"w": values.astype(ml_dtypes.bfloat16)}, str(tmp_path))
    ref = weight_refs(str(tmp_path))["w"]
    assert ref.dtype == np.dtype(ml_dtypes.bfloat16) and ref.shape == (3, 4)
    np.testing.assert_array_equal(np.asarray(ref.read(), np.float32),
                                  values.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_checkpoint_saved_without_the_backbone_prefix(tmp_path):
    """The Hub's original `gpt2` checkpoint was saved from GPT2Model: keys have no `transformer.` prefix."""
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)).eval()
    reference.transformer.save_pretrained(tmp_path)
    ids = np.arange(10)[None]
    with torch.no_grad():
        expected = reference(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(from_pretrained(str(tmp_path), task="causal_lm")(ids)), expected, atol=1e-4)


def test_interrupted_export_keeps_the_earlier_one(gpt2, tmp_path, monkeypatch):
    model = from_pretrained(gpt2)
    target = tmp_path / "export"
    save_pretrained(model, str(target))
    before = {f: (target / f).read_bytes() for f in os.listdir(target)}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "save_safetensors", crash)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(model, str(target))
    assert {f: (target / f).read_bytes() for f in os.listdir(target)} == before
    assert os.listdir(tmp_path) == ["export"]  # no temporary folder left behind
