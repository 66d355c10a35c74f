"""LoHa against PEFT: unchanged at step 0; our adapter loads in PEFT with our logits and PEFT's in ours with PEFT's;
merged exactly."""

import jax
import numpy as np
import torch
import transformers
from flax import nnx

from adapt import methods
from adapt.methods.peft_io import load_peft, save_peft
from adapt.models import from_pretrained


def test_loha_both_ways_with_peft(tiny_llama, tmp_path):
    import peft

    ids = np.random.RandomState(0).randint(0, 128, (2, 10))
    base = np.asarray(from_pretrained(tiny_llama, task="causal_lm")(ids))
    method = methods.build({"name": "loha", "rank": 4, "alpha": 8.0})
    model = method.apply(from_pretrained(tiny_llama, task="causal_lm"), nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(model(ids)), base, atol=1e-6)
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 64))
    for _, layer in nnx.iter_modules(model):
        if hasattr(layer, "hada_w2_b"):
            layer.hada_w2_b.set_value(0.3 * jax.random.normal(next(keys), layer.hada_w2_b.shape))
    ours = np.asarray(model(ids))
    assert np.abs(ours - base).max() > 1e-2
    save_peft(model, method, str(tmp_path / "ours"), base_model=tiny_llama)
    on_peft = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(tiny_llama),
                                             str(tmp_path / "ours")).eval()
    with torch.no_grad():
        np.testing.assert_allclose(on_peft(torch.as_tensor(ids)).logits.numpy(), ours, atol=1e-4)
    np.testing.assert_allclose(np.asarray(method.merge(model)(ids)), ours, atol=1e-4)

    torch.manual_seed(0)
    theirs = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(tiny_llama),
                                 peft.LoHaConfig(task_type="CAUSAL_LM", r=4, alpha=4,
                                                 target_modules=["k_proj", "up_proj"]))
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "hada_w2_b" in name:
                p.add_(0.3 * torch.randn_like(p))
        expected = theirs.eval()(torch.as_tensor(ids)).logits.numpy()
    theirs.save_pretrained(tmp_path / "theirs")
    loaded, loha = load_peft(from_pretrained(tiny_llama, task="causal_lm"), str(tmp_path / "theirs"))
    assert loha.name == "loha" and loha.alpha == 4
    np.testing.assert_allclose(np.asarray(loaded(ids)), expected, atol=1e-4)
