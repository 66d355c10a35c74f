"""The family contract: a decoder family defined here, with its own module names, registered on the fly,
trains with LoRA, (IA)^3, a Houlsby adapter, prefix and prompt tuning, with nothing under adapt/methods/
knowing it; and no method imports a family or reads the HF config."""

import dataclasses
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from adapt import methods
from adapt.core.sharding import shard
from adapt.data.batches import array_batches
from adapt.models import layers as L
from adapt.models.registry import Dims, Family, MethodTargets, model_info, register
from adapt.training import CausalLM, Trainer, defaults

ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    vocab: int = 96
    width: int = 32
    heads: int = 4
    depth: int = 2
    dtype: str = "float32"
    # the HF config stand-in export would write; nothing in training reads it
    hf: object = dataclasses.field(default=None, compare=False, hash=False, repr=False)


def _dense(cfg, d_in, d_out, axes, rngs):
    return L.linear(d_in, d_out, axes, bias=False, std=0.1, dtype=cfg.dtype, rngs=rngs)


class Mixer(nnx.Module):  # attention under other names: wq, wk, wv, wo
    def __init__(self, cfg, *, rngs):
        self.cfg = cfg
        d = cfg.width
        self.wq, self.wk, self.wv = (_dense(cfg, d, d, ("embed", "heads"), rngs) for _ in range(3))
        self.wo = _dense(cfg, d, d, ("heads", "embed"), rngs)

    def __call__(self, x, mask, rngs):  # x [B, T, D], mask [B, T, T]
        b, t, d = x.shape
        q, k, v = (p(x).reshape(b, t, self.cfg.heads, d // self.cfg.heads) for p in (self.wq, self.wk, self.wv))
        k, v, mask = L.prepend_prefix(self, k, v, mask)
        out = L.dot_product_attention(q, k, v, mask, scale=(d // self.cfg.heads) ** -0.5, dropout_rate=0.0,
                                      rngs=rngs, causal=True)
        return self.wo(out.reshape(b, t, d))


class Block(nnx.Module):
    def __init__(self, cfg, *, rngs):
        self.norm = L.rms_norm(cfg.width, 1e-6, dtype=cfg.dtype, rngs=rngs)
        self.mix = Mixer(cfg, rngs=rngs)
        self.w_in = _dense(cfg, cfg.width, 2 * cfg.width, ("embed", "mlp"), rngs)
        self.w_out = _dense(cfg, 2 * cfg.width, cfg.width, ("mlp", "embed"), rngs)

    def __call__(self, x, mask, rngs):
        x = x + self.mix(self.norm(x), mask, rngs)
        return shard(x + self.w_out(jax.nn.gelu(self.w_in(x))), ("batch", "length", "embed"))


class TinyDecoder(nnx.Module):
    def __init__(self, cfg, *, rngs):
        self.cfg = cfg
        self.tok = L.embed(cfg.vocab, cfg.width, ("vocab", "embed"), std=0.1, dtype=cfg.dtype, rngs=rngs)
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.depth)])
        self.final = L.rms_norm(cfg.width, 1e-6, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, *, rngs=None):  # [B, T] -> [B, T, D]
        segments = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
        x, segments, _, virtual = L.prepend_prompt(self, self.tok(input_ids), segments)
        mask = L.attention_mask(segments, causal=True, virtual=virtual)
        for block in self.blocks:
            x = L.run_layer(block, x, mask, rngs)
        return self.final(L.drop_prompt(x, virtual))


class TinyDecoderLM(nnx.Module):
    def __init__(self, cfg, *, rngs):
        self.cfg = cfg
        self.decoder = TinyDecoder(cfg, rngs=rngs)
        self.unembed = _dense(cfg, cfg.width, cfg.vocab, ("embed", "vocab"), rngs)

    def __call__(self, input_ids, attention_mask=None, *, rngs=None):  # [B, T] -> [B, T, V]
        return self.unembed(self.decoder(input_ids, attention_mask, rngs=rngs)).astype(jnp.float32)


FAMILY = register(Family(
    name="tinydec", model_types=("tinydec",), config_from_hf=lambda hf, dtype="float32": TinyConfig(hf=hf),
    heads={"base": TinyDecoder, "causal_lm": TinyDecoderLM}, base_prefix="decoder", dropout_keys={},
    dims=lambda c: Dims(c.depth, c.width, c.vocab),
    targets=MethodTargets(lora=("wq", "wv"), ia3=("wk", "wv", "w_out"), ia3_feedforward=("w_out",),
                          after_attention=("wo",), after_mlp=("w_out",)),
    attention=Mixer, kv_shape=lambda c: (c.heads, c.width // c.heads),
    input_states=lambda backbone, ids: backbone.tok(ids), layers="blocks", embeddings=("tok",)))

KNOBS = {"lora": {"rank": 4}, "ia3": {}, "houlsby": {"size": 8}, "prefix_tuning": {"num_virtual_tokens": 3},
         "prompt_tuning": {"num_virtual_tokens": 3}}
IDENTITY_AT_INIT = ("lora", "ia3", "houlsby")


def _model():
    cfg = TinyConfig(hf=transformers.PretrainedConfig(model_type="tinydec"))
    return TinyDecoderLM(cfg, rngs=nnx.Rngs(0))


def test_the_registration_describes_an_instance():
    info = model_info(_model())
    assert (info.family.name, info.head, info.backbone_path, info.dims.num_layers) == ("tinydec", "causal_lm",
                                                                                        "decoder", 2)
    assert info.depth(("decoder", "tok", "embedding")) == 0
    assert info.depth(("decoder", "blocks", 1, "mix", "wq", "kernel")) == 2
    assert info.depth(("unembed", "kernel")) == info.depth(("decoder", "final", "scale")) == 3
    assert len(info.attentions(_model())) == 2


@pytest.mark.parametrize("name", list(KNOBS))
def test_a_family_defined_here_trains_with_the_methods(name, tmp_path):
    model = _model()
    ids = np.random.RandomState(0).randint(0, 96, (8, 12)).astype(np.int32)
    plain = np.asarray(model(ids))
    method = methods.build({"name": name, **KNOBS[name]})
    model = method.apply(model, nnx.Rngs(1))
    if name in IDENTITY_AT_INIT:
        np.testing.assert_allclose(np.asarray(model(ids)), plain, atol=1e-6)
    before = dict(methods.base.leaf_paths(jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))))
    trainable = {p for p, _ in methods.base.leaf_paths(nnx.to_pure_dict(nnx.state(model, method.trainable(model))))}
    added = r"lora|ia3|adapter|prefix|prompt" + (r"|^norm$|^final$" if name == "houlsby" else "")  # + its norms
    assert trainable and all(any(isinstance(k, str) and re.search(added, k) for k in p) for p in trainable), \
        trainable  # the added parameters only: the LM head is not fresh, so it stays frozen
    cfg = defaults()
    cfg.mesh.shape = (1, 2, 4)
    cfg.optimizer.update(learning_rate=3e-1 if name == "ia3" else 3e-2, schedule="constant")
    cfg.train.update(batch_size=8, steps=8, log_every=1)
    Trainer(model, CausalLM(), cfg, str(tmp_path), method=method).fit(array_batches({"input_ids": ids}, 8, seed=0))
    losses = [r["train/loss"] for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if "train/loss" in r]
    assert losses[-1] < 0.98 * losses[0], losses
    after = dict(methods.base.leaf_paths(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    for path, old in before.items():
        if path in trainable:
            assert np.any(np.asarray(after[path]) != old), f"{name}: trainable {path} did not move"
        else:
            np.testing.assert_array_equal(np.asarray(after[path]), old, err_msg=f"{name}: frozen {path} moved")


def test_no_method_imports_a_family_or_reads_the_hf_config():
    families = {p.stem for p in (ROOT / "adapt" / "models").glob("*.py")
                if re.search(r"^\w+ = register\(Family\(", p.read_text(), re.M)}
    assert {"llama", "gpt2", "bert", "roberta"} <= families
    for path in (ROOT / "adapt" / "methods").glob("*.py"):
        text = path.read_text()
        for family in families:
            assert not re.search(rf"adapt\.models(\.{family}\b| import .*\b{family}\b)", text), (path.name, family)
        assert "cfg.hf" not in text, path.name
