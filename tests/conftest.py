"""Test setup: a hermetic run (tests/hermetic/hermetic_guard.py), 8 fake CPU devices (before jax is imported
anywhere) and shared fixtures."""

import atexit
import os
import shutil
import sys
import tempfile

HERMETIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hermetic")
FIXTURE_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "data")
sys.path.insert(0, HERMETIC)

import hermetic_guard  # noqa: E402


def _hermetic_run():
    """An empty data folder, home and caches for this run, and the guards, here and (through ``PYTHONPATH``) in
    every process a test starts. xdist's workers (and any process a test starts that loads this file) inherit the
    run's folders from the process that made them, which removes them when it exits; each process has its own
    violations log, so a violation fails the test that caused it."""
    root = os.environ.get("ADAPT_HERMETIC_ROOT")
    if root is None:
        root = tempfile.mkdtemp(prefix="adapt-tests-")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        os.environ["ADAPT_HERMETIC_ROOT"] = root
        for name in hermetic_guard.CLEARED:
            os.environ.pop(name, None)
        os.environ.update(hermetic_guard.environment(root))
        tempfile.tempdir = None  # mkdtemp cached the system's: from here on, the run's (TMPDIR)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [HERMETIC, os.environ.get("PYTHONPATH")]))
    os.environ[hermetic_guard.LOG] = os.path.join(root, f"violations-{os.getpid()}.log")
    hermetic_guard.install()


_hermetic_run()

# XLA's CPU fusion emitters (its newer, MLIR-based code generation for fused loops) cost more compile time than the
# suite's tiny programs run: with the older emitters the methods' mesh tests took 30% less CPU (115 vs 165 s, 27
# tests on a 2-core EPYC). Scripts the tests start inherit it; one that sets its own XLA_FLAGS keeps it with these.
XLA_TEST_FLAGS = "--xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), XLA_TEST_FLAGS,
                                                 "--xla_force_host_platform_device_count=8"]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# XLA's optimisation passes cost more than they save on the suite's tiny models (its compile time dominates: the
# methods' mesh tests ran 30% faster without them). The scripts the tests start inherit it through the environment
# (the headline study's smoke run: 38 -> 28 s of CPU); numerics may differ in the last bits, never in meaning.
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
jax.config.update("jax_disable_most_optimizations", True)


def _orbax_without_replica_slices():
    """Orbax writes a replicated array on CPU in slices, one per replica (compiling a slice per array shape): on the
    suite's 8 fake devices that is compile time for nothing. Here replica 0 writes each array whole, as Orbax does on
    GPUs; what is saved and restored is the same (the resume tests compare it bitwise). 11% less CPU in
    tests/training/test_training.py."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.serialization.jax_array_handlers import ArrayHandler

    ocp.type_handlers.register_type_handler(jax.Array, ArrayHandler(use_replica_parallel=False), override=True)


_orbax_without_replica_slices()

import pytest  # noqa: E402


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A test's setup, call or teardown fails if it, or a process it started, reached outside the repository, the
    installed packages or loopback, even where the code caught the guard's error (a phase that failed already
    shows that error)."""
    report = yield
    found = hermetic_guard.take_violations()
    if found and report.passed:
        report.outcome, report.longrepr = "failed", "not hermetic: " + "; ".join(dict.fromkeys(found))
    return report


@pytest.fixture
def benchmark_data(monkeypatch):
    """``ADAPT_DATA_DIR`` is the synthetic benchmark files (tests/fixtures/data), for this process and the ones the
    test starts; returns that folder."""
    monkeypatch.setenv("ADAPT_DATA_DIR", FIXTURE_DATA)
    return FIXTURE_DATA

TINY_LLAMA = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
# Gemma 2 and 3 (text): local layers of a 4-token window, so a 12-token batch crosses it
GEMMA = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, sliding_window=4, max_position_embeddings=64)
# Gemma 3's RoPE per layer type, with linear scaling on the global layers as its larger models have
GEMMA3_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
               "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0}}
TINY_GPT2 = dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64)
TINY_BERT = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=64, num_labels=3)


def random_hf_model(folder, model_cls, config_cls, **config) -> str:
    """A random-init transformers model (seed 0) saved to ``folder``; returns the folder."""
    import torch

    torch.manual_seed(0)
    model_cls(config_cls(**config)).save_pretrained(folder)
    return str(folder)


def perturbed_reference(make, folder):
    """``make()`` (a transformers model, built after seeding torch with 0) with every tensor perturbed, so that each one
    matters to a parity test, in eval mode and saved to ``folder``; returns the model."""
    import torch

    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A random-init HF Llama causal LM (GQA, untied) saved by transformers; returns its folder."""
    import transformers

    return random_hf_model(tmp_path_factory.mktemp("tiny_llama"), transformers.LlamaForCausalLM,
                           transformers.LlamaConfig, **TINY_LLAMA)


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory):
    """A random-init HF Gemma 3 text causal LM (a local and a global layer, q/k norms, tied head) saved by
    transformers; returns its folder."""
    import transformers

    return random_hf_model(tmp_path_factory.mktemp("tiny_gemma"), transformers.Gemma3ForCausalLM,
                           transformers.Gemma3TextConfig, **GEMMA, num_hidden_layers=2,
                           layer_types=["sliding_attention", "full_attention"], rope_parameters=GEMMA3_ROPE)


@pytest.fixture(scope="session")
def tiny_modernbert(tmp_path_factory):
    """A random-init HF ModernBERT sequence classifier (3 labels; a global, two local and a global layer) saved by
    transformers; returns its folder."""
    import transformers

    return random_hf_model(tmp_path_factory.mktemp("tiny_modernbert"), transformers.ModernBertForSequenceClassification,
                           transformers.ModernBertConfig, vocab_size=128, hidden_size=64, intermediate_size=96,
                           num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=64, local_attention=4,
                           num_labels=3, pad_token_id=0)


@pytest.fixture(scope="session")
def tiny_mixtral(tmp_path_factory):
    """A random-init HF Mixtral causal LM (4 experts, 2 per token, GQA) saved by transformers (per-expert tensors);
    returns its folder."""
    import transformers

    return random_hf_model(tmp_path_factory.mktemp("tiny_mixtral"), transformers.MixtralForCausalLM,
                           transformers.MixtralConfig, **TINY_LLAMA, num_local_experts=4, num_experts_per_tok=2)


@pytest.fixture(scope="session")
def tiny_deberta(tmp_path_factory):
    """A random-init HF DeBERTa-v3-style sequence classifier (3 labels; shared attention keys, 8 log buckets over
    distances up to 16, LayerNormed relative embeddings) saved by transformers; returns its folder."""
    import transformers

    return random_hf_model(tmp_path_factory.mktemp("tiny_deberta"), transformers.DebertaV2ForSequenceClassification,
                           transformers.DebertaV2Config, **TINY_BERT, relative_attention=True, position_buckets=8,
                           max_relative_positions=16, pos_att_type="p2c|c2p", share_att_key=True,
                           norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0)


@pytest.fixture(scope="session")
def smollm2_stand_in(tmp_path_factory):
    """A 1-layer random-init Llama with SmolLM2's tokenizer and chat template, in SmolLM2's place where a study's
    smoke run checks the pipeline, not the model; returns its folder."""
    import transformers

    from adapt.models import load_tokenizer

    tok = load_tokenizer("bundled:smollm2-135m")
    folder = random_hf_model(tmp_path_factory.mktemp("smollm2_stand_in"), transformers.LlamaForCausalLM,
                             transformers.LlamaConfig, vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                             max_position_embeddings=512, tie_word_embeddings=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def small_bert(tmp_path_factory):
    """A 2-layer random-init BERT classifier (2 labels) with the bundled MiniLM tokenizer, for trials run end to end
    through the experiment code (real text in, a real vocabulary); returns its folder."""
    import transformers

    from adapt.models import load_tokenizer

    tok = load_tokenizer("bundled:minilm-l6")
    folder = random_hf_model(tmp_path_factory.mktemp("small_bert"), transformers.BertForSequenceClassification,
                             transformers.BertConfig, vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64, num_labels=2)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def base_bert(tmp_path_factory):
    """A 2-layer random-init BERT without a head (pooler included), with the bundled MiniLM tokenizer."""
    import transformers

    from adapt.models import load_tokenizer

    tok = load_tokenizer("bundled:minilm-l6")
    folder = random_hf_model(tmp_path_factory.mktemp("base_bert"), transformers.BertModel, transformers.BertConfig,
                             vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=64)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A random-init HF BERT sequence classifier (3 labels) saved by transformers; returns its folder."""
    import transformers

    return random_hf_model(tmp_path_factory.mktemp("tiny_bert"), transformers.BertForSequenceClassification,
                           transformers.BertConfig, **TINY_BERT)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    """A random-init HF GPT-2 causal LM (biases everywhere, tied head) saved by transformers; returns its folder."""
    import transformers

    return random_hf_model(tmp_path_factory.mktemp("tiny_gpt2"), transformers.GPT2LMHeadModel, transformers.GPT2Config,
                           **TINY_GPT2)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """JAX's persistent compilation cache for one test module: its tests that build the same programs (the same
    model, objective and step) compile each once. The settings before it are restored after the module."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    compilation_cache.reset_cache()


def pytest_collection_modifyitems(items):
    """Tests marked slow run first. With ``-n 2``, xdist deals the first quarter of the tests out in turn, so the
    long ones run side by side from the start and the many short ones fill the end (longest first), instead of
    one worker finishing the main job's test alone while the other waits."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
