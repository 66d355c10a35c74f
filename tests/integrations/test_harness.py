"""adapt models in lm-evaluation-harness (adapt/integrations/lm_eval.py, scripts/eval.py --lm-eval-tasks): tasks defined
by local YAML files over local JSON data score the same loglikelihoods, greedy flags, rolling loglikelihoods and greedy
generations as lm-eval's own HFLM on transformers' PyTorch model of the same checkpoint; an unknown task name is one
line naming the closest ones; eval.py on a run folder writes lm_eval.json with transformers' numbers for the run's
exported weights."""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import sys

import lm_eval
import pytest

from adapt.core.errors import ConfigError
from adapt.integrations.lm_eval import AdaptLM, evaluate, task_manager
from adapt.models import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASKS = ("tiny_mc", "tiny_ppl", "tiny_gen")
MC = [  # an empty context, a context ending in a space, one longer than the model's 64 positions
    {"question": "The capital of France is", "choices": [" Paris", " Berlin", " a big city on a river"], "answer": 0},
    {"question": "", "choices": ["Sky is blue", "Grass is red"], "answer": 0},
    {"question": "Water boils at 100 degrees ", "choices": ["Celsius", "Fahrenheit"], "answer": 0},
    {"question": "Count: " + " ".join(str(i) for i in range(40)), "choices": [" 40", " forty"], "answer": 0},
]
PPL = ["A short line.", " ".join(["the quick brown fox jumps over the lazy dog"] * 12)]  # the second: 2 windows
GEN = ["Question: what colour is the sky?\nAnswer:", "Once upon a time", "1, 2, 3,"]
YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  cache_dir: {cache}
  data_files:
    test: {data}
test_split: test
output_type: {kind}
{rest}"""
KINDS = {
    "tiny_mc": ("multiple_choice", 'doc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\ndoc_to_choice: '
                '"{{choices}}"\ntarget_delimiter: ""\nmetric_list:\n  - metric: acc\n    aggregation: mean\n'
                '    higher_is_better: true\n'),
    "tiny_ppl": ("loglikelihood_rolling", 'doc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n'
                 '  - metric: word_perplexity\n    aggregation: weighted_perplexity\n    higher_is_better: false\n'),
    "tiny_gen": ("generate_until", 'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{target}}"\ngeneration_kwargs:\n'
                 '  until: ["\\n", "."]\n  max_gen_toks: 6\n  do_sample: false\nmetric_list:\n  - metric: exact_match\n'
                 '    aggregation: mean\n    higher_is_better: true\n'),
}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A byte-level BPE tokenizer of 320 tokens trained on the tasks' texts, with BOS and EOS tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    texts = [r["question"] + " ".join(r["choices"]) for r in MC] + PPL + GEN
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>").save_pretrained(folder)
    return load_tokenizer(str(folder))


def _model(folder, family: str, tok) -> str:
    """A random-init 2-layer transformers model saved with ``tok`` to ``folder``; its init is wider than the
    default, so that no argmax is a near tie that float rounding could flip."""
    import torch
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), initializer_range=0.2, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id)
    if family == "llama":
        config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                          **common)
        transformers.LlamaForCausalLM(config).save_pretrained(folder)
    else:
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, **common)
        transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _greedy_choice(folder: str, tok) -> str:
    """A continuation of MC's first question that transformers' model at ``folder`` picks greedily, as text that
    encodes back to those tokens after the question (so lm-eval's is_greedy must be True for it)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    context = MC[0]["question"]
    ids = tok.encode(context)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, len(ids):].tolist()
    for k in range(1, len(new) + 1):  # a byte-level token alone may not be text: the shortest prefix that is
        text = tok.decode(new[:k])
        if tok.encode(context + text)[len(ids):] == new[:k]:
            return text
    raise AssertionError(f"no greedy continuation of {context!r} encodes back: {new}")


def _tasks(folder, greedy: str) -> str:
    """The three tasks' YAML files and JSON data in ``folder`` (``greedy``: a continuation of MC's first question
    that is the model's greedy one, added as a choice). Returns the folder."""
    os.makedirs(folder, exist_ok=True)
    mc = [dict(MC[0], choices=MC[0]["choices"] + [greedy])] + MC[1:]
    rows = {"tiny_mc": mc, "tiny_ppl": [{"text": t} for t in PPL],
            "tiny_gen": [{"prompt": p, "target": "blue"} for p in GEN]}
    for name, (kind, rest) in KINDS.items():
        data = os.path.join(folder, f"{name}.jsonl")
        with open(data, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows[name])
        with open(os.path.join(folder, f"{name}.yaml"), "w") as f:
            f.write(YAML.format(name=name, data=data, kind=kind, rest=rest, cache=os.path.join(folder, "cache")))
    return str(folder)


def _responses(results: dict) -> dict:
    """task -> each request's response, in order."""
    return {task: [r[0] for sample in results["samples"][task] for r in sample["resps"]] for task in results["samples"]}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_scores_and_generations_equal_transformers(family, tok, tmp_path):
    model = _model(tmp_path / "model", family, tok)
    include = _tasks(tmp_path / "tasks", _greedy_choice(model, tok))
    manager = task_manager(list(TASKS), include)
    ours = evaluate(AdaptLM(pretrained=model, batch_size=4), list(TASKS), manager=manager, log_samples=True,
                    bootstrap_iters=0)
    reference = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32", device="cpu",
                                        tasks=list(TASKS), task_manager=manager, log_samples=True, bootstrap_iters=0)
    got, want = _responses(ours), _responses(reference)
    for task in ("tiny_mc", "tiny_ppl"):  # the same requests: lm-eval built them from the same YAML and data
        assert [s["arguments"] for s in ours["samples"][task]] == [s["arguments"] for s in reference["samples"][task]]
    assert len(got["tiny_mc"]) == 10 and len(got["tiny_ppl"]) == 2 and len(got["tiny_gen"]) == 3
    for (logp, greedy), (ref_logp, ref_greedy) in zip(got["tiny_mc"], want["tiny_mc"]):
        assert logp == pytest.approx(ref_logp, abs=1e-4) and greedy == ref_greedy
    assert [g for _, g in got["tiny_mc"]].count(True) == 1  # the greedy choice, and only it
    assert got["tiny_ppl"] == pytest.approx(want["tiny_ppl"], rel=1e-6, abs=1e-4)
    assert got["tiny_gen"] == want["tiny_gen"] and any(got["tiny_gen"])
    assert ours["results"]["tiny_mc"]["acc,none"] == reference["results"]["tiny_mc"]["acc,none"]


def _eval_script(*argv):
    """scripts/eval.py's ``main`` run in this process with ``argv`` (its lm-eval path needs the JAX, transformers
    and lm-eval this process has imported already: a subprocess would import them again)."""
    main = runpy.run_path(os.path.join(ROOT, "scripts", "eval.py"))["main"]
    saved = sys.argv
    sys.argv = ["scripts/eval.py", *argv]
    try:
        main()
    finally:
        sys.argv = saved


@pytest.mark.slow  # lm-eval indexes its thousands of tasks to be sure the name is not one of them
def test_an_unknown_task_is_one_line_naming_the_closest(tmp_path):
    include = _tasks(tmp_path / "tasks", " x")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")  # never read: the task names are checked first
    with pytest.raises(ConfigError) as e:
        _eval_script(f"--workdir={tmp_path / 'run'}", "--lm-eval-tasks=tiny_mc,tiny_mcq",
                     f"--lm-eval-include={include}")
    message = str(e.value)
    assert message.startswith("unknown lm-eval task 'tiny_mcq' (closest: tiny_mc") and "\n" not in message
    assert message.endswith(f") (tasks are lm-eval's and those in {include})")


def test_without_lm_eval_importing_the_harness_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    path = os.path.join(ROOT, "adapt", "integrations", "lm_eval.py")
    spec = importlib.util.spec_from_file_location("harness_without_lm_eval", path)
    with pytest.raises(ConfigError, match=r"^lm-eval is not installed: pip install 'adapt\[eval\]'"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


@pytest.mark.slow
def test_eval_script_runs_lm_eval_tasks_on_a_run_folder(tmp_path, tok, capsys):
    import numpy as np
    from safetensors.numpy import load_file

    from adapt.experiment import base_config, run_trial

    model = _model(tmp_path / "model", "llama", tok)
    include = _tasks(tmp_path / "tasks", " x")
    (tmp_path / "train.txt").write_text("\n".join(PPL * 8) + "\n")
    c = base_config()
    c.model.update(name=model, task="causal_lm")
    c.data.update(format="lm", max_length=16, cache_dir="")
    c.data.files = {"train": str(tmp_path / "train.txt")}
    c.eval.splits = ()
    c.export.model = True  # the trained weights in HF layout: transformers' reference below reads them
    c.optimizer.update(learning_rate=1e-2, warmup_steps=0)
    c.train.update(batch_size=8, steps=2, log_every=2)
    c.mesh.shape = (-1, 1, 1)  # the model on a mesh of the 8 test devices: lm-eval's batches split over them
    workdir = str(tmp_path / "run")
    run_trial(c, workdir)
    trained, initial = (load_file(os.path.join(f, "model.safetensors")) for f in (f"{workdir}/export", model))
    assert not np.allclose(trained["model.norm.weight"], initial["model.norm.weight"])
    capsys.readouterr()
    _eval_script(f"--workdir={workdir}", "--lm-eval-tasks=tiny_mc,tiny_ppl", f"--lm-eval-include={include}",
                 "--batch-size=8")  # a row on each device
    printed = json.loads(capsys.readouterr().out)
    saved = json.load(open(os.path.join(workdir, "lm_eval.json")))
    assert printed["results"] == saved["results"] and saved["config"]["model_source"] == workdir
    reference = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={workdir}/export,dtype=float32", device="cpu",
        tasks=["tiny_mc", "tiny_ppl"], task_manager=task_manager(["tiny_mc", "tiny_ppl"], include),
        bootstrap_iters=0)["results"]
    assert saved["results"]["tiny_mc"]["acc,none"] == reference["tiny_mc"]["acc,none"]
    assert saved["results"]["tiny_ppl"]["word_perplexity,none"] == pytest.approx(
        reference["tiny_ppl"]["word_perplexity,none"], rel=1e-5)
