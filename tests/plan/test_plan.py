"""Planning compiled for a TPU slice by libtpu's compiler on this CPU (the tpu extra, which the test extra installs):
the abstract state is create_state's, FSDP splits what it should on the slice, every family and method compiles
there, and scripts/plan.py answers 0 (fits), 1 (does not) and 2 (bad input)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from adapt import methods
from adapt.core.errors import ConfigError
from adapt.core.sharding import DEFAULT_RULES, make_mesh
from adapt.experiment import configs
from adapt.models import from_pretrained
from adapt.plan import build as plan_build
from adapt.plan import plan
from adapt.plan.chips import parse
from adapt.plan.planner import cuda_plugin, devices_for
from adapt.training import defaults, optim
from adapt.training.state import abstract_state, create_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAN = os.path.join(ROOT, "configs", "plan.py")
# A tiny decoder and encoder whose widths divide over 4 chips (FSDP splits every matrix), in bf16 as on a TPU
DECODER = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128)
ENCODER = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=128)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> folder of a tiny random HF model of each family (its config only is read)."""
    import transformers

    out = {}
    for name, cls, cfg in (("llama", transformers.LlamaConfig, DECODER), ("bert", transformers.BertConfig, ENCODER),
                           ("roberta", transformers.RobertaConfig, dict(ENCODER, max_position_embeddings=130)),
                           ("gpt2", transformers.GPT2Config, dict(vocab_size=256, n_embd=128, n_layer=2, n_head=4,
                                                                  n_positions=128)),
                           ("qwen3", transformers.Qwen3Config, dict(DECODER, head_dim=32)),
                           ("gemma", transformers.Gemma3TextConfig, dict(DECODER, head_dim=32, sliding_window=16,
                                                                         layer_types=["sliding_attention",
                                                                                      "full_attention"])),
                           ("mixtral", transformers.MixtralConfig, dict(DECODER, num_local_experts=4,
                                                                        num_experts_per_tok=2)),
                           ("modernbert", transformers.ModernBertConfig, dict(ENCODER, local_attention=16)),
                           ("deberta", transformers.DebertaV2Config,
                            dict(ENCODER, relative_attention=True, position_buckets=32, pos_att_type="p2c|c2p",
                                 share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False))):
        folder = tmp_path_factory.mktemp(name)
        cls(**cfg).save_pretrained(folder)
        out[name] = str(folder)
    return out


def config_for(folder: str, *, encoder: bool = False, method: str = "full", **overrides):
    """configs/plan.py's decoder SFT (or an encoder's classification) shrunk onto ``folder``: batch 8 x 64, the
    layers unrolled (one compile of each step; the scanned plan's extrapolation has its own test)."""
    knobs = {"patterns": ("embed",)} if method == "freeze" else {}
    c = configs.load(f"{PLAN}:llama-3.1-8b", {"model.name": folder, "train.batch_size": 8, "eval.batch_size": 8,
                                              "data.max_length": 64, "model.scan_layers": False,
                                              "method": methods.method_config(method, **knobs).to_dict()})
    if encoder:
        c.model.task, c.data.format = "sequence_classification", "classification"
    return configs.apply_overrides(c, overrides)


@pytest.mark.parametrize("method", ["full", "lora", "mixout"])
def test_the_abstract_state_is_create_state_s_shapes_and_shardings(tiny_llama, method):
    mesh = make_mesh((1, 4, 2))
    m = methods.build(methods.method_config(method))
    model = m.apply(from_pretrained(tiny_llama, mesh=mesh), nnx.Rngs(0))
    cfg = defaults()
    tx, _ = optim.make_optimizer(cfg.optimizer, 10, optim.param_kinds(nnx.state(model, m.trainable(model))))
    _, real, real_sh = create_state(model, tx, mesh=mesh, rules=DEFAULT_RULES, seed=0, method=m)
    abstract = nnx.eval_shape(lambda: m.apply(from_pretrained(tiny_llama), nnx.Rngs(0)))
    _, shapes, shapes_sh = abstract_state(abstract, tx, mesh=mesh, rules=DEFAULT_RULES, method=m)
    assert jax.tree.structure(real) == jax.tree.structure(shapes)
    for x, s, sh in zip(jax.tree.leaves(real), jax.tree.leaves(shapes), jax.tree.leaves(real_sh)):
        assert (x.shape, x.dtype) == (s.shape, s.dtype) and s.sharding == sh and x.sharding.spec == sh.spec
    assert jax.tree.leaves(shapes_sh) == jax.tree.leaves(real_sh)


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_fsdp_on_a_tpu_slice_splits_every_large_array_four_ways(models, method):
    """On v5e:2x2 with FSDP over its 4 chips: every parameter, frozen weight (LoRA's and QLoRA's base) and optimizer
    moment of 4,096 elements or more holds at most a quarter of itself (+5%) on each chip; nothing large is
    replicated."""
    devices = devices_for(parse("v5e:2x2"))
    built = plan_build.build(config_for(models["llama"], method=method), make_mesh((1, 4, 1), devices=devices))
    state, checked = built.state, 0
    for part in ("params", "frozen", "opt_state"):
        for x in jax.tree.leaves(getattr(state, part)):
            if x.size >= 4096:
                held = np.prod(x.sharding.shard_shape(x.shape))
                assert held <= x.size / 4 * 1.05, (part, x.shape, x.sharding.spec)
                checked += 1
    assert checked >= 10 and jax.tree.leaves(state.frozen) if method != "full" else checked >= 10
    assert all(d.platform == "tpu" for d in built.trainer.mesh.devices.flat)


FAST_FAMILIES = (("llama", "lora"),)  # the rest in the slow tier (CI's 20 minutes)
FAMILY_CASES = [pytest.param(f, m, marks=() if (f, m) in FAST_FAMILIES else pytest.mark.slow, id=f"{f}-{m}")
                for f in ("llama", "bert", "roberta", "gpt2", "qwen3", "gemma", "mixtral", "modernbert", "deberta")
                for m in ("full", "lora")]
ENCODERS = ("bert", "roberta", "modernbert", "deberta")


@pytest.mark.parametrize("family, method", FAMILY_CASES)
def test_every_family_compiles_for_a_tpu_slice(models, family, method):
    encoder = family in ENCODERS
    p = plan(config_for(models[family], encoder=encoder, method=method), "v5e:2x2")
    assert [q.name for q in p.programs] == ["train", "eval"] + (["generate"] if not encoder else []) and p.fits
    assert p.memory["total"] < 2**30 and p.costs["flops"] > 0 and p.predicted()["step_s"] > 0
    assert p.costs["collectives"]["all-gather"]["count"] > 0  # FSDP gathers the weights it multiplies
    assert p.costs["kernel_flops"] == 0 and "the splash kernel does not apply" in p.step  # 64 tokens: ours runs


METHODS = sorted(set(methods.METHODS) - {"full", "lora"})


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["gpt2", "bert"])  # GPT-2: a decoder with biases (BitFit's)
def test_every_method_compiles_for_a_tpu_slice(models, family, method):
    p = plan(config_for(models[family], encoder=family == "bert", method=method), "v5e:2x2")
    assert p.fits and p.costs["flops"] > 0


@pytest.mark.slow
def test_the_splash_kernel_compiles_for_a_tpu_slice_and_its_flops_are_counted(models):
    """At 128 tokens the step runs TPU's splash kernel (train.attention=auto on a TPU mesh): it compiles for v5e:2x2
    and the planner adds attention's FLOPs (XLA counts the kernel as none) under full remat: 4/3 of its model FLOPs,
    per chip; with train.attention=xla, none."""
    with jax.default_matmul_precision("default"):  # the suite's "highest" leaves bf16 to ours (splash._float32_dots)
        plans = {a: plan(config_for(models["llama"], **{"data.max_length": 128, "train.attention": a,
                                                        "train.remat": "full"}), "v5e:2x2") for a in ("auto", "xla")}
    kernel, ours = plans["auto"], plans["xla"]
    assert kernel.step.endswith("attention: the splash kernel; logits whole") and "attention: ours" in ours.step
    assert ours.costs["kernel_flops"] == 0
    assert kernel.costs["kernel_flops"] == pytest.approx(kernel.attention_flops * 4 / 3 / 4)


@pytest.mark.slow
def test_a_scanned_model_s_costs_are_the_unrolled_model_s(tmp_path):
    """XLA counts a loop's body once: the plan of a scanned 3-layer model extrapolates 1 and 2 layers' costs to its
    depth, which must give the unrolled model's own counts."""
    import transformers

    transformers.LlamaConfig(**dict(DECODER, num_hidden_layers=3)).save_pretrained(tmp_path)
    scanned, unrolled = (plan(config_for(str(tmp_path)), "v5e:2x2", scan=s) for s in (True, False))
    assert scanned.scan_layers and not unrolled.scan_layers and scanned.layers == unrolled.layers == 3
    for key in ("flops", "bytes_accessed", "collective_s"):
        assert scanned.costs[key] == pytest.approx(unrolled.costs[key], rel=0.05), key
    assert scanned.model_flops == unrolled.model_flops


def _script(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plan.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)


def test_the_script_plans_a_fake_cpu_mesh_and_writes_its_json(models, tmp_path):
    out = tmp_path / "plan" / "p.json"
    r = _script(f"--config={PLAN}:llama-3.1-8b", "--topology=cpu:4", f"--config.model.name={models['llama']}",
                "--no-scan",
                "--config.train.batch_size=8", "--config.eval.batch_size=8", "--config.data.max_length=64",
                f"--json={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    saved = json.loads(out.read_text())
    assert saved["chips"] == 4 and saved["fits"] is None and saved["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert saved["memory_per_chip_bytes"]["params"] > 0 and "| train step |" in r.stdout


@pytest.mark.slow
def test_the_script_exits_1_when_the_step_does_not_fit(models):
    """A batch whose activations need more than a v5e chip's 16 GiB: XLA refuses it, and the plan says so."""
    r = _script(f"--config={PLAN}:llama-3.1-8b", "--topology=v5e:2x2", f"--config.model.name={models['llama']}",
                "--config.train.batch_size=512", "--config.data.max_length=8192", "--config.eval.batch_size=4")
    assert r.returncode == 1, r.stderr[-2000:]
    assert "fits: **no**" in r.stdout and "RESOURCE_EXHAUSTED" in r.stdout


@pytest.mark.parametrize("args, says", [
    (["--topology=v9:2x2"], "unknown generation 'v9'; expected <generation>:<AxB[xC]>"),
    (["--topology=v5e:2x2", "--config.mesh.shape=(1,3,1)"], "mesh.shape=(1, 3, 1)"),
    (["--topology=v5e:2x2", "--config.train.batch_size=6"], "train.batch_size=6 is not divisible by the 4 batch"),
    (["--topology=v5e:2x2", "--config.data.format=conll"], "data.format='conll' does not fit model.task='causal_lm'"),
])
def test_bad_input_is_one_line_and_exit_2_before_compiling(args, says):
    r = _script(f"--config={PLAN}:llama-3.1-8b", *args)
    assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]


def test_without_libtpu_a_tpu_plan_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs libtpu, the tpu extra: pip install -e '\.\[tpu\]'"):
        devices_for(parse("v5p:2x2x1"))


def test_without_the_cuda_plugin_a_gpu_plan_names_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "jax_plugins.xla_cuda12" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs JAX's CUDA plugin .*: pip install 'jax\[cuda12\]'"):
        devices_for(parse("h100:8"))


@pytest.mark.skipif(not cuda_plugin(),
                    reason="JAX's CUDA plugin (pip install 'jax[cuda12]', 5.5 GB) is not in the test extra")
def test_a_gpu_plan_compiles_for_h100s_without_one(models):
    """XLA's GPU compiler for 8 H100s it does not see (their target config): the train, eval and generation programs
    compile, FSDP gathers the weights over NVLink, and the costs are XLA's HLO cost analysis of the GPU program."""
    p = plan(config_for(models["llama"], method="lora"), "h100:8")
    assert [q.name for q in p.programs] == ["train", "eval", "generate"] and p.fits
    assert all(d.platform == "gpu" for d in devices_for(parse("h100:2")))
    assert p.costs["flops"] > 0 and p.predicted()["step_s"] > 0 and p.costs["collectives"]["all-gather"]["count"] > 0


def test_training_a_named_architecture_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"), f"--config={PLAN}:qwen2.5-7b",
                        f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "arch:qwen2.5-7b is an architecture without weights or tokenizer" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_search_s_variants_are_the_ones_the_plan_accepts(models):
    """Meshes whose product is the chips and whose tensor ways divide the heads (the tiny decoder's 2 key/value
    heads rule out 4), every remat policy, power-of-two micro-batches the batch shards divide; cheapest first."""
    from transformers import AutoConfig

    from adapt.plan.variants import variants

    found = variants(config_for(models["llama"]), 4, AutoConfig.from_pretrained(models["llama"]))
    meshes = {v.mesh for v in found}
    assert meshes == {(1, 4, 1), (2, 2, 1), (4, 1, 1), (1, 2, 2), (2, 1, 2)}
    assert {v.remat for v in found} == {"none", "dots", "full"}
    assert all((8 // v.grad_accum) % (v.mesh[0] * v.mesh[1]) == 0 for v in found)  # batch 8 over data x fsdp
    assert {v.grad_accum for v in found if v.mesh == (1, 2, 2)} == {1, 2, 4}
    assert found[0].remat == "none" and found[0].grad_accum == 1 and found[-1].remat == "full"


def test_a_search_prunes_what_cannot_fit_without_compiling(models, monkeypatch):
    """The quick estimate orders the variants' memory as remat and micro-batching do (no remat over dots over full,
    two micro-batches under one); a variant over the prune line is not compiled, and a search where none is left
    finds nothing."""
    from adapt.plan import variants as searching

    config = config_for(models["llama"], **{"data.max_length": 128})
    devices = devices_for(parse("v5e:2x2"))

    def estimate(remat, accum):
        v = searching.Variant((1, 4, 1), remat, accum)
        c = searching._with(config, v)
        return searching.estimate(c, v, plan_build.build(c, make_mesh(v.mesh, devices=devices), scan=True))

    assert estimate("none", 1) > estimate("dots", 1) > estimate("full", 1) > 0
    assert estimate("none", 2) < estimate("none", 1)
    every = searching.variants
    monkeypatch.setattr(searching, "variants", lambda *a: every(*a)[::8])  # a few of them (CI's time)
    monkeypatch.setattr(searching, "PRUNE", 1e-9)  # every estimate over the line
    monkeypatch.setattr(searching, "layer_costs", lambda *a, **k: pytest.fail("a pruned variant was compiled"))
    result = searching.search(config, "v5e:2x2")
    assert len(result.variants) >= 3 and all(v.status == "pruned" for v in result.variants)
    assert result.best is None and result.plan is None and "best: **none fits**" in result.markdown()


@pytest.mark.slow  # the search's compiles; its variants and pruning are fast tests above
def test_a_search_ranks_compiled_variants_and_plans_the_best_at_its_depth(models, tmp_path):
    out = tmp_path / "search.json"
    r = _script(f"--config={PLAN}:llama-3.1-8b", "--topology=v5e:2x2", f"--config.model.name={models['llama']}",
                "--config.train.batch_size=8", "--config.eval.batch_size=8", "--config.data.max_length=64",
                "--search", "--search-budget=3", f"--json={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    saved = json.loads(out.read_text())
    compiled = [v for v in saved["variants"] if v["status"] == "compiled"]
    assert len(compiled) == 3 and all(v["compile_s"] > 0 for v in compiled)
    steps = [v["predicted"]["step_s"] for v in compiled]
    assert steps == sorted(steps) and saved["best"] == {k: compiled[0][k] for k in saved["best"]}
    best = saved["plan"]
    assert tuple(best["mesh"].values()) == tuple(saved["best"]["mesh.shape"]) and best["fits"]
    assert [p["name"] for p in best["programs"]] == ["train", "eval", "generate"]
    assert "| 1 |" in r.stdout and "not compiled" in r.stdout


def test_a_compiler_crash_is_one_line_and_exit_2(tmp_path):
    """libtpu's compiler can die by a segmentation fault (it does on some steps with dropout on): the script plans in
    a child process, and a child killed by a signal is one line naming the crash and the dropout workaround."""
    (tmp_path / "sitecustomize.py").write_text(  # the planning child dies as libtpu's crash kills it
        "import os, signal\nif os.environ.get('ADAPT_PLAN_CHILD'):\n    os.kill(os.getpid(), signal.SIGSEGV)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    r = _script(f"--config={PLAN}:llama-3.1-8b", "--topology=v5e:2x2", "--config.model.hidden_dropout=0.1", env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "libtpu's compiler crashed (SIGSEGV) compiling" in r.stderr and "model.hidden_dropout=0.1" in r.stderr
