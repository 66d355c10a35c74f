"""The mixture-of-experts decoders (Mixtral, Qwen3-MoE) against transformers in float32: logits with padding in the
batch and the load-balancing loss (``output_router_logits=True``, padding masked), unrolled and scanned; both checkpoint
layouts (transformers writes per-expert tensors, our export the fused ones, and each side reads the other's); the two
dispatches against a loop over the tokens, values and gradients; the train step adds the loss with its coefficient."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import TINY_LLAMA as TINY
from conftest import perturbed_reference

from adapt.core.errors import CheckpointError
from adapt.core.sharding import make_mesh
from adapt.data.batches import array_batches
from adapt.models import from_pretrained, moe, save_pretrained
from adapt.models.checkpoint_io import weight_refs
from adapt.training import CausalLM, Trainer, defaults

VARIANTS = {  # 4 experts, 2 per token
    # Mixtral: top-k weights renormalised, a sliding window shorter than the rows
    "mixtral": lambda: transformers.MixtralConfig(**TINY, num_local_experts=4, num_experts_per_tok=2,
                                                  sliding_window=4, router_aux_loss_coef=0.02),
    # Qwen3-MoE: q/k norms, its own expert width, the top-k weights as the softmax gives them
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(**TINY, num_experts=4, num_experts_per_tok=2,
                                                     moe_intermediate_size=40, head_dim=24, norm_topk_prob=False),
}


def _reference(variant, folder):
    """A random HF model (every tensor perturbed, so the router's choices vary), saved to ``folder``."""
    config = VARIANTS[variant]()
    config.output_router_logits = True
    return perturbed_reference(lambda: transformers.AutoModelForCausalLM.from_config(config), folder)


def _batch():
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 128, (3, 12))
    mask = np.ones_like(ids)
    mask[1, 9:] = mask[2, 5:] = 0
    return ids, mask


def _hf(model, ids, mask):
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask))
    return out.logits.numpy(), float(out.aux_loss)


FAST = ("mixtral", True)  # the rest in the slow tier


@pytest.mark.parametrize("variant, scan", [pytest.param(v, s, marks=() if (v, s) == FAST else pytest.mark.slow)
                                           for v in VARIANTS for s in (False, True)])
def test_parity_balance_loss_and_both_layouts(variant, scan, tmp_path):
    reference = _reference(variant, tmp_path / "hf")
    stored = weight_refs(str(tmp_path / "hf"))
    assert any(".experts.0." in k for k in stored) and not any("gate_up_proj" in k for k in stored)  # per expert
    ids, mask = _batch()
    keep = mask.astype(bool)
    expected, aux = _hf(reference, ids, mask)
    model = from_pretrained(str(tmp_path / "hf"), scan_layers=scan)
    with moe.collect() as recorded:
        ours = np.asarray(model(ids, mask))
    np.testing.assert_allclose(ours[keep], expected[keep], atol=1e-4, rtol=0)
    assert len(recorded) == 1 and float(recorded[0].loss) == pytest.approx(aux, rel=1e-5)
    assert recorded[0].coefficient == reference.config.router_aux_loss_coef

    save_pretrained(model, str(tmp_path / "export"))
    fused = weight_refs(str(tmp_path / "export"))
    assert fused["model.layers.1.mlp.experts.gate_up_proj"].shape[0] == 4 and not any(".experts.0." in k for k in fused)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    np.testing.assert_allclose(_hf(reloaded, ids, mask)[0][keep], expected[keep], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(from_pretrained(str(tmp_path / "export"))(ids, mask))[keep], ours[keep],
                               atol=1e-5)


def _loop(x, weights, experts, gate_up, down):  # token by token, expert by expert: the definition
    out = np.zeros_like(x)
    f = gate_up.shape[1] // 2
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    for n in range(x.shape[0]):
        for w, e in zip(weights[n], experts[n]):
            h = gate_up[e] @ x[n]
            out[n] += w * (down[e] @ (silu(h[:f]) * h[f:]))
    return out


def test_dispatches_equal_the_definition_and_each_other_in_gradients():
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(keys[0], (10, 8))
    gate_up, down = jax.random.normal(keys[1], (4, 12, 8)), jax.random.normal(keys[2], (4, 8, 6))
    weights, experts = moe.route(jax.random.normal(keys[3], (10, 4)), 2, True)
    expected = _loop(*map(np.asarray, (x, weights, experts, gate_up, down)))
    grads = {}
    for name in moe.DISPATCH:
        with moe.dispatching(name):  # read when traced
            out = jax.jit(moe.experts_ffn, static_argnums=5)(x, weights, experts, gate_up, down, jax.nn.silu)
            np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-5)
            grads[name] = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(moe.experts_ffn(*a, jax.nn.silu))),
                                           argnums=(0, 1, 3, 4)))(x, weights, experts, gate_up, down)
    for a, b in zip(grads["sorted"], grads["dense"]):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="dispatch 'ragged'"):
        with moe.dispatching("ragged"):
            pass


@pytest.mark.slow
def test_the_train_step_adds_the_balance_loss_with_its_coefficient(tmp_path):
    """One SGD step at learning rate 1 moves the router by the gradient of CE + coefficient x balance loss: with the
    coefficient at 0.5 it moves otherwise than at 0, and the step logs the balance loss."""
    _reference("mixtral", tmp_path / "hf")
    ids = np.random.RandomState(1).randint(3, 128, (4, 12)).astype(np.int32)
    moved = {}
    for coefficient in (0.0, 0.5):
        model = from_pretrained(str(tmp_path / "hf"))
        model.cfg = model.model.cfg = dataclasses.replace(model.cfg, router_loss_coefficient=coefficient)
        before = np.asarray(model.model.layers[0].mlp.gate.weight[...])
        cfg = defaults()
        cfg.mesh.shape = (1, 1, 1)
        cfg.optimizer.update(name="sgd", learning_rate=1.0, schedule="constant", weight_decay=0.0, clip_norm=0.0)
        cfg.train.update(batch_size=4, steps=1, log_every=1)
        mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
        trainer = Trainer(model, CausalLM(), cfg, str(tmp_path / f"c{coefficient}"), mesh=mesh)
        trainer.fit(array_batches({"input_ids": ids, "attention_mask": np.ones_like(ids)}, 4, seed=0))
        moved[coefficient] = before - np.asarray(trainer.state.params["model"]["layers"][0]["mlp"]["gate"]["weight"])
        with open(tmp_path / f"c{coefficient}" / "metrics.jsonl") as f:
            logged = [json.loads(line) for line in f if "train/router_loss" in line]
        assert logged and logged[0]["train/router_loss"] > 1.9  # E * sum f P: k (2) when balanced, more when not
    assert np.abs(moved[0.5] - moved[0.0]).max() > 1e-3  # the balance loss's gradient reached the router


def test_per_expert_tensors_that_do_not_match_are_one_line_errors(tmp_path):
    _reference("mixtral", tmp_path / "hf")
    refs = weight_refs(str(tmp_path / "hf"))
    from adapt.models.mixtral import fused

    del refs["model.layers.0.block_sparse_moe.experts.3.w2.weight"]
    with pytest.raises(CheckpointError, match="model.layers.0: the per-expert tensors do not number 0..3") as e:
        fused(refs)
    assert "\n" not in str(e.value)
