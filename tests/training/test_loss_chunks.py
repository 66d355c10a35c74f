"""``train.loss_chunks``: the vocabulary head and loss over chunks of the length (:mod:`adapt.models.vocab`) train to
the whole head's numbers, and the step holds one chunk's logits, not all of them."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from adapt.core.sharding import make_mesh
from adapt.data.batches import array_batches
from adapt.models import from_pretrained
from adapt.training import CausalLM, MaskedLM, Trainer, defaults
from adapt.training.state import merge_model


def _run(checkpoint, objective, chunks, folder, task=None, rows=16, length=16):
    rng = np.random.RandomState(0)
    data = {"input_ids": rng.randint(3, 99, (rows, length)).astype(np.int32),
            "attention_mask": np.repeat([[1] * 9 + [2] * 5 + [0] * (length - 14)], rows, 0).astype(np.int32)}
    cfg = defaults()
    cfg.mesh.shape = (2, 2, 2)
    cfg.optimizer.update(learning_rate=1e-3, warmup_steps=1)
    cfg.train.update(batch_size=8, steps=2, log_every=1, loss_chunks=chunks)
    mesh = make_mesh((2, 2, 2))
    model = from_pretrained(checkpoint, task, mesh=mesh)
    trainer = Trainer(model, objective, cfg, folder, mesh=mesh)
    state = trainer.fit(array_batches(data, 8, seed=0)).state
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        rows = [r for r in map(json.loads, f) if "train/loss" in r]
    params = nnx.to_pure_dict(nnx.state(merge_model(trainer.static, state.params, state.frozen), nnx.Param))
    return rows, jax.tree.map(np.asarray, params)


@pytest.mark.parametrize("family", ["llama", pytest.param("gpt2", marks=pytest.mark.slow),
                                    pytest.param("bert", marks=pytest.mark.slow)])
def test_chunked_head_trains_as_the_whole_head(family, request, tmp_path):
    """Two AdamW steps on a 2 x 2 x 2 mesh with the head in 3 chunks of a 16-token length (the last one padded):
    the same losses, accuracy and token counts, and the same parameters after them (to a hundredth of a step), as
    with the whole logits. Llama's
    head is its own (untied), GPT-2's the tied embeddings, BERT's the masked-LM transform and decoder."""
    checkpoint = request.getfixturevalue(f"tiny_{family}")
    objective, task = CausalLM(), None
    if family == "bert":
        objective, task = MaskedLM(mask_token_id=4, vocab_size=128, probability=0.3), "masked_lm"
    runs = {n: _run(checkpoint, objective, n, str(tmp_path / str(n)), task) for n in (1, 3)}
    (whole, params), (chunked, chunked_params) = runs[1], runs[3]
    assert len(whole) == 2
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(b["train/loss"], a["train/loss"], rtol=1e-6)
        assert b["train/accuracy"] == a["train/accuracy"] and b["train/count"] == a["train/count"]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(chunked_params)):  # AdamW moves each by ~1e-3 a step
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)  # (a gradient near 0 can flip its sign: 1e-6 apart)


@pytest.mark.slow
def test_chunked_head_holds_one_chunk_of_logits(tmp_path):
    """A one-layer Llama with an 8,192-word vocabulary, 8 x 128 tokens on a 2 x 2 x 2 mesh: each device's share of
    the whole head's float32 logits is 8 MiB; in 8 chunks the compiled step's temporaries per
    device are below a third of the whole head's."""
    import transformers

    folder = str(tmp_path / "wide_vocab")
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=8192, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=128)).save_pretrained(folder)
    batch = {"input_ids": np.ones((8, 128), np.int32), "attention_mask": np.ones((8, 128), np.int32)}
    temps = {}
    for chunks in (1, 8):
        cfg = defaults()
        cfg.mesh.shape = (2, 2, 2)
        cfg.train.update(batch_size=8, steps=1, loss_chunks=chunks)
        mesh = make_mesh((2, 2, 2))
        trainer = Trainer(from_pretrained(folder, mesh=mesh), CausalLM(), cfg, str(tmp_path / str(chunks)), mesh=mesh)
        state = trainer.abstract_setup(1)
        compiled = trainer.steps.lower("train", state, batch).compile()
        temps[chunks] = compiled.memory_analysis().temp_size_in_bytes
    assert temps[1] > 8 * 2**20, temps  # the logits
    assert temps[8] < temps[1] / 3, temps
