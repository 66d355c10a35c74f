"""LoRA+: for gradients of equal size, one AdamW step moves every B factor ``ratio`` times as far as its A factor and
as the head; the model is LoRA's (same trainable parameters, PEFT's LoRA file)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adapt import methods
from adapt.methods.base import leaf_paths
from adapt.models import from_pretrained
from adapt.training import defaults, optim


def test_b_moves_ratio_times_as_far_as_a(tiny_bert):
    method = methods.build({"name": "lora_plus", "rank": 4, "ratio": 8.0})
    model = method.apply(from_pretrained(tiny_bert, task="sequence_classification"), nnx.Rngs(0))
    trainable = nnx.state(model, method.trainable(model))
    cfg = defaults().optimizer
    cfg.update(learning_rate=1e-3, weight_decay=0.0, clip_norm=0.0, schedule="constant", warmup_steps=0)
    settings = optim.method_settings(method, model, trainable)
    tx, _ = optim.make_optimizer(cfg, 10, optim.param_kinds(trainable), settings)
    params = nnx.to_pure_dict(trainable)
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)  # equal size everywhere
    updates, _ = tx.update(grads, tx.init(params), params)
    moved = {path: float(np.abs(np.asarray(u)).max()) for path, u in leaf_paths(updates)}
    a = [v for p, v in moved.items() if p[-1] == "lora_a"]
    b = [v for p, v in moved.items() if p[-1] == "lora_b"]
    head = [v for p, v in moved.items() if p[0] == "classifier"]
    assert len(a) == len(b) == 4 and head  # query and value of 2 layers
    np.testing.assert_allclose(b, [8.0 * x for x in a], rtol=1e-5)
    np.testing.assert_allclose(a + head, 1e-3, rtol=1e-4)  # AdamW's first step: the learning rate, sign of the gradient
    assert methods.METHODS["lora_plus"].peft_type == "LORA" and method.injected is methods.METHODS["lora"].injected
