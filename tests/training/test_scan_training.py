"""Training with the layers stacked (``model.scan_layers``) gives the unrolled run's numbers: every method's few
steps, layer-wise rates and unfreezing per slice, L2-SP's penalty, and a run resumed across layouts."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from stacked_trees import assert_trees_close, shared, stacked, stacked_shared

from adapt import methods
from adapt.core.errors import CheckpointError
from adapt.core.sharding import make_mesh
from adapt.data.batches import array_batches
from adapt.models import from_pretrained
from adapt.training import CausalLM, SequenceClassification, Trainer, defaults, optim
from adapt.training.state import merge_model


def _cfg(**train):
    cfg = defaults()
    cfg.mesh.shape = (2, 2, 2)
    cfg.optimizer.update(learning_rate=1e-3, warmup_steps=1)
    cfg.train.update(dict(batch_size=8, steps=3, log_every=1), **train)
    return cfg


# method -> (its knobs, the model it trains): every method but llrd and l2sp (their settings and penalty below)
TRAINED = {
    "full": ({}, "llama"), "bitfit": ({}, "bert"), "lora": ({"dropout": 0.1}, "llama"),
    "gradual_unfreezing": ({"every": 1}, "bert"), "qlora": ({"rank": 4, "bits": 4, "block_size": 16}, "llama"),
    "ia3": ({}, "llama"), "houlsby": ({"size": 8}, "bert"), "mixout": ({"p": 0.3}, "bert"),
    "freeze": ({"patterns": (r"layer\.0\.", "embeddings")}, "bert"),  # layer 0: a slice of each stacked parameter
    "prefix_tuning": ({"num_virtual_tokens": 3}, "llama"), "prompt_tuning": ({"num_virtual_tokens": 3}, "bert"),
    "prefix_tuning-projection": ({"num_virtual_tokens": 3, "projection": True, "projection_dim": 16}, "bert"),
}


# The fast tier trains full fine-tuning, freezing slices and the shared prefix encoder stacked (code paths of their
# own); the rest in the slow tier (stacked LoRA: test_lora_on_stacked_layers_equals_lora_unrolled; stacked prefixes:
# test_generate.py's scanned prefix decoding)
TRAINED_FAST = ("full", "freeze", "prefix_tuning-projection")


@pytest.mark.parametrize("method", [m if m in TRAINED_FAST else pytest.param(m, marks=pytest.mark.slow)
                                    for m in sorted(TRAINED)])
def test_training_scanned_equals_unrolled(method, request, tmp_path):
    """A few steps of each method (a tiny Llama causal LM or BERT classifier, dropout on, LoRA's too) on a
    2 x 2 x 2 mesh, the scanned model rematerialised: the same losses and the same model after them (what the
    method added, stacked; frozen layers' slices as loaded), as the unrolled model's."""
    knobs, kind = TRAINED[method]
    rng = np.random.RandomState(0)
    data = {"input_ids": rng.randint(0, 99, (24, 16)).astype(np.int32), "attention_mask": np.ones((24, 16), np.int32)}
    if kind == "llama":
        checkpoint, objective = request.getfixturevalue("tiny_llama"), CausalLM()
    else:
        checkpoint, objective = request.getfixturevalue("tiny_bert"), SequenceClassification(num_labels=3)
        data["labels"] = rng.randint(0, 3, 24).astype(np.int32)
    mesh, runs = make_mesh((2, 2, 2)), {}
    for name, scan, remat in (("unrolled", False, "none"), ("scanned", True, "full")):  # remat per scanned layer
        model = from_pretrained(checkpoint, mesh=mesh, hidden_dropout=0.1, scan_layers=scan)
        spec = methods.build({"name": method.partition("-")[0], **knobs})
        model = spec.apply(model, nnx.Rngs(params=0))
        before = stacked_shared(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        trainer = Trainer(model, objective, _cfg(remat=remat), str(tmp_path / name), mesh=mesh, method=spec)
        state = trainer.fit(array_batches(data, 8, seed=0)).state
        with open(os.path.join(tmp_path / name, "metrics.jsonl")) as f:
            losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
        after = nnx.state(merge_model(trainer.static, state.params, state.frozen), nnx.Param)
        runs[name] = losses, stacked_shared(jax.tree.map(np.asarray, nnx.to_pure_dict(after))), before
    losses, (params, encoder), (before, start) = runs["unrolled"]
    assert len(losses) == 3
    np.testing.assert_allclose(runs["scanned"][0], losses, rtol=1e-6)
    assert_trees_close(runs["scanned"][1][0], params, tol=1e-6)
    assert_trees_close(runs["scanned"][2][0], before, tol=0)  # what the method added: drawn alike
    assert (encoder is None) == (method != "prefix_tuning-projection")  # prefix projection's shared encoder
    if encoder is not None:
        assert_trees_close(runs["scanned"][2][1], start, tol=0)
        assert_trees_close(runs["scanned"][1][1], encoder, tol=1e-6)
    query = ("bert", "encoder", "layer", "attention", "self", "query")
    if method == "bitfit":  # only biases (and the head) trained: the stacked kernels are as loaded
        kernel = _get(params, query)
        assert np.array_equal(kernel["kernel"], _get(before, query)["kernel"])
        assert not np.array_equal(kernel["bias"], _get(before, query)["bias"])
    if method == "freeze":  # layer 0's slice as loaded, layer 1's trained
        moved = _get(params, query)["kernel"] != _get(before, query)["kernel"]  # [L, in, out]
        assert not moved[0].any() and moved[1].mean() > 0.9


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


@pytest.mark.parametrize("method", [{"name": "llrd", "decay": 0.5}, {"name": "gradual_unfreezing", "every": 2}],
                         ids=["llrd", "gradual_unfreezing"])
def test_per_layer_rates_and_unfreezing_steps_are_per_slice(method, tiny_bert):
    """Layer-wise learning rates and gradual unfreezing ask about each slice of a stacked parameter as about the
    unrolled model's layer: its scale and unfreeze step are the unrolled layers' stacked [L, 1, ...]."""
    spec = methods.build(method)
    settings = {}
    for scan in (False, True):
        model = from_pretrained(tiny_bert, scan_layers=scan)
        settings[scan] = optim.method_settings(spec, model, nnx.state(model, nnx.Param))
    for name in ("scale", "unfreeze"):
        expected = dict(methods.base.leaf_paths(stacked(settings[False][name])))  # per layer [L], else one value
        ours = dict(methods.base.leaf_paths(settings[True][name]))
        assert ours.keys() == expected.keys()
        for path, value in ours.items():
            value, want = np.asarray(value), np.asarray(expected[path])
            np.testing.assert_array_equal(value.reshape(want.shape) if value.ndim else value, want, err_msg=path)
    what = "scale" if method["name"] == "llrd" else "unfreeze"  # what the method sets: one value per layer
    layered = np.asarray(settings[True][what]["bert"]["encoder"]["layer"]["attention"]["self"]["query"]["kernel"])
    assert layered.shape == (2, 1, 1) and len(set(layered.ravel())) == 2


def test_l2sp_penalty_is_the_unrolled_one(tiny_bert):
    """L2-SP's pull to the start and its head penalty: the same sums over stacked parameters."""
    spec, penalties = methods.build({"name": "l2sp", "alpha": 0.3, "beta": 0.2}), []
    rng = np.random.RandomState(0)
    start = nnx.to_pure_dict(nnx.state(from_pretrained(tiny_bert), nnx.Param))
    moved = jax.tree.map(lambda w: w + 0.01 * rng.standard_normal(w.shape).astype(np.float32), start)
    for scan in (False, True):
        model = from_pretrained(tiny_bert, scan_layers=scan)
        anchors = spec.anchors(model, stacked(start) if scan else start)
        penalties.append(float(spec.penalty(stacked(moved) if scan else moved, anchors)))
    assert penalties[0] > 0 and penalties[1] == pytest.approx(penalties[0], rel=1e-6)


RESUMED = {"full": {"name": "full"},  # prefix tuning's projection: an encoder every layer shares, saved once
           "prefix_projection": {"name": "prefix_tuning", "projection": True, "projection_dim": 16,
                                 "num_virtual_tokens": 3}}


@pytest.mark.parametrize("method", [pytest.param("full", marks=pytest.mark.slow),
                                    pytest.param("prefix_projection", marks=pytest.mark.slow)])
def test_a_run_resumes_across_layouts_from_its_checkpoint(tiny_llama, tmp_path, method):
    """Stopped after 2 of 4 steps and resumed, a scanned run ends where an uninterrupted one does, and so does a run
    saved unrolled and resumed scanned, or the other way round (the checkpoint's layers restacked); a checkpoint of
    another model is still refused."""
    knobs = RESUMED[method]
    rng = np.random.RandomState(0)
    data = {"input_ids": rng.randint(0, 128, (32, 16)).astype(np.int32), "attention_mask": np.ones((32, 16), np.int32)}

    def fit(folder, steps, scan=True, knobs=knobs):
        model = from_pretrained(tiny_llama, scan_layers=scan)
        spec = methods.build(knobs)
        model = spec.apply(model, nnx.Rngs(params=0))
        cfg = _cfg(steps=steps, checkpoint_every=2)
        cfg.mesh.shape = (1, -1, 1)
        cfg.optimizer.schedule = "constant"  # the same learning rates whatever the number of steps
        return Trainer(model, CausalLM(), cfg, str(tmp_path / folder), method=spec).fit(
            array_batches(data, 8, seed=0)).state.params

    whole = shared(jax.tree.map(np.asarray, fit("whole", 4)))
    for folder, first, then in (("scanned", True, True), ("to-scanned", False, True), ("to-unrolled", True, False)):
        fit(folder, 2, scan=first)
        params, encoder = shared(jax.tree.map(np.asarray, fit(folder, 4, scan=then)))
        assert_trees_close(params if then else stacked(params), whole[0], tol=1e-6)
        if encoder is not None:
            assert_trees_close(encoder, whole[1], tol=1e-6)
        with open(tmp_path / folder / "metrics.jsonl") as f:
            assert [r["step"] for r in map(json.loads, f) if "train/loss" in r] == [1, 2, 3, 4]  # 3, 4 resumed
    with pytest.raises(CheckpointError, match="does not match this model and optimizer"):
        fit("scanned", 6, knobs={"name": "lora"})
