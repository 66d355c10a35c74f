"""The training engine on the 8-device CPU mesh: the same losses on every mesh, parameters and optimizer
state sharded by the rules, gradient accumulation equal to one big batch, early stopping and the best
checkpoint on a scripted metric, and checkpoints that refuse the wrong model."""

import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from adapt.core.errors import CheckpointError, ConfigError
from adapt.core.sharding import make_mesh
from adapt.data.batches import array_batches, eval_batches
from adapt.models import from_pretrained
from adapt.training import CausalLM, EarlyStopping, Trainer, defaults
from adapt.training.checkpoints import Checkpointer


def _data(n=32, t=16, seed=0):
    ids = np.random.RandomState(seed).randint(0, 128, (n, t)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[::4, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _cfg(shape=(1, -1, 1), **train):
    cfg = defaults()
    cfg.mesh.shape = shape
    cfg.optimizer.update(learning_rate=1e-3, warmup_steps=1)
    cfg.train.update(dict(batch_size=8, steps=4, log_every=1), **train)
    return cfg


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]


@pytest.mark.slow
def test_same_losses_on_every_mesh_and_shardings_follow_the_rules(tiny_llama, tmp_path):
    runs = {}
    for shape in [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2)]:
        mesh = make_mesh(shape, devices=jax.devices()[:1] if shape == (1, 1, 1) else None)
        model = from_pretrained(tiny_llama, task="causal_lm", mesh=mesh)
        trainer = Trainer(model, CausalLM(), _cfg(shape), str(tmp_path / str(shape)), mesh=mesh)
        trainer.fit(array_batches(_data(), 8, seed=0))
        runs[shape] = (_losses(tmp_path / str(shape)), trainer.state)
    reference = runs[(1, 1, 1)][0]
    assert len(reference) == 4
    for shape, (losses, _) in runs.items():
        np.testing.assert_allclose(losses, reference, rtol=2e-5, err_msg=str(shape))

    state = runs[(2, 2, 2)][1]
    layer = state.params["model"]["layers"][0]
    assert layer["self_attn"]["q_proj"]["kernel"].sharding.spec == P("fsdp", "tensor")  # [embed, heads]
    assert layer["mlp"]["down_proj"]["kernel"].sharding.spec == P("tensor", "fsdp")  # [mlp, embed]
    assert state.params["model"]["embed_tokens"]["embedding"].sharding.spec == P("tensor", "fsdp")
    assert layer["input_layernorm"]["scale"].sharding.is_fully_replicated
    adam = state.opt_state[1][0].inner_state[0]  # chain(clip, chain(inject(adamw), shape)) -> ScaleByAdamState
    assert adam.mu["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert adam.nu["lm_head"]["kernel"].sharding.spec == P("fsdp", "tensor")  # [embed, vocab]
    assert adam.count.sharding.is_fully_replicated
    assert state.opt_state[1][0].hyperparams["learning_rate"].sharding.is_fully_replicated


def test_gradient_accumulation_equals_one_big_batch(tiny_llama, tmp_path):
    params = []
    for accum in (1, 4):
        model = from_pretrained(tiny_llama, task="causal_lm")
        trainer = Trainer(model, CausalLM(), _cfg((8, 1, 1), grad_accum=accum, steps=2), str(tmp_path / str(accum)))
        params.append(trainer.fit(array_batches(_data(), 8, seed=0)).state.params)
    for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


def test_early_stopping_on_a_scripted_sequence():
    stop = EarlyStopping("dev/f1", "max", patience=2)
    improved = [stop.update(step, {"dev/f1": v}) for step, v in [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.7)]]
    assert improved == [True, True, False, False] and stop.should_stop and stop.best_step == 2
    stop = EarlyStopping("dev/loss", "min", patience=0)
    for step, v in enumerate([3.0, 2.0, 2.5, 2.6, 2.7]):
        stop.update(step, {"dev/loss": v})
    assert stop.best == 2.0 and not stop.should_stop  # patience 0: never stops
    with pytest.raises(ConfigError, match="'dev/acc' is not an evaluation metric; available: dev/loss"):
        EarlyStopping("dev/acc").update(9, {"dev/loss": 1.0})


class Scripted(CausalLM):
    """Reports ``dev/score`` from a script, one value per evaluation."""

    def __init__(self, script):
        object.__setattr__(self, "script", list(script))
        object.__setattr__(self, "armed", False)

    def arm(self, batches):
        object.__setattr__(self, "armed", True)
        return batches

    def summarize(self, sums, predictions=None):
        out = super().summarize(sums, predictions)
        if self.armed:
            object.__setattr__(self, "armed", False)
            out["score"] = self.script.pop(0)
        return out


def test_trainer_stops_early_and_keeps_the_best_checkpoint(tiny_llama, tmp_path):
    import orbax.checkpoint as ocp

    objective = Scripted([0.5, 0.7, 0.6, 0.65, 0.9])
    cfg = _cfg(steps=20, eval_every=2, checkpoint_every=2, keep_checkpoints=10)
    cfg.train.early_stopping.update(metric="dev/score", mode="max", patience=2)
    data = _data()
    trainer = Trainer(from_pretrained(tiny_llama, task="causal_lm"), objective, cfg, str(tmp_path))
    result = trainer.fit(array_batches(data, 8, seed=0), {"dev": lambda: objective.arm(eval_batches(data, 8))})
    assert result.stopped_early and result.steps == 8  # evaluations at 2, 4 (best), 6, 8: two without gain
    assert result.best == {"step": 4, "value": 0.7}
    assert Checkpointer(str(tmp_path), keep=10).best_step() == 4
    at_4 = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / "4" / "state")["params"]
    best = trainer.best_model()
    np.testing.assert_array_equal(np.asarray(best.lm_head.kernel[...]), np.asarray(at_4["lm_head"]["kernel"]))
    assert trainer.best_metrics["dev/score"] == 0.7  # the evaluation that made step 4 the best (trials reuse it)
    again = trainer.evaluate(trainer.best_state(), trainer.steps, eval_batches(data, 8))
    assert {f"dev/{k}": v for k, v in again.items()} == {k: v for k, v in trainer.best_metrics.items()
                                                         if k != "dev/score"}  # the scripted number aside
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["dev/score"] for r in records if "dev/score" in r] == [0.5, 0.7, 0.6, 0.65]


def test_a_half_written_checkpoint_is_never_resumed(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    (ckpt_dir / "4").mkdir(parents=True)  # orbax writes here only after the save completed...
    (ckpt_dir / "8.orbax-checkpoint-tmp-1732").mkdir()  # ...and a crash mid-save leaves only this
    ckpt = Checkpointer(str(tmp_path), keep=2)
    assert ckpt.latest_step() in (None, 4)  # never 8
    ckpt.close()


def test_a_checkpoint_of_another_model_is_refused(tiny_llama, tmp_path):
    trainer = Trainer(from_pretrained(tiny_llama, task="causal_lm"), CausalLM(), _cfg(steps=1), str(tmp_path))
    trainer.fit(array_batches(_data(), 8, seed=0))
    other = from_pretrained(tiny_llama, task="base")  # no lm_head: a different parameter tree
    with pytest.raises(CheckpointError, match=r"checkpoints/1: does not match this model and optimizer"):
        Trainer(other, CausalLM(), _cfg(steps=2), str(tmp_path)).fit(array_batches(_data(), 8, seed=0))


def test_bad_batch_and_accumulation_settings_are_config_errors(tiny_llama, tmp_path):
    model = from_pretrained(tiny_llama, task="causal_lm")
    with pytest.raises(ConfigError, match="train.batch_size=6 is not divisible by the 8 batch shards"):
        Trainer(model, CausalLM(), _cfg((8, 1, 1), batch_size=6), str(tmp_path))
    with pytest.raises(ConfigError, match="not divisible by train.grad_accum=3"):
        Trainer(model, CausalLM(), _cfg(grad_accum=3), str(tmp_path))


def test_fit_trains_the_model_in_place(tiny_llama, tmp_path):
    model = from_pretrained(tiny_llama, task="causal_lm")
    before = np.asarray(model.lm_head.kernel[...]).copy()
    result = Trainer(model, CausalLM(), _cfg(steps=2), str(tmp_path)).fit(array_batches(_data(), 8, seed=0))
    after = np.asarray(model.lm_head.kernel[...])  # usable after fit, though the steps donated its buffers
    np.testing.assert_array_equal(after, np.asarray(result.state.params["lm_head"]["kernel"]))
    assert not np.array_equal(after, before)


def test_rematerialised_layers_give_the_same_step(tiny_llama, tmp_path):
    params = []
    for remat in ("none", "full", "dots"):
        model = from_pretrained(tiny_llama, task="causal_lm", hidden_dropout=0.1, attention_dropout=0.1)
        trainer = Trainer(model, CausalLM(), _cfg(steps=2, remat=remat), str(tmp_path / remat))
        params.append(trainer.fit(array_batches(_data(), 8, seed=0)).state.params)
    for other in params[1:]:  # same dropout masks (the step key), same numbers
        for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(other)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_cluster_environments_start_the_distributed_runtime():
    from adapt.core.distributed import cluster_size, initialize

    assert cluster_size({}) == 1
    assert cluster_size({"SLURM_NTASKS": "4"}) == 4
    assert cluster_size({"OMPI_COMM_WORLD_SIZE": "2"}) == 2
    assert cluster_size({"TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == 4
    initialize({})  # one process: nothing to start
    assert jax.process_count() == 1
    with pytest.raises(ConfigError, match="JAX_COORDINATOR_ADDRESS is set but JAX_PROCESS_ID is not"):
        initialize({"JAX_COORDINATOR_ADDRESS": "host0:1234", "JAX_NUM_PROCESSES": "2"})


def test_learning_rate_and_weight_decay_are_runtime_state():
    """Trials of a learning-rate or weight-decay grid compile the same update (the values live in the
    optimizer state), and it equals optax's AdamW with the scheduled rate."""
    import jax.numpy as jnp
    import optax

    from adapt.training import optim

    params = {"w": {"kernel": jnp.ones((3, 2))}, "b": {"bias": jnp.ones((2,))}}
    kinds = {"w": {"kernel": "weight"}, "b": {"bias": "bias"}}
    grads = jax.tree.map(lambda x: 0.5 * jnp.ones_like(x), params)

    def make(lr, wd):
        cfg = defaults().optimizer
        cfg.update(learning_rate=lr, weight_decay=wd, warmup_steps=2, schedule="linear", clip_norm=0.0)
        return optim.make_optimizer(cfg, 10, kinds)

    def hlo(lr, wd):
        tx, _ = make(lr, wd)
        return jax.jit(tx.update).lower(grads, tx.init(params), params).as_text()

    assert hlo(1e-3, 0.1) == hlo(3e-4, 0.0)
    tx, schedule = make(1e-3, 0.1)
    ref = optax.adamw(schedule, weight_decay=0.1, mask={"w": {"kernel": True}, "b": {"bias": False}})
    ours, theirs, p, q = tx.init(params), ref.init(params), params, params
    for _ in range(5):
        u, ours = tx.update(grads, ours, p)
        v, theirs = ref.update(grads, theirs, q)
        p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_head_warmup_trains_only_the_fresh_head_first(tiny_bert, tmp_path):
    """A BERT saved without its MLM head, loaded for masked LM: its fresh ``cls`` parameters are recorded on the
    model (through split/merge too); with train.head_warmup_steps=2 the first 2 steps move only them (every other
    parameter bitwise unchanged), and step 3 moves the rest too."""
    from flax import nnx

    from adapt.data.batches import array_batches
    from adapt.models.loading import fresh_paths
    from adapt.training import MaskedLM
    from adapt.training.state import global_batch

    model = from_pretrained(tiny_bert, task="masked_lm")
    fresh = fresh_paths(model)
    assert fresh and {p[0] for p in fresh} == {"cls"} and fresh_paths(nnx.merge(*nnx.split(model))) == fresh
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    cfg = _cfg((1, 1, 1), steps=3, head_warmup_steps=2)
    cfg.optimizer.warmup_steps = 0  # else step 1's learning rate is 0
    trainer = Trainer(model, MaskedLM(mask_token_id=3, vocab_size=128, probability=0.3), cfg, str(tmp_path), mesh=mesh)
    with pytest.raises(ConfigError, match="head_warmup_steps=3 is not below the run's 3 steps"):
        cfg.train.head_warmup_steps = 3
        trainer.fit(array_batches(_data(), 8, seed=0))
    cfg.train.head_warmup_steps = 2
    state, _ = trainer._setup(3)
    data = array_batches(_data(), 8, seed=0)

    def flat(params):
        return {p: np.array(v) for p, v in nnx.to_flat_state(nnx.State(params))}

    seen = [flat(state.params)]
    for _ in range(3):
        state, _ = trainer.steps.train(state, global_batch(data.next_batch(), trainer.batch_sharding))
        seen.append(flat(state.params))
    rest = [p for p in seen[0] if p not in fresh]
    assert len(rest) > 30 and len(fresh) >= 3
    for step in (1, 2):
        assert all(np.array_equal(seen[step][p], seen[0][p]) for p in rest), step
        assert all(not np.array_equal(seen[step][p], seen[step - 1][p]) for p in fresh), step
    assert all(not np.array_equal(seen[3][p], seen[2][p]) for p in rest)
