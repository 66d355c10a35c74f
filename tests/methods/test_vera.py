"""VeRA against PEFT: unchanged at step 0; only the scaling vectors (and the head) are trainable; our adapter (with its
projections) loads in PEFT with our logits, and PEFT's saved adapter loads into ours with PEFT's, stacked layers too."""

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from adapt import methods
from adapt.methods.peft_io import load_peft, save_peft
from adapt.models import from_pretrained


def test_vera_is_identity_at_start_trains_vectors_and_exports_to_peft(tiny_llama, tmp_path):
    import peft

    ids = np.random.RandomState(0).randint(0, 128, (2, 10))
    base = np.asarray(from_pretrained(tiny_llama, task="causal_lm")(ids))
    method = methods.build({"name": "vera", "rank": 8})
    model = method.apply(from_pretrained(tiny_llama, task="causal_lm"), nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(model(ids)), base, atol=1e-6)
    trainable = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, method.trainable(model)))}
    assert trainable and all(p.endswith(("lambda_b", "lambda_d")) for p in trainable)  # (a causal LM: no head)
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 64))
    for _, layer in nnx.iter_modules(model):
        if hasattr(layer, "lambda_b"):
            layer.lambda_b.set_value(jax.random.normal(next(keys), layer.lambda_b.shape))
    ours = np.asarray(model(ids))
    assert np.abs(ours - base).max() > 1e-2
    save_peft(model, method, str(tmp_path / "adapter"), base_model=tiny_llama)
    theirs = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(tiny_llama),
                                            str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        np.testing.assert_allclose(theirs(torch.as_tensor(ids)).logits.numpy(), ours, atol=1e-4)
    merged = method.merge(model)
    np.testing.assert_allclose(np.asarray(merged(ids)), ours, atol=1e-4)


@pytest.mark.parametrize("scan", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_peft_saved_vera_adapter_gives_peft_s_logits(tiny_llama, scan, tmp_path):
    import peft

    torch.manual_seed(0)
    theirs = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(tiny_llama),
                                 peft.VeraConfig(task_type="CAUSAL_LM", r=8, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "vera_lambda" in name:
                p.add_(0.3 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path / "peft")
    ids = np.random.RandomState(0).randint(0, 128, (2, 10))
    with torch.no_grad():
        expected = theirs.eval()(torch.as_tensor(ids)).logits.numpy()
    model, method = load_peft(from_pretrained(tiny_llama, task="causal_lm", scan_layers=scan), str(tmp_path / "peft"))
    assert method.name == "vera" and method.rank == 8
    np.testing.assert_allclose(np.asarray(model(ids)), expected, atol=1e-4)
