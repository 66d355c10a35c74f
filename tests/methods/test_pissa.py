"""PiSSA and OLoRA against PEFT (``init_lora_weights="pissa"`` / ``"olora"``): the model is unchanged at step 0, the
factors' product and the residual base weight are PEFT's, and after the factors move, the exported adapter (PEFT's
rank-2r conversion) on the original checkpoint gives our logits."""

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from adapt import methods
from adapt.methods.peft_io import load_peft, save_peft
from adapt.models import from_pretrained


@pytest.mark.parametrize("name", ["pissa", "olora"])
def test_principal_init_is_peft_s_and_exports_onto_the_original_weights(name, tiny_llama, tmp_path):
    import peft

    ids = np.random.RandomState(0).randint(0, 128, (2, 10))
    base = np.asarray(from_pretrained(tiny_llama, task="causal_lm")(ids))
    method = methods.build({"name": name, "rank": 4, "alpha": 8.0})
    model = method.apply(from_pretrained(tiny_llama, task="causal_lm"), nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(model(ids)), base, atol=1e-5)  # the residual + s B A is the weight

    theirs = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(tiny_llama),
                                 peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=name))
    for module in ("q_proj", "v_proj"):
        peft_layer = getattr(theirs.base_model.model.model.layers[1].self_attn, module)
        ours = getattr(model.model.layers[1].self_attn, module)
        product = (peft_layer.lora_B["default"].weight @ peft_layer.lora_A["default"].weight).detach().numpy()
        np.testing.assert_allclose((np.asarray(ours.lora_a[...]) @ np.asarray(ours.lora_b[...])).T, product,
                                   atol=1e-5)  # (singular vectors' signs may differ; their products do not)
        np.testing.assert_allclose(np.asarray(ours.kernel[...]).T, peft_layer.base_layer.weight.detach().numpy(),
                                   atol=1e-5)

    for _, layer in nnx.iter_modules(model):  # a trained adapter: the factors moved from their start
        if hasattr(layer, "lora_a0"):
            layer.lora_a.set_value(layer.lora_a[...] + 0.1)
            layer.lora_b.set_value(layer.lora_b[...] - 0.05)
    trained = np.asarray(model(ids))
    assert np.abs(trained - base).max() > 0.1
    save_peft(model, method, str(tmp_path / "adapter"), base_model=tiny_llama)
    on_original = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(tiny_llama),
                                                 str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        np.testing.assert_allclose(on_original(torch.as_tensor(ids)).logits.numpy(), trained, atol=1e-4)
    again, lora = load_peft(from_pretrained(tiny_llama, task="causal_lm"), str(tmp_path / "adapter"))
    assert lora.name == "lora" and lora.rank == 8  # read back: a plain LoRA of rank 2r on the original weights
    np.testing.assert_allclose(np.asarray(again(ids)), trained, atol=1e-4)
