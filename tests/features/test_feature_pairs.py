"""Every pair of registered trial features (adapt/features/base.py): each pair builds a tiny trial and takes one
train step, or fails before anything is read with one ConfigError naming both, as one of them declares; the
declared refusals are consistent; and a feature registered from outside needs nothing of the trial assembly."""

import itertools
import json
import math
import os

import jax
import pytest

from adapt.core.errors import ConfigError
from adapt.experiment import base_config, run_trial
from adapt.experiment.trial import start_trial
from adapt.features import base as features
from adapt.features.base import FEATURES, PHASES, Feature, Refusal
from adapt.training.state import global_batch

WORDS = {"a": "government minister election market vote".split(), "b": "kinase receptor protein assay cell".split()}


def _write(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two tiny classification data sets (labels a, b), sft data, masked-LM text, a 1-layer BERT with an MLM head
    (the student) and a BERT classifier of the same shape for its labels (a distillation teacher), and a 1-layer
    Llama causal LM (sft, generation), all with the bundled MiniLM tokenizer ([SEP] its EOS)."""
    import numpy as np
    import transformers

    from adapt.models import load_tokenizer

    d = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)

    def rows(n, seed):
        r = np.random.default_rng(seed)
        return [{"text": " ".join(r.choice(WORDS[y], 5)), "label": y} for y in r.choice(["a", "b"], n)]

    cls = {name: {split: _write(d / f"{name}_{split}.jsonl", rows(n, 10 * i + j))
                  for j, (split, n) in enumerate((("train", 16), ("dev", 4), ("test", 4)))}
           for i, name in enumerate(("one", "two"))}
    sft = {split: _write(d / f"sft_{split}.jsonl", [{"prompt": " ".join(rng.choice(WORDS["a"], 3)),
                                                      "response": " ".join(rng.choice(WORDS["b"], 2))}
                                                     for _ in range(n)])
           for split, n in (("train", 16), ("dev", 4))}
    text = d / "general.txt"
    text.write_text("\n".join(" ".join(rng.choice(WORDS["a"] + WORDS["b"], 8)) for _ in range(4)) + "\n")
    tok = load_tokenizer("bundled:minilm-l6")
    tok.eos_token = "[SEP]"
    shape = dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=2, max_position_embeddings=32)
    folders = {}
    for name, cls_, config in (
            ("student", transformers.BertForMaskedLM, transformers.BertConfig(**shape)),
            ("teacher", transformers.BertForSequenceClassification, transformers.BertConfig(
                **shape, num_labels=2, id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1})),
            ("lm", transformers.LlamaForCausalLM, transformers.LlamaConfig(**shape, num_key_value_heads=1))):
        folders[name] = str(d / name)
        transformers.set_seed(0)
        cls_(config).save_pretrained(folders[name])
        tok.save_pretrained(folders[name])
    return dict(cls=cls, sft=sft, text=str(text), **folders)


@pytest.fixture(scope="module", autouse=True)
def _shared_programs(compile_cache):
    """Pairs that build the same programs (the same model, objective and step) compile them once."""


def _sft(c, w):  # an sft trial of the small causal LM
    c.model.update(name=w["lm"], task="causal_lm")
    c.data.update(format="sft", pack=False)
    c.data.files = w["sft"]


def _mixture(c, w):  # two sources of the trial's format
    sources = [w["sft"]["train"]] * 2 if c.data.format == "sft" else [w["cls"][n]["train"] for n in ("one", "two")]
    c.data.mixture = {n: {"weight": 1.0, "files": {"train": f}} for n, f in zip("xy", sources)}


# A config overlay that turns each feature on: (config, world) -> edit. Generation's makes the trial an sft
# trial, so it is applied first; the others fit either kind.
OVERLAYS = {
    "generation": lambda c, w: (_sft(c, w), c.generation.update(max_new_tokens=2)),
    "multitask": lambda c, w: setattr(c.multitask, "tasks", {n: {"files": f} for n, f in w["cls"].items()}),
    "distill": lambda c, w: c.distill.update(teacher=w["lm"] if c.data.format == "sft" else w["teacher"]),
    "privacy": lambda c, w: (c.privacy.update(enabled=True, noise_multiplier=1.0, max_batch_size=8),
                                 c.optimizer.update(clip_norm=0.0)),
    "eval_sets": lambda c, w: setattr(c.eval, "sets", {"general": {"files": {"dev": w["sft"]["dev"]}}}
                                          if c.data.format == "sft" else
                                          {"general": {"files": {"dev": w["text"]}, "task": "masked_lm"}}),
    "quality": lambda c, w: c.data.quality.update(duplicates="report"),
    "augment": lambda c, w: c.data.augment.update(copies=1, method="delete", p=0.2),
    "mixture": _mixture,
}
PAIRS = list(itertools.combinations(sorted(OVERLAYS, key=lambda n: n != "generation"), 2))


def _config(w, names):
    c = base_config()
    c.model.update(name=w["student"], task="sequence_classification")
    c.data.update(max_length=16, cache_dir="")
    c.data.files = w["cls"]["one"]
    c.eval.update(splits=("dev",), batch_size=8)
    c.train.update(batch_size=8, steps=1, log_every=1)  # a row per device of the tests' 8
    c.train.early_stopping.metric = ""
    c.mesh.shape = (-1, 1, 1)
    for name in names:
        OVERLAYS[name](c, w)
    return c


def _declared(a: Feature, b: Feature) -> list[Refusal]:
    """The refusals of the pair, whichever of the two declares them."""
    return [r for x, y in ((a, b), (b, a)) for r in x.refuses if r.other == y.name]


@pytest.mark.parametrize("a, b", PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_a_pair_takes_a_step_or_is_one_error_naming_both(world, tmp_path, a, b):
    config = _config(world, (a, b))
    assert [f.name for f in features.enabled(config)] == sorted([a, b], key=list(FEATURES).index)
    fa, fb = FEATURES[a], FEATURES[b]
    workdir = str(tmp_path / "run")
    if expected := features.refusal(fa, fb, config):  # a refusal one of them declares, in these settings
        with pytest.raises(ConfigError) as e:
            start_trial(config, workdir)
        assert str(e.value) == expected and "\n" not in expected
        assert fa.key in expected and fb.key in expected
        assert not os.path.exists(os.path.join(workdir, "labels.json"))  # refused before anything was read
        return
    started = start_trial(config, workdir)
    assert {f.name for f in started.trial.features} == {a, b}
    trainer = started.trial.trainer
    state, _ = trainer._setup(1)
    _, metrics = trainer.steps.train(state, global_batch(started.train.next_batch(), trainer.batch_sharding))
    assert math.isfinite(float(jax.device_get(metrics["loss_sum"])))


def test_every_feature_is_in_the_matrix_and_refusals_are_consistent(world):
    assert set(OVERLAYS) == set(FEATURES)
    for f in FEATURES.values():
        assert f.name and f.key and set(f.provides) <= set(PHASES)
        assert (f.section in base_config()) if f.section else True
        for r in f.refuses:
            assert r.other in FEATURES and r.other != f.name and r.why, (f.name, r)
    for a, b in itertools.combinations(FEATURES.values(), 2):
        assert len(_declared(a, b)) <= 1, (a.name, b.name)  # one side declares a pair
        if set(a.provides) & set(b.provides):  # two features cannot both take a phase over
            assert _declared(a, b), f"{a.name} and {b.name} both provide {set(a.provides) & set(b.provides)}"
        config = _config(world, sorted((a.name, b.name), key=lambda n: n != "generation"))
        assert features.refusal(a, b, config) == features.refusal(b, a, config)  # whichever comes first


def test_a_conditional_refusal_names_the_setting(world):
    config = _config(world, ("privacy", "quality"))
    features.check(config)  # reporting duplicates is fine under privacy
    config.data.quality.duplicates = "drop"
    with pytest.raises(ConfigError, match=r"^data\.quality\.duplicates='drop' with privacy\.enabled: "):
        features.check(config)


class Toy(Feature):
    """A feature from outside adapt: refuses DP-SGD, writes a file before training and an entry of the results."""
    name, key = "toy", "meta.toy"
    refuses = (Refusal("privacy", "a toy is not private"),)

    def enabled(self, config) -> bool:
        return bool(config.get("meta", {}).get("toy"))

    def start(self, trial) -> None:
        with open(os.path.join(trial.trainer.workdir, "toy.txt"), "w") as f:
            f.write(trial.config.model.task)

    def results(self, started, fit) -> dict:
        return {"toy": {"steps": fit.steps, "rows": len(started.trial.splits["train"]["input_ids"])}}


def test_a_feature_registered_from_outside_runs_without_a_change_to_the_trial(world, tmp_path, monkeypatch):
    monkeypatch.setitem(FEATURES, "toy", Toy())
    c = _config(world, ())
    c.unlock()
    c.meta = {"toy": True}
    c.privacy.update(enabled=True, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match=r"^privacy\.enabled with meta\.toy: a toy is not private$"):
        run_trial(c, str(tmp_path / "refused"))
    c.privacy.enabled = False
    results = run_trial(c, str(tmp_path / "run"))
    assert results["toy"] == {"steps": 1, "rows": 16}
    assert (tmp_path / "run" / "toy.txt").read_text() == "sequence_classification"
    assert json.loads((tmp_path / "run" / "results.json").read_text())["toy"] == results["toy"]


def _numbers(tree, path=""):
    """The leaves of a results tree by path (numbers and strings; timings dropped)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() if "time" not in key
                for k, v in _numbers(sub, f"{path}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _numbers(sub, f"{path}/{i}").items()}
    return {path: tree}


# In the slow tier, every feature's stacked trial (CI's 20 minutes; named sets' probe loads its head stacked, tested
# only here): generation decodes through the stacked KV cache in test_generate.py (prefix tuning scanned),
# distillation's kept slices of the stack are test_distill.py's, multi-task and DP-SGD have no code of their own for
# stacked layers (the step they extend runs stacked in test_scan.py), and the data features never read the model
STACKED_SLOW = tuple(OVERLAYS)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in STACKED_SLOW else n
                                  for n in sorted(OVERLAYS)])
def test_each_feature_with_stacked_layers_gives_the_unrolled_results_or_refuses(world, tmp_path, name):
    """``model.scan_layers``: a trial with the feature on (two steps, dev evaluated) ends with the unrolled
    trial's results, or is refused in one line naming the feature's key before anything is read."""
    config = _config(world, (name,))
    config.train.steps = 2
    config.model.scan_layers = True
    if not FEATURES[name].stacked_layers_ok:
        with pytest.raises(ConfigError, match=rf"^model.scan_layers=True: {FEATURES[name].key} \("):
            start_trial(config, str(tmp_path / "scanned"))
        assert not os.path.exists(tmp_path / "scanned" / "labels.json")
        return
    scanned = _numbers(run_trial(config, str(tmp_path / "scanned")))
    config.model.scan_layers = False
    unrolled = _numbers(run_trial(config, str(tmp_path / "unrolled")))
    assert scanned.keys() == unrolled.keys() and any("loss" in k for k in unrolled)
    for key, want in unrolled.items():
        assert scanned[key] == (pytest.approx(want, rel=1e-5, abs=1e-6) if isinstance(want, float) else want), key
