"""DP-SGD (adapt/features/privacy.py): per-example gradients equal one example at a time (of the trainable parameters
only), every clipped gradient within C, the noise's standard deviation sigma C / B measured through the train
step, gradient accumulation equal to one big batch, Poisson batches of the right mean size that resume exactly,
epsilon equal to dp_accounting's, a trial end to end writing it, and the configurations that break the guarantee
refused."""

import json

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_hf_model
from dp_accounting import pld, rdp
from flax import nnx
from scipy.stats import binom

from adapt import methods
from adapt.core.errors import ConfigError
from adapt.core.sharding import make_mesh, normalize_rules
from adapt.data.batches import REAL, PoissonBatches
from adapt.experiment import base_config, run_trial
from adapt.experiment.trial import build_trial
from adapt.features import base as features
from adapt.features import privacy
from adapt.models import from_pretrained
from adapt.study.populations import run_population
from adapt.training import CausalLM, defaults
from adapt.training import dp as dpsgd
from adapt.training.state import create_state
from adapt.training.steps import make_train_step


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A 1-layer random-init Llama causal LM (no dropout), 128 tokens."""
    import transformers

    return random_hf_model(tmp_path_factory.mktemp("llama"), transformers.LlamaForCausalLM, transformers.LlamaConfig,
                           vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)


def _lm_batch(n=6, t=12, seed=0, padding=0):
    """Causal-LM rows of different lengths; the last ``padding`` rows are padding (no token, not real)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 128, (n, t)).astype(np.int32)
    mask = (np.arange(t)[None] < rng.integers(4, t + 1, (n, 1))).astype(np.int32)
    mask[n - padding:] = 0
    real = (np.arange(n) < n - padding).astype(np.int32)
    return {"input_ids": jnp.asarray(ids * mask), "attention_mask": jnp.asarray(mask), REAL: jnp.asarray(real)}


def _state(folder, method="full"):
    """(static model, train state under SGD with rate 1, mesh) on one device."""
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    model = from_pretrained(folder, task="causal_lm", mesh=mesh)
    m = methods.build(methods.method_config(method, **({"rank": 2} if method == "lora" else {})))
    model = m.apply(model, nnx.Rngs(0))
    static, state, _ = create_state(model, optax.sgd(1.0), mesh=mesh, rules=normalize_rules(defaults().mesh.rules),
                                    seed=0, method=m)
    return static, state, mesh


def _loss_fn(static):
    def loss_fn(params, frozen, anchors, batch, key):
        sums, _ = CausalLM().loss(static(params, frozen, batch, key), batch)
        return sums["loss_sum"], sums
    return loss_fn


def test_per_example_gradients_are_one_example_at_a_time_of_the_trainable_parameters_and_clipped_within_c(llama):
    static, state, mesh = _state(llama, "lora")
    loss_fn = _loss_fn(static)
    batch = _lm_batch(padding=2)
    batch["attention_mask"] = batch["attention_mask"].at[-1].set(1)  # a row with tokens but not real: no share
    rows = {k: v for k, v in batch.items() if k != REAL}
    key = jax.random.PRNGKey(1)
    keys = jax.random.split(key, 6)

    @jax.jit
    def alone(params, row, key):  # one example: its summed token loss over its token count
        def mean_loss(p):
            loss_sum, s = loss_fn(p, state.frozen, state.anchors, row, key)
            return loss_sum / s["weight"]
        return jax.grad(mean_loss)(params)

    with jax.set_mesh(mesh):
        grads, _ = jax.jit(dpsgd.per_example_grads(loss_fn))(state.params, state.frozen, state.anchors, rows, keys)
        total, sums = jax.jit(dpsgd.clipped_sum(loss_fn, 0.05))(state.params, state.frozen, state.anchors, batch,
                                                                  key)
        each = [jax.tree.map(lambda g: g[i], grads) for i in range(6)]
        assert jax.tree.structure(each[0]) == jax.tree.structure(state.params)  # LoRA's parameters only
        for i in range(5):
            one = alone(state.params, {k: v[i:i + 1] for k, v in rows.items()}, keys[i])
            for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(each[i])):
                np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=1e-7)
    clipped = [dpsgd.clip(g, 0.05) for g in each]
    norms = [float(optax.tree.norm(g)) for g in clipped]
    assert max(norms) <= 0.05 * (1 + 1e-5) and min(norms[:4]) > 0.049  # every real row needed clipping here
    for i, leaf in enumerate(jax.tree.leaves(total)):  # the real rows' clipped sum: rows 4 and 5 add nothing
        np.testing.assert_allclose(np.asarray(leaf), sum(np.asarray(jax.tree.leaves(g)[i]) for g in clipped[:4]),
                                   rtol=1e-4, atol=1e-9)
    assert float(sums["weight"]) == float(jnp.sum(batch["attention_mask"][:4, 1:]))  # the real rows' targets

    rng = np.random.default_rng(0)
    for scale in (1e-4, 0.3, 1.0, 7.0, 1e3):
        tree = {"a": jnp.asarray(rng.normal(size=(5, 3)) * scale), "b": [jnp.asarray(rng.normal(size=4) * scale)]}
        norm, clipped = float(optax.tree.norm(tree)), dpsgd.clip(tree, 1.5)
        assert float(optax.tree.norm(clipped)) <= 1.5 * (1 + 1e-6)
        if norm <= 1.5:  # within the bound: untouched
            assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(clipped), jax.tree.leaves(tree)))


DP = privacy.DPSGD(clip_norm=0.05, noise_multiplier=1.3, expected_batch_size=6, max_batch_size=8, examples=100,
                   steps=1, delta=1e-3)


@pytest.fixture(scope="module")
def steps(llama):
    """The DP train step (SGD, rate 1) without and with 4 micro-batches, and the state it starts from."""
    static, state, mesh = _state(llama)
    jitted = {accum: jax.jit(make_train_step(static, CausalLM(), optax.sgd(1.0), accum, extension=DP))
              for accum in (1, 4)}
    return jitted, state, mesh


def _update(steps, accum, batch):
    jitted, state, mesh = steps
    with jax.set_mesh(mesh):
        after = jitted[accum](jax.tree.map(jnp.copy, state), batch)
    return [np.asarray(a) - np.asarray(b) for a, b in zip(jax.tree.leaves(after[0].params),
                                                          jax.tree.leaves(state.params))], after[1]


def test_noise_std_through_the_step_is_sigma_clip_over_the_expected_batch(steps):
    update, metrics = _update(steps, 1, _lm_batch(n=8, padding=8))  # no example: the update is the noise
    delta = np.concatenate([u.ravel() for u in update])
    assert delta.size > 10000 and float(metrics["weight"]) == 0
    expect = 1.3 * 0.05 / 6
    assert np.std(delta) == pytest.approx(expect, rel=0.03)  # sampling error ~ 1 / sqrt(2 N) < 1%
    assert abs(np.mean(delta)) < 4 * expect / np.sqrt(delta.size)


def test_gradient_accumulation_gives_the_update_of_one_big_batch(steps):
    batch = _lm_batch(n=8, padding=2)
    arranged = dpsgd.real_first(batch, 4)  # the real rows fill micro-batches 0-2: the last computes nothing
    assert [int(arranged[REAL][i::4].sum()) for i in range(4)] == [2, 2, 2, 0]
    one, _ = _update(steps, 1, batch)
    four, _ = _update(steps, 4, batch)
    for a, b in zip(one, four):
        np.testing.assert_allclose(a, b, atol=1e-7)


def test_poisson_batches_have_the_expected_size_and_resume_exactly():
    arrays = {"input_ids": [np.arange(1, 2 + i % 7) for i in range(200)], "labels": np.arange(200) % 3}
    stream = PoissonBatches(arrays, expected=20, size=32, seed=3)
    counts, seen = [], np.zeros(200)
    for _ in range(1500):
        batch = stream.next_batch()
        real = batch[REAL].astype(bool)
        counts.append(real.sum())
        assert batch["input_ids"].shape[0] == 32 and (batch["labels"][~real] == -100).all()
        assert (batch["attention_mask"][~real] == 0).all()
        seen[np.asarray(stream.draw(stream.step - 1))] += 1
    q = 20 / 200
    assert np.mean(counts) == pytest.approx(20, abs=4 * np.sqrt(200 * q * (1 - q) / 1500))
    assert max(counts) <= 32 and np.mean(seen / 1500) == pytest.approx(q, rel=0.02)
    saved = stream.state()
    ahead = [stream.next_batch() for _ in range(3)]
    again = PoissonBatches(arrays, expected=20, size=32, seed=3)
    again.restore(json.loads(json.dumps(saved)))
    for a, b in zip(ahead, [again.next_batch() for _ in range(3)]):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert again.tokens == stream.tokens


def _files(tmp_path, n=48):
    rng = np.random.default_rng(0)
    words = {"0": "government minister election market".split(), "1": "kinase receptor protein assay".split()}
    files = {}
    for split, count in (("train", n), ("dev", 8), ("test", 8)):
        files[split] = str(tmp_path / f"{split}.jsonl")
        with open(files[split], "w") as f:
            for y in rng.integers(0, 2, count).astype(str):
                f.write(json.dumps({"text": " ".join(rng.choice(words[y], 6)), "label": y}) + "\n")
    return files


def _config(small_bert, tmp_path, **privacy_keys):
    c = base_config()
    c.model.update(name=small_bert, task="sequence_classification")
    c.data.update(max_length=16, cache_dir="")
    c.data.files = _files(tmp_path)
    c.eval.update(splits=("test",), batch_size=8)
    c.optimizer.update(learning_rate=1e-2, clip_norm=0.0)
    c.train.update(batch_size=8, steps=2, log_every=2, grad_accum=2)
    c.train.early_stopping.metric = ""
    c.mesh.shape = (-1, 1, 1)
    c.privacy.update(enabled=True, **privacy_keys)
    return c


@pytest.mark.slow
def test_a_dp_trial_writes_the_epsilon_dp_accounting_gives(small_bert, tmp_path):
    c = _config(small_bert, tmp_path, noise_multiplier=1.1, clip_norm=0.5, max_batch_size=48)
    results = run_trial(c, str(tmp_path / "run"))
    got = json.loads((tmp_path / "run" / "results.json").read_text())["privacy"]
    assert got == results["privacy"]
    assert got["steps"] == 2 and got["examples"] == 48 and got["max_batch_size"] == 48
    acc = pld.PLDAccountant()  # rows for all 48 examples: never truncated, Poisson sampling exactly
    acc.compose(dp_accounting.PoissonSampledDpEvent(8 / 48, dp_accounting.GaussianDpEvent(1.1)), 2)
    assert got["epsilon"] == acc.get_epsilon(1 / 48) and got["delta"] == 1 / 48
    assert "accuracy" in results["test"]


def test_sigma_calibrated_for_a_target_epsilon_rdp(small_bert, tmp_path):
    c = _config(small_bert, tmp_path, target_epsilon=3.0, accountant="rdp", delta=1e-4)
    c.train.update(steps=40)
    dp = privacy.plan(c, examples=1000, multiple=8)
    spent = privacy.report(dp, dp.steps)
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(8 / 1000, dp_accounting.GaussianDpEvent(dp.noise_multiplier)), 40)
    assert spent["epsilon"] == acc.get_epsilon(1e-4) and 2.95 < spent["epsilon"] <= 3.0  # RDP: steps in epsilon
    assert 1e-4 <= spent["delta"] <= 1.01e-4  # truncation's share of delta, at the auto max_batch_size

    c.privacy.update(target_epsilon=1e4)
    with pytest.raises(ConfigError, match="privacy.target_epsilon=10000.0 is met with noise_multiplier 0.3"):
        privacy.plan(c, examples=1000, multiple=8)

    c.privacy.update(accountant="pld", noise_multiplier=1.0, target_epsilon=0.0)
    size = privacy.plan(c, examples=1000, multiple=8).max_batch_size  # pld: the step truncates with prob <= 1e-6
    assert size % 8 == 0 and binom.sf(size, 1001, 0.008) <= 1e-6 < binom.sf(size - 8, 1001, 0.008)


@pytest.mark.parametrize("edit, key", [
    (lambda c: c.train.early_stopping.update(metric="dev/accuracy"), "train.early_stopping.metric"),
    (lambda c: c.optimizer.update(clip_norm=1.0), "optimizer.clip_norm"),
    (lambda c: setattr(c.data, "mixture", {"a": {"weight": 1.0}}), "data.mixture"),
    (lambda c: c.data.augment.update(copies=1), "data.augment.copies"),
    (lambda c: c.distill.update(teacher="runs/teacher"), "distill.teacher"),
    (lambda c: c.data.quality.update(near_duplicates="drop"), "data.quality.near_duplicates"),
    (lambda c: (c.data.update(format="lm"), c.model.update(task="causal_lm")), "data.pack"),
    (lambda c: c.privacy.update(noise_multiplier=0.0), "privacy.noise_multiplier"),
    (lambda c: c.privacy.update(accountant="moments"), "privacy.accountant"),
])
def test_configurations_that_break_the_guarantee_are_refused_before_anything_loads(tmp_path, edit, key):
    c = _config("no/such/model", tmp_path, noise_multiplier=1.0)
    edit(c)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_trial(c, str(tmp_path / "run"))


def test_early_stopping_on_public_dev_is_allowed_and_populations_are_refused(tmp_path):
    c = _config("no/such/model", tmp_path, noise_multiplier=1.0, public_dev=True)
    c.train.early_stopping.metric = "dev/accuracy"
    privacy.check(c)
    c.multitask.tasks = {"a": {"benchmark": "bbc"}, "b": {"benchmark": "chemprot"}}
    with pytest.raises(ConfigError, match=r"^multitask\.tasks with privacy\.enabled: "):  # the pair rule's
        features.check(c)
    c.multitask.tasks = {}
    with pytest.raises(ConfigError, match="privacy.enabled"):
        run_population([c, c], [str(tmp_path / "a"), str(tmp_path / "b")])


def test_epsilon_from_results_json_is_a_table_key(tmp_path):
    import ml_collections

    from adapt.analysis import results, tables
    from adapt.study import sweeps

    trials = sweeps.expand(sweeps.product(sweeps.grid("meta.dp", [True, False]), sweeps.grid("train.seed", [0, 1])))
    base = ml_collections.ConfigDict(dict(train=dict(seed=0), privacy=dict(enabled=False, delta=0.0)))
    db = results.ResultsDB(str(tmp_path / "results.db"))
    db.register("dp", trials, {t.id: sweeps.trial_config(base, t.overrides) for t in trials}, str(tmp_path))
    by_id = {t.id: t.overrides for t in trials}
    while (tid := db.claim(list(by_id), 1)) is not None:
        dp, seed = by_id[tid]["meta.dp"], by_id[tid]["train.seed"]
        db.finish(tid, {"dev": {"accuracy": 0.5}, "test": {"accuracy": 0.6 + 0.1 * dp + 0.01 * seed},
                        **({"privacy": {"epsilon": 2.5, "delta": 1e-3}} if dp else {})}, {})
    table = tables.build(db.trials(), rows=("privacy.epsilon",), metric="accuracy")
    assert sorted(table.rows) == ["2.5", "–"]  # "–": no privacy entry
    assert {tables.value(t, "privacy.delta") for t in db.trials()} == {1e-3, 0.0}  # stored first, then the config
    assert table.cells["2.5", "accuracy"].mean == pytest.approx(0.705)
    assert "| 2.5 | **70.5 ± 0.7** |" in tables.to_markdown(table)
