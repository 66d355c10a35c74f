"""Adapters that PEFT saved, read into our models (:func:`adapt.methods.peft_io.load_peft`): PEFT's own folder for a
random adapter (every tensor non-trivial) gives our model PEFT's logits, unrolled and stacked, a trained head included;
the bad folders are one-line errors. Our export into PEFT is tested in test_methods.py."""

import json

import numpy as np
import pytest
import torch
import transformers

from adapt.core.errors import CheckpointError, ConfigError
from adapt.methods.peft_io import load_peft, save_peft
from adapt.models import from_pretrained

CASES = {  # name -> (PEFT config maker, fixture, task)
    "lora": (lambda peft: peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, use_rslora=True), "tiny_llama",
             "causal_lm"),
    "dora": (lambda peft: peft.LoraConfig(task_type="CAUSAL_LM", r=4, use_dora=True,
                                          target_modules=["q_proj", "k_proj", "up_proj"]), "tiny_llama", "causal_lm"),
    "ia3": (lambda peft: peft.IA3Config(task_type="CAUSAL_LM"), "tiny_llama", "causal_lm"),
    # a classifier: PEFT saves the trained head (modules_to_save), which we load too
    "lora-classifier": (lambda peft: peft.LoraConfig(task_type="SEQ_CLS", r=4), "tiny_bert",
                        "sequence_classification"),
}
AUTO = {"causal_lm": transformers.AutoModelForCausalLM,
        "sequence_classification": transformers.AutoModelForSequenceClassification}


def _peft_folder(case, base, folder):
    """PEFT's adapter for ``case`` on ``base``, its adapter and head tensors randomised, saved; and its logits."""
    import peft

    make, _, task = CASES[case]
    torch.manual_seed(0)
    model = peft.get_peft_model(AUTO[task].from_pretrained(base), make(peft)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad or "lora_magnitude" in name:
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(folder)
    ids = np.random.RandomState(0).randint(0, 64, (2, 10))
    with torch.no_grad():
        return ids, model(input_ids=torch.as_tensor(ids)).logits.numpy()


@pytest.mark.parametrize("case, scan", [("lora", False), ("dora", False), ("ia3", False), ("lora-classifier", False),
                                        pytest.param("lora", True, marks=pytest.mark.slow),
                                        pytest.param("ia3", True, marks=pytest.mark.slow)])
def test_a_peft_saved_adapter_gives_peft_s_logits(case, scan, request, tmp_path):
    _, fixture, task = CASES[case]
    base = request.getfixturevalue(fixture)
    ids, expected = _peft_folder(case, base, tmp_path / "peft")
    model, method = load_peft(from_pretrained(base, task=task, scan_layers=scan), str(tmp_path / "peft"))
    assert method.name == case.split("-")[0]
    np.testing.assert_allclose(np.asarray(model(ids)), expected, atol=1e-4)
    if not scan:  # and back: our export of what we read is PEFT's folder again
        save_peft(model, method, str(tmp_path / "again"), base_model=base)
        again, _ = load_peft(from_pretrained(base, task=task), str(tmp_path / "again"))
        np.testing.assert_allclose(np.asarray(again(ids)), expected, atol=1e-4)


def test_bad_peft_folders_are_one_line_errors(tiny_llama, tmp_path):
    _peft_folder("lora", tiny_llama, tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    cases = [({**config, "peft_type": "VBLORA"}, ConfigError, "peft_type 'VBLORA' is not one adapt reads"),
             ({**config, "rank_pattern": {"q_proj": 8}}, ConfigError,
              "rank_pattern=.* adapt's lora has no such option"),
             ({**config, "target_modules": ["q_proj", "v_proj", "o_proj"]}, CheckpointError,
              "no tensors of 2 modules the config's targets reach: model.layers.0.self_attn.o_proj")]
    for bad, error, message in cases:
        (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps(bad))
        with pytest.raises(error, match=message) as e:
            load_peft(from_pretrained(tiny_llama), str(tmp_path / "peft"))
        assert "\n" not in str(e.value) and "adapter" in str(e.value)
    with pytest.raises(CheckpointError, match="adapter_config.json: not found; expected a PEFT adapter folder"):
        load_peft(from_pretrained(tiny_llama), str(tmp_path))
